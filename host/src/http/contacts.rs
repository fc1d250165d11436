//! `/v1/contacts`: the tenant's contacts. Reading needs any role; writing needs `admin`
//! or `agent`. Phones are normalized to E.164 with the tenant's default country, emails
//! lower-cased; a phone or email another contact already has is a 409 naming it; the
//! plan's contact limit is enforced on create.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AppState;
use super::auth::Caller;
use super::json::ApiJson;
use super::problem::ApiError;
use crate::contacts::{normalize_email, normalize_phone, normalize_tag};
use crate::plans::Plan;
use crate::segments::{self, Expr, ExprError};
use crate::storage::{
    CONSENT_CHANNELS, ConsentEntry, ContactData, ContactWriteError, CustomField, FieldKind, Role,
};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/contacts", get(list).post(create))
        .route("/v1/contacts/{id}", get(show).patch(update).delete(remove))
        .route(
            "/v1/contacts/{id}/consent",
            get(consent_history).post(record_consent),
        )
        .route("/v1/contacts/{id}/merge", axum::routing::post(merge))
        .route("/v1/contacts/search", axum::routing::post(search))
        .route("/v1/contacts/{id}/notes", get(list_notes).post(add_note))
        .route(
            "/v1/contacts/{id}/notes/{note_id}",
            axum::routing::delete(delete_note),
        )
        .route("/v1/audit", get(audit))
        .route("/v1/custom-fields", get(list_fields))
        .route(
            "/v1/custom-fields/{key}",
            axum::routing::put(put_field).delete(delete_field),
        )
}

const WRITERS: [Role; 2] = [Role::Admin, Role::Agent];

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-contact",
        "Invalid contact",
        detail,
    )
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!("no contact `{id}`"),
    )
}

fn write_error(error: ContactWriteError) -> ApiError {
    match error {
        ContactWriteError::Duplicate { field, existing_id } => ApiError::new(
            StatusCode::CONFLICT,
            "duplicate-contact",
            "Duplicate contact",
            format!("contact {existing_id} already has this {field}; update or merge it instead"),
        )
        .with("existing_contact_id", existing_id)
        .with("field", field),
        ContactWriteError::Storage(error) => error.into(),
    }
}

/// Applies a JSON object of changes to `data`: absent keys keep their value, `null`
/// clears it, unknown keys and wrong types are refused with the key's name.
fn apply_changes(
    data: &mut ContactData,
    changes: Map<String, Value>,
    country: &str,
    definitions: &[CustomField],
) -> Result<(), ApiError> {
    for (key, value) in changes {
        let text = |value: &Value| -> Result<Option<String>, ApiError> {
            match value {
                Value::Null => Ok(None),
                Value::String(text) if text.trim().is_empty() => Ok(None),
                Value::String(text) => Ok(Some(text.clone())),
                _ => Err(invalid(format!("`{key}` must be a string or null"))),
            }
        };
        match key.as_str() {
            "name" => data.name = text(&value)?.map(|name| name.trim().to_string()),
            "phone" => {
                data.phone = text(&value)?
                    .map(|phone| normalize_phone(&phone, country))
                    .transpose()
                    .map_err(|error| invalid(error.to_string()))?;
            }
            "email" => {
                data.email = text(&value)?
                    .map(|email| normalize_email(&email))
                    .transpose()
                    .map_err(|error| invalid(error.to_string()))?;
            }
            "tags" => {
                let Value::Array(tags) = value else {
                    return Err(invalid("`tags` must be an array of strings"));
                };
                data.tags = tags
                    .iter()
                    .map(|tag| match tag {
                        Value::String(tag) => {
                            normalize_tag(tag).map_err(|error| invalid(error.to_string()))
                        }
                        _ => Err(invalid("`tags` must be an array of strings")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "fields" => {
                let Value::Object(fields) = value else {
                    return Err(invalid("`fields` must be a JSON object"));
                };
                let mut merged = data.fields.as_object().cloned().unwrap_or_default();
                for (field, value) in fields {
                    let Some(definition) = definitions
                        .iter()
                        .find(|definition| definition.key == field)
                    else {
                        return Err(invalid(format!(
                            "field `{field}` is not defined for this tenant; define it with PUT /v1/custom-fields/{field}"
                        )));
                    };
                    if !value.is_null() {
                        definition.check(&value).map_err(invalid)?;
                    }
                    if value.is_null() {
                        merged.remove(&field);
                    } else {
                        merged.insert(field, value);
                    }
                }
                data.fields = Value::Object(merged);
            }
            other => {
                return Err(invalid(format!(
                    "unknown field `{other}`; a contact has name, phone, email, tags and fields"
                )));
            }
        }
    }
    Ok(())
}

/// Applies a request body of changes with the tenant's country and field definitions.
async fn apply_body(
    caller: &Caller,
    data: &mut ContactData,
    body: Map<String, Value>,
) -> Result<(), ApiError> {
    let definitions = caller.db().custom_fields().await?;
    apply_changes(data, body, &caller.tenant.default_country, &definitions)
}

async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&WRITERS)?;
    let mut data = ContactData {
        fields: json!({}),
        ..ContactData::default()
    };
    apply_body(&caller, &mut data, body).await?;
    if data.name.is_none() && data.phone.is_none() && data.email.is_none() {
        return Err(invalid(
            "a contact needs at least a name, a phone or an email",
        ));
    }
    let plan = Plan::of(&caller.tenant.plan);
    if let Some(limit) = plan.contact_limit() {
        let count = caller.db().count_contacts().await?;
        if count >= limit {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "plan-limit",
                "Plan limit reached",
                format!("the {} plan allows {limit} contacts and this tenant has {count}; upgrade the plan or delete contacts", plan.as_str()),
            )
            .with("limit", limit)
            .with("count", count));
        }
    }
    let contact = state
        .messaging
        .create_contact(caller.db(), &data, "api")
        .await
        .map_err(write_error)?;
    Ok((StatusCode::CREATED, Json(json!(contact))))
}

async fn show(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<crate::storage::Contact>, ApiError> {
    let contact = caller.db().get_contact(&id).await?;
    Ok(Json(contact.ok_or_else(|| not_found(&id))?))
}

fn invalid_query(detail: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid-query",
        "Invalid query",
        detail,
    )
}

/// A 422 for a filter expression, with a JSON Pointer to the bad part.
pub(super) fn invalid_filter(error: ExprError) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-filter",
        "Invalid filter expression",
        format!("{} (at `{}`)", error.message, error.pointer),
    )
    .with("pointer", error.pointer)
}

/// The page size asked for (default 50, 1 to 200).
pub(super) fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(invalid_query("`limit` must be 1 to 200"));
    }
    Ok(limit)
}

/// One page of contacts matching `filter`, with the cursor of the next page.
pub(super) async fn contact_page(
    caller: &Caller,
    filter: &Expr,
    after: Option<&str>,
    limit: u32,
) -> Result<Json<Value>, ApiError> {
    let contacts = caller.db().list_contacts(filter, after, limit).await?;
    let next = (contacts.len() == limit as usize)
        .then(|| contacts.last().map(|contact| contact.id.clone()))
        .flatten();
    Ok(Json(json!({ "data": contacts, "next_cursor": next })))
}

/// The filter a contact listing's query string describes: every parameter must hold.
/// `tag` (repeatable), `q`, `created_after`/`created_before`/`updated_after`/
/// `updated_before`/`last_contacted_after`/`last_contacted_before` (Unix ms),
/// `consent.<channel>=opted_in|opted_out|unknown`, `fields.<key>=<value>` (equality)
/// and `segment=<id>`.
pub(super) async fn query_filter(
    caller: &Caller,
    params: &[(String, String)],
) -> Result<(Expr, Option<String>, Option<u32>), ApiError> {
    let definitions = caller.db().custom_fields().await?;
    let mut parts = Vec::new();
    let (mut after, mut limit) = (None, None);
    for (key, value) in params {
        let condition = match key.as_str() {
            "after" => {
                after = Some(value.clone());
                continue;
            }
            "limit" => {
                limit = Some(
                    value
                        .parse()
                        .map_err(|_| invalid_query("`limit` must be 1 to 200"))?,
                );
                continue;
            }
            "segment" => {
                let segment = caller
                    .db()
                    .get_segment(value)
                    .await?
                    .ok_or_else(|| invalid_query(format!("no segment `{value}`")))?;
                parts.push(
                    segments::parse(&segment.expression, &definitions).map_err(invalid_filter)?,
                );
                continue;
            }
            "q" if value.trim().is_empty() => continue,
            "q" => json!({"attribute": "text", "op": "contains", "value": value}),
            "tag" => json!({"attribute": "tag", "op": "has", "value": value}),
            time if time.ends_with("_after") || time.ends_with("_before") => {
                let (attribute, op) = time
                    .strip_suffix("_after")
                    .map(|attribute| (attribute, "after"))
                    .or_else(|| {
                        time.strip_suffix("_before")
                            .map(|attribute| (attribute, "before"))
                    })
                    .unwrap_or((time, "after"));
                let at: i64 = value.parse().map_err(|_| {
                    invalid_query(format!("`{key}` must be a time in Unix milliseconds"))
                })?;
                json!({"attribute": format!("{attribute}_at"), "op": op, "value": at})
            }
            consent if consent.starts_with("consent.") => {
                json!({"attribute": consent, "op": "eq", "value": value})
            }
            field if field.starts_with("fields.") => {
                let kind = definitions
                    .iter()
                    .find(|definition| {
                        Some(definition.key.as_str()) == field.strip_prefix("fields.")
                    })
                    .map(|definition| definition.kind);
                let typed = match kind {
                    Some(FieldKind::Number) => value
                        .parse::<f64>()
                        .ok()
                        .and_then(|number| serde_json::Number::from_f64(number).map(Value::Number))
                        .unwrap_or_else(|| json!(value)),
                    Some(FieldKind::Boolean) => match value.as_str() {
                        "true" => json!(true),
                        "false" => json!(false),
                        _ => json!(value),
                    },
                    _ => json!(value),
                };
                json!({"attribute": field, "op": "eq", "value": typed})
            }
            other => {
                return Err(invalid_query(format!(
                    "unknown parameter `{other}`; filter with tag, q, created_after, created_before, updated_after, updated_before, last_contacted_after, last_contacted_before, consent.<channel>, fields.<key> or segment"
                )));
            }
        };
        let condition = segments::parse(&condition, &definitions)
            .map_err(|error| invalid_query(format!("`{key}`: {}", error.message)))?;
        parts.push(condition);
    }
    Ok((Expr::And(parts), after, limit))
}

async fn list(
    Extension(caller): Extension<Caller>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let (filter, after, limit) = query_filter(&caller, &params).await?;
    contact_page(&caller, &filter, after.as_deref(), page_limit(limit)?).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Search {
    filter: Value,
    after: Option<String>,
    limit: Option<u32>,
}

/// Contacts matching a filter expression (the same language as segments), paginated.
async fn search(
    Extension(caller): Extension<Caller>,
    ApiJson(search): ApiJson<Search>,
) -> Result<Json<Value>, ApiError> {
    let definitions = caller.db().custom_fields().await?;
    let filter = segments::parse(&search.filter, &definitions).map_err(|error| {
        invalid_filter(ExprError {
            pointer: format!("/filter{}", error.pointer),
            message: error.message,
        })
    })?;
    let limit = page_limit(search.limit)?;
    let count = caller.db().count_matching(&filter).await?;
    let Json(mut page) = contact_page(&caller, &filter, search.after.as_deref(), limit).await?;
    page["total"] = json!(count);
    Ok(Json(page))
}

async fn update(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let current = caller
        .db()
        .get_contact(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let mut data = ContactData {
        name: current.name,
        phone: current.phone,
        email: current.email,
        tags: current.tags,
        fields: current.fields,
    };
    apply_body(&caller, &mut data, body).await?;
    let contact = caller
        .db()
        .update_contact(&id, &data)
        .await
        .map_err(write_error)?;
    let contact = contact.ok_or_else(|| not_found(&id))?;
    Ok(Json(json!(contact)))
}

async fn remove(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&WRITERS)?;
    if caller.db().delete_contact(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&id))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsentChange {
    channel: String,
    status: String,
    source: Option<String>,
    proof: Option<String>,
}

async fn record_consent(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(change): ApiJson<ConsentChange>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&WRITERS)?;
    if !CONSENT_CHANNELS.contains(&change.channel.as_str()) {
        return Err(invalid(format!(
            "`channel` must be one of {}",
            CONSENT_CHANNELS.join(", ")
        )));
    }
    if !matches!(change.status.as_str(), "opted_in" | "opted_out") {
        return Err(invalid("`status` must be `opted_in` or `opted_out`"));
    }
    let entry = ConsentEntry {
        channel: change.channel,
        status: change.status,
        source: change.source.unwrap_or_else(|| "api".into()),
        proof: change.proof,
        recorded_at: 0,
    };
    if !caller.db().record_consent(&id, &entry).await? {
        return Err(not_found(&id));
    }
    let current = caller.db().current_consent(&id).await?;
    Ok((StatusCode::CREATED, Json(json!({ "consent": current }))))
}

async fn consent_history(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if caller.db().get_contact(&id).await?.is_none() {
        return Err(not_found(&id));
    }
    let history = caller.db().consent_history(&id).await?;
    Ok(Json(json!({ "data": history })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditPage {
    before: Option<String>,
    limit: Option<u32>,
}

async fn audit(
    Extension(caller): Extension<Caller>,
    page: Result<Query<AuditPage>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let Query(page) = page.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query",
            rejection.body_text(),
        )
    })?;
    let limit = page.limit.unwrap_or(50).clamp(1, 200);
    let entries = caller
        .db()
        .list_audit(page.before.as_deref(), limit)
        .await?;
    let next = (entries.len() == limit as usize)
        .then(|| entries.last().map(|entry| entry.id.clone()))
        .flatten();
    Ok(Json(json!({ "data": entries, "next_cursor": next })))
}

async fn list_fields(Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    let fields = caller.db().custom_fields().await?;
    Ok(Json(json!({ "data": fields })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldDefinition {
    label: String,
    kind: FieldKind,
    #[serde(default)]
    options: Vec<String>,
}

async fn put_field(
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    ApiJson(definition): ApiJson<FieldDefinition>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    if key.is_empty()
        || key.len() > 64
        || !key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(invalid(
            "a field key is 1 to 64 characters of a-z, 0-9 and _",
        ));
    }
    if (definition.kind == FieldKind::Select) == definition.options.is_empty() {
        return Err(invalid(
            "`options` lists the allowed values of a select field, and only of one",
        ));
    }
    let field = CustomField {
        key,
        label: definition.label,
        kind: definition.kind,
        options: definition.options,
    };
    caller.db().put_custom_field(&field).await?;
    Ok(Json(json!(field)))
}

async fn delete_field(
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&[Role::Admin])?;
    if caller.db().delete_custom_field(&key).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no custom field `{key}`"),
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeRequest {
    /// The contact merged into this one and then deleted.
    from: String,
}

async fn merge(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<MergeRequest>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    if request.from == id {
        return Err(invalid("a contact cannot be merged into itself"));
    }
    let merged = caller
        .db()
        .merge_contacts(&id, &request.from)
        .await?
        .ok_or_else(|| not_found(&format!("{id}` or `{}", request.from)))?;
    Ok(Json(json!(merged)))
}

async fn list_notes(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if caller.db().get_contact(&id).await?.is_none() {
        return Err(not_found(&id));
    }
    Ok(Json(json!({ "data": caller.db().notes(&id).await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNote {
    body: String,
}

/// Longest note accepted, in characters.
const MAX_NOTE_CHARS: usize = 10_000;

async fn add_note(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(note): ApiJson<NewNote>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&WRITERS)?;
    let body = note.body.trim();
    if body.is_empty() || body.chars().count() > MAX_NOTE_CHARS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-note",
            "Invalid note",
            format!("`body` must be 1 to {MAX_NOTE_CHARS} characters"),
        ));
    }
    let note = caller
        .db()
        .add_note(&id, body, Some(&caller.key.id))
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok((StatusCode::CREATED, Json(json!(note))))
}

async fn delete_note(
    Extension(caller): Extension<Caller>,
    Path((id, note_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(&WRITERS)?;
    if caller.db().delete_note(&id, &note_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("contact `{id}` has no note `{note_id}`"),
        ))
    }
}
