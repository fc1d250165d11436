//! The `api-read` scenario.
//!
//! A real PostDog server (SQLite, in this process, 2 runtime workers) with `--contacts`
//! contacts; `--connections` keep-alive HTTP/1.1 connections send
//! `GET /v1/contacts/{id}` with a Bearer key for `--seconds` (after a 1 s warm-up), so
//! every request is authenticated, rate limited (the tenant's limit raised for the
//! bench) and read from the database. The client is a minimal raw-socket HTTP/1.1
//! client, so most CPU goes to the servers.
//!
//! Baseline, in the same run: a bare axum server (same runtime size) answering the same
//! path with the same JSON body, no auth, no database, driven by the same client. The
//! last line is `ratio: X`, bare throughput ÷ PostDog throughput. Client and servers
//! share the machine's cores.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server::{Server, bench_tenant, peak_rss_mib};

/// Options of `api-read`.
#[derive(clap::Args)]
pub struct Options {
    /// Measured seconds per server.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Contacts to read from.
    #[arg(long, default_value_t = 1_000)]
    contacts: usize,
}

struct Outcome {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

/// Reads one response; its status and body.
async fn read_response(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    buffer.clear();
    let mut chunk = [0_u8; 16 * 1024];
    let header_end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buffer[..header_end])?;
    let status: u16 = head.get(9..12).context("status line")?.parse()?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .context("content-length")?;
    while buffer.len() < header_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Ok((status, buffer[header_end..header_end + length].to_vec()))
}

async fn connection(
    address: SocketAddr,
    requests: Arc<Vec<Vec<u8>>>,
    offset: usize,
    warm_until: Instant,
    stop_at: Instant,
) -> anyhow::Result<Outcome> {
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let mut outcome = Outcome {
        requests: 0,
        errors: 0,
        first_error: None,
        latencies_us: Vec::new(),
    };
    let mut buffer = Vec::with_capacity(8 * 1024);
    let mut index = offset;
    loop {
        let now = Instant::now();
        if now >= stop_at {
            return Ok(outcome);
        }
        let request = &requests[index % requests.len()];
        index += 7;
        stream.write_all(request).await?;
        let (status, body) = read_response(&mut stream, &mut buffer).await?;
        if now >= warm_until {
            outcome.requests += 1;
            outcome
                .latencies_us
                .push(u32::try_from(now.elapsed().as_micros()).unwrap_or(u32::MAX));
            if status != 200 {
                outcome.errors += 1;
                outcome
                    .first_error
                    .get_or_insert_with(|| format!("{status} {}", String::from_utf8_lossy(&body)));
            }
        }
    }
}

struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn drive(
    address: SocketAddr,
    requests: Vec<Vec<u8>>,
    options: &Options,
    label: &str,
) -> anyhow::Result<Figures> {
    let requests = Arc::new(requests);
    let warm_until = Instant::now() + Duration::from_secs(1);
    let stop_at = warm_until + Duration::from_secs(options.seconds);
    let tasks: Vec<_> = (0..options.connections)
        .map(|offset| {
            tokio::spawn(connection(
                address,
                requests.clone(),
                offset,
                warm_until,
                stop_at,
            ))
        })
        .collect();
    let (mut total, mut errors, mut first_error, mut latencies) = (0, 0, None, Vec::new());
    for task in tasks {
        let outcome = task.await??;
        total += outcome.requests;
        errors += outcome.errors;
        first_error = first_error.or(outcome.first_error);
        latencies.extend(outcome.latencies_us);
    }
    latencies.sort_unstable();
    let pick = |fraction: f64| {
        latencies
            .get(
                ((latencies.len() as f64 * fraction) as usize)
                    .min(latencies.len().saturating_sub(1)),
            )
            .map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    let figures = Figures {
        per_second: total as f64 / options.seconds as f64,
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
    };
    println!(
        "{label}: {total} requests, {errors} errors, {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
        figures.per_second, figures.p50_ms, figures.p99_ms
    );
    if let Some(error) = first_error {
        bail!("{label}: {errors} requests failed; first: {error}");
    }
    Ok(figures)
}

fn get_request(address: SocketAddr, id: &str, key: Option<&str>) -> Vec<u8> {
    let auth = key
        .map(|key| format!("Authorization: Bearer {key}\r\n"))
        .unwrap_or_default();
    format!("GET /v1/contacts/{id} HTTP/1.1\r\nHost: {address}\r\n{auth}\r\n").into_bytes()
}

/// Runs the scenario.
pub fn run(options: Options) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(&work.path().join("server"), 2)?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let address: SocketAddr = server.base_url.trim_start_matches("http://").parse()?;
    let (key, ids, body) = client.block_on(async {
        let http = reqwest::Client::new();
        let key = bench_tenant(&http, &server.base_url).await?;
        let mut ids = Vec::with_capacity(options.contacts);
        for index in 0..options.contacts {
            let contact: Value = http
                .post(format!("{}/v1/contacts", server.base_url))
                .bearer_auth(&key)
                .json(&json!({
                    "name": format!("Contact {index}"),
                    "phone": format!("+1212{:07}", 2_000_000 + index),
                    "email": format!("c{index}@example.com"),
                    "tags": ["lead", if index % 2 == 0 { "even" } else { "odd" }],
                }))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            ids.push(contact["id"].as_str().context("id")?.to_string());
        }
        let body = http
            .get(format!("{}/v1/contacts/{}", server.base_url, ids[0]))
            .bearer_auth(&key)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        anyhow::Ok((key, ids, body))
    })?;
    println!(
        "{} contacts; {} connections; {} s per server after a 1 s warm-up; client and servers share the cores",
        ids.len(),
        options.connections,
        options.seconds
    );
    let requests: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| get_request(address, id, Some(&key)))
        .collect();
    let postdog = client.block_on(drive(address, requests, &options, "postdog"))?;
    println!(
        "peak RSS of the process hosting the server (and this client): {:.0} MiB",
        peak_rss_mib()
    );
    drop(server);

    // The bare baseline: the same JSON for the same path, nothing else.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let bare_address = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let bare = std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let body: &'static str = Box::leak(body.into_boxed_str());
            let app = axum::Router::new().route(
                "/v1/contacts/{id}",
                axum::routing::get(move || async move {
                    ([("content-type", "application/json")], body)
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
    });
    let requests: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| get_request(bare_address, id, None))
        .collect();
    let baseline = client.block_on(drive(bare_address, requests, &options, "bare axum"))?;
    let _ = stop.send(());
    bare.join()
        .map_err(|_| anyhow::anyhow!("the bare server panicked"))??;

    println!("targets: postdog >= 10000 req/s, p99 < 10 ms, ratio <= 3");
    println!("ratio: {:.3}", baseline.per_second / postdog.per_second);
    Ok(())
}
