//! Graph API errors and host HTTP failures as typed [`ChannelError`]s. Pure: no host
//! imports, so it is tested natively.

use postdog_sdk::channel::{ChannelError, ProviderError};
use postdog_sdk::http::HttpError;
use serde_json::Value;

/// Wait after a pair rate limit (131056): about one message per 6 s to one recipient.
const PAIR_RATE_LIMIT_MS: u64 = 6_000;
/// Wait after a throughput error (130429): the per-number limit is per second.
const THROUGHPUT_LIMIT_MS: u64 = 1_000;
/// Wait after an app or business account rate limit (4, 80007, 80004…) or a bare 429.
const ACCOUNT_RATE_LIMIT_MS: u64 = 60_000;
/// Longest `Retry-After` honoured (a day); longer values are clamped.
const MAX_RETRY_AFTER_MS: u64 = 86_400_000;
/// Most characters of a non-JSON error body quoted in an error.
const BODY_SNIPPET_CHARS: usize = 300;

/// How a Graph error code is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Outside the 24-hour customer-service window.
    WindowClosed,
    /// A rate limit; wait this long unless `Retry-After` says otherwise.
    RateLimited(u64),
    /// The recipient cannot get the message.
    Unreachable,
    /// The token is expired, revoked or lacks a permission.
    Auth,
    /// The message must be changed; the hint says how.
    Invalid(&'static str),
    /// A temporary failure at Meta.
    Retryable,
    /// Anything else: a provider error that retrying will not fix.
    Permanent,
}

fn classify(code: i64) -> Class {
    match code {
        131047 => Class::WindowClosed,
        131056 => Class::RateLimited(PAIR_RATE_LIMIT_MS),
        130429 => Class::RateLimited(THROUGHPUT_LIMIT_MS),
        4 | 17 | 32 | 613 | 80004 | 80007 => Class::RateLimited(ACCOUNT_RATE_LIMIT_MS),
        131021 | 131026 | 131030 | 131049 | 131050 | 130472 => Class::Unreachable,
        190 | 102 | 10 | 200..=299 => Class::Auth,
        100 => Class::Invalid("a parameter of the request is invalid; the details say which"),
        131008 => Class::Invalid("a required parameter is missing"),
        131009 => Class::Invalid(
            "a parameter value is not valid: check the recipient number, media link and component values",
        ),
        131051 => Class::Invalid("WhatsApp does not support this message type"),
        131052 | 131053 => Class::Invalid(
            "WhatsApp could not fetch or process the media: check that the link is public HTTPS and the type and size are supported",
        ),
        132000 => Class::Invalid(
            "the number of template parameters does not match the template's variables",
        ),
        132001 => Class::Invalid(
            "the template does not exist in this language or is not approved yet: check its name and language code",
        ),
        132005 => {
            Class::Invalid("the template's text is too long once its parameters are filled in")
        }
        132007 => Class::Invalid(
            "a template parameter breaks WhatsApp's format rules (no new lines, tabs or more than 4 consecutive spaces)",
        ),
        132012 => {
            Class::Invalid("a template parameter does not have the format its variable expects")
        }
        132015 => Class::Invalid(
            "the template is paused for low quality: edit it or send another template",
        ),
        132016 => Class::Invalid("the template is disabled for low quality: send another template"),
        1 | 2 | 131000 | 131016 | 133004 => Class::Retryable,
        _ => Class::Permanent,
    }
}

/// A `Retry-After` header value (delta-seconds) in milliseconds.
pub fn retry_after_ms(header: Option<&str>) -> Option<u64> {
    let seconds: u64 = header?.trim().parse().ok()?;
    Some(seconds.saturating_mul(1000).min(MAX_RETRY_AFTER_MS))
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "an empty body".to_string();
    }
    let mut quoted: String = text.chars().take(BODY_SNIPPET_CHARS).collect();
    if text.chars().count() > BODY_SNIPPET_CHARS {
        quoted.push('…');
    }
    format!("`{quoted}`")
}

/// A Graph `{"error": {...}}` object, read leniently.
struct GraphError {
    code: Option<i64>,
    subcode: Option<i64>,
    message: String,
}

fn graph_error(body: &[u8]) -> Option<GraphError> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    if !error.is_object() {
        return None;
    }
    let code = error.get("code").and_then(|code| {
        code.as_i64()
            .or_else(|| code.as_str().and_then(|text| text.trim().parse().ok()))
    });
    let mut message = error
        .get("message")
        .and_then(text_of)
        .unwrap_or_else(|| "no message".to_string());
    let details = error
        .get("error_data")
        .and_then(|data| data.get("details"))
        .and_then(text_of);
    if let Some(details) = details
        && details != message
    {
        message = format!("{message}: {details}");
    }
    if let Some(user_message) = error.get("error_user_msg").and_then(text_of)
        && !message.contains(&user_message)
    {
        message = format!("{message} ({user_message})");
    }
    let mut extras = Vec::new();
    if let Some(kind) = error.get("type").and_then(text_of) {
        extras.push(format!("type {kind}"));
    }
    if let Some(subcode) = error.get("error_subcode").and_then(text_of) {
        extras.push(format!("subcode {subcode}"));
    }
    if let Some(trace) = error.get("fbtrace_id").and_then(text_of) {
        extras.push(format!("fbtrace_id {trace}"));
    }
    if !extras.is_empty() {
        message = format!("{message} [{}]", extras.join(", "));
    }
    let subcode = error.get("error_subcode").and_then(Value::as_i64);
    Some(GraphError {
        code,
        subcode,
        message,
    })
}

fn provider(
    code: i64,
    message: String,
    retryable: bool,
    retry_after_ms: Option<u64>,
) -> ProviderError {
    ProviderError {
        code,
        message,
        retryable,
        retry_after_ms,
    }
}

/// Turns a non-2xx Graph API answer into a typed error: by the Graph error code when the
/// body is a Graph error, else by the HTTP status.
pub fn from_response(status: u16, retry_after: Option<&str>, body: &[u8]) -> ChannelError {
    let header_wait = retry_after_ms(retry_after);
    let Some(GraphError {
        code,
        subcode,
        message,
    }) = graph_error(body)
    else {
        return from_status(status, header_wait, body);
    };
    let Some(code) = code else {
        return from_status(status, header_wait, body);
    };
    // "Object with ID … does not exist": the configured phone number or WABA id is wrong
    // (or the token cannot see it), whatever the message was.
    if code == 100 && subcode == Some(33) {
        return ChannelError::NotConfigured(format!(
            "the Graph API does not know the configured object ({code}: {message}): check the install's `phone_number_id` and `waba_id` and that the access token may use them"
        ));
    }
    let class = match classify(code) {
        // An unknown code still says something through its status.
        Class::Permanent if status == 429 => Class::RateLimited(ACCOUNT_RATE_LIMIT_MS),
        Class::Permanent if status == 401 => Class::Auth,
        Class::Permanent if status >= 500 => Class::Retryable,
        class => class,
    };
    match class {
        Class::WindowClosed => ChannelError::WindowClosed(provider(
            code,
            format!(
                "{message}; the 24-hour customer-service window is closed, send an approved template instead"
            ),
            false,
            None,
        )),
        Class::RateLimited(default_ms) => ChannelError::RateLimited(provider(
            code,
            message,
            true,
            Some(header_wait.unwrap_or(default_ms)),
        )),
        Class::Unreachable => {
            ChannelError::RecipientUnreachable(provider(code, message, false, None))
        }
        Class::Auth => ChannelError::AuthFailed(provider(
            code,
            format!(
                "{message}; renew the install's `access_token` (a system user token with whatsapp_business_messaging and whatsapp_business_management)"
            ),
            false,
            None,
        )),
        Class::Invalid(hint) => ChannelError::InvalidMessage(format!(
            "WhatsApp refused the request ({code}: {message}): {hint}"
        )),
        Class::Retryable => ChannelError::Provider(provider(code, message, true, header_wait)),
        Class::Permanent => ChannelError::Provider(provider(code, message, false, None)),
    }
}

/// An error answer whose body is not a Graph error.
fn from_status(status: u16, header_wait: Option<u64>, body: &[u8]) -> ChannelError {
    let message = format!(
        "the Graph API answered HTTP {status} with {}",
        snippet(body)
    );
    let code = i64::from(status);
    match status {
        401 | 403 => ChannelError::AuthFailed(provider(
            code,
            format!("{message}; check the install's `access_token`"),
            false,
            None,
        )),
        429 => ChannelError::RateLimited(provider(
            code,
            message,
            true,
            Some(header_wait.unwrap_or(ACCOUNT_RATE_LIMIT_MS)),
        )),
        500.. => ChannelError::Transport(message),
        _ => ChannelError::Provider(provider(code, message, false, None)),
    }
}

/// A failed delivery reported in a status webhook (`errors[0]`) as a provider error.
pub fn from_status_webhook(error: &Value) -> ProviderError {
    let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
    let mut parts: Vec<String> = Vec::new();
    for text in [
        error.get("title").and_then(text_of),
        error.get("message").and_then(text_of),
        error
            .get("error_data")
            .and_then(|data| data.get("details"))
            .and_then(text_of),
    ]
    .into_iter()
    .flatten()
    {
        if !parts.contains(&text) {
            parts.push(text);
        }
    }
    let message = if parts.is_empty() {
        "WhatsApp reported the delivery as failed without a reason".to_string()
    } else {
        parts.join(": ")
    };
    let (retryable, retry_after_ms) = match classify(code) {
        Class::RateLimited(wait) => (true, Some(wait)),
        Class::Retryable => (true, None),
        _ => (false, None),
    };
    provider(code, message, retryable, retry_after_ms)
}

/// A host HTTP failure: missing grants are configuration errors, the rest transport.
pub fn from_http(error: &HttpError) -> ChannelError {
    match error {
        HttpError::Denied | HttpError::HostNotAllowed(_) => ChannelError::NotConfigured(format!(
            "the install may not call graph.facebook.com ({}): grant it the `http:graph.facebook.com` capability",
            error.kind()
        )),
        HttpError::RequestTooLarge(limit) => ChannelError::InvalidMessage(format!(
            "the request to the Graph API is larger than the host's limit of {limit} bytes"
        )),
        HttpError::InvalidRequest(why) => ChannelError::Transport(format!(
            "the host refused the request to the Graph API: {why}"
        )),
        HttpError::AddressDenied(why)
        | HttpError::DnsFailed(why)
        | HttpError::ConnectionFailed(why)
        | HttpError::ProtocolError(why) => ChannelError::Transport(format!(
            "cannot reach the Graph API ({}): {why}",
            error.kind()
        )),
        HttpError::Timeout(ms) => {
            ChannelError::Transport(format!("the Graph API did not answer within {ms} ms"))
        }
        HttpError::ResponseTooLarge(limit) => ChannelError::Transport(format!(
            "the Graph API's answer is larger than the host's limit of {limit} bytes"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn graph(code: i64, subcode: Option<i64>) -> Vec<u8> {
        let mut error = json!({
            "message": "(#131047) Re-engagement message",
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": "More than 24 hours have passed"},
            "fbtrace_id": "AbC123",
        });
        if let Some(subcode) = subcode {
            error["error_subcode"] = json!(subcode);
        }
        json!({ "error": error }).to_string().into_bytes()
    }

    fn provider_of(error: &ChannelError) -> &ProviderError {
        match error {
            ChannelError::AuthFailed(p)
            | ChannelError::WindowClosed(p)
            | ChannelError::RateLimited(p)
            | ChannelError::RecipientUnreachable(p)
            | ChannelError::Provider(p) => p,
            other => panic!("no provider error in {other:?}"),
        }
    }

    #[test]
    fn window_closed_is_not_retryable_and_keeps_details() {
        let error = from_response(400, None, &graph(131047, Some(2494010)));
        let ChannelError::WindowClosed(p) = &error else {
            panic!("{error:?}")
        };
        assert_eq!(p.code, 131047);
        assert!(!p.retryable);
        assert_eq!(p.retry_after_ms, None);
        assert!(p.message.contains("Re-engagement message"), "{}", p.message);
        assert!(p.message.contains("More than 24 hours have passed"));
        assert!(p.message.contains("fbtrace_id AbC123"));
        assert!(p.message.contains("subcode 2494010"));
        assert!(p.message.contains("template"));
    }

    #[test]
    fn rate_limits_wait_the_documented_time_or_retry_after() {
        for (code, wait) in [
            (131056, 6_000),
            (130429, 1_000),
            (4, 60_000),
            (80007, 60_000),
            (80004, 60_000),
        ] {
            let error = from_response(400, None, &graph(code, None));
            let ChannelError::RateLimited(p) = &error else {
                panic!("{code}: {error:?}")
            };
            assert_eq!(p.code, code);
            assert!(p.retryable);
            assert_eq!(p.retry_after_ms, Some(wait), "{code}");
            let error = from_response(429, Some(" 7 "), &graph(code, None));
            assert_eq!(provider_of(&error).retry_after_ms, Some(7_000), "{code}");
        }
        // A bare 429, with and without Retry-After.
        let error = from_response(429, Some("3"), b"slow down");
        let ChannelError::RateLimited(p) = &error else {
            panic!("{error:?}")
        };
        assert_eq!(
            (p.code, p.retry_after_ms, p.retryable),
            (429, Some(3_000), true)
        );
        let error = from_response(429, None, b"");
        assert_eq!(provider_of(&error).retry_after_ms, Some(60_000));
        // An unknown code on a 429 is still a rate limit.
        let error = from_response(429, Some("2"), &graph(999_999, None));
        assert!(
            matches!(error, ChannelError::RateLimited(ref p) if p.retry_after_ms == Some(2_000))
        );
        assert_eq!(retry_after_ms(Some("soon")), None);
        assert_eq!(retry_after_ms(Some("999999999")), Some(MAX_RETRY_AFTER_MS));
    }

    #[test]
    fn unreachable_recipients() {
        for code in [131026, 131021, 131049, 131050, 131030] {
            let error = from_response(400, None, &graph(code, None));
            assert!(
                matches!(error, ChannelError::RecipientUnreachable(ref p) if p.code == code && !p.retryable),
                "{code}: {error:?}"
            );
        }
    }

    #[test]
    fn auth_failures() {
        let error = from_response(401, None, &graph(190, Some(463)));
        assert!(
            matches!(error, ChannelError::AuthFailed(ref p) if p.code == 190 && p.message.contains("access_token"))
        );
        let error = from_response(403, None, &graph(10, None));
        assert!(matches!(error, ChannelError::AuthFailed(ref p) if p.code == 10));
        let error = from_response(401, None, b"<html>Unauthorized</html>");
        assert!(
            matches!(error, ChannelError::AuthFailed(ref p) if p.code == 401 && p.message.contains("HTTP 401"))
        );
        // An unknown code on a 401.
        let error = from_response(401, None, &graph(12345, None));
        assert!(matches!(error, ChannelError::AuthFailed(ref p) if p.code == 12345));
    }

    #[test]
    fn invalid_messages_say_what_to_fix() {
        for (code, needle) in [
            (100, "parameter"),
            (131008, "required parameter"),
            (131009, "not valid"),
            (131051, "message type"),
            (132000, "number of template parameters"),
            (132001, "language code"),
            (132005, "too long"),
            (132007, "format rules"),
            (132012, "format"),
            (132015, "paused"),
            (132016, "disabled"),
        ] {
            let error = from_response(400, None, &graph(code, None));
            let ChannelError::InvalidMessage(text) = &error else {
                panic!("{code}: {error:?}")
            };
            assert!(text.contains(&code.to_string()), "{text}");
            assert!(text.contains(needle), "{code}: {text}");
            assert!(text.contains("More than 24 hours"), "details kept: {text}");
        }
        let error = from_response(400, None, &graph(100, Some(33)));
        assert!(
            matches!(error, ChannelError::NotConfigured(ref text) if text.contains("phone_number_id"))
        );
    }

    #[test]
    fn service_errors_are_retryable() {
        for code in [1, 2, 131000, 131016, 133004] {
            let error = from_response(500, Some("5"), &graph(code, None));
            assert!(
                matches!(error, ChannelError::Provider(ref p) if p.code == code && p.retryable && p.retry_after_ms == Some(5_000)),
                "{code}: {error:?}"
            );
        }
        // Unknown code on a 5xx.
        let error = from_response(503, None, &graph(424242, None));
        assert!(matches!(error, ChannelError::Provider(ref p) if p.retryable));
        // A 5xx that is not a Graph error.
        let error = from_response(502, None, b"<html>Bad Gateway</html>");
        assert!(
            matches!(error, ChannelError::Transport(ref text) if text.contains("502") && text.contains("Bad Gateway"))
        );
    }

    #[test]
    fn policy_blocks_and_unknown_codes_are_permanent() {
        let error = from_response(400, None, &graph(368, None));
        assert!(
            matches!(error, ChannelError::Provider(ref p) if p.code == 368 && !p.retryable && p.retry_after_ms.is_none())
        );
        let error = from_response(400, None, &graph(424242, None));
        assert!(matches!(error, ChannelError::Provider(ref p) if !p.retryable));
    }

    #[test]
    fn odd_bodies_still_give_the_status() {
        let error = from_response(400, None, b"not json at all");
        assert!(
            matches!(error, ChannelError::Provider(ref p) if p.code == 400 && p.message.contains("HTTP 400") && p.message.contains("not json at all"))
        );
        let error = from_response(404, None, br#"{"error":"nope"}"#);
        assert!(matches!(error, ChannelError::Provider(ref p) if p.code == 404));
        let error = from_response(400, None, br#"{"error":{"message":"x"}}"#);
        assert!(matches!(error, ChannelError::Provider(ref p) if p.code == 400));
        let error = from_response(400, None, b"");
        assert!(matches!(error, ChannelError::Provider(ref p) if p.message.contains("empty body")));
        let long = "x".repeat(1000);
        let error = from_response(418, None, long.as_bytes());
        assert!(provider_of(&error).message.chars().count() < 400);
        // A code written as a string.
        let error = from_response(400, None, br#"{"error":{"message":"m","code":"131047"}}"#);
        assert!(matches!(error, ChannelError::WindowClosed(_)));
    }

    #[test]
    fn failed_status_errors() {
        let error = from_status_webhook(&json!({
            "code": 131026,
            "title": "Message undeliverable",
            "message": "Message undeliverable",
            "error_data": {"details": "Receiver is incapable of receiving this message"}
        }));
        assert_eq!(error.code, 131026);
        assert_eq!(
            error.message,
            "Message undeliverable: Receiver is incapable of receiving this message"
        );
        assert!(!error.retryable);
        let error = from_status_webhook(&json!({"code": 131000, "title": "Something went wrong"}));
        assert!(error.retryable);
        let error = from_status_webhook(&json!({"code": 130429, "title": "Rate limit hit"}));
        assert_eq!((error.retryable, error.retry_after_ms), (true, Some(1_000)));
        let error = from_status_webhook(&json!({}));
        assert_eq!(error.code, 0);
        assert!(error.message.contains("without a reason"));
    }

    #[test]
    fn host_http_errors() {
        assert!(
            matches!(from_http(&HttpError::Timeout(10_000)), ChannelError::Transport(ref t) if t.contains("10000 ms"))
        );
        assert!(matches!(
            from_http(&HttpError::ConnectionFailed("refused".into())),
            ChannelError::Transport(ref t) if t.contains("refused") && t.contains("connection-failed")
        ));
        assert!(matches!(
            from_http(&HttpError::DnsFailed("nx".into())),
            ChannelError::Transport(_)
        ));
        assert!(matches!(
            from_http(&HttpError::HostNotAllowed("graph.facebook.com".into())),
            ChannelError::NotConfigured(ref t) if t.contains("http:graph.facebook.com")
        ));
        assert!(matches!(
            from_http(&HttpError::Denied),
            ChannelError::NotConfigured(_)
        ));
        assert!(matches!(
            from_http(&HttpError::RequestTooLarge(1)),
            ChannelError::InvalidMessage(_)
        ));
    }
}
