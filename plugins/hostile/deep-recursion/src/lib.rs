//! Hostile test plugin: `run` recurses without bound.
use postdog_sdk::prelude::*;

struct Deep;

#[inline(never)]
#[allow(unconditional_recursion)] // on purpose: the host must stop it
fn descend(depth: u64) -> u64 {
    // Not a tail call: the addition happens after the recursive call returns.
    std::hint::black_box(descend(std::hint::black_box(depth + 1))) + 1
}

impl Action for Deep {
    fn describe() -> Descriptor {
        Descriptor::new("Deep", "Recurses forever")
    }

    fn run(_input: ActionInput) -> Result<ActionResult, ActionError> {
        let depth = descend(0);
        Ok(ActionResult::end().with_output(json!({ "depth": depth })))
    }
}

postdog_sdk::export_action!(Deep);
