//! `postdog/send-message`: sends the run's contact a text, an approved template or media
//! by link. The message is an effect: the kernel sends it through its outbox, which
//! enforces consent, the 24-hour window and the plan's allowance, and sends it once even
//! if the step runs twice.
//!
//! Configuration, exactly one of:
//! - `text`: the message, with `{{ path }}` placeholders (`{{contact.name}}`);
//! - `template`: `{name, language, variables: {header?, body: [..], buttons?: {"0": ..}}}`,
//!   every variable a template; the kernel turns `variables` into the provider's
//!   components;
//! - `media`: `{kind, url, caption?, filename?}` (url and caption are templates);
//!
//! and optionally `channel_install` (the install to send through; default: the channel
//! the run's conversation is on) and `purpose` (`service` or `marketing`).

// `deny`, not `forbid`: the SDK's export macro allows unsafe code in the glue it generates.
#![deny(unsafe_code)]

use actions_core_common::postdog_expr::Context;
use actions_core_common::{Config, context, invalid_config, kind, render};
use postdog_sdk::message::{MediaKind, MediaMessage, SendMessageEffect, TemplateMessage};
use postdog_sdk::prelude::*;
use serde_json::Map;

struct SendMessage;

const KEYS: [&str; 5] = ["text", "template", "media", "channel_install", "purpose"];

fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "text": {
                "type": "string",
                "minLength": 1,
                "description": "The message text; {{contact.name}}, {{trigger.<key>}} and {{steps.<step>.<key>}} are filled in"
            },
            "template": {
                "type": "object",
                "required": ["name", "language"],
                "additionalProperties": false,
                "description": "An approved template (needed outside WhatsApp's 24-hour window)",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "description": "The template's name"},
                    "language": {"type": "string", "minLength": 1, "description": "Its language code, e.g. en_US"},
                    "variables": {
                        "type": "object",
                        "additionalProperties": false,
                        "properties": {
                            "header": {"type": "string", "description": "The header's {{1}} text or media link"},
                            "body": {"type": "array", "items": {"type": "string"}, "description": "body[i] fills {{i+1}} of the body"},
                            "buttons": {"type": "object", "description": "Values by button position (\"0\", \"1\", …)"}
                        }
                    }
                }
            },
            "media": {
                "type": "object",
                "required": ["kind", "url"],
                "additionalProperties": false,
                "description": "Media sent by link",
                "properties": {
                    "kind": {"type": "string", "enum": ["image", "video", "audio", "document", "sticker"]},
                    "url": {"type": "string", "minLength": 1, "description": "A public https URL"},
                    "caption": {"type": "string"},
                    "filename": {"type": "string", "description": "The file name shown for a document"}
                }
            },
            "channel_install": {
                "type": "string",
                "minLength": 1,
                "description": "The channel install to send through; by default the channel of the run's conversation"
            },
            "purpose": {
                "type": "string",
                "enum": ["service", "marketing"],
                "description": "Why the message is sent (marketing messages need marketing consent)"
            }
        }
    })
}

/// A setting inside an object setting, for error messages: `template/name`.
fn at(parent: &str, key: &str) -> String {
    format!("{parent}/{key}")
}

fn sub_str<'a>(
    map: &'a Map<String, Value>,
    parent: &str,
    key: &str,
) -> Result<Option<&'a str>, ActionError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(invalid_config(
            &at(parent, key),
            format!("must be text, not {}", kind(other)),
        )),
    }
}

fn sub_required<'a>(
    map: &'a Map<String, Value>,
    parent: &str,
    key: &str,
) -> Result<&'a str, ActionError> {
    match sub_str(map, parent, key)? {
        Some(text) if !text.trim().is_empty() => Ok(text),
        Some(_) => Err(invalid_config(&at(parent, key), "is empty")),
        None => Err(invalid_config(&at(parent, key), "is required")),
    }
}

fn no_other_keys(
    map: &Map<String, Value>,
    parent: &str,
    known: &[&str],
) -> Result<(), ActionError> {
    match map.keys().find(|key| !known.contains(&key.as_str())) {
        None => Ok(()),
        Some(key) => Err(invalid_config(
            &at(parent, key),
            format!("is not a setting; use {}", known.join(", ")),
        )),
    }
}

fn text_content(
    config: &Config,
    context: &Context,
) -> Result<(MessageContent, Value), ActionError> {
    let text = config.required_str("text")?;
    let body = render("text", text, context)?;
    if body.trim().is_empty() {
        return Err(ActionError::InvalidInput(
            "the message text is empty once its placeholders are filled in".into(),
        ));
    }
    let output = json!({"content": "text", "text": body});
    Ok((MessageContent::text(body), output))
}

fn template_content(
    config: &Config,
    context: &Context,
) -> Result<(MessageContent, Value), ActionError> {
    let template = config.object("template")?.cloned().unwrap_or_default();
    no_other_keys(&template, "template", &["name", "language", "variables"])?;
    let name = sub_required(&template, "template", "name")?
        .trim()
        .to_string();
    let language = sub_required(&template, "template", "language")?
        .trim()
        .to_string();
    let mut variables = Map::new();
    match template.get("variables") {
        None | Some(Value::Null) => {}
        Some(Value::Object(given)) => {
            no_other_keys(given, "template/variables", &["header", "body", "buttons"])?;
            if let Some(header) = sub_str(given, "template/variables", "header")? {
                variables.insert(
                    "header".into(),
                    json!(render("template/variables/header", header, context)?),
                );
            }
            let mut body = Vec::new();
            match given.get("body") {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    for (index, item) in items.iter().enumerate() {
                        let field = format!("template/variables/body/{index}");
                        body.push(json!(render(&field, &scalar_text(&field, item)?, context)?));
                    }
                }
                Some(other) => {
                    return Err(invalid_config(
                        "template/variables/body",
                        format!("must be a list of texts, not {}", kind(other)),
                    ));
                }
            }
            variables.insert("body".into(), Value::Array(body));
            match given.get("buttons") {
                None | Some(Value::Null) => {}
                Some(Value::Object(buttons)) => {
                    let mut rendered = Map::new();
                    for (position, item) in buttons {
                        let field = format!("template/variables/buttons/{position}");
                        if position.parse::<usize>().is_err() {
                            return Err(invalid_config(
                                &field,
                                "is not a button position: use \"0\", \"1\", … (the button's place in the template)",
                            ));
                        }
                        rendered.insert(
                            position.clone(),
                            json!(render(&field, &scalar_text(&field, item)?, context)?),
                        );
                    }
                    variables.insert("buttons".into(), Value::Object(rendered));
                }
                Some(other) => {
                    return Err(invalid_config(
                        "template/variables/buttons",
                        format!(
                            "must be an object of values by button position, not {}",
                            kind(other)
                        ),
                    ));
                }
            }
        }
        Some(other) => {
            return Err(invalid_config(
                "template/variables",
                format!("must be an object, not {}", kind(other)),
            ));
        }
    }
    let components = if variables.is_empty() {
        json!({})
    } else {
        json!({ "variables": variables })
    };
    let output = json!({"content": "template", "template": name, "language": language, "variables": components.get("variables")});
    Ok((
        MessageContent::Template(TemplateMessage {
            name,
            language,
            components: components.to_string(),
        }),
        output,
    ))
}

/// A template variable given as text, or as a number or true/false (written as JSON).
fn scalar_text(field: &str, value: &Value) -> Result<String, ActionError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Number(_) | Value::Bool(_) => Ok(value.to_string()),
        other => Err(invalid_config(
            field,
            format!("must be text, not {}", kind(other)),
        )),
    }
}

fn media_content(
    config: &Config,
    context: &Context,
) -> Result<(MessageContent, Value), ActionError> {
    let media = config.object("media")?.cloned().unwrap_or_default();
    no_other_keys(&media, "media", &["kind", "url", "caption", "filename"])?;
    let kind_name = sub_required(&media, "media", "kind")?;
    let media_kind = match kind_name {
        "image" => MediaKind::Image,
        "video" => MediaKind::Video,
        "audio" => MediaKind::Audio,
        "document" => MediaKind::Document,
        "sticker" => MediaKind::Sticker,
        other => {
            return Err(invalid_config(
                "media/kind",
                format!("is `{other}`; use image, video, audio, document or sticker"),
            ));
        }
    };
    let url = render("media/url", sub_required(&media, "media", "url")?, context)?;
    let url = url.trim().to_string();
    if !url.starts_with("https://") && !url.starts_with("http://") {
        return Err(ActionError::InvalidInput(format!(
            "the media URL `{url}` is not an http(s) URL once its placeholders are filled in"
        )));
    }
    let caption = match sub_str(&media, "media", "caption")? {
        Some(caption) => Some(render("media/caption", caption, context)?).filter(|c| !c.is_empty()),
        None => None,
    };
    let filename = match sub_str(&media, "media", "filename")? {
        Some(filename) => {
            Some(render("media/filename", filename, context)?).filter(|f| !f.is_empty())
        }
        None => None,
    };
    let output = json!({"content": "media", "kind": kind_name, "url": url, "caption": caption});
    Ok((
        MessageContent::Media(MediaMessage {
            kind: media_kind,
            url,
            caption,
            filename,
        }),
        output,
    ))
}

fn send(input: &ActionInput) -> Result<ActionResult, ActionError> {
    let config = Config::of(input)?;
    config.only(&KEYS)?;
    let context = context(input);
    let (content, mut output) = match config.exactly_one(&["text", "template", "media"])? {
        "text" => text_content(&config, &context)?,
        "template" => template_content(&config, &context)?,
        _ => media_content(&config, &context)?,
    };
    let channel_install = match config.str("channel_install")? {
        Some(install) => Some(
            render("channel_install", install, &context)?
                .trim()
                .to_string(),
        )
        .filter(|install| !install.is_empty()),
        None => None,
    };
    if let Some(purpose) = config.str("purpose")? {
        if !matches!(purpose, "service" | "marketing") {
            return Err(invalid_config(
                "purpose",
                format!("is `{purpose}`; use service or marketing"),
            ));
        }
        output["purpose"] = json!(purpose);
    }
    if let Some(install) = &channel_install {
        output["channel_install"] = json!(install);
    }
    Ok(ActionResult::next("next")
        .with_effect(Effect::SendMessage(SendMessageEffect {
            channel_install,
            contact_id: None,
            content,
        }))
        .with_output(output))
}

impl Action for SendMessage {
    fn describe() -> Descriptor {
        Descriptor::new(
            "Send message",
            "Sends the run's contact a text, an approved template or media by link. Text, template variables, media URL and caption may use {{contact.name}}, {{contact.fields.<key>}}, {{trigger.<key>}} and {{steps.<step>.<key>}}. The kernel sends through its outbox (consent, 24-hour window, allowance), once even if the step is retried.",
        )
        .with_config_schema(schema())
        .with_port("next", "The message was queued for sending")
    }

    fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
        send(&input)
    }
}

postdog_sdk::export_action!(SendMessage);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(config: Value) -> ActionInput {
        ActionInput {
            run_id: "r".into(),
            step_id: "s".into(),
            config: config.to_string(),
            contact: Some(json!({"id": "c1", "name": "Ada", "fields": {"code": "X1"}}).to_string()),
            trigger: json!({"order_id": "A-1", "install_id": "inst"}).to_string(),
            variables: json!({"_now_ms": 0, "ask": {"reply": "yes"}}).to_string(),
        }
    }

    fn effect(result: &ActionResult) -> &SendMessageEffect {
        match result.effects.as_slice() {
            [Effect::SendMessage(send)] => send,
            other => panic!("not one send: {other:?}"),
        }
    }

    fn config_error(config: Value) -> String {
        match send(&input(config)) {
            Err(ActionError::InvalidConfig(message)) => message,
            other => panic!("not invalid-config: {other:?}"),
        }
    }

    #[test]
    fn text_is_interpolated() {
        let result = send(&input(
            json!({"text": "Hi {{contact.name}}, order {{trigger.order_id}}: {{steps.ask.reply}}"}),
        ))
        .expect("sends");
        assert!(matches!(result.outcome, Outcome::Next(ref port) if port == "next"));
        let send = effect(&result);
        assert_eq!(send.channel_install, None);
        assert_eq!(send.contact_id, None);
        match &send.content {
            MessageContent::Text(text) => {
                assert_eq!(text.body, "Hi Ada, order A-1: yes");
                assert!(!text.preview_url);
            }
            other => panic!("{other:?}"),
        }
        let output: Value = serde_json::from_str(&result.output).expect("json");
        assert_eq!(
            output,
            json!({"content": "text", "text": "Hi Ada, order A-1: yes"})
        );
    }

    #[test]
    fn template_variables_are_rendered_for_the_kernel() {
        let result = send(&input(json!({
            "template": {"name": "order_update", "language": "en_US", "variables": {
                "header": "{{trigger.order_id}}",
                "body": ["{{contact.name}}", "{{trigger.order_id}}", 3],
                "buttons": {"0": "{{contact.fields.code}}"}
            }},
            "channel_install": "{{trigger.install_id}}",
            "purpose": "marketing"
        })))
        .expect("sends");
        let send = effect(&result);
        assert_eq!(send.channel_install.as_deref(), Some("inst"));
        let MessageContent::Template(template) = &send.content else {
            panic!("{:?}", send.content);
        };
        assert_eq!(
            (template.name.as_str(), template.language.as_str()),
            ("order_update", "en_US")
        );
        let components: Value = serde_json::from_str(&template.components).expect("json");
        assert_eq!(
            components,
            json!({"variables": {"header": "A-1", "body": ["Ada", "A-1", "3"], "buttons": {"0": "X1"}}})
        );
        let output: Value = serde_json::from_str(&result.output).expect("json");
        assert_eq!(output["purpose"], "marketing");
        // No variables: no components for the kernel to fill.
        let plain = send_template_components(json!({"name": "hello", "language": "en"}));
        assert_eq!(plain, json!({}));
    }

    fn send_template_components(template: Value) -> Value {
        let result = send(&input(json!({ "template": template }))).expect("sends");
        let MessageContent::Template(template) = &effect(&result).content else {
            panic!("not a template");
        };
        serde_json::from_str(&template.components).expect("json")
    }

    #[test]
    fn media_by_link() {
        let result = send(&input(json!({"media": {"kind": "document", "url": "https://cdn.example/{{trigger.order_id}}.pdf", "caption": "For {{contact.name}}", "filename": "receipt.pdf"}}))).expect("sends");
        let MessageContent::Media(media) = &effect(&result).content else {
            panic!("not media");
        };
        assert_eq!(media.kind, MediaKind::Document);
        assert_eq!(media.url, "https://cdn.example/A-1.pdf");
        assert_eq!(media.caption.as_deref(), Some("For Ada"));
        assert_eq!(media.filename.as_deref(), Some("receipt.pdf"));
        let bare = send(&input(
            json!({"media": {"kind": "image", "url": "https://x.example/a.png"}}),
        ))
        .expect("sends");
        let MessageContent::Media(media) = &effect(&bare).content else {
            panic!("not media");
        };
        assert_eq!(
            (media.caption.as_deref(), media.filename.as_deref()),
            (None, None)
        );
    }

    #[test]
    fn bad_config_names_the_field() {
        for (config, expected) in [
            (json!({}), "set one of `text`, `template`, `media`"),
            (
                json!({"text": "a", "media": {"kind": "image", "url": "https://x"}}),
                "set only one of `text`, `template`, `media`, not `text` and `media`",
            ),
            (json!({"text": 5}), "`text` must be text, not a number"),
            (json!({"text": "  "}), "`text` is empty"),
            (
                json!({"text": "Hi {{name}}"}),
                "`text`: `name` is not a path",
            ),
            (
                json!({"text": "a", "colour": "red"}),
                "`colour` is not a setting",
            ),
            (
                json!({"text": "a", "purpose": "spam"}),
                "`purpose` is `spam`; use service or marketing",
            ),
            (
                json!({"template": {"language": "en"}}),
                "`template/name` is required",
            ),
            (
                json!({"template": {"name": "x", "language": "en", "variables": {"body": "x"}}}),
                "`template/variables/body` must be a list of texts",
            ),
            (
                json!({"template": {"name": "x", "language": "en", "variables": {"buttons": {"first": "x"}}}}),
                "`template/variables/buttons/first` is not a button position",
            ),
            (
                json!({"template": {"name": "x", "language": "en", "variables": {"body": [{"a": 1}]}}}),
                "`template/variables/body/0` must be text, not an object",
            ),
            (
                json!({"template": {"name": "x", "language": "en", "extra": 1}}),
                "`template/extra` is not a setting",
            ),
            (
                json!({"media": {"kind": "gif", "url": "https://x"}}),
                "`media/kind` is `gif`",
            ),
            (
                json!({"media": {"kind": "image"}}),
                "`media/url` is required",
            ),
        ] {
            let message = config_error(config.clone());
            assert!(message.starts_with(expected), "{config}: {message}");
        }
    }

    #[test]
    fn empty_after_rendering_is_bad_input() {
        assert!(matches!(
            send(&input(json!({"text": "{{trigger.nope}}"}))),
            Err(ActionError::InvalidInput(message)) if message.contains("empty")
        ));
        assert!(matches!(
            send(&input(json!({"media": {"kind": "image", "url": "{{trigger.nope}}"}}))),
            Err(ActionError::InvalidInput(message)) if message.contains("not an http(s) URL")
        ));
    }

    #[test]
    fn describes_itself() {
        let descriptor = SendMessage::describe();
        let ports: Vec<&str> = descriptor
            .ports
            .iter()
            .map(|port| port.name.as_str())
            .collect();
        assert_eq!(ports, ["next"]);
        let schema: Value = serde_json::from_str(&descriptor.config_schema).expect("json");
        assert_eq!(schema["additionalProperties"], false);
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
