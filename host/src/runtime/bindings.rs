//! The one place where `bindgen!` runs: host bindings for every world of
//! `postdog:plugin@0.1.0`. The `sdk` world (all host imports plus every type-only
//! interface) generates the import side once, and one `Linker` gets all of it; each
//! plugin world then reuses those modules through `with`, so there is exactly one `Host`
//! trait per interface and one Rust type per WIT type. A future WIT version gets its own
//! module next to `v0_1_0`, and the runtime dispatches on the version a plugin targets.
#![allow(unsafe_code)] // generated code calls TypedFunc::new_unchecked after type-checking
#![allow(missing_docs)] // generated items carry the WIT's own docs where it has them

/// Bindings for `postdog:plugin@0.1.0`.
pub mod v0_1_0 {
    /// The import side: every interface a plugin may import.
    pub mod imports {
        wasmtime::component::bindgen!({
            world: "sdk",
            path: "../wit",
            imports: { default: async | trappable },
            // Serde lets `postdog plugin run` read arguments and print results as JSON.
            additional_derives: [serde::Serialize, serde::Deserialize],
        });
    }

    /// One plugin world: its export side, reusing every import module of `imports`.
    macro_rules! plugin_world {
        ($(#[$doc:meta])* $module:ident, $world:literal, $types_key:literal => $types_module:ident) => {
            $(#[$doc])*
            pub mod $module {
                wasmtime::component::bindgen!({
                    world: $world,
                    path: "../wit",
                    imports: { default: async | trappable },
                    exports: { default: async },
                    with: {
                        "postdog:plugin/types": super::imports::postdog::plugin::types,
                        "postdog:plugin/log": super::imports::postdog::plugin::log,
                        "postdog:plugin/kv": super::imports::postdog::plugin::kv,
                        "postdog:plugin/http": super::imports::postdog::plugin::http,
                        "postdog:plugin/config": super::imports::postdog::plugin::config,
                        "postdog:plugin/contacts": super::imports::postdog::plugin::contacts,
                        $types_key: super::imports::postdog::plugin::$types_module,
                    },
                });
            }
        };
    }

    plugin_world!(
        /// The flow-action world.
        flow_action, "flow-action", "postdog:plugin/action-types" => action_types
    );
    plugin_world!(
        /// The messaging-channel world.
        messaging_channel, "messaging-channel", "postdog:plugin/channel-types" => channel_types
    );
    plugin_world!(
        /// The social-channel world.
        social_channel, "social-channel", "postdog:plugin/social-types" => social_types
    );
    plugin_world!(
        /// The integration world.
        integration, "integration", "postdog:plugin/integration-types" => integration_types
    );

    pub use imports::postdog::plugin::{
        action_types, channel_types, config, contacts, http, integration_types, kv, log,
        social_types, types,
    };
}
