//! The `api-read` scenario.
//!
//! The real `postdog` binary runs as a child process (release build, SQLite in a
//! temporary directory) with one Business tenant whose rate limit is raised for the
//! bench, and `--contacts` contacts created through the API. `--connections` keep-alive
//! HTTP/1.1 connections then send `GET /v1/contacts/{id}` with the tenant's Bearer key
//! for `--seconds` after a 1 s warm-up, so every request is authenticated, rate limited
//! and read from the database. The client is a minimal raw-socket client
//! ([`crate::http_load`]) on its own multi-thread tokio runtime.
//!
//! Baseline, in the same run: a bare axum server inside this process (its own 2-worker
//! tokio runtime) answering the same path with the exact JSON body PostDog returned for
//! one of the contacts, no auth, no database, driven by the same client and settings.
//!
//! Printed for each: requests, errors, req/s, p50 and p99 latency; PostDog's peak RSS.
//! The last line is `ratio: X`, bare req/s ÷ PostDog req/s. Any non-200 response fails
//! the scenario after the figures are printed.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use crate::http_load::{self, Report, get_request};
use crate::server_process::{self, ServerProcess, bench_tenant};

/// Options of `api-read`.
#[derive(clap::Args)]
pub struct Options {
    /// Measured seconds per server (after a 1 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Contacts to create and read.
    #[arg(long, default_value_t = 1_000)]
    contacts: usize,
}

/// A distinct valid New York number for `index`, in E.164: +1 212 2XX XXXX.
fn phone(index: usize) -> anyhow::Result<String> {
    // Exchanges 200–299 except the N11 code 211.
    let exchange = (200..=299)
        .filter(|exchange| *exchange != 211)
        .nth(index / 10_000)
        .context("at most 990,000 contacts")?;
    Ok(format!("+1212{exchange}{:04}", index % 10_000))
}

/// Creates the contacts (16 requests in flight); their ids, in order.
async fn create_contacts(
    client: &reqwest::Client,
    base_url: &str,
    key: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    futures::stream::iter(0..count)
        .map(|index| async move {
            let contact: Value = client
                .post(format!("{base_url}/v1/contacts"))
                .bearer_auth(key)
                .json(&json!({
                    "name": format!("Contact {index}"),
                    "phone": phone(index)?,
                    "email": format!("contact{index}@example.com"),
                    "tags": ["lead", if index % 2 == 0 { "even" } else { "odd" }],
                }))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::Ok(
                contact["id"]
                    .as_str()
                    .context("contact without id")?
                    .to_string(),
            )
        })
        .buffered(16)
        .try_collect()
        .await
}

fn print(label: &str, report: &Report) {
    println!(
        "{label}: {} requests, {} errors, {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
        report.requests, report.errors, report.per_second, report.p50_ms, report.p99_ms
    );
}

/// Serves `body` at `/v1/contacts/{id}` on a 2-worker runtime until `stopped` fires.
fn bare_axum(
    listener: std::net::TcpListener,
    body: String,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let body = axum::body::Bytes::from(body);
        let app = axum::Router::new().route(
            "/v1/contacts/{id}",
            axum::routing::get(move || {
                let body = body.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        body,
                    )
                }
            }),
        );
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
    let window = Duration::from_secs_f64(options.seconds);
    let binary = server_process::build()?;
    let data = tempfile::tempdir()?;
    let server = ServerProcess::start(&binary, data.path())?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let (key, ids, body) = client.block_on(async {
        let http = reqwest::Client::new();
        let key = bench_tenant(&http, &server.base_url).await?;
        let ids = create_contacts(&http, &server.base_url, &key, options.contacts).await?;
        let first = ids.first().context("--contacts must be at least 1")?;
        let body = http
            .get(format!("{}/v1/contacts/{first}", server.base_url))
            .bearer_auth(&key)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        anyhow::Ok((key, ids, body))
    })?;
    println!(
        "{} contacts; {} connections; {} s per server after a 1 s warm-up; response body {} bytes",
        ids.len(),
        options.connections,
        options.seconds,
        body.len()
    );

    let requests = |address: SocketAddr, key: Option<&str>| -> Vec<Vec<u8>> {
        ids.iter()
            .map(|id| get_request(address, &format!("/v1/contacts/{id}"), key))
            .collect()
    };
    let postdog = client.block_on(http_load::run(
        server.address,
        requests(server.address, Some(&key)),
        options.connections,
        window,
    ))?;
    print("postdog", &postdog);
    let rss = server.peak_rss_mb()?;
    println!("postdog server peak RSS (VmHWM): {rss:.1} MB");
    drop(server);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let bare_address = listener.local_addr()?;
    let bare = std::thread::spawn(move || bare_axum(listener, body, stopped));
    let baseline = client.block_on(http_load::run(
        bare_address,
        requests(bare_address, None),
        options.connections,
        window,
    ));
    let _ = stop.send(());
    bare.join()
        .map_err(|_| anyhow::anyhow!("the bare axum server panicked"))??;
    let baseline = baseline?;
    print("bare axum", &baseline);

    println!(
        "note: the load client and the server under test share this machine's {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("targets: postdog >= 10000 req/s, p99 < 10 ms, ratio <= 3");
    for (label, report) in [("postdog", &postdog), ("bare axum", &baseline)] {
        if let Some(error) = &report.first_error {
            bail!(
                "{label}: {} of {} requests failed; first: {error}",
                report.errors,
                report.requests
            );
        }
    }
    println!("ratio: {:.3}", baseline.per_second / postdog.per_second);
    Ok(())
}
