//! Group commit for inbound messages on the embedded SQLite database.
//!
//! Why: every provider webhook must be stored durably before PostDog answers, and on
//! SQLite every write transaction is serialized. Through sqlx each statement is a
//! round trip to a connection's worker thread, and concurrent writers that lose the
//! write lock sleep in SQLite's busy handler (polling, not queueing): profiling the
//! `inbound` benchmark showed the server at 1.2 of 2 cores, a quarter of the time in
//! context switches and p50 33 ms. Here one thread owns a write connection; webhooks
//! queue on a channel; the thread takes everything waiting (up to 512) and stores it in
//! ONE transaction, then answers each caller. If a message fails, the batch is stored
//! again with each message in its own savepoint, so one bad row cannot undo the others
//! (see [`store_batch`]). One commit per batch instead of per message, no lock convoy,
//! statements prepared once.
//!
//! An inbound message to an open conversation does not assign `status` (the upsert
//! returns it, and only a closed one is reopened by a second statement): an assignment
//! rewrites the entries of every index on the column even when the value is the same,
//! and `conversations_assignee` includes `status` — one random page less per message.
//!
//! The SQL is the same as `TenantDb::record_inbound`'s (PostgreSQL and in-memory SQLite
//! use that path), so both stay in step; the storage tests run both.

use std::path::PathBuf;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::messaging::{InboundRecord, InboundResult, WINDOW_MS};
use super::{NewJob, now_ms};

type MakeJobs = Box<dyn Fn(&InboundResult) -> Vec<NewJob> + Send>;

struct Request {
    tenant: String,
    record: InboundRecord,
    make_jobs: MakeJobs,
    reply: oneshot::Sender<Result<InboundResult, String>>,
}

/// The writer: a handle to its thread's queue.
pub(crate) struct InboundWriter {
    sender: mpsc::Sender<Request>,
}

impl std::fmt::Debug for InboundWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundWriter").finish_non_exhaustive()
    }
}

const MAX_BATCH: usize = 512;

impl InboundWriter {
    /// Starts the writer thread for the SQLite file at `path`; it takes its turns at
    /// `gate` (the storage's write gate) like every other writer of this process.
    pub(crate) fn start(path: PathBuf, gate: Option<Arc<tokio::sync::Mutex<()>>>) -> Self {
        let (sender, receiver) = mpsc::channel(4096);
        let spawned = std::thread::Builder::new()
            .name("postdog-inbound-writer".into())
            .spawn(move || run(&path, receiver, gate.as_deref()));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the inbound writer thread");
        }
        Self { sender }
    }

    /// Stores one inbound message (with its jobs) in the next batch.
    pub(crate) async fn record(
        &self,
        tenant: &str,
        record: InboundRecord,
        make_jobs: MakeJobs,
    ) -> Result<InboundResult, String> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Request {
                tenant: tenant.to_string(),
                record,
                make_jobs,
                reply,
            })
            .await
            .map_err(|_| "the inbound writer stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the inbound writer dropped the request".to_string())?
    }
}

fn run(
    path: &PathBuf,
    mut receiver: mpsc::Receiver<Request>,
    gate: Option<&tokio::sync::Mutex<()>>,
) {
    let mut connection = None;
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        if connection.is_none() {
            // 32 MiB of page cache: each message touches the pages of a contact and a
            // conversation anywhere in the file.
            match super::sqlite_writer::open_for_writing(path, 32, 32) {
                Ok(opened) => connection = Some(opened),
                Err(error) => {
                    for request in batch {
                        let _ = request
                            .reply
                            .send(Err(format!("opening the database: {error}")));
                    }
                    continue;
                }
            }
        }
        let Some(db) = connection.as_mut() else {
            continue;
        };
        // This thread is not a runtime worker, so it may block on the gate.
        let turn = gate.map(tokio::sync::Mutex::blocking_lock);
        let stored = store_batch(db, &batch);
        drop(turn);
        match stored {
            Ok(results) => {
                for (request, result) in batch.into_iter().zip(results) {
                    let _ = request.reply.send(result);
                }
            }
            Err(error) => {
                // The transaction failed as a whole (commit, lock): nothing is stored;
                // every caller hears so and the provider retries.
                connection = None;
                for request in batch {
                    let _ = request
                        .reply
                        .send(Err(format!("storing inbound messages: {error}")));
                }
            }
        }
    }
}

/// Stores `batch` in one transaction. First without savepoints (each costs a copy of
/// every page it touches, and a failing message is rare); if one fails, the
/// transaction is rolled back and the batch stored again with each message in its own
/// savepoint, so that only the failing ones are refused.
fn store_batch(
    db: &mut Connection,
    batch: &[Request],
) -> rusqlite::Result<Vec<Result<InboundResult, String>>> {
    {
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let stored: rusqlite::Result<Vec<InboundResult>> = batch
            .iter()
            .map(|request| store_one(&tx, &request.tenant, &request.record, &request.make_jobs))
            .collect();
        if let Ok(results) = stored {
            tx.commit()?;
            return Ok(results.into_iter().map(Ok).collect());
        }
        // Dropping `tx` rolls the whole batch back.
    }
    let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    for request in batch {
        tx.execute_batch("SAVEPOINT one")?;
        match store_one(&tx, &request.tenant, &request.record, &request.make_jobs) {
            Ok(result) => {
                tx.execute_batch("RELEASE one")?;
                results.push(Ok(result));
            }
            Err(error) => {
                tx.execute_batch("ROLLBACK TO one; RELEASE one")?;
                results.push(Err(format!("storing an inbound message: {error}")));
            }
        }
    }
    tx.commit()?;
    Ok(results)
}

fn store_one(
    tx: &rusqlite::Transaction<'_>,
    tenant: &str,
    record: &InboundRecord,
    make_jobs: &MakeJobs,
) -> rusqlite::Result<InboundResult> {
    if let Some((message_id, conversation_id, contact_id)) = tx
        .prepare_cached(
            "SELECT id, conversation_id, contact_id FROM messages \
             WHERE tenant_id = ?1 AND install_id = ?2 AND provider_message_id = ?3",
        )?
        .query_row(
            params![tenant, record.install_id, record.provider_message_id],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?
    {
        return Ok(InboundResult {
            duplicate: true,
            message_id,
            conversation_id,
            contact_id,
            contact_created: false,
        });
    }
    let now = now_ms();
    let new_contact = uuid::Uuid::now_v7().to_string();
    let created =
        tx.prepare_cached(
            "INSERT INTO contacts (id, tenant_id, name, phone, fields, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, '{}', ?5, ?5) ON CONFLICT (tenant_id, phone) DO NOTHING",
        )?
        .execute(params![
            new_contact,
            tenant,
            record.profile_name,
            record.phone,
            now
        ])? > 0;
    let contact_id = if created {
        new_contact
    } else {
        let (id, name): (String, Option<String>) = tx
            .prepare_cached("SELECT id, name FROM contacts WHERE tenant_id = ?1 AND phone = ?2")?
            .query_row(params![tenant, record.phone], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?;
        if name.is_none() && record.profile_name.is_some() {
            tx.prepare_cached(
                "UPDATE contacts SET name = ?1, updated_at = ?2 WHERE tenant_id = ?3 AND id = ?4",
            )?
            .execute(params![record.profile_name, now, tenant, id])?;
        }
        id
    };
    let window = (record.timestamp_ms.min(now) + WINDOW_MS).max(0);
    let (conversation_id, status): (String, String) = tx
        .prepare_cached(
            "INSERT INTO conversations (id, tenant_id, install_id, channel, contact_id, status, unread, \
             window_expires_at, last_message_at, last_inbound_at, last_inbound_provider_id, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'open', 1, ?6, ?7, ?8, ?9, ?7, ?7) \
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
        )?
        .query_row(
            params![
                uuid::Uuid::now_v7().to_string(),
                tenant,
                record.install_id,
                record.channel,
                contact_id,
                window,
                now,
                record.timestamp_ms,
                record.provider_message_id
            ],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
    if status != "open" {
        tx.prepare_cached("UPDATE conversations SET status = 'open' WHERE id = ?1")?
            .execute(params![conversation_id])?;
    }
    tx.prepare_cached(
        "INSERT INTO messages (id, tenant_id, conversation_id, contact_id, install_id, direction, kind, \
         content, provider_message_id, reply_to, status, status_rank, purpose, provider_at, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'inbound', ?6, ?7, ?8, ?9, 'received', 0, 'service', ?10, ?11, ?11)",
    )?
    .execute(params![
        record.message_id,
        tenant,
        conversation_id,
        contact_id,
        record.install_id,
        record.kind,
        record.content.to_string(),
        record.provider_message_id,
        record.reply_to,
        record.timestamp_ms,
        now
    ])?;
    let result = InboundResult {
        duplicate: false,
        message_id: record.message_id.clone(),
        conversation_id,
        contact_id,
        contact_created: created,
    };
    for job in make_jobs(&result) {
        tx.prepare_cached(
            "INSERT INTO jobs (id, tenant_id, queue, kind, payload, priority, run_at, state, attempts, \
             max_attempts, idempotency_key, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', 0, ?8, ?9, ?10, ?10) \
             ON CONFLICT (idempotency_key) DO NOTHING",
        )?
        .execute(params![
            uuid::Uuid::now_v7().to_string(),
            job.tenant_id.as_ref().map(|t| t.as_str().to_string()),
            job.queue,
            job.kind,
            job.payload.to_string(),
            i64::from(job.priority),
            job.run_at,
            i64::from(job.max_attempts.max(1)),
            job.idempotency_key,
            now
        ])?;
    }
    Ok(result)
}
