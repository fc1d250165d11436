//! Workers of the durable job queue (`storage::jobs`): claim due jobs, run their kind's
//! handler with the lease kept alive by a heartbeat (one loop extends the leases of all
//! the jobs running here, every third of the lease), then record the outcome — done,
//! back in the queue after an exponential backoff with jitter (or the handler's
//! `retry_after`), or dead-lettered with the last error once attempts run out.
//!
//! Handlers must be idempotent over their external effects: a job runs again if its
//! worker dies mid-run (after the lease expires). Enqueueing wakes the local workers at
//! once; other nodes find work by polling (every 250 ms).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use tokio::sync::{Notify, Semaphore};

use crate::storage::{Job, NewJob, Storage, StorageError, now_ms};

/// Why a job's run failed.
#[derive(Debug, Clone)]
pub struct JobFailure {
    /// Whether running it again can succeed.
    pub retryable: bool,
    /// What went wrong (kept as the job's last error).
    pub message: String,
    /// Wait at least this long before the next attempt (a provider's Retry-After).
    pub retry_after: Option<Duration>,
    /// Not a failure: the job could not start its work yet (its channel is at its
    /// throughput limit) and runs again after `retry_after` without the run counting
    /// as an attempt.
    pub deferred: bool,
}

impl JobFailure {
    /// A failure worth retrying.
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            message: message.into(),
            retry_after: None,
            deferred: false,
        }
    }

    /// A failure worth retrying, not before `wait`.
    pub fn retry_after(message: impl Into<String>, wait: Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..Self::retry(message)
        }
    }

    /// The job did nothing and runs again after `wait`; the run is not an attempt.
    pub fn defer(message: impl Into<String>, wait: Duration) -> Self {
        Self {
            deferred: true,
            ..Self::retry_after(message, wait)
        }
    }

    /// A failure that retrying cannot fix: the job is dead-lettered at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
            retry_after: None,
            deferred: false,
        }
    }

    /// Whether the runner dead-letters the job after this failure, on the attempt that
    /// was `last_attempt` or not: a permanent failure, or a retryable one on the last
    /// attempt; never a deferral (it is no attempt: the job still comes back). What a
    /// dead-lettered job leaves waiting is settled by its kind's hook
    /// ([`Jobs::on_dead_letter`]).
    pub fn ends_the_job(&self, last_attempt: bool) -> bool {
        !self.deferred && (!self.retryable || last_attempt)
    }
}

impl From<StorageError> for JobFailure {
    fn from(error: StorageError) -> Self {
        JobFailure::retry(format!("storage: {error}"))
    }
}

/// A handler: runs one job.
pub type Handler = Arc<dyn Fn(Job) -> BoxFuture<'static, Result<(), JobFailure>> + Send + Sync>;

/// A job being dead-lettered, as its kind's dead-letter hook sees it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The job's tenant, if any.
    pub tenant_id: Option<String>,
    /// The job's payload.
    pub payload: serde_json::Value,
    /// The last failure.
    pub error: String,
}

/// Settles what a dead-lettered job leaves waiting (see [`Jobs::on_dead_letter`]).
type DeadHook = Arc<dyn Fn(DeadLetter) -> BoxFuture<'static, ()> + Send + Sync>;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct JobCounters {
    /// Jobs that finished successfully.
    pub completed: AtomicU64,
    /// Attempts that failed (retried or dead-lettered).
    pub failed: AtomicU64,
    /// Jobs dead-lettered.
    pub dead: AtomicU64,
    /// Runs deferred (the job's channel at its throughput limit; not attempts).
    pub deferred: AtomicU64,
    /// Jobs started.
    pub started: AtomicU64,
}

struct Inner {
    storage: Storage,
    owner: String,
    handlers: std::sync::RwLock<HashMap<String, Handler>>,
    dead_hooks: std::sync::RwLock<HashMap<String, DeadHook>>,
    wake: Notify,
    slots: Arc<Semaphore>,
    concurrency: usize,
    lease: Duration,
    counters: JobCounters,
    /// The jobs running here, whose leases the heartbeat extends.
    running: Mutex<HashSet<String>>,
}

/// The job queue: enqueue from anywhere, handlers registered by kind, workers started
/// with [`Jobs::run`]. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

/// The backoff before attempt `attempts + 1`: 2^attempts seconds (from 1 s, at most an
/// hour), times a random factor in [0.5, 1.5) so failed jobs do not retry in lockstep.
pub fn backoff(attempts: i64) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 12)).unwrap_or(12);
    let base = Duration::from_secs(1u64 << exponent).min(Duration::from_secs(3600));
    let mut byte = [0u8; 1];
    let jitter = if getrandom::fill(&mut byte).is_ok() {
        0.5 + f64::from(byte[0]) / 256.0
    } else {
        1.0
    };
    base.mul_f64(jitter)
}

impl Jobs {
    /// A queue over `storage` whose workers run at most `concurrency` jobs at once.
    pub fn new(storage: Storage, concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            inner: Arc::new(Inner {
                storage,
                owner: format!("worker-{}", uuid::Uuid::new_v4()),
                handlers: std::sync::RwLock::default(),
                dead_hooks: std::sync::RwLock::default(),
                wake: Notify::new(),
                slots: Arc::new(Semaphore::new(concurrency)),
                concurrency,
                lease: Duration::from_secs(60),
                counters: JobCounters::default(),
                running: Mutex::default(),
            }),
        }
    }

    /// Registers the handler of `kind` (replacing any earlier one).
    pub fn register<F, Fut>(&self, kind: &str, handler: F)
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobFailure>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |job| Box::pin(handler(job)));
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(kind.to_string(), handler);
    }

    /// Registers `settle`, run when a job of `kind` is dead-lettered (a permanent
    /// failure, or a retryable one on its last attempt; never a deferral), before the
    /// job is recorded dead: what the job leaves waiting (a queued message, campaign
    /// recipients) is settled there, once, by the runner that decided — and a crash in
    /// between runs the job again rather than losing the settling.
    pub fn on_dead_letter<F, Fut>(&self, kind: &str, settle: F)
    where
        F: Fn(DeadLetter) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let hook: DeadHook = Arc::new(move |dead| Box::pin(settle(dead)));
        self.inner
            .dead_hooks
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(kind.to_string(), hook);
    }

    /// The storage the queue lives in.
    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// The counters.
    pub fn counters(&self) -> &JobCounters {
        &self.inner.counters
    }

    /// Enqueues a job and wakes the local workers; its id (`None`: key used already).
    pub async fn enqueue(&self, job: &NewJob) -> Result<Option<String>, StorageError> {
        let id = self.inner.storage.enqueue_job(job).await?;
        self.wake();
        Ok(id)
    }

    /// Wakes the local workers (after jobs were inserted inside another transaction).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Runs workers until `stop` turns true, then waits for running jobs to finish (at
    /// most `grace`) and gives back the leases of any still running.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>, grace: Duration) {
        let heartbeat = tokio::spawn(self.clone().heartbeat());
        self.work(&mut stop, grace).await;
        heartbeat.abort();
    }

    /// Extends the leases of the jobs running here, every third of the lease.
    async fn heartbeat(self) {
        let inner = &self.inner;
        let lease_ms = i64::try_from(inner.lease.as_millis()).unwrap_or(60_000);
        loop {
            tokio::time::sleep(inner.lease / 3).await;
            let ids: Vec<String> = inner
                .running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .cloned()
                .collect();
            for chunk in ids.chunks(500) {
                if let Err(error) = inner
                    .storage
                    .heartbeat_jobs(&inner.owner, chunk, lease_ms)
                    .await
                {
                    tracing::warn!(%error, "job heartbeat failed");
                }
            }
        }
    }

    async fn work(&self, stop: &mut tokio::sync::watch::Receiver<bool>, grace: Duration) {
        let inner = &self.inner;
        let mut last_sweep = now_ms();
        loop {
            if *stop.borrow() {
                break;
            }
            let free = inner.slots.available_permits();
            let mut claimed = 0;
            if free > 0 {
                match inner
                    .storage
                    .claim_jobs(
                        &inner.owner,
                        i64::try_from(inner.lease.as_millis()).unwrap_or(60_000),
                        free.min(64),
                    )
                    .await
                {
                    Ok(jobs) => {
                        claimed = jobs.len();
                        for job in jobs {
                            self.spawn(job).await;
                        }
                    }
                    Err(error) => tracing::error!(%error, "claiming jobs failed"),
                }
            }
            if now_ms() - last_sweep > 600_000 {
                last_sweep = now_ms();
                if let Err(error) = inner
                    .storage
                    .sweep_finished_jobs(now_ms() - 86_400_000)
                    .await
                {
                    tracing::warn!(%error, "sweeping finished jobs failed");
                }
                // A status waits for its send's receipt seconds at most; a week is
                // plenty for any provider's retries.
                if let Err(error) = inner
                    .storage
                    .sweep_early_statuses(now_ms() - 7 * 86_400_000)
                    .await
                {
                    tracing::warn!(%error, "sweeping early statuses failed");
                }
            }
            // A full batch means more may be due: look again at once.
            if claimed > 0 && claimed == free.min(64) {
                continue;
            }
            let wait = if free == 0 {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(250)
            };
            tokio::select! {
                () = inner.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        let all = u32::try_from(inner.concurrency).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, inner.slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("jobs still running at shutdown; giving their leases back");
        }
        match inner.storage.release_jobs(&inner.owner).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "job leases released"),
            Err(error) => tracing::error!(%error, "releasing job leases failed"),
        }
    }

    /// Marks job `id` running here (its lease is kept alive) or not.
    fn running(&self, id: &str, running: bool) {
        let mut set = self
            .inner
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if running {
            set.insert(id.to_string());
        } else {
            set.remove(id);
        }
    }

    async fn spawn(&self, job: Job) {
        let Ok(permit) = self.inner.slots.clone().acquire_owned().await else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            this.execute(job).await;
            drop(permit);
        });
    }

    async fn execute(&self, job: Job) {
        let inner = &self.inner;
        let counters = &inner.counters;
        counters.started.fetch_add(1, Ordering::Relaxed);
        let handler = inner
            .handlers
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&job.kind)
            .cloned();
        let id = job.id.clone();
        let completed = job.completed.clone();
        let attempts = job.attempts;
        let last_attempt = job.last_attempt();
        // What a dead-letter hook needs, kept only for kinds that have one.
        let dead_hook = inner
            .dead_hooks
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&job.kind)
            .cloned()
            .map(|hook| (hook, job.tenant_id.clone(), job.payload.clone()));
        let outcome = match handler {
            None => Err(JobFailure::retry(format!(
                "no handler for job kind `{}` on this node",
                job.kind
            ))),
            Some(handler) => {
                self.running(&id, true);
                // A panicking handler fails its attempt instead of the worker.
                let outcome = std::panic::AssertUnwindSafe(handler(job))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Err(JobFailure::retry("the job's handler panicked")));
                self.running(&id, false);
                outcome
            }
        };
        let recorded = match outcome {
            Ok(()) => {
                counters.completed.fetch_add(1, Ordering::Relaxed);
                if completed.is_set() {
                    Ok(()) // the handler recorded it with its own writes
                } else {
                    inner.storage.complete_job(&id, &inner.owner).await
                }
            }
            Err(failure) if failure.deferred => {
                counters.deferred.fetch_add(1, Ordering::Relaxed);
                let wait = failure.retry_after.unwrap_or(Duration::from_secs(1));
                let at = now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
                inner.storage.defer_job(&id, &inner.owner, at).await
            }
            Err(failure) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                let next = (!failure.ends_the_job(last_attempt)).then(|| {
                    let wait = failure.retry_after.unwrap_or_else(|| backoff(attempts - 1));
                    now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2)
                });
                if next.is_none() {
                    counters.dead.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(job = %id, error = %failure.message, "job dead-lettered");
                    if let Some((settle, tenant_id, payload)) = dead_hook {
                        settle(DeadLetter {
                            tenant_id,
                            payload,
                            error: failure.message.clone(),
                        })
                        .await;
                    }
                }
                inner
                    .storage
                    .fail_job(&id, &inner.owner, &failure.message, next)
                    .await
            }
        };
        if let Err(error) = recorded {
            tracing::error!(job = %id, %error, "recording a job's outcome failed; it will run again after its lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempts in 0..20 {
            let wait = backoff(attempts);
            let base = (1u64 << attempts.clamp(0, 12)).min(3600) as f64;
            assert!(wait.as_secs_f64() >= base * 0.5 && wait.as_secs_f64() < base * 1.5);
        }
    }

    #[tokio::test]
    async fn workers_run_retry_and_dead_letter() -> anyhow::Result<()> {
        for db in testing::all_backends().await? {
            let jobs = Jobs::new(db.storage.clone(), 4);
            let runs = Arc::new(AtomicUsize::new(0));
            let counted = runs.clone();
            jobs.register("count", move |_job| {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            });
            jobs.register("flaky", |job| async move {
                if job.attempts < 2 {
                    Err(JobFailure::retry_after(
                        "not yet",
                        Duration::from_millis(10),
                    ))
                } else {
                    Ok(())
                }
            });
            jobs.register("broken", |_job| async move {
                Err(JobFailure::permanent("cannot ever work"))
            });
            // Deferred more often than it may be attempted: deferrals are not attempts.
            let patience = Arc::new(AtomicUsize::new(0));
            let waited = patience.clone();
            jobs.register("patient", move |job| {
                let waited = waited.clone();
                async move {
                    let limit = usize::try_from(job.max_attempts).unwrap_or(0) + 2;
                    if waited.fetch_add(1, Ordering::SeqCst) < limit {
                        Err(JobFailure::defer("not its turn", Duration::from_millis(5)))
                    } else {
                        Ok(())
                    }
                }
            });
            // Dead-letter hooks: only the job the runner dead-letters is settled, once,
            // with its tenant, payload and last error (not the retried, not the
            // deferred past its attempts).
            let settled: Arc<Mutex<Vec<DeadLetter>>> = Arc::default();
            for kind in ["broken", "flaky", "patient"] {
                let settled = settled.clone();
                jobs.on_dead_letter(kind, move |dead| {
                    let settled = settled.clone();
                    async move { settled.lock().expect("lock").push(dead) }
                });
            }
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let worker = tokio::spawn(jobs.clone().run(stopped, Duration::from_secs(5)));
            for n in 0..20 {
                let mut job = NewJob::new("test", "count", None, serde_json::json!({}));
                job.idempotency_key = Some(format!("count-{n}-{}", db.label));
                jobs.enqueue(&job).await?;
            }
            let flaky = jobs
                .enqueue(&NewJob::new("test", "flaky", None, serde_json::json!({})))
                .await?
                .expect("id");
            let broken = jobs
                .enqueue(&NewJob::new(
                    "test",
                    "broken",
                    None,
                    serde_json::json!({"message_id": "m-broken"}),
                ))
                .await?
                .expect("id");
            let mut patient = NewJob::new("test", "patient", None, serde_json::json!({}));
            patient.max_attempts = 3;
            let patient = jobs.enqueue(&patient).await?.expect("id");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let flaky = db.storage.job(&flaky).await?.expect("job");
                let broken = db.storage.job(&broken).await?.expect("job");
                let patient = db.storage.job(&patient).await?.expect("job");
                if runs.load(Ordering::SeqCst) == 20
                    && flaky.state == "done"
                    && broken.state == "dead"
                    && patient.state == "done"
                {
                    assert_eq!(flaky.attempts, 2, "{}", db.label);
                    assert_eq!(patience.load(Ordering::SeqCst), 6, "{}", db.label);
                    assert_eq!(
                        patient.attempts, 1,
                        "{}: deferrals are not attempts",
                        db.label
                    );
                    assert!(jobs.counters().deferred.load(Ordering::SeqCst) >= 5);
                    assert_eq!(broken.attempts, 1, "{}: permanent is not retried", db.label);
                    assert_eq!(broken.last_error.as_deref(), Some("cannot ever work"));
                    let settled = settled.lock().expect("lock").clone();
                    assert_eq!(settled.len(), 1, "{}: {settled:?}", db.label);
                    assert_eq!(
                        (
                            settled[0].payload["message_id"].as_str(),
                            settled[0].error.as_str()
                        ),
                        (Some("m-broken"), "cannot ever work"),
                        "{}",
                        db.label
                    );
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{}: jobs did not finish: runs {} flaky {} broken {}",
                    db.label,
                    runs.load(Ordering::SeqCst),
                    flaky.state,
                    broken.state
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stop.send(true)?;
            worker.await?;
        }
        Ok(())
    }
}
