//! The WhatsApp channel end to end, on every backend: a real `postdog serve`, the
//! production `postdog/whatsapp` plugin from the marketplace, and a loopback fake of the
//! Graph API that signs its webhooks like Meta. A tenant connects a number (install +
//! secrets), passes Meta's verification handshake, receives (deduplicated, bad
//! signatures refused), replies inside the 24-hour window, is refused outside it with a
//! template suggestion, creates / submits / gets approved and sends a template, sees
//! delivery statuses arrive out of order and duplicated end in `read`, opts a contact
//! out and back in by keyword, and receives Standard-Webhooks-signed events (a failed
//! delivery retried with the same id) — and another tenant sees none of it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use postdog_tests::fake_graph::{Failure, FakeGraph, FakeGraphConfig};
use postdog_tests::{Api, FakeServer, PostdogServer, eventually};
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Received {
    requests: Arc<Mutex<Vec<(HeaderMap, Bytes, u16)>>>,
}

impl Received {
    /// The bodies of the deliveries answered 200, as JSON.
    fn delivered(&self) -> Vec<Value> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, _, status)| *status == 200)
            .filter_map(|(_, body, _)| serde_json::from_slice(body).ok())
            .collect()
    }
}

async fn receiver() -> (FakeServer, Received) {
    let received = Received::default();
    let state = received.clone();
    let router = axum::Router::new()
        .route("/down", post(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .route(
            "/events",
            post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    let mut requests = state.requests.lock().expect("lock");
                    // The very first delivery fails, to prove retries.
                    let status = if requests.is_empty() { 500 } else { 200 };
                    requests.push((headers, body, status));
                    StatusCode::from_u16(status).expect("status")
                }
            }),
        );
    (FakeServer::start(router).await, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whatsapp_end_to_end_on_every_backend() {
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
    let fake = FakeGraph::start(FakeGraphConfig::default()).await;
    let config = fake.config().clone();
    let server = PostdogServer::start_with(
        database_url,
        &[
            (
                "POSTDOG_HTTP_OVERRIDES",
                format!("graph.facebook.com={}", fake.base_url()),
            ),
            ("POSTDOG_WEBHOOKS_ALLOW_PRIVATE", "1".into()),
            ("POSTDOG_WEBHOOK_RETRY_SECONDS", "1,1,1,1,1".into()),
        ],
    )
    .await;
    let (api, tenant_id) = Api::tenant(&server, "pro").await;
    let (other, _) = Api::tenant(&server, "pro").await;

    // Connect the number: install the connector, then its secrets.
    let (status, install) = api
        .post(
            "/v1/installs",
            json!({
                "plugin": "postdog/whatsapp",
                "grants": ["http:graph.facebook.com", "webhook"],
                "config": {"phone_number_id": config.phone_number_id, "waba_id": config.waba_id},
            }),
        )
        .await;
    assert_eq!(status, 201, "{label}: {install}");
    let install_id = install["id"].as_str().expect("id").to_string();
    for (name, value) in [
        ("access_token", config.access_token.as_str()),
        ("app_secret", config.app_secret.as_str()),
        ("verify_token", "verify-me"),
    ] {
        let (status, body) = api
            .put(
                &format!("/v1/installs/{install_id}/secrets/{name}"),
                json!({ "value": value }),
            )
            .await;
        assert!(status.is_success(), "{label}: secret {name}: {body}");
    }
    let hook_url = format!("{}/hooks/{install_id}", server.base_url);
    fake.set_webhook_target(hook_url.clone());

    // Meta's verification handshake.
    let (status, body) = fake
        .verify_subscription(&hook_url, "verify-me", "1158201444")
        .await
        .expect("handshake");
    assert_eq!((status, body.as_str()), (200, "1158201444"), "{label}");
    let (status, _) = fake
        .verify_subscription(&hook_url, "wrong-token", "1")
        .await
        .expect("handshake");
    assert_eq!(status, 403, "{label}: a wrong verify token is refused");

    // Account status read through the API.
    let (status, account) = api.get(&format!("/v1/channels/{install_id}/status")).await;
    assert_eq!(status, 200, "{label}: {account}");
    assert_eq!(
        account["account"]["phone_numbers"][0]["quality_rating"], "GREEN",
        "{label}: {account}"
    );

    // Tenant webhooks, signed per Standard Webhooks.
    let (events_server, received) = receiver().await;
    let (status, endpoint) = api
        .post(
            "/v1/webhooks",
            json!({
                "url": format!("{}/events", events_server.base_url()),
                "events": ["message.received", "message.delivered", "message.read", "contact.created"],
            }),
        )
        .await;
    assert_eq!(status, 201, "{label}: {endpoint}");
    let endpoint_id = endpoint["id"].as_str().expect("id").to_string();
    let (status, down) = api
        .post(
            "/v1/webhooks",
            json!({"url": format!("{}/down", events_server.base_url()), "events": ["message.received"], "description": "always 503"}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {down}");
    let down_id = down["id"].as_str().expect("id").to_string();
    let secret = postdog_host::webhook_signing::WebhookSecret::parse(
        endpoint["secret"].as_str().expect("secret shown once"),
    )
    .expect("whsec_ secret");

    // The live event stream of the inbox.
    let mut stream = reqwest::Client::new()
        .get(format!("{}/v1/events", server.base_url))
        .bearer_auth(&api.key)
        .send()
        .await
        .expect("event stream");
    assert_eq!(stream.status(), 200);

    // A free-form message to someone who never wrote: refused before any API call,
    // with a hint to use a template.
    let ada = "+14155550123";
    let attempts_before = fake.send_attempts();
    let (status, refused) = api
        .post(
            "/v1/messages",
            json!({"install_id": install_id, "to": ada, "text": {"body": "Hello!"}}),
        )
        .await;
    assert_eq!(status, 422, "{label}: {refused}");
    assert_eq!(
        refused["type"], "https://postdog.dev/problems/window-closed",
        "{label}: {refused}"
    );
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("template"),
        "{label}: {refused}"
    );
    assert_eq!(
        fake.send_attempts(),
        attempts_before,
        "{label}: nothing reached Meta"
    );

    // Inbound: stored once however often Meta delivers it.
    let (wamid, status) = fake
        .inbound_text(ada, "Ada Lovelace", "Hello there")
        .await
        .expect("inbound");
    assert_eq!(status, 200, "{label}");
    assert_eq!(
        fake.redeliver_last().await.expect("redeliver"),
        200,
        "{label}"
    );
    let (_, conversations) = api.get("/v1/conversations?status=open").await;
    let conversation = conversations["data"][0].clone();
    assert_eq!(
        conversations["data"].as_array().map(Vec::len),
        Some(1),
        "{label}: {conversations}"
    );
    assert_eq!(conversation["unread"], 1, "{label}: duplicate not counted");
    assert_eq!(conversation["window_open"], true, "{label}");
    let conversation_id = conversation["id"].as_str().expect("id").to_string();
    let contact_id = conversation["contact_id"]
        .as_str()
        .expect("contact")
        .to_string();
    let (_, messages) = api
        .get(&format!("/v1/conversations/{conversation_id}/messages"))
        .await;
    assert_eq!(
        messages["data"].as_array().map(Vec::len),
        Some(1),
        "{label}: {messages}"
    );
    assert_eq!(messages["data"][0]["provider_message_id"], wamid.as_str());
    assert_eq!(
        messages["data"][0]["content"]["text"]["body"],
        "Hello there"
    );
    let (_, contact) = api.get(&format!("/v1/contacts/{contact_id}")).await;
    assert_eq!(contact["phone"], ada, "{label}");
    assert_eq!(contact["name"], "Ada Lovelace", "{label}");

    // A payload with a wrong signature is refused and changes nothing.
    let forged = json!({"object": "whatsapp_business_account", "entry": [{"id": config.waba_id, "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550100", "phone_number_id": config.phone_number_id},
        "contacts": [{"profile": {"name": "Mallory"}, "wa_id": "14155550999"}],
        "messages": [{"from": "14155550999", "id": "wamid.forged", "timestamp": "1700000000", "type": "text", "text": {"body": "hi"}}]}}]}]});
    let bytes = serde_json::to_vec(&forged).expect("json");
    let status = fake
        .deliver_raw(bytes.clone(), Some(format!("sha256={}", "0".repeat(64))))
        .await
        .expect("deliver");
    assert_eq!(status, 401, "{label}: forged signature");
    assert_eq!(
        fake.deliver_raw(bytes, None).await.expect("deliver"),
        401,
        "{label}: no signature"
    );
    let (_, all) = api.get("/v1/conversations").await;
    assert_eq!(
        all["data"].as_array().map(Vec::len),
        Some(1),
        "{label}: nothing stored for forged payloads"
    );

    // The event stream saw the message.
    let first_event = tokio::time::timeout(Duration::from_secs(10), async {
        let mut text = String::new();
        while let Ok(Some(chunk)) = stream.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("event: message.received") {
                return text;
            }
        }
        text
    })
    .await
    .expect("an SSE event within 10 s");
    assert!(
        first_event.contains("Hello there"),
        "{label}: {first_event}"
    );

    // A reply inside the window, idempotent by key.
    let reply = json!({"install_id": install_id, "contact_id": contact_id, "text": {"body": "Hi Ada, how can we help?"}});
    let send = |body: Value, key: &'static str| {
        let api = api.clone();
        async move {
            let response = reqwest::Client::new()
                .post(format!("{}/v1/messages", api.base_url))
                .bearer_auth(&api.key)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .expect("send");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, message) = send(reply.clone(), "reply-1").await;
    assert_eq!(status, 202, "{label}: {message}");
    let message_id = message["id"].as_str().expect("id").to_string();
    let (status, again) = send(reply.clone(), "reply-1").await;
    assert_eq!(
        (status, again["id"].as_str()),
        (200, Some(message_id.as_str())),
        "{label}: replay"
    );
    let (status, conflict) = send(
        json!({"install_id": install_id, "contact_id": contact_id, "text": {"body": "other"}}),
        "reply-1",
    )
    .await;
    assert_eq!(status, 409, "{label}: {conflict}");
    let sent = eventually("the reply at Meta", || async {
        fake.sent()
            .into_iter()
            .find(|sent| sent.text() == Some("Hi Ada, how can we help?"))
    })
    .await;
    assert_eq!(sent.to, "14155550123");
    assert_eq!(
        fake.sent()
            .iter()
            .filter(|s| s.text() == Some("Hi Ada, how can we help?"))
            .count(),
        1,
        "{label}: sent once"
    );
    // Statuses out of order and duplicated end in `read`, with every time recorded.
    eventually("accepted", || async {
        let (_, message) = api.get(&format!("/v1/messages/{message_id}")).await;
        (message["status"] == "accepted").then_some(())
    })
    .await;
    for status in fake
        .status_webhooks_for(&sent.wamid, &["read", "delivered", "sent"], true)
        .await
        .expect("statuses")
    {
        assert_eq!(status, 200, "{label}");
    }
    let (_, message) = api.get(&format!("/v1/messages/{message_id}")).await;
    assert_eq!(message["status"], "read", "{label}: {message}");
    for field in ["sent_at", "delivered_at", "read_at"] {
        assert!(message[field].is_i64(), "{label}: {field} in {message}");
    }
    let history: Vec<&str> = message["status_history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|entry| entry["status"].as_str())
        .collect();
    for status in ["accepted", "sent", "delivered", "read"] {
        assert_eq!(
            history.iter().filter(|s| **s == status).count(),
            1,
            "{label}: {history:?}"
        );
    }

    // Templates: lint, create, refused while pending, approved by webhook, sent.
    let spec = json!({
        "name": "order_update", "language": "en_US", "category": "UTILITY",
        "body": {"text": "Hi {{1}}, your order {{2}} has shipped.", "examples": ["Ada", "#1042"]},
        "footer": "Reply STOP to opt out",
    });
    let (status, bad) = api
        .post("/v1/templates/lint", json!({"template": {"name": "Bad Name", "language": "en_US", "category": "UTILITY", "body": {"text": "{{1}} shipped", "examples": []}}}))
        .await;
    assert_eq!(status, 200, "{label}: {bad}");
    assert_eq!(bad["submittable"], false, "{label}: {bad}");
    let (status, created) = api
        .post(
            "/v1/templates",
            json!({"install_id": install_id, "template": spec}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {created}");
    let template_id = created["template"]["id"].as_str().expect("id").to_string();
    let (status, submitted) = api
        .post(&format!("/v1/templates/{template_id}/submit"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {submitted}");
    assert_eq!(submitted["template"]["status"], "PENDING", "{label}");
    let grace = "+14155550199";
    let template_send = json!({"install_id": install_id, "to": grace, "template": {"name": "order_update", "language": "en_US", "variables": {"body": ["Grace", "#2001"]}}});
    let (status, refused) = api.post("/v1/messages", template_send.clone()).await;
    assert_eq!(status, 422, "{label}: {refused}");
    assert_eq!(
        refused["type"],
        "https://postdog.dev/problems/template-not-approved"
    );
    assert_eq!(
        fake.approve_template("order_update", "en_US")
            .await
            .expect("approve"),
        Some(200)
    );
    let (_, approved) = api.get(&format!("/v1/templates/{template_id}")).await;
    assert_eq!(
        approved["template"]["status"], "APPROVED",
        "{label}: {approved}"
    );
    // Grace never wrote: free-form refused with the approved template suggested…
    let (status, refused) = api
        .post(
            "/v1/messages",
            json!({"install_id": install_id, "to": grace, "text": {"body": "hi"}}),
        )
        .await;
    assert_eq!(status, 422, "{label}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("order_update"),
        "{label}: {refused}"
    );
    // …and the template goes through.
    let (status, queued) = api.post("/v1/messages", template_send).await;
    assert_eq!(status, 202, "{label}: {queued}");
    let template_sent = eventually("the template at Meta", || async {
        fake.sent()
            .into_iter()
            .find(|s| s.template_name() == Some("order_update"))
    })
    .await;
    assert_eq!(template_sent.to, "14155550199");
    assert_eq!(
        template_sent.body["template"]["components"][0]["parameters"][0]["text"], "Grace",
        "{label}: {}",
        template_sent.body
    );

    // A window that closed: Meta delivers a 25-hour-old message late.
    let old = (std::time::SystemTime::now() - Duration::from_secs(25 * 3600))
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let (_, status) = fake
        .inbound_message(
            "+14155550142",
            "Late Larry",
            json!({"type": "text", "text": {"body": "old"}, "timestamp": old.to_string()}),
        )
        .await
        .expect("inbound");
    assert_eq!(status, 200);
    let (status, refused) = api
        .post(
            "/v1/messages",
            json!({"install_id": install_id, "to": "+14155550142", "text": {"body": "hi"}}),
        )
        .await;
    assert_eq!(status, 422, "{label}: {refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("closed at"),
        "{label}: {refused}"
    );

    // STOP opts Ada out (recorded as consent) and blocks marketing; START opts back in.
    let (_, status) = fake
        .inbound_text(ada, "Ada Lovelace", "stop")
        .await
        .expect("inbound");
    assert_eq!(status, 200);
    let (_, contact) = api.get(&format!("/v1/contacts/{contact_id}")).await;
    assert_eq!(
        contact["consent"]["whatsapp"]["status"], "opted_out",
        "{label}: {contact}"
    );
    assert_eq!(
        contact["consent"]["whatsapp"]["source"], "keyword",
        "{label}: {contact}"
    );
    let promo = json!({"install_id": install_id, "contact_id": contact_id, "purpose": "marketing", "text": {"body": "20% off today"}});
    let (status, refused) = api.post("/v1/messages", promo.clone()).await;
    assert_eq!(status, 422, "{label}: {refused}");
    assert_eq!(refused["type"], "https://postdog.dev/problems/opted-out");
    let (_, status) = fake
        .inbound_text(ada, "Ada Lovelace", "START")
        .await
        .expect("inbound");
    assert_eq!(status, 200);
    let (status, accepted) = api.post("/v1/messages", promo).await;
    assert_eq!(status, 202, "{label}: {accepted}");
    // Sent before the STOP below: consent is checked again at send time, so a STOP
    // applied while the promo still waits in the outbox would (rightly) stop it.
    eventually("the promo at Meta", || async {
        fake.sent()
            .into_iter()
            .find(|s| s.text() == Some("20% off today"))
    })
    .await;

    // A STOP whose first delivery stored the message but failed before its opt-out was
    // recorded (the webhook was not answered 200): Meta's redelivery is a duplicate of
    // a stored message, and the opt-out is still recorded — once, however often it is
    // delivered again.
    let storage = server.storage().await;
    let db = storage.tenant(&postdog_host::ids::TenantId::new(&tenant_id));
    let lost_stop = "wamid.HBgLMTQxNTU1NTAxMjMVAgASGBQzRUIwLOSTSTOP";
    db.record_inbound(
        &postdog_host::storage::InboundRecord {
            message_id: "01a24918-0000-7000-8000-000000005709".into(),
            install_id: install_id.clone(),
            channel: "whatsapp".into(),
            provider_message_id: lost_stop.into(),
            phone: ada.into(),
            profile_name: Some("Ada Lovelace".into()),
            timestamp_ms: postdog_host::storage::now_ms(),
            kind: "text".into(),
            content: json!({"body": "STOP"}),
            reply_to: None,
        },
        |_| Vec::new(),
    )
    .await
    .expect("the first delivery's message");
    storage.close().await;
    for _ in 0..2 {
        let (_, status) = fake
            .inbound_message(
                ada,
                "Ada Lovelace",
                json!({"id": lost_stop, "type": "text", "text": {"body": "STOP"}}),
            )
            .await
            .expect("redelivery");
        assert_eq!(status, 200, "{label}");
    }
    let (_, history) = api.get(&format!("/v1/contacts/{contact_id}/consent")).await;
    let from_lost_stop = history["data"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|entry| {
            entry["proof"]
                .as_str()
                .is_some_and(|proof| proof.contains(lost_stop))
        })
        .count();
    assert_eq!(from_lost_stop, 1, "{label}: {history}");
    let (_, contact) = api.get(&format!("/v1/contacts/{contact_id}")).await;
    assert_eq!(
        contact["consent"]["whatsapp"]["status"], "opted_out",
        "{label}: {contact}"
    );
    let (_, status) = fake
        .inbound_text(ada, "Ada Lovelace", "START")
        .await
        .expect("inbound");
    assert_eq!(status, 200);

    // A malformed payload with a valid signature: 400, nothing stored.
    let garbage = b"{\"object\": \"whatsapp_business_account\", \"entry\": 7}".to_vec();
    let signature = fake.sign(&garbage);
    assert_eq!(
        fake.deliver_raw(garbage, Some(signature))
            .await
            .expect("deliver"),
        400,
        "{label}"
    );

    // Provider throttling is retried (Retry-After honoured) and sent exactly once;
    // a permanent error fails the message at once, with the provider's code.
    let attempts = fake.send_attempts();
    fake.fail_next(1, Failure::retry_after(1));
    let (status, throttled) = api
        .post("/v1/messages", json!({"install_id": install_id, "contact_id": contact_id, "text": {"body": "after a 429"}}))
        .await;
    assert_eq!(status, 202, "{label}: {throttled}");
    eventually("the retried send", || async {
        fake.sent()
            .into_iter()
            .find(|s| s.text() == Some("after a 429"))
    })
    .await;
    assert_eq!(
        fake.send_attempts(),
        attempts + 2,
        "{label}: one 429, one success"
    );
    // The provider's backoff holds the whole number, not only the refused message: a
    // message queued during the Retry-After waits for it too (then both go, once).
    let attempts = fake.send_attempts();
    fake.fail_next(1, Failure::retry_after(2));
    let (status, _) = api
        .post("/v1/messages", json!({"install_id": install_id, "contact_id": contact_id, "text": {"body": "refused first"}}))
        .await;
    assert_eq!(status, 202, "{label}");
    eventually("the refused attempt", || async {
        (fake.send_attempts() > attempts).then_some(())
    })
    .await;
    let refused_at = std::time::SystemTime::now();
    // Time for the kernel to read the 429 (the hold is 2 s; this is far less).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = api
        .post("/v1/messages", json!({"install_id": install_id, "contact_id": contact_id, "text": {"body": "held by the backoff"}}))
        .await;
    assert_eq!(status, 202, "{label}");
    let held = eventually("the held send", || async {
        fake.sent()
            .into_iter()
            .find(|s| s.text() == Some("held by the backoff"))
    })
    .await;
    let waited = held
        .accepted_at
        .duration_since(refused_at)
        .unwrap_or_default();
    assert!(
        waited >= Duration::from_millis(1500),
        "{label}: a send went out {waited:?} after a 429 with Retry-After: 2"
    );
    eventually("the refused message, retried", || async {
        fake.sent()
            .into_iter()
            .find(|s| s.text() == Some("refused first"))
    })
    .await;
    assert_eq!(
        fake.send_attempts(),
        attempts + 3,
        "{label}: one 429, then each message once"
    );
    let attempts = fake.send_attempts();
    fake.fail_next(1, Failure::graph(131026));
    let (_, doomed) = api
        .post("/v1/messages", json!({"install_id": install_id, "contact_id": contact_id, "text": {"body": "undeliverable"}}))
        .await;
    let doomed_id = doomed["id"].as_str().expect("id").to_string();
    let failed = eventually("the failure", || async {
        let (_, message) = api.get(&format!("/v1/messages/{doomed_id}")).await;
        (message["status"] == "failed").then_some(message)
    })
    .await;
    assert_eq!(failed["error"]["code"], 131026, "{label}: {failed}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.send_attempts(),
        attempts + 1,
        "{label}: a permanent error is not retried"
    );

    // A send Meta accepted and then failed by status with a retryable error (the
    // throughput limit 130429: 1 s) is sent again after the wait and ends delivered
    // under its new id; a permanent failure by status (131026) stands.
    let fake_ref = &fake;
    let by_status = move |text: &'static str| {
        move || {
            fake_ref
                .sent()
                .into_iter()
                .filter(|s| s.text() == Some(text))
                .collect::<Vec<_>>()
        }
    };
    let message_status = |id: String| {
        let api = api.clone();
        async move { api.get(&format!("/v1/messages/{id}")).await.1 }
    };
    let mut retried_ids = Vec::new();
    for (text, code) in [("failed by status", 130_429), ("lost by status", 131_026)] {
        let (status, queued) = api
            .post(
                "/v1/messages",
                json!({"install_id": install_id, "contact_id": contact_id, "text": {"body": text}}),
            )
            .await;
        assert_eq!(status, 202, "{label}: {queued}");
        let id = queued["id"].as_str().expect("id").to_string();
        let sends = by_status(text);
        let first = eventually("the first send", || async { sends().into_iter().next() }).await;
        eventually("its acceptance", || async {
            (message_status(id.clone()).await["status"] == "accepted").then_some(())
        })
        .await;
        assert_eq!(
            fake.deliver_status(&first.wamid, "failed", Some((code, "failed by status")))
                .await
                .expect("status"),
            200,
            "{label}"
        );
        retried_ids.push((id, first, sends));
    }
    let (retried_id, first, sends) = retried_ids.remove(0);
    let again = eventually("the send again", || async {
        let all = sends();
        (all.len() == 2).then(|| all[1].clone())
    })
    .await;
    assert_ne!(again.wamid, first.wamid, "{label}");
    assert!(
        again
            .accepted_at
            .duration_since(first.accepted_at)
            .unwrap_or_default()
            >= Duration::from_millis(900),
        "{label}: the provider's wait"
    );
    let accepted = eventually("accepted again", || async {
        let message = message_status(retried_id.clone()).await;
        (message["status"] == "accepted" && message["provider_message_id"] == again.wamid.as_str())
            .then_some(message)
    })
    .await;
    assert_eq!(accepted["error"]["retries"], 1, "{label}: {accepted}");
    assert_eq!(
        fake.deliver_status(&again.wamid, "delivered", None)
            .await
            .expect("status"),
        200
    );
    eventually("delivered", || async {
        (message_status(retried_id.clone()).await["status"] == "delivered").then_some(())
    })
    .await;
    let (lost_id, _, lost_sends) = retried_ids.remove(0);
    let lost = eventually("the permanent failure", || async {
        let message = message_status(lost_id.clone()).await;
        (message["status"] == "failed").then_some(message)
    })
    .await;
    assert_eq!(lost["error"]["code"], 131_026, "{label}: {lost}");
    assert_eq!(lost_sends().len(), 1, "{label}: not sent again");

    // `contact.created` is sent for every contact created, whatever created it: the API
    // and an import (its new rows; not the row that matches an existing contact), each
    // saying where the contact came from (signatures are checked below, with the rest).
    let (status, cleo) = api
        .post(
            "/v1/contacts",
            json!({"name": "Cleo", "phone": "+14155550170"}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {cleo}");
    let csv = "name,phone\nDora,+14155550171\nEmil,+14155550172\nCleo Again,+14155550170\n";
    let upload = reqwest::Client::new()
        .post(format!("{}/v1/contacts/imports", api.base_url))
        .bearer_auth(&api.key)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .expect("upload");
    assert_eq!(upload.status(), 202, "{label}");
    let created = eventually(
        "contact.created for the API's and the import's contacts",
        || async {
            let events: Vec<Value> = received
                .delivered()
                .into_iter()
                .filter_map(|event| {
                    let phone = event["data"]["phone"].as_str().unwrap_or_default();
                    (event["type"] == "contact.created" && phone.starts_with("+1415555017"))
                        .then(|| json!({ "event": event }))
                })
                .collect();
            (events.len() >= 3).then_some(events)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sources: Vec<(String, String)> = created
        .iter()
        .map(|e| {
            let data = &e["event"]["data"];
            (
                data["phone"].as_str().unwrap_or_default().to_string(),
                data["source"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    sources.sort();
    assert_eq!(
        sources,
        vec![
            ("+14155550170".to_string(), "api".to_string()),
            ("+14155550171".to_string(), "import".to_string()),
            ("+14155550172".to_string(), "import".to_string()),
        ],
        "{label}: {created:?}"
    );
    let api_event = created
        .iter()
        .find(|e| e["event"]["data"]["phone"] == "+14155550170")
        .expect("the API's event");
    assert_eq!(
        api_event["event"]["data"]["contact_id"], cleo["id"],
        "{label}: the API's event names the contact it created"
    );
    assert_eq!(api_event["event"]["data"]["name"], "Cleo", "{label}");
    // Grace's contact was created by the first message to her number (three requests
    // named it): announced once, as created by a message.
    let by_message = eventually("contact.created for the number first messaged", || async {
        let events: Vec<Value> = received
            .delivered()
            .into_iter()
            .filter(|event| event["type"] == "contact.created" && event["data"]["phone"] == grace)
            .collect();
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(by_message.len(), 1, "{label}: {by_message:?}");
    assert_eq!(
        by_message[0]["data"]["source"], "message",
        "{label}: {by_message:?}"
    );
    // Tenant webhooks: signed, retried after the first 500 with the same id.
    let requests = eventually("signed webhooks", || async {
        let requests = received.requests.lock().expect("lock").clone();
        let read = requests.iter().any(|(_, body, status)| {
            *status == 200 && String::from_utf8_lossy(body).contains("message.read")
        });
        let types = requests
            .iter()
            .filter(|(_, body, _)| String::from_utf8_lossy(body).contains("contact.created"))
            .count();
        let first_retried = requests.first().is_some_and(|(first, _, _)| {
            requests.iter().skip(1).any(|(headers, _, status)| {
                *status == 200 && headers.get("webhook-id") == first.get("webhook-id")
            })
        });
        (read && types >= 1 && first_retried).then_some(requests)
    })
    .await;
    for (headers, body, _) in &requests {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        postdog_host::webhook_signing::verify(
            &[&secret],
            (
                header("webhook-id").as_str(),
                header("webhook-timestamp").as_str(),
                header("webhook-signature").as_str(),
            ),
            body,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("time")
                .as_secs() as i64,
            300,
        )
        .unwrap_or_else(|error| {
            panic!(
                "{label}: signature of {}: {error:?}",
                String::from_utf8_lossy(body)
            )
        });
    }
    let failed_id = requests[0].0.get("webhook-id").cloned().expect("id");
    assert!(
        requests
            .iter()
            .skip(1)
            .any(
                |(headers, _, status)| headers.get("webhook-id") == Some(&failed_id)
                    && *status == 200
            ),
        "{label}: the failed delivery was retried with the same webhook-id"
    );
    let (_, deliveries) = api
        .get(&format!("/v1/webhooks/{endpoint_id}/deliveries"))
        .await;
    let retried = deliveries["data"]
        .as_array()
        .expect("deliveries")
        .iter()
        .find(|d| d["id"] == failed_id.to_str().expect("ascii"))
        .cloned()
        .expect("the retried delivery is listed");
    assert_eq!(retried["state"], "delivered", "{label}: {retried}");
    assert_eq!(
        retried["attempt_log"][0]["status_code"], 500,
        "{label}: {retried}"
    );

    // An endpoint that keeps failing through its whole retry schedule (shortened to
    // five 1-second waits here; a day in production) is disabled, with the reason and
    // every attempt visible.
    let disabled = eventually("the failing endpoint disabled", || async {
        let (_, endpoint) = api.get(&format!("/v1/webhooks/{down_id}")).await;
        (endpoint["enabled"] == false).then_some(endpoint)
    })
    .await;
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("failed"),
        "{label}: {disabled}"
    );
    let (_, down_deliveries) = api.get(&format!("/v1/webhooks/{down_id}/deliveries")).await;
    // The delivery that used up its schedule (other deliveries to the endpoint may end
    // with "not sent: the endpoint is disabled" once it is).
    let exhausted = down_deliveries["data"]
        .as_array()
        .expect("deliveries")
        .iter()
        .find(|d| {
            d["attempts"] == 6
                && d["attempt_log"]
                    .as_array()
                    .is_some_and(|log| log.iter().all(|a| a["status_code"] == 503))
        })
        .cloned()
        .unwrap_or_else(|| {
            panic!("{label}: a delivery tried 6 times (first try + 5 retries), each answered 503: {down_deliveries}")
        });
    assert_eq!(exhausted["state"], "failed", "{label}: {exhausted}");

    // Another tenant sees and changes none of it.
    let (_, theirs) = other.get("/v1/conversations").await;
    assert_eq!(theirs["data"].as_array().map(Vec::len), Some(0), "{label}");
    assert_eq!(
        other.get(&format!("/v1/messages/{message_id}")).await.0,
        404
    );
    assert_eq!(
        other
            .get(&format!("/v1/conversations/{conversation_id}"))
            .await
            .0,
        404
    );
    assert_eq!(
        other
            .post(
                &format!("/v1/conversations/{conversation_id}/close"),
                json!({})
            )
            .await
            .0,
        404
    );
    assert_eq!(
        other.get(&format!("/v1/templates/{template_id}")).await.0,
        404
    );
    assert_eq!(
        other
            .get(&format!("/v1/webhooks/{endpoint_id}/deliveries"))
            .await
            .0,
        404
    );
    let (status, _) = other
        .post("/v1/messages", json!({"install_id": install_id, "to": ada, "template": {"name": "order_update", "language": "en_US", "variables": {"body": ["x", "y"]}}}))
        .await;
    assert_eq!(status, 404, "{label}: another tenant's install cannot send");

    // The queue is observable: Prometheus metrics, `/v1/jobs`, `postdog jobs list`.
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("postdog_jobs_queued{queue=\"messages\"}"),
        "{label}: {metrics}"
    );
    let completed = postdog_tests::counter(&metrics, "postdog_jobs_completed_total")
        .expect("completed counter");
    assert!(completed >= 5, "{label}: {metrics}");
    let (_, jobs) = api.get("/v1/jobs?queue=messages&state=done").await;
    assert!(
        jobs["data"].as_array().is_some_and(|jobs| jobs.len() >= 4),
        "{label}: {jobs}"
    );
    let (_, their_jobs) = other.get("/v1/jobs").await;
    assert_eq!(
        their_jobs["data"].as_array().map(Vec::len),
        Some(0),
        "{label}"
    );
    let listed = server.cli(&["jobs", "list", "--state", "done", "--limit", "1000"]);
    assert!(
        listed
            .lines()
            .any(|line| line.contains("\"kind\":\"message.send\"")),
        "{label}: {listed}"
    );

    // Inbox actions.
    let (status, assigned) = api
        .post(
            &format!("/v1/conversations/{conversation_id}/assign"),
            json!({"agent": "agent-7"}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), assigned["assignee"].as_str()),
        (200, Some("agent-7"))
    );
    let (_, mine) = api.get("/v1/conversations?assignee=agent-7").await;
    assert_eq!(mine["data"].as_array().map(Vec::len), Some(1));
    let (status, read) = api
        .post(
            &format!("/v1/conversations/{conversation_id}/read"),
            json!({}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), read["unread"].as_i64()),
        (200, Some(0)),
        "{label}: {read}"
    );
    assert!(
        !fake.read_receipts().is_empty(),
        "{label}: Meta told the message was read"
    );
    let (status, _) = api
        .post(
            &format!("/v1/conversations/{conversation_id}/notes"),
            json!({"body": "VIP customer"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, closed) = api
        .post(
            &format!("/v1/conversations/{conversation_id}/close"),
            json!({}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), closed["status"].as_str()),
        (200, Some("closed"))
    );

    // Keywords are the tenant's to choose.
    let (status, settings) = api
        .put(
            "/v1/messaging/settings",
            json!({"opt_out_keywords": ["STOP", "Basta"], "opt_in_keywords": ["START", "Ciao"]}),
        )
        .await;
    assert_eq!(status, 200, "{label}: {settings}");
    let (status, _) = api
        .put(
            "/v1/messaging/settings",
            json!({"opt_out_keywords": ["X"], "opt_in_keywords": ["x"]}),
        )
        .await;
    assert_eq!(status, 422, "{label}: one word cannot mean both");
    let (_, status) = fake
        .inbound_text(ada, "Ada Lovelace", "BASTA")
        .await
        .expect("inbound");
    assert_eq!(status, 200);
    // The customer wrote again: the closed conversation is open again, unread.
    let (_, reopened) = api
        .get(&format!("/v1/conversations/{conversation_id}"))
        .await;
    assert_eq!(
        (reopened["status"].as_str(), reopened["unread"].as_i64()),
        (Some("open"), Some(1)),
        "{label}: {reopened}"
    );
    let (_, contact) = api.get(&format!("/v1/contacts/{contact_id}")).await;
    assert_eq!(
        contact["consent"]["whatsapp"]["status"], "opted_out",
        "{label}: {contact}"
    );
    let (_, status) = fake
        .inbound_text(ada, "Ada Lovelace", "unsubscribe")
        .await
        .expect("inbound");
    assert_eq!(status, 200);
    let (_, status) = fake
        .inbound_text(ada, "Ada Lovelace", "ciao")
        .await
        .expect("inbound");
    assert_eq!(status, 200);
    let (_, contact) = api.get(&format!("/v1/contacts/{contact_id}")).await;
    assert_eq!(
        contact["consent"]["whatsapp"]["status"], "opted_in",
        "{label}: UNSUBSCRIBE is no longer a keyword, Ciao is: {contact}"
    );

    // A retry with its Idempotency-Key answers as the first request did, even when the
    // request would now be refused (here: the month's allowance is used up since).
    let storage = server.storage().await;
    storage
        .tenant(&postdog_host::ids::TenantId::new(&tenant_id))
        .record_messages_sent(50_000, postdog_host::storage::now_ms())
        .await
        .expect("usage");
    storage.close().await;
    let (status, again) = send(reply.clone(), "reply-1").await;
    assert_eq!(
        (status, again["id"].as_str()),
        (200, Some(message_id.as_str())),
        "{label}: replay after the allowance ran out: {again}"
    );
    let (status, refused) = send(reply, "reply-2").await;
    assert_eq!(status, 402, "{label}: a new request is refused: {refused}");
}
