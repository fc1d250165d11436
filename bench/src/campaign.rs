//! The `campaign` scenario.
//!
//! The real `postdog` binary runs as a child process (release build, SQLite in a
//! temporary directory, `POSTDOG_HTTP_OVERRIDES` sending `graph.facebook.com` to the
//! loopback fake Graph API inside this process, `harness`). One Business tenant connects
//! a WhatsApp number (`postdog/whatsapp`, `throughput_per_second` = `--throughput`; when
//! the install refuses a value above 1000, 1000, and the output says so).
//!
//! Setup, untimed: a MARKETING template with one body variable is created, submitted (the
//! fake answers Meta's `PENDING`) and approved by a signed `message_template_status_update`
//! webhook, as Meta approves it. `--recipients` contacts (name, E.164 phone, tag `bench`)
//! are imported as one CSV through `POST /v1/contacts/imports`, opted in to WhatsApp by
//! the file's `whatsapp_consent` column.
//!
//! Timed: a campaign to the tag `bench` — the approved template, its variable from the
//! contact's `name` (with a fallback), no throttle, no A/B test — is previewed (targeted
//! and eligible counts) and started; the clock runs from the start request to the last
//! send the fake receives. The bench waits (polling `GET /v1/campaigns/{id}` every
//! 200 ms, then its stats) until the campaign is `completed` with no message left in the
//! outbox, or `--timeout-seconds`. Printed: sends at the fake, messages/s (sends ÷ time
//! from the start request to the last send), the time to the first and the last send, the
//! campaign's final statistics, the server's peak RSS (`VmHWM`) and, without `--crash`,
//! the CPU time the server used from the start request to the campaign's completion
//! (`/proc/<pid>/stat`, all threads) and per message — work done, which the machine's
//! noise moves less than the rate (unless a profiler wraps the server). Then `lost: N
//! duplicated: M` from the fake's per-recipient counts: lost = contacts the campaign had
//! to reach that received nothing, duplicated = recipients that received more than one
//! message.
//!
//! `--crash`: once about half the sends reached the fake, the server is killed with
//! SIGKILL and started again on the same data directory with the same environment; the
//! campaign must finish by itself. Meta posts a `sent` status (echoing the send's
//! `biz_opaque_callback_data`, PostDog's message id) for every message it takes, and
//! retries the ones it could not deliver; the bench posts no statuses during the run, so
//! after the restart it plays those retries for the sends the fake answered in the last
//! `--replay-seconds` before the kill (100 statuses per signed webhook) — the sends the
//! kill may have interrupted between the provider's answer and its recording. Without
//! them the outbox, after `POSTDOG_SEND_RECONCILE_SECONDS` (`--reconcile-seconds`,
//! server default 120), sends such a message again. Messages/s then counts the restart.
//! The loopback fake answers in microseconds, so a kill rarely finds such a send;
//! `--graph-latency-ms` makes the fake answer later (as Meta does, some 100 ms), so the
//! kill finds every send in flight taken by the provider and not yet recorded.
//!
//! Baseline, in the same run, after the server stopped (so they do not compete): a bare
//! `reqwest` client posts `--baseline-requests` sends — the same path, the body the plugin
//! sent first in the PostDog phase with another `to` and callback id, `Authorization:
//! Bearer` — to a fresh instance of the same fake from `--baseline-concurrency` requests
//! in flight; messages/s over the same span (first request → last arrival). The last line
//! is `ratio: X`, PostDog messages/s ÷ baseline messages/s. Lost or duplicated messages,
//! failures and an unfinished campaign fail the scenario after everything is printed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::harness::{
    ACCESS_TOKEN, Api, PHONE_NUMBER_ID, Sends, Server, WABA_ID, install_whatsapp,
    set_whatsapp_secrets, start_fake_graph, tenant_api, wa_id,
};
use crate::server_process;

/// Options of `campaign`.
#[derive(clap::Args)]
pub struct Options {
    /// Recipients: contacts imported with the tag `bench`, all opted in to WhatsApp.
    #[arg(long, default_value_t = 100_000)]
    recipients: usize,
    /// Kill the server with SIGKILL when about half the sends arrived, restart it, and
    /// count lost and duplicated messages.
    #[arg(long)]
    crash: bool,
    /// The WhatsApp number's `throughput_per_second` (1000 if the install refuses more).
    #[arg(long, default_value_t = 10_000)]
    throughput: u32,
    /// `POSTDOG_JOB_CONCURRENCY` for the server [default: the server's own, 128].
    #[arg(long)]
    job_concurrency: Option<usize>,
    /// `POSTDOG_SEND_RECONCILE_SECONDS` for the server [default: the server's own, 120].
    #[arg(long)]
    reconcile_seconds: Option<u64>,
    /// With `--crash`: `sent` statuses are replayed for the sends of this many seconds
    /// before the kill.
    #[arg(long, default_value_t = 5.0)]
    replay_seconds: f64,
    /// Milliseconds the fake Graph API takes to answer a send after noting it (the
    /// PostDog phase only; with `--crash`, a kill then finds sends the provider took but
    /// PostDog has not recorded).
    #[arg(long, default_value_t = 0)]
    graph_latency_ms: u64,
    /// Requests in flight of the bare reqwest baseline.
    #[arg(long, default_value_t = 64)]
    baseline_concurrency: usize,
    /// Requests the baseline posts [default: --recipients].
    #[arg(long)]
    baseline_requests: Option<usize>,
    /// How long to wait for the campaign to complete.
    #[arg(long, default_value_t = 900)]
    timeout_seconds: u64,
    /// Keep the server's data (SQLite) in this new directory for inspection [default: a
    /// temporary directory, removed at the end].
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

/// The audience's tag.
const TAG: &str = "bench";
/// The template's name and language.
const TEMPLATE: &str = "bench_spring_sale";
const LANGUAGE: &str = "en_US";
/// The most `throughput_per_second` the WhatsApp install accepted before the limit was
/// raised.
const OLD_THROUGHPUT_LIMIT: u32 = 1_000;
/// Statuses per replayed webhook.
const STATUSES_PER_WEBHOOK: usize = 100;

fn elapsed_since(start: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(start).as_secs_f64()
}

/// Connects the WhatsApp number with `throughput`, or with the old limit if the install
/// refuses more; the API, the install id and the throughput used.
async fn set_up(base_url: &str, throughput: u32) -> anyhow::Result<(Api, String, u32)> {
    let api = tenant_api(base_url).await?;
    let (mut status, mut install) = install_whatsapp(&api, throughput).await?;
    let mut used = throughput;
    if status == 422 && throughput > OLD_THROUGHPUT_LIMIT {
        println!(
            "note: the install refused throughput_per_second {throughput} ({}); using \
             {OLD_THROUGHPUT_LIMIT}",
            install["detail"].as_str().unwrap_or("422")
        );
        used = OLD_THROUGHPUT_LIMIT;
        (status, install) = install_whatsapp(&api, used).await?;
    }
    if status != 201 {
        bail!("installing postdog/whatsapp: {status} {install}");
    }
    let install_id = install["id"]
        .as_str()
        .context("install without id")?
        .to_string();
    set_whatsapp_secrets(&api, &install_id).await?;
    Ok((api, install_id, used))
}

/// Creates and submits the template and approves it with a signed
/// `message_template_status_update` webhook, as Meta does.
async fn approved_template(api: &Api, install_id: &str) -> anyhow::Result<()> {
    let created = api
        .expect(
            reqwest::Method::POST,
            "/v1/templates",
            Some(&json!({"install_id": install_id, "template": {
                "name": TEMPLATE, "language": LANGUAGE, "category": "MARKETING",
                "body": {"text": "Hello {{1}}, our spring sale starts today: 20% off everything.",
                         "examples": ["Ada"]},
                "footer": "Reply STOP to opt out"}})),
            201,
        )
        .await?;
    let id = created["template"]["id"]
        .as_str()
        .context("a template without id")?
        .to_string();
    api.expect(
        reqwest::Method::POST,
        &format!("/v1/templates/{id}/submit"),
        Some(&json!({})),
        200,
    )
    .await?;
    let envelope = json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": WABA_ID,
            "time": SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
            "changes": [{
                "field": "message_template_status_update",
                "value": {
                    "event": "APPROVED",
                    "message_template_id": 900_000_000_001_u64,
                    "message_template_name": TEMPLATE,
                    "message_template_language": LANGUAGE,
                    "reason": "NONE",
                },
            }],
        }],
    });
    api.webhook(install_id, serde_json::to_vec(&envelope)?)
        .await
        .context("the template approval webhook")?;
    let template = api
        .expect(
            reqwest::Method::GET,
            &format!("/v1/templates/{id}"),
            None,
            200,
        )
        .await?;
    if template["template"]["status"] != "APPROVED" {
        bail!("the template was not approved by the webhook: {template}");
    }
    Ok(())
}

/// Imports `count` contacts (`Customer <i>`, phone `+<wa_id(i)>`, tag `bench`) as one CSV
/// and waits for the job; its final state.
async fn import_contacts(api: &Api, count: usize) -> anyhow::Result<Value> {
    let mut csv = String::with_capacity(count * 40 + 16);
    csv.push_str("name,phone,tags,whatsapp_consent\n");
    for index in 0..count {
        writeln!(csv, "Customer {index},+{},{TAG},opted_in", wa_id(index)?)?;
    }
    let response = api
        .http
        .post(format!(
            "{}/v1/contacts/imports?duplicates=skip",
            api.base_url
        ))
        .bearer_auth(&api.key)
        .header(reqwest::header::CONTENT_TYPE, "text/csv")
        .body(csv)
        .send()
        .await?;
    let status = response.status();
    if status != reqwest::StatusCode::ACCEPTED {
        bail!(
            "the import was refused: {status} {}",
            response.text().await?
        );
    }
    let job: Value = response.json().await?;
    let id = job["id"].as_str().context("the job has no id")?.to_string();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let job = api
            .expect(
                reqwest::Method::GET,
                &format!("/v1/contacts/imports/{id}"),
                None,
                200,
            )
            .await?;
        match job["status"].as_str() {
            Some("completed") => return Ok(job),
            Some("failed") => bail!("the import failed: {job}"),
            _ if Instant::now() > deadline => bail!("the import did not finish in 600 s: {job}"),
            _ => {}
        }
    }
}

/// The campaign's definition.
fn campaign_input(install_id: &str) -> Value {
    json!({
        "name": "Bench spring sale",
        "install_id": install_id,
        "audience": {"tags": [TAG]},
        "template": {
            "name": TEMPLATE,
            "language": LANGUAGE,
            "variables": {"body": [{"field": "name", "fallback": "there"}]},
        },
    })
}

/// Posts, after a restart, the `sent` statuses Meta would redeliver for the sends the fake
/// answered from `since` on: 100 statuses per signed webhook. How many statuses.
async fn replay_statuses(
    api: &Api,
    install_id: &str,
    sends: &Sends,
    since: Instant,
) -> anyhow::Result<usize> {
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let statuses: Vec<Value> = sends.with(|sent| {
        sent.iter()
            .enumerate()
            .filter(|(_, sent)| sent.at >= since)
            .map(|(index, sent)| {
                let mut status = json!({
                    "id": Sends::wamid(index + 1),
                    "status": "sent",
                    "timestamp": timestamp.to_string(),
                    "recipient_id": sent.to,
                });
                if let Some(callback) = &sent.callback {
                    status["biz_opaque_callback_data"] = json!(callback);
                }
                status
            })
            .collect()
    });
    for chunk in statuses.chunks(STATUSES_PER_WEBHOOK) {
        let body = json!({
            "object": "whatsapp_business_account",
            "entry": [{
                "id": WABA_ID,
                "changes": [{
                    "field": "messages",
                    "value": {
                        "messaging_product": "whatsapp",
                        "metadata": {"display_phone_number": "15550100", "phone_number_id": PHONE_NUMBER_ID},
                        "statuses": chunk,
                    },
                }],
            }],
        });
        api.webhook(install_id, serde_json::to_vec(&body)?)
            .await
            .context("a replayed status webhook")?;
    }
    Ok(statuses.len())
}

/// How the wait for the campaign ended.
struct Outcome {
    /// `GET /v1/campaigns/{id}`'s `status` at the end.
    status: String,
    /// `GET /v1/campaigns/{id}/stats` at the end.
    stats: Value,
    /// Whether it completed with nothing left in the outbox.
    finished: bool,
}

/// Waits until the campaign is completed (or stopped) with no message left in the outbox,
/// or nothing changed (sends at the fake, messages left) for `idle_limit`, or `timeout`;
/// prints progress to stderr every 5 s. The campaign's row is read every 200 ms; its
/// statistics (a pass over every recipient) at most once a second, and only once every
/// send arrived or the campaign stopped running and no send arrived for 2 s, so the
/// polling does not slow the server down while it sends.
async fn wait_campaign(
    api: &Api,
    campaign_id: &str,
    sends: &Sends,
    expected: usize,
    timeout: Duration,
    idle_limit: Duration,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let deadline = started + timeout;
    let (mut last_progress, mut last_stats) = (started, None::<Instant>);
    let (mut last_count, mut last_left, mut last_change) = (sends.count(), -1, Instant::now());
    loop {
        let campaign = api
            .expect(
                reqwest::Method::GET,
                &format!("/v1/campaigns/{campaign_id}"),
                None,
                200,
            )
            .await?;
        let status = campaign["status"].as_str().unwrap_or_default().to_string();
        let count = sends.count();
        if count != last_count {
            (last_count, last_change) = (count, Instant::now());
        }
        let timed_out = Instant::now() > deadline;
        let want_stats = count >= expected
            || timed_out
            || (status != "running" && last_change.elapsed() > Duration::from_secs(2));
        if want_stats && last_stats.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            last_stats = Some(Instant::now());
            let stats = api
                .expect(
                    reqwest::Method::GET,
                    &format!("/v1/campaigns/{campaign_id}/stats"),
                    None,
                    200,
                )
                .await?;
            let left =
                stats["pending"].as_i64().unwrap_or(0) + stats["queued"].as_i64().unwrap_or(0);
            if left != last_left {
                (last_left, last_change) = (left, Instant::now());
            }
            let stopped = matches!(status.as_str(), "completed" | "cancelled" | "paused");
            // Drained; or nothing moved for longer than an interrupted send waits for
            // its statuses before it is sent again; or out of time.
            if (stopped && (left == 0 || last_change.elapsed() > idle_limit)) || timed_out {
                let finished = status == "completed" && left == 0;
                return Ok(Outcome {
                    status,
                    stats,
                    finished,
                });
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            eprintln!(
                "  {:.0} s: {count} of {expected} sends at the fake, campaign {status}",
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the fake saw of the campaign.
struct Tally {
    sends: usize,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Expected recipients that received nothing.
    lost: usize,
    /// Recipients that received more than one message.
    duplicated: usize,
    /// Messages beyond one per recipient.
    extra: usize,
    /// Recipients that are none of the contacts.
    strangers: usize,
    /// An example of each problem.
    examples: Vec<String>,
}

fn tally(sends: &Sends, recipients: usize) -> anyhow::Result<Tally> {
    let expected: Vec<String> = (0..recipients).map(wa_id).collect::<anyhow::Result<_>>()?;
    sends.with(|sent| {
        let mut per_recipient: HashMap<&str, u32> = HashMap::with_capacity(sent.len());
        for one in sent {
            *per_recipient.entry(one.to.as_str()).or_default() += 1;
        }
        let mut examples = Vec::new();
        let lost: Vec<&String> = expected
            .iter()
            .filter(|phone| !per_recipient.contains_key(phone.as_str()))
            .collect();
        if let Some(phone) = lost.first() {
            examples.push(format!("lost e.g. {phone}"));
        }
        let doubled: Vec<(&&str, &u32)> = per_recipient.iter().filter(|(_, n)| **n > 1).collect();
        if let Some((phone, n)) = doubled.first() {
            examples.push(format!("duplicated e.g. {phone} ({n} messages)"));
        }
        let known: std::collections::HashSet<&str> = expected.iter().map(String::as_str).collect();
        let strangers = per_recipient
            .keys()
            .filter(|phone| !known.contains(**phone))
            .count();
        Ok(Tally {
            sends: sent.len(),
            first: sent.iter().map(|one| one.at).min(),
            last: sent.iter().map(|one| one.at).max(),
            lost: lost.len(),
            duplicated: doubled.len(),
            extra: doubled.iter().map(|(_, n)| (**n - 1) as usize).sum(),
            strangers,
            examples,
        })
    })
}

/// The baseline: `requests` sends shaped like `template` posted with a bare reqwest
/// client to a fresh fake, `concurrency` in flight; (sends answered 200, arrivals at the
/// fake, seconds from the first request to the last arrival).
async fn baseline(
    template: &Value,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<(usize, usize, f64)> {
    let sends = Arc::new(Sends::default());
    let fake_url = start_fake_graph(sends.clone()).await?;
    let url = format!("{fake_url}/v21.0/{PHONE_NUMBER_ID}/messages");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let start = Instant::now();
    let answered: usize = futures::stream::iter(0..requests)
        .map(|index| {
            let (http, url) = (&http, &url);
            async move {
                let mut body = template.clone();
                body["to"] = json!(wa_id(index % 990_000).unwrap_or_default());
                body["biz_opaque_callback_data"] = json!(uuid::Uuid::now_v7().to_string());
                let response = http
                    .post(url.as_str())
                    .bearer_auth(ACCESS_TOKEN)
                    .json(&body)
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status() == 200 => {
                        usize::from(response.bytes().await.is_ok())
                    }
                    _ => 0,
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .fold(0, |sum, ok| async move { sum + ok })
        .await;
    let (arrived, last) = sends.with(|sent| (sent.len(), sent.iter().map(|one| one.at).max()));
    let seconds = last.map_or(0.0, |last| elapsed_since(start, last));
    Ok((answered, arrived, seconds))
}

/// A template send body as the WhatsApp plugin writes it, for when the PostDog phase
/// captured none.
fn fallback_body() -> Value {
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "14152000000",
        "type": "template",
        "template": {
            "name": TEMPLATE,
            "language": {"code": LANGUAGE},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "Customer 0"}]}],
        },
        "biz_opaque_callback_data": "00000000-0000-0000-0000-000000000000",
    })
}

fn count(value: &Value) -> i64 {
    value
        .as_i64()
        .or_else(|| value["total"].as_i64())
        .unwrap_or(-1)
}

/// Runs the scenario.
pub fn run(options: Options) -> anyhow::Result<()> {
    if !(2..=990_000).contains(&options.recipients) {
        bail!("--recipients must be 2 to 990000");
    }
    if options.replay_seconds.is_nan() || options.replay_seconds < 0.0 {
        bail!("--replay-seconds must be 0 or more");
    }
    let binary = server_process::build()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure(&options, &binary))
}

async fn measure(options: &Options, binary: &Path) -> anyhow::Result<()> {
    let temporary = tempfile::tempdir()?;
    let data = match &options.data_dir {
        Some(dir) => {
            std::fs::create_dir(dir)
                .with_context(|| format!("creating {} (it must not exist)", dir.display()))?;
            dir.clone()
        }
        None => temporary.path().to_path_buf(),
    };
    let sends = Arc::new(Sends::with_latency(Duration::from_millis(
        options.graph_latency_ms,
    )));
    let fake_url = start_fake_graph(sends.clone()).await?;
    let mut env = vec![(
        "POSTDOG_HTTP_OVERRIDES",
        format!("graph.facebook.com={fake_url}"),
    )];
    if let Some(concurrency) = options.job_concurrency {
        env.push(("POSTDOG_JOB_CONCURRENCY", concurrency.to_string()));
    }
    if let Some(seconds) = options.reconcile_seconds {
        env.push(("POSTDOG_SEND_RECONCILE_SECONDS", seconds.to_string()));
    }
    let mut server = Server::start(binary, &data, &env).await?;

    // Setup.
    let setup_started = Instant::now();
    let (mut api, install_id, throughput) = set_up(&server.base_url, options.throughput).await?;
    approved_template(&api, &install_id).await?;
    eprintln!("importing {} contacts…", options.recipients);
    let import_started = Instant::now();
    let job = import_contacts(&api, options.recipients).await?;
    let import_seconds = import_started.elapsed().as_secs_f64();
    if job["created"].as_u64() != Some(options.recipients as u64) {
        bail!(
            "the import created {} contacts, expected {}: {job}",
            job["created"],
            options.recipients
        );
    }
    println!(
        "setup: {} contacts imported (opted in to WhatsApp by the file) in \
         {import_seconds:.1} s; template approved by webhook; {:.1} s in all; \
         throughput_per_second {throughput}; job concurrency {}; the fake answers sends \
         after {} ms",
        options.recipients,
        setup_started.elapsed().as_secs_f64(),
        options
            .job_concurrency
            .map_or_else(|| "128 (default)".to_string(), |n| n.to_string()),
        options.graph_latency_ms
    );

    // The campaign.
    let campaign = api
        .expect(
            reqwest::Method::POST,
            "/v1/campaigns",
            Some(&campaign_input(&install_id)),
            201,
        )
        .await?;
    let campaign_id = campaign["id"]
        .as_str()
        .context("a campaign without id")?
        .to_string();
    let preview_started = Instant::now();
    let preview = api
        .expect(
            reqwest::Method::POST,
            &format!("/v1/campaigns/{campaign_id}/preview"),
            Some(&json!({})),
            200,
        )
        .await?;
    let eligible = preview["eligible"]
        .as_u64()
        .map_or(options.recipients, |n| usize::try_from(n).unwrap_or(0));
    if eligible != options.recipients {
        bail!(
            "{eligible} of {} imported contacts are eligible (tagged {TAG} and opted in): {preview}",
            options.recipients
        );
    }
    println!(
        "preview ({:.2} s): targeted {}, eligible {eligible}, excluded {}",
        preview_started.elapsed().as_secs_f64(),
        preview["targeted"],
        preview["excluded"]
    );

    eprintln!("starting the campaign…");
    let cpu_before = server.cpu_seconds()?;
    let start = Instant::now();
    api.expect(
        reqwest::Method::POST,
        &format!("/v1/campaigns/{campaign_id}/start"),
        Some(&json!({})),
        200,
    )
    .await?;
    let start_answer_seconds = start.elapsed().as_secs_f64();
    let timeout = Duration::from_secs(options.timeout_seconds);

    let mut crash_report = None;
    let mut peak_rss = 0.0_f64;
    if options.crash {
        let half = eligible.div_ceil(2);
        if sends.wait_for(half, timeout).await < half {
            bail!(
                "only {} of {eligible} sends arrived within {} s; no crash",
                sends.count(),
                options.timeout_seconds
            );
        }
        let rss_before = server.peak_rss_mb()?;
        server.kill_hard()?;
        let killed = Instant::now();
        let at_kill = sends.count();
        eprintln!("killed the server (SIGKILL) at {at_kill} sends; restarting…");
        server = Server::start(binary, &data, &env).await?;
        let restart_seconds = killed.elapsed().as_secs_f64();
        api.base_url.clone_from(&server.base_url);
        let since = killed
            .checked_sub(Duration::from_secs_f64(options.replay_seconds))
            .unwrap_or(start);
        let replayed = replay_statuses(&api, &install_id, &sends, since).await?;
        peak_rss = rss_before;
        crash_report = Some(format!(
            "crash: SIGKILL {:.2} s after the start request with {at_kill} sends at the fake \
             (server peak RSS until then {rss_before:.1} MB); healthy again after \
             {restart_seconds:.2} s; replayed {replayed} `sent` statuses (the sends of the \
             last {} s before the kill)",
            elapsed_since(start, killed),
            options.replay_seconds
        ));
    }
    // Longer than an interrupted send waits for its statuses before it is sent again.
    let idle_limit = Duration::from_secs(options.reconcile_seconds.unwrap_or(120) + 60);
    let outcome = wait_campaign(&api, &campaign_id, &sends, eligible, timeout, idle_limit).await?;
    if options.crash {
        // Let a late duplicate arrive before counting.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    peak_rss = peak_rss.max(server.peak_rss_mb()?);
    // Without a crash: the CPU the server spent on the campaign, start to finish.
    let campaign_cpu = (!options.crash)
        .then(|| server.cpu_seconds())
        .transpose()?
        .map(|after| after - cpu_before);
    drop(server);
    let tally = tally(&sends, options.recipients)?;
    let to_last = tally.last.map_or(0.0, |last| elapsed_since(start, last));
    let to_first = tally.first.map_or(0.0, |first| elapsed_since(start, first));
    let postdog_rate = tally.sends as f64 / to_last.max(f64::MIN_POSITIVE);

    // The baseline, with the server gone.
    let requests = options.baseline_requests.unwrap_or(options.recipients);
    eprintln!(
        "baseline: {requests} bare reqwest sends, {} in flight…",
        options.baseline_concurrency
    );
    let template = sends.first_body().unwrap_or_else(fallback_body);
    drop(sends);
    let (answered, arrived, baseline_seconds) =
        baseline(&template, requests, options.baseline_concurrency).await?;
    let baseline_rate = arrived as f64 / baseline_seconds.max(f64::MIN_POSITIVE);

    let stats = &outcome.stats;
    if let Some(report) = &crash_report {
        println!("{report}");
    }
    println!(
        "campaign: {}{}; start request answered in {start_answer_seconds:.2} s",
        outcome.status,
        if outcome.finished {
            ""
        } else {
            " (not finished: gave up waiting or messages left in the outbox)"
        }
    );
    println!(
        "stats: targeted {}, sent {}, accepted {}, pending {}, queued {}, failed {}, \
         skipped {}, cancelled {}{}",
        count(&stats["targeted"]),
        count(&stats["sent"]),
        count(&stats["accepted"]),
        count(&stats["pending"]),
        count(&stats["queued"]),
        count(&stats["failed"]),
        count(&stats["skipped"]),
        count(&stats["cancelled"]),
        if count(&stats["failed"]) > 0 || count(&stats["skipped"]) > 0 {
            format!(
                " (failed by error {}, skipped by reason {})",
                stats["failed"]["by_error"], stats["skipped"]["by_reason"]
            )
        } else {
            String::new()
        }
    );
    println!(
        "sends at the fake Graph API: {} for {eligible} eligible recipients; the first \
         {to_first:.2} s and the last {to_last:.2} s after the start request ({:.0} \
         messages/s between them)",
        tally.sends,
        tally.sends.saturating_sub(1) as f64 / (to_last - to_first).max(f64::MIN_POSITIVE)
    );
    println!("messages/s: {postdog_rate:.0}");
    if let Some(cpu) = campaign_cpu {
        println!(
            "postdog server CPU for the campaign: {cpu:.1} s ({:.0} µs per message)",
            cpu * 1e6 / (tally.sends.max(1) as f64)
        );
    }
    println!("postdog server peak RSS (VmHWM): {peak_rss:.1} MB");
    println!(
        "baseline (bare reqwest, {} in flight, same fake and body shape): {answered} of \
         {requests} answered, {arrived} arrived in {baseline_seconds:.2} s, \
         {baseline_rate:.0} messages/s",
        options.baseline_concurrency
    );
    println!("note: the server, the fake Graph API and the client share this machine's cores");
    println!("targets: >= 5000 messages/s on 2 cores, ratio >= 0.5, peak RSS < 300 MB");
    println!("lost: {} duplicated: {}", tally.lost, tally.duplicated);
    println!(
        "ratio: {:.2}",
        postdog_rate / baseline_rate.max(f64::MIN_POSITIVE)
    );

    let mut problems = Vec::new();
    if !outcome.finished {
        problems.push(format!(
            "the campaign did not finish: status {}, stats {stats}",
            outcome.status
        ));
    }
    if tally.lost > 0 || tally.duplicated > 0 || tally.strangers > 0 {
        problems.push(format!(
            "{} recipients got nothing, {} got more than one message ({} extra), {} sends \
             went to unknown numbers; {}",
            tally.lost,
            tally.duplicated,
            tally.extra,
            tally.strangers,
            tally.examples.join(", ")
        ));
    }
    if count(&stats["failed"]) != 0 {
        problems.push(format!("failed messages: {}", stats["failed"]));
    }
    if answered != requests || arrived != requests {
        problems.push(format!(
            "the baseline got {answered} answers and {arrived} arrivals for {requests} requests"
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}
