//! Builds the first-party plugins that ship inside the `postdog` binary (bundled with
//! `include_bytes!` and seeded into the embedded registry on start) and tells the crate
//! where they are as `POSTDOG_FIRST_PARTY_DIR`. Same nested build as the tests use.

#[path = "../tests/build.rs"]
mod plugins;

fn main() {
    let dir = plugins::build_plugins(
        &[
            "hello-action",
            "echo-channel",
            "whatsapp",
            "action-send-message",
            "action-wait",
            "action-wait-for-reply",
            "action-condition",
            "action-assign",
            "action-add-tag",
            "action-remove-tag",
            "action-set-field",
            "action-http-request",
            "action-end",
        ],
        &["examples", "whatsapp", "actions-core"],
    );
    println!("cargo:rustc-env=POSTDOG_FIRST_PARTY_DIR={}", dir.display());
}
