//! Hostile test plugin: `run` never returns. The host must stop it at its deadline.
use postdog_sdk::prelude::*;

struct Spin;

impl Action for Spin {
    fn describe() -> Descriptor {
        Descriptor::new("Spin", "Loops forever")
    }

    fn run(_input: ActionInput) -> Result<ActionResult, ActionError> {
        let mut counter: u64 = 0;
        loop {
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
    }
}

postdog_sdk::export_action!(Spin);
