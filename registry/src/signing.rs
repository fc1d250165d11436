//! Publisher keys: ed25519 key pairs that sign artifacts and registry requests.
//!
//! A publisher keeps its [`PublisherKey`] in a small text file (see
//! [`PublisherKey::to_file_text`]); the registry knows only the [`PublicKey`], written
//! `ed25519:<base64>`. Every signature is over a domain-separated message (a fixed
//! `postdog-…-v1\0` prefix per purpose), so a signature made for one purpose can never
//! be replayed as another.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// First line of a key file.
const KEY_FILE_HEADER: &str = "postdog-publisher-key v1";
/// Prefix of a written public key.
const PUBLIC_KEY_PREFIX: &str = "ed25519:";
/// Length of an ed25519 signature.
pub const SIGNATURE_LENGTH: usize = 64;

/// A publisher's secret signing key. `Debug` shows only the public half.
#[derive(Clone)]
pub struct PublisherKey {
    signing: SigningKey,
}

/// A publisher's public key, written `ed25519:<base64 of the 32 key bytes>`.
///
/// Holds the 32 bytes (checked to be a valid key when made), not the decompressed point,
/// so it stays small enough to carry around in errors.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey {
    bytes: [u8; 32],
}

/// Why a key (file) could not be read or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The file does not start with the key file header.
    #[error("not a PostDog publisher key file: the first line must be `{KEY_FILE_HEADER}`")]
    MissingHeader,
    /// The file is a key file of another format version.
    #[error("unsupported publisher key file version `{0}`; this PostDog reads v1")]
    UnsupportedVersion(String),
    /// The file has no `secret:` line.
    #[error("the publisher key file has no `secret:` line")]
    MissingSecret,
    /// A line the format does not have.
    #[error("line {line} of the publisher key file is not `public: …` or `secret: …`")]
    UnexpectedLine {
        /// 1-based line number.
        line: usize,
    },
    /// A value is not valid base64.
    #[error("the {what} is not valid base64: {reason}")]
    BadBase64 {
        /// Which value.
        what: &'static str,
        /// The decoder's reason.
        reason: String,
    },
    /// A value decodes to the wrong number of bytes.
    #[error("the {what} must be {expected} bytes, found {found}")]
    WrongLength {
        /// Which value.
        what: &'static str,
        /// Bytes expected.
        expected: usize,
        /// Bytes found.
        found: usize,
    },
    /// The `public:` line does not belong to the `secret:` line.
    #[error(
        "the key file's `public:` line does not match its secret key; the file is corrupt \
         or was edited"
    )]
    PublicKeyMismatch,
    /// A public key without the `ed25519:` prefix.
    #[error("a public key is written `{PUBLIC_KEY_PREFIX}<base64>`, found `{0}`")]
    MissingPrefix(String),
    /// 32 bytes that are not an ed25519 public key.
    #[error("the public key is not a valid ed25519 key")]
    InvalidPublicKey,
    /// The operating system's random number generator failed.
    #[error("could not get random bytes from the operating system: {0}")]
    Random(String),
}

impl PublisherKey {
    /// A new random key, from the operating system's random number generator.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|error| KeyError::Random(error.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// The key whose 32-byte secret seed is `seed` (deterministic; for tests and
    /// key stores that keep the seed elsewhere).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The public half, which the registry registers for the publisher.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            bytes: self.signing.verifying_key().to_bytes(),
        }
    }

    /// The key as a small text file:
    ///
    /// ```text
    /// postdog-publisher-key v1
    /// public: ed25519:<base64>
    /// secret: <base64 of the 32-byte seed>
    /// ```
    ///
    /// Blank lines and lines starting with `#` are ignored when reading it back.
    pub fn to_file_text(&self) -> String {
        format!(
            "{KEY_FILE_HEADER}\n# Keep this file secret: it signs plugins published under your name.\npublic: {}\nsecret: {}\n",
            self.public(),
            BASE64.encode(self.signing.to_bytes())
        )
    }

    /// Reads a key file written by [`PublisherKey::to_file_text`].
    pub fn from_file_text(text: &str) -> Result<Self, KeyError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(index, line)| (index + 1, line.trim()))
            .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'));
        match lines.next() {
            Some((_, line)) if line == KEY_FILE_HEADER => {}
            Some((_, line)) => {
                return Err(match line.strip_prefix("postdog-publisher-key ") {
                    Some(version) => KeyError::UnsupportedVersion(version.trim().to_string()),
                    None => KeyError::MissingHeader,
                });
            }
            None => return Err(KeyError::MissingHeader),
        }
        let mut public = None;
        let mut secret = None;
        for (number, line) in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or(KeyError::UnexpectedLine { line: number })?;
            match name.trim() {
                "public" => public = Some(value.trim().parse::<PublicKey>()?),
                "secret" => secret = Some(decode_fixed::<32>(value.trim(), "secret key")?),
                _ => return Err(KeyError::UnexpectedLine { line: number }),
            }
        }
        let key = Self::from_seed(secret.ok_or(KeyError::MissingSecret)?);
        match public {
            Some(public) if public != key.public() => Err(KeyError::PublicKeyMismatch),
            _ => Ok(key),
        }
    }

    /// Signs `message` for the purpose named by `domain`.
    pub(crate) fn sign(&self, domain: &[u8], message: &[u8]) -> [u8; SIGNATURE_LENGTH] {
        self.signing
            .sign(&domain_separated(domain, message))
            .to_bytes()
    }
}

impl fmt::Debug for PublisherKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublisherKey")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    /// The 32 key bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.bytes
    }

    /// The key with these 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(|_| Self { bytes: *bytes })
            .map_err(|_| KeyError::InvalidPublicKey)
    }

    /// Whether `signature` is this key's signature of `message` for the purpose `domain`.
    /// Uses strict verification (no malleable or weak-key signatures).
    pub(crate) fn verifies(
        &self,
        domain: &[u8],
        message: &[u8],
        signature: &[u8; SIGNATURE_LENGTH],
    ) -> bool {
        // The bytes were checked when the key was made, so only a bad signature fails.
        VerifyingKey::from_bytes(&self.bytes).is_ok_and(|verifying| {
            verifying
                .verify_strict(
                    &domain_separated(domain, message),
                    &Signature::from_bytes(signature),
                )
                .is_ok()
        })
    }
}

fn domain_separated(domain: &[u8], message: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(domain.len() + message.len());
    bytes.extend_from_slice(domain);
    bytes.extend_from_slice(message);
    bytes
}

/// Decodes base64 that must be exactly `N` bytes.
pub(crate) fn decode_fixed<const N: usize>(
    text: &str,
    what: &'static str,
) -> Result<[u8; N], KeyError> {
    let bytes = BASE64.decode(text).map_err(|error| KeyError::BadBase64 {
        what,
        reason: error.to_string(),
    })?;
    let found = bytes.len();
    bytes.try_into().map_err(|_| KeyError::WrongLength {
        what,
        expected: N,
        found,
    })
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", BASE64.encode(self.bytes))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let encoded = text
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or_else(|| KeyError::MissingPrefix(text.chars().take(80).collect()))?;
        Self::from_bytes(&decode_fixed::<32>(encoded, "public key")?)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip() -> Result<(), KeyError> {
        let key = PublisherKey::generate()?;
        let text = key.to_file_text();
        assert!(text.starts_with("postdog-publisher-key v1\n"));
        let read = PublisherKey::from_file_text(&text)?;
        assert_eq!(read.public(), key.public());
        // Signatures made with the read key verify with the original public key.
        let signature = read.sign(b"test\0", b"message");
        assert!(key.public().verifies(b"test\0", b"message", &signature));
        assert!(!key.public().verifies(b"other\0", b"message", &signature));
        Ok(())
    }

    #[test]
    fn generated_keys_differ() -> Result<(), KeyError> {
        assert_ne!(
            PublisherKey::generate()?.public(),
            PublisherKey::generate()?.public()
        );
        Ok(())
    }

    #[test]
    fn damaged_key_files_say_what_is_wrong() {
        let key = PublisherKey::from_seed([7; 32]);
        let other = PublisherKey::from_seed([8; 32]);
        let good = key.to_file_text();
        let read = |text: &str| PublisherKey::from_file_text(text).err();

        assert_eq!(read(""), Some(KeyError::MissingHeader));
        assert_eq!(read("hello\n"), Some(KeyError::MissingHeader));
        assert_eq!(
            read(&good.replace(" v1", " v9")),
            Some(KeyError::UnsupportedVersion("v9".into()))
        );
        assert_eq!(
            read("postdog-publisher-key v1\n"),
            Some(KeyError::MissingSecret)
        );
        assert_eq!(
            read("postdog-publisher-key v1\nsecret: !!!\n")
                .map(|error| matches!(error, KeyError::BadBase64 { .. })),
            Some(true)
        );
        assert_eq!(
            read("postdog-publisher-key v1\nsecret: AAAA\n"),
            Some(KeyError::WrongLength {
                what: "secret key",
                expected: 32,
                found: 3
            })
        );
        let mismatched = good.replace(&key.public().to_string(), &other.public().to_string());
        assert_eq!(read(&mismatched), Some(KeyError::PublicKeyMismatch));
        assert_eq!(
            read(&format!("{good}colour: blue\n")),
            Some(KeyError::UnexpectedLine { line: 5 })
        );
    }

    #[test]
    fn public_keys_display_and_parse() -> Result<(), KeyError> {
        let public = PublisherKey::from_seed([1; 32]).public();
        let text = public.to_string();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(text.parse::<PublicKey>()?, public);
        assert!(matches!(
            text.trim_start_matches("ed25519:").parse::<PublicKey>(),
            Err(KeyError::MissingPrefix(_))
        ));
        assert!(matches!(
            "ed25519:AAAA".parse::<PublicKey>(),
            Err(KeyError::WrongLength { .. })
        ));
        Ok(())
    }
}
