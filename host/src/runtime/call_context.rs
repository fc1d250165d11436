//! Who a plugin call runs for and what it may do: tenant, install, the capabilities the
//! tenant (or operator) granted, the install's configuration and secrets, and the call's
//! limits. The runtime puts an `Arc<CallContext>` into every store; host imports consult
//! it on every call, so a capability that was not granted is refused at the boundary.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ids::{InstallId, TenantId};
use crate::outbound_http::AllowList;

/// The capabilities granted to one install (manifest request ∧ tenant or operator grant).
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// May use the key-value store (`kv`).
    pub kv: bool,
    /// Hosts it may reach over HTTP (`http:<host-glob>`); `None` when no `http:` grant.
    pub http: Option<AllowList>,
    /// May read contacts (`contacts:read`).
    pub contacts_read: bool,
    /// May create and change contacts (`contacts:write`).
    pub contacts_write: bool,
}

/// A capability string that is not one PostDog knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown capability `{0}`: use `kv`, `http:<host-glob>`, `contacts:read`, `contacts:write` \
     or `webhook`"
)]
pub struct UnknownCapability(pub String);

impl Grants {
    /// No capabilities at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses capability strings such as `kv`, `http:graph.facebook.com`,
    /// `http:*.myshopify.com`, `contacts:read`, `contacts:write`, `webhook`.
    pub fn parse<S: AsRef<str>>(
        capabilities: impl IntoIterator<Item = S>,
    ) -> Result<Self, UnknownCapability> {
        let mut grants = Grants::default();
        let mut http_hosts = Vec::new();
        for capability in capabilities {
            let capability = capability.as_ref().trim();
            match capability {
                "kv" => grants.kv = true,
                "contacts:read" => grants.contacts_read = true,
                "contacts:write" => {
                    grants.contacts_read = true;
                    grants.contacts_write = true;
                }
                // Webhook ingress is routed by the kernel; nothing to enforce in the store.
                // `http-tenant-hosts` only widens which `http:` grants count (marketplace).
                "webhook" | "http-tenant-hosts" => {}
                other => match other.strip_prefix("http:") {
                    Some(host) if !host.is_empty() => http_hosts.push(host.to_string()),
                    _ => return Err(UnknownCapability(other.to_string())),
                },
            }
        }
        if !http_hosts.is_empty() {
            grants.http = Some(AllowList::new(http_hosts));
        }
        Ok(grants)
    }
}

/// An install's configuration: plain values and secrets, already validated by the kernel.
#[derive(Clone, Debug, Default)]
pub struct PluginConfig {
    /// Non-secret values, readable through `config.get`.
    pub values: BTreeMap<String, String>,
    /// Secret values, readable only through `config.secret`.
    pub secrets: BTreeMap<String, String>,
}

/// Per-call resource limits; the runtime clamps them to its operator-set ceilings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallLimits {
    /// Linear memory the plugin may grow to, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock time the call may take, including host calls.
    pub timeout: Duration,
}

/// Everything a call runs with. Build one per (install, call site) and reuse it: the
/// runtime shares it by `Arc` with each call's store.
#[derive(Clone, Debug)]
pub struct CallContext {
    /// The tenant the call runs for.
    pub tenant_id: TenantId,
    /// The plugin install the call belongs to; kv and config hang off it.
    pub install_id: InstallId,
    /// The plugin's name (`publisher/name`) for logs.
    pub plugin: String,
    /// What the install may do.
    pub grants: Grants,
    /// The install's configuration and secrets.
    pub config: PluginConfig,
    /// Limits for this install; `None` uses the runtime's defaults.
    pub limits: Option<CallLimits>,
}

impl CallContext {
    /// A context with no grants, no config and default limits.
    pub fn new(tenant_id: TenantId, install_id: InstallId, plugin: impl Into<String>) -> Self {
        Self {
            tenant_id,
            install_id,
            plugin: plugin.into(),
            grants: Grants::none(),
            config: PluginConfig::default(),
            limits: None,
        }
    }

    /// Replaces the grants.
    pub fn with_grants(mut self, grants: Grants) -> Self {
        self.grants = grants;
        self
    }

    /// Replaces the configuration.
    pub fn with_config(mut self, config: PluginConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets per-install limits (clamped to the runtime's ceilings).
    pub fn with_limits(mut self, limits: CallLimits) -> Self {
        self.limits = Some(limits);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_parse() {
        let grants = Grants::parse(["kv", "http:api.example.com", "contacts:write"])
            .expect("valid capabilities");
        assert!(grants.kv && grants.contacts_read && grants.contacts_write);
        assert!(
            grants
                .http
                .as_ref()
                .is_some_and(|allow| allow.allows("api.example.com"))
        );
        assert!(
            grants
                .http
                .as_ref()
                .is_some_and(|allow| !allow.allows("evil.example.net"))
        );
        assert!(Grants::parse(["kv"]).expect("valid").http.is_none());
        assert_eq!(
            Grants::parse(["filesystem"]).err(),
            Some(UnknownCapability("filesystem".into()))
        );
        assert!(Grants::parse(["http:"]).is_err());
    }
}
