//! Reading points in time from the forms flows meet: Unix milliseconds, RFC 3339
//! timestamps and the `YYYY-MM-DD` dates of contact date fields. Hand-written (the crate
//! depends on serde only) and total: anything unreadable is `None`, never a panic.

/// Milliseconds in a day.
pub const MS_PER_DAY: i64 = 86_400_000;

/// Reads a point in time as Unix milliseconds (UTC):
/// - digits, optionally signed: Unix milliseconds (`1714557600000`);
/// - `YYYY-MM-DD`: midnight UTC of that day;
/// - RFC 3339, `YYYY-MM-DDTHH:MM[:SS[.fraction]]` followed by `Z` or `±HH:MM` (no
///   offset means UTC; `t`, `z` and a space instead of `T` are accepted).
///
/// ```
/// use postdog_expr::timestamp_ms;
/// assert_eq!(timestamp_ms("1970-01-02"), Some(86_400_000));
/// assert_eq!(timestamp_ms("1970-01-01T01:00:00+01:00"), Some(0));
/// assert_eq!(timestamp_ms("1714557600000"), Some(1_714_557_600_000));
/// assert_eq!(timestamp_ms("tomorrow"), None);
/// ```
pub fn timestamp_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    let bytes = text.as_bytes();
    let year = number(bytes, 0, 4)?;
    expect(bytes, 4, b'-')?;
    let month = number(bytes, 5, 2)?;
    expect(bytes, 7, b'-')?;
    let day = number(bytes, 8, 2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if bytes.len() == 10 {
        return days.checked_mul(MS_PER_DAY);
    }
    if !matches!(bytes.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let hour = number(bytes, 11, 2)?;
    expect(bytes, 13, b':')?;
    let minute = number(bytes, 14, 2)?;
    let mut position = 16;
    let mut second = 0;
    let mut millis = 0;
    if bytes.get(position) == Some(&b':') {
        second = number(bytes, position + 1, 2)?;
        position += 3;
        if bytes.get(position) == Some(&b'.') {
            position += 1;
            let start = position;
            while bytes.get(position).is_some_and(u8::is_ascii_digit) {
                position += 1;
            }
            if position == start {
                return None;
            }
            // Milliseconds from the first three digits of the fraction.
            for i in 0..3 {
                let digit = bytes
                    .get(start + i)
                    .filter(|_| start + i < position)
                    .map_or(0, |b| i64::from(b - b'0'));
                millis = millis * 10 + digit;
            }
        }
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // A leap second reads as the last millisecond before the next minute.
    let (second, millis) = if second == 60 {
        (59, 999)
    } else {
        (second, millis)
    };
    let offset_minutes = match bytes.get(position) {
        None => 0,
        Some(b'Z' | b'z') if position + 1 == bytes.len() => 0,
        Some(sign @ (b'+' | b'-')) => {
            let hours = number(bytes, position + 1, 2)?;
            let (minutes, end) = if bytes.get(position + 3) == Some(&b':') {
                (number(bytes, position + 4, 2)?, position + 6)
            } else {
                (number(bytes, position + 3, 2)?, position + 5)
            };
            if end != bytes.len() || hours > 23 || minutes > 59 {
                return None;
            }
            let total = hours * 60 + minutes;
            if *sign == b'-' { -total } else { total }
        }
        Some(_) => return None,
    };
    let seconds = days
        .checked_mul(86_400)?
        .checked_add(hour * 3600 + minute * 60 + second)?
        .checked_sub(offset_minutes * 60)?;
    seconds.checked_mul(1000)?.checked_add(millis)
}

fn number(bytes: &[u8], start: usize, len: usize) -> Option<i64> {
    let slice = bytes.get(start..start + len)?;
    let mut value = 0i64;
    for byte in slice {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(byte - b'0');
    }
    Some(value)
}

fn expect(bytes: &[u8], at: usize, byte: u8) -> Option<()> {
    (bytes.get(at) == Some(&byte)).then_some(())
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_timestamps() {
        // Digits alone are Unix milliseconds, even when they look like a year.
        assert_eq!(timestamp_ms("2024"), Some(2024));
        assert_eq!(timestamp_ms("1970-01-01"), Some(0));
        assert_eq!(timestamp_ms("2000-03-01"), Some(951_868_800_000));
        assert_eq!(timestamp_ms("2024-02-29"), Some(1_709_164_800_000));
        assert_eq!(timestamp_ms("2023-02-29"), None);
        assert_eq!(timestamp_ms("2024-13-01"), None);
        assert_eq!(
            timestamp_ms("2024-05-01T10:00:00Z"),
            Some(1_714_557_600_000)
        );
        assert_eq!(
            timestamp_ms("2024-05-01t10:00:00z"),
            Some(1_714_557_600_000)
        );
        assert_eq!(timestamp_ms("2024-05-01 10:00"), Some(1_714_557_600_000));
        assert_eq!(
            timestamp_ms("2024-05-01T12:00:00+02:00"),
            Some(1_714_557_600_000)
        );
        assert_eq!(
            timestamp_ms("2024-05-01T05:30:00-0430"),
            Some(1_714_557_600_000)
        );
        assert_eq!(
            timestamp_ms("2024-05-01T10:00:00.1234Z"),
            Some(1_714_557_600_123)
        );
        assert_eq!(
            timestamp_ms("2024-05-01T10:00:00.5Z"),
            Some(1_714_557_600_500)
        );
        assert_eq!(timestamp_ms("1969-12-31T23:59:59Z"), Some(-1000));
        assert_eq!(timestamp_ms(" 1714557600000 "), Some(1_714_557_600_000));
        assert_eq!(timestamp_ms("-5"), Some(-5));
    }

    #[test]
    fn malformed_times_are_none() {
        for text in [
            "",
            "-",
            "2024-05",
            "2024-05-01T",
            "2024-05-01T10",
            "2024-05-01T25:00:00Z",
            "2024-05-01T10:00:00.Z",
            "2024-05-01T10:00:00Zjunk",
            "2024-05-01T10:00:00+2",
            "2024-05-01T10:00:00+24:00",
            "2024-05-01X10:00:00Z",
            "99999999999999999999999",
            "２０２４-05-01",
            "2024-05-01T10:00:00+02:00:00",
        ] {
            assert_eq!(timestamp_ms(text), None, "{text}");
        }
    }
}
