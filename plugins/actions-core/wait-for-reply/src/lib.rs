//! `postdog/wait-for-reply`: pauses the run until the contact's next message (port
//! `reply`) or the timeout (port `timeout`). The kernel stores the reply as this step's
//! output, `{"reply": "<text>", "message_id": "…"}` (or `{"timed_out": true}`), so later
//! steps read it as `steps.<this step's id>.reply`.
//!
//! Configuration: `timeout`, a duration (`30m`, `2h`, `3d`, at most 30 days) or a number
//! of milliseconds.

// `deny`, not `forbid`: the SDK's export macro allows unsafe code in the glue it generates.
#![deny(unsafe_code)]

use actions_core_common::{Config, format_duration, invalid_config, kind, parse_duration};
use postdog_sdk::prelude::*;

struct WaitForReply;

/// The longest timeout: 30 days.
const MAX_TIMEOUT_MS: i64 = 30 * 86_400_000;

fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["timeout"],
        "additionalProperties": false,
        "properties": {
            "timeout": {
                "type": ["string", "integer"],
                "minimum": 1,
                "maximum": MAX_TIMEOUT_MS,
                "description": "How long to wait for the reply: a duration such as 30m, 2h or 3d (at most 30d), or milliseconds"
            }
        }
    })
}

fn timeout_ms(config: &Config) -> Result<i64, ActionError> {
    let ms = match config.get("timeout") {
        None => return Err(invalid_config("timeout", "is required: e.g. 1h or 2d")),
        Some(Value::String(text)) => {
            parse_duration(text).map_err(|error| invalid_config("timeout", error))?
        }
        Some(Value::Number(number)) => number
            .as_i64()
            .ok_or_else(|| invalid_config("timeout", "must be a whole number of milliseconds"))?,
        Some(other) => {
            return Err(invalid_config(
                "timeout",
                format!("must be a duration such as 2h, not {}", kind(other)),
            ));
        }
    };
    if ms <= 0 {
        return Err(invalid_config("timeout", "must be longer than 0"));
    }
    if ms > MAX_TIMEOUT_MS {
        return Err(invalid_config("timeout", "is longer than 30 days"));
    }
    Ok(ms)
}

fn wait_for_reply(input: &ActionInput) -> Result<ActionResult, ActionError> {
    let config = Config::of(input)?;
    config.only(&["timeout"])?;
    let ms = timeout_ms(&config)?;
    let ms_u64 = u64::try_from(ms).unwrap_or(0);
    Ok(
        ActionResult::wait_for_reply(std::time::Duration::from_millis(ms_u64))
            .with_output(json!({"timeout_ms": ms_u64, "timeout": format_duration(ms)})),
    )
}

impl Action for WaitForReply {
    fn describe() -> Descriptor {
        Descriptor::new(
            "Wait for reply",
            "Pauses the run until the contact replies (port `reply`) or the timeout passes (port `timeout`; at most 30 days). The reply is stored as this step's output, {\"reply\": \"<text>\", \"message_id\": \"…\"}: later steps use {{steps.<this step>.reply}} or a condition such as lower(steps.<this step>.reply) == 'yes'. After a timeout the output is {\"timed_out\": true}.",
        )
        .with_config_schema(schema())
        .with_port("reply", "The contact replied; the text is in steps.<this step>.reply")
        .with_port("timeout", "No reply came before the timeout")
    }

    fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
        wait_for_reply(&input)
    }
}

postdog_sdk::export_action!(WaitForReply);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(config: Value) -> Result<ActionResult, ActionError> {
        wait_for_reply(&ActionInput {
            run_id: "r".into(),
            step_id: "ask".into(),
            config: config.to_string(),
            contact: None,
            trigger: "{}".into(),
            variables: "{}".into(),
        })
    }

    #[test]
    fn timeouts() {
        for (timeout, ms) in [
            (json!("1h"), 3_600_000),
            (json!("2d12h"), 216_000_000),
            (json!("30d"), 2_592_000_000),
            (json!(90_000), 90_000),
        ] {
            let result = run(json!({ "timeout": timeout })).expect("waits");
            assert!(
                matches!(result.outcome, Outcome::WaitForReply(got) if got == ms),
                "{timeout}"
            );
        }
        let result = run(json!({"timeout": "90m"})).expect("waits");
        let output: Value = serde_json::from_str(&result.output).expect("json");
        assert_eq!(output, json!({"timeout_ms": 5_400_000, "timeout": "1h30m"}));
    }

    #[test]
    fn bad_timeouts_name_the_field() {
        for (config, expected) in [
            (json!({}), "`timeout` is required"),
            (
                json!({"timeout": "31d"}),
                "`timeout` is longer than 30 days",
            ),
            (json!({"timeout": "0s"}), "`timeout` must be longer than 0"),
            (json!({"timeout": "-1h"}), "`timeout` must be longer than 0"),
            (
                json!({"timeout": "later"}),
                "`timeout` `later` is not a duration",
            ),
            (json!({"timeout": 1.5}), "`timeout` must be a whole number"),
            (
                json!({"timeout": true}),
                "`timeout` must be a duration such as 2h, not true/false",
            ),
            (
                json!({"timeout": "1h", "retries": 2}),
                "`retries` is not a setting",
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

    #[test]
    fn describes_its_ports_and_the_reply() {
        let descriptor = WaitForReply::describe();
        let ports: Vec<&str> = descriptor
            .ports
            .iter()
            .map(|port| port.name.as_str())
            .collect();
        assert_eq!(ports, ["reply", "timeout"]);
        assert!(descriptor.description.contains("steps.<this step>.reply"));
        let schema: Value = serde_json::from_str(&descriptor.config_schema).expect("json");
        assert_eq!(schema["required"], json!(["timeout"]));
    }
}
