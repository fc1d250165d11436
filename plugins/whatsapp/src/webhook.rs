//! Meta's webhooks: the `hub.challenge` verification handshake, the
//! `X-Hub-Signature-256` check and the payload's translation into kernel events. Pure: no
//! host imports, so it is tested natively.

use hmac::{Hmac, Mac};
use postdog_sdk::channel::{
    ChannelError, Choice, InboundContent, InboundEvent, InboundMedia, InboundMessage, Location,
    Reaction, StatusUpdate, TemplateUpdate,
};
use postdog_sdk::message::{DeliveryStatus, HttpRequest, HttpResponse, MediaKind};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The header carrying the payload's signature.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";

/// Compares two secrets in constant time, including their lengths: both are hashed
/// first, so only the equality of the digests is revealed.
pub fn secrets_match(given: &[u8], expected: &[u8]) -> bool {
    let given = Sha256::digest(given);
    let expected = Sha256::digest(expected);
    given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

fn unauthorized(text: impl Into<String>) -> ChannelError {
    ChannelError::Unauthorized(text.into())
}

/// Answers Meta's verification request
/// (`hub.mode=subscribe&hub.verify_token=…&hub.challenge=…`): `200` with the challenge
/// when the token matches `verify_token`.
pub fn verify(request: &HttpRequest, verify_token: &str) -> Result<HttpResponse, ChannelError> {
    let mode = request
        .query_param("hub.mode")
        .ok_or_else(|| unauthorized("the query parameter `hub.mode` is missing"))?;
    if mode != "subscribe" {
        return Err(unauthorized(format!(
            "`hub.mode` is `{mode}`; Meta's verification request uses `subscribe`"
        )));
    }
    let token = request
        .query_param("hub.verify_token")
        .ok_or_else(|| unauthorized("the query parameter `hub.verify_token` is missing"))?;
    if !secrets_match(token.as_bytes(), verify_token.as_bytes()) {
        return Err(unauthorized(
            "`hub.verify_token` does not match the install's `verify_token` secret",
        ));
    }
    let challenge = request
        .query_param("hub.challenge")
        .ok_or_else(|| unauthorized("the query parameter `hub.challenge` is missing"))?;
    Ok(HttpResponse {
        status: 200,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: challenge.into_bytes(),
    })
}

/// Checks `X-Hub-Signature-256: sha256=<hex>` against HMAC-SHA256(app secret, raw body),
/// in constant time.
pub fn check_signature(request: &HttpRequest, app_secret: &str) -> Result<(), ChannelError> {
    let header = request
        .header(SIGNATURE_HEADER)
        .ok_or_else(|| unauthorized(format!("the `{SIGNATURE_HEADER}` header is missing")))?
        .trim();
    let hex_digest = header
        .get(..7)
        .filter(|prefix| prefix.eq_ignore_ascii_case("sha256="))
        .map(|_| &header[7..])
        .ok_or_else(|| {
            unauthorized(format!(
                "the `{SIGNATURE_HEADER}` header must read `sha256=<hex digest>`"
            ))
        })?;
    let mut signature = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut signature).map_err(|_| {
        unauthorized(format!(
            "the `{SIGNATURE_HEADER}` digest is not 64 hexadecimal digits"
        ))
    })?;
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes())
        .map_err(|_| ChannelError::NotConfigured("the `app_secret` cannot key HMAC".into()))?;
    mac.update(&request.body);
    mac.verify_slice(&signature).map_err(|_| {
        unauthorized(format!(
            "the `{SIGNATURE_HEADER}` signature does not match the body (is the install's `app_secret` the Meta app's secret?)"
        ))
    })
}

/// What a webhook payload held: the events in payload order, and notes about the parts
/// that were skipped on purpose (for the log).
#[derive(Debug, Default)]
pub struct Parsed {
    /// The events, in payload order.
    pub events: Vec<InboundEvent>,
    /// What was skipped and why.
    pub skipped: Vec<String>,
}

fn malformed(text: String) -> ChannelError {
    ChannelError::MalformedWebhook(text)
}

/// A JSON node and its path in the payload, for error messages.
#[derive(Clone, Copy)]
struct At<'a> {
    value: &'a Value,
    path: &'a str,
}

impl<'a> At<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.value.get(key).filter(|value| !value.is_null())
    }

    fn required(&self, key: &str) -> Result<&'a Value, ChannelError> {
        self.get(key)
            .ok_or_else(|| malformed(format!("`{}.{key}` is missing", self.path)))
    }

    fn string(&self, key: &str) -> Result<&'a str, ChannelError> {
        self.required(key)?
            .as_str()
            .ok_or_else(|| malformed(format!("`{}.{key}` must be a string", self.path)))
    }

    fn optional_string(&self, key: &str) -> Result<Option<String>, ChannelError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(malformed(format!("`{}.{key}` must be a string", self.path))),
        }
    }

    fn object(&self, key: &str) -> Result<&'a Value, ChannelError> {
        let value = self.required(key)?;
        if value.is_object() {
            Ok(value)
        } else {
            Err(malformed(format!(
                "`{}.{key}` must be an object",
                self.path
            )))
        }
    }

    fn array(&self, key: &str) -> Result<&'a [Value], ChannelError> {
        self.required(key)?
            .as_array()
            .map(Vec::as_slice)
            .ok_or_else(|| malformed(format!("`{}.{key}` must be an array", self.path)))
    }

    fn optional_array(&self, key: &str) -> Result<&'a [Value], ChannelError> {
        match self.get(key) {
            None => Ok(&[]),
            Some(_) => self.array(key),
        }
    }

    /// A Unix timestamp in seconds (Meta sends a string) as milliseconds.
    fn timestamp_ms(&self, key: &str) -> Result<i64, ChannelError> {
        let value = self.required(key)?;
        let seconds = match value {
            Value::String(text) => text.trim().parse::<i64>().ok(),
            Value::Number(number) => number.as_i64(),
            _ => None,
        };
        seconds
            .and_then(|seconds| seconds.checked_mul(1000))
            .ok_or_else(|| {
                malformed(format!(
                    "`{}.{key}` must be Unix seconds, found {value}",
                    self.path
                ))
            })
    }

    fn number(&self, key: &str) -> Result<f64, ChannelError> {
        let value = self.required(key)?;
        match value {
            Value::Number(number) => number.as_f64(),
            Value::String(text) => text.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
            _ => None,
        }
        .ok_or_else(|| malformed(format!("`{}.{key}` must be a number", self.path)))
    }
}

/// A WhatsApp id (digits) as an E.164 address; an empty id stays empty.
fn address(wa_id: &str) -> String {
    if wa_id.is_empty() || wa_id.starts_with('+') {
        wa_id.to_string()
    } else {
        format!("+{wa_id}")
    }
}

/// Turns a (signature-checked) webhook body into events.
pub fn parse(body: &[u8]) -> Result<Parsed, ChannelError> {
    let root: Value = serde_json::from_slice(body)
        .map_err(|error| malformed(format!("the body is not JSON: {error}")))?;
    if !root.is_object() {
        return Err(malformed("`$` must be an object".to_string()));
    }
    let root = At {
        value: &root,
        path: "$",
    };
    let mut parsed = Parsed::default();
    let object = root.string("object")?;
    if object != "whatsapp_business_account" {
        parsed.skipped.push(format!(
            "a webhook for `{object}`, not `whatsapp_business_account`"
        ));
        return Ok(parsed);
    }
    for (entry_index, entry) in root.array("entry")?.iter().enumerate() {
        let entry_path = format!("$.entry[{entry_index}]");
        let entry = At {
            value: entry,
            path: &entry_path,
        };
        if !entry.value.is_object() {
            return Err(malformed(format!("`{entry_path}` must be an object")));
        }
        for (change_index, change) in entry.array("changes")?.iter().enumerate() {
            let change_path = format!("{entry_path}.changes[{change_index}]");
            let change = At {
                value: change,
                path: &change_path,
            };
            if !change.value.is_object() {
                return Err(malformed(format!("`{change_path}` must be an object")));
            }
            let field = change.string("field")?;
            let value_path = format!("{change_path}.value");
            let value = At {
                value: change.object("value")?,
                path: &value_path,
            };
            match field {
                "messages" => parse_messages_value(value, &mut parsed)?,
                "message_template_status_update" => {
                    parsed
                        .events
                        .push(InboundEvent::Template(template_update(value)?));
                }
                other => parsed
                    .skipped
                    .push(format!("`{change_path}`: field `{other}` is not handled")),
            }
        }
    }
    Ok(parsed)
}

fn parse_messages_value(value: At<'_>, parsed: &mut Parsed) -> Result<(), ChannelError> {
    let contacts = value.optional_array("contacts")?;
    for (index, message) in value.optional_array("messages")?.iter().enumerate() {
        let path = format!("{}.messages[{index}]", value.path);
        let message = At {
            value: message,
            path: &path,
        };
        if !message.value.is_object() {
            return Err(malformed(format!("`{path}` must be an object")));
        }
        parsed
            .events
            .push(InboundEvent::Message(inbound_message(message, contacts)?));
    }
    for (index, status) in value.optional_array("statuses")?.iter().enumerate() {
        let path = format!("{}.statuses[{index}]", value.path);
        let status = At {
            value: status,
            path: &path,
        };
        if !status.value.is_object() {
            return Err(malformed(format!("`{path}` must be an object")));
        }
        match status_update(status)? {
            Some(update) => parsed.events.push(InboundEvent::Status(update)),
            None => parsed.skipped.push(format!(
                "`{path}`: status `{}` is not a delivery state",
                status.string("status").unwrap_or_default()
            )),
        }
    }
    if let Some(errors) = value.get("errors") {
        parsed
            .skipped
            .push(format!("`{}.errors`: {errors}", value.path));
    }
    Ok(())
}

fn profile_name(contacts: &[Value], from: &str) -> Option<String> {
    contacts
        .iter()
        .find(|contact| contact.get("wa_id").and_then(Value::as_str) == Some(from))
        .and_then(|contact| contact.get("profile")?.get("name")?.as_str())
        .map(str::to_string)
}

fn inbound_message(message: At<'_>, contacts: &[Value]) -> Result<InboundMessage, ChannelError> {
    let from = message.string("from")?;
    let id = message.string("id")?;
    let timestamp_ms = message.timestamp_ms("timestamp")?;
    let kind = message.string("type")?;
    let context_message_id = match message.get("context") {
        Some(context) => At {
            value: context,
            path: &format!("{}.context", message.path),
        }
        .optional_string("id")?,
        None => None,
    };
    Ok(InboundMessage {
        provider_message_id: id.to_string(),
        sender: address(from),
        profile_name: profile_name(contacts, from),
        timestamp_ms,
        context_message_id,
        content: inbound_content(message, kind)?,
    })
}

fn inbound_content(message: At<'_>, kind: &str) -> Result<InboundContent, ChannelError> {
    let media_kind = match kind {
        "image" => Some(MediaKind::Image),
        "video" => Some(MediaKind::Video),
        "audio" => Some(MediaKind::Audio),
        "document" => Some(MediaKind::Document),
        "sticker" => Some(MediaKind::Sticker),
        _ => None,
    };
    let inner_path = format!("{}.{kind}", message.path);
    let inner = |key: &str| -> Result<At<'_>, ChannelError> {
        Ok(At {
            value: message.object(key)?,
            path: &inner_path,
        })
    };
    if let Some(media_kind) = media_kind {
        let media = inner(kind)?;
        return Ok(InboundContent::Media(InboundMedia {
            kind: media_kind,
            media_id: media.string("id")?.to_string(),
            mime_type: media.optional_string("mime_type")?,
            caption: media.optional_string("caption")?,
        }));
    }
    Ok(match kind {
        "text" => InboundContent::Text(inner("text")?.string("body")?.to_string()),
        "location" => {
            let location = inner("location")?;
            InboundContent::Location(Location {
                latitude: location.number("latitude")?,
                longitude: location.number("longitude")?,
                name: location.optional_string("name")?,
                address: location.optional_string("address")?,
            })
        }
        "contacts" => {
            InboundContent::Contacts(Value::Array(message.array("contacts")?.to_vec()).to_string())
        }
        "interactive" => {
            let interactive = inner("interactive")?;
            let reply_kind = interactive.string("type")?;
            match reply_kind {
                "button_reply" | "list_reply" => {
                    let reply_path = format!("{inner_path}.{reply_kind}");
                    let reply = At {
                        value: interactive.object(reply_kind)?,
                        path: &reply_path,
                    };
                    InboundContent::InteractiveReply(Choice {
                        id: reply.string("id")?.to_string(),
                        title: reply.string("title")?.to_string(),
                    })
                }
                // Flow answers (`nfm_reply`) and anything newer: hand over as is.
                _ => InboundContent::Unsupported(message.value.to_string()),
            }
        }
        "button" => {
            let button = inner("button")?;
            InboundContent::ButtonReply(Choice {
                id: button.string("payload")?.to_string(),
                title: button.string("text")?.to_string(),
            })
        }
        "reaction" => {
            let reaction = inner("reaction")?;
            InboundContent::Reaction(Reaction {
                message_id: reaction.string("message_id")?.to_string(),
                emoji: reaction.optional_string("emoji")?.unwrap_or_default(),
            })
        }
        // order, system, unsupported, request_welcome and types added later.
        _ => InboundContent::Unsupported(message.value.to_string()),
    })
}

fn delivery_status(text: &str) -> Option<DeliveryStatus> {
    Some(match text {
        "sent" => DeliveryStatus::Sent,
        "delivered" => DeliveryStatus::Delivered,
        "read" => DeliveryStatus::Read,
        "failed" => DeliveryStatus::Failed,
        _ => return None,
    })
}

/// A status entry; `None` for states that are not delivery states (`deleted`, `warning`…).
fn status_update(status: At<'_>) -> Result<Option<StatusUpdate>, ChannelError> {
    let Some(state) = delivery_status(status.string("status")?) else {
        return Ok(None);
    };
    let id = status.string("id")?;
    let recipient = status.string("recipient_id")?;
    let timestamp_ms = status.timestamp_ms("timestamp")?;
    let error = if state == DeliveryStatus::Failed {
        let first = status
            .optional_array("errors")?
            .first()
            .cloned()
            .unwrap_or(Value::Null);
        Some(crate::errors::from_status_webhook(&first))
    } else {
        None
    };
    // Echoed back from the send (PostDog's message id), when the send carried it.
    let callback_data = status
        .optional_string("biz_opaque_callback_data")?
        .filter(|data| !data.is_empty());
    Ok(Some(StatusUpdate {
        provider_message_id: id.to_string(),
        recipient: address(recipient),
        status: state,
        timestamp_ms,
        error,
        callback_data,
    }))
}

fn template_update(value: At<'_>) -> Result<TemplateUpdate, ChannelError> {
    let reason = value
        .optional_string("reason")?
        .filter(|reason| !reason.trim().is_empty() && !reason.eq_ignore_ascii_case("NONE"));
    // PAUSED and DISABLED explain themselves in `other_info` instead.
    let other_info = value.get("other_info").map(|info| {
        [info.get("title"), info.get("description")]
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(": ")
    });
    let reason = match (reason, other_info.filter(|info| !info.is_empty())) {
        (Some(reason), Some(info)) => Some(format!("{reason} ({info})")),
        (reason, info) => reason.or(info),
    };
    Ok(TemplateUpdate {
        name: value.string("message_template_name")?.to_string(),
        language: value.string("message_template_language")?.to_string(),
        status: value.string("event")?.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "app-secret-123";

    fn request(
        method: &str,
        query: &str,
        headers: Vec<(&str, String)>,
        body: &[u8],
    ) -> HttpRequest {
        HttpRequest {
            method: method.into(),
            path: "/".into(),
            query: query.into(),
            headers: headers
                .into_iter()
                .map(|(name, value)| (name.to_string(), value))
                .collect(),
            body: body.to_vec(),
        }
    }

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn unauthorized_text(result: Result<impl std::fmt::Debug, ChannelError>) -> String {
        match result {
            Err(ChannelError::Unauthorized(text)) => text,
            other => panic!("expected Unauthorized, got {other:?}"),
        }
    }

    #[test]
    fn verification_handshake() {
        let ok = verify(
            &request(
                "GET",
                "hub.mode=subscribe&hub.verify_token=s%26cr%C3%A9t+token&hub.challenge=1158201444",
                vec![],
                b"",
            ),
            "s&crét token",
        )
        .unwrap();
        assert_eq!(ok.status, 200);
        assert_eq!(ok.body, b"1158201444");
        assert_eq!(
            ok.headers,
            vec![("content-type".to_string(), "text/plain".to_string())]
        );

        let wrong = unauthorized_text(verify(
            &request(
                "GET",
                "hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1",
                vec![],
                b"",
            ),
            "token",
        ));
        assert!(wrong.contains("does not match"), "{wrong}");
        let mode = unauthorized_text(verify(
            &request(
                "GET",
                "hub.mode=unsubscribe&hub.verify_token=token&hub.challenge=1",
                vec![],
                b"",
            ),
            "token",
        ));
        assert!(mode.contains("unsubscribe"), "{mode}");
        let missing = unauthorized_text(verify(
            &request("GET", "hub.mode=subscribe&hub.challenge=1", vec![], b""),
            "token",
        ));
        assert!(missing.contains("hub.verify_token"), "{missing}");
        let missing = unauthorized_text(verify(&request("GET", "", vec![], b""), "token"));
        assert!(missing.contains("hub.mode"), "{missing}");
        let missing = unauthorized_text(verify(
            &request(
                "GET",
                "hub.mode=subscribe&hub.verify_token=token",
                vec![],
                b"",
            ),
            "token",
        ));
        assert!(missing.contains("hub.challenge"), "{missing}");
        // A prefix of the token is not the token.
        unauthorized_text(verify(
            &request(
                "GET",
                "hub.mode=subscribe&hub.verify_token=tok&hub.challenge=1",
                vec![],
                b"",
            ),
            "token",
        ));
    }

    #[test]
    fn constant_time_comparison() {
        assert!(secrets_match(b"abc", b"abc"));
        assert!(!secrets_match(b"abc", b"abd"));
        assert!(!secrets_match(b"abc", b"abcd"));
        assert!(!secrets_match(b"", b"a"));
        assert!(secrets_match(b"", b""));
    }

    #[test]
    fn signatures() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let good = sign(SECRET, body);
        assert!(
            check_signature(
                &request(
                    "POST",
                    "",
                    vec![("X-Hub-Signature-256", good.clone())],
                    body
                ),
                SECRET
            )
            .is_ok()
        );
        // Header name in any case, digest in upper case.
        let upper = format!("sha256={}", good[7..].to_ascii_uppercase());
        assert!(
            check_signature(
                &request("POST", "", vec![("x-hub-signature-256", upper)], body),
                SECRET
            )
            .is_ok()
        );

        let text = unauthorized_text(check_signature(&request("POST", "", vec![], body), SECRET));
        assert!(text.contains("missing"), "{text}");
        let text = unauthorized_text(check_signature(
            &request(
                "POST",
                "",
                vec![("X-Hub-Signature-256", good[7..].to_string())],
                body,
            ),
            SECRET,
        ));
        assert!(text.contains("sha256="), "{text}");
        let text = unauthorized_text(check_signature(
            &request(
                "POST",
                "",
                vec![("X-Hub-Signature-256", "sha256=xyz".into())],
                body,
            ),
            SECRET,
        ));
        assert!(text.contains("64 hexadecimal"), "{text}");
        let text = unauthorized_text(check_signature(
            &request(
                "POST",
                "",
                vec![("X-Hub-Signature-256", sign("other", body))],
                body,
            ),
            SECRET,
        ));
        assert!(text.contains("does not match"), "{text}");
        // One changed byte of the body.
        let mut tampered = body.to_vec();
        tampered[3] ^= 1;
        unauthorized_text(check_signature(
            &request(
                "POST",
                "",
                vec![("X-Hub-Signature-256", good.clone())],
                &tampered,
            ),
            SECRET,
        ));
        // The old SHA-1 header is not accepted instead.
        unauthorized_text(check_signature(
            &request("POST", "", vec![("X-Hub-Signature", good)], body),
            SECRET,
        ));
    }

    fn envelope(field: &str, value: Value) -> Vec<u8> {
        json!({
            "object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"field": field, "value": value}]}]
        })
        .to_string()
        .into_bytes()
    }

    fn messages_value(messages: Value) -> Value {
        json!({
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "contacts": [
                {"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"},
                {"profile": {"name": "Ada"}, "wa_id": "447700900123"}
            ],
            "messages": messages
        })
    }

    fn one_message(message: Value) -> InboundMessage {
        let parsed = parse(&envelope("messages", messages_value(json!([message])))).unwrap();
        assert_eq!(parsed.events.len(), 1);
        match parsed.events.into_iter().next() {
            Some(InboundEvent::Message(message)) => message,
            other => panic!("{other:?}"),
        }
    }

    fn base(kind: &str, extra: Value) -> Value {
        let mut message = json!({
            "from": "16505551234",
            "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
            "timestamp": "1749416383",
            "type": kind
        });
        if let (Some(target), Some(extra)) = (message.as_object_mut(), extra.as_object()) {
            target.extend(extra.clone());
        }
        message
    }

    #[test]
    fn text_message() {
        let message = one_message(base(
            "text",
            json!({"text": {"body": "Hello, is this open?"}}),
        ));
        assert_eq!(
            message.provider_message_id,
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="
        );
        assert_eq!(message.sender, "+16505551234");
        assert_eq!(message.profile_name.as_deref(), Some("Sheena Nelson"));
        assert_eq!(message.timestamp_ms, 1_749_416_383_000);
        assert_eq!(message.context_message_id, None);
        assert!(
            matches!(message.content, InboundContent::Text(ref body) if body == "Hello, is this open?")
        );
    }

    #[test]
    fn profile_name_matches_the_sender() {
        let mut raw = base("text", json!({"text": {"body": "hi"}}));
        raw["from"] = json!("447700900123");
        assert_eq!(
            one_message(raw.clone()).profile_name.as_deref(),
            Some("Ada")
        );
        raw["from"] = json!("4915112345678");
        assert_eq!(one_message(raw).profile_name, None);
    }

    #[test]
    fn media_messages() {
        for (kind, media_kind) in [
            ("image", MediaKind::Image),
            ("video", MediaKind::Video),
            ("audio", MediaKind::Audio),
            ("document", MediaKind::Document),
            ("sticker", MediaKind::Sticker),
        ] {
            let mut inner =
                json!({"mime_type": "image/jpeg", "sha256": "abc=", "id": "1003383421387256"});
            if kind == "image" || kind == "document" {
                inner["caption"] = json!("Look at this");
            }
            if kind == "document" {
                inner["filename"] = json!("invoice.pdf");
            }
            if kind == "audio" {
                inner["voice"] = json!(true);
            }
            let message = one_message(base(kind, json!({ kind: inner })));
            let InboundContent::Media(media) = message.content else {
                panic!("{kind}: {:?}", message.content)
            };
            assert_eq!(media.kind, media_kind);
            assert_eq!(media.media_id, "1003383421387256");
            assert_eq!(media.mime_type.as_deref(), Some("image/jpeg"));
            assert_eq!(
                media.caption.as_deref(),
                (kind == "image" || kind == "document").then_some("Look at this")
            );
        }
        let error = parse(&envelope(
            "messages",
            messages_value(json!([base(
                "image",
                json!({"image": {"mime_type": "image/png"}})
            )])),
        ));
        assert!(
            matches!(error, Err(ChannelError::MalformedWebhook(ref t)) if t.contains("$.entry[0].changes[0].value.messages[0].image.id")),
            "{error:?}"
        );
    }

    #[test]
    fn location_contacts_and_replies() {
        let message = one_message(base(
            "location",
            json!({"location": {"latitude": 37.4836, "longitude": -122.1483, "name": "Philz Coffee", "address": "101 Forest Ave, Palo Alto"}}),
        ));
        let InboundContent::Location(location) = message.content else {
            panic!()
        };
        assert_eq!(
            (location.latitude, location.longitude),
            (37.4836, -122.1483)
        );
        assert_eq!(location.name.as_deref(), Some("Philz Coffee"));
        assert_eq!(
            location.address.as_deref(),
            Some("101 Forest Ave, Palo Alto")
        );
        let message = one_message(base(
            "location",
            json!({"location": {"latitude": 1, "longitude": 2}}),
        ));
        assert!(matches!(
            message.content,
            InboundContent::Location(Location {
                name: None,
                address: None,
                ..
            })
        ));

        let cards = json!([{"name": {"formatted_name": "Barbara Johnson", "first_name": "Barbara"}, "phones": [{"phone": "+1 (940) 555-1234", "wa_id": "19405551234", "type": "HOME"}]}]);
        let message = one_message(base("contacts", json!({"contacts": cards.clone()})));
        let InboundContent::Contacts(json_text) = message.content else {
            panic!()
        };
        assert_eq!(serde_json::from_str::<Value>(&json_text).unwrap(), cards);

        let message = one_message(base(
            "interactive",
            json!({
                "context": {"from": "15550783881", "id": "wamid.ORIGINAL"},
                "interactive": {"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes please"}}
            }),
        ));
        assert_eq!(
            message.context_message_id.as_deref(),
            Some("wamid.ORIGINAL")
        );
        assert!(
            matches!(message.content, InboundContent::InteractiveReply(ref c) if c.id == "yes" && c.title == "Yes please")
        );

        let message = one_message(base(
            "interactive",
            json!({"interactive": {"type": "list_reply", "list_reply": {"id": "slot_2", "title": "Tuesday 10:00", "description": "With Ada"}}}),
        ));
        assert!(
            matches!(message.content, InboundContent::InteractiveReply(ref c) if c.id == "slot_2" && c.title == "Tuesday 10:00")
        );

        let flow = base(
            "interactive",
            json!({"interactive": {"type": "nfm_reply", "nfm_reply": {"response_json": "{}", "body": "Sent", "name": "flow"}}}),
        );
        let message = one_message(flow.clone());
        assert!(
            matches!(message.content, InboundContent::Unsupported(ref t) if serde_json::from_str::<Value>(t).unwrap() == flow)
        );

        let message = one_message(base(
            "button",
            json!({"context": {"from": "15550783881", "id": "wamid.TEMPLATE"}, "button": {"payload": "STOP_PROMOS", "text": "Stop promotions"}}),
        ));
        assert!(
            matches!(message.content, InboundContent::ButtonReply(ref c) if c.id == "STOP_PROMOS" && c.title == "Stop promotions")
        );
        assert_eq!(
            message.context_message_id.as_deref(),
            Some("wamid.TEMPLATE")
        );

        let message = one_message(base(
            "reaction",
            json!({"reaction": {"message_id": "wamid.MINE", "emoji": "\u{1F44D}"}}),
        ));
        assert!(
            matches!(message.content, InboundContent::Reaction(ref r) if r.message_id == "wamid.MINE" && r.emoji == "\u{1F44D}")
        );
        let message = one_message(base(
            "reaction",
            json!({"reaction": {"message_id": "wamid.MINE"}}),
        ));
        assert!(matches!(message.content, InboundContent::Reaction(ref r) if r.emoji.is_empty()));
    }

    #[test]
    fn unsupported_messages_keep_their_json() {
        for raw in [
            base(
                "order",
                json!({"order": {"catalog_id": "1", "product_items": [{"product_retailer_id": "sku", "quantity": 1, "item_price": 9.5, "currency": "USD"}]}}),
            ),
            base(
                "system",
                json!({"system": {"body": "User changed number", "new_wa_id": "16505550000", "type": "user_changed_number"}}),
            ),
            base(
                "unsupported",
                json!({"errors": [{"code": 131051, "title": "Message type unknown"}]}),
            ),
            base("some_future_type", json!({"some_future_type": {}})),
        ] {
            let message = one_message(raw.clone());
            let InboundContent::Unsupported(text) = message.content else {
                panic!("{raw}")
            };
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), raw);
        }
    }

    fn status(id: &str, state: &str, extra: Value) -> Value {
        let mut status = json!({
            "id": id,
            "status": state,
            "timestamp": "1750263773",
            "recipient_id": "16505551234",
            "biz_opaque_callback_data": "msg_01",
            "conversation": {"id": "c1", "origin": {"type": "utility"}},
            "pricing": {"billable": true, "pricing_model": "PMP", "category": "utility"}
        });
        if let (Some(target), Some(extra)) = (status.as_object_mut(), extra.as_object()) {
            target.extend(extra.clone());
        }
        status
    }

    #[test]
    fn statuses() {
        let value = json!({
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "statuses": [
                status("wamid.1", "sent", json!({})),
                status("wamid.1", "delivered", json!({})),
                status("wamid.1", "deleted", json!({})),
                status("wamid.1", "read", json!({})),
                status("wamid.2", "warning", json!({})),
                status("wamid.2", "failed", json!({"errors": [{
                    "code": 131049,
                    "title": "This message was not delivered to maintain healthy ecosystem engagement.",
                    "message": "This message was not delivered to maintain healthy ecosystem engagement.",
                    "error_data": {"details": "In order to maintain a healthy ecosystem engagement, the message failed to be delivered."},
                    "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"
                }]})),
                status("wamid.3", "failed", json!({}))
            ]
        });
        let parsed = parse(&envelope("messages", value)).unwrap();
        assert_eq!(parsed.skipped.len(), 2, "{:?}", parsed.skipped);
        let updates: Vec<StatusUpdate> = parsed
            .events
            .into_iter()
            .map(|event| match event {
                InboundEvent::Status(update) => update,
                other => panic!("{other:?}"),
            })
            .collect();
        let states: Vec<(String, DeliveryStatus)> = updates
            .iter()
            .map(|u| (u.provider_message_id.clone(), u.status))
            .collect();
        assert_eq!(
            states,
            vec![
                ("wamid.1".to_string(), DeliveryStatus::Sent),
                ("wamid.1".to_string(), DeliveryStatus::Delivered),
                ("wamid.1".to_string(), DeliveryStatus::Read),
                ("wamid.2".to_string(), DeliveryStatus::Failed),
                ("wamid.3".to_string(), DeliveryStatus::Failed),
            ]
        );
        assert_eq!(updates[0].recipient, "+16505551234");
        assert_eq!(updates[0].callback_data.as_deref(), Some("msg_01"));
        assert_eq!(updates[0].timestamp_ms, 1_750_263_773_000);
        assert!(updates[0].error.is_none());
        let error = updates[3].error.as_ref().unwrap();
        assert_eq!(error.code, 131049);
        assert!(error.message.starts_with("This message was not delivered"));
        assert!(error.message.contains("failed to be delivered"));
        assert_eq!(
            error
                .message
                .matches("healthy ecosystem engagement.")
                .count(),
            1,
            "title and message are the same: {}",
            error.message
        );
        assert!(!error.retryable);
        assert_eq!(updates[4].error.as_ref().unwrap().code, 0);

        // Meta leaves `recipient_id` empty for some system statuses.
        let mut anonymous = status("wamid.4", "delivered", json!({}));
        anonymous["recipient_id"] = json!("");
        let parsed = parse(&envelope("messages", json!({"statuses": [anonymous]}))).unwrap();
        assert!(
            matches!(&parsed.events[0], InboundEvent::Status(update) if update.recipient.is_empty())
        );
    }

    #[test]
    fn template_status_updates() {
        let parsed = parse(&envelope(
            "message_template_status_update",
            json!({"event": "REJECTED", "message_template_id": 594425479261596i64, "message_template_name": "order_update", "message_template_language": "en_US", "reason": "INVALID_FORMAT"}),
        ))
        .unwrap();
        let Some(InboundEvent::Template(update)) = parsed.events.first() else {
            panic!()
        };
        assert_eq!(
            (
                update.name.as_str(),
                update.language.as_str(),
                update.status.as_str()
            ),
            ("order_update", "en_US", "REJECTED")
        );
        assert_eq!(update.reason.as_deref(), Some("INVALID_FORMAT"));

        for reason in [json!("NONE"), Value::Null, json!("")] {
            let parsed = parse(&envelope(
                "message_template_status_update",
                json!({"event": "APPROVED", "message_template_id": 1, "message_template_name": "t", "message_template_language": "de", "reason": reason}),
            ))
            .unwrap();
            let Some(InboundEvent::Template(update)) = parsed.events.first() else {
                panic!()
            };
            assert_eq!(update.status, "APPROVED");
            assert_eq!(update.reason, None);
        }
        let parsed = parse(&envelope(
            "message_template_status_update",
            json!({"event": "PAUSED", "message_template_id": 1, "message_template_name": "t", "message_template_language": "en", "other_info": {"title": "FIRST_PAUSE", "description": "Paused for 3 hours because of low quality"}}),
        ))
        .unwrap();
        let Some(InboundEvent::Template(update)) = parsed.events.first() else {
            panic!()
        };
        assert_eq!(
            update.reason.as_deref(),
            Some("FIRST_PAUSE: Paused for 3 hours because of low quality")
        );

        let error = parse(&envelope(
            "message_template_status_update",
            json!({"event": "APPROVED", "message_template_name": "t"}),
        ));
        assert!(
            matches!(error, Err(ChannelError::MalformedWebhook(ref t)) if t.contains("$.entry[0].changes[0].value.message_template_language"))
        );
    }

    #[test]
    fn events_keep_payload_order_across_entries_and_changes() {
        let body = json!({
            "object": "whatsapp_business_account",
            "entry": [
                {"id": "1", "changes": [
                    {"field": "messages", "value": messages_value(json!([base("text", json!({"text": {"body": "first"}}))]))},
                    {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}},
                    {"field": "message_template_status_update", "value": {"event": "APPROVED", "message_template_id": 1, "message_template_name": "t", "message_template_language": "en", "reason": null}}
                ]},
                {"id": "1", "changes": [
                    {"field": "messages", "value": {"messaging_product": "whatsapp", "metadata": {}, "statuses": [status("wamid.9", "delivered", json!({}))]}},
                    {"field": "messages", "value": messages_value(json!([base("text", json!({"text": {"body": "second"}})), base("text", json!({"text": {"body": "third"}}))]))}
                ]}
            ]
        });
        let parsed = parse(body.to_string().as_bytes()).unwrap();
        let summary: Vec<String> = parsed
            .events
            .iter()
            .map(|event| match event {
                InboundEvent::Message(message) => match &message.content {
                    InboundContent::Text(text) => format!("message:{text}"),
                    other => format!("{other:?}"),
                },
                InboundEvent::Status(status) => format!("status:{}", status.provider_message_id),
                InboundEvent::Template(template) => format!("template:{}", template.status),
            })
            .collect();
        assert_eq!(
            summary,
            [
                "message:first",
                "template:APPROVED",
                "status:wamid.9",
                "message:second",
                "message:third"
            ]
        );
        assert_eq!(parsed.skipped.len(), 1);
        assert!(parsed.skipped[0].contains("account_update"));
    }

    #[test]
    fn malformed_payloads_name_the_path() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not JSON"),
            (b"[]".to_vec(), "`$`"),
            (br#"{"entry":[]}"#.to_vec(), "`$.object` is missing"),
            (br#"{"object":"whatsapp_business_account"}"#.to_vec(), "`$.entry` is missing"),
            (br#"{"object":"whatsapp_business_account","entry":{}}"#.to_vec(), "`$.entry` must be an array"),
            (br#"{"object":"whatsapp_business_account","entry":[{}]}"#.to_vec(), "`$.entry[0].changes` is missing"),
            (br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{}}]}]}"#.to_vec(), "`$.entry[0].changes[0].field` is missing"),
            (br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages"}]}]}"#.to_vec(), "`$.entry[0].changes[0].value` is missing"),
            (envelope("messages", json!({"messages": {}})), "`$.entry[0].changes[0].value.messages` must be an array"),
            (envelope("messages", json!({"messages": [{"id": "x", "timestamp": "1", "type": "text", "text": {"body": "b"}}]})), "`$.entry[0].changes[0].value.messages[0].from` is missing"),
            (envelope("messages", json!({"messages": [base("text", json!({"timestamp": "yesterday", "text": {"body": "b"}}))]})), "`$.entry[0].changes[0].value.messages[0].timestamp` must be Unix seconds"),
            (envelope("messages", json!({"messages": [base("text", json!({}))]})), "`$.entry[0].changes[0].value.messages[0].text` is missing"),
            (envelope("messages", json!({"messages": [base("text", json!({"text": {"body": 5}}))]})), "`$.entry[0].changes[0].value.messages[0].text.body` must be a string"),
            (envelope("messages", json!({"messages": [base("interactive", json!({"interactive": {"type": "button_reply"}}))]})), "`$.entry[0].changes[0].value.messages[0].interactive.button_reply` is missing"),
            (envelope("messages", json!({"messages": [base("location", json!({"location": {"latitude": "north", "longitude": 1}}))]})), "location.latitude` must be a number"),
            (envelope("messages", json!({"statuses": [{"id": "wamid", "status": "read", "timestamp": "1"}]})), "`$.entry[0].changes[0].value.statuses[0].recipient_id` is missing"),
        ];
        for (body, needle) in cases {
            match parse(&body) {
                Err(ChannelError::MalformedWebhook(text)) => {
                    assert!(text.contains(needle), "{needle} not in {text}")
                }
                other => panic!("{needle}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_objects_and_empty_values_are_ignored() {
        let parsed = parse(br#"{"object":"page","entry":[{"id":"1","messaging":[]}]}"#).unwrap();
        assert!(parsed.events.is_empty());
        assert_eq!(parsed.skipped.len(), 1);
        let parsed = parse(&envelope(
            "messages",
            json!({"messaging_product": "whatsapp", "metadata": {}}),
        ))
        .unwrap();
        assert!(parsed.events.is_empty() && parsed.skipped.is_empty());
        let parsed = parse(br#"{"object":"whatsapp_business_account","entry":[]}"#).unwrap();
        assert!(parsed.events.is_empty());
    }

    #[test]
    fn numeric_timestamps_are_accepted() {
        let mut raw = base("text", json!({"text": {"body": "x"}}));
        raw["timestamp"] = json!(1_700_000_000);
        assert_eq!(one_message(raw).timestamp_ms, 1_700_000_000_000);
    }
}
