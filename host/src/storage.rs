//! The storage layer: one `Storage` over SQLite (embedded default, WAL) or PostgreSQL,
//! chosen by URL, through sqlx's `Any` driver.
//!
//! Rules every aggregate follows:
//! - SQL text is shared by both backends wherever possible (`$1, $2` placeholders work on
//!   both); backend-specific statements branch on `Storage::backend()`.
//! - Ids are text, times `i64` Unix milliseconds, flags `i64` 0/1, JSON text, binary
//!   `Vec<u8>`. Domain types never carry backend types.
//! - Tenant-owned data is reachable only through a `TenantDb` (from
//!   `Storage::tenant`), which adds the tenant id to every query. There is no way to
//!   query a tenant-owned table without naming the tenant.
//!
//! Adding an aggregate: a migration with the next number in both `migrations/sqlite/`
//! and `migrations/postgres/`; a file `storage/<aggregate>.rs` with its queries and a
//! plain domain struct; a constructor method on `TenantDb` (tenant-owned) or `Storage`
//! (global, like tenants themselves); tests that run on both backends (`testing`).

mod api_keys;
mod audit;
mod auth_cache;
mod campaigns;
mod cluster;
mod consent;
mod contacts;
mod custom_fields;
mod filter_sql;
mod flows;
mod imports;
mod inbound_writer;
mod installs;
mod jobs;
mod messaging;
mod notes;
mod plugin_kv;
mod segments;
mod sqlite_checkpoint;
mod sqlite_reads;
mod sqlite_writer;
mod teams;
mod templates;
mod tenants;
pub mod testing;
mod webhooks;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

use crate::ids::TenantId;

pub use api_keys::{ApiKey, NewApiKey, Role};
pub use audit::AuditEntry;
pub use campaigns::{Campaign, ExportRow, NewRecipient, Recipient, RecipientCounts, Variant};
pub use consent::{CONSENT_CHANNELS, ConsentEntry};
pub use contacts::{Announce, Contact, ContactChange, ContactData, ContactWriteError};
pub use custom_fields::{CustomField, FieldKind};
pub use flows::{ContactEdit, Flow, FlowVersion, Run, RunChange, Step};
pub use imports::{DuplicateStrategy, ImportCounts, ImportJob, ImportRow, RowOutcome};
pub use installs::Install;
pub use jobs::{CompletedFlag, Job, JobLease, NewJob, QueueDepth};
pub use messaging::{
    AssigneeFilter, Conversation, ConversationChange, ConversationFilter, ConversationNote,
    DEFAULT_OPT_IN, DEFAULT_OPT_OUT, InboundRecord, InboundResult, Message, OutboundRecord, Outbox,
    Queued, StatusEntry, WINDOW_MS, status_rank,
};
pub use notes::Note;
pub use plugin_kv::{KvError, KvQuota, PluginKv};
pub use segments::{Segment, SegmentWriteError};
pub use teams::{Team, TeamWriteError};
pub use templates::TemplateRecord;
pub use tenants::{Branding, Tenant, TenantWriteError, month_of};
pub use webhooks::{Attempt, Delivery, Endpoint};

/// Which database a `Storage` talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite (WAL mode).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// `sqlite` or `postgres`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A storage failure. The source is kept for logs; callers show users a generic message.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL names no supported database.
    #[error("unsupported database URL `{0}`: use postgres://… or sqlite://…")]
    UnsupportedUrl(String),
    /// The database could not be reached or opened.
    #[error("cannot open the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database query failed while {context}: {source}")]
    Query {
        /// What the storage layer was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A statement on the direct SQLite path failed.
    #[error("database write failed while {context}: {message}")]
    Direct {
        /// What the storage layer was doing.
        context: &'static str,
        /// SQLite's error.
        message: String,
    },
    /// A file-system problem with the data directory.
    #[error("data directory problem: {0}")]
    Io(#[from] std::io::Error),
}

/// Adds what a query was for to its error.
pub(crate) trait QueryContext<T> {
    fn context(self, context: &'static str) -> Result<T, StorageError>;
}

impl<T> QueryContext<T> for Result<T, sqlx::Error> {
    fn context(self, context: &'static str) -> Result<T, StorageError> {
        self.map_err(|source| StorageError::Query { context, source })
    }
}

/// Whether a database error is a unique-constraint violation, on either backend.
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || db.message().contains("UNIQUE constraint failed")
                || db.code().as_deref() == Some("23505")
        }
        _ => false,
    }
}

/// The database. Cheap to clone (a pool handle).
#[derive(Clone, Debug)]
pub struct Storage {
    pool: AnyPool,
    backend: Backend,
    auth_cache: Arc<auth_cache::AuthCache>,
    sqlite_reads: Option<Arc<sqlite_reads::SqliteReads>>,
    /// The SQLite file, for the inbound group-commit writer (started on first use).
    /// Where committed contact changes are reported (flows' contact-event triggers).
    contact_changes: Arc<std::sync::OnceLock<contacts::ChangeSender>>,
    inbound_writer: Option<
        Arc<(
            std::path::PathBuf,
            std::sync::OnceLock<inbound_writer::InboundWriter>,
        )>,
    >,
    /// SQLite: this process's writers take turns here (see [`WriteTx`]).
    write_gate: Option<Arc<tokio::sync::Mutex<()>>>,
    /// The group-commit writer of the hot write paths, on SQLite files (started on
    /// first use).
    sqlite_writer: Option<
        Arc<(
            std::path::PathBuf,
            std::sync::OnceLock<sqlite_writer::SqliteWriter>,
        )>,
    >,
    /// Copies the write-ahead log into SQLite files off the commit path (see
    /// `sqlite_checkpoint`); its thread ends with the last clone.
    _checkpointer: Option<Arc<sqlite_checkpoint::Checkpointer>>,
}

/// A write transaction (`BEGIN IMMEDIATE` on SQLite). On SQLite it also holds this
/// process's write gate from before `BEGIN` until it ends: SQLite admits one writer at a
/// time, and writers that find the lock taken do not queue — they sleep in the busy
/// handler (1, 2, 5, 10, 15, 20, 25… ms) and poll. With a few dozen concurrent job
/// workers that polling cost more than the writes (profiled: ~5 ms of sleep per
/// transaction in the `flow-steps` benchmark). Waiting on an async FIFO mutex instead,
/// each writer starts the moment the previous one commits. Readers are not gated (WAL).
pub(crate) struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    // Declared after `tx`: released after the transaction is dropped.
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// Commits, then lets the next writer in.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Storage {
    /// Connects to `postgres://…` or `sqlite://…` (SQLite files are created if missing).
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StorageError::UnsupportedUrl(url.to_string()));
        };
        let options = AnyConnectOptions::from_str(url).map_err(StorageError::Connect)?;
        let pool_options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        let pool = match backend {
            Backend::Postgres => pool_options.max_connections(16),
            // One writer at a time is SQLite's model; a few connections serve concurrent
            // reads under WAL, and busy_timeout makes writers queue instead of failing.
            Backend::Sqlite => pool_options
                .max_connections(4)
                .after_connect(|connection, _| {
                    Box::pin(async move {
                        connection.execute("PRAGMA journal_mode = WAL").await?;
                        connection.execute("PRAGMA busy_timeout = 10000").await?;
                        connection.execute("PRAGMA synchronous = NORMAL").await?;
                        // Checkpoints run on their own thread (`sqlite_checkpoint`),
                        // never inside a commit.
                        connection.execute("PRAGMA wal_autocheckpoint = 0").await?;
                        // SQLite's default 2 MiB of page cache: the hot writes go through
                        // the group-commit writers and the hot reads through the direct
                        // read path; these four connections serve imports, statistics and
                        // the rest. At 32 MiB each they held over 100 MB once a large
                        // campaign had grown the file; at 8 MiB, a campaign's statistics
                        // over 100k recipients still added 60 MB at its end.
                        connection.execute("PRAGMA cache_size = -2048").await?;
                        // Statement journals of savepoints in memory, not temp files.
                        connection.execute("PRAGMA temp_store = MEMORY").await?;
                        connection.execute("PRAGMA foreign_keys = ON").await?;
                        Ok(())
                    })
                }),
        }
        .connect_with(options)
        .await
        .map_err(StorageError::Connect)?;
        let write_gate: Option<Arc<tokio::sync::Mutex<()>>> = match backend {
            Backend::Sqlite => Some(Arc::default()),
            Backend::Postgres => None,
        };
        Ok(Self {
            pool,
            backend,
            auth_cache: Arc::default(),
            contact_changes: Arc::default(),
            sqlite_reads: match backend {
                Backend::Sqlite => sqlite_reads::SqliteReads::for_url(url).map(Arc::new),
                Backend::Postgres => None,
            },
            inbound_writer: match backend {
                Backend::Sqlite => sqlite_reads::SqliteReads::file_of(url)
                    .map(|path| Arc::new((path, std::sync::OnceLock::new()))),
                Backend::Postgres => None,
            },
            write_gate: write_gate.clone(),
            sqlite_writer: match backend {
                Backend::Sqlite => sqlite_reads::SqliteReads::file_of(url)
                    .map(|path| Arc::new((path, std::sync::OnceLock::new()))),
                Backend::Postgres => None,
            },
            _checkpointer: match backend {
                Backend::Sqlite => sqlite_reads::SqliteReads::file_of(url)
                    .map(|path| sqlite_checkpoint::Checkpointer::start(path, write_gate.clone())),
                Backend::Postgres => None,
            },
        })
    }

    /// On SQLite, waits for this process's turn to write (see [`WriteTx`]); hold the
    /// guard over a single writing statement outside a transaction. `None` on PostgreSQL.
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.write_gate {
            Some(gate) => Some(gate.clone().lock_owned().await),
            None => None,
        }
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE` on SQLite, after this process's
    /// write turn; see [`WriteTx`]).
    pub(crate) async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        let gate = self.write_turn().await;
        let tx = match self.backend() {
            Backend::Sqlite => self.pool().begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool().begin().await?,
        };
        Ok(WriteTx { tx, _gate: gate })
    }

    /// Opens (creating if needed) the embedded SQLite database `<dir>/postdog.db`.
    pub async fn open_data_dir(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("postdog.db");
        Self::connect(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Runs the embedded migrations of this backend that have not run yet.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let migrator = match self.backend {
            Backend::Sqlite => sqlx::migrate!("../migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("../migrations/postgres"),
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(StorageError::Migrate)
    }

    /// The SQLite database file, when this is one (not PostgreSQL, not in memory).
    pub fn sqlite_file(&self) -> Option<&std::path::Path> {
        self.sqlite_writer.as_ref().map(|writer| writer.0.as_path())
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .context("checking the database answers")
            .map(drop)
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The handle through which all of one tenant's data is reached.
    pub fn tenant(&self, tenant_id: &TenantId) -> TenantDb {
        TenantDb {
            storage: self.clone(),
            tenant_id: tenant_id.clone(),
        }
    }

    pub(crate) fn auth_cache(&self) -> &auth_cache::AuthCache {
        &self.auth_cache
    }

    /// The inbound group-commit writer, on SQLite files.
    pub(crate) fn inbound_writer(&self) -> Option<&inbound_writer::InboundWriter> {
        self.inbound_writer.as_ref().map(|writer| {
            writer.1.get_or_init(|| {
                inbound_writer::InboundWriter::start(writer.0.clone(), self.write_gate.clone())
            })
        })
    }

    /// The group-commit writer of the hot write paths, on SQLite files.
    pub(crate) fn sqlite_writer(&self) -> Option<&sqlite_writer::SqliteWriter> {
        self.sqlite_writer.as_ref().map(|writer| {
            writer.1.get_or_init(|| {
                sqlite_writer::SqliteWriter::start(writer.0.clone(), self.write_gate.clone())
            })
        })
    }

    /// Runs `read` on the synchronous read path (SQLite files); `None` elsewhere or when
    /// it fails (logged; the caller reads through sqlx instead).
    pub(crate) fn read_direct<T>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Option<T> {
        let reads = self.sqlite_reads.as_deref()?;
        match reads.read(read) {
            Ok(found) => Some(found),
            Err(error) => {
                tracing::debug!(%error, "direct SQLite read failed; reading through sqlx");
                None
            }
        }
    }

    /// The synchronous read path, on SQLite files.
    pub(crate) fn sqlite_reads(&self) -> Option<&sqlite_reads::SqliteReads> {
        self.sqlite_reads.as_deref()
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// One tenant's view of the database. Every query it runs is filtered by its tenant id.
#[derive(Clone, Debug)]
pub struct TenantDb {
    storage: Storage,
    tenant_id: TenantId,
}

impl TenantDb {
    /// The tenant this handle is scoped to.
    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant_id
    }

    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }
}
