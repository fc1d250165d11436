//! `/v1/sub-tenants`: a Business tenant (reseller, agency) creates and lists its
//! sub-tenants; it then acts on one by sending `PostDog-Act-As: <sub-tenant id>` with its
//! own key. A sub-tenant sees only itself: never its parent or siblings.

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
use crate::storage::Role;
use crate::tenants::provision_tenant;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/v1/sub-tenants", get(list).post(create))
}

fn require_reseller(caller: &Caller) -> Result<(), ApiError> {
    caller.require(&[Role::Admin])?;
    if caller.tenant.plan != Plan::Business.as_str() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not-a-reseller",
            "Not a reseller",
            "only tenants on the business plan can have sub-tenants",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSubTenant {
    name: String,
    plan: Plan,
}

async fn create(
    axum::extract::State(state): axum::extract::State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(new): ApiJson<NewSubTenant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_reseller(&caller)?;
    let (tenant, key) =
        provision_tenant(&state.storage, &new.name, new.plan, Some(&caller.tenant.id))
            .await
            .map_err(super::admin::provision_problem)?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "tenant_id": tenant.id, "name": tenant.name, "plan": tenant.plan, "api_key": key.secret }),
        ),
    ))
}

async fn list(
    axum::extract::State(state): axum::extract::State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    require_reseller(&caller)?;
    let tenants = state.storage.list_sub_tenants(&caller.tenant.id).await?;
    let data: Vec<Value> = tenants
        .iter()
        .map(|tenant| json!({ "id": tenant.id, "name": tenant.name, "plan": tenant.plan, "status": tenant.status, "created_at": tenant.created_at }))
        .collect();
    Ok(Json(json!({ "data": data })))
}
