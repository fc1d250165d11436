//! After hostile calls the host's memory returns to its baseline: instance slots and
//! linear memories go back to the pool, decommitted. This file is its own test binary
//! (its own process) so other tests cannot disturb the resident-set measurement.

use std::time::Duration;

use postdog_host::ids::TenantId;
use postdog_host::runtime::{CallLimits, PluginError, Runtime, World};
use postdog_tests::{action_input, context, plugin_bytes, runtime_with};
use serde_json::json;

/// Resident set size of this process, in bytes (Linux `/proc/self/statm`).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm is readable");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("statm has a resident field");
    pages * 4096
}

async fn hostile_round(runtime: &Runtime) {
    let hog = runtime
        .load_as(&plugin_bytes("hostile_memory_hog"), World::FlowAction)
        .expect("memory-hog loads");
    let big = runtime
        .load_as(&plugin_bytes("hostile_big_return"), World::FlowAction)
        .expect("big-return loads");
    let panic = runtime
        .load_as(&plugin_bytes("hostile_panic"), World::FlowAction)
        .expect("panic loads");
    let tenant = TenantId::new("t-memory");
    // Eight hogs at once, each filling its 64 MiB: 512 MiB would stay resident if the
    // pool did not give the memory back.
    let calls = (0..8).map(|index| {
        let (runtime, hog) = (runtime.clone(), hog.clone());
        let ctx = context(&tenant, &format!("hog-{index}"), &[], &[], &[]);
        async move {
            runtime
                .action_run(&hog, &ctx, &action_input(json!({}), None))
                .await
        }
    });
    for result in futures::future::join_all(calls).await {
        assert_eq!(
            result.expect_err("the hog must be stopped"),
            PluginError::MemoryLimit {
                limit_bytes: 64 << 20
            }
        );
    }
    let mut ctx = (*context(&tenant, "big", &[], &[], &[])).clone();
    ctx.limits = Some(CallLimits {
        memory_bytes: 300 << 20,
        timeout: Duration::from_secs(20),
    });
    let ctx = std::sync::Arc::new(ctx);
    let error = runtime
        .action_run(&big, &ctx, &action_input(json!({"size_mb": 100}), None))
        .await
        .expect_err("a 100 MB result must be refused");
    assert_eq!(
        error,
        PluginError::TransferTooLarge {
            limit_bytes: 8 << 20
        }
    );
    let ctx = context(&tenant, "panic", &[], &[], &[]);
    assert!(matches!(
        runtime
            .action_run(&panic, &ctx, &action_input(json!({}), None))
            .await,
        Err(PluginError::Trap { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_to_baseline_after_hostile_calls() {
    let runtime = runtime_with(None, None, &[]);
    // Warm up: load and compile everything, touch the code paths once.
    hostile_round(&runtime).await;
    let baseline = resident_bytes();
    for _ in 0..3 {
        hostile_round(&runtime).await;
    }
    let after = resident_bytes();
    let growth = after.saturating_sub(baseline);
    // Each round makes guests touch ~900 MiB in total; what may remain is allocator
    // noise, far below a single hog's 64 MiB.
    assert!(
        growth < 48 << 20,
        "resident memory grew by {} MiB (baseline {} MiB, after {} MiB)",
        growth >> 20,
        baseline >> 20,
        after >> 20
    );
}
