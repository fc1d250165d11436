//! Plugin installs (a tenant's use of a marketplace plugin) and their sealed secrets.
//! Tenant-scoped reads and writes go through `TenantDb`; the hot-load watcher, which acts
//! for every tenant, uses the few `Storage` methods at the end (by plugin name).

use sqlx::Row;

use super::{QueryContext, Storage, StorageError, TenantDb, now_ms};
use crate::ids::TenantId;
use crate::secrets::Sealed;

/// One install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    /// Its id.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant_id: TenantId,
    /// The plugin, `publisher/name`.
    pub plugin: String,
    /// The semver requirement the tenant chose, such as `^1.2`.
    pub requirement: String,
    /// The version in use.
    pub version: String,
    /// The digest of the artifact in use.
    pub digest: String,
    /// What a rollback returns to.
    pub previous_version: Option<String>,
    /// The previous artifact's digest.
    pub previous_digest: Option<String>,
    /// Pinned installs do not move when new versions are published.
    pub pinned: bool,
    /// Disabled installs are not called.
    pub enabled: bool,
    /// Capabilities the tenant granted.
    pub grants: Vec<String>,
    /// Non-secret configuration (a JSON object).
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Calls recorded so far.
    pub calls: i64,
    /// Failed calls recorded so far.
    pub failures: i64,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// When it happened, Unix milliseconds.
    pub last_error_at: Option<i64>,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Last change, Unix milliseconds.
    pub updated_at: i64,
}

const INSTALL_COLUMNS: &str = "id, tenant_id, plugin, requirement, version, digest, previous_version, \
     previous_digest, pinned, enabled, grants, config, calls, failures, last_error, last_error_at, \
     created_at, updated_at";

fn install_from_row(row: &sqlx::any::AnyRow) -> Result<Install, sqlx::Error> {
    let grants: String = row.try_get("grants")?;
    let config: String = row.try_get("config")?;
    Ok(Install {
        id: row.try_get("id")?,
        tenant_id: TenantId::new(row.try_get::<String, _>("tenant_id")?),
        plugin: row.try_get("plugin")?,
        requirement: row.try_get("requirement")?,
        version: row.try_get("version")?,
        digest: row.try_get("digest")?,
        previous_version: row.try_get("previous_version")?,
        previous_digest: row.try_get("previous_digest")?,
        pinned: row.try_get::<i64, _>("pinned")? != 0,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        grants: serde_json::from_str(&grants)
            .map_err(|error| sqlx::Error::Decode(Box::new(error)))?,
        config: serde_json::from_str(&config)
            .map_err(|error| sqlx::Error::Decode(Box::new(error)))?,
        calls: row.try_get("calls")?,
        failures: row.try_get("failures")?,
        last_error: row.try_get("last_error")?,
        last_error_at: row.try_get("last_error_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Moves an install's `updated_at` strictly forward: nodes holding it in memory compare
/// it to decide whether to reload (two changes in one millisecond still differ).
async fn touch_install(
    tx: &mut sqlx::AnyConnection,
    tenant: &TenantId,
    install_id: &str,
) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE plugin_installs SET updated_at = CASE WHEN $1 > updated_at THEN $1 ELSE updated_at + 1 END \
         WHERE tenant_id = $2 AND id = $3",
    )
    .bind(now_ms())
    .bind(tenant.as_str())
    .bind(install_id)
    .execute(&mut *tx)
    .await
    .context("marking an install changed")
    .map(drop)
}

fn sealed_from_row(row: &sqlx::any::AnyRow) -> Result<Sealed, sqlx::Error> {
    Ok(Sealed {
        key_id: row.try_get("key_id")?,
        nonce: row.try_get("nonce")?,
        ciphertext: row.try_get("ciphertext")?,
    })
}

impl TenantDb {
    /// Records a new install.
    pub async fn create_install(&self, install: &Install) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO plugin_installs (id, tenant_id, plugin, requirement, version, digest, \
             pinned, enabled, grants, config, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)",
        )
        .bind(&install.id)
        .bind(self.tenant_id().as_str())
        .bind(&install.plugin)
        .bind(&install.requirement)
        .bind(&install.version)
        .bind(&install.digest)
        .bind(i64::from(install.pinned))
        .bind(i64::from(install.enabled))
        .bind(serde_json::json!(install.grants).to_string())
        .bind(serde_json::Value::Object(install.config.clone()).to_string())
        .bind(install.created_at)
        .execute(self.storage().pool())
        .await
        .context("creating an install")
        .map(drop)
    }

    /// One of this tenant's installs.
    pub async fn get_install(&self, id: &str) -> Result<Option<Install>, StorageError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {INSTALL_COLUMNS} FROM plugin_installs WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(self.tenant_id().as_str())
        .bind(id)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading an install")?;
        row.as_ref()
            .map(install_from_row)
            .transpose()
            .context("decoding an install")
    }

    /// This tenant's installs, oldest first.
    pub async fn list_installs(&self) -> Result<Vec<Install>, StorageError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {INSTALL_COLUMNS} FROM plugin_installs WHERE tenant_id = $1 ORDER BY id"
        )))
        .bind(self.tenant_id().as_str())
        .fetch_all(self.storage().pool())
        .await
        .context("listing installs")?;
        rows.iter()
            .map(install_from_row)
            .collect::<Result<_, _>>()
            .context("decoding installs")
    }

    /// Saves an install's settings (requirement, pin, enabled, grants, config).
    pub async fn save_install_settings(&self, install: &Install) -> Result<bool, StorageError> {
        let result = sqlx::query(
            "UPDATE plugin_installs SET requirement = $1, pinned = $2, enabled = $3, grants = $4, \
             config = $5, updated_at = CASE WHEN $6 > updated_at THEN $6 ELSE updated_at + 1 END \
             WHERE tenant_id = $7 AND id = $8",
        )
        .bind(&install.requirement)
        .bind(i64::from(install.pinned))
        .bind(i64::from(install.enabled))
        .bind(serde_json::json!(install.grants).to_string())
        .bind(serde_json::Value::Object(install.config.clone()).to_string())
        .bind(now_ms())
        .bind(self.tenant_id().as_str())
        .bind(&install.id)
        .execute(self.storage().pool())
        .await
        .context("saving an install")?;
        Ok(result.rows_affected() > 0)
    }

    /// Deletes an install (its secrets and kv data go with it).
    pub async fn delete_install(&self, id: &str) -> Result<bool, StorageError> {
        let mut tx = self
            .storage()
            .begin_write()
            .await
            .context("deleting an install")?;
        sqlx::query("DELETE FROM plugin_kv WHERE tenant_id = $1 AND install_id = $2")
            .bind(self.tenant_id().as_str())
            .bind(id)
            .execute(&mut *tx)
            .await
            .context("deleting an install's data")?;
        let result = sqlx::query("DELETE FROM plugin_installs WHERE tenant_id = $1 AND id = $2")
            .bind(self.tenant_id().as_str())
            .bind(id)
            .execute(&mut *tx)
            .await
            .context("deleting an install")?;
        tx.commit().await.context("deleting an install")?;
        Ok(result.rows_affected() > 0)
    }

    /// Stores a sealed secret of an install (and marks the install changed, so other
    /// nodes reload it).
    pub async fn put_install_secret(
        &self,
        install_id: &str,
        name: &str,
        sealed: &Sealed,
    ) -> Result<(), StorageError> {
        let mut tx = self
            .storage()
            .begin_write()
            .await
            .context("storing a secret")?;
        sqlx::query(
            "INSERT INTO plugin_install_secrets (tenant_id, install_id, name, key_id, nonce, ciphertext, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (install_id, name) DO UPDATE SET key_id = excluded.key_id, \
             nonce = excluded.nonce, ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
        )
        .bind(self.tenant_id().as_str())
        .bind(install_id)
        .bind(name)
        .bind(&sealed.key_id)
        .bind(sealed.nonce.clone())
        .bind(sealed.ciphertext.clone())
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .context("storing a secret")?;
        touch_install(&mut tx, self.tenant_id(), install_id).await?;
        tx.commit().await.context("storing a secret")
    }

    /// Removes a secret; whether it existed.
    pub async fn delete_install_secret(
        &self,
        install_id: &str,
        name: &str,
    ) -> Result<bool, StorageError> {
        let mut tx = self
            .storage()
            .begin_write()
            .await
            .context("deleting a secret")?;
        let result = sqlx::query(
            "DELETE FROM plugin_install_secrets WHERE tenant_id = $1 AND install_id = $2 AND name = $3",
        )
        .bind(self.tenant_id().as_str())
        .bind(install_id)
        .bind(name)
        .execute(&mut *tx)
        .await
        .context("deleting a secret")?;
        touch_install(&mut tx, self.tenant_id(), install_id).await?;
        tx.commit().await.context("deleting a secret")?;
        Ok(result.rows_affected() > 0)
    }

    /// An install's sealed secrets by name.
    pub async fn install_secrets(
        &self,
        install_id: &str,
    ) -> Result<Vec<(String, Sealed)>, StorageError> {
        let rows = sqlx::query(
            "SELECT name, key_id, nonce, ciphertext FROM plugin_install_secrets \
             WHERE tenant_id = $1 AND install_id = $2 ORDER BY name",
        )
        .bind(self.tenant_id().as_str())
        .bind(install_id)
        .fetch_all(self.storage().pool())
        .await
        .context("reading secrets")?;
        rows.iter()
            .map(|row| Ok((row.try_get("name")?, sealed_from_row(row)?)))
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding secrets")
    }

    /// Moves an install to `version`/`digest` if it is still on `from_digest`, keeping
    /// the current one as the rollback target; whether it moved.
    pub async fn move_install(
        &self,
        id: &str,
        from_digest: &str,
        version: &str,
        digest: &str,
        pinned: bool,
    ) -> Result<bool, StorageError> {
        self.storage()
            .move_install(self.tenant_id(), id, from_digest, version, digest, pinned)
            .await
    }
}

impl Storage {
    /// Unpinned installs of `plugin`, of every tenant (for hot-load).
    pub async fn unpinned_installs_of(&self, plugin: &str) -> Result<Vec<Install>, StorageError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {INSTALL_COLUMNS} FROM plugin_installs WHERE plugin = $1 AND pinned = 0 ORDER BY id"
        )))
        .bind(plugin)
        .fetch_all(self.pool())
        .await
        .context("listing installs of a plugin")?;
        rows.iter()
            .map(install_from_row)
            .collect::<Result<_, _>>()
            .context("decoding installs")
    }

    /// See `TenantDb::move_install`; `tenant` is the install's own tenant.
    pub(crate) async fn move_install(
        &self,
        tenant: &TenantId,
        id: &str,
        from_digest: &str,
        version: &str,
        digest: &str,
        pinned: bool,
    ) -> Result<bool, StorageError> {
        let result = sqlx::query(
            "UPDATE plugin_installs SET previous_version = version, previous_digest = digest, \
             version = $1, digest = $2, pinned = $3, \
             updated_at = CASE WHEN $4 > updated_at THEN $4 ELSE updated_at + 1 END \
             WHERE tenant_id = $5 AND id = $6 AND digest = $7",
        )
        .bind(version)
        .bind(digest)
        .bind(i64::from(pinned))
        .bind(now_ms())
        .bind(tenant.as_str())
        .bind(id)
        .bind(from_digest)
        .execute(self.pool())
        .await
        .context("moving an install to another version")?;
        Ok(result.rows_affected() > 0)
    }

    /// Every sealed secret not sealed with `key_id` (for re-sealing after a key rotation):
    /// (tenant, install, name, sealed value).
    pub async fn secrets_sealed_with_other_keys(
        &self,
        key_id: &str,
    ) -> Result<Vec<(TenantId, String, String, Sealed)>, StorageError> {
        let rows = sqlx::query(
            "SELECT tenant_id, install_id, name, key_id, nonce, ciphertext FROM plugin_install_secrets \
             WHERE key_id <> $1 ORDER BY install_id, name",
        )
        .bind(key_id)
        .fetch_all(self.pool())
        .await
        .context("listing secrets to re-seal")?;
        rows.iter()
            .map(|row| {
                Ok((
                    TenantId::new(row.try_get::<String, _>("tenant_id")?),
                    row.try_get("install_id")?,
                    row.try_get("name")?,
                    sealed_from_row(row)?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding secrets")
    }

    /// Replaces a secret sealed with `old_key_id` by `sealed` (unless it changed since).
    pub async fn reseal_secret(
        &self,
        install_id: &str,
        name: &str,
        old_key_id: &str,
        sealed: &Sealed,
    ) -> Result<bool, StorageError> {
        let result = sqlx::query(
            "UPDATE plugin_install_secrets SET key_id = $1, nonce = $2, ciphertext = $3 \
             WHERE install_id = $4 AND name = $5 AND key_id = $6",
        )
        .bind(&sealed.key_id)
        .bind(sealed.nonce.clone())
        .bind(sealed.ciphertext.clone())
        .bind(install_id)
        .bind(name)
        .bind(old_key_id)
        .execute(self.pool())
        .await
        .context("re-sealing a secret")?;
        Ok(result.rows_affected() > 0)
    }

    /// Adds call counts recorded in memory to an install.
    pub async fn add_install_health(
        &self,
        tenant: &TenantId,
        id: &str,
        calls: i64,
        failures: i64,
        last_error: Option<(&str, i64)>,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE plugin_installs SET calls = calls + $1, failures = failures + $2, \
             last_error = COALESCE($3, last_error), last_error_at = COALESCE($4, last_error_at) \
             WHERE tenant_id = $5 AND id = $6",
        )
        .bind(calls)
        .bind(failures)
        .bind(last_error.map(|(message, _)| message))
        .bind(last_error.map(|(_, at)| at))
        .bind(tenant.as_str())
        .bind(id)
        .execute(self.pool())
        .await
        .context("recording an install's health")
        .map(drop)
    }
}
