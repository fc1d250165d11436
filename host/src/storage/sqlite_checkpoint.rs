//! WAL checkpoints of the embedded SQLite database, on a thread of their own.
//!
//! Why: by default SQLite checkpoints inside the commit that takes the write-ahead log
//! past 1,000 pages, so one writer in every few hundred commits also copies the log
//! into the database file and fsyncs it before it answers. Profiling the `inbound`
//! benchmark put a quarter of the inbound writer thread's time there, and every webhook
//! of that batch waited for the copy. Here the process's connections have
//! `wal_autocheckpoint = 0` and this thread checkpoints every [`INTERVAL`] with PASSIVE
//! checkpoints, which never take the write lock nor wait for anyone: commits go on while
//! the log is copied, and a page changed many times between two checkpoints is copied
//! once.
//!
//! A log that is written to without pause is never entirely copied at the moment a
//! writer begins, so SQLite never starts it over; under the benchmark's load it grew by
//! ~170 MB/s of new file blocks. So once it passes [`RESTART_FRAMES`], the thread copies
//! twice more: once as usual (what was committed during the first pass), then once
//! inside the process's write turn (see `WriteTx`), where nothing new arrives, so the
//! whole log is copied and the next writer restarts it from its beginning. The write
//! turn is held for that last, short copy only (10–30 ms about once a second under the
//! `inbound` benchmark's load; never when the log is small).
//!
//! The thread ends when the last handle of its [`Storage`](super::Storage) is dropped;
//! SQLite checkpoints once more when the last connection to the file closes.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::Connection;

/// How often the log is copied into the database file.
const INTERVAL: Duration = Duration::from_millis(200);

/// Log size (pages, 128 MiB) past which the log is restarted.
const RESTART_FRAMES: i64 = 32_768;

/// Keeps the checkpoint thread of one database alive; dropping the last clone ends it.
#[derive(Debug)]
pub(crate) struct Checkpointer;

impl Checkpointer {
    /// Starts checkpointing the SQLite file at `path`; the thread runs as long as the
    /// returned handle (or a clone of it) lives.
    /// `gate` is the process's write turn (see `WriteTx`), held over the last copy.
    pub(crate) fn start(path: PathBuf, gate: Option<Arc<tokio::sync::Mutex<()>>>) -> Arc<Self> {
        Self::start_with(path, gate, RESTART_FRAMES)
    }

    fn start_with(
        path: PathBuf,
        gate: Option<Arc<tokio::sync::Mutex<()>>>,
        restart_frames: i64,
    ) -> Arc<Self> {
        let alive = Arc::new(Self);
        let watched = Arc::downgrade(&alive);
        let spawned = std::thread::Builder::new()
            .name("postdog-sqlite-checkpoint".into())
            .spawn(move || run(&path, &watched, gate.as_deref(), restart_frames));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the SQLite checkpoint thread");
        }
        alive
    }
}

fn run(
    path: &PathBuf,
    alive: &Weak<Checkpointer>,
    gate: Option<&tokio::sync::Mutex<()>>,
    restart_frames: i64,
) {
    let mut connection: Option<Connection> = None;
    loop {
        std::thread::sleep(INTERVAL);
        if alive.strong_count() == 0 {
            return;
        }
        if connection.is_none() {
            match open(path) {
                Ok(opened) => connection = Some(opened),
                Err(error) => {
                    tracing::warn!(%error, "opening the database to checkpoint it");
                    continue;
                }
            }
        }
        let Some(db) = connection.as_ref() else {
            continue;
        };
        match checkpoint(db) {
            Ok(log) if log > restart_frames => {
                // Copy what was committed during the first pass, so that little is left
                // to copy inside the write turn.
                let _ = checkpoint(db);
                // This thread is not a runtime worker, so it may block on the gate.
                let turn = gate.map(tokio::sync::Mutex::blocking_lock);
                let copied = checkpoint(db);
                drop(turn);
                if let Err(error) = copied {
                    tracing::warn!(%error, "restarting the write-ahead log");
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "checkpointing the write-ahead log");
                connection = None;
            }
        }
    }
}

fn open(path: &PathBuf) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(connection)
}

/// Runs one PASSIVE checkpoint; answers the size of the log in pages.
fn checkpoint(db: &Connection) -> rusqlite::Result<i64> {
    db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn writer(path: &PathBuf) -> anyhow::Result<Connection> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(connection)
    }

    /// The rows in the database file itself, without its write-ahead log: a copy of
    /// the main file alone, opened.
    fn rows_in_main_file(path: &PathBuf, scratch: &std::path::Path) -> anyhow::Result<i64> {
        let copy = scratch.join("copy.db");
        std::fs::copy(path, &copy)?;
        let connection = Connection::open(&copy)?;
        let table: i64 = connection.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 't'",
            [],
            |row| row.get(0),
        )?;
        if table == 0 {
            return Ok(0); // not even the table was copied yet
        }
        Ok(connection.query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))?)
    }

    #[test]
    fn commits_reach_the_database_file_without_autocheckpoints() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.db");
        let db = writer(&path)?;
        db.execute_batch("CREATE TABLE t (v BLOB)")?;
        for _ in 0..500 {
            db.execute("INSERT INTO t (v) VALUES (zeroblob(1000))", [])?;
        }
        assert_eq!(
            rows_in_main_file(&path, dir.path())?,
            0,
            "autocheckpoints are off: the rows are only in the log"
        );
        let checkpointer = Checkpointer::start(path.clone(), None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while rows_in_main_file(&path, dir.path())? < 500 {
            assert!(Instant::now() < deadline, "the log was never copied");
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(checkpointer);
        Ok(())
    }

    #[test]
    fn a_log_written_without_pause_still_starts_over() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("r.db");
        let db = writer(&path)?;
        // A restarted log is cut back to this size, so the file's size shows restarts.
        db.pragma_update(None, "journal_size_limit", 0)?;
        db.execute_batch("CREATE TABLE t (v BLOB)")?;
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let _checkpointer = Checkpointer::start_with(path.clone(), Some(gate.clone()), 64);
        let wal = dir.path().join("r.db-wal");
        // At most ~4 MB/s (4 kB a commit, a pause after each), whatever the machine's
        // speed, until 8 MB were written.
        const TOTAL: u64 = 8 * 1024 * 1024;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut written = 0u64;
        let mut largest_late = 0u64;
        while written < TOTAL {
            assert!(
                Instant::now() < deadline,
                "wrote only {written} bytes in 60 s"
            );
            // Each commit takes the write turn, as every writer of the process does.
            let turn = gate.blocking_lock();
            db.execute_batch("BEGIN IMMEDIATE; INSERT INTO t (v) VALUES (zeroblob(4000)); COMMIT")?;
            drop(turn);
            written += 4000;
            if written > TOTAL / 2 {
                largest_late = largest_late.max(std::fs::metadata(&wal)?.len());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Without restarts the log would hold everything written (8 MB and more); with
        // them it stays near the 64-page threshold plus what one interval adds (~1 MB).
        assert!(
            largest_late < TOTAL / 2,
            "the log grew to {largest_late} bytes of {written} written"
        );
        Ok(())
    }
}
