//! Hostile test plugin: `run` fetches `config.url` and reports exactly what happened, so
//! tests can assert the host's typed refusal: output `{"status", "body_len"}` or
//! `{"error": {"kind", "detail"}}`.
use postdog_sdk::prelude::*;

struct Probe;

impl Action for Probe {
    fn describe() -> Descriptor {
        Descriptor::new("HTTP probe", "Fetches a URL and reports the result")
    }

    fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
        let url = input
            .config_str("url")
            .ok_or_else(|| ActionError::InvalidConfig("set `url`".into()))?;
        let output = match http::fetch(&http::Request::get(url)) {
            Ok(response) => json!({ "status": response.status, "body_len": response.body.len() }),
            Err(error) => {
                json!({ "error": { "kind": error.kind(), "detail": format!("{error:?}") } })
            }
        };
        Ok(ActionResult::end().with_output(output))
    }
}

postdog_sdk::export_action!(Probe);
