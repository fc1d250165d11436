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
    /// The reseller this tenant belongs to, for sub-tenants.
    pub parent_id: Option<TenantId>,
    /// ISO 3166-1 country for phone numbers written without a country code.
    pub default_country: String,
}

/// The columns `tenant_from_row` reads (a macro so queries stay `&'static str`).
macro_rules! tenant_columns {
    () => {
        "id, name, plan, status, created_at, updated_at, parent_id, default_country"
    };
}

fn tenant_from_row(row: &sqlx::any::AnyRow) -> Result<Tenant, sqlx::Error> {
    Ok(Tenant {
        id: TenantId::new(row.try_get::<String, _>("id")?),
        name: row.try_get("name")?,
        plan: row.try_get("plan")?,
        status: row.try_get("status")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        parent_id: row
            .try_get::<Option<String>, _>("parent_id")?
            .map(TenantId::new),
        default_country: row.try_get("default_country")?,
    })
}

impl Storage {
    /// Creates a top-level tenant.
    pub async fn create_tenant(&self, name: &str, plan: &str) -> Result<Tenant, StorageError> {
        self.insert_tenant(name, plan, None).await
    }

    /// Creates a sub-tenant of the reseller `parent`.
    pub async fn create_sub_tenant(
        &self,
        parent: &TenantId,
        name: &str,
        plan: &str,
    ) -> Result<Tenant, StorageError> {
        self.insert_tenant(name, plan, Some(parent.clone())).await
    }

    async fn insert_tenant(
        &self,
        name: &str,
        plan: &str,
        parent_id: Option<TenantId>,
    ) -> Result<Tenant, StorageError> {
        let now = now_ms();
        let tenant = Tenant {
            id: TenantId::generate(),
            name: name.to_string(),
            plan: plan.to_string(),
            status: "active".to_string(),
            created_at: now,
            updated_at: now,
            parent_id,
            default_country: "US".to_string(),
        };
        sqlx::query(
            "INSERT INTO tenants (id, name, plan, status, created_at, updated_at, parent_id, default_country) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(tenant.id.as_str())
        .bind(&tenant.name)
        .bind(&tenant.plan)
        .bind(&tenant.status)
        .bind(tenant.created_at)
        .bind(tenant.updated_at)
        .bind(tenant.parent_id.as_ref().map(TenantId::as_str))
        .bind(&tenant.default_country)
        .execute(self.pool())
        .await
        .context("creating a tenant")?;
        Ok(tenant)
    }

    /// Finds a tenant by id.
    pub async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StorageError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            tenant_columns!(),
            " FROM tenants WHERE id = $1"
        ))
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
        let rows = sqlx::query(concat!(
            "SELECT ",
            tenant_columns!(),
            " FROM tenants ORDER BY id"
        ))
        .fetch_all(self.pool())
        .await
        .context("listing tenants")?;
        rows.iter()
            .map(tenant_from_row)
            .collect::<Result<_, _>>()
            .context("decoding tenants")
    }
}

impl Storage {
    /// Sets a tenant's status (`active` or `suspended`); whether the tenant exists.
    pub async fn set_tenant_status(
        &self,
        id: &TenantId,
        status: &str,
    ) -> Result<bool, StorageError> {
        let result = sqlx::query("UPDATE tenants SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(status)
            .bind(now_ms())
            .bind(id.as_str())
            .execute(self.pool())
            .await
            .context("changing a tenant's status")?;
        Ok(result.rows_affected() > 0)
    }
}

impl Storage {
    /// Changes a tenant's plan; whether the tenant exists.
    pub async fn set_tenant_plan(&self, id: &TenantId, plan: &str) -> Result<bool, StorageError> {
        let result = sqlx::query("UPDATE tenants SET plan = $1, updated_at = $2 WHERE id = $3")
            .bind(plan)
            .bind(now_ms())
            .bind(id.as_str())
            .execute(self.pool())
            .await
            .context("changing a tenant's plan")?;
        Ok(result.rows_affected() > 0)
    }
}

impl Storage {
    /// The sub-tenants of a reseller, oldest first.
    pub async fn list_sub_tenants(&self, parent: &TenantId) -> Result<Vec<Tenant>, StorageError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            tenant_columns!(),
            " FROM tenants WHERE parent_id = $1 ORDER BY id"
        ))
        .bind(parent.as_str())
        .fetch_all(self.pool())
        .await
        .context("listing sub-tenants")?;
        rows.iter()
            .map(tenant_from_row)
            .collect::<Result<_, _>>()
            .context("decoding sub-tenants")
    }
}
