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
        let alive = Arc::new(Self);
        let watched = Arc::downgrade(&alive);
        let spawned = std::thread::Builder::new()
            .name("postdog-sqlite-checkpoint".into())
            .spawn(move || run(&path, &watched, gate.as_deref()));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the SQLite checkpoint thread");
        }
        alive
    }
}

fn run(path: &PathBuf, alive: &Weak<Checkpointer>, gate: Option<&tokio::sync::Mutex<()>>) {
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
            Ok(log) if log > RESTART_FRAMES => {
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
