//! Signing PostDog's outbound webhooks to tenants the Standard Webhooks way
//! (<https://www.standardwebhooks.com>), so tenants can verify them with any Standard
//! Webhooks library.
//!
//! Each delivery carries `webhook-id` (stable across retries), `webhook-timestamp` (unix
//! seconds) and `webhook-signature`: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`,
//! several space-separated while a secret is being rotated. Secrets are `whsec_` + base64
//! of 24–64 random bytes. Pure functions: the caller supplies the clock; nothing here does
//! I/O apart from reading the operating system's random source in
//! [`WebhookSecret::generate`].

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header with the message id.
pub const HEADER_ID: &str = "webhook-id";
/// The header with the unix timestamp in seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// The header with the signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// How far a timestamp may be from the receiver's clock, either way (5 minutes).
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// The prefix of every secret.
const SECRET_PREFIX: &str = "whsec_";
/// Key bytes in a generated secret.
const GENERATED_KEY_BYTES: usize = 24;
/// Shortest key the specification allows.
const MIN_KEY_BYTES: usize = 24;
/// Longest key the specification allows.
const MAX_KEY_BYTES: usize = 64;

type HmacSha256 = Hmac<Sha256>;

/// A problem with a webhook secret. Messages never include the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookSecretError {
    /// The text does not start with `whsec_`.
    #[error("a webhook secret starts with `whsec_`, followed by base64")]
    MissingPrefix,
    /// The part after the prefix is not base64.
    #[error(
        "the part of the webhook secret after `whsec_` is not valid base64 (standard alphabet with `+` and `/`)"
    )]
    InvalidBase64,
    /// The key is shorter or longer than the specification allows.
    #[error(
        "a webhook secret holds {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes of key; this one holds {len}"
    )]
    WrongLength {
        /// How many bytes the key has.
        len: usize,
    },
    /// The operating system's random source failed.
    #[error("could not read the operating system's random source: {0}")]
    Random(String),
}

/// A Standard Webhooks signing secret, `whsec_<base64 key>`.
///
/// Its `Debug` output hides the key, so it may sit in structs that get logged.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    key: Vec<u8>,
    /// `whsec_` + canonical (padded) base64 of `key`.
    encoded: String,
}

impl WebhookSecret {
    /// A new secret with 24 random bytes of key.
    ///
    /// # Errors
    /// [`WebhookSecretError::Random`] if the operating system's random source fails.
    pub fn generate() -> Result<Self, WebhookSecretError> {
        let mut key = vec![0u8; GENERATED_KEY_BYTES];
        getrandom::fill(&mut key).map_err(|error| WebhookSecretError::Random(error.to_string()))?;
        Ok(Self::from_key(key))
    }

    /// Parses `whsec_<base64>` (padding optional; surrounding whitespace ignored).
    ///
    /// # Errors
    /// A missing prefix, invalid base64, or a key outside 24–64 bytes.
    pub fn parse(text: &str) -> Result<Self, WebhookSecretError> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(WebhookSecretError::MissingPrefix)?;
        let key = STANDARD
            .decode(encoded)
            .or_else(|_| STANDARD_NO_PAD.decode(encoded))
            .map_err(|_| WebhookSecretError::InvalidBase64)?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(WebhookSecretError::WrongLength { len: key.len() });
        }
        Ok(Self::from_key(key))
    }

    fn from_key(key: Vec<u8>) -> Self {
        let encoded = format!("{SECRET_PREFIX}{}", STANDARD.encode(&key));
        Self { key, encoded }
    }

    /// The secret as `whsec_<base64>`, to show the tenant once or to store sealed.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.encoded
    }

    fn mac(&self, msg_id: &str, timestamp_secs: i64, body: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC-SHA256 accepts keys of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_secs.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookSecret(whsec_…, {} bytes)", self.key.len())
    }
}

impl FromStr for WebhookSecret {
    type Err = WebhookSecretError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// One signature: `v1,<base64 HMAC-SHA256(key, "{msg_id}.{timestamp_secs}.{body}")>`.
#[must_use]
pub fn sign(secret: &WebhookSecret, msg_id: &str, timestamp_secs: i64, body: &[u8]) -> String {
    let tag = secret
        .mac(msg_id, timestamp_secs, body)
        .finalize()
        .into_bytes();
    format!("v1,{}", STANDARD.encode(tag))
}

/// The `webhook-signature` header value: one signature per secret, space-separated, so
/// receivers holding either the old or the new secret accept the message during rotation.
#[must_use]
pub fn signature_header(
    secrets: &[&WebhookSecret],
    msg_id: &str,
    timestamp_secs: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| sign(secret, msg_id, timestamp_secs, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a webhook did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No secret to check against.
    #[error("no webhook secret is configured to verify against")]
    NoSecrets,
    /// The `webhook-id` header is empty.
    #[error("the webhook-id header is missing or empty")]
    MissingId,
    /// The `webhook-timestamp` header is not a whole number of seconds.
    #[error("the webhook-timestamp header `{0}` is not unix seconds")]
    InvalidTimestamp(String),
    /// The timestamp is older than the tolerance (a replay, or a very late delivery).
    #[error("the webhook timestamp is {age_secs} s old; at most {tolerance_secs} s is accepted")]
    TimestampTooOld {
        /// How old the timestamp is.
        age_secs: i64,
        /// The accepted age.
        tolerance_secs: i64,
    },
    /// The timestamp is further in the future than the tolerance (a skewed clock).
    #[error(
        "the webhook timestamp is {ahead_secs} s in the future; at most {tolerance_secs} s is accepted"
    )]
    TimestampInFuture {
        /// How far ahead the timestamp is.
        ahead_secs: i64,
        /// The accepted skew.
        tolerance_secs: i64,
    },
    /// The `webhook-signature` header holds no `v1,<base64>` signature.
    #[error("the webhook-signature header holds no `v1,<base64>` signature")]
    NoSignatures,
    /// No signature matches any secret: wrong secret, or the id, timestamp or body changed.
    #[error("no signature matches: the secret is wrong, or the id, timestamp or body was changed")]
    NoMatch,
}

/// Verifies a delivery: `headers` is (`webhook-id`, `webhook-timestamp`,
/// `webhook-signature`), `body` the raw bytes as received, `now_secs` the receiver's
/// clock and `tolerance_secs` the accepted distance from it ([`DEFAULT_TOLERANCE_SECS`]).
/// Accepts if any `v1` signature matches any of `secrets`; comparisons are constant-time.
///
/// # Errors
/// See [`VerifyError`]; the timestamp is checked before the signatures.
pub fn verify(
    secrets: &[&WebhookSecret],
    headers: (&str, &str, &str),
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let (msg_id, timestamp, signatures) = headers;
    if secrets.is_empty() {
        return Err(VerifyError::NoSecrets);
    }
    let msg_id = msg_id.trim();
    if msg_id.is_empty() {
        return Err(VerifyError::MissingId);
    }
    let timestamp_secs: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::InvalidTimestamp(timestamp.chars().take(40).collect()))?;
    let age_secs = now_secs.saturating_sub(timestamp_secs);
    if age_secs > tolerance_secs {
        return Err(VerifyError::TimestampTooOld {
            age_secs,
            tolerance_secs,
        });
    }
    let ahead_secs = timestamp_secs.saturating_sub(now_secs);
    if ahead_secs > tolerance_secs {
        return Err(VerifyError::TimestampInFuture {
            ahead_secs,
            tolerance_secs,
        });
    }
    let candidates: Vec<Vec<u8>> = signatures
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .collect();
    if candidates.is_empty() {
        return Err(VerifyError::NoSignatures);
    }
    for secret in secrets {
        let mac = secret.mac(msg_id, timestamp_secs, body);
        // `verify_slice` compares in constant time (and refuses a wrong length).
        if candidates
            .iter()
            .any(|candidate| mac.clone().verify_slice(candidate).is_ok())
        {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vector published by Standard Webhooks.
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: i64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn vector_secret() -> WebhookSecret {
        WebhookSecret::parse(VECTOR_SECRET).unwrap()
    }

    fn headers(signature: &str) -> (&str, &str, &str) {
        (VECTOR_ID, "1614265330", signature)
    }

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        let secret = vector_secret();
        assert_eq!(
            sign(&secret, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY),
            VECTOR_SIGNATURE
        );
        assert_eq!(
            signature_header(&[&secret], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY),
            VECTOR_SIGNATURE
        );
    }

    #[test]
    fn verifies_the_standard_webhooks_test_vector() {
        let secret = vector_secret();
        assert_eq!(
            verify(
                &[&secret],
                headers(VECTOR_SIGNATURE),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                DEFAULT_TOLERANCE_SECS
            ),
            Ok(())
        );
    }

    #[test]
    fn rotation_signs_with_both_secrets_and_either_verifies() {
        let old = vector_secret();
        let new = WebhookSecret::generate().unwrap();
        let header = signature_header(&[&old, &new], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], VECTOR_SIGNATURE);
        assert_eq!(
            parts[1],
            sign(&new, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
        );
        for receiver in [&old, &new] {
            assert_eq!(
                verify(
                    &[receiver],
                    headers(&header),
                    VECTOR_BODY,
                    VECTOR_TIMESTAMP,
                    300
                ),
                Ok(())
            );
        }
        // A receiver holding both secrets accepts a message signed with only the new one.
        let only_new = sign(&new, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY);
        assert_eq!(
            verify(
                &[&old, &new],
                headers(&only_new),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                300
            ),
            Ok(())
        );
        let other = WebhookSecret::generate().unwrap();
        assert_eq!(
            verify(
                &[&other],
                headers(&header),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                300
            ),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn tampered_body_id_or_timestamp_does_not_verify() {
        let secret = vector_secret();
        let tampered_body = br#"{"test": 2432232315}"#;
        assert_eq!(
            verify(
                &[&secret],
                headers(VECTOR_SIGNATURE),
                tampered_body,
                VECTOR_TIMESTAMP,
                300
            ),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(
                &[&secret],
                ("msg_other", "1614265330", VECTOR_SIGNATURE),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                300
            ),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(
                &[&secret],
                (VECTOR_ID, "1614265331", VECTOR_SIGNATURE),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                300
            ),
            Err(VerifyError::NoMatch)
        );
        // One flipped character in the signature.
        let flipped = VECTOR_SIGNATURE.replace("g0hM", "g0hN");
        assert_eq!(
            verify(
                &[&secret],
                headers(&flipped),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                300
            ),
            Err(VerifyError::NoMatch)
        );
        // A truncated signature is refused, not compared as a prefix.
        let tag = STANDARD
            .decode(VECTOR_SIGNATURE.trim_start_matches("v1,"))
            .unwrap();
        let truncated = format!("v1,{}", STANDARD.encode(&tag[..16]));
        assert_eq!(
            verify(
                &[&secret],
                headers(&truncated),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                300
            ),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_rejected_at_the_tolerance() {
        let secret = vector_secret();
        let check = |now: i64| {
            verify(
                &[&secret],
                headers(VECTOR_SIGNATURE),
                VECTOR_BODY,
                now,
                DEFAULT_TOLERANCE_SECS,
            )
        };
        assert_eq!(check(VECTOR_TIMESTAMP + 300), Ok(()));
        assert_eq!(
            check(VECTOR_TIMESTAMP + 301),
            Err(VerifyError::TimestampTooOld {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(check(VECTOR_TIMESTAMP - 300), Ok(()));
        assert_eq!(
            check(VECTOR_TIMESTAMP - 301),
            Err(VerifyError::TimestampInFuture {
                ahead_secs: 301,
                tolerance_secs: 300
            })
        );
        // Extreme clocks saturate instead of overflowing.
        assert!(matches!(
            check(i64::MAX),
            Err(VerifyError::TimestampTooOld { .. })
        ));
        assert!(matches!(
            check(i64::MIN),
            Err(VerifyError::TimestampInFuture { .. })
        ));
        let message = check(VECTOR_TIMESTAMP + 301).unwrap_err().to_string();
        assert!(message.contains("301 s old"), "{message}");
    }

    #[test]
    fn malformed_headers_get_their_own_errors() {
        let secret = vector_secret();
        let run = |headers: (&str, &str, &str)| {
            verify(&[&secret], headers, VECTOR_BODY, VECTOR_TIMESTAMP, 300)
        };
        assert_eq!(
            run(("", "1614265330", VECTOR_SIGNATURE)),
            Err(VerifyError::MissingId)
        );
        assert_eq!(
            run((VECTOR_ID, "yesterday", VECTOR_SIGNATURE)),
            Err(VerifyError::InvalidTimestamp("yesterday".to_owned()))
        );
        assert_eq!(
            run((VECTOR_ID, "1614265330.5", VECTOR_SIGNATURE)),
            Err(VerifyError::InvalidTimestamp("1614265330.5".to_owned()))
        );
        assert_eq!(run(headers("")), Err(VerifyError::NoSignatures));
        assert_eq!(
            run(headers("v2,abc v1a,xyz v1,@@@not-base64")),
            Err(VerifyError::NoSignatures)
        );
        assert_eq!(
            verify(
                &[],
                headers(VECTOR_SIGNATURE),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                300
            ),
            Err(VerifyError::NoSecrets)
        );
    }

    #[test]
    fn unknown_versions_and_extra_whitespace_are_tolerated() {
        let secret = vector_secret();
        let header = format!("  v1a,c29tZXRoaW5n   {VECTOR_SIGNATURE}  ");
        assert_eq!(
            verify(
                &[&secret],
                (VECTOR_ID, " 1614265330 ", &header),
                VECTOR_BODY,
                VECTOR_TIMESTAMP,
                300
            ),
            Ok(())
        );
    }

    #[test]
    fn secrets_parse_and_report_what_is_wrong() {
        let secret = vector_secret();
        assert_eq!(secret.as_str(), VECTOR_SECRET);
        assert_eq!(VECTOR_SECRET.parse::<WebhookSecret>(), Ok(secret.clone()));
        // Unpadded base64 and surrounding whitespace are accepted; as_str is canonical.
        let key = [7u8; 32];
        let unpadded = format!("whsec_{}\n", STANDARD_NO_PAD.encode(key));
        let parsed = WebhookSecret::parse(&unpadded).unwrap();
        assert_eq!(parsed.as_str(), format!("whsec_{}", STANDARD.encode(key)));

        assert_eq!(
            WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(WebhookSecretError::MissingPrefix)
        );
        assert_eq!(
            WebhookSecret::parse("whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(WebhookSecretError::MissingPrefix)
        );
        assert_eq!(
            WebhookSecret::parse("whsec_not base64!!"),
            Err(WebhookSecretError::InvalidBase64)
        );
        assert_eq!(
            WebhookSecret::parse(&format!("whsec_{}", STANDARD.encode([1u8; 16]))),
            Err(WebhookSecretError::WrongLength { len: 16 })
        );
        assert_eq!(
            WebhookSecret::parse(&format!("whsec_{}", STANDARD.encode([1u8; 65]))),
            Err(WebhookSecretError::WrongLength { len: 65 })
        );
        assert_eq!(
            WebhookSecret::parse("whsec_"),
            Err(WebhookSecretError::WrongLength { len: 0 })
        );
        let message = WebhookSecret::parse("whsec_c2hvcnQ=")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("24 to 64 bytes") && message.contains('5'),
            "{message}"
        );
    }

    #[test]
    fn generated_secrets_are_random_round_trip_and_sign() {
        let first = WebhookSecret::generate().unwrap();
        let second = WebhookSecret::generate().unwrap();
        assert_ne!(first, second);
        assert!(first.as_str().starts_with("whsec_"));
        assert_eq!(first.key.len(), 24);
        assert_eq!(WebhookSecret::parse(first.as_str()), Ok(first.clone()));
        let header = signature_header(&[&first], "msg_1", 1_700_000_000, b"{}");
        assert_eq!(
            verify(
                &[&first],
                ("msg_1", "1700000000", &header),
                b"{}",
                1_700_000_010,
                300
            ),
            Ok(())
        );
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let secret = vector_secret();
        let debug = format!("{secret:?}");
        assert!(!debug.contains("MfKQ9r8"), "{debug}");
        assert!(!debug.contains(VECTOR_SECRET), "{debug}");
        let wrapped = format!("{:?}", Some(&secret));
        assert!(!wrapped.contains("MfKQ9r8"), "{wrapped}");
    }
}
