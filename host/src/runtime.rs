//! The sandboxed plugin runtime: loads WebAssembly components, checks which PostDog
//! world they implement, and calls them with a fresh, limited `Store` per call.
//!
//! Layout:
//! - `engine` — the one `Engine` (pooling allocator, epoch interruption) and its ticker;
//! - `compile_cache` — native code cached on disk by content hash + engine key;
//! - `component_check` — header, world and import checks with clear errors;
//! - `bindings` — the only `bindgen!`, one module per WIT version;
//! - `call_context` — tenant, install, grants, config and limits of a call;
//! - `store_data` — what each `Store` carries, the limiter, captured stdio;
//! - `host_imports` — the host side of `log`, `kv`, `http`, `config`, `contacts`;
//! - `hot_exports` — a channel's `send` and `handle-webhook` by index, type-checked once;
//! - `error` — `PluginError`, every way a plugin can fail.
//!
//! A call: build a `Store` (context, limits, deadline) → instantiate from the cached
//! `InstancePre` (cheap with the pooling allocator) → call the export → classify any
//! failure → drop the store, returning its memory slot to the pool. The runtime may touch
//! the database only through the tenant-scoped storage handle of the call's context.

mod bindings;
mod call_context;
mod compile_cache;
mod component_check;
mod engine;
mod error;
mod host_imports;
mod hot_exports;
mod output_capture;
mod store_data;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

pub use call_context::{CallContext, CallLimits, Grants, PluginConfig, UnknownCapability};
pub use compile_cache::CacheOutcome;
pub use error::PluginError;

use crate::outbound_http::{OutboundHttp, OutboundHttpConfig};
use crate::storage::{KvQuota, Storage};
use bindings::v0_1_0 as abi_v0_1_0;
use compile_cache::CompileCache;
use store_data::{CallLimiter, PluginState};

/// The records of the plugin ABI (`postdog:plugin@0.1.0`) as Rust types: what calls take
/// and return. Kernel modules convert them to their own domain types at their boundary.
pub mod abi {
    pub use super::bindings::v0_1_0::{
        action_types, channel_types, config, contacts, http, integration_types, kv, log,
        social_types, types,
    };

    /// Generated world bindings (pre-instances, export accessors), for tools that drive
    /// components without the runtime, such as the benchmark's bare-wasmtime baseline.
    pub mod worlds {
        pub use super::super::bindings::v0_1_0::{
            flow_action, integration, messaging_channel, social_channel,
        };
    }
}

/// The kinds of plugin, one WIT world each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum World {
    /// `flow-action`: a step of automation flows.
    FlowAction,
    /// `messaging-channel`: a channel connector such as WhatsApp.
    MessagingChannel,
    /// `social-channel`: a social network connector.
    SocialChannel,
    /// `integration`: an integration with another business system.
    Integration,
}

impl World {
    /// Every world, in a fixed order.
    pub const ALL: [World; 4] = [
        World::FlowAction,
        World::MessagingChannel,
        World::SocialChannel,
        World::Integration,
    ];

    /// The world's WIT name, as written in manifests and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            World::FlowAction => "flow-action",
            World::MessagingChannel => "messaging-channel",
            World::SocialChannel => "social-channel",
            World::Integration => "integration",
        }
    }

    /// The fully qualified name of the interface a component of this world exports.
    pub fn export_name(self) -> &'static str {
        match self {
            World::FlowAction => "postdog:plugin/action@0.1.0",
            World::MessagingChannel => "postdog:plugin/channel@0.1.0",
            World::SocialChannel => "postdog:plugin/social@0.1.0",
            World::Integration => "postdog:plugin/integration-handler@0.1.0",
        }
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for World {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        World::ALL
            .into_iter()
            .find(|world| world.name() == name)
            .ok_or_else(|| {
                format!(
                    "unknown world `{name}`: use flow-action, messaging-channel, social-channel or integration"
                )
            })
    }
}

/// Operator settings of the runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` compiles in memory on every load.
    pub cache_dir: Option<PathBuf>,
    /// Default memory limit of a call, in bytes.
    pub default_memory_bytes: u64,
    /// The most memory any install may be given (the pool's slot size), in bytes.
    pub max_memory_bytes_ceiling: usize,
    /// Default time limit of a call.
    pub default_timeout: Duration,
    /// The longest time limit any install may be given.
    pub max_timeout: Duration,
    /// Table elements an instance may have.
    pub max_table_elements: usize,
    /// Native stack a call may use, in bytes.
    pub max_wasm_stack_bytes: usize,
    /// Most bytes a plugin may pass to the host in one transfer (a result or a host-call
    /// argument list).
    pub max_transfer_bytes: usize,
    /// Instances that may exist at once (pool size); calls beyond it get `Busy`.
    pub max_concurrent_instances: u32,
    /// Outbound HTTP settings, including the operator's host overrides.
    pub http: OutboundHttpConfig,
    /// Key-value quotas per install.
    pub kv_quota: KvQuota,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            default_memory_bytes: 64 << 20,
            max_memory_bytes_ceiling: 512 << 20,
            default_timeout: Duration::from_secs(5),
            max_timeout: Duration::from_secs(60),
            max_table_elements: 100_000,
            max_wasm_stack_bytes: 512 << 10,
            max_transfer_bytes: 8 << 20,
            max_concurrent_instances: 256,
            http: OutboundHttpConfig::default(),
            kv_quota: KvQuota::default(),
        }
    }
}

/// What host imports need at call time, shared by all stores.
pub(crate) struct Services {
    pub(crate) storage: Option<Storage>,
    pub(crate) http: OutboundHttp,
    pub(crate) kv_quota: KvQuota,
}

struct Inner {
    engine: Engine,
    linker: Linker<PluginState>,
    cache: CompileCache,
    services: Arc<Services>,
    config: RuntimeConfig,
    // Declared last: dropped after everything that uses the engine.
    _ticker: engine::EpochTicker,
}

/// The plugin runtime. Cheap to clone; one per process.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

/// The pre-instantiated form of a component, by world.
#[derive(Clone)]
enum PluginPre {
    FlowAction(abi_v0_1_0::flow_action::FlowActionPre<PluginState>),
    MessagingChannel(ChannelPre),
    SocialChannel(abi_v0_1_0::social_channel::SocialChannelPre<PluginState>),
    Integration(abi_v0_1_0::integration::IntegrationPre<PluginState>),
}

/// A compiled, linked plugin ready to be called many times.
#[derive(Clone)]
pub struct LoadedPlugin {
    world: World,
    digest: String,
    imports: Arc<[String]>,
    cache: CacheOutcome,
    pre: PluginPre,
}

/// A messaging channel's pre-instance, with its `send` and `handle-webhook` resolved
/// once (see `hot_exports`).
#[derive(Clone)]
struct ChannelPre {
    generated: abi_v0_1_0::messaging_channel::MessagingChannelPre<PluginState>,
    /// Shared by the clones of a loaded plugin, so the type check runs once.
    hot: Arc<ChannelHot>,
}

impl ChannelPre {
    async fn instantiate_async(
        &self,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<abi_v0_1_0::messaging_channel::MessagingChannel> {
        self.generated.instantiate_async(store).await
    }

    fn instance_pre(&self) -> &wasmtime::component::InstancePre<PluginState> {
        self.generated.instance_pre()
    }
}

/// The hot exports of a messaging-channel plugin.
#[derive(Debug)]
struct ChannelHot {
    send: hot_exports::HotExport,
    handle_webhook: hot_exports::HotExport,
}

/// The channel interface as a component exports it.
const CHANNEL_INTERFACE: &str = "postdog:plugin/channel@0.1.0";

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("world", &self.world)
            .field("digest", &self.digest)
            .field("cache", &self.cache)
            .finish()
    }
}

impl LoadedPlugin {
    /// The world the component implements.
    pub fn world(&self) -> World {
        self.world
    }

    /// The sha256 of the component's bytes, in hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The interfaces the component imports (WASI and `postdog:plugin/…` names with
    /// versions), for checking them against the capabilities a manifest requests.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// Whether loading was served from the compile cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }
}

/// A failure to start the runtime.
#[derive(Debug, thiserror::Error)]
#[error("could not start the plugin runtime: {0}")]
pub struct RuntimeStartError(String);

impl Runtime {
    /// Starts a runtime. `storage` backs the `kv` import; without it kv calls report
    /// `unavailable`.
    pub fn new(config: RuntimeConfig, storage: Option<Storage>) -> Result<Self, RuntimeStartError> {
        let start =
            |what: &str, error: &dyn fmt::Display| RuntimeStartError(format!("{what}: {error}"));
        let engine =
            engine::build_engine(&config).map_err(|e| start("engine", &format!("{e:#}")))?;
        let mut linker = Linker::<PluginState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| start("linking WASI", &format!("{e:#}")))?;
        abi_v0_1_0::imports::Sdk::add_to_linker::<PluginState, HasSelf<PluginState>>(
            &mut linker,
            |state| state,
        )
        .map_err(|e| start("linking postdog:plugin imports", &format!("{e:#}")))?;
        let http = OutboundHttp::new(config.http.clone())
            .map_err(|e| start("outbound HTTP client", &e))?;
        let ticker = engine::EpochTicker::start(engine.clone())
            .map_err(|e| start("epoch ticker thread", &e))?;
        let cache = CompileCache::new(&engine, config.cache_dir.clone());
        let services = Arc::new(Services {
            storage,
            http,
            kv_quota: config.kv_quota,
        });
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                services,
                config,
                _ticker: ticker,
            }),
        })
    }

    /// The engine (for benchmarks and tools that need the same configuration).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Loads a component: checks its header, compiles it (or loads it from the compile
    /// cache), finds its world, checks its imports and pre-instantiates it. Blocking
    /// (compiling is CPU work): call it from `spawn_blocking` in async code.
    pub fn load(&self, bytes: &[u8]) -> Result<LoadedPlugin, PluginError> {
        component_check::check_header(bytes)?;
        let digest = hex::encode(Sha256::digest(bytes));
        let engine = &self.inner.engine;
        let (component, cache) = self.inner.cache.load_or_compile(engine, bytes, &digest)?;
        let world = component_check::detect_world(engine, &component)?;
        let imports = component_check::check_imports(engine, &component)?;
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|error| PluginError::UnsupportedImports {
                imports: format!("{error:#}"),
            })?;
        let invalid = |error: wasmtime::Error| PluginError::Invalid {
            reason: format!("{error:#}"),
        };
        let pre = match world {
            World::FlowAction => PluginPre::FlowAction(
                abi_v0_1_0::flow_action::FlowActionPre::new(instance_pre).map_err(invalid)?,
            ),
            World::MessagingChannel => {
                let resolve = |name| {
                    hot_exports::HotExport::resolve(&instance_pre, CHANNEL_INTERFACE, name)
                        .map_err(invalid)
                };
                let hot = Arc::new(ChannelHot {
                    send: resolve("send")?,
                    handle_webhook: resolve("handle-webhook")?,
                });
                PluginPre::MessagingChannel(ChannelPre {
                    generated: abi_v0_1_0::messaging_channel::MessagingChannelPre::new(
                        instance_pre,
                    )
                    .map_err(invalid)?,
                    hot,
                })
            }
            World::SocialChannel => PluginPre::SocialChannel(
                abi_v0_1_0::social_channel::SocialChannelPre::new(instance_pre).map_err(invalid)?,
            ),
            World::Integration => PluginPre::Integration(
                abi_v0_1_0::integration::IntegrationPre::new(instance_pre).map_err(invalid)?,
            ),
        };
        Ok(LoadedPlugin {
            world,
            digest,
            imports: imports.into(),
            cache,
            pre,
        })
    }

    /// Reads and loads a component file.
    pub fn load_file(&self, path: &Path) -> Result<LoadedPlugin, PluginError> {
        let bytes = std::fs::read(path).map_err(|error| PluginError::Internal {
            reason: format!("reading {}: {error}", path.display()),
        })?;
        self.load(&bytes)
    }

    /// Loads a component and requires it to implement `world`.
    pub fn load_as(&self, bytes: &[u8], world: World) -> Result<LoadedPlugin, PluginError> {
        let plugin = self.load(bytes)?;
        if plugin.world != world {
            return Err(PluginError::WrongWorld {
                expected: world,
                found: plugin.world,
            });
        }
        Ok(plugin)
    }

    fn limits_for(&self, ctx: &CallContext) -> CallLimits {
        let config = &self.inner.config;
        let requested = ctx.limits.unwrap_or(CallLimits {
            memory_bytes: config.default_memory_bytes,
            timeout: config.default_timeout,
        });
        CallLimits {
            memory_bytes: requested
                .memory_bytes
                .min(config.max_memory_bytes_ceiling as u64),
            timeout: requested.timeout.min(config.max_timeout),
        }
    }

    fn new_store(&self, ctx: &Arc<CallContext>, limits: CallLimits) -> Store<PluginState> {
        let deadline = Instant::now() + limits.timeout;
        let limiter = CallLimiter {
            memory_bytes: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
            table_elements: self.inner.config.max_table_elements,
            memory_refused: false,
            table_refused: false,
        };
        let state = PluginState::new(ctx.clone(), self.inner.services.clone(), limiter, deadline);
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_hostcall_fuel(self.inner.config.max_transfer_bytes);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut store| {
            let state = store.data_mut();
            if Instant::now() >= state.deadline {
                state.timed_out = true;
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Let other tasks on this executor thread run, then check again next tick.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Turns the end of a call into the caller's result, logging what the plugin printed.
    fn finish<T>(
        &self,
        store: Store<PluginState>,
        limits: CallLimits,
        outcome: Result<wasmtime::Result<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, PluginError> {
        let state = store.data();
        let ctx = &state.ctx;
        let (stdout, stdout_dropped) = state.stdout.take();
        let (stderr, stderr_dropped) = state.stderr.take();
        for (stream, text, dropped) in [
            ("stdout", &stdout, stdout_dropped),
            ("stderr", &stderr, stderr_dropped),
        ] {
            if !text.is_empty() {
                tracing::info!(
                    target: "plugin",
                    tenant_id = ctx.tenant_id.as_str(),
                    install_id = ctx.install_id.as_str(),
                    plugin = ctx.plugin.as_str(),
                    stream,
                    dropped_bytes = dropped,
                    "{}",
                    text.trim_end()
                );
            }
        }
        let timeout = || PluginError::Timeout {
            limit_ms: u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let error = match outcome {
            Err(_elapsed) => return Err(timeout()),
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error,
        };
        let classified = if state.timed_out {
            timeout()
        } else if state.limiter.memory_refused {
            PluginError::MemoryLimit {
                limit_bytes: limits.memory_bytes,
            }
        } else {
            match error.downcast_ref::<Trap>() {
                Some(Trap::StackOverflow) => PluginError::StackOverflow,
                Some(Trap::Interrupt) => timeout(),
                Some(trap) => PluginError::Trap {
                    trap: trap.to_string(),
                    stderr: tail(&stderr, 2048),
                },
                None => classify_untyped(&error, &stderr, self.inner.config.max_transfer_bytes),
            }
        };
        tracing::warn!(
            target: "plugin",
            tenant_id = ctx.tenant_id.as_str(),
            install_id = ctx.install_id.as_str(),
            plugin = ctx.plugin.as_str(),
            error = %classified,
            "plugin call failed"
        );
        Err(classified)
    }
}

/// Errors without a wasmtime `Trap`: pool exhaustion, data transfer limits, lifting errors.
fn classify_untyped(error: &wasmtime::Error, stderr: &str, transfer_limit: usize) -> PluginError {
    let message = format!("{error:#}");
    // wasmtime reports hostcall-fuel exhaustion with a private error type, so its message
    // is the only handle; a test (hostile big-return) pins this down across upgrades.
    if message.contains("fuel allocated for hostcalls has been exhausted") {
        return PluginError::TransferTooLarge {
            limit_bytes: transfer_limit as u64,
        };
    }
    if error
        .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return PluginError::Busy { reason: message };
    }
    PluginError::Trap {
        trap: message,
        stderr: tail(stderr, 2048),
    }
}

fn tail(text: &str, max: usize) -> String {
    let text = text.trim_end();
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

/// Runs one export call of one world with a fresh store: instantiate from the world's
/// pre-instance, call, classify. `$call` is a closure-like `|instance, store| future`.
macro_rules! invoke {
    ($self:ident, $plugin:ident, $ctx:ident, $variant:ident, |$instance:ident, $store:ident| $call:expr) => {{
        invoke!(@run $self, $plugin, $ctx, $variant, |pre, store| pre.instantiate_async(store), |$instance, $store| $call)
    }};
    (@run $self:ident, $plugin:ident, $ctx:ident, $variant:ident, |$pre:ident, $new_store:ident| $instantiate:expr, |$instance:ident, $store:ident| $call:expr) => {{
        let PluginPre::$variant($pre) = &$plugin.pre else {
            return Err(PluginError::WrongWorld {
                expected: World::$variant,
                found: $plugin.world,
            });
        };
        let limits = $self.limits_for($ctx);
        let mut store = $self.new_store($ctx, limits);
        // The epoch deadline stops guest code; this outer timeout also bounds time spent
        // in host calls (which the epoch cannot interrupt) with a small grace period.
        let outcome = tokio::time::timeout(limits.timeout + Duration::from_millis(250), async {
            let $store = &mut store;
            let $instance = {
                let $new_store = &mut *$store;
                $instantiate.await?
            };
            $call.await
        })
        .await;
        $self.finish(store, limits, outcome)
    }};
}

/// `invoke!` with the bare `Instance` (no export looked up or type-checked), for calls
/// through `hot_exports`; `$call` also sees the world's pre-instance, `pre`.
macro_rules! invoke_raw {
    ($self:ident, $plugin:ident, $ctx:ident, $variant:ident, |$pre:ident, $instance:ident, $store:ident| $call:expr) => {{
        invoke!(@run $self, $plugin, $ctx, $variant, |$pre, store| $pre.instance_pre().instantiate_async(store), |$instance, $store| $call)
    }};
}

use abi::{action_types, channel_types, integration_types, social_types, types};

impl Runtime {
    /// `action.describe` of a flow-action plugin.
    pub async fn action_describe(
        &self,
        plugin: &LoadedPlugin,
        ctx: &Arc<CallContext>,
    ) -> Result<action_types::Descriptor, PluginError> {
        invoke!(self, plugin, ctx, FlowAction, |instance, store| instance
            .postdog_plugin_action()
            .call_describe(store))
    }

    /// `action.run` of a flow-action plugin. The inner `Result` is the action's own
    /// outcome; the outer one is the runtime's.
    pub async fn action_run(
        &self,
        plugin: &LoadedPlugin,
        ctx: &Arc<CallContext>,
        input: &action_types::ActionInput,
    ) -> Result<Result<action_types::ActionResult, action_types::ActionError>, PluginError> {
        let result = invoke!(self, plugin, ctx, FlowAction, |instance, store| instance
            .postdog_plugin_action()
            .call_run(store, input))?;
        if let Ok(ok) = &result {
            check_action_result(ok)?;
        }
        Ok(result)
    }

    /// Calls the hot channel export `export` with one argument (see `hot_exports`).
    async fn call_channel_hot<P, R>(
        &self,
        plugin: &LoadedPlugin,
        ctx: &Arc<CallContext>,
        export: fn(&ChannelHot) -> &hot_exports::HotExport,
        argument: P,
    ) -> Result<R, PluginError>
    where
        (P,): wasmtime::component::ComponentNamedList + wasmtime::component::Lower + Send + Sync,
        (R,): wasmtime::component::ComponentNamedList
            + wasmtime::component::Lift
            + Send
            + Sync
            + 'static,
    {
        invoke_raw!(
            self,
            plugin,
            ctx,
            MessagingChannel,
            |pre, instance, store| async {
                let func = export(&pre.hot).typed::<(P,), (R,)>(&mut *store, &instance)?;
                let (result,) = func.call_async(&mut *store, (argument,)).await?;
                Ok(result)
            }
        )
    }

    /// `channel.send` of a messaging-channel plugin.
    pub async fn channel_send(
        &self,
        plugin: &LoadedPlugin,
        ctx: &Arc<CallContext>,
        message: &channel_types::OutboundMessage,
    ) -> Result<Result<channel_types::SendReceipt, channel_types::ChannelError>, PluginError> {
        self.call_channel_hot(plugin, ctx, |hot| &hot.send, message)
            .await
    }

    /// `channel.verify-webhook` of a messaging-channel plugin.
    pub async fn channel_verify_webhook(
        &self,
        plugin: &LoadedPlugin,
        ctx: &Arc<CallContext>,
        request: &types::HttpRequest,
    ) -> Result<Result<types::HttpResponse, channel_types::ChannelError>, PluginError> {
        invoke!(self, plugin, ctx, MessagingChannel, |instance, store| {
            instance
                .postdog_plugin_channel()
                .call_verify_webhook(store, request)
        })
    }

    /// `channel.handle-webhook` of a messaging-channel plugin.
    pub async fn channel_handle_webhook(
        &self,
        plugin: &LoadedPlugin,
        ctx: &Arc<CallContext>,
        request: &types::HttpRequest,
    ) -> Result<Result<channel_types::WebhookOutcome, channel_types::ChannelError>, PluginError>
    {
        self.call_channel_hot(plugin, ctx, |hot| &hot.handle_webhook, request)
            .await
    }

    /// `channel.submit-template` of a messaging-channel plugin.
    pub async fn channel_submit_template(
        &self,
        plugin: &LoadedPlugin,
        ctx: &Arc<CallContext>,
        template: &channel_types::TemplateDefinition,
    ) -> Result<Result<channel_types::TemplateInfo, channel_types::ChannelError>, PluginError> {
        invoke!(self, plugin, ctx, MessagingChannel, |instance, store| {
            instance
                .postdog_plugin_channel()
                .call_submit_template(store, template)
        })
    }

    /// `channel.list-templates` of a messaging-channel plugin.
    pub async fn channel_list_templates(
        &self,
        plugin: &LoadedPlugin,
        ctx: &Arc<CallContext>,
    ) -> Result<Result<Vec<channel_types::TemplateInfo>, channel_types::ChannelError>, PluginError>
    {
        invoke!(self, plugin, ctx, MessagingChannel, |instance, store| {
            instance.postdog_plugin_channel().call_list_templates(store)
        })
    }

    /// `channel.mark-read` of a messaging-channel plugin.
    pub async fn channel_mark_read(
        &self,
        plugin: &LoadedPlugin,
        ctx: &Arc<CallContext>,
        provider_message_id: &str,
    ) -> Result<Result<(), channel_types::ChannelError>, PluginError> {
        invoke!(self, plugin, ctx, MessagingChannel, |instance, store| {
            instance
                .postdog_plugin_channel()
                .call_mark_read(store, provider_message_id)
        })
    }

    /// `channel.account-status` of a messaging-channel plugin (JSON text).
    pub async fn channel_account_status(
        &self,
        plugin: &LoadedPlugin,
        ctx: &Arc<CallContext>,
    ) -> Result<Result<String, channel_types::ChannelError>, PluginError> {
        let result = invoke!(self, plugin, ctx, MessagingChannel, |instance, store| {
            instance.postdog_plugin_channel().call_account_status(store)
        })?;
        if let Ok(text) = &result {
            check_json("account-status", text)?;
        }
        Ok(result)
    }

    /// `social.publish` of a social-channel plugin.
    pub async fn social_publish(
        &self,
        plugin: &LoadedPlugin,
        ctx: &Arc<CallContext>,
        post: &social_types::Post,
    ) -> Result<Result<social_types::PostReceipt, social_types::SocialError>, PluginError> {
        invoke!(self, plugin, ctx, SocialChannel, |instance, store| instance
            .postdog_plugin_social()
            .call_publish(store, post))
    }

    /// `social.metrics` of a social-channel plugin.
    pub async fn social_metrics(
        &self,
        plugin: &LoadedPlugin,
        ctx: &Arc<CallContext>,
        remote_ids: &[String],
    ) -> Result<Result<Vec<social_types::PostMetrics>, social_types::SocialError>, PluginError>
    {
        invoke!(self, plugin, ctx, SocialChannel, |instance, store| instance
            .postdog_plugin_social()
            .call_metrics(store, remote_ids))
    }

    /// `integration-handler.handle-webhook` of an integration plugin.
    pub async fn integration_handle_webhook(
        &self,
        plugin: &LoadedPlugin,
        ctx: &Arc<CallContext>,
        request: &types::HttpRequest,
    ) -> Result<
        Result<integration_types::IntegrationOutcome, integration_types::IntegrationError>,
        PluginError,
    > {
        invoke!(self, plugin, ctx, Integration, |instance, store| instance
            .postdog_plugin_integration_handler()
            .call_handle_webhook(store, request))
    }

    /// `integration-handler.on-event` of an integration plugin.
    pub async fn integration_on_event(
        &self,
        plugin: &LoadedPlugin,
        ctx: &Arc<CallContext>,
        event: &integration_types::KernelEvent,
    ) -> Result<Result<Vec<types::Effect>, integration_types::IntegrationError>, PluginError> {
        invoke!(self, plugin, ctx, Integration, |instance, store| instance
            .postdog_plugin_integration_handler()
            .call_on_event(store, event))
    }

    /// `integration-handler.sync` of an integration plugin.
    pub async fn integration_sync(
        &self,
        plugin: &LoadedPlugin,
        ctx: &Arc<CallContext>,
        cursor: Option<&str>,
    ) -> Result<Result<integration_types::SyncPage, integration_types::IntegrationError>, PluginError>
    {
        invoke!(self, plugin, ctx, Integration, |instance, store| instance
            .postdog_plugin_integration_handler()
            .call_sync(store, cursor))
    }
}

/// Refuses an action result whose JSON fields (output, effect values, template
/// components, interactive messages) are malformed, before the kernel acts on any of it.
fn check_action_result(result: &action_types::ActionResult) -> Result<(), PluginError> {
    check_json("output", &result.output)?;
    for (index, effect) in result.effects.iter().enumerate() {
        match effect {
            types::Effect::SetField(set) => {
                check_json(&format!("effects[{index}].value"), &set.value)?
            }
            types::Effect::SendMessage(send) => match &send.content {
                types::MessageContent::Template(template) => check_json(
                    &format!("effects[{index}].content.components"),
                    &template.components,
                )?,
                types::MessageContent::Interactive(json) => {
                    check_json(&format!("effects[{index}].content"), json)?
                }
                types::MessageContent::Text(_) | types::MessageContent::Media(_) => {}
            },
            types::Effect::AddTag(_)
            | types::Effect::RemoveTag(_)
            | types::Effect::Assign(_)
            | types::Effect::HttpCall(_) => {}
        }
    }
    Ok(())
}

/// Refuses malformed JSON from a plugin where the ABI promises JSON.
fn check_json(field: &str, text: &str) -> Result<(), PluginError> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|error| PluginError::InvalidResult {
            reason: format!("`{field}` is not valid JSON: {error}"),
        })
}
