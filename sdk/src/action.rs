//! Flow actions: one step of an automation flow. Implement [`Action`] and export it
//! with [`export_action!`](crate::export_action).

use std::time::Duration;

use serde_json::Value;

use crate::message::Effect;

pub use crate::__private::bindings::postdog::plugin::action_types::{
    ActionError, ActionInput, ActionResult, Descriptor, Outcome, Port,
};

/// A flow action. Both functions are called on a fresh instance each time; keep state
/// in [`kv`](crate::kv).
pub trait Action {
    /// What the action is, how to configure it, and its output ports.
    fn describe() -> Descriptor;
    /// Runs one step: decide the outcome and the effects for the kernel to apply.
    fn run(input: ActionInput) -> Result<ActionResult, ActionError>;
}

fn parse(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or(Value::Null)
}

fn string_at(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(text) => Some(text.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

impl ActionInput {
    /// The node's configuration as JSON.
    pub fn config_json(&self) -> Value {
        parse(&self.config)
    }

    /// One configuration value as text (numbers and booleans are rendered), if set.
    pub fn config_str(&self, key: &str) -> Option<String> {
        string_at(&self.config_json(), key)
    }

    /// The contact as JSON (`id`, `name`, `phone`, `email`, `tags`, `fields`), if any.
    pub fn contact_json(&self) -> Option<Value> {
        self.contact.as_deref().map(parse)
    }

    /// One contact attribute as text, if set.
    pub fn contact_str(&self, key: &str) -> Option<String> {
        string_at(&self.contact_json()?, key)
    }

    /// The trigger's payload as JSON.
    pub fn trigger_json(&self) -> Value {
        parse(&self.trigger)
    }

    /// Earlier steps' outputs as JSON, keyed by step id.
    pub fn variables_json(&self) -> Value {
        parse(&self.variables)
    }
}

impl ActionResult {
    fn with_outcome(outcome: Outcome) -> Self {
        Self {
            outcome,
            effects: Vec::new(),
            output: "null".to_string(),
        }
    }

    /// Continue along `port`.
    pub fn next(port: impl Into<String>) -> Self {
        Self::with_outcome(Outcome::Next(port.into()))
    }

    /// End the run.
    pub fn end() -> Self {
        Self::with_outcome(Outcome::End)
    }

    /// Pause for `duration`, then continue along `next`.
    pub fn wait(duration: Duration) -> Self {
        Self::with_outcome(Outcome::Wait(duration_ms(duration)))
    }

    /// Wait for the contact's reply (port `reply`) or `timeout` (port `timeout`).
    pub fn wait_for_reply(timeout: Duration) -> Self {
        Self::with_outcome(Outcome::WaitForReply(duration_ms(timeout)))
    }

    /// Adds an effect for the kernel to apply.
    pub fn with_effect(mut self, effect: Effect) -> Self {
        self.effects.push(effect);
        self
    }

    /// Sets the data later steps see under this step's id.
    pub fn with_output(mut self, output: Value) -> Self {
        self.output = output.to_string();
        self
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Descriptor {
    /// A descriptor with a title and a description, an empty config schema and no ports.
    pub fn new(title: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            description: description.into(),
            config_schema: r#"{"type":"object"}"#.to_string(),
            ports: Vec::new(),
        }
    }

    /// Sets the JSON Schema of the node's configuration.
    pub fn with_config_schema(mut self, schema: Value) -> Self {
        self.config_schema = schema.to_string();
        self
    }

    /// Adds an output port.
    pub fn with_port(mut self, name: impl Into<String>, description: impl Into<String>) -> Self {
        self.ports.push(Port {
            name: name.into(),
            description: description.into(),
        });
        self
    }
}
