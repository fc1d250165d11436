//! The API's OpenAPI 3.1 document (`GET /openapi.json`) and a human-readable reference
//! rendered from it (`GET /docs/api`, plain HTML with no external assets).
//!
//! The document is built from [`operations`], the table of every route with its
//! parameters, body, responses and error types, and from [`schemas`]. Two checks keep
//! the table true: with `POSTDOG_STRICT_OPENAPI=1` (the end-to-end tests set it) a
//! request that reaches a route/method pair missing from the table is answered 500
//! `undocumented-route`, so every route the tests exercise must be documented; and a
//! test calls every documented operation to prove it exists.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use super::AppState;
use super::problem::ApiError;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/docs/api", get(reference_page))
}

/// Who may call an operation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone.
    Public,
    /// A tenant API key with one of these roles.
    Tenant(&'static [&'static str]),
    /// The operator token.
    Operator,
}

const ANY_ROLE: &[&str] = &["admin", "agent", "read-only"];
const WRITERS: &[&str] = &["admin", "agent"];
const ADMIN: &[&str] = &["admin"];

/// One documented operation.
struct Operation {
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    description: &'static str,
    access: Access,
    query: Vec<(&'static str, &'static str, &'static str)>,
    body: Option<(&'static str, &'static str)>,
    ok: (u16, &'static str, Option<&'static str>),
    errors: Vec<(u16, &'static str)>,
}

fn op(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    access: Access,
) -> Operation {
    Operation {
        method,
        path,
        tag,
        summary,
        description: "",
        access,
        query: Vec::new(),
        body: None,
        ok: (200, "OK", None),
        errors: Vec::new(),
    }
}

impl Operation {
    fn describe(mut self, text: &'static str) -> Self {
        self.description = text;
        self
    }
    /// A query parameter: name, JSON type, description.
    fn query(mut self, name: &'static str, kind: &'static str, text: &'static str) -> Self {
        self.query.push((name, kind, text));
        self
    }
    /// A JSON body of this schema (or a media type and schema).
    fn body(mut self, schema: &'static str) -> Self {
        self.body = Some(("application/json", schema));
        self
    }
    fn body_as(mut self, media: &'static str, schema: &'static str) -> Self {
        self.body = Some((media, schema));
        self
    }
    fn ok(mut self, status: u16, text: &'static str, schema: Option<&'static str>) -> Self {
        self.ok = (status, text, schema);
        self
    }
    /// An error status and the problem types it carries (comma-separated).
    fn error(mut self, status: u16, kinds: &'static str) -> Self {
        self.errors.push((status, kinds));
        self
    }
}

/// Every route of the API.
fn operations() -> Vec<Operation> {
    use Access::{Operator, Public, Tenant};
    let page = "Cursor: the `next_cursor` of the previous page.";
    vec![
        op("get", "/healthz", "System", "Liveness and database reachability", Public)
            .ok(200, "Healthy", Some("Health"))
            .error(503, "database-unavailable"),
        op("get", "/openapi.json", "System", "This OpenAPI 3.1 document", Public),
        op("get", "/docs/api", "System", "The human-readable API reference (HTML)", Public),
        // Operator.
        op("get", "/admin/v1/tenants", "Operator", "List tenants", Operator)
            .ok(200, "Tenants", Some("TenantList")),
        op("post", "/admin/v1/tenants", "Operator", "Create a tenant and its first admin key", Operator)
            .describe("The key's secret is in the answer only; PostDog stores a hash.")
            .body("NewTenant")
            .ok(201, "Created", Some("ProvisionedTenant"))
            .error(422, "invalid-body,invalid-tenant"),
        op("get", "/admin/v1/tenants/{id}", "Operator", "Show a tenant", Operator)
            .ok(200, "The tenant", Some("Tenant"))
            .error(404, "not-found"),
        op("patch", "/admin/v1/tenants/{id}", "Operator", "Change plan, status, rate, country or branding", Operator)
            .describe("Plan and rate changes apply to the next request. `requests_per_minute: null` returns to the plan's rate.")
            .body("OperatorTenantChange")
            .ok(200, "The tenant", Some("Tenant"))
            .error(404, "not-found")
            .error(403, "plan-feature")
            .error(409, "domain-taken")
            .error(422, "invalid-body,invalid-tenant"),
        // Tenant profile.
        op("get", "/v1/tenant", "Tenant", "This tenant's profile, plan and usage", Tenant(ANY_ROLE))
            .ok(200, "The tenant", Some("TenantWithUsage")),
        op("patch", "/v1/tenant", "Tenant", "Change name, default country or white-label branding", Tenant(ADMIN))
            .describe("Branding (brand name, logo URL, primary color, custom domain) is a Business plan feature. `null` clears a branding value.")
            .body("TenantProfileChange")
            .ok(200, "The tenant", Some("TenantWithUsage"))
            .error(403, "plan-feature")
            .error(409, "domain-taken")
            .error(422, "invalid-body,invalid-tenant"),
        op("get", "/v1/sub-tenants", "Tenant", "List this reseller's sub-tenants", Tenant(ADMIN))
            .ok(200, "Sub-tenants", Some("TenantList"))
            .error(403, "not-a-reseller"),
        op("post", "/v1/sub-tenants", "Tenant", "Create a sub-tenant (Business plan)", Tenant(ADMIN))
            .describe("Act on a sub-tenant by sending its id in `PostDog-Act-As` with the reseller's key.")
            .body("NewSubTenant")
            .ok(201, "Created", Some("ProvisionedTenant"))
            .error(403, "not-a-reseller")
            .error(422, "invalid-body,invalid-tenant"),
        // API keys.
        op("get", "/v1/api-keys", "API keys", "List keys (never their secrets)", Tenant(ADMIN))
            .ok(200, "Keys", Some("ApiKeyList")),
        op("post", "/v1/api-keys", "API keys", "Create a key", Tenant(ADMIN))
            .describe("The secret is in this answer only.")
            .body("NewApiKey")
            .ok(201, "Created", Some("CreatedApiKey"))
            .error(422, "invalid-body"),
        op("delete", "/v1/api-keys/{id}", "API keys", "Revoke a key", Tenant(ADMIN))
            .ok(204, "Revoked", None)
            .error(404, "not-found"),
        // Contacts.
        op("get", "/v1/contacts", "Contacts", "List and filter contacts", Tenant(ANY_ROLE))
            .describe("Every given filter must hold. `fields.<key>=<value>` and `consent.<channel>=<status>` may be repeated for several keys.")
            .query("tag", "string", "Has this tag (repeatable).")
            .query("q", "string", "Name, phone or email contains this text.")
            .query("created_after", "integer", "Unix milliseconds.")
            .query("created_before", "integer", "Unix milliseconds.")
            .query("updated_after", "integer", "Unix milliseconds.")
            .query("updated_before", "integer", "Unix milliseconds.")
            .query("last_contacted_after", "integer", "Unix milliseconds.")
            .query("last_contacted_before", "integer", "Unix milliseconds.")
            .query("segment", "string", "Members of this segment.")
            .query("after", "string", page)
            .query("limit", "integer", "1 to 200, default 50.")
            .ok(200, "A page of contacts", Some("ContactPage"))
            .error(400, "invalid-query")
            .error(422, "invalid-filter"),
        op("post", "/v1/contacts", "Contacts", "Create a contact", Tenant(WRITERS))
            .describe("Phones are normalized to E.164 with the tenant's default country; emails are lower-cased. A phone or email another contact has is a 409 naming it.")
            .body("ContactInput")
            .ok(201, "Created", Some("Contact"))
            .error(403, "plan-limit")
            .error(409, "duplicate-contact")
            .error(422, "invalid-body,invalid-contact"),
        op("post", "/v1/contacts/search", "Contacts", "Search with a filter expression", Tenant(ANY_ROLE))
            .describe("The same expression language as segments; the answer adds `total`.")
            .body("SearchRequest")
            .ok(200, "A page of contacts", Some("ContactPage"))
            .error(422, "invalid-body,invalid-filter"),
        op("get", "/v1/contacts/{id}", "Contacts", "Show a contact", Tenant(ANY_ROLE))
            .ok(200, "The contact", Some("Contact"))
            .error(404, "not-found"),
        op("patch", "/v1/contacts/{id}", "Contacts", "Change a contact", Tenant(WRITERS))
            .describe("Absent keys keep their value; `null` clears one. `fields` merges into the current values.")
            .body("ContactInput")
            .ok(200, "The contact", Some("Contact"))
            .error(404, "not-found")
            .error(409, "duplicate-contact")
            .error(422, "invalid-body,invalid-contact"),
        op("delete", "/v1/contacts/{id}", "Contacts", "Delete a contact", Tenant(WRITERS))
            .ok(204, "Deleted", None)
            .error(404, "not-found"),
        op("post", "/v1/contacts/{id}/merge", "Contacts", "Merge another contact into this one", Tenant(WRITERS))
            .describe("This contact keeps its values and gains the other's missing ones, tags, field values, consent history and notes; the other is deleted.")
            .body("MergeRequest")
            .ok(200, "The merged contact", Some("Contact"))
            .error(404, "not-found")
            .error(422, "invalid-body,invalid-contact"),
        op("get", "/v1/contacts/{id}/consent", "Contacts", "A contact's consent history", Tenant(ANY_ROLE))
            .ok(200, "Oldest first", Some("ConsentHistory"))
            .error(404, "not-found"),
        op("post", "/v1/contacts/{id}/consent", "Contacts", "Record a consent change", Tenant(WRITERS))
            .body("ConsentChange")
            .ok(201, "The current consent per channel", Some("CurrentConsent"))
            .error(404, "not-found")
            .error(422, "invalid-body,invalid-contact"),
        op("get", "/v1/contacts/{id}/notes", "Contacts", "A contact's notes", Tenant(ANY_ROLE))
            .ok(200, "Oldest first", Some("NoteList"))
            .error(404, "not-found"),
        op("post", "/v1/contacts/{id}/notes", "Contacts", "Add a note", Tenant(WRITERS))
            .body("NewNote")
            .ok(201, "Created", Some("Note"))
            .error(404, "not-found")
            .error(422, "invalid-body,invalid-note"),
        op("delete", "/v1/contacts/{id}/notes/{note_id}", "Contacts", "Delete a note", Tenant(WRITERS))
            .ok(204, "Deleted", None)
            .error(404, "not-found"),
        op("get", "/v1/custom-fields", "Contacts", "List custom field definitions", Tenant(ANY_ROLE))
            .ok(200, "Definitions", Some("CustomFieldList")),
        op("put", "/v1/custom-fields/{key}", "Contacts", "Define or change a custom field", Tenant(ADMIN))
            .body("CustomFieldInput")
            .ok(200, "The definition", Some("CustomField"))
            .error(422, "invalid-body,invalid-contact"),
        op("delete", "/v1/custom-fields/{key}", "Contacts", "Delete a custom field definition", Tenant(ADMIN))
            .ok(204, "Deleted", None)
            .error(404, "not-found"),
        // Imports and export.
        op("post", "/v1/contacts/imports", "Imports", "Import contacts from a CSV file", Tenant(WRITERS))
            .describe("Send the file as the raw body (`text/csv`) or as the `file` part of a multipart form (options may then be form parts too). UTF-8 with or without BOM; `,`, `;` or tab; quoted fields may hold newlines. Columns named name, phone, email, tags or a custom field's key or label are mapped automatically, and so are consent columns (`WhatsApp consent`, `consent_email`, `email opt-in`, …: opted_in/opted_out, yes/no, true/false or 1/0; empty records nothing). Consent joins the contact's history with source `import` and the import and line as proof; an opt-out always applies, an opt-in never overrides a recorded opt-out (and with `skip` only new contacts are opted in). Runs in the background: poll the job.")
            .query("duplicates", "string", "skip (default), update or merge: what a row matching an existing contact (or an earlier row) by phone or email does.")
            .query("mapping", "string", "JSON object from column name to name, phone, email, tags, fields.<key>, consent.<channel> (whatsapp, email, sms, social) or ignore.")
            .body_as("text/csv", "CsvFile")
            .ok(202, "The queued job (Location names it)", Some("ImportJob"))
            .error(400, "invalid-query,malformed-multipart,upload-failed")
            .error(413, "upload-too-large")
            .error(422, "invalid-import"),
        op("get", "/v1/contacts/imports", "Imports", "Recent imports, newest first", Tenant(ANY_ROLE))
            .ok(200, "Jobs", Some("ImportJobList")),
        op("get", "/v1/contacts/imports/{id}", "Imports", "An import's progress", Tenant(ANY_ROLE))
            .ok(200, "The job", Some("ImportJob"))
            .error(404, "not-found"),
        op("get", "/v1/contacts/imports/{id}/errors", "Imports", "Rejected rows as CSV", Tenant(ANY_ROLE))
            .describe("Columns `line`, `error`, then the file's own columns.")
            .ok(200, "text/csv", None)
            .error(404, "not-found"),
        op("get", "/v1/contacts/export", "Imports", "Export contacts as CSV or JSON Lines", Tenant(ANY_ROLE))
            .describe("Streams every contact matching the listing's filters (e.g. `segment=<id>`). The CSV imports back as the same contacts.")
            .query("format", "string", "csv (default) or jsonl.")
            .query("segment", "string", "Only this segment's members.")
            .query("tag", "string", "Has this tag.")
            .ok(200, "text/csv or application/x-ndjson", None)
            .error(400, "invalid-query")
            .error(422, "invalid-filter"),
        // Segments.
        op("get", "/v1/segments", "Segments", "List segments with live counts", Tenant(ANY_ROLE))
            .ok(200, "Segments", Some("SegmentList")),
        op("post", "/v1/segments", "Segments", "Save a segment", Tenant(WRITERS))
            .body("SegmentInput")
            .ok(201, "Created, with its count", Some("Segment"))
            .error(409, "duplicate-segment")
            .error(422, "invalid-body,invalid-segment,invalid-filter"),
        op("post", "/v1/segments/preview", "Segments", "Count an expression's matches without saving", Tenant(ANY_ROLE))
            .body("PreviewRequest")
            .ok(200, "The count", Some("Count"))
            .error(422, "invalid-body,invalid-filter"),
        op("get", "/v1/segments/{id}", "Segments", "Show a segment with its live count", Tenant(ANY_ROLE))
            .ok(200, "The segment", Some("Segment"))
            .error(404, "not-found")
            .error(422, "invalid-filter"),
        op("patch", "/v1/segments/{id}", "Segments", "Rename a segment or change its expression", Tenant(WRITERS))
            .body("SegmentChange")
            .ok(200, "The segment", Some("Segment"))
            .error(404, "not-found")
            .error(409, "duplicate-segment")
            .error(422, "invalid-body,invalid-segment,invalid-filter"),
        op("delete", "/v1/segments/{id}", "Segments", "Delete a segment", Tenant(WRITERS))
            .ok(204, "Deleted", None)
            .error(404, "not-found"),
        op("get", "/v1/segments/{id}/contacts", "Segments", "A segment's members", Tenant(ANY_ROLE))
            .query("after", "string", page)
            .query("limit", "integer", "1 to 200, default 50.")
            .ok(200, "A page of contacts", Some("ContactPage"))
            .error(400, "invalid-query")
            .error(404, "not-found")
            .error(422, "invalid-filter"),
        // Audit.
        op("get", "/v1/audit", "Audit", "The audit log, newest first", Tenant(ADMIN))
            .describe("One entry per state-changing call: key, method, path, status, time.")
            .query("before", "string", "Cursor: the `next_cursor` of the previous page.")
            .query("limit", "integer", "1 to 200, default 50.")
            .ok(200, "Entries", Some("AuditPage"))
            .error(400, "invalid-query"),
        op("get", "/admin/v1/plugins/loaded", "Operator", "Plugin versions compiled in memory", Operator)
            .describe("Shared by every install on the same version; freed when no install or call uses them.")
            .ok(200, "Loaded plugin versions", Some("LoadedPluginList")),
        // Marketplace and installs.
        op("get", "/v1/marketplace", "Marketplace", "Browse plugins in the registry", Tenant(ANY_ROLE))
            .query("q", "string", "Words that must all appear in the name or description.")
            .query("category", "string", "messaging, social, ecommerce, crm, marketing, utility, ai, analytics or developer.")
            .query("world", "string", "flow-action, messaging-channel, social-channel or integration.")
            .ok(200, "Plugins", Some("PluginSummaryList"))
            .error(400, "invalid-query")
            .error(502, "registry-unavailable"),
        op("get", "/v1/marketplace/{publisher}/{name}", "Marketplace", "A plugin's versions, capabilities and config schema", Tenant(ANY_ROLE))
            .ok(200, "Versions, newest first", Some("PluginVersionList"))
            .error(404, "not-found")
            .error(502, "registry-unavailable"),
        op("get", "/v1/installs", "Marketplace", "This tenant's installed plugins", Tenant(ANY_ROLE))
            .ok(200, "Installs", Some("InstallList")),
        op("post", "/v1/installs", "Marketplace", "Install a plugin", Tenant(ADMIN))
            .describe("Installs the newest version matching `version` (a semver requirement such as `^1.2`). Every capability the version requests must be in `grants`.")
            .body("NewInstall")
            .ok(201, "Installed", Some("Install"))
            .error(404, "not-found")
            .error(422, "invalid-body,capabilities-not-granted,invalid-config")
            .error(502, "registry-unavailable,plugin-failed"),
        op("get", "/v1/installs/{id}", "Marketplace", "An install with its health", Tenant(ANY_ROLE))
            .ok(200, "The install", Some("Install"))
            .error(404, "not-found"),
        op("patch", "/v1/installs/{id}", "Marketplace", "Change config, grants, requirement, pin or enabled", Tenant(ADMIN))
            .body("InstallChange")
            .ok(200, "The install", Some("Install"))
            .error(404, "not-found")
            .error(422, "invalid-body,capabilities-not-granted,invalid-config"),
        op("delete", "/v1/installs/{id}", "Marketplace", "Uninstall (config, secrets and data are deleted)", Tenant(ADMIN))
            .ok(204, "Uninstalled", None)
            .error(404, "not-found"),
        op("put", "/v1/installs/{id}/secrets/{name}", "Marketplace", "Set or rotate a secret", Tenant(ADMIN))
            .describe("Sealed with AES-256-GCM; never returned by any call.")
            .body("SecretValue")
            .ok(204, "Stored", None)
            .error(404, "not-found")
            .error(422, "invalid-body,invalid-config"),
        op("delete", "/v1/installs/{id}/secrets/{name}", "Marketplace", "Remove a secret", Tenant(ADMIN))
            .ok(204, "Removed", None)
            .error(404, "not-found"),
        op("post", "/v1/installs/{id}/upgrade", "Marketplace", "Move to the newest version matching the requirement", Tenant(ADMIN))
            .ok(200, "The install", Some("Install"))
            .error(404, "not-found")
            .error(422, "invalid-body,capabilities-not-granted"),
        op("post", "/v1/installs/{id}/rollback", "Marketplace", "Return to the previous version and pin it", Tenant(ADMIN))
            .ok(200, "The install", Some("Install"))
            .error(404, "not-found")
            .error(422, "invalid-body"),
        op("post", "/v1/installs/{id}/call", "Marketplace", "Call the plugin once (e.g. test a flow action)", Tenant(WRITERS))
            .describe("`function` defaults to the world's main one (run, send, publish, handle-webhook). The answer is the plugin's `{\"ok\": …}` or `{\"error\": …}`.")
            .body("CallRequest")
            .ok(200, "The plugin's answer", Some("CallResult"))
            .error(404, "not-found")
            .error(409, "install-disabled")
            .error(422, "invalid-body")
            .error(502, "plugin-failed")
            .error(503, "circuit-open,secrets-unavailable"),
        // Messaging: sending, the inbox, templates, tenant webhooks, jobs.
        op("get", "/hooks/{install_id}", "Channels", "Provider webhook verification (e.g. Meta's hub.challenge handshake)", Public)
            .describe("Handed to the channel install's plugin; answers the challenge when the verify token matches, else 403.")
            .ok(200, "The challenge", None)
            .error(403, "unauthorized")
            .error(404, "not-found"),
        op("post", "/hooks/{install_id}", "Channels", "Provider webhook delivery (messages, statuses, template reviews)", Public)
            .describe("The plugin checks the provider's signature on the raw body (401 and nothing stored if wrong), then the events are stored before the answer: messages deduplicated by provider id, contacts upserted, the 24-hour window extended, STOP/START keywords recorded as consent, delivery statuses applied monotonically.")
            .ok(200, "Stored", None)
            .error(400, "malformed-webhook")
            .error(401, "unauthorized")
            .error(404, "not-found")
            .error(503, "unavailable"),
        op("get", "/metrics", "System", "Prometheus metrics of the job queue", Public)
            .ok(200, "text/plain; version=0.0.4", None),
        op("get", "/v1/flows", "Flows", "Automation flows", Tenant(ANY_ROLE))
            .ok(200, "Flows", Some("AnyList")),
        op("post", "/v1/flows", "Flows", "Create a flow with a draft graph", Tenant(WRITERS))
            .describe("A graph is `{triggers, nodes, edges, settings}`: triggers (`inbound_message`, `keyword` with exact/contains/regex, `api`, `manual`) lead to action nodes (`action`: an installed flow-action plugin, `version`, `config`), edges leave named ports.")
            .body("FlowInput")
            .ok(201, "The flow", Some("AnyObject"))
            .error(422, "invalid-body"),
        op("get", "/v1/flows/{id}", "Flows", "A flow and its draft", Tenant(ANY_ROLE))
            .ok(200, "The flow", Some("AnyObject"))
            .error(404, "not-found"),
        op("put", "/v1/flows/{id}", "Flows", "Change the draft, name or enabled (runs keep their version)", Tenant(WRITERS))
            .body("AnyObject")
            .ok(200, "The flow", Some("AnyObject"))
            .error(404, "not-found")
            .error(422, "invalid-body"),
        op("delete", "/v1/flows/{id}", "Flows", "Delete a flow", Tenant(WRITERS))
            .ok(204, "Deleted", None)
            .error(404, "not-found"),
        op("post", "/v1/flows/{id}/validate", "Flows", "Validate the draft: every problem with its node", Tenant(ANY_ROLE))
            .ok(200, "valid and problems", Some("AnyObject"))
            .error(404, "not-found"),
        op("post", "/v1/flows/{id}/publish", "Flows", "Publish the draft as an immutable version", Tenant(WRITERS))
            .ok(201, "The version", Some("AnyObject"))
            .error(404, "not-found")
            .error(422, "invalid-flow"),
        op("post", "/v1/flows/{id}/simulate", "Flows", "Simulate a run against scripted events; sends and writes nothing", Tenant(ANY_ROLE))
            .describe("`events`: `{\"type\":\"message\",\"text\":…}` and `{\"type\":\"elapse\",\"ms\":…}`; `contact_id` or a hypothetical `contact`; `version`: draft (default) or a number. Returns each step's output, outcome and the effects it would have had.")
            .body("AnyObject")
            .ok(200, "The trace", Some("AnyObject"))
            .error(404, "not-found")
            .error(422, "invalid-body,invalid-flow"),
        op("get", "/v1/flows/{id}/versions/{version}", "Flows", "A published version", Tenant(ANY_ROLE))
            .ok(200, "The version", Some("AnyObject"))
            .error(404, "not-found"),
        op("get", "/v1/flows/{id}/runs", "Flows", "Runs of a flow, newest first", Tenant(ANY_ROLE))
            .query("status", "string", "running, waiting, completed, failed or cancelled.")
            .query("limit", "integer", "1 to 500, default 50.")
            .ok(200, "Runs", Some("AnyList")),
        op("post", "/v1/flows/{id}/runs", "Flows", "Start a run (api or manual trigger)", Tenant(WRITERS))
            .body("AnyObject")
            .ok(201, "The run", Some("AnyObject"))
            .error(404, "not-found")
            .error(409, "run-active")
            .error(422, "invalid-body,flow-not-startable"),
        op("post", "/v1/flows/{id}/runs/batch", "Flows", "Enroll up to 1,000 contacts (one run each)", Tenant(WRITERS))
            .describe("Body `{contact_ids: [...], payload?, source?: api|manual}`. Answers `{started, skipped, runs: [{contact_id, run_id}], problems: [{contact_id, type: not-found|run-active, detail}]}`: a contact that cannot start is reported, the others start.")
            .body("AnyObject")
            .ok(200, "What started", Some("AnyObject"))
            .error(404, "not-found")
            .error(422, "invalid-body,flow-not-startable"),
        op("get", "/v1/flows/{id}/runs/{run}", "Flows", "A run with each step's input, output, effects, timing and error", Tenant(ANY_ROLE))
            .ok(200, "The run", Some("AnyObject"))
            .error(404, "not-found"),
        op("post", "/v1/flows/{id}/runs/{run}/cancel", "Flows", "Cancel an active run", Tenant(WRITERS))
            .ok(200, "The run", Some("AnyObject"))
            .error(409, "run-not-active"),
        op("post", "/v1/flows/{id}/webhook-secret", "Flows", "A new HMAC secret for the flow's webhook trigger (shown once)", Tenant(ADMIN))
            .describe("From now on calls to the flow's webhook URL must carry `X-PostDog-Signature: sha256=<hex HMAC-SHA256 of the raw body>` keyed with this secret.")
            .ok(201, "The secret", Some("AnyObject"))
            .error(404, "not-found"),
        op("delete", "/v1/flows/{id}/webhook-secret", "Flows", "Remove the webhook secret (calls need no signature)", Tenant(ADMIN))
            .ok(204, "Removed", None)
            .error(404, "not-found"),
        op("post", "/hooks/flows/{token}", "Flows", "Start a run from the flow's webhook trigger", Public)
            .describe("The URL is the flow's `webhook.path`. The JSON body becomes the trigger payload (`trigger.payload` in steps); the trigger's `contact` JSON pointer names the contact (id, phone or email; created when unknown unless `create_contact` is false). A flow with a webhook secret requires `X-PostDog-Signature: sha256=<hex HMAC-SHA256 of the raw body>`. `Idempotency-Key` (or `webhook-id`) makes a retried call return the first call's run (200, `replayed: true`).")
            .ok(202, "Started", Some("AnyObject"))
            .error(401, "bad-signature")
            .error(404, "not-found")
            .error(409, "flow-not-live,run-active")
            .error(422, "invalid-webhook"),
        op("get", "/v1/campaigns", "Campaigns", "Campaigns, newest first", Tenant(ANY_ROLE))
            .ok(200, "Campaigns", Some("AnyList")),
        op("post", "/v1/campaigns", "Campaigns", "Create a campaign (a draft)", Tenant(WRITERS))
            .describe("`audience`: `{segments: [ids], tags: [...], exclude: {segments, tags}}` (only contacts opted in to the install's channel, with a phone, are sent to). `template`: `{name, language, variables: {body: [source…], header: source, buttons: {\"0\": source}}}` where a source is `{field: name|phone|email|<custom field key>, fallback?}` or `{value}`; or `ab`: `{variants: [template…] (2–5), test_percent, metric: delivery|read|reply, duration_seconds}`. Optional `throttle_per_minute`, `quiet_hours: {start: \"21:00\", end: \"08:00\"}` (recipient's `timezone` field or the tenant's), `reply_window_hours` (72).")
            .body("CampaignInput")
            .ok(201, "The campaign", Some("Campaign"))
            .error(422, "invalid-body,invalid-campaign"),
        op("get", "/v1/campaigns/{id}", "Campaigns", "A campaign", Tenant(ANY_ROLE))
            .ok(200, "The campaign", Some("Campaign"))
            .error(404, "not-found"),
        op("put", "/v1/campaigns/{id}", "Campaigns", "Replace a draft or scheduled campaign's definition", Tenant(WRITERS))
            .body("CampaignInput")
            .ok(200, "The campaign", Some("Campaign"))
            .error(404, "not-found")
            .error(409, "campaign-state")
            .error(422, "invalid-body,invalid-campaign"),
        op("delete", "/v1/campaigns/{id}", "Campaigns", "Delete a draft, completed or cancelled campaign", Tenant(WRITERS))
            .ok(204, "Deleted", None)
            .error(404, "not-found")
            .error(409, "campaign-state"),
        op("post", "/v1/campaigns/{id}/preview", "Campaigns", "Dry run: counts, exclusions by reason, a rendered sample and the quota check; writes nothing", Tenant(ANY_ROLE))
            .describe("Reasons: `excluded_segment`, `excluded_tag`, `no_phone`, `opted_out`, `not_opted_in`, `missing_variable:<n>`. `held_for_winner` counts the A/B remainder.")
            .query("sample", "integer", "Rendered messages to return, 0 to 50 (default 5).")
            .ok(200, "The preview", Some("AnyObject"))
            .error(404, "not-found")
            .error(422, "invalid-campaign,template-not-approved"),
        op("post", "/v1/campaigns/{id}/start", "Campaigns", "Start a draft or scheduled campaign now", Tenant(WRITERS))
            .describe("Refused with the numbers (`used`, `allowance`, `remaining`, `needed`) when the campaign does not fit the plan's monthly allowance.")
            .ok(200, "The campaign", Some("Campaign"))
            .error(404, "not-found")
            .error(409, "campaign-state")
            .error(422, "invalid-campaign,template-not-approved,quota-exceeded"),
        op("post", "/v1/campaigns/{id}/schedule", "Campaigns", "Schedule a campaign", Tenant(WRITERS))
            .describe("`at`: RFC 3339 (`2025-06-01T09:00:00Z`, `…+02:00`) or a local date-time (`2025-06-01T09:00`) in the tenant's time zone.")
            .body("CampaignSchedule")
            .ok(200, "The campaign", Some("Campaign"))
            .error(404, "not-found")
            .error(409, "campaign-state")
            .error(422, "invalid-body,invalid-campaign,template-not-approved,quota-exceeded"),
        op("post", "/v1/campaigns/{id}/pause", "Campaigns", "Pause a running campaign", Tenant(WRITERS))
            .ok(200, "The campaign", Some("Campaign"))
            .error(404, "not-found")
            .error(409, "campaign-state"),
        op("post", "/v1/campaigns/{id}/resume", "Campaigns", "Resume a paused campaign", Tenant(WRITERS))
            .ok(200, "The campaign", Some("Campaign"))
            .error(404, "not-found")
            .error(409, "campaign-state")
            .error(422, "quota-exceeded"),
        op("post", "/v1/campaigns/{id}/cancel", "Campaigns", "Cancel a campaign; recipients not yet sent are cancelled", Tenant(WRITERS))
            .ok(200, "The campaign", Some("Campaign"))
            .error(404, "not-found")
            .error(409, "campaign-state"),
        op("post", "/v1/campaigns/{id}/ab/decide", "Campaigns", "Choose the A/B winner now (otherwise chosen after the test duration)", Tenant(WRITERS))
            .describe("Returns the recorded decision: `winner`, `rule` (`significant`, `tie`, `within_noise`, `sample_too_small`), the `explanation` and each variant's numbers. The held remainder is then sent the winner.")
            .ok(200, "The decision", Some("AnyObject"))
            .error(404, "not-found")
            .error(409, "campaign-state")
            .error(422, "invalid-campaign"),
        op("get", "/v1/campaigns/{id}/stats", "Campaigns", "Statistics per campaign and per variant", Tenant(ANY_ROLE))
            .describe("targeted, skipped by reason, held, queued, sent, accepted, pending, delivered, read, replied (an inbound message within the reply window), failed by error code, with rates.")
            .query("reply_window_hours", "number", "Overrides the campaign's reply attribution window.")
            .ok(200, "The statistics", Some("AnyObject"))
            .error(404, "not-found")
            .error(422, "invalid-campaign"),
        op("get", "/v1/campaigns/{id}/recipients.csv", "Campaigns", "Per-recipient CSV export with each message's status history", Tenant(ANY_ROLE))
            .ok(200, "text/csv", None)
            .error(404, "not-found"),
        op("get", "/v1/teams", "Teams", "Teams of agents", Tenant(ANY_ROLE))
            .ok(200, "Teams", Some("AnyList")),
        op("post", "/v1/teams", "Teams", "Create a team (name, members: agent ids in turn order)", Tenant(ADMIN))
            .body("AnyObject")
            .ok(201, "The team", Some("AnyObject"))
            .error(409, "team-name-taken")
            .error(422, "invalid-body"),
        op("get", "/v1/teams/{id}", "Teams", "A team", Tenant(ANY_ROLE))
            .ok(200, "The team", Some("AnyObject"))
            .error(404, "not-found"),
        op("put", "/v1/teams/{id}", "Teams", "Rename a team or replace its members", Tenant(ADMIN))
            .body("AnyObject")
            .ok(200, "The team", Some("AnyObject"))
            .error(404, "not-found")
            .error(409, "team-name-taken")
            .error(422, "invalid-body"),
        op("delete", "/v1/teams/{id}", "Teams", "Delete a team", Tenant(ADMIN))
            .ok(204, "Deleted", None)
            .error(404, "not-found"),
        op("post", "/v1/messages", "Messages", "Send a message through a channel install (outbox)", Tenant(WRITERS))
            .describe("Exactly one of text, template, media, interactive; `contact_id` or `to`. Free-form messages need an open 24-hour window (else 422 window-closed with approved templates suggested); templates must be APPROVED; marketing is never sent to opted-out contacts. Send `Idempotency-Key` to make retries safe: a repeat returns the first message (200, `Idempotent-Replayed: true`), a different body with the same key is 409.")
            .body("SendRequest")
            .ok(202, "Queued", Some("Message"))
            .error(402, "quota-exceeded")
            .error(404, "not-found")
            .error(409, "idempotency-key-reused")
            .error(422, "invalid-body,window-closed,opted-out,template-not-approved"),
        op("get", "/v1/messages/{id}", "Messages", "A message with its status history", Tenant(ANY_ROLE))
            .ok(200, "The message", Some("Message"))
            .error(404, "not-found"),
        op("get", "/v1/conversations", "Inbox", "Conversations, most recent first", Tenant(ANY_ROLE))
            .query("status", "string", "open or closed.")
            .query("assignee", "string", "unassigned, assigned, or an agent id.")
            .query("unread", "boolean", "Only with unread messages.")
            .query("channel", "string", "One channel, e.g. whatsapp.")
            .query("install_id", "string", "One channel install.")
            .query("contact_id", "string", "One contact.")
            .query("before", "integer", "Paging: `next_before` of the previous page.")
            .query("before_id", "string", "Paging: `next_before_id` of the previous page (with `before`; rows sharing its millisecond are then not skipped).")
            .query("limit", "integer", "1 to 200, default 50.")
            .ok(200, "Conversations", Some("ConversationPage"))
            .error(400, "invalid-query"),
        op("get", "/v1/conversations/{id}", "Inbox", "A conversation", Tenant(ANY_ROLE))
            .ok(200, "The conversation", Some("Conversation"))
            .error(404, "not-found"),
        op("get", "/v1/conversations/{id}/messages", "Inbox", "Messages of a conversation, oldest first", Tenant(ANY_ROLE))
            .query("before", "integer", "Only messages created before (Unix ms); paging: `next_before` of the previous page.")
            .query("before_id", "string", "Paging: `next_before_id` of the previous page (with `before`; messages sharing its millisecond are then not skipped).")
            .query("limit", "integer", "1 to 200, default 50.")
            .ok(200, "Messages", Some("MessageList"))
            .error(404, "not-found"),
        op("post", "/v1/conversations/{id}/assign", "Inbox", "Assign to an agent (null unassigns)", Tenant(WRITERS))
            .body("AssignRequest")
            .ok(200, "The conversation", Some("Conversation"))
            .error(404, "not-found")
            .error(422, "invalid-body"),
        op("post", "/v1/conversations/{id}/close", "Inbox", "Close a conversation", Tenant(WRITERS))
            .ok(200, "The conversation", Some("Conversation"))
            .error(404, "not-found"),
        op("post", "/v1/conversations/{id}/reopen", "Inbox", "Reopen a conversation", Tenant(WRITERS))
            .ok(200, "The conversation", Some("Conversation"))
            .error(404, "not-found"),
        op("post", "/v1/conversations/{id}/read", "Inbox", "Mark read (also sends the provider's read receipt)", Tenant(WRITERS))
            .ok(200, "The conversation", Some("Conversation"))
            .error(404, "not-found"),
        op("get", "/v1/conversations/{id}/notes", "Inbox", "Internal notes of a conversation", Tenant(ANY_ROLE))
            .ok(200, "Notes", Some("AnyList"))
            .error(404, "not-found"),
        op("post", "/v1/conversations/{id}/notes", "Inbox", "Add an internal note", Tenant(WRITERS))
            .body("NoteInput")
            .ok(201, "The note", Some("AnyObject"))
            .error(404, "not-found")
            .error(422, "invalid-body"),
        op("get", "/v1/events", "Inbox", "Live events (Server-Sent Events)", Tenant(ANY_ROLE))
            .describe("`message.received`, `message.queued`, `message.status`, `conversation.updated`, `template.status`, `contact.opted_out`, `contact.opted_in`; each `data` is JSON `{type, data}`.")
            .ok(200, "text/event-stream", None),
        op("get", "/v1/messaging/settings", "Channels", "Opt-out and opt-in keywords", Tenant(ANY_ROLE))
            .ok(200, "Settings", Some("MessagingSettings")),
        op("put", "/v1/messaging/settings", "Channels", "Replace the opt-out and opt-in keywords", Tenant(ADMIN))
            .body("MessagingSettings")
            .ok(200, "Settings", Some("MessagingSettings"))
            .error(422, "invalid-body"),
        op("get", "/v1/channels/{install_id}/status", "Channels", "The provider account's state (verified name, quality rating, messaging tier…)", Tenant(ANY_ROLE))
            .ok(200, "Account status", Some("AnyObject"))
            .error(404, "not-found")
            .error(502, "provider-error"),
        op("get", "/v1/templates", "Templates", "Message templates", Tenant(ANY_ROLE))
            .query("install_id", "string", "One channel install.")
            .query("status", "string", "DRAFT, PENDING, APPROVED, REJECTED, PAUSED, DISABLED.")
            .ok(200, "Templates", Some("AnyList")),
        op("post", "/v1/templates", "Templates", "Create a draft template (with lint findings)", Tenant(WRITERS))
            .body("TemplateInput")
            .ok(201, "The template and its findings", Some("TemplateView"))
            .error(404, "not-found")
            .error(409, "duplicate-template")
            .error(422, "invalid-body,invalid-template"),
        op("post", "/v1/templates/lint", "Templates", "Lint a template against Meta's common rejection reasons", Tenant(ANY_ROLE))
            .body("TemplateLint")
            .ok(200, "Findings, submittable, components, preview", Some("AnyObject"))
            .error(422, "invalid-body,invalid-template"),
        op("post", "/v1/templates/sync", "Templates", "Poll the provider for review states now", Tenant(WRITERS))
            .body("AnyObject")
            .ok(200, "How many changed", Some("AnyObject"))
            .error(404, "not-found")
            .error(502, "provider-error"),
        op("get", "/v1/templates/{id}", "Templates", "A template with its findings", Tenant(ANY_ROLE))
            .ok(200, "The template", Some("TemplateView"))
            .error(404, "not-found"),
        op("put", "/v1/templates/{id}", "Templates", "Replace a draft or rejected template's content", Tenant(WRITERS))
            .body("TemplateLint")
            .ok(200, "The template", Some("TemplateView"))
            .error(404, "not-found")
            .error(409, "template-locked")
            .error(422, "invalid-body,invalid-template"),
        op("delete", "/v1/templates/{id}", "Templates", "Delete a template", Tenant(WRITERS))
            .ok(204, "Deleted", None)
            .error(404, "not-found"),
        op("post", "/v1/templates/{id}/submit", "Templates", "Submit for review through the channel plugin", Tenant(WRITERS))
            .ok(200, "The template (PENDING)", Some("TemplateView"))
            .error(404, "not-found")
            .error(409, "template-locked")
            .error(422, "template-lint-failed")
            .error(502, "provider-error"),
        op("get", "/v1/webhooks", "Webhooks", "Webhook endpoints", Tenant(ANY_ROLE))
            .ok(200, "Endpoints", Some("AnyList")),
        op("post", "/v1/webhooks", "Webhooks", "Register an endpoint (the secret is in the answer)", Tenant(ADMIN))
            .describe("Deliveries are signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`), retried for more than 24 h, and the endpoint is disabled after persistent failure.")
            .body("EndpointInput")
            .ok(201, "The endpoint with its secret", Some("AnyObject"))
            .error(422, "invalid-body"),
        op("get", "/v1/webhooks/{id}", "Webhooks", "An endpoint", Tenant(ANY_ROLE))
            .ok(200, "The endpoint", Some("AnyObject"))
            .error(404, "not-found"),
        op("patch", "/v1/webhooks/{id}", "Webhooks", "Change url, description, events or enabled", Tenant(ADMIN))
            .body("AnyObject")
            .ok(200, "The endpoint", Some("AnyObject"))
            .error(404, "not-found")
            .error(422, "invalid-body"),
        op("delete", "/v1/webhooks/{id}", "Webhooks", "Delete an endpoint and its deliveries", Tenant(ADMIN))
            .ok(204, "Deleted", None)
            .error(404, "not-found"),
        op("get", "/v1/webhooks/{id}/secret", "Webhooks", "The endpoint's signing secret", Tenant(ADMIN))
            .ok(200, "The secret", Some("AnyObject"))
            .error(404, "not-found")
            .error(503, "secrets-unavailable"),
        op("post", "/v1/webhooks/{id}/rotate-secret", "Webhooks", "Rotate the secret (the old one also signs for 24 h)", Tenant(ADMIN))
            .ok(200, "The endpoint with its new secret", Some("AnyObject"))
            .error(404, "not-found"),
        op("get", "/v1/webhooks/{id}/deliveries", "Webhooks", "Deliveries with their attempts, newest first", Tenant(ANY_ROLE))
            .query("limit", "integer", "1 to 200, default 50.")
            .ok(200, "Deliveries", Some("AnyList"))
            .error(404, "not-found"),
        op("get", "/v1/jobs", "Jobs", "This tenant's background jobs", Tenant(ANY_ROLE))
            .query("state", "string", "queued, running, done, dead or cancelled.")
            .query("queue", "string", "messages, webhooks, templates, …")
            .query("limit", "integer", "1 to 200, default 50.")
            .ok(200, "Jobs", Some("AnyList"))
            .error(400, "invalid-query"),
        op("get", "/v1/jobs/{id}", "Jobs", "A job", Tenant(ANY_ROLE))
            .ok(200, "The job", Some("AnyObject"))
            .error(404, "not-found"),
        op("post", "/v1/jobs/{id}/retry", "Jobs", "Retry a dead or cancelled job", Tenant(ADMIN))
            .ok(200, "The job", Some("AnyObject"))
            .error(409, "job-not-retryable"),
        op("post", "/v1/jobs/{id}/cancel", "Jobs", "Cancel a job that has not finished", Tenant(ADMIN))
            .ok(200, "The job", Some("AnyObject"))
            .error(409, "job-not-cancellable"),
    ]
}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn list_of(schema: &str) -> Value {
    json!({"type": "object", "properties": {"data": {"type": "array", "items": {"$ref": format!("#/components/schemas/{schema}")}}}, "required": ["data"]})
}

/// The component schemas.
fn schemas() -> Map<String, Value> {
    let text = json!({"type": "string"});
    let nullable_text = json!({"type": ["string", "null"]});
    let time = json!({"type": "integer", "description": "Unix milliseconds"});
    let nullable_time = json!({"type": ["integer", "null"], "description": "Unix milliseconds"});
    let reference = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let channels = json!({"type": "string", "enum": crate::storage::CONSENT_CHANNELS});
    let consent_entry = object(
        json!({"channel": channels, "status": {"type": "string", "enum": ["opted_in", "opted_out"]},
               "source": text, "proof": nullable_text, "recorded_at": time}),
        &["channel", "status", "source", "recorded_at"],
    );
    let branding = json!({"type": "object", "properties": {
        "brand_name": nullable_text, "logo_url": {"type": ["string", "null"], "format": "uri"},
        "primary_color": {"type": ["string", "null"], "pattern": "^#[0-9a-f]{6}$"},
        "custom_domain": nullable_text}});
    let tenant = json!({"type": "object", "properties": {
        "id": text, "name": text, "plan": {"type": "string", "enum": ["starter", "pro", "business"]},
        "status": {"type": "string", "enum": ["active", "suspended"]}, "parent_id": nullable_text,
        "default_country": {"type": "string", "pattern": "^[A-Z]{2}$"}, "timezone": {"type": "string", "description": "IANA time zone schedules are read in"}, "branding": reference("Branding"),
        "requests_per_minute": {"type": ["integer", "null"]}, "created_at": time, "updated_at": time},
        "required": ["id", "name", "plan", "status", "default_country", "timezone", "created_at", "updated_at"]});
    let profile_change = json!({
        "name": text, "default_country": {"type": "string", "description": "ISO 3166-1 alpha-2"},
        "timezone": {"type": "string", "description": "IANA time zone, e.g. Europe/Paris"},
        "brand_name": nullable_text, "logo_url": {"type": ["string", "null"], "description": "https:// URL"},
        "primary_color": {"type": ["string", "null"], "description": "#rrggbb"},
        "custom_domain": {"type": ["string", "null"], "description": "A host name such as chat.example.com"}});
    let mut operator_change = profile_change.clone();
    if let Some(map) = operator_change.as_object_mut() {
        map.insert(
            "plan".into(),
            json!({"type": "string", "enum": ["starter", "pro", "business"]}),
        );
        map.insert(
            "status".into(),
            json!({"type": "string", "enum": ["active", "suspended"]}),
        );
        map.insert(
            "requests_per_minute".into(),
            json!({"type": ["integer", "null"], "minimum": 1, "maximum": 1_000_000}),
        );
    }
    let condition = object(
        json!({"attribute": {"type": "string", "description": "tag, text, name, phone, email, created_at, updated_at, last_contacted_at, consent.<channel> or fields.<key>"},
               "op": {"type": "string", "description": "tag: has, lacks; text: contains; name/phone/email and text fields: eq, neq, contains, starts_with, in, is_set, is_not_set; number/date fields: eq, neq, gt, gte, lt, lte, is_set, is_not_set; times: before, after (Unix ms), within_days, not_within_days, is_set, is_not_set; consent.<channel>: eq (opted_in, opted_out, unknown)"},
               "value": {"description": "Typed as the attribute requires; an array for `in`."}}),
        &["attribute", "op"],
    );
    let import_job = object(
        json!({"id": text, "status": {"type": "string", "enum": ["queued", "running", "completed", "failed"]},
               "duplicates": {"type": "string", "enum": ["skip", "update", "merge"]},
               "mapping": {"type": "object", "additionalProperties": {"type": "string"}},
               "rows_read": {"type": "integer"}, "created": {"type": "integer"}, "updated": {"type": "integer"},
               "skipped": {"type": "integer"}, "failed": {"type": "integer"},
               "opt_ins_refused": {"type": "integer", "description": "Opt-ins in the file not recorded because the contact had opted out: an import never re-subscribes."},
               "error": nullable_text,
               "errors_url": nullable_text, "created_at": time, "finished_at": nullable_time}),
        &[
            "id",
            "status",
            "rows_read",
            "created",
            "updated",
            "skipped",
            "failed",
        ],
    );
    let pairs: Vec<(&str, Value)> = vec![
        (
            "Problem",
            json!({"type": "object", "description": "RFC 9457 problem details; `type` is stable per error, extensions (e.g. `existing_contact_id`, `pointer`) add specifics.",
            "properties": {"type": {"type": "string", "format": "uri"}, "title": text, "status": {"type": "integer"}, "detail": text},
            "required": ["type", "title", "status", "detail"]}),
        ),
        (
            "Health",
            json!({"type": "object", "properties": {"status": text, "version": text, "database": {"type": "string", "enum": ["sqlite", "postgres"]}}}),
        ),
        ("Branding", branding),
        ("Tenant", tenant),
        ("TenantList", list_of("Tenant")),
        (
            "TenantWithUsage",
            json!({"allOf": [reference("Tenant"), {"type": "object", "properties": {"usage": {"type": "object", "properties": {
            "contacts": {"type": "object", "properties": {"count": {"type": "integer"}, "limit": {"type": ["integer", "null"]}}},
            "messages": {"type": "object", "properties": {"month": {"type": "string", "description": "YYYY-MM (UTC)"}, "sent": {"type": "integer", "description": "Messages counted against the allowance this month: queued or sent (one that fails before the provider accepts it is given back)"}, "allowance": {"type": "integer"}, "remaining": {"type": "integer"}}},
            "requests_per_minute": {"type": "integer"}}}}}]}),
        ),
        (
            "NewTenant",
            object(
                json!({"name": text, "plan": {"type": "string", "enum": ["starter", "pro", "business"]}, "parent_id": text}),
                &["name", "plan"],
            ),
        ),
        (
            "NewSubTenant",
            object(
                json!({"name": text, "plan": {"type": "string", "enum": ["starter", "pro", "business"]}}),
                &["name", "plan"],
            ),
        ),
        (
            "ProvisionedTenant",
            json!({"type": "object", "properties": {"tenant": reference("Tenant"), "tenant_id": text, "api_key": {"type": "string", "description": "Shown once."}}}),
        ),
        ("TenantProfileChange", object(profile_change, &[])),
        ("OperatorTenantChange", object(operator_change, &[])),
        (
            "ApiKey",
            json!({"type": "object", "properties": {"id": text, "tenant_id": text, "name": text, "role": {"type": "string", "enum": ["admin", "agent", "read-only"]}, "prefix": text, "created_at": time, "last_used_at": nullable_time, "revoked_at": nullable_time}}),
        ),
        ("ApiKeyList", list_of("ApiKey")),
        (
            "NewApiKey",
            object(
                json!({"name": text, "role": {"type": "string", "enum": ["admin", "agent", "read-only"]}}),
                &["name", "role"],
            ),
        ),
        (
            "CreatedApiKey",
            json!({"allOf": [reference("ApiKey"), {"type": "object", "properties": {"secret": {"type": "string", "description": "Shown once."}}}]}),
        ),
        ("ConsentEntry", consent_entry),
        ("ConsentHistory", list_of("ConsentEntry")),
        (
            "CurrentConsent",
            json!({"type": "object", "properties": {"consent": {"type": "object", "additionalProperties": reference("ConsentEntry")}}}),
        ),
        (
            "ConsentChange",
            object(
                json!({"channel": channels, "status": {"type": "string", "enum": ["opted_in", "opted_out"]}, "source": text, "proof": text}),
                &["channel", "status"],
            ),
        ),
        (
            "Contact",
            json!({"type": "object", "properties": {
            "id": text, "name": nullable_text, "phone": {"type": ["string", "null"], "description": "E.164"},
            "email": nullable_text, "tags": {"type": "array", "items": text}, "fields": {"type": "object"},
            "consent": {"type": "object", "description": "Current state per channel", "additionalProperties": reference("ConsentEntry")},
            "created_at": time, "updated_at": time, "last_contacted_at": nullable_time},
            "required": ["id", "name", "phone", "email", "tags", "fields", "consent", "created_at", "updated_at"]}),
        ),
        (
            "ContactInput",
            object(
                json!({"name": nullable_text, "phone": nullable_text, "email": nullable_text, "tags": {"type": "array", "items": text}, "fields": {"type": "object", "description": "Values of defined custom fields; null removes one."}}),
                &[],
            ),
        ),
        (
            "ContactPage",
            json!({"type": "object", "properties": {"data": {"type": "array", "items": reference("Contact")}, "next_cursor": nullable_text, "total": {"type": "integer", "description": "Search only."}}, "required": ["data", "next_cursor"]}),
        ),
        (
            "MergeRequest",
            object(
                json!({"from": {"type": "string", "description": "The contact merged in and deleted."}}),
                &["from"],
            ),
        ),
        (
            "Note",
            json!({"type": "object", "properties": {"id": text, "contact_id": text, "body": text, "author_key_id": nullable_text, "created_at": time}}),
        ),
        ("NoteList", list_of("Note")),
        (
            "NewNote",
            object(
                json!({"body": {"type": "string", "minLength": 1, "maxLength": 10_000}}),
                &["body"],
            ),
        ),
        (
            "CustomField",
            json!({"type": "object", "properties": {"key": text, "label": text, "kind": {"type": "string", "enum": ["text", "number", "date", "boolean", "select"]}, "options": {"type": "array", "items": text}}}),
        ),
        ("CustomFieldList", list_of("CustomField")),
        (
            "CustomFieldInput",
            object(
                json!({"label": text, "kind": {"type": "string", "enum": ["text", "number", "date", "boolean", "select"]}, "options": {"type": "array", "items": text}}),
                &["label", "kind"],
            ),
        ),
        ("Condition", condition),
        (
            "FilterExpression",
            json!({"description": "A condition or a group; groups nest up to 8 deep, 100 conditions at most.", "oneOf": [
            reference("Condition"),
            object(json!({"and": {"type": "array", "items": reference("FilterExpression")}}), &["and"]),
            object(json!({"or": {"type": "array", "minItems": 1, "items": reference("FilterExpression")}}), &["or"]),
            object(json!({"not": reference("FilterExpression")}), &["not"])]}),
        ),
        (
            "SearchRequest",
            object(
                json!({"filter": reference("FilterExpression"), "after": text, "limit": {"type": "integer", "minimum": 1, "maximum": 200}}),
                &["filter"],
            ),
        ),
        (
            "Segment",
            json!({"type": "object", "properties": {"id": text, "name": text, "expression": reference("FilterExpression"), "count": {"type": "integer"}, "created_at": time, "updated_at": time}}),
        ),
        ("SegmentList", list_of("Segment")),
        (
            "SegmentInput",
            object(
                json!({"name": text, "expression": reference("FilterExpression")}),
                &["name", "expression"],
            ),
        ),
        (
            "SegmentChange",
            object(
                json!({"name": text, "expression": reference("FilterExpression")}),
                &[],
            ),
        ),
        (
            "PreviewRequest",
            object(
                json!({"expression": reference("FilterExpression")}),
                &["expression"],
            ),
        ),
        (
            "Count",
            object(json!({"count": {"type": "integer"}}), &["count"]),
        ),
        (
            "CsvFile",
            json!({"type": "string", "description": "CSV text; the first row names the columns."}),
        ),
        ("ImportJob", import_job),
        ("ImportJobList", list_of("ImportJob")),
        (
            "AuditEntry",
            json!({"type": "object", "properties": {"id": text, "api_key_id": nullable_text, "method": text, "path": text, "status": {"type": "integer"}, "occurred_at": time}}),
        ),
        (
            "AuditPage",
            json!({"type": "object", "properties": {"data": {"type": "array", "items": reference("AuditEntry")}, "next_cursor": nullable_text}}),
        ),
        (
            "PluginSummary",
            json!({"type": "object", "properties": {"name": text, "description": text, "categories": {"type": "array", "items": text}, "world": text, "latest": text, "versions": {"type": "integer"}, "icon": nullable_text, "homepage": nullable_text}}),
        ),
        ("PluginSummaryList", list_of("PluginSummary")),
        (
            "PluginVersion",
            json!({"type": "object", "properties": {"name": text, "version": text, "digest": text, "world": text, "wit": text, "description": text, "capabilities": {"type": "array", "items": text}, "config_schema": {"type": "object"}, "min_host_version": nullable_text, "published_at": time, "yanked": {"type": "boolean"}, "publisher_key": text}}),
        ),
        ("PluginVersionList", list_of("PluginVersion")),
        (
            "Install",
            json!({"type": "object", "properties": {"id": text, "plugin": text, "world": text, "requirement": text, "version": text, "digest": text, "previous_version": nullable_text, "pinned": {"type": "boolean"}, "enabled": {"type": "boolean"},
                "requested_capabilities": {"type": "array", "items": text}, "grants": {"type": "array", "items": text}, "config": {"type": "object"}, "config_schema": {"type": "object"},
                "secrets": {"type": "array", "items": text, "description": "Names of the secrets set; values are never returned."}, "missing_settings": {"type": "array", "items": text},
                "health": {"type": "object", "properties": {"calls": {"type": "integer"}, "failures": {"type": "integer"}, "consecutive_failures": {"type": "integer"}, "last_error": nullable_text, "last_error_at": nullable_time, "circuit": {"type": "string", "enum": ["closed", "open", "half-open"]}, "circuit_open_until": nullable_time}},
                "created_at": time, "updated_at": time}}),
        ),
        ("InstallList", list_of("Install")),
        (
            "LoadedPlugin",
            json!({"type": "object", "properties": {"plugin": text, "version": text, "digest": text}}),
        ),
        ("LoadedPluginList", list_of("LoadedPlugin")),
        (
            "NewInstall",
            object(
                json!({"plugin": {"type": "string", "description": "publisher/name"}, "version": {"type": "string", "description": "Semver requirement, default `*`"}, "grants": {"type": "array", "items": text}, "config": {"type": "object"}}),
                &["plugin"],
            ),
        ),
        (
            "InstallChange",
            object(
                json!({"config": {"type": "object"}, "grants": {"type": "array", "items": text}, "requirement": text, "pinned": {"type": "boolean"}, "enabled": {"type": "boolean"}}),
                &[],
            ),
        ),
        ("SecretValue", object(json!({"value": text}), &["value"])),
        (
            "CallRequest",
            object(
                json!({"function": text, "input": {"description": "The function's input as JSON."}}),
                &[],
            ),
        ),
        (
            "CallResult",
            json!({"type": "object", "properties": {"ok": {}, "error": {}}}),
        ),
        ("AnyObject", json!({"type": "object"})),
        (
            "CampaignInput",
            object(
                json!({"name": text, "install_id": text,
                       "audience": {"type": "object", "properties": {"segments": {"type": "array", "items": text}, "tags": {"type": "array", "items": text},
                                    "exclude": {"type": "object", "properties": {"segments": {"type": "array", "items": text}, "tags": {"type": "array", "items": text}}}}},
                       "template": {"type": "object"}, "ab": {"type": "object"},
                       "throttle_per_minute": {"type": ["integer", "null"]}, "quiet_hours": {"type": ["object", "null"]},
                       "reply_window_hours": {"type": ["number", "null"]}}),
                &["name", "install_id", "audience"],
            ),
        ),
        (
            "Campaign",
            json!({"type": "object", "properties": {"id": text, "name": text, "install_id": text, "channel": text,
                   "status": {"type": "string", "enum": ["draft", "scheduled", "running", "paused", "completed", "cancelled"]},
                   "status_reason": nullable_text, "audience": {"type": "object"}, "variants": {"type": "array", "items": {"type": "object"}},
                   "schedule_at": nullable_time, "ab": {"type": ["object", "null"]}, "ab_decision": {"type": ["object", "null"]},
                   "created_at": time, "updated_at": time}, "required": ["id", "name", "status"]}),
        ),
        ("CampaignSchedule", object(json!({"at": text}), &["at"])),
        (
            "FlowInput",
            object(
                json!({"name": text, "graph": {"type": "object"}}),
                &["name"],
            ),
        ),
        (
            "AnyList",
            json!({"type": "object", "properties": {"data": {"type": "array", "items": {"type": "object"}}}, "required": ["data"]}),
        ),
        (
            "Message",
            json!({"type": "object", "properties": {"id": text, "conversation_id": text, "contact_id": text, "install_id": text,
                "direction": {"type": "string", "enum": ["inbound", "outbound"]}, "kind": text, "content": {"type": "object"},
                "provider_message_id": nullable_text, "status": {"type": "string", "enum": ["received", "queued", "accepted", "sent", "delivered", "read", "failed", "refused"]},
                "error": {"type": ["object", "null"]}, "purpose": {"type": "string", "enum": ["service", "marketing"]},
                "created_at": time, "sent_at": nullable_time, "delivered_at": nullable_time, "read_at": nullable_time, "failed_at": nullable_time,
                "status_history": {"type": "array", "items": {"type": "object"}}}}),
        ),
        (
            "MessageList",
            json!({"type": "object", "properties": {"data": {"type": "array", "items": reference("Message")}, "next_before": nullable_time, "next_before_id": nullable_text}, "required": ["data"]}),
        ),
        (
            "SendRequest",
            object(
                json!({"install_id": text, "contact_id": text, "to": {"type": "string", "description": "A phone number; a contact is created if none has it."},
                    "text": {"type": "object", "properties": {"body": text, "preview_url": {"type": "boolean"}}},
                    "template": {"type": "object", "properties": {"name": text, "language": text, "variables": {"type": "object", "properties": {"header": text, "body": {"type": "array", "items": text}, "buttons": {"type": "object"}}}}},
                    "media": {"type": "object", "properties": {"kind": {"type": "string", "enum": ["image", "video", "audio", "document", "sticker"]}, "url": text, "caption": text, "filename": text}},
                    "interactive": {"type": "object"}, "reply_to": text, "purpose": {"type": "string", "enum": ["service", "marketing"]}}),
                &["install_id"],
            ),
        ),
        (
            "Conversation",
            json!({"type": "object", "properties": {"id": text, "install_id": text, "channel": text, "contact_id": text,
                "status": {"type": "string", "enum": ["open", "closed"]}, "assignee": nullable_text, "unread": {"type": "integer"},
                "window_expires_at": nullable_time, "window_open": {"type": "boolean"}, "last_message_at": time, "last_inbound_at": nullable_time,
                "created_at": time, "updated_at": time}}),
        ),
        (
            "ConversationPage",
            json!({"type": "object", "properties": {"data": {"type": "array", "items": reference("Conversation")}, "next_before": nullable_time, "next_before_id": nullable_text}}),
        ),
        (
            "AssignRequest",
            object(json!({"agent": nullable_text}), &[]),
        ),
        ("NoteInput", object(json!({"body": text}), &["body"])),
        (
            "MessagingSettings",
            object(
                json!({"opt_out_keywords": {"type": "array", "items": text}, "opt_in_keywords": {"type": "array", "items": text}}),
                &["opt_out_keywords", "opt_in_keywords"],
            ),
        ),
        (
            "TemplateSpec",
            json!({"type": "object", "properties": {"name": text, "language": text, "category": {"type": "string", "enum": ["MARKETING", "UTILITY", "AUTHENTICATION"]},
                "header": {"type": "object", "properties": {"format": {"type": "string", "enum": ["text", "image", "video", "document", "location"]}, "text": text, "example": text}},
                "body": {"type": "object", "properties": {"text": text, "examples": {"type": "array", "items": text}}},
                "footer": text, "buttons": {"type": "array", "items": {"type": "object"}}}, "required": ["name", "language", "category", "body"]}),
        ),
        (
            "TemplateInput",
            object(
                json!({"install_id": text, "template": reference("TemplateSpec")}),
                &["install_id", "template"],
            ),
        ),
        (
            "TemplateLint",
            object(
                json!({"template": reference("TemplateSpec")}),
                &["template"],
            ),
        ),
        (
            "TemplateView",
            json!({"type": "object", "properties": {"template": {"type": "object"}, "findings": {"type": "array", "items": {"type": "object"}}}}),
        ),
        (
            "EndpointInput",
            object(
                json!({"url": text, "description": text, "events": {"type": "array", "items": text}}),
                &["url", "events"],
            ),
        ),
    ];
    pairs
        .into_iter()
        .map(|(name, schema)| (name.to_string(), schema))
        .collect()
}

fn reason(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|status| status.canonical_reason())
        .unwrap_or("Error")
}

fn problem_response(status: u16, kinds: &str) -> Value {
    let types: Vec<String> = kinds
        .split(',')
        .map(|kind| format!("`https://postdog.dev/problems/{kind}`"))
        .collect();
    json!({
        "description": format!("{}: {}", reason(status), types.join(", ")),
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

fn build_document() -> Value {
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for operation in operations() {
        let mut parameters: Vec<Value> = operation
            .path
            .split('/')
            .filter_map(|part| part.strip_prefix('{').and_then(|part| part.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        for (name, kind, text) in &operation.query {
            parameters.push(json!({"name": name, "in": "query", "required": false, "description": text, "schema": {"type": kind}}));
        }
        let mut responses = Map::new();
        let (status, text, schema) = operation.ok;
        responses.insert(
            status.to_string(),
            match schema {
                Some(schema) => json!({"description": text, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}),
                None => json!({"description": text}),
            },
        );
        let mut errors: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
        for (status, kinds) in &operation.errors {
            errors.entry(*status).or_default().extend(kinds.split(','));
        }
        if operation
            .body
            .is_some_and(|(media, _)| media == "application/json")
        {
            errors.entry(400).or_default().push("malformed-json");
            errors.entry(413).or_default().push("invalid-body");
            errors
                .entry(415)
                .or_default()
                .push("unsupported-media-type");
        }
        let mut description = operation.description.to_string();
        let security = match operation.access {
            Access::Public => json!([]),
            Access::Tenant(roles) => {
                errors.entry(401).or_default().push("unauthorized");
                errors.entry(403).or_default().extend([
                    "insufficient-role",
                    "tenant-suspended",
                    "not-your-sub-tenant",
                ]);
                errors.entry(429).or_default().push("rate-limited");
                description = format!("{description}\n\nRoles: {}.", roles.join(", "))
                    .trim()
                    .to_string();
                parameters.push(json!({"name": "PostDog-Act-As", "in": "header", "required": false, "description": "A reseller acting on one of its sub-tenants names it here.", "schema": {"type": "string"}}));
                json!([{"apiKey": []}])
            }
            Access::Operator => {
                errors.entry(401).or_default().push("unauthorized");
                json!([{"operatorToken": []}])
            }
        };
        errors.entry(500).or_default().push("internal");
        for (status, kinds) in errors {
            let unique: BTreeSet<&str> = kinds.into_iter().collect();
            let kinds: Vec<&str> = unique.into_iter().collect();
            responses.insert(
                status.to_string(),
                problem_response(status, &kinds.join(",")),
            );
        }
        let mut entry = json!({
            "operationId": format!("{}{}", operation.method, operation.path.replace(['/', '{', '}', '-'], "_")),
            "tags": [operation.tag],
            "summary": operation.summary,
            "parameters": parameters,
            "responses": responses,
            "security": security,
        });
        if !description.is_empty() {
            entry["description"] = json!(description);
        }
        if let Some((media, schema)) = operation.body {
            entry["requestBody"] = json!({"required": true, "content": {media: {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        }
        paths
            .entry(operation.path)
            .or_default()
            .insert(operation.method.to_string(), entry);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "PostDog API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The tenant API (`/v1`, a tenant API key as a Bearer token; rate limited per tenant by plan with `RateLimit-*` headers and `Retry-After` on 429) and the operator API (`/admin/v1`, the operator token). Errors are RFC 9457 problem documents.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "A tenant API key."},
                "operatorToken": {"type": "http", "scheme": "bearer", "description": "The operator token (POSTDOG_OPERATOR_TOKEN)."}
            }
        }
    })
}

/// The document, built once.
pub(super) fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(build_document)
}

async fn openapi_json() -> Json<&'static Value> {
    Json(document())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders the reference page from the document.
fn render_reference() -> String {
    let document = document();
    let mut by_tag: BTreeMap<String, Vec<(String, String, &Value)>> = BTreeMap::new();
    for (path, methods) in document["paths"].as_object().into_iter().flatten() {
        for (method, operation) in methods.as_object().into_iter().flatten() {
            let tag = operation["tags"][0].as_str().unwrap_or("Other").to_string();
            by_tag
                .entry(tag)
                .or_default()
                .push((path.clone(), method.to_uppercase(), operation));
        }
    }
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>PostDog API reference</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>\
         body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}\
         code,pre{font-family:ui-monospace,monospace;font-size:.9em}pre{background:#f5f5f5;padding:.75rem;overflow:auto}\
         .op{border-top:1px solid #ddd;padding:.5rem 0}.method{font-weight:700;display:inline-block;min-width:4.5rem}\
         table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}\
         nav a{margin-right:1rem}</style></head><body><h1>PostDog API reference</h1>",
    );
    html.push_str(&format!(
        "<p>{}</p><p>Version {}. Machine-readable: <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI 3.1).</p><nav>",
        escape(document["info"]["description"].as_str().unwrap_or("")),
        escape(document["info"]["version"].as_str().unwrap_or(""))
    ));
    for tag in by_tag.keys() {
        html.push_str(&format!(
            "<a href=\"#{}\">{}</a>",
            escape(&tag.replace(' ', "-")),
            escape(tag)
        ));
    }
    html.push_str("<a href=\"#schemas\">Schemas</a></nav>");
    for (tag, operations) in &by_tag {
        html.push_str(&format!(
            "<h2 id=\"{}\">{}</h2>",
            escape(&tag.replace(' ', "-")),
            escape(tag)
        ));
        for (path, method, operation) in operations {
            html.push_str(&format!(
                "<div class=\"op\" id=\"{}\"><h3><span class=\"method\">{method}</span><code>{}</code></h3><p>{}</p>",
                escape(operation["operationId"].as_str().unwrap_or("")),
                escape(path),
                escape(operation["summary"].as_str().unwrap_or(""))
            ));
            if let Some(description) = operation["description"].as_str() {
                html.push_str(&format!(
                    "<p>{}</p>",
                    escape(description).replace("\n\n", "</p><p>")
                ));
            }
            if let Some(parameters) = operation["parameters"]
                .as_array()
                .filter(|list| !list.is_empty())
            {
                html.push_str("<table><tr><th>Parameter</th><th>In</th><th>Type</th><th>Description</th></tr>");
                for parameter in parameters {
                    html.push_str(&format!(
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        escape(parameter["name"].as_str().unwrap_or("")),
                        escape(parameter["in"].as_str().unwrap_or("")),
                        escape(parameter["schema"]["type"].as_str().unwrap_or("")),
                        escape(parameter["description"].as_str().unwrap_or(""))
                    ));
                }
                html.push_str("</table>");
            }
            if let Some(content) = operation["requestBody"]["content"].as_object() {
                for (media, body) in content {
                    let schema = body["schema"]["$ref"]
                        .as_str()
                        .unwrap_or("")
                        .rsplit('/')
                        .next()
                        .unwrap_or("");
                    html.push_str(&format!(
                        "<p>Body: <code>{}</code> — <a href=\"#schema-{schema}\">{schema}</a></p>",
                        escape(media)
                    ));
                }
            }
            html.push_str("<table><tr><th>Status</th><th>Meaning</th></tr>");
            for (status, response) in operation["responses"].as_object().into_iter().flatten() {
                html.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td></tr>",
                    escape(status),
                    escape(response["description"].as_str().unwrap_or(""))
                ));
            }
            html.push_str("</table></div>");
        }
    }
    html.push_str("<h2 id=\"schemas\">Schemas</h2>");
    for (name, schema) in document["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        html.push_str(&format!(
            "<h3 id=\"schema-{name}\">{name}</h3><pre>{}</pre>",
            escape(&serde_json::to_string_pretty(schema).unwrap_or_default()),
            name = escape(name)
        ));
    }
    html.push_str("</body></html>");
    html
}

async fn reference_page() -> Html<String> {
    static PAGE: OnceLock<String> = OnceLock::new();
    Html(PAGE.get_or_init(render_reference).clone())
}

/// Whether undocumented routes are refused (`POSTDOG_STRICT_OPENAPI=1`).
fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var("POSTDOG_STRICT_OPENAPI").is_ok_and(|value| value == "1"))
}

/// The matched route and method of a request if the document does not list them.
fn undocumented(request: &Request) -> Option<(String, String)> {
    let path = request.extensions().get::<MatchedPath>()?;
    let method = request.method().as_str().to_ascii_lowercase();
    let documented = document()["paths"][path.as_str()][method.as_str()].is_object();
    (!documented && method != "head").then(|| (method, path.as_str().to_string()))
}

/// Refuses (in strict mode) or logs a request to a route the document does not list.
pub(super) async fn check_documented(request: Request, next: Next) -> Response {
    if let Some((method, path)) = undocumented(&request) {
        tracing::error!(%path, %method, "route missing from the OpenAPI document");
        if strict() {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "undocumented-route",
                "Undocumented route",
                format!("{method} {path} is not in /openapi.json"),
            )
            .into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in the document names a schema it defines.
    #[test]
    fn every_reference_resolves() {
        fn walk(value: &Value, refs: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        refs.push(target.clone());
                    }
                    map.values().for_each(|value| walk(value, refs));
                }
                Value::Array(items) => items.iter().for_each(|value| walk(value, refs)),
                _ => {}
            }
        }
        let document = build_document();
        let mut refs = Vec::new();
        walk(&document, &mut refs);
        assert!(refs.len() > 50);
        for target in refs {
            let name = target.trim_start_matches("#/components/schemas/");
            assert!(
                document["components"]["schemas"][name].is_object(),
                "{target} is not defined"
            );
        }
        let operations = operations();
        let unique: BTreeSet<(&str, &str)> =
            operations.iter().map(|op| (op.method, op.path)).collect();
        assert_eq!(
            unique.len(),
            operations.len(),
            "an operation is listed twice"
        );
    }

    /// The guard sees the matched route of a request routed by a layered router.
    #[tokio::test]
    async fn undocumented_routes_are_detected() {
        use tower::ServiceExt;
        async fn guard(request: Request, next: Next) -> Response {
            match undocumented(&request) {
                Some((method, path)) => {
                    (StatusCode::IM_A_TEAPOT, format!("{method} {path}")).into_response()
                }
                None => next.run(request).await,
            }
        }
        let app: Router = Router::new()
            .route("/v1/contacts/{id}", get(|| async { "documented" }))
            .route(
                "/v1/secret/{id}",
                get(|| async { "not documented" }).post(|| async { "" }),
            )
            .layer(axum::middleware::from_fn(guard));
        for (method, uri, expected) in [
            ("GET", "/v1/contacts/42", StatusCode::OK),
            ("GET", "/v1/secret/42", StatusCode::IM_A_TEAPOT),
            ("POST", "/v1/secret/42", StatusCode::IM_A_TEAPOT),
        ] {
            let request = axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .body(axum::body::Body::empty())
                .expect("request");
            let response = app.clone().oneshot(request).await.expect("response");
            assert_eq!(response.status(), expected, "{method} {uri}");
        }
    }

    #[test]
    fn the_reference_page_lists_every_operation() {
        let page = render_reference();
        for operation in operations() {
            assert!(
                page.contains(&format!("<code>{}</code>", escape(operation.path))),
                "{}",
                operation.path
            );
        }
        assert!(
            !page.contains("http://") && !page.contains("<script"),
            "no external assets"
        );
    }
}
