//! Support for PostDog's end-to-end tests: the plugins built from `plugins/` by this
//! crate's build script, and loopback fakes of third-party services.

pub mod fake_graph;
use std::path::PathBuf;

/// The directory holding the plugins built for the tests.
pub fn plugin_dir() -> PathBuf {
    PathBuf::from(env!("POSTDOG_PLUGIN_DIR"))
}

/// The path of a built plugin, by crate name with underscores (`hello_action`).
pub fn plugin_path(name: &str) -> PathBuf {
    plugin_dir().join(format!("{name}.wasm"))
}

/// The bytes of a built plugin.
///
/// # Panics
/// When the plugin was not built (the build script builds every member of `plugins/`).
pub fn plugin_bytes(name: &str) -> Vec<u8> {
    let path = plugin_path(name);
    std::fs::read(&path)
        .unwrap_or_else(|error| panic!("plugin {} is missing: {error}", path.display()))
}

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use postdog_host::ids::{InstallId, TenantId};
use postdog_host::outbound_http::OutboundHttpConfig;
use postdog_host::runtime::abi::action_types::ActionInput;
use postdog_host::runtime::{CallContext, Grants, PluginConfig, Runtime, RuntimeConfig};
use postdog_host::storage::Storage;

/// A runtime with test-friendly limits: 1 s per call, 64 MiB memory, a compile cache in
/// `cache_dir` (default: one shared by all tests, so each plugin compiles once per
/// build), and `overrides` mapping host names to loopback fakes.
pub fn runtime_with(
    storage: Option<Storage>,
    cache_dir: Option<PathBuf>,
    overrides: &[(&str, String)],
) -> Runtime {
    let config = RuntimeConfig {
        cache_dir: Some(cache_dir.unwrap_or_else(|| plugin_dir().join("compile-cache"))),
        default_timeout: Duration::from_secs(1),
        http: OutboundHttpConfig {
            host_overrides: overrides
                .iter()
                .map(|(host, base)| (host.to_string(), base.clone()))
                .collect::<HashMap<_, _>>(),
            ..OutboundHttpConfig::default()
        },
        ..RuntimeConfig::default()
    };
    Runtime::new(config, storage).expect("the runtime starts")
}

/// A call context for `tenant`/`install` with the given capabilities and config.
pub fn context(
    tenant: &TenantId,
    install: &str,
    capabilities: &[&str],
    config: &[(&str, &str)],
    secrets: &[(&str, &str)],
) -> Arc<CallContext> {
    let pairs = |items: &[(&str, &str)]| {
        items
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    };
    Arc::new(
        CallContext::new(tenant.clone(), InstallId::new(install), "test-plugin")
            .with_grants(Grants::parse(capabilities).expect("valid capabilities"))
            .with_config(PluginConfig {
                values: pairs(config),
                secrets: pairs(secrets),
            }),
    )
}

/// An action input with the given node config and contact.
pub fn action_input(config: serde_json::Value, contact: Option<serde_json::Value>) -> ActionInput {
    ActionInput {
        run_id: "run-1".into(),
        step_id: "step-1".into(),
        config: config.to_string(),
        contact: contact.map(|contact| contact.to_string()),
        trigger: "{}".into(),
        variables: "{}".into(),
    }
}

/// A loopback HTTP server for a test; stops when dropped.
pub struct FakeServer {
    /// Its address.
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeServer {
    /// Serves `router` on 127.0.0.1 at a free port.
    pub async fn start(router: axum::Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            shutdown: Some(shutdown),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// The `postdog` binary of this build (`cargo test --workspace` builds it), with a clean
/// environment for the database settings.
///
/// # Panics
/// When the binary was not built.
pub fn postdog_command() -> std::process::Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let binary = dir.join("postdog");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p postdog-host` (cargo test --workspace does)",
        binary.display()
    );
    // `cargo test -p postdog-tests` builds the host library but not its binary; refuse to
    // test a binary older than the host's sources or migrations.
    fn newest(path: &std::path::Path) -> Option<std::time::SystemTime> {
        let meta = std::fs::metadata(path).ok()?;
        if !meta.is_dir() {
            return meta.modified().ok();
        }
        std::fs::read_dir(path)
            .ok()?
            .flatten()
            .filter_map(|entry| newest(&entry.path()))
            .max()
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let sources = ["host/src", "host/Cargo.toml", "migrations", "wit"]
        .iter()
        .filter_map(|part| newest(&root.join(part)))
        .max();
    if let (Some(sources), Some(built)) = (sources, newest(&binary)) {
        assert!(
            built >= sources,
            "{} is older than the host's sources: run `cargo build -p postdog-host` first \
             (`cargo test --workspace` does)",
            binary.display()
        );
    }
    let mut command = std::process::Command::new(binary);
    command
        .env_remove("DATABASE_URL")
        .env_remove("POSTDOG_OPERATOR_TOKEN")
        .env("POSTDOG_LOG", "info")
        .env("POSTDOG_STRICT_OPENAPI", "1");
    command
}

/// A running `postdog serve` process on a free loopback port; stopped (SIGTERM, then
/// kill) when dropped.
pub struct PostdogServer {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// The data directory (SQLite lives here unless a database URL was given).
    pub data_dir: tempfile::TempDir,
    /// The database URL the server uses, if not the embedded SQLite.
    pub database_url: Option<String>,
    child: std::process::Child,
}

/// The operator token test servers are started with.
pub const OPERATOR_TOKEN: &str = "test-operator-token";

/// The value of counter `name` (a line `name value`) in a Prometheus text `metrics`.
pub fn counter(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

impl PostdogServer {
    /// The server's `/metrics` text.
    ///
    /// # Panics
    /// When the request fails.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base_url))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Starts a server on `database_url` (or SQLite in a fresh data directory) with the
    /// operator API enabled, and waits until `/healthz` answers.
    pub async fn start(database_url: Option<String>) -> Self {
        Self::start_with(database_url, &[]).await
    }

    /// As `start`, with extra environment variables (shared registry, keys, …).
    pub async fn start_with(database_url: Option<String>, env: &[(&str, String)]) -> Self {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut command = postdog_command();
        command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir.path())
            .env("POSTDOG_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(url) = &database_url {
            command.env("DATABASE_URL", url);
        }
        command.envs(env.iter().map(|(name, value)| (*name, value.as_str())));
        let child = command.spawn().expect("postdog serve starts");
        let server = Self {
            base_url: format!("http://127.0.0.1:{port}"),
            data_dir,
            database_url,
            child,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = reqwest::get(format!("{}/healthz", server.base_url)).await
                && response.status() == 200
            {
                return server;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "postdog serve did not become healthy"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A direct connection to the server's database, for arranging state no API
    /// writes yet (the caller closes it).
    ///
    /// # Panics
    /// When the database cannot be opened.
    pub async fn storage(&self) -> postdog_host::storage::Storage {
        match &self.database_url {
            Some(url) => postdog_host::storage::Storage::connect(url)
                .await
                .expect("connect"),
            None => postdog_host::storage::Storage::open_data_dir(self.data_dir.path())
                .await
                .expect("open"),
        }
    }

    /// Runs `postdog <args>` against this server's database and returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = postdog_command();
        command
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir.path());
        if let Some(url) = &self.database_url {
            command.env("DATABASE_URL", url);
        }
        let output = command.output().expect("postdog runs");
        assert!(
            output.status.success(),
            "postdog {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for PostdogServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `postdog serve` on SQLite and, when PostgreSQL is configured for tests, another on a
/// fresh PostgreSQL database: API tests run their body against each.
pub async fn servers_on_every_backend() -> Vec<PostdogServer> {
    let mut servers = vec![PostdogServer::start(None).await];
    if let Some(database) = postdog_host::storage::testing::postgres()
        .await
        .expect("a PostgreSQL test database")
    {
        servers.push(PostdogServer::start(Some(database.url.clone())).await);
    }
    servers
}

/// A tenant API client for one key of a running server.
#[derive(Clone)]
pub struct Api {
    /// The server's base URL.
    pub base_url: String,
    /// The bearer key.
    pub key: String,
    /// A sub-tenant to act on (`PostDog-Act-As`).
    pub act_as: Option<String>,
    client: reqwest::Client,
}

impl Api {
    /// A client using `key` against `server`.
    pub fn new(server: &PostdogServer, key: &str) -> Self {
        Self {
            base_url: server.base_url.clone(),
            key: key.to_string(),
            act_as: None,
            client: reqwest::Client::new(),
        }
    }

    /// Creates a tenant through the operator API and returns a client with its first key
    /// and the tenant's id.
    ///
    /// # Panics
    /// When the operator API refuses.
    pub async fn tenant(server: &PostdogServer, plan: &str) -> (Self, String) {
        let body: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/admin/v1/tenants", server.base_url))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&serde_json::json!({ "name": format!("{plan} tenant"), "plan": plan }))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON");
        let key = body["api_key"].as_str().expect("api_key");
        let id = body["tenant_id"].as_str().expect("tenant_id").to_string();
        (Self::new(server, key), id)
    }

    /// Sends a request (JSON body if given); the status and the JSON body (`Null` if the
    /// body is not JSON).
    ///
    /// # Panics
    /// When the request cannot be sent.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let response = self.send(method, path, body).await;
        let status = response.status();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Sends a request and returns the raw response.
    ///
    /// # Panics
    /// When the request cannot be sent.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(&self.key);
        if let Some(id) = &self.act_as {
            request = request.header("PostDog-Act-As", id);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request")
    }

    /// `GET`.
    pub async fn get(&self, path: &str) -> (reqwest::StatusCode, serde_json::Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// `POST` with a JSON body.
    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// `PATCH` with a JSON body.
    pub async fn patch(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }

    /// `PUT` with a JSON body.
    pub async fn put(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    /// `DELETE`.
    pub async fn delete(&self, path: &str) -> (reqwest::StatusCode, serde_json::Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

/// The operator's publisher key of a running server (created by it on start), which
/// publishes as `postdog`, the publisher of the bundled first-party plugins.
pub fn operator_key(server: &PostdogServer) -> postdog_registry::PublisherKey {
    let text = std::fs::read_to_string(server.data_dir.path().join("operator-publisher.key"))
        .expect("the server wrote its operator key");
    postdog_registry::PublisherKey::from_file_text(&text).expect("a valid key file")
}

/// The manifest of the example plugin `plugins/examples/<example>` with its version
/// replaced by `version`, for publishing test versions.
pub fn example_manifest(example: &str, version: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/examples")
        .join(example)
        .join("postdog-plugin.toml");
    std::fs::read_to_string(&path)
        .expect("example manifest")
        .replacen(
            "version = \"0.1.0\"",
            &format!("version = \"{version}\""),
            1,
        )
}

/// A client of a running server's embedded directory registry (`<data-dir>/registry`).
pub fn server_registry(server: &PostdogServer) -> postdog_registry::Registry {
    postdog_registry::Registry::open(
        &server
            .data_dir
            .path()
            .join("registry")
            .display()
            .to_string(),
    )
    .expect("the server's registry")
}

/// Polls `check` every 50 ms until it yields a value (at most 30 s).
///
/// # Panics
/// When 30 seconds pass without a value; the message names `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The database URLs a scenario runs on: `None` (SQLite in the server's data
/// directory) and, when configured, a fresh PostgreSQL database.
///
/// # Panics
/// When PostgreSQL is configured but a database cannot be created.
pub async fn database_urls() -> Vec<Option<String>> {
    let mut urls = vec![None];
    if let Some(database) = postdog_host::storage::testing::postgres()
        .await
        .expect("a PostgreSQL test database")
    {
        urls.push(Some(database.url.clone()));
    }
    urls
}

// Crash tests: a server killed with SIGKILL and started again on the same data.
impl PostdogServer {
    /// Kills the server with SIGKILL — no graceful shutdown, so job leases are not
    /// given back and nothing is flushed — and waits until the process is gone.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }

    /// Starts `postdog serve` again, after [`kill_hard`](Self::kill_hard), on the same
    /// port, data directory and database, with the extra environment `env` (give it
    /// what [`start_with`](Self::start_with) got), and waits until `/healthz` answers.
    ///
    /// # Panics
    /// When the old process is still running, or the new one does not become healthy
    /// within 60 seconds.
    pub async fn restart_with(&mut self, env: &[(&str, String)]) {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "the server is still running: kill it first"
        );
        let listen = self
            .base_url
            .strip_prefix("http://")
            .expect("an http base URL")
            .to_string();
        let mut command = postdog_command();
        command
            .args(["serve", "--listen", &listen, "--data-dir"])
            .arg(self.data_dir.path())
            .env("POSTDOG_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(url) = &self.database_url {
            command.env("DATABASE_URL", url);
        }
        command.envs(env.iter().map(|(name, value)| (*name, value.as_str())));
        self.child = command.spawn().expect("postdog serve starts again");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = reqwest::get(format!("{}/healthz", self.base_url)).await
                && response.status() == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the restarted postdog serve exited: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the restarted postdog serve did not become healthy"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
