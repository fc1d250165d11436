//! The triggers that do not come from messages: the flow's own webhook URL, changes to
//! contacts, and cron schedules. Each start carries a trigger key where one exists (the
//! caller's `Idempotency-Key`, the schedule's fire time), so retries and restarts never
//! start a second run for the same event.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Audience, ContactEventKind, Flows, Graph, TriggerKind, parse_graph};
use crate::jobs::JobFailure;
use crate::storage::{
    ContactChange, ContactData, ContactWriteError, FlowVersion, Job, NewJob, Run, StorageError,
    TenantDb, now_ms,
};
use serde_json::{Value, json};

/// The header a flow's webhook callers sign with: `sha256=<hex HMAC-SHA256 of the raw
/// body, keyed with the flow's webhook secret>`.
pub const SIGNATURE_HEADER: &str = "x-postdog-signature";

/// Contacts started per page of a scheduled flow's audience.
const AUDIENCE_PAGE: u32 = 500;

/// Why a call to a flow's webhook URL started no run.
#[derive(Debug, thiserror::Error)]
pub enum WebhookTriggerError {
    /// No flow has this URL.
    #[error("no flow has this webhook URL")]
    UnknownUrl,
    /// The signature is missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// The flow cannot be started now (disabled, unpublished, no webhook trigger).
    #[error("{0}")]
    NotLive(String),
    /// The body or the contact in it is unusable.
    #[error("{0}")]
    Invalid(String),
    /// The contact is in an active run of this flow and re-entry is off.
    #[error("the contact is already in an active run of this flow (re-entry is off)")]
    AlreadyRunning,
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A run a webhook call started (or had started before, for a repeated idempotency key).
#[derive(Debug)]
pub struct WebhookStart {
    /// The run.
    pub run: Run,
    /// The call repeated an earlier one's idempotency key: nothing new was started.
    pub replayed: bool,
}

fn schedule_job(db: &TenantDb, flow_id: &str, version: i64, trigger_id: &str, at: i64) -> NewJob {
    let mut job = NewJob::new(
        "flows",
        "flow.schedule",
        Some(db.tenant_id()),
        json!({ "flow_id": flow_id, "version": version, "trigger_id": trigger_id, "at": at }),
    );
    job.run_at = at;
    job.max_attempts = 10;
    job.idempotency_key = Some(format!(
        "flow.schedule:{flow_id}:{version}:{trigger_id}:{at}"
    ));
    job
}

/// Whether `signature` (`sha256=<hex>`) signs `body` with `secret`, in constant time.
fn signature_matches(secret: &str, signature: &str, body: &[u8]) -> bool {
    let Some(hex_digest) = signature.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(digest) = hex::decode(hex_digest) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&digest).is_ok()
}

impl Flows {
    fn webhook_secret_scope(tenant_id: &str, flow_id: &str) -> String {
        format!("flow-webhook:{tenant_id}:{flow_id}")
    }

    /// Generates, seals and stores a new HMAC secret for the flow's webhook trigger and
    /// returns it (shown once); `None` if there is no such flow.
    pub async fn new_webhook_secret(
        &self,
        db: &TenantDb,
        flow_id: &str,
    ) -> Result<Option<String>, StorageError> {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes).map_err(|error| StorageError::Query {
            context: "generating a webhook secret",
            source: sqlx::Error::Protocol(error.to_string()),
        })?;
        let secret = format!("fwhsec_{}", hex::encode(bytes));
        let sealed = self.inner.marketplace.seal_text(
            &Self::webhook_secret_scope(db.tenant_id().as_str(), flow_id),
            "secret",
            &secret,
        );
        Ok(db
            .set_flow_webhook_secret(flow_id, Some(&sealed))
            .await?
            .then_some(secret))
    }

    /// Starts a run from a call to `/hooks/flows/{token}`.
    pub async fn start_by_webhook(
        &self,
        token: &str,
        signature: Option<&str>,
        idempotency_key: Option<&str>,
        body: &[u8],
    ) -> Result<WebhookStart, WebhookTriggerError> {
        let storage = self.inner.jobs.storage();
        let (tenant_id, flow) = storage
            .flow_by_webhook_token(token)
            .await?
            .ok_or(WebhookTriggerError::UnknownUrl)?;
        let tenant = storage
            .get_tenant(&crate::ids::TenantId::new(&tenant_id))
            .await?
            .ok_or(WebhookTriggerError::UnknownUrl)?;
        if let Some(sealed) = &flow.webhook_secret {
            let secret = self
                .inner
                .marketplace
                .open_text(
                    &Self::webhook_secret_scope(&tenant_id, &flow.id),
                    "secret",
                    sealed,
                )
                .map_err(|error| {
                    WebhookTriggerError::Storage(StorageError::Query {
                        context: "opening a flow's webhook secret",
                        source: sqlx::Error::Protocol(error.to_string()),
                    })
                })?;
            match signature {
                None => {
                    return Err(WebhookTriggerError::Unauthorized(format!(
                        "this flow's webhook requires a signature: send `{SIGNATURE_HEADER}: sha256=<hex HMAC-SHA256 of the body with the flow's webhook secret>`"
                    )));
                }
                Some(signature) if !signature_matches(&secret, signature, body) => {
                    return Err(WebhookTriggerError::Unauthorized(format!(
                        "the `{SIGNATURE_HEADER}` signature does not match the body; sign the raw body with the flow's current webhook secret"
                    )));
                }
                Some(_) => {}
            }
        }
        if tenant.status != "active" {
            return Err(WebhookTriggerError::NotLive(
                "the flow's workspace is suspended".into(),
            ));
        }
        if !flow.enabled {
            return Err(WebhookTriggerError::NotLive("the flow is disabled".into()));
        }
        let version_number = flow.published_version.ok_or_else(|| {
            WebhookTriggerError::NotLive("the flow has no published version yet".into())
        })?;
        let db = self.storage_db(&tenant_id);
        let version = db
            .flow_version(&flow.id, version_number)
            .await?
            .ok_or_else(|| WebhookTriggerError::NotLive("the flow version is gone".into()))?;
        let graph = parse_graph(&version.graph).map_err(|_| {
            WebhookTriggerError::NotLive("the published graph is unreadable".into())
        })?;
        let Some((trigger_id, contact_pointer, create_contact)) =
            graph
                .triggers
                .iter()
                .find_map(|trigger| match &trigger.kind {
                    TriggerKind::Webhook {
                        contact,
                        create_contact,
                    } => Some((trigger.id.clone(), contact.clone(), *create_contact)),
                    _ => None,
                })
        else {
            return Err(WebhookTriggerError::NotLive(
                "the published version of this flow has no webhook trigger".into(),
            ));
        };
        let payload: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(body).map_err(|error| {
                WebhookTriggerError::Invalid(format!("the body is not JSON: {error}"))
            })?
        };
        let key = idempotency_key
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .map(|key| format!("webhook:{key}"));
        if let Some(key) = &key {
            if key.len() > 300 {
                return Err(WebhookTriggerError::Invalid(
                    "the idempotency key is longer than 300 characters".into(),
                ));
            }
            if let Some(run) = db.run_by_trigger_key(&flow.id, key).await? {
                return Ok(WebhookStart {
                    run,
                    replayed: true,
                });
            }
        }
        let contact_id = match &contact_pointer {
            Some(pointer) => Some(
                self.webhook_contact(&db, &tenant, &payload, pointer, create_contact)
                    .await?,
            ),
            None => None,
        };
        let trigger = json!({ "type": "webhook", "trigger_id": trigger_id, "payload": payload });
        match self
            .start(
                &db,
                &version,
                &graph,
                &trigger_id,
                contact_id.as_deref(),
                trigger,
                key.as_deref(),
            )
            .await?
        {
            Some(run) => Ok(WebhookStart {
                run,
                replayed: false,
            }),
            None => match &key {
                Some(key) => match db.run_by_trigger_key(&flow.id, key).await? {
                    Some(run) => Ok(WebhookStart {
                        run,
                        replayed: true,
                    }),
                    None => Err(WebhookTriggerError::AlreadyRunning),
                },
                None => Err(WebhookTriggerError::AlreadyRunning),
            },
        }
    }

    /// The contact a webhook body names at `pointer`: a contact id, a phone number or an
    /// email, created if unknown and `create` is on.
    async fn webhook_contact(
        &self,
        db: &TenantDb,
        tenant: &crate::storage::Tenant,
        payload: &Value,
        pointer: &str,
        create: bool,
    ) -> Result<String, WebhookTriggerError> {
        let value = match payload.pointer(pointer) {
            Some(Value::String(text)) if !text.trim().is_empty() => text.trim().to_string(),
            Some(Value::Number(number)) => number.to_string(),
            _ => {
                return Err(WebhookTriggerError::Invalid(format!(
                    "the body has no contact at `{pointer}`: the flow's webhook trigger reads a contact id, phone number or email from there"
                )));
            }
        };
        if db.get_contact(&value).await?.is_some() {
            return Ok(value);
        }
        let (phone, email) = if value.contains('@') {
            let email = crate::contacts::normalize_email(&value)
                .map_err(|error| WebhookTriggerError::Invalid(error.to_string()))?;
            (None, Some(email))
        } else {
            let phone = crate::contacts::normalize_phone(&value, &tenant.default_country)
                .map_err(|error| WebhookTriggerError::Invalid(error.to_string()))?;
            (Some(phone), None)
        };
        if let Some(id) = db.contact_id_by(phone.as_deref(), email.as_deref()).await? {
            return Ok(id);
        }
        if !create {
            return Err(WebhookTriggerError::Invalid(format!(
                "no contact has `{value}`; set `create_contact` on the trigger to create one"
            )));
        }
        let data = ContactData {
            name: None,
            phone,
            email,
            tags: Vec::new(),
            fields: json!({}),
        };
        match self.inner.messaging.create_contact(db, &data, "flow").await {
            Ok(contact) => Ok(contact.id),
            // Created meanwhile by a concurrent call.
            Err(ContactWriteError::Duplicate { existing_id, .. }) => Ok(existing_id),
            Err(ContactWriteError::Storage(error)) => Err(error.into()),
        }
    }

    /// Queues the next firing of each schedule trigger of the flow's published version
    /// (after a publish, or when the flow is enabled again). Firings of older versions
    /// find themselves outdated and stop.
    pub async fn arm_schedules(&self, db: &TenantDb, flow_id: &str) -> Result<(), StorageError> {
        let Some(flow) = db.flow(flow_id).await? else {
            return Ok(());
        };
        let (true, Some(number)) = (flow.enabled, flow.published_version) else {
            return Ok(());
        };
        let Some(version) = db.flow_version(flow_id, number).await? else {
            return Ok(());
        };
        let Ok(graph) = parse_graph(&version.graph) else {
            return Ok(());
        };
        let now = now_ms();
        for trigger in &graph.triggers {
            if let Some(at) = self.next_fire(db, &trigger.kind, now).await? {
                self.inner
                    .jobs
                    .storage()
                    .enqueue_job(&schedule_job(db, flow_id, number, &trigger.id, at))
                    .await?;
            }
        }
        self.inner.jobs.wake();
        Ok(())
    }

    /// When a schedule trigger fires next after `after`, in its zone or the tenant's.
    async fn next_fire(
        &self,
        db: &TenantDb,
        kind: &TriggerKind,
        after: i64,
    ) -> Result<Option<i64>, StorageError> {
        let TriggerKind::Schedule {
            schedule, timezone, ..
        } = kind
        else {
            return Ok(None);
        };
        let zone_name = match timezone {
            Some(zone) => zone.clone(),
            None => self
                .inner
                .jobs
                .storage()
                .get_tenant(db.tenant_id())
                .await?
                .map_or_else(|| "UTC".to_string(), |tenant| tenant.timezone),
        };
        let zone = crate::cron::time_zone(&zone_name).unwrap_or(jiff::tz::TimeZone::UTC);
        Ok(schedule.next_after(after, &zone))
    }

    /// The `flow.schedule` job: queues the next firing first (so a failure below cannot
    /// end the schedule), then starts this firing's runs, each under a key made of the
    /// firing time (and contact), so a retried job starts nothing twice.
    pub(super) async fn run_schedule(&self, job: Job) -> Result<(), JobFailure> {
        let tenant = job
            .tenant_id
            .clone()
            .ok_or_else(|| JobFailure::permanent("no tenant"))?;
        let flow_id = job.payload["flow_id"].as_str().unwrap_or_default();
        let trigger_id = job.payload["trigger_id"].as_str().unwrap_or_default();
        let number = job.payload["version"].as_i64().unwrap_or(-1);
        let at = job.payload["at"].as_i64().unwrap_or(0);
        let db = self.storage_db(&tenant);
        let Some(flow) = db.flow(flow_id).await? else {
            return Ok(()); // deleted
        };
        if !flow.enabled || flow.published_version != Some(number) {
            return Ok(()); // disabled, or a newer version armed its own schedule
        }
        let Some(version) = db.flow_version(flow_id, number).await? else {
            return Ok(());
        };
        let graph =
            parse_graph(&version.graph).map_err(|_| JobFailure::permanent("unreadable graph"))?;
        let Some(trigger) = graph.triggers.iter().find(|t| t.id == trigger_id) else {
            return Ok(());
        };
        let TriggerKind::Schedule { cron, audience, .. } = &trigger.kind else {
            return Ok(());
        };
        if let Some(next) = self.next_fire(&db, &trigger.kind, at.max(now_ms())).await? {
            self.inner
                .jobs
                .storage()
                .enqueue_job(&schedule_job(&db, flow_id, number, trigger_id, next))
                .await?;
        }
        let payload = json!({
            "type": "schedule", "trigger_id": trigger_id, "cron": cron,
            "scheduled_at": at, "fired_at": now_ms(),
        });
        let filter_json = match audience {
            Audience::Nobody => {
                let key = format!("schedule:{trigger_id}:{at}");
                self.start(&db, &version, &graph, trigger_id, None, payload, Some(&key))
                    .await?;
                return Ok(());
            }
            Audience::Tag(tag) => json!({"attribute": "tag", "op": "has", "value": tag}),
            Audience::Segment(segment_id) => match db.get_segment(segment_id).await? {
                Some(segment) => segment.expression,
                None => {
                    return Err(JobFailure::permanent(format!(
                        "the audience segment {segment_id} no longer exists"
                    )));
                }
            },
        };
        let fields = db.custom_fields().await?;
        let filter = crate::segments::parse(&filter_json, &fields).map_err(|error| {
            JobFailure::permanent(format!("the audience filter is invalid: {}", error.message))
        })?;
        self.start_audience(&db, &version, &graph, trigger_id, &filter, &payload, at)
            .await?;
        Ok(())
    }

    /// Starts a run for every contact matching `filter`, page by page.
    #[allow(clippy::too_many_arguments)]
    async fn start_audience(
        &self,
        db: &TenantDb,
        version: &FlowVersion,
        graph: &Graph,
        trigger_id: &str,
        filter: &crate::segments::Expr,
        payload: &Value,
        at: i64,
    ) -> Result<(), StorageError> {
        let mut after: Option<String> = None;
        loop {
            let page = db
                .list_contacts(filter, after.as_deref(), AUDIENCE_PAGE)
                .await?;
            for contact in &page {
                let key = format!("schedule:{trigger_id}:{at}:{}", contact.id);
                self.start(
                    db,
                    version,
                    graph,
                    trigger_id,
                    Some(&contact.id),
                    payload.clone(),
                    Some(&key),
                )
                .await?;
            }
            match page.last() {
                Some(last) if page.len() == AUDIENCE_PAGE as usize => {
                    after = Some(last.id.clone());
                }
                _ => return Ok(()),
            }
        }
    }

    /// Starts runs of live flows whose contact-event triggers match a committed change.
    pub(super) async fn on_contact_change(
        &self,
        tenant_id: &str,
        contact_id: &str,
        change: &ContactChange,
    ) -> Result<(), StorageError> {
        let db = self.storage_db(tenant_id);
        let live = self.live(&db).await?;
        for (version, graph) in &live.published {
            for trigger in &graph.triggers {
                let TriggerKind::ContactEvent {
                    event,
                    tag,
                    field,
                    channel,
                } = &trigger.kind
                else {
                    continue;
                };
                let detail = match (event, change) {
                    (ContactEventKind::Created, ContactChange::Created) => json!({}),
                    (ContactEventKind::TagAdded, ContactChange::TagAdded(added))
                    | (ContactEventKind::TagRemoved, ContactChange::TagRemoved(added))
                        if tag
                            .as_ref()
                            .is_none_or(|tag| tag.eq_ignore_ascii_case(added)) =>
                    {
                        json!({ "tag": added })
                    }
                    (
                        ContactEventKind::FieldChanged,
                        ContactChange::FieldChanged {
                            field: changed,
                            old,
                            new,
                        },
                    ) if field.as_ref().is_none_or(|field| field == changed) => {
                        json!({ "field": changed, "old": old, "new": new })
                    }
                    (
                        kind @ (ContactEventKind::OptedIn | ContactEventKind::OptedOut),
                        ContactChange::Consent {
                            channel: changed,
                            status,
                        },
                    ) if status == kind.as_str()
                        && channel.as_ref().is_none_or(|channel| channel == changed) =>
                    {
                        json!({ "channel": changed })
                    }
                    _ => continue,
                };
                let mut payload = json!({
                    "type": "contact_event", "trigger_id": trigger.id, "event": event.as_str(),
                });
                if let (Some(payload), Some(detail)) = (payload.as_object_mut(), detail.as_object())
                {
                    payload.extend(detail.clone());
                }
                self.start(
                    &db,
                    version,
                    graph,
                    &trigger.id,
                    Some(contact_id),
                    payload,
                    None,
                )
                .await?;
                break; // one run per flow per change
            }
        }
        Ok(())
    }

    /// Listens to committed contact changes for the life of the process.
    pub(super) fn listen_to_contact_changes(&self) {
        let Some(mut changes) = self.inner.jobs.storage().subscribe_contact_changes() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            while let Some((tenant_id, contact_id, change)) = changes.recv().await {
                if let Err(error) = this
                    .on_contact_change(&tenant_id, &contact_id, &change)
                    .await
                {
                    tracing::warn!(%error, tenant_id, contact_id, "contact-event triggers failed");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_on_the_raw_body() {
        let body = br#"{"order":42}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"fwhsec_test").expect("key");
        mac.update(body);
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert!(signature_matches("fwhsec_test", &good, body));
        assert!(!signature_matches("fwhsec_other", &good, body));
        assert!(!signature_matches("fwhsec_test", &good, br#"{"order":43}"#));
        assert!(!signature_matches("fwhsec_test", &good[7..], body));
        assert!(!signature_matches("fwhsec_test", "sha256=zz", body));
    }
}
