//! The `inbound` scenario.
//!
//! The real `postdog` binary runs as a child process (release build, SQLite in a
//! temporary directory) with one Business tenant that connected a WhatsApp number: the
//! bundled `postdog/whatsapp` connector installed through the API, with its
//! `access_token`, `app_secret` and `verify_token` secrets. Before timing, `--webhooks`
//! inbound-message webhooks are built in Meta's shape, each with a unique wamid and a
//! sender drawn (deterministically, uniformly) from `--senders` distinct US numbers, and
//! signed with `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app_secret, body)>`.
//!
//! Timed: `--connections` keep-alive HTTP/1.1 connections POST them to
//! `/hooks/{install_id}`, each webhook exactly once, for `--seconds` after a 1 s warm-up
//! (whose webhooks are stored too, but not timed). Only 200 answers count as delivered.
//! Afterwards the server is stopped and its SQLite database opened directly: the inbound
//! messages stored must equal the 200 answers (plus one probe sent before timing).
//!
//! Baseline, in the same run: a bare axum server inside this process (its own 2-worker
//! tokio runtime) with one POST route that reads the body, verifies the same HMAC and
//! answers 200, driven by the same client with the same prepared requests and settings
//! (cycling through them, as it stores nothing).
//!
//! Printed: requests, errors, webhooks/s and p50 / p99 time to 200 for each, PostDog's
//! peak RSS and the stored count. The last line is `ratio: X`, PostDog webhooks/s ÷ bare
//! webhooks/s. Non-200 answers or a stored count that differs fail the scenario after
//! everything is printed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::{ConnectOptions, Connection};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::http_load::read_response;
use crate::server_process::{self, ServerProcess, bench_tenant};

/// Options of `inbound`.
#[derive(clap::Args)]
pub struct Options {
    /// Measured seconds per server (after a 1 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Distinct senders (phone numbers) the webhooks come from.
    #[arg(long, default_value_t = 10_000)]
    senders: usize,
    /// Webhooks to prepare, each sent to PostDog at most once [default: 30,000 per
    /// second of warm-up and measurement].
    #[arg(long)]
    webhooks: Option<usize>,
}

/// The Meta app secret the install verifies signatures with.
const APP_SECRET: &str = "bench-meta-app-secret-6c0f5b2e";
const PHONE_NUMBER_ID: &str = "1000000001";
const WABA_ID: &str = "2000000001";

type HmacSha256 = Hmac<Sha256>;

/// `sha256=<hex HMAC-SHA256(APP_SECRET, body)>`.
fn signature(body: &[u8]) -> anyhow::Result<String> {
    let mut mac = HmacSha256::new_from_slice(APP_SECRET.as_bytes())?;
    mac.update(body);
    Ok(format!(
        "sha256={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// The WhatsApp id (E.164 digits) of sender `index`: a distinct valid San Francisco
/// number, 1 415 2XX XXXX.
fn wa_id(index: usize) -> anyhow::Result<String> {
    // Exchanges 200–299 except the N11 code 211.
    let exchange = (200..=299)
        .filter(|exchange| *exchange != 211)
        .nth(index / 10_000)
        .context("at most 990,000 senders")?;
    Ok(format!("1415{exchange}{:04}", index % 10_000))
}

/// SplitMix64: a deterministic spread of senders over the webhooks.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An inbound text message webhook in Meta's shape.
fn webhook_body(sender: usize, wamid: &str, timestamp: u64, text: &str) -> anyhow::Result<Vec<u8>> {
    let from = wa_id(sender)?;
    let body = json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": WABA_ID,
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550100", "phone_number_id": PHONE_NUMBER_ID},
                    "contacts": [{"profile": {"name": format!("Customer {sender}")}, "wa_id": from}],
                    "messages": [{
                        "from": from,
                        "id": wamid,
                        "timestamp": timestamp.to_string(),
                        "type": "text",
                        "text": {"body": text},
                    }],
                },
            }],
        }],
    });
    Ok(serde_json::to_vec(&body)?)
}

/// The raw HTTP/1.1 request delivering `body` to `/hooks/{install_id}`, signed.
fn hook_request(install_id: &str, body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut request = format!(
        "POST /hooks/{install_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/json\r\nX-Hub-Signature-256: {}\r\n\
         Content-Length: {}\r\n\r\n",
        signature(body)?,
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    Ok(request)
}

/// `count` signed webhook requests, each with a unique wamid.
fn prepare(
    install_id: &str,
    count: usize,
    senders: usize,
    timestamp: u64,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut state = 0x5EED_u64;
    (0..count)
        .map(|index| {
            let sender = (splitmix64(&mut state) % senders as u64) as usize;
            let wamid = format!("wamid.HBgLbench{index:010}");
            let body = webhook_body(sender, &wamid, timestamp, &format!("hello {sender}"))?;
            hook_request(install_id, &body)
        })
        .collect()
}

/// What a load run measured.
struct Report {
    /// Requests completed in the timed window.
    requests: u64,
    /// Of those, answers other than 200.
    errors: u64,
    /// 200 answers over the whole run, warm-up included.
    delivered: u64,
    /// Non-200 answers over the whole run, warm-up included.
    all_errors: u64,
    /// The first non-200 answer: status and body.
    first_error: Option<String>,
    /// Whether the prepared requests ran out before the end.
    exhausted: bool,
    /// 200 answers per second over the timed window.
    per_second: f64,
    /// Median time to 200, ms.
    p50_ms: f64,
    /// 99th percentile time to 200, ms.
    p99_ms: f64,
}

/// One connection's tally.
#[derive(Default)]
struct Tally {
    requests: u64,
    errors: u64,
    delivered: u64,
    all_errors: u64,
    first_error: Option<String>,
    exhausted: bool,
    latencies_us: Vec<u32>,
}

/// The shared cursor over the prepared requests.
struct Requests {
    list: Vec<Vec<u8>>,
    next: AtomicUsize,
    /// Whether to start over at the end (the baseline) or stop (PostDog: each once).
    wrap: bool,
}

impl Requests {
    fn next(&self) -> Option<&[u8]> {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        if self.wrap {
            self.list.get(index % self.list.len())
        } else {
            self.list.get(index)
        }
        .map(Vec::as_slice)
    }
}

async fn connection(
    address: SocketAddr,
    requests: Arc<Requests>,
    warm_until: Instant,
    stop_at: Instant,
) -> anyhow::Result<Tally> {
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let mut tally = Tally {
        latencies_us: Vec::with_capacity(16 * 1024),
        ..Tally::default()
    };
    let mut buffer = Vec::with_capacity(16 * 1024);
    loop {
        let started = Instant::now();
        if started >= stop_at {
            return Ok(tally);
        }
        let Some(request) = requests.next() else {
            tally.exhausted = true;
            return Ok(tally);
        };
        stream.write_all(request).await?;
        let (status, body) = read_response(&mut stream, &mut buffer).await?;
        let timed = started >= warm_until;
        if timed {
            tally.requests += 1;
        }
        if status == 200 {
            tally.delivered += 1;
            if timed {
                let micros = started.elapsed().as_micros();
                tally
                    .latencies_us
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
            }
        } else {
            tally.all_errors += 1;
            if timed {
                tally.errors += 1;
            }
            if tally.first_error.is_none() {
                tally.first_error = Some(format!(
                    "{status} {}",
                    String::from_utf8_lossy(&buffer[body])
                ));
            }
        }
    }
}

/// POSTs the prepared requests to `address` from `connections` keep-alive connections
/// for a 1 s warm-up and then `window`.
async fn drive(
    address: SocketAddr,
    requests: Arc<Requests>,
    connections: usize,
    window: Duration,
) -> anyhow::Result<Report> {
    if requests.list.is_empty() {
        bail!("no requests to send");
    }
    let warm_until = Instant::now() + Duration::from_secs(1);
    let stop_at = warm_until + window;
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(connection(address, requests.clone(), warm_until, stop_at)))
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await??;
        total.requests += tally.requests;
        total.errors += tally.errors;
        total.delivered += tally.delivered;
        total.all_errors += tally.all_errors;
        total.first_error = total.first_error.or(tally.first_error);
        total.exhausted |= tally.exhausted;
        total.latencies_us.extend(tally.latencies_us);
    }
    let mut latencies = total.latencies_us;
    latencies.sort_unstable();
    let percentile = |fraction: f64| {
        let rank = ((latencies.len() as f64 * fraction).ceil() as usize).saturating_sub(1);
        latencies
            .get(rank.min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |micros| f64::from(*micros) / 1e3)
    };
    Ok(Report {
        requests: total.requests,
        errors: total.errors,
        delivered: total.delivered,
        all_errors: total.all_errors,
        first_error: total.first_error,
        exhausted: total.exhausted,
        per_second: latencies.len() as f64 / window.as_secs_f64(),
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
    })
}

fn print(label: &str, report: &Report) {
    println!(
        "{label}: {} requests, {} errors, {:.0} webhooks/s, p50 {:.2} ms, p99 {:.2} ms",
        report.requests, report.errors, report.per_second, report.p50_ms, report.p99_ms
    );
}

/// Creates the tenant and connects the WhatsApp number; the API key and install id.
async fn connect_whatsapp(
    http: &reqwest::Client,
    base_url: &str,
) -> anyhow::Result<(String, String)> {
    let key = bench_tenant(http, base_url).await?;
    let response = http
        .post(format!("{base_url}/v1/installs"))
        .bearer_auth(&key)
        .json(&json!({
            "plugin": "postdog/whatsapp",
            "grants": ["http:graph.facebook.com", "webhook"],
            "config": {"phone_number_id": PHONE_NUMBER_ID, "waba_id": WABA_ID},
        }))
        .send()
        .await?;
    let status = response.status();
    let install: Value = response.json().await?;
    if status != 201 {
        bail!("installing postdog/whatsapp: {status} {install}");
    }
    let install_id = install["id"]
        .as_str()
        .context("install without id")?
        .to_string();
    for (name, value) in [
        ("access_token", "bench-access-token"),
        ("app_secret", APP_SECRET),
        ("verify_token", "bench-verify-token"),
    ] {
        let response = http
            .put(format!(
                "{base_url}/v1/installs/{install_id}/secrets/{name}"
            ))
            .bearer_auth(&key)
            .json(&json!({ "value": value }))
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "setting the secret {name}: {status} {}",
                response.text().await?
            );
        }
    }
    Ok((key, install_id))
}

/// Sends one webhook (not one of the prepared ones) and checks it became a
/// conversation, so a setup problem shows before the timed run.
async fn probe(
    http: &reqwest::Client,
    base_url: &str,
    key: &str,
    install_id: &str,
    timestamp: u64,
) -> anyhow::Result<()> {
    let body = webhook_body(0, "wamid.HBgLbenchprobe", timestamp, "probe")?;
    let response = http
        .post(format!("{base_url}/hooks/{install_id}"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature(&body)?)
        .body(body)
        .send()
        .await?;
    let status = response.status();
    if status != 200 {
        bail!(
            "the probe webhook was answered {status} {}",
            response.text().await?
        );
    }
    let conversations: Value = http
        .get(format!("{base_url}/v1/conversations"))
        .bearer_auth(key)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    if conversations["data"].as_array().map(Vec::len) != Some(1) {
        bail!("the probe webhook did not make one conversation: {conversations}");
    }
    Ok(())
}

/// Inbound messages, contacts and conversations in the SQLite database in `dir`.
async fn stored(dir: &Path) -> anyhow::Result<(i64, i64, i64)> {
    let mut db = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("postdog.db"))
        .disable_statement_logging()
        .connect()
        .await?;
    let messages: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE direction = 'inbound'")
            .fetch_one(&mut db)
            .await?;
    let contacts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM contacts")
        .fetch_one(&mut db)
        .await?;
    let conversations: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM conversations")
        .fetch_one(&mut db)
        .await?;
    db.close().await?;
    Ok((messages, contacts, conversations))
}

/// Reads the body, verifies `X-Hub-Signature-256` against it and answers 200 (401 when
/// it does not match).
async fn verify_only(
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, &'static str) {
    use axum::http::StatusCode;
    let expected = headers
        .get("x-hub-signature-256")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("sha256="))
        .and_then(|hex| hex::decode(hex).ok());
    let Some(expected) = expected else {
        return (StatusCode::UNAUTHORIZED, "no signature");
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(APP_SECRET.as_bytes()) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "bad key");
    };
    mac.update(&body);
    match mac.verify_slice(&expected) {
        Ok(()) => (StatusCode::OK, "OK"),
        Err(_) => (StatusCode::UNAUTHORIZED, "bad signature"),
    }
}

/// Serves [`verify_only`] at `/hooks/{install_id}` on a 2-worker runtime until
/// `stopped` fires.
fn bare_axum(
    listener: std::net::TcpListener,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app =
            axum::Router::new().route("/hooks/{install_id}", axum::routing::post(verify_only));
        let listener = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await?;
        anyhow::Ok(())
    })
}

/// Runs the scenario.
pub fn run(options: Options) -> anyhow::Result<()> {
    if options.senders == 0 {
        bail!("--senders must be at least 1");
    }
    let window = Duration::from_secs_f64(options.seconds);
    let count = options
        .webhooks
        .unwrap_or(((options.seconds + 1.0) * 30_000.0).ceil() as usize);
    let binary = server_process::build()?;
    let data = tempfile::tempdir()?;
    let server = ServerProcess::start(&binary, data.path())?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();

    let install_id = client.block_on(async {
        let http = reqwest::Client::new();
        let (key, install_id) = connect_whatsapp(&http, &server.base_url).await?;
        probe(&http, &server.base_url, &key, &install_id, timestamp).await?;
        anyhow::Ok(install_id)
    })?;
    let list = prepare(&install_id, count, options.senders, timestamp)?;
    let bytes: usize = list.iter().map(Vec::len).sum();
    println!(
        "{count} signed webhooks prepared ({:.0} bytes each on average) from {} senders; \
         {} connections; {} s per server after a 1 s warm-up",
        bytes as f64 / count.max(1) as f64,
        options.senders,
        options.connections,
        options.seconds
    );

    let requests = Arc::new(Requests {
        list,
        next: AtomicUsize::new(0),
        wrap: false,
    });
    let cpu_before = server.cpu_seconds()?;
    let postdog = client.block_on(drive(
        server.address,
        requests.clone(),
        options.connections,
        window,
    ))?;
    let cpu = server.cpu_seconds()? - cpu_before;
    print("postdog", &postdog);
    println!(
        "postdog server CPU for the load (warm-up included): {cpu:.1} s ({:.0} µs per \
         webhook answered)",
        cpu * 1e6 / postdog.delivered.max(1) as f64
    );
    let rss = server.peak_rss_mb()?;
    println!("postdog server peak RSS (VmHWM): {rss:.1} MB");
    drop(server);
    // The probe, plus every webhook answered 200.
    let expected = postdog.delivered + 1;
    let (messages, contacts, conversations) = client.block_on(stored(data.path()))?;
    println!(
        "stored: {messages} (expected {expected}); {contacts} contacts, {conversations} conversations"
    );

    let Requests { list, .. } =
        Arc::into_inner(requests).context("the prepared requests are still shared")?;
    let requests = Arc::new(Requests {
        list,
        next: AtomicUsize::new(0),
        wrap: true,
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let bare_address = listener.local_addr()?;
    let bare = std::thread::spawn(move || bare_axum(listener, stopped));
    let baseline = client.block_on(drive(bare_address, requests, options.connections, window));
    let _ = stop.send(());
    bare.join()
        .map_err(|_| anyhow::anyhow!("the bare axum server panicked"))??;
    let baseline = baseline?;
    print("bare axum + hmac", &baseline);

    println!(
        "note: the load client and the server under test share this machine's {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("targets: postdog >= 3000 webhooks/s, p99 < 25 ms, ratio >= 0.25");
    println!("ratio: {:.3}", postdog.per_second / baseline.per_second);

    let mut problems = Vec::new();
    if postdog.exhausted {
        problems.push(format!(
            "postdog: all {count} prepared webhooks were sent before the end; raise --webhooks"
        ));
    }
    for (label, report) in [("postdog", &postdog), ("bare axum + hmac", &baseline)] {
        if let Some(error) = &report.first_error {
            problems.push(format!(
                "{label}: {} answers were not 200 ({} in the timed window); first: {error}",
                report.all_errors, report.errors
            ));
        }
    }
    if i64::try_from(expected).ok() != Some(messages) {
        problems.push(format!(
            "{messages} inbound messages stored, but {expected} webhooks were answered 200"
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}
