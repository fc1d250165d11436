//! The typed failures of loading and calling a plugin. Every way a plugin can fail —
//! malformed bytes, the wrong world, running out of time, memory or stack, trapping,
//! returning too much — is one variant here, never a host panic. Classification uses the
//! store's own records (the limiter and the epoch callback note which limit they
//! enforced) and wasmtime's typed `Trap`, not error strings, with one documented
//! exception (`TransferTooLarge`).

use super::World;

/// Why a plugin could not be loaded or called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The bytes are not WebAssembly at all.
    #[error(
        "not a WebAssembly component: the file does not start with the `\\0asm` header; \
         build the plugin with `cargo build --release --target wasm32-wasip2`"
    )]
    NotWasm,
    /// The bytes are a core WebAssembly module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component: build for the `wasm32-wasip2` \
         target (which produces components) or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// The component failed to parse, validate or compile.
    #[error("the component is invalid: {reason}")]
    Invalid {
        /// The validator's or compiler's explanation.
        reason: String,
    },
    /// The component implements a different world than the one required.
    #[error("the component implements the `{found}` world, but a `{expected}` plugin is required")]
    WrongWorld {
        /// The world the caller needed.
        expected: World,
        /// The world the component exports.
        found: World,
    },
    /// The component exports none of PostDog's worlds.
    #[error(
        "the component exports no PostDog plugin world (its exports: {exports}); implement one \
         of flow-action, messaging-channel, social-channel or integration with postdog-sdk"
    )]
    NoWorld {
        /// The component's export names.
        exports: String,
    },
    /// The component imports interfaces the host does not provide.
    #[error(
        "the component imports interfaces PostDog does not provide: {imports}; plugins may \
         import WASI 0.2 and `postdog:plugin/*@0.1.0` interfaces only"
    )]
    UnsupportedImports {
        /// The unknown import names.
        imports: String,
    },
    /// The call ran longer than its deadline.
    #[error("the plugin exceeded its time limit of {limit_ms} ms and was stopped")]
    Timeout {
        /// The deadline in milliseconds.
        limit_ms: u64,
    },
    /// The plugin tried to grow its memory beyond its limit.
    #[error("the plugin exceeded its memory limit of {limit_bytes} bytes and was stopped")]
    MemoryLimit {
        /// The limit in bytes.
        limit_bytes: u64,
    },
    /// The plugin exhausted its call stack (usually unbounded recursion).
    #[error("the plugin exhausted its call stack (unbounded recursion?) and was stopped")]
    StackOverflow,
    /// The plugin tried to pass more data across the boundary in one call than allowed.
    #[error(
        "the plugin tried to pass more than {limit_bytes} bytes to the host in one call \
         (a result or a host-call argument); return less data"
    )]
    TransferTooLarge {
        /// The limit in bytes.
        limit_bytes: u64,
    },
    /// The plugin trapped (a panic, an `unreachable`, an out-of-bounds access…).
    #[error("the plugin crashed: {trap}{}", stderr_suffix(.stderr))]
    Trap {
        /// What wasmtime reported.
        trap: String,
        /// The end of what the plugin wrote to stderr (a Rust panic message lands here).
        stderr: String,
    },
    /// The plugin returned a value the host refuses (for example malformed JSON).
    #[error("the plugin returned an invalid result: {reason}")]
    InvalidResult {
        /// What is wrong with it.
        reason: String,
    },
    /// The runtime has no free instance slot right now.
    #[error("the plugin runtime is at capacity ({reason}); retry shortly")]
    Busy {
        /// Which capacity was reached.
        reason: String,
    },
    /// A failure of the host itself (for example the compile cache's disk).
    #[error("plugin runtime failure: {reason}")]
    Internal {
        /// What failed.
        reason: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(" (plugin stderr: {stderr})")
    }
}

impl PluginError {
    /// Whether the same call may succeed if retried later without changing the plugin.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PluginError::Busy { .. } | PluginError::Internal { .. }
        )
    }
}
