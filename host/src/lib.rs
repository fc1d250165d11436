//! PostDog host kernel: tenants, storage, the sandboxed plugin runtime and the HTTP
//! server behind the `postdog` binary.

pub mod ids;
pub mod runtime;
