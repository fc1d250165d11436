//! Generates the SDK's export macros. Each macro expands, in the plugin's crate, to a
//! `wit_bindgen::generate!` of one world whose WIT is embedded inline (read here from
//! `../wit`), mapped onto the SDK's own bindings with `with`, plus a small adapter that
//! forwards the world's exports to the plugin author's trait implementation. Generating
//! the export side in the plugin crate (not in the SDK) keeps each component's type
//! information to its own world.

use std::fmt::Write as _;
use std::path::Path;

/// (macro, world, trait, export interface, adapter functions)
const WORLDS: [(&str, &str, &str, &str, &str); 4] = [
    (
        "export_action",
        "flow-action",
        "Action",
        "action",
        "fn describe() -> Descriptor { <$ty as ::postdog_sdk::Action>::describe() }
         fn run(input: ActionInput) -> Result<ActionResult, ActionError> { <$ty as ::postdog_sdk::Action>::run(input) }",
    ),
    (
        "export_channel",
        "messaging-channel",
        "Channel",
        "channel",
        "fn send(message: OutboundMessage) -> Result<SendReceipt, ChannelError> { <$ty as ::postdog_sdk::Channel>::send(message) }
         fn verify_webhook(request: HttpRequest) -> Result<HttpResponse, ChannelError> { <$ty as ::postdog_sdk::Channel>::verify_webhook(request) }
         fn handle_webhook(request: HttpRequest) -> Result<WebhookOutcome, ChannelError> { <$ty as ::postdog_sdk::Channel>::handle_webhook(request) }
         fn submit_template(template: TemplateDefinition) -> Result<TemplateInfo, ChannelError> { <$ty as ::postdog_sdk::Channel>::submit_template(template) }
         fn list_templates() -> Result<Vec<TemplateInfo>, ChannelError> { <$ty as ::postdog_sdk::Channel>::list_templates() }
         fn mark_read(provider_message_id: String) -> Result<(), ChannelError> { <$ty as ::postdog_sdk::Channel>::mark_read(provider_message_id) }
         fn account_status() -> Result<String, ChannelError> { <$ty as ::postdog_sdk::Channel>::account_status() }",
    ),
    (
        "export_social",
        "social-channel",
        "Social",
        "social",
        "fn publish(post: Post) -> Result<PostReceipt, SocialError> { <$ty as ::postdog_sdk::Social>::publish(post) }
         fn metrics(remote_ids: Vec<String>) -> Result<Vec<PostMetrics>, SocialError> { <$ty as ::postdog_sdk::Social>::metrics(remote_ids) }",
    ),
    (
        "export_integration",
        "integration",
        "Integration",
        "integration_handler",
        "fn handle_webhook(request: HttpRequest) -> Result<IntegrationOutcome, IntegrationError> { <$ty as ::postdog_sdk::Integration>::handle_webhook(request) }
         fn on_event(event: KernelEvent) -> Result<Vec<Effect>, IntegrationError> { <$ty as ::postdog_sdk::Integration>::on_event(event) }
         fn sync(cursor: Option<String>) -> Result<SyncPage, IntegrationError> { <$ty as ::postdog_sdk::Integration>::sync(cursor) }",
    ),
];

const INTERFACES: [&str; 10] = [
    "types",
    "log",
    "kv",
    "http",
    "config",
    "contacts",
    "action-types",
    "channel-types",
    "social-types",
    "integration-types",
];

/// Which *-types interface each world's export uses (the others are not in its world).
fn world_interfaces(world: &str) -> Vec<&'static str> {
    let own = match world {
        "flow-action" => "action-types",
        "messaging-channel" => "channel-types",
        "social-channel" => "social-types",
        _ => "integration-types",
    };
    INTERFACES
        .into_iter()
        .filter(|name| !name.ends_with("-types") || *name == own)
        .collect()
}

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let wit_dir = Path::new(&manifest_dir).join("../wit");
    println!("cargo:rerun-if-changed={}", wit_dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&wit_dir)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", wit_dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wit"))
        .collect();
    files.sort();
    let mut package_line = None;
    let mut wit = String::new();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", file.display()));
        for line in text.lines() {
            if line.starts_with("package ") {
                package_line.get_or_insert_with(|| line.to_string());
            } else {
                wit.push_str(line);
                wit.push('\n');
            }
        }
    }
    let package_line = package_line.expect("the WIT files declare a package");
    let version = package_line
        .trim_end_matches(';')
        .rsplit('@')
        .next()
        .expect("the package has a version")
        .to_string();
    let inline = format!("{package_line}\n{wit}");
    assert!(
        !inline.contains("\"#"),
        "the WIT must not contain a raw-string terminator"
    );

    let mut out = String::new();
    for (macro_name, world, trait_name, export, functions) in WORLDS {
        let types_module = match world {
            "flow-action" => "action_types",
            "messaging-channel" => "channel_types",
            "social-channel" => "social_types",
            _ => "integration_types",
        };
        let mut with = String::new();
        for interface in world_interfaces(world) {
            let module = interface.replace('-', "_");
            let _ = writeln!(
                with,
                "                \"postdog:plugin/{interface}@{version}\": ::postdog_sdk::__private::bindings::postdog::plugin::{module},"
            );
        }
        let _ = write!(
            out,
            r####"
/// Exports a type implementing [`{trait_name}`](crate::{trait_name}) as this plugin's
/// `{world}` component. Call it once, at the crate root of a `cdylib` crate built for
/// `wasm32-wasip2`.
#[macro_export]
macro_rules! {macro_name} {{
    ($ty:ty) => {{
        #[doc(hidden)]
        #[allow(missing_docs, unsafe_code, clippy::all)]
        mod __postdog_export {{
            ::postdog_sdk::__private::wit_bindgen::generate!({{
                inline: r#"{inline}"#,
                world: "{world}",
                runtime_path: "::postdog_sdk::__private::wit_bindgen::rt",
                with: {{
{with}                }},
            }});
        }}
        // The adapter lives in a block in the caller's module, so `$ty` resolves where
        // the author wrote it, and the glob below cannot clash with the author's names.
        #[allow(unsafe_code)]
        const _: () = {{
            #[allow(unused_imports)]
            use ::postdog_sdk::__private::bindings::postdog::plugin::{types_module}::*;
            use __postdog_export::exports::postdog::plugin::{export}::Guest;
            struct Adapter;
            impl Guest for Adapter {{
                {functions}
            }}
            __postdog_export::export!(Adapter with_types_in __postdog_export);
        }};
    }};
}}
"####
        );
    }
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(Path::new(&out_dir).join("export_macros.rs"), out)
        .expect("writing export_macros.rs");
}
