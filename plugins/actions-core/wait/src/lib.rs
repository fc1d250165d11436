//! `postdog/wait`: pauses the run, then continues along `next`. The kernel turns the
//! outcome into the `run_at` of the run's next job, so a wait survives restarts.
//!
//! Configuration, one of:
//! - `duration`: `30s`, `15m`, `2h`, `3d`, `1w`, `1d12h`, …; or `duration_ms`;
//! - `until_field`: the key of a contact field holding a date (`YYYY-MM-DD`, RFC 3339 or
//!   Unix milliseconds), optionally shifted by `offset` (`-1d`: the day before). A time
//!   already past waits 0. When the field is empty the step fails (`invalid-input`),
//!   unless `on_missing` is `continue`: then the run takes the `missing` port at once.

// `deny`, not `forbid`: the SDK's export macro allows unsafe code in the glue it generates.
#![deny(unsafe_code)]

use actions_core_common::postdog_expr::timestamp_ms;
use actions_core_common::{Config, format_duration, invalid_config, kind, now_ms, parse_duration};
use postdog_sdk::prelude::*;

struct Wait;

/// The longest wait: a year.
const MAX_WAIT_MS: i64 = 366 * 86_400_000;

const KEYS: [&str; 5] = [
    "duration",
    "duration_ms",
    "until_field",
    "offset",
    "on_missing",
];

fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "duration": {
                "type": "string",
                "minLength": 1,
                "description": "How long to wait: 30s, 15m, 2h, 3d, 1w or combinations such as 1d12h"
            },
            "duration_ms": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_WAIT_MS,
                "description": "How long to wait, in milliseconds"
            },
            "until_field": {
                "type": "string",
                "minLength": 1,
                "description": "Wait until the date in this contact field (YYYY-MM-DD, RFC 3339 or Unix milliseconds)"
            },
            "offset": {
                "type": "string",
                "minLength": 1,
                "description": "Shift the field's date, e.g. -1d for the day before or 9h for 9:00 on a date"
            },
            "on_missing": {
                "type": "string",
                "enum": ["fail", "continue"],
                "description": "When the field is empty: fail the step (default) or continue along `missing`"
            }
        }
    })
}

fn duration_setting(config: &Config, key: &str) -> Result<i64, ActionError> {
    let text = config.required_str(key)?;
    parse_duration(text).map_err(|error| invalid_config(key, error))
}

fn wait(input: &ActionInput) -> Result<ActionResult, ActionError> {
    let config = Config::of(input)?;
    config.only(&KEYS)?;
    let mode = config.exactly_one(&["duration", "duration_ms", "until_field"])?;
    if mode != "until_field" {
        for key in ["offset", "on_missing"] {
            if config.has(key) {
                return Err(invalid_config(key, "only goes with `until_field`"));
            }
        }
    }
    let wait_ms = match mode {
        "duration" => duration_setting(&config, "duration")?,
        "duration_ms" => config
            .u64("duration_ms")?
            .and_then(|ms| i64::try_from(ms).ok())
            .unwrap_or(i64::MAX),
        _ => match until(input, &config)? {
            Some(ms) => ms,
            None => {
                return Ok(ActionResult::next("missing").with_output(json!({"missing": true})));
            }
        },
    };
    if wait_ms < 0 && mode != "until_field" {
        return Err(invalid_config(mode, "must not be negative"));
    }
    if wait_ms > MAX_WAIT_MS {
        return Err(if mode == "until_field" {
            ActionError::InvalidInput(format!(
                "the contact's `{}` is more than 366 days away",
                config.str("until_field").ok().flatten().unwrap_or_default()
            ))
        } else {
            invalid_config(mode, "is longer than the longest wait, 366d")
        });
    }
    let wait_ms = wait_ms.max(0);
    let ms = u64::try_from(wait_ms).unwrap_or(0);
    let now = now_ms(&input.variables_json());
    let output = json!({"wait_ms": ms, "wait": format_duration(wait_ms), "until_ms": now.saturating_add(wait_ms)});
    Ok(ActionResult::wait(std::time::Duration::from_millis(ms)).with_output(output))
}

/// How long until the field's date (plus the offset), or `None` to take `missing`.
fn until(input: &ActionInput, config: &Config) -> Result<Option<i64>, ActionError> {
    let field = config.required_str("until_field")?.trim();
    let offset = match config.str("offset")? {
        Some(_) => duration_setting(config, "offset")?,
        None => 0,
    };
    let continue_on_missing = match config.str("on_missing")? {
        None | Some("fail") => false,
        Some("continue") => true,
        Some(other) => {
            return Err(invalid_config(
                "on_missing",
                format!("is `{other}`; use fail or continue"),
            ));
        }
    };
    let contact = input.contact_json().unwrap_or(Value::Null);
    let value = contact
        .get("fields")
        .and_then(|fields| fields.get(field))
        .filter(|value| !value.is_null() && value.as_str() != Some(""));
    let Some(value) = value else {
        if continue_on_missing {
            return Ok(None);
        }
        return Err(ActionError::InvalidInput(format!(
            "the contact has no `{field}` to wait for; set `on_missing` to `continue` to take the `missing` port instead"
        )));
    };
    let at = match value {
        Value::String(text) => timestamp_ms(text),
        Value::Number(number) => number.as_i64(),
        _ => None,
    }
    .ok_or_else(|| {
        ActionError::InvalidInput(format!(
            "the contact's `{field}` holds {} {value}, not a date (YYYY-MM-DD, RFC 3339 or Unix milliseconds)",
            kind(value)
        ))
    })?;
    let now = now_ms(&input.variables_json());
    Ok(Some(at.saturating_add(offset).saturating_sub(now)))
}

impl Action for Wait {
    fn describe() -> Descriptor {
        Descriptor::new(
            "Wait",
            "Pauses the run for a duration (30s, 15m, 2h, 3d, 1d12h) or until the date in a contact field, optionally shifted (offset -1d: the day before); a date already past continues at once. With until_field and on_missing: continue, a contact without the date takes the `missing` port.",
        )
        .with_config_schema(schema())
        .with_port("next", "The wait is over")
        .with_port(
            "missing",
            "Only with `until_field` and `on_missing: continue`: the contact has no date in the field",
        )
    }

    fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
        wait(&input)
    }
}

postdog_sdk::export_action!(Wait);

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-05-01T10:00:00Z
    const NOW: i64 = 1_714_557_600_000;

    fn input(config: Value, fields: Value) -> ActionInput {
        ActionInput {
            run_id: "r".into(),
            step_id: "s".into(),
            config: config.to_string(),
            contact: Some(json!({"id": "c1", "fields": fields}).to_string()),
            trigger: "{}".into(),
            variables: json!({"_now_ms": NOW}).to_string(),
        }
    }

    fn waited(config: Value, fields: Value) -> u64 {
        match wait(&input(config.clone(), fields)) {
            Ok(ActionResult {
                outcome: Outcome::Wait(ms),
                ..
            }) => ms,
            other => panic!("{config}: {other:?}"),
        }
    }

    fn error(config: Value, fields: Value) -> ActionError {
        match wait(&input(config.clone(), fields)) {
            Err(error) => error,
            Ok(result) => panic!("{config}: {result:?}"),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(waited(json!({"duration": "30s"}), json!({})), 30_000);
        assert_eq!(waited(json!({"duration": "1d12h"}), json!({})), 129_600_000);
        assert_eq!(waited(json!({"duration_ms": 1500}), json!({})), 1500);
        assert_eq!(waited(json!({"duration": "0s"}), json!({})), 0);
        let result = wait(&input(json!({"duration": "2h"}), json!({}))).expect("waits");
        let output: Value = serde_json::from_str(&result.output).expect("json");
        assert_eq!(
            output,
            json!({"wait_ms": 7_200_000, "wait": "2h", "until_ms": NOW + 7_200_000})
        );
    }

    #[test]
    fn until_a_contact_date() {
        let fields = json!({"renewal": "2024-05-03", "call": "2024-05-01T12:30:00+02:00", "ms": NOW + 5000, "past": "2024-04-01", "bad": "soon", "flag": true});
        assert_eq!(
            waited(json!({"until_field": "renewal"}), fields.clone()),
            136_800_000
        );
        assert_eq!(
            waited(
                json!({"until_field": "renewal", "offset": "-1d"}),
                fields.clone()
            ),
            50_400_000
        );
        assert_eq!(
            waited(
                json!({"until_field": "renewal", "offset": "9h"}),
                fields.clone()
            ),
            169_200_000
        );
        assert_eq!(
            waited(json!({"until_field": "call"}), fields.clone()),
            1_800_000
        );
        assert_eq!(waited(json!({"until_field": "ms"}), fields.clone()), 5000);
        assert_eq!(
            waited(json!({"until_field": "past"}), fields.clone()),
            0,
            "past dates wait 0"
        );
        assert!(matches!(
            error(json!({"until_field": "bad"}), fields.clone()),
            ActionError::InvalidInput(message) if message.contains("holds text \"soon\", not a date")
        ));
        assert!(matches!(
            error(json!({"until_field": "flag"}), fields.clone()),
            ActionError::InvalidInput(message) if message.contains("holds true/false true")
        ));
        assert!(matches!(
            error(json!({"until_field": "renewal"}), json!({"renewal": "2099-01-01"})),
            ActionError::InvalidInput(message) if message.contains("more than 366 days")
        ));
    }

    #[test]
    fn a_missing_date_fails_or_takes_missing() {
        assert!(matches!(
            error(json!({"until_field": "renewal"}), json!({})),
            ActionError::InvalidInput(message) if message.contains("no `renewal`") && message.contains("on_missing")
        ));
        assert!(matches!(
            error(
                json!({"until_field": "renewal", "on_missing": "fail"}),
                json!({"renewal": ""})
            ),
            ActionError::InvalidInput(_)
        ));
        let result = wait(&input(
            json!({"until_field": "renewal", "on_missing": "continue"}),
            json!({"renewal": null}),
        ))
        .expect("continues");
        assert!(matches!(result.outcome, Outcome::Next(ref port) if port == "missing"));
        // No contact at all is missing too.
        let mut no_contact = input(
            json!({"until_field": "renewal", "on_missing": "continue"}),
            json!({}),
        );
        no_contact.contact = None;
        assert!(
            matches!(wait(&no_contact).map(|r| r.outcome), Ok(Outcome::Next(port)) if port == "missing")
        );
    }

    #[test]
    fn bad_config_names_the_field() {
        for (config, expected) in [
            (
                json!({}),
                "set one of `duration`, `duration_ms`, `until_field`",
            ),
            (
                json!({"duration": "1h", "duration_ms": 5}),
                "set only one of",
            ),
            (
                json!({"duration": "soon"}),
                "`duration` `soon` is not a duration",
            ),
            (json!({"duration": "30"}), "`duration` `30` needs a unit"),
            (
                json!({"duration": "-1d"}),
                "`duration` must not be negative",
            ),
            (
                json!({"duration": "400d"}),
                "`duration` is longer than the longest wait",
            ),
            (
                json!({"duration_ms": -1}),
                "`duration_ms` must be a whole number",
            ),
            (
                json!({"duration": "1h", "offset": "1h"}),
                "`offset` only goes with `until_field`",
            ),
            (
                json!({"until_field": "x", "offset": "tomorrow"}),
                "`offset` `tomorrow` is not a duration",
            ),
            (
                json!({"until_field": "x", "on_missing": "skip"}),
                "`on_missing` is `skip`",
            ),
            (
                json!({"duration": "1h", "delay": 1}),
                "`delay` is not a setting",
            ),
        ] {
            match error(config.clone(), json!({})) {
                ActionError::InvalidConfig(message) => {
                    assert!(message.starts_with(expected), "{config}: {message}");
                }
                other => panic!("{config}: {other:?}"),
            }
        }
    }

    #[test]
    fn describes_itself() {
        let descriptor = Wait::describe();
        let ports: Vec<&str> = descriptor
            .ports
            .iter()
            .map(|port| port.name.as_str())
            .collect();
        assert_eq!(ports, ["next", "missing"]);
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
