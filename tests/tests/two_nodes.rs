//! Two `postdog serve` nodes on one PostgreSQL database, sharing a directory registry and
//! the operator's secrets key (what a multi-node deployment shares): an install,
//! a configuration change, a disable and a hot-loaded upgrade made through either node
//! are seen by the other without a restart. The time each took to show on the other
//! node is printed (the design bound is one second: a cached install is re-checked
//! against its row at most a second after it was last checked).

use std::time::{Duration, Instant};

use postdog_registry::{Artifact, Registry};
use postdog_tests::{Api, PostdogServer, example_manifest, plugin_bytes};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Calls `id` through `api` until `check` accepts the (status, answer); how long it took.
async fn until(api: &Api, id: &str, check: impl Fn(StatusCode, &Value) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let (status, answer) = api
            .post(
                &format!("/v1/installs/{id}/call"),
                json!({"input": {"contact": {"name": "Ada"}}}),
            )
            .await;
        if check(status, &answer) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never seen: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn message(answer: &Value) -> String {
    answer["ok"]["output"]
        .as_str()
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .and_then(|output| output["message"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[tokio::test]
async fn two_nodes_on_one_postgres_see_each_others_changes() {
    let Some(database) = postdog_host::storage::testing::postgres()
        .await
        .expect("a PostgreSQL test database")
    else {
        return;
    };
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
    ];
    let first = PostdogServer::start_with(Some(database.url.clone()), &env).await;
    let second = PostdogServer::start_with(Some(database.url.clone()), &env).await;

    // A tenant made through one node authenticates on the other.
    let (a, _) = Api::tenant(&first, "pro").await;
    let b = Api::new(&second, &a.key);

    // Install through A, call through B.
    let (status, install) = a
        .post(
            "/v1/installs",
            json!({"plugin": "postdog/hello-action", "version": "^0.1", "grants": ["kv"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{install}");
    let id = install["id"].as_str().expect("id").to_string();
    let seen = until(&b, &id, |status, answer| {
        status == StatusCode::OK && message(answer) == "Hello, Ada!"
    })
    .await;
    eprintln!("install made on A callable on B after {seen:?}");

    // A configuration change on A reaches B's cached install.
    let (status, _) = a
        .patch(
            &format!("/v1/installs/{id}"),
            json!({"config": {"greeting": "Hej"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let seen = until(&b, &id, |_, answer| message(answer) == "Hej, Ada!").await;
    eprintln!("config change on A seen by B after {seen:?}");

    // A secret rotated through A is used by B's cached install.
    let (status, echo) = a
        .post(
            "/v1/installs",
            json!({"plugin": "postdog/echo-channel", "grants": ["http:api.echo.example", "webhook"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{echo}");
    let echo_id = echo["id"].as_str().expect("id").to_string();
    for (token, other) in [
        ("first-token", "second-token"),
        ("second-token", "first-token"),
    ] {
        let (status, _) = a
            .put(
                &format!("/v1/installs/{echo_id}/secrets/webhook_token"),
                json!({"value": token}),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let started = Instant::now();
        loop {
            let (status, answer) = handshake_with(&b, &echo_id, token).await;
            if status == StatusCode::OK && answer["ok"].is_object() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "B never used {token}: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("secret set on A used by B after {:?}", started.elapsed());
        let (_, refused) = handshake_with(&b, &echo_id, other).await;
        assert!(
            refused["error"].is_object(),
            "the old secret still works: {refused}"
        );
    }

    // Disable on B; A refuses calls.
    let (status, _) = b
        .patch(&format!("/v1/installs/{id}"), json!({"enabled": false}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let seen = until(&a, &id, |status, _| status == StatusCode::CONFLICT).await;
    eprintln!("disable on B seen by A after {seen:?}");
    let (status, _) = b
        .patch(&format!("/v1/installs/{id}"), json!({"enabled": true}))
        .await;
    assert_eq!(status, StatusCode::OK);
    until(&a, &id, |status, _| status == StatusCode::OK).await;

    // A version published to the shared registry moves the install on both nodes.
    let operator_key = postdog_registry::PublisherKey::from_file_text(
        &std::fs::read_to_string(shared.path().join("operator.key")).expect("operator key"),
    )
    .expect("key file");
    let manifest = example_manifest("hello-action", "0.1.1");
    let registry = Registry::open(&env[0].1).expect("registry");
    let artifact =
        Artifact::build(&manifest, plugin_bytes("hello_action"), &operator_key).expect("artifact");
    let published = Instant::now();
    registry
        .publish(&artifact.to_bytes())
        .await
        .expect("published");
    for (node, api) in [("A", &a), ("B", &b)] {
        loop {
            let (_, install) = api.get(&format!("/v1/installs/{id}")).await;
            if install["version"] == "0.1.1" {
                break;
            }
            assert!(
                published.elapsed() < Duration::from_secs(15),
                "node {node} never moved: {install}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "version 0.1.1 shown by node {node} after {:?}",
            published.elapsed()
        );
        let (status, answer) = api
            .post(&format!("/v1/installs/{id}/call"), json!({"input": {}}))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let (_, install) = b.get(&format!("/v1/installs/{id}")).await;
    assert_eq!(
        install["previous_version"], "0.1.0",
        "moved once, not twice: {install}"
    );
}

/// Calls the echo channel's webhook handshake, which answers the challenge only when the
/// token equals the install's `webhook_token` secret.
async fn handshake(api: &Api, id: &str) -> (StatusCode, Value) {
    handshake_with(api, id, "hook-secret").await
}

async fn handshake_with(api: &Api, id: &str, token: &str) -> (StatusCode, Value) {
    api.post(
        &format!("/v1/installs/{id}/call"),
        json!({"function": "verify-webhook", "input": {
            "method": "GET", "path": "/", "query": format!("challenge=ping&token={token}"),
            "headers": [], "body": []}}),
    )
    .await
}

#[tokio::test]
async fn secrets_survive_a_rotation_of_the_operator_key() {
    let Some(database) = postdog_host::storage::testing::postgres()
        .await
        .expect("a PostgreSQL test database")
    else {
        return;
    };
    let shared = tempfile::tempdir().expect("tempdir");
    let (old_key, new_key) = (
        postdog_host::secrets::SecretKeys::generate_base64(),
        postdog_host::secrets::SecretKeys::generate_base64(),
    );
    let env = |keys: Vec<(&'static str, String)>| {
        let mut env = vec![
            (
                "POSTDOG_REGISTRY",
                shared.path().join("registry").display().to_string(),
            ),
            (
                "POSTDOG_OPERATOR_KEY_FILE",
                shared.path().join("operator.key").display().to_string(),
            ),
        ];
        env.extend(keys);
        env
    };

    // Set a secret under the old key.
    let server = PostdogServer::start_with(
        Some(database.url.clone()),
        &env(vec![("POSTDOG_SECRETS_KEY", old_key.clone())]),
    )
    .await;
    let (api, _) = Api::tenant(&server, "pro").await;
    let (status, install) = api
        .post("/v1/installs", json!({"plugin": "postdog/echo-channel", "grants": ["http:api.echo.example", "webhook"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{install}");
    let id = install["id"].as_str().expect("id").to_string();
    let (status, _) = api
        .put(
            &format!("/v1/installs/{id}/secrets/webhook_token"),
            json!({"value": "hook-secret"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, answer) = handshake(&api, &id).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["ok"].is_object(), "the handshake failed: {answer}");
    let key = api.key.clone();
    drop(server);

    // A server with only a new key cannot open it (and says so, without leaking it).
    let server = PostdogServer::start_with(
        Some(database.url.clone()),
        &env(vec![("POSTDOG_SECRETS_KEY", new_key.clone())]),
    )
    .await;
    let (status, answer) = handshake(&Api::new(&server, &key), &id).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(
        answer["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("secrets-unavailable"))
    );
    drop(server);

    // Rotation: the new key with the old one as previous re-seals on start…
    let server = PostdogServer::start_with(
        Some(database.url.clone()),
        &env(vec![
            ("POSTDOG_SECRETS_KEY", new_key.clone()),
            ("POSTDOG_SECRETS_PREVIOUS_KEYS", old_key),
        ]),
    )
    .await;
    let (status, answer) = handshake(&Api::new(&server, &key), &id).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    drop(server);

    // …so afterwards the old key is no longer needed.
    let server = PostdogServer::start_with(
        Some(database.url.clone()),
        &env(vec![("POSTDOG_SECRETS_KEY", new_key)]),
    )
    .await;
    let (status, answer) = handshake(&Api::new(&server, &key), &id).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["ok"].is_object(), "{answer}");
}
