//! Builds the plugins workspace (`plugins/`) for `wasm32-wasip2` so the tests (and the
//! benchmarks, which include this file) run against real components built from source.
//! Exposes the output directory as `POSTDOG_PLUGIN_DIR`. The host's build script uses
//! `build_plugins` from here too, for the first-party plugins it bundles.

use std::path::{Path, PathBuf};
use std::process::Command;

fn watch(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            watch(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// Builds the plugins and tells cargo where they are.
#[allow(dead_code)] // the host's build script includes this file for `build_plugins` only
pub fn main() {
    let dir = build_plugins(&[], &["examples", "hostile", "whatsapp", "actions-core"]);
    println!("cargo:rustc-env=POSTDOG_PLUGIN_DIR={}", dir.display());
}

/// Builds `packages` of the plugins workspace (all when empty) for `wasm32-wasip2` in
/// release mode, rebuilding when `plugins/<watched>`, the SDK or the WIT change; the
/// directory holding the `.wasm` files.
pub fn build_plugins(packages: &[&str], watched: &[&str]) -> PathBuf {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("the crate sits in the repository root")
        .to_path_buf();
    let plugins = root.join("plugins");
    let target_dir = root.join("target").join("wasm");
    for dir in watched
        .iter()
        .map(|dir| plugins.join(dir))
        .chain([root.join("sdk"), root.join("wit")])
    {
        watch(&dir);
    }
    for file in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", plugins.join(file).display());
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--release")
        .arg("--target")
        .arg("wasm32-wasip2")
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for package in packages {
        command.arg("-p").arg(package);
    }
    // The outer build's settings must not leak into the nested one (they describe the
    // host target, a different profile, or a wrapper such as clippy).
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
                    | "DEBUG"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "TARGET"
                    | "HOST"
                    | "NUM_JOBS"
                    | "OUT_DIR"
                    | "RUSTC_LINKER"
                    | "CLIPPY_ARGS"
                    | "CLIPPY_CONF_DIR"
            )
        {
            command.env_remove(key);
        }
    }
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run cargo to build the plugins: {error}"));
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("wasm32-wasip2")
            && (stderr.contains("target may not be installed")
                || stderr.contains("can't find crate for `core`")
                || stderr.contains("can't find crate for `std`"))
        {
            panic!(
                "\n\nthe wasm32-wasip2 target is missing: run `rustup target add wasm32-wasip2`, then build again\n\n"
            );
        }
        panic!("building the plugins (plugins/) for wasm32-wasip2 failed:\n{stderr}");
    }
    target_dir.join("wasm32-wasip2").join("release")
}
