//! `actions-core-common`: what PostDog's first-party flow actions (`plugins/actions-core/*`,
//! one component per action) share: reading a node's configuration with errors that name
//! the field, the [`postdog_expr`] context of a step (contact, trigger, earlier steps'
//! outputs, the time), template rendering that refuses malformed placeholders, and
//! durations such as `1d12h`.
//!
//! Nothing here calls a host import, so the actions' logic built on it runs in native
//! `cargo test`.

#![forbid(unsafe_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use postdog_expr::Context;
use postdog_sdk::action::{ActionError, ActionInput, ActionResult};
use postdog_sdk::message::Effect;
use serde_json::{Map, Value};

pub use postdog_expr;

/// An `invalid-config` error about `field`.
pub fn invalid_config(field: &str, message: impl std::fmt::Display) -> ActionError {
    ActionError::InvalidConfig(format!("`{field}` {message}"))
}

/// An `invalid-config` error about `field` from an expression or template error (its
/// message and offset).
pub fn invalid_expr(field: &str, error: &postdog_expr::ExprError) -> ActionError {
    ActionError::InvalidConfig(format!("`{field}`: {error}"))
}

/// A node's configuration: a JSON object (a missing or `null` config is empty).
#[derive(Debug, Clone, Default)]
pub struct Config {
    map: Map<String, Value>,
}

impl Config {
    /// The configuration of `input`.
    pub fn of(input: &ActionInput) -> Result<Self, ActionError> {
        match serde_json::from_str::<Value>(&input.config) {
            Ok(Value::Object(map)) => Ok(Self { map }),
            Ok(Value::Null) => Ok(Self::default()),
            Ok(other) => Err(ActionError::InvalidConfig(format!(
                "the configuration must be a JSON object, not {}",
                kind(&other)
            ))),
            Err(error) => Err(ActionError::InvalidConfig(format!(
                "the configuration is not JSON: {error}"
            ))),
        }
    }

    /// A configuration from a JSON value (tests; anything but an object is empty).
    pub fn from_value(value: Value) -> Self {
        match value {
            Value::Object(map) => Self { map },
            _ => Self::default(),
        }
    }

    /// Refuses keys outside `known` (the kernel checks the schema too; this keeps a
    /// misspelt key from being ignored when an action is called directly).
    pub fn only(&self, known: &[&str]) -> Result<(), ActionError> {
        match self.map.keys().find(|key| !known.contains(&key.as_str())) {
            None => Ok(()),
            Some(key) if known.is_empty() => Err(invalid_config(
                key,
                "is not a setting; this action takes none",
            )),
            Some(key) => Err(invalid_config(
                key,
                format!(
                    "is not a setting of this action; it takes {}",
                    known
                        .iter()
                        .map(|key| format!("`{key}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// The value of `key`; `null` counts as absent.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|value| !value.is_null())
    }

    /// The value of `key` as written, `null` included (for settings where `null` means
    /// something, such as "clear the field").
    pub fn raw(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// Whether `key` is set (to something other than `null`).
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A text setting, if set.
    pub fn str(&self, key: &str) -> Result<Option<&str>, ActionError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(invalid_config(
                key,
                format!("must be text, not {}", kind(other)),
            )),
        }
    }

    /// A text setting that must be set and not blank.
    pub fn required_str(&self, key: &str) -> Result<&str, ActionError> {
        match self.str(key)? {
            Some(text) if !text.trim().is_empty() => Ok(text),
            Some(_) => Err(invalid_config(key, "is empty")),
            None => Err(invalid_config(key, "is required")),
        }
    }

    /// An object setting, if set.
    pub fn object(&self, key: &str) -> Result<Option<&Map<String, Value>>, ActionError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(other) => Err(invalid_config(
                key,
                format!("must be an object, not {}", kind(other)),
            )),
        }
    }

    /// A whole, non-negative number setting, if set.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, ActionError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                invalid_config(
                    key,
                    format!("must be a whole number of at least 0, not {value}"),
                )
            }),
        }
    }

    /// Which one of `keys` is set; an error naming them when none or several are.
    pub fn exactly_one<'k>(&self, keys: &[&'k str]) -> Result<&'k str, ActionError> {
        let set: Vec<&'k str> = keys.iter().copied().filter(|key| self.has(key)).collect();
        let list = keys
            .iter()
            .map(|key| format!("`{key}`"))
            .collect::<Vec<_>>()
            .join(", ");
        match set.as_slice() {
            [one] => Ok(one),
            [] => Err(ActionError::InvalidConfig(format!("set one of {list}"))),
            several => Err(ActionError::InvalidConfig(format!(
                "set only one of {list}, not {}",
                several
                    .iter()
                    .map(|key| format!("`{key}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ))),
        }
    }
}

/// How a JSON value's kind reads in a message.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The current time for a step: `variables._now_ms`, which the kernel sets (and the flow
/// simulator sets to its simulated clock), else the system clock.
pub fn now_ms(variables: &Value) -> i64 {
    if let Some(now) = variables.get("_now_ms").and_then(Value::as_i64) {
        return now;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|elapsed| i64::try_from(elapsed.as_millis()).ok())
        .unwrap_or(0)
}

/// The expression context of a step: the contact (`null` when the run has none), the
/// trigger's payload, earlier steps' outputs as `steps`, and the time.
pub fn context(input: &ActionInput) -> Context {
    let steps = input.variables_json();
    Context {
        contact: input.contact_json().unwrap_or(Value::Null),
        trigger: input.trigger_json(),
        now_ms: now_ms(&steps),
        steps,
    }
}

/// Renders the template `text` of the setting `field`; a malformed placeholder is an
/// `invalid-config` error naming the field, never sent to a contact as written.
pub fn render(field: &str, text: &str, context: &Context) -> Result<String, ActionError> {
    postdog_expr::template_paths(text).map_err(|error| invalid_expr(field, &error))?;
    Ok(postdog_expr::render_template(text, context))
}

/// Renders every text inside `value` (recursively) as a template. A text that is exactly
/// one placeholder takes the value's own type (`"{{trigger.total}}"` → `250`).
pub fn render_value(field: &str, value: &Value, context: &Context) -> Result<Value, ActionError> {
    Ok(match value {
        Value::String(text) => {
            postdog_expr::template_paths(text).map_err(|error| invalid_expr(field, &error))?;
            postdog_expr::render_template_value(text, context)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(index, item)| render_value(&format!("{field}/{index}"), item, context))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, item)| {
                    Ok((
                        key.clone(),
                        render_value(&format!("{field}/{key}"), item, context)?,
                    ))
                })
                .collect::<Result<_, ActionError>>()?,
        ),
        other => other.clone(),
    })
}

/// The configuration schema of `postdog/add-tag` and `postdog/remove-tag`.
pub fn tag_schema(verb: &str) -> Value {
    serde_json::json!({
        "type": "object",
        "required": ["tag"],
        "additionalProperties": false,
        "properties": {
            "tag": {
                "type": "string",
                "minLength": 1,
                "description": format!("The tag to {verb}; placeholders such as {{{{trigger.plan}}}} are filled in")
            }
        }
    })
}

/// Runs `postdog/add-tag` (`add`) or `postdog/remove-tag`: the rendered `tag` as an
/// effect on the run's contact, and `{"tag": …}` as the output.
pub fn tag_step(input: &ActionInput, add: bool) -> Result<ActionResult, ActionError> {
    let config = Config::of(input)?;
    config.only(&["tag"])?;
    let tag = render("tag", config.required_str("tag")?, &context(input))?;
    let tag = tag.trim();
    if tag.is_empty() {
        return Err(ActionError::InvalidInput(
            "the tag is empty once its placeholders are filled in".into(),
        ));
    }
    let effect = if add {
        Effect::add_tag(tag)
    } else {
        Effect::remove_tag(tag)
    };
    Ok(ActionResult::next("next")
        .with_effect(effect)
        .with_output(serde_json::json!({ "tag": tag })))
}

/// Milliseconds per duration unit.
const UNITS: [(&str, i64); 6] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 604_800_000),
];

/// Parses a duration such as `30s`, `15m`, `2h`, `3d`, `1w`, `500ms`, `1d12h` or
/// `1h 30m` into milliseconds; a leading `-` makes it negative (`-1d`). The error says
/// what to write instead.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    const EXAMPLES: &str = "write a duration such as 30s, 15m, 2h, 3d or 1d12h";
    let trimmed = text.trim();
    let (negative, body) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    if body.trim().is_empty() {
        return Err(format!("is empty: {EXAMPLES}"));
    }
    let bytes = body.as_bytes();
    let mut total: i64 = 0;
    let mut position = 0;
    while position < bytes.len() {
        if bytes[position].is_ascii_whitespace() {
            position += 1;
            continue;
        }
        let start = position;
        while position < bytes.len() && bytes[position].is_ascii_digit() {
            position += 1;
        }
        if position == start {
            return Err(format!("`{text}` is not a duration: {EXAMPLES}"));
        }
        let amount: i64 = body[start..position]
            .parse()
            .map_err(|_| format!("`{text}` is far too long a duration"))?;
        if bytes.get(position) == Some(&b'.') {
            return Err(format!(
                "`{text}` is not a duration: use whole numbers of a smaller unit, e.g. 1h30m instead of 1.5h"
            ));
        }
        while position < bytes.len() && bytes[position].is_ascii_whitespace() {
            position += 1;
        }
        let unit_start = position;
        while position < bytes.len() && bytes[position].is_ascii_alphabetic() {
            position += 1;
        }
        let unit = &body[unit_start..position];
        let Some((_, factor)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(if unit.is_empty() {
                format!(
                    "`{text}` needs a unit after {amount}: ms, s, m, h, d or w (e.g. {amount}s)"
                )
            } else {
                format!("`{unit}` in `{text}` is not a unit: use ms, s, m, h, d or w")
            });
        };
        total = amount
            .checked_mul(*factor)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("`{text}` is far too long a duration"))?;
    }
    Ok(if negative { -total } else { total })
}

/// Writes milliseconds back as a duration (`90000` → `1m30s`), for messages and outputs.
pub fn format_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    if ms < 0 {
        out.push('-');
    }
    let mut rest = ms.unsigned_abs();
    for (name, factor) in UNITS.iter().rev() {
        let factor = factor.unsigned_abs();
        if rest >= factor {
            out.push_str(&format!("{}{name}", rest / factor));
            rest %= factor;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn input(config: Value, variables: Value) -> ActionInput {
        ActionInput {
            run_id: "run".into(),
            step_id: "step".into(),
            config: config.to_string(),
            contact: Some(json!({"name": "Ada", "fields": {"plan": "pro"}}).to_string()),
            trigger: json!({"order_id": "A-1"}).to_string(),
            variables: variables.to_string(),
        }
    }

    #[test]
    fn durations() {
        for (text, ms) in [
            ("30s", 30_000),
            ("15m", 900_000),
            ("2h", 7_200_000),
            ("3d", 259_200_000),
            ("1w", 604_800_000),
            ("500ms", 500),
            ("1d12h", 129_600_000),
            (" 1h 30m ", 5_400_000),
            ("3 d", 259_200_000),
            ("-1d", -86_400_000),
            ("+2h", 7_200_000),
            ("0s", 0),
        ] {
            assert_eq!(parse_duration(text), Ok(ms), "{text}");
        }
        for (text, message) in [
            ("", "is empty"),
            ("-", "is empty"),
            ("30", "needs a unit after 30"),
            ("1.5h", "1h30m instead of 1.5h"),
            ("3 days", "`days` in `3 days` is not a unit"),
            ("h", "is not a duration"),
            ("1h-2m", "is not a duration"),
            ("99999999999999999999d", "far too long"),
            ("9999999999999w", "far too long"),
            ("１h", "is not a duration"),
        ] {
            let error = parse_duration(text).expect_err(text);
            assert!(error.contains(message), "{text}: {error}");
        }
        assert_eq!(format_duration(129_600_000), "1d12h");
        assert_eq!(format_duration(90_500), "1m30s500ms");
        assert_eq!(format_duration(-86_400_000), "-1d");
        assert_eq!(format_duration(0), "0s");
    }

    #[test]
    fn config_reading_names_the_field() {
        let config =
            Config::from_value(json!({"a": "x", "n": 3, "o": {}, "blank": " ", "nothing": null}));
        assert_eq!(config.str("a").ok().flatten(), Some("x"));
        assert!(
            matches!(config.str("n"), Err(ActionError::InvalidConfig(m)) if m == "`n` must be text, not a number")
        );
        assert!(
            matches!(config.required_str("blank"), Err(ActionError::InvalidConfig(m)) if m == "`blank` is empty")
        );
        assert!(
            matches!(config.required_str("nothing"), Err(ActionError::InvalidConfig(m)) if m == "`nothing` is required")
        );
        assert!(
            matches!(config.u64("a"), Err(ActionError::InvalidConfig(m)) if m.starts_with("`a` must be a whole number"))
        );
        assert_eq!(config.u64("n").ok().flatten(), Some(3));
        assert!(config.object("o").is_ok_and(|o| o.is_some()));
        assert_eq!(config.exactly_one(&["a", "x"]).ok(), Some("a"));
        assert!(
            matches!(config.exactly_one(&["a", "n"]), Err(ActionError::InvalidConfig(m)) if m == "set only one of `a`, `n`, not `a` and `n`")
        );
        assert!(
            matches!(config.exactly_one(&["x", "y", "nothing"]), Err(ActionError::InvalidConfig(m)) if m == "set one of `x`, `y`, `nothing`")
        );
        assert!(
            matches!(config.only(&["a", "n", "o", "blank"]), Err(ActionError::InvalidConfig(m)) if m.starts_with("`nothing` is not a setting"))
        );
        let array = input(json!([1]), json!({}));
        assert!(
            matches!(Config::of(&array), Err(ActionError::InvalidConfig(m)) if m.contains("not a list"))
        );
        assert!(Config::of(&input(Value::Null, json!({}))).is_ok());
    }

    #[test]
    fn tags() {
        let tag = |config: Value, add: bool| tag_step(&input(config, json!({})), add);
        let added = tag(json!({"tag": "plan-{{contact.fields.plan}}"}), true).expect("tags");
        assert!(
            matches!(added.effects.as_slice(), [Effect::AddTag(t)] if t.tag == "plan-pro" && t.contact_id.is_none())
        );
        assert_eq!(added.output, r#"{"tag":"plan-pro"}"#);
        let removed = tag(json!({"tag": " vip "}), false).expect("tags");
        assert!(matches!(removed.effects.as_slice(), [Effect::RemoveTag(t)] if t.tag == "vip"));
        assert!(
            matches!(tag(json!({}), true), Err(ActionError::InvalidConfig(m)) if m == "`tag` is required")
        );
        assert!(
            matches!(tag(json!({"tag": "x", "colour": 1}), true), Err(ActionError::InvalidConfig(m)) if m.starts_with("`colour` is not a setting"))
        );
        assert!(matches!(
            tag(json!({"tag": "{{trigger.nope}}"}), true),
            Err(ActionError::InvalidInput(_))
        ));
        assert_eq!(tag_schema("add")["required"], json!(["tag"]));
    }

    #[test]
    fn context_and_rendering() {
        let context = context(&input(
            json!({}),
            json!({"_now_ms": 42, "ask": {"reply": "yes"}}),
        ));
        assert_eq!(context.now_ms, 42);
        assert_eq!(
            render(
                "text",
                "{{contact.name}} {{trigger.order_id}} {{steps.ask.reply}}",
                &context
            )
            .ok(),
            Some("Ada A-1 yes".to_string())
        );
        assert!(
            matches!(render("text", "Hi {{ name }}", &context), Err(ActionError::InvalidConfig(m)) if m.starts_with("`text`: `name` is not a path"))
        );
        assert_eq!(
            render_value(
                "value",
                &json!({"a": ["{{contact.fields.plan}}", 1], "b": "{{trigger.nope}}"}),
                &context
            )
            .ok(),
            Some(json!({"a": ["pro", 1], "b": null}))
        );
        assert!(
            matches!(render_value("value", &json!(["{{x"]), &context), Err(ActionError::InvalidConfig(m)) if m == "`value/0`: this `{{` is never closed: end the placeholder with `}}` at 0")
        );
        let system = now_ms(&json!({}));
        assert!(system > 1_700_000_000_000, "{system}");
    }
}
