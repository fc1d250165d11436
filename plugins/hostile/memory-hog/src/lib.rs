//! Hostile test plugin: `run` allocates and touches memory until it is stopped.
use postdog_sdk::prelude::*;

struct Hog;

impl Action for Hog {
    fn describe() -> Descriptor {
        Descriptor::new("Hog", "Allocates memory forever")
    }

    fn run(_input: ActionInput) -> Result<ActionResult, ActionError> {
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; 1 << 20];
            for byte in chunk.iter_mut().step_by(4096) {
                *byte = 1;
            }
            chunks.push(std::hint::black_box(chunk));
        }
    }
}

postdog_sdk::export_action!(Hog);
