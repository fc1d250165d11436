//! A loopback fake of Meta's WhatsApp Cloud API (the Graph API) for one WhatsApp
//! Business Account, speaking the documented wire format (see
//! `shared/reference/wire-formats.md`, WhatsApp section).
//!
//! [`FakeGraph`] is a real HTTP server on 127.0.0.1. It answers the Graph endpoints a
//! WhatsApp connector uses (send and mark-as-read, templates, phone numbers, the account)
//! under any version prefix (`/v21.0/…`), enforces the bearer token, validates bodies the
//! way Meta does, applies the 24-hour customer-service window, the throughput and pair
//! rate limits, and scripted failures; it records what it accepted; and it plays Meta's
//! side of the webhooks: signed (`X-Hub-Signature-256`) deliveries of inbound messages,
//! statuses (optionally automatic, shuffled, duplicated and batched) and template status
//! changes, plus the subscription handshake.
//!
//! It is built for tests and benchmarks alike: no per-request sleeps, one short
//! `std::sync::Mutex` section per request (never held across an `.await`), and no panic
//! on any request.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use postdog_tests::fake_graph::{FakeGraph, FakeGraphConfig, Failure};
//!
//! let graph = FakeGraph::start(FakeGraphConfig::default()).await;
//! graph.set_webhook_target("http://127.0.0.1:8080/hooks/install-1");
//! graph.add_approved_template("order_update", "en_US", "UTILITY", "Hi {{1}}, order {{2}} shipped.");
//! let (_wamid, status) = graph.inbound_text("+447700900123", "Ada", "hello").await?;
//! assert_eq!(status, 200);
//! graph.fail_next(1, Failure::graph(131026));
//! // … point the connector at `graph.base_url()` and assert on `graph.sent()` …
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use sha2::Sha256;

use crate::FakeServer;

/// The Graph API version [`FakeGraph::messages_url`] and friends use (any `vN.M` is served).
pub const DEFAULT_VERSION: &str = "v21.0";

const NANOS_PER_SEC: u64 = 1_000_000_000;
const WINDOW: Duration = Duration::from_secs(24 * 60 * 60);
const MESSAGE_TYPES: &[&str] = &[
    "text",
    "template",
    "image",
    "video",
    "audio",
    "document",
    "sticker",
    "interactive",
    "location",
    "reaction",
    "contacts",
];

/// How a [`FakeGraph`] behaves; `Default` gives the documented test values.
#[derive(Clone, Debug)]
pub struct FakeGraphConfig {
    /// The system-user token every request must carry as `Authorization: Bearer …`
    /// (default `test-access-token`).
    pub access_token: String,
    /// The app secret webhook deliveries are signed with (default `test-app-secret`).
    pub app_secret: String,
    /// The business phone number's id, the `{phone_number_id}` of `…/messages`
    /// (default `1000000001`).
    pub phone_number_id: String,
    /// The WhatsApp Business Account id (default `2000000001`).
    pub waba_id: String,
    /// The number as displayed (default `+1 555 0100`); webhooks carry its digits, as
    /// Meta's do.
    pub display_phone_number: String,
    /// Messages per second the number may send: with `Some(n)`, a send beyond `n`
    /// accepted ones within any one-second window (on the fake's clock) is refused with
    /// Graph error 130429 "Rate limit hit" and HTTP 429, the status Meta's error-code
    /// table gives it. `None` (default): unlimited.
    pub throughput_per_second: Option<u32>,
    /// With `Some(gap)`, a send to a recipient less than `gap` after the last accepted
    /// send to the same recipient is refused with 131056 (pair rate limit; Meta allows
    /// about one message every 6 s). `None` (default): no pair limit.
    pub pair_rate_limit: Option<Duration>,
    /// Refuse free-form (non-template) messages to a `wa_id` that has not sent this fake
    /// an inbound message (through its webhooks, or [`FakeGraph::open_window`]) within
    /// the last 24 h of the fake's clock: Graph error 131047 "Re-engagement message".
    /// Default `true`.
    pub enforce_window: bool,
    /// With `enforce_window`, report a window violation the way the Cloud API usually
    /// does in production: accept the send (HTTP 200 and a wamid) and then deliver a
    /// `failed` status with error 131047 to the webhook target. Default `false`
    /// (refuse synchronously).
    pub window_failure_via_webhook: bool,
    /// After accepting a send, deliver its `sent`, `delivered` and `read` statuses to the
    /// webhook target on a spawned task: in a random order, some duplicated, sometimes
    /// several statuses to a payload. Needs a webhook target when the send is accepted;
    /// await [`FakeGraph::flush`] for them. Default `false`.
    pub auto_statuses: bool,
    /// The seed of the random choices of `auto_statuses` (orders, duplicates, batches);
    /// `None` (default): a random seed.
    pub seed: Option<u64>,
    /// The fake's clock starts this far ahead of real time (default zero); see
    /// [`FakeGraph::advance`].
    pub clock_offset: Duration,
}

impl Default for FakeGraphConfig {
    fn default() -> Self {
        Self {
            access_token: "test-access-token".into(),
            app_secret: "test-app-secret".into(),
            phone_number_id: "1000000001".into(),
            waba_id: "2000000001".into(),
            display_phone_number: "+1 555 0100".into(),
            throughput_per_second: None,
            pair_rate_limit: None,
            enforce_window: true,
            window_failure_via_webhook: false,
            auto_statuses: false,
            seed: None,
            clock_offset: Duration::ZERO,
        }
    }
}

/// A scripted answer to the next send requests, given to [`FakeGraph::fail_next`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A Graph API error: the JSON error body with `code` (and Meta's title for it),
    /// answered with HTTP `status`.
    Graph {
        /// The Graph error code (131047, 131026, 190, 100, 368, 130429, 131056, …).
        code: u32,
        /// The HTTP status.
        status: u16,
        /// `error_data.details`; `None`: Meta's description of the code.
        details: Option<String>,
    },
    /// A plain, non-JSON answer with this HTTP status, as a proxy or load balancer in
    /// front of the Graph API gives during an outage.
    Http {
        /// The HTTP status (500, 502, 503, …).
        status: u16,
        /// The (text) body.
        body: String,
    },
    /// HTTP 429 with `Retry-After: <seconds>` and a 130429 JSON body.
    RetryAfter {
        /// The `Retry-After` value.
        seconds: u64,
    },
}

impl Failure {
    /// Graph error `code` with the HTTP status Meta's error-code table documents for it
    /// (190 → 401, 368 → 403, 130429/4/80007 → 429, 132001 → 404, 131000 → 500,
    /// 2 → 503, most others → 400).
    pub fn graph(code: u32) -> Self {
        Self::graph_with_status(code, default_status(code))
    }

    /// Graph error `code` answered with HTTP `status`.
    pub fn graph_with_status(code: u32, status: u16) -> Self {
        Self::Graph {
            code,
            status,
            details: None,
        }
    }

    /// A plain-text HTTP `status` answer (not JSON).
    pub fn http(status: u16) -> Self {
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|status| status.canonical_reason())
            .unwrap_or("Error");
        Self::Http {
            status,
            body: format!("{status} {reason}\n"),
        }
    }

    /// HTTP 429 with `Retry-After: <seconds>`.
    pub fn retry_after(seconds: u64) -> Self {
        Self::RetryAfter { seconds }
    }

    fn response(&self) -> Response {
        match self {
            Self::Graph {
                code,
                status,
                details,
            } => {
                let mut error = GraphError::code(*code).status(*status);
                if let Some(details) = details {
                    error.details = Some(details.clone());
                }
                error.response()
            }
            Self::Http { status, body } => {
                let mut response = (status_code(*status), body.clone()).into_response();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                response
            }
            Self::RetryAfter { seconds } => {
                let mut error = GraphError::code(130429).status(429);
                error.retry_after = Some(*seconds);
                error.response()
            }
        }
    }
}

/// A send the fake accepted.
#[derive(Clone, Debug)]
pub struct SentMessage {
    /// The id the fake answered (`wamid.…`).
    pub wamid: String,
    /// `to` as the request gave it.
    pub to: String,
    /// The recipient's WhatsApp id (the digits of `to`).
    pub wa_id: String,
    /// The message `type` (`text`, `template`, …).
    pub message_type: String,
    /// The full JSON body of the request.
    pub body: Value,
    /// When the fake accepted it, on the fake's clock.
    pub accepted_at: SystemTime,
    /// Whether it will fail with 131047 through a webhook
    /// ([`FakeGraphConfig::window_failure_via_webhook`]).
    pub window_failed: bool,
}

impl SentMessage {
    /// `text.body` of a text message.
    pub fn text(&self) -> Option<&str> {
        self.body.pointer("/text/body").and_then(Value::as_str)
    }

    /// `template.name` of a template message.
    pub fn template_name(&self) -> Option<&str> {
        self.body.pointer("/template/name").and_then(Value::as_str)
    }
}

/// A mark-as-read request the fake accepted.
#[derive(Clone, Debug)]
pub struct ReadReceipt {
    /// The `message_id` marked read.
    pub message_id: String,
    /// When, on the fake's clock.
    pub at: SystemTime,
    /// Whether `message_id` is an inbound message this fake delivered (Meta refuses
    /// others; the fake accepts them and says so here).
    pub known_inbound: bool,
    /// The full JSON body of the request.
    pub body: Value,
}

/// A message template's review status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TemplateStatus {
    /// Submitted, not reviewed yet.
    Pending,
    /// Usable.
    Approved,
    /// Refused by review.
    Rejected,
    /// Paused for low quality (sends answer 132015).
    Paused,
    /// Disabled (sends answer 132016).
    Disabled,
}

impl TemplateStatus {
    /// The Graph spelling (`APPROVED`, …), also the webhook `event`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Approved => "APPROVED",
            Self::Rejected => "REJECTED",
            Self::Paused => "PAUSED",
            Self::Disabled => "DISABLED",
        }
    }
}

impl std::fmt::Display for TemplateStatus {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A message template in the fake's store.
#[derive(Clone, Debug)]
pub struct Template {
    /// Its numeric id (as a string).
    pub id: String,
    /// Its name (lower case, digits, underscores).
    pub name: String,
    /// Its language code (`en_US`).
    pub language: String,
    /// `MARKETING`, `UTILITY` or `AUTHENTICATION`.
    pub category: String,
    /// Its review status.
    pub status: TemplateStatus,
    /// The components as created (`HEADER`, `BODY`, `FOOTER`, `BUTTONS`).
    pub components: Value,
    /// The reason of the last status change, if one was given (rejections).
    pub reason: Option<String>,
}

impl Template {
    /// The BODY component's text.
    pub fn body_text(&self) -> Option<&str> {
        body_component(&self.components)
            .and_then(|body| body.get("text"))
            .and_then(Value::as_str)
    }

    /// How many distinct `{{…}}` variables the BODY has: the body parameters a send
    /// must give.
    pub fn body_variable_count(&self) -> usize {
        let mut names: Vec<&str> = variables(self.body_text().unwrap_or(""))
            .into_iter()
            .map(|(_, _, name)| name)
            .collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    }
}

/// What a webhook delivery carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookKind {
    /// An inbound message (`field: messages`, `value.messages`).
    Message,
    /// Message statuses (`field: messages`, `value.statuses`).
    Status,
    /// A template status change (`field: message_template_status_update`).
    TemplateStatus,
    /// Bytes given to [`FakeGraph::deliver_raw`].
    Raw,
}

/// One webhook POST the fake made, and how PostDog answered it.
#[derive(Clone, Debug)]
pub struct WebhookDelivery {
    /// What it carried.
    pub kind: WebhookKind,
    /// The URL it went to.
    pub url: String,
    /// The exact body bytes.
    pub body: Bytes,
    /// The `X-Hub-Signature-256` header sent, if any.
    pub signature: Option<String>,
    /// The HTTP status PostDog answered; `None` when the request failed.
    pub status: Option<u16>,
    /// Why the request failed (connection refused, timeout…).
    pub error: Option<String>,
    /// When, on the fake's clock.
    pub at: SystemTime,
}

impl WebhookDelivery {
    /// The body as JSON (`None` for raw non-JSON bodies).
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A running fake of the Graph API; stops when dropped.
pub struct FakeGraph {
    inner: Arc<Inner>,
    server: FakeServer,
}

struct Inner {
    config: FakeGraphConfig,
    base_url: OnceLock<String>,
    client: reqwest::Client,
    state: Mutex<GraphState>,
    started: Instant,
    started_unix_nanos: u64,
    offset_nanos: AtomicU64,
    wamid_counter: AtomicU64,
    wamid_salt: u64,
    send_attempts: AtomicUsize,
    pending: tokio::sync::watch::Sender<usize>,
}

struct GraphState {
    rng: StdRng,
    failures: VecDeque<(usize, Failure)>,
    sent: Vec<SentMessage>,
    sent_index: HashMap<String, usize>,
    read_receipts: Vec<ReadReceipt>,
    templates: Vec<Template>,
    next_template_id: u64,
    last_inbound: HashMap<String, u64>,
    inbound_ids: HashSet<String>,
    recent_sends: VecDeque<u64>,
    last_send_to: HashMap<String, u64>,
    webhook_target: Option<String>,
    webhook_results: Vec<WebhookDelivery>,
    last_delivery: Option<(WebhookKind, Bytes, Option<String>)>,
}

impl FakeGraph {
    /// Starts the fake on a free loopback port.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(config: FakeGraphConfig) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .user_agent("facebookexternalua")
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let started_unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(duration_nanos)
            .unwrap_or(0);
        let offset = duration_nanos(config.clock_offset);
        let inner = Arc::new(Inner {
            base_url: OnceLock::new(),
            client,
            state: Mutex::new(GraphState {
                rng,
                failures: VecDeque::new(),
                sent: Vec::new(),
                sent_index: HashMap::new(),
                read_receipts: Vec::new(),
                templates: Vec::new(),
                next_template_id: 3_000_000_001,
                last_inbound: HashMap::new(),
                inbound_ids: HashSet::new(),
                recent_sends: VecDeque::new(),
                last_send_to: HashMap::new(),
                webhook_target: None,
                webhook_results: Vec::new(),
                last_delivery: None,
            }),
            started: Instant::now(),
            started_unix_nanos,
            offset_nanos: AtomicU64::new(offset),
            wamid_counter: AtomicU64::new(1),
            wamid_salt: rand::rng().random(),
            send_attempts: AtomicUsize::new(0),
            pending: tokio::sync::watch::Sender::new(0),
            config,
        });
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let server = FakeServer::start(router).await;
        let _ = inner.base_url.set(server.base_url());
        Self { inner, server }
    }

    /// `http://127.0.0.1:<port>`: use it in place of `https://graph.facebook.com`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// `<base>/v21.0/<phone_number_id>/messages`.
    pub fn messages_url(&self) -> String {
        format!(
            "{}/{DEFAULT_VERSION}/{}/messages",
            self.base_url(),
            self.inner.config.phone_number_id
        )
    }

    /// `<base>/v21.0/<waba_id>/message_templates`.
    pub fn templates_url(&self) -> String {
        format!(
            "{}/{DEFAULT_VERSION}/{}/message_templates",
            self.base_url(),
            self.inner.config.waba_id
        )
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &FakeGraphConfig {
        &self.inner.config
    }

    /// The fake's clock: real time plus the configured offset plus every
    /// [`advance`](Self::advance).
    pub fn now(&self) -> SystemTime {
        system_time(self.inner.now_nanos())
    }

    /// Moves the fake's clock forward by `by`: the 24-hour window, the throughput and
    /// pair rate limits and webhook timestamps all follow it.
    pub fn advance(&self, by: Duration) {
        let by = duration_nanos(by);
        let _ =
            self.inner
                .offset_nanos
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |offset| {
                    Some(offset.saturating_add(by))
                });
    }

    /// Answers the next `n` send requests (`POST …/messages` other than mark-as-read)
    /// with `failure`, before checking the token or the body. Calls queue up in order.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        if n > 0 {
            self.inner.lock().failures.push_back((n, failure));
        }
    }

    /// Drops the scripted failures not used yet.
    pub fn clear_failures(&self) {
        self.inner.lock().failures.clear();
    }

    /// The sends accepted so far, in order.
    pub fn sent(&self) -> Vec<SentMessage> {
        self.inner.lock().sent.clone()
    }

    /// How many sends were accepted (cheaper than `sent().len()`).
    pub fn sent_count(&self) -> usize {
        self.inner.lock().sent.len()
    }

    /// The accepted send with this wamid.
    pub fn sent_message(&self, wamid: &str) -> Option<SentMessage> {
        let state = self.inner.lock();
        state
            .sent_index
            .get(wamid)
            .and_then(|&index| state.sent.get(index))
            .cloned()
    }

    /// The mark-as-read requests accepted so far.
    pub fn read_receipts(&self) -> Vec<ReadReceipt> {
        self.inner.lock().read_receipts.clone()
    }

    /// Every send request (`POST …/messages` other than mark-as-read) received so far,
    /// whatever the answer: accepted, refused, unauthorized or scripted to fail.
    pub fn send_attempts(&self) -> usize {
        self.inner.send_attempts.load(Ordering::SeqCst)
    }

    /// The template store, in creation order.
    pub fn templates(&self) -> Vec<Template> {
        self.inner.lock().templates.clone()
    }

    /// The template `name` in `language`.
    pub fn template(&self, name: &str, language: &str) -> Option<Template> {
        self.inner
            .lock()
            .templates
            .iter()
            .find(|template| template.name == name && template.language == language)
            .cloned()
    }

    /// Seeds an `APPROVED` template whose BODY is `body_text` (replacing the text and
    /// status of an existing `name`/`language`); its id.
    pub fn add_approved_template(
        &self,
        name: &str,
        language: &str,
        category: &str,
        body_text: &str,
    ) -> String {
        let components = json!([{ "type": "BODY", "text": body_text }]);
        let mut state = self.inner.lock();
        if let Some(template) = state
            .templates
            .iter_mut()
            .find(|template| template.name == name && template.language == language)
        {
            template.status = TemplateStatus::Approved;
            template.category = category.to_ascii_uppercase();
            template.components = components;
            template.reason = None;
            return template.id.clone();
        }
        let id = state.next_template_id.to_string();
        state.next_template_id += 1;
        state.templates.push(Template {
            id: id.clone(),
            name: name.to_string(),
            language: language.to_string(),
            category: category.to_ascii_uppercase(),
            status: TemplateStatus::Approved,
            components,
            reason: None,
        });
        id
    }

    /// Approves a template and, with a webhook target, delivers the
    /// `message_template_status_update` webhook: the status PostDog answered (`None`
    /// without a target).
    ///
    /// # Errors
    /// When there is no such template, or the delivery could not be made.
    pub async fn approve_template(
        &self,
        name: &str,
        language: &str,
    ) -> anyhow::Result<Option<u16>> {
        self.set_template_status(name, language, TemplateStatus::Approved, None)
            .await
    }

    /// Rejects a template with `reason` (`INVALID_FORMAT`, `ABUSIVE_CONTENT`, …); as
    /// [`approve_template`](Self::approve_template).
    ///
    /// # Errors
    /// When there is no such template, or the delivery could not be made.
    pub async fn reject_template(
        &self,
        name: &str,
        language: &str,
        reason: &str,
    ) -> anyhow::Result<Option<u16>> {
        self.set_template_status(name, language, TemplateStatus::Rejected, Some(reason))
            .await
    }

    /// Pauses a template (sends then answer 132015); as
    /// [`approve_template`](Self::approve_template).
    ///
    /// # Errors
    /// When there is no such template, or the delivery could not be made.
    pub async fn pause_template(&self, name: &str, language: &str) -> anyhow::Result<Option<u16>> {
        self.set_template_status(name, language, TemplateStatus::Paused, None)
            .await
    }

    /// Sets a template's status (with an optional reason) and, with a webhook target,
    /// delivers the `message_template_status_update` webhook (`event` = the status).
    ///
    /// # Errors
    /// When there is no such template, or the delivery could not be made.
    pub async fn set_template_status(
        &self,
        name: &str,
        language: &str,
        status: TemplateStatus,
        reason: Option<&str>,
    ) -> anyhow::Result<Option<u16>> {
        let (id, has_target) = {
            let mut state = self.inner.lock();
            let template = state
                .templates
                .iter_mut()
                .find(|template| template.name == name && template.language == language)
                .with_context(|| format!("no template {name} in {language}"))?;
            template.status = status;
            template.reason = reason.map(str::to_string);
            let id = template.id.clone();
            (id, state.webhook_target.is_some())
        };
        if !has_target {
            return Ok(None);
        }
        let mut value = json!({
            "event": status.as_str(),
            "message_template_id": id.parse::<u64>().map(Value::from).unwrap_or(Value::String(id)),
            "message_template_name": name,
            "message_template_language": language,
            "reason": reason.unwrap_or("NONE"),
        });
        if status == TemplateStatus::Paused {
            value["other_info"] = json!({
                "title": "FIRST_PAUSE",
                "description": "Your WhatsApp message template has been paused for 3 hours \
                                because it had issues.",
            });
        }
        let envelope = json!({
            "object": "whatsapp_business_account",
            "entry": [{
                "id": self.inner.config.waba_id,
                "time": self.inner.now_nanos() / NANOS_PER_SEC,
                "changes": [{ "value": value, "field": "message_template_status_update" }],
            }],
        });
        self.inner
            .deliver_json(WebhookKind::TemplateStatus, &envelope)
            .await
            .map(Some)
    }

    /// Where webhooks go (`http://127.0.0.1:8080/hooks/<install-id>`).
    pub fn set_webhook_target(&self, url: impl Into<String>) {
        self.inner.lock().webhook_target = Some(url.into());
    }

    /// The webhook target, if set.
    pub fn webhook_target(&self) -> Option<String> {
        self.inner.lock().webhook_target.clone()
    }

    /// `sha256=<hex HMAC-SHA256(app_secret, body)>`: the `X-Hub-Signature-256` Meta
    /// would send with `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        sign(&self.inner.config.app_secret, body)
    }

    /// Opens (or renews) the 24-hour window of `wa_id` at the fake's clock without a
    /// webhook, as if they had messaged (for arranging state, e.g. in benchmarks).
    pub fn open_window(&self, wa_id: &str) {
        let now = self.inner.now_nanos();
        self.inner.lock().last_inbound.insert(digits(wa_id), now);
    }

    /// Delivers an inbound text message from `from_e164` (`+447700900123` or digits)
    /// named `profile_name`, opening their 24-hour window at the fake's clock (even when
    /// PostDog refuses the delivery): its wamid and the status PostDog answered.
    ///
    /// # Errors
    /// Without a webhook target, or when the request could not be made.
    pub async fn inbound_text(
        &self,
        from_e164: &str,
        profile_name: &str,
        text: &str,
    ) -> anyhow::Result<(String, u16)> {
        self.inbound_message(
            from_e164,
            profile_name,
            json!({ "type": "text", "text": { "body": text } }),
        )
        .await
    }

    /// Delivers any inbound message: `message` is Meta's message object without the
    /// parts the fake fills in when absent (`from`, `id`, `timestamp`), e.g.
    /// `{"type":"image","image":{"id":"…","mime_type":"image/jpeg"}}`,
    /// `{"type":"interactive","interactive":{"type":"button_reply","button_reply":{"id":"yes","title":"Yes"}},"context":{"id":"wamid…"}}`
    /// or `{"type":"reaction","reaction":{"message_id":"wamid…","emoji":"👍"}}`.
    /// Opens the sender's window like [`inbound_text`](Self::inbound_text).
    ///
    /// # Errors
    /// When `message` is not a JSON object, without a webhook target, or when the
    /// request could not be made.
    pub async fn inbound_message(
        &self,
        from: &str,
        profile_name: &str,
        message: Value,
    ) -> anyhow::Result<(String, u16)> {
        let Value::Object(mut message) = message else {
            return Err(anyhow!("an inbound message must be a JSON object"));
        };
        let wa_id = digits(from);
        let now = self.inner.now_nanos();
        let wamid = match message.get("id").and_then(Value::as_str) {
            Some(id) => id.to_string(),
            None => self.inner.new_wamid(&wa_id),
        };
        message.insert("id".into(), Value::String(wamid.clone()));
        message
            .entry("from")
            .or_insert_with(|| Value::String(wa_id.clone()));
        message
            .entry("timestamp")
            .or_insert_with(|| Value::String((now / NANOS_PER_SEC).to_string()));
        message
            .entry("type")
            .or_insert_with(|| Value::String("text".into()));
        {
            let mut state = self.inner.lock();
            state.last_inbound.insert(wa_id.clone(), now);
            state.inbound_ids.insert(wamid.clone());
        }
        let mut value = self.inner.value_base();
        value.insert(
            "contacts".into(),
            json!([{ "profile": { "name": profile_name }, "wa_id": wa_id }]),
        );
        value.insert("messages".into(), json!([Value::Object(message)]));
        let status = self
            .inner
            .deliver_json(WebhookKind::Message, &self.inner.envelope(value))
            .await?;
        Ok((wamid, status))
    }

    /// Delivers one status (`sent`, `delivered`, `read`, `failed`) of `wamid`, with
    /// `error` = `(code, title)` as `errors[]` (for `failed`): the status PostDog
    /// answered. The timestamp is the fake's clock; `recipient_id` is the send's
    /// recipient (empty for a wamid the fake never issued).
    ///
    /// # Errors
    /// Without a webhook target, or when the request could not be made.
    pub async fn deliver_status(
        &self,
        wamid: &str,
        status: &str,
        error: Option<(u32, &str)>,
    ) -> anyhow::Result<u16> {
        let now_secs = self.inner.now_nanos() / NANOS_PER_SEC;
        let event = self.inner.status_event(wamid, status, now_secs, error);
        let body = self.inner.statuses_body(&[event]);
        self.inner.deliver(WebhookKind::Status, body, true).await
    }

    /// Delivers statuses of `wamid` one webhook each in the given `order` (e.g.
    /// `&["read", "sent", "delivered"]`), each twice in a row when `duplicate`: the
    /// statuses PostDog answered. Timestamps follow the natural order (sent ≤ delivered
    /// ≤ read), whatever the delivery order, as Meta's do.
    ///
    /// # Errors
    /// Without a webhook target, or when a request could not be made.
    pub async fn status_webhooks_for(
        &self,
        wamid: &str,
        order: &[&str],
        duplicate: bool,
    ) -> anyhow::Result<Vec<u16>> {
        let base = self
            .sent_message(wamid)
            .map(|sent| unix_secs(sent.accepted_at))
            .unwrap_or_else(|| self.inner.now_nanos() / NANOS_PER_SEC);
        let mut answers = Vec::new();
        for status in order {
            let event = self
                .inner
                .status_event(wamid, status, base + status_rank(status), None);
            let body = self.inner.statuses_body(&[event]);
            for _ in 0..if duplicate { 2 } else { 1 } {
                answers.push(
                    self.inner
                        .deliver(WebhookKind::Status, body.clone(), true)
                        .await?,
                );
            }
        }
        Ok(answers)
    }

    /// POSTs `body` as is to the webhook target with `signature_header` as
    /// `X-Hub-Signature-256` (no header for `None`; [`sign`](Self::sign) gives the right
    /// one): the status PostDog answered.
    ///
    /// # Errors
    /// Without a webhook target, or when the request could not be made.
    pub async fn deliver_raw(
        &self,
        body: impl Into<Bytes>,
        signature_header: Option<String>,
    ) -> anyhow::Result<u16> {
        self.inner
            .post_webhook(WebhookKind::Raw, body.into(), signature_header)
            .await
    }

    /// Delivers the last webhook again, byte for byte with the same signature, as Meta's
    /// retries do: the status PostDog answered. With `auto_statuses` running, "last" may
    /// be one of those.
    ///
    /// # Errors
    /// When nothing was delivered yet, without a webhook target, or when the request
    /// could not be made.
    pub async fn redeliver_last(&self) -> anyhow::Result<u16> {
        let last = self.inner.lock().last_delivery.clone();
        let (kind, body, signature) = last.context("no webhook was delivered yet")?;
        self.inner.post_webhook(kind, body, signature).await
    }

    /// Every webhook delivery so far, in order, with PostDog's answers.
    pub fn webhook_results(&self) -> Vec<WebhookDelivery> {
        self.inner.lock().webhook_results.clone()
    }

    /// Plays Meta's subscription handshake:
    /// `GET hook_url?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…`; the status
    /// and body PostDog answered (`200` and the challenge when the token matches).
    ///
    /// # Errors
    /// When `hook_url` is not a URL or the request could not be made.
    pub async fn verify_subscription(
        &self,
        hook_url: &str,
        verify_token: &str,
        challenge: &str,
    ) -> anyhow::Result<(u16, String)> {
        let mut url = reqwest::Url::parse(hook_url).context("the hook URL")?;
        url.query_pairs_mut()
            .append_pair("hub.mode", "subscribe")
            .append_pair("hub.verify_token", verify_token)
            .append_pair("hub.challenge", challenge);
        let response = self.inner.client.get(url).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// Waits until every webhook delivery running on a spawned task (automatic statuses,
    /// asynchronous window failures) has finished.
    pub async fn flush(&self) {
        let mut pending = self.inner.pending.subscribe();
        let _ = pending.wait_for(|count| *count == 0).await;
    }

    /// Deliveries still running on spawned tasks.
    pub fn pending_deliveries(&self) -> usize {
        *self.inner.pending.borrow()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, GraphState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_nanos(&self) -> u64 {
        let elapsed = duration_nanos(self.started.elapsed());
        self.started_unix_nanos
            .saturating_add(elapsed)
            .saturating_add(self.offset_nanos.load(Ordering::SeqCst))
    }

    fn new_wamid(&self, wa_id: &str) -> String {
        let n = self.wamid_counter.fetch_add(1, Ordering::Relaxed);
        let raw = format!("{wa_id}:{:016X}{n:010X}", self.wamid_salt);
        format!(
            "wamid.{}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    fn authorized(&self, headers: &HeaderMap, query: &HashMap<String, String>) -> bool {
        let token = &self.config.access_token;
        let from_header = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().split_once(' '))
            .is_some_and(|(scheme, value)| {
                (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth"))
                    && value.trim() == token
            });
        from_header || query.get("access_token") == Some(token)
    }

    fn take_failure(&self) -> Option<Failure> {
        let mut state = self.lock();
        let (remaining, failure) = state.failures.front_mut()?;
        let failure = failure.clone();
        *remaining -= 1;
        if *remaining == 0 {
            state.failures.pop_front();
        }
        Some(failure)
    }

    fn metadata(&self) -> Value {
        json!({
            "display_phone_number": digits(&self.config.display_phone_number),
            "phone_number_id": self.config.phone_number_id,
        })
    }

    fn value_base(&self) -> Map<String, Value> {
        let mut value = Map::new();
        value.insert("messaging_product".into(), "whatsapp".into());
        value.insert("metadata".into(), self.metadata());
        value
    }

    fn envelope(&self, value: Map<String, Value>) -> Value {
        json!({
            "object": "whatsapp_business_account",
            "entry": [{
                "id": self.config.waba_id,
                "changes": [{ "value": Value::Object(value), "field": "messages" }],
            }],
        })
    }

    /// A status object as Meta sends it.
    fn status_event(
        &self,
        wamid: &str,
        status: &str,
        timestamp: u64,
        error: Option<(u32, &str)>,
    ) -> Value {
        let (recipient, category, callback) = {
            let state = self.lock();
            match state
                .sent_index
                .get(wamid)
                .and_then(|&index| state.sent.get(index))
            {
                Some(sent) => {
                    let category = match sent.template_name() {
                        Some(name) => state
                            .templates
                            .iter()
                            .find(|template| template.name == name)
                            .map(|template| template.category.to_ascii_lowercase())
                            .unwrap_or_else(|| "utility".into()),
                        None => "service".into(),
                    };
                    let callback = sent
                        .body
                        .get("biz_opaque_callback_data")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    (sent.wa_id.clone(), category, callback)
                }
                None => (String::new(), "service".into(), None),
            }
        };
        with_callback(
            self.build_status(wamid, status, timestamp, &recipient, &category, error),
            callback.as_deref(),
        )
    }

    fn build_status(
        &self,
        wamid: &str,
        status: &str,
        timestamp: u64,
        recipient: &str,
        category: &str,
        error: Option<(u32, &str)>,
    ) -> Value {
        let mut event = json!({
            "id": wamid,
            "status": status,
            "timestamp": timestamp.to_string(),
            "recipient_id": recipient,
        });
        if matches!(status, "sent" | "delivered") {
            let mut conversation = json!({
                "id": conversation_id(&self.config.phone_number_id, recipient),
                "origin": { "type": category },
            });
            if status == "sent" {
                conversation["expiration_timestamp"] =
                    Value::String((timestamp + WINDOW.as_secs()).to_string());
            }
            event["conversation"] = conversation;
            event["pricing"] = json!({
                "billable": category != "service",
                "pricing_model": "PMP",
                "category": category,
            });
        }
        if let Some((code, title)) = error {
            event["errors"] = json!([{
                "code": code,
                "title": title,
                "message": title,
                "error_data": { "details": default_details(code).unwrap_or(title) },
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
            }]);
        }
        event
    }

    fn statuses_body(&self, statuses: &[Value]) -> Bytes {
        let mut value = self.value_base();
        value.insert("statuses".into(), Value::Array(statuses.to_vec()));
        Bytes::from(serde_json::to_vec(&self.envelope(value)).unwrap_or_default())
    }

    async fn deliver_json(&self, kind: WebhookKind, value: &Value) -> anyhow::Result<u16> {
        let body = Bytes::from(serde_json::to_vec(value).unwrap_or_default());
        self.deliver(kind, body, true).await
    }

    async fn deliver(&self, kind: WebhookKind, body: Bytes, signed: bool) -> anyhow::Result<u16> {
        let signature = signed.then(|| sign(&self.config.app_secret, &body));
        self.post_webhook(kind, body, signature).await
    }

    async fn post_webhook(
        &self,
        kind: WebhookKind,
        body: Bytes,
        signature: Option<String>,
    ) -> anyhow::Result<u16> {
        let url = {
            let mut state = self.lock();
            let url = state.webhook_target.clone();
            if url.is_some() {
                state.last_delivery = Some((kind, body.clone(), signature.clone()));
            }
            url
        }
        .context("no webhook target: call set_webhook_target first")?;
        let mut request = self
            .client
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        if let Some(signature) = &signature {
            request = request.header("X-Hub-Signature-256", signature);
        }
        let result = request.send().await;
        let (status, error) = match &result {
            Ok(response) => (Some(response.status().as_u16()), None),
            Err(error) => (None, Some(error.to_string())),
        };
        // Read the answer so the connection can be reused.
        if let Ok(response) = result {
            let _ = response.bytes().await;
        }
        let delivery = WebhookDelivery {
            kind,
            url,
            body,
            signature,
            status,
            error: error.clone(),
            at: system_time(self.now_nanos()),
        };
        self.lock().webhook_results.push(delivery);
        match (status, error) {
            (Some(status), _) => Ok(status),
            (None, error) => Err(anyhow!(
                "webhook delivery failed: {}",
                error.unwrap_or_default()
            )),
        }
    }
}

/// Decrements the pending-deliveries count when a delivery task ends, however it ends.
struct PendingGuard(Arc<Inner>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0
            .pending
            .send_modify(|count| *count = count.saturating_sub(1));
    }
}

fn spawn_deliveries(inner: &Arc<Inner>, bodies: Vec<Bytes>) {
    if bodies.is_empty() {
        return;
    }
    inner.pending.send_modify(|count| *count += 1);
    let guard = PendingGuard(inner.clone());
    tokio::spawn(async move {
        for body in bodies {
            // Like Meta, retry a delivery the server did not take (unreachable — for
            // example while it restarts after a crash — or a 5xx), with backoff; Meta
            // keeps trying for days, the fake for about two minutes.
            let mut wait = Duration::from_millis(250);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                let answer = guard
                    .0
                    .deliver(WebhookKind::Status, body.clone(), true)
                    .await;
                let retry = match answer {
                    Ok(status) => status >= 500,
                    Err(_) => true,
                };
                if !retry || tokio::time::Instant::now() + wait > deadline {
                    break;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(8));
            }
        }
        drop(guard);
    });
}

/// `event` with the send's `biz_opaque_callback_data`, when it had one.
fn with_callback(mut event: Value, callback: Option<&str>) -> Value {
    if let Some(callback) = callback {
        event["biz_opaque_callback_data"] = Value::String(callback.to_string());
    }
    event
}

// ---------------------------------------------------------------------------------------
// HTTP side
// ---------------------------------------------------------------------------------------

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = parse_query(uri.query());
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let path: &[&str] = match segments.split_first() {
        Some((first, rest)) if is_version(first) => rest,
        _ => &segments,
    };
    let config = &inner.config;
    match (&method, path) {
        (&Method::POST, [id, "messages"]) if *id == config.phone_number_id => {
            messages(&inner, &headers, &query, &body)
        }
        _ if !inner.authorized(&headers, &query) => GraphError::auth().response(),
        (&Method::POST, [id, "message_templates"]) if *id == config.waba_id => {
            create_template(&inner, &body)
        }
        (&Method::GET, [id, "message_templates"]) if *id == config.waba_id => {
            list_templates(&inner, &query, path)
        }
        (&Method::GET, [id, "phone_numbers"]) if *id == config.waba_id => {
            let number = filter_fields(phone_number(config), &query);
            json_response(
                200,
                &json!({
                    "data": [number],
                    "paging": { "cursors": { "before": "QVFIUmJF", "after": "QVFIUmJF" } },
                }),
            )
        }
        (&Method::GET, [id]) if *id == config.phone_number_id => {
            json_response(200, &filter_fields(phone_number(config), &query))
        }
        (&Method::GET, [id]) if *id == config.waba_id => {
            let account = json!({
                "id": config.waba_id,
                "name": "PostDog Test",
                "account_review_status": "APPROVED",
                "business_verification_status": "verified",
                "currency": "USD",
                "timezone_id": "1",
                "message_template_namespace": "postdog_test_namespace",
            });
            json_response(200, &filter_fields(account, &query))
        }
        _ => GraphError::unsupported(&method, path.first().copied().unwrap_or("")).response(),
    }
}

fn phone_number(config: &FakeGraphConfig) -> Value {
    json!({
        "id": config.phone_number_id,
        "display_phone_number": config.display_phone_number,
        "verified_name": "PostDog Test",
        "quality_rating": "GREEN",
        "code_verification_status": "VERIFIED",
        "name_status": "APPROVED",
        "messaging_limit_tier": "TIER_1K",
        "platform_type": "CLOUD_API",
        "throughput": { "level": "STANDARD" },
    })
}

/// Keeps only the requested `fields` (and `id`), as the Graph API does.
fn filter_fields(value: Value, query: &HashMap<String, String>) -> Value {
    let (Some(fields), Value::Object(object)) = (query.get("fields"), &value) else {
        return value;
    };
    let wanted: HashSet<&str> = fields
        .split(',')
        .map(|field| field.split(['{', '.']).next().unwrap_or("").trim())
        .chain(["id"])
        .collect();
    Value::Object(
        object
            .iter()
            .filter(|(key, _)| wanted.contains(key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
    )
}

// ----- messages -------------------------------------------------------------------------

struct ValidSend {
    to: String,
    wa_id: String,
    message_type: String,
    template: Option<(String, String, usize)>,
}

fn messages(
    inner: &Arc<Inner>,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let is_mark_read = parsed.as_ref().is_some_and(|value| {
        value.get("status").and_then(Value::as_str) == Some("read")
            && value.get("message_id").is_some()
    });
    if is_mark_read {
        if !inner.authorized(headers, query) {
            return GraphError::auth().response();
        }
        return mark_read(inner, parsed.unwrap_or_default());
    }
    inner.send_attempts.fetch_add(1, Ordering::SeqCst);
    if let Some(failure) = inner.take_failure() {
        return failure.response();
    }
    if !inner.authorized(headers, query) {
        return GraphError::auth().response();
    }
    let Some(body) = parsed else {
        return GraphError::invalid("The request body must be a JSON object.").response();
    };
    match validate_send(&body).and_then(|valid| accept_send(inner, valid, body)) {
        Ok(response) => response,
        Err(error) => error.response(),
    }
}

fn mark_read(inner: &Inner, body: Value) -> Response {
    if body.get("messaging_product").and_then(Value::as_str) != Some("whatsapp") {
        return GraphError::invalid("The parameter messaging_product is required.").response();
    }
    let Some(message_id) = body
        .get("message_id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
    else {
        return GraphError::invalid("Param message_id must be a non-empty string.").response();
    };
    let message_id = message_id.to_string();
    let now = inner.now_nanos();
    {
        let mut state = inner.lock();
        let known_inbound = state.inbound_ids.contains(&message_id);
        state.read_receipts.push(ReadReceipt {
            message_id,
            at: system_time(now),
            known_inbound,
            body,
        });
    }
    json_response(200, &json!({ "success": true }))
}

fn accept_send(inner: &Arc<Inner>, valid: ValidSend, body: Value) -> Result<Response, GraphError> {
    let config = &inner.config;
    let now = inner.now_nanos();
    let mut state = inner.lock();
    if let Some(limit) = config.throughput_per_second {
        let since = now.saturating_sub(NANOS_PER_SEC);
        while state.recent_sends.front().is_some_and(|&at| at <= since) {
            state.recent_sends.pop_front();
        }
        if state.recent_sends.len() >= limit as usize {
            return Err(GraphError::code(130429));
        }
    }
    if let Some(gap) = config.pair_rate_limit
        && let Some(&last) = state.last_send_to.get(&valid.wa_id)
        && now.saturating_sub(last) < duration_nanos(gap)
    {
        return Err(GraphError::code(131056));
    }
    let mut category = "service".to_string();
    if let Some((name, language, params)) = &valid.template {
        let template = state
            .templates
            .iter()
            .find(|template| &template.name == name && &template.language == language)
            .ok_or_else(|| {
                GraphError::code(132001).details(format!(
                    "template name ({name}) does not exist in {language}"
                ))
            })?;
        match template.status {
            TemplateStatus::Approved => {}
            TemplateStatus::Paused => return Err(GraphError::code(132015)),
            TemplateStatus::Disabled => return Err(GraphError::code(132016)),
            TemplateStatus::Pending | TemplateStatus::Rejected => {
                return Err(GraphError::code(132001).details(format!(
                    "template name ({name}) does not exist in {language} (status {})",
                    template.status
                )));
            }
        }
        let expected = template.body_variable_count();
        if *params != expected {
            return Err(GraphError::code(132000).details(format!(
                "body: number of localizable_params ({params}) does not match the expected \
                 number of params ({expected})"
            )));
        }
        category = template.category.to_ascii_lowercase();
    }
    let mut window_failed = false;
    if config.enforce_window && valid.template.is_none() {
        let open = state
            .last_inbound
            .get(&valid.wa_id)
            .is_some_and(|&at| now.saturating_sub(at) <= duration_nanos(WINDOW));
        if !open {
            if config.window_failure_via_webhook {
                window_failed = true;
            } else {
                return Err(GraphError::code(131047));
            }
        }
    }

    let wamid = inner.new_wamid(&valid.wa_id);
    if config.throughput_per_second.is_some() {
        state.recent_sends.push_back(now);
    }
    if config.pair_rate_limit.is_some() {
        state.last_send_to.insert(valid.wa_id.clone(), now);
    }
    // Meta echoes a send's `biz_opaque_callback_data` in its status webhooks.
    let callback = body
        .get("biz_opaque_callback_data")
        .and_then(Value::as_str)
        .map(str::to_string);
    let index = state.sent.len();
    state.sent_index.insert(wamid.clone(), index);
    state.sent.push(SentMessage {
        wamid: wamid.clone(),
        to: valid.to.clone(),
        wa_id: valid.wa_id.clone(),
        message_type: valid.message_type.clone(),
        body,
        accepted_at: system_time(now),
        window_failed,
    });

    // Plan the asynchronous status webhooks while the lock (and the seeded rng) is held.
    let mut deliveries = Vec::new();
    if state.webhook_target.is_some() {
        let secs = now / NANOS_PER_SEC;
        if window_failed {
            let event = with_callback(
                inner.build_status(
                    &wamid,
                    "failed",
                    secs,
                    &valid.wa_id,
                    &category,
                    Some((131047, "Re-engagement message")),
                ),
                callback.as_deref(),
            );
            deliveries.push(inner.statuses_body(&[event]));
        } else if config.auto_statuses {
            let mut events = Vec::new();
            for (rank, status) in ["sent", "delivered", "read"].into_iter().enumerate() {
                let event = with_callback(
                    inner.build_status(
                        &wamid,
                        status,
                        secs + rank as u64,
                        &valid.wa_id,
                        &category,
                        None,
                    ),
                    callback.as_deref(),
                );
                if state.rng.random_bool(0.3) {
                    events.push(event.clone());
                }
                events.push(event);
            }
            events.shuffle(&mut state.rng);
            let mut rest = events.as_slice();
            while !rest.is_empty() {
                let size = state.rng.random_range(1..=3).min(rest.len());
                let (batch, tail) = rest.split_at(size);
                deliveries.push(inner.statuses_body(batch));
                rest = tail;
            }
        }
    }
    drop(state);
    spawn_deliveries(inner, deliveries);

    let mut message = json!({ "id": wamid });
    if valid.template.is_some() {
        message["message_status"] = "accepted".into();
    }
    Ok(json_response(
        200,
        &json!({
            "messaging_product": "whatsapp",
            "contacts": [{ "input": valid.to, "wa_id": valid.wa_id }],
            "messages": [message],
        }),
    ))
}

fn validate_send(body: &Value) -> Result<ValidSend, GraphError> {
    let Some(object) = body.as_object() else {
        return Err(GraphError::invalid(
            "The request body must be a JSON object.",
        ));
    };
    match object.get("messaging_product") {
        None => {
            return Err(GraphError::invalid(
                "The parameter messaging_product is required.",
            ));
        }
        Some(Value::String(product)) if product == "whatsapp" => {}
        Some(_) => {
            return Err(GraphError::invalid(
                "Param messaging_product must be one of {WHATSAPP} - got an unknown value.",
            ));
        }
    }
    if let Some(kind) = object.get("recipient_type")
        && kind.as_str() != Some("individual")
    {
        return Err(GraphError::invalid(
            "Param recipient_type must be one of {INDIVIDUAL}.",
        ));
    }
    let to = match object.get("to") {
        None => return Err(GraphError::invalid("The parameter to is required.")),
        Some(Value::String(to)) => to.clone(),
        Some(_) => return Err(GraphError::invalid("Param to must be a string.")),
    };
    let number = to.strip_prefix('+').unwrap_or(&to);
    if !(7..=15).contains(&number.len()) || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(GraphError::invalid(
            "Param to must be a phone number: up to 15 digits, optionally after a +.",
        ));
    }
    let wa_id = number.to_string();
    let message_type = match object.get("type") {
        None => "text".to_string(),
        Some(Value::String(kind)) if MESSAGE_TYPES.contains(&kind.as_str()) => kind.clone(),
        Some(_) => {
            return Err(GraphError::invalid(format!(
                "Param type must be one of {{{}}}.",
                MESSAGE_TYPES.join(", ").to_ascii_uppercase()
            )));
        }
    };
    if let Some(context) = object.get("context")
        && context
            .get("message_id")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        return Err(GraphError::invalid(
            "Param context['message_id'] must be a non-empty string.",
        ));
    }
    let Some(content) = object.get(&message_type) else {
        return Err(GraphError::invalid(format!(
            "The parameter {message_type} is required."
        )));
    };
    if !content.is_object() && message_type != "contacts" {
        return Err(GraphError::invalid(format!(
            "Param {message_type} must be a JSON object."
        )));
    }
    let mut template = None;
    match message_type.as_str() {
        "text" => validate_text(content)?,
        "template" => template = Some(validate_template_send(content)?),
        "image" | "video" | "audio" | "document" | "sticker" => {
            validate_media(&message_type, content)?;
        }
        "interactive" => validate_interactive(content)?,
        "location" => validate_location(content)?,
        "reaction" => {
            if content
                .get("message_id")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(GraphError::invalid(
                    "The parameter reaction['message_id'] is required.",
                ));
            }
            if !content.get("emoji").is_some_and(Value::is_string) {
                return Err(GraphError::invalid(
                    "The parameter reaction['emoji'] is required.",
                ));
            }
        }
        "contacts" => validate_contacts(content)?,
        _ => {}
    }
    Ok(ValidSend {
        to,
        wa_id,
        message_type,
        template,
    })
}

fn validate_text(text: &Value) -> Result<(), GraphError> {
    match text.get("body") {
        Some(Value::String(body)) if body.is_empty() => Err(GraphError::invalid(
            "Param text['body'] must be at least 1 character long.",
        )),
        Some(Value::String(body)) if body.chars().count() > 4096 => Err(GraphError::invalid(
            "Param text['body'] must be at most 4096 characters long.",
        )),
        Some(Value::String(_)) => match text.get("preview_url") {
            Some(preview) if !preview.is_boolean() => Err(GraphError::invalid(
                "Param text['preview_url'] must be a boolean.",
            )),
            _ => Ok(()),
        },
        Some(_) => Err(GraphError::invalid("Param text['body'] must be a string.")),
        None => Err(GraphError::invalid(
            "The parameter text['body'] is required.",
        )),
    }
}

/// The name, language and number of body parameters of a template send.
fn validate_template_send(template: &Value) -> Result<(String, String, usize), GraphError> {
    let name = template
        .get("name")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| GraphError::invalid("The parameter template['name'] is required."))?;
    let language = template
        .pointer("/language/code")
        .and_then(Value::as_str)
        .filter(|code| !code.is_empty())
        .ok_or_else(|| {
            GraphError::invalid("The parameter template['language']['code'] is required.")
        })?;
    let mut body_params = 0;
    match template.get("components") {
        None => {}
        Some(Value::Array(components)) => {
            for (index, component) in components.iter().enumerate() {
                let kind = component
                    .get("type")
                    .and_then(Value::as_str)
                    .map(str::to_ascii_lowercase)
                    .ok_or_else(|| {
                        GraphError::invalid(format!(
                            "The parameter template['components'][{index}]['type'] is required."
                        ))
                    })?;
                if !matches!(kind.as_str(), "header" | "body" | "button" | "footer") {
                    return Err(GraphError::invalid(format!(
                        "Param template['components'][{index}]['type'] must be one of \
                         {{HEADER, BODY, BUTTON}}."
                    )));
                }
                let parameters = match component.get("parameters") {
                    None => &[][..],
                    Some(Value::Array(parameters)) => parameters.as_slice(),
                    Some(_) => {
                        return Err(GraphError::invalid(format!(
                            "Param template['components'][{index}]['parameters'] must be an array."
                        )));
                    }
                };
                for (at, parameter) in parameters.iter().enumerate() {
                    let field = format!("template['components'][{index}]['parameters'][{at}]");
                    let Some(parameter_type) = parameter.get("type").and_then(Value::as_str) else {
                        return Err(GraphError::invalid(format!(
                            "The parameter {field}['type'] is required."
                        )));
                    };
                    if parameter_type == "text"
                        && !parameter.get("text").is_some_and(Value::is_string)
                    {
                        return Err(GraphError::invalid(format!(
                            "The parameter {field}['text'] is required."
                        )));
                    }
                }
                if kind == "body" {
                    body_params += parameters.len();
                }
            }
        }
        Some(_) => {
            return Err(GraphError::invalid(
                "Param template['components'] must be an array.",
            ));
        }
    }
    Ok((name.to_string(), language.to_string(), body_params))
}

fn validate_media(kind: &str, media: &Value) -> Result<(), GraphError> {
    let link = media.get("link");
    let id = media.get("id");
    match (link, id) {
        (Some(_), Some(_)) => {
            return Err(GraphError::invalid(format!(
                "Param {kind} must have either 'link' or 'id', not both."
            )));
        }
        (None, None) => {
            return Err(GraphError::invalid(format!(
                "The parameter {kind}['link'] or {kind}['id'] is required."
            )));
        }
        (Some(link), None) => {
            let https = link
                .as_str()
                .and_then(|link| reqwest::Url::parse(link).ok())
                .is_some_and(|url| url.scheme() == "https" && url.host_str().is_some());
            if !https {
                return Err(GraphError::invalid(format!(
                    "Param {kind}['link'] must be a valid https URL."
                )));
            }
        }
        (None, Some(id)) => {
            if id.as_str().is_none_or(str::is_empty) {
                return Err(GraphError::invalid(format!(
                    "Param {kind}['id'] must be a non-empty string."
                )));
            }
        }
    }
    if let Some(caption) = media.get("caption") {
        if matches!(kind, "audio" | "sticker") {
            return Err(GraphError::invalid(format!(
                "Param {kind}['caption'] is not supported for {kind} messages."
            )));
        }
        if caption
            .as_str()
            .is_none_or(|caption| caption.chars().count() > 1024)
        {
            return Err(GraphError::invalid(format!(
                "Param {kind}['caption'] must be a string of at most 1024 characters."
            )));
        }
    }
    Ok(())
}

fn text_within(value: Option<&Value>, max: usize) -> bool {
    value
        .and_then(Value::as_str)
        .is_some_and(|text| !text.is_empty() && text.chars().count() <= max)
}

fn validate_interactive(interactive: &Value) -> Result<(), GraphError> {
    let kind = interactive
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| GraphError::invalid("The parameter interactive['type'] is required."))?;
    let action = interactive
        .get("action")
        .filter(|action| action.is_object())
        .ok_or_else(|| GraphError::invalid("The parameter interactive['action'] is required."))?;
    match kind {
        "button" | "list" => {
            if !text_within(interactive.pointer("/body/text"), 1024) {
                return Err(GraphError::invalid(
                    "Param interactive['body']['text'] is required (1 to 1024 characters).",
                ));
            }
        }
        "cta_url"
        | "flow"
        | "product"
        | "product_list"
        | "catalog_message"
        | "location_request_message" => return Ok(()),
        _ => {
            return Err(GraphError::invalid(
                "Param interactive['type'] must be one of {BUTTON, LIST, CTA_URL, FLOW, \
                 PRODUCT, PRODUCT_LIST, CATALOG_MESSAGE, LOCATION_REQUEST_MESSAGE}.",
            ));
        }
    }
    if kind == "button" {
        let buttons = action
            .get("buttons")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                GraphError::invalid("The parameter interactive['action']['buttons'] is required.")
            })?;
        if buttons.is_empty() || buttons.len() > 3 {
            return Err(GraphError::invalid(
                "Param interactive['action']['buttons'] must have 1 to 3 buttons.",
            ));
        }
        let mut ids = HashSet::new();
        for (index, button) in buttons.iter().enumerate() {
            let field = format!("interactive['action']['buttons'][{index}]");
            if button.get("type").and_then(Value::as_str) != Some("reply") {
                return Err(GraphError::invalid(format!(
                    "Param {field}['type'] must be REPLY."
                )));
            }
            let id = button
                .pointer("/reply/id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty() && id.chars().count() <= 256)
                .ok_or_else(|| {
                    GraphError::invalid(format!(
                        "Param {field}['reply']['id'] is required (1 to 256 characters)."
                    ))
                })?;
            if !ids.insert(id) {
                return Err(GraphError::invalid(format!(
                    "Param {field}['reply']['id'] must be unique."
                )));
            }
            if !text_within(button.pointer("/reply/title"), 20) {
                return Err(GraphError::invalid(format!(
                    "Param {field}['reply']['title'] is required (1 to 20 characters)."
                )));
            }
        }
        return Ok(());
    }
    // list
    if !text_within(action.get("button"), 20) {
        return Err(GraphError::invalid(
            "Param interactive['action']['button'] is required (1 to 20 characters).",
        ));
    }
    let sections = action
        .get("sections")
        .and_then(Value::as_array)
        .filter(|sections| !sections.is_empty() && sections.len() <= 10)
        .ok_or_else(|| {
            GraphError::invalid(
                "Param interactive['action']['sections'] must have 1 to 10 sections.",
            )
        })?;
    let mut rows_total = 0;
    let mut ids = HashSet::new();
    for (index, section) in sections.iter().enumerate() {
        let field = format!("interactive['action']['sections'][{index}]");
        let rows = section
            .get("rows")
            .and_then(Value::as_array)
            .filter(|rows| !rows.is_empty())
            .ok_or_else(|| {
                GraphError::invalid(format!("Param {field}['rows'] must have at least 1 row."))
            })?;
        if sections.len() > 1 && !text_within(section.get("title"), 24) {
            return Err(GraphError::invalid(format!(
                "Param {field}['title'] is required with several sections (1 to 24 characters)."
            )));
        }
        rows_total += rows.len();
        for (at, row) in rows.iter().enumerate() {
            let row_field = format!("{field}['rows'][{at}]");
            let id = row
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty() && id.chars().count() <= 200)
                .ok_or_else(|| {
                    GraphError::invalid(format!(
                        "Param {row_field}['id'] is required (1 to 200 characters)."
                    ))
                })?;
            if !ids.insert(id) {
                return Err(GraphError::invalid(format!(
                    "Param {row_field}['id'] must be unique."
                )));
            }
            if !text_within(row.get("title"), 24) {
                return Err(GraphError::invalid(format!(
                    "Param {row_field}['title'] is required (1 to 24 characters)."
                )));
            }
            if let Some(description) = row.get("description")
                && description
                    .as_str()
                    .is_none_or(|text| text.chars().count() > 72)
            {
                return Err(GraphError::invalid(format!(
                    "Param {row_field}['description'] must be at most 72 characters."
                )));
            }
        }
    }
    if rows_total > 10 {
        return Err(GraphError::invalid(
            "Param interactive['action']['sections'] must have at most 10 rows in total.",
        ));
    }
    Ok(())
}

fn validate_location(location: &Value) -> Result<(), GraphError> {
    let coordinate = |name: &str, limit: f64| -> Result<(), GraphError> {
        let value = match location.get(name) {
            Some(Value::Number(number)) => number.as_f64(),
            Some(Value::String(text)) => text.trim().parse::<f64>().ok(),
            _ => None,
        };
        match value {
            Some(value) if value.is_finite() && value.abs() <= limit => Ok(()),
            _ => Err(GraphError::invalid(format!(
                "The parameter location['{name}'] is required (a number from -{limit} to {limit})."
            ))),
        }
    };
    coordinate("latitude", 90.0)?;
    coordinate("longitude", 180.0)?;
    for name in ["name", "address"] {
        if location.get(name).is_some_and(|value| !value.is_string()) {
            return Err(GraphError::invalid(format!(
                "Param location['{name}'] must be a string."
            )));
        }
    }
    Ok(())
}

fn validate_contacts(contacts: &Value) -> Result<(), GraphError> {
    let contacts = contacts
        .as_array()
        .filter(|contacts| !contacts.is_empty())
        .ok_or_else(|| GraphError::invalid("Param contacts must be a non-empty array."))?;
    for (index, contact) in contacts.iter().enumerate() {
        if contact
            .pointer("/name/formatted_name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(GraphError::invalid(format!(
                "The parameter contacts[{index}]['name']['formatted_name'] is required."
            )));
        }
    }
    Ok(())
}

// ----- templates ------------------------------------------------------------------------

fn create_template(inner: &Inner, body: &Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return GraphError::invalid("The request body must be a JSON object.").response();
    };
    let checked = check_new_template(&body);
    let (name, language, category, components) = match checked {
        Ok(parts) => parts,
        Err(error) => return error.response(),
    };
    let mut state = inner.lock();
    if state
        .templates
        .iter()
        .any(|template| template.name == name && template.language == language)
    {
        let mut error = GraphError::invalid(format!(
            "Message template \"{name}\" already exists in {language}."
        ))
        .subcode(2388024);
        error.user_title = Some("Message template already exists".into());
        error.user_msg = Some(format!(
            "There is already {language} content for this template. You can create a new \
             template and try again."
        ));
        return error.response();
    }
    let id = state.next_template_id.to_string();
    state.next_template_id += 1;
    state.templates.push(Template {
        id: id.clone(),
        name,
        language,
        category: category.clone(),
        status: TemplateStatus::Pending,
        components,
        reason: None,
    });
    drop(state);
    json_response(
        200,
        &json!({ "id": id, "status": "PENDING", "category": category }),
    )
}

type NewTemplate = (String, String, String, Value);

fn check_new_template(body: &Map<String, Value>) -> Result<NewTemplate, GraphError> {
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| GraphError::invalid("The parameter name is required."))?;
    if name.is_empty()
        || name.len() > 512
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(GraphError::invalid(
            "Param name may only contain lowercase letters, digits and underscores \
             (1 to 512 characters).",
        ));
    }
    let language = body
        .get("language")
        .and_then(Value::as_str)
        .filter(|code| {
            !code.is_empty()
                && code.len() <= 16
                && code.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
        })
        .ok_or_else(|| {
            GraphError::invalid("The parameter language is required (a code such as en_US).")
        })?;
    let category = body
        .get("category")
        .and_then(Value::as_str)
        .map(str::to_ascii_uppercase)
        .filter(|category| {
            matches!(
                category.as_str(),
                "MARKETING" | "UTILITY" | "AUTHENTICATION"
            )
        })
        .ok_or_else(|| {
            GraphError::invalid(
                "Param category must be one of {MARKETING, UTILITY, AUTHENTICATION}.",
            )
        })?;
    let components = body
        .get("components")
        .and_then(Value::as_array)
        .filter(|components| !components.is_empty())
        .ok_or_else(|| GraphError::invalid("The parameter components is required."))?;
    let mut components = components.clone();
    let mut seen = HashSet::new();
    let mut has_body = false;
    for (index, component) in components.iter_mut().enumerate() {
        let field = format!("components[{index}]");
        let kind = component
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_ascii_uppercase)
            .filter(|kind| matches!(kind.as_str(), "HEADER" | "BODY" | "FOOTER" | "BUTTONS"))
            .ok_or_else(|| {
                GraphError::invalid(format!(
                    "Param {field}['type'] must be one of {{HEADER, BODY, FOOTER, BUTTONS}}."
                ))
            })?;
        if !seen.insert(kind.clone()) {
            return Err(GraphError::invalid(format!(
                "Param {field}: only one {kind} component is allowed."
            )));
        }
        match kind.as_str() {
            "BODY" => {
                has_body = true;
                if category == "AUTHENTICATION" && component.get("text").is_none() {
                    // Meta writes the text of authentication templates itself.
                    component["text"] = "*{{1}}* is your verification code.".into();
                    continue;
                }
                let text = component
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|text| !text.is_empty() && text.chars().count() <= 1024)
                    .ok_or_else(|| {
                        GraphError::invalid(format!(
                            "Param {field}['text'] is required (1 to 1024 characters)."
                        ))
                    })?;
                check_body_variables(text, component, &field)?;
            }
            "HEADER" => {
                let format = component
                    .get("format")
                    .and_then(Value::as_str)
                    .map(str::to_ascii_uppercase)
                    .filter(|format| {
                        matches!(
                            format.as_str(),
                            "TEXT" | "IMAGE" | "VIDEO" | "DOCUMENT" | "LOCATION"
                        )
                    })
                    .ok_or_else(|| {
                        GraphError::invalid(format!(
                            "Param {field}['format'] must be one of {{TEXT, IMAGE, VIDEO, \
                             DOCUMENT, LOCATION}}."
                        ))
                    })?;
                if format == "TEXT" && !text_within(component.get("text"), 60) {
                    return Err(GraphError::invalid(format!(
                        "Param {field}['text'] is required (1 to 60 characters)."
                    )));
                }
            }
            "FOOTER" => {
                if !text_within(component.get("text"), 60) {
                    return Err(GraphError::invalid(format!(
                        "Param {field}['text'] is required (1 to 60 characters)."
                    )));
                }
            }
            _ => {
                let buttons = component
                    .get("buttons")
                    .and_then(Value::as_array)
                    .filter(|buttons| !buttons.is_empty() && buttons.len() <= 10)
                    .ok_or_else(|| {
                        GraphError::invalid(format!(
                            "Param {field}['buttons'] must have 1 to 10 buttons."
                        ))
                    })?;
                for (at, button) in buttons.iter().enumerate() {
                    let button_field = format!("{field}['buttons'][{at}]");
                    let kind = button.get("type").and_then(Value::as_str).unwrap_or("");
                    let needs = match kind {
                        "QUICK_REPLY" => None,
                        "URL" => Some("url"),
                        "PHONE_NUMBER" => Some("phone_number"),
                        "COPY_CODE" | "OTP" | "FLOW" | "MPM" | "CATALOG" => continue,
                        _ => {
                            return Err(GraphError::invalid(format!(
                                "Param {button_field}['type'] must be one of {{QUICK_REPLY, \
                                 URL, PHONE_NUMBER, COPY_CODE, OTP, FLOW}}."
                            )));
                        }
                    };
                    if !text_within(button.get("text"), 25) {
                        return Err(GraphError::invalid(format!(
                            "Param {button_field}['text'] is required (1 to 25 characters)."
                        )));
                    }
                    if let Some(needed) = needs
                        && button
                            .get(needed)
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                    {
                        return Err(GraphError::invalid(format!(
                            "The parameter {button_field}['{needed}'] is required."
                        )));
                    }
                }
            }
        }
    }
    if !has_body {
        return Err(GraphError::invalid(
            "Param components must include a BODY component.",
        ));
    }
    Ok((
        name.to_string(),
        language.to_string(),
        category,
        Value::Array(components),
    ))
}

/// Positional variables numbered from 1 without gaps, not at the start or end of the
/// body, each with an example.
fn check_body_variables(text: &str, component: &Value, field: &str) -> Result<(), GraphError> {
    let found = variables(text);
    if found.is_empty() {
        return Ok(());
    }
    let trimmed_start = text.len() - text.trim_start().len();
    let trimmed_end = text.trim_end().len();
    if found
        .iter()
        .any(|(start, end, _)| *start == trimmed_start || *end == trimmed_end)
    {
        let mut error = GraphError::invalid(format!(
            "Param {field}['text']: variables can't be at the start or end of the template."
        ))
        .subcode(2388299);
        error.user_title = Some("Variables can't be at the start or end of the template".into());
        return Err(error);
    }
    let mut numbers: Vec<u64> = Vec::new();
    for (_, _, name) in &found {
        match name.parse::<u64>() {
            Ok(number) => numbers.push(number),
            // Named parameters ({{first_name}}) follow other rules: accept them.
            Err(_) => return Ok(()),
        }
    }
    numbers.sort_unstable();
    numbers.dedup();
    if numbers
        .iter()
        .enumerate()
        .any(|(index, &n)| n != index as u64 + 1)
    {
        return Err(GraphError::invalid(format!(
            "Param {field}['text']: variables must be numbered from {{{{1}}}} without gaps."
        )));
    }
    let examples = component
        .pointer("/example/body_text/0")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if examples < numbers.len() {
        return Err(GraphError::invalid(format!(
            "Param {field}['example']['body_text'] must give an example for each of the {} \
             variables.",
            numbers.len()
        )));
    }
    Ok(())
}

fn list_templates(inner: &Inner, query: &HashMap<String, String>, path: &[&str]) -> Response {
    let limit = match query
        .get("limit")
        .map(|limit| limit.trim().parse::<usize>())
    {
        None => 25,
        Some(Ok(limit)) => limit.clamp(1, 1000),
        Some(Err(_)) => return GraphError::invalid("Param limit must be an integer.").response(),
    };
    let cursor = |name: &str| -> Result<Option<u64>, GraphError> {
        match query.get(name) {
            None => Ok(None),
            Some(cursor) => decode_cursor(cursor)
                .map(Some)
                .ok_or_else(|| GraphError::invalid(format!("Param {name} is not a valid cursor."))),
        }
    };
    let (after, before) = match (cursor("after"), cursor("before")) {
        (Ok(after), Ok(before)) => (after, before),
        (Err(error), _) | (_, Err(error)) => return error.response(),
    };
    let state = inner.lock();
    let matching: Vec<&Template> = state
        .templates
        .iter()
        .filter(|template| {
            query
                .get("name")
                .is_none_or(|name| template.name.contains(name.as_str()))
        })
        .filter(|template| {
            query
                .get("status")
                .is_none_or(|status| template.status.as_str().eq_ignore_ascii_case(status))
        })
        .filter(|template| {
            query
                .get("language")
                .is_none_or(|language| &template.language == language)
        })
        .filter(|template| {
            query
                .get("category")
                .is_none_or(|category| template.category.eq_ignore_ascii_case(category))
        })
        .collect();
    let id_of = |template: &Template| template.id.parse::<u64>().unwrap_or(0);
    let (start, end) = if let Some(after) = after {
        let start = matching.partition_point(|template| id_of(template) <= after);
        (start, (start + limit).min(matching.len()))
    } else if let Some(before) = before {
        let end = matching.partition_point(|template| id_of(template) < before);
        (end.saturating_sub(limit), end)
    } else {
        (0, limit.min(matching.len()))
    };
    let page = &matching[start..end];
    let data: Vec<Value> = page
        .iter()
        .map(|template| {
            let mut item = json!({
                "name": template.name,
                "parameter_format": "POSITIONAL",
                "components": template.components,
                "language": template.language,
                "status": template.status.as_str(),
                "category": template.category,
                "id": template.id,
            });
            if template.status == TemplateStatus::Rejected {
                item["rejected_reason"] = template.reason.clone().unwrap_or("NONE".into()).into();
            }
            item
        })
        .collect();
    let more_after = end < matching.len();
    let more_before = start > 0;
    let first_last = page
        .first()
        .zip(page.last())
        .map(|(first, last)| (id_of(first), id_of(last)));
    drop(state);
    let mut body = json!({ "data": data });
    if let Some((first, last)) = first_last {
        let base = format!(
            "{}/{}",
            inner.base_url.get().map(String::as_str).unwrap_or(""),
            path.join("/")
        );
        let mut kept: Vec<(String, String)> = query
            .iter()
            .filter(|(key, _)| {
                !matches!(key.as_str(), "after" | "before" | "limit" | "access_token")
            })
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        kept.sort();
        let link = |cursor_name: &str, cursor: &str| {
            let mut url = match reqwest::Url::parse(&base) {
                Ok(url) => url,
                Err(_) => return Value::Null,
            };
            {
                let mut pairs = url.query_pairs_mut();
                for (key, value) in &kept {
                    pairs.append_pair(key, value);
                }
                pairs.append_pair("limit", &limit.to_string());
                pairs.append_pair(cursor_name, cursor);
            }
            Value::String(url.to_string())
        };
        let before_cursor = encode_cursor(first);
        let after_cursor = encode_cursor(last);
        let mut paging = json!({
            "cursors": { "before": before_cursor, "after": after_cursor },
        });
        if more_after {
            paging["next"] = link("after", &after_cursor);
        }
        if more_before {
            paging["previous"] = link("before", &before_cursor);
        }
        body["paging"] = paging;
    }
    json_response(200, &body)
}

fn encode_cursor(id: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("tpl:{id}"))
}

fn decode_cursor(cursor: &str) -> Option<u64> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor.trim_end_matches('='))
        .ok()?;
    std::str::from_utf8(&raw)
        .ok()?
        .strip_prefix("tpl:")?
        .parse()
        .ok()
}

// ----- errors ---------------------------------------------------------------------------

/// A Graph error answer (boxed: it travels in `Result`s).
struct GraphError(Box<ErrorBody>);

struct ErrorBody {
    status: u16,
    code: u32,
    subcode: Option<u32>,
    message: String,
    kind: &'static str,
    details: Option<String>,
    user_title: Option<String>,
    user_msg: Option<String>,
    retry_after: Option<u64>,
}

impl std::ops::Deref for GraphError {
    type Target = ErrorBody;

    fn deref(&self) -> &ErrorBody {
        &self.0
    }
}

impl std::ops::DerefMut for GraphError {
    fn deref_mut(&mut self) -> &mut ErrorBody {
        &mut self.0
    }
}

impl GraphError {
    /// Error `code` with Meta's title, description and HTTP status for it.
    fn code(code: u32) -> Self {
        if matches!(code, 190 | 0) {
            let mut error = Self::auth();
            error.code = code;
            return error;
        }
        Self(Box::new(ErrorBody {
            status: default_status(code),
            code,
            subcode: None,
            message: format!("(#{code}) {}", title(code)),
            kind: "OAuthException",
            details: Some(default_details(code).unwrap_or(title(code)).to_string()),
            user_title: None,
            user_msg: None,
            retry_after: None,
        }))
    }

    /// Code 100, "Invalid parameter", with `details` naming the field.
    fn invalid(details: impl Into<String>) -> Self {
        Self::code(100).details(details)
    }

    fn auth() -> Self {
        Self(Box::new(ErrorBody {
            status: 401,
            code: 190,
            subcode: None,
            message: "Invalid OAuth access token.".into(),
            kind: "OAuthException",
            details: None,
            user_title: None,
            user_msg: None,
            retry_after: None,
        }))
    }

    fn unsupported(method: &Method, id: &str) -> Self {
        let mut error = Self::code(100).subcode(33);
        error.kind = "GraphMethodException";
        error.details = None;
        error.message = format!(
            "Unsupported {} request. Object with ID '{id}' does not exist, cannot be loaded \
             due to missing permissions, or does not support this operation. Please read \
             the Graph API documentation at https://developers.facebook.com/docs/graph-api",
            method.as_str().to_ascii_lowercase()
        );
        error
    }

    fn details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    fn subcode(mut self, subcode: u32) -> Self {
        self.subcode = Some(subcode);
        self
    }

    fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    fn response(&self) -> Response {
        let mut error = Map::new();
        error.insert("message".into(), self.message.clone().into());
        error.insert("type".into(), self.kind.into());
        error.insert("code".into(), self.code.into());
        if let Some(subcode) = self.subcode {
            error.insert("error_subcode".into(), subcode.into());
        }
        if let Some(title) = &self.user_title {
            error.insert("is_transient".into(), false.into());
            error.insert("error_user_title".into(), title.clone().into());
        }
        if let Some(message) = &self.user_msg {
            error.insert("error_user_msg".into(), message.clone().into());
        }
        if let Some(details) = &self.details {
            error.insert(
                "error_data".into(),
                json!({ "messaging_product": "whatsapp", "details": details }),
            );
        }
        error.insert("fbtrace_id".into(), fbtrace_id().into());
        let mut response = json_response(self.status, &json!({ "error": error }));
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        if self.status == 401 {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "OAuth \"Facebook Platform\" \"invalid_token\" \"Invalid OAuth access token.\"",
                ),
            );
        }
        response
    }
}

/// The HTTP status Meta's error-code table gives `code`.
fn default_status(code: u32) -> u16 {
    match code {
        0 | 190 => 401,
        3 | 1 | 131000 | 131016 => 500,
        2 => 503,
        4 | 80007 | 130429 => 429,
        10 | 200..=299 | 368 | 131031 | 130497 => 403,
        132001 => 404,
        _ => 400,
    }
}

/// Meta's title of `code` (the text after `(#code)` in `message`).
fn title(code: u32) -> &'static str {
    match code {
        0 => "AuthException",
        1 => "API Unknown",
        2 => "API Service",
        3 => "API Method",
        4 => "Application request limit reached",
        10 => "Permission Denied",
        33 => "Parameter value is not valid",
        100 => "Invalid parameter",
        190 => "Invalid OAuth access token.",
        368 => "Temporarily blocked for policies violations",
        80007 => "Rate limit issues",
        130429 => "Rate limit hit",
        130472 => "User's number is part of an experiment",
        131000 => "Something went wrong",
        131005 => "Access denied",
        131008 => "Required parameter is missing",
        131009 => "Parameter value is not valid",
        131016 => "Service unavailable",
        131021 => "Recipient cannot be sender",
        131026 => "Message undeliverable",
        131031 => "Business Account locked",
        131042 => "Business eligibility payment issue",
        131045 => "Incorrect certificate",
        131047 => "Re-engagement message",
        131048 => "Spam rate limit hit",
        131049 => "This message was not delivered to maintain healthy ecosystem engagement.",
        131051 => "Unsupported message type",
        131052 => "Media download error",
        131053 => "Media upload error",
        131056 => "(Business Account, Consumer Account) pair rate limit hit",
        132000 => "Number of parameters does not match the expected number of params",
        132001 => "Template name does not exist in the translation",
        132005 => "Translated text too long",
        132007 => "Template Format Character Policy Violated",
        132012 => "Parameter format does not match format in the created template",
        132015 => "Template is Paused",
        132016 => "Template is Disabled",
        133010 => "Phone number Not Registered",
        _ => "An unknown error occurred",
    }
}

fn default_details(code: u32) -> Option<&'static str> {
    Some(match code {
        130429 => {
            "Message failed to send because there were too many messages sent from this \
             phone number in a short period of time."
        }
        131026 => {
            "Message failed to send because the recipient's phone number is not a WhatsApp \
             number, or they have not accepted the latest terms."
        }
        131047 => {
            "Message failed to send because more than 24 hours have passed since the \
             customer last replied to this number."
        }
        131056 => {
            "Message failed to send because there were too many messages sent from this \
             phone number to the same phone number in a short period of time."
        }
        132000 => "The number of variable parameter values does not match the template.",
        132001 => "The template does not exist in the specified language or is not approved.",
        132015 => "The template is paused because of low quality.",
        132016 => "The template is permanently disabled because of low quality.",
        368 => "The account is temporarily blocked for policy violations.",
        _ => return None,
    })
}

// ----- helpers --------------------------------------------------------------------------

fn json_response(status: u16, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = (status_code(status), body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    if let Ok(trace) = HeaderValue::from_str(&fbtrace_id()) {
        headers.insert("x-fb-trace-id", trace);
    }
    response
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn fbtrace_id() -> String {
    let mut rng = rand::rng();
    (0..23)
        .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
        .collect()
}

fn sign(secret: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn digits(text: &str) -> String {
    text.chars().filter(char::is_ascii_digit).collect()
}

fn is_version(segment: &str) -> bool {
    segment.strip_prefix('v').is_some_and(|rest| {
        !rest.is_empty()
            && rest.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && rest.bytes().next().is_some_and(|b| b.is_ascii_digit())
    })
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    let Some(query) = query.filter(|query| !query.is_empty()) else {
        return HashMap::new();
    };
    reqwest::Url::parse(&format!("http://fake.invalid/?{query}"))
        .map(|url| url.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

/// `{{…}}` variables of `text`: byte start, byte end and the trimmed name.
fn variables(text: &str) -> Vec<(usize, usize, &str)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(open) = text.get(from..).and_then(|rest| rest.find("{{")) {
        let start = from + open;
        let Some(close) = text.get(start + 2..).and_then(|rest| rest.find("}}")) else {
            break;
        };
        let end = start + 2 + close + 2;
        let name = text.get(start + 2..end - 2).unwrap_or("").trim();
        if !name.is_empty() && !name.contains('{') {
            found.push((start, end, name));
        }
        from = end;
    }
    found
}

fn body_component(components: &Value) -> Option<&Value> {
    components.as_array()?.iter().find(|component| {
        component
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|kind| kind.eq_ignore_ascii_case("BODY"))
    })
}

fn status_rank(status: &str) -> u64 {
    match status {
        "sent" => 0,
        "delivered" => 1,
        "read" => 2,
        _ => 0,
    }
}

fn conversation_id(phone_number_id: &str, recipient: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(phone_number_id.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(recipient.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn system_time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|duration| duration.as_secs())
        .unwrap_or(0)
}
