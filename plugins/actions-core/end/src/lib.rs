//! `postdog/end`: ends the run. It has no settings and no ports; a branch that simply
//! stops can end at any node without an outgoing edge too, but an explicit end makes
//! the intent visible in the flow editor.

// `deny`, not `forbid`: the SDK's export macro allows unsafe code in the glue it generates.
#![deny(unsafe_code)]

use actions_core_common::Config;
use postdog_sdk::prelude::*;

struct End;

fn end(input: &ActionInput) -> Result<ActionResult, ActionError> {
    Config::of(input)?.only(&[])?;
    Ok(ActionResult::end())
}

impl Action for End {
    fn describe() -> Descriptor {
        Descriptor::new("End", "Ends the run.").with_config_schema(json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {}
        }))
    }

    fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
        end(&input)
    }
}

postdog_sdk::export_action!(End);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(config: &str) -> Result<ActionResult, ActionError> {
        end(&ActionInput {
            run_id: "r".into(),
            step_id: "e".into(),
            config: config.into(),
            contact: None,
            trigger: "{}".into(),
            variables: "{}".into(),
        })
    }

    #[test]
    fn ends() {
        for config in ["{}", "null"] {
            let result = run(config).expect("ends");
            assert!(matches!(result.outcome, Outcome::End));
            assert!(result.effects.is_empty());
        }
        assert!(
            matches!(run(r#"{"x": 1}"#), Err(ActionError::InvalidConfig(m)) if m.starts_with("`x` is not a setting"))
        );
        assert!(End::describe().ports.is_empty());
    }
}
