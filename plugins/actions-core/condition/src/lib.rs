//! `postdog/condition`: branches on an expression (the `postdog-expr` language) over the
//! contact, the trigger and earlier steps' outputs: port `yes` when it holds, `no`
//! otherwise. Missing data is `null`, so a condition about a field the contact lacks is
//! simply false rather than an error.
//!
//! Configuration: `expression`, e.g. `lower(steps.ask.reply) == 'yes'` or
//! `contact.tags contains 'vip' and contact.fields.orders > 3`.

// `deny`, not `forbid`: the SDK's export macro allows unsafe code in the glue it generates.
#![deny(unsafe_code)]

use actions_core_common::postdog_expr::{self, truthy};
use actions_core_common::{Config, context, invalid_expr};
use postdog_sdk::prelude::*;

struct Condition;

fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["expression"],
        "additionalProperties": false,
        "properties": {
            "expression": {
                "type": "string",
                "minLength": 1,
                "description": "A condition such as contact.tags contains 'vip' and days_since(contact.fields.signed_up) > 30; operators ==, !=, <, <=, >, >=, contains, in, not in, starts_with, ends_with, and, or, not; functions lower, upper, len, exists, number, days_since"
            }
        }
    })
}

fn evaluate(input: &ActionInput) -> Result<ActionResult, ActionError> {
    let config = Config::of(input)?;
    config.only(&["expression"])?;
    let text = config.required_str("expression")?;
    let expr = postdog_expr::parse(text).map_err(|error| invalid_expr("expression", &error))?;
    let value = postdog_expr::eval(&expr, &context(input))
        .map_err(|error| ActionError::InvalidInput(format!("`expression`: {error}")))?;
    let result = truthy(&value);
    Ok(ActionResult::next(if result { "yes" } else { "no" })
        .with_output(json!({ "result": result })))
}

impl Action for Condition {
    fn describe() -> Descriptor {
        Descriptor::new(
            "Condition",
            "Takes `yes` when the expression holds and `no` otherwise. Paths: contact.name, contact.phone, contact.email, contact.tags, contact.fields.<key>, trigger.<key>, steps.<step>.<key> (missing data is null). Example: lower(steps.ask.reply) == 'yes' or contact.tags contains 'vip'.",
        )
        .with_config_schema(schema())
        .with_port("yes", "The expression holds")
        .with_port("no", "The expression does not hold")
    }

    fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
        evaluate(&input)
    }
}

postdog_sdk::export_action!(Condition);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(expression: Value) -> Result<ActionResult, ActionError> {
        evaluate(&ActionInput {
            run_id: "r".into(),
            step_id: "c".into(),
            config: json!({ "expression": expression }).to_string(),
            contact: Some(
                json!({"name": "Ada", "tags": ["VIP"], "fields": {"orders": 4, "signed_up": "2024-01-01"}})
                    .to_string(),
            ),
            trigger: json!({"total": 120}).to_string(),
            // 2024-05-01T00:00:00Z
            variables: json!({"_now_ms": 1_714_521_600_000_i64, "ask": {"reply": "YES"}}).to_string(),
        })
    }

    fn port(expression: &str) -> String {
        match run(json!(expression)) {
            Ok(ActionResult {
                outcome: Outcome::Next(port),
                output,
                ..
            }) => {
                let output: Value = serde_json::from_str(&output).expect("json");
                assert_eq!(output["result"], port == "yes", "{expression}");
                port
            }
            other => panic!("{expression}: {other:?}"),
        }
    }

    #[test]
    fn branches() {
        assert_eq!(port("lower(steps.ask.reply) == 'yes'"), "yes");
        assert_eq!(port("steps.ask.reply == 'no'"), "no");
        assert_eq!(
            port("contact.tags contains 'vip' and contact.fields.orders > 3"),
            "yes"
        );
        assert_eq!(
            port("trigger.total >= 100 and not (contact.name starts_with 'B')"),
            "yes"
        );
        assert_eq!(port("days_since(contact.fields.signed_up) == 121"), "yes");
        assert_eq!(port("contact.fields.missing == 'x'"), "no");
        assert_eq!(port("exists(steps.other.reply)"), "no");
        // A non-boolean value counts by truthiness.
        assert_eq!(port("contact.name"), "yes");
        assert_eq!(port("trigger.nope"), "no");
    }

    #[test]
    fn parse_errors_are_invalid_config_with_the_offset() {
        for (expression, expected) in [
            (
                json!("contact.name == 'Ada' and"),
                "`expression`: expected a value after `and`, but the expression ends at 25",
            ),
            (
                json!("contact.name = 'Ada'"),
                "`expression`: a single `=` does not compare: write `==` at 13",
            ),
            (json!(""), "`expression` is empty"),
            (json!(5), "`expression` must be text"),
        ] {
            match run(expression.clone()) {
                Err(ActionError::InvalidConfig(message)) => {
                    assert!(message.starts_with(expected), "{expression}: {message}");
                }
                other => panic!("{expression}: {other:?}"),
            }
        }
    }

    #[test]
    fn describes_its_ports() {
        let descriptor = Condition::describe();
        let ports: Vec<&str> = descriptor
            .ports
            .iter()
            .map(|port| port.name.as_str())
            .collect();
        assert_eq!(ports, ["yes", "no"]);
    }
}
