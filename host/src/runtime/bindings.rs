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

    /// The flow-action world.
    pub mod flow_action {
        wasmtime::component::bindgen!({
            world: "flow-action",
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
                "postdog:plugin/action-types": super::imports::postdog::plugin::action_types,
            },
        });
    }

    /// The messaging-channel world.
    pub mod messaging_channel {
        wasmtime::component::bindgen!({
            world: "messaging-channel",
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
                "postdog:plugin/channel-types": super::imports::postdog::plugin::channel_types,
            },
        });
    }

    /// The social-channel world.
    pub mod social_channel {
        wasmtime::component::bindgen!({
            world: "social-channel",
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
                "postdog:plugin/social-types": super::imports::postdog::plugin::social_types,
            },
        });
    }

    /// The integration world.
    pub mod integration {
        wasmtime::component::bindgen!({
            world: "integration",
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
                "postdog:plugin/integration-types": super::imports::postdog::plugin::integration_types,
            },
        });
    }

    pub use imports::postdog::plugin::{
        action_types, channel_types, config, contacts, http, integration_types, kv, log,
        social_types, types,
    };
}
