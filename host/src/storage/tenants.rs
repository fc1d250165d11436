//! The tenants aggregate: businesses (and, later, resellers' sub-tenants) using PostDog.
//! Tenants are global rows (the operator's concern), so their queries hang off `Storage`.

use sqlx::Row;

use super::{QueryContext, Storage, StorageError, now_ms};
use crate::ids::TenantId;

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The tenant's id.
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// Plan slug (`starter`, `pro`, `business`).
    pub plan: String,
    /// `active` or `suspended`.
    pub status: String,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Last change, Unix milliseconds.
    pub updated_at: i64,
}

fn tenant_from_row(row: &sqlx::any::AnyRow) -> Result<Tenant, sqlx::Error> {
    Ok(Tenant {
        id: TenantId::new(row.try_get::<String, _>("id")?),
        name: row.try_get("name")?,
        plan: row.try_get("plan")?,
        status: row.try_get("status")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Storage {
    /// Creates a tenant.
    pub async fn create_tenant(&self, name: &str, plan: &str) -> Result<Tenant, StorageError> {
        let now = now_ms();
        let tenant = Tenant {
            id: TenantId::generate(),
            name: name.to_string(),
            plan: plan.to_string(),
            status: "active".to_string(),
            created_at: now,
            updated_at: now,
        };
        sqlx::query(
            "INSERT INTO tenants (id, name, plan, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(tenant.id.as_str())
        .bind(&tenant.name)
        .bind(&tenant.plan)
        .bind(&tenant.status)
        .bind(tenant.created_at)
        .bind(tenant.updated_at)
        .execute(self.pool())
        .await
        .context("creating a tenant")?;
        Ok(tenant)
    }

    /// Finds a tenant by id.
    pub async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StorageError> {
        let row = sqlx::query(
            "SELECT id, name, plan, status, created_at, updated_at FROM tenants WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(self.pool())
        .await
        .context("reading a tenant")?;
        row.as_ref()
            .map(tenant_from_row)
            .transpose()
            .context("decoding a tenant")
    }

    /// All tenants, oldest first.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, StorageError> {
        let rows = sqlx::query(
            "SELECT id, name, plan, status, created_at, updated_at FROM tenants ORDER BY id",
        )
        .fetch_all(self.pool())
        .await
        .context("listing tenants")?;
        rows.iter()
            .map(tenant_from_row)
            .collect::<Result<_, _>>()
            .context("decoding tenants")
    }
}
