//! `/v1/flows`: automation flows — drafts, validation, immutable published versions,
//! runs started by the API, run history with every step, cancellation — and each flow's
//! public webhook-trigger URL, `/hooks/flows/{token}`.

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
use crate::flows::{SIGNATURE_HEADER, StartError, WebhookTriggerError};
use crate::storage::Flow;
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
        .route("/v1/flows/{id}/runs/batch", post(start_batch))
        .route("/v1/flows/{id}/runs/{run}", get(run))
        .route("/v1/flows/{id}/runs/{run}/cancel", post(cancel))
        .route(
            "/v1/flows/{id}/webhook-secret",
            post(new_webhook_secret).delete(remove_webhook_secret),
        )
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

/// The public webhook-trigger route (no API key: the URL's token names the flow, and a
/// flow with a webhook secret requires an HMAC signature).
pub(super) fn hooks_router() -> Router<AppState> {
    Router::new().route("/hooks/flows/{token}", post(flow_hook))
}

/// A flow as the API shows it: the stored fields plus its webhook URL path and whether
/// calls to it must be signed.
fn flow_json(flow: &Flow) -> Value {
    let mut value = json!(flow);
    value["webhook"] = json!({
        "path": format!("/hooks/flows/{}", flow.webhook_token),
        "signed": flow.webhook_secret.is_some(),
        "signature_header": SIGNATURE_HEADER,
    });
    value
}

async fn list(Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    let flows: Vec<Value> = caller.db().flows().await?.iter().map(flow_json).collect();
    Ok(Json(json!({ "data": flows })))
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
    Ok((StatusCode::CREATED, Json(flow_json(&flow))))
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
    Ok(Json(flow_json(&flow)))
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
    if change.enabled == Some(true) {
        state.flows.arm_schedules(caller.db(), &id).await?;
    }
    Ok(Json(flow_json(&flow)))
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
            state.flows.arm_schedules(db, &id).await?;
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
        Err(error) => Err(start_error(error)),
    }
}

/// The problem answer of a run that could not start.
fn start_error(error: StartError) -> ApiError {
    match error {
        StartError::NotFound(text) => {
            ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found", text)
        }
        StartError::Invalid(text) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "flow-not-startable",
            "The flow cannot be started",
            text,
        ),
        error @ StartError::AlreadyRunning => ApiError::new(
            StatusCode::CONFLICT,
            "run-active",
            "Run already active",
            error.to_string(),
        ),
        StartError::Storage(error) => error.into(),
    }
}

/// At most this many contacts per `POST /v1/flows/{id}/runs/batch`.
const BATCH_LIMIT: usize = 1_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchStartRequest {
    contact_ids: Vec<String>,
    #[serde(default)]
    payload: Value,
    /// `api` (default) or `manual`.
    source: Option<String>,
}

/// Enrolls up to 1,000 contacts: `200 {started, skipped, runs: [{contact_id, run_id}],
/// problems: [{contact_id, type, detail}]}`; a contact already in an active run or
/// unknown is reported, not fatal.
async fn start_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<BatchStartRequest>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let source = match request.source.as_deref() {
        None | Some("api") => "api",
        Some("manual") => "manual",
        Some(other) => return Err(invalid(format!("`source` is api or manual, not `{other}`"))),
    };
    if request.contact_ids.is_empty() || request.contact_ids.len() > BATCH_LIMIT {
        return Err(invalid(format!(
            "`contact_ids` holds 1 to {BATCH_LIMIT} contact ids, not {}",
            request.contact_ids.len()
        )));
    }
    let outcomes = match state
        .flows
        .start_many(
            caller.db(),
            &id,
            &request.contact_ids,
            &request.payload,
            source,
        )
        .await
    {
        Ok(outcomes) => outcomes,
        Err(error) => return Err(start_error(error)),
    };
    let mut runs = Vec::new();
    let mut problems = Vec::new();
    for (contact_id, outcome) in request.contact_ids.iter().zip(outcomes) {
        match outcome {
            Ok(run) => runs.push(json!({"contact_id": contact_id, "run_id": run.id})),
            Err(StartError::Storage(error)) => return Err(error.into()),
            Err(error) => {
                let kind = match &error {
                    StartError::NotFound(_) => "not-found",
                    StartError::AlreadyRunning => "run-active",
                    _ => "flow-not-startable",
                };
                problems.push(
                    json!({"contact_id": contact_id, "type": kind, "detail": error.to_string()}),
                );
            }
        }
    }
    Ok(Json(json!({
        "started": runs.len(),
        "skipped": problems.len(),
        "runs": runs,
        "problems": problems,
    })))
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

/// `POST /v1/flows/{id}/webhook-secret`: a new HMAC secret for the flow's webhook trigger
/// (shown once; calls must be signed with it from now on).
async fn new_webhook_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&[Role::Admin])?;
    let secret = state
        .flows
        .new_webhook_secret(caller.db(), &id)
        .await?
        .ok_or_else(|| not_found("flow", &id))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "secret": secret,
            "signature_header": SIGNATURE_HEADER,
            "scheme": "sha256=<hex HMAC-SHA256 of the raw request body keyed with the secret>",
        })),
    ))
}

/// `DELETE /v1/flows/{id}/webhook-secret`: calls no longer need a signature.
async fn remove_webhook_secret(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&[Role::Admin])?;
    if caller.db().set_flow_webhook_secret(&id, None).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found("flow", &id))
    }
}

/// `POST /hooks/flows/{token}`: starts a run of the flow from its webhook trigger. The
/// body (JSON) becomes the trigger payload; `Idempotency-Key` (or Standard Webhooks'
/// `webhook-id`) makes a retried call return the run the first call started.
async fn flow_hook(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let key = header("idempotency-key").or_else(|| header("webhook-id"));
    match state
        .flows
        .start_by_webhook(&token, header(SIGNATURE_HEADER), key, &body)
        .await
    {
        Ok(start) => Ok((
            if start.replayed {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            },
            Json(json!({
                "run_id": start.run.id,
                "status": start.run.status,
                "replayed": start.replayed,
            })),
        )),
        Err(error) => Err(match error {
            WebhookTriggerError::UnknownUrl => ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                error.to_string(),
            ),
            WebhookTriggerError::Unauthorized(text) => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad-signature",
                "Signature required",
                text,
            ),
            WebhookTriggerError::NotLive(text) => ApiError::new(
                StatusCode::CONFLICT,
                "flow-not-live",
                "The flow is not accepting webhooks",
                text,
            ),
            WebhookTriggerError::Invalid(text) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-webhook",
                "The webhook cannot start the flow",
                text,
            ),
            WebhookTriggerError::AlreadyRunning => ApiError::new(
                StatusCode::CONFLICT,
                "run-active",
                "Run already active",
                error.to_string(),
            ),
            WebhookTriggerError::Storage(error) => error.into(),
        }),
    }
}
