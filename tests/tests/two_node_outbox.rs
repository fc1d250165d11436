//! Two `postdog serve` nodes on one PostgreSQL database share the durable job queue:
//! 300 template messages queued through both nodes are claimed by the workers of both
//! (`FOR UPDATE SKIP LOCKED`) and each reaches the loopback Graph API exactly once; and
//! together they keep a number's throughput limit (each node its share).

use std::collections::HashMap;
use std::time::Duration;

use postdog_tests::fake_graph::{Failure, FakeGraph, FakeGraphConfig};
use postdog_tests::{Api, PostdogServer};
use serde_json::json;

/// Two nodes on one PostgreSQL database with a tenant (its API on each node), a
/// WhatsApp install at `throughput` sends a second and an approved template
/// `shipping_notice`; `None` without a PostgreSQL test server.
struct TwoNodes {
    fake: FakeGraph,
    first: PostdogServer,
    second: PostdogServer,
    a: Api,
    b: Api,
    install_id: String,
    _shared: tempfile::TempDir,
    _database: postdog_host::storage::testing::TestDatabase,
}

async fn two_nodes(fake_config: FakeGraphConfig, throughput: u32) -> Option<TwoNodes> {
    let database = postdog_host::storage::testing::postgres()
        .await
        .expect("a PostgreSQL test database")?;
    let fake = FakeGraph::start(fake_config).await;
    let config = fake.config().clone();
    let shared = tempfile::tempdir().expect("tempdir");
    let env = [
        (
            "POSTDOG_REGISTRY",
            shared.path().join("registry").display().to_string(),
        ),
        (
            "POSTDOG_OPERATOR_KEY_FILE",
            shared.path().join("operator.key").display().to_string(),
        ),
        (
            "POSTDOG_SECRETS_KEY",
            postdog_host::secrets::SecretKeys::generate_base64(),
        ),
        (
            "POSTDOG_HTTP_OVERRIDES",
            format!("graph.facebook.com={}", fake.base_url()),
        ),
    ];
    let first = PostdogServer::start_with(Some(database.url.clone()), &env).await;
    let second = PostdogServer::start_with(Some(database.url.clone()), &env).await;
    let (a, _) = Api::tenant(&first, "business").await;
    let b = Api::new(&second, &a.key);

    let (status, install) = a
        .post(
            "/v1/installs",
            json!({
                "plugin": "postdog/whatsapp",
                "grants": ["http:graph.facebook.com", "webhook"],
                "config": {"phone_number_id": config.phone_number_id, "waba_id": config.waba_id, "throughput_per_second": throughput},
            }),
        )
        .await;
    assert_eq!(status, 201, "{install}");
    let install_id = install["id"].as_str().expect("id").to_string();
    for (name, value) in [
        ("access_token", config.access_token.as_str()),
        ("app_secret", config.app_secret.as_str()),
        ("verify_token", "v"),
    ] {
        let (status, body) = a
            .put(
                &format!("/v1/installs/{install_id}/secrets/{name}"),
                json!({ "value": value }),
            )
            .await;
        assert!(status.is_success(), "{body}");
    }
    fake.set_webhook_target(format!("{}/hooks/{install_id}", first.base_url));
    let (status, created) = a
        .post(
            "/v1/templates",
            json!({"install_id": install_id, "template": {
                "name": "shipping_notice", "language": "en_US", "category": "UTILITY",
                "body": {"text": "Hello {{1}}, your parcel is on its way.", "examples": ["Ada"]}}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let template_id = created["template"]["id"].as_str().expect("id").to_string();
    let (status, submitted) = a
        .post(&format!("/v1/templates/{template_id}/submit"), json!({}))
        .await;
    assert_eq!(status, 200, "{submitted}");
    assert_eq!(
        fake.approve_template("shipping_notice", "en_US")
            .await
            .expect("approve"),
        Some(200)
    );
    Some(TwoNodes {
        fake,
        first,
        second,
        a,
        b,
        install_id,
        _shared: shared,
        _database: database,
    })
}

/// Queues `total` `shipping_notice` messages to distinct numbers (`+1415 5PP nnnn`),
/// alternating between the two nodes' APIs; their ids.
async fn queue_notices(
    nodes: [&Api; 2],
    install_id: &str,
    prefix: &str,
    total: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..total {
        let (status, message) = nodes[n % 2]
            .post(
                "/v1/messages",
                json!({"install_id": install_id, "to": format!("+1415{prefix}{n:04}"),
                       "template": {"name": "shipping_notice", "language": "en_US", "variables": {"body": [format!("Customer {n}")]}}}),
            )
            .await;
        assert_eq!(status, 202, "{message}");
        ids.push(message["id"].as_str().expect("id").to_string());
    }
    ids
}

/// Waits (a minute at most) until Meta took `total` sends, then a second more for any
/// duplicate; how many times each PostDog message id reached Meta.
async fn sends_per_message(fake: &FakeGraph, total: usize) -> HashMap<String, usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while fake.sent_count() < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {total} sent",
            fake.sent_count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut per_message: HashMap<String, usize> = HashMap::new();
    for sent in fake.sent() {
        let id = sent.body["biz_opaque_callback_data"]
            .as_str()
            .expect("PostDog's message id travels with the send")
            .to_string();
        *per_message.entry(id).or_default() += 1;
    }
    per_message
}

/// Both nodes' job workers took part (each completed jobs).
async fn both_nodes_ran_jobs(first: &PostdogServer, second: &PostdogServer) {
    let mut per_node = Vec::new();
    for server in [first, second] {
        let metrics = server.metrics().await;
        per_node
            .push(postdog_tests::counter(&metrics, "postdog_jobs_completed_total").unwrap_or(0));
    }
    assert!(
        per_node.iter().all(|n| *n > 0),
        "both nodes ran jobs: {per_node:?}"
    );
    eprintln!("jobs completed per node: {per_node:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_send_every_queued_message_exactly_once() {
    let Some(TwoNodes {
        fake,
        first,
        second,
        a,
        b,
        install_id,
        _shared,
        _database,
    }) = two_nodes(FakeGraphConfig::default(), 1000).await
    else {
        return;
    };

    // Queue 300 messages, alternating nodes.
    let total = 300;
    let ids = queue_notices([&a, &b], &install_id, "556", total).await;
    let per_message = sends_per_message(&fake, total).await;
    assert_eq!(per_message.len(), total, "every message reached Meta");
    assert!(
        per_message.values().all(|count| *count == 1),
        "a message was sent twice: {:?}",
        per_message
            .iter()
            .filter(|(_, c)| **c > 1)
            .collect::<Vec<_>>()
    );
    for id in &ids {
        assert!(per_message.contains_key(id), "{id} never sent");
    }
    both_nodes_ran_jobs(&first, &second).await;
}

/// A number limited to 6 sends a second, on a Meta that refuses the 11th send within a
/// second (130429): 60 messages queued through two nodes reach Meta exactly once each
/// with no refusal, both nodes sending — each node keeps half the rate. (With a lane per
/// process and nothing shared, the two together sent up to 12 a second and Meta refused.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_together_keep_a_number_under_its_throughput_limit() {
    let Some(TwoNodes {
        fake,
        first,
        second,
        a,
        b,
        install_id,
        _shared,
        _database,
    }) = two_nodes(
        FakeGraphConfig {
            throughput_per_second: Some(10),
            ..FakeGraphConfig::default()
        },
        6,
    )
    .await
    else {
        return;
    };
    // Both nodes count each other (a node that just joined is counted at the others'
    // next heartbeat).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for server in [&first, &second] {
        loop {
            let metrics = server.metrics().await;
            if postdog_tests::counter(&metrics, "postdog_cluster_nodes") == Some(2) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the nodes never counted each other: {metrics}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let total = 60;
    queue_notices([&a, &b], &install_id, "557", total).await;
    let per_message = sends_per_message(&fake, total).await;
    assert_eq!(per_message.len(), total, "every message reached Meta");
    assert!(
        per_message.values().all(|count| *count == 1),
        "sent once each"
    );
    assert_eq!(
        fake.send_attempts(),
        fake.sent_count(),
        "Meta refused no send for throughput"
    );
    both_nodes_ran_jobs(&first, &second).await;
}

/// Reads `stream` until `needle` shows up or `within` passed; what was read.
async fn read_until(stream: &mut reqwest::Response, needle: &str, within: Duration) -> String {
    let mut text = String::new();
    let _ = tokio::time::timeout(within, async {
        while let Ok(Some(chunk)) = stream.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains(needle) {
                return;
            }
        }
    })
    .await;
    text
}

/// An inbox connected to one node sees what happens on the other: Meta's webhook lands
/// on the first node, and the second node's event stream (`GET /v1/events`) shows the
/// message, relayed through PostgreSQL's `NOTIFY`; another tenant's stream on the second
/// node shows nothing of it. (Before, each node's stream carried only its own events.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_inbox_on_one_node_sees_messages_received_on_the_other() {
    let Some(TwoNodes {
        fake,
        first: _first,
        second,
        a: _a,
        b,
        install_id: _install_id,
        _shared,
        _database,
    }) = two_nodes(FakeGraphConfig::default(), 80).await
    else {
        return;
    };
    let (other, _) = Api::tenant(&second, "pro").await;
    let open = |key: String| {
        let url = format!("{}/v1/events", second.base_url);
        async move {
            let stream = reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .expect("event stream");
            assert_eq!(stream.status(), 200);
            stream
        }
    };
    let mut stream = open(b.key.clone()).await;
    let mut other_stream = open(other.key.clone()).await;
    // Both streams are open (the `ready` event) before the message arrives.
    assert!(
        read_until(&mut stream, "event: ready", Duration::from_secs(10))
            .await
            .contains("ready")
    );
    assert!(
        read_until(&mut other_stream, "event: ready", Duration::from_secs(10))
            .await
            .contains("ready")
    );
    let (_, status) = fake
        .inbound_text("+14155550123", "Ada Lovelace", "hello from the first node")
        .await
        .expect("inbound");
    assert_eq!(status, 200);
    let seen = read_until(
        &mut stream,
        "hello from the first node",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        seen.contains("event: message.received") && seen.contains("hello from the first node"),
        "the second node's stream: {seen}"
    );
    let elsewhere = read_until(
        &mut other_stream,
        "hello from the first node",
        Duration::from_secs(2),
    )
    .await;
    assert!(
        !elsewhere.contains("hello from the first node"),
        "another tenant's stream: {elsewhere}"
    );
}

/// Meta tells one node that the number is over its throughput (429, `Retry-After: 4`):
/// the other node holds the number too, until the same instant — no send reaches Meta
/// from either node during the hold — and afterwards every message goes exactly once.
/// (Before, the other node kept sending into the limit and learned of it only from
/// refusals of its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_hold_on_one_node_holds_the_number_on_every_node() {
    let Some(TwoNodes {
        fake,
        first: _first,
        second: _second,
        a,
        b,
        install_id,
        _shared,
        _database,
    }) = two_nodes(FakeGraphConfig::default(), 50).await
    else {
        return;
    };
    fake.fail_next(1, Failure::retry_after(4));
    let total = 30;
    let queueing = {
        let (a, b, install_id) = (a.clone(), b.clone(), install_id.clone());
        tokio::spawn(async move { queue_notices([&a, &b], &install_id, "558", total).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while fake.send_attempts() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing reached Meta"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused_at = tokio::time::Instant::now();
    tokio::time::sleep_until(refused_at + Duration::from_millis(500)).await;
    let early = fake.send_attempts();
    tokio::time::sleep_until(refused_at + Duration::from_millis(3_000)).await;
    let during = fake.send_attempts();
    assert_eq!(
        during, early,
        "sends reached Meta during the hold (attempts {early} at 0.5 s, {during} at 3 s)"
    );
    queueing.await.expect("queued");
    let per_message = sends_per_message(&fake, total).await;
    assert_eq!(per_message.len(), total, "every message reached Meta");
    assert!(
        per_message.values().all(|count| *count == 1),
        "sent once each"
    );
}
