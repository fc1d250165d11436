//! The host side of the `postdog:plugin` import interfaces. Every function first checks
//! the install's grants (a missing grant is `denied`, never an error the host swallows),
//! then acts strictly within the call's tenant and install: kv goes through a
//! tenant-scoped storage handle built from the store's own context, so a plugin cannot
//! name another tenant or install even if it tries.

use crate::outbound_http::{OutboundError, OutboundRequest};
use crate::storage::KvError as StoreKvError;

use super::bindings::v0_1_0::{
    action_types, channel_types, config, contacts, http, integration_types, kv, log, social_types,
    types,
};
use super::store_data::PluginState;

/// Longest log line kept from a plugin.
const MAX_LOG_LINE: usize = 16 * 1024;
/// Most keys `list-keys` returns.
const MAX_LISTED_KEYS: u32 = 1000;

impl types::Host for PluginState {}
impl action_types::Host for PluginState {}
impl channel_types::Host for PluginState {}
impl social_types::Host for PluginState {}
impl integration_types::Host for PluginState {}

fn truncate_on_char_boundary(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("… [truncated]");
    }
}

impl log::Host for PluginState {
    async fn log(&mut self, level: log::Level, mut message: String) -> wasmtime::Result<()> {
        truncate_on_char_boundary(&mut message, MAX_LOG_LINE);
        let ctx = &self.ctx;
        let (tenant_id, install_id, plugin) = (
            ctx.tenant_id.as_str(),
            ctx.install_id.as_str(),
            ctx.plugin.as_str(),
        );
        match level {
            log::Level::Trace => {
                tracing::trace!(target: "plugin", tenant_id, install_id, plugin, "{message}")
            }
            log::Level::Debug => {
                tracing::debug!(target: "plugin", tenant_id, install_id, plugin, "{message}")
            }
            log::Level::Info => {
                tracing::info!(target: "plugin", tenant_id, install_id, plugin, "{message}")
            }
            log::Level::Warn => {
                tracing::warn!(target: "plugin", tenant_id, install_id, plugin, "{message}")
            }
            log::Level::Error => {
                tracing::error!(target: "plugin", tenant_id, install_id, plugin, "{message}")
            }
        }
        Ok(())
    }
}

impl PluginState {
    /// The kv handle of this call's (tenant, install), created on first use.
    fn plugin_kv(&mut self) -> Result<&crate::storage::PluginKv, kv::KvError> {
        if !self.ctx.grants.kv {
            return Err(kv::KvError::Denied);
        }
        if self.kv.is_none() {
            let Some(storage) = &self.services.storage else {
                return Err(kv::KvError::Unavailable(
                    "this host runs without a database (for example `postdog plugin run` \
                     without --data-dir)"
                        .into(),
                ));
            };
            let handle = storage
                .tenant(&self.ctx.tenant_id)
                .plugin_kv(&self.ctx.install_id, self.services.kv_quota);
            self.kv = Some(handle);
        }
        self.kv
            .as_ref()
            .ok_or_else(|| kv::KvError::Unavailable("kv handle missing".into()))
    }
}

fn kv_error(error: StoreKvError) -> kv::KvError {
    match error {
        StoreKvError::InvalidKey { .. } => kv::KvError::InvalidKey(error.to_string()),
        StoreKvError::KeyTooLarge { .. } | StoreKvError::ValueTooLarge { .. } => {
            kv::KvError::TooLarge(error.to_string())
        }
        StoreKvError::QuotaExceeded { .. } => kv::KvError::QuotaExceeded(error.to_string()),
        StoreKvError::Storage(ref inner) => {
            tracing::warn!(error = %inner, "plugin kv storage failure");
            kv::KvError::Unavailable("the key-value store is temporarily unavailable".into())
        }
    }
}

impl kv::Host for PluginState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::KvError>> {
        let store = match self.plugin_kv() {
            Ok(store) => store,
            Err(error) => return Ok(Err(error)),
        };
        Ok(store.get(&key).await.map_err(kv_error))
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv::KvError>> {
        let store = match self.plugin_kv() {
            Ok(store) => store,
            Err(error) => return Ok(Err(error)),
        };
        Ok(store.set(&key, &value).await.map_err(kv_error))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, kv::KvError>> {
        let store = match self.plugin_kv() {
            Ok(store) => store,
            Err(error) => return Ok(Err(error)),
        };
        Ok(store.delete(&key).await.map_err(kv_error))
    }

    async fn list_keys(
        &mut self,
        prefix: String,
    ) -> wasmtime::Result<Result<Vec<String>, kv::KvError>> {
        let store = match self.plugin_kv() {
            Ok(store) => store,
            Err(error) => return Ok(Err(error)),
        };
        Ok(store
            .list_keys(&prefix, MAX_LISTED_KEYS)
            .await
            .map_err(kv_error))
    }
}

fn http_error(error: OutboundError) -> http::HttpError {
    let text = error.to_string();
    match error {
        OutboundError::InvalidRequest(_) => http::HttpError::InvalidRequest(text),
        OutboundError::HostNotAllowed { .. } => http::HttpError::HostNotAllowed(text),
        OutboundError::AddressDenied { .. } => http::HttpError::AddressDenied(text),
        OutboundError::DnsFailed { .. } => http::HttpError::DnsFailed(text),
        OutboundError::Timeout { after_ms } => http::HttpError::Timeout(after_ms),
        OutboundError::RequestTooLarge { limit, .. } => http::HttpError::RequestTooLarge(limit),
        OutboundError::ResponseTooLarge { limit } => http::HttpError::ResponseTooLarge(limit),
        OutboundError::ConnectionFailed(_) => http::HttpError::ConnectionFailed(text),
        OutboundError::ProtocolError(_) => http::HttpError::ProtocolError(text),
    }
}

impl http::Host for PluginState {
    async fn fetch(
        &mut self,
        req: http::Request,
    ) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
        let Some(allow) = &self.ctx.grants.http else {
            return Ok(Err(http::HttpError::Denied));
        };
        let request = OutboundRequest {
            method: req.method,
            url: req.url,
            headers: req.headers,
            body: req.body,
            timeout: req
                .timeout_ms
                .map(|ms| std::time::Duration::from_millis(u64::from(ms))),
        };
        let result = self.services.http.fetch(allow, request).await;
        if let Err(error) = &result {
            tracing::debug!(
                tenant_id = self.ctx.tenant_id.as_str(),
                install_id = self.ctx.install_id.as_str(),
                plugin = self.ctx.plugin.as_str(),
                %error,
                "plugin http request refused or failed"
            );
        }
        Ok(result
            .map(|response| http::Response {
                status: response.status,
                headers: response.headers,
                body: response.body,
            })
            .map_err(http_error))
    }
}

impl config::Host for PluginState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.ctx.config.values.get(&key).cloned())
    }

    async fn secret(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.ctx.config.secrets.get(&key).cloned())
    }
}

/// Contacts belong to the kernel's CRM, which a later milestone adds; until then a
/// granted install learns that the store is unavailable, an ungranted one is denied.
fn contacts_unavailable() -> contacts::ContactsError {
    contacts::ContactsError::Unavailable(
        "the contacts store is not available in this PostDog version".into(),
    )
}

impl contacts::Host for PluginState {
    async fn get(
        &mut self,
        _by: contacts::Lookup,
    ) -> wasmtime::Result<Result<Option<contacts::Contact>, contacts::ContactsError>> {
        if !self.ctx.grants.contacts_read {
            return Ok(Err(contacts::ContactsError::Denied));
        }
        Ok(Err(contacts_unavailable()))
    }

    async fn upsert(
        &mut self,
        _input: contacts::ContactInput,
    ) -> wasmtime::Result<Result<contacts::Contact, contacts::ContactsError>> {
        if !self.ctx.grants.contacts_write {
            return Ok(Err(contacts::ContactsError::Denied));
        }
        Ok(Err(contacts_unavailable()))
    }

    async fn add_tag(
        &mut self,
        _contact_id: String,
        _tag: String,
    ) -> wasmtime::Result<Result<(), contacts::ContactsError>> {
        if !self.ctx.grants.contacts_write {
            return Ok(Err(contacts::ContactsError::Denied));
        }
        Ok(Err(contacts_unavailable()))
    }
}
