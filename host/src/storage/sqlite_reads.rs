//! A synchronous read path into the embedded SQLite database for the hottest point
//! reads (a contact by id), beside sqlx.
//!
//! Why: sqlx runs each SQLite connection on its own worker thread and moves every
//! statement and every row across a channel. For a read of one contact (three short
//! statements) the thread hand-offs cost far more than SQLite itself: profiling the
//! `api-read` benchmark showed most of the CPU in futex wake-ups, not in queries. A
//! point read from a connection owned by the calling thread takes a few microseconds,
//! less than serializing the answer, so it runs inline on the async worker.
//!
//! Rules: connections are opened read-only on the same file (WAL: readers never wait
//! for the writer); statements are cached per connection; a read that fails for any
//! reason (a busy database, a schema it does not expect) reports an error and the
//! caller falls back to sqlx, so this path can only make reads faster, never fail
//! them. Writes go through sqlx or, for the hot paths, the group-commit writers
//! (`sqlite_writer`, `inbound_writer`).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// Idle connections kept for reuse; more may exist briefly under load.
const MAX_IDLE: usize = 8;

/// Read-only connections to one SQLite file.
pub(crate) struct SqliteReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteReads")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteReads {
    /// The read path for a `sqlite:` URL naming a file; `None` for in-memory databases.
    pub(crate) fn for_url(url: &str) -> Option<Self> {
        Some(Self {
            path: Self::file_of(url)?,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The file a `sqlite:` URL names; `None` for in-memory databases.
    pub(crate) fn file_of(url: &str) -> Option<PathBuf> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
            return None;
        }
        Some(PathBuf::from(path))
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Short: a reader only waits in rare WAL-recovery moments, and the caller falls
        // back to sqlx rather than block an async worker for long.
        connection.busy_timeout(Duration::from_millis(20))?;
        connection.set_prepared_statement_cache_capacity(32);
        Ok(connection)
    }

    /// Runs `read` on an idle connection (opening one if none is idle).
    pub(crate) fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let taken = self
            .idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .pop();
        let connection = match taken {
            Some(connection) => connection,
            None => self.open()?,
        };
        let result = read(&connection);
        // A connection that failed is dropped rather than reused.
        if result.is_ok() {
            let mut idle = self
                .idle
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(connection);
            }
        }
        result
    }
}
