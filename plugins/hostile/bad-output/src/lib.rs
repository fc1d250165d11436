//! Hostile test plugin: `run` returns malformed JSON where the ABI promises JSON — in
//! its output (`config.where` = "output") or in a set-field effect ("effect").
use postdog_sdk::message::SetFieldEffect;
use postdog_sdk::prelude::*;

struct BadOutput;

impl Action for BadOutput {
    fn describe() -> Descriptor {
        Descriptor::new("Bad output", "Returns malformed JSON")
    }

    fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
        let mut result = ActionResult::next("next");
        if input.config_str("where").as_deref() == Some("effect") {
            result.effects.push(Effect::SetField(SetFieldEffect {
                contact_id: None,
                field: "plan".into(),
                value: "{not json".into(),
            }));
        } else {
            result.output = "{not json".into();
        }
        Ok(result)
    }
}

postdog_sdk::export_action!(BadOutput);
