//! Flow runs survive `kill -9`, on every backend. One tenant with the WhatsApp connector
//! (against the loopback Graph API) and 2,000 contacts, each with an open 24-hour window
//! (they wrote in first). A published API-triggered flow: hold (a wait long enough for
//! every run to start) → send "Hello <name>" → wait 3 s → add a tag → send
//! "Bye <name>" → end. All 2,000 runs are started through the API; once Meta has seen a
//! third of the first messages the server is killed with SIGKILL — runs are then waiting
//! (in either wait), mid-step (jobs claimed by the dead worker) or between steps — and
//! started again on the same database. Every run must complete and every effect must be
//! applied exactly once: each contact gets exactly its two messages at the fake (counted
//! by recipient and text; no message missing, none twice), the tag once, and each run
//! takes each step once. A send the kill interrupted after Meta accepted it is not sent
//! again: Meta's statuses echo PostDog's message id, which completes the send, and the
//! outbox waits for them (`POSTDOG_SEND_RECONCILE_SECONDS`) before retrying an
//! interrupted attempt. The dead worker's leases expire after 60 s (the queue's fixed
//! lease), so each backend takes a little over a minute longer than it would without
//! the crash.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use postdog_host::ids::TenantId;
use postdog_tests::fake_graph::{FakeGraph, FakeGraphConfig};
use postdog_tests::{Api, OPERATOR_TOKEN, PostdogServer};
use serde_json::{Value, json};

/// Runs (and contacts) per backend.
const RUNS: usize = 2_000;
/// Requests the test has in flight at once.
const PARALLEL: usize = 32;
const TAG: &str = "crash-survivor";
const PATH: [&str; 6] = ["hold", "greet", "pause", "tag", "bye", "done"];
const ACTIONS: [&str; 4] = [
    "postdog/send-message",
    "postdog/wait",
    "postdog/add-tag",
    "postdog/end",
];

fn phone(n: usize) -> String {
    format!("+1415556{n:04}")
}

fn name(n: usize) -> String {
    format!("Crash{n:04}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flow_runs_survive_sigkill_on_every_backend() {
    for database_url in postdog_tests::database_urls().await {
        scenario(database_url).await;
    }
}

async fn scenario(database_url: Option<String>) {
    let label = if database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let began = Instant::now();
    // Meta sends statuses for every accepted message, echoing PostDog's message id
    // (`biz_opaque_callback_data`), and retries deliveries the server missed while down.
    let fake = FakeGraph::start(FakeGraphConfig {
        auto_statuses: true,
        ..FakeGraphConfig::default()
    })
    .await;
    let config = fake.config().clone();
    let env = [
        (
            "POSTDOG_HTTP_OVERRIDES",
            format!("graph.facebook.com={}", fake.base_url()),
        ),
        // The statuses of sends interrupted by the kill reach the restarted server within
        // seconds; the leases of the dead worker's jobs expire after 60 s anyway.
        ("POSTDOG_SEND_RECONCILE_SECONDS", "30".to_string()),
    ];
    let mut server = PostdogServer::start_with(database_url, &env).await;
    let (api, tenant_id) = Api::tenant(&server, "business").await;
    let response = reqwest::Client::new()
        .patch(format!("{}/admin/v1/tenants/{tenant_id}", server.base_url))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"requests_per_minute": 1_000_000}))
        .send()
        .await
        .expect("request");
    assert!(response.status().is_success(), "{label}: raise the rate");

    let (status, install) = api
        .post(
            "/v1/installs",
            json!({"plugin": "postdog/whatsapp", "grants": ["http:graph.facebook.com", "webhook"],
                   "config": {"phone_number_id": config.phone_number_id, "waba_id": config.waba_id,
                              "throughput_per_second": 1000}}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {install}");
    let install_id = install["id"].as_str().expect("id").to_string();
    for (secret, value) in [
        ("access_token", config.access_token.as_str()),
        ("app_secret", config.app_secret.as_str()),
        ("verify_token", "v"),
    ] {
        let (status, body) = api
            .put(
                &format!("/v1/installs/{install_id}/secrets/{secret}"),
                json!({ "value": value }),
            )
            .await;
        assert!(status.is_success(), "{label}: {body}");
    }
    fake.set_webhook_target(format!("{}/hooks/{install_id}", server.base_url));
    for action in ACTIONS {
        let (status, body) = api.post("/v1/installs", json!({"plugin": action})).await;
        assert_eq!(status, 201, "{label}: install {action}: {body}");
    }

    // The contacts write in first, which opens their 24-hour windows.
    let started = Instant::now();
    let answers: Vec<u16> = futures::stream::iter(0..RUNS)
        .map(|n| {
            let fake = &fake;
            async move {
                let (_, status) = fake
                    .inbound_text(&phone(n), &name(n), "hi")
                    .await
                    .expect("inbound");
                status
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    assert!(
        answers.iter().all(|status| *status == 200),
        "{label}: inbound webhooks refused"
    );
    let inbound_time = started.elapsed();
    let mut contacts: HashMap<String, (String, String)> = HashMap::new(); // id → (digits, name)
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(after) => format!("/v1/contacts?limit=200&after={after}"),
            None => "/v1/contacts?limit=200".to_string(),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{label}: {page}");
        for contact in page["data"].as_array().expect("data") {
            let digits = contact["phone"]
                .as_str()
                .expect("phone")
                .trim_start_matches('+')
                .to_string();
            let contact_name = contact["name"].as_str().expect("name").to_string();
            contacts.insert(
                contact["id"].as_str().expect("id").to_string(),
                (digits, contact_name),
            );
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(contacts.len(), RUNS, "{label}: one contact per sender");

    // The flow. The first wait outlasts starting every run (about as much work as
    // storing the inbound messages was), so no run is left unstarted at the kill.
    let hold = (inbound_time.as_secs() * 2 + 3).clamp(5, 60);
    let (status, flow) = api
        .post("/v1/flows", json!({"name": "Crash", "graph": {
            "triggers": [{"id": "api", "type": "api"}],
            "nodes": [
                {"id": "hold", "action": "postdog/wait", "config": {"duration": format!("{hold}s")}},
                {"id": "greet", "action": "postdog/send-message", "config": {"text": "Hello {{contact.name}}", "channel_install": install_id}},
                {"id": "pause", "action": "postdog/wait", "config": {"duration": "3s"}},
                {"id": "tag", "action": "postdog/add-tag", "config": {"tag": TAG}},
                {"id": "bye", "action": "postdog/send-message", "config": {"text": "Bye {{contact.name}}", "channel_install": install_id}},
                {"id": "done", "action": "postdog/end", "config": {}}
            ],
            "edges": [
                {"from": "api", "to": "hold"},
                {"from": "hold", "port": "next", "to": "greet"},
                {"from": "greet", "port": "next", "to": "pause"},
                {"from": "pause", "port": "next", "to": "tag"},
                {"from": "tag", "port": "next", "to": "bye"},
                {"from": "bye", "port": "next", "to": "done"},
                // Waits for a duration never take `missing` (no date field is read).
                {"from": "hold", "port": "missing", "to": "done"},
                {"from": "pause", "port": "missing", "to": "done"}
            ]
        }}))
        .await;
    assert_eq!(status, 201, "{label}: {flow}");
    let flow_id = flow["id"].as_str().expect("id").to_string();
    let (status, version) = api
        .post(&format!("/v1/flows/{flow_id}/publish"), json!({}))
        .await;
    assert_eq!(status, 201, "{label}: {version}");

    // Every run started through the API.
    let started = Instant::now();
    let ids: Vec<&String> = contacts.keys().collect();
    let runs: Vec<(String, String)> = futures::stream::iter(ids)
        .map(|contact_id| {
            let api = &api;
            let flow_id = &flow_id;
            async move {
                let (status, run) = api
                    .post(
                        &format!("/v1/flows/{flow_id}/runs"),
                        json!({ "contact_id": contact_id }),
                    )
                    .await;
                assert_eq!(status, 201, "{label}: {run}");
                (
                    run["id"].as_str().expect("id").to_string(),
                    contact_id.clone(),
                )
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let start_time = started.elapsed();

    // Kill -9 once Meta has seen a third of the first messages.
    let deadline = Instant::now() + Duration::from_secs(120);
    while fake.sent_count() < RUNS / 3 {
        assert!(
            Instant::now() < deadline,
            "{label}: only {} sends before the kill",
            fake.sent_count()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill_hard();
    let killed = Instant::now();
    let sent_at_kill = fake.sent_count();

    // What the crash left behind, read from the database.
    let storage = server.storage().await;
    let db = storage.tenant(&TenantId::new(&tenant_id));
    let left = db.runs(&flow_id, None, 100_000).await.expect("runs");
    let mut by_state: HashMap<String, usize> = HashMap::new();
    for run in &left {
        let state = format!(
            "{}@{}",
            run.status,
            run.current_node.as_deref().unwrap_or("-")
        );
        *by_state.entry(state).or_default() += 1;
    }
    let claimed = db.jobs(Some("running"), None, 100_000).await.expect("jobs");
    let mut claimed_kinds: HashMap<String, usize> = HashMap::new();
    for job in &claimed {
        *claimed_kinds.entry(job.kind.clone()).or_default() += 1;
    }
    let held_sends: HashSet<String> = claimed
        .iter()
        .filter(|job| job.kind == "message.send")
        .filter_map(|job| job.payload["message_id"].as_str().map(str::to_string))
        .collect();
    storage.close().await;
    eprintln!(
        "{label}: {RUNS} contacts in {inbound_time:?}, runs started in {start_time:?} \
         (hold {hold}s); killed with {sent_at_kill} sends at Meta; runs by status@node: \
         {by_state:?}; jobs held by the dead worker: {claimed_kinds:?}"
    );
    assert_eq!(left.len(), RUNS, "{label}");
    assert!(
        left.iter().any(|run| run.status == "waiting"),
        "{label}: some runs were waiting at the kill"
    );
    assert!(
        !claimed.is_empty(),
        "{label}: some steps or sends were mid-flight at the kill"
    );

    // Start again on the same data; wait until every run completed and the outbox is
    // empty (a run completes when its last message is queued, not yet sent).
    server.restart_with(&env).await;
    let restarted = Instant::now();
    let storage = server.storage().await;
    let db = storage.tenant(&TenantId::new(&tenant_id));
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut last_report = Instant::now();
    loop {
        let runs_now = db.runs(&flow_id, None, 100_000).await.expect("runs");
        let completed = runs_now.iter().filter(|r| r.status == "completed").count();
        let broken: Vec<_> = runs_now
            .iter()
            .filter(|r| !matches!(r.status.as_str(), "running" | "waiting" | "completed"))
            .collect();
        assert!(
            broken.is_empty(),
            "{label}: {} runs ended badly, e.g. {:?}",
            broken.len(),
            broken.first()
        );
        let depths = storage.queue_depths().await.expect("queue depths");
        let dead: i64 = depths.iter().map(|d| d.dead).sum();
        assert_eq!(dead, 0, "{label}: dead-lettered jobs: {depths:?}");
        let pending: i64 = depths
            .iter()
            .filter(|d| d.queue == "flows" || d.queue == "messages")
            .map(|d| d.queued + d.running)
            .sum();
        if completed == RUNS && pending == 0 {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "{label}: {:?} after the restart: {completed}/{RUNS} runs completed, \
                 {pending} jobs pending, {} sends at Meta",
                restarted.elapsed(),
                fake.sent_count()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{label}: after {:?}, {completed}/{RUNS} runs completed and {pending} jobs \
             pending: {depths:?}",
            restarted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    storage.close().await;
    let recovered = restarted.elapsed();
    let since_kill = killed.elapsed();
    // Let a duplicate send arrive before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Exactly two messages per contact at Meta, the expected ones.
    let sent = fake.sent();
    let mut per_message: HashMap<(String, String), Vec<String>> = HashMap::new();
    for message in &sent {
        per_message
            .entry((
                message.wa_id.clone(),
                message.text().unwrap_or_default().to_string(),
            ))
            .or_default()
            .push(
                message.body["biz_opaque_callback_data"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
    }
    let mut expected = HashSet::new();
    for (digits, contact_name) in contacts.values() {
        for greeting in ["Hello", "Bye"] {
            expected.insert((digits.clone(), format!("{greeting} {contact_name}")));
        }
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|key| !per_message.contains_key(*key))
        .collect();
    let unexpected: Vec<_> = per_message
        .keys()
        .filter(|key| !expected.contains(*key))
        .collect();
    // A duplicate with one PostDog message id was sent twice by the outbox; with two
    // ids, the step queued the message twice.
    let doubled: Vec<_> = per_message
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(key, ids)| {
            let held = ids.iter().any(|id| held_sends.contains(id));
            (
                key,
                ids,
                if held {
                    "its send job was held by the killed worker"
                } else {
                    ""
                },
            )
        })
        .collect();
    assert!(
        missing.is_empty() && unexpected.is_empty() && doubled.is_empty(),
        "{label}: {} sends at Meta for {} expected messages; {} missing (e.g. {:?}), \
         {} unexpected (e.g. {:?}), {} sent more than once (recipient, text → PostDog \
         message ids): {:?}; send jobs held by the killed worker: {held_sends:?}",
        sent.len(),
        expected.len(),
        missing.len(),
        missing.first(),
        unexpected.len(),
        unexpected.first(),
        doubled.len(),
        doubled.iter().take(10).collect::<Vec<_>>()
    );
    assert_eq!(sent.len(), 2 * RUNS, "{label}");

    // Every run took each step once, in order, and its sends are the ones Meta got.
    let at_meta: HashSet<String> = per_message.values().flatten().cloned().collect();
    let problems: Vec<String> = futures::stream::iter(&runs)
        .map(|(run_id, contact_id)| {
            let api = &api;
            let flow_id = &flow_id;
            let at_meta = &at_meta;
            async move {
                let (status, run) = api.get(&format!("/v1/flows/{flow_id}/runs/{run_id}")).await;
                if status != 200
                    || run["status"] != "completed"
                    || run["contact_id"] != contact_id.as_str()
                {
                    return Some(format!("run {run_id}: {status} {run}"));
                }
                let steps = run["steps"].as_array().cloned().unwrap_or_default();
                let path: Vec<&str> = steps.iter().filter_map(|s| s["node_id"].as_str()).collect();
                if path != PATH || steps.iter().any(|s| s["status"] != "ok") {
                    return Some(format!("run {run_id} took {path:?}: {run}"));
                }
                for node in [1, 4] {
                    let id = steps[node]["effects"][0]["send_message"]["message_id"].as_str();
                    if !id.is_some_and(|id| at_meta.contains(id)) {
                        return Some(format!(
                            "run {run_id}: the message of `{}` ({id:?}) is not the one Meta got",
                            PATH[node]
                        ));
                    }
                }
                None
            }
        })
        .buffer_unordered(PARALLEL)
        .filter_map(|problem| async move { problem })
        .collect()
        .await;
    assert!(
        problems.is_empty(),
        "{label}: {} runs are wrong, e.g. {:?}",
        problems.len(),
        problems.iter().take(3).collect::<Vec<_>>()
    );

    // The tag, once per contact.
    let mut tagged = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(after) => format!("/v1/contacts?limit=200&after={after}"),
            None => "/v1/contacts?limit=200".to_string(),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{label}: {page}");
        for contact in page["data"].as_array().expect("data") {
            let tags: Vec<&Value> = contact["tags"]
                .as_array()
                .expect("tags")
                .iter()
                .filter(|tag| *tag == TAG)
                .collect();
            assert_eq!(tags.len(), 1, "{label}: {contact}");
            tagged += 1;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(tagged, RUNS, "{label}");
    eprintln!(
        "{label}: all {RUNS} runs completed {recovered:?} after the restart \
         ({since_kill:?} after the kill); {} sends, each once; {:?} in all",
        sent.len(),
        began.elapsed()
    );
}
