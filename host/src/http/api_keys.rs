//! `/v1/api-keys`: a tenant's API keys. Creating and revoking needs the `admin` role;
//! the secret is returned once, at creation.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::json::ApiJson;
use super::problem::ApiError;
use crate::storage::Role;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/api-keys", get(list).post(create))
        .route("/v1/api-keys/{id}", delete(revoke))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    role: Role,
}

async fn list(Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let keys = caller.db().list_api_keys().await?;
    Ok(Json(json!({ "data": keys })))
}

async fn create(
    Extension(caller): Extension<Caller>,
    ApiJson(new): ApiJson<NewKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&[Role::Admin])?;
    let name = new.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "Invalid request body",
            "`name` must be 1 to 100 characters",
        ));
    }
    let created = caller.db().create_api_key(name, new.role).await?;
    let mut body =
        serde_json::to_value(&created.key).map_err(|error| ApiError::internal(&error))?;
    body["secret"] = json!(created.secret);
    Ok((StatusCode::CREATED, Json(body)))
}

async fn revoke(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&[Role::Admin])?;
    if caller.db().revoke_api_key(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("this tenant has no active API key `{id}`"),
        ))
    }
}
