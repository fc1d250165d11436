//! PostDog benchmark scenarios. Each prints its figures and, where a baseline exists, the
//! ratio to that baseline measured in the same run, so noise on a shared machine cancels
//! out. Nothing here asserts on time.
//!
//! `cargo run --release -p postdog-bench -- plugin-call | csv-import | api-read | hot-swap
//! | tenant-density | inbound | flow-steps | campaign [--crash]`
//!
//! `csv-import`, `api-read`, `hot-swap`, `tenant-density`, `inbound`, `flow-steps` and
//! `campaign` build and start the real `postdog` binary as a child process
//! (`server_process`, `harness`), so its memory is measured on its own.

mod api_read;
mod campaign;
mod csv_import;
mod flow_steps;
mod harness;
mod hot_swap;
mod http_load;
mod inbound;
mod plugin_call;
mod server_process;
mod tenant_density;

use clap::{Parser, Subcommand};

/// PostDog benchmarks.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Full PostDog plugin invocations vs bare wasmtime, 1 thread and all cores, plus cold
    /// load with and without the compile cache.
    PluginCall(plugin_call::Options),
    /// Imports a generated CSV through the API vs plain sqlx inserts of the same rows.
    CsvImport(csv_import::Options),
    /// GET /v1/contacts/{id} with auth and rate limiting vs a bare axum handler.
    ApiRead(api_read::Options),
    /// Calls to an installed plugin while new versions are published and hot-loaded:
    /// calls/s during the swaps vs before, swap visibility latency, failed calls.
    HotSwap(hot_swap::Options),
    /// Many tenants each installing and calling a few plugins: the server's memory.
    TenantDensity(tenant_density::Options),
    /// Signed WhatsApp inbound-message webhooks stored durably vs a bare axum handler that
    /// only verifies the HMAC.
    Inbound(inbound::Options),
    /// Contacts through a 5-step flow (condition, tag, field, send to a loopback fake Graph
    /// API, end): steps/s vs a bare plugin call, plus keyword → reply p50 / p99 latency.
    FlowSteps(flow_steps::Options),
    /// A campaign to 100,000 opted-in contacts through a loopback fake Graph API: messages/s
    /// vs a bare reqwest client posting the same sends; `--crash` kills the server with
    /// SIGKILL halfway and counts lost and duplicated messages.
    Campaign(campaign::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::PluginCall(options) => plugin_call::run(options),
        Scenario::CsvImport(options) => csv_import::run(options),
        Scenario::ApiRead(options) => api_read::run(options),
        Scenario::HotSwap(options) => hot_swap::run(options),
        Scenario::TenantDensity(options) => tenant_density::run(options),
        Scenario::Inbound(options) => inbound::run(options),
        Scenario::FlowSteps(options) => flow_steps::run(options),
        Scenario::Campaign(options) => campaign::run(options),
    }
}
