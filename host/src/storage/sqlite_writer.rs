//! Group commit for the hot write paths on the embedded SQLite database: the job queue
//! (claims, completions), flow runs (starts, recorded steps) and the outbox.
//!
//! Why: through sqlx every statement is a round trip to a connection's worker thread
//! (a channel send and a futex wake-up each way). Profiling the `flow-steps` benchmark
//! showed half of the server's CPU in those wake-ups and context switches and a few per
//! cent in SQLite itself; a run took ~60 such round trips. Here one thread owns a write
//! connection with cached statements; callers send it a closure (one hop, whatever the
//! closure runs), it takes everything waiting (up to [`MAX_BATCH`]) and runs it in ONE
//! transaction — if a closure fails, the batch runs again with each closure in its own
//! savepoint, so one failing closure cannot undo the others ([`run_batch`]) — and
//! answers each caller only after the commit, so an answer means durable. It takes the
//! storage's write gate for each batch, like every other writer of the process
//! (`WriteTx`). The inbound-message writer works the same way.
//!
//! The SQL is the same as the sqlx path's (PostgreSQL and in-memory SQLite use that
//! one): `$N` placeholders are bound by name ([`exec`], [`query`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::ToSql;
use rusqlite::{CachedStatement, Connection, Row};
use tokio::sync::{mpsc, oneshot};

/// At most this many closures share a transaction.
const MAX_BATCH: usize = 256;

/// A closure queued for the writer thread, with the way back to its caller.
trait Work: Send {
    /// Runs the closure (again if the batch is retried); whether it succeeded.
    fn run(&mut self, connection: &Connection) -> bool;
    /// Answers the caller once the batch's transaction has ended.
    fn finish(self: Box<Self>, committed: Result<(), String>);
}

struct Item<T, F> {
    work: F,
    result: Option<rusqlite::Result<T>>,
    reply: oneshot::Sender<Result<T, String>>,
}

impl<T, F> Work for Item<T, F>
where
    T: Send,
    F: Fn(&Connection) -> rusqlite::Result<T> + Send,
{
    fn run(&mut self, connection: &Connection) -> bool {
        let result = (self.work)(connection);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), String>) {
        let answer = match (self.result, committed) {
            (Some(Ok(value)), Ok(())) => Ok(value),
            (Some(Err(error)), _) => Err(error.to_string()),
            (_, Err(error)) => Err(error),
            (None, Ok(())) => Err("the write did not run".to_string()),
        };
        // A caller that stopped waiting (its request was dropped) needs no answer.
        let _ = self.reply.send(answer);
    }
}

/// The writer: a handle to its thread's queue. Cheap to share.
pub(crate) struct SqliteWriter {
    sender: mpsc::UnboundedSender<Box<dyn Work>>,
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWriter").finish_non_exhaustive()
    }
}

impl SqliteWriter {
    /// Starts the writer thread for the SQLite file at `path`, taking its turns at `gate`.
    pub(crate) fn start(path: PathBuf, gate: Option<Arc<tokio::sync::Mutex<()>>>) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let spawned = std::thread::Builder::new()
            .name("postdog-sqlite-writer".into())
            .spawn(move || run(&path, receiver, gate.as_deref()));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the SQLite writer thread");
        }
        Self { sender }
    }

    /// Runs `work` in the next batch's transaction; its result once that committed.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let item: Box<dyn Work> = Box::new(Item {
            work,
            result: None,
            reply,
        });
        self.sender
            .send(item)
            .map_err(|_| "the SQLite writer stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the SQLite writer dropped the write".to_string())?
    }
}

/// A write connection to the SQLite file at `path`, set up like the sqlx pool's (WAL,
/// NORMAL sync, foreign keys, temporary files in memory) with `statements` cached
/// statements and `cache_mib` MiB of page cache.
pub(crate) fn open_for_writing(
    path: &PathBuf,
    statements: usize,
    cache_mib: i64,
) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(Duration::from_secs(10))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoints run on their own thread (`sqlite_checkpoint`), not inside commits.
    connection.pragma_update(None, "wal_autocheckpoint", 0)?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    connection.pragma_update(None, "cache_size", -cache_mib * 1024)?;
    // A savepoint's journal (the statement journal) copies every page before its first
    // change: in memory rather than a temporary file, that is a memcpy instead of a
    // write system call per page.
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    connection.set_prepared_statement_cache_capacity(statements);
    Ok(connection)
}

fn run(
    path: &PathBuf,
    mut receiver: mpsc::UnboundedReceiver<Box<dyn Work>>,
    gate: Option<&tokio::sync::Mutex<()>>,
) {
    let mut connection: Option<Connection> = None;
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        if connection.is_none() {
            // 8 MiB: appends to the queue, outbox and campaign tables touch few pages
            // (32 MiB cost a large campaign's peak memory 24 MB for no measured gain).
            match open_for_writing(path, 128, 8) {
                Ok(opened) => connection = Some(opened),
                Err(error) => {
                    for item in batch {
                        item.finish(Err(format!("opening the database: {error}")));
                    }
                    continue;
                }
            }
        }
        let Some(db) = connection.as_ref() else {
            continue;
        };
        // This thread is not a runtime worker, so it may block on the gate.
        let turn = gate.map(tokio::sync::Mutex::blocking_lock);
        let committed = run_batch(db, &mut batch).map_err(|error| error.to_string());
        drop(turn);
        if committed.is_err() {
            // Start again from a fresh connection (a broken one would fail every batch).
            connection = None;
        }
        for item in batch {
            item.finish(committed.clone());
        }
    }
}

/// Runs `batch` in one transaction. First without savepoints: each one costs a copy of
/// every page the closure changes into the statement journal, and its release a
/// truncation of that journal (together a quarter of this thread's time in the
/// campaign benchmark), while a failing closure is rare. If one fails, the transaction
/// is rolled back and the batch run again with each closure in its own savepoint, so
/// only the failing ones are undone. Closures are `Fn` so they can run twice; a closure
/// that succeeds keeps its changes either way (a savepoint is released, not rolled
/// back), so both passes store the same thing.
fn run_batch(db: &Connection, batch: &mut [Box<dyn Work>]) -> rusqlite::Result<()> {
    // Cached: parsing these for every closure showed up in profiles.
    let control = |sql: &str| db.prepare_cached(sql)?.execute([]).map(drop);
    let ran: rusqlite::Result<()> = (|| {
        control("BEGIN IMMEDIATE")?;
        if batch.iter_mut().all(|item| item.run(db)) {
            return control("COMMIT");
        }
        control("ROLLBACK")?;
        control("BEGIN IMMEDIATE")?;
        for item in batch.iter_mut() {
            control("SAVEPOINT one")?;
            if item.run(db) {
                control("RELEASE one")?;
            } else {
                control("ROLLBACK TO one")?;
                control("RELEASE one")?;
            }
        }
        control("COMMIT")
    })();
    if ran.is_err() && !db.is_autocommit() {
        let _ = db.execute_batch("ROLLBACK");
    }
    ran
}

/// Prepares `sql` (cached) and binds `values` to its `$1`, `$2`, … by name, so the
/// sqlx path's SQL runs unchanged (a placeholder may appear several times or out of
/// order).
pub(crate) fn prepare<'c>(
    connection: &'c Connection,
    sql: &str,
    values: &[&dyn ToSql],
) -> rusqlite::Result<CachedStatement<'c>> {
    let mut statement = connection.prepare_cached(sql)?;
    for (position, value) in values.iter().enumerate() {
        if let Some(index) = statement.parameter_index(&format!("${}", position + 1))? {
            statement.raw_bind_parameter(index, value)?;
        }
    }
    Ok(statement)
}

/// Runs a statement; the number of rows it changed.
pub(crate) fn exec(
    connection: &Connection,
    sql: &str,
    values: &[&dyn ToSql],
) -> rusqlite::Result<usize> {
    prepare(connection, sql, values)?.raw_execute()
}

/// Runs a query and maps each row.
pub(crate) fn query<T>(
    connection: &Connection,
    sql: &str,
    values: &[&dyn ToSql],
    mut map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut statement = prepare(connection, sql, values)?;
    let mut rows = statement.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
    }
    Ok(out)
}

/// Whether a direct SQLite error is a unique-constraint violation.
pub(crate) fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with table `t (k TEXT PRIMARY KEY, v INTEGER)` and a writer on it.
    fn table_t() -> anyhow::Result<(tempfile::TempDir, PathBuf, Arc<SqliteWriter>)> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("w.db");
        Connection::open(&path)?.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")?;
        let writer = Arc::new(SqliteWriter::start(path.clone(), None));
        Ok((dir, path, writer))
    }

    #[tokio::test]
    async fn batches_commit_before_answering_and_isolate_failures() -> anyhow::Result<()> {
        let (_dir, path, writer) = table_t()?;
        let mut tasks = Vec::new();
        for n in 0..200i64 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                writer
                    .write(move |c| {
                        // Out-of-order and repeated placeholders bind by name.
                        exec(
                            c,
                            "INSERT INTO t (v, k) VALUES ($2 + $2 - $2, $1)",
                            &[&format!("k{}", n % 150), &n],
                        )
                    })
                    .await
            }));
        }
        let mut ok = 0;
        let mut failed = 0;
        for task in tasks {
            match task.await? {
                Ok(1) => ok += 1,
                Ok(other) => anyhow::bail!("changed {other} rows"),
                Err(error) => {
                    assert!(error.contains("UNIQUE"), "{error}");
                    failed += 1;
                }
            }
        }
        assert_eq!((ok, failed), (150, 50));
        // Every answered write is visible to another connection (committed).
        let check = Connection::open(&path)?;
        let count: i64 = check.query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))?;
        assert_eq!(count, 150);
        let value: i64 = check.query_row("SELECT v FROM t WHERE k = 'k7'", [], |row| row.get(0))?;
        assert_eq!(value, 7);
        let error = writer
            .write(|c| exec(c, "INSERT INTO t (k, v) VALUES ($1, $2)", &[&"k7", &1]))
            .await
            .expect_err("duplicate");
        assert!(error.contains("UNIQUE"), "{error}");
        Ok(())
    }

    /// A closure that wrote and then failed leaves nothing behind, whichever batch it
    /// shared (the first pass runs without savepoints; a failure re-runs the batch with
    /// one per closure), and the others' writes are all kept, once each.
    #[tokio::test]
    async fn a_closure_that_fails_after_writing_is_undone_alone() -> anyhow::Result<()> {
        let (_dir, path, writer) = table_t()?;
        let mut tasks = Vec::new();
        for n in 0..300i64 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                writer
                    .write(move |c| {
                        exec(
                            c,
                            "INSERT INTO t (k, v) VALUES ($1, $2)",
                            &[&format!("k{n}"), &n],
                        )?;
                        if n % 7 == 3 {
                            // Wrote, then fails: its row must be undone.
                            return Err(rusqlite::Error::InvalidQuery);
                        }
                        Ok(n)
                    })
                    .await
            }));
        }
        for (n, task) in tasks.into_iter().enumerate() {
            let n = n as i64;
            match task.await? {
                Ok(value) => assert_eq!(value, n),
                Err(error) => assert_eq!(n % 7, 3, "write {n} failed: {error}"),
            }
        }
        let check = Connection::open(&path)?;
        let mut rows = check.prepare("SELECT v FROM t ORDER BY v")?;
        let stored: Vec<i64> = rows
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let expected: Vec<i64> = (0..300).filter(|n| n % 7 != 3).collect();
        assert_eq!(stored, expected);
        Ok(())
    }
}
