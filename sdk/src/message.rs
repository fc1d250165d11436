//! Message contents, effects and webhook HTTP messages shared by every kind of plugin.

use serde_json::Value;

pub use crate::__private::bindings::postdog::plugin::types::{
    AssignEffect, AssignStrategy, DeliveryStatus, Effect, Header, HttpCallEffect, HttpRequest,
    HttpResponse, MediaKind, MediaMessage, MessageContent, SendMessageEffect, SetFieldEffect,
    TagEffect, TemplateMessage, TextMessage,
};

impl MessageContent {
    /// Plain text.
    pub fn text(body: impl Into<String>) -> Self {
        MessageContent::Text(TextMessage {
            body: body.into(),
            preview_url: false,
        })
    }

    /// An approved template with its components (the channel's JSON shape).
    pub fn template(
        name: impl Into<String>,
        language: impl Into<String>,
        components: Value,
    ) -> Self {
        MessageContent::Template(TemplateMessage {
            name: name.into(),
            language: language.into(),
            components: components.to_string(),
        })
    }
}

impl Effect {
    /// Send `content` to the run's contact on the run's channel.
    pub fn send_message(content: MessageContent) -> Self {
        Effect::SendMessage(SendMessageEffect {
            channel_install: None,
            contact_id: None,
            content,
        })
    }

    /// Add a tag to the run's contact.
    pub fn add_tag(tag: impl Into<String>) -> Self {
        Effect::AddTag(TagEffect {
            contact_id: None,
            tag: tag.into(),
        })
    }

    /// Remove a tag from the run's contact.
    pub fn remove_tag(tag: impl Into<String>) -> Self {
        Effect::RemoveTag(TagEffect {
            contact_id: None,
            tag: tag.into(),
        })
    }

    /// Set a custom field on the run's contact (`Value::Null` clears it).
    pub fn set_field(field: impl Into<String>, value: &Value) -> Self {
        Effect::SetField(SetFieldEffect {
            contact_id: None,
            field: field.into(),
            value: value.to_string(),
        })
    }
}

impl HttpRequest {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The first query parameter named `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }
}

fn percent_decode(text: &str) -> String {
    fn hex(byte: u8) -> Option<u8> {
        (byte as char)
            .to_digit(16)
            .and_then(|digit| u8::try_from(digit).ok())
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl HttpResponse {
    /// A response with `status` and no body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `200 OK` with a text body.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: body.into().into_bytes(),
        }
    }

    /// A JSON response.
    pub fn json(status: u16, body: &Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            query: query.into(),
            headers: vec![("X-Hub-Signature-256".into(), "sha256=ab".into())],
            body: Vec::new(),
        }
    }

    #[test]
    fn query_parameters_are_decoded() {
        let req = request("hub.mode=subscribe&hub.challenge=a%20b+c&broken=%zz&empty");
        assert_eq!(req.query_param("hub.mode").as_deref(), Some("subscribe"));
        assert_eq!(req.query_param("hub.challenge").as_deref(), Some("a b c"));
        assert_eq!(req.query_param("broken").as_deref(), Some("%zz"));
        assert_eq!(req.query_param("empty").as_deref(), Some(""));
        assert_eq!(req.query_param("missing"), None);
        assert_eq!(request("x=%C3%A9").query_param("x").as_deref(), Some("é"));
        assert_eq!(request("x=%").query_param("x").as_deref(), Some("%"));
    }

    #[test]
    fn headers_match_case_insensitively() {
        assert_eq!(request("").header("x-hub-signature-256"), Some("sha256=ab"));
        assert_eq!(request("").header("x-other"), None);
    }
}
