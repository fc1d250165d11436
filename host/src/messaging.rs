//! Messaging: the kernel side of channel connectors.
//!
//! - **Inbound** (`/hooks/{install}`): the install's plugin checks the provider's
//!   signature and turns the payload into events; the kernel records them — messages
//!   deduplicated by provider id, contacts upserted by phone, the 24-hour window extended,
//!   opt-out / opt-in keywords recorded as consent, delivery statuses applied to a
//!   monotonic state machine, template review changes — and only then answers the
//!   provider. Tenant webhooks for each event are queued in the same transaction.
//! - **Outbound** (`POST /v1/messages`): checks (contact, consent for marketing, the
//!   window for free-form messages, template approval) happen before anything is queued;
//!   the message row and its send job are written in one transaction (the outbox); the
//!   `message.send` job paces sends per phone number (tokens per second) and per
//!   recipient, calls the plugin and retries what the provider says can be retried.
//! - **Live events**: every change is also published to in-process subscribers (the
//!   inbox's Server-Sent Events stream).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::contacts::normalize_phone;
use crate::jobs::{JobFailure, Jobs};
use crate::marketplace::{ChannelHandle, Marketplace, MarketplaceError};
use crate::pacing::{Admit, Class};
use crate::runtime::abi::{channel_types as ct, types};
use crate::storage::{
    ConsentEntry, InboundRecord, Job, Message, NewJob, OutboundRecord, Queued, Storage,
    StorageError, TenantDb, now_ms,
};
use crate::webhooks::Webhooks;

/// A change pushed to live subscribers (the inbox's event stream).
#[derive(Debug, Clone, Serialize)]
pub struct LiveEvent {
    /// The tenant it belongs to.
    #[serde(skip)]
    pub tenant_id: String,
    /// `message.received`, `message.status`, `conversation.updated`, `template.status`.
    pub kind: String,
    /// The data.
    pub data: Value,
}

/// Why a send was refused.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Something named does not exist (contact, install, template).
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed; the text says what to fix.
    #[error("{0}")]
    Invalid(String),
    /// The message may not be sent (window closed, opted out, template not approved).
    #[error("{message}")]
    Refused {
        /// A stable problem code (`window-closed`, `opted-out`, `template-not-approved`,
        /// `quota-exceeded`).
        code: &'static str,
        /// What happened and what to do.
        message: String,
        /// Details (for example templates that can be sent instead).
        details: Value,
    },
    /// The idempotency key was used for a different request.
    #[error(
        "the Idempotency-Key was already used for a different request (message {0}); use a new key"
    )]
    KeyConflict(String),
    /// The channel install cannot be used.
    #[error(transparent)]
    Marketplace(#[from] MarketplaceError),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// `POST /v1/messages`.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// The channel install to send through.
    pub install_id: String,
    /// The contact to send to…
    pub contact_id: Option<String>,
    /// …or a phone number (a contact is created if none has it).
    pub to: Option<String>,
    /// Free-form text.
    pub text: Option<TextContent>,
    /// An approved template with its variables.
    pub template: Option<TemplateContent>,
    /// Media by link.
    pub media: Option<MediaContent>,
    /// An interactive message (the channel's documented JSON; WhatsApp: the Cloud API
    /// `interactive` object with `button` or `list`).
    pub interactive: Option<Value>,
    /// The PostDog id of the message this one replies to.
    pub reply_to: Option<String>,
    /// `service` (default) or `marketing`; marketing messages are never sent to
    /// contacts who opted out. Marketing-category templates are marketing.
    pub purpose: Option<String>,
}

/// Free-form text.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TextContent {
    /// The text.
    pub body: String,
    /// Let the channel show a link preview.
    #[serde(default)]
    pub preview_url: bool,
}

/// A template to send.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateContent {
    /// The template's name.
    pub name: String,
    /// Its language.
    pub language: String,
    /// Values for its variables.
    #[serde(default)]
    pub variables: Option<Value>,
}

/// Media by link.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MediaContent {
    /// image, video, audio, document or sticker.
    pub kind: String,
    /// A public https URL.
    pub url: String,
    /// A caption.
    pub caption: Option<String>,
    /// A file name (documents).
    pub filename: Option<String>,
}

struct Inner {
    storage: Storage,
    marketplace: Marketplace,
    jobs: Jobs,
    webhooks: Webhooks,
    live: broadcast::Sender<Arc<LiveEvent>>,
    /// Where published events also go to reach the other nodes (`live_relay`).
    relay: std::sync::OnceLock<tokio::sync::mpsc::Sender<crate::live_relay::Outgoing>>,
    /// Per-number pacing (the install's throughput limit and the provider's holds).
    pacer: crate::pacing::Pacer,
    recipients: Mutex<HashMap<String, Arc<tokio::sync::Mutex<i64>>>>,
    /// Install id → tenant id (an install never changes tenant).
    install_tenants: Mutex<HashMap<String, String>>,
    /// Tenant → (read at, opt-out keywords, opt-in keywords), re-read after a second.
    keywords: Mutex<HashMap<String, KeywordEntry>>,
    /// The flow engine, told about inbound messages.
    flows: crate::flows::FlowsLink,
    /// How long after an interrupted send attempt the outbox waits for a status that
    /// proves the provider accepted it before sending again.
    reconcile_window: Duration,
}

/// `POSTDOG_SEND_RECONCILE_SECONDS` (default 120): see `Inner::reconcile_window`.
fn reconcile_window() -> Duration {
    let seconds = std::env::var("POSTDOG_SEND_RECONCILE_SECONDS")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(120);
    Duration::from_secs(seconds)
}

type KeywordEntry = (Instant, Arc<(Vec<String>, Vec<String>)>);

/// How often a send the provider failed by status with a retryable error (after
/// accepting it) is sent again before the failure stands.
pub const PROVIDER_RETRIES: u64 = 3;
/// The wait before such a retry when the provider named none.
const PROVIDER_RETRY_WAIT: Duration = Duration::from_secs(15);

/// The highest `throughput_per_second` an install may configure. Meta grants a number 80
/// messages/s by default and up to 1,000 once upgraded; the ceiling is higher so other
/// providers (and the loopback fakes of the benchmarks) are not capped by Meta's tiers.
pub const MAX_THROUGHPUT_PER_SECOND: f64 = 10_000.0;

/// How a send attempt is made: whether a retryable failure may ask for another attempt,
/// whether the attempt is already recorded on the message, and the job completed with
/// an acceptance.
struct Attempt<'a> {
    retries_left: bool,
    stamped: bool,
    /// The install's pacer admitted the send already (a campaign's, before queueing).
    paced: bool,
    lease: Option<&'a crate::storage::JobLease>,
}

/// A campaign's template message to send from its job (`Messaging::send_template_now`).
#[derive(Debug)]
pub struct TemplateNow<'a> {
    /// The channel install.
    pub install_id: &'a str,
    /// The recipient (with its consent).
    pub contact: &'a crate::storage::Contact,
    /// The approved template.
    pub template: &'a crate::storage::TemplateRecord,
    /// Its variables for this contact.
    pub variables: &'a crate::template_model::SendVariables,
    /// The tenant's plan (its monthly allowance is checked).
    pub plan: crate::plans::Plan,
    /// At most one message per key.
    pub idempotency_key: String,
    /// Recorded as the message's sender.
    pub sent_by: &'a str,
    /// The campaign recipient (campaign id, contact id) that turns `sent` with it.
    pub recipient: (String, String),
    /// The lease of the running job that sends only this message: the job is completed
    /// with the acceptance (`None` for a job that sends several).
    pub lease: Option<crate::storage::JobLease>,
}

/// What `Messaging::send_template_now` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentNow {
    /// Queued and handed over (accepted, failed, or left to the outbox to retry): the
    /// message id.
    Queued(String),
    /// The key's message existed already (an earlier run of the job): its id.
    Existing(String),
    /// The recipient was no longer queued; nothing was written.
    RecipientNotQueued,
    /// The number is at its throughput limit and the send's turn is not near: nothing
    /// was written; defer the job (`crate::pacing::Pacer::promise`).
    Deferred,
}

/// The messaging service. Cheap to clone.
#[derive(Clone)]
pub struct Messaging {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Messaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messaging").finish_non_exhaustive()
    }
}

/// A webhook request as received.
#[derive(Debug, Clone)]
pub struct HookRequest {
    /// GET or POST.
    pub method: String,
    /// The path below the hook URL.
    pub path: String,
    /// The raw query string.
    pub query: String,
    /// The headers.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Vec<u8>,
}

/// The answer to a webhook request.
#[derive(Debug, Clone)]
pub struct HookResponse {
    /// The status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HookResponse {
    fn text(status: u16, text: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: text.into().into_bytes(),
        }
    }
}

/// The channel name of a plugin (`postdog/whatsapp` → `whatsapp`).
pub fn channel_of(plugin: &str) -> String {
    plugin.rsplit('/').next().unwrap_or(plugin).to_string()
}

fn status_name(status: types::DeliveryStatus) -> &'static str {
    match status {
        types::DeliveryStatus::Accepted => "accepted",
        types::DeliveryStatus::Sent => "sent",
        types::DeliveryStatus::Delivered => "delivered",
        types::DeliveryStatus::Read => "read",
        types::DeliveryStatus::Failed => "failed",
    }
}

fn provider_error_json(error: &ct::ProviderError) -> Value {
    json!({
        "code": error.code,
        "message": error.message,
        "retryable": error.retryable,
        "retry_after_ms": error.retry_after_ms,
    })
}

fn media_kind_name(kind: types::MediaKind) -> &'static str {
    match kind {
        types::MediaKind::Image => "image",
        types::MediaKind::Video => "video",
        types::MediaKind::Audio => "audio",
        types::MediaKind::Document => "document",
        types::MediaKind::Sticker => "sticker",
    }
}

fn parse_media_kind(kind: &str) -> Option<types::MediaKind> {
    Some(match kind {
        "image" => types::MediaKind::Image,
        "video" => types::MediaKind::Video,
        "audio" => types::MediaKind::Audio,
        "document" => types::MediaKind::Document,
        "sticker" => types::MediaKind::Sticker,
        _ => return None,
    })
}

/// The kind and JSON content of an inbound message.
fn inbound_content(content: &ct::InboundContent) -> (String, Value) {
    let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
    match content {
        ct::InboundContent::Text(text) => ("text".into(), json!({ "text": { "body": text } })),
        ct::InboundContent::Media(media) => (
            media_kind_name(media.kind).into(),
            json!({ "media": {
                "kind": media_kind_name(media.kind),
                "media_id": media.media_id,
                "mime_type": media.mime_type,
                "caption": media.caption,
            }}),
        ),
        ct::InboundContent::Location(location) => (
            "location".into(),
            json!({ "location": {
                "latitude": location.latitude,
                "longitude": location.longitude,
                "name": location.name,
                "address": location.address,
            }}),
        ),
        ct::InboundContent::Contacts(cards) => {
            ("contacts".into(), json!({ "contacts": parse(cards) }))
        }
        ct::InboundContent::InteractiveReply(choice) => (
            "interactive_reply".into(),
            json!({ "interactive_reply": { "id": choice.id, "title": choice.title } }),
        ),
        ct::InboundContent::ButtonReply(choice) => (
            "button_reply".into(),
            json!({ "button_reply": { "id": choice.id, "title": choice.title } }),
        ),
        ct::InboundContent::Reaction(reaction) => (
            "reaction".into(),
            json!({ "reaction": { "message_id": reaction.message_id, "emoji": reaction.emoji } }),
        ),
        ct::InboundContent::Unsupported(raw) => {
            ("unsupported".into(), json!({ "unsupported": parse(raw) }))
        }
    }
}

/// The text a keyword is matched against (text messages and button / list replies).
fn keyword_text(content: &ct::InboundContent) -> Option<&str> {
    match content {
        ct::InboundContent::Text(text) => Some(text),
        ct::InboundContent::ButtonReply(choice) | ct::InboundContent::InteractiveReply(choice) => {
            Some(&choice.title)
        }
        _ => None,
    }
}

fn matches_keyword(text: &str, keywords: &[String]) -> bool {
    let text = text.trim();
    keywords
        .iter()
        .any(|keyword| same_keyword(keyword.trim(), text))
}

/// Whether two keywords are the same ignoring case, in any script: `СТОП` is `стоп`,
/// `STOPP` is `stopp` (ASCII-only folding missed every non-Latin keyword).
pub(crate) fn same_keyword(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || (!a.is_ascii() && a.to_lowercase() == b.to_lowercase())
}

impl Messaging {
    /// The service.
    pub fn new(storage: Storage, marketplace: Marketplace, jobs: Jobs, webhooks: Webhooks) -> Self {
        let (live, _) = broadcast::channel(4096);
        let messaging = Self {
            inner: Arc::new(Inner {
                storage,
                marketplace,
                jobs,
                webhooks,
                live,
                relay: std::sync::OnceLock::new(),
                pacer: crate::pacing::Pacer::default(),
                recipients: Mutex::default(),
                install_tenants: Mutex::default(),
                keywords: Mutex::default(),
                flows: crate::flows::FlowsLink::default(),
                reconcile_window: reconcile_window(),
            }),
        };
        let this = messaging.clone();
        messaging.inner.jobs.register("message.send", move |job| {
            let this = this.clone();
            async move { this.run_send(job).await }
        });
        let this = messaging.clone();
        messaging
            .inner
            .jobs
            .on_dead_letter("message.send", move |dead| {
                let this = this.clone();
                async move { this.fail_stranded(dead).await }
            });
        messaging
    }

    /// Connects the flow engine (triggers and replies on inbound messages).
    pub fn set_flows(&self, flows: crate::flows::Flows) {
        self.inner.flows.set(flows);
    }

    /// Subscribes to live events (all tenants; filter by `tenant_id`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.inner.live.subscribe()
    }

    /// Publishes a change to the tenant's live event stream (`GET /v1/events`), on this
    /// node and (through the relay, if any) on the others.
    pub fn publish(&self, tenant_id: &str, kind: &str, data: Value) {
        let event = Arc::new(LiveEvent {
            tenant_id: tenant_id.to_string(),
            kind: kind.to_string(),
            data,
        });
        self.relay(crate::live_relay::Outgoing::Event(event.clone()));
        // No subscriber is fine.
        let _ = self.inner.live.send(event);
    }

    /// Sends `item` to the other nodes, if this node relays (PostgreSQL).
    fn relay(&self, item: crate::live_relay::Outgoing) {
        if let Some(relay) = self.inner.relay.get()
            && relay.try_send(item).is_err()
        {
            crate::live_relay::DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Publishes an event another node published (on this node only).
    pub(crate) fn publish_relayed(&self, event: LiveEvent) {
        let _ = self.inner.live.send(Arc::new(event));
    }

    /// From now on, published events also go to `relay` (once; later calls do nothing).
    pub(crate) fn relay_to(&self, relay: tokio::sync::mpsc::Sender<crate::live_relay::Outgoing>) {
        let _ = self.inner.relay.set(relay);
    }

    /// Handles `GET|POST /hooks/{install_id}`.
    pub async fn handle_hook(&self, install_id: &str, request: HookRequest) -> HookResponse {
        match self.hook(install_id, request).await {
            Ok(response) => response,
            Err(response) => response,
        }
    }

    async fn hook(
        &self,
        install_id: &str,
        request: HookRequest,
    ) -> Result<HookResponse, HookResponse> {
        let storage = &self.inner.storage;
        let cached = self
            .inner
            .install_tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(install_id)
            .cloned();
        let tenant = match cached {
            Some(tenant) => tenant,
            None => {
                let tenant = storage
                    .install_tenant(install_id)
                    .await
                    .map_err(|error| {
                        tracing::error!(%error, "webhook: reading the install failed");
                        HookResponse::text(503, "temporarily unavailable; retry later")
                    })?
                    .ok_or_else(|| HookResponse::text(404, "no such webhook endpoint"))?;
                let mut map = self
                    .inner
                    .install_tenants
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if map.len() > 100_000 {
                    map.clear();
                }
                map.insert(install_id.to_string(), tenant.clone());
                tenant
            }
        };
        let db = storage.tenant(&crate::ids::TenantId::new(&tenant));
        let handle = self
            .inner
            .marketplace
            .channel(&db, install_id)
            .await
            .map_err(|error| match error {
                MarketplaceError::NotFound(_) => HookResponse::text(404, "no such webhook endpoint"),
                MarketplaceError::Disabled => {
                    HookResponse::text(403, "this channel install is disabled")
                }
                MarketplaceError::Invalid(message) => HookResponse::text(404, message),
                MarketplaceError::CircuitOpen { .. } => {
                    HookResponse::text(503, "the channel connector is failing; retry later")
                }
                other => {
                    tracing::error!(error = %other, install_id, "webhook: the install cannot be loaded");
                    HookResponse::text(503, "the channel connector is unavailable; retry later")
                }
            })?;
        let wit_request = types::HttpRequest {
            method: request.method.to_ascii_uppercase(),
            path: if request.path.is_empty() {
                "/".into()
            } else {
                request.path
            },
            query: request.query,
            headers: request.headers,
            body: request.body,
        };
        let plugin_failed = |error: MarketplaceError| {
            tracing::warn!(%error, install_id, "webhook: the channel plugin failed");
            HookResponse::text(502, format!("the channel connector failed: {error}"))
        };
        if wit_request.method == "GET" {
            return match handle
                .verify_webhook(&wit_request)
                .await
                .map_err(plugin_failed)?
            {
                Ok(response) => Ok(HookResponse {
                    status: response.status,
                    headers: response.headers,
                    body: response.body,
                }),
                Err(error) => Ok(channel_error_response(&error, 403)),
            };
        }
        if wit_request.method != "POST" {
            return Ok(HookResponse::text(
                405,
                "use GET (verification) or POST (events)",
            ));
        }
        let outcome = match handle
            .handle_webhook(&wit_request)
            .await
            .map_err(plugin_failed)?
        {
            Ok(outcome) => outcome,
            Err(error) => return Ok(channel_error_response(&error, 401)),
        };
        for event in &outcome.events {
            self.apply_event(&db, &handle, install_id, event)
                .await
                .map_err(|error| {
                    tracing::error!(%error, install_id, "webhook: storing an event failed");
                    HookResponse::text(503, "storing the events failed; retry later")
                })?;
        }
        Ok(HookResponse {
            status: outcome.response.status,
            headers: outcome.response.headers,
            body: outcome.response.body,
        })
    }

    async fn apply_event(
        &self,
        db: &TenantDb,
        handle: &ChannelHandle,
        install_id: &str,
        event: &ct::InboundEvent,
    ) -> Result<(), StorageError> {
        let tenant = db.tenant_id().as_str().to_string();
        match event {
            ct::InboundEvent::Message(message) => {
                let phone = match normalize_phone(&message.sender, "US") {
                    Ok(phone) => phone,
                    Err(error) => {
                        tracing::warn!(%error, sender = %message.sender, "webhook: inbound message from an unusable address skipped");
                        return Ok(());
                    }
                };
                let (kind, content) = inbound_content(&message.content);
                let record = InboundRecord {
                    message_id: uuid::Uuid::now_v7().to_string(),
                    install_id: install_id.to_string(),
                    channel: channel_of(handle.plugin()),
                    provider_message_id: message.provider_message_id.clone(),
                    phone,
                    profile_name: message.profile_name.clone(),
                    timestamp_ms: message.timestamp_ms,
                    kind,
                    content,
                    reply_to: message.context_message_id.clone(),
                };
                let subscribed = self.inner.webhooks.subscriptions(db).await?;
                let event_record = record.clone();
                let event_tenant = tenant.clone();
                let result = db
                    .record_inbound(&record, move |result| {
                        let record = &event_record;
                        let data = json!({
                            "message_id": result.message_id,
                            "conversation_id": result.conversation_id,
                            "contact_id": result.contact_id,
                            "install_id": record.install_id,
                            "channel": record.channel,
                            "from": record.phone,
                            "profile_name": record.profile_name,
                            "kind": record.kind,
                            "content": record.content,
                            "provider_message_id": record.provider_message_id,
                            "timestamp_ms": record.timestamp_ms,
                        });
                        let mut jobs = Vec::new();
                        if result.contact_created {
                            let contact = crate::storage::ContactData {
                                name: record.profile_name.clone(),
                                phone: Some(record.phone.clone()),
                                ..Default::default()
                            };
                            jobs.extend(subscribed.contact_created(
                                &event_tenant,
                                &record.channel,
                                &result.contact_id,
                                &contact,
                            ));
                        }
                        jobs.extend(subscribed.fanout(&event_tenant, "message.received", data));
                        jobs
                    })
                    .await?;
                if result.duplicate {
                    // The first delivery may have stored the message and then failed
                    // before its keyword was recorded (the provider redelivers because
                    // the webhook was not answered 200): a STOP must not be lost, so a
                    // redelivered keyword is applied unless it already was.
                    if let Some(text) = keyword_text(&message.content) {
                        self.apply_keywords(db, &result.contact_id, &record, text)
                            .await?;
                    }
                    return Ok(());
                }
                if result.contact_created {
                    db.storage().report_contact_changes(
                        db.tenant_id().as_str(),
                        &result.contact_id,
                        [crate::storage::ContactChange::Created],
                    );
                }
                if let Some(text) = keyword_text(&message.content) {
                    self.apply_keywords(db, &result.contact_id, &record, text)
                        .await?;
                }
                if let Some(flows) = self.inner.flows.get() {
                    let text = keyword_text(&message.content);
                    if let Err(error) = flows
                        .on_inbound(
                            db,
                            install_id,
                            &result.conversation_id,
                            &result.contact_id,
                            &result.message_id,
                            text,
                        )
                        .await
                    {
                        // The message is stored; Meta's redelivery would be a duplicate,
                        // so report instead of failing the webhook.
                        tracing::error!(%error, "flows: reacting to an inbound message failed");
                    }
                }
                self.publish(
                    &tenant,
                    "message.received",
                    json!({
                        "message_id": result.message_id,
                        "conversation_id": result.conversation_id,
                        "contact_id": result.contact_id,
                        "kind": record.kind,
                        "content": record.content,
                    }),
                );
            }
            ct::InboundEvent::Status(update) => {
                // A status echoing the id of a send whose receipt was never recorded (a
                // crash right after the provider accepted it) completes that send, so
                // the outbox does not send it again.
                if let Some(callback) = &update.callback_data
                    && let Some(message) = db.message_awaiting_receipt(install_id, callback).await?
                {
                    self.accept_send(db, &message, &update.provider_message_id, None)
                        .await?;
                }
                let status = status_name(update.status);
                if status == "failed"
                    && let Some(failure) = update.error.as_ref().filter(|error| error.retryable)
                    && self
                        .retry_failed_send(db, install_id, &update.provider_message_id, failure)
                        .await?
                {
                    return Ok(());
                }
                let error = update.error.as_ref().map(provider_error_json);
                self.apply_status(
                    db,
                    install_id,
                    &update.provider_message_id,
                    status,
                    Some(update.timestamp_ms),
                    error.as_ref(),
                )
                .await?;
            }
            ct::InboundEvent::Template(update) => {
                let changed = db
                    .set_template_status(
                        install_id,
                        &update.name,
                        &update.language,
                        &update.status,
                        update.reason.as_deref(),
                    )
                    .await?;
                if let Some(template) = changed {
                    let data = json!({
                        "template_id": template.id,
                        "name": template.name,
                        "language": template.language,
                        "status": template.status,
                        "reason": template.reason,
                    });
                    self.inner
                        .webhooks
                        .emit(db, "template.status", data.clone())
                        .await?;
                    self.publish(&tenant, "template.status", data);
                }
            }
        }
        Ok(())
    }

    /// A `failed` status whose error the channel marks retryable (Meta reports the
    /// pair rate limit 131056, the throughput limit 130429 and transient errors this
    /// way, after accepting the send): the message goes back to the outbox and is sent
    /// again after the provider's wait, up to [`PROVIDER_RETRIES`] times; whether it did.
    async fn retry_failed_send(
        &self,
        db: &TenantDb,
        install_id: &str,
        provider_message_id: &str,
        failure: &ct::ProviderError,
    ) -> Result<bool, StorageError> {
        let wait = failure
            .retry_after_ms
            .map_or(PROVIDER_RETRY_WAIT, Duration::from_millis);
        let run_at = now_ms() + i64::try_from(wait.as_millis()).unwrap_or(60_000);
        let mut error = provider_error_json(failure);
        error["kind"] = json!(if failure.code == 131_056 || failure.code == 130_429 {
            "rate-limited"
        } else {
            "provider"
        });
        let requeued = db
            .requeue_after_provider_failure(
                install_id,
                provider_message_id,
                &error,
                PROVIDER_RETRIES,
                |message_id, retry| {
                    let mut job = outbox_job(db, message_id, 0);
                    job.idempotency_key = Some(format!("send:{message_id}:retry{retry}"));
                    job.run_at = run_at;
                    job
                },
            )
            .await?;
        let Some((message, retry)) = requeued else {
            return Ok(false);
        };
        if failure.code == 130_429 {
            // The number is over its throughput: every send through it waits.
            self.hold_install(install_id, wait);
        }
        tracing::info!(message_id = %message.id, code = failure.code, retry, wait_ms = wait.as_millis(), "the provider failed a send it had accepted; it is sent again");
        self.inner.jobs.wake();
        self.publish(
            db.tenant_id().as_str(),
            "message.status",
            message_event(&message),
        );
        Ok(true)
    }

    async fn apply_keywords(
        &self,
        db: &TenantDb,
        contact_id: &str,
        record: &InboundRecord,
        text: &str,
    ) -> Result<(), StorageError> {
        if text.trim().chars().count() > 50 {
            return Ok(()); // longer than any keyword may be
        }
        let keywords = self.keywords(db).await?;
        let (opt_out, opt_in) = (&keywords.0, &keywords.1);
        let status = if matches_keyword(text, opt_out) {
            "opted_out"
        } else if matches_keyword(text, opt_in) {
            "opted_in"
        } else {
            return Ok(());
        };
        let channel = if crate::storage::CONSENT_CHANNELS.contains(&record.channel.as_str()) {
            record.channel.clone()
        } else {
            "whatsapp".to_string()
        };
        let proof = format!(
            "message {} said \"{}\"",
            record.provider_message_id,
            text.trim()
        );
        if db
            .consent_recorded_with_proof(contact_id, &channel, &proof)
            .await?
        {
            return Ok(()); // this very message was applied already (a redelivery)
        }
        db.record_consent(
            contact_id,
            &ConsentEntry {
                channel: channel.clone(),
                status: status.to_string(),
                source: "keyword".into(),
                proof: Some(proof),
                recorded_at: now_ms(),
            },
        )
        .await?;
        let kind = if status == "opted_out" {
            "contact.opted_out"
        } else {
            "contact.opted_in"
        };
        let data = json!({ "contact_id": contact_id, "channel": channel, "keyword": text.trim() });
        self.inner.webhooks.emit(db, kind, data.clone()).await?;
        self.publish(db.tenant_id().as_str(), kind, data);
        Ok(())
    }

    async fn keywords(
        &self,
        db: &TenantDb,
    ) -> Result<Arc<(Vec<String>, Vec<String>)>, StorageError> {
        let tenant = db.tenant_id().as_str();
        if let Some((at, keywords)) = self
            .inner
            .keywords
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            && at.elapsed() < Duration::from_secs(1)
        {
            return Ok(keywords.clone());
        }
        let keywords = Arc::new(db.messaging_keywords().await?);
        let mut map = self
            .inner
            .keywords
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.clear();
        }
        map.insert(tenant.to_string(), (Instant::now(), keywords.clone()));
        Ok(keywords)
    }

    /// Forgets a tenant's cached keywords (after they changed).
    pub fn keywords_changed(&self, tenant_id: &str) {
        self.inner
            .keywords
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant_id);
    }

    async fn apply_status(
        &self,
        db: &TenantDb,
        install_id: &str,
        provider_message_id: &str,
        status: &str,
        provider_at: Option<i64>,
        error: Option<&Value>,
    ) -> Result<(), StorageError> {
        let subscribed = self.inner.webhooks.subscriptions(db).await?;
        let tenant = db.tenant_id().as_str().to_string();
        let applied = db
            .apply_status(
                install_id,
                provider_message_id,
                status,
                provider_at,
                error,
                |message, changed| {
                    if !changed {
                        return Vec::new();
                    }
                    subscribed.fanout(
                        &tenant,
                        &format!("message.{status}"),
                        message_event(message),
                    )
                },
            )
            .await?;
        if let Some((message, true)) = applied {
            self.publish(&tenant, "message.status", message_event(&message));
        }
        Ok(())
    }

    /// Queues a message (`POST /v1/messages`): the message and whether it was a replay
    /// of an earlier request with the same idempotency key.
    pub async fn send(
        &self,
        db: &TenantDb,
        request: SendRequest,
        idempotency_key: Option<String>,
        sent_by: Option<&str>,
    ) -> Result<(Message, bool), SendError> {
        let request_hash = {
            use sha2::Digest;
            let text = serde_json::to_string(&request).unwrap_or_default();
            hex::encode(sha2::Sha256::digest(text.as_bytes()))
        };
        if let Some(key) = &idempotency_key {
            if key.is_empty() || key.len() > 255 {
                return Err(SendError::Invalid(
                    "Idempotency-Key must be 1 to 255 characters".into(),
                ));
            }
            // A retry answers as the first request did, before anything is checked
            // again: the window may have closed, the template been paused or the
            // allowance run out since, and the message is queued already.
            match db.earlier_with_key(key, &request_hash).await? {
                Some(Queued::Replayed(message)) => return Ok((message, true)),
                Some(Queued::KeyConflict(message)) => {
                    return Err(SendError::KeyConflict(message.id));
                }
                _ => {}
            }
        }
        let contents = [
            request.text.is_some(),
            request.template.is_some(),
            request.media.is_some(),
            request.interactive.is_some(),
        ]
        .into_iter()
        .filter(|given| *given)
        .count();
        if contents != 1 {
            return Err(SendError::Invalid(
                "give exactly one of `text`, `template`, `media` or `interactive`".into(),
            ));
        }
        let mut purpose = match request.purpose.as_deref() {
            None | Some("service") => "service",
            Some("marketing") => "marketing",
            Some(other) => {
                return Err(SendError::Invalid(format!(
                    "`purpose` is `service` or `marketing`, not `{other}`"
                )));
            }
        };
        let handle = self
            .inner
            .marketplace
            .channel(db, &request.install_id)
            .await?;
        let channel = channel_of(handle.plugin());
        let contact = match (&request.contact_id, &request.to) {
            (Some(id), None) => db
                .get_contact(id)
                .await?
                .ok_or_else(|| SendError::NotFound(format!("no contact {id}")))?,
            (None, Some(to)) => {
                let phone = normalize_phone(to, "US")
                    .map_err(|error| SendError::Invalid(format!("`to`: {error}")))?;
                match db.contact_by_phone(&phone).await? {
                    Some(contact) => contact,
                    None => {
                        let data = crate::storage::ContactData {
                            phone: Some(phone),
                            ..Default::default()
                        };
                        self.create_contact(db, &data, "message")
                            .await
                            .map_err(|error| SendError::Invalid(error.to_string()))?
                    }
                }
            }
            _ => {
                return Err(SendError::Invalid(
                    "give exactly one of `contact_id` or `to`".into(),
                ));
            }
        };
        let Some(phone) = contact.phone.clone() else {
            return Err(SendError::Invalid(format!(
                "contact {} has no phone number; {channel} needs one",
                contact.id
            )));
        };
        let reply_to = match &request.reply_to {
            None => None,
            Some(id) => Some(
                db.message(id)
                    .await?
                    .and_then(|message| message.provider_message_id)
                    .ok_or_else(|| {
                        SendError::Invalid(format!(
                            "`reply_to`: no message {id} with a provider id in this tenant"
                        ))
                    })?,
            ),
        };
        let (kind, content) = if let Some(text) = &request.text {
            if text.body.trim().is_empty() {
                return Err(SendError::Invalid("`text.body` is empty".into()));
            }
            if text.body.chars().count() > 4096 {
                return Err(SendError::Invalid(format!(
                    "`text.body` has {} characters; at most 4096",
                    text.body.chars().count()
                )));
            }
            (
                "text",
                json!({ "text": { "body": text.body, "preview_url": text.preview_url } }),
            )
        } else if let Some(media) = &request.media {
            if parse_media_kind(&media.kind).is_none() {
                return Err(SendError::Invalid(format!(
                    "`media.kind` is image, video, audio, document or sticker, not `{}`",
                    media.kind
                )));
            }
            if !media.url.starts_with("https://") {
                return Err(SendError::Invalid(
                    "`media.url` must be a public https:// URL the provider can download".into(),
                ));
            }
            ("media", json!({ "media": media }))
        } else if let Some(interactive) = &request.interactive {
            if !interactive.is_object() {
                return Err(SendError::Invalid(
                    "`interactive` is a JSON object (the channel's interactive message)".into(),
                ));
            }
            ("interactive", json!({ "interactive": interactive }))
        } else {
            let template = request.template.as_ref().ok_or_else(|| {
                SendError::Invalid(
                    "give exactly one of `text`, `template`, `media` or `interactive`".into(),
                )
            })?;
            let stored = db
                .template_by_name(&request.install_id, &template.name, &template.language)
                .await?
                .ok_or_else(|| SendError::Refused {
                    code: "template-not-approved",
                    message: format!(
                        "there is no template {} ({}) on this install; create and submit it first",
                        template.name, template.language
                    ),
                    details: json!({}),
                })?;
            if stored.status != "APPROVED" {
                return Err(SendError::Refused {
                    code: "template-not-approved",
                    message: format!(
                        "template {} ({}) is {}{}; only APPROVED templates can be sent",
                        stored.name,
                        stored.language,
                        stored.status,
                        stored
                            .reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    ),
                    details: json!({ "status": stored.status, "reason": stored.reason }),
                });
            }
            let variables: crate::template_model::SendVariables = match &template.variables {
                None => crate::template_model::SendVariables::default(),
                Some(value) => serde_json::from_value(value.clone()).map_err(|error| {
                    SendError::Invalid(format!(
                        "`template.variables`: {error} (expected {{\"header\": …, \"body\": [..], \"buttons\": …}})"
                    ))
                })?,
            };
            let (content, marketing) =
                template_content(&stored, &variables, template.variables.as_ref())?;
            if marketing {
                purpose = "marketing";
            }
            ("template", content)
        };
        if purpose == "marketing" {
            let consent = db.current_consent(&contact.id).await?;
            refuse_opted_out(&consent, &contact.id, &channel)?;
        }
        if kind != "template" {
            let conversation = db.conversation_of(&request.install_id, &contact.id).await?;
            let until = conversation.as_ref().and_then(|c| c.window_expires_at);
            if until.is_none_or(|until| until <= now_ms()) {
                let suggestions = db.approved_template_names(&request.install_id).await?;
                return Err(SendError::Refused {
                    code: "window-closed",
                    message: match until {
                        None => format!(
                            "{phone} has never written to this number, so the 24-hour customer-service window is closed: free-form messages are refused. Send an approved template instead{}",
                            suggest(&suggestions)
                        ),
                        Some(until) => format!(
                            "the 24-hour customer-service window with {phone} closed at {} (24 h after their last message): free-form messages are refused. Send an approved template instead{}",
                            crate::webhooks::utc_rfc3339(until),
                            suggest(&suggestions)
                        ),
                    },
                    details: json!({ "window_expires_at": until, "approved_templates": suggestions }),
                });
            }
        }
        let plan = crate::plans::Plan::of_tenant(db).await?;
        let message_id = uuid::Uuid::now_v7().to_string();
        let record = OutboundRecord {
            message_id: message_id.clone(),
            install_id: request.install_id.clone(),
            channel,
            contact_id: contact.id.clone(),
            kind: kind.to_string(),
            content,
            reply_to,
            purpose: purpose.to_string(),
            idempotency_key,
            request_hash: Some(request_hash),
            sent_by: sent_by.map(str::to_string),
            allowance: Some(plan.monthly_messages()),
        };
        let job = outbox_job(db, &message_id, if purpose == "service" { 10 } else { 0 });
        match db.queue_outbound(&record, &job).await? {
            Queued::New(message) => {
                self.inner.jobs.wake();
                self.publish(
                    db.tenant_id().as_str(),
                    "message.queued",
                    message_event(&message),
                );
                Ok((message, false))
            }
            Queued::Replayed(message) => Ok((message, true)),
            Queued::KeyConflict(message) => Err(SendError::KeyConflict(message.id)),
            Queued::RecipientNotQueued => Err(SendError::Invalid(
                "the campaign recipient is no longer queued".into(),
            )),
            Queued::AllowanceUsed(used) => Err(allowance_used(plan, used)),
        }
    }

    /// Sends a campaign's template message from the job that owns it: the message is
    /// queued with its attempt already recorded and the recipient marked `sent` in one
    /// transaction, then handed to the plugin at once, its acceptance and the job's
    /// completion written together — two writes and no second job. A retryable failure
    /// leaves the message to an outbox job (as `send` would); a crash is reconciled
    /// like any interrupted attempt.
    ///
    /// # Errors
    /// As [`Messaging::send`]: `Refused` (`opted-out`, `quota-exceeded`), `Invalid`,
    /// `Marketplace`, `Storage`.
    pub async fn send_template_now(
        &self,
        db: &TenantDb,
        send: TemplateNow<'_>,
    ) -> Result<SentNow, SendError> {
        let handle = self.inner.marketplace.channel(db, send.install_id).await?;
        let channel = channel_of(handle.plugin());
        let Some(phone) = send.contact.phone.clone() else {
            return Err(SendError::Invalid(format!(
                "contact {} has no phone number; {channel} needs one",
                send.contact.id
            )));
        };
        refuse_opted_out(&send.contact.consent, &send.contact.id, &channel)?;
        let raw = json!(send.variables);
        // The month's allowance is checked by the write itself (`allowance`), which
        // counts the message: no read of the usage first.
        let (content, _) = template_content(send.template, send.variables, Some(&raw))?;
        let request_hash = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(content.to_string().as_bytes()))
        };
        // The number's turn is taken before the message exists: a send that would wait
        // long writes nothing, and its job is deferred (`Pacer::promise`).
        let rate = throughput(&handle);
        match (self.inner.pacer).admit(send.install_id, rate, Class::Bulk, Instant::now()) {
            Admit::Go(pause) => crate::pacing::sleep(pause).await,
            Admit::Later => return Ok(SentNow::Deferred),
        }
        let message_id = uuid::Uuid::now_v7().to_string();
        let record = OutboundRecord {
            message_id: message_id.clone(),
            install_id: send.install_id.to_string(),
            channel,
            contact_id: send.contact.id.clone(),
            kind: "template".into(),
            content,
            reply_to: None,
            purpose: "marketing".into(),
            idempotency_key: Some(send.idempotency_key),
            request_hash: Some(request_hash),
            sent_by: Some(send.sent_by.to_string()),
            allowance: Some(send.plan.monthly_messages()),
        };
        let how = crate::storage::Outbox::Now {
            attempted_at: now_ms(),
            recipient: Some(send.recipient),
        };
        let message = match db.queue_outbound_with(&record, &how).await? {
            Queued::New(message) => message,
            Queued::Replayed(message) | Queued::KeyConflict(message) => {
                // An earlier run queued it and was interrupted: the outbox finishes it.
                self.resume_send(db, &message.id, now_ms()).await?;
                return Ok(SentNow::Existing(message.id));
            }
            Queued::RecipientNotQueued => return Ok(SentNow::RecipientNotQueued),
            Queued::AllowanceUsed(used) => return Err(allowance_used(send.plan, used)),
        };
        self.publish(
            db.tenant_id().as_str(),
            "message.queued",
            message_event(&message),
        );
        let attempt = Attempt {
            retries_left: true,
            stamped: true,
            paced: true,
            lease: send.lease.as_ref(),
        };
        if let Err(failure) = self.hand_over(db, &handle, &message, phone, attempt).await {
            let wait = failure
                .retry_after
                .unwrap_or_else(|| crate::jobs::backoff(0));
            tracing::debug!(message_id = %message.id, error = %failure.message, "a campaign send goes to the outbox to retry");
            let at = now_ms() + i64::try_from(wait.as_millis()).unwrap_or(60_000);
            self.resume_send(db, &message.id, at).await?;
        }
        Ok(SentNow::Queued(message.id))
    }

    /// Makes sure queued message `message_id` has its outbox send job (due at `at`); the
    /// job does nothing once the message left `queued`.
    ///
    /// # Errors
    /// Storage.
    pub async fn resume_send(
        &self,
        db: &TenantDb,
        message_id: &str,
        at: i64,
    ) -> Result<(), StorageError> {
        let mut job = outbox_job(db, message_id, 0);
        job.run_at = at;
        self.inner.jobs.enqueue(&job).await.map(drop)
    }

    /// Creates a contact with its `contact.created` webhook deliveries (one transaction);
    /// `source` says what created it (`api`, `import`, `flow`, `message`).
    ///
    /// # Errors
    /// As [`TenantDb::create_contact`].
    pub async fn create_contact(
        &self,
        db: &TenantDb,
        data: &crate::storage::ContactData,
        source: &str,
    ) -> Result<crate::storage::Contact, crate::storage::ContactWriteError> {
        let subscribed = self.inner.webhooks.subscriptions(db).await?;
        let tenant = db.tenant_id().as_str();
        let contact = db
            .create_contact_announced(data, &|id, data| {
                subscribed.contact_created(tenant, source, id, data)
            })
            .await?;
        self.inner.jobs.wake();
        Ok(contact)
    }

    /// Holds every send through `install_id` for `wait` (the provider's backoff).
    fn hold_install(&self, install_id: &str, wait: Duration) {
        self.inner.pacer.hold(install_id, wait, Instant::now());
        // The other nodes send through the same number: they hold it until the same
        // instant.
        self.relay(crate::live_relay::Outgoing::Hold {
            lane: install_id.to_string(),
            until_ms: now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2),
        });
        tracing::warn!(
            install_id,
            wait_ms = wait.as_millis(),
            "the provider asked the number to slow down; its sends wait"
        );
    }

    /// Another node's provider hold on lane `lane`, until `until_ms` (Unix ms).
    pub(crate) fn apply_relayed_hold(&self, lane: &str, until_ms: i64) {
        let left = until_ms - now_ms();
        if left > 0 {
            let wait = Duration::from_millis(u64::try_from(left).unwrap_or(0));
            self.inner.pacer.hold(lane, wait, Instant::now());
            tracing::info!(
                lane,
                wait_ms = left,
                "another node's provider hold applies here"
            );
        }
    }

    /// The pacer of this process's sends (number lanes by install id; campaigns add
    /// their own throttle lanes).
    pub(crate) fn pacer(&self) -> &crate::pacing::Pacer {
        &self.inner.pacer
    }

    fn recipient_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<i64>> {
        let mut recipients = self
            .inner
            .recipients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Only recipients with a send in flight (or a pair-rate hold) matter: prune the
        // rest before the map grows large (a campaign touches every recipient once).
        if recipients.len() > 10_000 {
            let now = now_ms();
            recipients.retain(|_, lock| {
                Arc::strong_count(lock) > 1 || lock.try_lock().is_ok_and(|hold| *hold > now)
            });
        }
        recipients.entry(key.to_string()).or_default().clone()
    }

    /// The `message.send` job.
    async fn run_send(&self, job: Job) -> Result<(), JobFailure> {
        let tenant = job
            .tenant_id
            .clone()
            .ok_or_else(|| JobFailure::permanent("a send job without a tenant"))?;
        let message_id = job.payload["message_id"]
            .as_str()
            .ok_or_else(|| JobFailure::permanent("a send job without a message id"))?
            .to_string();
        let db = self
            .inner
            .storage
            .tenant(&crate::ids::TenantId::new(&tenant));
        let Some(message) = db.message(&message_id).await? else {
            return Ok(());
        };
        if message.status != "queued" {
            return Ok(()); // sent by an earlier attempt
        }
        // An earlier attempt was interrupted after handing the message over (a crash, a
        // timeout): the provider may have accepted it. Its statuses echo the message id
        // and complete the send (see `handle_events`); wait for them before sending again.
        if let Some(attempted) = db.send_attempted_at(&message_id).await? {
            let window = i64::try_from(self.inner.reconcile_window.as_millis()).unwrap_or(i64::MAX);
            let waited = now_ms() - attempted;
            if waited < window {
                return Err(JobFailure::retry_after(
                    "an earlier attempt was interrupted after reaching the provider; waiting for its statuses before sending again",
                    Duration::from_millis(u64::try_from(window - waited).unwrap_or(1000)),
                ));
            }
            tracing::warn!(
                message_id,
                waited_ms = waited,
                "no status confirmed an interrupted send attempt; sending again"
            );
        }
        let fail = |code: &str, text: String| json!({ "code": code, "message": text });
        let handle = match self
            .inner
            .marketplace
            .channel(&db, &message.install_id)
            .await
        {
            Ok(handle) => handle,
            Err(MarketplaceError::CircuitOpen { until, .. }) => {
                return Err(JobFailure::retry_after(
                    "the channel connector's circuit is open",
                    Duration::from_millis(
                        u64::try_from((until - now_ms()).max(100)).unwrap_or(1000),
                    ),
                ));
            }
            Err(
                error @ (MarketplaceError::NotFound(_)
                | MarketplaceError::Disabled
                | MarketplaceError::Invalid(_)),
            ) => {
                self.finish_failed(
                    &db,
                    &message_id,
                    "failed",
                    fail("channel-unavailable", error.to_string()),
                )
                .await?;
                return Ok(());
            }
            Err(error) => return Err(JobFailure::retry(error.to_string())),
        };
        let Some(contact) = db.get_contact(&message.contact_id).await? else {
            self.finish_failed(
                &db,
                &message_id,
                "refused",
                fail(
                    "contact-deleted",
                    "the contact was deleted before sending".into(),
                ),
            )
            .await?;
            return Ok(());
        };
        let Some(phone) = contact.phone.clone() else {
            self.finish_failed(
                &db,
                &message_id,
                "refused",
                fail("no-phone", "the contact has no phone number".into()),
            )
            .await?;
            return Ok(());
        };
        // Checked again at send time: the contact may have opted out, or the window
        // closed, while the message waited.
        if message.purpose == "marketing" {
            let consent = db.current_consent(&contact.id).await?;
            let channel = channel_of(handle.plugin());
            if consent.get(channel.as_str()).map(|e| e.status.as_str()) == Some("opted_out") {
                self.finish_failed(
                    &db,
                    &message_id,
                    "refused",
                    fail(
                        "opted-out",
                        "the contact opted out before the message was sent".into(),
                    ),
                )
                .await?;
                return Ok(());
            }
        }
        if message.kind != "template" {
            let open = db
                .conversation(&message.conversation_id)
                .await?
                .is_some_and(|c| c.window_open);
            if !open {
                self.finish_failed(
                    &db,
                    &message_id,
                    "refused",
                    fail(
                        "window-closed",
                        "the 24-hour window closed before the message was sent; send a template"
                            .into(),
                    ),
                )
                .await?;
                return Ok(());
            }
        }
        let lease = job.lease();
        let attempt = Attempt {
            retries_left: job.attempts < job.max_attempts,
            stamped: false,
            paced: false,
            lease: lease.as_ref(),
        };
        self.hand_over(&db, &handle, &message, phone, attempt).await
    }

    /// Hands `message` to its channel plugin (after the install's throughput limiter
    /// and the recipient's pair-rate hold) and records the outcome: accepted (with
    /// `attempt.lease`'s job completed in the same transaction), failed, or an error
    /// asking for a retry.
    async fn hand_over(
        &self,
        db: &TenantDb,
        handle: &ChannelHandle,
        message: &Message,
        phone: String,
        attempt: Attempt<'_>,
    ) -> Result<(), JobFailure> {
        let message_id = message.id.clone();
        let fail = |code: &str, text: String| json!({ "code": code, "message": text });
        let content = outbound_content(&message.content)
            .map_err(|error| JobFailure::permanent(format!("stored content: {error}")))?;
        let recipient = self.recipient_lock(&format!("{}:{phone}", message.install_id));
        let mut not_before = recipient.lock().await;
        let wait = Duration::from_millis(u64::try_from(*not_before - now_ms()).unwrap_or(0));
        if wait > crate::pacing::INLINE_WAIT {
            // The recipient's pair rate limit holds it for a while: the job comes back.
            return Err(Self::defer_unsent(
                db,
                &message_id,
                &attempt,
                "the provider's pair rate limit holds this recipient",
                wait,
            )
            .await);
        }
        if !attempt.paced {
            let class = if message.purpose == "marketing" {
                Class::Bulk
            } else {
                Class::Conversation
            };
            let pacer = &self.inner.pacer;
            let rate = throughput(handle);
            let pause = match pacer.admit(&message.install_id, rate, class, Instant::now()) {
                Admit::Go(pause) => pause,
                Admit::Later => {
                    return Err(JobFailure::defer(
                        "the number is at its throughput limit",
                        pacer.promise(&message.install_id, class, 1, Instant::now()),
                    ));
                }
            };
            crate::pacing::sleep(pause.max(wait)).await;
        } else {
            crate::pacing::sleep(wait).await;
        }
        // The provider held the number (here or on another node) while this send was
        // waiting for its turn: it goes after the hold, not into it.
        if let Some(left) = self.inner.pacer.held(&message.install_id, Instant::now()) {
            return Err(Self::defer_unsent(
                db,
                &message_id,
                &attempt,
                "the provider holds the number's sends",
                left,
            )
            .await);
        }
        let outbound = ct::OutboundMessage {
            message_id: message.id.clone(),
            to: phone,
            content,
            reply_to: message.reply_to.clone(),
        };
        if !attempt.stamped {
            db.set_send_attempt(&message_id, Some(now_ms())).await?;
        }
        let result = handle.send(&outbound).await;
        match result {
            // The plugin trapped or timed out: whether the provider got it is unknown, so
            // the attempt stays recorded.
            Err(error) => Err(JobFailure::retry(format!(
                "the channel plugin failed: {error}"
            ))),
            Ok(Ok(receipt)) => {
                drop(not_before);
                self.accept_send(db, message, &receipt.provider_message_id, attempt.lease)
                    .await?;
                Ok(())
            }
            Ok(Err(error)) => {
                // The provider answered (a transport failure may have reached it).
                if !matches!(error, ct::ChannelError::Transport(_)) {
                    db.set_send_attempt(&message_id, None).await?;
                }
                let (retry, retry_after, code, text) = classify(&error);
                if let ct::ChannelError::RateLimited(pe) = &error
                    && pe.code != 131056
                {
                    // The number (or the app) is over its limit: every send through
                    // it waits, not just this one.
                    self.hold_install(
                        &message.install_id,
                        retry_after.unwrap_or(Duration::from_secs(1)),
                    );
                }
                if matches!(&error, ct::ChannelError::RateLimited(pe) if pe.code == 131056) {
                    // The pair rate limit: hold further messages to this recipient.
                    *not_before = now_ms()
                        + i64::try_from(retry_after.unwrap_or(Duration::from_secs(6)).as_millis())
                            .unwrap_or(6000);
                }
                drop(not_before);
                if retry && attempt.retries_left {
                    return Err(JobFailure {
                        retry_after,
                        ..JobFailure::retry(text)
                    });
                }
                let error_json = match &error {
                    ct::ChannelError::AuthFailed(pe)
                    | ct::ChannelError::WindowClosed(pe)
                    | ct::ChannelError::RateLimited(pe)
                    | ct::ChannelError::RecipientUnreachable(pe)
                    | ct::ChannelError::Provider(pe) => {
                        let mut value = provider_error_json(pe);
                        value["kind"] = json!(code);
                        value
                    }
                    _ => fail(code, text.clone()),
                };
                self.finish_failed(db, &message_id, "failed", error_json)
                    .await?;
                Ok(())
            }
        }
    }

    /// The deferral of a send that did not reach the provider (it comes back after
    /// `wait`). A campaign's message was stamped as attempted when it was queued; the
    /// stamp is cleared, so the outbox does not wait for a status that cannot come.
    async fn defer_unsent(
        db: &TenantDb,
        message_id: &str,
        attempt: &Attempt<'_>,
        why: &str,
        wait: Duration,
    ) -> JobFailure {
        if attempt.stamped
            && let Err(error) = db.set_send_attempt(message_id, None).await
        {
            return error.into();
        }
        JobFailure::defer(why, wait)
    }

    /// Records the provider's acceptance of `message` (its receipt, or a status echoing
    /// its id): the provider id, `accepted`, the month's usage, the contact's last
    /// contact time, events. Only the first of the two records it.
    async fn accept_send(
        &self,
        db: &TenantDb,
        message: &Message,
        provider_message_id: &str,
        complete: Option<&crate::storage::JobLease>,
    ) -> Result<(), StorageError> {
        let tenant = db.tenant_id().as_str().to_string();
        let subscribed = self.inner.webhooks.subscriptions(db).await?;
        let accepted = db
            .mark_accepted(
                &message.id,
                provider_message_id,
                |message, status| {
                    subscribed.fanout(
                        &tenant,
                        &format!("message.{status}"),
                        message_event(message),
                    )
                },
                complete,
            )
            .await?;
        if let Some(updated) = accepted {
            // The month's usage and the contact's last-contacted time were recorded
            // with the acceptance.
            self.publish(&tenant, "message.status", message_event(&updated));
        }
        Ok(())
    }

    async fn finish_failed(
        &self,
        db: &TenantDb,
        message_id: &str,
        status: &str,
        error: Value,
    ) -> Result<(), JobFailure> {
        self.finish_failed_if(db, message_id, status, error, false)
            .await
    }

    /// [`Self::finish_failed`], with `only_queued`: only a message no provider took.
    async fn finish_failed_if(
        &self,
        db: &TenantDb,
        message_id: &str,
        status: &str,
        error: Value,
        only_queued: bool,
    ) -> Result<(), JobFailure> {
        if let Some(message) = db
            .mark_failed(message_id, status, &error, only_queued)
            .await?
        {
            let event = message_event(&message);
            self.inner
                .webhooks
                .emit(db, "message.failed", event.clone())
                .await?;
            self.publish(db.tenant_id().as_str(), "message.status", event);
        }
        Ok(())
    }

    /// A dead-lettered `message.send` job's message, still queued, would stay queued for
    /// ever (and keep its place in the month's allowance): it fails with the job's error
    /// (`send-job-failed`), which gives the allowance back if no provider took it. A
    /// message a provider took is left alone (its statuses settle it).
    async fn fail_stranded(&self, dead: crate::jobs::DeadLetter) {
        let (Some(tenant), Some(message_id)) =
            (dead.tenant_id, dead.payload["message_id"].as_str())
        else {
            return; // a malformed job: nothing to settle
        };
        let db = self
            .inner
            .storage
            .tenant(&crate::ids::TenantId::new(&tenant));
        let error = json!({ "code": "send-job-failed", "message": dead.error });
        if let Err(failure) = self
            .finish_failed_if(&db, message_id, "failed", error, true)
            .await
        {
            tracing::error!(message_id, error = %failure.message, "a dead-lettered send's message stays queued");
        }
    }

    /// Marks a conversation read: resets its unread count and tells the provider (blue
    /// ticks) for the contact's latest message. The provider's answer, if it refused.
    pub async fn mark_conversation_read(
        &self,
        db: &TenantDb,
        conversation_id: &str,
    ) -> Result<Option<(crate::storage::Conversation, Option<String>)>, SendError> {
        let Some(conversation) = db
            .update_conversation(
                conversation_id,
                &crate::storage::ConversationChange {
                    mark_read: true,
                    ..Default::default()
                },
            )
            .await?
        else {
            return Ok(None);
        };
        let mut problem = None;
        if let Some(provider_id) = db.last_inbound_provider_id(conversation_id).await? {
            match self
                .inner
                .marketplace
                .channel(db, &conversation.install_id)
                .await
            {
                Ok(handle) => match handle.mark_read(&provider_id).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => problem = Some(format!("{error:?}")),
                    Err(error) => problem = Some(error.to_string()),
                },
                Err(error) => problem = Some(error.to_string()),
            }
        }
        self.publish(
            db.tenant_id().as_str(),
            "conversation.updated",
            serde_json::to_value(&conversation).unwrap_or(Value::Null),
        );
        Ok(Some((conversation, problem)))
    }

    /// Publishes a conversation change to live subscribers.
    pub fn conversation_changed(
        &self,
        tenant_id: &str,
        conversation: &crate::storage::Conversation,
    ) {
        self.publish(
            tenant_id,
            "conversation.updated",
            serde_json::to_value(conversation).unwrap_or(Value::Null),
        );
    }
}

/// The stored content of a send of the approved template `stored` with `variables`
/// (`raw`: the variables as the caller gave them), and whether its category makes it a
/// marketing message.
///
/// # Errors
/// `Invalid` naming what the variables lack for the template.
fn template_content(
    stored: &crate::storage::TemplateRecord,
    variables: &crate::template_model::SendVariables,
    raw: Option<&Value>,
) -> Result<(Value, bool), SendError> {
    let components =
        crate::template_model::send_components(&stored.spec, variables).map_err(|problems| {
            SendError::Invalid(format!(
                "template {} ({}): {}",
                stored.name,
                stored.language,
                problems.join("; ")
            ))
        })?;
    Ok((
        json!({ "template": {
            "name": stored.name,
            "language": stored.language,
            "category": stored.category,
            "components": components,
            "variables": raw,
            "preview": crate::template_model::render_preview(&stored.spec, variables),
        }}),
        stored.category == "MARKETING",
    ))
}

/// The outbox job that sends queued message `message_id` (one per message: its key).
fn outbox_job(db: &TenantDb, message_id: &str, priority: i32) -> NewJob {
    let mut job = NewJob::new(
        "messages",
        "message.send",
        Some(db.tenant_id()),
        json!({ "message_id": message_id }),
    );
    job.idempotency_key = Some(format!("send:{message_id}"));
    job.max_attempts = 12;
    job.priority = priority;
    job
}

/// Refuses a marketing send to a contact whose latest `consent` for `channel` is an
/// opt-out.
///
/// # Errors
/// The install's throughput limit, in sends a second (`throughput_per_second` in its
/// configuration; 80 by default, as Meta's default for a business phone number).
fn throughput(handle: &ChannelHandle) -> f64 {
    handle
        .install()
        .config
        .get("throughput_per_second")
        .and_then(Value::as_f64)
        .unwrap_or(80.0)
        .clamp(1.0, MAX_THROUGHPUT_PER_SECOND)
}

/// `Refused` (`opted-out`).
fn refuse_opted_out(
    consent: &std::collections::BTreeMap<String, ConsentEntry>,
    contact_id: &str,
    channel: &str,
) -> Result<(), SendError> {
    if consent.get(channel).map(|entry| entry.status.as_str()) == Some("opted_out") {
        return Err(SendError::Refused {
            code: "opted-out",
            message: format!(
                "contact {contact_id} opted out of {channel} messages; marketing messages are not sent to them"
            ),
            details: json!({ "contact_id": contact_id }),
        });
    }
    Ok(())
}

/// `Refused` (`quota-exceeded`): `used` of `plan`'s monthly allowance are counted.
fn allowance_used(plan: crate::plans::Plan, used: u64) -> SendError {
    SendError::Refused {
        code: "quota-exceeded",
        message: format!(
            "this month's message allowance of the {} plan is used up ({used} of {}); upgrade the plan to send more",
            plan.as_str(),
            plan.monthly_messages()
        ),
        details: json!({ "used": used, "allowance": plan.monthly_messages() }),
    }
}

fn suggest(names: &[String]) -> String {
    if names.is_empty() {
        " (this install has no approved template yet: create one with POST /v1/templates and submit it)".into()
    } else {
        format!(", for example: {}", names.join(", "))
    }
}

fn channel_error_response(error: &ct::ChannelError, unauthorized: u16) -> HookResponse {
    match error {
        ct::ChannelError::Unauthorized(text) => {
            HookResponse::text(unauthorized, format!("unauthorized: {text}"))
        }
        ct::ChannelError::MalformedWebhook(text) => {
            HookResponse::text(400, format!("malformed webhook: {text}"))
        }
        ct::ChannelError::NotConfigured(text) => HookResponse::text(
            503,
            format!("the channel install is not configured: {text}"),
        ),
        other => HookResponse::text(
            502,
            format!("the channel connector refused the webhook: {other:?}"),
        ),
    }
}

/// (retry?, wait, code, text) for a channel error.
fn classify(error: &ct::ChannelError) -> (bool, Option<Duration>, &'static str, String) {
    let wait = |pe: &ct::ProviderError| pe.retry_after_ms.map(Duration::from_millis);
    match error {
        ct::ChannelError::RateLimited(pe) => (
            true,
            wait(pe).or(Some(Duration::from_secs(1))),
            "rate-limited",
            format!("rate limited ({}): {}", pe.code, pe.message),
        ),
        ct::ChannelError::Transport(text) => (
            true,
            None,
            "transport",
            format!("provider unreachable: {text}"),
        ),
        ct::ChannelError::Provider(pe) => (
            pe.retryable,
            wait(pe),
            "provider",
            format!("provider error {}: {}", pe.code, pe.message),
        ),
        ct::ChannelError::AuthFailed(pe) => (
            false,
            None,
            "auth-failed",
            format!(
                "the provider refused the credentials ({}): {}; update the install's access token",
                pe.code, pe.message
            ),
        ),
        ct::ChannelError::WindowClosed(pe) => (
            false,
            None,
            "window-closed",
            format!(
                "the provider says the 24-hour window is closed ({}): {}",
                pe.code, pe.message
            ),
        ),
        ct::ChannelError::RecipientUnreachable(pe) => (
            false,
            None,
            "recipient-unreachable",
            format!(
                "the recipient cannot receive messages ({}): {}",
                pe.code, pe.message
            ),
        ),
        ct::ChannelError::InvalidMessage(text) => (false, None, "invalid-message", text.clone()),
        ct::ChannelError::NotConfigured(text) => (false, None, "not-configured", text.clone()),
        ct::ChannelError::Unsupported(text) => (false, None, "unsupported", text.clone()),
        ct::ChannelError::Unauthorized(text) | ct::ChannelError::MalformedWebhook(text) => {
            (false, None, "provider", text.clone())
        }
    }
}

/// The WIT content of a stored outbound message.
fn outbound_content(content: &Value) -> Result<types::MessageContent, String> {
    if let Some(text) = content.get("text") {
        return Ok(types::MessageContent::Text(types::TextMessage {
            body: text["body"].as_str().unwrap_or_default().to_string(),
            preview_url: text["preview_url"].as_bool().unwrap_or(false),
        }));
    }
    if let Some(template) = content.get("template") {
        return Ok(types::MessageContent::Template(types::TemplateMessage {
            name: template["name"].as_str().unwrap_or_default().to_string(),
            language: template["language"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            components: template["components"].to_string(),
        }));
    }
    if let Some(media) = content.get("media") {
        let kind = media["kind"]
            .as_str()
            .and_then(parse_media_kind)
            .ok_or("bad media kind")?;
        return Ok(types::MessageContent::Media(types::MediaMessage {
            kind,
            url: media["url"].as_str().unwrap_or_default().to_string(),
            caption: media["caption"].as_str().map(str::to_string),
            filename: media["filename"].as_str().map(str::to_string),
        }));
    }
    if let Some(interactive) = content.get("interactive") {
        return Ok(types::MessageContent::Interactive(interactive.to_string()));
    }
    Err("unknown content".into())
}

/// The public JSON of a message event.
pub fn message_event(message: &Message) -> Value {
    json!({
        "message_id": message.id,
        "conversation_id": message.conversation_id,
        "contact_id": message.contact_id,
        "install_id": message.install_id,
        "direction": message.direction,
        "status": message.status,
        "provider_message_id": message.provider_message_id,
        "error": message.error,
        "sent_at": message.sent_at,
        "delivered_at": message.delivered_at,
        "read_at": message.read_at,
        "failed_at": message.failed_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_match_in_any_script() {
        let keywords = vec![
            "СТОП".to_string(),
            "Arrêter".to_string(),
            "停止".to_string(),
        ];
        for text in ["стоп", " Стоп ", "ARRÊTER", "arrêter", "停止"] {
            assert!(matches_keyword(text, &keywords), "{text}");
        }
        for text in ["стоп!", "arreter", "стопп"] {
            assert!(!matches_keyword(text, &keywords), "{text}");
        }
    }

    #[test]
    fn keywords_match_whole_message_case_insensitively() {
        let keywords = vec!["STOP".to_string(), "unsubscribe".to_string()];
        assert!(matches_keyword("stop", &keywords));
        assert!(matches_keyword("  Stop \n", &keywords));
        assert!(matches_keyword("UNSUBSCRIBE", &keywords));
        assert!(!matches_keyword("please stop sending", &keywords));
        assert!(!matches_keyword("stopp", &keywords));
    }

    #[test]
    fn stored_contents_round_trip_to_wit() {
        let text = outbound_content(&json!({"text": {"body": "hi", "preview_url": true}}));
        assert!(
            matches!(text, Ok(types::MessageContent::Text(t)) if t.body == "hi" && t.preview_url)
        );
        let media = outbound_content(
            &json!({"media": {"kind": "document", "url": "https://x/y.pdf", "filename": "y.pdf"}}),
        );
        assert!(
            matches!(media, Ok(types::MessageContent::Media(m)) if m.filename.as_deref() == Some("y.pdf"))
        );
        assert!(
            outbound_content(&json!({"media": {"kind": "hologram", "url": "https://x"}})).is_err()
        );
        assert!(outbound_content(&json!({"nothing": 1})).is_err());
    }
}
