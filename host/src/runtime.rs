//! The sandboxed plugin runtime.
#![allow(missing_docs)]
pub mod bindings;
