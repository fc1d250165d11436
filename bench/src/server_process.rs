//! The real `postdog` binary as a child process: built in release mode, started with
//! `postdog serve` on a free loopback port and SQLite in a temporary data directory, and
//! stopped when dropped. Being its own process, its peak RSS is the server's alone.
//! Plus the operator call that sets up a benchmark tenant.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The operator token the bench server is started with.
pub const OPERATOR_TOKEN: &str = "bench-operator-token";

/// The workspace root (this crate's parent directory).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Builds `postdog` in release mode (a no-op when it is up to date); its path.
pub fn build() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building the postdog binary (release)…");
    let status = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            "postdog-host",
            "--bin",
            "postdog",
        ])
        .current_dir(&root)
        .status()
        .with_context(|| format!("running {}", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("building the postdog binary failed: {status}");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(|| root.join("target"), |dir| root.join(dir));
    let binary = target.join("release").join("postdog");
    if !binary.is_file() {
        bail!("{} is missing after the build", binary.display());
    }
    Ok(binary)
}

/// A command that runs `binary`, or, when `POSTDOG_BENCH_SERVER_WRAPPER` is set, that
/// wrapper with the binary as its first argument: a profiler around the server (`perf
/// record`, or for heaptrack a script that runs `heaptrack` on a `--features
/// system-allocator` build). The CPU time printed is then the wrapper's.
pub fn command(binary: &Path) -> Command {
    match std::env::var_os("POSTDOG_BENCH_SERVER_WRAPPER") {
        Some(wrapper) => {
            let mut command = Command::new(wrapper);
            command.arg(binary);
            command
        }
        None => Command::new(binary),
    }
}

/// A running `postdog serve`; terminated on drop.
pub struct ServerProcess {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// Its listening address.
    pub address: SocketAddr,
    child: Child,
}

impl ServerProcess {
    /// Starts `binary serve` with SQLite in `data_dir` and waits until `/healthz` is 200.
    pub fn start(binary: &Path, data_dir: &Path) -> anyhow::Result<Self> {
        let address = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?
        };
        let child = command(binary)
            .arg("serve")
            .arg("--listen")
            .arg(address.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .env("POSTDOG_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env("POSTDOG_LOG", "warn")
            .env_remove("DATABASE_URL")
            .env_remove("POSTDOG_REGISTRY")
            .env_remove("POSTDOG_OPERATOR_KEY_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server = Self {
            base_url: format!("http://{address}"),
            address,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("the server exited before it was ready: {status}");
            }
            if healthz(address).unwrap_or(false) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("the server at {address} was not healthy within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's peak resident memory (`VmHWM`), in MB.
    pub fn peak_rss_mb(&self) -> anyhow::Result<f64> {
        self.status_mb("VmHWM")
    }

    /// The server's resident memory now (`VmRSS`), in MB.
    pub fn rss_mb(&self) -> anyhow::Result<f64> {
        self.status_mb("VmRSS")
    }

    /// The CPU time the server has used so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(self.child.id())
    }

    /// A `kB` field of `/proc/<pid>/status`, in MB.
    fn status_mb(&self, field: &str) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("no {field} in /proc/<pid>/status"))?
            .parse()?;
        Ok(kib * 1024.0 / 1e6)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SIGTERM for a graceful stop; SIGKILL if it does not exit within 5 s.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CPU time process `pid` has used so far (user + system, all threads), in
/// seconds: a figure of work done that the machine's noise moves less than a rate.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command name in parentheses: field 3 (state) onwards; utime and stime
    // are fields 14 and 15, in USER_HZ ticks (100 per second on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("no command name in /proc/<pid>/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |index: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(index)
            .context("a short /proc/<pid>/stat")?
            .parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Whether `GET /healthz` answers 200.
fn healthz(address: SocketAddr) -> anyhow::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0_u8; 12];
    stream.read_exact(&mut head)?;
    Ok(head.get(9..12) == Some(b"200".as_slice()))
}

/// Creates a Business tenant and raises its API rate limit for benchmarking; its API key.
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
    let id = created["tenant_id"].as_str().context("no tenant_id")?;
    client
        .patch(format!("{base_url}/admin/v1/tenants/{id}"))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"requests_per_minute": 1_000_000}))
        .send()
        .await?
        .error_for_status()?;
    Ok(created["api_key"]
        .as_str()
        .context("no api_key")?
        .to_string())
}
