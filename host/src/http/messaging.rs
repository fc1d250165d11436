//! Messaging routes: sending (`/v1/messages`), the inbox (`/v1/conversations`, the live
//! `/v1/events` stream), templates (`/v1/templates`), tenant webhooks (`/v1/webhooks`),
//! jobs (`/v1/jobs`), channel status and settings, and the public provider webhook
//! ingress `/hooks/{install_id}`.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::json::ApiJson;
use super::problem::{ApiError, invalid_body as invalid, not_found_named as not_found};
use crate::messaging::{HookRequest, SendError, SendRequest, channel_of};
use crate::storage::{AssigneeFilter, ConversationChange, ConversationFilter, Role};
use crate::template_model::{self, TemplateSpec};

const WRITERS: [Role; 2] = [Role::Admin, Role::Agent];

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/messages", post(send))
        .route("/v1/messages/{id}", get(show_message))
        .route("/v1/conversations", get(list_conversations))
        .route("/v1/conversations/{id}", get(show_conversation))
        .route(
            "/v1/conversations/{id}/messages",
            get(conversation_messages),
        )
        .route("/v1/conversations/{id}/assign", post(assign))
        .route("/v1/conversations/{id}/close", post(close))
        .route("/v1/conversations/{id}/reopen", post(reopen))
        .route("/v1/conversations/{id}/read", post(mark_read))
        .route("/v1/conversations/{id}/notes", get(notes).post(add_note))
        .route("/v1/events", get(events))
        .route("/v1/messaging/settings", get(settings).put(save_settings))
        .route("/v1/channels/{install_id}/status", get(channel_status))
        .route("/v1/templates", get(list_templates).post(create_template))
        .route("/v1/templates/lint", post(lint_template))
        .route("/v1/templates/sync", post(sync_templates))
        .route(
            "/v1/templates/{id}",
            get(show_template)
                .put(update_template)
                .delete(delete_template),
        )
        .route("/v1/templates/{id}/submit", post(submit_template))
        .route("/v1/webhooks", get(list_endpoints).post(create_endpoint))
        .route(
            "/v1/webhooks/{id}",
            get(show_endpoint)
                .patch(update_endpoint)
                .delete(delete_endpoint),
        )
        .route("/v1/webhooks/{id}/secret", get(endpoint_secret))
        .route("/v1/webhooks/{id}/rotate-secret", post(rotate_secret))
        .route("/v1/webhooks/{id}/deliveries", get(deliveries))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(show_job))
        .route("/v1/jobs/{id}/retry", post(retry_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
}

/// The public provider webhook ingress (no API key: the plugin checks the provider's
/// signature).
pub(super) fn hooks_router() -> Router<AppState> {
    Router::new()
        .route("/hooks/{install_id}", get(hook).post(hook))
        .route("/metrics", get(metrics))
}

fn invalid_query(detail: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid-query",
        "Invalid query",
        detail,
    )
}

fn limit_of(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(invalid_query("`limit` must be 1 to 200"));
    }
    Ok(limit)
}

impl From<SendError> for ApiError {
    fn from(error: SendError) -> Self {
        match error {
            SendError::NotFound(text) => {
                ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found", text)
            }
            SendError::Invalid(text) => invalid(text),
            SendError::Refused {
                code,
                message,
                details,
            } => {
                let status = if code == "quota-exceeded" {
                    StatusCode::PAYMENT_REQUIRED
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                };
                let title = match code {
                    "window-closed" => "Customer-service window closed",
                    "opted-out" => "Contact opted out",
                    "quota-exceeded" => "Message allowance used up",
                    _ => "Template not approved",
                };
                ApiError::new(status, code, title, message).with("details", details)
            }
            SendError::KeyConflict(id) => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency-key-reused",
                "Idempotency key reused",
                format!(
                    "the Idempotency-Key was already used for a different request (message {id}); use a new key"
                ),
            ),
            SendError::Marketplace(error) => error.into(),
            SendError::Storage(error) => error.into(),
        }
    }
}

async fn send(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<SendRequest>,
) -> Result<Response, ApiError> {
    caller.require(&WRITERS)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| invalid("Idempotency-Key must be visible ASCII"))?
                .to_string(),
        ),
    };
    let (message, replayed) = state
        .messaging
        .send(caller.db(), request, key, Some(&caller.key.id))
        .await?;
    let status = if replayed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut response = (status, Json(json!(message))).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

async fn show_message(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let db = caller.db();
    let message = db
        .message(&id)
        .await?
        .ok_or_else(|| not_found("message", &id))?;
    let history = db.status_history(&id).await?;
    let mut view = json!(message);
    view["status_history"] = json!(history);
    Ok(Json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConversationQuery {
    status: Option<String>,
    assignee: Option<String>,
    unread: Option<bool>,
    channel: Option<String>,
    install_id: Option<String>,
    contact_id: Option<String>,
    before: Option<i64>,
    before_id: Option<String>,
    limit: Option<i64>,
}

async fn list_conversations(
    Extension(caller): Extension<Caller>,
    query: Result<Query<ConversationQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|error| invalid_query(error.body_text()))?;
    if let Some(status) = &query.status
        && !matches!(status.as_str(), "open" | "closed")
    {
        return Err(invalid_query("`status` is open or closed"));
    }
    let limit = limit_of(query.limit)?;
    let filter = ConversationFilter {
        status: query.status,
        assignee: query.assignee.map(|assignee| match assignee.as_str() {
            "unassigned" | "none" => AssigneeFilter::Unassigned,
            "assigned" | "any" => AssigneeFilter::Assigned,
            _ => AssigneeFilter::Agent(assignee),
        }),
        unread: query.unread.unwrap_or(false),
        channel: query.channel,
        install_id: query.install_id,
        contact_id: query.contact_id,
        before: query.before,
        before_id: query.before_id,
        limit,
    };
    let conversations = caller.db().conversations(&filter).await?;
    let next = (conversations.len() as i64 == limit)
        .then(|| conversations.last())
        .flatten();
    Ok(Json(json!({
        "data": conversations,
        "next_before": next.map(|c| c.last_message_at),
        "next_before_id": next.map(|c| c.id.clone()),
    })))
}

async fn show_conversation(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let conversation = caller
        .db()
        .conversation(&id)
        .await?
        .ok_or_else(|| not_found("conversation", &id))?;
    Ok(Json(json!(conversation)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
    before: Option<i64>,
    before_id: Option<String>,
    limit: Option<i64>,
}

async fn conversation_messages(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<MessagesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|error| invalid_query(error.body_text()))?;
    let db = caller.db();
    if db.conversation(&id).await?.is_none() {
        return Err(not_found("conversation", &id));
    }
    let limit = limit_of(query.limit)?;
    let messages = db
        .conversation_messages(&id, query.before.map(|at| (at, query.before_id)), limit)
        .await?;
    // The page is oldest first: the next (older) page is before its first message.
    let next = (messages.len() as i64 == limit)
        .then(|| messages.first())
        .flatten();
    Ok(Json(json!({
        "data": messages,
        "next_before": next.map(|m| m.created_at),
        "next_before_id": next.map(|m| m.id.clone()),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignRequest {
    agent: Option<String>,
}

async fn change(
    state: &AppState,
    caller: &Caller,
    id: &str,
    change: ConversationChange,
    event: Option<&str>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let db = caller.db();
    let conversation = db
        .update_conversation(id, &change)
        .await?
        .ok_or_else(|| not_found("conversation", id))?;
    state
        .messaging
        .conversation_changed(db.tenant_id().as_str(), &conversation);
    if let Some(event) = event {
        state.webhooks.emit(db, event, json!(conversation)).await?;
    }
    Ok(Json(json!(conversation)))
}

async fn assign(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<AssignRequest>,
) -> Result<Json<Value>, ApiError> {
    let agent = match request.agent.map(|agent| agent.trim().to_string()) {
        Some(agent) if agent.is_empty() || agent.chars().count() > 200 => {
            return Err(invalid(
                "`agent` is 1 to 200 characters, or null to unassign",
            ));
        }
        other => other,
    };
    change(
        &state,
        &caller,
        &id,
        ConversationChange {
            assignee: Some(agent),
            ..Default::default()
        },
        Some("conversation.assigned"),
    )
    .await
}

async fn close(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    change(
        &state,
        &caller,
        &id,
        ConversationChange {
            status: Some("closed".into()),
            ..Default::default()
        },
        Some("conversation.closed"),
    )
    .await
}

async fn reopen(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    change(
        &state,
        &caller,
        &id,
        ConversationChange {
            status: Some("open".into()),
            ..Default::default()
        },
        None,
    )
    .await
}

async fn mark_read(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let (conversation, problem) = state
        .messaging
        .mark_conversation_read(caller.db(), &id)
        .await?
        .ok_or_else(|| not_found("conversation", &id))?;
    let mut view = json!(conversation);
    view["provider_read_receipt"] = match problem {
        None => json!("sent"),
        Some(problem) => json!({ "failed": problem }),
    };
    Ok(Json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteRequest {
    body: String,
}

async fn notes(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let db = caller.db();
    if db.conversation(&id).await?.is_none() {
        return Err(not_found("conversation", &id));
    }
    Ok(Json(json!({ "data": db.conversation_notes(&id).await? })))
}

async fn add_note(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<NoteRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&WRITERS)?;
    let body = request.body.trim();
    if body.is_empty() || body.chars().count() > 10_000 {
        return Err(invalid("`body` is 1 to 10,000 characters"));
    }
    let note = caller
        .db()
        .add_conversation_note(&id, body, Some(&caller.key.id))
        .await?
        .ok_or_else(|| not_found("conversation", &id))?;
    Ok((StatusCode::CREATED, Json(json!(note))))
}

/// `GET /v1/events`: Server-Sent Events of this tenant's messaging changes.
async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let tenant = caller.db().tenant_id().as_str().to_string();
    let mut receiver = state.messaging.subscribe();
    let stream = async_stream(move |sender| async move {
        let _ = sender
            .send(Event::default().event("ready").data("{}"))
            .await;
        loop {
            match receiver.recv().await {
                Ok(event) if event.tenant_id == tenant => {
                    let data = json!({ "type": event.kind, "data": event.data });
                    if sender
                        .send(
                            Event::default()
                                .event(event.kind.clone())
                                .data(data.to_string()),
                        )
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    let data = json!({ "missed": missed });
                    if sender
                        .send(Event::default().event("lagged").data(data.to_string()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// A stream fed by a task through a bounded channel; the task stops when the client
/// goes away (the receiver is dropped).
fn async_stream<F, Fut>(producer: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (sender, mut receiver) = tokio::sync::mpsc::channel(256);
    tokio::spawn(producer(sender));
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx).map(|event| event.map(Ok)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    opt_out_keywords: Vec<String>,
    opt_in_keywords: Vec<String>,
}

async fn settings(Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    let (opt_out, opt_in) = caller.db().messaging_keywords().await?;
    Ok(Json(
        json!({ "opt_out_keywords": opt_out, "opt_in_keywords": opt_in }),
    ))
}

async fn save_settings(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<Settings>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let clean = |list: Vec<String>, name: &str| -> Result<Vec<String>, ApiError> {
        let list: Vec<String> = list
            .into_iter()
            .map(|keyword| keyword.trim().to_string())
            .filter(|keyword| !keyword.is_empty())
            .collect();
        if list.len() > 50 || list.iter().any(|keyword| keyword.chars().count() > 50) {
            return Err(invalid(format!(
                "`{name}`: at most 50 keywords of at most 50 characters"
            )));
        }
        Ok(list)
    };
    let opt_out = clean(request.opt_out_keywords, "opt_out_keywords")?;
    let opt_in = clean(request.opt_in_keywords, "opt_in_keywords")?;
    if let Some(both) = opt_out.iter().find(|keyword| {
        opt_in
            .iter()
            .any(|other| crate::messaging::same_keyword(other, keyword))
    }) {
        return Err(invalid(format!(
            "`{both}` is both an opt-out and an opt-in keyword"
        )));
    }
    caller
        .db()
        .set_messaging_keywords(&opt_out, &opt_in)
        .await?;
    state
        .messaging
        .keywords_changed(caller.db().tenant_id().as_str());
    Ok(Json(
        json!({ "opt_out_keywords": opt_out, "opt_in_keywords": opt_in }),
    ))
}

async fn channel_status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(install_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let handle = state.marketplace.channel(caller.db(), &install_id).await?;
    match handle.account_status().await? {
        Ok(text) => Ok(Json(json!({
            "install_id": install_id,
            "channel": channel_of(handle.plugin()),
            "account": serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
        }))),
        Err(error) => Err(channel_error(error)),
    }
}

fn channel_error(error: crate::runtime::abi::channel_types::ChannelError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "provider-error",
        "The provider refused",
        format!("{error:?}"),
    )
}

// Templates.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplatesQuery {
    install_id: Option<String>,
    status: Option<String>,
}

async fn list_templates(
    Extension(caller): Extension<Caller>,
    query: Result<Query<TemplatesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|error| invalid_query(error.body_text()))?;
    let status = query.status.map(|status| status.to_ascii_uppercase());
    let templates = caller
        .db()
        .templates(query.install_id.as_deref(), status.as_deref())
        .await?;
    Ok(Json(json!({ "data": templates })))
}

fn parse_spec(value: Value) -> Result<TemplateSpec, ApiError> {
    serde_json::from_value(value).map_err(|error| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-template",
            "Invalid template",
            format!("the template does not match the model: {error}"),
        )
    })
}

fn lint_refusal(findings: &[template_model::Finding]) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "template-lint-failed",
        "The template would be rejected",
        format!(
            "{} problem(s) Meta commonly rejects templates for; fix them before submitting",
            findings
                .iter()
                .filter(|f| f.severity == template_model::Severity::Error)
                .count()
        ),
    )
    .with("findings", json!(findings))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTemplate {
    install_id: String,
    template: Value,
}

async fn create_template(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<NewTemplate>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&WRITERS)?;
    let spec = parse_spec(request.template)?;
    // The install must be one of this tenant's messaging channels.
    state
        .marketplace
        .channel(caller.db(), &request.install_id)
        .await?;
    let findings = template_model::lint(&spec);
    let record = caller
        .db()
        .create_template(&request.install_id, &spec)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "duplicate-template",
                "Duplicate template",
                format!(
                    "this install already has a template {} ({}); edit it instead",
                    spec.name, spec.language
                ),
            )
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "template": record, "findings": findings })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LintRequest {
    template: Value,
}

async fn lint_template(
    Extension(_caller): Extension<Caller>,
    ApiJson(request): ApiJson<LintRequest>,
) -> Result<Json<Value>, ApiError> {
    let spec = parse_spec(request.template)?;
    let findings = template_model::lint(&spec);
    Ok(Json(json!({
        "findings": findings,
        "submittable": !template_model::has_errors(&findings),
        "components": template_model::to_meta_components(&spec),
        "preview": template_model::render_preview(&spec, &template_model::SendVariables::from_examples(&spec)),
    })))
}

async fn show_template(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = caller
        .db()
        .template(&id)
        .await?
        .ok_or_else(|| not_found("template", &id))?;
    let findings = template_model::lint(&record.spec);
    Ok(Json(json!({ "template": record, "findings": findings })))
}

async fn update_template(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<LintRequest>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let spec = parse_spec(request.template)?;
    let db = caller.db();
    let existing = db
        .template(&id)
        .await?
        .ok_or_else(|| not_found("template", &id))?;
    if existing.name != spec.name || existing.language != spec.language {
        return Err(invalid(
            "a template's name and language cannot change; create a new template instead",
        ));
    }
    if matches!(existing.status.as_str(), "PENDING" | "APPROVED") {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "template-locked",
            "Template under review or approved",
            format!(
                "template {} is {}; Meta does not allow editing it now. Create a new version under another name",
                existing.name, existing.status
            ),
        ));
    }
    let record = db
        .update_template_spec(&id, &spec)
        .await?
        .ok_or_else(|| not_found("template", &id))?;
    let findings = template_model::lint(&spec);
    Ok(Json(json!({ "template": record, "findings": findings })))
}

async fn delete_template(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&WRITERS)?;
    if caller.db().delete_template(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found("template", &id))
    }
}

async fn submit_template(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let db = caller.db();
    let record = db
        .template(&id)
        .await?
        .ok_or_else(|| not_found("template", &id))?;
    let findings = template_model::lint(&record.spec);
    if template_model::has_errors(&findings) {
        return Err(lint_refusal(&findings));
    }
    if matches!(record.status.as_str(), "PENDING" | "APPROVED") {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "template-locked",
            "Already submitted",
            format!("template {} is {} already", record.name, record.status),
        ));
    }
    let handle = state.marketplace.channel(db, &record.install_id).await?;
    let definition = crate::runtime::abi::channel_types::TemplateDefinition {
        name: record.spec.name.clone(),
        language: record.spec.language.clone(),
        category: record.spec.category.as_str().to_string(),
        components: template_model::to_meta_components(&record.spec).to_string(),
    };
    let info = match handle.submit_template(&definition).await? {
        Ok(info) => info,
        Err(error) => return Err(channel_error(error)),
    };
    let updated = db
        .template_submitted(&id, &info.id, &info.status)
        .await?
        .ok_or_else(|| not_found("template", &id))?;
    let mut poll = crate::storage::NewJob::new(
        "templates",
        "templates.poll",
        Some(db.tenant_id()),
        json!({ "install_id": record.install_id }),
    );
    poll.run_at = crate::storage::now_ms() + 5 * 60_000;
    poll.idempotency_key = Some(format!(
        "templates.poll:{}:{}",
        record.install_id,
        poll.run_at / (5 * 60_000)
    ));
    state.jobs.enqueue(&poll).await?;
    Ok(Json(json!({ "template": updated, "findings": findings })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncRequest {
    install_id: String,
}

async fn sync_templates(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<SyncRequest>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let changed = crate::templates_sync::sync(
        &state.marketplace,
        &state.webhooks,
        caller.db(),
        &request.install_id,
    )
    .await
    .map_err(|error| match error {
        crate::templates_sync::SyncError::Marketplace(error) => ApiError::from(error),
        crate::templates_sync::SyncError::Storage(error) => ApiError::from(error),
        crate::templates_sync::SyncError::Provider(error) => channel_error(error),
    })?;
    Ok(Json(json!({ "changed": changed })))
}

// Webhook endpoints.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEndpoint {
    url: String,
    #[serde(default)]
    description: String,
    events: Vec<String>,
}

fn check_events(events: &[String]) -> Result<(), ApiError> {
    if events.is_empty() {
        return Err(invalid(format!(
            "`events` lists at least one event type (or \"*\"): {}",
            crate::webhooks::EVENT_TYPES.join(", ")
        )));
    }
    for event in events {
        if event != "*" && !crate::webhooks::EVENT_TYPES.contains(&event.as_str()) {
            return Err(invalid(format!(
                "unknown event type `{event}`; known: {}",
                crate::webhooks::EVENT_TYPES.join(", ")
            )));
        }
    }
    Ok(())
}

async fn list_endpoints(Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "data": caller.db().endpoints().await? })))
}

async fn create_endpoint(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<NewEndpoint>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&[Role::Admin])?;
    crate::webhooks::check_url(&request.url).map_err(invalid)?;
    check_events(&request.events)?;
    let tenant = caller.db().tenant_id().as_str().to_string();
    let (sealed, secret) = state
        .webhooks
        .new_secret(&tenant)
        .map_err(|error| ApiError::internal(&error))?;
    let endpoint = caller
        .db()
        .create_endpoint(
            &request.url,
            request.description.trim(),
            &request.events,
            &sealed,
        )
        .await?;
    state.webhooks.invalidate(&tenant);
    let mut view = json!(endpoint);
    view["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(view)))
}

async fn show_endpoint(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let endpoint = caller
        .db()
        .endpoint(&id)
        .await?
        .ok_or_else(|| not_found("webhook endpoint", &id))?;
    Ok(Json(json!(endpoint)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointChange {
    url: Option<String>,
    description: Option<String>,
    events: Option<Vec<String>>,
    enabled: Option<bool>,
}

async fn update_endpoint(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<EndpointChange>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    if let Some(url) = &request.url {
        crate::webhooks::check_url(url).map_err(invalid)?;
    }
    if let Some(events) = &request.events {
        check_events(events)?;
    }
    let endpoint = caller
        .db()
        .update_endpoint(
            &id,
            request.url.as_deref(),
            request.description.as_deref(),
            request.events.as_deref(),
            request.enabled,
        )
        .await?
        .ok_or_else(|| not_found("webhook endpoint", &id))?;
    state.webhooks.invalidate(caller.db().tenant_id().as_str());
    Ok(Json(json!(endpoint)))
}

async fn delete_endpoint(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&[Role::Admin])?;
    if !caller.db().delete_endpoint(&id).await? {
        return Err(not_found("webhook endpoint", &id));
    }
    state.webhooks.invalidate(caller.db().tenant_id().as_str());
    Ok(StatusCode::NO_CONTENT)
}

async fn endpoint_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let endpoint = caller
        .db()
        .endpoint(&id)
        .await?
        .ok_or_else(|| not_found("webhook endpoint", &id))?;
    let secret = state
        .webhooks
        .open(caller.db().tenant_id().as_str(), &endpoint.sealed_secret)
        .map_err(|error| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "secrets-unavailable",
                "Secret unavailable",
                error,
            )
        })?;
    Ok(Json(json!({ "secret": secret })))
}

async fn rotate_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let tenant = caller.db().tenant_id().as_str().to_string();
    let (sealed, secret) = state
        .webhooks
        .new_secret(&tenant)
        .map_err(|error| ApiError::internal(&error))?;
    let until = crate::storage::now_ms() + 24 * 3_600_000;
    let endpoint = caller
        .db()
        .rotate_endpoint_secret(&id, &sealed, until)
        .await?
        .ok_or_else(|| not_found("webhook endpoint", &id))?;
    let mut view = json!(endpoint);
    view["secret"] = json!(secret);
    view["previous_secret_valid_until"] = json!(until);
    Ok(Json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitQuery {
    limit: Option<i64>,
}

async fn deliveries(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<LimitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|error| invalid_query(error.body_text()))?;
    let db = caller.db();
    if db.endpoint(&id).await?.is_none() {
        return Err(not_found("webhook endpoint", &id));
    }
    Ok(Json(
        json!({ "data": db.deliveries(&id, limit_of(query.limit)?).await? }),
    ))
}

// Jobs.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    state: Option<String>,
    queue: Option<String>,
    limit: Option<i64>,
}

async fn list_jobs(
    Extension(caller): Extension<Caller>,
    query: Result<Query<JobsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|error| invalid_query(error.body_text()))?;
    if let Some(state) = &query.state
        && !matches!(
            state.as_str(),
            "queued" | "running" | "done" | "dead" | "cancelled"
        )
    {
        return Err(invalid_query(
            "`state` is queued, running, done, dead or cancelled",
        ));
    }
    let jobs = caller
        .db()
        .jobs(
            query.state.as_deref(),
            query.queue.as_deref(),
            limit_of(query.limit)?,
        )
        .await?;
    Ok(Json(json!({ "data": jobs })))
}

async fn show_job(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = caller
        .db()
        .job(&id)
        .await?
        .ok_or_else(|| not_found("job", &id))?;
    Ok(Json(json!(job)))
}

async fn retry_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let tenant = caller.db().tenant_id().as_str();
    if !state.storage.retry_job(Some(tenant), &id).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "job-not-retryable",
            "Job not retryable",
            format!("job `{id}` does not exist or is not dead or cancelled"),
        ));
    }
    state.jobs.wake();
    show_job(Extension(caller), Path(id)).await
}

async fn cancel_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let tenant = caller.db().tenant_id().as_str();
    if !state.storage.cancel_job(Some(tenant), &id).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "job-not-cancellable",
            "Job not cancellable",
            format!("job `{id}` does not exist or has finished"),
        ));
    }
    show_job(Extension(caller), Path(id)).await
}

// The provider webhook ingress.

async fn hook(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    Path(params): Path<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let install_id = params
        .iter()
        .find(|(name, _)| name == "install_id")
        .map(|(_, value)| value.clone())
        .unwrap_or_default();
    let request = HookRequest {
        method: method.as_str().to_string(),
        path: "/".into(),
        query: uri.query().unwrap_or_default().to_string(),
        headers: headers
            .iter()
            .filter_map(|(name, value)| {
                value
                    .to_str()
                    .ok()
                    .map(|value| (name.as_str().to_string(), value.to_string()))
            })
            .collect(),
        body: body.to_vec(),
    };
    let response = state.messaging.handle_hook(&install_id, request).await;
    let mut builder = Response::builder().status(response.status);
    for (name, value) in &response.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(axum::body::Body::from(response.body))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// `GET /metrics`: Prometheus text exposition of the job queue (depth, age of the oldest
/// due job, and this process's counters). Aggregates only; no tenant data.
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering;
    let depths = state.storage.queue_depths().await?;
    let mut out = String::new();
    type Gauge = (
        &'static str,
        &'static str,
        fn(&crate::storage::QueueDepth) -> f64,
    );
    let gauges: [Gauge; 4] = [
        (
            "postdog_jobs_queued",
            "Jobs waiting (due or scheduled), by queue.",
            |d| d.queued as f64,
        ),
        (
            "postdog_jobs_running",
            "Jobs leased by a worker now, by queue.",
            |d| d.running as f64,
        ),
        ("postdog_jobs_dead", "Dead-lettered jobs, by queue.", |d| {
            d.dead as f64
        }),
        (
            "postdog_jobs_oldest_due_seconds",
            "How long the oldest due job has waited, by queue.",
            |d| d.oldest_due_ms as f64 / 1000.0,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for depth in &depths {
            let _ = writeln!(
                out,
                "{name}{{queue=\"{}\"}} {}",
                depth.queue.replace(['"', '\\', '\n'], "_"),
                value(depth)
            );
        }
    }
    let counters = state.jobs.counters();
    for (name, help, value) in [
        (
            "postdog_jobs_started_total",
            "Job attempts started by this process.",
            &counters.started,
        ),
        (
            "postdog_jobs_completed_total",
            "Jobs completed by this process.",
            &counters.completed,
        ),
        (
            "postdog_jobs_failed_total",
            "Job attempts that failed in this process.",
            &counters.failed,
        ),
        (
            "postdog_jobs_dead_lettered_total",
            "Jobs this process dead-lettered.",
            &counters.dead,
        ),
        (
            "postdog_jobs_deferred_total",
            "Job runs this process deferred because their channel was at its throughput limit (not attempts).",
            &counters.deferred,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP postdog_cluster_nodes Live nodes sharing the database, this one included (each keeps its share of every send rate).\n# TYPE postdog_cluster_nodes gauge\npostdog_cluster_nodes {}",
        state.messaging.pacer().nodes()
    );
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}
