//! The durable job queue's table: everything that happens later or again (message
//! sends, webhook deliveries, retries) is a row here. See `crate::jobs` for the workers.
//!
//! A job is *due* when it is `queued` or `running` and `run_at` has passed. Claiming a
//! job moves `run_at` to the end of its lease, so a worker that dies leaves a job that
//! becomes due again when the lease runs out; a job can therefore run twice only after
//! its lease expired, and every handler's external effect carries an idempotency key.
//! On PostgreSQL claims use `FOR UPDATE SKIP LOCKED`, so workers on many nodes never
//! claim the same job; on SQLite one process owns the database.

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use super::{Backend, QueryContext, Storage, StorageError, TenantDb, now_ms};
use crate::ids::TenantId;

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The queue (for listing and metrics), for example `messages` or `webhooks`.
    pub queue: String,
    /// What the job does; selects the handler.
    pub kind: String,
    /// The tenant it belongs to, if any.
    pub tenant_id: Option<TenantId>,
    /// The handler's input.
    pub payload: Value,
    /// Not before this Unix-ms instant.
    pub run_at: i64,
    /// Higher runs first among due jobs.
    pub priority: i32,
    /// Attempts before the job is dead-lettered.
    pub max_attempts: i32,
    /// At most one job ever exists with this key.
    pub idempotency_key: Option<String>,
}

impl NewJob {
    /// A job of `kind` on `queue`, due now, 10 attempts, priority 0.
    pub fn new(queue: &str, kind: &str, tenant_id: Option<&TenantId>, payload: Value) -> Self {
        Self {
            queue: queue.to_string(),
            kind: kind.to_string(),
            tenant_id: tenant_id.cloned(),
            payload,
            run_at: now_ms(),
            priority: 0,
            max_attempts: 10,
            idempotency_key: None,
        }
    }
}

/// A job as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// The job's id.
    pub id: String,
    /// Its tenant, if any.
    pub tenant_id: Option<String>,
    /// Its queue.
    pub queue: String,
    /// Its kind.
    pub kind: String,
    /// The handler's input.
    pub payload: Value,
    /// Priority (higher first).
    pub priority: i64,
    /// When it is (or was) due, Unix ms; for a running job, when its lease ends.
    pub run_at: i64,
    /// queued | running | done | dead | cancelled.
    pub state: String,
    /// Attempts started so far.
    pub attempts: i64,
    /// Attempts allowed.
    pub max_attempts: i64,
    /// The last failure.
    pub last_error: Option<String>,
    /// The idempotency key.
    pub idempotency_key: Option<String>,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Last changed, Unix ms.
    pub updated_at: i64,
    /// Finished (done, dead or cancelled), Unix ms.
    pub finished_at: Option<i64>,
    /// The worker holding it while it runs.
    pub lease_owner: Option<String>,
    /// Set by a handler that recorded the job's completion in its own transaction (see
    /// [`Job::lease`]), so the worker does not record it again.
    #[serde(skip)]
    pub completed: CompletedFlag,
}

/// Whether a running job's handler completed it itself. Shared between the worker and
/// the handler's copy of the job.
#[derive(Debug, Clone, Default)]
pub struct CompletedFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl CompletedFlag {
    /// Whether the handler completed the job.
    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A running job's lease: what a handler needs to complete the job inside its own
/// transaction (`complete_job_direct` / `complete_job_in`), saving the worker's separate
/// write.
#[derive(Debug, Clone)]
pub struct JobLease {
    /// The job.
    pub id: String,
    /// The worker holding it.
    pub owner: String,
    completed: CompletedFlag,
}

impl JobLease {
    /// Tells the worker the job's completion was committed.
    pub fn committed(&self) {
        self.completed
            .0
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Job {
    /// Whether this run is the job's last allowed attempt.
    pub fn last_attempt(&self) -> bool {
        self.attempts >= self.max_attempts
    }

    /// The lease of a claimed job (`None` for a job not running).
    pub fn lease(&self) -> Option<JobLease> {
        Some(JobLease {
            id: self.id.clone(),
            owner: self.lease_owner.clone()?,
            completed: self.completed.clone(),
        })
    }
}

/// Marks a running job done, if `owner` still holds it: $1 now, $2 id, $3 owner.
pub(crate) const COMPLETE_JOB: &str = "UPDATE jobs SET state = 'done', lease_owner = NULL, finished_at = $1, updated_at = $1 \
     WHERE id = $2 AND lease_owner = $3 AND state = 'running'";

/// Completes `lease`'s job inside a transaction on the direct SQLite path.
pub(crate) fn complete_job_direct(
    connection: &rusqlite::Connection,
    lease: &JobLease,
) -> rusqlite::Result<usize> {
    super::sqlite_writer::exec(
        connection,
        COMPLETE_JOB,
        &[&now_ms(), &lease.id, &lease.owner],
    )
}

/// Completes `lease`'s job inside a sqlx transaction.
pub(crate) async fn complete_job_in(
    connection: &mut sqlx::AnyConnection,
    lease: &JobLease,
) -> Result<(), sqlx::Error> {
    sqlx::query(COMPLETE_JOB)
        .bind(now_ms())
        .bind(&lease.id)
        .bind(&lease.owner)
        .execute(connection)
        .await
        .map(drop)
}

const COLUMNS: &str = "id, tenant_id, queue, kind, payload, priority, run_at, state, attempts, \
                       max_attempts, last_error, idempotency_key, created_at, updated_at, finished_at, \
                       lease_owner";

/// A job row read through the direct SQLite path (columns in [`COLUMNS`] order).
fn decode_direct(row: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let payload: String = row.get(4)?;
    Ok(Job {
        id: row.get(0)?,
        tenant_id: row.get(1)?,
        queue: row.get(2)?,
        kind: row.get(3)?,
        payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
        priority: row.get(5)?,
        run_at: row.get(6)?,
        state: row.get(7)?,
        attempts: row.get(8)?,
        max_attempts: row.get(9)?,
        last_error: row.get(10)?,
        idempotency_key: row.get(11)?,
        created_at: row.get(12)?,
        updated_at: row.get(13)?,
        finished_at: row.get(14)?,
        lease_owner: row.get(15)?,
        completed: CompletedFlag::default(),
    })
}

/// Inserts `job` on the direct SQLite path (same SQL as [`insert_job`]).
pub(crate) fn insert_job_direct(
    connection: &rusqlite::Connection,
    job: &NewJob,
) -> rusqlite::Result<Option<String>> {
    let id = uuid::Uuid::now_v7().to_string();
    let now = now_ms();
    let inserted = super::sqlite_writer::exec(
        connection,
        INSERT_JOB,
        &[
            &id,
            &job.tenant_id.as_ref().map(TenantId::as_str),
            &job.queue,
            &job.kind,
            &job.payload.to_string(),
            &i64::from(job.priority),
            &job.run_at,
            &i64::from(job.max_attempts.max(1)),
            &job.idempotency_key.as_deref(),
            &now,
        ],
    )?;
    Ok((inserted > 0).then_some(id))
}

const INSERT_JOB: &str = "INSERT INTO jobs (id, tenant_id, queue, kind, payload, priority, run_at, state, attempts, \
     max_attempts, idempotency_key, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', 0, $8, $9, $10, $10) \
     ON CONFLICT (idempotency_key) DO NOTHING";

fn decode(row: &sqlx::any::AnyRow) -> Result<Job, sqlx::Error> {
    let payload: String = row.try_get("payload")?;
    Ok(Job {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        queue: row.try_get("queue")?,
        kind: row.try_get("kind")?,
        payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
        priority: row.try_get("priority")?,
        run_at: row.try_get("run_at")?,
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        last_error: row.try_get("last_error")?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
        lease_owner: row.try_get("lease_owner")?,
        completed: CompletedFlag::default(),
    })
}

/// Inserts `job` on `executor` (a pool or an open transaction); its id, or `None` when a
/// job with the same idempotency key exists already.
pub(crate) async fn insert_job<'e, E>(
    executor: E,
    job: &NewJob,
) -> Result<Option<String>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let id = uuid::Uuid::now_v7().to_string();
    let now = now_ms();
    let inserted = sqlx::query(INSERT_JOB)
        .bind(&id)
        .bind(job.tenant_id.as_ref().map(TenantId::as_str))
        .bind(&job.queue)
        .bind(&job.kind)
        .bind(job.payload.to_string())
        .bind(i64::from(job.priority))
        .bind(job.run_at)
        .bind(i64::from(job.max_attempts.max(1)))
        .bind(job.idempotency_key.as_deref())
        .bind(now)
        .execute(executor)
        .await?
        .rows_affected();
    Ok((inserted > 0).then_some(id))
}

/// Counts of jobs by state, for metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueDepth {
    /// The queue.
    pub queue: String,
    /// Waiting (due or not).
    pub queued: i64,
    /// Running now.
    pub running: i64,
    /// Dead-lettered.
    pub dead: i64,
    /// Milliseconds the oldest due queued job has waited.
    pub oldest_due_ms: i64,
}

impl Storage {
    /// Enqueues a job; its id, or `None` if its idempotency key was used already.
    pub async fn enqueue_job(&self, job: &NewJob) -> Result<Option<String>, StorageError> {
        let _turn = self.write_turn().await;
        insert_job(self.pool(), job)
            .await
            .context("enqueueing a job")
    }

    /// Claims up to `limit` due jobs for `owner` with a lease of `lease_ms`.
    pub async fn claim_jobs(
        &self,
        owner: &str,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<Job>, StorageError> {
        let now = now_ms();
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE jobs SET state = 'running', lease_owner = $1, run_at = $2, \
             attempts = attempts + 1, updated_at = $3 \
             WHERE id IN (SELECT id FROM jobs WHERE state IN ('queued', 'running') AND run_at <= $3 \
                          ORDER BY priority DESC, run_at LIMIT $4{lock}) \
             RETURNING {COLUMNS}"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        if let Some(writer) = self.sqlite_writer() {
            let owner = owner.to_string();
            return writer
                .write(move |c| {
                    super::sqlite_writer::query(
                        c,
                        &sql,
                        &[&owner, &(now + lease_ms), &now, &limit],
                        decode_direct,
                    )
                })
                .await
                .map_err(|message| StorageError::Direct {
                    context: "claiming jobs",
                    message,
                });
        }
        let _turn = self.write_turn().await;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(now + lease_ms)
            .bind(now)
            .bind(limit)
            .fetch_all(self.pool())
            .await
            .context("claiming jobs")?;
        rows.iter()
            .map(decode)
            .collect::<Result<_, _>>()
            .context("decoding claimed jobs")
    }

    /// Extends the leases of `ids` held by `owner`.
    pub async fn heartbeat_jobs(
        &self,
        owner: &str,
        ids: &[String],
        lease_ms: i64,
    ) -> Result<(), StorageError> {
        let _turn = self.write_turn().await;
        if ids.is_empty() {
            return Ok(());
        }
        let list = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
        let ids_sql = match self.backend() {
            Backend::Sqlite => "SELECT value FROM json_each($3)",
            Backend::Postgres => "SELECT jsonb_array_elements_text($3::jsonb)",
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET run_at = $1 WHERE state = 'running' AND lease_owner = $2 AND id IN ({ids_sql})"
        )))
        .bind(now_ms() + lease_ms)
        .bind(owner)
        .bind(list)
        .execute(self.pool())
        .await
        .context("extending job leases")
        .map(drop)
    }

    /// Marks a job done (if `owner` still holds it).
    pub async fn complete_job(&self, id: &str, owner: &str) -> Result<(), StorageError> {
        const SQL: &str = COMPLETE_JOB;
        let now = now_ms();
        if let Some(writer) = self.sqlite_writer() {
            let (id, owner) = (id.to_string(), owner.to_string());
            return writer
                .write(move |c| super::sqlite_writer::exec(c, SQL, &[&now, &id, &owner]))
                .await
                .map(drop)
                .map_err(|message| StorageError::Direct {
                    context: "completing a job",
                    message,
                });
        }
        let _turn = self.write_turn().await;
        sqlx::query(SQL)
            .bind(now)
            .bind(id)
            .bind(owner)
            .execute(self.pool())
            .await
            .context("completing a job")
            .map(drop)
    }

    /// Puts a failed job back in the queue until `run_at`, or dead-letters it when
    /// `run_at` is `None`.
    pub async fn fail_job(
        &self,
        id: &str,
        owner: &str,
        error: &str,
        run_at: Option<i64>,
    ) -> Result<(), StorageError> {
        let _turn = self.write_turn().await;
        let now = now_ms();
        let query = match run_at {
            Some(run_at) => sqlx::query(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, run_at = $1, last_error = $2, \
                 updated_at = $3 WHERE id = $4 AND lease_owner = $5 AND state = 'running'",
            )
            .bind(run_at),
            None => sqlx::query(
                "UPDATE jobs SET state = 'dead', lease_owner = NULL, finished_at = $1, last_error = $2, \
                 updated_at = $3 WHERE id = $4 AND lease_owner = $5 AND state = 'running'",
            )
            .bind(now),
        };
        query
            .bind(error)
            .bind(now)
            .bind(id)
            .bind(owner)
            .execute(self.pool())
            .await
            .context("recording a job failure")
            .map(drop)
    }

    /// Puts running job `id` back in the queue, due at `run_at`, without the run
    /// counting as an attempt (its work could not start yet: see `JobFailure::defer`).
    pub async fn defer_job(&self, id: &str, owner: &str, run_at: i64) -> Result<(), StorageError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "UPDATE jobs SET state = 'queued', lease_owner = NULL, run_at = $1, \
             attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, updated_at = $2 \
             WHERE id = $3 AND lease_owner = $4 AND state = 'running'",
        )
        .bind(run_at)
        .bind(now_ms())
        .bind(id)
        .bind(owner)
        .execute(self.pool())
        .await
        .context("deferring a job")
        .map(drop)
    }

    /// Gives back the jobs `owner` holds (graceful shutdown): they are due again at once
    /// and the interrupted attempt does not count.
    pub async fn release_jobs(&self, owner: &str) -> Result<u64, StorageError> {
        let _turn = self.write_turn().await;
        let now = now_ms();
        sqlx::query(
            "UPDATE jobs SET state = 'queued', lease_owner = NULL, run_at = $1, \
             attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, updated_at = $1 \
             WHERE lease_owner = $2 AND state = 'running'",
        )
        .bind(now)
        .bind(owner)
        .execute(self.pool())
        .await
        .context("releasing job leases")
        .map(|result| result.rows_affected())
    }

    /// Makes the jobs leased by a server that is gone due now, as if their leases had
    /// just ended (the interrupted attempts count, as at lease expiry). Only for a
    /// database no other running server leases jobs from: an SQLite file whose server
    /// lock this process holds (`server::lock_database`). How many.
    pub async fn resume_interrupted_jobs(&self) -> Result<u64, StorageError> {
        let _turn = self.write_turn().await;
        let now = now_ms();
        sqlx::query(
            "UPDATE jobs SET run_at = $1, updated_at = $1 WHERE state = 'running' AND run_at > $1",
        )
        .bind(now)
        .execute(self.pool())
        .await
        .context("resuming interrupted jobs")
        .map(|result| result.rows_affected())
    }

    /// Deletes finished jobs older than `before` (Unix ms); how many.
    pub async fn sweep_finished_jobs(&self, before: i64) -> Result<u64, StorageError> {
        let _turn = self.write_turn().await;
        sqlx::query("DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1")
            .bind(before)
            .execute(self.pool())
            .await
            .context("sweeping finished jobs")
            .map(|result| result.rows_affected())
    }

    /// Deletes statuses that waited since before `before` (Unix ms) for a send receipt
    /// that never came (a provider id PostDog never sent, or another system's
    /// message on the same number); how many.
    pub async fn sweep_early_statuses(&self, before: i64) -> Result<u64, StorageError> {
        let _turn = self.write_turn().await;
        sqlx::query("DELETE FROM early_statuses WHERE recorded_at < $1")
            .bind(before)
            .execute(self.pool())
            .await
            .context("sweeping early statuses")
            .map(|result| result.rows_affected())
    }

    /// Queue depths by queue, for `/metrics`.
    pub async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StorageError> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT queue, \
                    SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END) AS queued, \
                    SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END) AS running, \
                    SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END) AS dead, \
                    MIN(CASE WHEN state = 'queued' AND run_at <= $1 THEN run_at ELSE NULL END) AS oldest \
             FROM jobs GROUP BY queue ORDER BY queue",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await
        .context("measuring queue depth")?;
        rows.iter()
            .map(|row| {
                let oldest: Option<i64> = row.try_get("oldest")?;
                Ok(QueueDepth {
                    queue: row.try_get("queue")?,
                    queued: row.try_get("queued")?,
                    running: row.try_get("running")?,
                    dead: row.try_get("dead")?,
                    oldest_due_ms: oldest.map_or(0, |at| (now - at).max(0)),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding queue depth")
    }

    /// One job by id, whatever its tenant (for workers).
    pub async fn job(&self, id: &str) -> Result<Option<Job>, StorageError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .context("reading a job")?;
        row.as_ref()
            .map(decode)
            .transpose()
            .context("decoding a job")
    }

    /// Jobs of any tenant, newest first (the operator's `postdog jobs list`).
    pub async fn all_jobs(
        &self,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Job>, StorageError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobs WHERE ($1 IS NULL OR state = $1) ORDER BY created_at DESC, id DESC LIMIT $2"
        )))
        .bind(state)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .context("listing jobs")?;
        rows.iter()
            .map(decode)
            .collect::<Result<_, _>>()
            .context("decoding jobs")
    }

    /// Puts a dead or cancelled job back in the queue, due now; whether it was.
    pub async fn retry_job(&self, tenant: Option<&str>, id: &str) -> Result<bool, StorageError> {
        let _turn = self.write_turn().await;
        let now = now_ms();
        sqlx::query(
            "UPDATE jobs SET state = 'queued', run_at = $1, attempts = 0, finished_at = NULL, \
             updated_at = $1 WHERE id = $2 AND state IN ('dead', 'cancelled') \
             AND ($3 IS NULL OR tenant_id = $3)",
        )
        .bind(now)
        .bind(id)
        .bind(tenant)
        .execute(self.pool())
        .await
        .context("retrying a job")
        .map(|result| result.rows_affected() > 0)
    }

    /// Cancels a job that has not finished; whether it was. A running attempt finishes
    /// but its outcome is not recorded and the job is not run again.
    pub async fn cancel_job(&self, tenant: Option<&str>, id: &str) -> Result<bool, StorageError> {
        let _turn = self.write_turn().await;
        let now = now_ms();
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', lease_owner = NULL, finished_at = $1, updated_at = $1 \
             WHERE id = $2 AND state IN ('queued', 'running') AND ($3 IS NULL OR tenant_id = $3)",
        )
        .bind(now)
        .bind(id)
        .bind(tenant)
        .execute(self.pool())
        .await
        .context("cancelling a job")
        .map(|result| result.rows_affected() > 0)
    }
}

impl TenantDb {
    /// This tenant's jobs, newest first, optionally of one state and/or queue.
    pub async fn jobs(
        &self,
        state: Option<&str>,
        queue: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Job>, StorageError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobs WHERE tenant_id = $1 AND ($2 IS NULL OR state = $2) \
             AND ($3 IS NULL OR queue = $3) ORDER BY created_at DESC, id DESC LIMIT $4"
        )))
        .bind(self.tenant_id().as_str())
        .bind(state)
        .bind(queue)
        .bind(limit)
        .fetch_all(self.storage().pool())
        .await
        .context("listing jobs")?;
        rows.iter()
            .map(decode)
            .collect::<Result<_, _>>()
            .context("decoding jobs")
    }

    /// One of this tenant's jobs.
    pub async fn job(&self, id: &str) -> Result<Option<Job>, StorageError> {
        Ok(self
            .storage()
            .job(id)
            .await?
            .filter(|job| job.tenant_id.as_deref() == Some(self.tenant_id().as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing;

    #[tokio::test]
    async fn claims_leases_retries_and_dead_letters_on_every_backend() -> anyhow::Result<()> {
        for db in testing::all_backends().await? {
            let storage = &db.storage;
            let label = db.label;
            let mut job = NewJob::new("test", "noop", None, serde_json::json!({"n": 1}));
            job.idempotency_key = Some("once".into());
            job.max_attempts = 2;
            let id = storage.enqueue_job(&job).await?.expect("first insert");
            assert_eq!(
                storage.enqueue_job(&job).await?,
                None,
                "{label}: key reused"
            );

            let claimed = storage.claim_jobs("a", 60_000, 10).await?;
            assert_eq!(claimed.len(), 1, "{label}");
            assert_eq!(claimed[0].attempts, 1, "{label}");
            assert!(
                storage.claim_jobs("b", 60_000, 10).await?.is_empty(),
                "{label}: a leased job is not claimed twice"
            );
            storage.fail_job(&id, "a", "boom", Some(0)).await?;
            let again = storage.claim_jobs("b", 0, 10).await?;
            assert_eq!(again.len(), 1, "{label}: retried job due");
            // Lease of 0 ms: expired at once, so another worker may take it over.
            let taken = storage.claim_jobs("c", 60_000, 10).await?;
            assert_eq!(taken.len(), 1, "{label}: expired lease reclaimed");
            // The old owner's late completion is ignored.
            storage.complete_job(&id, "b").await?;
            assert_eq!(
                storage.job(&id).await?.map(|job| job.state),
                Some("running".into()),
                "{label}"
            );
            storage.fail_job(&id, "c", "final", None).await?;
            let dead = storage.job(&id).await?.expect("job");
            assert_eq!(dead.state, "dead", "{label}");
            assert_eq!(dead.last_error.as_deref(), Some("final"), "{label}");
            assert!(storage.retry_job(None, &id).await?, "{label}");
            let claimed = storage.claim_jobs("d", 60_000, 10).await?;
            assert_eq!(claimed.len(), 1, "{label}");
            assert_eq!(storage.release_jobs("d").await?, 1, "{label}");
            let released = storage.job(&id).await?.expect("job");
            assert_eq!(
                (released.state.as_str(), released.attempts),
                ("queued", 0),
                "{label}"
            );
            assert!(storage.cancel_job(None, &id).await?, "{label}");
            assert!(
                storage.claim_jobs("e", 60_000, 10).await?.is_empty(),
                "{label}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_dead_servers_leases_are_due_at_once_when_resumed() -> anyhow::Result<()> {
        for db in testing::all_backends().await? {
            let storage = &db.storage;
            let label = db.label;
            let waiting = NewJob::new("test", "noop", None, serde_json::json!({"n": 1}));
            let mut later = NewJob::new("test", "noop", None, serde_json::json!({"n": 2}));
            later.run_at = now_ms() + 3_600_000;
            let id = storage.enqueue_job(&waiting).await?.expect("job");
            let later_id = storage.enqueue_job(&later).await?.expect("job");
            assert_eq!(storage.claim_jobs("gone", 600_000, 10).await?.len(), 1);
            assert!(
                storage.claim_jobs("new", 60_000, 10).await?.is_empty(),
                "{label}: leased for ten minutes"
            );
            assert_eq!(storage.resume_interrupted_jobs().await?, 1, "{label}");
            let claimed = storage.claim_jobs("new", 60_000, 10).await?;
            assert_eq!(
                claimed
                    .iter()
                    .map(|job| job.id.as_str())
                    .collect::<Vec<_>>(),
                [id.as_str()],
                "{label}: the interrupted job, not the one queued for later"
            );
            assert_eq!(
                claimed[0].attempts, 2,
                "{label}: the interrupted attempt counts"
            );
            assert_eq!(
                storage.job(&later_id).await?.map(|job| job.state),
                Some("queued".into()),
                "{label}"
            );
        }
        Ok(())
    }
}
