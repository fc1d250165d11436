//! Sealing plugin secrets at rest: AES-256-GCM with a random 96-bit nonce per value and
//! the install id and secret name as associated data (a sealed value copied to another
//! install or name does not open).
//!
//! Keys come from the operator: `POSTDOG_SECRETS_KEY` (32 bytes, base64) is the current
//! key, `POSTDOG_SECRETS_PREVIOUS_KEYS` (comma-separated) older ones that can still open
//! values. Without `POSTDOG_SECRETS_KEY`, the key is `<data-dir>/secrets.key`, created
//! (mode 0600) on first start, so the embedded default needs no set-up; several nodes on
//! one PostgreSQL must share the same key through the environment. Each sealed value
//! records the id (a hash prefix) of the key that sealed it; rotation is: set the new key,
//! move the old one to the previous list, restart — values are re-sealed on start.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// A problem with the operator's secret keys or a sealed value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// A configured key is not 32 bytes of base64.
    #[error("{source_name} is not a base64-encoded 32-byte key: {reason}")]
    BadKey {
        /// Where the key came from.
        source_name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file could not be read or created.
    #[error("secrets key file {path}: {error}")]
    KeyFile {
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A value was sealed with a key the operator no longer configures.
    #[error(
        "a secret was sealed with key {0}, which is neither POSTDOG_SECRETS_KEY nor in \
         POSTDOG_SECRETS_PREVIOUS_KEYS; restore that key to read it"
    )]
    UnknownKey(String),
    /// A sealed value did not open: altered, or moved to another install or name.
    #[error("a sealed secret failed authentication (altered or moved)")]
    Corrupt,
}

struct Key {
    id: String,
    cipher: Aes256Gcm,
}

impl Key {
    fn new(bytes: &[u8; 32]) -> Self {
        let id = hex::encode(&Sha256::digest(bytes)[..8]);
        Self {
            id,
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }

    fn parse(text: &str, source_name: &str) -> Result<Self, SecretsError> {
        let bad = |reason: String| SecretsError::BadKey {
            source_name: source_name.to_string(),
            reason,
        };
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|error| bad(error.to_string()))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|bytes: Vec<u8>| bad(format!("it is {} bytes long", bytes.len())))?;
        Ok(Self::new(&bytes))
    }
}

/// A value sealed for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The id of the key that sealed it.
    pub key_id: String,
    /// The 12-byte nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext with its 16-byte tag.
    pub ciphertext: Vec<u8>,
}

/// The operator's keys: the current one seals, any opens.
pub struct SecretKeys {
    current: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKeys")
            .field("current", &self.current.id)
            .field("previous", &self.previous.len())
            .finish()
    }
}

impl SecretKeys {
    /// Keys from the environment, falling back to `<data_dir>/secrets.key`.
    pub fn from_env(data_dir: &Path) -> Result<Self, SecretsError> {
        let current = match std::env::var("POSTDOG_SECRETS_KEY") {
            Ok(text) if !text.trim().is_empty() => Key::parse(&text, "POSTDOG_SECRETS_KEY")?,
            _ => Self::key_file(&data_dir.join("secrets.key"))?,
        };
        let previous = std::env::var("POSTDOG_SECRETS_PREVIOUS_KEYS")
            .unwrap_or_default()
            .split(',')
            .filter(|text| !text.trim().is_empty())
            .map(|text| Key::parse(text, "POSTDOG_SECRETS_PREVIOUS_KEYS"))
            .collect::<Result<_, _>>()?;
        Ok(Self { current, previous })
    }

    /// Keys from explicit base64 strings (tests and tools).
    pub fn from_base64(current: &str, previous: &[&str]) -> Result<Self, SecretsError> {
        Ok(Self {
            current: Key::parse(current, "the current key")?,
            previous: previous
                .iter()
                .map(|text| Key::parse(text, "a previous key"))
                .collect::<Result<_, _>>()?,
        })
    }

    /// A new random key, base64-encoded.
    pub fn generate_base64() -> String {
        STANDARD.encode(random::<32>())
    }

    fn key_file(path: &Path) -> Result<Key, SecretsError> {
        let text =
            crate::key_files::read_or_create(path, Self::generate_base64).map_err(|error| {
                SecretsError::KeyFile {
                    path: path.display().to_string(),
                    error,
                }
            })?;
        Key::parse(&text, &path.display().to_string())
    }

    /// The id of the current key.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `plaintext` for `install_id`'s secret `name`.
    pub fn seal(&self, install_id: &str, name: &str, plaintext: &str) -> Sealed {
        let nonce = random::<12>();
        let aad = associated_data(install_id, name);
        let ciphertext = self
            .current
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        Sealed {
            key_id: self.current.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Opens a sealed value of `install_id`'s secret `name`.
    pub fn open(
        &self,
        install_id: &str,
        name: &str,
        sealed: &Sealed,
    ) -> Result<String, SecretsError> {
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|key| key.id == sealed.key_id)
            .ok_or_else(|| SecretsError::UnknownKey(sealed.key_id.clone()))?;
        let nonce: [u8; 12] = sealed
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| SecretsError::Corrupt)?;
        let aad = associated_data(install_id, name);
        let plaintext = key
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretsError::Corrupt)?;
        String::from_utf8(plaintext).map_err(|_| SecretsError::Corrupt)
    }
}

fn associated_data(install_id: &str, name: &str) -> Vec<u8> {
    format!("postdog-secret-v1\0{install_id}\0{name}").into_bytes()
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0_u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_rotate_and_refuse_tampering() -> Result<(), SecretsError> {
        let old = SecretKeys::generate_base64();
        let new = SecretKeys::generate_base64();
        let keys = SecretKeys::from_base64(&old, &[])?;
        let sealed = keys.seal("install-1", "api_token", "s3cret");
        assert_ne!(sealed.ciphertext, b"s3cret".to_vec());
        assert_eq!(keys.open("install-1", "api_token", &sealed)?, "s3cret");
        // Moved to another install or name: refused.
        assert!(matches!(
            keys.open("install-2", "api_token", &sealed),
            Err(SecretsError::Corrupt)
        ));
        assert!(matches!(
            keys.open("install-1", "other", &sealed),
            Err(SecretsError::Corrupt)
        ));
        // Altered: refused.
        let mut altered = sealed.clone();
        altered.ciphertext[0] ^= 1;
        assert!(matches!(
            keys.open("install-1", "api_token", &altered),
            Err(SecretsError::Corrupt)
        ));
        // Rotation: the new key opens nothing old unless the old key is kept as previous.
        let rotated = SecretKeys::from_base64(&new, &[&old])?;
        assert_eq!(rotated.open("install-1", "api_token", &sealed)?, "s3cret");
        let resealed = rotated.seal("install-1", "api_token", "s3cret");
        assert_eq!(resealed.key_id, rotated.current_id());
        let forgotten = SecretKeys::from_base64(&new, &[])?;
        assert!(matches!(
            forgotten.open("install-1", "api_token", &sealed),
            Err(SecretsError::UnknownKey(_))
        ));
        assert!(SecretKeys::from_base64("dG9vIHNob3J0", &[]).is_err());
        Ok(())
    }

    #[test]
    fn the_key_file_is_created_once_and_reused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secrets.key");
        let first = SecretKeys::key_file(&path)?;
        let second = SecretKeys::key_file(&path)?;
        assert_eq!(first.id, second.id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path)?.permissions().mode() & 0o777,
                0o600
            );
        }
        Ok(())
    }
}
