//! Hostile test plugin: `run` panics.
use postdog_sdk::prelude::*;

struct Panics;

impl Action for Panics {
    fn describe() -> Descriptor {
        Descriptor::new("Panics", "Panics on purpose")
    }

    fn run(_input: ActionInput) -> Result<ActionResult, ActionError> {
        panic!("hostile plugin panicked on purpose");
    }
}

postdog_sdk::export_action!(Panics);
