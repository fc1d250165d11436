//! The process-wide wasmtime `Engine` and its epoch ticker.
//!
//! One engine serves every plugin: Cranelift, the pooling instance allocator (instance
//! slots and linear memories are reserved once and reused, so instantiation is cheap
//! and memory returns to the pool when a call ends), and epoch interruption. A ticker
//! thread advances the epoch every `EPOCH_TICK`; each store's epoch callback compares
//! the clock with the call's deadline, yields to the async executor in between, and
//! interrupts the guest once the deadline has passed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
};

use super::RuntimeConfig;

/// How often the epoch advances; the granularity of deadlines.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Builds the engine for the given runtime configuration.
pub(crate) fn build_engine(config: &RuntimeConfig) -> Result<Engine, wasmtime::Error> {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .parallel_compilation(true)
        .max_wasm_stack(config.max_wasm_stack_bytes);

    let mut pool = PoolingAllocationConfig::default();
    let slots = config.max_concurrent_instances;
    pool.total_component_instances(slots)
        // A Rust wasm32-wasip2 component has a handful of core instances (the program and
        // small shims); leave room for other toolchains' adapters.
        .max_core_instances_per_component(32)
        .total_core_instances(slots.saturating_mul(8))
        .max_memories_per_component(4)
        .total_memories(slots.saturating_mul(2))
        .max_tables_per_component(16)
        .total_tables(slots.saturating_mul(8))
        .total_stacks(slots)
        .max_memory_size(config.max_memory_bytes_ceiling)
        .table_elements(config.max_table_elements);
    // Resetting a slot with madvise costs a system call, page faults on reuse and, in a
    // multi-threaded process, TLB shootdowns on every core: it capped the plugin-call
    // benchmark at one core's worth of throughput. Instead keep the first MiB of each
    // linear memory resident (a Rust guest's stack and data live there) and, where the
    // kernel supports PAGEMAP_SCAN (Linux 6.7+), reset only the pages the call touched.
    // Measured: 2x on one thread, about 4x on two (see the bench notes). Memory beyond
    // the first MiB is still returned; warm slots are capped so that at most
    // 32 MiB stays resident for reuse.
    pool.pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(64 << 10)
        .max_unused_warm_slots(32);
    wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&wasm)
}

/// Advances the engine's epoch every `EPOCH_TICK` until dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("postdog-epoch".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
