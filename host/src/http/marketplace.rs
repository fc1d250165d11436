//! `/v1/marketplace` (browse the registry) and `/v1/installs` (a tenant's installed
//! plugins: grants, config, secrets, enable/disable, pin, upgrade, roll back, call,
//! health). Reads need any role; changes need `admin`; calls need `admin` or `agent`.
//! Secret values are accepted and never returned: only the names of those set.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AppState;
use super::auth::Caller;
use super::json::ApiJson;
use super::problem::ApiError;
use crate::marketplace::{MarketplaceError, SettingsChange, missing_settings};
use crate::storage::{Install, Role};
use postdog_registry::{RegistryError, SearchQuery};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/marketplace", get(browse))
        .route("/v1/marketplace/{publisher}/{name}", get(versions))
        .route("/v1/installs", get(list).post(install))
        .route(
            "/v1/installs/{id}",
            get(show).patch(update).delete(uninstall),
        )
        .route(
            "/v1/installs/{id}/secrets/{name}",
            put(set_secret).delete(delete_secret),
        )
        .route("/v1/installs/{id}/upgrade", post(upgrade))
        .route("/v1/installs/{id}/rollback", post(rollback))
        .route("/v1/installs/{id}/call", post(call))
}

impl From<MarketplaceError> for ApiError {
    fn from(error: MarketplaceError) -> Self {
        let detail = error.to_string();
        match error {
            MarketplaceError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
            }
            MarketplaceError::Invalid(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "Invalid request body",
                detail,
            ),
            MarketplaceError::Ungranted { missing, .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "capabilities-not-granted",
                "Capabilities not granted",
                detail,
            )
            .with("missing", json!(missing)),
            MarketplaceError::InvalidConfig { errors } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-config",
                "Invalid configuration",
                detail,
            )
            .with(
                "errors",
                Value::Array(
                    errors
                        .into_iter()
                        .map(|(key, message)| json!({"key": key, "message": message}))
                        .collect(),
                ),
            ),
            MarketplaceError::Disabled => ApiError::new(
                StatusCode::CONFLICT,
                "install-disabled",
                "Install disabled",
                detail,
            ),
            MarketplaceError::CircuitOpen { until, .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "circuit-open",
                "Install paused after repeated failures",
                detail,
            )
            .with("retry_at", until),
            MarketplaceError::Plugin(plugin_error) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "plugin-failed",
                "The plugin failed",
                detail,
            )
            .with("error", json!(plugin_error.to_string())),
            MarketplaceError::Registry(RegistryError::NotFound { .. }) => {
                ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
            }
            MarketplaceError::Registry(error) => {
                tracing::error!(%error, "registry failure");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "registry-unavailable",
                    "Registry unavailable",
                    "the plugin registry could not be reached or refused the request; try again",
                )
            }
            MarketplaceError::SecretsUnavailable(_) => {
                tracing::error!(%detail, "plugin secrets cannot be opened");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "secrets-unavailable",
                    "Secrets unavailable",
                    "this install's secrets cannot be opened with the server's keys; the operator must restore the secrets key",
                )
            }
            MarketplaceError::Storage(error) => ApiError::internal(&error),
            MarketplaceError::Internal(message) => ApiError::internal(&message),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BrowseQuery {
    q: Option<String>,
    category: Option<String>,
    world: Option<String>,
}

async fn browse(
    State(state): State<AppState>,
    Extension(_caller): Extension<Caller>,
    Query(query): Query<BrowseQuery>,
) -> Result<Json<Value>, ApiError> {
    let invalid = |detail: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query",
            detail,
        )
    };
    let search = SearchQuery {
        text: query.q.filter(|text| !text.trim().is_empty()),
        category: query
            .category
            .map(|category| category.parse())
            .transpose()
            .map_err(|error| invalid(format!("category: {error}")))?,
        world: query
            .world
            .map(|world| world.parse())
            .transpose()
            .map_err(|error| invalid(format!("world: {error}")))?,
    };
    let found = state
        .marketplace
        .registry()
        .search(&search)
        .await
        .map_err(MarketplaceError::from)?;
    Ok(Json(json!({ "data": found })))
}

async fn versions(
    State(state): State<AppState>,
    Extension(_caller): Extension<Caller>,
    Path((publisher, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let versions = state
        .marketplace
        .registry()
        .versions(&format!("{publisher}/{name}"))
        .await
        .map_err(MarketplaceError::from)?;
    Ok(Json(json!({ "data": versions })))
}

/// An install as the API shows it.
async fn install_json(
    state: &AppState,
    caller: &Caller,
    install: &Install,
) -> Result<Value, ApiError> {
    let marketplace = &state.marketplace;
    let manifest = marketplace.manifest_of(install).await?;
    let secrets = marketplace.secret_names(caller.db(), &install.id).await?;
    let manifest = manifest.as_ref();
    Ok(json!({
        "id": install.id,
        "plugin": install.plugin,
        "world": manifest.world.as_str(),
        "requirement": install.requirement,
        "version": install.version,
        "digest": install.digest,
        "previous_version": install.previous_version,
        "pinned": install.pinned,
        "enabled": install.enabled,
        "requested_capabilities": manifest.capabilities.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "grants": install.grants,
        "config": install.config,
        "config_schema": manifest.config.to_json_schema(),
        "secrets": secrets,
        "missing_settings": missing_settings(manifest, &install.config, &secrets),
        "health": marketplace.health_json(install),
        "created_at": install.created_at,
        "updated_at": install.updated_at,
    }))
}

async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let mut data = Vec::new();
    for install in caller.db().list_installs().await? {
        data.push(install_json(&state, &caller, &install).await?);
    }
    Ok(Json(json!({ "data": data })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewInstall {
    plugin: String,
    #[serde(default = "any_version")]
    version: String,
    #[serde(default)]
    grants: Vec<String>,
    #[serde(default)]
    config: Map<String, Value>,
}

fn any_version() -> String {
    "*".to_string()
}

async fn install(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(new): ApiJson<NewInstall>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&[Role::Admin])?;
    let install = state
        .marketplace
        .install(
            caller.db(),
            new.plugin.trim(),
            &new.version,
            new.grants,
            new.config,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(install_json(&state, &caller, &install).await?),
    ))
}

async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let install = state.marketplace.get(caller.db(), &id).await?;
    Ok(Json(install_json(&state, &caller, &install).await?))
}

async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(change): ApiJson<SettingsChange>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let install = state.marketplace.update(caller.db(), &id, change).await?;
    Ok(Json(install_json(&state, &caller, &install).await?))
}

async fn uninstall(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&[Role::Admin])?;
    if state.marketplace.uninstall(caller.db(), &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(MarketplaceError::NotFound(format!("no install {id}")).into())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretValue {
    value: String,
}

async fn set_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, name)): Path<(String, String)>,
    ApiJson(secret): ApiJson<SecretValue>,
) -> Result<StatusCode, ApiError> {
    caller.require(&[Role::Admin])?;
    state
        .marketplace
        .set_secret(caller.db(), &id, &name, &secret.value)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(&[Role::Admin])?;
    if state
        .marketplace
        .delete_secret(caller.db(), &id, &name)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(MarketplaceError::NotFound(format!("install {id} has no secret `{name}`")).into())
    }
}

async fn upgrade(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let install = state.marketplace.upgrade(caller.db(), &id).await?;
    Ok(Json(install_json(&state, &caller, &install).await?))
}

async fn rollback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let install = state.marketplace.rollback(caller.db(), &id).await?;
    Ok(Json(install_json(&state, &caller, &install).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallRequest {
    function: Option<String>,
    #[serde(default)]
    input: Value,
}

async fn call(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CallRequest>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin, Role::Agent])?;
    let input = if request.input.is_null() {
        json!({})
    } else {
        request.input
    };
    let output = state
        .marketplace
        .call(caller.db(), &id, request.function.as_deref(), input)
        .await?;
    Ok(Json(output))
}
