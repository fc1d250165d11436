//! `postdog/assign`: assigns the run's conversation to an agent, or to an agent of a team
//! picked by a strategy. The assignment is an effect the kernel applies.
//!
//! Configuration: `agent_id` and/or `team_id` (at least one; both are templates, e.g.
//! `{{contact.fields.account_manager}}`), `strategy` (`round-robin`, the default, or
//! `least-busy`) for picking within the team.

// `deny`, not `forbid`: the SDK's export macro allows unsafe code in the glue it generates.
#![deny(unsafe_code)]

use actions_core_common::{Config, context, invalid_config, render};
use postdog_sdk::message::{AssignEffect, AssignStrategy};
use postdog_sdk::prelude::*;

struct Assign;

fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "agent_id": {"type": "string", "minLength": 1, "description": "The agent to assign to"},
            "team_id": {"type": "string", "minLength": 1, "description": "The team to pick an agent from"},
            "strategy": {
                "type": "string",
                "enum": ["round-robin", "least-busy"],
                "description": "How to pick an agent within the team: in turn (default) or the one with the fewest open conversations"
            }
        }
    })
}

/// A rendered id setting; `None` when unset or empty once rendered.
fn id(
    config: &Config,
    key: &str,
    context: &actions_core_common::postdog_expr::Context,
) -> Result<Option<String>, ActionError> {
    Ok(match config.str(key)? {
        Some(text) => {
            Some(render(key, text, context)?.trim().to_string()).filter(|id| !id.is_empty())
        }
        None => None,
    })
}

fn assign(input: &ActionInput) -> Result<ActionResult, ActionError> {
    let config = Config::of(input)?;
    config.only(&["agent_id", "team_id", "strategy"])?;
    if !config.has("agent_id") && !config.has("team_id") {
        return Err(ActionError::InvalidConfig(
            "set `agent_id`, `team_id` or both".into(),
        ));
    }
    let strategy = match config.str("strategy")? {
        None | Some("round-robin") => AssignStrategy::RoundRobin,
        Some("least-busy") => AssignStrategy::LeastBusy,
        Some(other) => {
            return Err(invalid_config(
                "strategy",
                format!("is `{other}`; use round-robin or least-busy"),
            ));
        }
    };
    let context = context(input);
    let agent_id = id(&config, "agent_id", &context)?;
    let team_id = id(&config, "team_id", &context)?;
    if agent_id.is_none() && team_id.is_none() {
        return Err(ActionError::InvalidInput(
            "`agent_id` and `team_id` are empty once their placeholders are filled in".into(),
        ));
    }
    let output = json!({
        "agent_id": agent_id,
        "team_id": team_id,
        "strategy": if strategy == AssignStrategy::LeastBusy { "least-busy" } else { "round-robin" },
    });
    Ok(ActionResult::next("next")
        .with_effect(Effect::Assign(AssignEffect {
            agent_id,
            team_id,
            strategy,
        }))
        .with_output(output))
}

impl Action for Assign {
    fn describe() -> Descriptor {
        Descriptor::new(
            "Assign conversation",
            "Assigns the run's conversation to an agent, or to an agent of a team picked round-robin or least-busy. Ids may use placeholders such as {{contact.fields.account_manager}}.",
        )
        .with_config_schema(schema())
        .with_port("next", "The assignment was requested")
    }

    fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
        assign(&input)
    }
}

postdog_sdk::export_action!(Assign);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(config: Value) -> Result<ActionResult, ActionError> {
        assign(&ActionInput {
            run_id: "r".into(),
            step_id: "a".into(),
            config: config.to_string(),
            contact: Some(json!({"fields": {"manager": "agent-7"}}).to_string()),
            trigger: "{}".into(),
            variables: "{}".into(),
        })
    }

    fn effect(config: Value) -> AssignEffect {
        match run(config.clone()) {
            Ok(result) => match result.effects.as_slice() {
                [Effect::Assign(assign)] => assign.clone(),
                other => panic!("{config}: {other:?}"),
            },
            Err(error) => panic!("{config}: {error:?}"),
        }
    }

    #[test]
    fn assigns() {
        let agent = effect(json!({"agent_id": "{{contact.fields.manager}}"}));
        assert_eq!(agent.agent_id.as_deref(), Some("agent-7"));
        assert_eq!(agent.team_id, None);
        assert_eq!(agent.strategy, AssignStrategy::RoundRobin);
        let team = effect(json!({"team_id": "support", "strategy": "least-busy"}));
        assert_eq!(
            (team.agent_id, team.team_id.as_deref()),
            (None, Some("support"))
        );
        assert_eq!(team.strategy, AssignStrategy::LeastBusy);
        let both = effect(json!({"agent_id": "a1", "team_id": "t1"}));
        assert_eq!(
            (both.agent_id.as_deref(), both.team_id.as_deref()),
            (Some("a1"), Some("t1"))
        );
    }

    #[test]
    fn bad_config() {
        for (config, expected) in [
            (json!({}), "set `agent_id`, `team_id` or both"),
            (
                json!({"strategy": "least-busy"}),
                "set `agent_id`, `team_id` or both",
            ),
            (
                json!({"team_id": "t", "strategy": "random"}),
                "`strategy` is `random`",
            ),
            (json!({"agent_id": 3}), "`agent_id` must be text"),
            (
                json!({"agent_id": "{{contact}"}),
                "`agent_id`: this `{{` is never closed",
            ),
        ] {
            match run(config.clone()) {
                Err(ActionError::InvalidConfig(message)) => {
                    assert!(message.starts_with(expected), "{config}: {message}");
                }
                other => panic!("{config}: {other:?}"),
            }
        }
        assert!(matches!(
            run(json!({"agent_id": "{{contact.fields.nobody}}"})),
            Err(ActionError::InvalidInput(_))
        ));
    }
}
