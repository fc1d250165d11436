//! Running the server: open storage (SQLite under the data directory unless
//! `DATABASE_URL` names PostgreSQL), migrate, start the plugin runtime, serve the API
//! until SIGINT/SIGTERM, then drain in-flight requests and close the database.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::http::{AppParts, AppState, router};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::storage::Storage;

/// Options of `postdog serve`.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for the embedded database and the compile cache.
    pub data_dir: PathBuf,
    /// A database URL (`postgres://…` or `sqlite://…`); `None` uses SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// The operator API's token; `None` turns the operator API off.
    pub operator_token: Option<String>,
}

/// Opens the configured database (without migrating).
pub async fn open_storage(data_dir: &Path, database_url: Option<&str>) -> anyhow::Result<Storage> {
    match database_url {
        Some(url) => Storage::connect(url)
            .await
            .with_context(|| format!("while connecting to DATABASE_URL ({})", redact(url))),
        None => Storage::open_data_dir(data_dir)
            .await
            .with_context(|| format!("while opening the database in {}", data_dir.display())),
    }
}

/// Opens and migrates the database: what `postdog migrate` does.
pub async fn migrate(data_dir: &Path, database_url: Option<&str>) -> anyhow::Result<Storage> {
    let storage = open_storage(data_dir, database_url).await?;
    storage
        .migrate()
        .await
        .context("while running migrations")?;
    Ok(storage)
}

/// Takes the server lock of the SQLite file at `path` (`<file>.lock`, holding the
/// server's process id): an SQLite database is served by one process — its writers take
/// turns through an in-process gate and its job leases are resumed at start — so a
/// second server on the same file is refused with what to do instead.
fn lock_database(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::Write as _;
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("while opening the server lock {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
            anyhow::bail!(
                "another postdog server (process {}) is serving {}; stop it first, or give this one its own --data-dir. An SQLite database is served by one process; for several nodes set DATABASE_URL to PostgreSQL",
                holder.trim(),
                path.display()
            );
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(error).with_context(|| format!("while locking {}", lock_path.display()));
        }
    }
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}

/// Runs the server until `shutdown` completes.
pub async fn serve(
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let storage = open_storage(&options.data_dir, options.database_url.as_deref()).await?;
    // Taken before migrating, so a second server never migrates a file another one
    // serves; held until the server stops (the OS releases it if the process dies).
    let database_lock = storage.sqlite_file().map(lock_database).transpose()?;
    storage
        .migrate()
        .await
        .context("while running migrations")?;
    if database_lock.is_some() {
        // No other server uses this file, so every leased job was leased by a server
        // that is gone: it is due now, not when its lease would have ended.
        let resumed = storage
            .resume_interrupted_jobs()
            .await
            .context("while resuming interrupted jobs")?;
        if resumed > 0 {
            tracing::info!(
                resumed,
                "jobs interrupted when the server last stopped are due again"
            );
        }
    }
    let mut runtime_config = RuntimeConfig {
        cache_dir: Some(options.data_dir.join("cache").join("plugins")),
        ..RuntimeConfig::default()
    };
    runtime_config.http.host_overrides = http_overrides()?;
    let runtime = Runtime::new(runtime_config, Some(storage.clone()))?;
    let interrupted = storage.fail_interrupted_imports().await?;
    if interrupted > 0 {
        tracing::warn!(
            interrupted,
            "imports left unfinished by a previous run were marked failed"
        );
    }
    let registry_location = std::env::var("POSTDOG_REGISTRY")
        .ok()
        .filter(|location| !location.trim().is_empty())
        .unwrap_or_else(|| options.data_dir.join("registry").display().to_string());
    let registry = postdog_registry::Registry::open(&registry_location)
        .with_context(|| format!("while opening the plugin registry at {registry_location}"))?;
    if matches!(registry, postdog_registry::Registry::Dir(_)) {
        let key = crate::first_party::operator_key(&crate::first_party::operator_key_path(
            &options.data_dir,
        ))?;
        crate::first_party::seed(&registry, &key).await?;
    }
    let secrets = crate::secrets::SecretKeys::from_env(&options.data_dir)
        .context("while loading the secrets key")?;
    let marketplace =
        crate::marketplace::Marketplace::new(storage.clone(), runtime.clone(), registry, secrets);
    let resealed = marketplace.reseal_secrets().await?;
    if resealed > 0 {
        tracing::info!(
            resealed,
            "plugin secrets re-sealed with the current secrets key"
        );
    }
    let (stop_watch, watch_stopped) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(
        marketplace
            .clone()
            .watch(std::time::Duration::from_secs(1), watch_stopped.clone()),
    );
    let jobs = crate::jobs::Jobs::new(storage.clone(), job_concurrency());
    let webhooks = crate::webhooks::Webhooks::new(
        marketplace.clone(),
        jobs.clone(),
        env_flag("POSTDOG_WEBHOOKS_ALLOW_PRIVATE"),
    );
    let messaging = crate::messaging::Messaging::new(
        storage.clone(),
        marketplace.clone(),
        jobs.clone(),
        webhooks.clone(),
    );
    crate::templates_sync::register(&jobs, marketplace.clone(), webhooks.clone());
    let flows = crate::flows::Flows::new(marketplace.clone(), jobs.clone(), messaging.clone());
    let campaigns = crate::campaigns::Campaigns::new(jobs.clone(), messaging.clone());
    // Counted among the nodes before any job runs: pacing shares rates between them.
    // A SQLite file belongs to one server process, which keeps the whole rates (and a
    // restart after a crash is not slowed by its own predecessor's heartbeat).
    let membership = match storage.backend() {
        crate::storage::Backend::Postgres => {
            let node = crate::cluster::Node::join(&storage, &messaging).await;
            Some(tokio::spawn(node.run(
                storage.clone(),
                messaging.clone(),
                watch_stopped.clone(),
            )))
        }
        crate::storage::Backend::Sqlite => None,
    };
    // Live events of the other nodes reach this node's event streams.
    let relays = match (&options.database_url, storage.backend()) {
        (Some(url), crate::storage::Backend::Postgres) => {
            crate::live_relay::start(url, &messaging, watch_stopped.clone())
                .await
                .context("while connecting the live-event relay")?
        }
        _ => Vec::new(),
    };
    let workers = tokio::spawn(
        jobs.clone()
            .run(watch_stopped, std::time::Duration::from_secs(10)),
    );
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("while binding {}", options.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, database = storage.backend().name(), "postdog is serving");
    let app = router(AppState::new(AppParts {
        storage: storage.clone(),
        runtime,
        rate_limiter: Default::default(),
        operator_token: options.operator_token.filter(|token| !token.is_empty()),
        importer: crate::imports::Importer::new(&options.data_dir, 2),
        marketplace,
        jobs,
        messaging,
        webhooks,
        flows,
        campaigns,
    }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("while serving HTTP")?;
    let _ = stop_watch.send(true);
    if let Err(error) = watcher.await {
        tracing::error!(%error, "the registry watcher failed");
    }
    if let Err(error) = workers.await {
        tracing::error!(%error, "the job workers failed");
    }
    for relay in relays {
        relay.abort();
    }
    if let Some(membership) = membership
        && let Err(error) = membership.await
    {
        tracing::error!(%error, "the node heartbeat failed");
    }
    tracing::info!("shut down cleanly");
    storage.close().await;
    Ok(())
}

/// `POSTDOG_HTTP_OVERRIDES=graph.facebook.com=http://127.0.0.1:4567,…`: plugins' requests
/// to a host go to another base URL (a staging API, a local fake). An operator decision:
/// the address check is skipped for those hosts.
fn http_overrides() -> anyhow::Result<std::collections::HashMap<String, String>> {
    let mut overrides = std::collections::HashMap::new();
    let Ok(text) = std::env::var("POSTDOG_HTTP_OVERRIDES") else {
        return Ok(overrides);
    };
    for entry in text
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let Some((host, base)) = entry.split_once('=') else {
            anyhow::bail!(
                "POSTDOG_HTTP_OVERRIDES: `{entry}` is not HOST=BASE_URL (for example graph.facebook.com=http://127.0.0.1:4567)"
            );
        };
        overrides.insert(host.trim().to_ascii_lowercase(), base.trim().to_string());
    }
    Ok(overrides)
}

/// How many jobs run at once (`POSTDOG_JOB_CONCURRENCY`, default 128). Most jobs wait on
/// a provider or on the group-commit writer, not on a core: at 32 a 2-core server sent
/// campaign messages and ran flow steps about 1.3–1.7× slower than at 128.
fn job_concurrency() -> usize {
    std::env::var("POSTDOG_JOB_CONCURRENCY")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .filter(|n: &usize| *n > 0)
        .unwrap_or(128)
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| matches!(value.trim(), "1" | "true" | "yes"))
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// Hides the password of a database URL for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://me:secret@db:5432/x"),
            "postgres://me:***@db:5432/x"
        );
        assert_eq!(super::redact("postgres://me@db/x"), "postgres://me@db/x");
        assert_eq!(
            super::redact("sqlite://./data/postdog.db"),
            "sqlite://./data/postdog.db"
        );
    }
}
