//! The plugin key-value store: a small persistent map per (tenant, plugin install),
//! reached only through `TenantDb::plugin_kv`. Quotas are checked in the same
//! transaction as the write (SQLite: `BEGIN IMMEDIATE`, so the check and the write see
//! the same data; PostgreSQL: the install's usage is read under a lock on the tenant
//! row), so a refused write leaves stored data exactly as it was.

use sqlx::Row;

use super::{Backend, QueryContext, StorageError, TenantDb, now_ms};
use crate::ids::InstallId;

/// Size limits of one install's key-value data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvQuota {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Total of key and value bytes across the install's entries.
    pub max_total_bytes: u64,
    /// Number of keys.
    pub max_keys: u64,
}

impl Default for KvQuota {
    fn default() -> Self {
        Self {
            max_key_bytes: 256,
            max_value_bytes: 64 * 1024,
            max_total_bytes: 1024 * 1024,
            max_keys: 1000,
        }
    }
}

/// Why a key-value operation failed. Messages tell a plugin author what to change.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The key is unusable.
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// Why.
        reason: &'static str,
    },
    /// The key is longer than allowed.
    #[error("key is {len} bytes; keys may be at most {max} bytes")]
    KeyTooLarge {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is larger than allowed.
    #[error("value is {len} bytes; values may be at most {max} bytes")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The write would exceed the install's quota.
    #[error(
        "quota exceeded: the install would use {would_use} {unit} of at most {max}; \
         delete keys or store less"
    )]
    QuotaExceeded {
        /// `bytes` or `keys`.
        unit: &'static str,
        /// Usage after the write.
        would_use: u64,
        /// The limit.
        max: u64,
    },
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// One install's key-value store.
#[derive(Clone, Debug)]
pub struct PluginKv {
    db: TenantDb,
    install_id: InstallId,
    quota: KvQuota,
}

/// The smallest string greater than every string starting with `prefix`, for a range
/// scan that treats `%` and `_` literally (unlike LIKE). `None`: no upper bound.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = u32::from(last) + 1;
        // Skip the surrogate gap, which `char` cannot hold.
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(next) = char::from_u32(next) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

impl TenantDb {
    /// The key-value store of one of this tenant's plugin installs.
    pub fn plugin_kv(&self, install_id: &InstallId, quota: KvQuota) -> PluginKv {
        PluginKv {
            db: self.clone(),
            install_id: install_id.clone(),
            quota,
        }
    }
}

impl PluginKv {
    fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::InvalidKey {
                reason: "keys must not be empty",
            });
        }
        if key.contains('\0') {
            return Err(KvError::InvalidKey {
                reason: "keys must not contain NUL characters",
            });
        }
        if key.len() > self.quota.max_key_bytes {
            return Err(KvError::KeyTooLarge {
                len: key.len(),
                max: self.quota.max_key_bytes,
            });
        }
        Ok(())
    }

    /// The value under `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.check_key(key)?;
        let row = sqlx::query(
            "SELECT value FROM plugin_kv WHERE tenant_id = $1 AND install_id = $2 AND key = $3",
        )
        .bind(self.db.tenant_id().as_str())
        .bind(self.install_id.as_str())
        .bind(key)
        .fetch_optional(self.db.storage().pool())
        .await
        .context("reading a plugin kv value")?;
        Ok(row
            .map(|row| row.try_get::<Vec<u8>, _>("value"))
            .transpose()
            .context("decoding a plugin kv value")?)
    }

    /// Stores `value` under `key`, within the quota.
    pub async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.check_key(key)?;
        if value.len() > self.quota.max_value_bytes {
            return Err(KvError::ValueTooLarge {
                len: value.len(),
                max: self.quota.max_value_bytes,
            });
        }
        let storage = self.db.storage();
        let tenant_id = self.db.tenant_id().as_str();
        let install_id = self.install_id.as_str();
        let mut tx = storage
            .begin_write()
            .await
            .context("starting a plugin kv write")?;
        if storage.backend() == Backend::Postgres {
            // Serializes concurrent writers of one tenant so the quota check holds.
            sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR UPDATE")
                .bind(tenant_id)
                .fetch_optional(&mut *tx)
                .await
                .context("locking the tenant for a plugin kv write")?;
        }
        let usage = sqlx::query(
            "SELECT COUNT(*) AS keys, \
                    COALESCE(SUM(OCTET_LENGTH(key) + OCTET_LENGTH(value)), 0) AS bytes, \
                    COALESCE(SUM(CASE WHEN key = $3 THEN OCTET_LENGTH(key) + OCTET_LENGTH(value) ELSE 0 END), 0) AS existing_bytes, \
                    COALESCE(SUM(CASE WHEN key = $3 THEN 1 ELSE 0 END), 0) AS existing_keys \
             FROM plugin_kv WHERE tenant_id = $1 AND install_id = $2",
        )
        .bind(tenant_id)
        .bind(install_id)
        .bind(key)
        .fetch_one(&mut *tx)
        .await
        .context("measuring plugin kv usage")?;
        let number = |name: &str| -> Result<u64, StorageError> {
            let value: i64 = usage.try_get(name).context("decoding plugin kv usage")?;
            Ok(u64::try_from(value).unwrap_or(0))
        };
        let (keys, bytes) = (number("keys")?, number("bytes")?);
        let (existing_bytes, existing_keys) = (number("existing_bytes")?, number("existing_keys")?);
        let new_bytes = (key.len() + value.len()) as u64;
        let would_use_keys = keys - existing_keys + 1;
        if would_use_keys > self.quota.max_keys {
            return Err(KvError::QuotaExceeded {
                unit: "keys",
                would_use: would_use_keys,
                max: self.quota.max_keys,
            });
        }
        let would_use_bytes = bytes - existing_bytes + new_bytes;
        if would_use_bytes > self.quota.max_total_bytes {
            return Err(KvError::QuotaExceeded {
                unit: "bytes",
                would_use: would_use_bytes,
                max: self.quota.max_total_bytes,
            });
        }
        sqlx::query(
            "INSERT INTO plugin_kv (tenant_id, install_id, key, value, updated_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id, install_id, key) \
             DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(tenant_id)
        .bind(install_id)
        .bind(key)
        .bind(value)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .context("writing a plugin kv value")?;
        tx.commit().await.context("committing a plugin kv write")?;
        Ok(())
    }

    /// Deletes `key`; whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        self.check_key(key)?;
        let result = sqlx::query(
            "DELETE FROM plugin_kv WHERE tenant_id = $1 AND install_id = $2 AND key = $3",
        )
        .bind(self.db.tenant_id().as_str())
        .bind(self.install_id.as_str())
        .bind(key)
        .execute(self.db.storage().pool())
        .await
        .context("deleting a plugin kv value")?;
        Ok(result.rows_affected() > 0)
    }

    /// Keys starting with `prefix`, in byte order, at most `limit`.
    pub async fn list_keys(&self, prefix: &str, limit: u32) -> Result<Vec<String>, KvError> {
        let pool = self.db.storage().pool();
        let tenant_id = self.db.tenant_id().as_str();
        let install_id = self.install_id.as_str();
        let rows = match prefix_upper_bound(prefix) {
            Some(upper) => {
                sqlx::query(
                    "SELECT key FROM plugin_kv WHERE tenant_id = $1 AND install_id = $2 \
                 AND key >= $3 AND key < $4 ORDER BY key LIMIT $5",
                )
                .bind(tenant_id)
                .bind(install_id)
                .bind(prefix)
                .bind(upper)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
            }
            None => {
                sqlx::query(
                    "SELECT key FROM plugin_kv WHERE tenant_id = $1 AND install_id = $2 \
                 AND key >= $3 ORDER BY key LIMIT $4",
                )
                .bind(tenant_id)
                .bind(install_id)
                .bind(prefix)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
            }
        }
        .context("listing plugin kv keys")?;
        Ok(rows
            .iter()
            .map(|row| row.try_get::<String, _>("key"))
            .collect::<Result<_, _>>()
            .context("decoding plugin kv keys")?)
    }

    /// (keys, bytes) used by this install.
    pub async fn usage(&self) -> Result<(u64, u64), KvError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS keys, COALESCE(SUM(OCTET_LENGTH(key) + OCTET_LENGTH(value)), 0) AS bytes \
             FROM plugin_kv WHERE tenant_id = $1 AND install_id = $2",
        )
        .bind(self.db.tenant_id().as_str())
        .bind(self.install_id.as_str())
        .fetch_one(self.db.storage().pool())
        .await
        .context("measuring plugin kv usage")?;
        let keys: i64 = row.try_get("keys").context("decoding plugin kv usage")?;
        let bytes: i64 = row.try_get("bytes").context("decoding plugin kv usage")?;
        Ok((
            u64::try_from(keys).unwrap_or(0),
            u64::try_from(bytes).unwrap_or(0),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_upper_bound;

    #[test]
    fn upper_bounds() {
        assert_eq!(prefix_upper_bound("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_upper_bound("a%").as_deref(), Some("a&"));
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{D7FF}").as_deref(), Some("\u{E000}"));
    }
}
