//! An in-process cache of what request authentication reads on every call: the API key
//! behind a secret and the tenant behind a key (or named by `PostDog-Act-As`).
//!
//! Without it every authenticated request costs two extra database round trips before
//! the handler starts. Consistency rules:
//! - Every `Storage` method that changes a key or a tenant (revoke, plan, status,
//!   profile) bumps the cache's generation, so this process sees the change on the very
//!   next request.
//! - Other processes on the same database see it within `TTL` (entries are re-read
//!   after that), so a key revoked through one node stops working on every node within
//!   a second.
//! - Unknown secrets are not cached: a flood of random keys cannot push real entries
//!   out, and a key is usable the moment it is created.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::{ApiKey, Storage, StorageError, Tenant};
use crate::ids::TenantId;

/// How long an entry is trusted before it is read again.
const TTL: Duration = Duration::from_secs(1);
/// Entries kept per map before it is cleared (a bound on memory, not an eviction policy
/// worth tuning: a full map is refilled from the database at one query per entry).
const MAX_ENTRIES: usize = 100_000;

struct Entry<T> {
    value: T,
    fetched: Instant,
    generation: u64,
}

/// The cache shared by all clones of one `Storage`.
#[derive(Default)]
pub(crate) struct AuthCache {
    generation: AtomicU64,
    keys: RwLock<HashMap<String, Entry<Arc<ApiKey>>>>,
    tenants: RwLock<HashMap<TenantId, Entry<Arc<Tenant>>>>,
}

impl std::fmt::Debug for AuthCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCache")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl AuthCache {
    /// Forgets everything cached: called after any change to keys or tenants.
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn fresh<K: std::hash::Hash + Eq, T: Clone>(
        &self,
        map: &RwLock<HashMap<K, Entry<T>>>,
        key: &K,
    ) -> Option<T> {
        let generation = self.generation.load(Ordering::Acquire);
        let map = map.read().unwrap_or_else(|poison| poison.into_inner());
        map.get(key)
            .filter(|entry| entry.generation == generation && entry.fetched.elapsed() < TTL)
            .map(|entry| entry.value.clone())
    }

    /// Stores a value read from the database under the generation seen *before* the read,
    /// so a change that lands during the read makes the entry stale at once.
    fn store<K: std::hash::Hash + Eq, T>(
        map: &RwLock<HashMap<K, Entry<T>>>,
        key: K,
        value: T,
        generation: u64,
        fetched: Instant,
    ) {
        let mut map = map.write().unwrap_or_else(|poison| poison.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(
            key,
            Entry {
                value,
                fetched,
                generation,
            },
        );
    }
}

impl Storage {
    /// The active key with this secret, as `find_api_key`, served from the
    /// authentication cache when fresh.
    pub async fn authenticate_key(
        &self,
        secret: &str,
    ) -> Result<Option<Arc<ApiKey>>, StorageError> {
        let hash = super::api_keys::secret_hash(secret);
        let cache = self.auth_cache();
        if let Some(key) = cache.fresh(&cache.keys, &hash) {
            return Ok(Some(key));
        }
        let (generation, fetched) = (cache.generation.load(Ordering::Acquire), Instant::now());
        let key = self.find_api_key(secret).await?.map(Arc::new);
        if let Some(key) = &key {
            AuthCache::store(&cache.keys, hash, key.clone(), generation, fetched);
        }
        Ok(key)
    }

    /// A tenant, as `get_tenant`, served from the authentication cache when fresh.
    pub async fn authenticate_tenant(
        &self,
        id: &TenantId,
    ) -> Result<Option<Arc<Tenant>>, StorageError> {
        let cache = self.auth_cache();
        if let Some(tenant) = cache.fresh(&cache.tenants, id) {
            return Ok(Some(tenant));
        }
        let (generation, fetched) = (cache.generation.load(Ordering::Acquire), Instant::now());
        let tenant = self.get_tenant(id).await?.map(Arc::new);
        if let Some(tenant) = &tenant {
            AuthCache::store(
                &cache.tenants,
                id.clone(),
                tenant.clone(),
                generation,
                fetched,
            );
        }
        Ok(tenant)
    }

    /// Records that the key with `secret` was used now, in the database and in the cache
    /// (so the next requests do not write again).
    pub async fn record_key_use(&self, secret: &str, key_id: &str) -> Result<(), StorageError> {
        let now = super::now_ms();
        self.touch_api_key(key_id, now).await?;
        let cache = self.auth_cache();
        let hash = super::api_keys::secret_hash(secret);
        let mut keys = cache
            .keys
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(entry) = keys.get_mut(&hash) {
            Arc::make_mut(&mut entry.value).last_used_at = Some(now);
        }
        Ok(())
    }
}
