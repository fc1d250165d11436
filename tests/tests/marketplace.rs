//! The marketplace through the real HTTP API of a running `postdog serve`, on SQLite and
//! PostgreSQL, with real components published as signed artifacts into the server's
//! embedded directory registry: browse, install with grants (refused while a requested
//! capability is ungranted), config validated against the manifest's schema, secrets
//! that are never returned, calls, hot-load of a newly published version without a
//! restart, rollback (pins), pin, upgrade, disable, a capability the manifest did not
//! request answered `denied` at the host import, a circuit breaker after repeated
//! failures, and installs invisible to other tenants.

use std::time::{Duration, Instant};

use postdog_registry::{Artifact, PublisherKey, Registry};
use postdog_tests::{Api, PostdogServer, example_manifest, plugin_bytes};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn publish(registry: &Registry, key: &PublisherKey, manifest: &str, component: &str) {
    let artifact =
        Artifact::build(manifest, plugin_bytes(component), key).expect("a valid artifact");
    registry
        .publish(&artifact.to_bytes())
        .await
        .expect("published");
}

/// The action's `output` from a call's answer (JSON text inside the result).
fn output(answer: &Value) -> Value {
    match &answer["ok"]["output"] {
        Value::String(text) => serde_json::from_str(text).expect("output is JSON"),
        other => other.clone(),
    }
}

/// Polls an install until `check` holds (the watcher runs every second).
async fn eventually(api: &Api, id: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, install) = api.get(&format!("/v1/installs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{install}");
        if check(&install) {
            return install;
        }
        assert!(Instant::now() < deadline, "condition never held: {install}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn scenario(server: &PostdogServer) {
    let registry = postdog_tests::server_registry(server);
    let key = postdog_tests::operator_key(server);
    let (api, _) = Api::tenant(server, "pro").await;
    let (other, _) = Api::tenant(server, "pro").await;

    // The first-party plugins are in the marketplace of a fresh server, ready to install.
    let (status, shipped) = api.get("/v1/marketplace").await;
    assert_eq!(status, StatusCode::OK, "{shipped}");
    let mut names: Vec<&str> = shipped["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "postdog/add-tag",
            "postdog/assign",
            "postdog/condition",
            "postdog/echo-channel",
            "postdog/end",
            "postdog/hello-action",
            "postdog/http-request",
            "postdog/remove-tag",
            "postdog/send-message",
            "postdog/set-field",
            "postdog/wait",
            "postdog/wait-for-reply",
            "postdog/whatsapp"
        ]
    );
    let (status, first) = other
        .post(
            "/v1/installs",
            json!({"plugin": "postdog/hello-action", "version": "^0.1", "grants": ["kv"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let first_id = first["id"].as_str().expect("id").to_string();
    let (status, answer) = other
        .post(
            &format!("/v1/installs/{first_id}/call"),
            json!({"input": {"contact": {"name": "Grace"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(output(&answer)["message"], "Hello, Grace!");
    // Only the operator's key may publish as `postdog`.
    let stranger = PublisherKey::generate().expect("key");
    let forged = Artifact::build(
        &example_manifest("hello-action", "9.0.0"),
        plugin_bytes("hello_action"),
        &stranger,
    )
    .expect("artifact");
    assert!(registry.publish(&forged.to_bytes()).await.is_err());

    publish(
        &registry,
        &key,
        &example_manifest("hello-action", "1.0.0"),
        "hello_action",
    )
    .await;

    // Browse.
    let (status, found) = api.get("/v1/marketplace?q=greets").await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let names: Vec<&str> = found["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["postdog/hello-action"]);
    let (_, developer) = api.get("/v1/marketplace?category=developer").await;
    assert_eq!(
        developer["data"][0]["name"], "postdog/echo-channel",
        "{developer}"
    );
    let (status, _) = api.get("/v1/marketplace?category=nonsense").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, versions) = api.get("/v1/marketplace/postdog/hello-action").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(versions["data"][0]["capabilities"], json!(["kv"]));

    // Install: refused until the requested capability is granted.
    let (status, refused) = api
        .post(
            "/v1/installs",
            json!({"plugin": "postdog/hello-action", "version": "^1.0"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["missing"], json!(["kv"]));
    let (status, bad) = api
        .post(
            "/v1/installs",
            json!({"plugin": "postdog/hello-action", "version": "one", "grants": ["kv"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    let (status, missing) = api
        .post(
            "/v1/installs",
            json!({"plugin": "acme/nothing", "grants": []}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    let (status, install) = api
        .post(
            "/v1/installs",
            json!({"plugin": "postdog/hello-action", "version": "^1.0", "grants": ["kv"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{install}");
    assert_eq!(install["version"], "1.0.0");
    assert_eq!(install["health"]["circuit"], "closed");
    let id = install["id"].as_str().expect("id").to_string();

    // Config is checked against the manifest's schema.
    let (status, invalid) = api
        .patch(
            &format!("/v1/installs/{id}"),
            json!({"config": {"greeting": 5}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{invalid}");
    assert_eq!(invalid["errors"][0]["key"], "greeting");
    let (status, unknown) = api
        .patch(
            &format!("/v1/installs/{id}"),
            json!({"config": {"greting": "Hi"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{unknown}");
    let (status, _) = api
        .patch(
            &format!("/v1/installs/{id}"),
            json!({"config": {"greeting": "Hi", "count_greetings": true}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // A call runs with the install's config and its granted kv.
    let run = json!({"input": {"contact": {"id": "c1", "name": "Ada"}}});
    let (status, answer) = api
        .post(&format!("/v1/installs/{id}/call"), run.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        output(&answer),
        json!({"message": "Hi, Ada!", "count": 1}),
        "{answer}"
    );

    // Another tenant sees and touches nothing.
    for (status, _) in [
        other.get(&format!("/v1/installs/{id}")).await,
        other
            .post(&format!("/v1/installs/{id}/call"), run.clone())
            .await,
        other
            .patch(&format!("/v1/installs/{id}"), json!({"enabled": false}))
            .await,
        other.delete(&format!("/v1/installs/{id}")).await,
    ] {
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (_, theirs) = other.get("/v1/installs").await;
    assert_eq!(theirs["data"].as_array().map(Vec::len), Some(1), "{theirs}");
    assert_eq!(theirs["data"][0]["id"], json!(first_id));

    // Hot-load: publishing 1.1.0 moves the install without a restart.
    publish(
        &registry,
        &key,
        &example_manifest("hello-action", "1.1.0"),
        "hello_action",
    )
    .await;
    let moved = eventually(&api, &id, |install| install["version"] == "1.1.0").await;
    assert_eq!(moved["previous_version"], "1.0.0");
    // The other tenant's install (`^0.1`) stays on 0.1.0, side by side, and still works.
    let (_, theirs) = other.get(&format!("/v1/installs/{first_id}")).await;
    assert_eq!(theirs["version"], "0.1.0", "{theirs}");
    let (status, answer) = other
        .post(&format!("/v1/installs/{first_id}/call"), run.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(output(&answer)["message"], "Hello, Ada!");
    // Compiled code is per version: 1.0.0, which nothing uses any more, has been freed.
    let loaded: Value = reqwest::Client::new()
        .get(format!("{}/admin/v1/plugins/loaded", server.base_url))
        .bearer_auth(postdog_tests::OPERATOR_TOKEN)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    let versions: Vec<&str> = loaded["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter(|entry| entry["plugin"] == "postdog/hello-action")
        .filter_map(|entry| entry["version"].as_str())
        .collect();
    assert_eq!(versions, ["0.1.0", "1.1.0"], "{loaded}");
    let (status, answer) = api
        .post(&format!("/v1/installs/{id}/call"), run.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // The kv data survived the upgrade (same install).
    assert_eq!(output(&answer)["count"], 2, "{answer}");

    // Rollback returns to 1.0.0 and pins; a newer publish then leaves it alone.
    let (status, rolled) = api
        .post(&format!("/v1/installs/{id}/rollback"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{rolled}");
    assert_eq!(
        (rolled["version"].as_str(), rolled["pinned"].as_bool()),
        (Some("1.0.0"), Some(true))
    );
    publish(
        &registry,
        &key,
        &example_manifest("hello-action", "1.2.0"),
        "hello_action",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, still) = api.get(&format!("/v1/installs/{id}")).await;
    assert_eq!(still["version"], "1.0.0", "a pinned install moved: {still}");
    // Unpin and upgrade explicitly.
    let (status, _) = api
        .patch(&format!("/v1/installs/{id}"), json!({"pinned": false}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, upgraded) = api
        .post(&format!("/v1/installs/{id}/upgrade"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{upgraded}");
    assert_eq!(upgraded["version"], "1.2.0");

    // Disabled installs are not called.
    api.patch(&format!("/v1/installs/{id}"), json!({"enabled": false}))
        .await;
    let (status, disabled) = api
        .post(&format!("/v1/installs/{id}/call"), run.clone())
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{disabled}");
    assert!(
        disabled["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("install-disabled"))
    );

    // Secrets: accepted, validated by name, never returned.
    let (status, echo) = api
        .post("/v1/installs", json!({"plugin": "postdog/echo-channel", "grants": ["http:api.echo.example", "webhook"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{echo}");
    let echo_id = echo["id"].as_str().expect("id").to_string();
    assert_eq!(
        echo["missing_settings"],
        json!(["endpoint", "api_token", "webhook_token"])
    );
    let (status, _) = api
        .put(
            &format!("/v1/installs/{echo_id}/secrets/api_token"),
            json!({"value": "s3cret-token-value"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, not_secret) = api
        .put(
            &format!("/v1/installs/{echo_id}/secrets/endpoint"),
            json!({"value": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{not_secret}");
    let (status, in_config) = api
        .patch(
            &format!("/v1/installs/{echo_id}"),
            json!({"config": {"api_token": "leak"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{in_config}");
    let (_, shown) = api.get(&format!("/v1/installs/{echo_id}")).await;
    assert_eq!(shown["secrets"], json!(["api_token"]));
    let (_, all) = api.get("/v1/installs").await;
    for body in [&shown, &all] {
        assert!(
            !body.to_string().contains("s3cret-token-value"),
            "a secret was returned: {body}"
        );
    }

    // A capability the manifest does not request is refused at the host import.
    let no_kv = example_manifest("hello-action", "1.0.0")
        .replace("postdog/hello-action", "acme/hello-no-kv")
        .replace("capabilities = [\"kv\"]", "capabilities = []");
    publish(&registry, &key, &no_kv, "hello_action").await;
    let (status, install) = api
        .post("/v1/installs", json!({"plugin": "acme/hello-no-kv", "grants": ["kv"], "config": {"count_greetings": true}}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{install}");
    let no_kv_id = install["id"].as_str().expect("id").to_string();
    let (status, denied) = api
        .post(&format!("/v1/installs/{no_kv_id}/call"), run.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{denied}");
    assert!(denied["error"].to_string().contains("Denied"), "{denied}");

    // A plugin that keeps failing is circuit-broken and shown as such.
    let panicky = example_manifest("hello-action", "1.0.0")
        .replace("postdog/hello-action", "acme/panicky")
        .replace("capabilities = [\"kv\"]", "capabilities = []");
    publish(&registry, &key, &panicky, "hostile_panic").await;
    let (_, install) = api
        .post("/v1/installs", json!({"plugin": "acme/panicky"}))
        .await;
    let panicky_id = install["id"].as_str().expect("id").to_string();
    for _ in 0..5 {
        let (status, failed) = api
            .post(&format!("/v1/installs/{panicky_id}/call"), run.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{failed}");
    }
    let (status, paused) = api
        .post(&format!("/v1/installs/{panicky_id}/call"), run.clone())
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{paused}");
    let (_, health) = api.get(&format!("/v1/installs/{panicky_id}")).await;
    assert_eq!(health["health"]["circuit"], "open", "{health}");
    assert_eq!(health["health"]["failures"], 5);
    assert!(
        health["health"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("panicked")),
        "{health}"
    );
    // Other installs are unaffected.
    let (status, _) = api
        .post(&format!("/v1/installs/{no_kv_id}/call"), run.clone())
        .await;
    assert_eq!(status, StatusCode::OK);

    // Uninstall.
    let (status, _) = api.delete(&format!("/v1/installs/{panicky_id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.get(&format!("/v1/installs/{panicky_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tenants_install_configure_call_and_upgrade_plugins() {
    for server in postdog_tests::servers_on_every_backend().await {
        scenario(&server).await;
    }
}

/// A host whose registry is a registry service over HTTP (`POSTDOG_REGISTRY=http://…`):
/// nothing is seeded there, a third-party publisher's plugin published to the service
/// is installable, and a new version hot-loads through the service's change log.
#[tokio::test]
async fn a_host_uses_a_registry_service_over_http() {
    let store = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(postdog_registry::server::serve(
        listener,
        postdog_registry::DirRegistry::open(store.path()).expect("store"),
        None,
        async {
            let _ = stopped.await;
        },
    ));
    let server = PostdogServer::start_with(None, &[("POSTDOG_REGISTRY", url.clone())]).await;
    let (api, _) = Api::tenant(&server, "pro").await;
    let (status, empty) = api.get("/v1/marketplace").await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(
        empty["data"],
        json!([]),
        "nothing is seeded into a remote registry"
    );

    let registry = Registry::open(&url).expect("HTTP registry client");
    let key = PublisherKey::generate().expect("key");
    let acme = |version: &str| {
        example_manifest("hello-action", version).replace("postdog/hello-action", "acme/hello")
    };
    publish(&registry, &key, &acme("1.0.0"), "hello_action").await;
    let (status, install) = api
        .post(
            "/v1/installs",
            json!({"plugin": "acme/hello", "version": "^1", "grants": ["kv"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{install}");
    let id = install["id"].as_str().expect("id").to_string();
    let call = json!({"input": {"contact": {"name": "Ada"}}});
    let (status, answer) = api
        .post(&format!("/v1/installs/{id}/call"), call.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(output(&answer)["message"], "Hello, Ada!");

    publish(&registry, &key, &acme("1.1.0"), "hello_action").await;
    eventually(&api, &id, |install| install["version"] == "1.1.0").await;
    let (status, answer) = api.post(&format!("/v1/installs/{id}/call"), call).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    drop(server);
    let _ = stop.send(());
    service.await.expect("service task").expect("service");
}
