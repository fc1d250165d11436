//! The `hot-swap` scenario: calls keep flowing while new versions of the plugin they
//! call are published and hot-loaded.
//!
//! The real `postdog` binary runs as a child process (release build, SQLite in a
//! temporary directory). The bench publishes `postdog/hello-action` 1.0.0 (the example
//! component, signed with the operator publisher key the server keeps in its data
//! directory, which owns the `postdog` publisher) straight into the server's embedded
//! directory registry (`<data dir>/registry`), creates a Business tenant with a raised
//! rate limit and installs the plugin with requirement `^1` and the `kv` grant.
//!
//! `--connections` keep-alive HTTP/1.1 connections (a minimal raw-socket client on its
//! own tokio runtime, like `api-read`'s) then send `POST /v1/installs/{id}/call` without
//! pause. A call counts as failed when the answer is not 200 or its body is not
//! `{"ok": …}` (a typed plugin `{"error": …}` is a failure here), or when the connection
//! breaks (the client reconnects). After a 1 s warm-up, calls are counted for
//! `--seconds-before` seconds with no publish ("before"). Then the bench publishes 1.1.0,
//! 1.2.0, … (`--versions` of them; each a new artifact digest, same component) one after
//! the other: after each publish it polls `GET /v1/installs/{id}` every 20 ms until the
//! install shows the new version, records that publish → visible latency, and publishes
//! the next one no sooner than 0.5 s after the previous publish ("swap" phase, from the
//! first publish to the last version becoming visible). A call belongs to the phase in
//! which it was sent. The server looks at the registry's change log once a second, so
//! the visible latency is mostly that interval; since each publish follows a visible
//! swap closely, publishes tend to land just after a look and wait most of the second.
//!
//! Printed: calls, failures, calls/s, p50/p99/max latency per phase; every swap's
//! publish and visible latencies and the worst; the install's health as the server
//! reports it; the server's RSS before the swaps, after them and at peak (`VmHWM`). The
//! last line is `ratio: X`, calls/s during the swaps ÷ calls/s before. Any failed call
//! fails the scenario after the figures are printed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use postdog_registry::{Artifact, PublisherKey, Registry, VersionInfo};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::server_process::{self, ServerProcess, bench_tenant};

/// Options of `hot-swap`.
#[derive(clap::Args)]
pub struct Options {
    /// Measured seconds of calls before the first publish (after a 1 s warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds_before: f64,
    /// New versions to publish while the calls continue (1.1.0, 1.2.0, …).
    #[arg(long, default_value_t = 20)]
    versions: u32,
    /// Concurrent keep-alive connections sending calls.
    #[arg(long, default_value_t = 16)]
    connections: usize,
}

/// The example manifest `example` (a directory under `plugins/examples`) with its
/// version replaced by `version` and, if given, its name by `name`.
pub(crate) fn manifest(example: &str, version: &str, name: Option<&str>) -> anyhow::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/examples")
        .join(example)
        .join("postdog-plugin.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let original_name = format!("\"postdog/{example}\"");
    if !text.contains("version = \"0.1.0\"") || !text.contains(&original_name) {
        bail!(
            "{} no longer has `version = \"0.1.0\"` and `name = {original_name}`; update the bench",
            path.display()
        );
    }
    let text = text.replacen(
        "version = \"0.1.0\"",
        &format!("version = \"{version}\""),
        1,
    );
    Ok(match name {
        Some(name) => text.replacen(&original_name, &format!("\"{name}\""), 1),
        None => text,
    })
}

/// A plugin component built by the build script (`hello_action`, `echo_channel`, …).
pub(crate) fn component(name: &str) -> anyhow::Result<Vec<u8>> {
    let path = Path::new(env!("POSTDOG_PLUGIN_DIR")).join(format!("{name}.wasm"));
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// The server's embedded directory registry.
pub(crate) fn open_registry(data_dir: &Path) -> anyhow::Result<Registry> {
    let location = data_dir.join("registry");
    Registry::open(&location.display().to_string())
        .with_context(|| format!("opening the registry at {}", location.display()))
}

/// The key to publish with: the operator's publisher key the server created in its data
/// directory (it owns the `postdog` publisher, under which the server seeds its bundled
/// plugins), or a fresh key if this server has none.
pub(crate) fn publisher_key(data_dir: &Path) -> anyhow::Result<PublisherKey> {
    let path = data_dir.join("operator-publisher.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => PublisherKey::from_file_text(&text)
            .with_context(|| format!("reading the operator key {}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            PublisherKey::generate().context("generating a publisher key")
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Signs and publishes `manifest` with `component`; the published version's record.
pub(crate) async fn publish(
    registry: &Registry,
    key: &PublisherKey,
    manifest: &str,
    component: &[u8],
) -> anyhow::Result<VersionInfo> {
    let artifact =
        Artifact::build(manifest, component.to_vec(), key).context("building the artifact")?;
    registry
        .publish(&artifact.to_bytes())
        .await
        .context("publishing the artifact")
}

/// Sends a JSON request with reqwest; the JSON answer, or an error with the status and
/// the body when the status is not `expected`.
pub(crate) async fn send_json(
    request: reqwest::RequestBuilder,
    expected: u16,
    what: &str,
) -> anyhow::Result<Value> {
    let response = request.send().await.context(what.to_string())?;
    let status = response.status();
    let body = response
        .text()
        .await
        .with_context(|| format!("{what}: reading the answer"))?;
    if status.as_u16() != expected {
        bail!("{what}: expected {expected}, got {status}: {body}");
    }
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&body).with_context(|| format!("{what}: the answer is not JSON: {body}"))
}

/// Phases of the run, in order; a call counts in the phase it was sent in.
const WARM_UP: usize = 0;
const BEFORE: usize = 1;
const SWAP: usize = 2;
const STOP: usize = 3;

/// What the load tasks share.
struct Shared {
    phase: AtomicUsize,
    failures: [AtomicU64; 3],
    first_failures: Mutex<Vec<String>>,
}

impl Shared {
    fn fail(&self, phase: usize, message: String) {
        self.failures[phase].fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_failures
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if first.len() < 5 {
            first.push(message);
        }
    }
}

async fn connection(
    address: SocketAddr,
    request: Arc<Vec<u8>>,
    shared: Arc<Shared>,
) -> [Vec<u32>; 3] {
    let mut latencies: [Vec<u32>; 3] = Default::default();
    let mut buffer = Vec::with_capacity(16 * 1024);
    let mut stream: Option<TcpStream> = None;
    loop {
        let phase = shared.phase.load(Ordering::Acquire);
        if phase >= STOP {
            return latencies;
        }
        let started = Instant::now();
        let open = match stream.take() {
            Some(open) => Ok(open),
            None => TcpStream::connect(address).await.and_then(|open| {
                open.set_nodelay(true)?;
                Ok(open)
            }),
        };
        let mut open = match open {
            Ok(open) => open,
            Err(error) => {
                shared.fail(phase, format!("connecting: {error}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let answer = async {
            open.write_all(&request).await?;
            crate::http_load::read_response(&mut open, &mut buffer).await
        }
        .await;
        let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        latencies[phase].push(micros);
        match answer {
            Ok((status, body)) => {
                let body = &buffer[body];
                if status != 200 || !body.starts_with(b"{\"ok\"") {
                    shared.fail(phase, format!("{status} {}", String::from_utf8_lossy(body)));
                }
                stream = Some(open);
            }
            Err(error) => {
                // The connection is dropped and a new one opened for the next call.
                shared.fail(phase, format!("connection: {error:#}"));
            }
        }
    }
}

/// p50, p99 and max of sorted latencies in µs, as ms.
fn percentiles(sorted: &[u32]) -> (f64, f64, f64) {
    let at = |fraction: f64| {
        let rank = ((sorted.len() as f64 * fraction).ceil() as usize).saturating_sub(1);
        sorted
            .get(rank.min(sorted.len().saturating_sub(1)))
            .map_or(0.0, |micros| f64::from(*micros) / 1e3)
    };
    (at(0.50), at(0.99), at(1.0))
}

/// The install's `version` as `GET /v1/installs/{id}` shows it.
async fn shown_version(
    http: &reqwest::Client,
    base_url: &str,
    key: &str,
    id: &str,
) -> anyhow::Result<String> {
    let install = send_json(
        http.get(format!("{base_url}/v1/installs/{id}"))
            .bearer_auth(key),
        200,
        "GET /v1/installs/{id}",
    )
    .await?;
    Ok(install["version"]
        .as_str()
        .context("the install has no version")?
        .to_string())
}

/// One swap: publish time and publish → visible latency.
struct Swap {
    version: String,
    publish: Duration,
    visible: Duration,
}

/// Runs the scenario.
pub fn run(options: Options) -> anyhow::Result<()> {
    if options.connections == 0 || options.versions == 0 {
        bail!("--connections and --versions must be at least 1");
    }
    let binary = server_process::build()?;
    let hello = component("hello_action")?;
    let data = tempfile::tempdir()?;
    let server = ServerProcess::start(&binary, data.path())?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let registry = open_registry(data.path())?;
    let publisher = publisher_key(data.path())?;
    let http = reqwest::Client::new();
    let base_url = server.base_url.clone();

    let (key, id) = client.block_on(async {
        let first = publish(
            &registry,
            &publisher,
            &manifest("hello-action", "1.0.0", None)?,
            &hello,
        )
        .await?;
        let key = bench_tenant(&http, &base_url).await?;
        let install = send_json(
            http.post(format!("{base_url}/v1/installs"))
                .bearer_auth(&key)
                .json(&json!({
                    "plugin": "postdog/hello-action",
                    "version": "^1",
                    "grants": ["kv"],
                    "config": {"greeting": "Hi"},
                })),
            201,
            "POST /v1/installs",
        )
        .await?;
        if install["version"] != "1.0.0" || install["digest"] != first.digest.to_string() {
            bail!("the install is not on the published 1.0.0: {install}");
        }
        let id = install["id"].as_str().context("no install id")?.to_string();
        anyhow::Ok((key, id))
    })?;

    let body = json!({"input": {"contact": {"id": "c1", "name": "Ada"}}}).to_string();
    let request = format!(
        "POST /v1/installs/{id}/call HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        server.address,
        body.len()
    )
    .into_bytes();
    println!(
        "postdog/hello-action 1.0.0 installed as `^1`; {} connections calling POST /v1/installs/{{id}}/call; \
         {} s before the swaps after a 1 s warm-up, then {} versions published",
        options.connections, options.seconds_before, options.versions
    );

    let shared = Arc::new(Shared {
        phase: AtomicUsize::new(WARM_UP),
        failures: Default::default(),
        first_failures: Mutex::default(),
    });
    let request = Arc::new(request);
    let tasks: Vec<_> = (0..options.connections)
        .map(|_| client.spawn(connection(server.address, request.clone(), shared.clone())))
        .collect();

    let swaps = client.block_on(async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        shared.phase.store(BEFORE, Ordering::Release);
        let before_started = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(options.seconds_before)).await;
        let before = before_started.elapsed();
        let rss_before = server.rss_mb()?;
        shared.phase.store(SWAP, Ordering::Release);
        let swap_started = Instant::now();
        let mut swaps = Vec::new();
        let outcome = async {
            for minor in 1..=options.versions {
                let version = format!("1.{minor}.0");
                let text = manifest("hello-action", &version, None)?;
                let publishing = Instant::now();
                publish(&registry, &publisher, &text, &hello).await?;
                let published = Instant::now();
                loop {
                    if shown_version(&http, &base_url, &key, &id).await? == version {
                        break;
                    }
                    if published.elapsed() > Duration::from_secs(30) {
                        bail!("{version} was not visible on the install within 30 s");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let visible = published.elapsed();
                println!(
                    "  {version}: published in {:.0} ms, visible after {:.0} ms",
                    (published - publishing).as_secs_f64() * 1e3,
                    visible.as_secs_f64() * 1e3
                );
                swaps.push(Swap {
                    version,
                    publish: published - publishing,
                    visible,
                });
                let next = publishing + Duration::from_millis(500);
                tokio::time::sleep_until(next.into()).await;
            }
            anyhow::Ok(())
        }
        .await;
        let swap = swap_started.elapsed();
        shared.phase.store(STOP, Ordering::Release);
        outcome?;
        anyhow::Ok((before, swap, rss_before, swaps))
    });
    // Stop the load even when the swaps failed, then report.
    shared.phase.store(STOP, Ordering::Release);
    let mut latencies: [Vec<u32>; 3] = Default::default();
    for task in tasks {
        let done = client
            .block_on(task)
            .map_err(|error| anyhow::anyhow!("a load task failed: {error}"))?;
        for (all, mine) in latencies.iter_mut().zip(done) {
            all.extend(mine);
        }
    }
    let (before, swap, rss_before, swaps) = swaps?;

    let seconds = [0.0, before.as_secs_f64(), swap.as_secs_f64()];
    let mut rates = [0.0; 3];
    for phase in [BEFORE, SWAP] {
        let calls = &mut latencies[phase];
        calls.sort_unstable();
        let failures = shared.failures[phase].load(Ordering::Relaxed);
        let (p50, p99, max) = percentiles(calls);
        rates[phase] = calls.len() as f64 / seconds[phase];
        println!(
            "{}: {} calls in {:.2} s, {failures} failed, {:.0} calls/s, p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.1} ms",
            if phase == BEFORE {
                "before swaps"
            } else {
                "during swaps"
            },
            calls.len(),
            seconds[phase],
            rates[phase],
        );
    }
    let worst = swaps
        .iter()
        .max_by_key(|swap| swap.visible)
        .context("no swap happened")?;
    let mean_visible = swaps
        .iter()
        .map(|swap| swap.visible.as_secs_f64())
        .sum::<f64>()
        / swaps.len() as f64;
    let worst_publish = swaps
        .iter()
        .map(|swap| swap.publish)
        .max()
        .unwrap_or_default();
    println!(
        "swaps: {} versions; publish → visible on GET: mean {:.0} ms, worst {:.0} ms ({}); slowest publish {:.0} ms",
        swaps.len(),
        mean_visible * 1e3,
        worst.visible.as_secs_f64() * 1e3,
        worst.version,
        worst_publish.as_secs_f64() * 1e3
    );
    let failed = shared.failures[BEFORE].load(Ordering::Relaxed)
        + shared.failures[SWAP].load(Ordering::Relaxed);
    let warm_up_failed = shared.failures[WARM_UP].load(Ordering::Relaxed);
    println!("failed calls (non-200, an `error` answer or a broken connection): {failed}");
    if warm_up_failed > 0 {
        println!("failed calls during the warm-up (not counted above): {warm_up_failed}");
    }
    let install = client.block_on(send_json(
        http.get(format!("{base_url}/v1/installs/{id}"))
            .bearer_auth(&key),
        200,
        "GET /v1/installs/{id}",
    ))?;
    println!(
        "install now: version {} (previous {}), health {}",
        install["version"], install["previous_version"], install["health"]
    );
    println!(
        "postdog server RSS: {rss_before:.1} MB before the swaps, {:.1} MB after them; peak (VmHWM) {:.1} MB",
        server.rss_mb()?,
        server.peak_rss_mb()?
    );
    println!(
        "note: the load client and the server under test share this machine's {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let first_failures = shared
        .first_failures
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .clone();
    if failed + warm_up_failed > 0 {
        for failure in &first_failures {
            println!("  failed call: {failure}");
        }
        println!("ratio: {:.3}", rates[SWAP] / rates[BEFORE]);
        bail!("{} calls failed", failed + warm_up_failed);
    }
    println!("ratio: {:.3}", rates[SWAP] / rates[BEFORE]);
    Ok(())
}
