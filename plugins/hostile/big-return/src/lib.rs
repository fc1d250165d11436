//! Hostile test plugin: `run` returns an output of `config.size_mb` megabytes (default
//! 100) — far more than the host accepts across the boundary.
use postdog_sdk::prelude::*;

struct Big;

impl Action for Big {
    fn describe() -> Descriptor {
        Descriptor::new("Big", "Returns a huge output")
    }

    fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
        let size_mb = input
            .config_json()
            .get("size_mb")
            .and_then(Value::as_u64)
            .unwrap_or(100);
        let mut result = ActionResult::end();
        // Build the JSON text directly: `"xxxx…"`.
        let mut output = String::with_capacity((size_mb as usize) << 20);
        output.push('"');
        output.extend(std::iter::repeat_n(
            'x',
            ((size_mb as usize) << 20).saturating_sub(2),
        ));
        output.push('"');
        result.output = output;
        Ok(result)
    }
}

postdog_sdk::export_action!(Big);
