//! A minimal HTTP/1.1 keep-alive load generator over raw tokio sockets: one task per
//! connection, each writing a prepared request, reading the head up to `\r\n\r\n` and
//! exactly `Content-Length` body bytes, and recording the latency. Requests started
//! during the warm-up are not counted. Kept small so most CPU goes to the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a load run measured.
pub struct Report {
    /// Requests completed in the timed window.
    pub requests: u64,
    /// Of those, responses other than 200.
    pub errors: u64,
    /// The first non-200 response: status and body.
    pub first_error: Option<String>,
    /// Requests per second over the timed window.
    pub per_second: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// One connection's tally.
struct Tally {
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

/// Reads one response into `buffer`; its status and the body's range in `buffer`.
pub(crate) async fn read_response(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> anyhow::Result<(u16, std::ops::Range<usize>)> {
    buffer.clear();
    let mut scanned = 0;
    let header_end = loop {
        if let Some(at) = buffer[scanned..]
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
        {
            break scanned + at + 4;
        }
        scanned = buffer.len().saturating_sub(3);
        if stream.read_buf(buffer).await? == 0 {
            bail!("the server closed the connection");
        }
    };
    let head = std::str::from_utf8(&buffer[..header_end]).context("response head")?;
    let status: u16 = head
        .get(9..12)
        .context("short status line")?
        .parse()
        .context("status code")?;
    let length: usize = head
        .split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .context("the response has no Content-Length")?;
    let end = header_end + length;
    while buffer.len() < end {
        if stream.read_buf(buffer).await? == 0 {
            bail!("the server closed the connection mid-body");
        }
    }
    Ok((status, header_end..end))
}

async fn connection(
    address: SocketAddr,
    requests: Arc<Vec<Vec<u8>>>,
    first: usize,
    warm_until: Instant,
    stop_at: Instant,
) -> anyhow::Result<Tally> {
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let mut tally = Tally {
        errors: 0,
        first_error: None,
        latencies_us: Vec::with_capacity(64 * 1024),
    };
    let mut buffer = Vec::with_capacity(16 * 1024);
    // A stride coprime with most list lengths spreads the connections over the list.
    let mut index = first;
    loop {
        let started = Instant::now();
        if started >= stop_at {
            return Ok(tally);
        }
        stream.write_all(&requests[index % requests.len()]).await?;
        index = index.wrapping_add(7_919);
        let (status, body) = read_response(&mut stream, &mut buffer).await?;
        if started >= warm_until {
            let micros = started.elapsed().as_micros();
            tally
                .latencies_us
                .push(u32::try_from(micros).unwrap_or(u32::MAX));
            if status != 200 {
                tally.errors += 1;
                if tally.first_error.is_none() {
                    tally.first_error = Some(format!(
                        "{status} {}",
                        String::from_utf8_lossy(&buffer[body])
                    ));
                }
            }
        }
    }
}

/// Drives `address` with `connections` keep-alive connections cycling through the
/// prepared `requests` for a 1 s warm-up and then `window`.
pub async fn run(
    address: SocketAddr,
    requests: Vec<Vec<u8>>,
    connections: usize,
    window: Duration,
) -> anyhow::Result<Report> {
    if requests.is_empty() {
        bail!("no requests to send");
    }
    let requests = Arc::new(requests);
    let warm_until = Instant::now() + Duration::from_secs(1);
    let stop_at = warm_until + window;
    let tasks: Vec<_> = (0..connections)
        .map(|first| {
            tokio::spawn(connection(
                address,
                requests.clone(),
                first,
                warm_until,
                stop_at,
            ))
        })
        .collect();
    let (mut errors, mut first_error, mut latencies) = (0, None, Vec::new());
    for task in tasks {
        let tally = task.await??;
        errors += tally.errors;
        first_error = first_error.or(tally.first_error);
        latencies.extend(tally.latencies_us);
    }
    latencies.sort_unstable();
    let percentile = |fraction: f64| {
        let rank = ((latencies.len() as f64 * fraction).ceil() as usize).saturating_sub(1);
        latencies
            .get(rank.min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |micros| f64::from(*micros) / 1e3)
    };
    Ok(Report {
        requests: latencies.len() as u64,
        errors,
        first_error,
        per_second: latencies.len() as f64 / window.as_secs_f64(),
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
    })
}

/// `GET {path}` for `address`, with a Bearer key if given.
pub fn get_request(address: SocketAddr, path: &str, key: Option<&str>) -> Vec<u8> {
    let auth = key
        .map(|key| format!("Authorization: Bearer {key}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{auth}\r\n").into_bytes()
}
