//! `/v1/flows`: automation flows — drafts, validation, immutable published versions,
//! runs started by the API, run history with every step, cancellation.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::json::ApiJson;
use super::problem::{ApiError, invalid_body as invalid, not_found_named as not_found};
use crate::flows::StartError;
use crate::storage::Role;

const WRITERS: [Role; 2] = [Role::Admin, Role::Agent];

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/flows", get(list).post(create))
        .route("/v1/flows/{id}", get(show).put(replace).delete(remove))
        .route("/v1/flows/{id}/validate", post(validate))
        .route("/v1/flows/{id}/publish", post(publish))
        .route("/v1/flows/{id}/simulate", post(simulate))
        .route("/v1/flows/{id}/versions/{version}", get(version))
        .route("/v1/flows/{id}/runs", get(runs).post(start))
        .route("/v1/flows/{id}/runs/{run}", get(run))
        .route("/v1/flows/{id}/runs/{run}/cancel", post(cancel))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowInput {
    name: String,
    #[serde(default)]
    graph: Option<Value>,
}

fn check_name(name: &str) -> Result<&str, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(invalid("`name` is 1 to 200 characters"));
    }
    Ok(name)
}

async fn list(Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "data": caller.db().flows().await? })))
}

async fn create(
    Extension(caller): Extension<Caller>,
    ApiJson(input): ApiJson<FlowInput>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&WRITERS)?;
    let name = check_name(&input.name)?;
    let graph = input
        .graph
        .unwrap_or_else(|| json!({"triggers": [], "nodes": [], "edges": []}));
    let flow = caller.db().create_flow(name, &graph).await?;
    Ok((StatusCode::CREATED, Json(json!(flow))))
}

async fn show(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let flow = caller
        .db()
        .flow(&id)
        .await?
        .ok_or_else(|| not_found("flow", &id))?;
    Ok(Json(json!(flow)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowChange {
    name: Option<String>,
    graph: Option<Value>,
    enabled: Option<bool>,
}

async fn replace(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(change): ApiJson<FlowChange>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let name = change.name.as_deref().map(check_name).transpose()?;
    let flow = caller
        .db()
        .update_flow(&id, name, change.graph.as_ref(), change.enabled)
        .await?
        .ok_or_else(|| not_found("flow", &id))?;
    state.flows.invalidate(caller.db().tenant_id().as_str());
    Ok(Json(json!(flow)))
}

async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&WRITERS)?;
    if !caller.db().delete_flow(&id).await? {
        return Err(not_found("flow", &id));
    }
    state.flows.invalidate(caller.db().tenant_id().as_str());
    Ok(StatusCode::NO_CONTENT)
}

async fn validate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let flow = caller
        .db()
        .flow(&id)
        .await?
        .ok_or_else(|| not_found("flow", &id))?;
    let problems = match state.flows.validate(caller.db(), &flow.draft).await? {
        Ok(_) => Vec::new(),
        Err(problems) => problems,
    };
    Ok(Json(
        json!({ "valid": problems.is_empty(), "problems": problems }),
    ))
}

async fn publish(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&WRITERS)?;
    let db = caller.db();
    let flow = db.flow(&id).await?.ok_or_else(|| not_found("flow", &id))?;
    match state.flows.validate(db, &flow.draft).await? {
        Ok((_, actions)) => {
            let version = db.publish_flow(&id, &flow.draft, &json!(actions)).await?;
            state.flows.invalidate(db.tenant_id().as_str());
            Ok((StatusCode::CREATED, Json(json!(version))))
        }
        Err(problems) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-flow",
            "The flow has problems",
            format!("{} problem(s); fix them and publish again", problems.len()),
        )
        .with("problems", json!(problems))),
    }
}

async fn version(
    Extension(caller): Extension<Caller>,
    Path((id, version)): Path<(String, i64)>,
) -> Result<Json<Value>, ApiError> {
    let version = caller
        .db()
        .flow_version(&id, version)
        .await?
        .ok_or_else(|| not_found("flow version", &format!("{id}/{version}")))?;
    Ok(Json(json!(version)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    contact_id: Option<String>,
    #[serde(default)]
    payload: Value,
    /// `api` (default) or `manual` (an agent in the inbox).
    source: Option<String>,
}

async fn start(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<StartRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&WRITERS)?;
    let source = match request.source.as_deref() {
        None | Some("api") => "api",
        Some("manual") => "manual",
        Some(other) => return Err(invalid(format!("`source` is api or manual, not `{other}`"))),
    };
    match state
        .flows
        .start_by_api(
            caller.db(),
            &id,
            request.contact_id.as_deref(),
            request.payload,
            source,
        )
        .await
    {
        Ok(run) => Ok((StatusCode::CREATED, Json(json!(run)))),
        Err(StartError::NotFound(text)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            text,
        )),
        Err(StartError::Invalid(text)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "flow-not-startable",
            "The flow cannot be started",
            text,
        )),
        Err(error @ StartError::AlreadyRunning) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "run-active",
            "Run already active",
            error.to_string(),
        )),
        Err(StartError::Storage(error)) => Err(error.into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    status: Option<String>,
    limit: Option<i64>,
}

async fn runs(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query",
            error.body_text(),
        )
    })?;
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let runs = caller
        .db()
        .runs(&id, query.status.as_deref(), limit)
        .await?;
    Ok(Json(json!({ "data": runs })))
}

async fn run(
    Extension(caller): Extension<Caller>,
    Path((id, run_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let db = caller.db();
    let run = db
        .run(&run_id)
        .await?
        .filter(|run| run.flow_id == id)
        .ok_or_else(|| not_found("run", &run_id))?;
    let steps = db.steps(&run_id).await?;
    let mut view = json!(run);
    view["steps"] = json!(steps);
    Ok(Json(view))
}

async fn cancel(
    Extension(caller): Extension<Caller>,
    Path((id, run_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let db = caller.db();
    if !db.cancel_run(&id, &run_id).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "run-not-active",
            "Run not active",
            format!("run `{run_id}` of flow `{id}` does not exist or has finished"),
        ));
    }
    let run = db
        .run(&run_id)
        .await?
        .ok_or_else(|| not_found("run", &run_id))?;
    Ok(Json(json!(run)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimulateRequest {
    /// A stored contact…
    contact_id: Option<String>,
    /// …or a hypothetical one (`name`, `phone`, `tags`, `fields`).
    contact: Option<Value>,
    #[serde(default)]
    events: Vec<crate::flows::SimEvent>,
    #[serde(default)]
    payload: Value,
    /// `draft` (default) or a published version number.
    version: Option<Value>,
}

async fn simulate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<SimulateRequest>,
) -> Result<Json<Value>, ApiError> {
    let db = caller.db();
    let flow = db.flow(&id).await?.ok_or_else(|| not_found("flow", &id))?;
    let graph = match &request.version {
        None => flow.draft.clone(),
        Some(Value::String(text)) if text == "draft" => flow.draft.clone(),
        Some(Value::Number(number)) => {
            let version = number.as_i64().unwrap_or(0);
            db.flow_version(&id, version)
                .await?
                .ok_or_else(|| not_found("flow version", &format!("{id}/{version}")))?
                .graph
        }
        Some(other) => {
            return Err(invalid(format!(
                "`version` is \"draft\" or a version number, not {other}"
            )));
        }
    };
    let contact = match (&request.contact_id, request.contact) {
        (Some(contact_id), None) => {
            let contact = db
                .get_contact(contact_id)
                .await?
                .ok_or_else(|| not_found("contact", contact_id))?;
            json!({"id": contact.id, "name": contact.name, "phone": contact.phone, "email": contact.email, "tags": contact.tags, "fields": contact.fields})
        }
        (None, Some(contact)) if contact.is_object() => {
            let mut contact = contact;
            if contact.get("tags").is_none() {
                contact["tags"] = json!([]);
            }
            if contact.get("fields").is_none() {
                contact["fields"] = json!({});
            }
            contact
        }
        (None, None) => json!({"id": null, "name": null, "tags": [], "fields": {}}),
        _ => return Err(invalid("give `contact_id` or a `contact` object, not both")),
    };
    match state
        .flows
        .simulate(db, &graph, contact, request.events, request.payload)
        .await?
    {
        Ok(trace) => Ok(Json(trace)),
        Err(problems) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-flow",
            "The flow has problems",
            format!("{} problem(s); fix them to simulate", problems.len()),
        )
        .with("problems", json!(problems))),
    }
}
