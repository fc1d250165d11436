//! The plugin author's path through the real `postdog` binary: `plugin keygen`, `plugin
//! new` (the scaffold's own `cargo test` and wasm32-wasip2 build), `plugin package` (its
//! manifest, world and capability checks), `plugin run`, `plugin publish` to a directory
//! registry and to a `postdog registry serve` process over HTTP, and `plugin yank`.
//!
//! Scaffolds are built with the `cargo` that runs the tests, in one shared target
//! directory (`target/scaffold-test`), so repeated runs reuse the dependencies' builds.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use postdog_tests::plugin_path;
use serde_json::Value;

fn postdog() -> Command {
    postdog_tests::postdog_command()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `command`, requires success and returns stdout.
fn succeeds(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?} failed:\nstdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Runs `command`, requires failure and returns stderr.
fn fails(command: &mut Command) -> String {
    let output: Output = command.output().expect("the command runs");
    assert!(
        !output.status.success(),
        "{command:?} should have failed:\nstdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stderr)
}

/// The target directory every scaffold is built in.
fn scaffold_target_dir() -> PathBuf {
    workspace_root().join("target").join("scaffold-test")
}

/// `cargo <args>` in `dir`, with none of the outer build's settings (they describe the
/// host target, another profile, or a wrapper such as clippy), as in `tests/build.rs`.
fn cargo(dir: &Path, args: &[&str]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command.args(args).current_dir(dir);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_")
            && key != "CARGO_HOME"
            && key != "CARGO_NET_OFFLINE"
            && !key.starts_with("CARGO_REGISTRIES_")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTC"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTDOC"
                    | "CLIPPY_ARGS"
                    | "CLIPPY_CONF_DIR"
            )
        {
            command.env_remove(key);
        }
    }
    command.env("CARGO_TARGET_DIR", scaffold_target_dir());
    command
}

/// Where the scaffold of crate `name` lands after `cargo build --release --target
/// wasm32-wasip2` in the shared target directory.
fn scaffold_component(name: &str) -> PathBuf {
    scaffold_target_dir()
        .join("wasm32-wasip2")
        .join("release")
        .join(format!("{}.wasm", name.replace('-', "_")))
}

/// Creates a publisher key file in `dir` and returns its path and public key.
fn keygen(dir: &Path, file: &str) -> (PathBuf, String) {
    let path = dir.join(file);
    let stdout = succeeds(postdog().args(["plugin", "keygen", "--out"]).arg(&path));
    let public = stdout
        .split_whitespace()
        .find(|word| word.starts_with("ed25519:"))
        .unwrap_or_else(|| panic!("keygen prints the public key:\n{stdout}"))
        .to_string();
    (path, public)
}

/// `plugin new`, `cargo test` and the wasm32-wasip2 build of one scaffold; returns the
/// plugin's directory.
fn scaffold_and_build(parent: &Path, world: &str, name: &str) -> PathBuf {
    let stdout = succeeds(
        postdog()
            .args([
                "plugin",
                "new",
                "--world",
                world,
                "--publisher",
                "acme",
                "--dir",
            ])
            .arg(parent)
            .arg(name),
    );
    assert!(
        stdout.contains(&format!("created acme/{name} ({world})")),
        "{stdout}"
    );
    let dir = parent.join(name);
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "postdog-plugin.toml",
        "README.md",
        ".gitignore",
        "postdog/sdk/Cargo.toml",
        "postdog/sdk/build.rs",
        "postdog/wit/worlds.wit",
    ] {
        assert!(dir.join(file).is_file(), "{world}: {file} is missing");
    }
    let tests = succeeds(&mut cargo(&dir, &["test"]));
    assert!(
        tests.contains("test result: ok") && !tests.contains(" 0 passed"),
        "{world}: the scaffold's own tests must run and pass:\n{tests}"
    );
    let component = scaffold_component(name);
    let _ = std::fs::remove_file(&component);
    succeeds(&mut cargo(
        &dir,
        &["build", "--release", "--target", "wasm32-wasip2"],
    ));
    assert!(component.is_file(), "{} was not built", component.display());
    dir
}

/// `plugin package` in a scaffold's directory with its default manifest and component
/// (found through `CARGO_TARGET_DIR`, as cargo would put it there); returns stdout.
fn package_scaffold(dir: &Path, key: &Path) -> String {
    succeeds(
        postdog()
            .current_dir(dir)
            .env("CARGO_TARGET_DIR", scaffold_target_dir())
            .args(["plugin", "package", "--key"])
            .arg(key),
    )
}

/// The value after `label: ` on a line of `output`.
fn field<'a>(output: &'a str, label: &str) -> &'a str {
    output
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{label}: ")))
        .unwrap_or_else(|| panic!("no `{label}:` line in:\n{output}"))
        .trim()
}

/// A `postdog registry serve` process; killed if a test fails before stopping it.
struct RegistryServer {
    url: String,
    child: Child,
    log: std::thread::JoinHandle<String>,
}

impl RegistryServer {
    /// Starts the service on a free port and reads its address from stderr.
    fn start(dir: &Path) -> Self {
        let mut child = postdog()
            .args(["registry", "serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("postdog registry serve starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (address, address_found) = std::sync::mpsc::channel();
        let log = std::thread::spawn(move || {
            let mut log = String::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url = rest.split_whitespace().next().unwrap_or_default();
                    let _ = address.send(url.to_string());
                }
                log.push_str(&line);
                log.push('\n');
            }
            log
        });
        let url = match address_found.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let log = log.join().unwrap_or_default();
                panic!("postdog registry serve printed no address:\n{log}");
            }
        };
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        Self { url, child, log }
    }

    /// Sends SIGTERM and returns whether it exited successfully, and its log.
    fn stop(mut self) -> (bool, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                break exit;
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = std::mem::replace(&mut self.log, std::thread::spawn(String::new));
        (exit.success(), log.join().unwrap_or_default())
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites_one_by_accident() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, public) = keygen(dir.path(), "keys/publisher.key");
    let secret = std::fs::read_to_string(&path).expect("the key file exists");
    assert!(secret.starts_with("postdog-publisher-key v1"), "{secret}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key file is private");
    }

    let refusal = fails(postdog().args(["plugin", "keygen", "--out"]).arg(&path));
    assert!(
        refusal.contains("already exists") && refusal.contains("--force"),
        "{refusal}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).expect("still there"),
        secret,
        "the refused keygen left the key alone"
    );

    let replaced = succeeds(
        postdog()
            .args(["plugin", "keygen", "--force", "--out"])
            .arg(&path),
    );
    assert!(!replaced.contains(&public), "--force makes a new key");
    assert_ne!(std::fs::read_to_string(&path).expect("replaced"), secret);

    // Without --out the key goes to ./postdog-publisher.key.
    let stdout = succeeds(postdog().current_dir(dir.path()).args(["plugin", "keygen"]));
    assert!(stdout.contains("postdog-publisher.key"), "{stdout}");
    assert!(dir.path().join("postdog-publisher.key").is_file());
}

#[test]
fn new_refuses_bad_names_and_existing_directories() {
    let parent = tempfile::tempdir().expect("tempdir");
    for bad in ["Greeter", "my_plugin", "1st", "self"] {
        let stderr = fails(
            postdog()
                .args(["plugin", "new", "--world", "flow-action", "--dir"])
                .arg(parent.path())
                .arg(bad),
        );
        assert!(
            stderr.contains(bad) && !parent.path().join(bad).exists(),
            "{bad}: {stderr}"
        );
    }
    let occupied = parent.path().join("taken");
    std::fs::create_dir(&occupied).expect("mkdir");
    std::fs::write(occupied.join("notes.txt"), "mine").expect("write");
    let stderr = fails(
        postdog()
            .args([
                "plugin",
                "new",
                "--world",
                "integration",
                "--publisher",
                "acme",
            ])
            .arg("--dir")
            .arg(parent.path())
            .arg("taken"),
    );
    assert!(stderr.contains("not empty"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&occupied).expect("read").count(),
        1,
        "nothing was written into the occupied directory"
    );
    let stderr = fails(
        postdog()
            .args(["plugin", "new", "--world", "flow_action", "x"])
            .arg("--dir")
            .arg(parent.path()),
    );
    assert!(stderr.contains("unknown world"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flow_action_goes_from_scaffold_to_registries_and_is_yanked() {
    let work = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(work.path(), "publisher.key");
    let dir = scaffold_and_build(work.path(), "flow-action", "greeter-action");
    let again = fails(
        postdog()
            .args([
                "plugin",
                "new",
                "--world",
                "flow-action",
                "--publisher",
                "acme",
            ])
            .arg("--dir")
            .arg(work.path())
            .arg("greeter-action"),
    );
    assert!(again.contains("not empty"), "{again}");

    // Without the build where cargo puts it by default, package says how to build it.
    let missing = fails(
        postdog()
            .current_dir(&dir)
            .env_remove("CARGO_TARGET_DIR")
            .args(["plugin", "package", "--key"])
            .arg(&key),
    );
    assert!(
        missing.contains("cargo build --release --target wasm32-wasip2"),
        "{missing}"
    );

    let packaged = package_scaffold(&dir, &key);
    assert!(
        packaged.contains("packaged acme/greeter-action@0.1.0 (flow-action)"),
        "{packaged}"
    );
    let artifact = dir.join("acme-greeter-action-0.1.0.pdpkg");
    assert!(artifact.is_file(), "{packaged}");
    let digest = field(&packaged, "digest").to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 7 + 64,
        "{digest}"
    );
    let size: u64 = field(&packaged, "size")
        .trim_end_matches(" bytes")
        .parse()
        .expect("a size in bytes");
    assert_eq!(size, std::fs::metadata(&artifact).expect("artifact").len());
    assert_eq!(field(&packaged, "signed by"), public);
    let imports = field(&packaged, "imports");
    assert!(
        imports.contains("postdog:plugin/kv@0.1.0") && !imports.contains("/http@"),
        "{imports}"
    );

    // The component does what the scaffold says.
    let run = succeeds(
        postdog()
            .args(["plugin", "run"])
            .arg(scaffold_component("greeter-action"))
            .args(["--world", "flow-action", "--grant", "kv"])
            .args(["--input", r#"{"contact":{"id":"c1","name":"Ada"}}"#]),
    );
    let result: Value = serde_json::from_str(&run).expect("plugin run prints JSON");
    assert_eq!(
        result["ok"]["outcome"],
        serde_json::json!({ "Next": "next" }),
        "{result:#}"
    );
    let output: Value = serde_json::from_str(
        result["ok"]["output"]
            .as_str()
            .expect("output is JSON text"),
    )
    .expect("output JSON");
    assert_eq!(output["message"], "Hello, Ada!", "{result:#}");
    assert_eq!(output["count"], 1, "{result:#}");

    // A directory registry (named by POSTDOG_REGISTRY here).
    let registry_dir = work.path().join("registry");
    let published = succeeds(
        postdog()
            .env("POSTDOG_REGISTRY", &registry_dir)
            .args(["plugin", "publish"])
            .arg(&artifact),
    );
    assert!(
        published.contains("published acme/greeter-action@0.1.0"),
        "{published}"
    );
    assert_eq!(field(&published, "digest"), digest);
    let again = fails(
        postdog()
            .args(["plugin", "publish"])
            .arg(&artifact)
            .arg("--registry")
            .arg(&registry_dir),
    );
    assert!(
        again.contains("already published") && again.contains("new version"),
        "{again}"
    );

    // A byte flipped in the component is caught, whatever the registry.
    let mut tampered = std::fs::read(&artifact).expect("artifact");
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    let tampered_path = work.path().join("tampered.pdpkg");
    std::fs::write(&tampered_path, &tampered).expect("write");
    let refused = fails(
        postdog()
            .args(["plugin", "publish"])
            .arg(&tampered_path)
            .arg("--registry")
            .arg(work.path().join("fresh-registry")),
    );
    assert!(refused.contains("tampered"), "{refused}");

    // The registry service over real HTTP.
    let server = RegistryServer::start(&work.path().join("http-registry"));
    let refused = fails(
        postdog()
            .args(["plugin", "publish"])
            .arg(&tampered_path)
            .args(["--registry", &server.url]),
    );
    assert!(refused.contains("tampered"), "{refused}");
    let published = succeeds(
        postdog()
            .args(["plugin", "publish"])
            .arg(&artifact)
            .args(["--registry", &server.url]),
    );
    assert_eq!(field(&published, "digest"), digest, "{published}");
    let again = fails(
        postdog()
            .args(["plugin", "publish"])
            .arg(&artifact)
            .args(["--registry", &server.url]),
    );
    assert!(again.contains("already published"), "{again}");

    // Yanking needs the publisher's key.
    let (other_key, _) = keygen(work.path(), "someone-else.key");
    let refused = fails(
        postdog()
            .args(["plugin", "yank", "acme/greeter-action@0.1.0"])
            .args(["--registry", &server.url, "--key"])
            .arg(&other_key),
    );
    assert!(refused.contains("not authorized"), "{refused}");
    let versions_url = format!("{}/registry/v1/plugins/acme/greeter-action", server.url);
    let versions: Value = reqwest::get(&versions_url)
        .await
        .expect("versions")
        .json()
        .await
        .expect("JSON");
    assert_eq!(versions["data"][0]["yanked"], false, "{versions:#}");
    let yanked = succeeds(
        postdog()
            .args(["plugin", "yank", "acme/greeter-action@0.1.0"])
            .args(["--registry", &server.url, "--key"])
            .arg(&key),
    );
    assert!(
        yanked.contains("yanked acme/greeter-action@0.1.0"),
        "{yanked}"
    );
    let versions: Value = reqwest::get(&versions_url)
        .await
        .expect("versions")
        .json()
        .await
        .expect("JSON");
    assert_eq!(versions["data"][0]["yanked"], true, "{versions:#}");
    assert_eq!(versions["data"][0]["digest"], digest.as_str());

    // The directory registry enforces the same, through the same command.
    let refused = fails(
        postdog()
            .args(["plugin", "yank", "acme/greeter-action@0.1.0", "--registry"])
            .arg(&registry_dir)
            .arg("--key")
            .arg(&other_key),
    );
    assert!(refused.contains("not authorized"), "{refused}");

    let (clean, log) = server.stop();
    assert!(clean && log.contains("shut down cleanly"), "{log}");
}

#[test]
fn every_other_world_scaffolds_builds_tests_packages_and_runs() {
    let work = tempfile::tempdir().expect("tempdir");
    let (key, _) = keygen(work.path(), "publisher.key");
    // (world, crate, an import its scaffold must have, one it must not)
    for (world, name, used, unused) in [
        ("messaging-channel", "hello-channel", "/http@", "/kv@"),
        ("social-channel", "hello-social", "/http@", "/kv@"),
        ("integration", "hello-shop", "/config@", "/http@"),
    ] {
        let dir = scaffold_and_build(work.path(), world, name);
        let packaged = package_scaffold(&dir, &key);
        assert!(
            packaged.contains(&format!("packaged acme/{name}@0.1.0 ({world})")),
            "{packaged}"
        );
        let imports = field(&packaged, "imports");
        assert!(
            imports.contains(used) && !imports.contains(unused),
            "{world}: {imports}"
        );
        assert!(dir.join(format!("acme-{name}-0.1.0.pdpkg")).is_file());
    }

    // The webhook handlers of the channel and the integration work without a network.
    let webhook = |body: &str, token: &str| {
        serde_json::json!({
            "method": "POST", "path": "/", "query": "",
            "headers": [["x-webhook-token", token]],
            "body": body.as_bytes(),
        })
        .to_string()
    };
    let run = |name: &str, world: &str, input: String| {
        let stdout = succeeds(
            postdog()
                .args(["plugin", "run"])
                .arg(scaffold_component(name))
                .args(["--world", world, "--call", "handle-webhook"])
                .args(["--secret", "webhook_token=s3cret", "--input", &input]),
        );
        serde_json::from_str::<Value>(&stdout).expect("plugin run prints JSON")
    };
    let inbound = r#"{"messages":[{"id":"p-1","from":"+15550101","text":"hi","timestamp":1}]}"#;
    let channel = run(
        "hello-channel",
        "messaging-channel",
        webhook(inbound, "s3cret"),
    );
    let event = &channel["ok"]["events"][0];
    assert_eq!(event["Message"]["sender"], "+15550101", "{channel:#}");
    let refused = run(
        "hello-channel",
        "messaging-channel",
        webhook(inbound, "guess"),
    );
    assert!(refused["error"]["Unauthorized"].is_string(), "{refused:#}");

    let shop = run(
        "hello-shop",
        "integration",
        webhook(
            r#"{"type":"order.paid","data":{"order_id":"o-1"}}"#,
            "s3cret",
        ),
    );
    let event: Value = serde_json::from_str(
        shop["ok"]["events"][0]
            .as_str()
            .unwrap_or_else(|| panic!("an event: {shop:#}")),
    )
    .expect("event JSON");
    assert_eq!(event["kind"], "shop.order.paid", "{shop:#}");
    assert_eq!(event["payload"]["order_id"], "o-1");
}

/// A manifest for hello-action with `capabilities` replaced.
fn hello_manifest_with(capabilities: &str) -> String {
    let manifest = std::fs::read_to_string(
        workspace_root().join("plugins/examples/hello-action/postdog-plugin.toml"),
    )
    .expect("hello-action's manifest");
    let line = manifest
        .lines()
        .find(|line| line.starts_with("capabilities"))
        .expect("hello-action requests capabilities");
    manifest.replace(line, capabilities)
}

fn package_with(manifest: &Path, component: &Path, key: &Path, out: &Path) -> Command {
    let mut command = postdog();
    command
        .args(["plugin", "package", "--manifest"])
        .arg(manifest)
        .arg("--component")
        .arg(component)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(out);
    command
}

#[test]
fn first_party_examples_package_with_their_own_manifests() {
    let work = tempfile::tempdir().expect("tempdir");
    let (key, _) = keygen(work.path(), "publisher.key");
    // SDK components import only the host interfaces their code uses, which is what
    // makes the capability check possible.
    for (example, component, used, unused) in [
        ("hello-action", "hello_action", "/kv@", "/http@"),
        ("echo-channel", "echo_channel", "/http@", "/kv@"),
    ] {
        let out = work.path().join(format!("{example}.pdpkg"));
        let stdout = succeeds(&mut package_with(
            &workspace_root().join(format!("plugins/examples/{example}/postdog-plugin.toml")),
            &plugin_path(component),
            &key,
            &out,
        ));
        assert!(
            stdout.contains(&format!("packaged postdog/{example}@0.1.0")),
            "{stdout}"
        );
        let imports = field(&stdout, "imports");
        assert!(
            imports.contains(used) && !imports.contains(unused),
            "{example}: {imports}"
        );
        assert!(out.is_file());
    }
}

#[test]
fn package_lists_every_manifest_mistake_with_its_line_and_column() {
    let work = tempfile::tempdir().expect("tempdir");
    let (key, _) = keygen(work.path(), "publisher.key");
    let manifest = work.path().join("postdog-plugin.toml");
    std::fs::write(
        &manifest,
        "[plugin]\n\
         name = \"acme/Greeter\"\n\
         version = \"1.2\"\n\
         world = \"flow_action\"\n\
         wit = \"0.1.0\"\n\
         description = \"Greets\"\n\
         capabilities = [\"kvv\"]\n",
    )
    .expect("write");
    let out = work.path().join("out.pdpkg");
    let stderr = fails(&mut package_with(
        &manifest,
        &plugin_path("hello_action"),
        &key,
        &out,
    ));
    for expected in [
        "postdog-plugin.toml:2:8: invalid plugin name `acme/Greeter`",
        "postdog-plugin.toml:3:11: `1.2` is not a semantic version",
        "postdog-plugin.toml:4:9: unknown world `flow_action`",
        "postdog-plugin.toml:7:17: unknown capability `kvv`",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("4 mistakes"), "{stderr}");
    assert!(!out.exists(), "nothing is written for a bad manifest");
}

#[test]
fn package_refuses_a_component_of_another_world() {
    let work = tempfile::tempdir().expect("tempdir");
    let (key, _) = keygen(work.path(), "publisher.key");
    let out = work.path().join("out.pdpkg");
    let stderr = fails(&mut package_with(
        &workspace_root().join("plugins/examples/hello-action/postdog-plugin.toml"),
        &plugin_path("echo_channel"),
        &key,
        &out,
    ));
    assert!(
        stderr.contains("implements the `messaging-channel` world")
            && stderr.contains("world = \"flow-action\""),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn package_refuses_imports_the_capabilities_do_not_cover() {
    let work = tempfile::tempdir().expect("tempdir");
    let (key, _) = keygen(work.path(), "publisher.key");
    let out = work.path().join("out.pdpkg");

    // hello-action uses kv; without `kv` in its manifest it is refused.
    let manifest = work.path().join("postdog-plugin.toml");
    std::fs::write(&manifest, hello_manifest_with("capabilities = []")).expect("write");
    let stderr = fails(&mut package_with(
        &manifest,
        &plugin_path("hello_action"),
        &key,
        &out,
    ));
    assert!(
        stderr.contains("postdog:plugin/kv@0.1.0") && stderr.contains("add \"kv\""),
        "{stderr}"
    );
    assert!(!out.exists());

    // Asking for more than it uses is allowed, with a warning.
    std::fs::write(
        &manifest,
        hello_manifest_with(r#"capabilities = ["kv", "http:api.example.com"]"#),
    )
    .expect("write");
    let output = package_with(&manifest, &plugin_path("hello_action"), &key, &out)
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("warning: the manifest requests `http:api.example.com`"),
        "{}",
        text(&output.stderr)
    );
    assert!(out.is_file());
}
