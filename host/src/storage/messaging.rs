//! Conversations and messages: what customers sent (deduplicated by the provider's
//! message id, since providers redeliver for days), what the tenant sent (through the
//! outbox: a message row and its send job written in one transaction), and each outbound
//! message's delivery state, which only moves forward whatever order status webhooks
//! arrive in. Statuses for a provider id not stored yet wait in `early_statuses`.

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use super::filter_sql::{Bind, Sql};
use super::is_unique_violation;
use super::jobs::insert_job;
use super::{NewJob, QueryContext, Storage, StorageError, TenantDb, now_ms};

/// How long a customer's message keeps the customer-service window open.
pub const WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

/// A conversation: one contact on one channel install.
#[derive(Debug, Clone, Serialize)]
pub struct Conversation {
    /// Its id.
    pub id: String,
    /// The channel install.
    pub install_id: String,
    /// The channel, for example `whatsapp`.
    pub channel: String,
    /// The contact.
    pub contact_id: String,
    /// `open` or `closed`.
    pub status: String,
    /// The agent it is assigned to, if any.
    pub assignee: Option<String>,
    /// Inbound messages since an agent last read it.
    pub unread: i64,
    /// Until when free-form messages may be sent (Unix ms), if the contact ever wrote.
    pub window_expires_at: Option<i64>,
    /// Whether the customer-service window is open now.
    pub window_open: bool,
    /// The last message's time, Unix ms.
    pub last_message_at: i64,
    /// The contact's last message's time, Unix ms.
    pub last_inbound_at: Option<i64>,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Last changed, Unix ms.
    pub updated_at: i64,
}

/// A message, in or out.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// Its id (also the idempotency key towards the provider).
    pub id: String,
    /// Its conversation.
    pub conversation_id: String,
    /// The contact.
    pub contact_id: String,
    /// The channel install.
    pub install_id: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// text, template, media, interactive, location, contacts, reaction, …
    pub kind: String,
    /// The content as JSON.
    pub content: Value,
    /// The provider's id (`wamid…`), once known.
    pub provider_message_id: Option<String>,
    /// The provider id of the message this one replies to.
    pub reply_to: Option<String>,
    /// received (inbound); queued, accepted, sent, delivered, read, failed (outbound).
    pub status: String,
    /// Why it failed, as JSON (`code`, `message`, …).
    pub error: Option<Value>,
    /// `service` or `marketing`.
    pub purpose: String,
    /// Who sent it (an API key id), for outbound messages.
    pub sent_by: Option<String>,
    /// The provider's timestamp of the message, Unix ms.
    pub provider_at: Option<i64>,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Last changed, Unix ms.
    pub updated_at: i64,
    /// When the provider reported it sent.
    pub sent_at: Option<i64>,
    /// When it reached the device.
    pub delivered_at: Option<i64>,
    /// When it was read.
    pub read_at: Option<i64>,
    /// When it failed.
    pub failed_at: Option<i64>,
}

/// One entry of a message's status history.
#[derive(Debug, Clone, Serialize)]
pub struct StatusEntry {
    /// The status.
    pub status: String,
    /// The provider's time of the change, Unix ms.
    pub provider_at: Option<i64>,
    /// The error, for `failed`.
    pub error: Option<Value>,
    /// When PostDog recorded it, Unix ms.
    pub recorded_at: i64,
}

/// The rank of a delivery state; states only move to a higher rank.
pub fn status_rank(status: &str) -> i64 {
    match status {
        "queued" => 0,
        "accepted" => 1,
        "sent" => 2,
        "delivered" => 3,
        "read" => 4,
        "failed" | "refused" => 9,
        _ => -1,
    }
}

/// An inbound message to record.
#[derive(Debug, Clone)]
pub struct InboundRecord {
    /// The new message's id.
    pub message_id: String,
    /// The channel install it came through.
    pub install_id: String,
    /// The channel.
    pub channel: String,
    /// The provider's message id.
    pub provider_message_id: String,
    /// The sender's E.164 number.
    pub phone: String,
    /// The sender's profile name.
    pub profile_name: Option<String>,
    /// When the customer sent it, Unix ms.
    pub timestamp_ms: i64,
    /// Its kind.
    pub kind: String,
    /// Its content as JSON.
    pub content: Value,
    /// The provider id it replies to.
    pub reply_to: Option<String>,
}

/// What recording an inbound message did.
#[derive(Debug, Clone)]
pub struct InboundResult {
    /// The provider redelivered a message already stored; nothing changed.
    pub duplicate: bool,
    /// The message's id (the stored one for a duplicate).
    pub message_id: String,
    /// The conversation.
    pub conversation_id: String,
    /// The contact.
    pub contact_id: String,
    /// Whether the contact was created by this message.
    pub contact_created: bool,
}

/// An outbound message to queue.
#[derive(Debug, Clone)]
pub struct OutboundRecord {
    /// The new message's id.
    pub message_id: String,
    /// The channel install.
    pub install_id: String,
    /// The channel.
    pub channel: String,
    /// The contact.
    pub contact_id: String,
    /// Its kind.
    pub kind: String,
    /// Its content as JSON (what the channel's `send` gets).
    pub content: Value,
    /// The provider id it replies to.
    pub reply_to: Option<String>,
    /// `service` or `marketing`.
    pub purpose: String,
    /// The caller's idempotency key.
    pub idempotency_key: Option<String>,
    /// A hash of the request, to tell a retry from a different request with the same key.
    pub request_hash: Option<String>,
    /// The API key that sent it.
    pub sent_by: Option<String>,
    /// The month's message allowance it must fit in (the tenant's plan): the message
    /// counts against it from the moment it is queued; `None` counts it without a limit.
    pub allowance: Option<u64>,
}

/// What queueing an outbound message did.
#[derive(Debug, Clone)]
pub enum Queued {
    /// Queued now.
    New(Message),
    /// The idempotency key was used before, for this (same) request: the first message.
    Replayed(Message),
    /// The idempotency key was used before for a different request.
    KeyConflict(Message),
    /// The campaign recipient it was for is no longer queued (paused or cancelled since):
    /// nothing was written.
    RecipientNotQueued,
    /// The month's allowance is used up (messages queued or sent this month, as counted
    /// when the write was tried): nothing was written.
    AllowanceUsed(u64),
}

/// How [`TenantDb::queue_outbound_with`] hands a message on.
#[derive(Debug, Clone)]
pub enum Outbox {
    /// With its send job, in the same transaction.
    Job(NewJob),
    /// Handed to the provider by the caller right after the commit, so the message is
    /// written with that attempt already recorded (`send_attempted_at`): a crash before
    /// the receipt is recorded is reconciled like any interrupted attempt. Optionally
    /// the campaign recipient (campaign id, contact id) it is for turns `sent` in the
    /// same transaction, if it is still queued.
    Now {
        /// The attempt's time, Unix ms.
        attempted_at: i64,
        /// (campaign id, contact id).
        recipient: Option<(String, String)>,
    },
}

/// What the queueing transaction did.
enum QueueOutcome {
    /// Written, in this conversation, at this time.
    Queued(String, i64),
    KeyTaken,
    RecipientNotQueued,
    AllowanceUsed,
}

/// A message queued counts against the month's allowance ($3; $1 tenant, $2 month),
/// only if it fits: no row changes when it does not. Counting at queueing (not at the
/// provider's acceptance) makes the allowance a hard limit: messages waiting in the
/// outbox or in flight were not counted before, so a burst of API sends, or a
/// campaign's sends in flight, could pass it.
const USAGE_RESERVE: &str = "INSERT INTO message_usage (tenant_id, month, sent) VALUES ($1, $2, 1) \
     ON CONFLICT (tenant_id, month) DO UPDATE SET sent = message_usage.sent + 1 \
     WHERE message_usage.sent < $3";

/// Gives a message's count back ($1 tenant, $2 month): it was not written after all, or
/// it failed before any provider accepted it.
const USAGE_RETURN: &str =
    "UPDATE message_usage SET sent = sent - 1 WHERE tenant_id = $1 AND month = $2 AND sent > 0";

/// A queued campaign recipient turns `sent` with its message: $1 message id, $2 now,
/// $3 tenant, $4 campaign, $5 contact.
const RECIPIENT_SENT: &str = "UPDATE campaign_recipients SET state = 'sent', message_id = $1, updated_at = $2 \
     WHERE tenant_id = $3 AND campaign_id = $4 AND contact_id = $5 AND state = 'queued'";

/// Appends a status to a message's history unless it is there already.
const HISTORY_INSERT: &str = "INSERT INTO message_status_history (id, tenant_id, message_id, status, provider_at, error, recorded_at) \
     SELECT $1, $2, $3, $4, $5, $6, $7 WHERE NOT EXISTS \
     (SELECT 1 FROM message_status_history WHERE tenant_id = $2 AND message_id = $3 AND status = $4)";

const CONVERSATION_COLUMNS: &str = "id, install_id, channel, contact_id, status, assignee, unread, \
     window_expires_at, last_message_at, last_inbound_at, created_at, updated_at";

const MESSAGE_COLUMNS: &str = "id, conversation_id, contact_id, install_id, direction, kind, content, \
     provider_message_id, reply_to, status, error, purpose, sent_by, provider_at, created_at, updated_at, \
     sent_at, delivered_at, read_at, failed_at";

fn decode_conversation(row: &sqlx::any::AnyRow) -> Result<Conversation, sqlx::Error> {
    let window_expires_at: Option<i64> = row.try_get("window_expires_at")?;
    Ok(Conversation {
        id: row.try_get("id")?,
        install_id: row.try_get("install_id")?,
        channel: row.try_get("channel")?,
        contact_id: row.try_get("contact_id")?,
        status: row.try_get("status")?,
        assignee: row.try_get("assignee")?,
        unread: row.try_get("unread")?,
        window_expires_at,
        window_open: window_expires_at.is_some_and(|until| until > now_ms()),
        last_message_at: row.try_get("last_message_at")?,
        last_inbound_at: row.try_get("last_inbound_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A conversation row read directly ([`CONVERSATION_COLUMNS`] order).
fn decode_conversation_direct(row: &rusqlite::Row<'_>) -> rusqlite::Result<Conversation> {
    let window_expires_at: Option<i64> = row.get(7)?;
    Ok(Conversation {
        id: row.get(0)?,
        install_id: row.get(1)?,
        channel: row.get(2)?,
        contact_id: row.get(3)?,
        status: row.get(4)?,
        assignee: row.get(5)?,
        unread: row.get(6)?,
        window_expires_at,
        window_open: window_expires_at.is_some_and(|until| until > now_ms()),
        last_message_at: row.get(8)?,
        last_inbound_at: row.get(9)?,
        created_at: row.get(10)?,
        updated_at: row.get(11)?,
    })
}

/// A message row read directly ([`MESSAGE_COLUMNS`] order).
fn decode_message_direct(row: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    let parse = |text: Option<String>| text.and_then(|text| serde_json::from_str(&text).ok());
    Ok(Message {
        id: row.get(0)?,
        conversation_id: row.get(1)?,
        contact_id: row.get(2)?,
        install_id: row.get(3)?,
        direction: row.get(4)?,
        kind: row.get(5)?,
        content: parse(row.get(6)?).unwrap_or(Value::Null),
        provider_message_id: row.get(7)?,
        reply_to: row.get(8)?,
        status: row.get(9)?,
        error: parse(row.get(10)?),
        purpose: row.get(11)?,
        sent_by: row.get(12)?,
        provider_at: row.get(13)?,
        created_at: row.get(14)?,
        updated_at: row.get(15)?,
        sent_at: row.get(16)?,
        delivered_at: row.get(17)?,
        read_at: row.get(18)?,
        failed_at: row.get(19)?,
    })
}

const UPSERT_CONVERSATION: &str = "INSERT INTO conversations (id, tenant_id, install_id, channel, contact_id, status, unread, \
     last_message_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'open', 0, $6, $6, $6) \
     ON CONFLICT (tenant_id, install_id, contact_id) DO UPDATE SET \
       last_message_at = excluded.last_message_at, updated_at = excluded.updated_at \
     RETURNING id";

const INSERT_OUTBOUND: &str = "INSERT INTO messages (id, tenant_id, conversation_id, contact_id, install_id, direction, kind, \
     content, reply_to, status, status_rank, purpose, idempotency_key, request_hash, sent_by, \
     created_at, updated_at, send_attempted_at) \
     VALUES ($1, $2, $3, $4, $5, 'outbound', $6, $7, $8, 'queued', 0, $9, $10, $11, $12, $13, $13, $14)";

fn json_column(row: &sqlx::any::AnyRow, name: &str) -> Result<Option<Value>, sqlx::Error> {
    let text: Option<String> = row.try_get(name)?;
    Ok(text.and_then(|text| serde_json::from_str(&text).ok()))
}

/// Message `id` as `executor` (a write transaction, after its writes) sees it.
async fn message_in<'e, E>(executor: E, tenant: &str, id: &str) -> Result<Message, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = $1 AND id = $2"
    )))
    .bind(tenant)
    .bind(id)
    .fetch_one(executor)
    .await?;
    decode_message(&row)
}

fn decode_message(row: &sqlx::any::AnyRow) -> Result<Message, sqlx::Error> {
    Ok(Message {
        id: row.try_get("id")?,
        conversation_id: row.try_get("conversation_id")?,
        contact_id: row.try_get("contact_id")?,
        install_id: row.try_get("install_id")?,
        direction: row.try_get("direction")?,
        kind: row.try_get("kind")?,
        content: json_column(row, "content")?.unwrap_or(Value::Null),
        provider_message_id: row.try_get("provider_message_id")?,
        reply_to: row.try_get("reply_to")?,
        status: row.try_get("status")?,
        error: json_column(row, "error")?,
        purpose: row.try_get("purpose")?,
        sent_by: row.try_get("sent_by")?,
        provider_at: row.try_get("provider_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        sent_at: row.try_get("sent_at")?,
        delivered_at: row.try_get("delivered_at")?,
        read_at: row.try_get("read_at")?,
        failed_at: row.try_get("failed_at")?,
    })
}

impl Storage {
    /// The tenant owning install `id`, whatever tenant asks (webhook ingress: the URL
    /// names only the install).
    pub async fn install_tenant(&self, id: &str) -> Result<Option<String>, StorageError> {
        let row = sqlx::query("SELECT tenant_id FROM plugin_installs WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .context("finding an install's tenant")?;
        row.map(|row| row.try_get("tenant_id"))
            .transpose()
            .context("decoding an install's tenant")
    }
}

impl TenantDb {
    /// Records an inbound message in one transaction: the contact (found by phone or
    /// created with the profile name), the conversation (reopened, unread counted, the
    /// window extended to 24 h after the customer's message), the message — unless the
    /// provider id is stored already — and `jobs` (only when the message is new).
    pub async fn record_inbound(
        &self,
        record: &InboundRecord,
        make_jobs: impl Fn(&InboundResult) -> Vec<NewJob> + Send + 'static,
    ) -> Result<InboundResult, StorageError> {
        let tenant = self.tenant_id().as_str();
        if let Some(writer) = self.storage().inbound_writer() {
            return writer
                .record(tenant, record.clone(), Box::new(make_jobs))
                .await
                .map_err(|message| StorageError::Query {
                    context: "recording an inbound message",
                    source: sqlx::Error::Protocol(message),
                });
        }
        let outcome: Result<InboundResult, sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            if let Some(row) = sqlx::query(
                "SELECT id, conversation_id, contact_id FROM messages \
                 WHERE tenant_id = $1 AND install_id = $2 AND provider_message_id = $3",
            )
            .bind(tenant)
            .bind(&record.install_id)
            .bind(&record.provider_message_id)
            .fetch_optional(&mut *tx)
            .await?
            {
                return Ok(InboundResult {
                    duplicate: true,
                    message_id: row.try_get("id")?,
                    conversation_id: row.try_get("conversation_id")?,
                    contact_id: row.try_get("contact_id")?,
                    contact_created: false,
                });
            }
            let now = now_ms();
            let new_contact = uuid::Uuid::now_v7().to_string();
            let created = sqlx::query(
                "INSERT INTO contacts (id, tenant_id, name, phone, fields, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, '{}', $5, $5) ON CONFLICT (tenant_id, phone) DO NOTHING",
            )
            .bind(&new_contact)
            .bind(tenant)
            .bind(record.profile_name.as_deref())
            .bind(&record.phone)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            let contact_id: String = if created {
                new_contact
            } else {
                let row = sqlx::query(
                    "SELECT id, name FROM contacts WHERE tenant_id = $1 AND phone = $2",
                )
                .bind(tenant)
                .bind(&record.phone)
                .fetch_one(&mut *tx)
                .await?;
                let name: Option<String> = row.try_get("name")?;
                let id: String = row.try_get("id")?;
                if name.is_none() && record.profile_name.is_some() {
                    sqlx::query(
                        "UPDATE contacts SET name = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4",
                    )
                    .bind(record.profile_name.as_deref())
                    .bind(now)
                    .bind(tenant)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                }
                id
            };
            // The window runs from the customer's message, never beyond 24 h from now
            // (a clock ahead of ours cannot stretch it).
            let window = (record.timestamp_ms.min(now) + WINDOW_MS).max(0);
            let conversation_id = uuid::Uuid::now_v7().to_string();
            let row = sqlx::query(
                "INSERT INTO conversations (id, tenant_id, install_id, channel, contact_id, status, unread, \
                 window_expires_at, last_message_at, last_inbound_at, last_inbound_provider_id, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, 'open', 1, $6, $7, $8, $9, $7, $7) \
                 ON CONFLICT (tenant_id, install_id, contact_id) DO UPDATE SET \
                   unread = conversations.unread + 1, \
                   window_expires_at = CASE WHEN conversations.window_expires_at IS NULL \
                       OR conversations.window_expires_at < excluded.window_expires_at \
                       THEN excluded.window_expires_at ELSE conversations.window_expires_at END, \
                   last_message_at = excluded.last_message_at, \
                   last_inbound_at = CASE WHEN conversations.last_inbound_at IS NULL \
                       OR conversations.last_inbound_at < excluded.last_inbound_at \
                       THEN excluded.last_inbound_at ELSE conversations.last_inbound_at END, \
                   last_inbound_provider_id = CASE WHEN conversations.last_inbound_at IS NULL \
                       OR conversations.last_inbound_at <= excluded.last_inbound_at \
                       THEN excluded.last_inbound_provider_id ELSE conversations.last_inbound_provider_id END, \
                   updated_at = excluded.updated_at \
                 RETURNING id, status",
            )
            .bind(&conversation_id)
            .bind(tenant)
            .bind(&record.install_id)
            .bind(&record.channel)
            .bind(&contact_id)
            .bind(window)
            .bind(now)
            .bind(record.timestamp_ms)
            .bind(&record.provider_message_id)
            .fetch_one(&mut *tx)
            .await?;
            let conversation_id: String = row.try_get("id")?;
            let status: String = row.try_get("status")?;
            if status != "open" {
                sqlx::query("UPDATE conversations SET status = 'open' WHERE id = $1")
                    .bind(&conversation_id)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "INSERT INTO messages (id, tenant_id, conversation_id, contact_id, install_id, direction, kind, \
                 content, provider_message_id, reply_to, status, status_rank, purpose, provider_at, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, 'inbound', $6, $7, $8, $9, 'received', 0, 'service', $10, $11, $11)",
            )
            .bind(&record.message_id)
            .bind(tenant)
            .bind(&conversation_id)
            .bind(&contact_id)
            .bind(&record.install_id)
            .bind(&record.kind)
            .bind(record.content.to_string())
            .bind(&record.provider_message_id)
            .bind(record.reply_to.as_deref())
            .bind(record.timestamp_ms)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let result = InboundResult {
                duplicate: false,
                message_id: record.message_id.clone(),
                conversation_id,
                contact_id,
                contact_created: created,
            };
            for job in make_jobs(&result) {
                insert_job(&mut *tx, &job).await?;
            }
            tx.commit().await?;
            Ok(result)
        }
        .await;
        match outcome {
            Ok(result) => Ok(result),
            // A concurrent delivery of the same message won the race (PostgreSQL).
            Err(error) if is_unique_violation(&error) => {
                let existing = self
                    .message_by_provider_id(&record.install_id, &record.provider_message_id)
                    .await?;
                match existing {
                    Some(message) => Ok(InboundResult {
                        duplicate: true,
                        message_id: message.id,
                        conversation_id: message.conversation_id,
                        contact_id: message.contact_id,
                        contact_created: false,
                    }),
                    None => Err(StorageError::Query {
                        context: "recording an inbound message",
                        source: error,
                    }),
                }
            }
            Err(source) => Err(StorageError::Query {
                context: "recording an inbound message",
                source,
            }),
        }
    }

    /// A message by the provider's id.
    pub async fn message_by_provider_id(
        &self,
        install_id: &str,
        provider_message_id: &str,
    ) -> Result<Option<Message>, StorageError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE tenant_id = $1 AND install_id = $2 AND provider_message_id = $3"
        )))
        .bind(self.tenant_id().as_str())
        .bind(install_id)
        .bind(provider_message_id)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a message")?;
        row.as_ref()
            .map(decode_message)
            .transpose()
            .context("decoding a message")
    }

    /// Queues an outbound message and its send `job` in one transaction (the outbox).
    /// A reused idempotency key returns the first message instead.
    pub async fn queue_outbound(
        &self,
        record: &OutboundRecord,
        job: &NewJob,
    ) -> Result<Queued, StorageError> {
        self.queue_outbound_with(record, &Outbox::Job(job.clone()))
            .await
    }

    /// As [`TenantDb::queue_outbound`], the message written as `how` says: with its send
    /// job, or handed to the provider at once by its caller.
    pub async fn queue_outbound_with(
        &self,
        record: &OutboundRecord,
        how: &Outbox,
    ) -> Result<Queued, StorageError> {
        // A reused idempotency key is found by the insert's unique violation (the
        // transaction, or the savepoint, then keeps nothing), not by a read before it.
        let tenant = self.tenant_id().as_str();
        let (job, attempted_at, recipient) = match how {
            Outbox::Job(job) => (Some(job), None, None),
            Outbox::Now {
                attempted_at,
                recipient,
            } => (None, Some(*attempted_at), recipient.as_ref()),
        };
        let allowance = record
            .allowance
            .map_or(i64::MAX, |limit| i64::try_from(limit).unwrap_or(i64::MAX));
        let outcome = if let Some(writer) = self.storage().sqlite_writer() {
            // Serialized here: the writer thread serves every caller in turn.
            let (tenant, owned, content, job, recipient) = (
                tenant.to_string(),
                record.clone(),
                record.content.to_string(),
                job.cloned(),
                recipient.cloned(),
            );
            writer
                .write(move |c| {
                    use super::sqlite_writer::{exec, query};
                    let now = now_ms();
                    let month = super::month_of(now);
                    if exec(c, USAGE_RESERVE, &[&tenant, &month, &allowance])? == 0 {
                        return Ok(QueueOutcome::AllowanceUsed);
                    }
                    // Nothing written after all: the count goes back (the savepoint
                    // keeps what a closure did when it returns normally).
                    let unreserve = |c: &rusqlite::Connection| {
                        exec(c, USAGE_RETURN, &[&tenant, &month]).map(drop)
                    };
                    if let Some((campaign, contact)) = &recipient
                        && exec(
                            c,
                            RECIPIENT_SENT,
                            &[&owned.message_id, &now, &tenant, campaign, contact],
                        )? == 0
                    {
                        unreserve(c)?;
                        return Ok(QueueOutcome::RecipientNotQueued);
                    }
                    let conversation_id: String = query(
                        c,
                        UPSERT_CONVERSATION,
                        &[
                            &uuid::Uuid::now_v7().to_string(),
                            &tenant,
                            &owned.install_id,
                            &owned.channel,
                            &owned.contact_id,
                            &now,
                        ],
                        |row| row.get(0),
                    )?
                    .pop()
                    .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
                    let inserted = exec(
                        c,
                        INSERT_OUTBOUND,
                        &[
                            &owned.message_id,
                            &tenant,
                            &conversation_id,
                            &owned.contact_id,
                            &owned.install_id,
                            &owned.kind,
                            &content,
                            &owned.reply_to,
                            &owned.purpose,
                            &owned.idempotency_key,
                            &owned.request_hash,
                            &owned.sent_by,
                            &now,
                            &attempted_at,
                        ],
                    );
                    match inserted {
                        // Another request with the same key won: nothing of this one
                        // is kept (the savepoint is released with no other change
                        // than the conversation's timestamps).
                        Err(error) if super::sqlite_writer::is_unique_violation(&error) => {
                            unreserve(c)?;
                            return Ok(QueueOutcome::KeyTaken);
                        }
                        other => other?,
                    };
                    if let Some(job) = &job {
                        super::jobs::insert_job_direct(c, job)?;
                    }
                    Ok(QueueOutcome::Queued(conversation_id, now))
                })
                .await
                .map_err(|message| StorageError::Direct {
                    context: "queueing a message",
                    message,
                })?
        } else {
            let outcome: Result<QueueOutcome, sqlx::Error> = async {
                let mut tx = self.storage().begin_write().await?;
                let now = now_ms();
                // Anything that stops the write below drops the transaction, and the
                // count with it.
                let reserved = sqlx::query(USAGE_RESERVE)
                    .bind(tenant)
                    .bind(super::month_of(now))
                    .bind(allowance)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if reserved == 0 {
                    return Ok(QueueOutcome::AllowanceUsed);
                }
                if let Some((campaign, contact)) = recipient {
                    let updated = sqlx::query(RECIPIENT_SENT)
                        .bind(&record.message_id)
                        .bind(now)
                        .bind(tenant)
                        .bind(campaign)
                        .bind(contact)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if updated == 0 {
                        return Ok(QueueOutcome::RecipientNotQueued);
                    }
                }
                let row = sqlx::query(UPSERT_CONVERSATION)
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(tenant)
                    .bind(&record.install_id)
                    .bind(&record.channel)
                    .bind(&record.contact_id)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                let conversation_id: String = row.try_get("id")?;
                sqlx::query(INSERT_OUTBOUND)
                    .bind(&record.message_id)
                    .bind(tenant)
                    .bind(&conversation_id)
                    .bind(&record.contact_id)
                    .bind(&record.install_id)
                    .bind(&record.kind)
                    .bind(record.content.to_string())
                    .bind(record.reply_to.as_deref())
                    .bind(&record.purpose)
                    .bind(record.idempotency_key.as_deref())
                    .bind(record.request_hash.as_deref())
                    .bind(record.sent_by.as_deref())
                    .bind(now)
                    .bind(attempted_at)
                    .execute(&mut *tx)
                    .await?;
                if let Some(job) = job {
                    insert_job(&mut *tx, job).await?;
                }
                tx.commit().await?;
                Ok(QueueOutcome::Queued(conversation_id, now))
            }
            .await;
            match outcome {
                Err(error) if is_unique_violation(&error) && record.idempotency_key.is_some() => {
                    QueueOutcome::KeyTaken
                }
                other => other.map_err(|source| StorageError::Query {
                    context: "queueing a message",
                    source,
                })?,
            }
        };
        match outcome {
            // The row as written, without reading it back.
            QueueOutcome::Queued(conversation_id, now) => Ok(Queued::New(Message {
                id: record.message_id.clone(),
                conversation_id,
                contact_id: record.contact_id.clone(),
                install_id: record.install_id.clone(),
                direction: "outbound".into(),
                kind: record.kind.clone(),
                content: record.content.clone(),
                provider_message_id: None,
                reply_to: record.reply_to.clone(),
                status: "queued".into(),
                error: None,
                purpose: record.purpose.clone(),
                sent_by: record.sent_by.clone(),
                provider_at: None,
                created_at: now,
                updated_at: now,
                sent_at: None,
                delivered_at: None,
                read_at: None,
                failed_at: None,
            })),
            QueueOutcome::RecipientNotQueued => Ok(Queued::RecipientNotQueued),
            QueueOutcome::AllowanceUsed => Ok(Queued::AllowanceUsed(
                self.messages_sent(&super::month_of(now_ms())).await?,
            )),
            QueueOutcome::KeyTaken => {
                let key = record.idempotency_key.as_deref().unwrap_or_default();
                match self.message_by_idempotency_key(key).await? {
                    Some(existing) => Ok(self.replay(existing, record)),
                    None => Err(StorageError::Direct {
                        context: "queueing a message",
                        message: "a message id was used twice".into(),
                    }),
                }
            }
        }
    }

    fn replay(&self, existing: (Message, Option<String>), record: &OutboundRecord) -> Queued {
        let (message, hash) = existing;
        if hash == record.request_hash {
            Queued::Replayed(message)
        } else {
            Queued::KeyConflict(message)
        }
    }

    /// The message queued earlier with idempotency `key`: `Replayed` for the same
    /// request (`request_hash`), `KeyConflict` for another; `None` for a new key.
    pub async fn earlier_with_key(
        &self,
        key: &str,
        request_hash: &str,
    ) -> Result<Option<Queued>, StorageError> {
        Ok(self
            .message_by_idempotency_key(key)
            .await?
            .map(|(message, hash)| {
                if hash.as_deref() == Some(request_hash) {
                    Queued::Replayed(message)
                } else {
                    Queued::KeyConflict(message)
                }
            }))
    }

    async fn message_by_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<(Message, Option<String>)>, StorageError> {
        let tenant = self.tenant_id().as_str();
        if let Some(mut found) = self.storage().read_direct(|c| {
            super::sqlite_writer::query(
                c,
                &format!(
                    "SELECT {MESSAGE_COLUMNS}, request_hash FROM messages WHERE tenant_id = $1 AND idempotency_key = $2"
                ),
                &[&tenant, &key],
                |row| Ok((decode_message_direct(row)?, row.get(20)?)),
            )
        }) {
            return Ok(found.pop());
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS}, request_hash FROM messages WHERE tenant_id = $1 AND idempotency_key = $2"
        )))
        .bind(self.tenant_id().as_str())
        .bind(key)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a message by idempotency key")?;
        row.as_ref()
            .map(|row| Ok((decode_message(row)?, row.try_get("request_hash")?)))
            .transpose()
            .context("decoding a message")
    }

    /// One message.
    pub async fn message(&self, id: &str) -> Result<Option<Message>, StorageError> {
        let tenant = self.tenant_id().as_str();
        if let Some(mut found) = self.storage().read_direct(|c| {
            super::sqlite_writer::query(
                c,
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = $1 AND id = $2"),
                &[&tenant, &id],
                decode_message_direct,
            )
        }) {
            return Ok(found.pop());
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(self.tenant_id().as_str())
        .bind(id)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a message")?;
        row.as_ref()
            .map(decode_message)
            .transpose()
            .context("decoding a message")
    }

    /// Applies a delivery status to the outbound message with `provider_message_id`:
    /// the status moves forward only, the status's time column is filled if empty and
    /// the history gets the entry once. `None` (and the status kept for later) when the
    /// message is not known yet; else the message and whether its status changed.
    pub async fn apply_status(
        &self,
        install_id: &str,
        provider_message_id: &str,
        status: &str,
        provider_at: Option<i64>,
        error: Option<&Value>,
        make_jobs: impl FnOnce(&Message, bool) -> Vec<NewJob>,
    ) -> Result<Option<(Message, bool)>, StorageError> {
        let tenant = self.tenant_id().as_str();
        let rank = status_rank(status);
        let now = now_ms();
        let at = provider_at.unwrap_or(now);
        let time_column = match status {
            "sent" => "sent_at",
            "delivered" => "delivered_at",
            "read" => "read_at",
            "failed" => "failed_at",
            _ => "updated_at",
        };
        let outcome: Result<Option<(Message, bool)>, sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            let Some(row) = sqlx::query(
                "SELECT id, status_rank FROM messages \
                 WHERE tenant_id = $1 AND install_id = $2 AND provider_message_id = $3",
            )
            .bind(tenant)
            .bind(install_id)
            .bind(provider_message_id)
            .fetch_optional(&mut *tx)
            .await?
            else {
                sqlx::query(
                    "INSERT INTO early_statuses (id, tenant_id, install_id, provider_message_id, status, \
                     provider_at, error, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(tenant)
                .bind(install_id)
                .bind(provider_message_id)
                .bind(status)
                .bind(provider_at)
                .bind(error.map(Value::to_string))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok(None);
            };
            let id: String = row.try_get("id")?;
            let current: i64 = row.try_get("status_rank")?;
            // Fill this status's time (a late `sent` after `read` still records when it
            // was sent), and move the state only forward. The forward move is decided by
            // the UPDATE's own condition, not by the rank read above: on PostgreSQL two
            // statuses of one message can be applied at once, and the second UPDATE
            // waits for the first and re-checks its WHERE on the row the first wrote, so
            // a `delivered` racing a `read` cannot move the message back, and only one
            // of two concurrent copies of a status counts as the change.
            let set_time = format!("{time_column} = COALESCE({time_column}, $1), updated_at = $2");
            let changed = rank > current
                && current < 9
                && sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE messages SET {set_time}, status = $5, status_rank = $6, \
                     error = COALESCE($7, error) \
                     WHERE tenant_id = $3 AND id = $4 AND status_rank < $6 AND status_rank < 9"
                )))
                .bind(at)
                .bind(now)
                .bind(tenant)
                .bind(&id)
                .bind(status)
                .bind(rank)
                .bind(error.map(Value::to_string))
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
            if !changed {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE messages SET {set_time} WHERE tenant_id = $3 AND id = $4"
                )))
                .bind(at)
                .bind(now)
                .bind(tenant)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(HISTORY_INSERT)
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(tenant)
            .bind(&id)
            .bind(status)
            .bind(provider_at)
            .bind(error.map(Value::to_string))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let message = message_in(&mut *tx, tenant, &id).await?;
            for job in make_jobs(&message, changed) {
                insert_job(&mut *tx, &job).await?;
            }
            tx.commit().await?;
            Ok(Some((message, changed)))
        }
        .await;
        outcome.context("applying a delivery status")
    }

    /// A failure the provider reported by status for an accepted outbound message, that
    /// sending again can cure (a rate limit, a transient error): the message goes back
    /// to the outbox in one transaction — `queued`, its provider id and attempt cleared,
    /// the failure kept as its `error` with the retry count, a `retry:<n>` entry in its
    /// history (it still counts against the month's allowance, as it did since it was
    /// queued) — with the send job `job(n)` (its key must name the retry). `None`
    /// (nothing written) when the message is unknown, not outbound, past `accepted`/
    /// `sent`, or was retried `max_retries` times already: the failure then applies as
    /// usual.
    pub async fn requeue_after_provider_failure(
        &self,
        install_id: &str,
        provider_message_id: &str,
        error: &Value,
        max_retries: u64,
        job: impl FnOnce(&str, u64) -> NewJob,
    ) -> Result<Option<(Message, u64)>, StorageError> {
        let tenant = self.tenant_id().as_str();
        let now = now_ms();
        let outcome: Result<Option<(Message, u64)>, sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            let Some(row) = sqlx::query(
                "SELECT id, direction, status_rank, error FROM messages \
                 WHERE tenant_id = $1 AND install_id = $2 AND provider_message_id = $3",
            )
            .bind(tenant)
            .bind(install_id)
            .bind(provider_message_id)
            .fetch_optional(&mut *tx)
            .await?
            else {
                return Ok(None);
            };
            let id: String = row.try_get("id")?;
            let direction: String = row.try_get("direction")?;
            let rank: i64 = row.try_get("status_rank")?;
            let previous: Option<String> = row.try_get("error")?;
            let retries = previous
                .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                .and_then(|error| error["retries"].as_u64())
                .unwrap_or(0);
            if direction != "outbound" || !(1..=2).contains(&rank) || retries >= max_retries {
                return Ok(None);
            }
            let retry = retries + 1;
            let mut recorded = error.clone();
            recorded["retries"] = Value::from(retry);
            let recorded = recorded.to_string();
            let requeued = sqlx::query(
                "UPDATE messages SET status = 'queued', status_rank = 0, provider_message_id = NULL, \
                 send_attempted_at = NULL, error = $1, updated_at = $2 \
                 WHERE tenant_id = $3 AND id = $4 AND provider_message_id = $5 AND status_rank BETWEEN 1 AND 2",
            )
            .bind(&recorded)
            .bind(now)
            .bind(tenant)
            .bind(&id)
            .bind(provider_message_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if requeued != 1 {
                return Ok(None);
            }
            sqlx::query(HISTORY_INSERT)
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(tenant)
                .bind(&id)
                .bind(format!("retry:{retry}"))
                .bind(None::<i64>)
                .bind(&recorded)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            // The message still counts against the month's allowance (it was counted
            // when queued, and is queued again); a final failure before any provider
            // accepts it gives the count back (`mark_failed`).
            insert_job(&mut *tx, &job(&id, retry)).await?;
            let message = message_in(&mut *tx, tenant, &id).await?;
            tx.commit().await?;
            Ok(Some((message, retry)))
        }
        .await;
        outcome.context("queueing a message again after a provider failure")
    }

    /// When message `id` was last handed to its provider with no outcome recorded since
    /// (an interrupted attempt), if ever.
    pub async fn send_attempted_at(&self, id: &str) -> Result<Option<i64>, StorageError> {
        let tenant = self.tenant_id().as_str();
        if let Some(found) = self.storage().read_direct(|c| {
            super::sqlite_writer::query(
                c,
                "SELECT send_attempted_at FROM messages WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &id],
                |row| row.get::<_, Option<i64>>(0),
            )
        }) {
            return Ok(found.into_iter().next().flatten());
        }
        let row =
            sqlx::query("SELECT send_attempted_at FROM messages WHERE tenant_id = $1 AND id = $2")
                .bind(self.tenant_id().as_str())
                .bind(id)
                .fetch_optional(self.storage().pool())
                .await
                .context("reading a send attempt")?;
        let earlier: Option<i64> = match row {
            Some(row) => row
                .try_get("send_attempted_at")
                .context("decoding a send attempt")?,
            None => None,
        };
        Ok(earlier)
    }

    /// Records (`Some`) or clears (`None`, the provider answered) the time message `id`
    /// was last handed to its provider.
    pub async fn set_send_attempt(&self, id: &str, at: Option<i64>) -> Result<(), StorageError> {
        const SQL: &str =
            "UPDATE messages SET send_attempted_at = $1 WHERE tenant_id = $2 AND id = $3";
        if let Some(writer) = self.storage().sqlite_writer() {
            let (tenant, id) = (self.tenant_id().as_str().to_string(), id.to_string());
            return writer
                .write(move |c| super::sqlite_writer::exec(c, SQL, &[&at, &tenant, &id]))
                .await
                .map(drop)
                .map_err(|message| StorageError::Direct {
                    context: "recording a send attempt",
                    message,
                });
        }
        let _turn = self.storage().write_turn().await;
        sqlx::query(SQL)
            .bind(at)
            .bind(self.tenant_id().as_str())
            .bind(id)
            .execute(self.storage().pool())
            .await
            .context("recording a send attempt")?;
        Ok(())
    }

    /// The message of `install_id` with id `id` that still waits for its provider id (a
    /// status echoing the id may complete a send whose receipt was lost).
    pub async fn message_awaiting_receipt(
        &self,
        install_id: &str,
        id: &str,
    ) -> Result<Option<Message>, StorageError> {
        Ok(self.message(id).await?.filter(|message| {
            message.install_id == install_id && message.provider_message_id.is_none()
        }))
    }

    /// Records the provider's acceptance of an outbound message (its provider id), then
    /// applies statuses that arrived before it. The message after all of that. With
    /// `complete`, that running job is marked done in the same transaction.
    pub async fn mark_accepted(
        &self,
        message_id: &str,
        provider_message_id: &str,
        make_jobs: impl Fn(&Message, &str) -> Vec<NewJob>,
        complete: Option<&super::JobLease>,
    ) -> Result<Option<Message>, StorageError> {
        let tenant = self.tenant_id().as_str();
        let now = now_ms();
        // Only once: the send job's receipt and a status echoing the message id (after a
        // crash lost the receipt) may both try; the first records it. The status, its
        // history entry and the contact's last-contacted time are written together. (The
        // month's usage counted the message when it was queued.)
        // The row comes back from the update itself (no read after it).
        static ACCEPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "UPDATE messages SET provider_message_id = $1, send_attempted_at = NULL, \
                 status = CASE WHEN status_rank < 1 THEN 'accepted' ELSE status END, \
                 status_rank = CASE WHEN status_rank < 1 THEN 1 ELSE status_rank END, updated_at = $2 \
                 WHERE tenant_id = $3 AND id = $4 AND provider_message_id IS NULL \
                 RETURNING {MESSAGE_COLUMNS}"
            )
        });
        const CONTACTED: &str =
            "UPDATE contacts SET last_contacted_at = $1 WHERE tenant_id = $2 AND id = $3";
        let updated = if let Some(writer) = self.storage().sqlite_writer() {
            let (tenant, message_id, provider, lease) = (
                tenant.to_string(),
                message_id.to_string(),
                provider_message_id.to_string(),
                complete.cloned(),
            );
            writer
                .write(move |c| {
                    use super::sqlite_writer::{exec, query};
                    if let Some(lease) = &lease {
                        super::jobs::complete_job_direct(c, lease)?;
                    }
                    let updated = query(
                        c,
                        &ACCEPT,
                        &[&provider, &now, &tenant, &message_id],
                        decode_message_direct,
                    )?
                    .pop();
                    if let Some(message) = &updated {
                        exec(
                            c,
                            HISTORY_INSERT,
                            &[
                                &uuid::Uuid::now_v7().to_string(),
                                &tenant,
                                &message_id,
                                &"accepted",
                                &None::<i64>,
                                &None::<String>,
                                &now,
                            ],
                        )?;
                        exec(c, CONTACTED, &[&now, &tenant, &message.contact_id])?;
                    }
                    Ok(updated)
                })
                .await
                .map_err(|message| StorageError::Direct {
                    context: "recording a send receipt",
                    message,
                })?
        } else {
            let updated: Result<Option<Message>, sqlx::Error> = async {
                let mut tx = self.storage().begin_write().await?;
                if let Some(lease) = complete {
                    super::jobs::complete_job_in(&mut tx, lease).await?;
                }
                let updated = sqlx::query(sqlx::AssertSqlSafe(ACCEPT.as_str()))
                    .bind(provider_message_id)
                    .bind(now)
                    .bind(tenant)
                    .bind(message_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .as_ref()
                    .map(decode_message)
                    .transpose()?;
                if let Some(message) = &updated {
                    history_insert(&mut tx, tenant, message_id, "accepted", None, None).await?;
                    sqlx::query(CONTACTED)
                        .bind(now)
                        .bind(tenant)
                        .bind(&message.contact_id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(updated)
            }
            .await;
            updated.context("recording a send receipt")?
        };
        if let Some(lease) = complete {
            lease.committed();
        }
        let Some(message) = updated else {
            return Ok(None);
        };
        let install = message.install_id.clone();
        let any_early = self.storage().read_direct(|c| {
            super::sqlite_writer::query(
                c,
                "SELECT 1 FROM early_statuses WHERE tenant_id = $1 AND install_id = $2 AND provider_message_id = $3 LIMIT 1",
                &[&tenant, &install, &provider_message_id],
                |_| Ok(()),
            )
        });
        if any_early.is_some_and(|rows| rows.is_empty()) {
            return Ok(Some(message));
        }
        let early = sqlx::query(
            "SELECT id, status, provider_at, error FROM early_statuses \
             WHERE tenant_id = $1 AND install_id = $2 AND provider_message_id = $3 ORDER BY recorded_at",
        )
        .bind(tenant)
        .bind(&message.install_id)
        .bind(provider_message_id)
        .fetch_all(self.storage().pool())
        .await
        .context("reading early statuses")?;
        if early.is_empty() {
            return Ok(Some(message));
        }
        let mut latest = Some(message.clone());
        for row in &early {
            let status: String = row.try_get("status").context("decoding early status")?;
            let at: Option<i64> = row
                .try_get("provider_at")
                .context("decoding early status")?;
            let error = json_column(row, "error").context("decoding early status")?;
            if let Some((message, _)) = self
                .apply_status(
                    &message.install_id,
                    provider_message_id,
                    &status,
                    at,
                    error.as_ref(),
                    |message, changed| {
                        if changed {
                            make_jobs(message, &status)
                        } else {
                            Vec::new()
                        }
                    },
                )
                .await?
            {
                latest = Some(message);
            }
        }
        // Only the statuses applied: one that arrives meanwhile is kept for its turn
        // (deleting by provider id would drop it unread).
        for row in &early {
            let id: String = row.try_get("id").context("decoding early status")?;
            sqlx::query("DELETE FROM early_statuses WHERE tenant_id = $1 AND id = $2")
                .bind(tenant)
                .bind(id)
                .execute(self.storage().pool())
                .await
                .context("clearing early statuses")?;
        }
        Ok(latest)
    }

    /// Marks an outbound message failed (or `refused` by the kernel) with `error`, unless
    /// it already failed — or, with `only_queued`, unless a provider took it. The message
    /// as marked; `None` if it was not (missing, already failed, or no longer queued).
    pub async fn mark_failed(
        &self,
        message_id: &str,
        status: &str,
        error: &Value,
        only_queued: bool,
    ) -> Result<Option<Message>, StorageError> {
        let now = now_ms();
        let tenant = self.tenant_id().as_str();
        let outcome: Result<bool, sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            let updated = sqlx::query(
                "UPDATE messages SET status = $1, status_rank = 9, error = $2, failed_at = $3, updated_at = $3 \
                 WHERE tenant_id = $4 AND id = $5 AND status_rank < 9 AND ($6 = 0 OR status = 'queued') \
                 RETURNING created_at, provider_message_id",
            )
            .bind(status)
            .bind(error.to_string())
            .bind(now)
            .bind(tenant)
            .bind(message_id)
            .bind(i64::from(only_queued))
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = updated else {
                return Ok(false);
            };
            history_insert(&mut tx, tenant, message_id, status, None, Some(error)).await?;
            // Never accepted by a provider: the message does not count against the
            // allowance after all — of the month it was queued (and counted) in, which
            // is not this one for a message queued on the 31st that fails on the 1st.
            if row.try_get::<Option<String>, _>("provider_message_id")?.is_none() {
                let queued_at: i64 = row.try_get("created_at")?;
                sqlx::query(USAGE_RETURN)
                    .bind(tenant)
                    .bind(super::month_of(queued_at))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(true)
        }
        .await;
        if !outcome.context("marking a message failed")? {
            return Ok(None);
        }
        self.message(message_id).await
    }

    /// A message's status history in the order it was recorded.
    pub async fn status_history(&self, message_id: &str) -> Result<Vec<StatusEntry>, StorageError> {
        let rows = sqlx::query(
            "SELECT status, provider_at, error, recorded_at FROM message_status_history \
             WHERE tenant_id = $1 AND message_id = $2 ORDER BY recorded_at, id",
        )
        .bind(self.tenant_id().as_str())
        .bind(message_id)
        .fetch_all(self.storage().pool())
        .await
        .context("reading a status history")?;
        rows.iter()
            .map(|row| {
                Ok(StatusEntry {
                    status: row.try_get("status")?,
                    provider_at: row.try_get("provider_at")?,
                    error: json_column(row, "error")?,
                    recorded_at: row.try_get("recorded_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding a status history")
    }

    /// One conversation.
    pub async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StorageError> {
        let tenant = self.tenant_id().as_str();
        if let Some(mut found) = self.storage().read_direct(|c| {
            super::sqlite_writer::query(
                c,
                &format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE tenant_id = $1 AND id = $2"),
                &[&tenant, &id],
                decode_conversation_direct,
            )
        }) {
            return Ok(found.pop());
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(self.tenant_id().as_str())
        .bind(id)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a conversation")?;
        row.as_ref()
            .map(decode_conversation)
            .transpose()
            .context("decoding a conversation")
    }

    /// The conversation of a contact on an install, if any.
    pub async fn conversation_of(
        &self,
        install_id: &str,
        contact_id: &str,
    ) -> Result<Option<Conversation>, StorageError> {
        let tenant = self.tenant_id().as_str();
        if let Some(mut found) = self.storage().read_direct(|c| {
            super::sqlite_writer::query(
                c,
                &format!(
                    "SELECT {CONVERSATION_COLUMNS} FROM conversations \
                     WHERE tenant_id = $1 AND install_id = $2 AND contact_id = $3"
                ),
                &[&tenant, &install_id, &contact_id],
                decode_conversation_direct,
            )
        }) {
            return Ok(found.pop());
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations \
             WHERE tenant_id = $1 AND install_id = $2 AND contact_id = $3"
        )))
        .bind(self.tenant_id().as_str())
        .bind(install_id)
        .bind(contact_id)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a conversation")?;
        row.as_ref()
            .map(decode_conversation)
            .transpose()
            .context("decoding a conversation")
    }

    /// Conversations, most recent first, filtered.
    pub async fn conversations(
        &self,
        filter: &ConversationFilter,
    ) -> Result<Vec<Conversation>, StorageError> {
        let mut sql = Sql::new(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE tenant_id = "
        ));
        let tenant = sql.bind(Bind::Text(self.tenant_id().as_str().to_string()));
        sql.push(&tenant);
        let equals = |sql: &mut Sql, column: &str, value: &str| {
            let placeholder = sql.bind(Bind::Text(value.to_string()));
            sql.push(&format!(" AND {column} = {placeholder}"));
        };
        if let Some(status) = &filter.status {
            equals(&mut sql, "status", status);
        }
        match &filter.assignee {
            Some(AssigneeFilter::Unassigned) => sql.push(" AND assignee IS NULL"),
            Some(AssigneeFilter::Assigned) => sql.push(" AND assignee IS NOT NULL"),
            Some(AssigneeFilter::Agent(agent)) => equals(&mut sql, "assignee", agent),
            None => {}
        }
        if filter.unread {
            sql.push(" AND unread > 0");
        }
        if let Some(channel) = &filter.channel {
            equals(&mut sql, "channel", channel);
        }
        if let Some(install) = &filter.install_id {
            equals(&mut sql, "install_id", install);
        }
        if let Some(contact) = &filter.contact_id {
            equals(&mut sql, "contact_id", contact);
        }
        if let Some(before) = filter.before {
            let at = sql.bind(Bind::Int(before));
            match &filter.before_id {
                Some(id) => {
                    let id = sql.bind(Bind::Text(id.clone()));
                    sql.push(&format!(
                        " AND (last_message_at < {at} OR (last_message_at = {at} AND id < {id}))"
                    ));
                }
                None => sql.push(&format!(" AND last_message_at < {at}")),
            }
        }
        let limit = sql.bind(Bind::Int(filter.limit));
        sql.push(&format!(
            " ORDER BY last_message_at DESC, id DESC LIMIT {limit}"
        ));
        let rows = sql
            .into_query()
            .fetch_all(self.storage().pool())
            .await
            .context("listing conversations")?;
        rows.iter()
            .map(decode_conversation)
            .collect::<Result<_, _>>()
            .context("decoding conversations")
    }

    /// Messages of a conversation, oldest first, optionally only those created before
    /// `before` — or at `before` with an id below `before_id`, the oldest message of the
    /// previous page (messages stored in one batch share their millisecond) — the
    /// newest `limit` of them.
    pub async fn conversation_messages(
        &self,
        conversation_id: &str,
        before: Option<(i64, Option<String>)>,
        limit: i64,
    ) -> Result<Vec<Message>, StorageError> {
        let (before, before_id) = before.map_or((None, None), |(at, id)| (Some(at), id));
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = $1 AND conversation_id = $2 \
             AND ($3 IS NULL OR created_at < $3 OR (created_at = $3 AND id < $5)) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        )))
        .bind(self.tenant_id().as_str())
        .bind(conversation_id)
        .bind(before)
        .bind(limit)
        .bind(before_id)
        .fetch_all(self.storage().pool())
        .await
        .context("listing messages")?;
        let mut messages = rows
            .iter()
            .map(decode_message)
            .collect::<Result<Vec<_>, _>>()
            .context("decoding messages")?;
        messages.reverse();
        Ok(messages)
    }

    /// Changes a conversation's assignee / status / unread count; the conversation after.
    pub async fn update_conversation(
        &self,
        id: &str,
        change: &ConversationChange,
    ) -> Result<Option<Conversation>, StorageError> {
        let mut sql = Sql::new("UPDATE conversations SET updated_at = ");
        let now = sql.bind(Bind::Int(now_ms()));
        sql.push(&now);
        match &change.assignee {
            Some(Some(agent)) => {
                let placeholder = sql.bind(Bind::Text(agent.clone()));
                sql.push(&format!(", assignee = {placeholder}"));
            }
            Some(None) => sql.push(", assignee = NULL"),
            None => {}
        }
        if let Some(status) = &change.status {
            let placeholder = sql.bind(Bind::Text(status.clone()));
            sql.push(&format!(", status = {placeholder}"));
        }
        if change.mark_read {
            sql.push(", unread = 0");
        }
        let tenant = sql.bind(Bind::Text(self.tenant_id().as_str().to_string()));
        let id_placeholder = sql.bind(Bind::Text(id.to_string()));
        sql.push(&format!(
            " WHERE tenant_id = {tenant} AND id = {id_placeholder}"
        ));
        let updated = sql
            .into_query()
            .execute(self.storage().pool())
            .await
            .context("updating a conversation")?
            .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        self.conversation(id).await
    }

    /// The provider id of the contact's latest message in a conversation (to mark read).
    pub async fn last_inbound_provider_id(
        &self,
        conversation_id: &str,
    ) -> Result<Option<String>, StorageError> {
        let row = sqlx::query(
            "SELECT last_inbound_provider_id FROM conversations WHERE tenant_id = $1 AND id = $2",
        )
        .bind(self.tenant_id().as_str())
        .bind(conversation_id)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a conversation")?;
        Ok(row.and_then(|row| row.try_get("last_inbound_provider_id").ok().flatten()))
    }

    /// Adds an internal note to a conversation; `None` if there is no such conversation.
    pub async fn add_conversation_note(
        &self,
        conversation_id: &str,
        body: &str,
        author: Option<&str>,
    ) -> Result<Option<ConversationNote>, StorageError> {
        let note = ConversationNote {
            id: uuid::Uuid::now_v7().to_string(),
            conversation_id: conversation_id.to_string(),
            body: body.to_string(),
            author: author.map(str::to_string),
            created_at: now_ms(),
        };
        let inserted = sqlx::query(
            "INSERT INTO conversation_notes (id, tenant_id, conversation_id, body, author, created_at) \
             SELECT $1, $2, $3, $4, $5, $6 FROM conversations WHERE tenant_id = $2 AND id = $3",
        )
        .bind(&note.id)
        .bind(self.tenant_id().as_str())
        .bind(conversation_id)
        .bind(body)
        .bind(author)
        .bind(note.created_at)
        .execute(self.storage().pool())
        .await
        .context("adding a conversation note")?
        .rows_affected();
        Ok((inserted > 0).then_some(note))
    }

    /// A conversation's notes, oldest first.
    pub async fn conversation_notes(
        &self,
        conversation_id: &str,
    ) -> Result<Vec<ConversationNote>, StorageError> {
        let rows = sqlx::query(
            "SELECT id, conversation_id, body, author, created_at FROM conversation_notes \
             WHERE tenant_id = $1 AND conversation_id = $2 ORDER BY id",
        )
        .bind(self.tenant_id().as_str())
        .bind(conversation_id)
        .fetch_all(self.storage().pool())
        .await
        .context("reading conversation notes")?;
        rows.iter()
            .map(|row| {
                Ok(ConversationNote {
                    id: row.try_get("id")?,
                    conversation_id: row.try_get("conversation_id")?,
                    body: row.try_get("body")?,
                    author: row.try_get("author")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding conversation notes")
    }

    /// The contact with this (E.164) phone number.
    pub async fn contact_by_phone(
        &self,
        phone: &str,
    ) -> Result<Option<super::Contact>, StorageError> {
        let row = sqlx::query("SELECT id FROM contacts WHERE tenant_id = $1 AND phone = $2")
            .bind(self.tenant_id().as_str())
            .bind(phone)
            .fetch_optional(self.storage().pool())
            .await
            .context("finding a contact by phone")?;
        match row {
            Some(row) => {
                let id: String = row.try_get("id").context("decoding a contact id")?;
                self.get_contact(&id).await
            }
            None => Ok(None),
        }
    }

    /// The tenant's opt-out and opt-in keywords (defaults when never set).
    pub async fn messaging_keywords(&self) -> Result<(Vec<String>, Vec<String>), StorageError> {
        let row = sqlx::query(
            "SELECT opt_out_keywords, opt_in_keywords FROM messaging_settings WHERE tenant_id = $1",
        )
        .bind(self.tenant_id().as_str())
        .fetch_optional(self.storage().pool())
        .await
        .context("reading messaging settings")?;
        let Some(row) = row else {
            return Ok((
                DEFAULT_OPT_OUT.iter().map(|k| k.to_string()).collect(),
                DEFAULT_OPT_IN.iter().map(|k| k.to_string()).collect(),
            ));
        };
        let list = |name: &str| -> Result<Vec<String>, StorageError> {
            let text: String = row.try_get(name).context("decoding messaging settings")?;
            Ok(serde_json::from_str(&text).unwrap_or_default())
        };
        Ok((list("opt_out_keywords")?, list("opt_in_keywords")?))
    }

    /// Replaces the tenant's opt-out and opt-in keywords.
    pub async fn set_messaging_keywords(
        &self,
        opt_out: &[String],
        opt_in: &[String],
    ) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO messaging_settings (tenant_id, opt_out_keywords, opt_in_keywords, updated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO UPDATE SET \
             opt_out_keywords = excluded.opt_out_keywords, opt_in_keywords = excluded.opt_in_keywords, \
             updated_at = excluded.updated_at",
        )
        .bind(self.tenant_id().as_str())
        .bind(serde_json::to_string(opt_out).unwrap_or_else(|_| "[]".into()))
        .bind(serde_json::to_string(opt_in).unwrap_or_else(|_| "[]".into()))
        .bind(now_ms())
        .execute(self.storage().pool())
        .await
        .context("saving messaging settings")
        .map(drop)
    }
}

/// Default opt-out keywords (matched case-insensitively against the whole message).
pub const DEFAULT_OPT_OUT: [&str; 5] = ["STOP", "UNSUBSCRIBE", "STOPALL", "CANCEL", "END"];
/// Default opt-in keywords.
pub const DEFAULT_OPT_IN: [&str; 2] = ["START", "SUBSCRIBE"];

/// A note on a conversation.
#[derive(Debug, Clone, Serialize)]
pub struct ConversationNote {
    /// Its id.
    pub id: String,
    /// The conversation.
    pub conversation_id: String,
    /// The text.
    pub body: String,
    /// Who wrote it (an API key id).
    pub author: Option<String>,
    /// When, Unix ms.
    pub created_at: i64,
}

/// Who a conversation is assigned to, as a filter.
#[derive(Debug, Clone)]
pub enum AssigneeFilter {
    /// Nobody.
    Unassigned,
    /// Anybody.
    Assigned,
    /// This agent.
    Agent(String),
}

/// Filters of the conversation list.
#[derive(Debug, Clone, Default)]
pub struct ConversationFilter {
    /// `open` or `closed`.
    pub status: Option<String>,
    /// Assignment.
    pub assignee: Option<AssigneeFilter>,
    /// Only with unread messages.
    pub unread: bool,
    /// One channel.
    pub channel: Option<String>,
    /// One install.
    pub install_id: Option<String>,
    /// One contact.
    pub contact_id: Option<String>,
    /// Only older than this last-message time (paging)…
    pub before: Option<i64>,
    /// …or as old, with a smaller id: the last row of the previous page, so rows that
    /// share its millisecond are not skipped (the inbound writer stores a batch at once).
    pub before_id: Option<String>,
    /// At most this many.
    pub limit: i64,
}

/// A change to a conversation.
#[derive(Debug, Clone, Default)]
pub struct ConversationChange {
    /// A new assignee (`Some(None)` unassigns).
    pub assignee: Option<Option<String>>,
    /// A new status.
    pub status: Option<String>,
    /// Reset the unread count.
    pub mark_read: bool,
}

/// Appends a status to a message's history inside `tx`.
async fn history_insert(
    tx: &mut sqlx::AnyConnection,
    tenant: &str,
    message_id: &str,
    status: &str,
    provider_at: Option<i64>,
    error: Option<&Value>,
) -> Result<(), sqlx::Error> {
    sqlx::query(HISTORY_INSERT)
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(tenant)
        .bind(message_id)
        .bind(status)
        .bind(provider_at)
        .bind(error.map(Value::to_string))
        .bind(now_ms())
        .execute(tx)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{ContactData, testing};

    /// Paging through conversations and messages that share a millisecond (the inbound
    /// writer stores a batch at once) returns every row exactly once.
    #[tokio::test]
    async fn pages_do_not_skip_rows_of_the_same_millisecond() -> anyhow::Result<()> {
        for backend in testing::all_backends().await? {
            let label = backend.label;
            let tenant = backend.storage.create_tenant("Paging", "pro").await?;
            let db = backend.storage.tenant(&tenant.id);
            let inbound = |n: usize, phone: String| InboundRecord {
                message_id: uuid::Uuid::now_v7().to_string(),
                install_id: "install-1".into(),
                channel: "whatsapp".into(),
                provider_message_id: format!("wamid.page{n}"),
                phone,
                profile_name: None,
                timestamp_ms: now_ms(),
                kind: "text".into(),
                content: serde_json::json!({"body": format!("message {n}")}),
                reply_to: None,
            };
            let mut conversation = String::new();
            for n in 0..5 {
                // Five conversations, and five messages in the last one.
                db.record_inbound(&inbound(n, format!("+1415555020{n}")), |_| Vec::new())
                    .await?;
                conversation = db
                    .record_inbound(&inbound(10 + n, "+14155550209".into()), |_| Vec::new())
                    .await?
                    .conversation_id;
            }
            for sql in [
                "UPDATE conversations SET last_message_at = 1000 WHERE tenant_id = $1",
                "UPDATE messages SET created_at = 1000 WHERE tenant_id = $1",
            ] {
                sqlx::query(sql)
                    .bind(tenant.id.as_str())
                    .execute(backend.storage.pool())
                    .await?;
            }
            let mut seen = Vec::new();
            let mut filter = ConversationFilter {
                limit: 2,
                ..ConversationFilter::default()
            };
            loop {
                let page = db.conversations(&filter).await?;
                seen.extend(page.iter().map(|c| c.id.clone()));
                let Some(last) = page.last().filter(|_| page.len() == 2) else {
                    break;
                };
                filter.before = Some(last.last_message_at);
                filter.before_id = Some(last.id.clone());
            }
            let distinct: std::collections::HashSet<_> = seen.iter().collect();
            assert_eq!((seen.len(), distinct.len()), (6, 6), "{label}: {seen:?}");

            let mut texts = Vec::new();
            let mut before = None;
            loop {
                let page = db.conversation_messages(&conversation, before, 2).await?;
                texts.splice(0..0, page.iter().map(|m| m.content["body"].clone()));
                let Some(first) = page.first().filter(|_| page.len() == 2) else {
                    break;
                };
                before = Some((first.created_at, Some(first.id.clone())));
            }
            let expected: Vec<_> = (10..15)
                .map(|n| serde_json::json!(format!("message {n}")))
                .collect();
            assert_eq!(texts, expected, "{label}");
        }
        Ok(())
    }

    /// A contact with a phone for outbound tests.
    async fn phone_contact(db: &TenantDb) -> anyhow::Result<crate::storage::Contact> {
        db.create_contact(&ContactData {
            name: None,
            phone: Some("+14155550100".into()),
            email: None,
            tags: Vec::new(),
            fields: serde_json::json!({}),
        })
        .await
        .map_err(|error| anyhow::anyhow!("{error:?}"))
    }

    /// A text message to `contact_id` through `install-1`, queued as handed over now.
    async fn queue_text(
        db: &TenantDb,
        contact_id: &str,
        text: &str,
        allowance: Option<u64>,
    ) -> anyhow::Result<Message> {
        let record = OutboundRecord {
            message_id: uuid::Uuid::now_v7().to_string(),
            install_id: "install-1".into(),
            channel: "whatsapp".into(),
            contact_id: contact_id.to_string(),
            kind: "text".into(),
            content: serde_json::json!({"text": {"body": text}}),
            reply_to: None,
            purpose: "service".into(),
            idempotency_key: None,
            request_hash: None,
            sent_by: None,
            allowance,
        };
        let how = Outbox::Now {
            attempted_at: now_ms(),
            recipient: None,
        };
        match db.queue_outbound_with(&record, &how).await? {
            Queued::New(message) => Ok(message),
            other => Err(anyhow::anyhow!("not queued: {other:?}")),
        }
    }

    /// A dead-lettered send fails its message only while no provider took it (the
    /// outbox's `fail_stranded`): the failure gives the month's allowance back and is
    /// recorded once; an accepted message is left alone and keeps its count.
    #[tokio::test]
    async fn only_a_queued_message_fails_as_stranded_on_every_backend() -> anyhow::Result<()> {
        for backend in testing::all_backends().await? {
            let label = backend.label;
            let tenant = backend.storage.create_tenant("Stranded", "pro").await?;
            let db = backend.storage.tenant(&tenant.id);
            let contact = phone_contact(&db).await?;
            let queue = || queue_text(&db, &contact.id, "hello", Some(10));
            let stranded = queue().await?;
            let accepted = queue().await?;
            db.mark_accepted(&accepted.id, "wamid.taken", |_, _| Vec::new(), None)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{label}: not accepted"))?;
            let month = super::super::month_of(now_ms());
            assert_eq!(db.messages_sent(&month).await?, 2, "{label}: both counted");

            let error = serde_json::json!({"code": "send-job-failed", "message": "the channel plugin failed"});
            let failed = db
                .mark_failed(&stranded.id, "failed", &error, true)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{label}: the queued message did not fail"))?;
            assert_eq!(failed.status, "failed", "{label}");
            assert_eq!(
                db.messages_sent(&month).await?,
                1,
                "{label}: its count given back"
            );
            assert!(
                db.mark_failed(&stranded.id, "failed", &error, true)
                    .await?
                    .is_none(),
                "{label}: a message fails once"
            );
            assert!(
                db.mark_failed(&accepted.id, "failed", &error, true)
                    .await?
                    .is_none(),
                "{label}: a message the provider took is not failed as stranded"
            );
            let kept = db
                .message(&accepted.id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{label}: gone"))?;
            assert_eq!(kept.status, "accepted", "{label}");
            assert_eq!(
                db.messages_sent(&month).await?,
                1,
                "{label}: the accepted one still counts"
            );
            // A message queued (and counted) in an earlier month gives its count back to
            // that month, not to the month it fails in.
            let late = queue().await?;
            let earlier = now_ms() - 40 * 24 * 3600 * 1000;
            let earlier_month = super::super::month_of(earlier);
            let pool = backend.storage.pool();
            sqlx::query("UPDATE messages SET created_at = $1 WHERE id = $2")
                .bind(earlier)
                .bind(late.id.as_str())
                .execute(pool)
                .await?;
            sqlx::query(
                "UPDATE message_usage SET sent = sent - 1 WHERE tenant_id = $1 AND month = $2",
            )
            .bind(tenant.id.as_str())
            .bind(month.as_str())
            .execute(pool)
            .await?;
            sqlx::query("INSERT INTO message_usage (tenant_id, month, sent) VALUES ($1, $2, 5)")
                .bind(tenant.id.as_str())
                .bind(earlier_month.as_str())
                .execute(pool)
                .await?;
            db.mark_failed(&late.id, "failed", &error, true)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{label}: the late message did not fail"))?;
            assert_eq!(
                db.messages_sent(&earlier_month).await?,
                4,
                "{label}: given back to its month"
            );
            assert_eq!(
                db.messages_sent(&month).await?,
                1,
                "{label}: this month untouched"
            );

            let history: Vec<String> = db
                .status_history(&stranded.id)
                .await?
                .into_iter()
                .map(|entry| entry.status)
                .collect();
            assert_eq!(
                history.iter().filter(|status| *status == "failed").count(),
                1,
                "{label}: {history:?}"
            );
        }
        Ok(())
    }

    /// A status for a provider id never sent waits, and is swept once old.
    #[tokio::test]
    async fn statuses_for_unknown_messages_wait_and_are_swept() -> anyhow::Result<()> {
        for backend in testing::all_backends().await? {
            let label = backend.label;
            let tenant = backend.storage.create_tenant("Early", "pro").await?;
            let db = backend.storage.tenant(&tenant.id);
            let applied = db
                .apply_status(
                    "install-1",
                    "wamid.never-sent",
                    "delivered",
                    None,
                    None,
                    |_, _| Vec::new(),
                )
                .await?;
            assert!(applied.is_none(), "{label}: kept for later");
            let waiting = || async {
                sqlx::query("SELECT COUNT(*) AS n FROM early_statuses WHERE tenant_id = $1")
                    .bind(tenant.id.as_str())
                    .fetch_one(backend.storage.pool())
                    .await
                    .and_then(|row| row.try_get::<i64, _>("n"))
            };
            assert_eq!(waiting().await?, 1, "{label}");
            assert_eq!(
                backend
                    .storage
                    .sweep_early_statuses(now_ms() - 60_000)
                    .await?,
                0,
                "{label}: a fresh one stays"
            );
            assert!(backend.storage.sweep_early_statuses(now_ms() + 1).await? >= 1);
            assert_eq!(waiting().await?, 0, "{label}");
        }
        Ok(())
    }

    /// Statuses of one message applied at the same time (Meta delivers `delivered` and
    /// `read` on separate connections, and retries): the message ends in the highest
    /// state whatever the interleaving, and each state counts as a change exactly once
    /// (one tenant webhook, one event).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_statuses_only_move_forward_and_change_once() -> anyhow::Result<()> {
        const MESSAGES: usize = 30;
        for backend in testing::all_backends().await? {
            let label = backend.label;
            let tenant = backend.storage.create_tenant("Statuses", "pro").await?;
            let db = backend.storage.tenant(&tenant.id);
            let contact = phone_contact(&db).await?;
            let mut wamids = Vec::new();
            for n in 0..MESSAGES {
                let message = queue_text(&db, &contact.id, &format!("message {n}"), None)
                    .await
                    .map_err(|error| anyhow::anyhow!("{label}: message {n}: {error}"))?;
                let wamid = format!("wamid.race{n}");
                db.mark_accepted(&message.id, &wamid, |_, _| Vec::new(), None)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("{label}: message {n} not accepted"))?;
                wamids.push(wamid);
            }
            let apply = |wamid: String, status: &'static str| {
                let db = db.clone();
                tokio::spawn(async move {
                    db.apply_status("install-1", &wamid, status, None, None, |_, _| Vec::new())
                        .await
                        .map(|applied| applied.map(|(message, changed)| (message.status, changed)))
                })
            };
            let mut races = Vec::new();
            for wamid in &wamids {
                // `read` twice (a retry), `delivered` and `sent` late, all at once.
                races.push([
                    apply(wamid.clone(), "read"),
                    apply(wamid.clone(), "delivered"),
                    apply(wamid.clone(), "read"),
                    apply(wamid.clone(), "sent"),
                ]);
            }
            for (wamid, race) in wamids.iter().zip(races) {
                let mut read_changes = 0;
                for (task, status) in race.into_iter().zip(["read", "delivered", "read", "sent"]) {
                    let (_, changed) = task
                        .await??
                        .ok_or_else(|| anyhow::anyhow!("{label}: {wamid} unknown"))?;
                    if status == "read" && changed {
                        read_changes += 1;
                    }
                }
                assert_eq!(read_changes, 1, "{label}: {wamid}: `read` counted once");
                let message = db
                    .message_by_provider_id("install-1", wamid)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("{label}: {wamid} gone"))?;
                assert_eq!(message.status, "read", "{label}: {wamid}");
            }
        }
        Ok(())
    }
}
