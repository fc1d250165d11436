//! `hello-action`: the example flow action. Greets the run's contact by sending a text
//! message (as an effect — the kernel sends it), optionally counting greetings per
//! contact in the install's key-value store.
//!
//! Configuration (node config wins over install config):
//! - `greeting` (text, default `Hello`);
//! - `count_greetings` (boolean, default false; needs the `kv` capability).

use postdog_sdk::prelude::*;

struct Hello;

impl Action for Hello {
    fn describe() -> Descriptor {
        Descriptor::new("Say hello", "Sends a greeting to the contact")
            .with_config_schema(json!({
                "type": "object",
                "properties": {
                    "greeting": { "type": "string", "default": "Hello" },
                    "count_greetings": { "type": "boolean", "default": false }
                },
                "additionalProperties": false
            }))
            .with_port("next", "The greeting was queued")
    }

    fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
        let greeting = input
            .config_str("greeting")
            .or_else(|| config::get("greeting"))
            .unwrap_or_else(|| "Hello".to_string());
        let name = input
            .contact_str("name")
            .unwrap_or_else(|| "there".to_string());
        let message = format!("{greeting}, {name}!");
        let mut output = json!({ "message": message });

        let count_greetings = input
            .config_json()
            .get("count_greetings")
            .and_then(Value::as_bool)
            .or_else(|| config::get("count_greetings").map(|value| value == "true"))
            .unwrap_or(false);
        if count_greetings {
            let key = format!(
                "greetings:{}",
                input
                    .contact_str("id")
                    .unwrap_or_else(|| "anonymous".into())
            );
            let count = kv::get_json::<u64>(&key)
                .map_err(|error| ActionError::Retryable(format!("reading {key}: {error}")))?
                .unwrap_or(0)
                + 1;
            kv::set_json(&key, &count)
                .map_err(|error| ActionError::Retryable(format!("writing {key}: {error}")))?;
            output["count"] = json!(count);
        }
        log::info(&format!("greeting {name}"));
        Ok(ActionResult::next("next")
            .with_effect(Effect::send_message(MessageContent::text(message)))
            .with_output(output))
    }
}

postdog_sdk::export_action!(Hello);
