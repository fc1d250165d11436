//! `postdog/http-request`: calls an HTTP API during the run and keeps parts of the JSON
//! answer for later steps. The call goes through the host's `http` interface, which only
//! reaches hosts granted to the install (`http:<host>`), refuses private addresses and
//! clamps the timeout.
//!
//! Configuration: `method` (default `GET`), `url` (`http(s)://host/…` written out;
//! placeholders may fill the rest and their values are percent-encoded), `headers` (name → value
//! template), either `body` (a text template, sent as is) or `json` (any JSON whose
//! texts are templates, sent as `application/json`, so values are escaped properly),
//! `response_map` (output name → JSON Pointer into the response, e.g.
//! `{"tier": "/customer/tier"}`) and `timeout_ms`.
//!
//! The output is `{"status": <code>, <name>: <value>, …}`. A 2xx takes `next`; any other
//! status takes `error` with `"error"` in the output; so does a call the host refused
//! (host not granted, private address, …). A timeout or a broken connection is
//! `retryable`: the kernel runs the step again.
//!
//! The request is planned and the answer read by pure functions ([`plan`], [`answer`]),
//! so `cargo test` covers everything but the call itself.

// `deny`, not `forbid`: the SDK's export macro allows unsafe code in the glue it generates.
#![deny(unsafe_code)]

use actions_core_common::postdog_expr::{self, Context};
use actions_core_common::{
    Config, context, invalid_config, invalid_expr, kind, render, render_value,
};
use postdog_sdk::http::{self, HttpError, Request, Response};
use postdog_sdk::prelude::*;
use serde_json::Map;

struct HttpRequest;

const KEYS: [&str; 7] = [
    "method",
    "url",
    "headers",
    "body",
    "json",
    "response_map",
    "timeout_ms",
];
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];
/// The host's own ceiling on a call.
const MAX_TIMEOUT_MS: u64 = 30_000;
/// Output names the action writes itself.
const RESERVED: [&str; 3] = ["status", "error", "error_kind"];

fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["url"],
        "additionalProperties": false,
        "properties": {
            "method": {"type": "string", "enum": METHODS, "description": "The HTTP method (default GET)"},
            "url": {"type": "string", "minLength": 1, "description": "The http(s) URL, scheme and host written out; placeholders such as {{trigger.order_id}} fill the rest, percent-encoded. The host must be granted to the install (http:<host>)"},
            "headers": {"type": "object", "description": "Request headers, name → value (values may use placeholders)"},
            "body": {"type": "string", "description": "A request body sent as written (placeholders are filled in); set a content-type header"},
            "json": {"type": ["object", "array"], "description": "A JSON request body; texts inside may use placeholders and are escaped properly"},
            "response_map": {"type": "object", "description": "Output names → JSON Pointers into the JSON response, e.g. {\"tier\": \"/customer/tier\"}; later steps read steps.<this step>.tier"},
            "timeout_ms": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_MS, "description": "How long to wait for the answer (default 10000)"}
        }
    })
}

/// What to send and what to keep from the answer.
#[derive(Debug)]
struct Plan {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout_ms: Option<u32>,
    response_map: Vec<(String, String)>,
}

impl Plan {
    fn request(&self) -> Request {
        let mut request = Request::new(&self.method, self.url.clone()).body(self.body.clone());
        for (name, value) in &self.headers {
            request = request.header(name.clone(), value.clone());
        }
        if let Some(timeout_ms) = self.timeout_ms {
            request = request.timeout_ms(timeout_ms);
        }
        request
    }
}

/// Percent-encodes a value filled into the URL: everything but RFC 3986's unreserved
/// characters, so a value can neither change the host nor add path or query parts.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn header_value(field: &str, value: &Value, context: &Context) -> Result<String, ActionError> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(_) | Value::Bool(_) => value.to_string(),
        other => {
            return Err(invalid_config(
                field,
                format!("must be text, not {}", kind(other)),
            ));
        }
    };
    let rendered = render(field, &text, context)?;
    if rendered.contains(['\r', '\n']) {
        return Err(ActionError::InvalidInput(format!(
            "`{field}` holds a line break once its placeholders are filled in"
        )));
    }
    Ok(rendered)
}

fn plan(config: &Config, context: &Context) -> Result<Plan, ActionError> {
    config.only(&KEYS)?;
    let method = config.str("method")?.unwrap_or("GET").to_ascii_uppercase();
    if !METHODS.contains(&method.as_str()) {
        return Err(invalid_config(
            "method",
            format!("is `{method}`; use {}", METHODS.join(", ")),
        ));
    }
    let written = config.required_str("url")?.trim();
    let lower = written.get(..8).unwrap_or(written).to_ascii_lowercase();
    if !lower.starts_with("https://") && !lower.starts_with("http://") {
        return Err(invalid_config(
            "url",
            "must start with https:// or http:// followed by the host (placeholders may fill the rest)",
        ));
    }
    postdog_expr::template_paths(written).map_err(|error| invalid_expr("url", &error))?;
    let url = postdog_expr::render_template_with(written, context, percent_encode);
    let mut headers = Vec::new();
    for (name, value) in config.object("headers")?.into_iter().flatten() {
        let field = format!("headers/{name}");
        if !is_header_name(name) {
            return Err(invalid_config(&field, "is not a valid header name"));
        }
        headers.push((name.clone(), header_value(&field, value, context)?));
    }
    let has_header = |headers: &[(String, String)], wanted: &str| {
        headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case(wanted))
    };
    let body = match (config.str("body")?, config.get("json")) {
        (Some(_), Some(_)) => {
            return Err(ActionError::InvalidConfig(
                "set only one of `body` and `json`".into(),
            ));
        }
        (Some(body), None) => render("body", body, context)?.into_bytes(),
        (None, Some(value @ (Value::Object(_) | Value::Array(_)))) => {
            if !has_header(&headers, "content-type") {
                headers.push(("content-type".into(), "application/json".into()));
            }
            render_value("json", value, context)?
                .to_string()
                .into_bytes()
        }
        (None, Some(other)) => {
            return Err(invalid_config(
                "json",
                format!("must be an object or a list, not {}", kind(other)),
            ));
        }
        (None, None) => Vec::new(),
    };
    let timeout_ms = match config.u64("timeout_ms")? {
        None => None,
        Some(0) => return Err(invalid_config("timeout_ms", "must be at least 1")),
        Some(ms) if ms > MAX_TIMEOUT_MS => {
            return Err(invalid_config("timeout_ms", "must be at most 30000 (30 s)"));
        }
        Some(ms) => u32::try_from(ms).ok(),
    };
    let mut response_map = Vec::new();
    for (name, pointer) in config.object("response_map")?.into_iter().flatten() {
        let field = format!("response_map/{name}");
        if name.trim().is_empty() || RESERVED.contains(&name.as_str()) {
            return Err(invalid_config(
                &field,
                "cannot be an output name: `status`, `error` and `error_kind` are the action's own",
            ));
        }
        match pointer {
            Value::String(pointer) if pointer.is_empty() || pointer.starts_with('/') => {
                response_map.push((name.clone(), pointer.clone()));
            }
            _ => {
                return Err(invalid_config(
                    &field,
                    format!(
                        "must be a JSON Pointer such as \"/data/id\" (or \"\" for the whole answer), not {pointer}"
                    ),
                ));
            }
        }
    }
    Ok(Plan {
        method,
        url,
        headers,
        body,
        timeout_ms,
        response_map,
    })
}

/// What the host's refusal or failure means for the flow author.
fn transport_message(error: &HttpError) -> String {
    match error {
        HttpError::Denied => {
            "the install may not make HTTP calls: grant it `http:<host>` for the API's host"
                .to_string()
        }
        HttpError::HostNotAllowed(host) => {
            format!("the host is not granted to the install: grant it `http:{host}`")
        }
        HttpError::InvalidRequest(why) => format!("the request is invalid: {why}"),
        HttpError::AddressDenied(why) => {
            format!("the address is private or reserved and is never called: {why}")
        }
        HttpError::DnsFailed(why) => format!("the host name could not be resolved: {why}"),
        HttpError::Timeout(ms) => format!("no answer within {ms} ms"),
        HttpError::RequestTooLarge(limit) => {
            format!("the request body is larger than the limit of {limit} bytes")
        }
        HttpError::ResponseTooLarge(limit) => {
            format!("the answer is larger than the limit of {limit} bytes")
        }
        HttpError::ConnectionFailed(why) => format!("the connection failed: {why}"),
        HttpError::ProtocolError(why) => format!("the server's answer was not valid HTTP: {why}"),
    }
}

/// The step's result from the call's result.
fn answer(plan: &Plan, result: Result<Response, HttpError>) -> Result<ActionResult, ActionError> {
    let response = match result {
        Ok(response) => response,
        Err(error @ (HttpError::Timeout(_) | HttpError::ConnectionFailed(_))) => {
            return Err(ActionError::Retryable(format!(
                "{} {}: {}",
                plan.method,
                plan.url,
                transport_message(&error)
            )));
        }
        Err(error) => {
            return Ok(ActionResult::next("error").with_output(json!({
                "error": transport_message(&error),
                "error_kind": error.kind(),
            })));
        }
    };
    let mut output = Map::new();
    output.insert("status".into(), json!(response.status));
    if !plan.response_map.is_empty() {
        let body: Value = response.json().unwrap_or(Value::Null);
        for (name, pointer) in &plan.response_map {
            let value = body.pointer(pointer).cloned().unwrap_or(Value::Null);
            output.insert(name.clone(), value);
        }
    }
    if response.is_success() {
        return Ok(ActionResult::next("next").with_output(Value::Object(output)));
    }
    output.insert(
        "error".into(),
        json!(format!("the server answered {}", response.status)),
    );
    output.insert("error_kind".into(), json!("status"));
    Ok(ActionResult::next("error").with_output(Value::Object(output)))
}

impl Action for HttpRequest {
    fn describe() -> Descriptor {
        Descriptor::new(
            "HTTP request",
            "Calls an HTTP API and keeps parts of its JSON answer: response_map names → JSON Pointers, read later as steps.<this step>.<name> (the status is steps.<this step>.status). The URL's host must be granted to the install as http:<host>. 2xx takes `next`; another status or a refused call takes `error`; timeouts and broken connections are retried.",
        )
        .with_config_schema(schema())
        .with_port("next", "The server answered 2xx")
        .with_port(
            "error",
            "The server answered another status, or the call was refused; steps.<this step>.error says why",
        )
    }

    fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
        let plan = plan(&Config::of(&input)?, &context(&input))?;
        answer(&plan, http::fetch(&plan.request()))
    }
}

postdog_sdk::export_action!(HttpRequest);

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> Context {
        Context {
            contact: json!({"name": "Ada \"the\" Countess", "fields": {"crm_id": "42"}}),
            trigger: json!({"order_id": "A 1"}),
            steps: json!({}),
            now_ms: 0,
        }
    }

    fn planned(config: Value) -> Plan {
        plan(&Config::from_value(config.clone()), &context())
            .unwrap_or_else(|error| panic!("{config}: {error:?}"))
    }

    fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn outcome_and_output(result: Result<ActionResult, ActionError>) -> (String, Value) {
        match result {
            Ok(ActionResult {
                outcome: Outcome::Next(port),
                output,
                ..
            }) => (port, serde_json::from_str(&output).expect("json")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plans_the_request() {
        let post = planned(json!({
            "method": "post",
            "url": "https://api.example.com/customers/{{contact.fields.crm_id}}",
            "headers": {"Authorization": "Bearer k", "X-Order": "{{trigger.order_id}}", "X-N": 3},
            "json": {"name": "{{contact.name}}", "ids": ["{{contact.fields.crm_id}}"], "n": 1},
            "timeout_ms": 5000,
            "response_map": {"tier": "/customer/tier", "all": ""}
        }));
        assert_eq!(post.method, "POST");
        assert_eq!(post.url, "https://api.example.com/customers/42");
        assert_eq!(
            post.headers,
            [
                ("Authorization".to_string(), "Bearer k".to_string()),
                ("X-N".to_string(), "3".to_string()),
                ("X-Order".to_string(), "A 1".to_string()),
                ("content-type".to_string(), "application/json".to_string()),
            ]
        );
        let body: Value = serde_json::from_slice(&post.body).expect("the JSON body is valid JSON");
        assert_eq!(
            body,
            json!({"name": "Ada \"the\" Countess", "ids": ["42"], "n": 1})
        );
        assert_eq!(post.timeout_ms, Some(5000));
        let text = planned(
            json!({"url": "http://x.example/{{trigger.order_id}}", "body": "id={{contact.fields.crm_id}}", "headers": {"content-type": "text/plain"}}),
        );
        assert_eq!(
            (text.method.as_str(), text.body.as_slice()),
            ("GET", b"id=42".as_slice())
        );
        assert_eq!(text.timeout_ms, None);
        assert_eq!(text.url, "http://x.example/A%201");
        let hostile = plan(
            &Config::from_value(
                json!({"url": "https://api.example.com/u/{{trigger.x}}?q={{trigger.x}}"}),
            ),
            &Context {
                trigger: json!({"x": "@evil.example/é?a=1&b#"}),
                ..Context::default()
            },
        )
        .expect("plans");
        assert_eq!(
            hostile.url,
            "https://api.example.com/u/%40evil.example%2F%C3%A9%3Fa%3D1%26b%23?q=%40evil.example%2F%C3%A9%3Fa%3D1%26b%23"
        );
    }

    #[test]
    fn bad_config_names_the_field() {
        for (config, expected) in [
            (json!({}), "`url` is required"),
            (json!({"url": "ftp://x"}), "`url` must start with https://"),
            (
                json!({"url": "https://x", "method": "BREW"}),
                "`method` is `BREW`",
            ),
            (
                json!({"url": "https://x", "headers": {"Bad Name": "x"}}),
                "`headers/Bad Name` is not a valid header name",
            ),
            (
                json!({"url": "https://x", "headers": {"X": ["a"]}}),
                "`headers/X` must be text, not a list",
            ),
            (
                json!({"url": "https://x", "headers": "x"}),
                "`headers` must be an object",
            ),
            (
                json!({"url": "https://x", "body": "a", "json": {}}),
                "set only one of `body` and `json`",
            ),
            (
                json!({"url": "https://x", "json": 3}),
                "`json` must be an object or a list",
            ),
            (
                json!({"url": "https://x", "timeout_ms": 0}),
                "`timeout_ms` must be at least 1",
            ),
            (
                json!({"url": "https://x", "timeout_ms": 60000}),
                "`timeout_ms` must be at most 30000",
            ),
            (
                json!({"url": "https://x", "response_map": {"status": "/a"}}),
                "`response_map/status` cannot be an output name",
            ),
            (
                json!({"url": "https://x", "response_map": {"a": "data.id"}}),
                "`response_map/a` must be a JSON Pointer",
            ),
            (
                json!({"url": "https://x/{{nope}}"}),
                "`url`: `nope` is not a path",
            ),
            (
                json!({"url": "https://x", "retries": 3}),
                "`retries` is not a setting",
            ),
        ] {
            match plan(&Config::from_value(config.clone()), &context()) {
                Err(ActionError::InvalidConfig(message)) => {
                    assert!(message.starts_with(expected), "{config}: {message}");
                }
                other => panic!("{config}: {other:?}"),
            }
        }
        assert!(matches!(
            plan(&Config::from_value(json!({"url": "{{trigger.base}}/x"})), &context()),
            Err(ActionError::InvalidConfig(message)) if message.contains("must start with")
        ));
        assert!(matches!(
            plan(&Config::from_value(json!({"url": "https://x", "headers": {"X": "{{contact.name}}\n"}})), &Context {
                contact: json!({"name": "a\r\nInjected: 1"}),
                ..Context::default()
            }),
            Err(ActionError::InvalidInput(message)) if message.contains("line break")
        ));
    }

    #[test]
    fn answers() {
        let plan = planned(
            json!({"url": "https://x", "response_map": {"tier": "/customer/tier", "missing": "/nope", "whole": ""}}),
        );
        let (port, output) = outcome_and_output(answer(
            &plan,
            Ok(response(200, r#"{"customer": {"tier": "gold"}}"#)),
        ));
        assert_eq!(port, "next");
        assert_eq!(
            output,
            json!({"status": 200, "tier": "gold", "missing": null, "whole": {"customer": {"tier": "gold"}}})
        );
        let (port, output) = outcome_and_output(answer(&plan, Ok(response(204, ""))));
        assert_eq!(port, "next");
        assert_eq!(
            output,
            json!({"status": 204, "tier": null, "missing": null, "whole": null})
        );
        let (port, output) = outcome_and_output(answer(
            &plan,
            Ok(response(404, r#"{"customer": {"tier": "x"}}"#)),
        ));
        assert_eq!(port, "error");
        assert_eq!(output["status"], 404);
        assert_eq!(output["error"], "the server answered 404");
        assert_eq!(output["tier"], "x");
        let bare = planned(json!({"url": "https://x"}));
        let (_, output) = outcome_and_output(answer(&bare, Ok(response(201, "not json"))));
        assert_eq!(output, json!({"status": 201}));
    }

    #[test]
    fn transport_failures() {
        let plan = planned(json!({"url": "https://api.example.com/x"}));
        for error in [
            HttpError::Timeout(10_000),
            HttpError::ConnectionFailed("reset".into()),
        ] {
            assert!(matches!(
                answer(&plan, Err(error)),
                Err(ActionError::Retryable(message)) if message.starts_with("GET https://api.example.com/x: ")
            ));
        }
        let (port, output) = outcome_and_output(answer(
            &plan,
            Err(HttpError::HostNotAllowed("api.example.com".into())),
        ));
        assert_eq!(port, "error");
        assert_eq!(output["error_kind"], "host-not-allowed");
        assert!(
            output["error"]
                .as_str()
                .is_some_and(|e| e.contains("grant it `http:api.example.com`")),
            "{output}"
        );
        let (port, output) = outcome_and_output(answer(&plan, Err(HttpError::Denied)));
        assert_eq!(
            (port.as_str(), output["error_kind"].as_str()),
            ("error", Some("denied"))
        );
    }

    #[test]
    fn describes_itself() {
        let descriptor = HttpRequest::describe();
        let ports: Vec<&str> = descriptor
            .ports
            .iter()
            .map(|port| port.name.as_str())
            .collect();
        assert_eq!(ports, ["next", "error"]);
        let schema: Value = serde_json::from_str(&descriptor.config_schema).expect("json");
        let keys: Vec<&String> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .collect();
        let mut expected = KEYS.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }
}
