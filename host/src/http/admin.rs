//! `/admin/v1/…`: the operator's API (list, create, change and suspend tenants),
//! authenticated by the operator token (`POSTDOG_OPERATOR_TOKEN`). Without a configured
//! token the operator API is off and answers 404.

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::AppState;
use super::json::ApiJson;
use super::problem::ApiError;
use super::tenant::{ProfileChange, apply_profile_change, save_profile, tenant_json};
use crate::ids::TenantId;
use crate::plans::Plan;
use crate::tenants::{ProvisionError, provision_tenant};

pub(super) fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/v1/tenants", get(list).post(create))
        .route("/admin/v1/tenants/{id}", get(show).patch(update))
        .route("/admin/v1/plugins/loaded", get(loaded_plugins))
        .layer(middleware::from_fn_with_state(state, operator_only))
}

/// Compares through fixed-size digests, so timing reveals nothing about the token.
fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |diff, (x, y)| diff | (x ^ y))
        == 0
}

async fn operator_only(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.operator_token.as_deref() else {
        return super::problem::not_found(request.uri().clone())
            .await
            .into_response();
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token_matches(given, expected) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "send the operator token as `Authorization: Bearer <token>`",
        )
        .into_response();
    }
    next.run(request).await
}

/// The API's answer to a failed tenant provisioning.
pub(super) fn provision_problem(error: ProvisionError) -> ApiError {
    match error {
        ProvisionError::Storage(error) => ApiError::internal(&error),
        other => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-tenant",
            "Invalid tenant",
            other.to_string(),
        ),
    }
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let tenants = state.storage.list_tenants().await?;
    Ok(Json(
        json!({ "data": tenants.iter().map(tenant_json).collect::<Vec<_>>() }),
    ))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!("no tenant `{id}`"),
    )
}

async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = state
        .storage
        .get_tenant(&TenantId::new(&id))
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(tenant_json(&tenant)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    plan: Plan,
    parent_id: Option<TenantId>,
}

async fn create(
    State(state): State<AppState>,
    ApiJson(new): ApiJson<NewTenant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (tenant, key) =
        provision_tenant(&state.storage, &new.name, new.plan, new.parent_id.as_ref())
            .await
            .map_err(provision_problem)?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "tenant": tenant_json(&tenant), "tenant_id": tenant.id, "api_key": key.secret }),
        ),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum Status {
    Active,
    Suspended,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantChange {
    plan: Option<Plan>,
    status: Option<Status>,
    /// A custom rate replacing the plan's; `null` returns to the plan's.
    #[serde(default, deserialize_with = "super::tenant::present")]
    requests_per_minute: Option<Option<u32>>,
    name: Option<String>,
    default_country: Option<String>,
    timezone: Option<String>,
    #[serde(default, deserialize_with = "super::tenant::present")]
    brand_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "super::tenant::present")]
    logo_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "super::tenant::present")]
    primary_color: Option<Option<String>>,
    #[serde(default, deserialize_with = "super::tenant::present")]
    custom_domain: Option<Option<String>>,
}

async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(change): ApiJson<TenantChange>,
) -> Result<Json<Value>, ApiError> {
    let tenant_id = TenantId::new(&id);
    let Some(mut tenant) = state.storage.get_tenant(&tenant_id).await? else {
        return Err(not_found(&id));
    };
    if let Some(plan) = change.plan {
        tenant.plan = plan.as_str().to_string();
    }
    if let Some(rate) = change.requests_per_minute {
        if rate == Some(0) || rate.is_some_and(|rate| rate > 1_000_000) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-tenant",
                "Invalid tenant settings",
                "`requests_per_minute` must be 1 to 1000000, or null for the plan's rate",
            ));
        }
        tenant.requests_per_minute = rate;
    }
    let profile = ProfileChange {
        name: change.name,
        default_country: change.default_country,
        timezone: change.timezone,
        brand_name: change.brand_name,
        logo_url: change.logo_url,
        primary_color: change.primary_color,
        custom_domain: change.custom_domain,
    };
    apply_profile_change(&mut tenant, profile)?;
    save_profile(&state.storage, &tenant).await?;
    if let Some(plan) = change.plan {
        state
            .storage
            .set_tenant_plan(&tenant_id, plan.as_str())
            .await?;
    }
    if let Some(status) = change.status {
        let status = match status {
            Status::Active => "active",
            Status::Suspended => "suspended",
        };
        state.storage.set_tenant_status(&tenant_id, status).await?;
    }
    let tenant = state
        .storage
        .get_tenant(&tenant_id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(tenant_json(&tenant)))
}

/// The plugin versions compiled in memory: shared by every install on them, freed when
/// no install or call uses them any more.
async fn loaded_plugins(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .marketplace
        .loaded_artifacts()
        .into_iter()
        .map(|(plugin, version, digest)| json!({"plugin": plugin, "version": version, "digest": digest}))
        .collect();
    Json(json!({ "data": data }))
}
