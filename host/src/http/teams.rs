//! `/v1/teams`: teams of agents that flows (the assign step) and integrations assign
//! conversations to, by round-robin or least-busy.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::json::ApiJson;
use super::problem::{ApiError, invalid_body as invalid, not_found_named as not_found};
use crate::storage::{Role, TeamWriteError};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/teams", get(list).post(create))
        .route("/v1/teams/{id}", get(show).put(update).delete(remove))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamInput {
    name: Option<String>,
    members: Option<Vec<String>>,
}

fn check_name(name: &str) -> Result<&str, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(invalid("`name` must be 1 to 100 characters"));
    }
    Ok(name)
}

/// Trimmed member ids: 1-200 characters each, no repeats, at most 500.
fn check_members(members: &[String]) -> Result<Vec<String>, ApiError> {
    if members.len() > 500 {
        return Err(invalid("a team has at most 500 members"));
    }
    let mut checked: Vec<String> = Vec::with_capacity(members.len());
    for (index, member) in members.iter().enumerate() {
        let member = member.trim();
        if member.is_empty() || member.chars().count() > 200 {
            return Err(invalid(format!(
                "`members[{index}]` must be an agent id of 1 to 200 characters"
            )));
        }
        if checked.iter().any(|known| known == member) {
            return Err(invalid(format!("`{member}` is listed twice in `members`")));
        }
        checked.push(member.to_string());
    }
    Ok(checked)
}

fn write_error(error: TeamWriteError) -> ApiError {
    match error {
        TeamWriteError::NameTaken(_) => ApiError::new(
            StatusCode::CONFLICT,
            "team-name-taken",
            "Team name taken",
            error.to_string(),
        ),
        TeamWriteError::Storage(error) => error.into(),
    }
}

async fn list(Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "data": caller.db().teams().await? })))
}

async fn create(
    Extension(caller): Extension<Caller>,
    ApiJson(input): ApiJson<TeamInput>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&[Role::Admin])?;
    let name = check_name(input.name.as_deref().unwrap_or_default())?;
    let members = check_members(&input.members.unwrap_or_default())?;
    let team = caller
        .db()
        .create_team(name, &members)
        .await
        .map_err(write_error)?;
    Ok((StatusCode::CREATED, Json(json!(team))))
}

async fn show(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let team = caller
        .db()
        .team(&id)
        .await?
        .ok_or_else(|| not_found("team", &id))?;
    Ok(Json(json!(team)))
}

async fn update(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<TeamInput>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let name = input.name.as_deref().map(check_name).transpose()?;
    let members = input.members.as_deref().map(check_members).transpose()?;
    let team = caller
        .db()
        .update_team(&id, name, members.as_deref())
        .await
        .map_err(write_error)?
        .ok_or_else(|| not_found("team", &id))?;
    Ok(Json(json!(team)))
}

async fn remove(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&[Role::Admin])?;
    if caller.db().delete_team(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found("team", &id))
    }
}
