//! The audit log: an append-only record of state-changing API calls per tenant.

use serde::Serialize;
use sqlx::Row;

use super::{QueryContext, StorageError, TenantDb, now_ms};

/// One audited call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// The entry's id (time-ordered).
    pub id: String,
    /// The API key that made the call.
    pub api_key_id: Option<String>,
    /// The HTTP method.
    pub method: String,
    /// The request path (which names the resource).
    pub path: String,
    /// The response status.
    pub status: i64,
    /// When, Unix milliseconds.
    pub occurred_at: i64,
}

impl TenantDb {
    /// Appends an entry.
    pub async fn record_audit(
        &self,
        api_key_id: Option<&str>,
        method: &str,
        path: &str,
        status: u16,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO audit_log (id, tenant_id, api_key_id, method, path, status, occurred_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(self.tenant_id().as_str())
        .bind(api_key_id)
        .bind(method)
        .bind(path)
        .bind(i64::from(status))
        .bind(now_ms())
        .execute(self.storage().pool())
        .await
        .context("writing the audit log")
        .map(drop)
    }

    /// Entries newest first, before the cursor `before` (an entry id), at most `limit`.
    pub async fn list_audit(
        &self,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StorageError> {
        let rows = sqlx::query(
            "SELECT id, api_key_id, method, path, status, occurred_at FROM audit_log \
             WHERE tenant_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(self.tenant_id().as_str())
        .bind(before.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(self.storage().pool())
        .await
        .context("reading the audit log")?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    id: row.try_get("id")?,
                    api_key_id: row.try_get("api_key_id")?,
                    method: row.try_get("method")?,
                    path: row.try_get("path")?,
                    status: row.try_get("status")?,
                    occurred_at: row.try_get("occurred_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding the audit log")
    }
}
