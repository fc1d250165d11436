//! The marketplace: tenants install plugins from the registry, grant their capabilities,
//! configure them (secrets sealed at rest), call them, upgrade, pin and roll back; and the
//! host hot-loads new versions without a restart.
//!
//! How a call finds its code: install id → `Active` (the install row, its call context
//! with grants, config and opened secrets, and an `Arc<Loaded>`). `Loaded` (compiled
//! component + manifest) is shared by every install on the same artifact digest through
//! a map of weak references, so 10,000 tenants on one version share one compiled copy,
//! and a version nobody uses any more is freed when its last call finishes.
//!
//! Changes: every change made through this node replaces or drops the install's `Active`
//! at once. Changes made by other nodes on the same database are seen on the next call
//! after at most `REVALIDATE` (an `Active` older than that re-reads its one row and is
//! rebuilt if the row changed) — no broadcast is needed and no node polls for installs
//! it does not use. A call holds its `Arc<Active>` to the end, so in-flight calls finish
//! on the version they started with while new calls use the new one.
//!
//! Hot-load: `watch` follows the registry's change log; a published version moves every
//! unpinned install whose requirement it satisfies and whose grants cover its
//! capabilities (others are left where they are, with the newer version offered).
//!
//! Health: calls and failures are counted in memory per install and flushed to the
//! database every few seconds. `BREAKER_THRESHOLD` consecutive failures open the install's
//! circuit for `BREAKER_OPEN`; the next call after that is a trial that closes it again
//! on success.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use postdog_registry::{Capability, Manifest, Registry, RegistryError, VersionInfo};
use semver::{Version, VersionReq};
use serde_json::{Map, Value, json};

use crate::ids::{InstallId, TenantId};
use crate::runtime::abi::{channel_types, types};
use crate::runtime::{
    CallContext, CallLimits, Grants, LoadedPlugin, PluginConfig, PluginError, Runtime,
};
use crate::secrets::SecretKeys;
use crate::storage::{Install, Storage, StorageError, TenantDb, now_ms};

/// How old an `Active` may get before its row is checked again.
const REVALIDATE: Duration = Duration::from_secs(1);
/// An `Active` unused this long is dropped (with its opened secrets and, if no other
/// install uses it, the compiled code); the next call rebuilds it.
const IDLE_EVICTION: Duration = Duration::from_secs(600);
/// Consecutive failures that open an install's circuit.
pub const BREAKER_THRESHOLD: u32 = 5;
/// How long an open circuit refuses calls.
pub const BREAKER_OPEN: Duration = Duration::from_secs(30);

/// Why a marketplace operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum MarketplaceError {
    /// No such plugin, version or install.
    #[error("{0}")]
    NotFound(String),
    /// The request is not acceptable as given; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// Capabilities the plugin requests that the tenant has not granted.
    #[error(
        "{plugin} {version} requests capabilities you have not granted: {}; grant them to continue",
        missing.join(", ")
    )]
    Ungranted {
        /// The plugin.
        plugin: String,
        /// The version.
        version: String,
        /// What is missing.
        missing: Vec<String>,
    },
    /// Config values that do not match the plugin's schema.
    #[error("the configuration does not match the plugin's schema: {}", errors.iter().map(|(key, message)| format!("{key}: {message}")).collect::<Vec<_>>().join("; "))]
    InvalidConfig {
        /// (key, message) per problem.
        errors: Vec<(String, String)>,
    },
    /// The install is disabled.
    #[error("this install is disabled; enable it to call it")]
    Disabled,
    /// The install failed repeatedly and is not called for a while.
    #[error(
        "this install failed {failures} times in a row; calls are paused until {until} (Unix ms), then one trial call is let through"
    )]
    CircuitOpen {
        /// Consecutive failures.
        failures: u32,
        /// When a trial call is allowed.
        until: i64,
    },
    /// The plugin failed in the sandbox.
    #[error("the plugin failed: {0}")]
    Plugin(#[from] PluginError),
    /// The registry failed or refused.
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    /// A storage failure.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A secret of the install cannot be opened with the operator's keys.
    #[error(
        "a secret of this install cannot be opened with this server's secrets keys ({0}); \
         the operator must configure the key it was sealed with"
    )]
    SecretsUnavailable(String),
    /// Anything else internal (secrets that do not open, a task that died).
    #[error("{0}")]
    Internal(String),
}

/// A compiled artifact and its manifest, shared by every install on its digest.
pub struct Loaded {
    /// The compiled component.
    pub plugin: LoadedPlugin,
    /// Its manifest.
    pub manifest: Manifest,
}

/// An install ready to be called.
struct Active {
    install: Install,
    loaded: Arc<Loaded>,
    context: Arc<CallContext>,
    checked: Mutex<Instant>,
    /// When a call last used it (Unix ms), for evicting idle installs.
    last_used: AtomicI64,
}

/// Health counters of one install on this node.
#[derive(Default)]
struct Health {
    unflushed_calls: AtomicI64,
    unflushed_failures: AtomicI64,
    consecutive_failures: AtomicU32,
    open_until: AtomicI64,
    trips: AtomicU32,
    last_error: Mutex<Option<(String, i64)>>,
    unflushed_error: Mutex<Option<(String, i64)>>,
}

struct Inner {
    storage: Storage,
    runtime: Runtime,
    registry: Registry,
    secrets: SecretKeys,
    loaded: Mutex<HashMap<String, Weak<Loaded>>>,
    manifests: Mutex<HashMap<String, Arc<Manifest>>>,
    loading: tokio::sync::Mutex<()>,
    active: RwLock<HashMap<String, Arc<Active>>>,
    health: Mutex<HashMap<String, (TenantId, Arc<Health>)>>,
}

/// The marketplace service. Cheap to clone.
#[derive(Clone)]
pub struct Marketplace {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Marketplace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Marketplace").finish_non_exhaustive()
    }
}

/// What may change in an install's settings (absent fields stay as they are).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsChange {
    /// New non-secret configuration (replaces the whole object).
    pub config: Option<Map<String, Value>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// Pin (stop automatic upgrades) or unpin.
    pub pinned: Option<bool>,
    /// A new version requirement (takes effect on the next upgrade).
    pub requirement: Option<String>,
    /// A new set of granted capabilities (must still cover the version in use).
    pub grants: Option<Vec<String>>,
}

impl Marketplace {
    /// A marketplace over `registry`.
    pub fn new(
        storage: Storage,
        runtime: Runtime,
        registry: Registry,
        secrets: SecretKeys,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                storage,
                runtime,
                registry,
                secrets,
                loaded: Mutex::default(),
                manifests: Mutex::default(),
                loading: tokio::sync::Mutex::new(()),
                active: RwLock::default(),
                health: Mutex::default(),
            }),
        }
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The artifacts compiled in memory now, as (plugin, version, digest), sorted: what
    /// installs and in-flight calls still use (unused ones have been freed).
    pub fn loaded_artifacts(&self) -> Vec<(String, String, String)> {
        let mut loaded = self
            .inner
            .loaded
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        loaded.retain(|_, weak| weak.strong_count() > 0);
        let mut artifacts: Vec<(String, String, String)> = loaded
            .iter()
            .filter_map(|(digest, weak)| {
                let loaded = weak.upgrade()?;
                Some((
                    loaded.manifest.name.to_string(),
                    loaded.manifest.version.to_string(),
                    digest.clone(),
                ))
            })
            .collect();
        artifacts.sort();
        artifacts
    }

    /// The artifact `digest`, compiled, from memory or the registry.
    async fn load(&self, digest: &str) -> Result<Arc<Loaded>, MarketplaceError> {
        let cached = |inner: &Inner| {
            inner
                .loaded
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .get(digest)
                .and_then(Weak::upgrade)
        };
        if let Some(loaded) = cached(&self.inner) {
            return Ok(loaded);
        }
        // One compile at a time; whoever waited finds the result in the map.
        let _guard = self.inner.loading.lock().await;
        if let Some(loaded) = cached(&self.inner) {
            return Ok(loaded);
        }
        let artifact = self.inner.registry.download(digest).await?;
        let manifest = artifact.manifest().clone();
        let runtime = self.inner.runtime.clone();
        let component = artifact.component().to_vec();
        let plugin = tokio::task::spawn_blocking(move || runtime.load(&component))
            .await
            .map_err(|error| MarketplaceError::Internal(format!("loading task: {error}")))??;
        if plugin.world().name() != manifest.world.as_str() {
            return Err(MarketplaceError::Invalid(format!(
                "the artifact's component implements {} but its manifest says {}",
                plugin.world(),
                manifest.world.as_str()
            )));
        }
        let loaded = Arc::new(Loaded { plugin, manifest });
        self.inner
            .loaded
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(digest.to_string(), Arc::downgrade(&loaded));
        Ok(loaded)
    }

    fn forget(&self, install_id: &str) {
        self.inner
            .active
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(install_id);
    }

    /// Newest non-yanked version of `plugin` matching `requirement`.
    async fn resolve(
        &self,
        plugin: &str,
        requirement: &VersionReq,
    ) -> Result<VersionInfo, MarketplaceError> {
        match self.inner.registry.resolve(plugin, requirement).await {
            Ok(Some(version)) => Ok(version),
            Ok(None) => Err(MarketplaceError::Invalid(format!(
                "no published version of {plugin} matches `{requirement}`"
            ))),
            Err(RegistryError::NotFound { .. }) => Err(MarketplaceError::NotFound(format!(
                "no plugin named {plugin} in the registry"
            ))),
            Err(error) => Err(error.into()),
        }
    }

    /// Installs `plugin` at the newest version matching `requirement` with `grants`.
    pub async fn install(
        &self,
        db: &TenantDb,
        plugin: &str,
        requirement: &str,
        grants: Vec<String>,
        config: Map<String, Value>,
    ) -> Result<Install, MarketplaceError> {
        let parsed = parse_requirement(requirement)?;
        check_capability_names(&grants)?;
        let version = self.resolve(plugin, &parsed).await?;
        check_granted(&version, &grants)?;
        check_host_version(&version)?;
        let loaded = self.load(&version.digest.to_string()).await?;
        validate_config(&loaded.manifest, &config)?;
        let now = now_ms();
        let install = Install {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: db.tenant_id().clone(),
            plugin: plugin.to_string(),
            requirement: requirement.trim().to_string(),
            version: version.version.to_string(),
            digest: version.digest.to_string(),
            previous_version: None,
            previous_digest: None,
            pinned: false,
            enabled: true,
            grants,
            config,
            calls: 0,
            failures: 0,
            last_error: None,
            last_error_at: None,
            created_at: now,
            updated_at: now,
        };
        db.create_install(&install).await?;
        Ok(install)
    }

    /// One of the tenant's installs (`health_json` adds this node's unflushed counters).
    pub async fn get(&self, db: &TenantDb, id: &str) -> Result<Install, MarketplaceError> {
        db.get_install(id)
            .await?
            .ok_or_else(|| MarketplaceError::NotFound(format!("no install {id}")))
    }

    /// The manifest of the version an install is on.
    /// (From compiled code in memory if there is any, else from the registry without
    /// compiling; manifests are small and kept.)
    pub async fn manifest_of(&self, install: &Install) -> Result<Arc<Manifest>, MarketplaceError> {
        let digest = &install.digest;
        if let Some(manifest) = self
            .inner
            .manifests
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(digest)
        {
            return Ok(manifest.clone());
        }
        let manifest = Arc::new(
            self.inner
                .registry
                .download(digest)
                .await?
                .manifest()
                .clone(),
        );
        self.inner
            .manifests
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(digest.clone(), manifest.clone());
        Ok(manifest)
    }

    /// Health of an install as JSON: totals, last error, circuit state.
    pub fn health_json(&self, install: &Install) -> Value {
        let health = self.health(&install.tenant_id, &install.id);
        let unflushed_calls = health.unflushed_calls.load(Ordering::Relaxed);
        let unflushed_failures = health.unflushed_failures.load(Ordering::Relaxed);
        let last = health
            .last_error
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        let (last_error, last_error_at) = match last {
            Some((message, at)) => (Some(message), Some(at)),
            None => (install.last_error.clone(), install.last_error_at),
        };
        let open_until = health.open_until.load(Ordering::Acquire);
        let consecutive = health.consecutive_failures.load(Ordering::Acquire);
        let circuit = if open_until == 0 {
            "closed"
        } else if now_ms() < open_until {
            "open"
        } else {
            "half-open"
        };
        json!({
            "calls": install.calls + unflushed_calls,
            "failures": install.failures + unflushed_failures,
            "consecutive_failures": consecutive,
            "last_error": last_error,
            "last_error_at": last_error_at,
            "circuit": circuit,
            "circuit_open_until": (open_until != 0).then_some(open_until),
        })
    }

    /// Changes an install's settings.
    pub async fn update(
        &self,
        db: &TenantDb,
        id: &str,
        change: SettingsChange,
    ) -> Result<Install, MarketplaceError> {
        let mut install = self.get(db, id).await?;
        let manifest = self.manifest_of(&install).await?;
        if let Some(requirement) = change.requirement {
            parse_requirement(&requirement)?;
            install.requirement = requirement.trim().to_string();
        }
        if let Some(grants) = change.grants {
            check_capability_names(&grants)?;
            let requested: Vec<String> = manifest
                .capabilities
                .iter()
                .map(ToString::to_string)
                .collect();
            let missing: Vec<String> = requested
                .iter()
                .filter(|cap| !grants.contains(cap))
                .cloned()
                .collect();
            if !missing.is_empty() {
                return Err(MarketplaceError::Ungranted {
                    plugin: install.plugin.clone(),
                    version: install.version.clone(),
                    missing,
                });
            }
            install.grants = grants;
        }
        if let Some(config) = change.config {
            validate_config(&manifest, &config)?;
            install.config = config;
        }
        if let Some(enabled) = change.enabled {
            install.enabled = enabled;
        }
        if let Some(pinned) = change.pinned {
            install.pinned = pinned;
        }
        db.save_install_settings(&install).await?;
        self.forget(&install.id);
        self.get(db, id).await
    }

    /// Sets (or replaces: rotates) a secret of an install.
    pub async fn set_secret(
        &self,
        db: &TenantDb,
        id: &str,
        name: &str,
        value: &str,
    ) -> Result<(), MarketplaceError> {
        let install = self.get(db, id).await?;
        let manifest = self.manifest_of(&install).await?;
        let secret_keys = manifest.config.secret_keys();
        if !secret_keys.contains(&name) {
            return Err(MarketplaceError::Invalid(format!(
                "`{name}` is not a secret of {}; its secrets are: {}",
                install.plugin,
                if secret_keys.is_empty() {
                    "none".to_string()
                } else {
                    secret_keys.join(", ")
                }
            )));
        }
        if let Some(property) = manifest.config.properties().get(name)
            && let Err(message) = property.check(name, &Value::String(value.to_string()))
        {
            return Err(MarketplaceError::InvalidConfig {
                errors: vec![(name.to_string(), message)],
            });
        }
        let sealed = self.inner.secrets.seal(&install.id, name, value);
        db.put_install_secret(&install.id, name, &sealed).await?;
        self.forget(&install.id);
        Ok(())
    }

    /// Removes a secret; whether it was set.
    pub async fn delete_secret(
        &self,
        db: &TenantDb,
        id: &str,
        name: &str,
    ) -> Result<bool, MarketplaceError> {
        self.get(db, id).await?;
        let removed = db.delete_install_secret(id, name).await?;
        self.forget(id);
        Ok(removed)
    }

    /// The names of an install's secrets that are set (never their values).
    pub async fn secret_names(
        &self,
        db: &TenantDb,
        id: &str,
    ) -> Result<Vec<String>, MarketplaceError> {
        Ok(db
            .install_secrets(id)
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    async fn open_secrets(
        &self,
        db: &TenantDb,
        id: &str,
    ) -> Result<Vec<(String, String)>, MarketplaceError> {
        db.install_secrets(id)
            .await?
            .into_iter()
            .map(|(name, sealed)| {
                self.inner
                    .secrets
                    .open(id, &name, &sealed)
                    .map(|value| (name, value))
                    .map_err(|error| MarketplaceError::SecretsUnavailable(error.to_string()))
            })
            .collect()
    }

    /// Moves an install to the newest version matching its requirement, if newer.
    pub async fn upgrade(&self, db: &TenantDb, id: &str) -> Result<Install, MarketplaceError> {
        let install = self.get(db, id).await?;
        let requirement = parse_requirement(&install.requirement)?;
        let newest = self.resolve(&install.plugin, &requirement).await?;
        let current = Version::parse(&install.version)
            .map_err(|error| MarketplaceError::Internal(format!("stored version: {error}")))?;
        if newest.version <= current {
            return Ok(install);
        }
        check_granted(&newest, &install.grants)?;
        check_host_version(&newest)?;
        self.load(&newest.digest.to_string()).await?;
        db.move_install(
            id,
            &install.digest,
            &newest.version.to_string(),
            &newest.digest.to_string(),
            install.pinned,
        )
        .await?;
        self.forget(id);
        self.get(db, id).await
    }

    /// Returns an install to its previous version and pins it there.
    pub async fn rollback(&self, db: &TenantDb, id: &str) -> Result<Install, MarketplaceError> {
        let install = self.get(db, id).await?;
        let (Some(version), Some(digest)) = (&install.previous_version, &install.previous_digest)
        else {
            return Err(MarketplaceError::Invalid(
                "this install has no previous version to roll back to".into(),
            ));
        };
        self.load(digest).await?;
        db.move_install(id, &install.digest, version, digest, true)
            .await?;
        self.forget(id);
        self.get(db, id).await
    }

    /// Uninstalls (configuration, secrets and kv data are deleted).
    pub async fn uninstall(&self, db: &TenantDb, id: &str) -> Result<bool, MarketplaceError> {
        let removed = db.delete_install(id).await?;
        self.forget(id);
        Ok(removed)
    }

    /// The install, ready to call (built or revalidated as needed).
    async fn active(&self, db: &TenantDb, id: &str) -> Result<Arc<Active>, MarketplaceError> {
        let existing = self
            .inner
            .active
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(id)
            .cloned();
        if let Some(active) = existing {
            if active.install.tenant_id != *db.tenant_id() {
                return Err(MarketplaceError::NotFound(format!("no install {id}")));
            }
            let stale = active
                .checked
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .elapsed()
                >= REVALIDATE;
            if !stale {
                return Ok(active);
            }
            match db.get_install(id).await? {
                Some(row)
                    if row.updated_at == active.install.updated_at
                        && row.digest == active.install.digest =>
                {
                    *active
                        .checked
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner()) = Instant::now();
                    return Ok(active);
                }
                _ => self.forget(id),
            }
        }
        let install = self.get(db, id).await?;
        let loaded = self.load(&install.digest).await?;
        // Capabilities = what this version requests ∧ what the tenant granted; a version
        // requesting `http-tenant-hosts` also gets every `http:<host>` the tenant granted.
        let tenant_hosts = loaded
            .manifest
            .capabilities
            .contains(&Capability::HttpTenantHosts)
            && install
                .grants
                .iter()
                .any(|granted| granted == "http-tenant-hosts");
        let granted: Vec<&String> = install
            .grants
            .iter()
            .filter(|granted| {
                loaded
                    .manifest
                    .capabilities
                    .iter()
                    .any(|cap| cap.to_string() == **granted)
                    || (tenant_hosts && granted.starts_with("http:"))
            })
            .collect();
        let grants = Grants::parse(granted)
            .map_err(|error| MarketplaceError::Internal(error.to_string()))?;
        let secrets = self.open_secrets(db, id).await?;
        let values = install
            .config
            .iter()
            .map(|(key, value)| {
                let text = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                (key.clone(), text)
            })
            .collect();
        let mut context = CallContext::new(
            install.tenant_id.clone(),
            InstallId::new(&install.id),
            install.plugin.clone(),
        )
        .with_grants(grants)
        .with_config(PluginConfig {
            values,
            secrets: secrets.into_iter().collect(),
        });
        if let Some(memory_mb) = loaded.manifest.limits.memory_mb {
            context.limits = Some(CallLimits {
                memory_bytes: u64::from(memory_mb) << 20,
                timeout: loaded
                    .manifest
                    .limits
                    .timeout_ms
                    .map_or(Duration::from_secs(5), |ms| {
                        Duration::from_millis(u64::from(ms))
                    }),
            });
        }
        let active = Arc::new(Active {
            install,
            loaded,
            context: Arc::new(context),
            checked: Mutex::new(Instant::now()),
            last_used: AtomicI64::new(now_ms()),
        });
        self.inner
            .active
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(id.to_string(), active.clone());
        Ok(active)
    }

    fn health(&self, tenant: &TenantId, id: &str) -> Arc<Health> {
        let mut health = self
            .inner
            .health
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        health
            .entry(id.to_string())
            .or_insert_with(|| (tenant.clone(), Arc::default()))
            .1
            .clone()
    }

    /// Calls an install's `function` (default: the world's main one) with JSON `input`;
    /// the plugin's answer as JSON (`{"ok": …}` or `{"error": …}`).
    pub async fn call(
        &self,
        db: &TenantDb,
        id: &str,
        function: Option<&str>,
        input: Value,
    ) -> Result<Value, MarketplaceError> {
        let active = self.active(db, id).await?;
        active.last_used.store(now_ms(), Ordering::Relaxed);
        if !active.install.enabled {
            return Err(MarketplaceError::Disabled);
        }
        let health = self.health(db.tenant_id(), id);
        let open_until = health.open_until.load(Ordering::Acquire);
        if open_until != 0 && now_ms() < open_until {
            return Err(MarketplaceError::CircuitOpen {
                failures: health.consecutive_failures.load(Ordering::Acquire),
                until: open_until,
            });
        }
        let result = crate::plugin_dev::call(
            &self.inner.runtime,
            &active.loaded.plugin,
            &active.context,
            function,
            input,
        )
        .await;
        health.unflushed_calls.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(value) => {
                health.consecutive_failures.store(0, Ordering::Release);
                if health.open_until.swap(0, Ordering::AcqRel) != 0 {
                    health.trips.store(0, Ordering::Release);
                    tracing::info!(
                        install_id = id,
                        "circuit closed after a successful trial call"
                    );
                }
                Ok(value)
            }
            Err(error) => match error.downcast::<PluginError>() {
                Ok(plugin_error) => {
                    self.record_failure(&health, id, &plugin_error.to_string());
                    Err(MarketplaceError::Plugin(plugin_error))
                }
                // Not the plugin's fault: the input did not fit the function.
                Err(error) => Err(MarketplaceError::Invalid(format!("{error:#}"))),
            },
        }
    }

    /// Seals `value` with the operator's secrets key for storage outside installs (for
    /// example tenant webhook secrets): `key_id.nonce.ciphertext`, base64 parts. `scope`
    /// and `name` are bound to it and must be given again to open it.
    pub fn seal_text(&self, scope: &str, name: &str, value: &str) -> String {
        use base64::Engine as _;
        let sealed = self.inner.secrets.seal(scope, name, value);
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        format!(
            "{}.{}.{}",
            sealed.key_id,
            b64.encode(&sealed.nonce),
            b64.encode(&sealed.ciphertext)
        )
    }

    /// Opens what [`Marketplace::seal_text`] sealed.
    pub fn open_text(
        &self,
        scope: &str,
        name: &str,
        text: &str,
    ) -> Result<String, MarketplaceError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        let mut parts = text.splitn(3, '.');
        let (Some(key_id), Some(nonce), Some(ciphertext)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(MarketplaceError::SecretsUnavailable(format!(
                "{name}: not a sealed value"
            )));
        };
        let sealed = crate::secrets::Sealed {
            key_id: key_id.to_string(),
            nonce: b64.decode(nonce).map_err(|error| {
                MarketplaceError::SecretsUnavailable(format!("{name}: {error}"))
            })?,
            ciphertext: b64.decode(ciphertext).map_err(|error| {
                MarketplaceError::SecretsUnavailable(format!("{name}: {error}"))
            })?,
        };
        self.inner
            .secrets
            .open(scope, name, &sealed)
            .map_err(|error| MarketplaceError::SecretsUnavailable(format!("{name}: {error}")))
    }

    /// A ready-to-call handle on a messaging-channel install of this tenant: checks it
    /// exists, is enabled, implements the messaging-channel world and its circuit is not
    /// open. Calls through the handle count in the install's health like any other.
    pub async fn channel(
        &self,
        db: &TenantDb,
        id: &str,
    ) -> Result<ChannelHandle, MarketplaceError> {
        self.handle(
            db,
            id,
            crate::runtime::World::MessagingChannel,
            "a messaging channel",
        )
        .await
    }

    /// As [`Marketplace::channel`], for a flow-action install.
    pub async fn action(&self, db: &TenantDb, id: &str) -> Result<ChannelHandle, MarketplaceError> {
        self.handle(db, id, crate::runtime::World::FlowAction, "a flow action")
            .await
    }

    async fn handle(
        &self,
        db: &TenantDb,
        id: &str,
        world: crate::runtime::World,
        what: &str,
    ) -> Result<ChannelHandle, MarketplaceError> {
        let active = self.active(db, id).await?;
        active.last_used.store(now_ms(), Ordering::Relaxed);
        if !active.install.enabled {
            return Err(MarketplaceError::Disabled);
        }
        if active.loaded.plugin.world() != world {
            return Err(MarketplaceError::Invalid(format!(
                "install {id} is {} {}, a {} plugin, not {what}",
                active.install.plugin,
                active.install.version,
                active.loaded.plugin.world()
            )));
        }
        let health = self.health(db.tenant_id(), id);
        let open_until = health.open_until.load(Ordering::Acquire);
        if open_until != 0 && now_ms() < open_until {
            return Err(MarketplaceError::CircuitOpen {
                failures: health.consecutive_failures.load(Ordering::Acquire),
                until: open_until,
            });
        }
        Ok(ChannelHandle {
            marketplace: self.clone(),
            active,
            health,
        })
    }

    fn record_outcome<T>(
        &self,
        health: &Health,
        id: &str,
        result: Result<T, PluginError>,
    ) -> Result<T, MarketplaceError> {
        health.unflushed_calls.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(value) => {
                health.consecutive_failures.store(0, Ordering::Release);
                if health.open_until.swap(0, Ordering::AcqRel) != 0 {
                    health.trips.store(0, Ordering::Release);
                }
                Ok(value)
            }
            Err(error) => {
                self.record_failure(health, id, &error.to_string());
                Err(MarketplaceError::Plugin(error))
            }
        }
    }

    fn record_failure(&self, health: &Health, id: &str, message: &str) {
        health.unflushed_failures.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let entry = Some((message.to_string(), now));
        *health
            .last_error
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = entry.clone();
        *health
            .unflushed_error
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = entry;
        let consecutive = health.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let half_open = health.open_until.load(Ordering::Acquire) != 0;
        if consecutive >= BREAKER_THRESHOLD || half_open {
            let trips = health.trips.fetch_add(1, Ordering::AcqRel).min(4);
            // 30 s, doubling on each trip in a row, at most 8 minutes.
            let open_for = BREAKER_OPEN * 2_u32.pow(trips);
            let until = now + i64::try_from(open_for.as_millis()).unwrap_or(i64::MAX);
            health.open_until.store(until, Ordering::Release);
            tracing::error!(
                install_id = id,
                consecutive,
                until,
                last_error = message,
                "plugin install circuit-broken"
            );
        }
    }

    /// Re-seals every secret sealed with a previous operator key under the current one
    /// (the second half of a key rotation); how many. A value whose key is gone is
    /// reported and left as it is.
    pub async fn reseal_secrets(&self) -> Result<usize, MarketplaceError> {
        let secrets = &self.inner.secrets;
        let mut resealed = 0;
        for (_tenant, install_id, name, sealed) in self
            .inner
            .storage
            .secrets_sealed_with_other_keys(secrets.current_id())
            .await?
        {
            match secrets.open(&install_id, &name, &sealed) {
                Ok(value) => {
                    let fresh = secrets.seal(&install_id, &name, &value);
                    if self
                        .inner
                        .storage
                        .reseal_secret(&install_id, &name, &sealed.key_id, &fresh)
                        .await?
                    {
                        resealed += 1;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, install_id, secret = name, "cannot re-seal a secret");
                }
            }
        }
        Ok(resealed)
    }

    /// Drops ready-to-call installs no call used for `idle`; how many.
    pub fn evict_idle(&self, idle: Duration) -> usize {
        let cutoff = now_ms() - i64::try_from(idle.as_millis()).unwrap_or(i64::MAX);
        let mut active = self
            .inner
            .active
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        let before = active.len();
        active.retain(|_, entry| entry.last_used.load(Ordering::Relaxed) > cutoff);
        let evicted = before - active.len();
        // Health of installs no longer in memory is kept only while it still matters:
        // counts not yet flushed, or a circuit that is not closed.
        self.inner
            .health
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .retain(|id, (_, health)| {
                active.contains_key(id)
                    || health.unflushed_calls.load(Ordering::Acquire) != 0
                    || health.unflushed_failures.load(Ordering::Acquire) != 0
                    || health.open_until.load(Ordering::Acquire) != 0
                    || health.consecutive_failures.load(Ordering::Acquire) != 0
            });
        evicted
    }

    /// Writes the in-memory call counters to the database.
    pub async fn flush_health(&self) {
        let entries: Vec<(String, TenantId, Arc<Health>)> = self
            .inner
            .health
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .map(|(id, (tenant, health))| (id.clone(), tenant.clone(), health.clone()))
            .collect();
        for (id, tenant, health) in entries {
            let calls = health.unflushed_calls.swap(0, Ordering::AcqRel);
            let failures = health.unflushed_failures.swap(0, Ordering::AcqRel);
            let error = health
                .unflushed_error
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .take();
            if calls == 0 && failures == 0 && error.is_none() {
                continue;
            }
            let last = error.as_ref().map(|(message, at)| (message.as_str(), *at));
            if let Err(error) = self
                .inner
                .storage
                .add_install_health(&tenant, &id, calls, failures, last)
                .await
            {
                tracing::warn!(%error, install_id = id, "could not record install health; will retry");
                health.unflushed_calls.fetch_add(calls, Ordering::AcqRel);
                health
                    .unflushed_failures
                    .fetch_add(failures, Ordering::AcqRel);
            }
        }
    }

    /// Applies one published version to every unpinned install it may move.
    pub async fn hot_load(&self, published: &VersionInfo) -> Result<usize, MarketplaceError> {
        let mut moved = 0;
        for install in self
            .inner
            .storage
            .unpinned_installs_of(&published.name.to_string())
            .await?
        {
            let Ok(requirement) = VersionReq::parse(&install.requirement) else {
                continue;
            };
            let Ok(current) = Version::parse(&install.version) else {
                continue;
            };
            if !requirement.matches(&published.version) || published.version <= current {
                continue;
            }
            if check_granted(published, &install.grants).is_err()
                || check_host_version(published).is_err()
            {
                tracing::info!(install_id = install.id, version = %published.version, "newer version needs more grants; left for the tenant to upgrade");
                continue;
            }
            // Compile before switching, so no call waits for it.
            let loaded = self.load(&published.digest.to_string()).await?;
            if self
                .inner
                .storage
                .move_install(
                    &install.tenant_id,
                    &install.id,
                    &install.digest,
                    &published.version.to_string(),
                    &published.digest.to_string(),
                    false,
                )
                .await?
            {
                moved += 1;
                self.forget(&install.id);
                // Build the install's new `Active` now (it holds `loaded`): the next call
                // on this node finds it ready; in-flight calls keep the old one.
                let db = self.inner.storage.tenant(&install.tenant_id);
                if let Err(error) = self.active(&db, &install.id).await {
                    tracing::warn!(%error, install_id = install.id, "could not prepare an upgraded install");
                }
            }
            drop(loaded);
        }
        Ok(moved)
    }

    /// Follows the registry's change log until `stop` fires, hot-loading each published
    /// version and flushing health counters, every `interval`.
    pub async fn watch(self, interval: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut sequence = 0;
        loop {
            match self.inner.registry.changes_since(sequence).await {
                Ok((changes, next)) => {
                    for change in changes {
                        if let postdog_registry::Change::Published(version) = change {
                            match self.hot_load(&version).await {
                                Ok(0) => {}
                                Ok(moved) => {
                                    tracing::info!(plugin = %version.name, version = %version.version, moved, "hot-loaded a new plugin version")
                                }
                                Err(error) => {
                                    tracing::error!(%error, plugin = %version.name, "could not hot-load a new version")
                                }
                            }
                        }
                    }
                    sequence = next;
                }
                Err(error) => tracing::warn!(%error, "could not read the registry's changes"),
            }
            self.flush_health().await;
            self.evict_idle(IDLE_EVICTION);
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stop.changed() => {
                    self.flush_health().await;
                    return;
                }
            }
        }
    }
}

fn parse_requirement(text: &str) -> Result<VersionReq, MarketplaceError> {
    VersionReq::parse(text.trim()).map_err(|error| {
        MarketplaceError::Invalid(format!(
            "`{text}` is not a version requirement ({error}); use e.g. `^1.2`, `~1.2.3`, `=1.0.0` or `*`"
        ))
    })
}

fn check_capability_names(grants: &[String]) -> Result<(), MarketplaceError> {
    for grant in grants {
        grant
            .parse::<Capability>()
            .map_err(|error| MarketplaceError::Invalid(format!("grant `{grant}`: {error}")))?;
    }
    Ok(())
}

fn check_granted(version: &VersionInfo, grants: &[String]) -> Result<(), MarketplaceError> {
    let missing: Vec<String> = version
        .capabilities
        .iter()
        .filter(|cap| !grants.contains(cap))
        .cloned()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MarketplaceError::Ungranted {
            plugin: version.name.to_string(),
            version: version.version.to_string(),
            missing,
        })
    }
}

fn check_host_version(version: &VersionInfo) -> Result<(), MarketplaceError> {
    let host = Version::parse(env!("CARGO_PKG_VERSION")).expect("the crate version is semver");
    match &version.min_host_version {
        Some(minimum) if *minimum > host => Err(MarketplaceError::Invalid(format!(
            "{} {} needs PostDog {minimum} or newer; this host is {host}",
            version.name, version.version
        ))),
        _ => Ok(()),
    }
}

/// Checks non-secret `config` against the manifest's schema. Secret keys may not appear
/// in it (they are set one by one and checked then); required keys may still be missing
/// (an install can be configured step by step; `missing_settings` lists what is left).
fn validate_config(
    manifest: &Manifest,
    config: &Map<String, Value>,
) -> Result<(), MarketplaceError> {
    let secret_keys = manifest.config.secret_keys();
    let mut errors: Vec<(String, String)> = config
        .keys()
        .filter(|key| secret_keys.contains(&key.as_str()))
        .map(|key| {
            (
                key.clone(),
                format!("`{key}` is a secret: set it with PUT /v1/installs/{{id}}/secrets/{key}"),
            )
        })
        .collect();
    let mut view = config.clone();
    for key in &secret_keys {
        view.remove(*key);
    }
    if let Err(found) = manifest.config.validate(&view) {
        errors.extend(
            found
                .into_iter()
                .filter(|error| {
                    view.contains_key(&error.key)
                        || !manifest.config.required().contains(&error.key)
                })
                .filter(|error| !secret_keys.contains(&error.key.as_str()))
                .map(|error| (error.key, error.message)),
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(MarketplaceError::InvalidConfig { errors })
    }
}

/// Required settings (config keys or secrets) an install does not have yet.
pub fn missing_settings(
    manifest: &Manifest,
    config: &Map<String, Value>,
    secrets: &[String],
) -> Vec<String> {
    manifest
        .config
        .required()
        .iter()
        .filter(|key| !config.contains_key(*key) && !secrets.contains(key))
        .cloned()
        .collect()
}

/// A messaging-channel install ready to be called (see [`Marketplace::channel`]).
pub struct ChannelHandle {
    marketplace: Marketplace,
    active: Arc<Active>,
    health: Arc<Health>,
}

type ChannelResult<T> = Result<Result<T, channel_types::ChannelError>, MarketplaceError>;

impl ChannelHandle {
    /// The install.
    pub fn install(&self) -> &Install {
        &self.active.install
    }

    /// The plugin's name (for example `postdog/whatsapp`).
    pub fn plugin(&self) -> &str {
        &self.active.install.plugin
    }

    fn runtime(&self) -> &Runtime {
        &self.marketplace.inner.runtime
    }

    fn finish<T>(&self, result: Result<T, PluginError>) -> Result<T, MarketplaceError> {
        self.marketplace
            .record_outcome(&self.health, &self.active.install.id, result)
    }

    /// `channel.send`.
    pub async fn send(
        &self,
        message: &channel_types::OutboundMessage,
    ) -> ChannelResult<channel_types::SendReceipt> {
        let result = self
            .runtime()
            .channel_send(&self.active.loaded.plugin, &self.active.context, message)
            .await;
        self.finish(result)
    }

    /// `channel.verify-webhook`.
    pub async fn verify_webhook(
        &self,
        request: &types::HttpRequest,
    ) -> ChannelResult<types::HttpResponse> {
        let result = self
            .runtime()
            .channel_verify_webhook(&self.active.loaded.plugin, &self.active.context, request)
            .await;
        self.finish(result)
    }

    /// `channel.handle-webhook`.
    pub async fn handle_webhook(
        &self,
        request: &types::HttpRequest,
    ) -> ChannelResult<channel_types::WebhookOutcome> {
        let result = self
            .runtime()
            .channel_handle_webhook(&self.active.loaded.plugin, &self.active.context, request)
            .await;
        self.finish(result)
    }

    /// `channel.submit-template`.
    pub async fn submit_template(
        &self,
        template: &channel_types::TemplateDefinition,
    ) -> ChannelResult<channel_types::TemplateInfo> {
        let result = self
            .runtime()
            .channel_submit_template(&self.active.loaded.plugin, &self.active.context, template)
            .await;
        self.finish(result)
    }

    /// `channel.list-templates`.
    pub async fn list_templates(&self) -> ChannelResult<Vec<channel_types::TemplateInfo>> {
        let result = self
            .runtime()
            .channel_list_templates(&self.active.loaded.plugin, &self.active.context)
            .await;
        self.finish(result)
    }

    /// `channel.mark-read`.
    pub async fn mark_read(&self, provider_message_id: &str) -> ChannelResult<()> {
        let result = self
            .runtime()
            .channel_mark_read(
                &self.active.loaded.plugin,
                &self.active.context,
                provider_message_id,
            )
            .await;
        self.finish(result)
    }

    /// `action.describe`.
    pub async fn describe(
        &self,
    ) -> Result<crate::runtime::abi::action_types::Descriptor, MarketplaceError> {
        let result = self
            .runtime()
            .action_describe(&self.active.loaded.plugin, &self.active.context)
            .await;
        self.finish(result)
    }

    /// `action.run`.
    pub async fn run_action(
        &self,
        input: &crate::runtime::abi::action_types::ActionInput,
    ) -> Result<
        Result<
            crate::runtime::abi::action_types::ActionResult,
            crate::runtime::abi::action_types::ActionError,
        >,
        MarketplaceError,
    > {
        let result = self
            .runtime()
            .action_run(&self.active.loaded.plugin, &self.active.context, input)
            .await;
        self.finish(result)
    }

    /// `action.run` with no grants at all (no http, kv or contacts): the flow simulator's
    /// call, which must not reach anything outside the sandbox.
    pub async fn run_action_isolated(
        &self,
        input: &crate::runtime::abi::action_types::ActionInput,
    ) -> Result<
        Result<
            crate::runtime::abi::action_types::ActionResult,
            crate::runtime::abi::action_types::ActionError,
        >,
        MarketplaceError,
    > {
        let context = Arc::new(
            (*self.active.context)
                .clone()
                .with_grants(crate::runtime::Grants::none()),
        );
        let result = self
            .runtime()
            .action_run(&self.active.loaded.plugin, &context, input)
            .await;
        result.map_err(MarketplaceError::Plugin)
    }

    /// The artifact's digest (changes with the version).
    pub fn digest(&self) -> &str {
        &self.active.install.digest
    }

    /// `channel.account-status` (JSON text).
    pub async fn account_status(&self) -> ChannelResult<String> {
        let result = self
            .runtime()
            .channel_account_status(&self.active.loaded.plugin, &self.active.context)
            .await;
        self.finish(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeConfig;

    /// Idle installs are dropped, and with them the compiled code nobody else uses; the
    /// next call rebuilds everything.
    #[tokio::test]
    async fn idle_installs_are_evicted_and_their_code_freed() -> anyhow::Result<()> {
        let db = crate::storage::testing::sqlite().await?;
        let dir = tempfile::tempdir()?;
        let registry = Registry::open(&dir.path().display().to_string())?;
        let key = postdog_registry::PublisherKey::generate()?;
        crate::first_party::seed(&registry, &key).await?;
        let runtime = Runtime::new(RuntimeConfig::default(), Some(db.storage.clone()))?;
        let secrets = SecretKeys::from_base64(&SecretKeys::generate_base64(), &[])?;
        let marketplace = Marketplace::new(db.storage.clone(), runtime, registry, secrets);
        let tenant = db.storage.create_tenant("Idle", "pro").await?;
        let tenant_db = db.storage.tenant(&tenant.id);
        let install = marketplace
            .install(
                &tenant_db,
                "postdog/hello-action",
                "^0.1",
                vec!["kv".into()],
                Map::new(),
            )
            .await?;
        let input = json!({"contact": {"name": "Ada"}});
        let answer = marketplace
            .call(&tenant_db, &install.id, None, input.clone())
            .await?;
        assert!(answer.get("ok").is_some(), "{answer}");
        assert_eq!(marketplace.loaded_artifacts().len(), 1);

        // Recently used: kept.
        assert_eq!(marketplace.evict_idle(Duration::from_secs(60)), 0);
        assert_eq!(marketplace.loaded_artifacts().len(), 1);
        // Idle: dropped, and the compiled code with it.
        marketplace.flush_health().await;
        assert_eq!(marketplace.evict_idle(Duration::ZERO), 1);
        assert!(marketplace.loaded_artifacts().is_empty());
        assert!(marketplace.inner.health.lock().expect("lock").is_empty());
        // The flushed counts are in the database.
        assert_eq!(marketplace.get(&tenant_db, &install.id).await?.calls, 1);
        // The next call rebuilds it.
        let answer = marketplace
            .call(&tenant_db, &install.id, None, input)
            .await?;
        assert!(answer.get("ok").is_some(), "{answer}");
        assert_eq!(marketplace.loaded_artifacts().len(), 1);
        Ok(())
    }
}
