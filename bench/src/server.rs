//! A real `postdog serve` (the same `server::serve` the binary runs) on its own tokio
//! runtime and a loopback port, plus small HTTP helpers for the scenarios.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The operator token the bench server uses.
pub const OPERATOR_TOKEN: &str = "bench-operator-token";

/// A running server; stopped on drop.
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts a server on SQLite in `data_dir` with `workers` runtime threads.
    pub fn start(data_dir: &Path, workers: usize) -> anyhow::Result<Self> {
        let listen: SocketAddr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let options = postdog_host::server::ServeOptions {
            listen,
            data_dir: data_dir.to_path_buf(),
            database_url: None,
            operator_token: Some(OPERATOR_TOKEN.to_string()),
        };
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .expect("server runtime");
            if let Err(error) = runtime.block_on(postdog_host::server::serve(options, async {
                let _ = stopped.await;
            })) {
                eprintln!("server failed: {error:#}");
            }
        });
        let server = Self {
            base_url: format!("http://{listen}"),
            stop: Some(stop),
            thread: Some(thread),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(listen).is_err() {
            if std::time::Instant::now() > deadline {
                bail!("the server did not start listening on {listen}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Creates a Business tenant whose request rate is raised for benchmarking; its key.
pub async fn bench_tenant(client: &reqwest::Client, base_url: &str) -> anyhow::Result<String> {
    let created: Value = client
        .post(format!("{base_url}/admin/v1/tenants"))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"name": "Bench", "plan": "business"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["tenant_id"].as_str().context("tenant_id")?;
    client
        .patch(format!("{base_url}/admin/v1/tenants/{id}"))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"requests_per_minute": 1_000_000}))
        .send()
        .await?
        .error_for_status()?;
    Ok(created["api_key"].as_str().context("api_key")?.to_string())
}

/// Peak resident memory of this process (the server runs in it), in MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
