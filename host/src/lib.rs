//! PostDog host kernel: tenants, storage, the sandboxed plugin runtime and the HTTP
//! server behind the `postdog` binary.

pub mod ids;
pub mod runtime;
pub mod http;
pub mod outbound_http;
pub mod plugin_dev;
pub mod server;
pub mod storage;
