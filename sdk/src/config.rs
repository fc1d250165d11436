//! The install's configuration and secrets, as set by the tenant.

use crate::__private::bindings::postdog::plugin::config as host;

/// A required configuration key is not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMissing {
    /// The key.
    pub key: String,
    /// Whether it is a secret.
    pub secret: bool,
}

impl std::fmt::Display for ConfigMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.secret {
            "secret"
        } else {
            "configuration value"
        };
        write!(f, "the {kind} `{}` is not set for this install", self.key)
    }
}

impl std::error::Error for ConfigMissing {}

/// A configuration value, if set.
pub fn get(key: &str) -> Option<String> {
    host::get(key)
}

/// A secret, if set.
pub fn secret(key: &str) -> Option<String> {
    host::secret(key)
}

/// A configuration value that must be set.
pub fn require(key: &str) -> Result<String, ConfigMissing> {
    get(key).ok_or_else(|| ConfigMissing {
        key: key.to_string(),
        secret: false,
    })
}

/// A secret that must be set.
pub fn require_secret(key: &str) -> Result<String, ConfigMissing> {
    secret(key).ok_or_else(|| ConfigMissing {
        key: key.to_string(),
        secret: true,
    })
}
