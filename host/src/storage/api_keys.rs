//! API keys: bearer secrets that authenticate calls to a tenant's API. A secret is shown
//! once, at creation; storage keeps only its sha256 and a short public prefix.

use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{QueryContext, Storage, StorageError, TenantDb, now_ms};
use crate::ids::TenantId;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, including keys and settings.
    Admin,
    /// Day-to-day work: contacts, conversations, messages.
    Agent,
    /// Reading only.
    ReadOnly,
}

impl Role {
    /// The role's name as stored and shown (`admin`, `agent`, `read-only`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Agent => "agent",
            Role::ReadOnly => "read-only",
        }
    }

    /// Parses a role name.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "admin" => Some(Role::Admin),
            "agent" => Some(Role::Agent),
            "read-only" => Some(Role::ReadOnly),
            _ => None,
        }
    }
}

/// An API key as listed (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiKey {
    /// The key's id.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant_id: TenantId,
    /// A name given by its creator.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The public start of the secret, to tell keys apart.
    pub prefix: String,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Last use, Unix milliseconds (updated at most once a minute).
    pub last_used_at: Option<i64>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
}

/// A freshly created key with its secret, which is never shown again.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// The stored key.
    pub key: ApiKey,
    /// The bearer secret.
    pub secret: String,
}

/// The sha256 of a secret, as stored.
pub(crate) fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn new_secret() -> String {
    // Two v4 UUIDs: 244 bits from the operating system's random source.
    format!(
        "pdk_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn key_from_row(row: &sqlx::any::AnyRow) -> Result<ApiKey, sqlx::Error> {
    let role: String = row.try_get("role")?;
    Ok(ApiKey {
        id: row.try_get("id")?,
        tenant_id: TenantId::new(row.try_get::<String, _>("tenant_id")?),
        name: row.try_get("name")?,
        role: Role::parse(&role)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown role `{role}`").into()))?,
        prefix: row.try_get("prefix")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

macro_rules! key_columns {
    () => {
        "id, tenant_id, name, role, prefix, created_at, last_used_at, revoked_at"
    };
}

impl TenantDb {
    /// Creates a key for this tenant; the returned secret is shown once.
    pub async fn create_api_key(&self, name: &str, role: Role) -> Result<NewApiKey, StorageError> {
        let secret = new_secret();
        let key = ApiKey {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: self.tenant_id().clone(),
            name: name.to_string(),
            role,
            prefix: secret[..12].to_string(),
            created_at: now_ms(),
            last_used_at: None,
            revoked_at: None,
        };
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, name, role, prefix, secret_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.id)
        .bind(key.tenant_id.as_str())
        .bind(&key.name)
        .bind(key.role.as_str())
        .bind(&key.prefix)
        .bind(secret_hash(&secret))
        .bind(key.created_at)
        .execute(self.storage().pool())
        .await
        .context("creating an API key")?;
        Ok(NewApiKey { key, secret })
    }

    /// This tenant's keys, oldest first, revoked ones included.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StorageError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id"
        ))
        .bind(self.tenant_id().as_str())
        .fetch_all(self.storage().pool())
        .await
        .context("listing API keys")?;
        rows.iter()
            .map(key_from_row)
            .collect::<Result<_, _>>()
            .context("decoding API keys")
    }

    /// Revokes one of this tenant's keys; whether an active key was revoked.
    pub async fn revoke_api_key(&self, key_id: &str) -> Result<bool, StorageError> {
        let result = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 \
             WHERE tenant_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(self.tenant_id().as_str())
        .bind(key_id)
        .execute(self.storage().pool())
        .await
        .context("revoking an API key")?;
        self.storage().auth_cache().invalidate();
        Ok(result.rows_affected() > 0)
    }
}

impl Storage {
    /// The active key with this secret, if any (revoked and unknown keys give `None`).
    pub async fn find_api_key(&self, secret: &str) -> Result<Option<ApiKey>, StorageError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL"
        ))
        .bind(secret_hash(secret))
        .fetch_optional(self.pool())
        .await
        .context("looking up an API key")?;
        row.as_ref()
            .map(key_from_row)
            .transpose()
            .context("decoding an API key")
    }

    /// Records that a key was used at `at` (Unix milliseconds).
    pub async fn touch_api_key(&self, key_id: &str, at: i64) -> Result<(), StorageError> {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(at)
            .bind(key_id)
            .execute(self.pool())
            .await
            .context("recording an API key's use")
            .map(drop)
    }
}
