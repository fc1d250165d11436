//! Campaigns: one template message to an audience, consent-safe and exactly once per
//! recipient, through the durable job queue.
//!
//! - **Definition**: an audience (segments and tags, minus excluded segments and tags), a
//!   channel install, one template per variant with each variable taken from a contact
//!   field or a literal (with a per-variable fallback), an optional throttle, quiet hours
//!   and A/B test. Checked when saved (segments, tags, template and variable count).
//! - **Audience rules**: only contacts whose latest consent for the channel is
//!   `opted_in` (never `opted_out`, never unknown) and who have a phone; a recipient
//!   whose variable has no value and no fallback is skipped (`missing_variable:<n>`),
//!   never sent a broken message. Consent and variables are checked again at send time.
//! - **Fan-out** (`campaign.start` job): contacts in id order, 500 a batch; each batch's
//!   recipient rows (`ON CONFLICT DO NOTHING`), one `campaign.send` job per queued
//!   recipient (key `campaign:{id}:{contact}`) and the fan-out cursor are one
//!   transaction, so a crash repeats at most an uncommitted batch, which adds nothing
//!   twice.
//! - **Send** (`campaign.send` job): `Messaging::send_template_now` with the idempotency
//!   key `campaign:{id}:{contact}`: the message (its attempt recorded) and the recipient
//!   turning `sent` are one transaction, the plugin is called from the job, and the
//!   acceptance and the job's completion are the second. A second run of the job finds
//!   the first message and leaves it to the outbox's `message.send` job, which
//!   reconciles an attempt a crash interrupted; a retryable provider error also goes to
//!   the outbox. What every send needs (campaign, approved templates, plan, timezone)
//!   is read once per campaign and shared for [`CONTEXT_TTL`].
//! - **A/B**: the eligible audience in a random but reproducible order (a hash of
//!   campaign and contact); exactly the test share of it, rounded, is dealt to the
//!   variants in turn ([`ab_split`]); the rest is `held`. After the test duration (or on
//!   demand) `campaign.ab_decide` picks the winner by the documented rule ([`decide`]),
//!   records it with the numbers, and queues the held recipients with the winner.
//! - **Progress** (`campaign.progress` job, every few seconds while running): publishes
//!   live counts on the event stream and completes the campaign when nothing is left.
//!   The full counts read every recipient, so the next ones wait in proportion to what
//!   the last cost (`stats_delay`; in between a tick only counts what completion
//!   needs): live counts stay cheap for any audience size.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::jobs::{JobFailure, Jobs};
use crate::messaging::{Messaging, SendError, SentNow, TemplateNow};
use crate::pacing::{Admit, Class};
use crate::plans::Plan;
use crate::segments::{Condition, Expr};
use crate::storage::{
    Campaign, Contact, NewJob, NewRecipient, Recipient, RecipientCounts, StorageError,
    TemplateRecord, TenantDb, Variant, now_ms,
};
use crate::template_model::{SendVariables, render_preview, send_components, variable_count};

/// Contacts read per fan-out batch.
const BATCH: u32 = 500;
/// An A/B variant needs at least this many sent messages for its rate to count.
pub const MIN_SAMPLE: i64 = 20;
/// The z value a difference must reach to be more than noise (95 %, one-sided 97.5 %).
const Z_CRITICAL: f64 = 1.96;
/// Default reply attribution window.
const DEFAULT_REPLY_WINDOW_HOURS: f64 = 72.0;

/// Why a campaign operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// No such campaign (or segment, install) in this tenant.
    #[error("{0}")]
    NotFound(String),
    /// The definition is wrong; the text says what to fix.
    #[error("{0}")]
    Invalid(String),
    /// The campaign's status does not allow this.
    #[error("{message}")]
    State {
        /// The current status.
        status: String,
        /// What happened.
        message: String,
    },
    /// A variant's template is not approved.
    #[error("{0}")]
    TemplateNotApproved(String),
    /// The campaign does not fit the month's allowance.
    #[error(
        "this campaign needs {needed} messages but the {plan} plan allows {allowance} a month and {used} are used ({remaining} left); upgrade the plan or narrow the audience"
    )]
    Quota {
        /// The plan.
        plan: String,
        /// Messages sent this month.
        used: u64,
        /// The monthly allowance.
        allowance: u64,
        /// Messages left.
        remaining: u64,
        /// Messages the campaign would send.
        needed: u64,
    },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

// ---------------------------------------------------------------------------------------
// Definitions as the API takes them.

/// A campaign as written by the tenant (`POST /v1/campaigns`, `PUT /v1/campaigns/{id}`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignInput {
    /// The campaign's name.
    pub name: String,
    /// The channel install to send through.
    pub install_id: String,
    /// Who receives it.
    pub audience: AudienceInput,
    /// The template (campaigns without an A/B test).
    #[serde(default)]
    pub template: Option<TemplateInput>,
    /// An A/B test (instead of `template`).
    #[serde(default)]
    pub ab: Option<AbInput>,
    /// Most messages per minute.
    #[serde(default)]
    pub throttle_per_minute: Option<i64>,
    /// No sends between these local times of each recipient.
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
    /// A reply within this many hours after a send counts (default 72).
    #[serde(default)]
    pub reply_window_hours: Option<f64>,
}

/// Segments and tags, minus exclusions.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceInput {
    /// Segment ids whose members are included.
    #[serde(default)]
    pub segments: Vec<String>,
    /// Tags whose contacts are included.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Contacts taken out again.
    #[serde(default)]
    pub exclude: ExcludeInput,
}

/// Exclusions.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExcludeInput {
    /// Segment ids.
    #[serde(default)]
    pub segments: Vec<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A template and where its variables come from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateInput {
    /// The template's name.
    pub name: String,
    /// Its language.
    pub language: String,
    /// Variable sources.
    #[serde(default)]
    pub variables: VariablesInput,
}

/// Sources of a template's variables.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VariablesInput {
    /// The header's `{{1}}` (or media link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<Source>,
    /// `body[i]` fills `{{i+1}}`.
    #[serde(default)]
    pub body: Vec<Source>,
    /// By button position.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub buttons: BTreeMap<String, Source>,
}

/// One variable's value: a contact field (`name`, `phone`, `email` or a custom field
/// key, optionally written `fields.<key>`) or a literal `value`, with a `fallback` for
/// contacts without the field.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// A contact field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A literal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Used when the field has no value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// An A/B test.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AbInput {
    /// 2 to 5 variants, named A, B, … in this order.
    pub variants: Vec<TemplateInput>,
    /// Percent of the audience in the test (split evenly between variants), 1 to 100.
    pub test_percent: u32,
    /// `delivery`, `read` or `reply` rate.
    pub metric: String,
    /// How long after the start the winner is chosen, seconds (60 to 30 days).
    pub duration_seconds: u64,
}

/// Quiet hours: `"21:00"` to `"08:00"` in the recipient's time zone (the contact's
/// `timezone` custom field when it is an IANA name, else the tenant's).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Start, `HH:MM`.
    pub start: String,
    /// End, `HH:MM`.
    pub end: String,
}

impl QuietHours {
    fn parse(text: &str) -> Option<jiff::civil::Time> {
        let (hour, minute) = text.split_once(':')?;
        let hour: i8 = hour.parse().ok()?;
        let minute: i8 = minute.parse().ok()?;
        jiff::civil::Time::new(hour, minute, 0, 0).ok()
    }

    /// When sending may resume if `at` (Unix ms) falls in the quiet hours in `zone`;
    /// `None` when `at` is outside them.
    #[must_use]
    pub fn resume_at(&self, at: i64, zone: &jiff::tz::TimeZone) -> Option<i64> {
        let (start, end) = (Self::parse(&self.start)?, Self::parse(&self.end)?);
        let local = jiff::Timestamp::from_millisecond(at)
            .ok()?
            .to_zoned_datetime(zone.clone());
        let time = local.time();
        let quiet = if start <= end {
            time >= start && time < end
        } else {
            time >= start || time < end
        };
        if !quiet {
            return None;
        }
        let date = if time >= end {
            local.date().tomorrow().ok()?
        } else {
            local.date()
        };
        let resume = zone
            .to_ambiguous_timestamp(date.to_datetime(end))
            .compatible()
            .ok()?;
        Some(resume.as_millisecond())
    }
}

fn invalid(text: impl Into<String>) -> CampaignError {
    CampaignError::Invalid(text.into())
}

const VARIANT_NAMES: [&str; 5] = ["A", "B", "C", "D", "E"];
const METRICS: [&str; 3] = ["delivery", "read", "reply"];

/// Checks a definition against the tenant's data and turns it into a campaign row
/// (`id` and status are the caller's).
///
/// # Errors
/// `Invalid` naming the first problem; `NotFound` for an unknown install.
pub async fn build(
    db: &TenantDb,
    input: &CampaignInput,
    id: &str,
) -> Result<Campaign, CampaignError> {
    let name = input.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(invalid("`name` is 1 to 200 characters"));
    }
    let install = db.get_install(&input.install_id).await?.ok_or_else(|| {
        invalid(format!(
            "`install_id`: no install `{}` in this tenant",
            input.install_id
        ))
    })?;
    let channel = crate::messaging::channel_of(&install.plugin);
    let audience = check_audience(db, &input.audience).await?;
    let (templates, ab) = match (&input.template, &input.ab) {
        (Some(template), None) => (vec![template.clone()], None),
        (None, Some(ab)) => {
            if !(2..=5).contains(&ab.variants.len()) {
                return Err(invalid("`ab.variants` has 2 to 5 variants"));
            }
            if !(1..=100).contains(&ab.test_percent) {
                return Err(invalid(
                    "`ab.test_percent` is 1 to 100 (percent of the audience in the test)",
                ));
            }
            if !METRICS.contains(&ab.metric.as_str()) {
                return Err(invalid(format!(
                    "`ab.metric` is `delivery`, `read` or `reply`, not `{}`",
                    ab.metric
                )));
            }
            if !(60..=30 * 86_400).contains(&ab.duration_seconds) {
                return Err(invalid("`ab.duration_seconds` is 60 to 2592000 (30 days)"));
            }
            (
                ab.variants.clone(),
                Some(json!({
                    "test_percent": ab.test_percent,
                    "metric": ab.metric,
                    "duration_seconds": ab.duration_seconds,
                })),
            )
        }
        _ => {
            return Err(invalid(
                "give either `template` (one message) or `ab` (an A/B test of 2 to 5 variants)",
            ));
        }
    };
    let fields = db.custom_fields().await?;
    let mut variants = Vec::new();
    for (index, template) in templates.iter().enumerate() {
        let pointer = if ab.is_some() {
            format!("ab.variants[{index}]")
        } else {
            "template".to_string()
        };
        let stored = db
            .template_by_name(&input.install_id, &template.name, &template.language)
            .await?
            .ok_or_else(|| {
                invalid(format!(
                    "`{pointer}`: there is no template {} ({}) on install {}; create it first",
                    template.name, template.language, input.install_id
                ))
            })?;
        let expected = variable_count(&stored.spec.body.text);
        if template.variables.body.len() != expected {
            return Err(invalid(format!(
                "`{pointer}.variables.body` has {} sources but template {} has {expected} body variables; give one source per {{{{n}}}}",
                template.variables.body.len(),
                template.name
            )));
        }
        let sources = template
            .variables
            .header
            .iter()
            .map(|source| ("header".to_string(), source))
            .chain(
                template
                    .variables
                    .body
                    .iter()
                    .enumerate()
                    .map(|(n, source)| (format!("body[{n}]"), source)),
            )
            .chain(
                template
                    .variables
                    .buttons
                    .iter()
                    .map(|(key, source)| (format!("buttons.{key}"), source)),
            );
        for (place, source) in sources {
            check_source(source, &fields)
                .map_err(|problem| invalid(format!("`{pointer}.variables.{place}`: {problem}")))?;
        }
        // The whole mapping against the template as a send would use it (header and
        // buttons too): a mismatch would skip every recipient at the fan-out.
        if let Err(problems) = send_components(
            &stored.spec,
            &sample_variables(&stored.spec, &template.variables),
        ) {
            return Err(invalid(format!(
                "`{pointer}.variables` does not fit template {}: {}",
                template.name,
                problems.join("; ")
            )));
        }
        for key in template.variables.buttons.keys() {
            if key.parse::<usize>().is_err() {
                return Err(invalid(format!(
                    "`{pointer}.variables.buttons`: `{key}` is not a button position (0, 1, …)"
                )));
            }
        }
        variants.push(Variant {
            name: VARIANT_NAMES[index].to_string(),
            template_name: stored.name,
            template_language: stored.language,
            variables: serde_json::to_value(&template.variables).unwrap_or(Value::Null),
        });
    }
    if let Some(throttle) = input.throttle_per_minute
        && !(1..=1_000_000).contains(&throttle)
    {
        return Err(invalid("`throttle_per_minute` is 1 to 1000000"));
    }
    if let Some(quiet) = &input.quiet_hours
        && (QuietHours::parse(&quiet.start).is_none()
            || QuietHours::parse(&quiet.end).is_none()
            || quiet.start == quiet.end)
    {
        return Err(invalid(
            "`quiet_hours` is {\"start\": \"HH:MM\", \"end\": \"HH:MM\"} with different times, e.g. 21:00 to 08:00",
        ));
    }
    let reply_window_hours = input
        .reply_window_hours
        .unwrap_or(DEFAULT_REPLY_WINDOW_HOURS);
    if !(reply_window_hours > 0.0 && reply_window_hours <= 720.0) {
        return Err(invalid(
            "`reply_window_hours` is more than 0 and at most 720 (30 days)",
        ));
    }
    let now = now_ms();
    #[allow(clippy::cast_possible_truncation)] // at most 720 h in ms fits an i64
    let reply_window_ms = (reply_window_hours * 3_600_000.0).round() as i64;
    Ok(Campaign {
        id: id.to_string(),
        name: name.to_string(),
        install_id: input.install_id.clone(),
        channel,
        purpose: "marketing".into(),
        audience,
        schedule_at: None,
        throttle_per_minute: input.throttle_per_minute,
        quiet_hours: input
            .quiet_hours
            .as_ref()
            .and_then(|quiet| serde_json::to_value(quiet).ok()),
        reply_window_ms,
        ab,
        ab_decision: None,
        status: "draft".into(),
        status_reason: None,
        fanout_cursor: None,
        fanout_done: false,
        generation: 0,
        started_at: None,
        finished_at: None,
        created_at: now,
        updated_at: now,
        variants,
    })
}

/// Values shaped like a send's for a campaign's variable mapping: each literal as it is,
/// each contact field as a stand-in of the right kind (a link for a media header, a
/// position for a location header).
fn sample_variables(
    spec: &crate::template_model::TemplateSpec,
    mapping: &VariablesInput,
) -> SendVariables {
    use crate::template_model::HeaderFormat;
    let sample = |source: &Source, stand_in: &str| {
        source.value.clone().unwrap_or_else(|| stand_in.to_string())
    };
    let header_stand_in = match spec.header.as_ref().map(|header| header.format) {
        Some(HeaderFormat::Image | HeaderFormat::Video | HeaderFormat::Document) => {
            "https://example.com/media"
        }
        Some(HeaderFormat::Location) => "52.52,13.40",
        _ => "sample",
    };
    SendVariables {
        header: mapping
            .header
            .as_ref()
            .map(|source| sample(source, header_stand_in)),
        body: mapping
            .body
            .iter()
            .map(|source| sample(source, "sample"))
            .collect(),
        buttons: mapping
            .buttons
            .iter()
            .map(|(key, source)| (key.parse().unwrap_or(usize::MAX), sample(source, "sample")))
            .collect(),
    }
}

fn check_source(source: &Source, fields: &[crate::storage::CustomField]) -> Result<(), String> {
    match (&source.field, &source.value) {
        (Some(field), None) => {
            let key = field.strip_prefix("fields.").unwrap_or(field);
            if matches!(key, "name" | "phone" | "email") && !field.starts_with("fields.") {
                return Ok(());
            }
            if fields.iter().any(|definition| definition.key == key) {
                Ok(())
            } else {
                Err(format!(
                    "`{field}` is not `name`, `phone`, `email` or a custom field of this tenant"
                ))
            }
        }
        (None, Some(_)) if source.fallback.is_none() => Ok(()),
        (None, Some(_)) => Err("a literal `value` needs no `fallback`".into()),
        _ => Err("give exactly one of `field` (a contact field) or `value` (a literal)".into()),
    }
}

async fn check_audience(db: &TenantDb, audience: &AudienceInput) -> Result<Value, CampaignError> {
    if audience.segments.is_empty() && audience.tags.is_empty() {
        return Err(invalid(
            "`audience` needs at least one of `segments` (segment ids) or `tags`",
        ));
    }
    let mut normalized =
        json!({"segments": [], "tags": [], "exclude": {"segments": [], "tags": []}});
    for (place, segments, tags) in [
        ("audience", &audience.segments, &audience.tags),
        (
            "audience.exclude",
            &audience.exclude.segments,
            &audience.exclude.tags,
        ),
    ] {
        let mut segment_ids = Vec::new();
        for id in segments {
            if db.get_segment(id).await?.is_none() {
                return Err(invalid(format!(
                    "`{place}.segments`: no segment `{id}` in this tenant"
                )));
            }
            segment_ids.push(id.clone());
        }
        let mut normal_tags = Vec::new();
        for tag in tags {
            normal_tags.push(
                crate::contacts::normalize_tag(tag)
                    .map_err(|error| invalid(format!("`{place}.tags`: {error}")))?,
            );
        }
        let target = if place == "audience" {
            &mut normalized
        } else {
            &mut normalized["exclude"]
        };
        target["segments"] = json!(segment_ids);
        target["tags"] = json!(normal_tags);
    }
    Ok(normalized)
}

// ---------------------------------------------------------------------------------------
// Audience evaluation.

/// A stored audience compiled against the tenant's current segments and fields.
struct Audience {
    include: Expr,
    exclude_segments: Option<Expr>,
    exclude_tags: Option<Expr>,
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn segment_exprs(db: &TenantDb, ids: &[String]) -> Result<Vec<Expr>, CampaignError> {
    let fields = db.custom_fields().await?;
    let mut exprs = Vec::new();
    for id in ids {
        let segment = db
            .get_segment(id)
            .await?
            .ok_or_else(|| invalid(format!("segment `{id}` of the audience no longer exists")))?;
        let expr = crate::segments::parse(&segment.expression, &fields).map_err(|error| {
            invalid(format!(
                "segment `{}` no longer evaluates: {} (at {})",
                segment.name, error.message, error.pointer
            ))
        })?;
        exprs.push(expr);
    }
    Ok(exprs)
}

fn tag_exprs(tags: &[String]) -> Vec<Expr> {
    tags.iter()
        .map(|tag| {
            Expr::Condition(Condition::Tag {
                tag: tag.clone(),
                has: true,
            })
        })
        .collect()
}

async fn compile_audience(db: &TenantDb, audience: &Value) -> Result<Audience, CampaignError> {
    let mut include = segment_exprs(db, &strings(&audience["segments"])).await?;
    include.extend(tag_exprs(&strings(&audience["tags"])));
    let exclude_segments = segment_exprs(db, &strings(&audience["exclude"]["segments"])).await?;
    let exclude_tags = tag_exprs(&strings(&audience["exclude"]["tags"]));
    Ok(Audience {
        include: Expr::Or(include),
        exclude_segments: (!exclude_segments.is_empty()).then_some(Expr::Or(exclude_segments)),
        exclude_tags: (!exclude_tags.is_empty()).then_some(Expr::Or(exclude_tags)),
    })
}

/// Why a contact of the audience is not sent to, before variables: `None` if eligible.
fn consent_reason(contact: &Contact, channel: &str) -> Option<&'static str> {
    if contact.phone.is_none() {
        return Some("no_phone");
    }
    match contact
        .consent
        .get(channel)
        .map(|entry| entry.status.as_str())
    {
        Some("opted_in") => None,
        Some("opted_out") => Some("opted_out"),
        _ => Some("not_opted_in"),
    }
}

/// A page of the audience after `after`, each contact with its skip reason (`None`:
/// eligible so far).
async fn audience_page(
    db: &TenantDb,
    audience: &Audience,
    channel: &str,
    after: Option<&str>,
) -> Result<Vec<(Contact, Option<&'static str>)>, CampaignError> {
    let contacts = db.list_contacts(&audience.include, after, BATCH).await?;
    let (Some(first), Some(last)) = (contacts.first(), contacts.last()) else {
        return Ok(Vec::new());
    };
    let mut by_segment = HashSet::new();
    if let Some(expr) = &audience.exclude_segments {
        by_segment = db
            .contact_ids_matching_between(expr, &first.id, &last.id)
            .await?;
    }
    let mut by_tag = HashSet::new();
    if let Some(expr) = &audience.exclude_tags {
        by_tag = db
            .contact_ids_matching_between(expr, &first.id, &last.id)
            .await?;
    }
    Ok(contacts
        .into_iter()
        .map(|contact| {
            let reason = if by_segment.contains(&contact.id) {
                Some("excluded_segment")
            } else if by_tag.contains(&contact.id) {
                Some("excluded_tag")
            } else {
                consent_reason(&contact, channel)
            };
            (contact, reason)
        })
        .collect())
}

/// Marks the recipients of a dead-lettered `campaign.send` job (its `payload`) that are
/// still queued as failed (`send-job-failed: …`), so the campaign can complete and its
/// statistics say why. A recipient the job did send is no longer queued and is left
/// alone.
async fn fail_stranded(db: &TenantDb, payload: &Value, error: &str) {
    let campaign_id = payload["campaign_id"].as_str().unwrap_or_default();
    let contacts: Vec<&str> = match payload["contact_id"].as_str() {
        Some(contact) => vec![contact],
        None => payload["contact_ids"]
            .as_array()
            .map(|ids| ids.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default(),
    };
    let error = format!("send-job-failed: {error}");
    for contact in contacts {
        if let Err(failure) = db
            .finish_campaign_recipient(campaign_id, contact, "failed", None, None, Some(&error))
            .await
        {
            tracing::error!(%failure, campaign_id, contact, "a dead-lettered send's recipient stays queued");
        }
    }
}

/// A contact's place in a campaign's random order: a hash of the campaign and contact
/// ids, so the order is random across contacts and the same every time it is computed.
fn ab_key(campaign_id: &str, contact_id: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{campaign_id}:{contact_id}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The A/B test share of an audience: the eligible `contact_ids` in the campaign's
/// random order ([`ab_key`]), the first `test_percent` % of them (rounded) in the test,
/// dealt to the `variants` in turn — so the share is exact and the variants differ by
/// at most one recipient. Each test contact's variant index; the others are held for
/// the winner. The same audience always gives the same split.
#[must_use]
pub fn ab_split(
    campaign_id: &str,
    contact_ids: &[String],
    test_percent: u32,
    variants: usize,
) -> HashMap<String, usize> {
    let mut order: Vec<(u64, &String)> = contact_ids
        .iter()
        .map(|id| (ab_key(campaign_id, id), id))
        .collect();
    order.sort_unstable();
    let total = u64::try_from(order.len()).unwrap_or(u64::MAX);
    let test = usize::try_from((total * u64::from(test_percent.min(100)) + 50) / 100)
        .unwrap_or(usize::MAX);
    order
        .into_iter()
        .take(test)
        .enumerate()
        .map(|(rank, (_, id))| (id.clone(), rank % variants.max(1)))
        .collect()
}

/// The value of a contact field for a variable.
fn field_value(contact: &Contact, field: &str) -> Option<String> {
    let text = match field {
        "name" => contact.name.clone(),
        "phone" => contact.phone.clone(),
        "email" => contact.email.clone(),
        other => {
            let key = other.strip_prefix("fields.").unwrap_or(other);
            match contact.fields.get(key) {
                Some(Value::String(text)) => Some(text.clone()),
                Some(Value::Number(number)) => Some(number.to_string()),
                Some(Value::Bool(flag)) => Some(flag.to_string()),
                _ => None,
            }
        }
    };
    text.map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
}

fn source_value(source: &Source, contact: &Contact) -> Option<String> {
    if let Some(value) = &source.value {
        return Some(value.clone());
    }
    source
        .field
        .as_deref()
        .and_then(|field| field_value(contact, field))
        .or_else(|| source.fallback.clone())
}

/// A variant's variables for one contact, or the name of the first variable without a
/// value (`1` for body `{{1}}`, `header`, `button.0`).
///
/// # Errors
/// The missing variable's name.
pub fn render_variables(variables: &Value, contact: &Contact) -> Result<SendVariables, String> {
    let mapping: VariablesInput = serde_json::from_value(variables.clone()).unwrap_or_default();
    let mut rendered = SendVariables::default();
    if let Some(source) = &mapping.header {
        rendered.header = Some(source_value(source, contact).ok_or("header")?);
    }
    for (index, source) in mapping.body.iter().enumerate() {
        rendered
            .body
            .push(source_value(source, contact).ok_or_else(|| (index + 1).to_string())?);
    }
    for (key, source) in &mapping.buttons {
        let position: usize = key.parse().unwrap_or(0);
        rendered.buttons.insert(
            position,
            source_value(source, contact).ok_or_else(|| format!("button.{key}"))?,
        );
    }
    Ok(rendered)
}

// ---------------------------------------------------------------------------------------
// The service.

struct Inner {
    jobs: Jobs,
    messaging: Messaging,
    /// Send contexts by (tenant, campaign).
    contexts: Mutex<HashMap<(String, String), Arc<SendContext>>>,
    /// Campaign send slots of this process ([`CONCURRENT_SENDS`]).
    sends: tokio::sync::Semaphore,
}

/// How long the sends of a campaign share what they read once ([`SendContext`]). A
/// pause made on another node reaches this one's sends within it; on this node pause,
/// resume and cancel drop the context at once, and a cancel is also checked in the
/// send's own transaction (the recipient must still be queued).
pub const CONTEXT_TTL: Duration = Duration::from_millis(500);

/// What every send of a running campaign needs, read once.
struct SendContext {
    campaign: Campaign,
    /// The approved template of each variant, or why one cannot be sent.
    templates: Result<HashMap<String, TemplateRecord>, String>,
    plan: Plan,
    zone: jiff::tz::TimeZone,
    quiet_hours: Option<QuietHours>,
    loaded: Instant,
}

/// The campaign service: API operations and the job handlers. Cheap to clone.
#[derive(Clone)]
pub struct Campaigns {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Campaigns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Campaigns").finish_non_exhaustive()
    }
}

/// What a full pass over the audience found (the preview and the quota check).
#[derive(Debug, Default, Serialize)]
pub struct AudienceSummary {
    /// Contacts the audience reached.
    pub targeted: u64,
    /// Recipients that would be sent (test share and remainder).
    pub eligible: u64,
    /// Skipped, by reason.
    pub excluded: BTreeMap<String, u64>,
    /// Eligible per variant (the test share).
    pub by_variant: BTreeMap<String, u64>,
    /// The A/B remainder, sent the winner later.
    pub held_for_winner: u64,
    /// Rendered messages of the first eligible recipients.
    pub sample: Vec<Value>,
}

fn job(kind: &str, db: &TenantDb, payload: Value, key: String, run_at: i64) -> NewJob {
    let mut job = NewJob::new("campaigns", kind, Some(db.tenant_id()), payload);
    job.idempotency_key = Some(key);
    job.run_at = run_at;
    job.max_attempts = 12;
    job
}

/// The key suffix of a send job queued by `generation` (0: none; resumes bump it).
fn generation_suffix(generation: i64) -> String {
    match generation {
        0 => String::new(),
        generation => format!(":g{generation}"),
    }
}

fn send_job(db: &TenantDb, campaign: &Campaign, contact_id: &str, run_at: i64) -> NewJob {
    let key = format!(
        "campaign:{}:{contact_id}{}",
        campaign.id,
        generation_suffix(campaign.generation)
    );
    job(
        "campaign.send",
        db,
        json!({"campaign_id": campaign.id, "contact_id": contact_id}),
        key,
        run_at,
    )
}

/// Recipients per send job of an unthrottled campaign: one job row (inserted, claimed
/// and completed once) and one snapshot read per batch instead of per recipient.
const SEND_BATCH: usize = 25;

/// Campaign sends in flight in this process at most (each holds a plugin instance while
/// it calls the provider).
const CONCURRENT_SENDS: usize = 128;

/// Sends of one batch job in flight at once (the slots it takes).
const SEND_WIDTH: usize = 8;

/// The send jobs of `contact_ids`, the `index`-th send of the run onwards: one job per
/// recipient at its paced time when the campaign is throttled, else one per
/// [`SEND_BATCH`] recipients, due at `base`.
fn send_jobs(
    db: &TenantDb,
    campaign: &Campaign,
    contact_ids: &[String],
    base: i64,
    index: &mut u64,
) -> Vec<NewJob> {
    if campaign
        .throttle_per_minute
        .is_some_and(|per_minute| per_minute > 0)
    {
        return contact_ids
            .iter()
            .map(|contact_id| {
                let run_at = paced(base, campaign.throttle_per_minute, *index);
                *index += 1;
                send_job(db, campaign, contact_id, run_at)
            })
            .collect();
    }
    let generation = generation_suffix(campaign.generation);
    contact_ids
        .chunks(SEND_BATCH)
        .map(|chunk| {
            *index += chunk.len() as u64;
            job(
                "campaign.send",
                db,
                json!({"campaign_id": campaign.id, "contact_ids": chunk}),
                format!("campaign:{}:batch:{}{generation}", campaign.id, chunk[0]),
                base,
            )
        })
        .collect()
}

/// What became of one recipient of a send job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Sent, skipped, failed, or left to the outbox: nothing more for this job to do.
    Done,
    /// Not sent yet (the job is deferred): the number is at its throughput limit.
    NumberBusy,
    /// Not sent yet (the job is deferred): the campaign is at its throttle.
    Throttled,
}

/// The pacer lane of a throttled campaign.
fn throttle_lane(campaign_id: &str) -> String {
    format!("campaign:{campaign_id}")
}

/// Spaces sends to `throttle` a minute: the run time of the `index`-th send from `base`.
fn paced(base: i64, throttle: Option<i64>, index: u64) -> i64 {
    match throttle {
        Some(per_minute) if per_minute > 0 => {
            base + i64::try_from(index).unwrap_or(i64::MAX / 2) * 60_000 / per_minute
        }
        _ => base,
    }
}

impl Campaigns {
    /// The service; registers its job handlers on `jobs`.
    pub fn new(jobs: Jobs, messaging: Messaging) -> Self {
        let campaigns = Self {
            inner: Arc::new(Inner {
                jobs,
                messaging,
                contexts: Mutex::default(),
                sends: tokio::sync::Semaphore::new(CONCURRENT_SENDS),
            }),
        };
        for kind in [
            "campaign.start",
            "campaign.send",
            "campaign.ab_decide",
            "campaign.progress",
        ] {
            let this = campaigns.clone();
            campaigns.inner.jobs.register(kind, move |job| {
                let this = this.clone();
                async move { this.run_job(job).await }
            });
        }
        // A dead-lettered send's recipients still queued would keep the campaign
        // running for ever: they fail with the job's error instead.
        let storage = campaigns.inner.jobs.storage().clone();
        campaigns
            .inner
            .jobs
            .on_dead_letter("campaign.send", move |dead| {
                let storage = storage.clone();
                async move {
                    if let Some(tenant) = &dead.tenant_id {
                        let db = storage.tenant(&crate::ids::TenantId::new(tenant));
                        fail_stranded(&db, &dead.payload, &dead.error).await;
                    }
                }
            });
        campaigns
    }

    fn db_of(&self, job: &crate::storage::Job) -> Result<TenantDb, JobFailure> {
        let tenant = job
            .tenant_id
            .as_deref()
            .ok_or_else(|| JobFailure::permanent("a campaign job without a tenant"))?;
        Ok(self
            .inner
            .jobs
            .storage()
            .tenant(&crate::ids::TenantId::new(tenant)))
    }

    async fn run_job(&self, job: crate::storage::Job) -> Result<(), JobFailure> {
        let db = self.db_of(&job)?;
        let campaign_id = job.payload["campaign_id"].as_str().unwrap_or_default();
        if job.kind == "campaign.send" {
            return self.run_send(&db, campaign_id, &job).await;
        }
        let Some(campaign) = db.campaign(campaign_id).await? else {
            return Ok(()); // deleted
        };
        match job.kind.as_str() {
            "campaign.start" => self.run_start(&db, campaign, &job.payload).await,
            "campaign.ab_decide" => match self.decide(&db, &campaign).await {
                Ok(_) | Err(CampaignError::State { .. } | CampaignError::Invalid(_)) => Ok(()),
                Err(error) => Err(JobFailure::retry(error.to_string())),
            },
            "campaign.progress" => self.run_progress(&db, campaign, &job.payload).await,
            other => Err(JobFailure::permanent(format!(
                "unknown campaign job {other}"
            ))),
        }
    }

    /// The send context of `campaign_id` (`None`: deleted): shared while fresh, read
    /// again when stale or when it shows the campaign not running (a resume must never
    /// be missed).
    async fn send_context(
        &self,
        db: &TenantDb,
        campaign_id: &str,
    ) -> Result<Option<Arc<SendContext>>, StorageError> {
        let key = (db.tenant_id().as_str().to_string(), campaign_id.to_string());
        let cached = self
            .inner
            .contexts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        if let Some(context) = cached
            && context.loaded.elapsed() < CONTEXT_TTL
            && context.campaign.status == "running"
        {
            return Ok(Some(context));
        }
        let Some(campaign) = db.campaign(campaign_id).await? else {
            self.forget(db, campaign_id);
            return Ok(None);
        };
        let templates = match Self::approved_templates(db, &campaign).await {
            Ok(templates) => Ok(templates),
            Err(CampaignError::Storage(error)) => return Err(error),
            Err(error) => Err(error.to_string()),
        };
        let tenant = db.storage().get_tenant(db.tenant_id()).await?;
        let plan = tenant
            .as_ref()
            .map_or(Plan::Starter, |tenant| Plan::of(&tenant.plan));
        let zone = tenant
            .as_ref()
            .and_then(|tenant| jiff::tz::TimeZone::get(&tenant.timezone).ok())
            .unwrap_or(jiff::tz::TimeZone::UTC);
        let quiet_hours = campaign
            .quiet_hours
            .as_ref()
            .and_then(|value| serde_json::from_value::<QuietHours>(value.clone()).ok());
        let context = Arc::new(SendContext {
            campaign,
            templates,
            plan,
            zone,
            quiet_hours,
            loaded: Instant::now(),
        });
        let mut contexts = self
            .inner
            .contexts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if contexts.len() > 1_000 {
            contexts.retain(|_, context| context.loaded.elapsed() < CONTEXT_TTL);
        }
        contexts.insert(key, context.clone());
        Ok(Some(context))
    }

    /// Drops the send context of `campaign_id` (its status or plan changed here).
    fn forget(&self, db: &TenantDb, campaign_id: &str) {
        self.inner
            .contexts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(db.tenant_id().as_str().to_string(), campaign_id.to_string()));
    }

    fn publish(&self, db: &TenantDb, kind: &str, data: Value) {
        self.inner
            .messaging
            .publish(db.tenant_id().as_str(), kind, data);
    }

    fn publish_status(&self, db: &TenantDb, campaign_id: &str, status: &str, reason: Option<&str>) {
        // Every status change made here passes through: the sends see it at once.
        self.forget(db, campaign_id);
        self.publish(
            db,
            "campaign.status",
            json!({"campaign_id": campaign_id, "status": status, "reason": reason}),
        );
    }

    /// The approved template of each variant.
    ///
    /// # Errors
    /// `TemplateNotApproved` naming the variant whose template is missing or not approved.
    async fn approved_templates(
        db: &TenantDb,
        campaign: &Campaign,
    ) -> Result<HashMap<String, TemplateRecord>, CampaignError> {
        let mut templates = HashMap::new();
        for variant in &campaign.variants {
            let stored = db
                .template_by_name(
                    &campaign.install_id,
                    &variant.template_name,
                    &variant.template_language,
                )
                .await?;
            match stored {
                Some(template) if template.status == "APPROVED" => {
                    templates.insert(variant.name.clone(), template);
                }
                Some(template) => {
                    return Err(CampaignError::TemplateNotApproved(format!(
                        "variant {}: template {} ({}) is {}; only APPROVED templates can be sent",
                        variant.name, template.name, template.language, template.status
                    )));
                }
                None => {
                    return Err(CampaignError::TemplateNotApproved(format!(
                        "variant {}: template {} ({}) no longer exists on install {}",
                        variant.name,
                        variant.template_name,
                        variant.template_language,
                        campaign.install_id
                    )));
                }
            }
        }
        Ok(templates)
    }

    fn test_share(campaign: &Campaign) -> Option<u32> {
        campaign
            .ab
            .as_ref()
            .and_then(|ab| ab["test_percent"].as_u64())
            .and_then(|percent| u32::try_from(percent).ok())
    }

    /// The A/B split of the campaign's audience ([`ab_split`] over the contacts that pass
    /// the audience and consent rules); `None` without an A/B test.
    async fn split(
        db: &TenantDb,
        campaign: &Campaign,
        audience: &Audience,
    ) -> Result<Option<HashMap<String, usize>>, CampaignError> {
        let Some(percent) = Self::test_share(campaign) else {
            return Ok(None);
        };
        let mut eligible = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = audience_page(db, audience, &campaign.channel, after.as_deref()).await?;
            let full = page.len() == BATCH as usize;
            after = page.last().map(|(contact, _)| contact.id.clone());
            eligible.extend(
                page.into_iter()
                    .filter(|(_, reason)| reason.is_none())
                    .map(|(contact, _)| contact.id),
            );
            if !full {
                break;
            }
        }
        Ok(Some(ab_split(
            &campaign.id,
            &eligible,
            percent,
            campaign.variants.len(),
        )))
    }

    /// Which variant (or held) an eligible contact gets, and its skip reason if its
    /// variables are missing.
    fn assign(
        campaign: &Campaign,
        templates: &HashMap<String, TemplateRecord>,
        split: Option<&HashMap<String, usize>>,
        contact: &Contact,
    ) -> (Option<String>, bool, Result<Option<SendVariables>, String>) {
        let (variant, test_group) = match split {
            Some(split) => {
                let Some(&index) = split.get(&contact.id) else {
                    return (None, false, Ok(None));
                };
                (
                    &campaign.variants[index.min(campaign.variants.len() - 1)],
                    true,
                )
            }
            None => match campaign.variants.first() {
                Some(variant) => (variant, false),
                None => return (None, false, Err("no variant".into())),
            },
        };
        let rendered = render_variables(&variant.variables, contact).and_then(|variables| {
            match templates.get(&variant.name) {
                Some(template) => send_components(&template.spec, &variables)
                    .map(|_| Some(variables))
                    .map_err(|problems| format!("template:{}", problems.join("; "))),
                None => Ok(Some(variables)),
            }
        });
        (Some(variant.name.clone()), test_group, rendered)
    }

    /// Evaluates the whole audience without writing anything: counts, reasons and a
    /// rendered sample (`POST /v1/campaigns/{id}/preview`, also the quota check).
    ///
    /// # Errors
    /// `TemplateNotApproved`, `Invalid` when a segment no longer evaluates.
    pub async fn summarize(
        &self,
        db: &TenantDb,
        campaign: &Campaign,
        sample: usize,
    ) -> Result<AudienceSummary, CampaignError> {
        Self::evaluate(db, campaign, sample, false, None).await
    }

    /// [`summarize`](Self::summarize) of the contacts after `after` (in id order: the
    /// part a paused fan-out has not reached); with `until_eligible`, stops after the
    /// page that holds the first eligible recipient (the counts are then partial, but
    /// complete whenever nobody is eligible).
    async fn evaluate(
        db: &TenantDb,
        campaign: &Campaign,
        sample: usize,
        until_eligible: bool,
        after: Option<&str>,
    ) -> Result<AudienceSummary, CampaignError> {
        let templates = Self::approved_templates(db, campaign).await?;
        let audience = compile_audience(db, &campaign.audience).await?;
        let split = Self::split(db, campaign, &audience).await?;
        let mut summary = AudienceSummary::default();
        let mut after: Option<String> = after.map(str::to_string);
        loop {
            let page = audience_page(db, &audience, &campaign.channel, after.as_deref()).await?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.id.clone());
            let full = page.len() == BATCH as usize;
            for (contact, reason) in page {
                summary.targeted += 1;
                if let Some(reason) = reason {
                    *summary.excluded.entry(reason.to_string()).or_default() += 1;
                    continue;
                }
                match Self::assign(campaign, &templates, split.as_ref(), &contact) {
                    (None, _, _) => {
                        summary.eligible += 1;
                        summary.held_for_winner += 1;
                    }
                    (Some(_), _, Err(missing)) => {
                        *summary
                            .excluded
                            .entry(skip_reason_of(&missing))
                            .or_default() += 1;
                    }
                    (Some(variant), _, Ok(variables)) => {
                        summary.eligible += 1;
                        *summary.by_variant.entry(variant.clone()).or_default() += 1;
                        if summary.sample.len() < sample
                            && let (Some(variables), Some(template)) =
                                (variables, templates.get(&variant))
                        {
                            summary.sample.push(json!({
                                "contact_id": contact.id,
                                "name": contact.name,
                                "phone": contact.phone,
                                "variant": variant,
                                "template": {"name": template.name, "language": template.language},
                                "variables": variables,
                                "text": render_preview(&template.spec, &variables),
                            }));
                        }
                    }
                }
            }
            if !full || (until_eligible && summary.eligible > 0) {
                break;
            }
        }
        Ok(summary)
    }

    /// Refuses a campaign that needs more messages than the month has left.
    async fn check_quota(db: &TenantDb, needed: u64) -> Result<Value, CampaignError> {
        let plan = Plan::of_tenant(db).await?;
        let used = db
            .messages_sent(&crate::storage::month_of(now_ms()))
            .await?;
        let allowance = plan.monthly_messages();
        let remaining = allowance.saturating_sub(used);
        if needed > remaining {
            return Err(CampaignError::Quota {
                plan: plan.as_str().into(),
                used,
                allowance,
                remaining,
                needed,
            });
        }
        Ok(
            json!({"plan": plan.as_str(), "used": used, "allowance": allowance, "remaining": remaining, "needed": needed, "fits": true}),
        )
    }

    /// The preview / dry run: counts, reasons, a rendered sample and the quota check,
    /// writing nothing.
    ///
    /// # Errors
    /// As [`summarize`](Self::summarize).
    pub async fn preview(
        &self,
        db: &TenantDb,
        campaign: &Campaign,
        sample: usize,
    ) -> Result<Value, CampaignError> {
        let summary = self.summarize(db, campaign, sample).await?;
        let quota = match Self::check_quota(db, summary.eligible).await {
            Ok(quota) => quota,
            Err(CampaignError::Quota {
                plan,
                used,
                allowance,
                remaining,
                needed,
            }) => {
                json!({"plan": plan, "used": used, "allowance": allowance, "remaining": remaining, "needed": needed, "fits": false})
            }
            Err(error) => return Err(error),
        };
        let mut value = json!(summary);
        value["quota"] = quota;
        value["excluded_total"] = json!(summary.excluded.values().sum::<u64>());
        Ok(value)
    }

    async fn ready_to_start(
        &self,
        db: &TenantDb,
        campaign: &Campaign,
    ) -> Result<(), CampaignError> {
        // When every contact the audience reaches fits, the start needs to know only
        // that somebody is eligible, not how many. Otherwise the exact number decides,
        // and is the one the refusal shows.
        let all_fit = Self::reached_fit(db, campaign, 0).await?;
        let summary = Self::evaluate(db, campaign, 0, all_fit, None).await?;
        if summary.eligible == 0 {
            return Err(invalid(format!(
                "nobody in the audience can be sent this campaign: {} contacts reached, skipped by reason {}; preview it to see why",
                summary.targeted,
                json!(summary.excluded)
            )));
        }
        if !all_fit {
            Self::check_quota(db, summary.eligible).await?;
        }
        Ok(())
    }

    /// Whether `already` messages and one for every contact the audience reaches fit the
    /// month's allowance. The eligible recipients are some of the contacts reached, so
    /// when this holds, one `COUNT` spares evaluating every contact (a start or resume
    /// answers at once for any audience size).
    async fn reached_fit(
        db: &TenantDb,
        campaign: &Campaign,
        already: u64,
    ) -> Result<bool, CampaignError> {
        let audience = compile_audience(db, &campaign.audience).await?;
        let reached = db.count_matching(&audience.include).await?;
        match Self::check_quota(db, already + reached).await {
            Ok(_) => Ok(true),
            Err(CampaignError::Quota { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Refuses to resume a campaign whose remaining recipients do not fit the month's
    /// allowance: those waiting (queued or held), and, when the fan-out is unfinished,
    /// the eligible contacts it has not reached yet (all of them for a scheduled
    /// campaign paused at its start time), with the same shortcut as the start
    /// ([`reached_fit`](Self::reached_fit)).
    async fn check_waiting_fits(db: &TenantDb, campaign: &Campaign) -> Result<(), CampaignError> {
        let waiting = db.campaign_recipient_count(&campaign.id, "queued").await?
            + db.campaign_recipient_count(&campaign.id, "held").await?;
        if campaign.fanout_done {
            return Self::check_quota(db, waiting).await.map(drop);
        }
        if Self::reached_fit(db, campaign, waiting).await? {
            return Ok(());
        }
        let rest =
            Self::evaluate(db, campaign, 0, false, campaign.fanout_cursor.as_deref()).await?;
        Self::check_quota(db, waiting + rest.eligible)
            .await
            .map(drop)
    }

    fn state_error(campaign: &Campaign, action: &str) -> CampaignError {
        CampaignError::State {
            status: campaign.status.clone(),
            message: format!(
                "campaign {} is {}; it cannot be {action}",
                campaign.id, campaign.status
            ),
        }
    }

    /// Starts a draft or scheduled campaign now.
    ///
    /// # Errors
    /// `State`, `Quota`, `TemplateNotApproved`, `Invalid` (nobody to send to).
    pub async fn start(&self, db: &TenantDb, campaign: &Campaign) -> Result<(), CampaignError> {
        if !matches!(campaign.status.as_str(), "draft" | "scheduled") {
            return Err(Self::state_error(campaign, "started"));
        }
        self.ready_to_start(db, campaign).await?;
        if !db
            .transition_campaign_with_jobs(
                &campaign.id,
                &["draft", "scheduled"],
                "running",
                None,
                None,
                &Self::launch_jobs(db, campaign, false),
            )
            .await?
        {
            return Err(Self::state_error(campaign, "started"));
        }
        self.launched(db, campaign);
        Ok(())
    }

    /// The jobs that run a campaign turning `running` (at `campaign.generation`): the
    /// fan-out (which first re-queues waiting recipients when `requeue`), the progress
    /// chain and the A/B decision.
    fn launch_jobs(db: &TenantDb, campaign: &Campaign, requeue: bool) -> Vec<NewJob> {
        let now = now_ms();
        let mut jobs = vec![
            job(
                "campaign.start",
                db,
                json!({"campaign_id": campaign.id, "requeue": requeue}),
                format!("campaign:{}:start:g{}", campaign.id, campaign.generation),
                now,
            ),
            job(
                "campaign.progress",
                db,
                json!({"campaign_id": campaign.id, "generation": campaign.generation, "tick": 0}),
                format!(
                    "campaign:{}:progress:g{}:0",
                    campaign.id, campaign.generation
                ),
                now + 1_000,
            ),
        ];
        if let Some(duration) = campaign
            .ab
            .as_ref()
            .and_then(|ab| ab["duration_seconds"].as_i64())
        {
            let started = campaign.started_at.unwrap_or(now);
            jobs.push(job(
                "campaign.ab_decide",
                db,
                json!({"campaign_id": campaign.id}),
                format!("campaign:{}:ab_decide", campaign.id),
                started + duration * 1_000,
            ));
        }
        jobs
    }

    fn launched(&self, db: &TenantDb, campaign: &Campaign) {
        self.inner.jobs.wake();
        self.publish_status(db, &campaign.id, "running", None);
    }

    /// Schedules a draft or scheduled campaign at `at` (Unix ms).
    ///
    /// # Errors
    /// `State`, `Invalid` (in the past), `Quota`, `TemplateNotApproved`.
    pub async fn schedule(
        &self,
        db: &TenantDb,
        campaign: &Campaign,
        at: i64,
    ) -> Result<(), CampaignError> {
        if !matches!(campaign.status.as_str(), "draft" | "scheduled") {
            return Err(Self::state_error(campaign, "scheduled"));
        }
        if at <= now_ms() {
            return Err(invalid(
                "`at` is in the past; give a future time, or start the campaign now with POST …/start",
            ));
        }
        self.ready_to_start(db, campaign).await?;
        if !db.schedule_campaign(&campaign.id, at).await? {
            return Err(Self::state_error(campaign, "scheduled"));
        }
        db.enqueue_campaign_jobs(&[job(
            "campaign.start",
            db,
            json!({"campaign_id": campaign.id, "scheduled_at": at}),
            format!("campaign:{}:start:at:{at}", campaign.id),
            at,
        )])
        .await?;
        self.publish_status(db, &campaign.id, "scheduled", None);
        Ok(())
    }

    /// Pauses a running campaign: recipients not yet handed to the outbox wait.
    ///
    /// # Errors
    /// `State` unless running.
    pub async fn pause(&self, db: &TenantDb, campaign: &Campaign) -> Result<(), CampaignError> {
        if !db
            .transition_campaign(&campaign.id, &["running"], "paused", None)
            .await?
        {
            return Err(Self::state_error(campaign, "paused"));
        }
        self.publish_status(db, &campaign.id, "paused", None);
        Ok(())
    }

    /// Resumes a paused campaign: the waiting recipients are queued again (keys of a new
    /// generation; a recipient already sent is never sent again).
    ///
    /// # Errors
    /// `State` unless paused; `Quota` if the month no longer has room.
    pub async fn resume(&self, db: &TenantDb, campaign: &Campaign) -> Result<(), CampaignError> {
        if campaign.status != "paused" {
            return Err(Self::state_error(campaign, "resumed"));
        }
        Self::check_waiting_fits(db, campaign).await?;
        let mut resumed = campaign.clone();
        resumed.generation = campaign.generation + 1;
        if !db
            .transition_campaign_with_jobs(
                &campaign.id,
                &["paused"],
                "running",
                None,
                Some(campaign.generation),
                &Self::launch_jobs(db, &resumed, true),
            )
            .await?
        {
            return Err(Self::state_error(campaign, "resumed"));
        }
        self.launched(db, &resumed);
        Ok(())
    }

    /// Queues a send job for every recipient still waiting (after a resume).
    async fn requeue_waiting(
        &self,
        db: &TenantDb,
        campaign: &Campaign,
    ) -> Result<(), StorageError> {
        let mut after = String::new();
        let mut index = 0;
        let base = now_ms();
        loop {
            let page = db
                .campaign_recipients_in(&campaign.id, "queued", &after, i64::from(BATCH))
                .await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = last.contact_id.clone();
            let ids: Vec<String> = page
                .iter()
                .map(|recipient| recipient.contact_id.clone())
                .collect();
            let jobs = send_jobs(db, campaign, &ids, base, &mut index);
            db.enqueue_campaign_jobs(&jobs).await?;
            self.inner.jobs.wake();
        }
    }

    /// Cancels a campaign that has not finished: recipients not yet handed to the outbox
    /// are marked cancelled.
    ///
    /// # Errors
    /// `State` when completed or cancelled already.
    pub async fn cancel(&self, db: &TenantDb, campaign: &Campaign) -> Result<u64, CampaignError> {
        if !db
            .transition_campaign(
                &campaign.id,
                &["draft", "scheduled", "running", "paused"],
                "cancelled",
                None,
            )
            .await?
        {
            return Err(Self::state_error(campaign, "cancelled"));
        }
        let cancelled = db.cancel_campaign_recipients(&campaign.id).await?;
        self.publish_status(db, &campaign.id, "cancelled", None);
        Ok(cancelled)
    }

    /// Pauses a campaign on its own (quota used up, template no longer approved).
    async fn pause_for(
        &self,
        db: &TenantDb,
        campaign_id: &str,
        reason: &str,
    ) -> Result<(), StorageError> {
        if db
            .transition_campaign(
                campaign_id,
                &["running", "scheduled"],
                "paused",
                Some(reason),
            )
            .await?
        {
            tracing::warn!(tenant_id = %db.tenant_id().as_str(), campaign_id, reason, "campaign paused");
            self.publish_status(db, campaign_id, "paused", Some(reason));
        }
        Ok(())
    }

    // -- jobs ----------------------------------------------------------------------------

    async fn run_start(
        &self,
        db: &TenantDb,
        mut campaign: Campaign,
        payload: &Value,
    ) -> Result<(), JobFailure> {
        if let Some(at) = payload["scheduled_at"].as_i64() {
            if campaign.status != "scheduled" || campaign.schedule_at != Some(at) {
                return Ok(()); // rescheduled, started or cancelled since
            }
            match self.ready_to_start(db, &campaign).await {
                Ok(()) => {}
                Err(CampaignError::Storage(error)) => return Err(error.into()),
                Err(error) => {
                    self.pause_for(db, &campaign.id, &format!("could not start: {error}"))
                        .await?;
                    return Ok(());
                }
            }
            campaign.started_at = Some(now_ms());
            if db
                .transition_campaign_with_jobs(
                    &campaign.id,
                    &["scheduled"],
                    "running",
                    None,
                    None,
                    &Self::launch_jobs(db, &campaign, false),
                )
                .await?
            {
                // The launch queued the fan-out proper as its own job.
                self.launched(db, &campaign);
            }
            return Ok(());
        }
        if campaign.status == "running" && payload["requeue"].as_bool() == Some(true) {
            self.requeue_waiting(db, &campaign).await?;
        }
        self.fan_out(db, campaign).await
    }

    async fn fan_out(&self, db: &TenantDb, campaign: Campaign) -> Result<(), JobFailure> {
        if campaign.status != "running" || campaign.fanout_done {
            return Ok(());
        }
        let templates = match Self::approved_templates(db, &campaign).await {
            Ok(templates) => templates,
            Err(CampaignError::Storage(error)) => return Err(error.into()),
            Err(error) => {
                self.pause_for(db, &campaign.id, &error.to_string()).await?;
                return Ok(());
            }
        };
        let audience = match compile_audience(db, &campaign.audience).await {
            Ok(audience) => audience,
            Err(CampaignError::Storage(error)) => return Err(error.into()),
            Err(error) => {
                self.pause_for(db, &campaign.id, &error.to_string()).await?;
                return Ok(());
            }
        };
        let split = match Self::split(db, &campaign, &audience).await {
            Ok(split) => split,
            Err(CampaignError::Storage(error)) => return Err(error.into()),
            Err(error) => {
                self.pause_for(db, &campaign.id, &error.to_string()).await?;
                return Ok(());
            }
        };
        let already = db.campaign_recipient_count(&campaign.id, "sent").await?
            + db.campaign_recipient_count(&campaign.id, "queued").await?;
        let now = now_ms();
        let base = match campaign.throttle_per_minute {
            Some(_) => now.max(paced(
                campaign.started_at.unwrap_or(now),
                campaign.throttle_per_minute,
                already,
            )),
            None => now,
        };
        let mut index = 0u64;
        let mut cursor = campaign.fanout_cursor.clone();
        loop {
            // A pause or cancel stops the fan-out between batches.
            let status = db
                .campaign(&campaign.id)
                .await?
                .map(|current| current.status)
                .unwrap_or_default();
            if status != "running" {
                return Ok(());
            }
            let page = audience_page(db, &audience, &campaign.channel, cursor.as_deref())
                .await
                .map_err(|error| JobFailure::retry(error.to_string()))?;
            let done = page.len() < BATCH as usize;
            let last = page.last().map(|(contact, _)| contact.id.clone());
            let mut recipients = Vec::with_capacity(page.len());
            let mut queued = Vec::new();
            for (contact, reason) in &page {
                let recipient = if let Some(reason) = reason {
                    NewRecipient {
                        contact_id: contact.id.clone(),
                        variant: None,
                        test_group: false,
                        state: "skipped",
                        skip_reason: Some((*reason).to_string()),
                    }
                } else {
                    match Self::assign(&campaign, &templates, split.as_ref(), contact) {
                        (None, _, _) => NewRecipient {
                            contact_id: contact.id.clone(),
                            variant: None,
                            test_group: false,
                            state: "held",
                            skip_reason: None,
                        },
                        (Some(variant), test_group, Err(missing)) => NewRecipient {
                            contact_id: contact.id.clone(),
                            variant: Some(variant),
                            test_group,
                            state: "skipped",
                            skip_reason: Some(skip_reason_of(&missing)),
                        },
                        (Some(variant), test_group, Ok(_)) => {
                            queued.push(contact.id.clone());
                            NewRecipient {
                                contact_id: contact.id.clone(),
                                variant: Some(variant),
                                test_group,
                                state: "queued",
                                skip_reason: None,
                            }
                        }
                    }
                };
                recipients.push(recipient);
            }
            let jobs = send_jobs(db, &campaign, &queued, base, &mut index);
            if !db
                .record_fanout_batch(&campaign.id, &recipients, &jobs, last.as_deref(), done)
                .await?
            {
                return Ok(()); // paused or cancelled since the check above
            }
            self.inner.jobs.wake();
            if campaign.ab.is_some() {
                self.release_if_decided(db, &campaign.id).await?;
            }
            if done {
                return Ok(());
            }
            cursor = last;
        }
    }

    /// A `campaign.send` job: one recipient (`contact_id`: a throttled campaign, a
    /// quiet-hours deferral) or a batch (`contact_ids`), read in one snapshot and sent
    /// concurrently. A retryable failure runs the job again; recipients it finished are
    /// no longer queued then and are skipped.
    async fn run_send(
        &self,
        db: &TenantDb,
        campaign_id: &str,
        job: &crate::storage::Job,
    ) -> Result<(), JobFailure> {
        use futures::StreamExt;
        let single = job.payload["contact_id"].as_str();
        let contact_ids: Vec<String> = match single {
            Some(contact_id) => vec![contact_id.to_string()],
            None => job.payload["contact_ids"]
                .as_array()
                .map(|ids| {
                    ids.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        };
        let Some(context) = self.send_context(db, campaign_id).await? else {
            return Ok(()); // deleted
        };
        if context.campaign.status != "running" {
            return Ok(()); // paused: resume queues it again; cancelled: marked already
        }
        let batch = db
            .campaign_send_batch(&context.campaign.id, &contact_ids)
            .await?;
        // A job for one recipient is completed with the message's acceptance (one
        // transaction); a batch job when all its sends are done.
        let lease = if single.is_some() { job.lease() } else { None };
        // The job's share of the process's send slots is taken before any send exists:
        // a send is a large future, so jobs waiting for slots hold none.
        let width = batch.len().clamp(1, SEND_WIDTH);
        let _slots = self
            .inner
            .sends
            .acquire_many(u32::try_from(width).unwrap_or(1))
            .await
            .map_err(|_| JobFailure::retry("the campaign sender is shutting down"))?;
        // Once the number refuses one send a turn, the rest of the batch waits too.
        let held_up = std::sync::Mutex::new(None::<Turn>);
        let sends = batch.into_iter().map(|(recipient, contact)| {
            let (held_up, lease) = (&held_up, lease.clone());
            let context = &context;
            async move {
                if let Some(turn) = *held_up.lock().unwrap_or_else(|p| p.into_inner()) {
                    return Ok(turn);
                }
                let turn = self
                    .send_one(db, context, recipient, contact, job, lease)
                    .await;
                if let Ok(turn @ (Turn::NumberBusy | Turn::Throttled)) = turn {
                    *held_up.lock().unwrap_or_else(|p| p.into_inner()) = Some(turn);
                }
                turn
            }
        });
        let turns: Vec<Result<Turn, JobFailure>> = futures::stream::iter(sends)
            .buffer_unordered(width)
            .collect()
            .await;
        let (mut number_busy, mut throttled) = (0, 0);
        for turn in turns {
            match turn? {
                Turn::Done => {}
                Turn::NumberBusy => number_busy += 1,
                Turn::Throttled => throttled += 1,
            }
        }
        if number_busy + throttled > 0 {
            // The job comes back for its remaining recipients when the number (or the
            // campaign's throttle) has turns for them; deferring is not an attempt.
            let now = std::time::Instant::now();
            let pacer = self.inner.messaging.pacer();
            let mut wait = Duration::ZERO;
            if number_busy > 0 {
                wait = wait.max(pacer.promise(
                    &context.campaign.install_id,
                    Class::Bulk,
                    number_busy,
                    now,
                ));
            }
            if throttled > 0 {
                let lane = throttle_lane(&context.campaign.id);
                wait = wait.max(pacer.promise(&lane, Class::Bulk, throttled, now));
            }
            return Err(JobFailure::defer(
                format!(
                    "{} recipients wait for the number's throughput limit or the campaign's throttle",
                    number_busy + throttled
                ),
                wait,
            ));
        }
        Ok(())
    }

    /// Sends one recipient of a running campaign (`contact`: `None` once deleted).
    async fn send_one(
        &self,
        db: &TenantDb,
        context: &SendContext,
        recipient: Recipient,
        contact: Option<Contact>,
        job: &crate::storage::Job,
        lease: Option<crate::storage::JobLease>,
    ) -> Result<Turn, JobFailure> {
        let campaign = &context.campaign;
        let contact_id = recipient.contact_id.as_str();
        let last_attempt = job.attempts + 1 >= job.max_attempts;
        if recipient.state != "queued" {
            if recipient.state == "sent"
                && job.attempts > 1
                && let Some(message_id) = &recipient.message_id
            {
                // An earlier run queued the message and was interrupted before its
                // outcome was recorded: the outbox finishes (and reconciles) it.
                self.inner
                    .messaging
                    .resume_send(db, message_id, now_ms())
                    .await?;
            }
            return Ok(Turn::Done);
        }
        let finish = |state: &'static str,
                      reason: Option<String>,
                      message: Option<String>,
                      error: Option<String>| async move {
            db.finish_campaign_recipient(
                &campaign.id,
                contact_id,
                state,
                reason.as_deref(),
                message.as_deref(),
                error.as_deref(),
            )
            .await
        };
        let Some(contact) = contact else {
            finish("skipped", Some("contact_deleted".into()), None, None).await?;
            return Ok(Turn::Done);
        };
        // Consent may have changed since the fan-out: checked again.
        if let Some(reason) = consent_reason(&contact, &campaign.channel) {
            finish("skipped", Some(reason.into()), None, None).await?;
            return Ok(Turn::Done);
        }
        if let Some(quiet) = &context.quiet_hours {
            let zone = contact
                .fields
                .get("timezone")
                .and_then(Value::as_str)
                .and_then(|name| jiff::tz::TimeZone::get(name).ok())
                .unwrap_or_else(|| context.zone.clone());
            if let Some(resume_at) = quiet.resume_at(now_ms(), &zone) {
                let mut later = send_job(db, campaign, contact_id, resume_at);
                later.idempotency_key = Some(format!(
                    "campaign:{}:{contact_id}:quiet:{resume_at}",
                    campaign.id
                ));
                db.enqueue_campaign_jobs(&[later]).await?;
                return Ok(Turn::Done);
            }
        }
        let Some(variant) = recipient.variant.as_deref().and_then(|name| {
            campaign
                .variants
                .iter()
                .find(|variant| variant.name == name)
        }) else {
            finish(
                "failed",
                None,
                None,
                Some("no-variant: the recipient has no variant".into()),
            )
            .await?;
            return Ok(Turn::Done);
        };
        let template = match &context.templates {
            Ok(templates) => templates.get(&variant.name),
            Err(problem) => {
                self.pause_for(
                    db,
                    &campaign.id,
                    &format!("template_not_approved: {problem}"),
                )
                .await?;
                return Ok(Turn::Done);
            }
        };
        let Some(template) = template else {
            self.pause_for(
                db,
                &campaign.id,
                &format!(
                    "template_not_approved: variant {} has no template",
                    variant.name
                ),
            )
            .await?;
            return Ok(Turn::Done);
        };
        let variables = match render_variables(&variant.variables, &contact) {
            Ok(variables) => variables,
            Err(missing) => {
                finish(
                    "skipped",
                    Some(format!("missing_variable:{missing}")),
                    None,
                    None,
                )
                .await?;
                return Ok(Turn::Done);
            }
        };
        if let Some(per_minute) = campaign.throttle_per_minute.filter(|n| *n > 0) {
            // Sends are due at their paced times, but many can come due at once (quiet
            // hours ending, a server that was down): the campaign's lane keeps its pace.
            #[allow(clippy::cast_precision_loss)] // at most 1,000,000 a minute
            let rate = per_minute as f64 / 60.0;
            let lane = throttle_lane(&campaign.id);
            let pacer = self.inner.messaging.pacer();
            match pacer.admit(&lane, rate, Class::Bulk, std::time::Instant::now()) {
                Admit::Go(pause) => crate::pacing::sleep(pause).await,
                Admit::Later => return Ok(Turn::Throttled),
            }
        }
        let send = TemplateNow {
            install_id: &campaign.install_id,
            contact: &contact,
            template,
            variables: &variables,
            plan: context.plan,
            idempotency_key: format!("campaign:{}:{contact_id}", campaign.id),
            sent_by: &format!("campaign:{}", campaign.id),
            recipient: (campaign.id.clone(), contact_id.to_string()),
            lease,
        };
        match self.inner.messaging.send_template_now(db, send).await {
            Ok(SentNow::Queued(_) | SentNow::RecipientNotQueued) => {}
            Ok(SentNow::Deferred) => return Ok(Turn::NumberBusy),
            // The key's first message (queued by an earlier, interrupted run).
            Ok(SentNow::Existing(message_id)) => {
                finish("sent", None, Some(message_id), None).await?;
            }
            Err(SendError::Refused {
                code: "opted-out", ..
            }) => {
                finish("skipped", Some("opted_out".into()), None, None).await?;
            }
            Err(SendError::Refused {
                code: "quota-exceeded",
                message,
                ..
            }) => {
                self.pause_for(db, &campaign.id, &format!("quota_exceeded: {message}"))
                    .await?;
            }
            Err(SendError::Storage(error)) => return Err(error.into()),
            Err(SendError::Marketplace(error)) if !last_attempt => {
                return Err(JobFailure::retry(format!("channel: {error}")));
            }
            Err(error) => {
                let code = match &error {
                    SendError::Refused { code, .. } => (*code).to_string(),
                    SendError::Marketplace(_) => "channel-unavailable".into(),
                    SendError::NotFound(_) => "not-found".into(),
                    _ => "invalid".into(),
                };
                finish("failed", None, None, Some(format!("{code}: {error}"))).await?;
            }
        }
        Ok(Turn::Done)
    }

    /// Sends the held remainder of an A/B campaign to the winner if the decision has
    /// been taken. A decision releases the held recipients that exist when it is taken;
    /// one taken before the fan-out finished (decided early, while paused, or while a
    /// crashed fan-out waited for its retry) cannot see the rows written after it. So
    /// the fan-out checks after writing each batch (then either it sees the decision or
    /// the decision's release sees the batch), and the progress job sweeps as well.
    async fn release_if_decided(&self, db: &TenantDb, campaign_id: &str) -> Result<(), JobFailure> {
        let Some(current) = db.campaign(campaign_id).await? else {
            return Ok(());
        };
        if current.ab_decision.is_none() {
            return Ok(());
        }
        match self.decide(db, &current).await {
            Ok(_) | Err(CampaignError::State { .. }) => Ok(()),
            Err(CampaignError::Storage(error)) => Err(error.into()),
            Err(error) => Err(JobFailure::retry(error.to_string())),
        }
    }

    async fn run_progress(
        &self,
        db: &TenantDb,
        campaign: Campaign,
        payload: &Value,
    ) -> Result<(), JobFailure> {
        if campaign.status != "running"
            || payload["generation"].as_i64() != Some(campaign.generation)
        {
            return Ok(());
        }
        // The full counts (published on the event stream) when due; in between, only
        // what completion needs, from the state index.
        let now = now_ms();
        let stats_due = payload["stats_at"].as_i64().is_none_or(|at| now >= at);
        let (queued, held, stats_at) = if stats_due {
            let counting = Instant::now();
            let stats = self.stats(db, &campaign, None).await?;
            self.publish(db, "campaign.progress", stats.clone());
            (
                stats["queued"].as_u64().unwrap_or(0),
                stats["held"].as_u64().unwrap_or(0),
                now + stats_delay(counting.elapsed()),
            )
        } else {
            (
                db.campaign_recipient_count(&campaign.id, "queued").await?,
                db.campaign_recipient_count(&campaign.id, "held").await?,
                payload["stats_at"].as_i64().unwrap_or(now),
            )
        };
        if held > 0 && campaign.ab_decision.is_some() {
            self.release_if_decided(db, &campaign.id).await?;
        }
        if campaign.fanout_done && queued == 0 && held == 0 {
            if !stats_due {
                // The stream ends with the final numbers.
                let stats = self.stats(db, &campaign, None).await?;
                self.publish(db, "campaign.progress", stats);
            }
            if db
                .transition_campaign(&campaign.id, &["running"], "completed", None)
                .await?
            {
                self.publish_status(db, &campaign.id, "completed", None);
            }
            return Ok(());
        }
        let tick = payload["tick"].as_i64().unwrap_or(0) + 1;
        let delay = if queued > 0 || !campaign.fanout_done {
            PROGRESS_EVERY
        } else {
            PROGRESS_SETTLING
        };
        db.enqueue_campaign_jobs(&[job(
            "campaign.progress",
            db,
            json!({"campaign_id": campaign.id, "generation": campaign.generation, "tick": tick, "stats_at": stats_at}),
            format!(
                "campaign:{}:progress:g{}:{tick}",
                campaign.id, campaign.generation
            ),
            now + i64::try_from(delay.as_millis()).unwrap_or(2_000),
        )])
        .await?;
        Ok(())
    }

    // -- A/B -----------------------------------------------------------------------------

    /// Chooses the A/B winner now (or returns the decision already taken), records it
    /// and queues the held recipients with the winner.
    ///
    /// # Errors
    /// `Invalid` without an A/B test; `State` before the campaign ran or after a cancel.
    pub async fn decide(&self, db: &TenantDb, campaign: &Campaign) -> Result<Value, CampaignError> {
        let Some(ab) = &campaign.ab else {
            return Err(invalid(format!("campaign {} has no A/B test", campaign.id)));
        };
        if !matches!(campaign.status.as_str(), "running" | "paused" | "completed") {
            return Err(Self::state_error(campaign, "decided"));
        }
        let decision = match &campaign.ab_decision {
            Some(decision) => decision.clone(),
            None => {
                let counts = db
                    .campaign_counts(&campaign.id, campaign.reply_window_ms)
                    .await?;
                let metric = ab["metric"].as_str().unwrap_or("read");
                let names: Vec<String> = campaign.variants.iter().map(|v| v.name.clone()).collect();
                let mut decision = decide(&names, metric, &counts);
                decision["decided_at"] = json!(now_ms());
                if !db.record_ab_decision(&campaign.id, &decision).await? {
                    // Another run decided first: theirs stands.
                    decision = db
                        .campaign(&campaign.id)
                        .await?
                        .and_then(|current| current.ab_decision)
                        .unwrap_or(decision);
                } else {
                    self.publish(
                        db,
                        "campaign.ab_decided",
                        json!({"campaign_id": campaign.id, "decision": decision}),
                    );
                }
                decision
            }
        };
        let winner = decision["winner"].as_str().unwrap_or("A").to_string();
        let current = db
            .campaign(&campaign.id)
            .await?
            .unwrap_or_else(|| campaign.clone());
        let running = current.status == "running";
        let base = now_ms();
        let mut index = 0;
        loop {
            let page = db
                .campaign_recipients_in(&campaign.id, "held", "", i64::from(BATCH))
                .await?;
            if page.is_empty() {
                break;
            }
            let ids: Vec<String> = page.iter().map(|r| r.contact_id.clone()).collect();
            let jobs: Vec<NewJob> = if running {
                send_jobs(db, &current, &ids, base, &mut index)
            } else {
                Vec::new()
            };
            db.release_held_recipients(&campaign.id, &ids, &winner, &jobs)
                .await?;
            self.inner.jobs.wake();
        }
        Ok(decision)
    }

    // -- statistics ----------------------------------------------------------------------

    /// Counts and rates per campaign and per variant; `reply_window_ms` overrides the
    /// campaign's reply attribution window.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn stats(
        &self,
        db: &TenantDb,
        campaign: &Campaign,
        reply_window_ms: Option<i64>,
    ) -> Result<Value, StorageError> {
        let window = reply_window_ms.unwrap_or(campaign.reply_window_ms);
        let counts = db.campaign_counts(&campaign.id, window).await?;
        let mut total = Tally::default();
        let mut variants: BTreeMap<String, Tally> = campaign
            .variants
            .iter()
            .map(|variant| (variant.name.clone(), Tally::default()))
            .collect();
        for row in &counts {
            total.add(row);
            if let Some(variant) = &row.variant {
                variants.entry(variant.clone()).or_default().add(row);
            }
        }
        // The failures by error join every recipient with its message again: only read
        // when the counts found some.
        let failures = if total.failed > 0 {
            db.campaign_failures(&campaign.id).await?
        } else {
            BTreeMap::new()
        };
        for ((variant, code), n) in &failures {
            *total.failed_by.entry(code.clone()).or_default() += n;
            if let Some(tally) = variants.get_mut(variant) {
                *tally.failed_by.entry(code.clone()).or_default() += n;
            }
        }
        let mut value = total.json();
        value["campaign_id"] = json!(campaign.id);
        value["status"] = json!(campaign.status);
        value["status_reason"] = json!(campaign.status_reason);
        value["reply_window_hours"] = json!(window as f64 / 3_600_000.0);
        value["variants"] = Value::Array(
            variants
                .iter()
                .map(|(name, tally)| {
                    let mut entry = tally.json();
                    entry["name"] = json!(name);
                    entry
                })
                .collect(),
        );
        value["ab"] = json!({"config": campaign.ab, "decision": campaign.ab_decision});
        Ok(value)
    }
}

/// Progress ticks this often while messages are going out (completion is noticed
/// within one tick)…
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// …and this often once only statuses and replies can still change.
const PROGRESS_SETTLING: Duration = Duration::from_secs(15);
/// The full counts read every recipient with its message, so their cost grows with the
/// audience (about 0.3 s of one core at 100,000 on the benchmark machine, a full core
/// at 2 s intervals for a million): the next full count waits at least this many times
/// as long as the last one took, so the live counts never cost more than 1/20 of a core.
const STATS_COST_FACTOR: u32 = 20;
/// The longest wait between two full counts.
const STATS_AT_MOST: Duration = Duration::from_secs(30);

/// How long after a full count that took `counted_in` the next one is due, in ms.
fn stats_delay(counted_in: Duration) -> i64 {
    let delay = counted_in
        .saturating_mul(STATS_COST_FACTOR)
        .min(STATS_AT_MOST);
    i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)
}

fn skip_reason_of(missing: &str) -> String {
    if let Some(problems) = missing.strip_prefix("template:") {
        format!("invalid_variables:{problems}")
    } else {
        format!("missing_variable:{missing}")
    }
}

#[derive(Debug, Default)]
struct Tally {
    targeted: i64,
    skipped: BTreeMap<String, i64>,
    held: i64,
    queued: i64,
    sent: i64,
    accepted: i64,
    pending: i64,
    delivered: i64,
    read: i64,
    replied: i64,
    failed: i64,
    cancelled: i64,
    /// Failed before reaching the outbox.
    refused: i64,
    failed_by: BTreeMap<String, i64>,
}

impl Tally {
    fn add(&mut self, row: &RecipientCounts) {
        self.targeted += row.recipients;
        match row.state.as_str() {
            "skipped" => {
                *self
                    .skipped
                    .entry(row.skip_reason.clone().unwrap_or_default())
                    .or_default() += row.recipients;
            }
            "held" => self.held += row.recipients,
            "queued" => self.queued += row.recipients,
            "sent" => self.sent += row.recipients,
            "failed" => {
                self.failed += row.recipients;
                self.refused += row.recipients;
            }
            "cancelled" => self.cancelled += row.recipients,
            _ => {}
        }
        self.accepted += row.accepted;
        self.pending += row.pending;
        self.delivered += row.delivered;
        self.read += row.read;
        self.replied += row.replied;
        self.failed += row.failed;
    }

    fn json(&self) -> Value {
        let rate = |part: i64, whole: i64| {
            if whole > 0 {
                json!((part as f64 / whole as f64 * 10_000.0).round() / 10_000.0)
            } else {
                Value::Null
            }
        };
        let skipped: i64 = self.skipped.values().sum();
        json!({
            "targeted": self.targeted,
            "skipped": {"total": skipped, "by_reason": self.skipped},
            "held": self.held,
            "queued": self.queued,
            "sent": self.sent,
            "accepted": self.accepted,
            "pending": self.pending,
            "delivered": self.delivered,
            "read": self.read,
            "replied": self.replied,
            "failed": {"total": self.failed, "by_error": self.failed_by},
            "cancelled": self.cancelled,
            "rates": {
                "delivery": rate(self.delivered, self.accepted),
                "read": rate(self.read, self.accepted),
                "reply": rate(self.replied, self.accepted),
                "failure": rate(self.failed, self.sent + self.refused),
            },
        })
    }
}

/// The A/B rule. For each variant, the test-share messages the provider took (`sent`)
/// and the successes of `metric` among them give a rate.
///
/// 1. If any variant has fewer than [`MIN_SAMPLE`] sent messages, the sample is too
///    small to compare: the first variant (the control) wins (`rule: sample_too_small`).
/// 2. Otherwise the variant with the highest rate leads; every variant whose rate is not
///    lower than the leader's by more than noise (a two-proportion z-test, z < 1.96)
///    stays a candidate, and the earliest candidate wins. One candidate: `significant`;
///    several with exactly equal rates: `tie`; otherwise `within_noise`.
#[must_use]
pub fn decide(variants: &[String], metric: &str, counts: &[RecipientCounts]) -> Value {
    let numbers: Vec<(String, i64, i64)> = variants
        .iter()
        .map(|name| {
            let mut sent = 0;
            let mut successes = 0;
            for row in counts
                .iter()
                .filter(|row| row.test_group && row.variant.as_deref() == Some(name.as_str()))
            {
                sent += row.accepted;
                successes += match metric {
                    "delivery" => row.delivered,
                    "reply" => row.replied,
                    _ => row.read,
                };
            }
            (name.clone(), sent, successes)
        })
        .collect();
    let rate = |sent: i64, successes: i64| {
        if sent > 0 {
            successes as f64 / sent as f64
        } else {
            0.0
        }
    };
    let table: Vec<Value> = numbers
        .iter()
        .map(|(name, sent, successes)| {
            json!({"variant": name, "sent": sent, "successes": successes, "rate": (rate(*sent, *successes) * 10_000.0).round() / 10_000.0})
        })
        .collect();
    let first = variants.first().cloned().unwrap_or_else(|| "A".into());
    if numbers.iter().any(|(_, sent, _)| *sent < MIN_SAMPLE) {
        let smallest = numbers.iter().map(|(_, sent, _)| *sent).min().unwrap_or(0);
        return json!({
            "winner": first,
            "rule": "sample_too_small",
            "metric": metric,
            "min_sample": MIN_SAMPLE,
            "explanation": format!(
                "a variant had only {smallest} sent messages (fewer than {MIN_SAMPLE}), too few to compare {metric} rates; the first variant, {first}, is kept"
            ),
            "variants": table,
        });
    }
    let (leader_index, _) = numbers.iter().enumerate().fold(
        (0, f64::MIN),
        |(best, best_rate), (index, (_, sent, successes))| {
            let r = rate(*sent, *successes);
            if r > best_rate {
                (index, r)
            } else {
                (best, best_rate)
            }
        },
    );
    let (_, leader_sent, leader_successes) = numbers[leader_index].clone();
    let leader_rate = rate(leader_sent, leader_successes);
    let candidates: Vec<usize> = numbers
        .iter()
        .enumerate()
        .filter(|(index, (_, sent, successes))| {
            *index == leader_index
                || z_score(leader_successes, leader_sent, *successes, *sent) < Z_CRITICAL
        })
        .map(|(index, _)| index)
        .collect();
    let winner_index = candidates.first().copied().unwrap_or(leader_index);
    let winner = numbers[winner_index].0.clone();
    let (rule, explanation) = if candidates.len() == 1 {
        (
            "significant",
            format!(
                "{winner} had the highest {metric} rate ({:.1} %), more than noise above every other variant (z ≥ {Z_CRITICAL})",
                leader_rate * 100.0
            ),
        )
    } else if candidates.iter().all(|index| {
        (rate(numbers[*index].1, numbers[*index].2) - leader_rate).abs() < f64::EPSILON
    }) {
        (
            "tie",
            format!(
                "{} variants tied at a {metric} rate of {:.1} %; the earlier variant, {winner}, wins",
                candidates.len(),
                leader_rate * 100.0
            ),
        )
    } else {
        let names: Vec<&str> = candidates
            .iter()
            .map(|index| numbers[*index].0.as_str())
            .collect();
        (
            "within_noise",
            format!(
                "{} led with a {metric} rate of {:.1} %, but {} are within noise of it (z < {Z_CRITICAL}); the earliest of them, {winner}, wins",
                numbers[leader_index].0,
                leader_rate * 100.0,
                names.join(", ")
            ),
        )
    };
    json!({
        "winner": winner,
        "rule": rule,
        "metric": metric,
        "min_sample": MIN_SAMPLE,
        "explanation": explanation,
        "variants": table,
    })
}

/// The two-proportion z statistic of `a` over `b` (0 when undefined).
fn z_score(a_successes: i64, a_sent: i64, b_successes: i64, b_sent: i64) -> f64 {
    if a_sent == 0 || b_sent == 0 {
        return 0.0;
    }
    let (a_n, b_n) = (a_sent as f64, b_sent as f64);
    let (pa, pb) = (a_successes as f64 / a_n, b_successes as f64 / b_n);
    let pooled = (a_successes + b_successes) as f64 / (a_n + b_n);
    let se = (pooled * (1.0 - pooled) * (1.0 / a_n + 1.0 / b_n)).sqrt();
    if se == 0.0 {
        return 0.0;
    }
    (pa - pb) / se
}

/// Parses a schedule time: RFC 3339 with an offset (`2025-06-01T09:00:00Z`,
/// `…+02:00`), or a local date-time without one (`2025-06-01T09:00`) read in `zone`.
///
/// # Errors
/// A message saying what to write.
pub fn parse_schedule(text: &str, zone: &jiff::tz::TimeZone) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(timestamp) = text.parse::<jiff::Timestamp>() {
        return Ok(timestamp.as_millisecond());
    }
    let local = text.parse::<jiff::civil::DateTime>().map_err(|_| {
        format!(
            "`{text}` is neither an RFC 3339 time (2025-06-01T09:00:00Z, 2025-06-01T09:00:00+02:00) nor a local date-time (2025-06-01T09:00, read in the tenant's time zone)"
        )
    })?;
    zone.to_ambiguous_timestamp(local)
        .compatible()
        .map(|timestamp| timestamp.as_millisecond())
        .map_err(|error| format!("`{text}`: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_counts_wait_in_proportion_to_their_cost() {
        let ms = Duration::from_millis;
        // Cheap counts are due at every tick.
        assert_eq!(stats_delay(ms(5)), 100);
        // A count of 300 ms waits 20 times as long: at most 1/20 of a core.
        assert_eq!(stats_delay(ms(300)), 6_000);
        // Never longer than the cap, however slow the count.
        assert_eq!(stats_delay(Duration::from_secs(10)), 30_000);
    }

    fn counts(variant: &str, accepted: i64, read: i64) -> RecipientCounts {
        RecipientCounts {
            variant: Some(variant.into()),
            state: "sent".into(),
            test_group: true,
            recipients: accepted,
            accepted,
            read,
            delivered: accepted,
            ..RecipientCounts::default()
        }
    }

    fn names(n: usize) -> Vec<String> {
        VARIANT_NAMES[..n]
            .iter()
            .map(|s| (*s).to_string())
            .collect()
    }

    fn campaign(throttle: Option<i64>, generation: i64) -> Campaign {
        Campaign {
            id: "c1".into(),
            name: "spring".into(),
            install_id: "i1".into(),
            channel: "whatsapp".into(),
            purpose: "marketing".into(),
            audience: json!({}),
            schedule_at: None,
            throttle_per_minute: throttle,
            quiet_hours: None,
            reply_window_ms: 0,
            ab: None,
            ab_decision: None,
            status: "running".into(),
            status_reason: None,
            fanout_cursor: None,
            fanout_done: false,
            generation,
            started_at: None,
            finished_at: None,
            created_at: 0,
            updated_at: 0,
            variants: Vec::new(),
        }
    }

    /// A queued recipient of variant A.
    fn recipient(contact: &str) -> NewRecipient {
        NewRecipient {
            contact_id: contact.into(),
            variant: Some("A".into()),
            test_group: false,
            state: "queued",
            skip_reason: None,
        }
    }

    /// A dead-lettered send job fails its recipients that are still queued (the
    /// campaign could never complete), and only those.
    #[tokio::test]
    async fn a_dead_send_job_fails_its_queued_recipients() -> anyhow::Result<()> {
        for backend in crate::storage::testing::all_backends().await? {
            let label = backend.label;
            let tenant = backend.storage.create_tenant("Stranded", "pro").await?;
            let db = backend.storage.tenant(&tenant.id);
            db.create_campaign(&campaign(None, 0)).await?;
            assert!(
                db.record_fanout_batch("c1", &[recipient("k1"), recipient("k2")], &[], None, true)
                    .await?
            );
            db.finish_campaign_recipient("c1", "k1", "sent", None, Some("m1"), None)
                .await?;
            let mut job = crate::storage::Job {
                id: "j1".into(),
                tenant_id: Some(tenant.id.as_str().into()),
                queue: "campaigns".into(),
                kind: "campaign.send".into(),
                payload: json!({"campaign_id": "c1", "contact_ids": ["k1", "k2"]}),
                priority: 0,
                run_at: 0,
                state: "running".into(),
                attempts: 11,
                max_attempts: 12,
                last_error: None,
                idempotency_key: None,
                created_at: 0,
                updated_at: 0,
                finished_at: None,
                lease_owner: None,
                completed: crate::storage::CompletedFlag::default(),
            };
            let ends_the_job = |failure: &JobFailure, job: &crate::storage::Job| {
                failure.ends_the_job(job.last_attempt())
            };
            let flaky = JobFailure::retry("the database is away");
            assert!(!ends_the_job(&flaky, &job), "{label}: a retry is left");
            job.attempts = 12;
            assert!(ends_the_job(&flaky, &job), "{label}: the last attempt");
            assert!(ends_the_job(&JobFailure::permanent("no"), &job));
            let deferred = JobFailure::defer("the number is busy", Duration::from_secs(1));
            assert!(
                !ends_the_job(&deferred, &job),
                "{label}: a deferred job comes back, even from its last attempt"
            );
            fail_stranded(&db, &job.payload, &flaky.message).await;
            assert_eq!(
                db.campaign_recipient_count("c1", "queued").await?,
                0,
                "{label}"
            );
            assert_eq!(
                db.campaign_recipient_count("c1", "sent").await?,
                1,
                "{label}"
            );
            assert_eq!(
                db.campaign_recipient_count("c1", "failed").await?,
                1,
                "{label}"
            );
        }
        Ok(())
    }

    /// A fan-out batch is written only while the campaign runs: a pause or cancel that
    /// lands between the fan-out's status check and its write leaves nothing queued.
    #[tokio::test]
    async fn fan_out_batches_are_written_only_while_running() -> anyhow::Result<()> {
        for backend in crate::storage::testing::all_backends().await? {
            let label = backend.label;
            let tenant = backend.storage.create_tenant("Fan-out", "pro").await?;
            let db = backend.storage.tenant(&tenant.id);
            let mut draft = campaign(None, 0);
            draft.status = "draft".into();
            db.create_campaign(&draft).await?;
            let queued =
                |db: TenantDb| async move { db.campaign_recipient_count("c1", "queued").await };
            assert!(
                !db.record_fanout_batch("c1", &[recipient("k1")], &[], Some("k1"), false)
                    .await?,
                "{label}: a draft"
            );
            assert!(
                db.transition_campaign("c1", &["draft"], "running", None)
                    .await?
            );
            assert!(
                db.record_fanout_batch("c1", &[recipient("k2")], &[], Some("k2"), false)
                    .await?,
                "{label}: running"
            );
            for stopped in ["paused", "cancelled"] {
                assert!(
                    db.transition_campaign("c1", &["running"], stopped, None)
                        .await?
                );
                assert!(
                    !db.record_fanout_batch("c1", &[recipient("k3")], &[], Some("k3"), true)
                        .await?,
                    "{label}: {stopped}"
                );
                if stopped == "paused" {
                    assert!(
                        db.transition_campaign("c1", &["paused"], "running", None)
                            .await?
                    );
                }
            }
            assert_eq!(
                queued(db.clone()).await?,
                1,
                "{label}: only the running batch"
            );
            let stored = db.campaign("c1").await?.expect("campaign");
            assert_eq!(
                (stored.fanout_cursor.as_deref(), stored.fanout_done),
                (Some("k2"), false),
                "{label}: the cursor moved with the written batch only"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn unthrottled_sends_are_batched_and_throttled_ones_paced() -> anyhow::Result<()> {
        let test = crate::storage::testing::sqlite().await?;
        let db = test.storage.tenant(&crate::ids::TenantId::new("t1"));
        let ids: Vec<String> = (0..60).map(|n| format!("k{n:03}")).collect();

        // Unthrottled: 25 + 25 + 10 recipients, keyed by their first contact, all due now.
        let mut index = 7;
        let jobs = send_jobs(&db, &campaign(None, 0), &ids, 1_000, &mut index);
        assert_eq!(index, 67);
        let batches: Vec<Vec<&str>> = jobs
            .iter()
            .map(|job| {
                job.payload["contact_ids"]
                    .as_array()
                    .map(|ids| ids.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [25, 25, 10]
        );
        assert_eq!(
            batches.concat(),
            ids.iter().map(String::as_str).collect::<Vec<_>>()
        );
        let keys: Vec<&str> = jobs
            .iter()
            .filter_map(|job| job.idempotency_key.as_deref())
            .collect();
        assert_eq!(
            keys,
            [
                "campaign:c1:batch:k000",
                "campaign:c1:batch:k025",
                "campaign:c1:batch:k050"
            ]
        );
        assert!(
            jobs.iter()
                .all(|job| job.run_at == 1_000 && job.kind == "campaign.send")
        );
        // After a resume the keys are the new generation's.
        let resumed = send_jobs(&db, &campaign(None, 2), &ids[..3], 1_000, &mut 0);
        assert_eq!(
            resumed[0].idempotency_key.as_deref(),
            Some("campaign:c1:batch:k000:g2")
        );

        // Throttled (60 a minute): one job per recipient, a second apart from the index on.
        let mut index = 2;
        let jobs = send_jobs(&db, &campaign(Some(60), 0), &ids[..3], 1_000, &mut index);
        assert_eq!(index, 5);
        assert_eq!(
            jobs.iter().map(|job| job.run_at).collect::<Vec<_>>(),
            [3_000, 4_000, 5_000]
        );
        assert_eq!(jobs[1].payload["contact_id"], "k001");
        assert_eq!(jobs[1].idempotency_key.as_deref(), Some("campaign:c1:k001"));
        Ok(())
    }

    #[test]
    fn a_clear_winner_is_significant() {
        let decision = decide(
            &names(2),
            "read",
            &[counts("A", 50, 10), counts("B", 50, 40)],
        );
        assert_eq!(decision["winner"], "B", "{decision}");
        assert_eq!(decision["rule"], "significant");
    }

    #[test]
    fn ties_go_to_the_earlier_variant() {
        let decision = decide(
            &names(3),
            "read",
            &[counts("A", 50, 5), counts("B", 50, 40), counts("C", 50, 40)],
        );
        assert_eq!(decision["winner"], "B", "{decision}");
        assert_eq!(decision["rule"], "tie");
    }

    #[test]
    fn small_samples_keep_the_first_variant() {
        let decision = decide(
            &names(2),
            "read",
            &[counts("A", 19, 0), counts("B", 50, 50)],
        );
        assert_eq!(decision["winner"], "A");
        assert_eq!(decision["rule"], "sample_too_small");
    }

    #[test]
    fn differences_within_noise_keep_the_earlier_candidate() {
        let decision = decide(
            &names(2),
            "read",
            &[counts("A", 40, 20), counts("B", 40, 23)],
        );
        assert_eq!(decision["winner"], "A", "{decision}");
        assert_eq!(decision["rule"], "within_noise");
    }

    #[test]
    fn the_split_is_exact_even_random_and_reproducible() {
        let contacts: Vec<String> = (0..3001).map(|n| format!("contact-{n}")).collect();
        let split = ab_split("campaign-1", &contacts, 30, 3);
        // 30 % of 3,001, rounded; dealt in turn, so the variants differ by at most one.
        assert_eq!(split.len(), 900);
        let mut per_variant = [0; 3];
        for index in split.values() {
            per_variant[*index] += 1;
        }
        assert_eq!(per_variant, [300, 300, 300]);
        // The same audience in any order gives the same split.
        let mut reversed = contacts.clone();
        reversed.reverse();
        assert_eq!(split, ab_split("campaign-1", &reversed, 30, 3));
        // Random, not the first contacts by id: the test share is spread over the
        // whole audience, and another campaign picks other contacts.
        let in_first_third = contacts[..1000]
            .iter()
            .filter(|id| split.contains_key(*id))
            .count();
        assert!((200..400).contains(&in_first_third), "{in_first_third}");
        let other = ab_split("campaign-2", &contacts, 30, 3);
        let shared = split.keys().filter(|id| other.contains_key(*id)).count();
        assert!(shared < 400, "{shared} of 900 shared with another campaign");
        // Edge cases: nobody, everybody, uneven deals.
        assert!(ab_split("c", &[], 50, 2).is_empty());
        assert_eq!(ab_split("c", &contacts[..7], 100, 2).len(), 7);
        let uneven = ab_split("c", &contacts[..10], 50, 2);
        assert_eq!(uneven.len(), 5);
        assert_eq!(uneven.values().filter(|index| **index == 0).count(), 3);
    }

    #[test]
    fn quiet_hours_wrap_midnight_in_the_zone() {
        let quiet = QuietHours {
            start: "21:00".into(),
            end: "08:00".into(),
        };
        let zone = jiff::tz::TimeZone::get("Europe/Paris").unwrap();
        let at = |text: &str| text.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        // 22:30 Paris (summer, UTC+2) → 08:00 the next morning.
        assert_eq!(
            quiet.resume_at(at("2025-06-01T20:30:00Z"), &zone),
            Some(at("2025-06-02T06:00:00Z"))
        );
        // 06:00 Paris → 08:00 the same day.
        assert_eq!(
            quiet.resume_at(at("2025-06-02T04:00:00Z"), &zone),
            Some(at("2025-06-02T06:00:00Z"))
        );
        assert_eq!(quiet.resume_at(at("2025-06-02T10:00:00Z"), &zone), None);
    }

    #[test]
    fn schedules_read_local_times_in_the_zone() {
        let zone = jiff::tz::TimeZone::get("America/New_York").unwrap();
        let utc = parse_schedule("2025-06-01T09:00:00Z", &zone).unwrap();
        let local = parse_schedule("2025-06-01T05:00", &zone).unwrap();
        assert_eq!(utc, local);
        assert!(parse_schedule("next tuesday", &zone).is_err());
    }

    #[test]
    fn variables_come_from_fields_literals_and_fallbacks() {
        let contact = Contact {
            id: "c".into(),
            name: Some("Ada".into()),
            phone: Some("+14155550100".into()),
            email: None,
            tags: vec![],
            fields: json!({"city": "Paris", "points": 12}),
            created_at: 0,
            updated_at: 0,
            last_contacted_at: None,
            consent: BTreeMap::new(),
        };
        let mapping = json!({"body": [
            {"field": "name"}, {"field": "fields.city"}, {"field": "points"},
            {"value": "SUMMER"}, {"field": "email", "fallback": "none"}
        ]});
        let rendered = render_variables(&mapping, &contact).unwrap();
        assert_eq!(rendered.body, ["Ada", "Paris", "12", "SUMMER", "none"]);
        let missing = json!({"body": [{"field": "name"}, {"field": "email"}]});
        assert_eq!(render_variables(&missing, &contact).unwrap_err(), "2");
    }
}
