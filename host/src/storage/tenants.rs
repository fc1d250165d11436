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
    /// IANA time zone schedules are read in (`UTC` until set).
    pub timezone: String,
    /// White-label branding (Business tenants).
    pub branding: Branding,
    /// An operator-set requests-per-minute replacing the plan's.
    pub requests_per_minute: Option<u32>,
}

/// White-label fields a reseller shows its own customers instead of PostDog's.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Branding {
    /// Product name shown to the reseller's customers.
    pub brand_name: Option<String>,
    /// HTTPS URL of the logo.
    pub logo_url: Option<String>,
    /// `#rrggbb`.
    pub primary_color: Option<String>,
    /// A host name the reseller points at PostDog, unique across tenants.
    pub custom_domain: Option<String>,
}

/// Why a tenant's profile could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum TenantWriteError {
    /// Another tenant already uses this custom domain.
    #[error("another tenant already uses the custom domain `{0}`")]
    DomainTaken(String),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The columns `tenant_from_row` reads (a macro so queries stay `&'static str`).
macro_rules! tenant_columns {
    () => {
        "id, name, plan, status, created_at, updated_at, parent_id, default_country, \
         brand_name, logo_url, primary_color, custom_domain, requests_per_minute, timezone"
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
        timezone: row.try_get("timezone")?,
        branding: Branding {
            brand_name: row.try_get("brand_name")?,
            logo_url: row.try_get("logo_url")?,
            primary_color: row.try_get("primary_color")?,
            custom_domain: row.try_get("custom_domain")?,
        },
        requests_per_minute: row
            .try_get::<Option<i64>, _>("requests_per_minute")?
            .and_then(|rate| u32::try_from(rate).ok()),
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
            timezone: "UTC".to_string(),
            branding: Branding::default(),
            requests_per_minute: None,
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
        self.auth_cache().invalidate();
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
        self.auth_cache().invalidate();
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

impl Storage {
    /// Saves a tenant's editable profile: name, default country, branding and the
    /// operator's rate override. `Ok(false)` if the tenant does not exist.
    pub async fn save_tenant_profile(&self, tenant: &Tenant) -> Result<bool, TenantWriteError> {
        let result = sqlx::query(
            "UPDATE tenants SET name = $1, default_country = $2, brand_name = $3, logo_url = $4, \
             primary_color = $5, custom_domain = $6, requests_per_minute = $7, updated_at = $8, timezone = $10 \
             WHERE id = $9",
        )
        .bind(&tenant.name)
        .bind(&tenant.default_country)
        .bind(tenant.branding.brand_name.as_deref())
        .bind(tenant.branding.logo_url.as_deref())
        .bind(tenant.branding.primary_color.as_deref())
        .bind(tenant.branding.custom_domain.as_deref())
        .bind(tenant.requests_per_minute.map(i64::from))
        .bind(now_ms())
        .bind(tenant.id.as_str())
        .bind(&tenant.timezone)
        .execute(self.pool())
        .await;
        self.auth_cache().invalidate();
        match result {
            Ok(result) => Ok(result.rows_affected() > 0),
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                Err(TenantWriteError::DomainTaken(
                    tenant.branding.custom_domain.clone().unwrap_or_default(),
                ))
            }
            Err(error) => Err(StorageError::Query {
                context: "saving a tenant's profile",
                source: error,
            }
            .into()),
        }
    }
}

/// The calendar month (UTC) of a Unix-ms instant, as `YYYY-MM`.
pub fn month_of(unix_ms: i64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm), enough for month granularity.
    let days = unix_ms.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}")
}

impl super::TenantDb {
    /// Adds `count` sent messages to this tenant's usage for the month of `at`.
    pub async fn record_messages_sent(&self, count: u64, at: i64) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO message_usage (tenant_id, month, sent) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, month) DO UPDATE SET sent = message_usage.sent + excluded.sent",
        )
        .bind(self.tenant_id().as_str())
        .bind(month_of(at))
        .bind(i64::try_from(count).unwrap_or(i64::MAX))
        .execute(self.storage().pool())
        .await
        .context("recording message usage")?;
        Ok(())
    }

    /// Messages this tenant sent in `month` (`YYYY-MM`).
    pub async fn messages_sent(&self, month: &str) -> Result<u64, StorageError> {
        let tenant = self.tenant_id().as_str();
        if let Some(found) = self.storage().read_direct(|c| {
            super::sqlite_writer::query(
                c,
                "SELECT sent FROM message_usage WHERE tenant_id = $1 AND month = $2",
                &[&tenant, &month],
                |row| row.get::<_, i64>(0),
            )
        }) {
            return Ok(found
                .first()
                .map_or(0, |sent| u64::try_from(*sent).unwrap_or(0)));
        }
        let row = sqlx::query("SELECT sent FROM message_usage WHERE tenant_id = $1 AND month = $2")
            .bind(self.tenant_id().as_str())
            .bind(month)
            .fetch_optional(self.storage().pool())
            .await
            .context("reading message usage")?;
        let sent: i64 = match row {
            Some(row) => row.try_get("sent").context("reading message usage")?,
            None => 0,
        };
        Ok(u64::try_from(sent).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::month_of;

    #[test]
    fn months_are_utc_calendar_months() {
        assert_eq!(month_of(0), "1970-01");
        assert_eq!(month_of(951_782_400_000), "2000-02"); // 2000-02-29
        assert_eq!(month_of(951_868_800_000 - 1), "2000-02");
        assert_eq!(month_of(951_868_800_000), "2000-03");
        assert_eq!(month_of(1_798_761_599_999), "2026-12"); // 2026-12-31T23:59:59.999Z
        assert_eq!(month_of(1_798_761_600_000), "2027-01");
    }
}
