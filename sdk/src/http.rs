//! Outbound HTTP through the host (needs `http:<host>` capabilities). Redirects are not
//! followed; bodies are capped (1 MiB out, 4 MiB in by default).
//!
//! ```no_run
//! # use postdog_sdk::http::{self, Request};
//! # use serde_json::json;
//! let response = http::fetch(
//!     &Request::post("https://api.example.com/v1/things")
//!         .bearer("token")
//!         .json(&json!({ "name": "x" })),
//! );
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__private::bindings::postdog::plugin::http as host;

pub use host::HttpError;

/// A request to send.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout_ms: Option<u32>,
}

impl Request {
    /// A request with any method.
    pub fn new(method: &str, url: impl Into<String>) -> Self {
        Self {
            method: method.to_string(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: None,
        }
    }

    /// A `GET`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// A `POST`.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new("POST", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    /// Sets a raw body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and its content type.
    pub fn json<T: Serialize>(self, value: &T) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_default();
        self.header("content-type", "application/json").body(body)
    }

    /// Sets the timeout for the whole exchange (clamped by the host).
    pub fn timeout_ms(mut self, timeout_ms: u32) -> Self {
        self.timeout_ms = Some(timeout_ms);
        self
    }
}

/// A response received.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Sends `request` and waits for the response.
pub fn fetch(request: &Request) -> Result<Response, HttpError> {
    let response = host::fetch(&host::Request {
        method: request.method.clone(),
        url: request.url.clone(),
        headers: request.headers.clone(),
        body: request.body.clone(),
        timeout_ms: request.timeout_ms,
    })?;
    Ok(Response {
        status: response.status,
        headers: response.headers,
        body: response.body,
    })
}

impl HttpError {
    /// The variant's name in the WIT (`host-not-allowed`, `address-denied`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Denied => "denied",
            HttpError::InvalidRequest(_) => "invalid-request",
            HttpError::HostNotAllowed(_) => "host-not-allowed",
            HttpError::AddressDenied(_) => "address-denied",
            HttpError::DnsFailed(_) => "dns-failed",
            HttpError::Timeout(_) => "timeout",
            HttpError::RequestTooLarge(_) => "request-too-large",
            HttpError::ResponseTooLarge(_) => "response-too-large",
            HttpError::ConnectionFailed(_) => "connection-failed",
            HttpError::ProtocolError(_) => "protocol-error",
        }
    }
}
