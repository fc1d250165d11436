//! Self-tests of the loopback Graph API fake (`postdog_tests::fake_graph`): driven
//! directly with reqwest, with a tiny axum receiver standing in for PostDog's webhook
//! endpoint. Signatures are recomputed here, independently of the fake.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::post;
use hmac::{Hmac, Mac};
use postdog_tests::FakeServer;
use postdog_tests::fake_graph::{Failure, FakeGraph, FakeGraphConfig, TemplateStatus, WebhookKind};
use serde_json::{Value, json};
use sha2::Sha256;

const TOKEN: &str = "test-access-token";
const SECRET: &str = "test-app-secret";
const CUSTOMER: &str = "447700900123";

thread_local! {
    // One client per test thread (each tokio test runs its runtime on its own thread).
    static CLIENT: reqwest::Client = reqwest::Client::new();
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
    json: Value,
}

impl Answer {
    fn code(&self) -> i64 {
        self.json["error"]["code"].as_i64().unwrap_or(-1)
    }

    fn details(&self) -> &str {
        self.json["error"]["error_data"]["details"]
            .as_str()
            .unwrap_or("")
    }
}

async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Answer {
    let mut request = CLIENT.with(Clone::clone).request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let response = request.send().await.expect("the fake answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        text,
        json,
    }
}

async fn get(url: &str) -> Answer {
    call(reqwest::Method::GET, url, Some(TOKEN), None).await
}

async fn post_json(url: &str, body: &Value) -> Answer {
    call(
        reqwest::Method::POST,
        url,
        Some(TOKEN),
        Some(body.to_string().into_bytes()),
    )
    .await
}

async fn send(graph: &FakeGraph, body: &Value) -> Answer {
    post_json(&graph.messages_url(), body).await
}

fn text_to(to: &str, body: &str) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": { "preview_url": false, "body": body },
    })
}

fn template_to(to: &str, name: &str, language: &str, params: &[&str]) -> Value {
    let parameters: Vec<Value> = params
        .iter()
        .map(|text| json!({ "type": "text", "text": text }))
        .collect();
    json!({
        "messaging_product": "whatsapp",
        "to": to,
        "type": "template",
        "template": {
            "name": name,
            "language": { "code": language },
            "components": [{ "type": "body", "parameters": parameters }],
        },
    })
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn unlimited() -> FakeGraphConfig {
    FakeGraphConfig {
        enforce_window: false,
        ..FakeGraphConfig::default()
    }
}

/// A stand-in for PostDog's webhook endpoint: records every POST, answers `answer`, and
/// plays the verification handshake with the token `verify-me`.
#[derive(Clone)]
struct Hooks {
    received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    answer: Arc<AtomicU16>,
}

impl Hooks {
    fn received(&self) -> Vec<(HeaderMap, Bytes)> {
        self.received.lock().expect("lock").clone()
    }

    fn bodies(&self) -> Vec<Value> {
        self.received()
            .iter()
            .map(|(_, body)| serde_json::from_slice(body).expect("JSON webhook"))
            .collect()
    }

    fn answer(&self, status: u16) {
        self.answer.store(status, Ordering::SeqCst);
    }
}

async fn receiver() -> (FakeServer, Hooks, String) {
    async fn record(
        State(hooks): State<Hooks>,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::http::StatusCode {
        hooks.received.lock().expect("lock").push((headers, body));
        axum::http::StatusCode::from_u16(hooks.answer.load(Ordering::SeqCst)).expect("status")
    }
    async fn verify(
        Query(query): Query<HashMap<String, String>>,
    ) -> (axum::http::StatusCode, String) {
        let mode = query.get("hub.mode").map(String::as_str);
        let token = query.get("hub.verify_token").map(String::as_str);
        match (mode, token, query.get("hub.challenge")) {
            (Some("subscribe"), Some("verify-me"), Some(challenge)) => {
                (axum::http::StatusCode::OK, challenge.clone())
            }
            _ => (axum::http::StatusCode::FORBIDDEN, "forbidden".into()),
        }
    }
    let hooks = Hooks {
        received: Arc::default(),
        answer: Arc::new(AtomicU16::new(200)),
    };
    let router = Router::new()
        .route("/hooks/{install}", post(record).get(verify))
        .with_state(hooks.clone());
    let server = FakeServer::start(router).await;
    let url = format!("{}/hooks/install-1", server.base_url());
    (server, hooks, url)
}

#[tokio::test]
async fn every_endpoint_needs_the_bearer_token() {
    let graph = FakeGraph::start(unlimited()).await;
    let body = text_to(CUSTOMER, "hi").to_string().into_bytes();
    let phones = format!("{}/v21.0/2000000001/phone_numbers", graph.base_url());
    for token in [None, Some("wrong-token"), Some("")] {
        let answer = call(
            reqwest::Method::POST,
            &graph.messages_url(),
            token,
            Some(body.clone()),
        )
        .await;
        assert_eq!(answer.status, 401, "{token:?}: {}", answer.text);
        assert_eq!(answer.code(), 190);
        assert_eq!(answer.json["error"]["type"], "OAuthException");
        assert_eq!(
            answer.json["error"]["message"],
            "Invalid OAuth access token."
        );
        assert!(
            answer.json["error"]["fbtrace_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty())
        );
        for url in [&phones, &graph.templates_url()] {
            let answer = call(reqwest::Method::GET, url, token, None).await;
            assert_eq!(answer.status, 401, "{url}");
            assert_eq!(answer.code(), 190);
        }
    }
    assert!(graph.sent().is_empty());
    assert_eq!(graph.send_attempts(), 3, "refused sends are attempts too");

    let answer = send(&graph, &text_to(CUSTOMER, "hi")).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(get(&phones).await.status, 200);
    // Graph also takes the token as a query parameter.
    let answer = call(
        reqwest::Method::GET,
        &format!("{phones}?access_token={TOKEN}"),
        None,
        None,
    )
    .await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn a_text_send_is_accepted_recorded_and_answered_like_meta() {
    let graph = FakeGraph::start(unlimited()).await;
    let first = send(&graph, &text_to(&format!("+{CUSTOMER}"), "Hello Ada")).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json["messaging_product"], "whatsapp");
    assert_eq!(first.json["contacts"][0]["input"], format!("+{CUSTOMER}"));
    assert_eq!(first.json["contacts"][0]["wa_id"], CUSTOMER);
    let wamid = first.json["messages"][0]["id"].as_str().expect("an id");
    assert!(wamid.starts_with("wamid."), "{wamid}");

    // Any version prefix is served.
    let url = format!("{}/v19.0/1000000001/messages", graph.base_url());
    let second = post_json(&url, &text_to(CUSTOMER, "Again")).await;
    assert_eq!(second.status, 200);
    assert_ne!(
        second.json["messages"][0]["id"],
        first.json["messages"][0]["id"]
    );

    let sent = graph.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].wamid, wamid);
    assert_eq!(sent[0].to, format!("+{CUSTOMER}"));
    assert_eq!(sent[0].wa_id, CUSTOMER);
    assert_eq!(sent[0].message_type, "text");
    assert_eq!(sent[0].text(), Some("Hello Ada"));
    assert_eq!(sent[0].body["text"]["preview_url"], false);
    assert!(sent[0].accepted_at <= graph.now());
    assert_eq!(
        graph.sent_message(wamid).map(|m| m.to),
        Some(format!("+{CUSTOMER}"))
    );
    assert_eq!(graph.send_attempts(), 2);
}

#[tokio::test]
async fn bad_shapes_answer_invalid_parameter_naming_the_field() {
    let graph = FakeGraph::start(unlimited()).await;
    let base = |kind: &str, content: Value| json!({ "messaging_product": "whatsapp", "to": CUSTOMER, "type": kind, kind: content });
    let buttons = |n: usize| {
        let buttons: Vec<Value> = (0..n)
            .map(|i| json!({ "type": "reply", "reply": { "id": format!("b{i}"), "title": format!("Option {i}") } }))
            .collect();
        json!({ "type": "button", "body": { "text": "Pick one" }, "action": { "buttons": buttons } })
    };
    let list = |rows: usize| {
        let rows: Vec<Value> = (0..rows)
            .map(|i| json!({ "id": format!("r{i}"), "title": format!("Row {i}") }))
            .collect();
        json!({
            "type": "list",
            "body": { "text": "Choose" },
            "action": { "button": "Menu", "sections": [{ "title": "All", "rows": rows }] },
        })
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({ "to": CUSTOMER, "type": "text", "text": { "body": "x" } }),
            "messaging_product",
        ),
        (
            json!({ "messaging_product": "sms", "to": CUSTOMER, "type": "text", "text": { "body": "x" } }),
            "messaging_product",
        ),
        (
            json!({ "messaging_product": "whatsapp", "type": "text", "text": { "body": "x" } }),
            "to",
        ),
        (text_to("call-me-maybe", "x"), "to"),
        (text_to("123", "x"), "to"),
        (base("carrier_pigeon", json!({})), "type"),
        (
            json!({ "messaging_product": "whatsapp", "to": CUSTOMER, "type": "text" }),
            "text",
        ),
        (text_to(CUSTOMER, ""), "text['body']"),
        (text_to(CUSTOMER, &"x".repeat(4097)), "text['body']"),
        (base("text", json!({ "body": 42 })), "text['body']"),
        (
            base("image", json!({ "link": "http://example.com/cat.jpg" })),
            "image['link']",
        ),
        (
            base("image", json!({ "caption": "no media" })),
            "image['link']",
        ),
        (
            base("document", json!({ "link": "not a url" })),
            "document['link']",
        ),
        (
            base("audio", json!({ "id": "123", "caption": "no" })),
            "audio['caption']",
        ),
        (base("interactive", buttons(4)), "buttons"),
        (base("interactive", buttons(0)), "buttons"),
        (base("interactive", list(11)), "rows"),
        (
            base("interactive", json!({ "type": "button" })),
            "interactive['action']",
        ),
        (
            base("template", json!({ "language": { "code": "en_US" } })),
            "template['name']",
        ),
        (
            base("template", json!({ "name": "order_update" })),
            "template['language']['code']",
        ),
        (
            base("location", json!({ "latitude": 100, "longitude": 0 })),
            "location['latitude']",
        ),
        (
            base("reaction", json!({ "emoji": "👍" })),
            "reaction['message_id']",
        ),
        (base("contacts", json!([])), "contacts"),
    ];
    for (body, field) in &cases {
        let answer = send(&graph, body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text);
        assert_eq!(answer.code(), 100, "{body}: {}", answer.text);
        assert_eq!(answer.json["error"]["message"], "(#100) Invalid parameter");
        assert!(
            answer.details().contains(field),
            "details of {body} should name {field}: {}",
            answer.details()
        );
    }
    assert!(
        graph.sent().is_empty(),
        "nothing invalid is recorded as sent"
    );
    assert_eq!(graph.send_attempts(), cases.len());

    let good = [
        text_to(CUSTOMER, &"x".repeat(4096)),
        base(
            "image",
            json!({ "link": "https://example.com/cat.jpg", "caption": "A cat" }),
        ),
        base("sticker", json!({ "id": "1234567890" })),
        base("interactive", buttons(3)),
        base("interactive", list(10)),
        base(
            "location",
            json!({ "latitude": 51.5, "longitude": -0.12, "name": "London" }),
        ),
        base(
            "reaction",
            json!({ "message_id": "wamid.ABC", "emoji": "👍" }),
        ),
        base(
            "contacts",
            json!([{ "name": { "formatted_name": "Ada Lovelace" } }]),
        ),
    ];
    for body in &good {
        let answer = send(&graph, body).await;
        assert_eq!(answer.status, 200, "{body}: {}", answer.text);
    }
    let types: Vec<String> = graph.sent().into_iter().map(|m| m.message_type).collect();
    assert_eq!(
        types,
        [
            "text",
            "image",
            "sticker",
            "interactive",
            "interactive",
            "location",
            "reaction",
            "contacts"
        ]
    );
}

#[tokio::test]
async fn templates_must_exist_be_approved_and_get_their_parameters() {
    let graph = FakeGraph::start(FakeGraphConfig::default()).await;
    graph.add_approved_template(
        "order_update",
        "en_US",
        "UTILITY",
        "Hi {{1}}, your order {{2}} has shipped.",
    );

    // Templates are allowed outside the 24-hour window.
    let ok = send(
        &graph,
        &template_to(CUSTOMER, "order_update", "en_US", &["Ada", "#42"]),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.json["messages"][0]["message_status"], "accepted");
    assert_eq!(graph.sent()[0].template_name(), Some("order_update"));

    let few = send(
        &graph,
        &template_to(CUSTOMER, "order_update", "en_US", &["Ada"]),
    )
    .await;
    assert_eq!((few.status, few.code()), (400, 132000), "{}", few.text);
    assert!(
        few.json["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("Number of parameters")
    );

    for (name, language) in [("order_update", "fr_FR"), ("no_such_template", "en_US")] {
        let missing = send(
            &graph,
            &template_to(CUSTOMER, name, language, &["Ada", "#42"]),
        )
        .await;
        assert_eq!(missing.code(), 132001, "{}", missing.text);
        assert_eq!(missing.status, 404);
        assert_eq!(
            missing.json["error"]["message"],
            "(#132001) Template name does not exist in the translation"
        );
    }

    // A template created through the API is PENDING until approved.
    let created = post_json(
        &graph.templates_url(),
        &json!({
            "name": "welcome",
            "language": "en_US",
            "category": "MARKETING",
            "components": [{ "type": "BODY", "text": "Welcome aboard!" }],
        }),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.text);
    let pending = send(&graph, &template_to(CUSTOMER, "welcome", "en_US", &[])).await;
    assert_eq!(pending.code(), 132001);
    assert_eq!(
        graph
            .approve_template("welcome", "en_US")
            .await
            .expect("exists"),
        None
    );
    let approved = send(&graph, &template_to(CUSTOMER, "welcome", "en_US", &[])).await;
    assert_eq!(approved.status, 200, "{}", approved.text);

    graph
        .pause_template("welcome", "en_US")
        .await
        .expect("exists");
    let paused = send(&graph, &template_to(CUSTOMER, "welcome", "en_US", &[])).await;
    assert_eq!((paused.status, paused.code()), (400, 132015));
    assert!(graph.approve_template("nope", "en_US").await.is_err());
    assert_eq!(graph.sent_count(), 2);
}

#[tokio::test]
async fn free_form_messages_need_the_24_hour_window() {
    let (_server, _hooks, url) = receiver().await;
    let graph = FakeGraph::start(FakeGraphConfig::default()).await;
    graph.set_webhook_target(&url);
    graph.add_approved_template("hello", "en_US", "MARKETING", "Hello there, friend.");

    let closed = send(&graph, &text_to(CUSTOMER, "hi")).await;
    assert_eq!(
        (closed.status, closed.code()),
        (400, 131047),
        "{}",
        closed.text
    );
    assert_eq!(
        closed.json["error"]["message"],
        "(#131047) Re-engagement message"
    );
    assert!(closed.details().contains("24 hours"));

    let (_, status) = graph
        .inbound_text(&format!("+{CUSTOMER}"), "Ada", "hello")
        .await
        .expect("delivered");
    assert_eq!(status, 200);
    assert_eq!(send(&graph, &text_to(CUSTOMER, "hi")).await.status, 200);
    // Another customer's window is still closed.
    assert_eq!(
        send(&graph, &text_to("447700900999", "hi")).await.code(),
        131047
    );

    graph.advance(Duration::from_secs(24 * 3600 - 60));
    assert_eq!(
        send(&graph, &text_to(CUSTOMER, "still open")).await.status,
        200
    );
    graph.advance(Duration::from_secs(120));
    let expired = send(&graph, &text_to(CUSTOMER, "too late")).await;
    assert_eq!(expired.code(), 131047, "{}", expired.text);
    let template = send(&graph, &template_to(CUSTOMER, "hello", "en_US", &[])).await;
    assert_eq!(
        template.status, 200,
        "templates need no window: {}",
        template.text
    );

    // A new inbound message reopens it; so does open_window.
    graph
        .inbound_text(CUSTOMER, "Ada", "back")
        .await
        .expect("delivered");
    assert_eq!(
        send(&graph, &text_to(CUSTOMER, "welcome back"))
            .await
            .status,
        200
    );
    graph.open_window("+447700900999");
    assert_eq!(
        send(&graph, &text_to("447700900999", "hi")).await.status,
        200
    );
    assert_eq!(graph.sent_count(), 5);
}

#[tokio::test]
async fn window_failures_can_arrive_by_webhook_as_in_production() {
    let (_server, hooks, url) = receiver().await;
    let graph = FakeGraph::start(FakeGraphConfig {
        window_failure_via_webhook: true,
        ..FakeGraphConfig::default()
    })
    .await;
    graph.set_webhook_target(&url);
    let accepted = send(&graph, &text_to(CUSTOMER, "hi")).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text);
    let wamid = accepted.json["messages"][0]["id"].as_str().expect("id");
    graph.flush().await;
    let bodies = hooks.bodies();
    assert_eq!(bodies.len(), 1);
    let status = &bodies[0]["entry"][0]["changes"][0]["value"]["statuses"][0];
    assert_eq!(status["id"], wamid);
    assert_eq!(status["status"], "failed");
    assert_eq!(status["recipient_id"], CUSTOMER);
    assert_eq!(status["errors"][0]["code"], 131047);
    assert!(graph.sent()[0].window_failed);
}

#[tokio::test]
async fn throughput_beyond_the_limit_answers_130429() {
    let graph = FakeGraph::start(FakeGraphConfig {
        throughput_per_second: Some(3),
        ..unlimited()
    })
    .await;
    for i in 0..3 {
        let answer = send(&graph, &text_to(&format!("4477009001{i:02}"), "hi")).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    let limited = send(&graph, &text_to("447700900199", "hi")).await;
    assert_eq!(limited.status, 429, "{}", limited.text);
    assert_eq!(limited.code(), 130429);
    assert_eq!(limited.json["error"]["message"], "(#130429) Rate limit hit");
    assert_eq!(limited.json["error"]["type"], "OAuthException");
    assert_eq!(graph.sent_count(), 3);

    graph.advance(Duration::from_millis(1001));
    assert_eq!(
        send(&graph, &text_to("447700900199", "hi")).await.status,
        200
    );
    assert_eq!(graph.send_attempts(), 5);
}

#[tokio::test]
async fn sends_to_one_recipient_too_close_together_answer_131056() {
    let graph = FakeGraph::start(FakeGraphConfig {
        pair_rate_limit: Some(Duration::from_secs(6)),
        ..unlimited()
    })
    .await;
    assert_eq!(send(&graph, &text_to(CUSTOMER, "one")).await.status, 200);
    let again = send(&graph, &text_to(CUSTOMER, "two")).await;
    assert_eq!(
        (again.status, again.code()),
        (400, 131056),
        "{}",
        again.text
    );
    assert_eq!(
        send(&graph, &text_to("447700900999", "other")).await.status,
        200
    );
    graph.advance(Duration::from_secs(6));
    assert_eq!(send(&graph, &text_to(CUSTOMER, "three")).await.status, 200);
}

#[tokio::test]
async fn scripted_failures_answer_the_next_sends_in_order() {
    let graph = FakeGraph::start(unlimited()).await;
    graph.fail_next(2, Failure::graph(131026));
    graph.fail_next(1, Failure::http(503));
    graph.fail_next(1, Failure::retry_after(7));
    graph.fail_next(1, Failure::graph(368));
    graph.fail_next(1, Failure::graph_with_status(130429, 400));
    graph.fail_next(1, Failure::graph(190));
    let body = text_to(CUSTOMER, "hi");

    for _ in 0..2 {
        let answer = send(&graph, &body).await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, 131026),
            "{}",
            answer.text
        );
        assert_eq!(
            answer.json["error"]["message"],
            "(#131026) Message undeliverable"
        );
    }
    let outage = send(&graph, &body).await;
    assert_eq!(outage.status, 503);
    assert!(
        outage.json.is_null(),
        "an outage answers no JSON: {}",
        outage.text
    );
    assert!(!outage.text.is_empty());

    let busy = send(&graph, &body).await;
    assert_eq!(busy.status, 429);
    assert_eq!(
        busy.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"7"[..])
    );
    assert_eq!(busy.code(), 130429);

    let blocked = send(&graph, &body).await;
    assert_eq!((blocked.status, blocked.code()), (403, 368));
    let limited = send(&graph, &body).await;
    assert_eq!((limited.status, limited.code()), (400, 130429));

    // Scripted failures come before the token check, and skip mark-as-read requests.
    let read = post_json(
        &graph.messages_url(),
        &json!({ "messaging_product": "whatsapp", "status": "read", "message_id": "wamid.X" }),
    )
    .await;
    assert_eq!(read.json, json!({ "success": true }));
    let expired = call(
        reqwest::Method::POST,
        &graph.messages_url(),
        Some("wrong"),
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!((expired.status, expired.code()), (401, 190));

    assert_eq!(send(&graph, &body).await.status, 200);
    assert_eq!(graph.send_attempts(), 8);
    assert_eq!(graph.sent_count(), 1);

    graph.fail_next(5, Failure::http(500));
    graph.clear_failures();
    assert_eq!(send(&graph, &body).await.status, 200);
}

#[tokio::test]
async fn templates_are_created_validated_and_listed_page_by_page() {
    let graph = FakeGraph::start(unlimited()).await;
    let template = |name: &str| {
        json!({
            "name": name,
            "language": "en_US",
            "category": "UTILITY",
            "components": [
                { "type": "HEADER", "format": "TEXT", "text": "Your order" },
                {
                    "type": "BODY",
                    "text": "Hi {{1}}, order {{2}} ships today.",
                    "example": { "body_text": [["Ada", "#42"]] },
                },
                { "type": "FOOTER", "text": "PostDog" },
                { "type": "BUTTONS", "buttons": [{ "type": "QUICK_REPLY", "text": "Thanks" }] },
            ],
        })
    };
    let names = ["t_one", "t_two", "t_three", "t_four", "t_five"];
    let mut ids = Vec::new();
    for name in names {
        let created = post_json(&graph.templates_url(), &template(name)).await;
        assert_eq!(created.status, 200, "{}", created.text);
        assert_eq!(created.json["status"], "PENDING");
        assert_eq!(created.json["category"], "UTILITY");
        ids.push(created.json["id"].as_str().expect("an id").to_string());
    }

    let duplicate = post_json(&graph.templates_url(), &template("t_one")).await;
    assert_eq!(
        (duplicate.status, duplicate.code()),
        (400, 100),
        "{}",
        duplicate.text
    );
    assert_eq!(duplicate.json["error"]["error_subcode"], 2388024);
    assert_eq!(
        duplicate.json["error"]["error_user_title"],
        "Message template already exists"
    );
    let mut other_language = template("t_one");
    other_language["language"] = "pt_BR".into();
    assert_eq!(
        post_json(&graph.templates_url(), &other_language)
            .await
            .status,
        200
    );

    let invalid = |patch: fn(&mut Value)| {
        let mut body = template("t_invalid");
        patch(&mut body);
        body
    };
    let cases: Vec<(Value, &str)> = vec![
        (invalid(|b| b["name"] = "Bad-Name".into()), "name"),
        (invalid(|b| b["category"] = "SPAM".into()), "category"),
        (
            invalid(|b| b["components"] = json!([{ "type": "FOOTER", "text": "x" }])),
            "BODY",
        ),
        (
            invalid(|b| b["components"][1]["text"] = "x".repeat(1025).into()),
            "text",
        ),
        (
            invalid(|b| b["components"][1]["text"] = "Hi {{1}} and {{3}}.".into()),
            "without gaps",
        ),
        (
            invalid(|b| b["components"][1]["example"] = Value::Null),
            "example",
        ),
        (
            invalid(|b| b["components"][2]["text"] = "f".repeat(61).into()),
            "components[2]",
        ),
    ];
    for (body, field) in &cases {
        let answer = post_json(&graph.templates_url(), body).await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, 100),
            "{body}: {}",
            answer.text
        );
        assert!(
            answer.details().contains(field),
            "{field}: {}",
            answer.details()
        );
    }
    let edge = post_json(
        &graph.templates_url(),
        &invalid(|b| b["components"][1]["text"] = "{{1}}, your order {{2}} ships.".into()),
    )
    .await;
    assert_eq!(
        edge.json["error"]["error_subcode"], 2388299,
        "{}",
        edge.text
    );

    // Page through with limit=2, following `paging.next`.
    let mut url = format!("{}?limit=2", graph.templates_url());
    let mut pages = Vec::new();
    loop {
        let page = get(&url).await;
        assert_eq!(page.status, 200, "{}", page.text);
        let data = page.json["data"].as_array().expect("data").clone();
        assert!(page.json["paging"]["cursors"]["before"].is_string());
        assert!(page.json["paging"]["cursors"]["after"].is_string());
        pages.push(
            data.iter()
                .map(|t| t["name"].as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>(),
        );
        match page.json["paging"]["next"].as_str() {
            Some(next) => {
                assert!(next.starts_with(&graph.base_url()), "{next}");
                url = next.to_string();
            }
            None => break,
        }
        assert!(pages.len() < 10, "paging must end");
    }
    assert_eq!(
        pages,
        vec![
            vec!["t_one", "t_two"],
            vec!["t_three", "t_four"],
            vec!["t_five", "t_one"]
        ]
    );

    // The `after` cursor of a page starts the next; `before` goes back.
    let first = get(&format!("{}?limit=2", graph.templates_url())).await;
    let after = first.json["paging"]["cursors"]["after"]
        .as_str()
        .expect("after");
    let second = get(&format!("{}?limit=2&after={after}", graph.templates_url())).await;
    assert_eq!(second.json["data"][0]["name"], "t_three");
    assert!(second.json["paging"]["previous"].is_string());
    let before = second.json["paging"]["cursors"]["before"]
        .as_str()
        .expect("before");
    let back = get(&format!(
        "{}?limit=2&before={before}",
        graph.templates_url()
    ))
    .await;
    assert_eq!(back.json["data"][0]["name"], "t_one");
    assert_eq!(back.json["data"][1]["name"], "t_two");
    let all = get(&format!("{}?limit=100", graph.templates_url())).await;
    assert_eq!(all.json["data"].as_array().map(Vec::len), Some(6));
    assert!(
        all.json["paging"]["next"].is_null(),
        "no next page: {}",
        all.text
    );
    let approved = get(&format!("{}?status=APPROVED", graph.templates_url())).await;
    assert_eq!(approved.json["data"], json!([]));
    let bad = get(&format!("{}?after=garbage!", graph.templates_url())).await;
    assert_eq!((bad.status, bad.code()), (400, 100));

    let stored = graph.templates();
    assert_eq!(stored.len(), 6);
    assert_eq!(stored[0].id, ids[0]);
    assert_eq!(stored[0].status, TemplateStatus::Pending);
    assert_eq!(stored[0].body_variable_count(), 2);
}

#[tokio::test]
async fn the_account_and_its_number_are_described_and_other_paths_refused() {
    let graph = FakeGraph::start(unlimited()).await;
    let phones = get(&format!(
        "{}/v21.0/2000000001/phone_numbers",
        graph.base_url()
    ))
    .await;
    assert_eq!(phones.status, 200);
    let number = &phones.json["data"][0];
    assert_eq!(number["id"], "1000000001");
    assert_eq!(number["display_phone_number"], "+1 555 0100");
    assert_eq!(number["verified_name"], "PostDog Test");
    assert_eq!(number["quality_rating"], "GREEN");
    assert_eq!(number["code_verification_status"], "VERIFIED");
    assert_eq!(number["name_status"], "APPROVED");
    assert_eq!(number["messaging_limit_tier"], "TIER_1K");
    assert_eq!(number["throughput"]["level"], "STANDARD");

    let account = get(&format!(
        "{}/v21.0/2000000001?fields=name,account_review_status,business_verification_status",
        graph.base_url()
    ))
    .await;
    assert_eq!(
        account.json,
        json!({
            "id": "2000000001",
            "name": "PostDog Test",
            "account_review_status": "APPROVED",
            "business_verification_status": "verified",
        })
    );

    for (method, path) in [
        (reqwest::Method::GET, "/v21.0/999/phone_numbers"),
        (reqwest::Method::POST, "/v21.0/999/messages"),
        (reqwest::Method::GET, "/v21.0/1000000001/messages"),
        (reqwest::Method::DELETE, "/v21.0/2000000001"),
        (reqwest::Method::GET, "/"),
        (
            reqwest::Method::GET,
            "/v21.0/2000000001/subscribed_apps/x/y",
        ),
    ] {
        let url = format!("{}{path}", graph.base_url());
        let answer = call(method.clone(), &url, Some(TOKEN), Some(b"{}".to_vec())).await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, 100),
            "{method} {path}: {}",
            answer.text
        );
        assert_eq!(answer.json["error"]["type"], "GraphMethodException");
        let message = answer.json["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.starts_with(&format!(
                "Unsupported {} request",
                method.as_str().to_lowercase()
            )),
            "{message}"
        );
    }
}

#[tokio::test]
async fn webhooks_are_signed_over_the_exact_bytes_in_metas_shape() {
    let (_server, hooks, url) = receiver().await;
    let graph = FakeGraph::start(FakeGraphConfig::default()).await;
    assert!(
        graph.inbound_text(CUSTOMER, "Ada", "hi").await.is_err(),
        "no target yet"
    );
    graph.set_webhook_target(&url);
    assert_eq!(graph.webhook_target().as_deref(), Some(url.as_str()));

    let (wamid, status) = graph
        .inbound_text("+447700900123", "Ada Lovelace", "Hello PostDog")
        .await
        .expect("delivered");
    assert_eq!(status, 200);
    let received = hooks.received();
    assert_eq!(received.len(), 1);
    let (headers, body) = &received[0];
    assert_eq!(headers["content-type"], "application/json");
    let signature = headers["x-hub-signature-256"].to_str().expect("ASCII");
    assert_eq!(
        signature,
        hmac_hex(SECRET, body),
        "HMAC-SHA256(app secret, raw body)"
    );
    assert_ne!(signature, hmac_hex("another-secret", body));
    assert_eq!(graph.sign(body), signature);

    let payload: Value = serde_json::from_slice(body).expect("JSON");
    assert_eq!(payload["object"], "whatsapp_business_account");
    let entry = &payload["entry"][0];
    assert_eq!(entry["id"], "2000000001");
    assert_eq!(entry["changes"][0]["field"], "messages");
    let value = &entry["changes"][0]["value"];
    assert_eq!(value["messaging_product"], "whatsapp");
    assert_eq!(value["metadata"]["phone_number_id"], "1000000001");
    assert_eq!(value["metadata"]["display_phone_number"], "15550100");
    assert_eq!(value["contacts"][0]["profile"]["name"], "Ada Lovelace");
    assert_eq!(value["contacts"][0]["wa_id"], CUSTOMER);
    let message = &value["messages"][0];
    assert_eq!(message["from"], CUSTOMER);
    assert_eq!(message["id"], wamid.as_str());
    assert_eq!(message["type"], "text");
    assert_eq!(message["text"]["body"], "Hello PostDog");
    let timestamp: u64 = message["timestamp"]
        .as_str()
        .expect("a string")
        .parse()
        .expect("unix seconds");
    let now = graph
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert!(timestamp <= now && now - timestamp < 60);

    // Meta's retry: the same bytes and signature again, and PostDog's answers recorded.
    hooks.answer(500);
    assert_eq!(graph.redeliver_last().await.expect("redelivered"), 500);
    let received = hooks.received();
    assert_eq!(received[1].1, received[0].1);
    assert_eq!(
        received[1].0["x-hub-signature-256"],
        received[0].0["x-hub-signature-256"]
    );
    hooks.answer(200);

    // Raw deliveries carry the signature header given, or none.
    let raw = br#"{"object":"whatsapp_business_account","entry":[]}"#.to_vec();
    assert_eq!(
        graph
            .deliver_raw(raw.clone(), Some("sha256=deadbeef".into()))
            .await
            .expect("sent"),
        200
    );
    assert_eq!(
        graph.deliver_raw(raw.clone(), None).await.expect("sent"),
        200
    );
    let received = hooks.received();
    assert_eq!(received[2].1, raw);
    assert_eq!(received[2].0["x-hub-signature-256"], "sha256=deadbeef");
    assert!(received[3].0.get("x-hub-signature-256").is_none());

    // Any inbound type, with the fake filling in from/id/timestamp.
    let (reply_id, _) = graph
        .inbound_message(
            CUSTOMER,
            "Ada",
            json!({
                "type": "interactive",
                "context": { "from": "15550100", "id": "wamid.OURS" },
                "interactive": { "type": "button_reply", "button_reply": { "id": "yes", "title": "Yes" } },
            }),
        )
        .await
        .expect("delivered");
    let last = hooks.bodies().pop().expect("a body");
    let message = &last["entry"][0]["changes"][0]["value"]["messages"][0];
    assert_eq!(message["id"], reply_id.as_str());
    assert_eq!(message["interactive"]["button_reply"]["id"], "yes");
    assert_eq!(message["context"]["id"], "wamid.OURS");
    assert!(
        graph
            .inbound_message(CUSTOMER, "Ada", json!("not an object"))
            .await
            .is_err()
    );

    let results = graph.webhook_results();
    let answers: Vec<(WebhookKind, Option<u16>)> =
        results.iter().map(|r| (r.kind, r.status)).collect();
    assert_eq!(
        answers,
        vec![
            (WebhookKind::Message, Some(200)),
            (WebhookKind::Message, Some(500)),
            (WebhookKind::Raw, Some(200)),
            (WebhookKind::Raw, Some(200)),
            (WebhookKind::Message, Some(200)),
        ]
    );
    assert_eq!(results[0].url, url);
    assert_eq!(results[0].signature.as_deref(), Some(signature));

    // A dead target is an error, recorded too.
    graph.set_webhook_target("http://127.0.0.1:9/hooks/nobody");
    assert!(graph.inbound_text(CUSTOMER, "Ada", "hi").await.is_err());
    let dead = graph.webhook_results().pop().expect("recorded");
    assert_eq!(dead.status, None);
    assert!(dead.error.is_some());
}

#[tokio::test]
async fn statuses_are_delivered_in_any_order_with_duplicates() {
    let (_server, hooks, url) = receiver().await;
    let graph = FakeGraph::start(unlimited()).await;
    graph.set_webhook_target(&url);
    let answer = send(&graph, &text_to(CUSTOMER, "hi")).await;
    let wamid = answer.json["messages"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();

    let answers = graph
        .status_webhooks_for(&wamid, &["read", "sent", "delivered"], true)
        .await
        .expect("delivered");
    assert_eq!(answers, vec![200; 6]);
    let statuses: Vec<Value> = hooks
        .bodies()
        .iter()
        .map(|body| body["entry"][0]["changes"][0]["value"]["statuses"][0].clone())
        .collect();
    let order: Vec<&str> = statuses
        .iter()
        .map(|s| s["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        order,
        ["read", "read", "sent", "sent", "delivered", "delivered"]
    );
    let time = |status: &Value| {
        status["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<u64>().ok())
            .expect("timestamp")
    };
    assert!(time(&statuses[2]) <= time(&statuses[4]) && time(&statuses[4]) <= time(&statuses[0]));
    for status in &statuses {
        assert_eq!(status["id"], wamid.as_str());
        assert_eq!(status["recipient_id"], CUSTOMER);
    }
    assert_eq!(statuses[2]["pricing"]["category"], "service");
    assert!(statuses[2]["conversation"]["id"].is_string());

    graph
        .deliver_status(&wamid, "failed", Some((131026, "Message undeliverable")))
        .await
        .expect("delivered");
    let failed = hooks.bodies().pop().expect("a body");
    let status = &failed["entry"][0]["changes"][0]["value"]["statuses"][0];
    assert_eq!(status["status"], "failed");
    assert_eq!(status["errors"][0]["code"], 131026);
    assert_eq!(status["errors"][0]["title"], "Message undeliverable");
}

#[tokio::test]
async fn automatic_statuses_arrive_shuffled_duplicated_and_batched() {
    let (_server, hooks, url) = receiver().await;
    let graph = FakeGraph::start(FakeGraphConfig {
        auto_statuses: true,
        seed: Some(7),
        ..unlimited()
    })
    .await;
    graph.set_webhook_target(&url);
    let mut wamids = Vec::new();
    for i in 0..12 {
        let answer = send(&graph, &text_to(&format!("4477009002{i:02}"), "hi")).await;
        assert_eq!(answer.status, 200);
        wamids.push(
            answer.json["messages"][0]["id"]
                .as_str()
                .expect("id")
                .to_string(),
        );
    }
    tokio::time::timeout(Duration::from_secs(10), graph.flush())
        .await
        .expect("deliveries finish");
    assert_eq!(graph.pending_deliveries(), 0);

    let received = hooks.received();
    let mut per_message: HashMap<String, Vec<String>> = HashMap::new();
    let mut batched = false;
    for (headers, body) in &received {
        assert_eq!(
            headers["x-hub-signature-256"].to_str().expect("ASCII"),
            hmac_hex(SECRET, body)
        );
        let payload: Value = serde_json::from_slice(body).expect("JSON");
        let statuses = payload["entry"][0]["changes"][0]["value"]["statuses"]
            .as_array()
            .expect("statuses")
            .clone();
        assert!(!statuses.is_empty() && statuses.len() <= 3);
        batched |= statuses.len() > 1;
        for status in statuses {
            per_message
                .entry(status["id"].as_str().expect("id").to_string())
                .or_default()
                .push(status["status"].as_str().expect("status").to_string());
        }
    }
    assert_eq!(per_message.len(), wamids.len());
    let mut duplicated = false;
    let mut out_of_order = false;
    for wamid in &wamids {
        let seen = &per_message[wamid];
        let distinct: HashSet<&str> = seen.iter().map(String::as_str).collect();
        assert_eq!(
            distinct,
            HashSet::from(["sent", "delivered", "read"]),
            "{wamid}: {seen:?}"
        );
        duplicated |= seen.len() > 3;
        let mut firsts: Vec<&str> = Vec::new();
        for status in seen {
            if !firsts.contains(&status.as_str()) {
                firsts.push(status);
            }
        }
        out_of_order |= firsts != ["sent", "delivered", "read"];
    }
    assert!(batched, "some payloads carry several statuses");
    assert!(duplicated, "some statuses are delivered twice");
    assert!(out_of_order, "some statuses arrive out of order");
    assert!(
        graph
            .webhook_results()
            .iter()
            .all(|r| r.kind == WebhookKind::Status && r.status == Some(200))
    );
}

#[tokio::test]
async fn template_status_changes_are_announced_by_webhook() {
    let (_server, hooks, url) = receiver().await;
    let graph = FakeGraph::start(unlimited()).await;
    graph.set_webhook_target(&url);
    let created = post_json(
        &graph.templates_url(),
        &json!({
            "name": "promo_spring",
            "language": "en_US",
            "category": "MARKETING",
            "components": [{ "type": "BODY", "text": "Spring sale!" }],
        }),
    )
    .await;
    let id = created.json["id"].as_str().expect("id").to_string();

    assert_eq!(
        graph
            .approve_template("promo_spring", "en_US")
            .await
            .expect("ok"),
        Some(200)
    );
    assert_eq!(
        graph
            .reject_template("promo_spring", "en_US", "INVALID_FORMAT")
            .await
            .expect("ok"),
        Some(200)
    );
    assert_eq!(
        graph
            .pause_template("promo_spring", "en_US")
            .await
            .expect("ok"),
        Some(200)
    );

    let received = hooks.received();
    assert_eq!(received.len(), 3);
    let events: Vec<Value> = received
        .iter()
        .map(|(headers, body)| {
            assert_eq!(
                headers["x-hub-signature-256"].to_str().expect("ASCII"),
                hmac_hex(SECRET, body)
            );
            let payload: Value = serde_json::from_slice(body).expect("JSON");
            assert_eq!(payload["object"], "whatsapp_business_account");
            assert_eq!(payload["entry"][0]["id"], "2000000001");
            let change = &payload["entry"][0]["changes"][0];
            assert_eq!(change["field"], "message_template_status_update");
            change["value"].clone()
        })
        .collect();
    assert_eq!(events[0]["event"], "APPROVED");
    assert_eq!(events[0]["message_template_id"].to_string(), id);
    assert_eq!(events[0]["message_template_name"], "promo_spring");
    assert_eq!(events[0]["message_template_language"], "en_US");
    assert_eq!(events[1]["event"], "REJECTED");
    assert_eq!(events[1]["reason"], "INVALID_FORMAT");
    assert_eq!(events[2]["event"], "PAUSED");
    let stored = graph.template("promo_spring", "en_US").expect("stored");
    assert_eq!(stored.status, TemplateStatus::Paused);
    assert!(
        graph
            .webhook_results()
            .iter()
            .all(|r| r.kind == WebhookKind::TemplateStatus)
    );
}

#[tokio::test]
async fn mark_as_read_is_acknowledged_and_recorded_apart() {
    let (_server, _hooks, url) = receiver().await;
    let graph = FakeGraph::start(FakeGraphConfig::default()).await;
    graph.set_webhook_target(&url);
    let (wamid, _) = graph
        .inbound_text(CUSTOMER, "Ada", "hi")
        .await
        .expect("delivered");
    let read = post_json(
        &graph.messages_url(),
        &json!({ "messaging_product": "whatsapp", "status": "read", "message_id": wamid }),
    )
    .await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json, json!({ "success": true }));
    let unknown = post_json(
        &graph.messages_url(),
        &json!({ "messaging_product": "whatsapp", "status": "read", "message_id": "wamid.UNKNOWN" }),
    )
    .await;
    assert_eq!(unknown.status, 200);
    let receipts = graph.read_receipts();
    assert_eq!(receipts.len(), 2);
    assert_eq!(receipts[0].message_id, wamid);
    assert!(receipts[0].known_inbound);
    assert!(!receipts[1].known_inbound);
    assert!(graph.sent().is_empty());
    assert_eq!(graph.send_attempts(), 0);
    let unauthorized = call(
        reqwest::Method::POST,
        &graph.messages_url(),
        None,
        Some(
            json!({ "messaging_product": "whatsapp", "status": "read", "message_id": wamid })
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!(unauthorized.status, 401);
}

#[tokio::test]
async fn the_subscription_handshake_is_played_against_the_hook() {
    let (_server, _hooks, url) = receiver().await;
    let graph = FakeGraph::start(unlimited()).await;
    let (status, body) = graph
        .verify_subscription(&url, "verify-me", "1158201444")
        .await
        .expect("answered");
    assert_eq!((status, body.as_str()), (200, "1158201444"));
    let (status, _) = graph
        .verify_subscription(&url, "wrong token", "1158201444")
        .await
        .expect("answered");
    assert_eq!(status, 403);
    assert!(
        graph
            .verify_subscription("not a url", "x", "1")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn hostile_requests_get_graph_errors_and_the_fake_keeps_serving() {
    let graph = FakeGraph::start(unlimited()).await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"not json".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"\"whatsapp\"".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x80],
        deep.into_bytes(),
        br#"{"messaging_product":"whatsapp","to":12345}"#.to_vec(),
        br#"{"messaging_product":"whatsapp","to":"447700900123","type":"text","text":"hi"}"#.to_vec(),
        br#"{"messaging_product":"whatsapp","to":"447700900123","type":"template","template":{"name":"x","language":{"code":"en"},"components":"x"}}"#.to_vec(),
        br#"{"messaging_product":"whatsapp","to":"447700900123","type":"template","template":{"name":"x","language":{"code":"en"},"components":[{"type":"body","parameters":[null]}]}}"#.to_vec(),
        br#"{"messaging_product":"whatsapp","to":"447700900123","type":"interactive","interactive":{"type":"list","body":{"text":"x"},"action":{"button":"b","sections":[{"rows":[{"id":"\u00e9\u00e9","title":"t","description":7}]}]}}}"#.to_vec(),
        br#"{"messaging_product":"whatsapp","to":"447700900123","type":"location","location":{"latitude":"NaN","longitude":1e400}}"#.to_vec(),
        br#"{"status":"read","message_id":null}"#.to_vec(),
        br#"{"name":"\u0000","language":[],"category":{},"components":[{"type":"BODY","text":"{{"}]}"#.to_vec(),
        br#"{"name":"ok_name","language":"en_US","category":"utility","components":[{"type":"BODY","text":"a {{1}}}} b {{ {{2}} c","example":{"body_text":[[]]}}]}"#.to_vec(),
    ];
    let urls = [graph.messages_url(), graph.templates_url()];
    for body in &bodies {
        for url in &urls {
            let answer = call(reqwest::Method::POST, url, Some(TOKEN), Some(body.clone())).await;
            assert!(
                (400..500).contains(&answer.status),
                "{url} {:?}: {} {}",
                String::from_utf8_lossy(body),
                answer.status,
                answer.text
            );
            assert!(answer.json["error"]["code"].is_i64(), "{}", answer.text);
        }
    }
    for query in [
        "?limit=abc",
        "?limit=-1",
        "?after=%ff%fe",
        "?before=",
        "?limit=0&after=dHBsOjk5OTk5OTk5OTk5OTk5OTk5OTk5OTk",
    ] {
        let answer = get(&format!("{}{query}", graph.templates_url())).await;
        assert!(
            answer.status == 200 || answer.status == 400,
            "{query}: {}",
            answer.text
        );
    }
    for path in [
        "/v21.0",
        "//",
        "/%ff/messages",
        "/v/1000000001/messages",
        "/v21.0/1000000001/messages/extra",
    ] {
        let answer = get(&format!("{}{path}", graph.base_url())).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.text);
    }
    assert_eq!(
        send(&graph, &text_to(CUSTOMER, "still alive")).await.status,
        200
    );
    assert_eq!(graph.sent_count(), 1);
}
