//! The `tenant-density` scenario: how much memory the server needs for many tenants with
//! a few plugin installs each, every install called once.
//!
//! The real `postdog` binary runs as a child process (release build, SQLite in a
//! temporary directory). The bench publishes five plugins into the server's embedded
//! directory registry, signed with the server's operator publisher key: the example `hello-action`
//! component as `postdog/hello-action`, `acme/greeter` and `acme/welcome`, and the example
//! `echo-channel` component as `postdog/echo-channel` and `acme/relay` — five artifacts
//! (five digests, since each manifest differs) from two distinct components.
//!
//! Then, with at most `--concurrency` tenants in progress at once (each tenant's requests
//! run one after the other, so at most that many requests are in flight), for each of
//! `--tenants` tenants: `POST /admin/v1/tenants` with the operator token (plans cycle
//! starter, pro, business), then for each of the first `--installs` plugins of the list
//! hello, echo, hello, echo, hello: `POST /v1/installs` (hello: grants `["kv"]`; echo:
//! grants `["http:api.echo.example", "webhook"]` and config `endpoint`), for echo also
//! `PUT /v1/installs/{id}/secrets/webhook_token`, and one call: hello `run` with a
//! contact; echo `verify-webhook` with a `GET ?challenge=…&token=…` request carrying the
//! right token (no network). Answers are counted as `ok` or typed plugin `error` per
//! plugin kind; any unexpected status is a failure, printed with its body.
//!
//! Printed: progress every 1,000 tenants (rate and the server's RSS), totals, elapsed
//! time, the server's RSS before the tenants, now (`VmRSS`) and at peak (`VmHWM`). The
//! last line is `rss_mb: X`, the server's current RSS after all calls, in MB.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::hot_swap::{component, manifest, open_registry, publish, publisher_key, send_json};
use crate::server_process::{self, OPERATOR_TOKEN, ServerProcess};

/// Options of `tenant-density`.
#[derive(clap::Args)]
pub struct Options {
    /// Tenants to create.
    #[arg(long, default_value_t = 10_000)]
    tenants: usize,
    /// Installs per tenant (1 to 5), each of a different plugin.
    #[arg(long, default_value_t = 5)]
    installs: usize,
    /// Tenants set up at the same time (= requests in flight).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// The two example components.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Hello,
    Echo,
}

/// The plugins, in the order tenants install them.
const PLUGINS: [(&str, Kind); 5] = [
    ("postdog/hello-action", Kind::Hello),
    ("postdog/echo-channel", Kind::Echo),
    ("acme/greeter", Kind::Hello),
    ("acme/relay", Kind::Echo),
    ("acme/welcome", Kind::Hello),
];

/// The secret every echo install verifies webhooks with.
const WEBHOOK_TOKEN: &str = "density-webhook-token";

/// Counters shared by the tenant tasks.
#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    installs: AtomicU64,
    hello_ok: AtomicU64,
    hello_error: AtomicU64,
    echo_ok: AtomicU64,
    echo_error: AtomicU64,
}

/// Sends a request, counting it.
async fn counted(
    totals: &Totals,
    request: reqwest::RequestBuilder,
    expected: u16,
    what: &str,
) -> anyhow::Result<Value> {
    totals.requests.fetch_add(1, Ordering::Relaxed);
    send_json(request, expected, what).await
}

/// Creates tenant `index`, installs its plugins and calls each once.
async fn tenant(
    http: &reqwest::Client,
    base_url: &str,
    index: usize,
    installs: usize,
    totals: &Totals,
) -> anyhow::Result<()> {
    let plan = ["starter", "pro", "business"][index % 3];
    let created = counted(
        totals,
        http.post(format!("{base_url}/admin/v1/tenants"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"name": format!("Density {index}"), "plan": plan})),
        201,
        "POST /admin/v1/tenants",
    )
    .await?;
    let key = created["api_key"]
        .as_str()
        .with_context(|| format!("POST /admin/v1/tenants answered no api_key: {created}"))?
        .to_string();
    for (plugin, kind) in PLUGINS.iter().take(installs) {
        let new = match kind {
            Kind::Hello => json!({"plugin": plugin, "version": "^1", "grants": ["kv"]}),
            Kind::Echo => json!({
                "plugin": plugin,
                "version": "^1",
                "grants": ["http:api.echo.example", "webhook"],
                "config": {"endpoint": "https://api.echo.example"},
            }),
        };
        let install = counted(
            totals,
            http.post(format!("{base_url}/v1/installs"))
                .bearer_auth(&key)
                .json(&new),
            201,
            &format!("POST /v1/installs ({plugin})"),
        )
        .await?;
        totals.installs.fetch_add(1, Ordering::Relaxed);
        let id = install["id"]
            .as_str()
            .with_context(|| format!("POST /v1/installs answered no id: {install}"))?
            .to_string();
        let call = match kind {
            Kind::Hello => {
                json!({"input": {"contact": {"id": format!("c{index}"), "name": "Ada"}}})
            }
            Kind::Echo => {
                counted(
                    totals,
                    http.put(format!("{base_url}/v1/installs/{id}/secrets/webhook_token"))
                        .bearer_auth(&key)
                        .json(&json!({"value": WEBHOOK_TOKEN})),
                    204,
                    &format!("PUT /v1/installs/{{id}}/secrets/webhook_token ({plugin})"),
                )
                .await?;
                json!({
                    "function": "verify-webhook",
                    "input": {
                        "method": "GET",
                        "path": "/",
                        "query": format!("challenge=c{index}&token={WEBHOOK_TOKEN}"),
                        "headers": [["user-agent", "echo"]],
                        "body": [],
                    },
                })
            }
        };
        let answer = counted(
            totals,
            http.post(format!("{base_url}/v1/installs/{id}/call"))
                .bearer_auth(&key)
                .json(&call),
            200,
            &format!("POST /v1/installs/{{id}}/call ({plugin})"),
        )
        .await?;
        let (ok, error) = match kind {
            Kind::Hello => (&totals.hello_ok, &totals.hello_error),
            Kind::Echo => (&totals.echo_ok, &totals.echo_error),
        };
        if answer.get("ok").is_some() {
            ok.fetch_add(1, Ordering::Relaxed);
        } else if answer.get("error").is_some() {
            error.fetch_add(1, Ordering::Relaxed);
        } else {
            bail!("{plugin}: the call answered neither ok nor error: {answer}");
        }
    }
    Ok(())
}

/// Runs the scenario.
pub fn run(options: Options) -> anyhow::Result<()> {
    if !(1..=PLUGINS.len()).contains(&options.installs) {
        bail!("--installs must be 1 to {}", PLUGINS.len());
    }
    if options.tenants == 0 || options.concurrency == 0 {
        bail!("--tenants and --concurrency must be at least 1");
    }
    let binary = server_process::build()?;
    let components = [
        (Kind::Hello, component("hello_action")?),
        (Kind::Echo, component("echo_channel")?),
    ];
    let data = tempfile::tempdir()?;
    let server = ServerProcess::start(&binary, data.path())?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let registry = open_registry(data.path())?;
    let publisher = publisher_key(data.path())?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .timeout(Duration::from_secs(60))
        .build()?;
    let base_url = server.base_url.clone();

    client.block_on(async {
        for (name, kind) in PLUGINS {
            let (example, bytes) = match kind {
                Kind::Hello => ("hello-action", &components[0].1),
                Kind::Echo => ("echo-channel", &components[1].1),
            };
            let published = publish(
                &registry,
                &publisher,
                &manifest(example, "1.0.0", Some(name))?,
                bytes,
            )
            .await
            .with_context(|| format!("publishing {name}"))?;
            println!(
                "published {name} 1.0.0 ({example} component, {} bytes), digest {}",
                bytes.len(),
                published.digest
            );
        }
        anyhow::Ok(())
    })?;
    let rss_start = server.rss_mb()?;
    println!(
        "{} tenants × {} installs (of {}), {} tenants in progress at once; server RSS before: {rss_start:.1} MB",
        options.tenants,
        options.installs,
        PLUGINS
            .iter()
            .take(options.installs)
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", "),
        options.concurrency
    );

    let totals = Totals::default();
    let started = Instant::now();
    let (done, failed) = client.block_on(async {
        let mut results = futures::stream::iter(0..options.tenants)
            .map(|index| {
                let (http, base_url, totals) = (&http, &base_url, &totals);
                async move { tenant(http, base_url, index, options.installs, totals).await }
            })
            .buffer_unordered(options.concurrency);
        let (mut done, mut failed) = (0_usize, 0_usize);
        let mut window = (Instant::now(), 0_u64);
        while let Some(result) = results.next().await {
            done += 1;
            if let Err(error) = result {
                failed += 1;
                if failed <= 5 {
                    println!("  tenant failed: {error:#}");
                }
                if failed >= 50 && failed * 2 > done {
                    bail!("{failed} of {done} tenants failed; stopping");
                }
            }
            if done % 1_000 == 0 || done == options.tenants {
                let requests = totals.requests.load(Ordering::Relaxed);
                let recent = window.0.elapsed().as_secs_f64();
                println!(
                    "  {done} tenants, {} installs, {requests} requests in {:.1} s ({:.0} req/s lately); server RSS {:.1} MB",
                    totals.installs.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64(),
                    (requests - window.1) as f64 / recent,
                    server.rss_mb()?
                );
                window = (Instant::now(), requests);
            }
        }
        anyhow::Ok((done, failed))
    })?;
    let elapsed = started.elapsed();
    let requests = totals.requests.load(Ordering::Relaxed);
    let installs = totals.installs.load(Ordering::Relaxed);
    let rss = server.rss_mb()?;
    let peak = server.peak_rss_mb()?;
    println!(
        "totals: {} tenants created ({failed} failed), {installs} installs, {requests} requests",
        done - failed
    );
    println!(
        "calls: hello-action {} ok, {} typed errors; echo-channel verify-webhook {} ok, {} typed errors",
        totals.hello_ok.load(Ordering::Relaxed),
        totals.hello_error.load(Ordering::Relaxed),
        totals.echo_ok.load(Ordering::Relaxed),
        totals.echo_error.load(Ordering::Relaxed),
    );
    println!(
        "elapsed: {:.1} s ({:.0} tenants/s, {:.0} req/s)",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64()
    );
    println!(
        "postdog server RSS: {rss_start:.1} MB before the tenants, {rss:.1} MB now (VmRSS), peak {peak:.1} MB (VmHWM); \
         {:.1} KB more per install",
        if installs > 0 {
            (rss - rss_start) * 1e3 / installs as f64
        } else {
            0.0
        }
    );
    println!(
        "note: compiled code is shared per artifact digest: the {} artifacts are compiled once each \
         however many installs use them (5 digests from 2 distinct components)",
        PLUGINS.len()
    );
    println!(
        "note: the load client and the server under test share this machine's {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("rss_mb: {rss:.1}");
    if failed > 0 {
        bail!("{failed} tenants failed");
    }
    Ok(())
}
