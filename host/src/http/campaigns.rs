//! `/v1/campaigns`: broadcast campaigns — definition, preview (the dry run), start,
//! schedule, pause, resume, cancel, the A/B decision, live statistics and the
//! per-recipient CSV export. Reading needs any role; changing needs `admin` or `agent`.
//! Another tenant's campaign is a 404 on every route.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::json::ApiJson;
use super::problem::{ApiError, not_found_named};
use crate::campaigns::{CampaignError, CampaignInput};
use crate::csv_out::csv_line;
use crate::storage::{Campaign, Role};

const WRITERS: [Role; 2] = [Role::Admin, Role::Agent];
/// Recipients per page of the CSV export.
const EXPORT_PAGE: i64 = 1_000;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/campaigns", get(list).post(create))
        .route("/v1/campaigns/{id}", get(show).put(replace).delete(remove))
        .route("/v1/campaigns/{id}/preview", post(preview))
        .route("/v1/campaigns/{id}/start", post(start))
        .route("/v1/campaigns/{id}/schedule", post(schedule))
        .route("/v1/campaigns/{id}/pause", post(pause))
        .route("/v1/campaigns/{id}/resume", post(resume))
        .route("/v1/campaigns/{id}/cancel", post(cancel))
        .route("/v1/campaigns/{id}/ab/decide", post(decide))
        .route("/v1/campaigns/{id}/stats", get(stats))
        .route("/v1/campaigns/{id}/recipients.csv", get(export))
}

impl From<CampaignError> for ApiError {
    fn from(error: CampaignError) -> Self {
        let detail = error.to_string();
        match error {
            CampaignError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
            }
            CampaignError::Invalid(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-campaign",
                "Invalid campaign",
                detail,
            ),
            CampaignError::State { status, .. } => ApiError::new(
                StatusCode::CONFLICT,
                "campaign-state",
                "Not possible in this campaign status",
                detail,
            )
            .with("campaign_status", status),
            CampaignError::TemplateNotApproved(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "template-not-approved",
                "Template not approved",
                detail,
            ),
            CampaignError::Quota {
                plan,
                used,
                allowance,
                remaining,
                needed,
            } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "quota-exceeded",
                "Monthly message allowance exceeded",
                detail,
            )
            .with("plan", plan)
            .with("used", used)
            .with("allowance", allowance)
            .with("remaining", remaining)
            .with("needed", needed),
            CampaignError::Storage(error) => error.into(),
        }
    }
}

async fn load(caller: &Caller, id: &str) -> Result<Campaign, ApiError> {
    caller
        .db()
        .campaign(id)
        .await?
        .ok_or_else(|| not_found_named("campaign", id))
}

async fn list(Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "data": caller.db().campaigns().await? })))
}

async fn create(
    Extension(caller): Extension<Caller>,
    ApiJson(input): ApiJson<CampaignInput>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(&WRITERS)?;
    let id = uuid::Uuid::now_v7().to_string();
    let campaign = crate::campaigns::build(caller.db(), &input, &id).await?;
    caller.db().create_campaign(&campaign).await?;
    Ok((StatusCode::CREATED, Json(json!(load(&caller, &id).await?))))
}

async fn show(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(load(&caller, &id).await?)))
}

fn state_conflict(campaign: &Campaign, action: &str) -> ApiError {
    CampaignError::State {
        status: campaign.status.clone(),
        message: format!(
            "campaign {} is {}; it can be {action} only as a draft{}",
            campaign.id,
            campaign.status,
            if action == "changed" {
                " or while scheduled"
            } else {
                ", completed or cancelled"
            }
        ),
    }
    .into()
}

async fn replace(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<CampaignInput>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let existing = load(&caller, &id).await?;
    if !matches!(existing.status.as_str(), "draft" | "scheduled") {
        return Err(state_conflict(&existing, "changed"));
    }
    let campaign = crate::campaigns::build(caller.db(), &input, &id).await?;
    if !caller.db().replace_campaign(&campaign).await? {
        return Err(state_conflict(&load(&caller, &id).await?, "changed"));
    }
    Ok(Json(json!(load(&caller, &id).await?)))
}

async fn remove(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&WRITERS)?;
    let existing = load(&caller, &id).await?;
    if !caller.db().delete_campaign(&id).await? {
        return Err(state_conflict(&existing, "deleted"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewQuery {
    sample: Option<usize>,
}

async fn preview(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<PreviewQuery>,
) -> Result<Json<Value>, ApiError> {
    let campaign = load(&caller, &id).await?;
    let sample = query.sample.unwrap_or(5).min(50);
    Ok(Json(
        state
            .campaigns
            .preview(caller.db(), &campaign, sample)
            .await?,
    ))
}

async fn start(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let campaign = load(&caller, &id).await?;
    state.campaigns.start(caller.db(), &campaign).await?;
    Ok(Json(json!(load(&caller, &id).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleInput {
    at: String,
}

async fn schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<ScheduleInput>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let campaign = load(&caller, &id).await?;
    let zone = jiff::tz::TimeZone::get(&caller.tenant.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    let at = crate::campaigns::parse_schedule(&input.at, &zone)
        .map_err(|problem| CampaignError::Invalid(format!("`at`: {problem}")))?;
    state.campaigns.schedule(caller.db(), &campaign, at).await?;
    Ok(Json(json!(load(&caller, &id).await?)))
}

async fn pause(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let campaign = load(&caller, &id).await?;
    state.campaigns.pause(caller.db(), &campaign).await?;
    Ok(Json(json!(load(&caller, &id).await?)))
}

async fn resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let campaign = load(&caller, &id).await?;
    state.campaigns.resume(caller.db(), &campaign).await?;
    Ok(Json(json!(load(&caller, &id).await?)))
}

async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let campaign = load(&caller, &id).await?;
    let cancelled = state.campaigns.cancel(caller.db(), &campaign).await?;
    let mut value = json!(load(&caller, &id).await?);
    value["recipients_cancelled"] = json!(cancelled);
    Ok(Json(value))
}

async fn decide(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&WRITERS)?;
    let campaign = load(&caller, &id).await?;
    let decision = state.campaigns.decide(caller.db(), &campaign).await?;
    Ok(Json(json!({ "campaign_id": id, "decision": decision })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsQuery {
    reply_window_hours: Option<f64>,
}

async fn stats(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<StatsQuery>,
) -> Result<Json<Value>, ApiError> {
    let campaign = load(&caller, &id).await?;
    let window = match query.reply_window_hours {
        None => None,
        Some(hours) if hours > 0.0 && hours <= 720.0 => {
            #[allow(clippy::cast_possible_truncation)] // at most 720 h in ms
            let ms = (hours * 3_600_000.0).round() as i64;
            Some(ms)
        }
        Some(_) => {
            return Err(CampaignError::Invalid(
                "`reply_window_hours` is more than 0 and at most 720".into(),
            )
            .into());
        }
    };
    Ok(Json(
        state
            .campaigns
            .stats(caller.db(), &campaign, window)
            .await?,
    ))
}

fn rfc3339(ms: i64) -> String {
    crate::webhooks::utc_rfc3339(ms)
}

/// `GET /v1/campaigns/{id}/recipients.csv`: every recipient with its outcome and its
/// message's status history (`status@time` joined by `;`), streamed page by page.
async fn export(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let campaign = load(&caller, &id).await?;
    let db = caller.db().clone();
    let header = csv_line(
        &[
            "contact_id",
            "name",
            "phone",
            "variant",
            "test_group",
            "state",
            "skip_reason",
            "message_id",
            "message_status",
            "error",
            "status_history",
        ]
        .map(str::to_string),
    );
    struct Cursor {
        after: String,
        done: bool,
        header: Vec<u8>,
    }
    let campaign_id = campaign.id.clone();
    let pages = futures::stream::unfold(
        Cursor {
            after: String::new(),
            done: false,
            header,
        },
        move |mut cursor| {
            let (db, campaign_id) = (db.clone(), campaign_id.clone());
            async move {
                if cursor.done {
                    return None;
                }
                let page = match db
                    .campaign_export_page(&campaign_id, &cursor.after, EXPORT_PAGE)
                    .await
                {
                    Ok(page) => page,
                    Err(error) => {
                        tracing::error!(%error, "campaign export stopped");
                        cursor.done = true;
                        return Some((Err(std::io::Error::other("export failed")), cursor));
                    }
                };
                let mut chunk = std::mem::take(&mut cursor.header);
                for row in &page {
                    let history: Vec<String> = row
                        .history
                        .iter()
                        .map(|(status, at)| format!("{status}@{}", rfc3339(*at)))
                        .collect();
                    let recipient = &row.recipient;
                    chunk.extend_from_slice(&csv_line(&[
                        recipient.contact_id.clone(),
                        row.name.clone().unwrap_or_default(),
                        row.phone.clone().unwrap_or_default(),
                        recipient.variant.clone().unwrap_or_default(),
                        recipient.test_group.to_string(),
                        recipient.state.clone(),
                        recipient.skip_reason.clone().unwrap_or_default(),
                        recipient.message_id.clone().unwrap_or_default(),
                        row.message_status.clone().unwrap_or_default(),
                        row.message_error
                            .clone()
                            .or_else(|| recipient.error.clone())
                            .unwrap_or_default(),
                        history.join(";"),
                    ]));
                }
                cursor.done = page.len() < usize::try_from(EXPORT_PAGE).unwrap_or(1_000);
                if let Some(last) = page.last() {
                    cursor.after = last.recipient.contact_id.clone();
                }
                Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), cursor))
            }
        },
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"campaign-{id}-recipients.csv\""),
            ),
        ],
        Body::from_stream(pages),
    )
        .into_response())
}
