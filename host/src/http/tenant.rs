//! `/v1/tenant`: a tenant's own profile, plan and usage. Any role reads it; `admin`
//! changes the name, the default country for phone numbers and — on the Business plan —
//! the white-label branding. The operator API changes the same profile (plus the plan,
//! status and a custom request rate) through [`apply_profile_change`].

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::json::ApiJson;
use super::problem::ApiError;
use crate::plans::Plan;
use crate::storage::{Role, Storage, Tenant, TenantDb, TenantWriteError, month_of, now_ms};

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/v1/tenant", get(show).patch(update))
}

/// A tenant as the APIs show it.
pub(super) fn tenant_json(tenant: &Tenant) -> Value {
    json!({
        "id": tenant.id,
        "name": tenant.name,
        "plan": tenant.plan,
        "status": tenant.status,
        "parent_id": tenant.parent_id,
        "default_country": tenant.default_country,
        "timezone": tenant.timezone,
        "branding": tenant.branding,
        "requests_per_minute": tenant.requests_per_minute,
        "created_at": tenant.created_at,
        "updated_at": tenant.updated_at,
    })
}

/// Changes to a tenant's profile; absent keys keep their value, `null` clears optional ones.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ProfileChange {
    pub(super) name: Option<String>,
    pub(super) default_country: Option<String>,
    pub(super) timezone: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub(super) brand_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub(super) logo_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub(super) primary_color: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub(super) custom_domain: Option<Option<String>>,
}

/// Distinguishes an explicit `null` (`Some(None)`) from an absent key (`None`).
pub(super) fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-tenant",
        "Invalid tenant settings",
        detail,
    )
}

impl ProfileChange {
    fn touches_branding(&self) -> bool {
        self.brand_name.is_some()
            || self.logo_url.is_some()
            || self.primary_color.is_some()
            || self.custom_domain.is_some()
    }
}

/// Checks and applies `change` to `tenant` (not saved).
pub(super) fn apply_profile_change(
    tenant: &mut Tenant,
    change: ProfileChange,
) -> Result<(), ApiError> {
    if change.touches_branding() && tenant.plan != Plan::Business.as_str() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "plan-feature",
            "Not on this plan",
            "white-label branding is a Business plan feature; upgrade the plan first",
        ));
    }
    if let Some(name) = change.name {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(invalid("`name` must be 1 to 200 characters"));
        }
        tenant.name = name.to_string();
    }
    if let Some(country) = change.default_country {
        let country = country.trim().to_ascii_uppercase();
        if country.len() != 2
            || <phonenumber::country::Id as std::str::FromStr>::from_str(&country).is_err()
        {
            return Err(invalid(format!(
                "`default_country` `{country}` is not an ISO 3166-1 alpha-2 country code with a phone numbering plan (e.g. US, GB, DE)"
            )));
        }
        tenant.default_country = country;
    }
    if let Some(zone) = change.timezone {
        let zone = zone.trim();
        crate::cron::time_zone(zone).map_err(|error| invalid(format!("`timezone`: {error}")))?;
        tenant.timezone = zone.to_string();
    }
    let branding = &mut tenant.branding;
    if let Some(brand) = change.brand_name {
        branding.brand_name = match brand.map(|brand| brand.trim().to_string()) {
            Some(brand) if brand.is_empty() || brand.chars().count() > 100 => {
                return Err(invalid("`brand_name` must be 1 to 100 characters"));
            }
            other => other,
        };
    }
    if let Some(logo) = change.logo_url {
        branding.logo_url = match logo {
            Some(logo) => {
                let parsed = url::Url::parse(logo.trim())
                    .map_err(|error| invalid(format!("`logo_url` is not a URL: {error}")))?;
                if parsed.scheme() != "https" || parsed.host_str().is_none() || logo.len() > 2048 {
                    return Err(invalid(
                        "`logo_url` must be an https:// URL of at most 2048 characters",
                    ));
                }
                Some(parsed.to_string())
            }
            None => None,
        };
    }
    if let Some(color) = change.primary_color {
        branding.primary_color = match color {
            Some(color) => {
                let color = color.trim().to_ascii_lowercase();
                let hex = color.strip_prefix('#').unwrap_or("");
                if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid("`primary_color` must be a hex color like #1a2b3c"));
                }
                Some(color)
            }
            None => None,
        };
    }
    if let Some(domain) = change.custom_domain {
        branding.custom_domain = match domain {
            Some(domain) => Some(check_domain(&domain)?),
            None => None,
        };
    }
    Ok(())
}

/// A lower-case DNS host name with at least two labels; IP addresses are refused.
fn check_domain(domain: &str) -> Result<String, ApiError> {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |label: &&str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let numeric_tld = labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()));
    if domain.len() > 253 || labels.len() < 2 || !labels.iter().all(label_ok) || numeric_tld {
        return Err(invalid(format!(
            "`custom_domain` `{domain}` is not a host name like app.example.com"
        )));
    }
    Ok(domain)
}

/// Saves a changed profile, mapping a taken custom domain to a 409.
pub(super) async fn save_profile(storage: &Storage, tenant: &Tenant) -> Result<(), ApiError> {
    match storage.save_tenant_profile(tenant).await {
        Ok(_) => Ok(()),
        Err(TenantWriteError::DomainTaken(domain)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "domain-taken",
            "Custom domain taken",
            format!("another tenant already uses `{domain}`"),
        )),
        Err(TenantWriteError::Storage(error)) => Err(error.into()),
    }
}

/// The tenant's plan limits and what it has used of them.
async fn usage(tenant: &Tenant, db: &TenantDb) -> Result<Value, ApiError> {
    let plan = Plan::of(&tenant.plan);
    let month = month_of(now_ms());
    let sent = db.messages_sent(&month).await?;
    let allowance = plan.monthly_messages();
    Ok(json!({
        "contacts": {
            "count": db.count_contacts().await?,
            "limit": plan.contact_limit(),
        },
        "messages": {
            "month": month,
            "sent": sent,
            "allowance": allowance,
            "remaining": allowance.saturating_sub(sent),
        },
        "requests_per_minute": tenant.requests_per_minute.unwrap_or(plan.requests_per_minute()),
    }))
}

async fn show(Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    let mut body = tenant_json(&caller.tenant);
    body["usage"] = usage(&caller.tenant, caller.db()).await?;
    Ok(Json(body))
}

async fn update(
    axum::extract::State(state): axum::extract::State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(change): ApiJson<ProfileChange>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let mut tenant = Tenant::clone(&caller.tenant);
    apply_profile_change(&mut tenant, change)?;
    save_profile(&state.storage, &tenant).await?;
    let tenant = state
        .storage
        .get_tenant(&tenant.id)
        .await?
        .unwrap_or(tenant);
    let mut body = tenant_json(&tenant);
    body["usage"] = usage(&tenant, caller.db()).await?;
    Ok(Json(body))
}
