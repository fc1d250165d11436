//! The `plugin-call` scenario.
//!
//! PostDog path, per invocation: a fresh `Store` with the tenant context (grants, config,
//! limits, captured stdio, WASI context, epoch deadline callback) → instantiate from the
//! cached pre-instance → call `hello-action`'s `run` → check the output JSON → drop.
//! `hello-action` reads its `greeting` through the `config` import and logs through
//! `log`; its kv counter is off (`count_greetings` false), so no database write is
//! measured — this scenario measures the runtime, not SQLite.
//!
//! Baseline, per invocation: bare wasmtime with the same `Engine` (so the same pooling,
//! epoch and compiler configuration): a `Store` with a plain WASI context and no-op host
//! imports → instantiate from an `InstancePre` → call `run` → drop.
//!
//! Both are timed on one thread, then on every core (one OS thread with its own
//! current-thread tokio runtime per core). The last line is `ratio: X`, PostDog time per
//! call ÷ bare time per call on one thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use postdog_host::ids::{InstallId, TenantId};
use postdog_host::runtime::abi::action_types::ActionInput;
use postdog_host::runtime::abi::worlds::flow_action::FlowActionPre;
use postdog_host::runtime::abi::{
    action_types, channel_types, config, contacts, http, integration_types, kv, log, social_types,
    types,
};
use postdog_host::runtime::{
    CacheOutcome, CallContext, Grants, LoadedPlugin, PluginConfig, Runtime, RuntimeConfig,
};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Options of the scenario.
#[derive(clap::Args)]
pub struct Options {
    /// Seconds to run each measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Threads for the all-cores measurement (default: available parallelism).
    #[arg(long)]
    threads: Option<usize>,
}

fn hello_action_bytes() -> anyhow::Result<Vec<u8>> {
    let path = std::path::Path::new(env!("POSTDOG_PLUGIN_DIR")).join("hello_action.wasm");
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

fn input() -> ActionInput {
    ActionInput {
        run_id: "bench-run".into(),
        step_id: "greet".into(),
        config: r#"{"greeting":"Hello"}"#.into(),
        contact: Some(r#"{"id":"c1","name":"Ada","tags":[],"fields":{}}"#.into()),
        trigger: "{}".into(),
        variables: "{}".into(),
    }
}

pub fn run(options: Options) -> anyhow::Result<()> {
    let bytes = hello_action_bytes()?;
    let threads = options
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let window = Duration::from_secs_f64(options.seconds);
    let cache_dir = tempfile::tempdir()?;
    let config = || RuntimeConfig {
        cache_dir: Some(cache_dir.path().to_path_buf()),
        ..RuntimeConfig::default()
    };

    // Cold load: a runtime with an empty cache compiles; a second runtime (a "restart")
    // with the same cache directory loads the native artifact.
    let cold_runtime = Runtime::new(config(), None)?;
    let started = Instant::now();
    let plugin = cold_runtime.load(&bytes)?;
    let cold_compile = started.elapsed();
    if plugin.cache_outcome() != CacheOutcome::Miss {
        bail!(
            "expected a compile on the first load, got {:?}",
            plugin.cache_outcome()
        );
    }
    drop(plugin);
    drop(cold_runtime);
    let runtime = Runtime::new(config(), None)?;
    let started = Instant::now();
    let plugin = runtime.load(&bytes)?;
    let cold_cached = started.elapsed();
    if plugin.cache_outcome() != CacheOutcome::Hit {
        bail!(
            "expected a cache hit on the second load, got {:?}",
            plugin.cache_outcome()
        );
    }
    println!("component: hello_action.wasm, {} bytes", bytes.len());
    println!(
        "cold load without cache (compile): {:.1} ms",
        cold_compile.as_secs_f64() * 1e3
    );
    println!(
        "cold load with cache (deserialize): {:.1} ms ({:.1}x faster)",
        cold_cached.as_secs_f64() * 1e3,
        cold_compile.as_secs_f64() / cold_cached.as_secs_f64()
    );

    let ctx = Arc::new(
        CallContext::new(
            TenantId::new("bench-tenant"),
            InstallId::new("bench-install"),
            "hello-action",
        )
        .with_grants(Grants::parse(["kv"])?)
        .with_config(PluginConfig {
            values: [("greeting".to_string(), "Hello".to_string())].into(),
            secrets: Default::default(),
        }),
    );
    let bare = Bare::new(runtime.engine(), &bytes)?;

    // Check both paths work and agree before timing anything.
    let postdog_output = block_on(postdog_call(&runtime, &plugin, &ctx))?;
    let bare_output = block_on(bare.call())?;
    if postdog_output != bare_output {
        bail!("PostDog and bare outputs differ: {postdog_output} vs {bare_output}");
    }

    let postdog_1 = measure(1, window, {
        let (runtime, plugin, ctx) = (runtime.clone(), plugin.clone(), ctx.clone());
        move || {
            let (runtime, plugin, ctx) = (runtime.clone(), plugin.clone(), ctx.clone());
            async move { postdog_call(&runtime, &plugin, &ctx).await.map(drop) }
        }
    })?;
    let bare = Arc::new(bare);
    let bare_1 = measure(1, window, {
        let bare = bare.clone();
        move || {
            let bare = bare.clone();
            async move { bare.call().await.map(drop) }
        }
    })?;
    let postdog_n = measure(threads, window, {
        let (runtime, plugin, ctx) = (runtime.clone(), plugin.clone(), ctx.clone());
        move || {
            let (runtime, plugin, ctx) = (runtime.clone(), plugin.clone(), ctx.clone());
            async move { postdog_call(&runtime, &plugin, &ctx).await.map(drop) }
        }
    })?;
    let bare_n = measure(threads, window, {
        let bare = bare.clone();
        move || {
            let bare = bare.clone();
            async move { bare.call().await.map(drop) }
        }
    })?;

    println!(
        "postdog, 1 thread: {:.0} inv/s ({:.1} µs/call)",
        postdog_1,
        1e6 / postdog_1
    );
    println!(
        "bare wasmtime, 1 thread: {:.0} inv/s ({:.1} µs/call)",
        bare_1,
        1e6 / bare_1
    );
    println!(
        "postdog, {threads} threads: {:.0} inv/s ({:.0} inv/s per core)",
        postdog_n,
        postdog_n / threads as f64
    );
    println!(
        "bare wasmtime, {threads} threads: {:.0} inv/s ({:.0} inv/s per core)",
        bare_n,
        bare_n / threads as f64
    );
    println!("ratio {threads} threads: {:.3}", bare_n / postdog_n);
    println!("ratio: {:.3}", bare_1 / postdog_1);
    Ok(())
}

/// The bare wasmtime baseline alone, for other scenarios' same-run ratios: calls of
/// `hello-action` per second on `threads` threads over `window` (after a warm-up), with
/// the engine configuration PostDog uses.
pub fn bare_calls_per_second(threads: usize, window: Duration) -> anyhow::Result<f64> {
    let bytes = hello_action_bytes()?;
    let runtime = Runtime::new(RuntimeConfig::default(), None)?;
    let bare = Arc::new(Bare::new(runtime.engine(), &bytes)?);
    measure(threads, window, move || {
        let bare = bare.clone();
        async move { bare.call().await.map(drop) }
    })
}

async fn postdog_call(
    runtime: &Runtime,
    plugin: &LoadedPlugin,
    ctx: &Arc<CallContext>,
) -> anyhow::Result<String> {
    match runtime.action_run(plugin, ctx, &input()).await? {
        Ok(result) => Ok(result.output),
        Err(error) => bail!("hello-action failed: {error:?}"),
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime can always be built")
        .block_on(future)
}

/// Runs `call` in a loop on `threads` OS threads for `window`; returns calls per second.
fn measure<F, Fut>(threads: usize, window: Duration, call: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    // Warm up (page in code, fill the pool's warm slots).
    block_on(async {
        for _ in 0..200 {
            call().await?;
        }
        anyhow::Ok(())
    })?;
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let call = call.clone();
            std::thread::spawn(move || {
                block_on(async {
                    let mut calls = 0u64;
                    while started.elapsed() < window {
                        for _ in 0..50 {
                            call().await?;
                        }
                        calls += 50;
                    }
                    anyhow::Ok(calls)
                })
            })
        })
        .collect();
    let mut total = 0u64;
    for worker in workers {
        total += worker
            .join()
            .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// The baseline: what a minimal wasmtime embedding of the same component does.
struct Bare {
    pre: FlowActionPre<BareState>,
}

struct BareState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for BareState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Bare {
    fn new(engine: &Engine, bytes: &[u8]) -> anyhow::Result<Self> {
        let component = wasmtime::component::Component::new(engine, bytes)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let mut linker = Linker::<BareState>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let link = |r: wasmtime::Result<()>| r.map_err(|e| anyhow::anyhow!("{e:#}"));
        link(types::add_to_linker::<_, HasSelf<BareState>>(
            &mut linker,
            |s| s,
        ))?;
        link(action_types::add_to_linker::<_, HasSelf<BareState>>(
            &mut linker,
            |s| s,
        ))?;
        link(log::add_to_linker::<_, HasSelf<BareState>>(
            &mut linker,
            |s| s,
        ))?;
        link(kv::add_to_linker::<_, HasSelf<BareState>>(
            &mut linker,
            |s| s,
        ))?;
        link(http::add_to_linker::<_, HasSelf<BareState>>(
            &mut linker,
            |s| s,
        ))?;
        link(config::add_to_linker::<_, HasSelf<BareState>>(
            &mut linker,
            |s| s,
        ))?;
        link(contacts::add_to_linker::<_, HasSelf<BareState>>(
            &mut linker,
            |s| s,
        ))?;
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let pre = FlowActionPre::new(instance_pre).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok(Self { pre })
    }

    async fn call(&self) -> anyhow::Result<String> {
        let state = BareState {
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(self.pre.engine(), state);
        // The engine has epoch interruption on; a bare embedder sets a far deadline.
        store.set_epoch_deadline(1 << 40);
        let instance = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        match instance
            .postdog_plugin_action()
            .call_run(&mut store, &input())
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))?
        {
            Ok(result) => Ok(result.output),
            Err(error) => bail!("hello-action failed: {error:?}"),
        }
    }
}

// No-op host imports: the least a bare embedding must provide for this component.
impl types::Host for BareState {}
impl action_types::Host for BareState {}
impl channel_types::Host for BareState {}
impl social_types::Host for BareState {}
impl integration_types::Host for BareState {}

impl log::Host for BareState {
    async fn log(&mut self, _level: log::Level, _message: String) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl config::Host for BareState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok((key == "greeting").then(|| "Hello".to_string()))
    }

    async fn secret(&mut self, _key: String) -> wasmtime::Result<Option<String>> {
        Ok(None)
    }
}

impl kv::Host for BareState {
    async fn get(
        &mut self,
        _key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::KvError>> {
        Ok(Ok(None))
    }

    async fn set(
        &mut self,
        _key: String,
        _value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv::KvError>> {
        Ok(Ok(()))
    }

    async fn delete(&mut self, _key: String) -> wasmtime::Result<Result<bool, kv::KvError>> {
        Ok(Ok(false))
    }

    async fn list_keys(
        &mut self,
        _prefix: String,
    ) -> wasmtime::Result<Result<Vec<String>, kv::KvError>> {
        Ok(Ok(Vec::new()))
    }
}

impl http::Host for BareState {
    async fn fetch(
        &mut self,
        _req: http::Request,
    ) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
        Ok(Err(http::HttpError::Denied))
    }
}

impl contacts::Host for BareState {
    async fn get(
        &mut self,
        _by: contacts::Lookup,
    ) -> wasmtime::Result<Result<Option<contacts::Contact>, contacts::ContactsError>> {
        Ok(Err(contacts::ContactsError::Denied))
    }

    async fn upsert(
        &mut self,
        _input: contacts::ContactInput,
    ) -> wasmtime::Result<Result<contacts::Contact, contacts::ContactsError>> {
        Ok(Err(contacts::ContactsError::Denied))
    }

    async fn add_tag(
        &mut self,
        _contact_id: String,
        _tag: String,
    ) -> wasmtime::Result<Result<(), contacts::ContactsError>> {
        Ok(Err(contacts::ContactsError::Denied))
    }
}
