//! Cloud API request bodies for outbound messages and template submissions, with the
//! checks WhatsApp would otherwise fail later with a less helpful error. Pure: no host
//! imports, so it is tested natively.

use std::collections::HashSet;

use postdog_sdk::channel::{ChannelError, OutboundMessage, TemplateDefinition};
use postdog_sdk::message::{MediaKind, MediaMessage, MessageContent, TemplateMessage};
use serde_json::{Map, Value, json};

/// Longest text message body, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Longest media caption, in characters.
const MAX_CAPTION_CHARS: usize = 1024;
/// Longest interactive body text, in characters.
const MAX_INTERACTIVE_BODY_CHARS: usize = 1024;
/// Longest interactive header or footer text, in characters.
const MAX_HEADER_FOOTER_CHARS: usize = 60;
/// Most reply buttons in a button message.
const MAX_REPLY_BUTTONS: usize = 3;
/// Longest reply button title, in characters.
const MAX_BUTTON_TITLE_CHARS: usize = 20;
/// Longest reply button id, in characters.
const MAX_BUTTON_ID_CHARS: usize = 256;
/// Most rows in a list message, over all its sections; also the most sections.
const MAX_LIST_ROWS: usize = 10;
/// Longest list button label, in characters.
const MAX_LIST_BUTTON_CHARS: usize = 20;
/// Longest list section title and row title, in characters.
const MAX_LIST_TITLE_CHARS: usize = 24;
/// Longest list row id, in characters.
const MAX_LIST_ROW_ID_CHARS: usize = 200;
/// Longest list row description, in characters.
const MAX_LIST_DESCRIPTION_CHARS: usize = 72;
/// Longest `biz_opaque_callback_data`, in characters.
const MAX_CALLBACK_DATA_CHARS: usize = 512;
/// Longest template name, in characters.
const MAX_TEMPLATE_NAME_CHARS: usize = 512;

fn invalid(text: impl Into<String>) -> ChannelError {
    ChannelError::InvalidMessage(text.into())
}

fn chars(text: &str) -> usize {
    text.chars().count()
}

/// The Cloud API `to`: the E.164 number's digits without `+`.
pub fn recipient_digits(to: &str) -> Result<String, ChannelError> {
    let digits = to.trim().strip_prefix('+').unwrap_or(to.trim());
    if digits.len() < 7 || digits.len() > 15 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid(format!(
            "`{to}` is not an E.164 phone number (a `+` and 7 to 15 digits, such as +14155550123)"
        )));
    }
    Ok(digits.to_string())
}

/// The JSON body of `POST /{phone-number-id}/messages` for `message`.
pub fn message_body(message: &OutboundMessage) -> Result<Value, ChannelError> {
    let mut body = Map::new();
    body.insert("messaging_product".into(), "whatsapp".into());
    body.insert("recipient_type".into(), "individual".into());
    body.insert("to".into(), recipient_digits(&message.to)?.into());
    let (kind, payload) = match &message.content {
        MessageContent::Text(text) => {
            if text.body.trim().is_empty() {
                return Err(invalid("the text is empty"));
            }
            let length = chars(&text.body);
            if length > MAX_TEXT_CHARS {
                return Err(invalid(format!(
                    "the text has {length} characters; WhatsApp allows at most {MAX_TEXT_CHARS}: shorten it or split it into several messages"
                )));
            }
            (
                "text",
                json!({ "body": text.body, "preview_url": text.preview_url }),
            )
        }
        MessageContent::Template(template) => ("template", template_payload(template)?),
        MessageContent::Media(media) => media_payload(media)?,
        MessageContent::Interactive(interactive) => {
            ("interactive", interactive_payload(interactive)?)
        }
    };
    body.insert("type".into(), kind.into());
    body.insert(kind.into(), payload);
    if let Some(reply_to) = message
        .reply_to
        .as_deref()
        .filter(|id| !id.trim().is_empty())
    {
        body.insert("context".into(), json!({ "message_id": reply_to }));
    }
    if !message.message_id.is_empty() {
        if chars(&message.message_id) > MAX_CALLBACK_DATA_CHARS {
            return Err(invalid(format!(
                "the message id is longer than the {MAX_CALLBACK_DATA_CHARS} characters WhatsApp echoes back"
            )));
        }
        body.insert(
            "biz_opaque_callback_data".into(),
            message.message_id.clone().into(),
        );
    }
    Ok(Value::Object(body))
}

/// The components array of a template, or `None` when there are none.
fn components(text: &str, what: &str) -> Result<Option<Vec<Value>>, ChannelError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Null) => Ok(None),
        Ok(Value::Array(items)) if items.is_empty() => Ok(None),
        Ok(Value::Array(items)) => {
            if let Some(index) = items.iter().position(|item| !item.is_object()) {
                return Err(invalid(format!(
                    "{what}[{index}] must be an object such as {{\"type\": \"body\", …}}"
                )));
            }
            Ok(Some(items))
        }
        Ok(_) => Err(invalid(format!("{what} must be a JSON array"))),
        Err(error) => Err(invalid(format!("{what} is not valid JSON: {error}"))),
    }
}

fn template_payload(template: &TemplateMessage) -> Result<Value, ChannelError> {
    if template.name.trim().is_empty() {
        return Err(invalid("the template name is empty"));
    }
    if template.language.trim().is_empty() {
        return Err(invalid(
            "the template language is empty (use the template's code, such as en_US)",
        ));
    }
    let mut payload = json!({
        "name": template.name,
        "language": { "code": template.language },
    });
    if let Some(items) = components(&template.components, "the template's components")? {
        payload["components"] = Value::Array(items);
    }
    Ok(payload)
}

/// The Cloud API type name of a media kind.
pub fn media_type(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Image => "image",
        MediaKind::Video => "video",
        MediaKind::Audio => "audio",
        MediaKind::Document => "document",
        MediaKind::Sticker => "sticker",
    }
}

fn is_https_url(url: &str) -> bool {
    let Some(scheme) = url.get(..8) else {
        return false;
    };
    let rest = &url[8..];
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    scheme.eq_ignore_ascii_case("https://")
        && !host.is_empty()
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn media_payload(media: &MediaMessage) -> Result<(&'static str, Value), ChannelError> {
    let kind = media_type(media.kind);
    if !is_https_url(&media.url) {
        return Err(invalid(format!(
            "the {kind} link `{}` must be a public https:// URL",
            media.url
        )));
    }
    let mut payload = json!({ "link": media.url });
    if let Some(caption) = media.caption.as_deref().filter(|text| !text.is_empty()) {
        if matches!(media.kind, MediaKind::Audio | MediaKind::Sticker) {
            return Err(invalid(format!(
                "WhatsApp shows no caption with {kind} messages: send the text as its own message"
            )));
        }
        let length = chars(caption);
        if length > MAX_CAPTION_CHARS {
            return Err(invalid(format!(
                "the caption has {length} characters; WhatsApp allows at most {MAX_CAPTION_CHARS}"
            )));
        }
        payload["caption"] = caption.into();
    }
    if media.kind == MediaKind::Document
        && let Some(filename) = media.filename.as_deref().filter(|name| !name.is_empty())
    {
        payload["filename"] = filename.into();
    }
    Ok((kind, payload))
}

/// Reads the interactive JSON and checks it against WhatsApp's limits.
fn interactive_payload(text: &str) -> Result<Value, ChannelError> {
    let value: Value = serde_json::from_str(text).map_err(|error| {
        invalid(format!(
            "the interactive message is not valid JSON: {error}"
        ))
    })?;
    validate_interactive(&value)?;
    Ok(value)
}

fn string_at<'a>(value: &'a Value, key: &str, path: &str) -> Result<&'a str, ChannelError> {
    match value.get(key) {
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(text),
        Some(Value::String(_)) => Err(invalid(format!("`{path}.{key}` is empty"))),
        Some(_) => Err(invalid(format!("`{path}.{key}` must be a string"))),
        None => Err(invalid(format!("`{path}.{key}` is missing"))),
    }
}

fn limit(text: &str, max: usize, path: &str) -> Result<(), ChannelError> {
    let length = chars(text);
    if length > max {
        return Err(invalid(format!(
            "`{path}` has {length} characters; WhatsApp allows at most {max}"
        )));
    }
    Ok(())
}

fn array_at<'a>(value: &'a Value, key: &str, path: &str) -> Result<&'a Vec<Value>, ChannelError> {
    match value.get(key) {
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(invalid(format!("`{path}.{key}` must be an array"))),
        None => Err(invalid(format!("`{path}.{key}` is missing"))),
    }
}

/// Checks an interactive message (the Cloud API `interactive` object): reply buttons and
/// lists in full, other types (`cta_url`, `flow`, `product`…) for their type and body.
pub fn validate_interactive(value: &Value) -> Result<(), ChannelError> {
    if !value.is_object() {
        return Err(invalid(
            "the interactive message must be a JSON object such as {\"type\": \"button\", \"body\": {…}, \"action\": {…}}",
        ));
    }
    let kind = string_at(value, "type", "interactive")?;
    if let Some(header) = value.get("header") {
        if !header.is_object() {
            return Err(invalid("`interactive.header` must be an object"));
        }
        if let Some(text) = header.get("text").and_then(Value::as_str) {
            limit(text, MAX_HEADER_FOOTER_CHARS, "interactive.header.text")?;
        }
    }
    if let Some(footer) = value.get("footer") {
        let text = string_at(footer, "text", "interactive.footer")?;
        limit(text, MAX_HEADER_FOOTER_CHARS, "interactive.footer.text")?;
    }
    let needs_body = matches!(
        kind,
        "button" | "list" | "cta_url" | "flow" | "product_list"
    );
    match value.get("body") {
        Some(body) => {
            let text = string_at(body, "text", "interactive.body")?;
            limit(text, MAX_INTERACTIVE_BODY_CHARS, "interactive.body.text")?;
        }
        None if needs_body => {
            return Err(invalid(format!(
                "`interactive.body.text` is missing; a {kind} message needs a body"
            )));
        }
        None => {}
    }
    let action = value.get("action");
    match kind {
        "button" => {
            validate_buttons(action.ok_or_else(|| invalid("`interactive.action` is missing"))?)
        }
        "list" => validate_list(
            action.ok_or_else(|| invalid("`interactive.action` is missing"))?,
            value.get("header"),
        ),
        _ => match action {
            Some(action) if !action.is_object() => {
                Err(invalid("`interactive.action` must be an object"))
            }
            None => Err(invalid("`interactive.action` is missing")),
            _ => Ok(()),
        },
    }
}

fn validate_buttons(action: &Value) -> Result<(), ChannelError> {
    let buttons = array_at(action, "buttons", "interactive.action")?;
    if buttons.is_empty() || buttons.len() > MAX_REPLY_BUTTONS {
        return Err(invalid(format!(
            "a button message has 1 to {MAX_REPLY_BUTTONS} reply buttons, found {}; use a list for more choices",
            buttons.len()
        )));
    }
    let mut ids = HashSet::new();
    let mut titles = HashSet::new();
    for (index, button) in buttons.iter().enumerate() {
        let path = format!("interactive.action.buttons[{index}]");
        let kind = string_at(button, "type", &path)?;
        if kind != "reply" {
            return Err(invalid(format!(
                "`{path}.type` is `{kind}`; button messages take `reply` buttons only"
            )));
        }
        let reply = button
            .get("reply")
            .filter(|reply| reply.is_object())
            .ok_or_else(|| {
                invalid(format!(
                    "`{path}.reply` must be an object with `id` and `title`"
                ))
            })?;
        let path = format!("{path}.reply");
        let id = string_at(reply, "id", &path)?;
        limit(id, MAX_BUTTON_ID_CHARS, &format!("{path}.id"))?;
        let title = string_at(reply, "title", &path)?;
        limit(title, MAX_BUTTON_TITLE_CHARS, &format!("{path}.title"))?;
        if !ids.insert(id) {
            return Err(invalid(format!(
                "`{path}.id` `{id}` is used by another button"
            )));
        }
        if !titles.insert(title) {
            return Err(invalid(format!(
                "`{path}.title` `{title}` is used by another button"
            )));
        }
    }
    Ok(())
}

fn validate_list(action: &Value, header: Option<&Value>) -> Result<(), ChannelError> {
    if let Some(header) = header
        && header.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(invalid("a list message's header must be of type `text`"));
    }
    let button = string_at(action, "button", "interactive.action")?;
    limit(button, MAX_LIST_BUTTON_CHARS, "interactive.action.button")?;
    let sections = array_at(action, "sections", "interactive.action")?;
    if sections.is_empty() || sections.len() > MAX_LIST_ROWS {
        return Err(invalid(format!(
            "a list message has 1 to {MAX_LIST_ROWS} sections, found {}",
            sections.len()
        )));
    }
    let mut ids = HashSet::new();
    let mut total = 0;
    for (index, section) in sections.iter().enumerate() {
        let path = format!("interactive.action.sections[{index}]");
        if !section.is_object() {
            return Err(invalid(format!("`{path}` must be an object")));
        }
        match section.get("title") {
            Some(_) => {
                let title = string_at(section, "title", &path)?;
                limit(title, MAX_LIST_TITLE_CHARS, &format!("{path}.title"))?;
            }
            None if sections.len() > 1 => {
                return Err(invalid(format!(
                    "`{path}.title` is missing; every section needs a title when there are several"
                )));
            }
            None => {}
        }
        let rows = array_at(section, "rows", &path)?;
        if rows.is_empty() {
            return Err(invalid(format!(
                "`{path}.rows` is empty; a section needs a row"
            )));
        }
        total += rows.len();
        if total > MAX_LIST_ROWS {
            return Err(invalid(format!(
                "a list message has at most {MAX_LIST_ROWS} rows in all its sections together"
            )));
        }
        for (row_index, row) in rows.iter().enumerate() {
            let path = format!("{path}.rows[{row_index}]");
            if !row.is_object() {
                return Err(invalid(format!(
                    "`{path}` must be an object with `id` and `title`"
                )));
            }
            let id = string_at(row, "id", &path)?;
            limit(id, MAX_LIST_ROW_ID_CHARS, &format!("{path}.id"))?;
            let title = string_at(row, "title", &path)?;
            limit(title, MAX_LIST_TITLE_CHARS, &format!("{path}.title"))?;
            if let Some(description) = row.get("description") {
                let description = description
                    .as_str()
                    .ok_or_else(|| invalid(format!("`{path}.description` must be a string")))?;
                limit(
                    description,
                    MAX_LIST_DESCRIPTION_CHARS,
                    &format!("{path}.description"),
                )?;
            }
            if !ids.insert(id) {
                return Err(invalid(format!(
                    "`{path}.id` `{id}` is used by another row"
                )));
            }
        }
    }
    Ok(())
}

/// The JSON body of `POST /{waba-id}/message_templates`.
pub fn template_body(template: &TemplateDefinition) -> Result<Value, ChannelError> {
    let name = template.name.trim();
    if name.is_empty()
        || chars(name) > MAX_TEMPLATE_NAME_CHARS
        || !name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
    {
        return Err(invalid(format!(
            "the template name `{}` must be 1 to {MAX_TEMPLATE_NAME_CHARS} lower-case letters, digits and underscores, such as order_update",
            template.name
        )));
    }
    let language = template.language.trim();
    if language.is_empty() {
        return Err(invalid(
            "the template language is empty (use a code such as en_US)",
        ));
    }
    let category = template.category.trim().to_ascii_uppercase();
    if !matches!(
        category.as_str(),
        "MARKETING" | "UTILITY" | "AUTHENTICATION"
    ) {
        return Err(invalid(format!(
            "the template category `{}` must be MARKETING, UTILITY or AUTHENTICATION",
            template.category
        )));
    }
    let components = components(&template.components, "the template's components")?
        .ok_or_else(|| invalid("the template has no components; it needs at least a BODY"))?;
    for (index, component) in components.iter().enumerate() {
        if component.get("type").and_then(Value::as_str).is_none() {
            return Err(invalid(format!(
                "the template's components[{index}] has no `type` (HEADER, BODY, FOOTER or BUTTONS)"
            )));
        }
    }
    Ok(json!({
        "name": name,
        "language": language,
        "category": category,
        "components": components,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postdog_sdk::message::TextMessage;

    fn message(content: MessageContent) -> OutboundMessage {
        OutboundMessage {
            message_id: "msg_01".into(),
            to: "+14155550123".into(),
            content,
            reply_to: None,
        }
    }

    fn invalid_text(result: Result<Value, ChannelError>) -> String {
        match result {
            Err(ChannelError::InvalidMessage(text)) => text,
            other => panic!("expected InvalidMessage, got {other:?}"),
        }
    }

    fn interactive(value: Value) -> Result<Value, ChannelError> {
        message_body(&message(MessageContent::Interactive(value.to_string())))
    }

    fn media(
        kind: MediaKind,
        url: &str,
        caption: Option<&str>,
        filename: Option<&str>,
    ) -> OutboundMessage {
        message(MessageContent::Media(MediaMessage {
            kind,
            url: url.into(),
            caption: caption.map(Into::into),
            filename: filename.map(Into::into),
        }))
    }

    #[test]
    fn text_body() {
        let mut outbound = message(MessageContent::Text(TextMessage {
            body: "Hello https://example.com".into(),
            preview_url: true,
        }));
        outbound.reply_to = Some("wamid.ABC".into());
        assert_eq!(
            message_body(&outbound).unwrap(),
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": "14155550123",
                "type": "text",
                "text": {"body": "Hello https://example.com", "preview_url": true},
                "context": {"message_id": "wamid.ABC"},
                "biz_opaque_callback_data": "msg_01",
            })
        );
    }

    #[test]
    fn text_length_is_counted_in_characters() {
        let at_limit = message(MessageContent::text("é".repeat(MAX_TEXT_CHARS)));
        assert!(message_body(&at_limit).is_ok());
        let over = message(MessageContent::text("x".repeat(MAX_TEXT_CHARS + 1)));
        let text = invalid_text(message_body(&over));
        assert!(text.contains("4097") && text.contains("4096"), "{text}");
        invalid_text(message_body(&message(MessageContent::text("  "))));
    }

    #[test]
    fn recipients_must_be_e164() {
        assert_eq!(recipient_digits("+447700900123").unwrap(), "447700900123");
        assert_eq!(recipient_digits("447700900123").unwrap(), "447700900123");
        for bad in [
            "",
            "+",
            "+44 7700 900123",
            "+1234",
            "+1234567890123456",
            "+44abc",
            "++4477009001",
        ] {
            assert!(
                matches!(recipient_digits(bad), Err(ChannelError::InvalidMessage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn template_body_passes_components_through() {
        let components = json!([
            {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x.test/a.png"}}]},
            {"type": "body", "parameters": [{"type": "text", "text": "Ada"}]},
            {"type": "button", "sub_type": "quick_reply", "index": "0", "parameters": [{"type": "payload", "payload": "STOP"}]}
        ]);
        let body = message_body(&message(MessageContent::template(
            "order_update",
            "en_US",
            components.clone(),
        )))
        .unwrap();
        assert_eq!(body["type"], "template");
        assert_eq!(
            body["template"],
            json!({"name": "order_update", "language": {"code": "en_US"}, "components": components})
        );
        // No components at all.
        for empty in ["", "null", "[]"] {
            let body = message_body(&message(MessageContent::Template(TemplateMessage {
                name: "hello_world".into(),
                language: "en_US".into(),
                components: empty.into(),
            })))
            .unwrap();
            assert_eq!(
                body["template"],
                json!({"name": "hello_world", "language": {"code": "en_US"}})
            );
        }
        for (bad, needle) in [
            ("{\"type\":\"body\"}", "array"),
            ("[1]", "components[0]"),
            ("[", "not valid JSON"),
        ] {
            let text = invalid_text(message_body(&message(MessageContent::Template(
                TemplateMessage {
                    name: "x".into(),
                    language: "en".into(),
                    components: bad.into(),
                },
            ))));
            assert!(text.contains(needle), "{text}");
        }
        invalid_text(message_body(&message(MessageContent::template(
            "",
            "en",
            json!([]),
        ))));
        invalid_text(message_body(&message(MessageContent::template(
            "x",
            " ",
            json!([]),
        ))));
    }

    #[test]
    fn media_bodies() {
        let body = message_body(&media(
            MediaKind::Image,
            "https://cdn.example.com/a.jpg",
            Some("Look"),
            Some("ignored.jpg"),
        ))
        .unwrap();
        assert_eq!(body["type"], "image");
        assert_eq!(
            body["image"],
            json!({"link": "https://cdn.example.com/a.jpg", "caption": "Look"})
        );
        let body = message_body(&media(
            MediaKind::Document,
            "https://cdn.example.com/i.pdf",
            Some("Invoice"),
            Some("invoice.pdf"),
        ))
        .unwrap();
        assert_eq!(
            body["document"],
            json!({"link": "https://cdn.example.com/i.pdf", "caption": "Invoice", "filename": "invoice.pdf"})
        );
        let body = message_body(&media(
            MediaKind::Video,
            "HTTPS://cdn.example.com/v.mp4",
            None,
            None,
        ))
        .unwrap();
        assert_eq!(
            body["video"],
            json!({"link": "HTTPS://cdn.example.com/v.mp4"})
        );
        let body = message_body(&media(
            MediaKind::Audio,
            "https://cdn.example.com/a.ogg",
            None,
            None,
        ))
        .unwrap();
        assert_eq!(
            body["audio"],
            json!({"link": "https://cdn.example.com/a.ogg"})
        );
        let body = message_body(&media(
            MediaKind::Sticker,
            "https://cdn.example.com/s.webp",
            Some(""),
            None,
        ))
        .unwrap();
        assert_eq!(
            body["sticker"],
            json!({"link": "https://cdn.example.com/s.webp"})
        );

        for url in [
            "http://cdn.example.com/a.jpg",
            "https://",
            "ftp://x/y",
            "https:///path",
            "https://a b/c",
            "",
        ] {
            let text = invalid_text(message_body(&media(MediaKind::Image, url, None, None)));
            assert!(text.contains("https://"), "{text}");
        }
        let text = invalid_text(message_body(&media(
            MediaKind::Audio,
            "https://x.test/a.ogg",
            Some("hi"),
            None,
        )));
        assert!(text.contains("caption"), "{text}");
        invalid_text(message_body(&media(
            MediaKind::Sticker,
            "https://x.test/s.webp",
            Some("hi"),
            None,
        )));
        let long = "c".repeat(MAX_CAPTION_CHARS + 1);
        invalid_text(message_body(&media(
            MediaKind::Image,
            "https://x.test/a.png",
            Some(&long),
            None,
        )));
    }

    fn buttons(count: usize) -> Value {
        let buttons: Vec<Value> = (0..count)
            .map(|i| json!({"type": "reply", "reply": {"id": format!("b{i}"), "title": format!("Option {i}")}}))
            .collect();
        json!({
            "type": "button",
            "header": {"type": "text", "text": "Choose"},
            "body": {"text": "Which one?"},
            "footer": {"text": "PostDog"},
            "action": {"buttons": buttons}
        })
    }

    #[test]
    fn button_messages() {
        let value = buttons(3);
        let body = interactive(value.clone()).unwrap();
        assert_eq!(body["type"], "interactive");
        assert_eq!(body["interactive"], value);

        let text = invalid_text(interactive(buttons(4)));
        assert!(
            text.contains("1 to 3") && text.contains("found 4"),
            "{text}"
        );
        invalid_text(interactive(buttons(0)));

        let mut long_title = buttons(2);
        long_title["action"]["buttons"][1]["reply"]["title"] = json!("x".repeat(21));
        let text = invalid_text(interactive(long_title));
        assert!(
            text.contains("interactive.action.buttons[1].reply.title") && text.contains("20"),
            "{text}"
        );

        let mut twenty = buttons(1);
        twenty["action"]["buttons"][0]["reply"]["title"] = json!("é".repeat(20));
        assert!(interactive(twenty).is_ok());

        let mut long_id = buttons(1);
        long_id["action"]["buttons"][0]["reply"]["id"] = json!("i".repeat(257));
        invalid_text(interactive(long_id));

        let mut duplicate = buttons(2);
        duplicate["action"]["buttons"][1]["reply"]["id"] = json!("b0");
        assert!(invalid_text(interactive(duplicate)).contains("another button"));

        let mut missing_id = buttons(1);
        missing_id["action"]["buttons"][0]["reply"]
            .as_object_mut()
            .unwrap()
            .remove("id");
        assert!(invalid_text(interactive(missing_id)).contains("buttons[0].reply.id` is missing"));

        let mut wrong_type = buttons(1);
        wrong_type["action"]["buttons"][0]["type"] = json!("url");
        invalid_text(interactive(wrong_type));

        let mut no_body = buttons(1);
        no_body.as_object_mut().unwrap().remove("body");
        assert!(invalid_text(interactive(no_body)).contains("interactive.body.text"));

        let mut long_footer = buttons(1);
        long_footer["footer"]["text"] = json!("f".repeat(61));
        invalid_text(interactive(long_footer));
    }

    fn list(rows_per_section: &[usize]) -> Value {
        let sections: Vec<Value> = rows_per_section
            .iter()
            .enumerate()
            .map(|(s, rows)| {
                let rows: Vec<Value> = (0..*rows)
                    .map(|r| json!({"id": format!("s{s}r{r}"), "title": format!("Row {r}"), "description": "A row"}))
                    .collect();
                json!({"title": format!("Section {s}"), "rows": rows})
            })
            .collect();
        json!({
            "type": "list",
            "header": {"type": "text", "text": "Menu"},
            "body": {"text": "Pick a slot"},
            "action": {"button": "See slots", "sections": sections}
        })
    }

    #[test]
    fn list_messages() {
        assert!(interactive(list(&[10])).is_ok());
        assert!(interactive(list(&[4, 3, 3])).is_ok());
        let text = invalid_text(interactive(list(&[6, 5])));
        assert!(text.contains("at most 10 rows"), "{text}");
        invalid_text(interactive(list(&[11])));
        invalid_text(interactive(list(&[])));
        assert!(invalid_text(interactive(list(&[1, 0]))).contains("sections[1].rows` is empty"));

        let mut untitled = list(&[1, 1]);
        untitled["action"]["sections"][1]
            .as_object_mut()
            .unwrap()
            .remove("title");
        assert!(invalid_text(interactive(untitled)).contains("sections[1].title"));
        let mut single = list(&[2]);
        single["action"]["sections"][0]
            .as_object_mut()
            .unwrap()
            .remove("title");
        assert!(interactive(single).is_ok());

        let mut long_row = list(&[2]);
        long_row["action"]["sections"][0]["rows"][1]["title"] = json!("t".repeat(25));
        assert!(invalid_text(interactive(long_row)).contains("sections[0].rows[1].title"));
        let mut long_description = list(&[1]);
        long_description["action"]["sections"][0]["rows"][0]["description"] = json!("d".repeat(73));
        invalid_text(interactive(long_description));
        let mut long_button = list(&[1]);
        long_button["action"]["button"] = json!("b".repeat(21));
        assert!(invalid_text(interactive(long_button)).contains("interactive.action.button"));
        let mut no_button = list(&[1]);
        no_button["action"]
            .as_object_mut()
            .unwrap()
            .remove("button");
        invalid_text(interactive(no_button));
        let mut duplicate = list(&[1, 1]);
        duplicate["action"]["sections"][1]["rows"][0]["id"] = json!("s0r0");
        assert!(invalid_text(interactive(duplicate)).contains("another row"));
        let mut image_header = list(&[1]);
        image_header["header"] =
            json!({"type": "image", "image": {"link": "https://x.test/a.png"}});
        invalid_text(interactive(image_header));
    }

    #[test]
    fn other_interactive_types_and_bad_json() {
        let cta = json!({
            "type": "cta_url",
            "body": {"text": "Track your order"},
            "action": {"name": "cta_url", "parameters": {"display_text": "Track", "url": "https://x.test"}}
        });
        assert_eq!(interactive(cta.clone()).unwrap()["interactive"], cta);
        let location = json!({"type": "location_request_message", "body": {"text": "Where are you?"}, "action": {"name": "send_location"}});
        assert!(interactive(location).is_ok());
        assert!(
            invalid_text(interactive(json!({"body": {"text": "x"}}))).contains("interactive.type")
        );
        invalid_text(interactive(json!([1, 2])));
        let text = invalid_text(message_body(&message(MessageContent::Interactive(
            "{oops".into(),
        ))));
        assert!(text.contains("not valid JSON"), "{text}");
    }

    #[test]
    fn callback_data_is_the_kernel_id() {
        let mut outbound = message(MessageContent::text("hi"));
        outbound.message_id = String::new();
        assert!(
            message_body(&outbound)
                .unwrap()
                .get("biz_opaque_callback_data")
                .is_none()
        );
        outbound.message_id = "m".repeat(513);
        invalid_text(message_body(&outbound));
    }

    fn definition(name: &str, category: &str, components: &str) -> TemplateDefinition {
        TemplateDefinition {
            name: name.into(),
            language: "en_US".into(),
            category: category.into(),
            components: components.into(),
        }
    }

    #[test]
    fn template_submission_body() {
        let components = json!([
            {"type": "HEADER", "format": "TEXT", "text": "Your order"},
            {"type": "BODY", "text": "Hi {{1}}, your order {{2}} shipped", "example": {"body_text": [["Ada", "42"]]}},
            {"type": "FOOTER", "text": "PostDog"},
            {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Thanks"}]}
        ]);
        let body = template_body(&definition(
            "order_shipped_2",
            "utility",
            &components.to_string(),
        ))
        .unwrap();
        assert_eq!(
            body,
            json!({"name": "order_shipped_2", "language": "en_US", "category": "UTILITY", "components": components})
        );
        for name in ["Order", "order-update", "", "order update"] {
            let result = template_body(&definition(
                name,
                "MARKETING",
                "[{\"type\":\"BODY\",\"text\":\"x\"}]",
            ));
            assert!(
                matches!(result, Err(ChannelError::InvalidMessage(ref t)) if t.contains("lower-case")),
                "{name}"
            );
        }
        assert!(matches!(
            template_body(&definition("a", "PROMO", "[{\"type\":\"BODY\"}]")),
            Err(ChannelError::InvalidMessage(ref t)) if t.contains("MARKETING, UTILITY or AUTHENTICATION")
        ));
        assert!(matches!(
            template_body(&definition("a", "UTILITY", "[]")),
            Err(ChannelError::InvalidMessage(_))
        ));
        assert!(matches!(
            template_body(&definition("a", "UTILITY", "{}")),
            Err(ChannelError::InvalidMessage(_))
        ));
        assert!(matches!(
            template_body(&definition("a", "UTILITY", "[{\"text\":\"x\"}]")),
            Err(ChannelError::InvalidMessage(ref t)) if t.contains("components[0]")
        ));
    }
}
