//! The runtime's good paths with the example plugins: flow actions with kv and config,
//! a channel connector talking to a loopback fake of its API, the compile cache.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use postdog_host::ids::TenantId;
use postdog_host::runtime::abi::channel_types::{
    ChannelError, InboundContent, InboundEvent, OutboundMessage,
};
use postdog_host::runtime::abi::types::{Effect, HttpRequest, MessageContent, TextMessage};
use postdog_host::runtime::{CacheOutcome, World};
use postdog_host::storage::testing;
use postdog_tests::{FakeServer, action_input, context, plugin_bytes, runtime_with};
use serde_json::{Value, json};

#[tokio::test]
async fn hello_action_describes_itself_and_returns_effects() {
    let runtime = runtime_with(None, None, &[]);
    let hello = runtime
        .load_as(&plugin_bytes("hello_action"), World::FlowAction)
        .expect("loads");
    let ctx = context(
        &TenantId::new("t1"),
        "i1",
        &[],
        &[("greeting", "Howdy")],
        &[("greeting", "SECRET")],
    );
    let descriptor = runtime
        .action_describe(&hello, &ctx)
        .await
        .expect("describe");
    assert_eq!(
        descriptor
            .ports
            .iter()
            .map(|port| port.name.as_str())
            .collect::<Vec<_>>(),
        ["next"]
    );
    let schema: Value =
        serde_json::from_str(&descriptor.config_schema).expect("the schema is JSON");
    assert_eq!(schema["properties"]["greeting"]["type"], "string");

    // The install config's greeting is used (never the secret of the same name).
    let result = runtime
        .action_run(
            &hello,
            &ctx,
            &action_input(json!({}), Some(json!({"name": "Ada"}))),
        )
        .await
        .expect("runs")
        .expect("succeeds");
    assert_eq!(
        serde_json::from_str::<Value>(&result.output).expect("JSON"),
        json!({"message": "Howdy, Ada!"})
    );
    let [Effect::SendMessage(send)] = result.effects.as_slice() else {
        panic!("expected one send-message effect, got {:?}", result.effects);
    };
    assert!(
        matches!(&send.content, MessageContent::Text(TextMessage { body, .. }) if body == "Howdy, Ada!")
    );

    // The node's config wins over the install's.
    let result = runtime
        .action_run(&hello, &ctx, &action_input(json!({"greeting": "Hi"}), None))
        .await
        .expect("runs")
        .expect("succeeds");
    assert_eq!(
        serde_json::from_str::<Value>(&result.output).expect("JSON")["message"],
        "Hi, there!"
    );
}

#[tokio::test]
async fn kv_state_persists_between_calls_per_tenant_and_install() {
    for database in testing::all_backends().await.expect("test databases") {
        let storage = database.storage.clone();
        let tenant_a = storage.create_tenant("A", "pro").await.expect("tenant").id;
        let tenant_b = storage.create_tenant("B", "pro").await.expect("tenant").id;
        let runtime = runtime_with(Some(storage.clone()), None, &[]);
        let hello = runtime
            .load_as(&plugin_bytes("hello_action"), World::FlowAction)
            .expect("loads");
        let count = |tenant: TenantId, install: &'static str| {
            let (runtime, hello) = (runtime.clone(), hello.clone());
            async move {
                let ctx = context(&tenant, install, &["kv"], &[], &[]);
                let input = action_input(
                    json!({"count_greetings": true}),
                    Some(json!({"id": "c1", "name": "Ada"})),
                );
                let result = runtime
                    .action_run(&hello, &ctx, &input)
                    .await
                    .expect("runs")
                    .expect("succeeds");
                serde_json::from_str::<Value>(&result.output).expect("JSON")["count"].clone()
            }
        };
        assert_eq!(
            count(tenant_a.clone(), "one").await,
            json!(1),
            "{}",
            database.label
        );
        assert_eq!(
            count(tenant_a.clone(), "one").await,
            json!(2),
            "{}",
            database.label
        );
        assert_eq!(
            count(tenant_a.clone(), "two").await,
            json!(1),
            "{}",
            database.label
        );
        assert_eq!(
            count(tenant_b.clone(), "one").await,
            json!(1),
            "{}",
            database.label
        );
        assert_eq!(count(tenant_a, "one").await, json!(3), "{}", database.label);
    }
}

/// What the fake API received: (Authorization header, JSON body) per request.
type Received = Arc<Mutex<Vec<(Option<String>, Value)>>>;

#[derive(Clone, Default)]
struct EchoApi {
    received: Received,
}

async fn echo_messages(
    State(api): State<EchoApi>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let auth = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    api.received
        .lock()
        .expect("lock")
        .push((auth.clone(), json.clone()));
    if auth.as_deref() != Some("Bearer good-token") {
        return (
            StatusCode::UNAUTHORIZED,
            [("retry-after", "0")],
            "bad token".to_string(),
        )
            .into_response();
    }
    if json["text"] == "slow down" {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7")],
            "rate limited".to_string(),
        )
            .into_response();
    }
    (
        StatusCode::OK,
        axum::Json(
            json!({"id": format!("echo-{}", json["idempotency_key"].as_str().unwrap_or(""))}),
        ),
    )
        .into_response()
}

fn text_message(id: &str, text: &str) -> OutboundMessage {
    OutboundMessage {
        message_id: id.into(),
        to: "+14155550123".into(),
        content: MessageContent::Text(TextMessage {
            body: text.into(),
            preview_url: false,
        }),
        reply_to: None,
    }
}

#[tokio::test]
async fn echo_channel_sends_through_a_loopback_fake_of_its_api() {
    let api = EchoApi::default();
    let fake = FakeServer::start(
        Router::new()
            .route("/v1/messages", post(echo_messages))
            .with_state(api.clone()),
    )
    .await;
    let runtime = runtime_with(None, None, &[("api.echo.test", fake.base_url())]);
    let echo = runtime
        .load_as(&plugin_bytes("echo_channel"), World::MessagingChannel)
        .expect("loads");
    let tenant = TenantId::new("t1");
    let config = [("endpoint", "https://api.echo.test")];
    let ctx = context(
        &tenant,
        "echo",
        &["http:api.echo.test"],
        &config,
        &[("api_token", "good-token")],
    );

    let receipt = runtime
        .channel_send(&echo, &ctx, &text_message("m1", "hello"))
        .await
        .expect("call")
        .expect("sent");
    assert_eq!(receipt.provider_message_id, "echo-m1");
    let received = api.received.lock().expect("lock").clone();
    assert_eq!(
        received,
        vec![(
            Some("Bearer good-token".to_string()),
            json!({"to": "+14155550123", "text": "hello", "idempotency_key": "m1"})
        )]
    );

    let error = runtime
        .channel_send(&echo, &ctx, &text_message("m2", "slow down"))
        .await
        .expect("call")
        .unwrap_err();
    let ChannelError::RateLimited(details) = error else {
        panic!("expected rate-limited, got {error:?}")
    };
    assert_eq!(
        (details.code, details.retry_after_ms, details.retryable),
        (429, Some(7000), true)
    );

    let bad = context(
        &tenant,
        "echo",
        &["http:api.echo.test"],
        &config,
        &[("api_token", "wrong")],
    );
    let error = runtime
        .channel_send(&echo, &bad, &text_message("m3", "hi"))
        .await
        .expect("call")
        .unwrap_err();
    assert!(
        matches!(error, ChannelError::AuthFailed(ref details) if details.code == 401),
        "{error:?}"
    );

    // Without the http grant the connector cannot reach its API at all.
    let ungranted = context(
        &tenant,
        "echo",
        &[],
        &config,
        &[("api_token", "good-token")],
    );
    let error = runtime
        .channel_send(&echo, &ungranted, &text_message("m4", "hi"))
        .await
        .expect("call")
        .unwrap_err();
    assert!(
        matches!(error, ChannelError::Transport(ref text) if text.contains("denied")),
        "{error:?}"
    );
    assert_eq!(
        api.received.lock().expect("lock").len(),
        3,
        "the ungranted call never reached the API"
    );
}

fn webhook(token: &str, body: &str) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: vec![
            ("X-Echo-Token".into(), token.into()),
            ("content-type".into(), "application/json".into()),
        ],
        body: body.as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn echo_channel_verifies_and_parses_webhooks() {
    let runtime = runtime_with(None, None, &[]);
    let echo = runtime
        .load_as(&plugin_bytes("echo_channel"), World::MessagingChannel)
        .expect("loads");
    let ctx = context(
        &TenantId::new("t1"),
        "echo",
        &[],
        &[],
        &[("webhook_token", "hook-secret")],
    );

    let handshake = HttpRequest {
        method: "GET".into(),
        path: "/".into(),
        query: "challenge=abc%20123&token=hook-secret".into(),
        headers: vec![],
        body: vec![],
    };
    let response = runtime
        .channel_verify_webhook(&echo, &ctx, &handshake)
        .await
        .expect("call")
        .expect("verified");
    assert_eq!(
        (response.status, response.body.as_slice()),
        (200, b"abc 123".as_slice())
    );
    let forged = HttpRequest {
        query: "challenge=abc&token=nope".into(),
        ..handshake
    };
    assert!(matches!(
        runtime
            .channel_verify_webhook(&echo, &ctx, &forged)
            .await
            .expect("call"),
        Err(ChannelError::Unauthorized(_))
    ));

    let body = r#"{"messages":[{"id":"in-1","from":"+14155550123","name":"Ada","text":"hi","timestamp":1700000000}],
                   "statuses":[{"id":"echo-m1","recipient":"+14155550123","status":"delivered","timestamp":1700000001}]}"#;
    let outcome = runtime
        .channel_handle_webhook(&echo, &ctx, &webhook("hook-secret", body))
        .await
        .expect("call")
        .expect("accepted");
    assert_eq!(outcome.response.status, 200);
    let [InboundEvent::Message(message), InboundEvent::Status(status)] = outcome.events.as_slice()
    else {
        panic!("expected a message and a status, got {:?}", outcome.events);
    };
    assert_eq!(
        (
            message.provider_message_id.as_str(),
            message.sender.as_str(),
            message.timestamp_ms
        ),
        ("in-1", "+14155550123", 1_700_000_000_000)
    );
    assert!(matches!(&message.content, InboundContent::Text(text) if text == "hi"));
    assert_eq!(status.provider_message_id, "echo-m1");

    let error = runtime
        .channel_handle_webhook(&echo, &ctx, &webhook("wrong", body))
        .await
        .expect("call")
        .unwrap_err();
    assert!(matches!(error, ChannelError::Unauthorized(_)), "{error:?}");
    let error = runtime
        .channel_handle_webhook(&echo, &ctx, &webhook("hook-secret", "{not json"))
        .await
        .expect("call")
        .unwrap_err();
    assert!(
        matches!(error, ChannelError::MalformedWebhook(ref text) if text.contains("not JSON")),
        "{error:?}"
    );
    let error = runtime
        .channel_handle_webhook(
            &echo,
            &ctx,
            &webhook("hook-secret", r#"{"messages":[{"id":"x"}]}"#),
        )
        .await
        .expect("call")
        .unwrap_err();
    assert!(
        matches!(error, ChannelError::MalformedWebhook(ref text) if text.contains("messages[0].from")),
        "{error:?}"
    );
}

#[tokio::test]
async fn the_compile_cache_survives_a_restart_and_repairs_itself() {
    let cache = tempfile::tempdir().expect("tempdir");
    let bytes = plugin_bytes("hello_action");
    let first = runtime_with(None, Some(cache.path().to_path_buf()), &[]);
    assert_eq!(
        first.load(&bytes).expect("loads").cache_outcome(),
        CacheOutcome::Miss
    );
    drop(first);
    // A "restart": a new runtime (new engine) with the same cache directory.
    let second = runtime_with(None, Some(cache.path().to_path_buf()), &[]);
    let plugin = second.load(&bytes).expect("loads");
    assert_eq!(plugin.cache_outcome(), CacheOutcome::Hit);
    let ctx = context(&TenantId::new("t1"), "i1", &[], &[], &[]);
    assert!(
        second
            .action_run(&plugin, &ctx, &action_input(json!({}), None))
            .await
            .expect("runs")
            .is_ok()
    );

    // A corrupted artifact is discarded and rebuilt, never loaded. (The runtime maps
    // artifacts into memory and replaces them only by rename; overwrite this one in place
    // only once nothing maps it.)
    drop(plugin);
    drop(second);
    let artifact = std::fs::read_dir(cache.path())
        .expect("cache dir")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .expect("an artifact was written");
    std::fs::write(&artifact, b"garbage").expect("corrupt it");
    let third = runtime_with(None, Some(cache.path().to_path_buf()), &[]);
    let plugin = third.load(&bytes).expect("loads");
    assert_eq!(plugin.cache_outcome(), CacheOutcome::Miss);
    assert!(
        third
            .action_run(&plugin, &ctx, &action_input(json!({}), None))
            .await
            .expect("runs")
            .is_ok()
    );
}
