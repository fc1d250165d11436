//! The data each call's `Store` carries: the call context, WASI state with captured
//! stdio, the memory/table limiter and the deadline. A store lives for exactly one call;
//! nothing in it survives to the next call (state persists only through `kv`).

use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::Services;
use super::call_context::CallContext;
use super::output_capture::CapturedOutput;
use crate::storage::PluginKv;

/// How much of a call's stdout and stderr is kept for the log.
const CAPTURE_BYTES: usize = 16 * 1024;

/// Enforces the per-call memory and table limits and remembers which one it refused,
/// so a failure can be reported as `MemoryLimit` rather than a generic trap.
pub(crate) struct CallLimiter {
    pub(crate) memory_bytes: usize,
    pub(crate) table_elements: usize,
    pub(crate) memory_refused: bool,
    pub(crate) table_refused: bool,
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.table_refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        8
    }
}

/// The `T` of `Store<T>` for plugin calls.
pub(crate) struct PluginState {
    pub(crate) ctx: Arc<CallContext>,
    pub(crate) services: Arc<Services>,
    pub(crate) limiter: CallLimiter,
    pub(crate) deadline: Instant,
    pub(crate) timed_out: bool,
    pub(crate) stdout: CapturedOutput,
    pub(crate) stderr: CapturedOutput,
    pub(crate) kv: Option<PluginKv>,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl PluginState {
    pub(crate) fn new(
        ctx: Arc<CallContext>,
        services: Arc<Services>,
        limiter: CallLimiter,
        deadline: Instant,
    ) -> Self {
        let stdout = CapturedOutput::new(CAPTURE_BYTES);
        let stderr = CapturedOutput::new(CAPTURE_BYTES);
        // No preopened directories, no environment, no arguments, no sockets, no name
        // lookups: a plugin reaches the world only through PostDog's own imports.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            ctx,
            services,
            limiter,
            deadline,
            timed_out: false,
            stdout,
            stderr,
            kv: None,
            wasi,
            table: ResourceTable::new(),
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
