//! Test support: fresh, migrated databases on every backend the tests can reach, so the
//! same test body runs on SQLite and on PostgreSQL.
//!
//! SQLite is always available (a temporary directory). PostgreSQL is used when
//! `POSTDOG_TEST_POSTGRES_URL` points at a server (for example
//! `postgres://postgres@127.0.0.1:5432/postgres`); each database gets its own freshly
//! created database there. When the variable is unset, the PostgreSQL half is skipped
//! with a printed notice — except under CI (`CI` set), where that is an error, so CI can
//! never silently test one backend only.

use std::str::FromStr;

use sqlx::ConnectOptions;
use sqlx::Executor;
use sqlx::any::AnyConnectOptions;

use super::{Storage, StorageError};

/// The environment variable naming the PostgreSQL server for tests.
pub const POSTGRES_URL_VAR: &str = "POSTDOG_TEST_POSTGRES_URL";

/// A migrated test database; dropping it removes a SQLite directory (PostgreSQL test
/// databases are named `pd_test_*` and left for the throw-away CI server).
pub struct TestDatabase {
    /// The storage handle.
    pub storage: Storage,
    /// `sqlite` or `postgres`, for assertion messages.
    pub label: &'static str,
    /// The database's URL (for starting a server process on it).
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

/// Creates a fresh migrated SQLite database in a temporary directory.
pub async fn sqlite() -> Result<TestDatabase, StorageError> {
    let dir = tempfile::tempdir()?;
    let storage = Storage::open_data_dir(dir.path()).await?;
    storage.migrate().await?;
    Ok(TestDatabase {
        storage,
        label: "sqlite",
        url: format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("postdog.db").display()
        ),
        _dir: Some(dir),
    })
}

/// Creates a fresh migrated PostgreSQL database, if a server is configured.
///
/// # Panics
/// When `CI` is set and `POSTDOG_TEST_POSTGRES_URL` is not: CI must test both backends.
pub async fn postgres() -> Result<Option<TestDatabase>, StorageError> {
    let Ok(admin_url) = std::env::var(POSTGRES_URL_VAR) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{POSTGRES_URL_VAR} must be set under CI: the PostgreSQL tests may not be skipped"
        );
        eprintln!("skipping PostgreSQL: set {POSTGRES_URL_VAR} to run these tests on it too");
        return Ok(None);
    };
    sqlx::any::install_default_drivers();
    let name = format!("pd_test_{}", uuid::Uuid::now_v7().simple());
    let mut admin = AnyConnectOptions::from_str(&admin_url)
        .map_err(StorageError::Connect)?
        .connect()
        .await
        .map_err(StorageError::Connect)?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .map_err(StorageError::Connect)?;
    let url = match admin_url.rfind('/') {
        Some(slash) if slash > "postgres://".len() => format!("{}/{name}", &admin_url[..slash]),
        _ => format!("{admin_url}/{name}"),
    };
    let storage = Storage::connect(&url).await?;
    storage.migrate().await?;
    Ok(Some(TestDatabase {
        storage,
        label: "postgres",
        url,
        _dir: None,
    }))
}

/// Every backend available: SQLite, then PostgreSQL when configured.
pub async fn all_backends() -> Result<Vec<TestDatabase>, StorageError> {
    let mut databases = vec![sqlite().await?];
    databases.extend(postgres().await?);
    Ok(databases)
}
