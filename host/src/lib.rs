//! PostDog host kernel: tenants, storage, the sandboxed plugin runtime and the HTTP
//! server behind the `postdog` binary.

pub mod campaigns;
mod cluster;
pub mod contacts;
pub mod cron;
mod csv_out;
pub mod first_party;
pub mod flows;
pub mod http;
pub mod ids;
pub mod imports;
pub mod jobs;
mod key_files;
pub mod live_relay;
pub mod marketplace;
pub mod messaging;
pub mod outbound_http;
mod pacing;
pub mod plans;
pub mod plugin_author;
pub mod plugin_dev;
pub mod runtime;
pub mod secrets;
pub mod segments;
pub mod server;
pub mod storage;
/// WhatsApp message templates: the builder model, the linter and send-time rendering.
pub mod template_model;
/// Template review states by polling the provider.
pub mod templates_sync;
pub mod tenants;
/// Standard Webhooks signatures for PostDog's outbound webhooks.
pub mod webhook_signing;
pub mod webhooks;
