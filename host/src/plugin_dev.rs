//! `postdog plugin run`: a plugin author's local loop. Loads a component, checks that it
//! implements the expected world, calls one of its functions with JSON input, and prints
//! the result as JSON (or a clear error). Key-value data lives in a throw-away database
//! unless `--data-dir` is given, so state can be kept between runs when wanted.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::ids::{InstallId, TenantId};
use crate::runtime::abi::action_types::ActionInput;
use crate::runtime::{
    CallContext, Grants, LoadedPlugin, PluginConfig, Runtime, RuntimeConfig, World,
};
use crate::storage::Storage;

/// Options of `postdog plugin run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The component file.
    pub component: PathBuf,
    /// The world the component must implement.
    pub world: World,
    /// The function to call; `None` picks the world's main one.
    pub call: Option<String>,
    /// The call's input as JSON.
    pub input: String,
    /// `key=value` configuration.
    pub config: Vec<(String, String)>,
    /// `key=value` secrets.
    pub secrets: Vec<(String, String)>,
    /// Capabilities to grant (`kv`, `http:<host>`, …).
    pub grants: Vec<String>,
    /// Keep kv data in this directory's database instead of a throw-away one.
    pub data_dir: Option<PathBuf>,
}

/// Splits `key=value`.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

/// Runs the call and returns the JSON to print.
pub async fn run(options: RunOptions) -> anyhow::Result<Value> {
    let input: Value = serde_json::from_str(&options.input)
        .with_context(|| format!("--input is not valid JSON: `{}`", options.input))?;
    let grants = Grants::parse(&options.grants)?;

    let scratch;
    let data_dir = match &options.data_dir {
        Some(dir) => dir.clone(),
        None => {
            scratch = tempfile::tempdir().context("while creating a scratch directory")?;
            scratch.path().to_path_buf()
        }
    };
    let storage = Storage::open_data_dir(&data_dir)
        .await
        .with_context(|| format!("while opening the database in {}", data_dir.display()))?;
    storage
        .migrate()
        .await
        .context("while migrating the dev database")?;
    let tenant = dev_tenant(&storage).await?;

    let runtime = Runtime::new(
        RuntimeConfig {
            cache_dir: Some(data_dir.join("cache").join("plugins")),
            ..RuntimeConfig::default()
        },
        Some(storage.clone()),
    )?;
    let bytes = std::fs::read(&options.component)
        .with_context(|| format!("while reading {}", options.component.display()))?;
    let plugin = {
        let runtime = runtime.clone();
        let world = options.world;
        tokio::task::spawn_blocking(move || runtime.load_as(&bytes, world)).await??
    };
    let ctx = Arc::new(
        CallContext::new(
            tenant,
            InstallId::new("dev-install"),
            plugin_name(&options.component),
        )
        .with_grants(grants)
        .with_config(PluginConfig {
            values: options.config.into_iter().collect(),
            secrets: options.secrets.into_iter().collect(),
        }),
    );
    let result = call(&runtime, &plugin, &ctx, options.call.as_deref(), input).await;
    storage.close().await;
    result
}

async fn dev_tenant(storage: &Storage) -> anyhow::Result<TenantId> {
    let tenants = storage.list_tenants().await?;
    if let Some(tenant) = tenants.into_iter().find(|tenant| tenant.name == "dev") {
        return Ok(tenant.id);
    }
    Ok(storage.create_tenant("dev", "business").await?.id)
}

fn plugin_name(path: &std::path::Path) -> String {
    path.file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or("plugin")
        .to_string()
}

fn arg<T: serde::de::DeserializeOwned>(input: Value, what: &str) -> anyhow::Result<T> {
    serde_json::from_value(input).with_context(|| format!("--input does not describe {what}"))
}

/// A friendly action input: every field optional.
fn action_input(input: Value) -> anyhow::Result<ActionInput> {
    let Value::Object(mut fields) = input else {
        bail!(
            "--input for a flow action is a JSON object like {{\"config\":{{}},\"contact\":{{\"name\":\"Ada\"}},\"trigger\":{{}}}}"
        );
    };
    let mut text = |name: &str, default: Value| fields.remove(name).unwrap_or(default);
    let run_id = text("run_id", json!("dev-run"));
    let step_id = text("step_id", json!("dev-step"));
    let config = text("config", json!({}));
    let contact = text("contact", Value::Null);
    let trigger = text("trigger", json!({}));
    let variables = text("variables", json!({}));
    if let Some(unknown) = fields.keys().next() {
        bail!(
            "unknown field `{unknown}` in --input; use config, contact, trigger, variables, run_id, step_id"
        );
    }
    Ok(ActionInput {
        run_id: run_id.as_str().unwrap_or("dev-run").to_string(),
        step_id: step_id.as_str().unwrap_or("dev-step").to_string(),
        config: config.to_string(),
        contact: (!contact.is_null()).then(|| contact.to_string()),
        trigger: trigger.to_string(),
        variables: variables.to_string(),
    })
}

fn outcome<T: serde::Serialize, E: serde::Serialize>(
    result: Result<T, E>,
) -> anyhow::Result<Value> {
    Ok(match result {
        Ok(value) => json!({ "ok": serde_json::to_value(value)? }),
        Err(error) => json!({ "error": serde_json::to_value(error)? }),
    })
}

/// Calls `function` (default: the world's main one) of a loaded plugin with JSON
/// `input`. Runtime failures come back as a `PluginError` inside the `anyhow::Error`;
/// other errors mean the input did not fit the function.
pub(crate) async fn call(
    runtime: &Runtime,
    plugin: &LoadedPlugin,
    ctx: &Arc<CallContext>,
    function: Option<&str>,
    input: Value,
) -> anyhow::Result<Value> {
    let function = function.unwrap_or(match plugin.world() {
        World::FlowAction => "run",
        World::MessagingChannel => "send",
        World::SocialChannel => "publish",
        World::Integration => "handle-webhook",
    });
    Ok(match (plugin.world(), function) {
        (World::FlowAction, "describe") => {
            json!({ "ok": serde_json::to_value(runtime.action_describe(plugin, ctx).await?)? })
        }
        (World::FlowAction, "run") => outcome(
            runtime
                .action_run(plugin, ctx, &action_input(input)?)
                .await?,
        )?,
        (World::MessagingChannel, "send") => outcome(
            runtime
                .channel_send(plugin, ctx, &arg(input, "an outbound message")?)
                .await?,
        )?,
        (World::MessagingChannel, "verify-webhook") => outcome(
            runtime
                .channel_verify_webhook(plugin, ctx, &arg(input, "an HTTP request")?)
                .await?,
        )?,
        (World::MessagingChannel, "handle-webhook") => outcome(
            runtime
                .channel_handle_webhook(plugin, ctx, &arg(input, "an HTTP request")?)
                .await?,
        )?,
        (World::MessagingChannel, "list-templates") => {
            outcome(runtime.channel_list_templates(plugin, ctx).await?)?
        }
        (World::MessagingChannel, "submit-template") => outcome(
            runtime
                .channel_submit_template(plugin, ctx, &arg(input, "a template definition")?)
                .await?,
        )?,
        (World::MessagingChannel, "mark-read") => {
            let id: String = arg(input, "a provider message id (a string)")?;
            outcome(runtime.channel_mark_read(plugin, ctx, &id).await?)?
        }
        (World::MessagingChannel, "account-status") => {
            outcome(runtime.channel_account_status(plugin, ctx).await?)?
        }
        (World::SocialChannel, "publish") => outcome(
            runtime
                .social_publish(plugin, ctx, &arg(input, "a post")?)
                .await?,
        )?,
        (World::SocialChannel, "metrics") => outcome(
            runtime
                .social_metrics(
                    plugin,
                    ctx,
                    &arg::<Vec<String>>(input, "a list of post ids")?,
                )
                .await?,
        )?,
        (World::Integration, "handle-webhook") => outcome(
            runtime
                .integration_handle_webhook(plugin, ctx, &arg(input, "an HTTP request")?)
                .await?,
        )?,
        (World::Integration, "on-event") => outcome(
            runtime
                .integration_on_event(plugin, ctx, &arg(input, "a kernel event")?)
                .await?,
        )?,
        (World::Integration, "sync") => {
            let cursor: Option<String> = arg(input, "a cursor (a string or null)")?;
            outcome(
                runtime
                    .integration_sync(plugin, ctx, cursor.as_deref())
                    .await?,
            )?
        }
        (world, other) => bail!(
            "`{other}` is not a function of the {world} world; use one of: {}",
            match world {
                World::FlowAction => "describe, run",
                World::MessagingChannel =>
                    "send, verify-webhook, handle-webhook, list-templates, submit-template, mark-read, account-status",
                World::SocialChannel => "publish, metrics",
                World::Integration => "handle-webhook, on-event, sync",
            }
        ),
    })
}
