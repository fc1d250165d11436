//! The `postdog` binary as a user runs it: `serve` (SQLite by default, PostgreSQL by
//! `DATABASE_URL`), `/healthz` over real HTTP, graceful shutdown on SIGTERM, `migrate`,
//! and `plugin run` with real components.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postdog_host::storage::testing;
use postdog_tests::plugin_path;
use serde_json::Value;

fn postdog() -> Command {
    postdog_tests::postdog_command()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

async fn wait_healthy(url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = reqwest::get(url).await
            && response.status() == 200
        {
            return response.json().await.expect("healthz answers JSON");
        }
        assert!(
            Instant::now() < deadline,
            "the server did not become healthy at {url}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `postdog serve` on loopback `port` with data in `data_dir`, its log piped.
fn serve(port: u16, data_dir: &std::path::Path) -> Command {
    let mut command = postdog();
    command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

async fn serve_and_stop(database_url: Option<String>, expected_backend: &str) {
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut command = serve(port, data.path());
    if let Some(url) = &database_url {
        command.env("DATABASE_URL", url);
    }
    let mut child = command.spawn().expect("postdog serve starts");
    let health = wait_healthy(&format!("http://127.0.0.1:{port}/healthz")).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["database"], expected_backend);
    if database_url.is_none() {
        assert!(
            data.path().join("postdog.db").exists(),
            "SQLite lives in the data directory"
        );
    }
    // Unknown routes get a problem document, not a bare 404.
    let response = reqwest::get(format!("http://127.0.0.1:{port}/nope"))
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "postdog did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = child.wait_with_output().expect("output");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(exit.success(), "exit {exit:?}; log:\n{log}");
    assert!(
        log.contains("SIGTERM received") && log.contains("shut down cleanly"),
        "log:\n{log}"
    );
}

#[tokio::test]
async fn serve_on_sqlite_answers_health_and_stops_on_sigterm() {
    serve_and_stop(None, "sqlite").await;
}

#[tokio::test]
async fn a_second_server_on_the_same_sqlite_file_is_refused() {
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut first = serve(port, data.path())
        .spawn()
        .expect("postdog serve starts");
    wait_healthy(&format!("http://127.0.0.1:{port}/healthz")).await;
    let mut second = serve(free_port(), data.path())
        .spawn()
        .expect("second server runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second server on the same SQLite file kept running");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = second.wait_with_output().expect("output");
    let log = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "the second server must stop; log:\n{log}"
    );
    assert!(
        log.contains(&format!("another postdog server (process {})", first.id()))
            && log.contains("its own --data-dir"),
        "log:\n{log}"
    );
    // The first one still serves; once it is gone (even by SIGKILL), the file is free.
    wait_healthy(&format!("http://127.0.0.1:{port}/healthz")).await;
    first.kill().expect("SIGKILL");
    first.wait().expect("wait");
    let port = free_port();
    let mut third = serve(port, data.path())
        .spawn()
        .expect("postdog serve starts again");
    wait_healthy(&format!("http://127.0.0.1:{port}/healthz")).await;
    third.kill().expect("SIGKILL");
    third.wait().expect("wait");
}

#[tokio::test]
async fn serve_on_postgres_when_database_url_is_set() {
    let Some(database) = testing::postgres().await.expect("postgres test database") else {
        return;
    };
    let url = database.url.clone();
    serve_and_stop(Some(url), "postgres").await;
}

#[test]
fn migrate_is_idempotent() {
    let data = tempfile::tempdir().expect("tempdir");
    for _ in 0..2 {
        let output = postdog()
            .arg("migrate")
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .expect("runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stderr).contains("migrations are up to date"));
    }
}

#[test]
fn plugin_run_calls_a_component_and_prints_json() {
    let output = postdog()
        .args(["plugin", "run"])
        .arg(plugin_path("hello_action"))
        .args([
            "--world",
            "flow-action",
            "--grant",
            "kv",
            "--config",
            "greeting=Bonjour",
        ])
        .args([
            "--input",
            r#"{"contact":{"id":"c1","name":"Ada"},"config":{"count_greetings":true}}"#,
        ])
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    let result: Value =
        serde_json::from_str(printed["ok"]["output"].as_str().expect("output")).expect("JSON");
    assert_eq!(
        result,
        serde_json::json!({"message": "Bonjour, Ada!", "count": 1})
    );
    // The plugin's log line reaches the author's terminal.
    assert!(String::from_utf8_lossy(&output.stderr).contains("greeting Ada"));

    let output = postdog()
        .args(["plugin", "run"])
        .arg(plugin_path("hello_action"))
        .args(["--world", "flow-action", "--call", "describe"])
        .output()
        .expect("runs");
    assert!(output.status.success());
    let printed: Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(printed["ok"]["title"], "Say hello");
}

#[test]
fn plugin_run_explains_what_is_wrong() {
    let cases: [(Vec<String>, &str); 4] = [
        (
            vec![
                plugin_path("echo_channel").display().to_string(),
                "--world".into(),
                "flow-action".into(),
            ],
            "implements the `messaging-channel` world, but a `flow-action` plugin is required",
        ),
        (
            vec![
                plugin_path("hello_action").display().to_string(),
                "--world".into(),
                "flow-action".into(),
                "--input".into(),
                "{oops".into(),
            ],
            "--input is not valid JSON",
        ),
        (
            vec![
                plugin_path("hello_action").display().to_string(),
                "--world".into(),
                "flow-action".into(),
                "--grant".into(),
                "filesystem".into(),
            ],
            "unknown capability `filesystem`",
        ),
        (
            vec![
                plugin_path("hostile_panic").display().to_string(),
                "--world".into(),
                "flow-action".into(),
            ],
            "hostile plugin panicked on purpose",
        ),
    ];
    for (args, expected) in cases {
        let output = postdog()
            .args(["plugin", "run"])
            .args(&args)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected `{expected}` in:\n{stderr}"
        );
        // (A guest's own panic message is quoted from its stderr; the host's threads must
        // never panic.)
        let host_panic = stderr
            .lines()
            .any(|line| line.contains("panicked at") && !line.contains("'<unnamed>'"));
        assert!(!host_panic, "the host must not panic: {stderr}");
    }
    let core = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(core.path(), b"\0asm\x01\0\0\0").expect("write");
    let output = postdog()
        .args(["plugin", "run"])
        .arg(core.path())
        .args(["--world", "flow-action"])
        .output()
        .expect("runs");
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("core WebAssembly module, not a component")
    );
}
