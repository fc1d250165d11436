//! Automation flows end to end, on every backend: a real `postdog serve`, the
//! first-party action plugins from the marketplace, the WhatsApp connector and the
//! loopback Graph API. A tenant validates a broken draft (every problem named with its
//! node), publishes a flow, and a keyword in an inbound message starts a run that asks a
//! question, waits for the reply, branches on it with a condition and tags the contact;
//! a run keeps its version when a new one is published; an API-triggered flow sets a
//! field; another tenant sees nothing.

use postdog_tests::fake_graph::{FakeGraph, FakeGraphConfig};
use postdog_tests::{Api, PostdogServer, eventually};
use serde_json::{Value, json};

const ACTIONS: [&str; 6] = [
    "postdog/send-message",
    "postdog/wait-for-reply",
    "postdog/condition",
    "postdog/add-tag",
    "postdog/set-field",
    "postdog/end",
];

fn pricing_flow(question: &str) -> Value {
    json!({
        "triggers": [
            {"id": "kw", "type": "keyword", "keyword": "pricing", "match": "contains"},
            {"id": "agent", "type": "manual"}
        ],
        "nodes": [
            {"id": "ask", "action": "postdog/send-message", "config": {"text": question}},
            {"id": "answer", "action": "postdog/wait-for-reply", "config": {"timeout": "1h"}},
            {"id": "is_a", "action": "postdog/condition", "config": {"expression": "lower(steps.answer.reply) == 'a'"}},
            {"id": "tag_a", "action": "postdog/add-tag", "config": {"tag": "plan-a"}},
            {"id": "note", "action": "postdog/set-field", "config": {"field": "plan_answer", "value": "{{steps.answer.reply}}"}},
            {"id": "done", "action": "postdog/end", "config": {}},
            {"id": "gave_up", "action": "postdog/end", "config": {}}
        ],
        "edges": [
            {"from": "kw", "to": "ask"},
            {"from": "agent", "to": "ask"},
            {"from": "ask", "port": "next", "to": "answer"},
            {"from": "answer", "port": "reply", "to": "is_a"},
            {"from": "answer", "port": "timeout", "to": "gave_up"},
            {"from": "is_a", "port": "yes", "to": "tag_a"},
            {"from": "is_a", "port": "no", "to": "note"},
            {"from": "tag_a", "port": "next", "to": "done"},
            {"from": "note", "port": "next", "to": "done"}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flows_end_to_end_on_every_backend() {
    for database_url in postdog_tests::database_urls().await {
        scenario(database_url).await;
    }
}

async fn scenario(database_url: Option<String>) {
    let label = if database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let fake = FakeGraph::start(FakeGraphConfig::default()).await;
    let config = fake.config().clone();
    let server = PostdogServer::start_with(
        database_url,
        &[(
            "POSTDOG_HTTP_OVERRIDES",
            format!("graph.facebook.com={}", fake.base_url()),
        )],
    )
    .await;
    let (api, _) = Api::tenant(&server, "pro").await;
    let (other, _) = Api::tenant(&server, "pro").await;
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
        let (status, body) = api
            .put(
                &format!("/v1/installs/{install_id}/secrets/{name}"),
                json!({ "value": value }),
            )
            .await;
        assert!(status.is_success(), "{label}: {body}");
    }
    fake.set_webhook_target(format!("{}/hooks/{install_id}", server.base_url));
    for action in ACTIONS {
        let (status, body) = api.post("/v1/installs", json!({"plugin": action})).await;
        assert_eq!(status, 201, "{label}: install {action}: {body}");
    }

    // A broken draft: every problem, each with its node.
    let (status, flow) = api
        .post("/v1/flows", json!({"name": "Broken", "graph": {
            "triggers": [{"id": "t", "type": "api"}],
            "nodes": [
                {"id": "a", "action": "postdog/add-tag", "config": {"tag": "x", "colour": "red"}},
                {"id": "b", "action": "acme/teleport", "config": {}},
                {"id": "c", "action": "postdog/add-tag", "config": {}},
                {"id": "d", "action": "postdog/end", "config": {}},
                {"id": "e", "action": "postdog/condition", "config": {"expression": "contact.fields.loyalty > 'gold' and"}}
            ],
            "edges": [
                {"from": "t", "to": "a"},
                {"from": "a", "port": "next", "to": "c"},
                {"from": "c", "port": "next", "to": "a"},
                {"from": "a", "port": "sideways", "to": "d"}
            ]
        }}))
        .await;
    assert_eq!(status, 201, "{label}: {flow}");
    let broken = flow["id"].as_str().expect("id").to_string();
    let (_, report) = api
        .post(&format!("/v1/flows/{broken}/validate"), json!({}))
        .await;
    assert_eq!(report["valid"], false, "{label}: {report}");
    let problems = report["problems"].as_array().expect("problems");
    let about = |node: &str, needle: &str| {
        problems.iter().any(|p| {
            p["node"] == node && p["message"].as_str().unwrap_or_default().contains(needle)
        })
    };
    assert!(
        about("a", "colour"),
        "{label}: unknown config key: {report}"
    );
    assert!(about("b", "unknown action"), "{label}: {report}");
    assert!(
        about("c", "tag"),
        "{label}: missing required config: {report}"
    );
    assert!(about("a", "no port `sideways`"), "{label}: {report}");
    assert!(about("b", "cannot be reached"), "{label}: {report}");
    assert!(
        about("e", "the condition does not check"),
        "{label}: {report}"
    );
    assert!(
        problems.iter().any(|p| p["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no wait")),
        "{label}: {report}"
    );
    let (status, refused) = api
        .post(&format!("/v1/flows/{broken}/publish"), json!({}))
        .await;
    assert_eq!(status, 422, "{label}: {refused}");

    // The pricing flow: published, started by a keyword.
    let (_, flow) = api
        .post("/v1/flows", json!({"name": "Pricing", "graph": pricing_flow("Hi {{contact.name}}! Plan A or plan B?")}))
        .await;
    let flow_id = flow["id"].as_str().expect("id").to_string();
    let (status, report) = api
        .post(&format!("/v1/flows/{flow_id}/validate"), json!({}))
        .await;
    assert_eq!(
        (status.as_u16(), report["valid"].as_bool()),
        (200, Some(true)),
        "{label}: {report}"
    );
    let (status, version) = api
        .post(&format!("/v1/flows/{flow_id}/publish"), json!({}))
        .await;
    assert_eq!(
        (status.as_u16(), version["version"].as_i64()),
        (201, Some(1)),
        "{label}: {version}"
    );

    // The simulator: a hypothetical contact, scripted messages and time; nothing is
    // sent or stored.
    let sent_before = fake.sent_count();
    let (status, trace) = api
        .post(&format!("/v1/flows/{flow_id}/simulate"), json!({
            "contact": {"name": "Zed"},
            "events": [{"type": "message", "text": "pricing?"}, {"type": "message", "text": "b"}]
        }))
        .await;
    assert_eq!(status, 200, "{label}: {trace}");
    let nodes: Vec<&str> = trace["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["node"].as_str())
        .collect();
    assert_eq!(
        nodes,
        ["ask", "answer", "is_a", "note", "done"],
        "{label}: {trace}"
    );
    assert_eq!(
        trace["steps"][0]["effects"][0]["send_message"]["content"]["text"],
        "Hi Zed! Plan A or plan B?",
        "{label}: {trace}"
    );
    assert_eq!(
        trace["contact"]["fields"]["plan_answer"], "b",
        "{label}: {trace}"
    );
    let (_, timed_out) = api
        .post(&format!("/v1/flows/{flow_id}/simulate"), json!({
            "contact": {"name": "Zed"},
            "events": [{"type": "message", "text": "pricing"}, {"type": "elapse", "ms": 7_200_000}]
        }))
        .await;
    let nodes: Vec<&str> = timed_out["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["node"].as_str())
        .collect();
    assert_eq!(nodes, ["ask", "answer", "gave_up"], "{label}: {timed_out}");
    assert_eq!(
        fake.sent_count(),
        sent_before,
        "{label}: the simulator sent nothing"
    );
    let (_, runs) = api.get(&format!("/v1/flows/{flow_id}/runs")).await;
    assert_eq!(
        runs["data"].as_array().map(Vec::len),
        Some(0),
        "{label}: and stored no run"
    );

    let ada = "+14155550123";
    let (_, status) = fake
        .inbound_text(ada, "Ada", "What is your pricing?")
        .await
        .expect("inbound");
    assert_eq!(status, 200);
    let question = eventually("the question at Meta", || async {
        fake.sent()
            .into_iter()
            .find(|s| s.text() == Some("Hi Ada! Plan A or plan B?"))
    })
    .await;
    assert_eq!(question.to, "14155550123");
    let run = eventually("the run waiting for the reply", || async {
        let (_, runs) = api.get(&format!("/v1/flows/{flow_id}/runs")).await;
        runs["data"]
            .as_array()
            .and_then(|runs| runs.first().cloned())
            .filter(|run| run["waiting_for"] == "reply")
    })
    .await;
    let run_id = run["id"].as_str().expect("id").to_string();
    let contact_id = run["contact_id"].as_str().expect("contact").to_string();
    // No second run for Ada while this one is active (re-entry is off).
    let (status, refused) = api
        .post(
            &format!("/v1/flows/{flow_id}/runs"),
            json!({"contact_id": contact_id, "source": "manual"}),
        )
        .await;
    assert_eq!(status, 409, "{label}: {refused}");

    // Bob starts a run on version 1 too; then version 2 changes the question.
    let bob = "+14155550124";
    fake.inbound_text(bob, "Bob", "pricing please")
        .await
        .expect("inbound");
    eventually("Bob's question", || async {
        fake.sent()
            .into_iter()
            .find(|s| s.text() == Some("Hi Bob! Plan A or plan B?"))
    })
    .await;
    let (status, _) = api
        .put(
            &format!("/v1/flows/{flow_id}"),
            json!({"graph": pricing_flow("Hello {{contact.name}}, A or B?")}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, version) = api
        .post(&format!("/v1/flows/{flow_id}/publish"), json!({}))
        .await;
    assert_eq!(
        (status.as_u16(), version["version"].as_i64()),
        (201, Some(2)),
        "{label}"
    );

    // Ada answers "a": the condition takes `yes`, she is tagged.
    fake.inbound_text(ada, "Ada", "A").await.expect("inbound");
    let finished = eventually("Ada's run completed", || async {
        let (_, run) = api.get(&format!("/v1/flows/{flow_id}/runs/{run_id}")).await;
        (run["status"] == "completed").then_some(run)
    })
    .await;
    let path: Vec<&str> = finished["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["node_id"].as_str())
        .collect();
    assert_eq!(
        path,
        ["ask", "answer", "is_a", "tag_a", "done"],
        "{label}: {finished}"
    );
    assert_eq!(finished["steps"][2]["output"]["result"], true, "{label}");
    assert!(
        finished["steps"][0]["effects"][0]["send_message"]["message_id"].is_string(),
        "{label}: {finished}"
    );
    let (_, contact) = api.get(&format!("/v1/contacts/{contact_id}")).await;
    assert!(
        contact["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .any(|t| t == "plan-a"),
        "{label}: {contact}"
    );
    let (_, runs) = api.get(&format!("/v1/flows/{flow_id}/runs")).await;
    let ada_runs = runs["data"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| r["contact_id"] == contact_id.as_str())
        .count();
    assert_eq!(ada_runs, 1, "{label}: one active run per contact: {runs}");
    assert_eq!(
        fake.sent()
            .iter()
            .filter(|s| s.text() == Some("Hi Ada! Plan A or plan B?"))
            .count(),
        1,
        "{label}: the question was sent once"
    );

    // Bob answers "B" on version 1: `no`, the answer lands in a field.
    fake.inbound_text(bob, "Bob", "B").await.expect("inbound");
    let bob_run = eventually("Bob's run completed", || async {
        let (_, runs) = api
            .get(&format!("/v1/flows/{flow_id}/runs?status=completed"))
            .await;
        runs["data"]
            .as_array()?
            .iter()
            .find(|r| r["contact_id"] != contact_id.as_str())
            .cloned()
    })
    .await;
    assert_eq!(bob_run["version"], 1, "{label}: a run stays on its version");
    let (_, bob_contact) = api
        .get(&format!(
            "/v1/contacts/{}",
            bob_run["contact_id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(
        bob_contact["fields"]["plan_answer"], "B",
        "{label}: {bob_contact}"
    );

    // A new run gets version 2.
    fake.inbound_text("+14155550125", "Cy", "pricing")
        .await
        .expect("inbound");
    eventually("version 2's question", || async {
        fake.sent()
            .into_iter()
            .find(|s| s.text() == Some("Hello Cy, A or B?"))
    })
    .await;

    // An API-triggered flow.
    let (_, flow) = api
        .post("/v1/flows", json!({"name": "VIP", "graph": {
            "triggers": [{"id": "api", "type": "api"}],
            "nodes": [
                {"id": "mark", "action": "postdog/set-field", "config": {"field": "tier", "value": "{{trigger.payload.tier}}"}},
                {"id": "stop", "action": "postdog/end", "config": {}}
            ],
            "edges": [{"from": "api", "to": "mark"}, {"from": "mark", "port": "next", "to": "stop"}]
        }}))
        .await;
    let vip = flow["id"].as_str().expect("id").to_string();
    let (status, _) = api
        .post(
            &format!("/v1/flows/{vip}/runs"),
            json!({"contact_id": contact_id}),
        )
        .await;
    assert_eq!(status, 422, "{label}: not published yet");
    api.post(&format!("/v1/flows/{vip}/publish"), json!({}))
        .await;
    let (status, run) = api
        .post(
            &format!("/v1/flows/{vip}/runs"),
            json!({"contact_id": contact_id, "payload": {"tier": "gold"}}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {run}");
    eventually("the field set", || async {
        let (_, contact) = api.get(&format!("/v1/contacts/{contact_id}")).await;
        (contact["fields"]["tier"] == "gold").then_some(())
    })
    .await;

    // Bulk enrollment: every known contact starts, an unknown one is reported.
    let mut enrolled = Vec::new();
    for (name, phone) in [("Dee", "+14155550161"), ("Eve", "+14155550162")] {
        let (status, contact) = api
            .post("/v1/contacts", json!({"name": name, "phone": phone}))
            .await;
        assert_eq!(status, 201, "{label}: {contact}");
        enrolled.push(contact["id"].as_str().expect("id").to_string());
    }
    let (status, batch) = api
        .post(
            &format!("/v1/flows/{vip}/runs/batch"),
            json!({"contact_ids": [enrolled[0], "no-such-contact", enrolled[1]], "payload": {"tier": "silver"}}),
        )
        .await;
    assert_eq!(status, 200, "{label}: {batch}");
    assert_eq!(
        (batch["started"].as_u64(), batch["skipped"].as_u64()),
        (Some(2), Some(1)),
        "{label}: {batch}"
    );
    assert_eq!(
        batch["problems"][0]["contact_id"], "no-such-contact",
        "{label}: {batch}"
    );
    assert_eq!(
        batch["problems"][0]["type"], "not-found",
        "{label}: {batch}"
    );
    assert_eq!(
        batch["runs"][1]["contact_id"],
        enrolled[1].as_str(),
        "{label}: {batch}"
    );
    for id in &enrolled {
        eventually("the batch's field", || async {
            let (_, contact) = api.get(&format!("/v1/contacts/{id}")).await;
            (contact["fields"]["tier"] == "silver").then_some(())
        })
        .await;
    }
    for bad in [
        json!({"contact_ids": []}),
        json!({"contact_ids": vec!["x"; 1001]}),
        json!({"contact_ids": "x"}),
    ] {
        let (status, problem) = api.post(&format!("/v1/flows/{vip}/runs/batch"), bad).await;
        assert_eq!(status, 422, "{label}: {problem}");
    }

    // Another tenant sees none of it.
    let (_, theirs) = other.get("/v1/flows").await;
    assert_eq!(theirs["data"].as_array().map(Vec::len), Some(0), "{label}");
    assert_eq!(
        other.get(&format!("/v1/flows/{flow_id}")).await.0,
        404,
        "{label}"
    );
    assert_eq!(
        other
            .get(&format!("/v1/flows/{flow_id}/runs/{run_id}"))
            .await
            .0,
        404,
        "{label}"
    );
    assert_eq!(
        other
            .post(&format!("/v1/flows/{vip}/runs"), json!({}))
            .await
            .0,
        404,
        "{label}"
    );
    assert_eq!(
        other
            .post(
                &format!("/v1/flows/{vip}/runs/batch"),
                json!({"contact_ids": [contact_id]})
            )
            .await
            .0,
        404,
        "{label}: another tenant cannot enroll into this flow"
    );
}
