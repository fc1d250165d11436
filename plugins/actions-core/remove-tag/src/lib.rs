//! `postdog/remove-tag`: removes a tag from the run's contact (an effect the kernel applies).
//! Configuration: `tag`, a template such as `plan-{{steps.ask.reply}}`.

// `deny`, not `forbid`: the SDK's export macro allows unsafe code in the glue it generates.
#![deny(unsafe_code)]

use actions_core_common::{tag_schema, tag_step};
use postdog_sdk::prelude::*;

struct Untag;

impl Action for Untag {
    fn describe() -> Descriptor {
        Descriptor::new(
            "Remove tag",
            "Removes a tag from the run's contact. The tag may use placeholders such as {{trigger.plan}} or {{steps.<step>.reply}}.",
        )
        .with_config_schema(tag_schema("remove"))
        .with_port("next", "The change was requested")
    }

    fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
        tag_step(&input, false)
    }
}

postdog_sdk::export_action!(Untag);
