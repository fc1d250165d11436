//! Outbound webhooks to tenants, per the Standard Webhooks specification: each event
//! is POSTed to every enabled endpoint subscribed to its type, with `webhook-id` (stable
//! across retries), `webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC>`;
//! two signatures while a rotated secret is still valid). Each delivery is a job: it is
//! retried on failure with a growing schedule that spans more than a day (5 s, 5 min,
//! 30 min, 2 h, 5 h, 10 h, 10 h), each attempt recorded; when a delivery exhausts its
//! schedule the endpoint has failed for over 24 hours and is disabled with the reason.
//! A `410 Gone` disables the endpoint at once.
//!
//! Events are queued in the same transaction as the change they report where the
//! change is made in one (inbound messages, delivery statuses), so a crash cannot lose
//! them. Which endpoints a tenant has is cached for a second per tenant.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::jobs::{JobFailure, Jobs};
use crate::marketplace::Marketplace;
use crate::storage::{Attempt, Endpoint, Job, NewJob, StorageError, TenantDb, now_ms};
use crate::webhook_signing::WebhookSecret;

/// Event types tenants can subscribe to.
pub const EVENT_TYPES: [&str; 11] = [
    "message.received",
    "message.sent",
    "message.delivered",
    "message.read",
    "message.failed",
    "contact.created",
    "contact.opted_out",
    "contact.opted_in",
    "template.status",
    "conversation.assigned",
    "conversation.closed",
];

/// The default retry schedule (after the first attempt).
pub const RETRY_SCHEDULE: [u64; 7] = [5, 300, 1800, 7200, 18000, 36000, 36000];

type EndpointList = Arc<Vec<(String, Vec<String>)>>;

struct Inner {
    marketplace: Marketplace,
    jobs: Jobs,
    client: reqwest::Client,
    allow_private: bool,
    schedule: Vec<Duration>,
    cache: Mutex<HashMap<String, (Instant, EndpointList)>>,
}

/// The outbound webhook service. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

/// The endpoints of one tenant, for queueing events.
pub struct Subscribed {
    endpoints: EndpointList,
}

impl Subscribed {
    /// The `contact.created` deliveries of contact `contact_id` (`data`), created by
    /// `source`: `api`, `import`, `flow`, `message` (a send to a new number) or the
    /// channel of an inbound message (`whatsapp`).
    pub fn contact_created(
        &self,
        tenant_id: &str,
        source: &str,
        contact_id: &str,
        data: &crate::storage::ContactData,
    ) -> Vec<NewJob> {
        self.fanout(
            tenant_id,
            "contact.created",
            json!({
                "contact_id": contact_id,
                "name": data.name,
                "phone": data.phone,
                "email": data.email,
                "tags": data.tags,
                "source": source,
            }),
        )
    }

    /// One delivery job per endpoint subscribed to `event_type` (none when nobody is).
    pub fn fanout(&self, tenant_id: &str, event_type: &str, data: Value) -> Vec<NewJob> {
        let wanted: Vec<&String> = self
            .endpoints
            .iter()
            .filter(|(_, events)| events.iter().any(|e| e == "*" || e == event_type))
            .map(|(id, _)| id)
            .collect();
        if wanted.is_empty() {
            return Vec::new();
        }
        let event_id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let body = json!({
            "type": event_type,
            "timestamp": utc_rfc3339(now_ms()),
            "data": data,
        });
        let tenant = crate::ids::TenantId::new(tenant_id);
        wanted
            .into_iter()
            .map(|endpoint_id| {
                // The whole endpoint id: its first 12 digits are only its creation
                // millisecond (UUIDv7), shared by endpoints created together.
                let delivery_id = format!("{event_id}_{}", endpoint_id.replace('-', ""));
                let mut job = NewJob::new(
                    "webhooks",
                    "webhook.deliver",
                    Some(&tenant),
                    json!({
                        "delivery_id": delivery_id,
                        "event_id": event_id,
                        "endpoint_id": endpoint_id,
                        "type": event_type,
                        "body": body,
                    }),
                );
                job.idempotency_key = Some(format!("webhook:{delivery_id}"));
                job.max_attempts = 100;
                job
            })
            .collect()
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC (`2026-11-24T13:05:09.123Z`).
pub fn utc_rfc3339(unix_ms: i64) -> String {
    let days = unix_ms.div_euclid(86_400_000);
    let ms_of_day = unix_ms.rem_euclid(86_400_000);
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

/// Why an endpoint URL is refused.
pub fn check_url(url: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|error| format!("`url` is not a URL: {error}"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err("`url` must be http:// or https://".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("`url` has no host".into());
    }
    if url.len() > 2048 {
        return Err("`url` is longer than 2048 characters".into());
    }
    Ok(parsed)
}

/// Whether webhooks refuse `ip`: the outbound HTTP rules of the plugins (loopback,
/// private, link-local and cloud metadata, CGNAT, unique-local, NAT64 of those, …).
fn private(ip: IpAddr) -> bool {
    !crate::outbound_http::is_public_address(ip)
}

/// The client deliveries are sent with. The target is checked before sending (a clear
/// error for the delivery log), and again when connecting unless `allow_private`: a
/// name that resolved to a public address for the check could resolve to a private one
/// for the request (DNS rebinding).
fn delivery_client(allow_private: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none());
    let builder = if allow_private {
        builder
    } else {
        builder.dns_resolver(crate::outbound_http::PublicOnlyResolver)
    };
    builder.build().unwrap_or_default()
}

impl Webhooks {
    /// The service; registers the `webhook.deliver` job. Private, loopback and
    /// link-local targets are refused unless `allow_private` (operators' own networks,
    /// tests); `POSTDOG_WEBHOOK_RETRY_SECONDS` (comma-separated) replaces the schedule.
    pub fn new(marketplace: Marketplace, jobs: Jobs, allow_private: bool) -> Self {
        let schedule = std::env::var("POSTDOG_WEBHOOK_RETRY_SECONDS")
            .ok()
            .and_then(|text| {
                text.split(',')
                    .map(|part| part.trim().parse::<f64>().ok().map(Duration::from_secs_f64))
                    .collect::<Option<Vec<_>>>()
            })
            .filter(|schedule| !schedule.is_empty())
            .unwrap_or_else(|| {
                RETRY_SCHEDULE
                    .iter()
                    .map(|s| Duration::from_secs(*s))
                    .collect()
            });
        let client = delivery_client(allow_private);
        let webhooks = Self {
            inner: Arc::new(Inner {
                marketplace,
                jobs: jobs.clone(),
                client,
                allow_private,
                schedule,
                cache: Mutex::default(),
            }),
        };
        let this = webhooks.clone();
        jobs.register("webhook.deliver", move |job| {
            let this = this.clone();
            async move { this.deliver(job).await }
        });
        webhooks
    }

    /// Forgets the cached endpoint list of a tenant (after a change).
    pub fn invalidate(&self, tenant_id: &str) {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant_id);
    }

    /// The tenant's enabled endpoints (cached for a second).
    pub async fn subscriptions(&self, db: &TenantDb) -> Result<Subscribed, StorageError> {
        let tenant = db.tenant_id().as_str();
        if let Some((at, endpoints)) = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            && at.elapsed() < Duration::from_secs(1)
        {
            return Ok(Subscribed {
                endpoints: endpoints.clone(),
            });
        }
        let endpoints: EndpointList = Arc::new(
            db.endpoints()
                .await?
                .into_iter()
                .filter(|endpoint| endpoint.enabled)
                .map(|endpoint| (endpoint.id, endpoint.events))
                .collect(),
        );
        let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(tenant.to_string(), (Instant::now(), endpoints.clone()));
        Ok(Subscribed { endpoints })
    }

    /// Queues `event_type` with `data` for every subscribed endpoint of the tenant.
    pub async fn emit(
        &self,
        db: &TenantDb,
        event_type: &str,
        data: Value,
    ) -> Result<(), StorageError> {
        let jobs = self
            .subscriptions(db)
            .await?
            .fanout(db.tenant_id().as_str(), event_type, data);
        for job in &jobs {
            self.inner.jobs.storage().enqueue_job(job).await?;
        }
        if !jobs.is_empty() {
            self.inner.jobs.wake();
        }
        Ok(())
    }

    /// A fresh secret, sealed for storage, and its text (shown to the tenant).
    pub fn new_secret(&self, tenant_id: &str) -> Result<(String, String), String> {
        let secret = WebhookSecret::generate().map_err(|error| error.to_string())?;
        let text = secret.as_str().to_string();
        Ok((self.seal(tenant_id, &text), text))
    }

    fn seal(&self, tenant_id: &str, secret: &str) -> String {
        self.inner
            .marketplace
            .seal_text(&format!("webhook:{tenant_id}"), "secret", secret)
    }

    /// Opens an endpoint's sealed secret.
    pub fn open(&self, tenant_id: &str, sealed: &str) -> Result<String, String> {
        self.inner
            .marketplace
            .open_text(&format!("webhook:{tenant_id}"), "secret", sealed)
            .map_err(|error| error.to_string())
    }

    /// Seals a secret for the tenant.
    pub fn seal_for(&self, tenant_id: &str, secret: &str) -> String {
        self.seal(tenant_id, secret)
    }

    fn secrets_of(
        &self,
        tenant_id: &str,
        endpoint: &Endpoint,
    ) -> Result<Vec<WebhookSecret>, String> {
        let mut secrets = vec![
            WebhookSecret::parse(&self.open(tenant_id, &endpoint.sealed_secret)?)
                .map_err(|error| error.to_string())?,
        ];
        if let (Some(previous), Some(until)) =
            (&endpoint.sealed_previous, endpoint.previous_expires_at)
            && until > now_ms()
        {
            secrets.push(
                WebhookSecret::parse(&self.open(tenant_id, previous)?)
                    .map_err(|error| error.to_string())?,
            );
        }
        Ok(secrets)
    }

    async fn check_target(&self, url: &url::Url) -> Result<(), String> {
        if self.inner.allow_private {
            return Ok(());
        }
        let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
        let port = url.port_or_known_default().unwrap_or(443);
        let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|error| format!("cannot resolve {host}: {error}"))?
                .map(|address| address.ip())
                .collect(),
        };
        if let Some(ip) = addresses.into_iter().find(|ip| private(*ip)) {
            return Err(format!(
                "{host} resolves to {ip}, a private or loopback address; webhooks are only sent to public addresses"
            ));
        }
        Ok(())
    }

    /// The `webhook.deliver` job: one attempt.
    async fn deliver(&self, job: Job) -> Result<(), JobFailure> {
        let tenant = job
            .tenant_id
            .clone()
            .ok_or_else(|| JobFailure::permanent("no tenant"))?;
        let payload = &job.payload;
        let text = |name: &str| payload[name].as_str().unwrap_or_default().to_string();
        let (delivery_id, endpoint_id, event_type) =
            (text("delivery_id"), text("endpoint_id"), text("type"));
        let db = self
            .inner
            .jobs
            .storage()
            .tenant(&crate::ids::TenantId::new(&tenant));
        let Some(endpoint) = db.endpoint(&endpoint_id).await? else {
            return Ok(()); // deleted
        };
        let body = payload["body"].clone();
        let delivery = db
            .ensure_delivery(&delivery_id, &endpoint_id, &event_type, &body)
            .await?;
        if delivery.state != "pending" {
            return Ok(());
        }
        let started = Instant::now();
        let attempted_at = now_ms();
        let attempt_number = usize::try_from(delivery.attempts).unwrap_or(0);
        if !endpoint.enabled {
            let attempt = Attempt {
                attempted_at,
                status_code: None,
                error: Some(format!(
                    "not sent: the endpoint is disabled ({})",
                    endpoint
                        .disabled_reason
                        .as_deref()
                        .unwrap_or("no reason given")
                )),
                duration_ms: 0,
            };
            db.record_attempt(&delivery_id, &attempt, "failed", None)
                .await?;
            return Ok(());
        }
        let outcome = self.attempt(&tenant, &endpoint, &delivery_id, &body).await;
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let (status_code, error) = match &outcome {
            Ok(status) if (200..300).contains(status) => (Some(i64::from(*status)), None),
            Ok(status) => (
                Some(i64::from(*status)),
                Some(format!("the endpoint answered {status}")),
            ),
            Err(error) => (None, Some(error.clone())),
        };
        let attempt = Attempt {
            attempted_at,
            status_code,
            error: error.clone(),
            duration_ms,
        };
        if error.is_none() {
            db.record_attempt(&delivery_id, &attempt, "delivered", None)
                .await?;
            db.set_endpoint_failing(&endpoint_id, false).await?;
            return Ok(());
        }
        if outcome == Ok(410) {
            db.record_attempt(&delivery_id, &attempt, "failed", None)
                .await?;
            db.disable_endpoint(&endpoint_id, "the endpoint answered 410 Gone")
                .await?;
            self.invalidate(&tenant);
            return Ok(());
        }
        db.set_endpoint_failing(&endpoint_id, true).await?;
        match self.inner.schedule.get(attempt_number) {
            Some(wait) => {
                let next = now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
                db.record_attempt(&delivery_id, &attempt, "pending", Some(next))
                    .await?;
                Err(JobFailure::retry_after(error.unwrap_or_default(), *wait))
            }
            None => {
                db.record_attempt(&delivery_id, &attempt, "failed", None)
                    .await?;
                let reason = format!(
                    "every attempt to deliver {delivery_id} failed for {}; last: {}",
                    describe(self.inner.schedule.iter().sum()),
                    error.unwrap_or_default()
                );
                db.disable_endpoint(&endpoint_id, &reason).await?;
                self.invalidate(&tenant);
                tracing::warn!(tenant, endpoint_id, reason, "webhook endpoint disabled");
                Ok(())
            }
        }
    }

    async fn attempt(
        &self,
        tenant: &str,
        endpoint: &Endpoint,
        delivery_id: &str,
        body: &Value,
    ) -> Result<u16, String> {
        let url = check_url(&endpoint.url)?;
        self.check_target(&url).await?;
        let secrets = self.secrets_of(tenant, endpoint)?;
        let bytes = serde_json::to_vec(body).map_err(|error| error.to_string())?;
        let timestamp = now_ms() / 1000;
        let refs: Vec<&WebhookSecret> = secrets.iter().collect();
        let signature =
            crate::webhook_signing::signature_header(&refs, delivery_id, timestamp, &bytes);
        let response = self
            .inner
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("user-agent", "PostDog-Webhooks/1")
            .header("webhook-id", delivery_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(bytes)
            .send()
            .await
            .map_err(|error| format!("request failed: {error}"))?;
        Ok(response.status().as_u16())
    }
}

fn describe(total: Duration) -> String {
    let hours = total.as_secs_f64() / 3600.0;
    if hours >= 1.0 {
        format!("{hours:.1} hours")
    } else {
        format!("{} seconds", total.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_created_in_the_same_millisecond_get_their_own_deliveries() {
        // Two UUIDv7 ids of one millisecond: the same first 12 hex digits.
        let first = "01a24918-c258-7369-8ae4-00629a450da8";
        let second = "01a24918-c258-7f00-9b11-3c7d2e5a4f10";
        let subscribed = Subscribed {
            endpoints: Arc::new(vec![
                (first.to_string(), vec!["*".to_string()]),
                (second.to_string(), vec!["message.received".to_string()]),
            ]),
        };
        let jobs = subscribed.fanout("t1", "message.received", json!({"n": 1}));
        let keys: std::collections::HashSet<_> = jobs
            .iter()
            .filter_map(|job| job.idempotency_key.clone())
            .collect();
        assert_eq!(jobs.len(), 2);
        assert_eq!(keys.len(), 2, "{keys:?}");
        let endpoints: Vec<_> = jobs
            .iter()
            .map(|job| job.payload["endpoint_id"].clone())
            .collect();
        assert_eq!(endpoints, [json!(first), json!(second)]);
        assert_eq!(jobs[0].payload["event_id"], jobs[1].payload["event_id"]);
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(utc_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_rfc3339(1_614_265_330_123), "2021-02-25T15:02:10.123Z");
        assert_eq!(utc_rfc3339(1_795_000_000_000), "2026-11-18T11:06:40.000Z");
    }

    #[test]
    fn default_schedule_spans_more_than_a_day() {
        let total: u64 = RETRY_SCHEDULE.iter().sum();
        assert!(total > 24 * 3600, "{total}");
    }

    /// The name is resolved again when connecting, public addresses only: a target
    /// that passed the check cannot then reach a private address.
    #[tokio::test]
    async fn the_delivery_client_connects_to_public_addresses_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listener");
        let url = format!(
            "http://localhost:{}/",
            listener.local_addr().expect("addr").port()
        );
        let refused = delivery_client(false)
            .post(&url)
            .send()
            .await
            .expect_err("a loopback name is refused");
        let chain = std::iter::successors(Some(&refused as &dyn std::error::Error), |error| {
            error.source()
        })
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
        assert!(chain.contains("no public address"), "{chain}");
    }

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "100.64.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "0.1.2.3",
        ] {
            assert!(private(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:4860:4860::8888", "64:ff9b::808:808"] {
            assert!(!private(ip.parse().expect("ip")), "{ip}");
        }
    }
}
