//! Flow triggers beyond messages, end to end on every backend against a real
//! `postdog serve`: a flow's own webhook URL (unsigned, then HMAC-signed, idempotent
//! retries, bad bodies refused with nothing started), contact events (tag added, field
//! changed, opted in), a cron schedule in the tenant's time zone fanning out to a tagged
//! audience (fired early through the job API, then re-armed for the next week), a
//! team assignment by round-robin, and the http-request action reaching only the hosts
//! the tenant granted (a loopback fake API stands in for the tenant's CRM).

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::routing::get;
use hmac::{Hmac, Mac};
use postdog_tests::fake_graph::{FakeGraph, FakeGraphConfig};
use postdog_tests::{Api, FakeServer, PostdogServer, eventually};
use serde_json::{Value, json};
use sha2::Sha256;

const ACTIONS: [&str; 6] = [
    "postdog/add-tag",
    "postdog/set-field",
    "postdog/end",
    "postdog/send-message",
    "postdog/assign",
    "postdog/condition",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flow_triggers_on_every_backend() {
    for database_url in postdog_tests::database_urls().await {
        scenario(database_url).await;
    }
}

/// The tenant's CRM: `GET /customers/{id}` answers a tier; counts the calls.
/// The CRM the actions call, which also takes the tenant's webhook deliveries
/// (`POST /events`, bodies kept).
async fn fake_crm() -> (FakeServer, Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<Value>>>) {
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let events: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = calls.clone();
    let delivered = events.clone();
    let router = axum::Router::new()
        .route(
            "/customers/{id}",
            get(
                move |axum::extract::Path(id): axum::extract::Path<String>| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().expect("lock").push(id.clone());
                        Json(json!({"customer": {"id": id, "tier": "gold"}}))
                    }
                },
            ),
        )
        .route(
            "/events",
            axum::routing::post(move |Json(event): Json<Value>| {
                let delivered = delivered.clone();
                async move {
                    delivered.lock().expect("lock").push(event);
                }
            }),
        );
    (FakeServer::start(router).await, calls, events)
}

async fn publish(api: &Api, label: &str, name: &str, graph: Value) -> (String, Value) {
    let (status, flow) = api
        .post("/v1/flows", json!({"name": name, "graph": graph}))
        .await;
    assert_eq!(status, 201, "{label}: {flow}");
    let id = flow["id"].as_str().expect("id").to_string();
    let (status, version) = api
        .post(&format!("/v1/flows/{id}/publish"), json!({}))
        .await;
    assert_eq!(status, 201, "{label}: publish {name}: {version}");
    (id, flow)
}

async fn contact(api: &Api, id: &str) -> Value {
    let (status, contact) = api.get(&format!("/v1/contacts/{id}")).await;
    assert_eq!(status, 200, "{contact}");
    contact
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn scenario(database_url: Option<String>) {
    let label = if database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let fake = FakeGraph::start(FakeGraphConfig::default()).await;
    let config = fake.config().clone();
    let (crm, crm_calls, tenant_events) = fake_crm().await;
    let server = PostdogServer::start_with(
        database_url,
        &[
            (
                "POSTDOG_HTTP_OVERRIDES",
                format!(
                    "graph.facebook.com={},crm.example.com={}",
                    fake.base_url(),
                    crm.base_url()
                ),
            ),
            ("POSTDOG_WEBHOOKS_ALLOW_PRIVATE", "1".into()),
        ],
    )
    .await;
    let (api, _) = Api::tenant(&server, "pro").await;
    let (status, endpoint) = api
        .post(
            "/v1/webhooks",
            json!({"url": format!("{}/events", crm.base_url()), "events": ["contact.created"]}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {endpoint}");
    let (other, _) = Api::tenant(&server, "pro").await;
    for action in ACTIONS {
        let (status, body) = api.post("/v1/installs", json!({"plugin": action})).await;
        assert_eq!(status, 201, "{label}: install {action}: {body}");
    }
    let http = reqwest::Client::new();

    // ---- Webhook trigger -------------------------------------------------------------
    let (hook_flow, flow) = publish(&api, label, "Order paid", json!({
        "triggers": [{"id": "hook", "type": "webhook", "contact": "/customer/phone"}],
        "nodes": [
            {"id": "tag", "action": "postdog/add-tag", "config": {"tag": "customer"}},
            {"id": "note", "action": "postdog/set-field", "config": {"field": "last_order", "value": "{{trigger.payload.order.id}}"}},
            {"id": "done", "action": "postdog/end", "config": {}}
        ],
        "edges": [
            {"from": "hook", "to": "tag"},
            {"from": "tag", "port": "next", "to": "note"},
            {"from": "note", "port": "next", "to": "done"}
        ]
    })).await;
    let path = flow["webhook"]["path"]
        .as_str()
        .expect("webhook path")
        .to_string();
    assert!(path.starts_with("/hooks/flows/"), "{label}: {flow}");
    assert_eq!(flow["webhook"]["signed"], false, "{label}: {flow}");
    let url = format!("{}{path}", server.base_url);
    let post = |body: String, headers: Vec<(&'static str, String)>| {
        let mut request = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await.expect("hook call");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    let order = |id: u32| {
        json!({"order": {"id": format!("ord-{id}")}, "customer": {"phone": "+1 415 555 0101"}})
            .to_string()
    };
    let (status, started) = post(order(1), vec![]).await;
    assert_eq!(status, 202, "{label}: {started}");
    let run_id = started["run_id"].as_str().expect("run id").to_string();
    let run = eventually("the webhook run to complete", || {
        let (api, hook_flow, run_id) = (&api, &hook_flow, &run_id);
        async move {
            let (_, run) = api
                .get(&format!("/v1/flows/{hook_flow}/runs/{run_id}"))
                .await;
            (run["status"] == "completed").then_some(run)
        }
    })
    .await;
    let customer = run["contact_id"]
        .as_str()
        .expect("the contact was created")
        .to_string();
    let created = contact(&api, &customer).await;
    assert_eq!(created["phone"], "+14155550101", "{label}: {created}");
    assert_eq!(created["tags"], json!(["customer"]), "{label}: {created}");
    assert_eq!(
        created["fields"]["last_order"], "ord-1",
        "{label}: {created}"
    );

    // The contact the trigger created is announced to the tenant's endpoint, once
    // (later orders from the same phone find it), saying a flow created it.
    let announced = eventually("contact.created for the flow's contact", || async {
        let events = tenant_events.lock().expect("lock").clone();
        events
            .iter()
            .any(|event| event["data"]["phone"] == "+14155550101")
            .then_some(events)
    })
    .await;
    let event = announced
        .iter()
        .find(|event| event["data"]["phone"] == "+14155550101")
        .expect("found");
    assert_eq!(event["type"], "contact.created", "{label}: {event}");
    assert_eq!(event["data"]["source"], "flow", "{label}: {event}");
    assert_eq!(
        event["data"]["contact_id"],
        customer.as_str(),
        "{label}: {event}"
    );

    // Retries with the same Idempotency-Key return the first run; nothing new starts.
    let (status, first) = post(order(2), vec![("idempotency-key", "evt-2".into())]).await;
    assert_eq!(status, 202, "{label}: {first}");
    let (status, again) = post(order(2), vec![("idempotency-key", "evt-2".into())]).await;
    assert_eq!(status, 200, "{label}: {again}");
    assert_eq!(
        (again["replayed"].as_bool(), &again["run_id"]),
        (Some(true), &first["run_id"]),
        "{label}"
    );

    // Bad bodies are refused with what to fix, and start nothing.
    let (_, runs_before) = api.get(&format!("/v1/flows/{hook_flow}/runs")).await;
    let count = |runs: &Value| runs["data"].as_array().map_or(0, Vec::len);
    let (status, problem) = post("{not json".into(), vec![]).await;
    assert_eq!(status, 422, "{label}: {problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not JSON"),
        "{label}: {problem}"
    );
    let (status, problem) = post(json!({"order": {}}).to_string(), vec![]).await;
    assert_eq!(status, 422, "{label}: {problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("/customer/phone"),
        "{label}: {problem}"
    );
    let (status, problem) = post(
        json!({"customer": {"phone": "call me"}}).to_string(),
        vec![],
    )
    .await;
    assert_eq!(status, 422, "{label}: {problem}");
    let (_, runs_after) = api.get(&format!("/v1/flows/{hook_flow}/runs")).await;
    assert_eq!(
        count(&runs_after),
        count(&runs_before),
        "{label}: nothing started"
    );
    let unknown = http
        .post(format!(
            "{}/hooks/flows/0123456789abcdef0123456789abcdef",
            server.base_url
        ))
        .body("{}")
        .send()
        .await
        .expect("call");
    assert_eq!(unknown.status().as_u16(), 404, "{label}");

    // With a secret, calls must be signed.
    let (status, secret) = api
        .post(&format!("/v1/flows/{hook_flow}/webhook-secret"), json!({}))
        .await;
    assert_eq!(status, 201, "{label}: {secret}");
    let secret = secret["secret"].as_str().expect("secret").to_string();
    let (_, shown) = api.get(&format!("/v1/flows/{hook_flow}")).await;
    assert_eq!(shown["webhook"]["signed"], true, "{label}: {shown}");
    assert!(
        !shown.to_string().contains(&secret),
        "{label}: the secret is never shown again"
    );
    let body = order(3);
    let (status, problem) = post(body.clone(), vec![]).await;
    assert_eq!(status, 401, "{label}: {problem}");
    let (status, problem) = post(
        body.clone(),
        vec![("x-postdog-signature", sign("wrong", body.as_bytes()))],
    )
    .await;
    assert_eq!(status, 401, "{label}: {problem}");
    let (status, signed) = post(
        body.clone(),
        vec![("x-postdog-signature", sign(&secret, body.as_bytes()))],
    )
    .await;
    assert_eq!(status, 202, "{label}: {signed}");
    // Another tenant cannot read or drive this flow through its own API.
    let (status, _) = other.get(&format!("/v1/flows/{hook_flow}")).await;
    assert_eq!(status, 404, "{label}");
    let (status, _) = other
        .post(&format!("/v1/flows/{hook_flow}/webhook-secret"), json!({}))
        .await;
    assert_eq!(status, 404, "{label}");
    // A disabled flow refuses calls.
    let (status, _) = api
        .put(&format!("/v1/flows/{hook_flow}"), json!({"enabled": false}))
        .await;
    assert_eq!(status, 200, "{label}");
    let body = order(4);
    let (status, problem) = post(
        body.clone(),
        vec![("x-postdog-signature", sign(&secret, body.as_bytes()))],
    )
    .await;
    assert_eq!(status, 409, "{label}: {problem}");

    // ---- Contact events --------------------------------------------------------------
    let (status, field) = api
        .call(
            reqwest::Method::PUT,
            "/v1/custom-fields/plan",
            Some(json!({"label": "Plan", "kind": "text"})),
        )
        .await;
    assert_eq!(status, 200, "{label}: {field}");
    publish(&api, label, "VIP welcome", json!({
        "triggers": [{"id": "vip", "type": "contact_event", "event": "tag_added", "tag": "vip"}],
        "nodes": [
            {"id": "mark", "action": "postdog/set-field", "config": {"field": "vip_welcomed", "value": "{{trigger.tag}}"}},
            {"id": "done", "action": "postdog/end", "config": {}}
        ],
        "edges": [{"from": "vip", "to": "mark"}, {"from": "mark", "port": "next", "to": "done"}]
    })).await;
    publish(&api, label, "Plan change", json!({
        "triggers": [{"id": "changed", "type": "contact_event", "event": "field_changed", "field": "plan"}],
        "nodes": [
            {"id": "tag", "action": "postdog/add-tag", "config": {"tag": "plan-{{trigger.new}}"}},
            {"id": "done", "action": "postdog/end", "config": {}}
        ],
        "edges": [{"from": "changed", "to": "tag"}, {"from": "tag", "port": "next", "to": "done"}]
    })).await;
    publish(&api, label, "Opt-in thanks", json!({
        "triggers": [{"id": "optin", "type": "contact_event", "event": "opted_in", "channel": "whatsapp"}],
        "nodes": [
            {"id": "tag", "action": "postdog/add-tag", "config": {"tag": "opted-in-flow"}},
            {"id": "done", "action": "postdog/end", "config": {}}
        ],
        "edges": [{"from": "optin", "to": "tag"}, {"from": "tag", "port": "next", "to": "done"}]
    })).await;
    let (status, grace) = api
        .post(
            "/v1/contacts",
            json!({"name": "Grace", "phone": "+14155550102"}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {grace}");
    let grace = grace["id"].as_str().expect("id").to_string();
    // Another tag does not start the VIP flow.
    api.patch(
        &format!("/v1/contacts/{grace}"),
        json!({"tags": ["newsletter"]}),
    )
    .await;
    api.patch(
        &format!("/v1/contacts/{grace}"),
        json!({"tags": ["newsletter", "vip"], "fields": {"plan": "gold"}}),
    )
    .await;
    api.post(
        &format!("/v1/contacts/{grace}/consent"),
        json!({"channel": "whatsapp", "status": "opted_in"}),
    )
    .await;
    let changed = eventually("contact-event flows to run", || {
        let (api, grace) = (&api, &grace);
        async move {
            let contact = contact(api, grace).await;
            let tags: Vec<&str> = contact["tags"]
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            (contact["fields"]["vip_welcomed"] == "vip"
                && tags.contains(&"plan-gold")
                && tags.contains(&"opted-in-flow"))
            .then_some(contact)
        }
    })
    .await;
    let tags = changed["tags"].as_array().expect("tags").clone();
    assert_eq!(
        tags.len(),
        4,
        "{label}: exactly newsletter, vip, plan-gold, opted-in-flow: {changed}"
    );
    // Recording the same consent again is no change, and starts nothing more.
    api.post(
        &format!("/v1/contacts/{grace}/consent"),
        json!({"channel": "whatsapp", "status": "opted_in"}),
    )
    .await;

    // A CSV import that creates a tagged contact reports it too.
    let response = http
        .post(format!("{}/v1/contacts/imports", server.base_url))
        .bearer_auth(&api.key)
        .header("content-type", "text/csv")
        .body("Name,Email,Tags\nIvy,ivy@example.com,vip\n")
        .send()
        .await
        .expect("import");
    assert_eq!(response.status().as_u16(), 202, "{label}");
    eventually("an imported VIP to be welcomed", || {
        let api = &api;
        async move {
            let (_, page) = api.get("/v1/contacts?limit=200").await;
            let ivy = page["data"]
                .as_array()?
                .iter()
                .find(|contact| contact["email"] == "ivy@example.com")?
                .clone();
            (ivy["fields"]["vip_welcomed"] == "vip").then_some(())
        }
    })
    .await;

    // ---- Schedule trigger ------------------------------------------------------------
    let (status, tenant) = api
        .patch("/v1/tenant", json!({"timezone": "Asia/Tokyo"}))
        .await;
    assert_eq!(status, 200, "{label}: {tenant}");
    assert_eq!(tenant["timezone"], "Asia/Tokyo", "{label}: {tenant}");
    let (status, problem) = api
        .patch("/v1/tenant", json!({"timezone": "Mars/Olympus"}))
        .await;
    assert_eq!(status, 422, "{label}: {problem}");
    let mut weekly = Vec::new();
    for (index, name) in ["Ann", "Ben", "Cat"].iter().enumerate() {
        let (_, created) = api
            .post(
                "/v1/contacts",
                json!({"name": name, "email": format!("w{index}@example.com"), "tags": ["weekly"]}),
            )
            .await;
        weekly.push(created["id"].as_str().expect("id").to_string());
    }
    let (bad_status, bad) = api
        .post(
            "/v1/flows",
            json!({"name": "Bad cron", "graph": {
                "triggers": [{"id": "s", "type": "schedule", "cron": "0 9 * *"}],
                "nodes": [{"id": "done", "action": "postdog/end", "config": {}}],
                "edges": [{"from": "s", "to": "done"}]
            }}),
        )
        .await;
    assert_eq!(bad_status, 201, "{label}: {bad}");
    let (_, report) = api
        .post(
            &format!("/v1/flows/{}/validate", bad["id"].as_str().expect("id")),
            json!({}),
        )
        .await;
    assert!(
        report["problems"].to_string().contains("5 fields"),
        "{label}: {report}"
    );
    let (digest_flow, _) = publish(&api, label, "Monday digest", json!({
        "triggers": [{"id": "monday", "type": "schedule", "cron": "0 9 * * MON", "audience": {"tag": "weekly"}}],
        "nodes": [
            {"id": "mark", "action": "postdog/set-field", "config": {"field": "digest", "value": "{{trigger.scheduled_at}}"}},
            {"id": "done", "action": "postdog/end", "config": {}}
        ],
        "edges": [{"from": "monday", "to": "mark"}, {"from": "mark", "port": "next", "to": "done"}]
    })).await;
    let schedule_jobs = |api: &Api| {
        let api = api.clone();
        let digest_flow = digest_flow.clone();
        async move {
            let (_, jobs) = api.get("/v1/jobs?queue=flows&state=queued").await;
            jobs["data"]
                .as_array()
                .map(|jobs| {
                    jobs.iter()
                        .filter(|job| {
                            job["kind"] == "flow.schedule"
                                && job["payload"]["flow_id"] == digest_flow.as_str()
                        })
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }
    };
    let armed = schedule_jobs(&api).await;
    assert_eq!(armed.len(), 1, "{label}: one firing armed: {armed:?}");
    let at = armed[0]["run_at"].as_i64().expect("run_at");
    let tokyo = at / 1000 + 9 * 3600;
    assert_eq!(tokyo % 86_400, 9 * 3600, "{label}: 09:00 in Tokyo: {at}");
    assert_eq!((tokyo / 86_400 + 4) % 7, 1, "{label}: on a Monday: {at}");
    assert!(
        at > postdog_host::storage::now_ms(),
        "{label}: in the future"
    );
    assert!(
        at - postdog_host::storage::now_ms() <= 7 * 86_400_000,
        "{label}: within a week"
    );
    // Fire it now (cancel + retry: an operator's "run now"), as if Monday had come.
    let job_id = armed[0]["id"].as_str().expect("job id").to_string();
    let (status, _) = api
        .post(&format!("/v1/jobs/{job_id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}");
    let (status, _) = api
        .post(&format!("/v1/jobs/{job_id}/retry"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}");
    for id in &weekly {
        eventually("the scheduled run to reach each weekly contact", || {
            let (api, id) = (&api, id);
            async move { (contact(api, id).await["fields"]["digest"] == json!(at)).then_some(()) }
        })
        .await;
    }
    assert!(
        contact(&api, &grace).await["fields"]
            .get("digest")
            .is_none(),
        "{label}: only the audience"
    );
    let (_, runs) = api.get(&format!("/v1/flows/{digest_flow}/runs")).await;
    assert_eq!(
        count(&runs),
        3,
        "{label}: one run per audience member: {runs}"
    );
    // And the next Monday is armed.
    let next = eventually("the next firing to be armed", || {
        let api = api.clone();
        let schedule_jobs = &schedule_jobs;
        async move {
            schedule_jobs(&api)
                .await
                .into_iter()
                .find(|job| job["run_at"].as_i64() != Some(at))
        }
    })
    .await;
    assert_eq!(
        next["run_at"].as_i64(),
        Some(at + 7 * 86_400_000),
        "{label}: {next}"
    );

    // ---- Team assignment (round-robin) -----------------------------------------------
    let (status, install) = api
        .post(
            "/v1/installs",
            json!({"plugin": "postdog/whatsapp", "grants": ["http:graph.facebook.com", "webhook"],
                   "config": {"phone_number_id": config.phone_number_id, "waba_id": config.waba_id}}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {install}");
    let install_id = install["id"].as_str().expect("id").to_string();
    for (name, value) in [
        ("access_token", config.access_token.as_str()),
        ("app_secret", config.app_secret.as_str()),
        ("verify_token", "v"),
    ] {
        api.put(
            &format!("/v1/installs/{install_id}/secrets/{name}"),
            json!({ "value": value }),
        )
        .await;
    }
    fake.set_webhook_target(format!("{}/hooks/{install_id}", server.base_url));
    let (status, team) = api
        .post(
            "/v1/teams",
            json!({"name": "Support", "members": ["agent-a", "agent-b"]}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {team}");
    let team_id = team["id"].as_str().expect("id").to_string();
    let (status, taken) = api
        .post("/v1/teams", json!({"name": "Support", "members": []}))
        .await;
    assert_eq!(status, 409, "{label}: {taken}");
    let (status, _) = other.get(&format!("/v1/teams/{team_id}")).await;
    assert_eq!(status, 404, "{label}: teams are per tenant");
    publish(&api, label, "Route to support", json!({
        "triggers": [{"id": "help", "type": "keyword", "keyword": "help"}],
        "nodes": [
            {"id": "route", "action": "postdog/assign", "config": {"team_id": team_id, "strategy": "round-robin"}},
            {"id": "done", "action": "postdog/end", "config": {}}
        ],
        "edges": [{"from": "help", "to": "route"}, {"from": "route", "port": "next", "to": "done"}]
    })).await;
    publish(&api, label, "Urgent to the least busy", json!({
        "triggers": [{"id": "urgent", "type": "keyword", "keyword": "urgent"}],
        "nodes": [
            {"id": "route", "action": "postdog/assign", "config": {"team_id": team_id, "strategy": "least-busy"}},
            {"id": "done", "action": "postdog/end", "config": {}}
        ],
        "edges": [{"from": "urgent", "to": "route"}, {"from": "route", "port": "next", "to": "done"}]
    })).await;
    let mut seen: Vec<String> = Vec::new();
    let mut assignees: Vec<String> = Vec::new();
    for (phone, text) in [
        ("+14155550111", "help"),
        ("+14155550112", "help"),
        ("+14155550113", "help"),
        ("+14155550114", "urgent"),
        ("+14155550115", "urgent"),
    ] {
        fake.inbound_text(phone, "Caller", text)
            .await
            .expect("inbound");
        let (id, agent) = eventually("the new conversation to be assigned", || {
            let (api, seen) = (&api, &seen);
            async move {
                let (_, conversations) = api.get("/v1/conversations").await;
                conversations["data"]
                    .as_array()?
                    .iter()
                    .find_map(|conversation| {
                        let id = conversation["id"].as_str()?;
                        let agent = conversation["assignee"].as_str()?;
                        (!seen.iter().any(|known| known == id))
                            .then(|| (id.to_string(), agent.to_string()))
                    })
            }
        })
        .await;
        seen.push(id);
        assignees.push(agent);
    }
    // Round-robin takes turns; least-busy then picks b (1 open vs 2), then a (2 each:
    // the first in member order).
    assert_eq!(
        assignees,
        ["agent-a", "agent-b", "agent-a", "agent-b", "agent-a"],
        "{label}"
    );

    // ---- http-request reaches only granted hosts -------------------------------------
    let (status, refused) = api
        .post(
            "/v1/installs",
            json!({"plugin": "postdog/http-request", "grants": ["http:*"]}),
        )
        .await;
    assert_eq!(status, 422, "{label}: a bare * is never granted: {refused}");
    let (status, body) = api
        .post("/v1/installs", json!({"plugin": "postdog/http-request", "grants": ["http-tenant-hosts", "http:crm.example.com"]}))
        .await;
    assert_eq!(status, 201, "{label}: {body}");
    let (crm_flow, _) = publish(&api, label, "Enrich", json!({
        "triggers": [{"id": "api", "type": "api"}],
        "nodes": [
            {"id": "lookup", "action": "postdog/http-request", "config": {
                "url": "https://crm.example.com/customers/{{contact.id}}",
                "response_map": {"tier": "/customer/tier"}}},
            {"id": "save", "action": "postdog/set-field", "config": {"field": "tier", "value": "{{steps.lookup.tier}}"}},
            {"id": "elsewhere", "action": "postdog/http-request", "config": {"url": "https://evil.example.net/steal"}},
            {"id": "done", "action": "postdog/end", "config": {}},
            {"id": "refused", "action": "postdog/add-tag", "config": {"tag": "http-refused"}}
        ],
        "edges": [
            {"from": "api", "to": "lookup"},
            {"from": "lookup", "port": "next", "to": "save"},
            {"from": "save", "port": "next", "to": "elsewhere"},
            {"from": "elsewhere", "port": "next", "to": "done"},
            {"from": "elsewhere", "port": "error", "to": "refused"},
            {"from": "refused", "port": "next", "to": "done"}
        ]
    })).await;
    let (status, run) = api
        .post(
            &format!("/v1/flows/{crm_flow}/runs"),
            json!({"contact_id": grace}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {run}");
    let enriched = eventually("the CRM lookup", || {
        let (api, grace) = (&api, &grace);
        async move {
            let contact = contact(api, grace).await;
            let refused = contact["tags"]
                .as_array()?
                .iter()
                .any(|tag| tag == "http-refused");
            (contact["fields"]["tier"] == "gold" && refused).then_some(contact)
        }
    })
    .await;
    assert_eq!(enriched["fields"]["tier"], "gold", "{label}");
    assert_eq!(
        *crm_calls.lock().expect("lock"),
        vec![grace.clone()],
        "{label}: one call, to the granted host"
    );
    // Every order came from the same phone: its contact was announced once.
    let announced = tenant_events
        .lock()
        .expect("lock")
        .iter()
        .filter(|event| event["data"]["phone"] == "+14155550101")
        .count();
    assert_eq!(
        announced, 1,
        "{label}: one contact.created for the flow's contact"
    );
    drop(server);
}
