//! Automation flows: a JSON graph of triggers, action nodes (installed flow-action
//! plugins) and edges from named output ports; validation that names the node of every
//! problem; immutable published versions (a run stays on the version it started with);
//! and the engine, which runs each step as a durable job.
//!
//! A step job calls the node's action plugin, applies the effects it returns (sends go
//! through the messaging outbox with an idempotency key per run, step and effect, so a
//! step that runs twice sends once), records the step and moves the run in one
//! transaction guarded by the run's visit counter, and queues the next step: at once,
//! after a wait (the job's `run_at` *is* the wait, so it survives restarts), or — for
//! wait-for-reply — when the contact's next message arrives or a timeout job fires.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value, json};

mod triggers;

pub use triggers::{SIGNATURE_HEADER, WebhookStart, WebhookTriggerError};

use crate::jobs::{JobFailure, Jobs};
use crate::marketplace::{Marketplace, MarketplaceError};
use crate::messaging::{Messaging, SendError, SendRequest};
use crate::runtime::abi::{action_types as at, types};
use crate::storage::{
    ContactEdit, FlowVersion, Job, NewJob, Run, RunChange, Step, StorageError, TenantDb, now_ms,
};

/// One problem found by validation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The trigger or node it concerns, if one.
    pub node: Option<String>,
    /// Where in the graph (a JSON Pointer).
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn problem(node: Option<&str>, path: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        node: node.map(str::to_string),
        path: path.into(),
        message: message.into(),
    }
}

/// How a keyword trigger matches.
#[derive(Debug, Clone)]
pub enum KeywordMatch {
    /// The whole message equals the keyword.
    Exact(String),
    /// The message contains the keyword.
    Contains(String),
    /// The message matches a regular expression (linear-time engine).
    Regex(regex::Regex),
}

/// What starts runs.
#[derive(Debug, Clone)]
pub enum TriggerKind {
    /// Any inbound message (optionally on one channel install).
    InboundMessage {
        /// Only messages through this install.
        install: Option<String>,
    },
    /// An inbound message matching a keyword.
    Keyword {
        /// Only messages through this install.
        install: Option<String>,
        /// The match.
        pattern: KeywordMatch,
        /// Case-sensitive matching (default: no).
        case_sensitive: bool,
    },
    /// `POST /v1/flows/{id}/runs`.
    Api,
    /// Started by an agent from the inbox (also `POST /v1/flows/{id}/runs`).
    Manual,
    /// A POST to the flow's own URL, `/hooks/flows/{token}` (HMAC-signed when the flow
    /// has a webhook secret).
    Webhook {
        /// A JSON pointer into the body to the contact: an id, phone number or email.
        contact: Option<String>,
        /// Create the contact when the phone number or email is unknown (default yes).
        create_contact: bool,
    },
    /// A change to a contact.
    ContactEvent {
        /// Which change.
        event: ContactEventKind,
        /// For tag events: only this tag (any tag if unset).
        tag: Option<String>,
        /// For field changes: only this field (any field if unset).
        field: Option<String>,
        /// For consent events: only this channel (any if unset).
        channel: Option<String>,
    },
    /// A cron schedule in the tenant's (or its own) time zone.
    Schedule {
        /// The expression as written.
        cron: String,
        /// It parsed.
        schedule: crate::cron::Schedule,
        /// An IANA zone overriding the tenant's.
        timezone: Option<String>,
        /// Who runs: nobody in particular, or each contact with a tag or in a segment.
        audience: Audience,
    },
}

/// The contact changes a `contact_event` trigger reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactEventKind {
    /// A contact was created.
    Created,
    /// A tag was added.
    TagAdded,
    /// A tag was removed.
    TagRemoved,
    /// A custom field changed value.
    FieldChanged,
    /// Consent for a channel became opted in.
    OptedIn,
    /// Consent for a channel became opted out.
    OptedOut,
}

impl ContactEventKind {
    const NAMES: [(&'static str, ContactEventKind); 6] = [
        ("contact_created", ContactEventKind::Created),
        ("tag_added", ContactEventKind::TagAdded),
        ("tag_removed", ContactEventKind::TagRemoved),
        ("field_changed", ContactEventKind::FieldChanged),
        ("opted_in", ContactEventKind::OptedIn),
        ("opted_out", ContactEventKind::OptedOut),
    ];

    /// Its name in graphs and trigger payloads.
    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, kind)| *kind == self)
            .map_or("contact_created", |(name, _)| name)
    }

    fn parse(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, kind)| *kind)
    }
}

/// Who a scheduled flow runs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// One run with no contact.
    Nobody,
    /// A run for each contact with this tag.
    Tag(String),
    /// A run for each contact in this segment.
    Segment(String),
}

/// A trigger.
#[derive(Debug, Clone)]
pub struct TriggerDef {
    /// Its id (edges leave from it).
    pub id: String,
    /// What it reacts to.
    pub kind: TriggerKind,
}

/// An action node.
#[derive(Debug, Clone)]
pub struct NodeDef {
    /// Its id.
    pub id: String,
    /// The action plugin's name, e.g. `postdog/send-message`.
    pub action: String,
    /// A version requirement on the plugin.
    pub version: semver::VersionReq,
    /// Its configuration.
    pub config: Value,
}

/// An edge from a trigger or a node's port to a node.
#[derive(Debug, Clone)]
pub struct EdgeDef {
    /// The trigger or node it leaves.
    pub from: String,
    /// The port (`next` for triggers).
    pub port: String,
    /// The node it enters.
    pub to: String,
}

/// A parsed flow graph.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Triggers.
    pub triggers: Vec<TriggerDef>,
    /// Nodes.
    pub nodes: Vec<NodeDef>,
    /// Edges.
    pub edges: Vec<EdgeDef>,
    /// Whether a contact may be in several runs of the flow at once.
    pub reentry: bool,
}

impl Graph {
    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&NodeDef> {
        self.nodes.iter().find(|node| node.id == id)
    }

    /// Where `port` of `from` leads.
    pub fn target(&self, from: &str, port: &str) -> Option<&str> {
        self.edges
            .iter()
            .find(|edge| edge.from == from && edge.port == port)
            .map(|edge| edge.to.as_str())
    }
}

const TRIGGER_TYPES: &str =
    "inbound_message, keyword, api, manual, webhook, contact_event or schedule";

fn parse_contact_event(
    object: &Map<String, Value>,
    id: &str,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<TriggerKind> {
    let names = || {
        ContactEventKind::NAMES
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(name) = text_field(object, "event") else {
        problems.push(problem(
            Some(id),
            format!("{path}/event"),
            format!("a contact_event trigger needs an `event`: {}", names()),
        ));
        return None;
    };
    let Some(event) = ContactEventKind::parse(&name) else {
        problems.push(problem(
            Some(id),
            format!("{path}/event"),
            format!("unknown contact event `{name}`; use {}", names()),
        ));
        return None;
    };
    let tag = text_field(object, "tag");
    let field = text_field(object, "field");
    let channel = text_field(object, "channel");
    let misplaced = [
        (
            "tag",
            tag.is_some(),
            matches!(
                event,
                ContactEventKind::TagAdded | ContactEventKind::TagRemoved
            ),
        ),
        (
            "field",
            field.is_some(),
            event == ContactEventKind::FieldChanged,
        ),
        (
            "channel",
            channel.is_some(),
            matches!(
                event,
                ContactEventKind::OptedIn | ContactEventKind::OptedOut
            ),
        ),
    ];
    for (key, given, allowed) in misplaced {
        if given && !allowed {
            problems.push(problem(
                Some(id),
                format!("{path}/{key}"),
                format!("`{key}` does not apply to `{name}` events"),
            ));
        }
    }
    let tag = match tag.map(|tag| crate::contacts::normalize_tag(&tag)) {
        Some(Err(error)) => {
            problems.push(problem(Some(id), format!("{path}/tag"), error.to_string()));
            None
        }
        Some(Ok(tag)) => Some(tag),
        None => None,
    };
    Some(TriggerKind::ContactEvent {
        event,
        tag,
        field,
        channel,
    })
}

fn parse_schedule(
    object: &Map<String, Value>,
    id: &str,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<TriggerKind> {
    let Some(cron) = text_field(object, "cron") else {
        problems.push(problem(
            Some(id),
            format!("{path}/cron"),
            "a schedule trigger needs `cron`, e.g. `0 9 * * MON-FRI` (09:00 on weekdays)",
        ));
        return None;
    };
    let schedule = match crate::cron::Schedule::parse(&cron) {
        Ok(schedule) => schedule,
        Err(error) => {
            problems.push(problem(Some(id), format!("{path}/cron"), error.to_string()));
            return None;
        }
    };
    let timezone = text_field(object, "timezone");
    if let Some(zone) = &timezone
        && let Err(error) = crate::cron::time_zone(zone)
    {
        problems.push(problem(
            Some(id),
            format!("{path}/timezone"),
            error.to_string(),
        ));
        return None;
    }
    let audience = match object.get("audience") {
        None | Some(Value::Null) => Audience::Nobody,
        Some(Value::Object(audience)) => {
            match (text_field(audience, "tag"), text_field(audience, "segment")) {
                (Some(tag), None) => Audience::Tag(tag),
                (None, Some(segment)) => Audience::Segment(segment),
                _ => {
                    problems.push(problem(
                        Some(id),
                        format!("{path}/audience"),
                        "`audience` is `{\"tag\": …}` or `{\"segment\": <segment id>}` (one of them)",
                    ));
                    return None;
                }
            }
        }
        Some(_) => {
            problems.push(problem(
                Some(id),
                format!("{path}/audience"),
                "`audience` is an object: `{\"tag\": …}` or `{\"segment\": <segment id>}`",
            ));
            return None;
        }
    };
    Some(TriggerKind::Schedule {
        cron,
        schedule,
        timezone,
        audience,
    })
}

fn text_field(object: &Map<String, Value>, key: &str) -> Option<String> {
    object.get(key).and_then(Value::as_str).map(str::to_string)
}

fn is_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Parses a graph, reporting every structural problem (shape, ids, trigger options,
/// edges). Action-dependent checks are in [`Flows::validate`].
pub fn parse_graph(value: &Value) -> Result<Graph, Vec<Problem>> {
    let mut problems = Vec::new();
    let Some(root) = value.as_object() else {
        return Err(vec![problem(
            None,
            "",
            "a flow graph is a JSON object with `triggers`, `nodes` and `edges`",
        )]);
    };
    for key in root.keys() {
        if !["triggers", "nodes", "edges", "settings"].contains(&key.as_str()) {
            problems.push(problem(
                None,
                format!("/{key}"),
                format!("unknown key `{key}`; a graph has triggers, nodes, edges and settings"),
            ));
        }
    }
    let list = |key: &str, problems: &mut Vec<Problem>| -> Vec<Value> {
        match root.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => items.clone(),
            Some(_) => {
                problems.push(problem(
                    None,
                    format!("/{key}"),
                    format!("`{key}` is a list"),
                ));
                Vec::new()
            }
        }
    };
    let mut ids = HashSet::new();
    let mut triggers = Vec::new();
    for (index, item) in list("triggers", &mut problems).iter().enumerate() {
        let path = format!("/triggers/{index}");
        let Some(object) = item.as_object() else {
            problems.push(problem(
                None,
                path,
                "a trigger is an object with `id` and `type`",
            ));
            continue;
        };
        let Some(id) = text_field(object, "id").filter(|id| is_id(id)) else {
            problems.push(problem(
                None,
                format!("{path}/id"),
                "a trigger needs an `id` of 1-64 letters, digits, - or _",
            ));
            continue;
        };
        if !ids.insert(id.clone()) {
            problems.push(problem(
                Some(&id),
                format!("{path}/id"),
                format!("the id `{id}` is used twice"),
            ));
        }
        let install = text_field(object, "channel_install");
        let kind = match object.get("type").and_then(Value::as_str) {
            Some("inbound_message") => Some(TriggerKind::InboundMessage { install }),
            Some("keyword") => {
                let keyword = text_field(object, "keyword").unwrap_or_default();
                let case_sensitive = object
                    .get("case_sensitive")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let mode = object
                    .get("match")
                    .and_then(Value::as_str)
                    .unwrap_or("exact");
                if keyword.trim().is_empty() {
                    problems.push(problem(
                        Some(&id),
                        format!("{path}/keyword"),
                        "a keyword trigger needs a non-empty `keyword`",
                    ));
                    None
                } else {
                    let pattern = match mode {
                        "exact" => Some(KeywordMatch::Exact(keyword.trim().to_string())),
                        "contains" => Some(KeywordMatch::Contains(keyword.clone())),
                        "regex" => match regex::RegexBuilder::new(&keyword)
                            .case_insensitive(!case_sensitive)
                            .size_limit(1 << 20)
                            .build()
                        {
                            Ok(regex) => Some(KeywordMatch::Regex(regex)),
                            Err(error) => {
                                problems.push(problem(
                                    Some(&id),
                                    format!("{path}/keyword"),
                                    format!("the regular expression does not compile: {error}"),
                                ));
                                None
                            }
                        },
                        other => {
                            problems.push(problem(
                                Some(&id),
                                format!("{path}/match"),
                                format!("`match` is exact, contains or regex, not `{other}`"),
                            ));
                            None
                        }
                    };
                    pattern.map(|pattern| TriggerKind::Keyword {
                        install,
                        pattern,
                        case_sensitive,
                    })
                }
            }
            Some("api") => Some(TriggerKind::Api),
            Some("manual") => Some(TriggerKind::Manual),
            Some("webhook") => {
                let contact = text_field(object, "contact");
                if let Some(pointer) = &contact
                    && !pointer.starts_with('/')
                {
                    problems.push(problem(
                        Some(&id),
                        format!("{path}/contact"),
                        format!("`contact` is a JSON pointer into the request body, e.g. `/customer/phone`, not `{pointer}`"),
                    ));
                }
                let create_contact = object
                    .get("create_contact")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                Some(TriggerKind::Webhook {
                    contact,
                    create_contact,
                })
            }
            Some("contact_event") => parse_contact_event(object, &id, &path, &mut problems),
            Some("schedule") => parse_schedule(object, &id, &path, &mut problems),
            Some(other) => {
                problems.push(problem(
                    Some(&id),
                    format!("{path}/type"),
                    format!("unknown trigger type `{other}`; use {TRIGGER_TYPES}"),
                ));
                None
            }
            None => {
                problems.push(problem(
                    Some(&id),
                    format!("{path}/type"),
                    "a trigger needs a `type`",
                ));
                None
            }
        };
        if let Some(kind) = kind {
            triggers.push(TriggerDef { id, kind });
        }
    }
    let mut nodes = Vec::new();
    for (index, item) in list("nodes", &mut problems).iter().enumerate() {
        let path = format!("/nodes/{index}");
        let Some(object) = item.as_object() else {
            problems.push(problem(
                None,
                path,
                "a node is an object with `id`, `action` and `config`",
            ));
            continue;
        };
        let Some(id) = text_field(object, "id").filter(|id| is_id(id)) else {
            problems.push(problem(
                None,
                format!("{path}/id"),
                "a node needs an `id` of 1-64 letters, digits, - or _",
            ));
            continue;
        };
        if !ids.insert(id.clone()) {
            problems.push(problem(
                Some(&id),
                format!("{path}/id"),
                format!("the id `{id}` is used twice"),
            ));
        }
        for key in object.keys() {
            if !["id", "action", "version", "config", "title", "position"].contains(&key.as_str()) {
                problems.push(problem(
                    Some(&id),
                    format!("{path}/{key}"),
                    format!("unknown key `{key}`"),
                ));
            }
        }
        let Some(action) = text_field(object, "action").filter(|a| a.contains('/')) else {
            problems.push(problem(Some(&id), format!("{path}/action"), "a node needs an `action`: an installed flow-action plugin such as postdog/send-message"));
            continue;
        };
        let requirement = text_field(object, "version").unwrap_or_else(|| "*".into());
        let version = match semver::VersionReq::parse(&requirement) {
            Ok(version) => version,
            Err(error) => {
                problems.push(problem(
                    Some(&id),
                    format!("{path}/version"),
                    format!("`{requirement}` is not a version requirement: {error}"),
                ));
                continue;
            }
        };
        let config = object.get("config").cloned().unwrap_or_else(|| json!({}));
        if !config.is_object() {
            problems.push(problem(
                Some(&id),
                format!("{path}/config"),
                "`config` is an object",
            ));
            continue;
        }
        nodes.push(NodeDef {
            id,
            action,
            version,
            config,
        });
    }
    let mut edges = Vec::new();
    for (index, item) in list("edges", &mut problems).iter().enumerate() {
        let path = format!("/edges/{index}");
        let Some(object) = item.as_object() else {
            problems.push(problem(
                None,
                path,
                "an edge is an object with `from`, `port` and `to`",
            ));
            continue;
        };
        let (Some(from), Some(to)) = (text_field(object, "from"), text_field(object, "to")) else {
            problems.push(problem(None, path, "an edge needs `from` and `to`"));
            continue;
        };
        let port = text_field(object, "port").unwrap_or_else(|| "next".into());
        edges.push(EdgeDef { from, port, to });
    }
    let reentry = root
        .get("settings")
        .and_then(|settings| settings.get("reentry"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if triggers.is_empty() && problems.is_empty() {
        problems.push(problem(
            None,
            "/triggers",
            "a flow needs at least one trigger",
        ));
    }
    if nodes.is_empty() && problems.is_empty() {
        problems.push(problem(None, "/nodes", "a flow needs at least one node"));
    }
    if problems.is_empty() {
        Ok(Graph {
            triggers,
            nodes,
            edges,
            reentry,
        })
    } else {
        Err(problems)
    }
}

/// Whether an action pauses the run (so a cycle through it is not a busy loop).
fn waits(action: &str) -> bool {
    action.ends_with("/wait") || action.ends_with("/wait-for-reply")
}

/// Checks a node config against the subset of JSON Schema action descriptors use
/// (type, required, properties, enum, minimum, maximum, additionalProperties, items).
pub fn check_schema(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else {
        return;
    };
    if let Some(kind) = schema.get("type") {
        let kinds: Vec<&str> = match kind {
            Value::String(kind) => vec![kind.as_str()],
            Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let matches = kinds.iter().any(|kind| match *kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => true,
        });
        if !kinds.is_empty() && !matches {
            out.push(format!(
                "{} must be {}",
                if path.is_empty() { "the config" } else { path },
                kinds.join(" or ")
            ));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        out.push(format!(
            "{path} must be one of {}",
            Value::Array(options.clone())
        ));
    }
    if let Some(number) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && number < min
        {
            out.push(format!("{path} must be at least {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && number > max
        {
            out.push(format!("{path} must be at most {max}"));
        }
    }
    if let Some(text) = value.as_str()
        && let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && (text.chars().count() as u64) < min
    {
        out.push(format!("{path} must have at least {min} characters"));
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(key) = required.as_str()
                && !object.contains_key(key)
            {
                out.push(format!("{path}/{key} is required"));
            }
        }
        for (key, item) in object {
            match properties.and_then(|properties| properties.get(key)) {
                Some(property) => check_schema(property, item, &format!("{path}/{key}"), out),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    out.push(format!("{path}/{key} is not a known setting"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (index, item) in array.iter().enumerate() {
            check_schema(items, item, &format!("{path}/{index}"), out);
        }
    }
}

/// An action resolved for validation: the install and its descriptor.
#[derive(Clone, Debug)]
struct ResolvedAction {
    install_id: String,
    ports: Vec<String>,
}

struct Inner {
    marketplace: Marketplace,
    jobs: Jobs,
    messaging: Messaging,
    descriptors: Mutex<HashMap<String, (Vec<String>, Value)>>,
    live: Mutex<HashMap<String, (Instant, Arc<LiveFlows>)>>,
    /// Published versions by (tenant, flow, version), parsed: they never change.
    versions: Mutex<HashMap<VersionKey, Arc<(FlowVersion, Graph)>>>,
}

/// Tenant, flow and version number.
type VersionKey = (String, String, i64);

/// At most this many steps run in one `flow.step` job before the run goes back to the
/// queue (so one long run cannot hold a worker; graphs without waits are acyclic).
const CHAIN_LIMIT: usize = 32;

/// A change a step makes to the run's own contact; applied when the step is recorded.
#[derive(Debug, Clone)]
enum ContactOp {
    AddTag(String),
    RemoveTag(String),
    /// `null` removes the field.
    SetField(String, Value),
}

fn apply_ops(ops: &[ContactOp], tags: &mut Vec<String>, fields: &mut Value) {
    for op in ops {
        match op {
            ContactOp::AddTag(tag) | ContactOp::RemoveTag(tag) => {
                tags.retain(|existing| existing != tag);
                if matches!(op, ContactOp::AddTag(_)) {
                    tags.push(tag.clone());
                }
            }
            ContactOp::SetField(field, value) => {
                if !fields.is_object() {
                    *fields = json!({});
                }
                if let Some(fields) = fields.as_object_mut() {
                    if value.is_null() {
                        fields.remove(field);
                    } else {
                        fields.insert(field.clone(), value.clone());
                    }
                }
            }
        }
    }
}

/// How one node of a chain went.
enum NodeRun {
    /// It ran: the step to record and where the run goes.
    Ran(Step, at::Outcome),
    /// It should run again later (an action or effect asked for a retry).
    Retry(String),
    /// It failed for good (the step's input, start, error and effect reports).
    Failed(Value, i64, String, Option<Value>),
}

/// A tenant's live flows, cached for a second.
struct LiveFlows {
    /// Whether the tenant has any flow (if not, no run can wait for a reply).
    any: bool,
    /// The published version of each enabled flow, parsed.
    published: Vec<(FlowVersion, Graph)>,
}

/// The flow service. Cheap to clone.
#[derive(Clone)]
pub struct Flows {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flows").finish_non_exhaustive()
    }
}

/// Why a run could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The flow or contact does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The flow cannot be started this way.
    #[error("{0}")]
    Invalid(String),
    /// The contact is in an active run of this flow and re-entry is off.
    #[error("the contact is already in an active run of this flow (re-entry is off)")]
    AlreadyRunning,
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A published version with its parsed graph, as cached.
type ParsedVersion = Arc<(FlowVersion, Graph)>;

fn step_job(db: &TenantDb, run_id: &str, node: &str, visit: i64, run_at: i64) -> NewJob {
    let mut job = NewJob::new(
        "flows",
        "flow.step",
        Some(db.tenant_id()),
        json!({ "run_id": run_id, "node": node, "visit": visit }),
    );
    job.run_at = run_at;
    job.max_attempts = 5;
    job.idempotency_key = Some(format!("flow.step:{run_id}:{visit}"));
    job
}

fn timeout_job(db: &TenantDb, run_id: &str, node: &str, visit: i64, run_at: i64) -> NewJob {
    let mut job = NewJob::new(
        "flows",
        "flow.timeout",
        Some(db.tenant_id()),
        json!({ "run_id": run_id, "node": node, "visit": visit }),
    );
    job.run_at = run_at;
    job.idempotency_key = Some(format!("flow.timeout:{run_id}:{visit}"));
    job
}

fn ms(wait: u64) -> i64 {
    i64::try_from(wait)
        .unwrap_or(i64::MAX / 4)
        .min(i64::MAX / 4)
}

impl Flows {
    /// The service; registers the `flow.step` and `flow.timeout` jobs and listens to
    /// inbound messages.
    pub fn new(marketplace: Marketplace, jobs: Jobs, messaging: Messaging) -> Self {
        let flows = Self {
            inner: Arc::new(Inner {
                marketplace,
                jobs: jobs.clone(),
                messaging: messaging.clone(),
                descriptors: Mutex::default(),
                live: Mutex::default(),
                versions: Mutex::default(),
            }),
        };
        let this = flows.clone();
        jobs.register("flow.step", move |job| {
            let this = this.clone();
            async move { this.run_step(job).await }
        });
        let this = flows.clone();
        jobs.register("flow.timeout", move |job| {
            let this = this.clone();
            async move { this.run_timeout(job).await }
        });
        let this = flows.clone();
        jobs.register("flow.schedule", move |job| {
            let this = this.clone();
            async move { this.run_schedule(job).await }
        });
        flows.listen_to_contact_changes();
        messaging.set_flows(flows.clone());
        flows
    }

    fn storage_db(&self, tenant: &str) -> TenantDb {
        self.inner
            .jobs
            .storage()
            .tenant(&crate::ids::TenantId::new(tenant))
    }

    /// Forgets the tenant's cached live flows (after a publish or a change).
    pub fn invalidate(&self, tenant_id: &str) {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant_id);
    }

    async fn describe(
        &self,
        db: &TenantDb,
        install_id: &str,
    ) -> Result<(Vec<String>, Value), MarketplaceError> {
        let handle = self.inner.marketplace.action(db, install_id).await?;
        if let Some(known) = self
            .inner
            .descriptors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(handle.digest())
        {
            return Ok(known.clone());
        }
        let descriptor = handle.describe().await?;
        let ports: Vec<String> = descriptor
            .ports
            .iter()
            .map(|port| port.name.clone())
            .collect();
        let schema: Value = serde_json::from_str(&descriptor.config_schema).unwrap_or(json!({}));
        self.inner
            .descriptors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(handle.digest().to_string(), (ports.clone(), schema.clone()));
        Ok((ports, schema))
    }

    /// Validates a graph against this tenant's installs: every problem, each with the
    /// node it concerns; on success the parsed graph and node id → install id.
    pub async fn validate(
        &self,
        db: &TenantDb,
        value: &Value,
    ) -> Result<Result<(Graph, BTreeMap<String, String>), Vec<Problem>>, StorageError> {
        let graph = match parse_graph(value) {
            Ok(graph) => graph,
            Err(problems) => return Ok(Err(problems)),
        };
        let mut problems = Vec::new();
        let installs = db.list_installs().await?;
        let mut resolved: BTreeMap<String, ResolvedAction> = BTreeMap::new();
        for (index, node) in graph.nodes.iter().enumerate() {
            let path = format!("/nodes/{index}");
            let candidates: Vec<_> = installs
                .iter()
                .filter(|install| install.plugin == node.action)
                .collect();
            let Some(install) = candidates.iter().find(|install| {
                semver::Version::parse(&install.version)
                    .is_ok_and(|version| node.version.matches(&version))
            }) else {
                let message = if candidates.is_empty() {
                    format!(
                        "unknown action `{}`: install it from the marketplace first",
                        node.action
                    )
                } else {
                    format!(
                        "`{}` is installed at {}, which does not match `{}`",
                        node.action,
                        candidates
                            .iter()
                            .map(|i| i.version.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        node.version
                    )
                };
                problems.push(problem(Some(&node.id), format!("{path}/action"), message));
                continue;
            };
            match self.describe(db, &install.id).await {
                Ok((ports, schema)) => {
                    let mut errors = Vec::new();
                    check_schema(&schema, &node.config, "", &mut errors);
                    for error in errors {
                        problems.push(problem(
                            Some(&node.id),
                            format!("{path}/config"),
                            format!("config{error}"),
                        ));
                    }
                    resolved.insert(
                        node.id.clone(),
                        ResolvedAction {
                            install_id: install.id.clone(),
                            ports,
                        },
                    );
                }
                Err(error) => problems.push(problem(
                    Some(&node.id),
                    format!("{path}/action"),
                    format!("the action `{}` cannot be used: {error}", node.action),
                )),
            }
        }
        // Conditions are parsed and type-checked now, against the tenant's custom
        // fields, so a typo is a validation problem rather than a failed run.
        let schema = postdog_expr::Schema {
            contact_fields: db
                .custom_fields()
                .await?
                .into_iter()
                .map(|field| {
                    let kind = match field.kind {
                        crate::storage::FieldKind::Number => postdog_expr::FieldType::Number,
                        crate::storage::FieldKind::Boolean => postdog_expr::FieldType::Bool,
                        crate::storage::FieldKind::Date => postdog_expr::FieldType::Date,
                        crate::storage::FieldKind::Text | crate::storage::FieldKind::Select => {
                            postdog_expr::FieldType::Text
                        }
                    };
                    (field.key, kind)
                })
                .collect(),
        };
        for (index, node) in graph.nodes.iter().enumerate() {
            if let Some(expression) = node.config.get("expression").and_then(Value::as_str)
                && node.action.ends_with("/condition")
            {
                let checked = postdog_expr::parse(expression)
                    .and_then(|parsed| postdog_expr::check(&parsed, &schema));
                if let Err(error) = checked {
                    problems.push(problem(
                        Some(&node.id),
                        format!("/nodes/{index}/config/expression"),
                        format!("the condition does not check: {error}"),
                    ));
                }
            }
            for (key, value) in node.config.as_object().into_iter().flatten() {
                if let Some(text) = value.as_str()
                    && text.contains("{{")
                    && let Err(error) = postdog_expr::template_paths(text)
                {
                    problems.push(problem(
                        Some(&node.id),
                        format!("/nodes/{index}/config/{key}"),
                        format!("a placeholder in `{key}` is malformed: {error}"),
                    ));
                }
            }
        }
        let trigger_ids: HashSet<&str> = graph.triggers.iter().map(|t| t.id.as_str()).collect();
        let mut used_ports: HashMap<(String, String), usize> = HashMap::new();
        for (index, edge) in graph.edges.iter().enumerate() {
            let path = format!("/edges/{index}");
            if graph.node(&edge.to).is_none() {
                problems.push(problem(
                    Some(&edge.from),
                    format!("{path}/to"),
                    format!("the edge leads to `{}`, which is not a node", edge.to),
                ));
            }
            if trigger_ids.contains(edge.from.as_str()) {
                if edge.port != "next" {
                    problems.push(problem(
                        Some(&edge.from),
                        format!("{path}/port"),
                        "edges from a trigger leave from port `next`",
                    ));
                }
            } else if let Some(action) = resolved.get(&edge.from) {
                if !action.ports.contains(&edge.port) {
                    problems.push(problem(
                        Some(&edge.from),
                        format!("{path}/port"),
                        format!(
                            "node `{}` has no port `{}`; its ports are {}",
                            edge.from,
                            edge.port,
                            action.ports.join(", ")
                        ),
                    ));
                }
            } else if graph.node(&edge.from).is_none() {
                problems.push(problem(
                    None,
                    format!("{path}/from"),
                    format!(
                        "the edge leaves `{}`, which is neither a trigger nor a node",
                        edge.from
                    ),
                ));
            }
            *used_ports
                .entry((edge.from.clone(), edge.port.clone()))
                .or_default() += 1;
        }
        for ((from, port), count) in &used_ports {
            if *count > 1 {
                problems.push(problem(
                    Some(from),
                    "/edges",
                    format!(
                        "port `{port}` of `{from}` has {count} edges; a port leads to one node"
                    ),
                ));
            }
        }
        for trigger in &graph.triggers {
            if !used_ports.contains_key(&(trigger.id.clone(), "next".to_string())) {
                problems.push(problem(
                    Some(&trigger.id),
                    "/edges",
                    format!("trigger `{}` is not connected to a node", trigger.id),
                ));
            }
        }
        for node in &graph.nodes {
            if let Some(action) = resolved.get(&node.id) {
                for port in &action.ports {
                    if port != "error" && !used_ports.contains_key(&(node.id.clone(), port.clone()))
                    {
                        problems.push(problem(
                            Some(&node.id),
                            "/edges",
                            format!("port `{port}` of node `{}` is not connected", node.id),
                        ));
                    }
                }
            }
        }
        // Reachability from the triggers.
        let mut reached: HashSet<&str> = HashSet::new();
        let mut frontier: Vec<&str> = graph.triggers.iter().map(|t| t.id.as_str()).collect();
        while let Some(at) = frontier.pop() {
            for edge in graph.edges.iter().filter(|edge| edge.from == at) {
                if reached.insert(edge.to.as_str()) {
                    frontier.push(edge.to.as_str());
                }
            }
        }
        for node in &graph.nodes {
            if !reached.contains(node.id.as_str()) {
                problems.push(problem(
                    Some(&node.id),
                    "/nodes",
                    format!("node `{}` cannot be reached from any trigger", node.id),
                ));
            }
        }
        // Cycles must contain a wait.
        for cycle in cycles(&graph) {
            if !cycle
                .iter()
                .any(|id| graph.node(id).is_some_and(|node| waits(&node.action)))
            {
                problems.push(problem(
                    cycle.first().map(String::as_str),
                    "/edges",
                    format!(
                        "the loop {} has no wait in it and would run without pause",
                        cycle.join(" → ")
                    ),
                ));
            }
        }
        if problems.is_empty() {
            let actions = resolved
                .into_iter()
                .map(|(node, action)| (node, action.install_id))
                .collect();
            Ok(Ok((graph, actions)))
        } else {
            Ok(Err(problems))
        }
    }

    async fn live(&self, db: &TenantDb) -> Result<Arc<LiveFlows>, StorageError> {
        let tenant = db.tenant_id().as_str();
        if let Some((at, live)) = self
            .inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            && at.elapsed() < Duration::from_secs(1)
        {
            return Ok(live.clone());
        }
        let any = db.has_flows().await?;
        let published = if any {
            db.live_flows()
                .await?
                .into_iter()
                .filter_map(|version| {
                    let graph = parse_graph(&version.graph).ok()?;
                    Some((version, graph))
                })
                .collect()
        } else {
            Vec::new()
        };
        let live = Arc::new(LiveFlows { any, published });
        let mut map = self.inner.live.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.clear();
        }
        map.insert(tenant.to_string(), (Instant::now(), live.clone()));
        Ok(live)
    }

    /// Starts a run of `version` for `contact_id` from `trigger_id`, under the trigger's
    /// own key for the event when it has one (at most one run per key and flow).
    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        db: &TenantDb,
        version: &FlowVersion,
        graph: &Graph,
        trigger_id: &str,
        contact_id: Option<&str>,
        trigger: Value,
        trigger_key: Option<&str>,
    ) -> Result<Option<Run>, StorageError> {
        let first = graph.target(trigger_id, "next").map(str::to_string);
        let run = db
            .start_run(
                &version.flow_id,
                version.version,
                contact_id,
                !graph.reentry,
                trigger_key,
                &trigger,
                first.as_deref(),
                |run_id| match &first {
                    Some(node) => vec![step_job(db, run_id, node, 0, now_ms())],
                    None => Vec::new(),
                },
            )
            .await?;
        if run.is_some() {
            self.inner.jobs.wake();
        }
        Ok(run)
    }

    /// The published version of `flow_id` and the id of its trigger for runs started
    /// from `source` (`api` or `manual`, either one as a fallback).
    async fn api_entry(
        &self,
        db: &TenantDb,
        flow_id: &str,
        source: &str,
    ) -> Result<(ParsedVersion, String), StartError> {
        let flow = db
            .flow(flow_id)
            .await?
            .ok_or_else(|| StartError::NotFound(format!("no flow {flow_id}")))?;
        let version_number = flow.published_version.ok_or_else(|| {
            StartError::Invalid("the flow has no published version; publish it first".into())
        })?;
        let parsed = self
            .version(db, flow_id, version_number)
            .await
            .map_err(|failure| {
                if failure.retryable {
                    StartError::Storage(StorageError::Direct {
                        context: "reading a flow version",
                        message: failure.message,
                    })
                } else {
                    StartError::Invalid(format!("the published version: {}", failure.message))
                }
            })?;
        let graph = &parsed.1;
        let trigger = graph
            .triggers
            .iter()
            .find(|trigger| match trigger.kind {
                TriggerKind::Api => source == "api",
                TriggerKind::Manual => source == "manual",
                _ => false,
            })
            .or_else(|| {
                graph
                    .triggers
                    .iter()
                    .find(|t| matches!(t.kind, TriggerKind::Api | TriggerKind::Manual))
            })
            .ok_or_else(|| StartError::Invalid("the flow has no `api` or `manual` trigger".into()))?
            .id
            .clone();
        Ok((parsed, trigger))
    }

    /// Starts a run through the API (`api` or `manual` trigger).
    pub async fn start_by_api(
        &self,
        db: &TenantDb,
        flow_id: &str,
        contact_id: Option<&str>,
        payload: Value,
        source: &str,
    ) -> Result<Run, StartError> {
        let (parsed, trigger) = self.api_entry(db, flow_id, source).await?;
        self.start_one(db, &parsed, &trigger, contact_id, &payload, source)
            .await
    }

    async fn start_one(
        &self,
        db: &TenantDb,
        parsed: &ParsedVersion,
        trigger: &str,
        contact_id: Option<&str>,
        payload: &Value,
        source: &str,
    ) -> Result<Run, StartError> {
        if let Some(contact_id) = contact_id
            && db.get_contact(contact_id).await?.is_none()
        {
            return Err(StartError::NotFound(format!("no contact {contact_id}")));
        }
        let trigger_payload = json!({ "type": source, "trigger_id": trigger, "payload": payload });
        self.start(
            db,
            &parsed.0,
            &parsed.1,
            trigger,
            contact_id,
            trigger_payload,
            None,
        )
        .await?
        .ok_or(StartError::AlreadyRunning)
    }

    /// Enrolls many contacts at once (`POST /v1/flows/{id}/runs/batch`): one run each,
    /// started concurrently so their writes share commits. Each contact's outcome, in
    /// the order given.
    ///
    /// # Errors
    /// `NotFound` (flow), `Invalid` (not startable); per contact: `NotFound`,
    /// `AlreadyRunning`, `Storage`.
    pub async fn start_many(
        &self,
        db: &TenantDb,
        flow_id: &str,
        contact_ids: &[String],
        payload: &Value,
        source: &str,
    ) -> Result<Vec<Result<Run, StartError>>, StartError> {
        let (parsed, trigger) = self.api_entry(db, flow_id, source).await?;
        let mut outcomes = Vec::with_capacity(contact_ids.len());
        for chunk in contact_ids.chunks(64) {
            let starts = chunk.iter().map(|contact_id| {
                self.start_one(db, &parsed, &trigger, Some(contact_id), payload, source)
            });
            outcomes.extend(futures::future::join_all(starts).await);
        }
        Ok(outcomes)
    }

    /// Reacts to a stored inbound message: resumes runs waiting for the contact's reply
    /// and starts runs of flows whose triggers match.
    pub async fn on_inbound(
        &self,
        db: &TenantDb,
        install_id: &str,
        conversation_id: &str,
        contact_id: &str,
        message_id: &str,
        text: Option<&str>,
    ) -> Result<(), StorageError> {
        let live = self.live(db).await?;
        if !live.any {
            return Ok(());
        }
        for run in db.runs_waiting_for_reply(contact_id).await? {
            let Some(node) = run.current_node.clone() else {
                continue;
            };
            let Some(version) = db.flow_version(&run.flow_id, run.version).await? else {
                continue;
            };
            let Ok(graph) = parse_graph(&version.graph) else {
                continue;
            };
            let mut variables = run.variables.clone();
            variables[node.as_str()] =
                json!({ "reply": text.unwrap_or_default(), "message_id": message_id });
            let target = graph.target(&node, "reply").map(str::to_string);
            let jobs: Vec<NewJob> = target
                .iter()
                .map(|target| step_job(db, &run.id, target, run.visit, now_ms()))
                .collect();
            if db
                .resume_run(&run.id, run.visit, &variables, target.as_deref(), &jobs)
                .await?
            {
                self.inner.jobs.wake();
            }
        }
        for (version, graph) in &live.published {
            for trigger in &graph.triggers {
                let matched = match &trigger.kind {
                    TriggerKind::InboundMessage { install } => {
                        install.as_deref().is_none_or(|i| i == install_id)
                    }
                    TriggerKind::Keyword {
                        install,
                        pattern,
                        case_sensitive,
                    } => {
                        install.as_deref().is_none_or(|i| i == install_id)
                            && text
                                .is_some_and(|text| keyword_matches(pattern, *case_sensitive, text))
                    }
                    _ => false,
                };
                if !matched {
                    continue;
                }
                let payload = json!({
                    "type": "inbound_message",
                    "trigger_id": trigger.id,
                    "install_id": install_id,
                    "conversation_id": conversation_id,
                    "message_id": message_id,
                    "text": text,
                });
                // At most one run per flow per message, whichever trigger matched first.
                self.start(
                    db,
                    version,
                    graph,
                    &trigger.id,
                    Some(contact_id),
                    payload,
                    Some(&format!("message:{message_id}")),
                )
                .await?;
                break;
            }
        }
        Ok(())
    }

    async fn contact_json(
        &self,
        db: &TenantDb,
        contact_id: Option<&str>,
    ) -> Result<Option<Value>, StorageError> {
        let Some(id) = contact_id else {
            return Ok(None);
        };
        Ok(db.get_contact(id).await?.map(|contact| {
            json!({
                "id": contact.id, "name": contact.name, "phone": contact.phone, "email": contact.email,
                "tags": contact.tags, "fields": contact.fields,
            })
        }))
    }

    /// The `flow.step` job.
    /// A published version, parsed (cached: versions are immutable).
    async fn version(
        &self,
        db: &TenantDb,
        flow_id: &str,
        version: i64,
    ) -> Result<Arc<(FlowVersion, Graph)>, JobFailure> {
        let key = (
            db.tenant_id().as_str().to_string(),
            flow_id.to_string(),
            version,
        );
        if let Some(found) = self
            .inner
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(found.clone());
        }
        let stored = db
            .flow_version(flow_id, version)
            .await?
            .ok_or_else(|| JobFailure::permanent("the run's flow version is gone"))?;
        let graph =
            parse_graph(&stored.graph).map_err(|_| JobFailure::permanent("unreadable graph"))?;
        let parsed = Arc::new((stored, graph));
        let mut versions = self
            .inner
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if versions.len() > 10_000 {
            versions.clear();
        }
        versions.insert(key, parsed.clone());
        Ok(parsed)
    }

    /// The `flow.step` job: runs the run's node, then — as long as each step leads
    /// straight on to another node (no wait, no failure) — the following ones too, up to
    /// [`CHAIN_LIMIT`]; then records every step taken, the tag and field changes to the
    /// run's contact, the run's new position and its next job in ONE transaction.
    ///
    /// Why chained: a step per job cost a claim, two reads, an effect transaction, a
    /// record transaction and a completion — SQLite serializes writers, so that capped a
    /// node at a few hundred steps a second. Crash safety is unchanged: nothing of the
    /// chain is recorded until the final commit, so after a crash the job runs the whole
    /// chain again from the same visit; tag and field changes are applied only in that
    /// commit; sends and assignments are applied as their step runs but are idempotent
    /// (the outbox key is per run, visit and effect; an assignment keeps a team member
    /// already assigned). The contact the later steps see is the one the earlier steps
    /// changed (in memory until the commit).
    async fn run_step(&self, job: Job) -> Result<(), JobFailure> {
        let tenant = job
            .tenant_id
            .clone()
            .ok_or_else(|| JobFailure::permanent("no tenant"))?;
        let run_id = job.payload["run_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut node_id = job.payload["node"].as_str().unwrap_or_default().to_string();
        let visit = job.payload["visit"].as_i64().unwrap_or(-1);
        let db = self.storage_db(&tenant);
        let Some(run) = db.run(&run_id).await? else {
            return Ok(());
        };
        if run.visit != visit
            || !matches!(run.status.as_str(), "running" | "waiting")
            || run.waiting_for.as_deref() == Some("reply")
        {
            return Ok(()); // done by an earlier attempt, or cancelled
        }
        let parsed = self.version(&db, &run.flow_id, run.version).await?;
        let (version, graph) = (&parsed.0, &parsed.1);
        let mut contact = self.contact_json(&db, run.contact_id.as_deref()).await?;
        let mut variables = run.variables.clone();
        if !variables.is_object() {
            variables = json!({});
        }
        let last_attempt = job.attempts >= job.max_attempts;
        let mut steps: Vec<Step> = Vec::new();
        let mut ops: Vec<ContactOp> = Vec::new();
        let now = loop {
            let visit = run.visit + i64::try_from(steps.len()).unwrap_or(0);
            let first = steps.is_empty();
            let done_ops = ops.len();
            let ran = self
                .run_node(
                    &db,
                    &run,
                    graph,
                    version,
                    &node_id,
                    visit,
                    &mut contact,
                    &variables,
                    &mut ops,
                    first && last_attempt,
                )
                .await?;
            let (step, outcome) = match ran {
                NodeRun::Ran(step, outcome) => (step, outcome),
                // A later node of the chain: record the steps before it and give it a job
                // of its own, which retries or fails it exactly as if it came first.
                NodeRun::Retry(_) | NodeRun::Failed(..) if !first => {
                    ops.truncate(done_ops);
                    let change = RunChange {
                        status: "running".into(),
                        current_node: Some(node_id.clone()),
                        variables,
                        waiting_for: None,
                        wait_until: None,
                        error: None,
                    };
                    let jobs = vec![step_job(&db, &run.id, &node_id, visit, now_ms())];
                    self.record_chain(&db, &run, &steps, &ops, &change, &jobs)
                        .await?;
                    return Ok(());
                }
                NodeRun::Retry(message) => return Err(JobFailure::retry(message)),
                NodeRun::Failed(input, started, message, effects) => {
                    return self
                        .fail_step_with(
                            &db, &run, graph, &node_id, input, started, message, effects,
                        )
                        .await;
                }
            };
            variables[node_id.as_str()] = step.output.clone().unwrap_or(Value::Null);
            steps.push(step);
            let now = now_ms();
            match &outcome {
                at::Outcome::Next(port) => match graph.target(&node_id, port) {
                    Some(target) if steps.len() < CHAIN_LIMIT => {
                        node_id = target.to_string();
                    }
                    _ => break now,
                },
                _ => break now,
            }
        };
        let visit = run.visit + i64::try_from(steps.len()).unwrap_or(0) - 1;
        let outcome = steps
            .last()
            .and_then(|step| step.outcome.clone())
            .unwrap_or(Value::Null);
        let (change, jobs) =
            self.next_move(&db, &run, graph, &node_id, visit, &outcome, variables, now);
        self.record_chain(&db, &run, &steps, &ops, &change, &jobs)
            .await
    }

    /// Where the run goes after `node_id`'s step at `visit` ended with `outcome` (its
    /// recorded JSON form): the run's change and the job that continues it.
    #[allow(clippy::too_many_arguments)]
    fn next_move(
        &self,
        db: &TenantDb,
        run: &Run,
        graph: &Graph,
        node_id: &str,
        visit: i64,
        outcome: &Value,
        variables: Value,
        now: i64,
    ) -> (RunChange, Vec<NewJob>) {
        let completed = |variables| RunChange {
            status: "completed".into(),
            current_node: None,
            variables,
            waiting_for: None,
            wait_until: None,
            error: None,
        };
        if let Some(port) = outcome.get("next").and_then(Value::as_str) {
            return match graph.target(node_id, port) {
                Some(target) => (
                    RunChange {
                        status: "running".into(),
                        current_node: Some(target.into()),
                        variables,
                        waiting_for: None,
                        wait_until: None,
                        error: None,
                    },
                    vec![step_job(db, &run.id, target, visit + 1, now)],
                ),
                None => (completed(variables), Vec::new()),
            };
        }
        if let Some(wait) = outcome.get("wait_ms").and_then(Value::as_i64) {
            let until = now.saturating_add(wait);
            return match graph.target(node_id, "next") {
                Some(target) => (
                    RunChange {
                        status: "waiting".into(),
                        current_node: Some(target.into()),
                        variables,
                        waiting_for: Some("time".into()),
                        wait_until: Some(until),
                        error: None,
                    },
                    vec![step_job(db, &run.id, target, visit + 1, until)],
                ),
                None => (completed(variables), Vec::new()),
            };
        }
        if let Some(timeout) = outcome.get("wait_for_reply_ms").and_then(Value::as_i64) {
            let until = now.saturating_add(timeout);
            return (
                RunChange {
                    status: "waiting".into(),
                    current_node: Some(node_id.to_string()),
                    variables,
                    waiting_for: Some("reply".into()),
                    wait_until: Some(until),
                    error: None,
                },
                vec![timeout_job(db, &run.id, node_id, visit + 1, until)],
            );
        }
        (completed(variables), Vec::new())
    }

    /// Records a chain's steps with its contact changes, the run's move and `jobs`.
    async fn record_chain(
        &self,
        db: &TenantDb,
        run: &Run,
        steps: &[Step],
        ops: &[ContactOp],
        change: &RunChange,
        jobs: &[NewJob],
    ) -> Result<(), JobFailure> {
        let owned = ops.to_vec();
        let edit: ContactEdit = Arc::new(move |tags: &mut Vec<String>, fields: &mut Value| {
            apply_ops(&owned, tags, fields)
        });
        let contact = match (&run.contact_id, ops.is_empty()) {
            (Some(contact_id), false) => Some((contact_id.as_str(), &edit)),
            _ => None,
        };
        if db
            .record_steps(&run.id, steps, contact, change, jobs)
            .await?
            && !jobs.is_empty()
        {
            self.inner.jobs.wake();
        }
        Ok(())
    }

    /// Runs one node: calls its action and applies its effects — tag and field changes
    /// to the run's own contact into `ops` and `contact` (recorded with the step), sends
    /// and assignments at once (idempotently).
    #[allow(clippy::too_many_arguments)]
    async fn run_node(
        &self,
        db: &TenantDb,
        run: &Run,
        graph: &Graph,
        version: &FlowVersion,
        node_id: &str,
        visit: i64,
        contact: &mut Option<Value>,
        variables: &Value,
        ops: &mut Vec<ContactOp>,
        last_attempt: bool,
    ) -> Result<NodeRun, JobFailure> {
        let node = graph
            .node(node_id)
            .ok_or_else(|| JobFailure::permanent(format!("no node {node_id}")))?;
        let install_id = version.actions[node_id].as_str().unwrap_or_default();
        let mut visible = variables.clone();
        visible["_now_ms"] = json!(now_ms());
        let input = at::ActionInput {
            run_id: run.id.clone(),
            step_id: node_id.to_string(),
            config: node.config.to_string(),
            contact: contact.as_ref().map(Value::to_string),
            trigger: run.trigger.to_string(),
            variables: visible.to_string(),
        };
        let input_json = json!({ "config": node.config, "contact": contact, "trigger": run.trigger, "variables": variables });
        let started = now_ms();
        let outcome = match self.inner.marketplace.action(db, install_id).await {
            Ok(handle) => handle.run_action(&input).await,
            Err(error) => Err(error),
        };
        let result = match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(at::ActionError::Retryable(message))) if !last_attempt => {
                return Ok(NodeRun::Retry(format!(
                    "the action asked to retry: {message}"
                )));
            }
            Err(
                error @ (MarketplaceError::Plugin(_)
                | MarketplaceError::CircuitOpen { .. }
                | MarketplaceError::Storage(_)
                | MarketplaceError::Registry(_)),
            ) if !last_attempt => {
                return Ok(NodeRun::Retry(format!("the action failed: {error}")));
            }
            Ok(Err(error)) => {
                let message = action_error_text(&error);
                return Ok(NodeRun::Failed(input_json, started, message, None));
            }
            Err(error) => {
                return Ok(NodeRun::Failed(
                    input_json,
                    started,
                    format!("the action cannot run: {error}"),
                    None,
                ));
            }
        };
        let output: Value = serde_json::from_str(&result.output).unwrap_or(Value::Null);
        let mut reports = Vec::new();
        let purpose = node.config.get("purpose").and_then(Value::as_str);
        for (index, effect) in result.effects.iter().enumerate() {
            let applied = match self.contact_op(run, effect) {
                Some(Ok(op)) => match contact {
                    Some(current) => {
                        let report = apply_op_to_json(&op, current);
                        ops.push(op);
                        Ok(report)
                    }
                    None => Err(EffectError::Failed(format!(
                        "contact {} no longer exists",
                        run.contact_id.as_deref().unwrap_or("?")
                    ))),
                },
                Some(Err(error)) => Err(error),
                None => {
                    self.apply_effect(db, run, visit, index, effect, purpose)
                        .await
                }
            };
            match applied {
                Ok(report) => reports.push(report),
                Err(EffectError::Retry(message)) if !last_attempt => {
                    return Ok(NodeRun::Retry(message));
                }
                Err(EffectError::Retry(message) | EffectError::Failed(message)) => {
                    reports.push(json!({ "error": message }));
                    return Ok(NodeRun::Failed(
                        input_json,
                        started,
                        message,
                        Some(Value::Array(reports)),
                    ));
                }
            }
        }
        let outcome_json = match &result.outcome {
            at::Outcome::Next(port) => json!({ "next": port }),
            at::Outcome::Wait(wait) => json!({ "wait_ms": ms(*wait) }),
            at::Outcome::WaitForReply(timeout) => json!({ "wait_for_reply_ms": ms(*timeout) }),
            at::Outcome::End => json!("end"),
        };
        let step = Step {
            node_id: node_id.to_string(),
            visit,
            status: "ok".into(),
            input: input_json,
            output: Some(output),
            outcome: Some(outcome_json),
            effects: Some(Value::Array(reports)),
            error: None,
            started_at: started,
            finished_at: now_ms(),
        };
        Ok(NodeRun::Ran(step, result.outcome))
    }

    /// A tag or field effect on the run's own contact, as an op (`None`: another kind of
    /// effect, or one naming another contact — applied at once by `apply_effect`).
    fn contact_op(
        &self,
        run: &Run,
        effect: &types::Effect,
    ) -> Option<Result<ContactOp, EffectError>> {
        let own = |explicit: &Option<String>| {
            explicit.is_none() || explicit.as_deref() == run.contact_id.as_deref()
        };
        match effect {
            types::Effect::SetField(set) if own(&set.contact_id) && run.contact_id.is_some() => {
                let value: Value = serde_json::from_str(&set.value).unwrap_or(Value::Null);
                Some(Ok(ContactOp::SetField(set.field.clone(), value)))
            }
            types::Effect::AddTag(tag) | types::Effect::RemoveTag(tag)
                if own(&tag.contact_id) && run.contact_id.is_some() =>
            {
                Some(
                    crate::contacts::normalize_tag(&tag.tag)
                        .map_err(|error| EffectError::Failed(format!("tag `{}`: {error}", tag.tag)))
                        .map(|normalized| {
                            if matches!(effect, types::Effect::AddTag(_)) {
                                ContactOp::AddTag(normalized)
                            } else {
                                ContactOp::RemoveTag(normalized)
                            }
                        }),
                )
            }
            _ => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn fail_step_with(
        &self,
        db: &TenantDb,
        run: &Run,
        graph: &Graph,
        node_id: &str,
        input: Value,
        started: i64,
        message: String,
        effects: Option<Value>,
    ) -> Result<(), JobFailure> {
        let mut variables = run.variables.clone();
        if !variables.is_object() {
            variables = json!({});
        }
        variables[node_id] = json!({ "error": message });
        let (change, jobs) = match graph.target(node_id, "error") {
            Some(target) => (
                RunChange {
                    status: "running".into(),
                    current_node: Some(target.into()),
                    variables,
                    waiting_for: None,
                    wait_until: None,
                    error: None,
                },
                vec![step_job(db, &run.id, target, run.visit + 1, now_ms())],
            ),
            None => (
                RunChange {
                    status: "failed".into(),
                    current_node: Some(node_id.into()),
                    variables,
                    waiting_for: None,
                    wait_until: None,
                    error: Some(format!("step {node_id}: {message}")),
                },
                Vec::new(),
            ),
        };
        let step = Step {
            node_id: node_id.to_string(),
            visit: run.visit,
            status: "failed".into(),
            input,
            output: None,
            outcome: Some(json!({ "error_port": change.status == "running" })),
            effects,
            error: Some(message),
            started_at: started,
            finished_at: now_ms(),
        };
        if db.record_step(&run.id, &step, &change, &jobs).await? {
            self.inner.jobs.wake();
        }
        Ok(())
    }

    /// The `flow.timeout` job: a wait-for-reply that got no reply.
    async fn run_timeout(&self, job: Job) -> Result<(), JobFailure> {
        let tenant = job
            .tenant_id
            .clone()
            .ok_or_else(|| JobFailure::permanent("no tenant"))?;
        let run_id = job.payload["run_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let node_id = job.payload["node"].as_str().unwrap_or_default().to_string();
        let visit = job.payload["visit"].as_i64().unwrap_or(-1);
        let db = self.storage_db(&tenant);
        let Some(run) = db.run(&run_id).await? else {
            return Ok(());
        };
        if run.visit != visit || run.waiting_for.as_deref() != Some("reply") {
            return Ok(()); // the reply came first
        }
        let Some(version) = db.flow_version(&run.flow_id, run.version).await? else {
            return Ok(());
        };
        let Ok(graph) = parse_graph(&version.graph) else {
            return Ok(());
        };
        let mut variables = run.variables.clone();
        variables[node_id.as_str()] = json!({ "timed_out": true });
        let target = graph.target(&node_id, "timeout").map(str::to_string);
        let jobs: Vec<NewJob> = target
            .iter()
            .map(|t| step_job(&db, &run.id, t, visit, now_ms()))
            .collect();
        if db
            .resume_run(&run.id, visit, &variables, target.as_deref(), &jobs)
            .await?
        {
            self.inner.jobs.wake();
        }
        Ok(())
    }

    async fn apply_effect(
        &self,
        db: &TenantDb,
        run: &Run,
        visit: i64,
        index: usize,
        effect: &types::Effect,
        purpose: Option<&str>,
    ) -> Result<Value, EffectError> {
        let contact_of = |explicit: &Option<String>| -> Result<String, EffectError> {
            explicit
                .clone()
                .or_else(|| run.contact_id.clone())
                .ok_or_else(|| EffectError::Failed("the run has no contact".into()))
        };
        match effect {
            types::Effect::SendMessage(send) => {
                let contact_id = contact_of(&send.contact_id)?;
                let install_id = send
                    .channel_install
                    .clone()
                    .or_else(|| run.trigger["install_id"].as_str().map(str::to_string))
                    .ok_or_else(|| EffectError::Failed("no channel install: set `channel_install` on the node (the run was not started by a message)".into()))?;
                let mut request = SendRequest {
                    install_id,
                    contact_id: Some(contact_id),
                    to: None,
                    text: None,
                    template: None,
                    media: None,
                    interactive: None,
                    reply_to: None,
                    purpose: purpose.map(str::to_string),
                };
                match &send.content {
                    types::MessageContent::Text(text) => {
                        request.text = Some(crate::messaging::TextContent {
                            body: text.body.clone(),
                            preview_url: text.preview_url,
                        });
                    }
                    types::MessageContent::Template(template) => {
                        let components: Value =
                            serde_json::from_str(&template.components).unwrap_or(Value::Null);
                        request.template = Some(crate::messaging::TemplateContent {
                            name: template.name.clone(),
                            language: template.language.clone(),
                            variables: components.get("variables").cloned(),
                        });
                    }
                    types::MessageContent::Media(media) => {
                        request.media = Some(crate::messaging::MediaContent {
                            kind: format!("{:?}", media.kind).to_ascii_lowercase(),
                            url: media.url.clone(),
                            caption: media.caption.clone(),
                            filename: media.filename.clone(),
                        });
                    }
                    types::MessageContent::Interactive(json) => {
                        request.interactive =
                            Some(serde_json::from_str(json).unwrap_or(Value::Null));
                    }
                }
                let key = format!("flow:{}:{visit}:{index}", run.id);
                match self
                    .inner
                    .messaging
                    .send(db, request, Some(key), None)
                    .await
                {
                    Ok((message, _)) => Ok(json!({ "send_message": { "message_id": message.id } })),
                    Err(SendError::Storage(error)) => Err(EffectError::Retry(error.to_string())),
                    Err(SendError::Marketplace(MarketplaceError::CircuitOpen { .. })) => {
                        Err(EffectError::Retry("the channel's circuit is open".into()))
                    }
                    Err(error) => Err(EffectError::Failed(format!("send refused: {error}"))),
                }
            }
            types::Effect::SetField(set) => {
                let contact_id = contact_of(&set.contact_id)?;
                let value: Value = serde_json::from_str(&set.value).unwrap_or(Value::Null);
                self.change_contact(db, &contact_id, |_, fields| {
                    if let Some(fields) = fields.as_object_mut() {
                        if value.is_null() {
                            fields.remove(&set.field);
                        } else {
                            fields.insert(set.field.clone(), value.clone());
                        }
                    }
                })
                .await?;
                Ok(json!({ "set_field": { "field": set.field, "value": value } }))
            }
            types::Effect::AddTag(tag) | types::Effect::RemoveTag(tag) => {
                let add = matches!(effect, types::Effect::AddTag(_));
                let contact_id = contact_of(&tag.contact_id)?;
                let normalized = crate::contacts::normalize_tag(&tag.tag)
                    .map_err(|error| EffectError::Failed(format!("tag `{}`: {error}", tag.tag)))?;
                self.change_contact(db, &contact_id, |tags, _| {
                    tags.retain(|existing| existing != &normalized);
                    if add {
                        tags.push(normalized.clone());
                    }
                })
                .await?;
                Ok(json!({ if add { "add_tag" } else { "remove_tag" }: normalized }))
            }
            types::Effect::Assign(assign) => {
                let install = run.trigger["install_id"].as_str().unwrap_or_default();
                let contact_id = contact_of(&None)?;
                let conversation = db
                    .conversation_of(install, &contact_id)
                    .await
                    .map_err(|error| EffectError::Retry(error.to_string()))?
                    .ok_or_else(|| {
                        EffectError::Failed("the run has no conversation to assign".into())
                    })?;
                let retry = |error: StorageError| EffectError::Retry(error.to_string());
                let agent = match (&assign.agent_id, &assign.team_id) {
                    (Some(agent), _) => agent.clone(),
                    (None, Some(team_id)) => {
                        let team = db.team(team_id).await.map_err(retry)?.ok_or_else(|| {
                            EffectError::Failed(format!("there is no team {team_id}"))
                        })?;
                        // Already with someone of the team (also when this step runs
                        // again after a crash): keep it, so a turn is not taken twice.
                        if let Some(current) = &conversation.assignee
                            && team.members.contains(current)
                        {
                            return Ok(json!({ "assign": {
                                "conversation_id": conversation.id, "agent_id": current,
                                "team_id": team_id, "kept": true } }));
                        }
                        let picked = match assign.strategy {
                            types::AssignStrategy::LeastBusy => {
                                db.least_busy_team_member(team_id).await
                            }
                            types::AssignStrategy::RoundRobin => db.next_team_member(team_id).await,
                        };
                        picked.map_err(retry)?.ok_or_else(|| {
                            EffectError::Failed(format!("team {team_id} has no members"))
                        })?
                    }
                    (None, None) => {
                        return Err(EffectError::Failed(
                            "give an agent or a team to assign to".into(),
                        ));
                    }
                };
                db.update_conversation(
                    &conversation.id,
                    &crate::storage::ConversationChange {
                        assignee: Some(Some(agent.clone())),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|error| EffectError::Retry(error.to_string()))?;
                Ok(
                    json!({ "assign": { "conversation_id": conversation.id, "agent_id": agent, "team_id": assign.team_id } }),
                )
            }
            types::Effect::HttpCall(_) => Err(EffectError::Failed(
                "deferred HTTP calls are not supported yet; use the http-request action".into(),
            )),
        }
    }

    async fn change_contact(
        &self,
        db: &TenantDb,
        contact_id: &str,
        change: impl FnOnce(&mut Vec<String>, &mut Value),
    ) -> Result<(), EffectError> {
        db.change_tags_and_fields(contact_id, change)
            .await
            .map_err(|error| EffectError::Retry(error.to_string()))?
            .ok_or_else(|| EffectError::Failed(format!("contact {contact_id} no longer exists")))?;
        Ok(())
    }
}

/// One scripted event of a simulation.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SimEvent {
    /// The contact sends a message.
    Message {
        /// Its text.
        text: String,
    },
    /// Time passes.
    Elapse {
        /// How long, in milliseconds.
        ms: u64,
    },
}

impl Flows {
    /// Runs `graph` for a (real or hypothetical) `contact` against scripted `events`
    /// without sending or writing anything: actions run with no grants, effects are
    /// described (tags and fields are applied to the simulated contact only), waits
    /// consume elapsed time, wait-for-reply consumes the next message. The trace, or the
    /// graph's problems.
    pub async fn simulate(
        &self,
        db: &TenantDb,
        graph_value: &Value,
        mut contact: Value,
        events: Vec<SimEvent>,
        payload: Value,
    ) -> Result<Result<Value, Vec<Problem>>, StorageError> {
        let (graph, actions) = match self.validate(db, graph_value).await? {
            Ok(resolved) => resolved,
            Err(problems) => return Ok(Err(problems)),
        };
        let mut events: std::collections::VecDeque<SimEvent> = events.into();
        let mut clock = now_ms();
        let mut trace = Vec::new();
        // The trigger: a message event that matches one, else an api/manual trigger.
        let (trigger_id, trigger_payload) = match events.front() {
            Some(SimEvent::Message { text }) => {
                let text = text.clone();
                let matched = graph.triggers.iter().find(|trigger| match &trigger.kind {
                    TriggerKind::InboundMessage { .. } => true,
                    TriggerKind::Keyword {
                        pattern,
                        case_sensitive,
                        ..
                    } => keyword_matches(pattern, *case_sensitive, &text),
                    _ => false,
                });
                match matched {
                    Some(trigger) => {
                        events.pop_front();
                        (
                            trigger.id.clone(),
                            json!({"type": "inbound_message", "trigger_id": trigger.id, "text": text}),
                        )
                    }
                    None => {
                        return Ok(Ok(
                            json!({"started": false, "reason": format!("no trigger matches the message `{text}`"), "steps": []}),
                        ));
                    }
                }
            }
            // Otherwise the api/manual trigger, else a webhook, contact-event or schedule
            // trigger, with `payload` as what it would carry.
            _ => match graph
                .triggers
                .iter()
                .find(|t| matches!(t.kind, TriggerKind::Api | TriggerKind::Manual))
                .or_else(|| {
                    graph.triggers.iter().find(|t| {
                        matches!(
                            t.kind,
                            TriggerKind::Webhook { .. }
                                | TriggerKind::ContactEvent { .. }
                                | TriggerKind::Schedule { .. }
                        )
                    })
                }) {
                Some(trigger) => {
                    let (kind, event) = match &trigger.kind {
                        TriggerKind::Webhook { .. } => ("webhook", None),
                        TriggerKind::ContactEvent { event, .. } => {
                            ("contact_event", Some(event.as_str()))
                        }
                        TriggerKind::Schedule { .. } => ("schedule", None),
                        _ => ("api", None),
                    };
                    let mut payload =
                        json!({"type": kind, "trigger_id": trigger.id, "payload": payload});
                    if let Some(event) = event {
                        payload["event"] = json!(event);
                    }
                    (trigger.id.clone(), payload)
                }
                None => {
                    return Ok(Ok(
                        json!({"started": false, "reason": "the flow has only message triggers and the script does not start with a message", "steps": []}),
                    ));
                }
            },
        };
        let mut variables = json!({});
        let mut at = graph.target(&trigger_id, "next").map(str::to_string);
        let mut status = "completed";
        while let Some(node_id) = at.take() {
            if trace.len() >= 200 {
                status = "stopped after 200 steps";
                break;
            }
            let Some(node) = graph.node(&node_id) else {
                break;
            };
            let mut visible = variables.clone();
            visible["_now_ms"] = json!(clock);
            let input = at::ActionInput {
                run_id: "simulation".into(),
                step_id: node_id.clone(),
                config: node.config.to_string(),
                contact: Some(contact.to_string()),
                trigger: trigger_payload.to_string(),
                variables: visible.to_string(),
            };
            let install = actions.get(&node_id).cloned().unwrap_or_default();
            let result = match self.inner.marketplace.action(db, &install).await {
                Ok(handle) => handle.run_action_isolated(&input).await,
                Err(error) => Err(error),
            };
            let result = match result {
                Ok(Ok(result)) => result,
                Ok(Err(error)) => {
                    let message = action_error_text(&error);
                    trace.push(json!({"node": node_id, "error": message, "at_ms": clock}));
                    variables[node_id.as_str()] = json!({"error": message});
                    match graph.target(&node_id, "error") {
                        Some(target) => {
                            at = Some(target.to_string());
                            continue;
                        }
                        None => {
                            status = "failed";
                            break;
                        }
                    }
                }
                Err(error) => {
                    trace
                        .push(json!({"node": node_id, "error": error.to_string(), "at_ms": clock}));
                    status = "failed";
                    break;
                }
            };
            let output: Value = serde_json::from_str(&result.output).unwrap_or(Value::Null);
            let effects: Vec<Value> = result
                .effects
                .iter()
                .map(|effect| describe_effect(effect, &mut contact))
                .collect();
            variables[node_id.as_str()] = output.clone();
            let mut entry = json!({"node": node_id, "action": node.action, "at_ms": clock, "output": output, "effects": effects});
            match &result.outcome {
                at::Outcome::Next(port) => {
                    entry["outcome"] = json!({"next": port});
                    at = graph.target(&node_id, port).map(str::to_string);
                }
                at::Outcome::Wait(wait) => {
                    entry["outcome"] = json!({"wait_ms": wait});
                    let mut remaining = ms(*wait);
                    while remaining > 0 {
                        match events.front() {
                            Some(SimEvent::Elapse { ms: elapsed }) => {
                                let elapsed = ms(*elapsed);
                                if elapsed > remaining {
                                    events[0] = SimEvent::Elapse {
                                        ms: u64::try_from(elapsed - remaining).unwrap_or(0),
                                    };
                                    clock += remaining;
                                    remaining = 0;
                                } else {
                                    events.pop_front();
                                    clock += elapsed;
                                    remaining -= elapsed;
                                }
                            }
                            _ => break,
                        }
                    }
                    if remaining > 0 {
                        trace.push(entry);
                        status = "waiting";
                        break;
                    }
                    at = graph.target(&node_id, "next").map(str::to_string);
                }
                at::Outcome::WaitForReply(timeout) => {
                    entry["outcome"] = json!({"wait_for_reply_ms": timeout});
                    let mut waited = 0;
                    let mut resumed = None;
                    while let Some(event) = events.pop_front() {
                        match event {
                            SimEvent::Message { text } => {
                                resumed = Some(("reply", json!({"reply": text})));
                                break;
                            }
                            SimEvent::Elapse { ms: elapsed } => {
                                waited += ms(elapsed);
                                clock += ms(elapsed);
                                if waited >= ms(*timeout) {
                                    resumed = Some(("timeout", json!({"timed_out": true})));
                                    break;
                                }
                            }
                        }
                    }
                    match resumed {
                        Some((port, value)) => {
                            variables[node_id.as_str()] = value;
                            at = graph.target(&node_id, port).map(str::to_string);
                        }
                        None => {
                            trace.push(entry);
                            status = "waiting for a reply";
                            break;
                        }
                    }
                }
                at::Outcome::End => entry["outcome"] = json!("end"),
            }
            trace.push(entry);
        }
        Ok(Ok(
            json!({"started": true, "trigger": trigger_id, "status": status, "steps": trace, "contact": contact, "variables": variables}),
        ))
    }
}

/// Describes an effect for the simulator and applies tag/field changes to the
/// simulated contact.
fn describe_effect(effect: &types::Effect, contact: &mut Value) -> Value {
    match effect {
        types::Effect::SendMessage(send) => {
            let content = match &send.content {
                types::MessageContent::Text(text) => json!({"text": text.body}),
                types::MessageContent::Template(template) => {
                    json!({"template": {"name": template.name, "language": template.language, "components": serde_json::from_str::<Value>(&template.components).unwrap_or(Value::Null)}})
                }
                types::MessageContent::Media(media) => {
                    json!({"media": {"url": media.url, "caption": media.caption}})
                }
                types::MessageContent::Interactive(json) => {
                    json!({"interactive": serde_json::from_str::<Value>(json).unwrap_or(Value::Null)})
                }
            };
            json!({"send_message": {"channel_install": send.channel_install, "content": content}})
        }
        types::Effect::SetField(set) => {
            let value: Value = serde_json::from_str(&set.value).unwrap_or(Value::Null);
            if !contact["fields"].is_object() {
                contact["fields"] = json!({});
            }
            contact["fields"][set.field.as_str()] = value.clone();
            json!({"set_field": {"field": set.field, "value": value}})
        }
        types::Effect::AddTag(tag) | types::Effect::RemoveTag(tag) => {
            let add = matches!(effect, types::Effect::AddTag(_));
            let mut tags: Vec<Value> = contact["tags"].as_array().cloned().unwrap_or_default();
            tags.retain(|existing| existing != &json!(tag.tag));
            if add {
                tags.push(json!(tag.tag));
            }
            contact["tags"] = Value::Array(tags);
            json!({ if add { "add_tag" } else { "remove_tag" }: tag.tag })
        }
        types::Effect::Assign(assign) => {
            json!({"assign": {"agent_id": assign.agent_id, "team_id": assign.team_id}})
        }
        types::Effect::HttpCall(call) => {
            json!({"http_call": {"method": call.method, "url": call.url}})
        }
    }
}

enum EffectError {
    Retry(String),
    Failed(String),
}

/// Applies `op` to the contact as steps see it (JSON) and describes it for the step's
/// record (the same report `apply_effect` gives).
fn apply_op_to_json(op: &ContactOp, contact: &mut Value) -> Value {
    let mut tags: Vec<String> = contact["tags"]
        .as_array()
        .map(|tags| {
            tags.iter()
                .filter_map(|tag| tag.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut fields = contact["fields"].clone();
    apply_ops(std::slice::from_ref(op), &mut tags, &mut fields);
    contact["tags"] = json!(tags);
    contact["fields"] = fields;
    match op {
        ContactOp::AddTag(tag) => json!({ "add_tag": tag }),
        ContactOp::RemoveTag(tag) => json!({ "remove_tag": tag }),
        ContactOp::SetField(field, value) => {
            json!({ "set_field": { "field": field, "value": value } })
        }
    }
}

fn action_error_text(error: &at::ActionError) -> String {
    match error {
        at::ActionError::InvalidConfig(text) => format!("invalid config: {text}"),
        at::ActionError::InvalidInput(text) => format!("invalid input: {text}"),
        at::ActionError::Retryable(text) => format!("failed after retries: {text}"),
        at::ActionError::Failed(text) => text.clone(),
    }
}

fn keyword_matches(pattern: &KeywordMatch, case_sensitive: bool, text: &str) -> bool {
    match pattern {
        KeywordMatch::Exact(keyword) => {
            if case_sensitive {
                text.trim() == keyword
            } else {
                text.trim().to_lowercase() == keyword.to_lowercase()
            }
        }
        KeywordMatch::Contains(keyword) => {
            if case_sensitive {
                text.contains(keyword.as_str())
            } else {
                text.to_lowercase().contains(&keyword.to_lowercase())
            }
        }
        KeywordMatch::Regex(regex) => regex.is_match(text),
    }
}

/// The node cycles of a graph (strongly connected components with a loop), by Tarjan.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let ids: Vec<&str> = graph.nodes.iter().map(|node| node.id.as_str()).collect();
    let index_of: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut adjacency = vec![Vec::new(); ids.len()];
    for edge in &graph.edges {
        if let (Some(&from), Some(&to)) = (
            index_of.get(edge.from.as_str()),
            index_of.get(edge.to.as_str()),
        ) {
            adjacency[from].push(to);
        }
    }
    struct State {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        components: Vec<Vec<usize>>,
    }
    fn connect(v: usize, adjacency: &[Vec<usize>], state: &mut State) {
        state.index[v] = Some(state.next);
        state.low[v] = state.next;
        state.next += 1;
        state.stack.push(v);
        state.on_stack[v] = true;
        for &w in &adjacency[v] {
            match state.index[w] {
                None => {
                    connect(w, adjacency, state);
                    state.low[v] = state.low[v].min(state.low[w]);
                }
                Some(index) if state.on_stack[w] => state.low[v] = state.low[v].min(index),
                Some(_) => {}
            }
        }
        if Some(state.low[v]) == state.index[v] {
            let mut component = Vec::new();
            while let Some(w) = state.stack.pop() {
                state.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            state.components.push(component);
        }
    }
    let mut state = State {
        index: vec![None; ids.len()],
        low: vec![0; ids.len()],
        on_stack: vec![false; ids.len()],
        stack: Vec::new(),
        next: 0,
        components: Vec::new(),
    };
    for v in 0..ids.len() {
        if state.index[v].is_none() {
            connect(v, &adjacency, &mut state);
        }
    }
    state
        .components
        .into_iter()
        .filter(|component| {
            component.len() > 1
                || component
                    .first()
                    .is_some_and(|&v| adjacency[v].contains(&v))
        })
        .map(|component| {
            let mut names: Vec<String> =
                component.into_iter().map(|v| ids[v].to_string()).collect();
            names.sort();
            names
        })
        .collect()
}

/// A lazily set link from messaging to flows (they need each other).
#[derive(Default, Debug)]
pub struct FlowsLink(OnceLock<Flows>);

impl FlowsLink {
    /// Sets the link once.
    pub fn set(&self, flows: Flows) {
        let _ = self.0.set(flows);
    }

    /// The flows service, once set.
    pub fn get(&self) -> Option<&Flows> {
        self.0.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(value: Value) -> Result<Graph, Vec<Problem>> {
        parse_graph(&value)
    }

    #[test]
    fn structural_problems_name_their_node() {
        let problems = graph(json!({
            "triggers": [{"id": "t", "type": "keyword", "keyword": "(", "match": "regex"}, {"id": "t", "type": "sms"}],
            "nodes": [{"id": "n", "action": "nope"}, {"id": "m", "action": "postdog/end", "version": "banana"}],
            "edges": [{"from": "t"}],
            "bogus": 1
        }))
        .expect_err("invalid");
        let text = serde_json::to_string(&problems).expect("json");
        for expected in [
            "unknown key `bogus`",
            "regular expression",
            "used twice",
            "unknown trigger type `sms`",
            "needs an `action`",
            "not a version requirement",
            "needs `from` and `to`",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        assert!(problems.iter().any(|p| p.node.as_deref() == Some("m")));
    }

    #[test]
    fn finds_cycles() {
        let g = graph(json!({
            "triggers": [{"id": "t", "type": "api"}],
            "nodes": [{"id": "a", "action": "p/x"}, {"id": "b", "action": "p/wait"}, {"id": "c", "action": "p/y"}, {"id": "d", "action": "p/z"}],
            "edges": [{"from": "t", "to": "a"}, {"from": "a", "to": "b"}, {"from": "b", "to": "a"}, {"from": "a", "port": "no", "to": "c"}, {"from": "c", "to": "d"}, {"from": "d", "to": "c"}]
        }))
        .expect("parses");
        let found = cycles(&g);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.contains(&vec!["a".to_string(), "b".to_string()]));
        assert!(found.contains(&vec!["c".to_string(), "d".to_string()]));
    }

    #[test]
    fn keywords_match_as_configured() {
        assert!(keyword_matches(
            &KeywordMatch::Exact("Hello".into()),
            false,
            " hello "
        ));
        assert!(!keyword_matches(
            &KeywordMatch::Exact("Hello".into()),
            true,
            "hello"
        ));
        assert!(keyword_matches(
            &KeywordMatch::Contains("price".into()),
            false,
            "What's the PRICE?"
        ));
        let regex = regex::RegexBuilder::new(r"^order\s+#?\d+$")
            .case_insensitive(true)
            .build()
            .expect("regex");
        assert!(keyword_matches(
            &KeywordMatch::Regex(regex.clone()),
            false,
            "ORDER #1042"
        ));
        assert!(!keyword_matches(
            &KeywordMatch::Regex(regex),
            false,
            "my order"
        ));
    }

    #[test]
    fn schema_subset_reports_each_problem() {
        let schema = json!({"type": "object", "required": ["tag"], "additionalProperties": false,
            "properties": {"tag": {"type": "string", "minLength": 1}, "n": {"type": "integer", "minimum": 1, "maximum": 5}, "mode": {"enum": ["a", "b"]}}});
        let mut out = Vec::new();
        check_schema(
            &schema,
            &json!({"n": 9, "mode": "c", "extra": true}),
            "",
            &mut out,
        );
        let text = out.join("; ");
        for expected in [
            "/tag is required",
            "/n must be at most 5",
            "/mode must be one of",
            "/extra is not a known setting",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        let mut ok = Vec::new();
        check_schema(&schema, &json!({"tag": "vip", "n": 2}), "", &mut ok);
        assert!(ok.is_empty(), "{ok:?}");
    }
}
