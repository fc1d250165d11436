//! What a plugin asks to be allowed to do: the `capabilities` of its manifest. The host
//! grants each one per install (manifest request ∧ tenant or operator consent) and checks
//! it inside every host import; the registry only checks that a request is well formed,
//! so a typo is caught at publish time instead of surfacing as a `denied` at run time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One capability a plugin requests, written in the manifest as `kv`, `http:<host-glob>`,
/// `http-tenant-hosts`, `contacts:read`, `contacts:write` or `webhook`.
///
/// ```
/// use postdog_registry::Capability;
/// let capability: Capability = "http:*.myshopify.com".parse().unwrap();
/// assert_eq!(capability, Capability::Http("*.myshopify.com".to_string()));
/// assert_eq!(capability.to_string(), "http:*.myshopify.com");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// `kv`: the install's own key-value store.
    Kv,
    /// `http:<host-glob>`: outbound HTTP to hosts matching the glob (`api.example.com`
    /// or `*.example.com`, which matches sub-domains only).
    Http(String),
    /// `http-tenant-hosts`: outbound HTTP to the hosts the tenant chooses per install
    /// (granted as `http:<host>`), for plugins whose API host is the tenant's own (a
    /// generic HTTP request action, a self-hosted CRM). Still never a bare `*`.
    HttpTenantHosts,
    /// `contacts:read`: read the tenant's contacts.
    ContactsRead,
    /// `contacts:write`: create and change the tenant's contacts.
    ContactsWrite,
    /// `webhook`: receive inbound webhooks routed by the kernel.
    Webhook,
}

/// Why a capability string was refused; the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CapabilityError {
    message: String,
}

impl CapabilityError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

const KNOWN: &str =
    "`kv`, `http:<host-glob>`, `http-tenant-hosts`, `contacts:read`, `contacts:write` or `webhook`";

impl FromStr for Capability {
    type Err = CapabilityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "kv" => return Ok(Capability::Kv),
            "contacts:read" => return Ok(Capability::ContactsRead),
            "contacts:write" => return Ok(Capability::ContactsWrite),
            "webhook" => return Ok(Capability::Webhook),
            "http-tenant-hosts" => return Ok(Capability::HttpTenantHosts),
            _ => {}
        }
        if let Some(glob) = text.strip_prefix("http:") {
            check_host_glob(glob)?;
            return Ok(Capability::Http(glob.to_string()));
        }
        if text.starts_with("https:") {
            return Err(CapabilityError::new(format!(
                "unknown capability `{text}`: HTTP capabilities are written `http:<host>` \
                 (they cover https too), e.g. `http:api.example.com`"
            )));
        }
        let near = super::manifest::suggest(
            text,
            [
                "kv",
                "contacts:read",
                "contacts:write",
                "webhook",
                "http-tenant-hosts",
            ]
            .into_iter(),
        );
        Err(CapabilityError::new(match near {
            Some(near) => format!("unknown capability `{text}`; did you mean `{near}`?"),
            None => format!("unknown capability `{text}`: use {KNOWN}"),
        }))
    }
}

/// Checks an `http:` host glob: a host name of letters, digits, `-` and `.`, optionally
/// starting with `*.`; no scheme, port, path or other wildcard.
fn check_host_glob(glob: &str) -> Result<(), CapabilityError> {
    let fail = |why: &str| {
        Err(CapabilityError::new(format!(
            "invalid capability `http:{glob}`: {why}"
        )))
    };
    if glob.is_empty() {
        return fail("name the host, e.g. `http:api.example.com` or `http:*.example.com`");
    }
    if glob.contains("://") {
        return fail("write the host alone, without a scheme, e.g. `http:api.example.com`");
    }
    if glob.contains('/') {
        return fail("write the host alone, without a path, e.g. `http:api.example.com`");
    }
    if glob.contains(':') {
        return fail("write the host alone, without a port, e.g. `http:api.example.com`");
    }
    if glob == "*" || glob == "*." {
        return fail("a bare `*` would allow every host; name the hosts (`*.example.com`)");
    }
    let host = glob.strip_prefix("*.").unwrap_or(glob);
    if host.contains('*') {
        return fail("a wildcard is only allowed as a leading `*.`, e.g. `*.example.com`");
    }
    if let Err(why) = check_hostname(host) {
        return fail(&why);
    }
    Ok(())
}

/// Checks a DNS host name (RFC 1123 labels); the error says what is wrong.
pub(crate) fn check_hostname(host: &str) -> Result<(), String> {
    if host.len() > 253 {
        return Err("a host name has at most 253 characters".to_string());
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err(
                "a host name has no empty parts (`..`, or a leading or trailing `.`)".to_string(),
            );
        }
        if label.len() > 63 {
            return Err(format!("`{label}` is longer than 63 characters"));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && *c != '-')
        {
            return Err(format!(
                "`{bad}` is not allowed in a host name (letters, digits, `-` and `.` only)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("`{label}` may not start or end with `-`"));
        }
    }
    Ok(())
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capability::Kv => f.write_str("kv"),
            Capability::Http(glob) => write!(f, "http:{glob}"),
            Capability::ContactsRead => f.write_str("contacts:read"),
            Capability::ContactsWrite => f.write_str("contacts:write"),
            Capability::Webhook => f.write_str("webhook"),
            Capability::HttpTenantHosts => f.write_str("http-tenant-hosts"),
        }
    }
}

impl Serialize for Capability {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Capability {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capability_round_trips_through_its_manifest_string() -> Result<(), CapabilityError> {
        for text in [
            "kv",
            "http:api.example.com",
            "http:*.myshopify.com",
            "contacts:read",
            "contacts:write",
            "webhook",
        ] {
            assert_eq!(text.parse::<Capability>()?.to_string(), text);
        }
        Ok(())
    }

    #[test]
    fn malformed_host_globs_are_refused_with_the_reason() {
        let cases = [
            ("http:", "name the host"),
            ("http:https://api.example.com", "without a scheme"),
            ("http:api.example.com/v1", "without a path"),
            ("http:api.example.com:443", "without a port"),
            ("http:*", "every host"),
            ("http:api.*.example.com", "leading `*.`"),
            ("http:api..example.com", "no empty parts"),
            ("http:api_example.com", "`_` is not allowed"),
            ("http:-api.example.com", "may not start or end"),
        ];
        for (text, expected) in cases {
            let error = text.parse::<Capability>().map(|_| ()).err();
            let message = error.map(|error| error.to_string()).unwrap_or_default();
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn unknown_capabilities_name_a_near_miss() {
        let message = "contacts:reed"
            .parse::<Capability>()
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("did you mean `contacts:read`"),
            "{message}"
        );
        let message = "telepathy"
            .parse::<Capability>()
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(message.contains("use `kv`"), "{message}");
    }
}
