//! `postdog/set-field`: sets a custom field of the run's contact (an effect the kernel
//! applies; it checks the value against the field's type).
//!
//! Configuration: `field` (the field's key) and `value`, any JSON. Texts inside the value
//! are templates; a text that is exactly one placeholder keeps the value's own type, so
//! `"{{trigger.total}}"` stores the number 250 and `"{{steps.ask.reply}}"` the reply's
//! text. `null` (or a single placeholder with nothing behind it) clears the field.

// `deny`, not `forbid`: the SDK's export macro allows unsafe code in the glue it generates.
#![deny(unsafe_code)]

use actions_core_common::{Config, context, invalid_config, render_value};
use postdog_sdk::prelude::*;

struct SetField;

fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["field", "value"],
        "additionalProperties": false,
        "properties": {
            "field": {"type": "string", "minLength": 1, "description": "The custom field's key"},
            "value": {"description": "The new value (any JSON; null clears the field). Texts may use placeholders: \"{{steps.ask.reply}}\", \"{{trigger.total}}\""}
        }
    })
}

fn set_field(input: &ActionInput) -> Result<ActionResult, ActionError> {
    let config = Config::of(input)?;
    config.only(&["field", "value"])?;
    let field = config.required_str("field")?.trim();
    if field.contains(['{', '}']) {
        return Err(invalid_config(
            "field",
            "is a field key such as `plan`, not a template",
        ));
    }
    // `value: null` is a deliberate "clear"; only a missing key is an error.
    let Some(raw) = config.raw("value") else {
        return Err(invalid_config(
            "value",
            "is required (null clears the field)",
        ));
    };
    let value = render_value("value", raw, &context(input))?;
    Ok(ActionResult::next("next")
        .with_effect(Effect::set_field(field, &value))
        .with_output(json!({ "field": field, "value": value })))
}

impl Action for SetField {
    fn describe() -> Descriptor {
        Descriptor::new(
            "Set contact field",
            "Sets a custom field of the run's contact. The value is any JSON; texts may use placeholders, and a text that is exactly one placeholder keeps its type (\"{{trigger.total}}\" stores a number). null clears the field.",
        )
        .with_config_schema(schema())
        .with_port("next", "The change was requested")
    }

    fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
        set_field(&input)
    }
}

postdog_sdk::export_action!(SetField);

#[cfg(test)]
mod tests {
    use postdog_sdk::message::SetFieldEffect;

    use super::*;

    fn run(config: Value) -> Result<ActionResult, ActionError> {
        set_field(&ActionInput {
            run_id: "r".into(),
            step_id: "s".into(),
            config: config.to_string(),
            contact: Some(json!({"name": "Ada"}).to_string()),
            trigger: json!({"total": 250, "tier": "gold"}).to_string(),
            variables: json!({"ask": {"reply": "B"}}).to_string(),
        })
    }

    fn effect(config: Value) -> (String, Value) {
        match run(config.clone()) {
            Ok(result) => match result.effects.as_slice() {
                [
                    Effect::SetField(SetFieldEffect {
                        contact_id: None,
                        field,
                        value,
                    }),
                ] => (field.clone(), serde_json::from_str(value).expect("json")),
                other => panic!("{config}: {other:?}"),
            },
            Err(error) => panic!("{config}: {error:?}"),
        }
    }

    #[test]
    fn values_are_rendered_and_keep_their_type() {
        assert_eq!(
            effect(json!({"field": "plan_answer", "value": "{{steps.ask.reply}}"})),
            ("plan_answer".into(), json!("B"))
        );
        assert_eq!(
            effect(json!({"field": "total", "value": "{{trigger.total}}"})).1,
            json!(250)
        );
        assert_eq!(
            effect(json!({"field": "note", "value": "{{contact.name}} spent {{trigger.total}}"})).1,
            json!("Ada spent 250")
        );
        assert_eq!(effect(json!({"field": "n", "value": 3})).1, json!(3));
        assert_eq!(
            effect(json!({"field": "vip", "value": true})).1,
            json!(true)
        );
        assert_eq!(
            effect(json!({"field": "gone", "value": null})).1,
            Value::Null
        );
        assert_eq!(
            effect(json!({"field": "gone", "value": "{{trigger.nope}}"})).1,
            Value::Null
        );
        assert_eq!(
            effect(json!({"field": "list", "value": ["{{trigger.tier}}", 1]})).1,
            json!(["gold", 1])
        );
        assert_eq!(effect(json!({"field": " plan ", "value": "x"})).0, "plan");
    }

    #[test]
    fn bad_config_names_the_field() {
        for (config, expected) in [
            (json!({"value": 1}), "`field` is required"),
            (json!({"field": "x"}), "`value` is required"),
            (
                json!({"field": "{{trigger.key}}", "value": 1}),
                "`field` is a field key",
            ),
            (
                json!({"field": "x", "value": "{{ oops }}"}),
                "`value`: `oops` is not a path",
            ),
            (
                json!({"field": "x", "value": {"a": ["{{x"]}}),
                "`value/a/0`: this `{{` is never closed",
            ),
            (
                json!({"field": "x", "value": 1, "other": 2}),
                "`other` is not a setting",
            ),
        ] {
            match run(config.clone()) {
                Err(ActionError::InvalidConfig(message)) => {
                    assert!(message.starts_with(expected), "{config}: {message}");
                }
                other => panic!("{config}: {other:?}"),
            }
        }
    }
}
