//! The `flow-steps` scenario.
//!
//! The real `postdog` binary runs as a child process (release build, SQLite in a
//! temporary directory, `POSTDOG_HTTP_OVERRIDES` sending `graph.facebook.com` to a
//! loopback fake Graph API inside this process that answers every send with Meta's
//! success JSON and notes the recipient and the arrival time; see `harness`). One Business tenant
//! connects a WhatsApp number (`postdog/whatsapp` with its secrets and
//! `throughput_per_second` = `--throughput`) and installs the first-party actions.
//! `--contacts` signed inbound webhooks, one per distinct sender, create the contacts and
//! open their 24-hour windows.
//!
//! Steps: a published flow with an `api` trigger and five steps — `postdog/condition`
//! (both ports lead on) → `postdog/add-tag` → `postdog/set-field` →
//! `postdog/send-message` (free-form text through the install, so it is sent at the fake)
//! → `postdog/end`. After a warm-up of a few runs, one run per contact is started with
//! `POST /v1/flows/{id}/runs` from `--connections` concurrent requests; the wall time runs
//! from the first start request to the last run's `finished_at` (read from the database
//! after the server stops). `steps/s` = completed runs × 5 ÷ that time. Each run's send is
//! then awaited at the fake (the outbox's `message.send` jobs finish after the run).
//!
//! Keyword latency: a second published flow, `keyword` trigger `hello` (exact) →
//! `postdog/send-message` → `postdog/end`. `--keyword-messages` signed webhooks with the
//! text `hello`, each from another contact (inside its window), are posted open loop at
//! `--keyword-rate` per second; each latency is from posting the webhook to the fake
//! receiving the reply to that contact.
//!
//! Baseline, in the same run: bare wasmtime calls of `hello-action` (the `plugin-call`
//! scenario's baseline) on all cores, measured before the server starts and again after
//! it stops (the mean is used). The last line is `ratio: X`, time per flow step (wall
//! time ÷ steps, the server using every core) ÷ time per bare call (wall time ÷ calls on
//! every core). Also printed: the mean time inside each node's steps and of a whole run,
//! from the database. Failed runs, missing sends or replies fail the scenario after
//! everything is printed.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::{ConnectOptions, Connection};

use crate::harness::{
    Api, PHONE_NUMBER_ID, Sends, Server, WABA_ID, connect_whatsapp, start_fake_graph, wa_id,
};
use crate::plugin_call;
use crate::server_process;

/// Options of `flow-steps`.
#[derive(clap::Args)]
pub struct Options {
    /// Contacts; each goes once through the 5-step flow in the timed phase.
    #[arg(long, default_value_t = 10_000)]
    contacts: usize,
    /// Concurrent requests starting runs (and delivering the setup webhooks).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Inbound `hello` messages for the keyword → reply latency, each from another
    /// contact (fewer than `--contacts`).
    #[arg(long, default_value_t = 500)]
    keyword_messages: usize,
    /// Their pace in messages per second (open loop).
    #[arg(long, default_value_t = 50.0)]
    keyword_rate: f64,
    /// The WhatsApp number's `throughput_per_second`, the kernel's send pacing (PostDog's
    /// default is 80 as Meta grants, the most 10,000; at 1,000 — Meta's ceiling — the
    /// 10,000 sends alone would take 10 s and cap the figure at 5,000 steps/s).
    #[arg(long, default_value_t = 10_000)]
    throughput: u32,
    /// Contacts enrolled per `POST /v1/flows/{id}/runs/batch` request; 0: one
    /// `POST /v1/flows/{id}/runs` per contact.
    #[arg(long, default_value_t = 500)]
    enroll_batch: usize,
    /// `POSTDOG_JOB_CONCURRENCY` for the server [default: the server's own, 128].
    #[arg(long)]
    job_concurrency: Option<usize>,
    /// Seconds the bare-call baseline is measured.
    #[arg(long, default_value_t = 2.0)]
    baseline_seconds: f64,
}

/// The actions the flows use.
const ACTIONS: [&str; 5] = [
    "postdog/condition",
    "postdog/add-tag",
    "postdog/set-field",
    "postdog/send-message",
    "postdog/end",
];
/// Steps each run of the timed flow takes.
const STEPS_PER_RUN: usize = 5;
/// Runs started (and finished) before timing, on the first contacts.
const WARM_UP_RUNS: usize = 50;

/// An inbound text message webhook in Meta's shape from contact `index`.
fn webhook_body(index: usize, wamid: &str, timestamp: u64, text: &str) -> anyhow::Result<Vec<u8>> {
    let from = wa_id(index)?;
    let body = json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": WABA_ID,
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550100", "phone_number_id": PHONE_NUMBER_ID},
                    "contacts": [{"profile": {"name": format!("Customer {index}")}, "wa_id": from}],
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

// ---------------------------------------------------------------------------------
// The API.

impl Api {
    /// Publishes a new flow; its id.
    async fn publish_flow(&self, name: &str, graph: Value) -> anyhow::Result<String> {
        let flow = self
            .expect(
                reqwest::Method::POST,
                "/v1/flows",
                Some(&json!({"name": name, "graph": graph})),
                201,
            )
            .await?;
        let id = flow["id"]
            .as_str()
            .context("a flow without id")?
            .to_string();
        self.expect(
            reqwest::Method::POST,
            &format!("/v1/flows/{id}/publish"),
            Some(&json!({})),
            201,
        )
        .await
        .with_context(|| format!("publishing the flow {name}"))?;
        Ok(id)
    }
}

/// Creates the tenant, connects the WhatsApp number and installs the actions; the API and
/// the WhatsApp install id.
async fn set_up(base_url: &str, throughput: u32) -> anyhow::Result<(Api, String)> {
    let (api, install_id) = connect_whatsapp(base_url, throughput).await?;
    for action in ACTIONS {
        api.expect(
            reqwest::Method::POST,
            "/v1/installs",
            Some(&json!({"plugin": action})),
            201,
        )
        .await
        .with_context(|| format!("installing {action}"))?;
    }
    Ok((api, install_id))
}

/// One inbound message from each of `count` contacts (creating them, opening their
/// windows); then every contact id, in the order of their index.
async fn create_contacts(
    api: &Api,
    install_id: &str,
    count: usize,
    connections: usize,
    timestamp: u64,
) -> anyhow::Result<Vec<String>> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..count)
        .map(|index| async move {
            let body = webhook_body(
                index,
                &format!("wamid.HBgLbenchsetup{index:010}"),
                timestamp,
                "hi",
            )?;
            api.webhook(install_id, body).await
        })
        .buffer_unordered(connections)
        .collect()
        .await;
    let failed = results.iter().filter(|result| result.is_err()).count();
    if let Some(Err(error)) = results.into_iter().find(Result::is_err) {
        bail!("{failed} of {count} setup webhooks failed; first: {error:#}");
    }
    let mut by_phone = std::collections::HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(cursor) => format!("/v1/contacts?limit=200&after={cursor}"),
            None => "/v1/contacts?limit=200".to_string(),
        };
        let page = api.expect(reqwest::Method::GET, &path, None, 200).await?;
        for contact in page["data"].as_array().context("contacts without data")? {
            let phone: String = contact["phone"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            let id = contact["id"].as_str().context("a contact without id")?;
            by_phone.insert(phone, id.to_string());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => after = Some(cursor.to_string()),
            None => break,
        }
    }
    (0..count)
        .map(|index| {
            let phone = wa_id(index)?;
            by_phone
                .get(&phone)
                .cloned()
                .with_context(|| format!("no contact with the phone +{phone}"))
        })
        .collect()
}

/// Starts one run of `flow_id` per contact from `connections` concurrent requests; the
/// runs started (201) and the first other answer.
async fn start_runs(
    api: &Api,
    flow_id: &str,
    contacts: &[String],
    connections: usize,
    batch: usize,
) -> (usize, Option<String>) {
    if batch > 0 {
        return enroll(api, flow_id, contacts, connections, batch).await;
    }
    let path = format!("/v1/flows/{flow_id}/runs");
    let results: Vec<anyhow::Result<(usize, Option<String>)>> = futures::stream::iter(contacts)
        .map(|contact_id| {
            let path = &path;
            async move {
                let body = json!({"contact_id": contact_id, "payload": {"tier": "gold"}});
                api.expect(reqwest::Method::POST, path, Some(&body), 201)
                    .await
                    .map(|_| (1, None))
            }
        })
        .buffer_unordered(connections)
        .collect()
        .await;
    tally(results)
}

/// Adds up requests' (runs started, first problem) answers: the runs started and the
/// first problem or failed request.
fn tally(
    results: impl IntoIterator<Item = anyhow::Result<(usize, Option<String>)>>,
) -> (usize, Option<String>) {
    let mut started = 0;
    let mut first_error = None;
    for result in results {
        match result {
            Ok((count, problem)) => {
                started += count;
                first_error = first_error.or(problem);
            }
            Err(error) => first_error = first_error.or(Some(format!("{error:#}"))),
        }
    }
    (started, first_error)
}

/// Starts one run per contact through `POST /v1/flows/{id}/runs/batch`, `batch` contacts
/// a request, `connections` requests at once: (runs started, the first problem).
async fn enroll(
    api: &Api,
    flow_id: &str,
    contacts: &[String],
    connections: usize,
    batch: usize,
) -> (usize, Option<String>) {
    let path = format!("/v1/flows/{flow_id}/runs/batch");
    let results: Vec<anyhow::Result<(usize, Option<String>)>> =
        futures::stream::iter(contacts.chunks(batch))
            .map(|chunk| {
                let path = &path;
                async move {
                    let body = json!({"contact_ids": chunk, "payload": {"tier": "gold"}});
                    let answer = api
                        .expect(reqwest::Method::POST, path, Some(&body), 200)
                        .await?;
                    let started = answer["started"].as_u64().unwrap_or(0);
                    let problem = answer["problems"]
                        .as_array()
                        .and_then(|problems| problems.first())
                        .map(ToString::to_string);
                    Ok((usize::try_from(started)?, problem))
                }
            })
            .buffer_unordered(connections.clamp(1, 4))
            .collect()
            .await;
    tally(results)
}

/// Waits until no run of `flow_id` is running (or `timeout` passed); whether none is.
async fn wait_runs_finished(api: &Api, flow_id: &str, timeout: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    let path = format!("/v1/flows/{flow_id}/runs?status=running&limit=1");
    loop {
        let page = api.expect(reqwest::Method::GET, &path, None, 200).await?;
        if page["data"].as_array().is_some_and(Vec::is_empty) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The timed flow: condition → add-tag → set-field → send-message → end.
fn steps_flow(install_id: &str) -> Value {
    json!({
        "triggers": [{"id": "api", "type": "api"}],
        "nodes": [
            {"id": "check", "action": "postdog/condition",
             "config": {"expression": "trigger.payload.tier == 'gold' and contact.phone starts_with '+1'"}},
            {"id": "tag", "action": "postdog/add-tag", "config": {"tag": "bench"}},
            {"id": "field", "action": "postdog/set-field", "config": {"field": "tier", "value": "{{trigger.payload.tier}}"}},
            {"id": "send", "action": "postdog/send-message",
             "config": {"text": "Hi {{contact.name}}, you are {{trigger.payload.tier}} now", "channel_install": install_id}},
            {"id": "done", "action": "postdog/end", "config": {}}
        ],
        "edges": [
            {"from": "api", "to": "check"},
            {"from": "check", "port": "yes", "to": "tag"},
            {"from": "check", "port": "no", "to": "tag"},
            {"from": "tag", "port": "next", "to": "field"},
            {"from": "field", "port": "next", "to": "send"},
            {"from": "send", "port": "next", "to": "done"}
        ]
    })
}

/// The keyword flow: `hello` → send-message (through the message's channel) → end.
fn keyword_flow() -> Value {
    json!({
        "triggers": [{"id": "kw", "type": "keyword", "keyword": "hello", "match": "exact"}],
        "nodes": [
            {"id": "reply", "action": "postdog/send-message", "config": {"text": "Hello {{contact.name}}!"}},
            {"id": "done", "action": "postdog/end", "config": {}}
        ],
        "edges": [
            {"from": "kw", "to": "reply"},
            {"from": "reply", "port": "next", "to": "done"}
        ]
    })
}

/// The keyword phase's outcome.
struct KeywordReport {
    /// Webhooks answered 200.
    posted: usize,
    /// The first failed webhook.
    first_error: Option<String>,
    /// Posting → reply at the fake, ms, sorted.
    latencies_ms: Vec<f64>,
}

/// Posts `count` `hello` webhooks from contacts 0.. at `rate` per second (each on time,
/// whatever the answers) and matches each to the reply the fake receives.
async fn keyword_phase(
    api: &Arc<Api>,
    install_id: &str,
    sends: &Sends,
    count: usize,
    rate: f64,
    timestamp: u64,
) -> anyhow::Result<KeywordReport> {
    let before = sends.count();
    let phase_start = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for index in 0..count {
        let due = phase_start + Duration::from_secs_f64(index as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let body = webhook_body(
            index,
            &format!("wamid.HBgLbenchkw{index:010}"),
            timestamp,
            "hello",
        )?;
        let (api, install_id) = (api.clone(), install_id.to_string());
        tasks.push(tokio::spawn(async move {
            let posted = Instant::now();
            api.webhook(&install_id, body).await.map(|()| posted)
        }));
    }
    let mut posted_at = Vec::with_capacity(count);
    let mut first_error = None;
    for task in tasks {
        match task.await? {
            Ok(posted) => posted_at.push(Some(posted)),
            Err(error) => {
                first_error.get_or_insert_with(|| format!("{error:#}"));
                posted_at.push(None);
            }
        }
    }
    let posted = posted_at.iter().flatten().count();
    sends
        .wait_for(before + posted, Duration::from_secs(30))
        .await;
    let mut latencies_ms = Vec::with_capacity(posted);
    sends.with(|received| {
        let received = received.get(before..).unwrap_or_default();
        for (index, posted) in posted_at.iter().enumerate() {
            let Some(posted) = posted else { continue };
            let to = wa_id(index)?;
            if let Some(sent) = received
                .iter()
                .find(|sent| sent.to == to && sent.at >= *posted)
            {
                latencies_ms.push(sent.at.duration_since(*posted).as_secs_f64() * 1e3);
            }
        }
        anyhow::Ok(())
    })?;
    latencies_ms.sort_by(f64::total_cmp);
    Ok(KeywordReport {
        posted,
        first_error,
        latencies_ms,
    })
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let rank = ((sorted.len() as f64 * fraction).ceil() as usize).saturating_sub(1);
    sorted
        .get(rank.min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

/// What the database holds about the timed runs (those started at or after `since_ms`).
struct Stored {
    runs: i64,
    completed: i64,
    failed: i64,
    last_finished_ms: Option<i64>,
    ok_steps: i64,
    first_failure: Option<String>,
    /// Mean time inside each node's steps (the action call and its effects), ms.
    node_ms: Vec<(String, f64)>,
    /// Mean time from a run's start to its end, ms.
    run_ms: f64,
}

async fn stored(dir: &Path, flow_id: &str, since_ms: i64) -> anyhow::Result<Stored> {
    let mut db = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("postdog.db"))
        .disable_statement_logging()
        .connect()
        .await?;
    let (runs, completed, failed, last_finished_ms): (i64, i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(status = 'completed'), 0), \
             COALESCE(SUM(status = 'failed'), 0), MAX(finished_at) \
             FROM flow_runs WHERE flow_id = ?1 AND started_at >= ?2",
    )
    .bind(flow_id)
    .bind(since_ms)
    .fetch_one(&mut db)
    .await?;
    let ok_steps: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM flow_steps WHERE status = 'ok' AND run_id IN \
         (SELECT id FROM flow_runs WHERE flow_id = ?1 AND started_at >= ?2)",
    )
    .bind(flow_id)
    .bind(since_ms)
    .fetch_one(&mut db)
    .await?;
    let first_failure: Option<String> = sqlx::query_scalar(
        "SELECT error FROM flow_runs WHERE flow_id = ?1 AND started_at >= ?2 \
         AND status <> 'completed' LIMIT 1",
    )
    .bind(flow_id)
    .bind(since_ms)
    .fetch_optional(&mut db)
    .await?
    .flatten();
    let node_ms: Vec<(String, f64)> = sqlx::query_as(
        "SELECT node_id, AVG(finished_at - started_at) FROM flow_steps WHERE run_id IN \
         (SELECT id FROM flow_runs WHERE flow_id = ?1 AND started_at >= ?2) \
         GROUP BY node_id ORDER BY MIN(visit)",
    )
    .bind(flow_id)
    .bind(since_ms)
    .fetch_all(&mut db)
    .await?;
    let run_ms: Option<f64> = sqlx::query_scalar(
        "SELECT AVG(finished_at - started_at) FROM flow_runs \
         WHERE flow_id = ?1 AND started_at >= ?2 AND finished_at IS NOT NULL",
    )
    .bind(flow_id)
    .bind(since_ms)
    .fetch_one(&mut db)
    .await?;
    db.close().await?;
    Ok(Stored {
        runs,
        completed,
        failed,
        last_finished_ms,
        ok_steps,
        first_failure,
        node_ms,
        run_ms: run_ms.unwrap_or(0.0),
    })
}

fn epoch_ms() -> anyhow::Result<i64> {
    Ok(i64::try_from(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis(),
    )?)
}

/// Runs the scenario.
pub fn run(options: Options) -> anyhow::Result<()> {
    if options.contacts <= WARM_UP_RUNS {
        bail!("--contacts must be more than {WARM_UP_RUNS}");
    }
    if options.keyword_messages >= options.contacts {
        bail!("--keyword-messages must be fewer than --contacts");
    }
    if options.keyword_rate.is_nan() || options.keyword_rate <= 0.0 {
        bail!("--keyword-rate must be positive");
    }
    let connections = options.connections.max(1);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    // The baseline first, with the machine to itself.
    let baseline_window = Duration::from_secs_f64(options.baseline_seconds);
    let bare_1 = plugin_call::bare_calls_per_second(1, baseline_window)?;
    let bare_n_before = plugin_call::bare_calls_per_second(threads, baseline_window)?;

    let binary = server_process::build()?;
    let data = tempfile::tempdir()?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let sends = Arc::new(Sends::default());
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();

    let fake_url = client.block_on(start_fake_graph(sends.clone()))?;
    let mut env = vec![(
        "POSTDOG_HTTP_OVERRIDES",
        format!("graph.facebook.com={fake_url}"),
    )];
    if let Some(concurrency) = options.job_concurrency {
        env.push(("POSTDOG_JOB_CONCURRENCY", concurrency.to_string()));
    }
    let server = client.block_on(Server::start(&binary, data.path(), &env))?;

    let (api, install_id) = client.block_on(set_up(&server.base_url, options.throughput))?;
    let api = Arc::new(api);
    eprintln!("creating {} contacts…", options.contacts);
    let setup_started = Instant::now();
    let contacts = client.block_on(create_contacts(
        &api,
        &install_id,
        options.contacts,
        connections,
        timestamp,
    ))?;
    let setup_seconds = setup_started.elapsed().as_secs_f64();
    println!(
        "setup: {} contacts from signed inbound webhooks in {setup_seconds:.1} s; \
         WhatsApp throughput_per_second {}; job concurrency {}",
        contacts.len(),
        options.throughput,
        options
            .job_concurrency
            .map_or_else(|| "128 (default)".to_string(), |n| n.to_string())
    );

    // The 5-step flow: a warm-up, then one run per contact.
    let flow_id = client.block_on(api.publish_flow("Bench steps", steps_flow(&install_id)))?;
    let warm_up = client.block_on(async {
        let (started, error) = start_runs(
            &api,
            &flow_id,
            &contacts[..WARM_UP_RUNS],
            8,
            options.enroll_batch,
        )
        .await;
        if let Some(error) = error {
            bail!("a warm-up run could not be started: {error}");
        }
        if !wait_runs_finished(&api, &flow_id, Duration::from_secs(60)).await? {
            bail!("the warm-up runs did not finish within 60 s");
        }
        if sends.wait_for(started, Duration::from_secs(30)).await < started {
            bail!("the warm-up runs' messages did not all reach the fake Graph API");
        }
        anyhow::Ok(started)
    })?;
    eprintln!(
        "{warm_up} warm-up runs done; starting {} runs…",
        contacts.len()
    );

    let since_ms = epoch_ms()?;
    let first_start = Instant::now();
    let (started, start_error) = client.block_on(start_runs(
        &api,
        &flow_id,
        &contacts,
        connections,
        options.enroll_batch,
    ));
    let starts_seconds = first_start.elapsed().as_secs_f64();
    let finished = client.block_on(wait_runs_finished(&api, &flow_id, Duration::from_secs(600)))?;
    let expected_sends = warm_up + started;
    let sent = client.block_on(sends.wait_for(expected_sends, Duration::from_secs(300)));
    let last_send_seconds = sends
        .with(|sent| {
            sent.iter()
                .map(|sent| sent.at.saturating_duration_since(first_start))
                .max()
        })
        .unwrap_or_default()
        .as_secs_f64();

    // Keyword → reply.
    client.block_on(api.publish_flow("Bench keyword", keyword_flow()))?;
    eprintln!(
        "keyword phase: {} messages at {}/s…",
        options.keyword_messages, options.keyword_rate
    );
    let keyword = client.block_on(async {
        // A probe from a contact outside the measured ones: the flow is live and warm.
        let before = sends.count();
        let probe = options.contacts - 1;
        let body = webhook_body(probe, "wamid.HBgLbenchkwprobe", timestamp, "hello")?;
        api.webhook(&install_id, body).await?;
        if sends.wait_for(before + 1, Duration::from_secs(10)).await <= before {
            bail!("the keyword probe got no reply within 10 s");
        }
        keyword_phase(
            &api,
            &install_id,
            &sends,
            options.keyword_messages,
            options.keyword_rate,
            timestamp,
        )
        .await
    })?;

    let rss = server.peak_rss_mb()?;
    drop(server);
    let stored = client.block_on(stored(data.path(), &flow_id, since_ms))?;
    // The all-cores baseline again, now the server is gone: the mean of both runs.
    let bare_n_after = plugin_call::bare_calls_per_second(threads, baseline_window)?;
    let bare_n = (bare_n_before + bare_n_after) / 2.0;

    let wall_ms = stored
        .last_finished_ms
        .map_or(0, |last| last - since_ms)
        .max(1);
    let steps = stored.completed * STEPS_PER_RUN as i64;
    let steps_per_second = steps as f64 / (wall_ms as f64 / 1e3);
    println!(
        "flow: condition → add-tag → set-field → send-message → end ({STEPS_PER_RUN} steps), \
         api trigger, {WARM_UP_RUNS} warm-up runs before timing"
    );
    println!(
        "runs: {started} started in {starts_seconds:.2} s ({:.0} starts/s, {}); {} completed, \
         {} failed, {} not finished{}; the last finished {:.2} s after the first start request",
        started as f64 / starts_seconds,
        if options.enroll_batch > 0 {
            format!(
                "POST …/runs/batch of {} contacts, up to 4 at once",
                options.enroll_batch
            )
        } else {
            format!("one POST …/runs per run, {connections} connections")
        },
        stored.completed,
        stored.failed,
        stored.runs - stored.completed - stored.failed,
        if finished { "" } else { " (gave up waiting)" },
        wall_ms as f64 / 1e3
    );
    println!(
        "steps: {steps} (recorded ok: {}), {:.0} µs each",
        stored.ok_steps,
        wall_ms as f64 * 1e3 / steps.max(1) as f64
    );
    println!(
        "inside the steps (action call + effects), mean: {}; a run lasts {:.0} ms on average",
        stored
            .node_ms
            .iter()
            .map(|(node, ms)| format!("{node} {ms:.1} ms"))
            .collect::<Vec<_>>()
            .join(", "),
        stored.run_ms
    );
    println!("steps/s: {steps_per_second:.0}");
    println!(
        "sends at the fake Graph API: {sent} of {expected_sends} (with {warm_up} warm-up); \
         the last {last_send_seconds:.2} s after the first start request"
    );
    println!(
        "bare wasmtime hello-action call (plugin-call baseline): {:.1} µs on 1 thread; \
         {bare_n:.0} calls/s on {threads} threads ({:.1} µs per call; {bare_n_before:.0} \
         before the server, {bare_n_after:.0} after)",
        1e6 / bare_1,
        1e6 / bare_n
    );
    println!("postdog server peak RSS (VmHWM): {rss:.1} MB");
    let latencies = &keyword.latencies_ms;
    println!(
        "note: the load client, the fake Graph API and the server share this machine's \
         {threads} cores"
    );
    println!("targets: >= 5000 steps/s on 2 cores; keyword → reply p99 < 50 ms");
    println!(
        "keyword → reply at the fake: {} messages at {}/s, {} replied: p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms",
        keyword.posted,
        options.keyword_rate,
        latencies.len(),
        percentile(latencies, 0.50),
        percentile(latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
    // Time per step ÷ time per bare call, both wall time over work done on every core.
    println!(
        "ratio: {:.1}",
        bare_n / steps_per_second.max(f64::MIN_POSITIVE)
    );

    let mut problems = Vec::new();
    if let Some(error) = start_error {
        problems.push(format!(
            "{} of {} runs could not be started; first: {error}",
            contacts.len() - started,
            contacts.len()
        ));
    }
    if stored.completed != stored.runs || i64::try_from(started).ok() != Some(stored.runs) {
        problems.push(format!(
            "{} runs stored, {} completed, {started} started; first failure: {}",
            stored.runs,
            stored.completed,
            stored.first_failure.as_deref().unwrap_or("none")
        ));
    }
    if stored.ok_steps != steps {
        problems.push(format!(
            "{} steps recorded ok, expected {steps}",
            stored.ok_steps
        ));
    }
    if sent < expected_sends {
        problems.push(format!(
            "the fake Graph API received {sent} sends, expected {expected_sends}"
        ));
    }
    if let Some(error) = &keyword.first_error {
        problems.push(format!(
            "{} keyword webhooks failed; first: {error}",
            options.keyword_messages - keyword.posted
        ));
    }
    if latencies.len() != keyword.posted {
        problems.push(format!(
            "{} of {} keyword messages got no reply at the fake within 30 s",
            keyword.posted - latencies.len(),
            keyword.posted
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}
