//! `postdog/add-tag`: adds a tag to the run's contact (an effect the kernel applies).
//! Configuration: `tag`, a template such as `plan-{{steps.ask.reply}}`.

// `deny`, not `forbid`: the SDK's export macro allows unsafe code in the glue it generates.
#![deny(unsafe_code)]

use actions_core_common::{tag_schema, tag_step};
use postdog_sdk::prelude::*;

struct Tag;

impl Action for Tag {
    fn describe() -> Descriptor {
        Descriptor::new(
            "Add tag",
            "Adds a tag to the run's contact. The tag may use placeholders such as {{trigger.plan}} or {{steps.<step>.reply}}.",
        )
        .with_config_schema(tag_schema("add"))
        .with_port("next", "The change was requested")
    }

    fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
        tag_step(&input, true)
    }
}

postdog_sdk::export_action!(Tag);
