//! # postdog-sdk — write PostDog plugins in plain Rust
//!
//! A PostDog plugin is a WebAssembly component built for `wasm32-wasip2`. With this SDK
//! you implement one trait — [`Action`] (a flow step), [`Channel`] (a messaging
//! connector), [`Social`] (a social network connector) or [`Integration`] — and call the
//! matching export macro. The host's capabilities are plain functions: [`kv`],
//! [`http`], [`config`], [`log`], [`contacts`].
//!
//! ```no_run
//! use postdog_sdk::prelude::*;
//!
//! /// Greets the contact and remembers how often it did.
//! struct Greeter;
//!
//! impl Action for Greeter {
//!     fn describe() -> Descriptor {
//!         Descriptor::new("Greet", "Sends a greeting to the contact")
//!             .with_config_schema(json!({
//!                 "type": "object",
//!                 "properties": { "greeting": { "type": "string" } }
//!             }))
//!             .with_port("next", "After the greeting is queued")
//!     }
//!
//!     fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
//!         let greeting = input
//!             .config_str("greeting")
//!             .or_else(|| config::get("greeting"))
//!             .unwrap_or_else(|| "Hello".to_string());
//!         let name = input.contact_str("name").unwrap_or_else(|| "there".to_string());
//!         let count = kv::get_json::<u64>("greetings")
//!             .map_err(|e| ActionError::Retryable(e.to_string()))?
//!             .unwrap_or(0)
//!             + 1;
//!         kv::set_json("greetings", &count).map_err(|e| ActionError::Retryable(e.to_string()))?;
//!         log::info(&format!("greeting {name} (#{count})"));
//!         Ok(ActionResult::next("next")
//!             .with_effect(Effect::send_message(MessageContent::text(format!("{greeting}, {name}!"))))
//!             .with_output(json!({ "count": count })))
//!     }
//! }
//!
//! postdog_sdk::export_action!(Greeter);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`)
//! and try it with `postdog plugin run target/wasm32-wasip2/release/greeter.wasm
//! --world flow-action --grant kv --input '{"contact":{"name":"Ada"}}'`. See
//! `docs/plugin-guide.md` in the PostDog repository for the whole walk-through.
//!
//! The types in this crate are the plugin ABI's records (`wit/` in the PostDog
//! repository is their reference), with helper constructors and accessors added.

pub mod action;
pub mod channel;
pub mod config;
pub mod contacts;
pub mod http;
pub mod integration;
pub mod kv;
pub mod log;
pub mod message;
pub mod social;

pub use action::Action;
pub use channel::Channel;
pub use integration::Integration;
pub use social::Social;

/// Everything a typical plugin needs: the traits, the action and message types, the
/// capability modules and `serde_json`'s `json!` / `Value`.
pub mod prelude {
    pub use crate::action::{
        Action, ActionError, ActionInput, ActionResult, Descriptor, Outcome, Port,
    };
    pub use crate::message::{
        Effect, HttpRequest, HttpResponse, MediaKind, MediaMessage, MessageContent,
    };
    pub use crate::{Channel, Integration, Social};
    pub use crate::{config, contacts, http, kv, log};
    pub use serde_json::{Value, json};
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    /// The import side of the ABI, generated once here; plugin crates reuse it.
    #[allow(missing_docs, unsafe_code, clippy::all)]
    pub mod bindings {
        wit_bindgen::generate!({
            path: "../wit",
            world: "sdk",
        });
    }
}

include!(concat!(env!("OUT_DIR"), "/export_macros.rs"));
