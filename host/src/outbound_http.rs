//! Outbound HTTP for plugins: the host side of the `http` import. A plugin's request is
//! checked, then executed by one shared `reqwest` client:
//!
//! 1. the URL must be absolute `http`/`https`, without credentials;
//! 2. its host must match the install's allow-list (`http:<host-glob>` grants);
//! 3. unless the operator mapped the host to a base URL (`host_overrides`, used to point
//!    provider hosts at loopback fakes in tests), the host must not be — or resolve to —
//!    a loopback, private, link-local (cloud metadata), CGNAT, unique-local, multicast or
//!    otherwise non-public address. The check runs before sending (for a typed error) and
//!    again inside the client's DNS resolver, which hands the connector only checked
//!    addresses, so DNS rebinding between the two cannot reach an internal address;
//! 4. redirects are never followed (the plugin sees the 3xx), sizes are capped while
//!    streaming, and the whole exchange has a timeout.
//!
//! This module touches the network only; it knows nothing of tenants or storage.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};

/// Operator settings for outbound HTTP.
#[derive(Clone, Debug)]
pub struct OutboundHttpConfig {
    /// Timeout when the request names none.
    pub default_timeout: Duration,
    /// The longest timeout a request may ask for.
    pub max_timeout: Duration,
    /// Largest request body, in bytes.
    pub max_request_body_bytes: usize,
    /// Largest response body, in bytes.
    pub max_response_body_bytes: usize,
    /// Host name → base URL (for example `graph.facebook.com` →
    /// `http://127.0.0.1:4567`). Requests to the host go to the base URL instead, keeping
    /// path and query, and skip the address check: an explicit operator decision.
    pub host_overrides: HashMap<String, String>,
}

impl Default for OutboundHttpConfig {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(10),
            max_timeout: Duration::from_secs(30),
            max_request_body_bytes: 1 << 20,
            max_response_body_bytes: 4 << 20,
            host_overrides: HashMap::new(),
        }
    }
}

/// Host patterns an install may reach: `api.example.com` (exactly that host),
/// `*.example.com` (any subdomain, not `example.com` itself) or `*` (any public host).
/// Matching ignores case and ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    patterns: Vec<String>,
}

impl AllowList {
    /// An allow-list of the given patterns.
    pub fn new<S: Into<String>>(patterns: impl IntoIterator<Item = S>) -> Self {
        Self {
            patterns: patterns
                .into_iter()
                .map(|pattern| pattern.into().trim().to_ascii_lowercase())
                .filter(|pattern| !pattern.is_empty())
                .collect(),
        }
    }

    /// An allow-list that allows nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether `host` matches one of the patterns.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.patterns.iter().any(|pattern| {
            if pattern == "*" {
                return true;
            }
            match pattern.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() + 1
                        && host.ends_with(suffix)
                        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                }
                None => *pattern == host,
            }
        })
    }
}

/// A request from a plugin.
#[derive(Clone, Debug, Default)]
pub struct OutboundRequest {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The absolute URL.
    pub url: String,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// The body (empty for none).
    pub body: Vec<u8>,
    /// The plugin's timeout, clamped to the maximum.
    pub timeout: Option<Duration>,
}

/// A response to a plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundResponse {
    /// Status code.
    pub status: u16,
    /// Headers (values that are not UTF-8 are passed lossily).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Why a request was not completed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// The request is malformed; the text says what to fix.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The host is not granted.
    #[error("host `{host}` is not allowed: the plugin needs the capability `http:{host}`")]
    HostNotAllowed {
        /// The host.
        host: String,
    },
    /// The host is or resolves to a non-public address.
    #[error(
        "host `{host}` is or resolves to the non-public address {address}, which plugins may not reach"
    )]
    AddressDenied {
        /// The host.
        host: String,
        /// The offending address.
        address: String,
    },
    /// DNS resolution failed.
    #[error("cannot resolve `{host}`: {reason}")]
    DnsFailed {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// No complete response in time.
    #[error("no complete response within {after_ms} ms")]
    Timeout {
        /// The timeout in milliseconds.
        after_ms: u64,
    },
    /// The request body is too large.
    #[error("request body of {size} bytes exceeds the limit of {limit} bytes")]
    RequestTooLarge {
        /// The body's size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The response body is too large.
    #[error("response body exceeds the limit of {limit} bytes")]
    ResponseTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The connection failed.
    #[error("connection failed: {0}")]
    ConnectionFailed(String),
    /// The exchange broke the protocol (or TLS failed).
    #[error("protocol error: {0}")]
    ProtocolError(String),
}

/// Whether plugins may connect to `ip`.
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254.0.0/16, including 169.254.169.254 (cloud metadata)
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0 // 0.0.0.0/8 "this network"
        || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10 CGNAT
        || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24 IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // 198.18.0.0/15 benchmarking
        || a >= 240) // 240.0.0.0/4 reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // IPv4-compatible (::a.b.c.d, deprecated) and NAT64 (64:ff9b::/96) embed an IPv4
    // address that routes to the IPv4 host: judge that address.
    let embedded_v4 = || {
        Ipv4Addr::new(
            (segments[6] >> 8) as u8,
            segments[6] as u8,
            (segments[7] >> 8) as u8,
            segments[7] as u8,
        )
    };
    if segments[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_unspecified() && !ip.is_loopback() {
        return is_public_v4(embedded_v4());
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4());
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local (incl. fd00:ec2::254)
        || (segments[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
        || (segments[0] & 0xffc0) == 0xfec0 // fec0::/10 site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)) // documentation
}

/// Resolves names and keeps only public addresses: the connector (or a tenant's webhook
/// endpoint) never reaches others, whatever the name resolved to before.
pub(crate) struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|address| is_public_address(address.ip()))
                .collect();
            if addresses.is_empty() {
                return Err(format!("`{host}` has no public address").into());
            }
            let addresses: Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// The outbound HTTP client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct OutboundHttp {
    client: reqwest::Client,
    config: Arc<OutboundHttpConfig>,
}

/// The client could not be built (for example a bad override URL).
#[derive(Debug, thiserror::Error)]
#[error("outbound HTTP configuration: {0}")]
pub struct OutboundConfigError(String);

/// Headers the host sets itself; a plugin's values for them are dropped.
const HOST_CONTROLLED_HEADERS: [&str; 6] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "proxy-authorization",
];

impl OutboundHttp {
    /// Builds the client.
    pub fn new(config: OutboundHttpConfig) -> Result<Self, OutboundConfigError> {
        let mut overrides = HashMap::new();
        for (host, base) in &config.host_overrides {
            let url = Url::parse(base).map_err(|error| {
                OutboundConfigError(format!("override for `{host}`: `{base}`: {error}"))
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(OutboundConfigError(format!(
                    "override for `{host}`: `{base}` must be an http(s) base URL"
                )));
            }
            overrides.insert(host.to_ascii_lowercase(), base.clone());
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(PublicOnlyResolver)
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("PostDog/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| OutboundConfigError(error.to_string()))?;
        Ok(Self {
            client,
            config: Arc::new(OutboundHttpConfig {
                host_overrides: overrides,
                ..config
            }),
        })
    }

    /// Checks the URL against the allow-list and address rules and returns the URL to
    /// actually request (rewritten when the host is overridden).
    async fn checked_url(&self, allow: &AllowList, url: &str) -> Result<Url, OutboundError> {
        let mut url = Url::parse(url).map_err(|error| {
            OutboundError::InvalidRequest(format!("`{url}` is not an absolute URL: {error}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(OutboundError::InvalidRequest(format!(
                "scheme `{}` is not supported; use http or https",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OutboundError::InvalidRequest(
                "credentials in the URL are not allowed; send an Authorization header".into(),
            ));
        }
        let host = match url.host() {
            Some(url::Host::Domain(domain)) => domain.trim_end_matches('.').to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(OutboundError::InvalidRequest("the URL has no host".into())),
        };
        if !allow.allows(&host) {
            return Err(OutboundError::HostNotAllowed { host });
        }
        if let Some(base) = self.config.host_overrides.get(&host) {
            let base = Url::parse(base)
                .map_err(|error| OutboundError::InvalidRequest(error.to_string()))?;
            let scheme_ok = url.set_scheme(base.scheme()).is_ok();
            let host_ok = url.set_host(base.host_str()).is_ok();
            let port_ok = url.set_port(base.port()).is_ok();
            if !(scheme_ok && host_ok && port_ok) {
                return Err(OutboundError::InvalidRequest(format!(
                    "cannot apply the operator's override for `{host}`"
                )));
            }
            return Ok(url);
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => check_address(&host, IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => check_address(&host, IpAddr::V6(ip))?,
            _ => {
                let port = url.port_or_known_default().unwrap_or(80);
                let addresses = tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|error| OutboundError::DnsFailed {
                        host: host.clone(),
                        reason: error.to_string(),
                    })?;
                let mut any = false;
                for address in addresses {
                    any = true;
                    check_address(&host, address.ip())?;
                }
                if !any {
                    return Err(OutboundError::DnsFailed {
                        host,
                        reason: "no addresses".into(),
                    });
                }
            }
        }
        Ok(url)
    }

    /// Executes a plugin's request under `allow`.
    pub async fn fetch(
        &self,
        allow: &AllowList,
        request: OutboundRequest,
    ) -> Result<OutboundResponse, OutboundError> {
        // Cheap checks first; the URL check may resolve DNS.
        let method =
            Method::from_bytes(request.method.to_ascii_uppercase().as_bytes()).map_err(|_| {
                OutboundError::InvalidRequest(format!("`{}` is not an HTTP method", request.method))
            })?;
        let limit = self.config.max_request_body_bytes;
        if request.body.len() > limit {
            return Err(OutboundError::RequestTooLarge {
                size: request.body.len() as u64,
                limit: limit as u64,
            });
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                OutboundError::InvalidRequest(format!("`{name}` is not a valid header name"))
            })?;
            if HOST_CONTROLLED_HEADERS.contains(&name.as_str()) {
                continue;
            }
            let value = HeaderValue::from_str(value).map_err(|_| {
                OutboundError::InvalidRequest(format!("the value of header `{name}` is not valid"))
            })?;
            headers.append(name, value);
        }
        let url = self.checked_url(allow, &request.url).await?;
        let timeout = request
            .timeout
            .unwrap_or(self.config.default_timeout)
            .min(self.config.max_timeout);
        let after_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let max_body = self.config.max_response_body_bytes;
        let exchange = async {
            let mut response = self
                .client
                .request(method, url)
                .headers(headers)
                .body(request.body)
                .send()
                .await
                .map_err(|error| transport_error(&error, after_ms))?;
            if response
                .content_length()
                .is_some_and(|length| length > max_body as u64)
            {
                return Err(OutboundError::ResponseTooLarge {
                    limit: max_body as u64,
                });
            }
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_string(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|error| transport_error(&error, after_ms))?
            {
                if body.len() + chunk.len() > max_body {
                    return Err(OutboundError::ResponseTooLarge {
                        limit: max_body as u64,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(OutboundResponse {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(OutboundError::Timeout { after_ms }))
    }
}

fn check_address(host: &str, ip: IpAddr) -> Result<(), OutboundError> {
    if is_public_address(ip) {
        Ok(())
    } else {
        Err(OutboundError::AddressDenied {
            host: host.to_string(),
            address: ip.to_string(),
        })
    }
}

fn transport_error(error: &reqwest::Error, after_ms: u64) -> OutboundError {
    if error.is_timeout() {
        OutboundError::Timeout { after_ms }
    } else if error.is_connect() {
        OutboundError::ConnectionFailed(error_chain(error))
    } else {
        OutboundError::ProtocolError(error_chain(error))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::{get, post};

    use super::*;

    #[test]
    fn allow_list_globs() {
        let allow = AllowList::new(["api.example.com", "*.shop.test", "Graph.Facebook.com"]);
        for (host, allowed) in [
            ("api.example.com", true),
            ("API.EXAMPLE.COM", true),
            ("api.example.com.", true),
            ("evil-api.example.com", false),
            ("example.com", false),
            ("a.shop.test", true),
            ("a.b.shop.test", true),
            ("shop.test", false),
            ("evilshop.test", false),
            ("graph.facebook.com", true),
        ] {
            assert_eq!(allow.allows(host), allowed, "{host}");
        }
        assert!(AllowList::new(["*"]).allows("anything.example"));
        assert!(!AllowList::none().allows("api.example.com"));
    }

    #[test]
    fn non_public_addresses() {
        for denied in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            "ff02::1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = denied.parse().expect("an address");
            assert!(!is_public_address(ip), "{denied} must be refused");
        }
        for allowed in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "100.128.0.1",
        ] {
            let ip: IpAddr = allowed.parse().expect("an address");
            assert!(is_public_address(ip), "{allowed} is public");
        }
    }

    struct Fake {
        base: String,
        _shutdown: tokio::sync::oneshot::Sender<()>,
    }

    async fn fake(router: Router) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Fake {
            base,
            _shutdown: shutdown,
        }
    }

    fn client(overrides: &[(&str, &str)], config: OutboundHttpConfig) -> OutboundHttp {
        OutboundHttp::new(OutboundHttpConfig {
            host_overrides: overrides
                .iter()
                .map(|(h, b)| (h.to_string(), b.to_string()))
                .collect(),
            ..config
        })
        .expect("client")
    }

    fn get_request(url: &str) -> OutboundRequest {
        OutboundRequest {
            method: "GET".into(),
            url: url.into(),
            ..OutboundRequest::default()
        }
    }

    #[tokio::test]
    async fn refusals_are_typed() {
        let http = client(&[], OutboundHttpConfig::default());
        let any = AllowList::new(["*"]);
        let only = AllowList::new(["api.example.com"]);
        let error = http
            .fetch(&only, get_request("https://evil.example.net/"))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            OutboundError::HostNotAllowed {
                host: "evil.example.net".into()
            }
        );
        assert!(error.to_string().contains("http:evil.example.net"));
        for url in [
            "http://127.0.0.1/",
            "http://[::1]:8080/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0.0.0.0/",
            "http://10.0.0.1/",
            "http://192.168.0.1/",
            "http://100.64.1.1/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://localhost/",
            "http://LOCALHOST:9/",
        ] {
            let error = http.fetch(&any, get_request(url)).await.unwrap_err();
            assert!(
                matches!(error, OutboundError::AddressDenied { .. }),
                "{url}: {error:?}"
            );
        }
        for (url, fragment) in [
            ("http://user:pw@api.example.com/", "credentials"),
            ("ftp://api.example.com/", "scheme `ftp`"),
            ("/relative", "not an absolute URL"),
            ("file:///etc/passwd", "scheme `file`"),
        ] {
            let error = http.fetch(&any, get_request(url)).await.unwrap_err();
            assert!(
                matches!(&error, OutboundError::InvalidRequest(text) if text.contains(fragment)),
                "{url}: {error:?}"
            );
        }
        let bad_method = OutboundRequest {
            method: "GE T".into(),
            ..get_request("http://api.example.com/")
        };
        assert!(matches!(
            http.fetch(&any, bad_method).await,
            Err(OutboundError::InvalidRequest(_))
        ));
        let error = http
            .fetch(&any, get_request("http://no-such-host.invalid/"))
            .await
            .unwrap_err();
        assert!(
            matches!(error, OutboundError::DnsFailed { .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn overrides_reach_a_loopback_fake_with_everything_intact() {
        let server = fake(
            Router::new()
                .route(
                    "/v1/echo",
                    post(|headers: HeaderMap, body: String| async move {
                        let token = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        (
                            StatusCode::CREATED,
                            [("x-seen-auth", token)],
                            format!("got:{body}"),
                        )
                    }),
                )
                .route(
                    "/limited",
                    get(|| async {
                        (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "30")],
                            "slow down",
                        )
                    }),
                )
                .route(
                    "/moved",
                    get(|| async {
                        (
                            StatusCode::FOUND,
                            [("location", "http://127.0.0.1:1/secret")],
                        )
                            .into_response()
                    }),
                ),
        )
        .await;
        let http = client(
            &[("api.fake.test", &server.base)],
            OutboundHttpConfig::default(),
        );
        let allow = AllowList::new(["api.fake.test"]);
        let response = http
            .fetch(
                &allow,
                OutboundRequest {
                    method: "post".into(),
                    url: "https://api.fake.test/v1/echo?x=1".into(),
                    headers: vec![
                        ("Authorization".into(), "Bearer t".into()),
                        ("Host".into(), "evil".into()),
                    ],
                    body: b"hello".to_vec(),
                    timeout: None,
                },
            )
            .await
            .expect("the fake answers");
        assert_eq!(response.status, 201);
        assert_eq!(response.body, b"got:hello");
        assert!(
            response
                .headers
                .iter()
                .any(|(k, v)| k == "x-seen-auth" && v == "Bearer t")
        );

        let limited = http
            .fetch(&allow, get_request("http://api.fake.test/limited"))
            .await
            .expect("answers");
        assert_eq!(limited.status, 429);
        assert!(
            limited
                .headers
                .iter()
                .any(|(k, v)| k == "retry-after" && v == "30")
        );

        // Redirects are returned, never followed (following would bypass the checks).
        let moved = http
            .fetch(&allow, get_request("http://api.fake.test/moved"))
            .await
            .expect("answers");
        assert_eq!(moved.status, 302);
    }

    #[tokio::test]
    async fn sizes_and_time_are_capped() {
        async fn streamed() -> impl IntoResponse {
            // 10 MB in 64 KiB chunks, without a Content-Length.
            let chunks = futures::stream::iter(
                (0..160).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 64 * 1024])),
            );
            Body::from_stream(chunks)
        }
        let server = fake(
            Router::new()
                .route("/sized", get(|| async { vec![b'x'; 10 << 20] }))
                .route("/streamed", get(streamed))
                .route(
                    "/slow",
                    get(|| async {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        "late"
                    }),
                ),
        )
        .await;
        let config = OutboundHttpConfig {
            max_response_body_bytes: 1 << 20,
            max_request_body_bytes: 1000,
            ..OutboundHttpConfig::default()
        };
        let http = client(&[("big.fake.test", &server.base)], config);
        let allow = AllowList::new(["big.fake.test"]);
        for path in ["sized", "streamed"] {
            let error = http
                .fetch(&allow, get_request(&format!("http://big.fake.test/{path}")))
                .await
                .unwrap_err();
            assert_eq!(
                error,
                OutboundError::ResponseTooLarge { limit: 1 << 20 },
                "{path}"
            );
        }
        let too_big = OutboundRequest {
            method: "POST".into(),
            body: vec![0; 1001],
            ..get_request("http://big.fake.test/sized")
        };
        assert_eq!(
            http.fetch(&allow, too_big).await.unwrap_err(),
            OutboundError::RequestTooLarge {
                size: 1001,
                limit: 1000
            }
        );
        let started = Instant::now();
        let slow = OutboundRequest {
            timeout: Some(Duration::from_millis(300)),
            ..get_request("http://big.fake.test/slow")
        };
        assert_eq!(
            http.fetch(&allow, slow).await.unwrap_err(),
            OutboundError::Timeout { after_ms: 300 }
        );
        assert!(started.elapsed() < Duration::from_secs(3));

        // Nothing listens on the mapped port: connection refused.
        let closed = client(
            &[("down.fake.test", "http://127.0.0.1:1")],
            OutboundHttpConfig::default(),
        );
        let error = closed
            .fetch(
                &AllowList::new(["down.fake.test"]),
                get_request("http://down.fake.test/"),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(error, OutboundError::ConnectionFailed(_)),
            "{error:?}"
        );
    }
}
