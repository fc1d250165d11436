//! Hostile test plugin: `run` performs the kv operation in its config and reports the
//! exact result: `{"op":"set","key","value"}`, `{"op":"set_size","key","bytes"}`,
//! `{"op":"get","key"}`, `{"op":"list","prefix"}`, `{"op":"delete","key"}`. Output is
//! `{"ok": …}` or `{"error": {"kind", "detail"}}`.
use postdog_sdk::kv::KvError;
use postdog_sdk::prelude::*;

struct Probe;

fn kind(error: &KvError) -> &'static str {
    match error {
        KvError::Denied => "denied",
        KvError::InvalidKey(_) => "invalid-key",
        KvError::TooLarge(_) => "too-large",
        KvError::QuotaExceeded(_) => "quota-exceeded",
        KvError::Unavailable(_) => "unavailable",
    }
}

impl Action for Probe {
    fn describe() -> Descriptor {
        Descriptor::new("KV probe", "Runs one kv operation and reports the result")
    }

    fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
        let config = input.config_json();
        let text = |name: &str| {
            config
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let result: Result<Value, KvError> = match text("op").as_str() {
            "set" => kv::set(&text("key"), text("value").as_bytes()).map(|()| json!(null)),
            "set_size" => {
                let bytes = config.get("bytes").and_then(Value::as_u64).unwrap_or(0) as usize;
                kv::set(&text("key"), &vec![b'v'; bytes]).map(|()| json!(null))
            }
            "get" => kv::get(&text("key")).map(|value| {
                json!(value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
            }),
            "list" => kv::list_keys(&text("prefix")).map(|keys| json!(keys)),
            "delete" => kv::delete(&text("key")).map(|existed| json!(existed)),
            other => return Err(ActionError::InvalidConfig(format!("unknown op `{other}`"))),
        };
        let output = match result {
            Ok(value) => json!({ "ok": value }),
            Err(error) => {
                json!({ "error": { "kind": kind(&error), "detail": format!("{error:?}") } })
            }
        };
        Ok(ActionResult::end().with_output(output))
    }
}

postdog_sdk::export_action!(Probe);
