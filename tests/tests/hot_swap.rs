//! Hot-load under load, on SQLite and PostgreSQL: a plugin is upgraded 20 times by
//! publishing new versions into the running server's registry while four clients call
//! it continuously. Every call must succeed, calls must keep flowing between swaps, and
//! the install must end on the last version — no restart, no failed in-flight call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use postdog_registry::Artifact;
use postdog_tests::{Api, example_manifest, plugin_bytes};
use reqwest::StatusCode;
use serde_json::json;

const VERSIONS: u32 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_upgrades_under_continuous_calls_lose_no_call() {
    for server in postdog_tests::servers_on_every_backend().await {
        let registry = postdog_tests::server_registry(&server);
        let key = postdog_tests::operator_key(&server);
        let component = plugin_bytes("hello_action");
        let publish = |version: String| {
            let artifact = Artifact::build(
                &example_manifest("hello-action", &version),
                component.clone(),
                &key,
            )
            .expect("artifact")
            .to_bytes();
            let registry = &registry;
            async move { registry.publish(&artifact).await.expect("published") }
        };
        publish("1.0.0".to_string()).await;
        let (api, tenant_id) = Api::tenant(&server, "business").await;
        // Four clients calling flat out exceed any plan's rate; this test is about swaps.
        let raised = reqwest::Client::new()
            .patch(format!("{}/admin/v1/tenants/{tenant_id}", server.base_url))
            .bearer_auth(postdog_tests::OPERATOR_TOKEN)
            .json(&json!({"requests_per_minute": 1_000_000}))
            .send()
            .await
            .expect("operator request");
        assert_eq!(raised.status(), StatusCode::OK);
        let (status, install) = api
            .post(
                "/v1/installs",
                json!({"plugin": "postdog/hello-action", "version": "^1", "grants": ["kv"]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{install}");
        let id = install["id"].as_str().expect("id").to_string();

        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let mut callers = Vec::new();
        for caller in 0..4 {
            let (api, id) = (Api::new(&server, &api.key), id.clone());
            let (stop, calls, failures) = (stop.clone(), calls.clone(), failures.clone());
            callers.push(tokio::spawn(async move {
                let mut first_failure = None;
                while !stop.load(Ordering::Acquire) {
                    let (status, answer) = api
                        .post(
                            &format!("/v1/installs/{id}/call"),
                            json!({"input": {"contact": {"name": format!("caller {caller}")}}}),
                        )
                        .await;
                    calls.fetch_add(1, Ordering::AcqRel);
                    if status != StatusCode::OK || answer.get("ok").is_none() {
                        failures.fetch_add(1, Ordering::AcqRel);
                        first_failure.get_or_insert(format!("{status} {answer}"));
                    }
                }
                first_failure
            }));
        }

        for minor in 1..=VERSIONS {
            let version = format!("1.{minor}.0");
            let before = calls.load(Ordering::Acquire);
            let published = Instant::now();
            publish(version.clone()).await;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (_, current) = api.get(&format!("/v1/installs/{id}")).await;
                if current["version"] == json!(version) {
                    eprintln!("{version} visible after {:?}", published.elapsed());
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{version} was never picked up: {current}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(
                calls.load(Ordering::Acquire) > before,
                "no call completed while {version} was being loaded"
            );
        }
        stop.store(true, Ordering::Release);
        for caller in callers {
            let first_failure = caller.await.expect("caller task");
            assert_eq!(first_failure, None, "a call failed during hot-load");
        }
        assert_eq!(failures.load(Ordering::Acquire), 0);
        let (_, install) = api.get(&format!("/v1/installs/{id}")).await;
        assert_eq!(install["version"], json!(format!("1.{VERSIONS}.0")));
        assert_eq!(
            install["previous_version"],
            json!(format!("1.{}.0", VERSIONS - 1))
        );
        assert_eq!(install["health"]["failures"], 0, "{install}");
        assert!(calls.load(Ordering::Acquire) > u64::from(VERSIONS));
    }
}
