//! Support for PostDog's end-to-end tests: the plugins built from `plugins/` by this
//! crate's build script, and loopback fakes of third-party services.

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
