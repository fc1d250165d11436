//! `echo-channel`: the example messaging channel, and the template for real connectors.
//! It speaks "Echo", a deliberately small HTTP messaging API:
//!
//! - **send**: `POST {endpoint}/v1/messages` with `Authorization: Bearer {api_token}` and
//!   JSON `{"to", "text", "idempotency_key"}`; `200`/`201` answer `{"id": "…"}`.
//!   `401` → auth failed, `429` (with `Retry-After` seconds) → rate limited, `400` →
//!   invalid message, `5xx` → transport (retryable).
//! - **verify-webhook**: `GET ?challenge=X&token=T` answers `X` when `T` equals the secret
//!   `webhook_token`.
//! - **handle-webhook**: `POST` with header `X-Echo-Token: {webhook_token}` (compared in
//!   constant time) and JSON `{"messages": [{"id","from","name","text","timestamp"}],
//!   "statuses": [{"id","recipient","status","timestamp"}]}`.
//!
//! Configuration: `endpoint` (base URL); secrets: `api_token`, `webhook_token`.
//! Capabilities: `http:<endpoint host>`.

use postdog_sdk::channel::{
    Channel, ChannelError, InboundContent, InboundEvent, InboundMessage, OutboundMessage,
    ProviderError, SendReceipt, StatusUpdate, WebhookOutcome,
};
use postdog_sdk::message::DeliveryStatus;
use postdog_sdk::prelude::*;

struct Echo;

fn not_configured(error: impl std::fmt::Display) -> ChannelError {
    ChannelError::NotConfigured(error.to_string())
}

/// Compares two byte strings in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn provider_error(status: u16, body: &str, retry_after_ms: Option<u64>) -> ProviderError {
    let mut error = ProviderError::new(
        i64::from(status),
        body.chars().take(500).collect::<String>(),
        status == 429 || status >= 500,
    );
    error.retry_after_ms = retry_after_ms;
    error
}

fn status_from(text: &str) -> Option<DeliveryStatus> {
    Some(match text {
        "accepted" => DeliveryStatus::Accepted,
        "sent" => DeliveryStatus::Sent,
        "delivered" => DeliveryStatus::Delivered,
        "read" => DeliveryStatus::Read,
        "failed" => DeliveryStatus::Failed,
        _ => return None,
    })
}

fn field<'a>(value: &'a Value, path: &str, name: &str) -> Result<&'a Value, ChannelError> {
    value
        .get(name)
        .ok_or_else(|| ChannelError::MalformedWebhook(format!("`{path}.{name}` is missing")))
}

fn text_field(value: &Value, path: &str, name: &str) -> Result<String, ChannelError> {
    field(value, path, name)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ChannelError::MalformedWebhook(format!("`{path}.{name}` must be a string")))
}

impl Channel for Echo {
    fn send(message: OutboundMessage) -> Result<SendReceipt, ChannelError> {
        let endpoint = config::require("endpoint").map_err(not_configured)?;
        let token = config::require_secret("api_token").map_err(not_configured)?;
        let MessageContent::Text(text) = &message.content else {
            return Err(ChannelError::InvalidMessage(
                "echo supports text messages only".into(),
            ));
        };
        let request =
            http::Request::post(format!("{}/v1/messages", endpoint.trim_end_matches('/')))
                .bearer(&token)
                .json(&json!({
                    "to": message.to,
                    "text": text.body,
                    "idempotency_key": message.message_id,
                }));
        let response = http::fetch(&request)
            .map_err(|error| ChannelError::Transport(format!("{}: {error:?}", error.kind())))?;
        let body = response.text();
        match response.status {
            200 | 201 => {
                let reply: Value = response.json().map_err(|error| {
                    ChannelError::Transport(format!("the API answered invalid JSON: {error}"))
                })?;
                let id = reply
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ChannelError::Transport("the API answer has no `id`".into()))?;
                Ok(SendReceipt {
                    provider_message_id: id.to_string(),
                    status: DeliveryStatus::Accepted,
                })
            }
            400 => Err(ChannelError::InvalidMessage(body)),
            401 | 403 => Err(ChannelError::AuthFailed(provider_error(
                response.status,
                &body,
                None,
            ))),
            429 => {
                let retry_after_ms = response
                    .header("retry-after")
                    .and_then(|seconds| seconds.trim().parse::<u64>().ok())
                    .map(|seconds| seconds * 1000);
                Err(ChannelError::RateLimited(provider_error(
                    429,
                    &body,
                    retry_after_ms,
                )))
            }
            status if status >= 500 => Err(ChannelError::Transport(format!(
                "the API answered {status}: {body}"
            ))),
            status => Err(ChannelError::Provider(provider_error(status, &body, None))),
        }
    }

    fn verify_webhook(request: HttpRequest) -> Result<HttpResponse, ChannelError> {
        let expected = config::require_secret("webhook_token").map_err(not_configured)?;
        let token = request.query_param("token").unwrap_or_default();
        if !constant_time_eq(token.as_bytes(), expected.as_bytes()) {
            return Err(ChannelError::Unauthorized(
                "the verify token does not match".into(),
            ));
        }
        let challenge = request
            .query_param("challenge")
            .ok_or_else(|| ChannelError::MalformedWebhook("`challenge` is missing".into()))?;
        Ok(HttpResponse::text(200, challenge))
    }

    fn handle_webhook(request: HttpRequest) -> Result<WebhookOutcome, ChannelError> {
        let expected = config::require_secret("webhook_token").map_err(not_configured)?;
        let token = request.header("x-echo-token").unwrap_or_default();
        if !constant_time_eq(token.as_bytes(), expected.as_bytes()) {
            return Err(ChannelError::Unauthorized(
                "X-Echo-Token does not match".into(),
            ));
        }
        let body: Value = serde_json::from_slice(&request.body).map_err(|error| {
            ChannelError::MalformedWebhook(format!("the body is not JSON: {error}"))
        })?;
        let mut events = Vec::new();
        let empty = Vec::new();
        let list = |name: &str| -> Result<&Vec<Value>, ChannelError> {
            match body.get(name) {
                None => Ok(&empty),
                Some(value) => value.as_array().ok_or_else(|| {
                    ChannelError::MalformedWebhook(format!("`{name}` must be an array"))
                }),
            }
        };
        for (index, message) in list("messages")?.iter().enumerate() {
            let path = format!("messages[{index}]");
            events.push(InboundEvent::Message(InboundMessage {
                provider_message_id: text_field(message, &path, "id")?,
                sender: text_field(message, &path, "from")?,
                profile_name: message
                    .get("name")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                timestamp_ms: field(message, &path, "timestamp")?
                    .as_i64()
                    .ok_or_else(|| {
                        ChannelError::MalformedWebhook(format!(
                            "`{path}.timestamp` must be an integer"
                        ))
                    })?
                    * 1000,
                context_message_id: None,
                content: InboundContent::Text(text_field(message, &path, "text")?),
            }));
        }
        for (index, status) in list("statuses")?.iter().enumerate() {
            let path = format!("statuses[{index}]");
            let state = text_field(status, &path, "status")?;
            events.push(InboundEvent::Status(StatusUpdate {
                provider_message_id: text_field(status, &path, "id")?,
                recipient: text_field(status, &path, "recipient")?,
                status: status_from(&state).ok_or_else(|| {
                    ChannelError::MalformedWebhook(format!(
                        "`{path}.status` `{state}` is not a known status"
                    ))
                })?,
                timestamp_ms: status.get("timestamp").and_then(Value::as_i64).unwrap_or(0) * 1000,
                error: None,
                callback_data: None,
            }));
        }
        Ok(WebhookOutcome {
            events,
            response: HttpResponse::status(200),
        })
    }
}

postdog_sdk::export_channel!(Echo);
