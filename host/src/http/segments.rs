//! `/v1/segments`: saved filter expressions with a live count and member listing.
//! Reading needs any role; saving needs `admin` or `agent`. Expressions are checked on
//! save (a 422 with a JSON Pointer to the bad part) and again on every evaluation,
//! because a custom field they use may have been deleted since.

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::contacts::{contact_page, invalid_filter, page_limit};
use super::json::ApiJson;
use super::problem::ApiError;
use crate::segments::{self, Expr, ExprError};
use crate::storage::{Role, Segment, SegmentWriteError};

const WRITERS: [Role; 2] = [Role::Admin, Role::Agent];

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/segments", get(list).post(create))
        .route("/v1/segments/preview", post(preview))
        .route("/v1/segments/{id}", get(show).patch(update).delete(remove))
        .route("/v1/segments/{id}/contacts", get(members))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!("no segment `{id}`"),
    )
}

fn write_error(error: SegmentWriteError) -> ApiError {
    match error {
        SegmentWriteError::DuplicateName(name) => ApiError::new(
            StatusCode::CONFLICT,
            "duplicate-segment",
            "Duplicate segment",
            format!("a segment named `{name}` already exists; choose another name"),
        ),
        SegmentWriteError::Storage(error) => error.into(),
    }
}

/// Parses an expression found under `/expression` of a request body.
async fn checked(caller: &Caller, expression: &Value) -> Result<Expr, ApiError> {
    let definitions = caller.db().custom_fields().await?;
    segments::parse(expression, &definitions).map_err(|error| {
        invalid_filter(ExprError {
            pointer: format!("/expression{}", error.pointer),
            message: error.message,
        })
    })
}

fn check_name(name: &str) -> Result<&str, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-segment",
            "Invalid segment",
            "`name` must be 1 to 100 characters",
        ));
    }
    Ok(name)
}

/// A segment as the API shows it, with its live member count.
async fn view(caller: &Caller, segment: Segment) -> Result<Value, ApiError> {
    let filter = checked(caller, &segment.expression).await?;
    let count = caller.db().count_matching(&filter).await?;
    let mut view = json!(segment);
    view["count"] = json!(count);
    Ok(view)
}

async fn list(Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    let mut data = Vec::new();
    for segment in caller.db().list_segments().await? {
        // A segment whose expression no longer parses is listed without a count.
        let fallback = json!(segment);
        data.push(view(&caller, segment).await.unwrap_or(fallback));
    }
    Ok(Json(json!({ "data": data })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSegment {
    name: String,
    expression: Value,
}

async fn create(
    Extension(caller): Extension<Caller>,
    ApiJson(new): ApiJson<NewSegment>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&WRITERS)?;
    let name = check_name(&new.name)?;
    checked(&caller, &new.expression).await?;
    let segment = caller
        .db()
        .create_segment(name, &new.expression)
        .await
        .map_err(write_error)?;
    Ok((StatusCode::CREATED, Json(view(&caller, segment).await?)))
}

async fn show(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let segment = caller
        .db()
        .get_segment(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(view(&caller, segment).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentChange {
    name: Option<String>,
    expression: Option<Value>,
}

async fn update(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(change): ApiJson<SegmentChange>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let current = caller
        .db()
        .get_segment(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let name = match &change.name {
        Some(name) => check_name(name)?.to_string(),
        None => current.name,
    };
    let expression = change.expression.unwrap_or(current.expression);
    checked(&caller, &expression).await?;
    let segment = caller
        .db()
        .update_segment(&id, &name, &expression)
        .await
        .map_err(write_error)?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(view(&caller, segment).await?))
}

async fn remove(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&WRITERS)?;
    if caller.db().delete_segment(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&id))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberPage {
    after: Option<String>,
    limit: Option<u32>,
}

async fn members(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(page): Query<MemberPage>,
) -> Result<Json<Value>, ApiError> {
    let segment = caller
        .db()
        .get_segment(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let filter = checked(&caller, &segment.expression).await?;
    contact_page(
        &caller,
        &filter,
        page.after.as_deref(),
        page_limit(page.limit)?,
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Preview {
    expression: Value,
}

/// How many contacts an expression matches, without saving it.
async fn preview(
    Extension(caller): Extension<Caller>,
    ApiJson(preview): ApiJson<Preview>,
) -> Result<Json<Value>, ApiError> {
    let filter = checked(&caller, &preview.expression).await?;
    let count = caller.db().count_matching(&filter).await?;
    Ok(Json(json!({ "count": count })))
}
