//! The hostile-plugin suite: every way a plugin can misbehave ends in a typed, clear
//! error, and the host serves the next well-behaved call correctly afterwards.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use postdog_host::ids::TenantId;
use postdog_host::runtime::{CallLimits, LoadedPlugin, PluginError, Runtime, World};
use postdog_host::storage::testing;
use postdog_tests::{FakeServer, action_input, context, plugin_bytes, runtime_with};
use serde_json::{Value, json};

fn load(runtime: &Runtime, name: &str) -> LoadedPlugin {
    runtime
        .load_as(&plugin_bytes(name), World::FlowAction)
        .unwrap_or_else(|error| panic!("{name} loads: {error}"))
}

/// A well-behaved call right after a hostile one must work exactly as usual.
async fn assert_healthy(runtime: &Runtime) {
    let hello = load(runtime, "hello_action");
    let ctx = context(&TenantId::new("t-good"), "good", &[], &[], &[]);
    let result = runtime
        .action_run(
            &hello,
            &ctx,
            &action_input(json!({}), Some(json!({"name": "Ada"}))),
        )
        .await
        .expect("the good call succeeds")
        .expect("hello-action succeeds");
    let output: Value = serde_json::from_str(&result.output).expect("JSON output");
    assert_eq!(output["message"], "Hello, Ada!");
}

async fn run_hostile(runtime: &Runtime, name: &str, config: Value) -> Result<Value, PluginError> {
    run_hostile_with(runtime, name, config, None).await
}

async fn run_hostile_with(
    runtime: &Runtime,
    name: &str,
    config: Value,
    limits: Option<CallLimits>,
) -> Result<Value, PluginError> {
    let plugin = load(runtime, name);
    let mut ctx = (*context(&TenantId::new("t-hostile"), "hostile", &[], &[], &[])).clone();
    ctx.limits = limits;
    let result = runtime
        .action_run(
            &plugin,
            &std::sync::Arc::new(ctx),
            &action_input(config, None),
        )
        .await?;
    let result =
        result.unwrap_or_else(|error| panic!("{name} returned an action error: {error:?}"));
    Ok(serde_json::from_str(&result.output).expect("JSON output"))
}

#[tokio::test]
async fn infinite_loop_is_stopped_at_the_deadline() {
    let runtime = runtime_with(None, None, &[]);
    let started = std::time::Instant::now();
    let error = run_hostile(&runtime, "hostile_infinite_loop", json!({}))
        .await
        .unwrap_err();
    assert_eq!(error, PluginError::Timeout { limit_ms: 1000 });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped promptly"
    );
    assert!(error.to_string().contains("time limit of 1000 ms"));
    assert_healthy(&runtime).await;
}

#[tokio::test]
async fn unbounded_memory_growth_hits_the_memory_limit() {
    let runtime = runtime_with(None, None, &[]);
    let error = run_hostile(&runtime, "hostile_memory_hog", json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        error,
        PluginError::MemoryLimit {
            limit_bytes: 64 << 20
        }
    );
    assert_healthy(&runtime).await;
}

#[tokio::test]
async fn deep_recursion_overflows_the_stack() {
    let runtime = runtime_with(None, None, &[]);
    let error = run_hostile(&runtime, "hostile_deep_recursion", json!({}))
        .await
        .unwrap_err();
    assert_eq!(error, PluginError::StackOverflow);
    assert_healthy(&runtime).await;
}

#[tokio::test]
async fn a_100_mb_return_value_is_refused() {
    let runtime = runtime_with(None, None, &[]);
    // Give the plugin room to build the value, so the transfer limit is what stops it.
    let limits = CallLimits {
        memory_bytes: 400 << 20,
        timeout: Duration::from_secs(20),
    };
    let error = run_hostile_with(
        &runtime,
        "hostile_big_return",
        json!({"size_mb": 100}),
        Some(limits),
    )
    .await
    .unwrap_err();
    assert_eq!(
        error,
        PluginError::TransferTooLarge {
            limit_bytes: 8 << 20
        }
    );
    // Within the limit the same plugin works: the limit is the cause, not the plugin.
    let small = run_hostile_with(
        &runtime,
        "hostile_big_return",
        json!({"size_mb": 1}),
        Some(limits),
    )
    .await
    .expect("a 1 MB output is accepted");
    assert_eq!(small.as_str().map(str::len), Some((1 << 20) - 2));
    assert_healthy(&runtime).await;
}

#[tokio::test]
async fn a_panic_is_a_trap_that_quotes_the_message() {
    let runtime = runtime_with(None, None, &[]);
    let error = run_hostile(&runtime, "hostile_panic", json!({}))
        .await
        .unwrap_err();
    let PluginError::Trap { stderr, .. } = &error else {
        panic!("expected a trap, got {error:?}");
    };
    assert!(
        stderr.contains("hostile plugin panicked on purpose"),
        "stderr: {stderr}"
    );
    assert!(
        error
            .to_string()
            .contains("hostile plugin panicked on purpose")
    );
    assert_healthy(&runtime).await;
}

async fn probe_http(runtime: &Runtime, capabilities: &[&str], url: &str) -> Value {
    let plugin = load(runtime, "hostile_http_probe");
    let ctx = context(&TenantId::new("t-http"), "probe", capabilities, &[], &[]);
    let result = runtime
        .action_run(&plugin, &ctx, &action_input(json!({ "url": url }), None))
        .await
        .expect("the probe call completes")
        .expect("the probe reports instead of failing");
    serde_json::from_str(&result.output).expect("JSON output")
}

fn error_kind(output: &Value) -> &str {
    output["error"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {output}"))
}

#[tokio::test]
async fn http_is_refused_outside_the_grants_and_to_internal_addresses() {
    let big =
        FakeServer::start(Router::new().route("/big", get(|| async { vec![b'x'; 6 << 20] }))).await;
    let ok = FakeServer::start(Router::new().route("/ok", get(|| async { "fine" }))).await;
    let runtime = runtime_with(
        None,
        None,
        &[
            ("big.fake.test", big.base_url()),
            ("ok.fake.test", ok.base_url()),
        ],
    );
    // No http grant at all.
    assert_eq!(
        error_kind(&probe_http(&runtime, &[], "http://ok.fake.test/ok").await),
        "denied"
    );
    // A host that is not granted.
    let output = probe_http(&runtime, &["http:ok.fake.test"], "http://evil.example.com/").await;
    assert_eq!(error_kind(&output), "host-not-allowed");
    assert!(
        output["error"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("http:evil.example.com"))
    );
    // Loopback, metadata and a name that resolves to loopback, even when granted ("*").
    for url in [
        "http://127.0.0.1:1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/",
        "http://[::1]/",
        "http://2130706433/",
    ] {
        let output = probe_http(&runtime, &["http:*"], url).await;
        assert_eq!(error_kind(&output), "address-denied", "{url}: {output}");
    }
    // An oversized response (6 MB against the 4 MiB cap) from an operator-mapped fake.
    let output = probe_http(
        &runtime,
        &["http:big.fake.test"],
        "http://big.fake.test/big",
    )
    .await;
    assert_eq!(error_kind(&output), "response-too-large");
    // The granted, mapped host works.
    let output = probe_http(&runtime, &["http:ok.fake.test"], "http://ok.fake.test/ok").await;
    assert_eq!(output, json!({"status": 200, "body_len": 4}));
    assert_healthy(&runtime).await;
}

async fn kv_probe(
    runtime: &Runtime,
    tenant: &TenantId,
    install: &str,
    capabilities: &[&str],
    op: Value,
) -> Value {
    let plugin = load(runtime, "hostile_kv_probe");
    let ctx = context(tenant, install, capabilities, &[], &[]);
    let result = runtime
        .action_run(&plugin, &ctx, &action_input(op, None))
        .await
        .expect("the kv probe completes")
        .expect("the kv probe reports instead of failing");
    serde_json::from_str(&result.output).expect("JSON output")
}

#[tokio::test]
async fn kv_quota_and_isolation_hold_on_every_backend() {
    for database in testing::all_backends().await.expect("test databases") {
        let storage = database.storage.clone();
        let label = database.label;
        let tenant_a = storage
            .create_tenant("A", "starter")
            .await
            .expect("tenant A")
            .id;
        let tenant_b = storage
            .create_tenant("B", "starter")
            .await
            .expect("tenant B")
            .id;
        let runtime = runtime_with(Some(storage.clone()), None, &[]);
        let kv = &["kv"];

        // Without the grant: denied.
        let output = kv_probe(
            &runtime,
            &tenant_a,
            "one",
            &[],
            json!({"op": "get", "key": "k"}),
        )
        .await;
        assert_eq!(error_kind(&output), "denied", "{label}");

        // A secret under tenant A, install "one".
        let output = kv_probe(
            &runtime,
            &tenant_a,
            "one",
            kv,
            json!({"op": "set", "key": "secret", "value": "A-data"}),
        )
        .await;
        assert_eq!(output, json!({"ok": null}), "{label}");
        // Another install of the same tenant, and another tenant's install with the same
        // install id, see nothing of it and cannot delete it.
        for (tenant, install) in [(&tenant_a, "two"), (&tenant_b, "one")] {
            let get = kv_probe(
                &runtime,
                tenant,
                install,
                kv,
                json!({"op": "get", "key": "secret"}),
            )
            .await;
            assert_eq!(
                get,
                json!({"ok": null}),
                "{label}: {tenant}/{install} read another's key"
            );
            let list = kv_probe(
                &runtime,
                tenant,
                install,
                kv,
                json!({"op": "list", "prefix": ""}),
            )
            .await;
            assert_eq!(list, json!({"ok": []}), "{label}");
            let delete = kv_probe(
                &runtime,
                tenant,
                install,
                kv,
                json!({"op": "delete", "key": "secret"}),
            )
            .await;
            assert_eq!(delete, json!({"ok": false}), "{label}");
        }
        let get = kv_probe(
            &runtime,
            &tenant_a,
            "one",
            kv,
            json!({"op": "get", "key": "secret"}),
        )
        .await;
        assert_eq!(
            get,
            json!({"ok": "A-data"}),
            "{label}: the owner still reads its value"
        );

        // Beyond the quota: one value too large, then the install's total.
        let output = kv_probe(
            &runtime,
            &tenant_a,
            "one",
            kv,
            json!({"op": "set_size", "key": "huge", "bytes": 70_000}),
        )
        .await;
        assert_eq!(error_kind(&output), "too-large", "{label}");
        let mut refused = None;
        for index in 0..40 {
            let output = kv_probe(
                &runtime,
                &tenant_a,
                "one",
                kv,
                json!({"op": "set_size", "key": format!("fill-{index:02}"), "bytes": 60_000}),
            )
            .await;
            if output.get("error").is_some() {
                refused = Some((index, output));
                break;
            }
        }
        let (index, output) =
            refused.unwrap_or_else(|| panic!("{label}: the 1 MiB quota was never enforced"));
        assert_eq!(error_kind(&output), "quota-exceeded", "{label}");
        assert_eq!(
            index, 17,
            "{label}: 17 values of 60 kB fit in 1 MiB, the 18th does not"
        );
        // Nothing stored was lost or changed by the refusals.
        let get = kv_probe(
            &runtime,
            &tenant_a,
            "one",
            kv,
            json!({"op": "get", "key": "secret"}),
        )
        .await;
        assert_eq!(get, json!({"ok": "A-data"}), "{label}");
        let list = kv_probe(
            &runtime,
            &tenant_a,
            "one",
            kv,
            json!({"op": "list", "prefix": "fill-"}),
        )
        .await;
        assert_eq!(list["ok"].as_array().map(Vec::len), Some(17), "{label}");
        assert_healthy(&runtime).await;
    }
}

#[tokio::test]
async fn wrong_world_core_module_and_garbage_are_refused_at_load() {
    let runtime = runtime_with(None, None, &[]);
    let channel = plugin_bytes("echo_channel");
    assert_eq!(
        runtime.load_as(&channel, World::FlowAction).unwrap_err(),
        PluginError::WrongWorld {
            expected: World::FlowAction,
            found: World::MessagingChannel
        }
    );
    // The smallest valid core module: magic + version 1, no sections.
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    assert_eq!(
        runtime.load(&core_module).unwrap_err(),
        PluginError::CoreModule
    );
    // Random bytes.
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_eq!(runtime.load(&random).unwrap_err(), PluginError::NotWasm);
    // A component header followed by garbage.
    let mut broken = b"\0asm\x0d\0\x01\0".to_vec();
    broken.extend_from_slice(&random);
    assert!(matches!(
        runtime.load(&broken).unwrap_err(),
        PluginError::Invalid { .. }
    ));
    // A truncated real component.
    let hello = plugin_bytes("hello_action");
    assert!(matches!(
        runtime.load(&hello[..hello.len() / 2]).unwrap_err(),
        PluginError::Invalid { .. }
    ));
    assert_healthy(&runtime).await;
}

#[tokio::test]
async fn malformed_json_in_a_result_is_refused() {
    let runtime = runtime_with(None, None, &[]);
    let error = run_hostile(&runtime, "hostile_bad_output", json!({"where": "output"}))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PluginError::InvalidResult { reason } if reason.contains("`output` is not valid JSON")),
        "{error:?}"
    );
    let error = run_hostile(&runtime, "hostile_bad_output", json!({"where": "effect"}))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PluginError::InvalidResult { reason } if reason.contains("effects[0].value")),
        "{error:?}"
    );
    assert_healthy(&runtime).await;
}

#[tokio::test]
async fn wasi_gives_no_files_environment_or_sockets() {
    // A real listener the plugin will try to reach directly, bypassing the http import.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let runtime = runtime_with(None, None, &[]);
    let report = run_hostile(&runtime, "hostile_escape", json!({ "tcp": address }))
        .await
        .expect("the probe completes");
    for probe in [
        "read_file",
        "list_root",
        "list_cwd",
        "write_file",
        "tcp",
        "dns",
    ] {
        assert!(
            report[probe].get("error").is_some(),
            "{probe} must fail inside the sandbox: {report}"
        );
    }
    assert_eq!(report["env"], 0, "no environment variables: {report}");
    assert_eq!(report["args"], 0, "no arguments: {report}");
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(
        listener.accept().is_err(),
        "nothing connected to the listener"
    );
    assert!(!std::path::Path::new("/tmp/postdog-escape").exists());
    assert_healthy(&runtime).await;
}
