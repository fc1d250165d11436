//! Cron schedules for flow triggers: the five fields of Vixie cron (minute, hour, day of
//! month, month, day of week) with lists, ranges, steps, month and weekday names and the
//! `@hourly`/`@daily`/`@weekly`/`@monthly`/`@yearly` shorthands, evaluated in an IANA
//! time zone (the tenant's, or the trigger's own).
//!
//! Daylight-saving rules: a time that does not exist locally (the hour skipped in spring)
//! fires at the same offset after the jump, the way cron does (`30 2 * * *` fires at 03:30
//! that day); a time that happens twice (the hour repeated in autumn) fires once, at its
//! first occurrence. When day of month and day of week are both restricted, either one
//! matching is enough (`0 9 1 * MON` = the 1st and every Monday), as in Vixie cron.

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Day of month was `*` (or `?`): only day of week restricts days.
    any_day: bool,
    /// Day of week was `*` (or `?`): only day of month restricts days.
    any_weekday: bool,
}

/// Why an expression was refused; says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &MONTHS,
    },
    // 7 is Sunday too; folded into 0 after parsing.
    Field {
        name: "day of week",
        min: 0,
        max: 7,
        names: &WEEKDAYS,
    },
];

impl Field {
    fn value(&self, text: &str) -> Result<u32, CronError> {
        let upper = text.to_ascii_uppercase();
        if let Some(position) = self.names.iter().position(|name| *name == upper) {
            // Months are 1-based, weekdays 0-based.
            return Ok(position as u32 + self.min);
        }
        let number: u32 = text.parse().map_err(|_| {
            let names = if self.names.is_empty() {
                String::new()
            } else {
                format!(" or a name ({}…)", self.names[..3].join(", "))
            };
            CronError(format!(
                "{}: `{text}` is not a number from {} to {}{names}",
                self.name, self.min, self.max
            ))
        })?;
        if number < self.min || number > self.max {
            return Err(CronError(format!(
                "{}: {number} is out of range; use {} to {}",
                self.name, self.min, self.max
            )));
        }
        Ok(number)
    }

    /// The set of values `text` selects, as a bit mask (bit n = value n).
    fn parse(&self, text: &str) -> Result<u64, CronError> {
        let mut mask = 0u64;
        for part in text.split(',') {
            if part.is_empty() {
                return Err(CronError(format!(
                    "{}: empty item in `{text}` (a stray comma?)",
                    self.name
                )));
            }
            let (range, step) = match part.split_once('/') {
                Some((range, step)) => {
                    let step: u32 =
                        step.parse().ok().filter(|step| *step > 0).ok_or_else(|| {
                            CronError(format!(
                                "{}: the step in `{part}` must be a whole number above 0",
                                self.name
                            ))
                        })?;
                    (range, step)
                }
                None => (part, 1),
            };
            let (low, high) = if range == "*" || range == "?" {
                (self.min, self.max)
            } else if let Some((low, high)) = range.split_once('-') {
                let (low, high) = (self.value(low)?, self.value(high)?);
                if low > high {
                    return Err(CronError(format!(
                        "{}: the range `{range}` runs backwards; write it low-high",
                        self.name
                    )));
                }
                (low, high)
            } else {
                let low = self.value(range)?;
                // `5/15` means from 5 to the end, every 15.
                (low, if part.contains('/') { self.max } else { low })
            };
            let mut value = low;
            while value <= high {
                mask |= 1 << value;
                value += step;
            }
        }
        Ok(mask)
    }
}

impl Schedule {
    /// Parses an expression such as `0 9 * * MON-FRI` or `@daily`.
    pub fn parse(expression: &str) -> Result<Self, CronError> {
        let expression = expression.trim();
        let expanded = match expression.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(CronError(format!(
                    "unknown shorthand `{expression}`; use @hourly, @daily, @weekly, @monthly or @yearly"
                )));
            }
            _ => expression,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(CronError(format!(
                "a cron expression has 5 fields (minute hour day-of-month month day-of-week), \
                 e.g. `0 9 * * MON-FRI`; `{expression}` has {}",
                parts.len()
            )));
        }
        let masks: Vec<u64> = FIELDS
            .iter()
            .zip(&parts)
            .map(|(field, text)| field.parse(text))
            .collect::<Result<_, _>>()?;
        let mut weekdays = masks[4];
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & 0x7f;
        }
        let wild = |text: &str| text == "*" || text == "?";
        let schedule = Self {
            minutes: masks[0],
            hours: masks[1] as u32,
            days: masks[2] as u32,
            months: masks[3] as u16,
            weekdays: weekdays as u8,
            any_day: wild(parts[2]),
            any_weekday: wild(parts[4]),
        };
        if schedule.any_weekday && !schedule.any_day {
            // A day of month no month has (`31 2`, `30 2`) would never fire.
            let possible = (1..=12).any(|month| {
                schedule.months & (1 << month) != 0
                    && (1..=max_days(month)).any(|day| schedule.days & (1 << day) != 0)
            });
            if !possible {
                return Err(CronError(format!(
                    "`{expression}` never fires: none of its months has those days"
                )));
            }
        }
        Ok(schedule)
    }

    fn day_matches(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let by_day = self.days & (1 << date.day()) != 0;
        let weekday = date.weekday().to_sunday_zero_offset();
        let by_weekday = self.weekdays & (1 << weekday) != 0;
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (true, false) => by_weekday,
            (false, true) => by_day,
            (false, false) => by_day || by_weekday,
        }
    }

    /// The first time strictly after `after` (Unix ms) the schedule fires in `zone`, in
    /// Unix ms; `None` if it never does in the next eight years.
    pub fn next_after(&self, after: i64, zone: &TimeZone) -> Option<i64> {
        let after = Timestamp::from_millisecond(after).ok()?;
        let start = after.to_zoned_datetime(zone.clone()).date();
        let mut date = start;
        for _ in 0..(366 * 8) {
            if self.day_matches(date) {
                let best = (0..24)
                    .filter(|hour| self.hours & (1 << hour) != 0)
                    .flat_map(|hour| {
                        (0..60)
                            .filter(|minute| self.minutes & (1 << minute) != 0)
                            .map(move |minute| (hour, minute))
                    })
                    .filter_map(|(hour, minute)| {
                        let local = DateTime::from_parts(
                            date,
                            jiff::civil::time(hour as i8, minute as i8, 0, 0),
                        );
                        zone.to_ambiguous_timestamp(local).compatible().ok()
                    })
                    .filter(|instant| *instant > after)
                    .min();
                if let Some(best) = best {
                    return Some(best.as_millisecond());
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

fn max_days(month: u32) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The IANA time zone `name`, with an error that says what to write.
pub fn time_zone(name: &str) -> Result<TimeZone, CronError> {
    TimeZone::get(name).map_err(|_| {
        CronError(format!(
            "`{name}` is not an IANA time zone; use a name such as `Europe/Paris`, \
             `America/New_York` or `UTC`"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        text.parse::<Timestamp>()
            .expect("timestamp")
            .as_millisecond()
    }

    fn next(expression: &str, after: &str, zone: &str) -> String {
        let zone = time_zone(zone).expect("zone");
        let at = Schedule::parse(expression)
            .expect("parses")
            .next_after(ms(after), &zone)
            .expect("fires");
        Timestamp::from_millisecond(at).expect("ms").to_string()
    }

    #[test]
    fn weekdays_at_nine_in_the_tenant_zone() {
        // Friday 2026-11-20 10:00 in Paris (09:00 UTC): next is Monday 09:00 Paris.
        assert_eq!(
            next("0 9 * * MON-FRI", "2026-11-20T09:00:00Z", "Europe/Paris"),
            "2026-11-23T08:00:00Z"
        );
        assert_eq!(
            next("0 9 * * 1-5", "2026-11-20T07:59:00Z", "Europe/Paris"),
            "2026-11-20T08:00:00Z"
        );
        // Strictly after: firing time itself is not returned again.
        assert_eq!(
            next("0 9 * * *", "2026-11-20T08:00:00Z", "Europe/Paris"),
            "2026-11-21T08:00:00Z"
        );
    }

    #[test]
    fn steps_lists_ranges_and_shorthands() {
        assert_eq!(
            next("*/15 * * * *", "2026-01-01T00:07:00Z", "UTC"),
            "2026-01-01T00:15:00Z"
        );
        assert_eq!(
            next("5/20 * * * *", "2026-01-01T00:26:00Z", "UTC"),
            "2026-01-01T00:45:00Z"
        );
        assert_eq!(
            next("0 8,12-14/2 * * *", "2026-01-01T12:30:00Z", "UTC"),
            "2026-01-01T14:00:00Z"
        );
        assert_eq!(
            next("@monthly", "2026-01-15T00:00:00Z", "UTC"),
            "2026-02-01T00:00:00Z"
        );
        assert_eq!(
            next("@weekly", "2026-11-24T00:00:00Z", "UTC"),
            "2026-11-29T00:00:00Z"
        );
        // 7 is Sunday as well as 0.
        assert_eq!(
            Schedule::parse("0 0 * * 7").expect("parses"),
            Schedule::parse("0 0 * * SUN").expect("parses")
        );
        // Leap day: the next 29 February.
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z", "UTC"),
            "2028-02-29T00:00:00Z"
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_are_given() {
        // 2026-11-24 is a Tuesday; the 1st of December is a Tuesday, the 30th a Monday.
        assert_eq!(
            next("0 0 1 * MON", "2026-11-24T00:00:00Z", "UTC"),
            "2026-11-30T00:00:00Z"
        );
    }

    #[test]
    fn daylight_saving_gaps_and_repeats() {
        // Europe/Paris jumps from 02:00 to 03:00 on 2026-03-29: 02:30 fires at 03:30 CEST.
        assert_eq!(
            next("30 2 * * *", "2026-03-28T12:00:00Z", "Europe/Paris"),
            "2026-03-29T01:30:00Z"
        );
        // and goes back from 03:00 to 02:00 on 2026-10-25: 02:30 fires once, the first time.
        let first = next("30 2 * * *", "2026-10-24T12:00:00Z", "Europe/Paris");
        assert_eq!(first, "2026-10-25T00:30:00Z");
        assert_eq!(
            next("30 2 * * *", &first, "Europe/Paris"),
            "2026-10-26T01:30:00Z"
        );
    }

    #[test]
    fn errors_say_what_to_fix() {
        let error = |text: &str| Schedule::parse(text).expect_err(text).to_string();
        assert!(
            error("0 9 * *").contains("5 fields"),
            "{}",
            error("0 9 * *")
        );
        assert!(error("60 * * * *").contains("minute: 60 is out of range"));
        assert!(error("0 25 * * *").contains("hour"));
        assert!(error("0 0 * FOO *").contains("month: `FOO`"));
        assert!(error("*/0 * * * *").contains("step"));
        assert!(error("0 0 10-5 * *").contains("backwards"));
        assert!(error("0 0 30 2 *").contains("never fires"));
        assert!(error("@often").contains("@hourly"));
        assert!(error("1,,2 * * * *").contains("stray comma"));
        assert!(time_zone("Mars/Olympus").is_err());
        assert!(time_zone("America/New_York").is_ok());
    }
}
