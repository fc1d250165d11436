//! Contact data rules shared by the API, imports and plugins: phone numbers normalized
//! to E.164 with the tenant's default country, emails trimmed, lower-cased and checked,
//! tags trimmed and bounded. Each failure says what is wrong with the value.

use std::str::FromStr;

use phonenumber::Mode;
use phonenumber::country::Id as CountryId;

/// Why a contact value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    /// The phone number cannot be understood.
    #[error("phone `{input}` is not a valid phone number: {reason}")]
    Phone {
        /// What was given.
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// The email address is malformed.
    #[error("email `{input}` is not a valid email address: {reason}")]
    Email {
        /// What was given.
        input: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A tag is empty or too long.
    #[error("tag `{0}` must be 1 to 64 characters")]
    Tag(String),
    /// The tenant's default country is not an ISO 3166-1 code.
    #[error("the default country `{0}` is not an ISO 3166-1 alpha-2 code")]
    Country(String),
}

/// Numbers recently read as valid, by default country and input (the cache is
/// emptied when it reaches this size).
const PHONE_CACHE_ENTRIES: usize = 50_000;

type PhoneCache = std::sync::Mutex<std::collections::HashMap<(String, String), String>>;

/// `input` in E.164 (`+14155550123`), reading numbers without `+` in `default_country`.
///
/// Valid numbers are remembered (by default country and input): reading one through
/// the numbering plan's patterns is regex work, and a busy inbox sees the same senders
/// again and again (profiled: 3% of the `inbound` benchmark's CPU).
pub fn normalize_phone(input: &str, default_country: &str) -> Result<String, InvalidValue> {
    static CACHE: std::sync::OnceLock<PhoneCache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(PhoneCache::default);
    let key = (default_country.to_ascii_uppercase(), input.to_string());
    if let Some(known) = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
    {
        return Ok(known.clone());
    }
    let e164 = parse_phone(input, default_country)?;
    let mut known = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if known.len() >= PHONE_CACHE_ENTRIES {
        known.clear();
    }
    known.insert(key, e164.clone());
    Ok(e164)
}

fn parse_phone(input: &str, default_country: &str) -> Result<String, InvalidValue> {
    let country = CountryId::from_str(&default_country.to_ascii_uppercase())
        .map_err(|_| InvalidValue::Country(default_country.to_string()))?;
    let invalid = |reason: String| InvalidValue::Phone {
        input: input.to_string(),
        reason,
    };
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if trimmed.chars().any(|c| c.is_alphabetic()) {
        return Err(invalid("it contains letters".into()));
    }
    let number =
        phonenumber::parse(Some(country), trimmed).map_err(|error| invalid(error.to_string()))?;
    if !number.is_valid() {
        return Err(invalid(format!(
            "no such number exists in the numbering plan (read with default country {})",
            default_country.to_ascii_uppercase()
        )));
    }
    Ok(number.format().mode(Mode::E164).to_string())
}

/// `input` trimmed and lower-cased, if it is a plausible address.
pub fn normalize_email(input: &str) -> Result<String, InvalidValue> {
    let email = input.trim().to_lowercase();
    let invalid = |reason| InvalidValue::Email {
        input: input.to_string(),
        reason,
    };
    let (local, domain) = email
        .split_once('@')
        .ok_or_else(|| invalid("it has no `@`"))?;
    if local.is_empty() || local.len() > 64 {
        return Err(invalid("the part before `@` must be 1 to 64 characters"));
    }
    if domain.contains('@') {
        return Err(invalid("it has more than one `@`"));
    }
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("it is too long or contains spaces"));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2
        || labels
            .iter()
            .any(|label| label.is_empty() || label.starts_with('-') || label.ends_with('-'))
    {
        return Err(invalid("the domain must look like `example.com`"));
    }
    Ok(email)
}

/// A tag trimmed, if it is 1 to 64 characters.
pub fn normalize_tag(input: &str) -> Result<String, InvalidValue> {
    let tag = input.trim();
    if tag.is_empty() || tag.chars().count() > 64 {
        return Err(InvalidValue::Tag(input.to_string()));
    }
    Ok(tag.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_become_e164() {
        for (input, country, expected) in [
            ("+1 415-555-0132", "US", "+14155550132"),
            ("(415) 555-0132", "US", "+14155550132"),
            ("415.555.0132", "us", "+14155550132"),
            ("011 44 20 7946 0018", "US", "+442079460018"),
            ("0044 20 7946 0018", "DE", "+442079460018"),
            ("020 7946 0018", "GB", "+442079460018"),
            ("+49 30 901820", "US", "+4930901820"),
            ("06 12 34 56 78", "FR", "+33612345678"),
        ] {
            assert_eq!(
                normalize_phone(input, country).as_deref(),
                Ok(expected),
                "{input} in {country}"
            );
        }
        // Read again (now from the cache), each still in its own default country.
        assert_eq!(
            normalize_phone("06 12 34 56 78", "FR").as_deref(),
            Ok("+33612345678")
        );
        assert!(normalize_phone("06 12 34 56 78", "US").is_err());
        assert_eq!(
            normalize_phone("020 7946 0018", "gb").as_deref(),
            Ok("+442079460018")
        );
        for (input, country) in [
            ("", "US"),
            ("hello", "US"),
            ("123", "US"),
            ("+1 555", "US"),
            ("555-0132", "ZZ"),
        ] {
            assert!(
                normalize_phone(input, country).is_err(),
                "{input} in {country} must be refused"
            );
        }
    }

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email("  Ada@Example.COM ").as_deref(),
            Ok("ada@example.com")
        );
        for bad in [
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
            "ada@-x.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }
}
