//! Campaigns end to end, on SQLite and PostgreSQL, against the loopback Graph API with the
//! production WhatsApp connector:
//! - a campaign to an audience of tags minus an excluded segment and tag, where consent
//!   (opted out, never opted in), a missing phone and a variable without value or
//!   fallback each skip a contact with its reason — in the preview and at the send; the
//!   plan's allowance refuses the start with the numbers and an upgrade lifts it at once;
//!   every eligible contact gets exactly one correctly rendered template; statistics
//!   (delivered, read, replied, skipped by reason) and the CSV export with each
//!   message's status history; another tenant sees none of it (404 on every route);
//! - an A/B test whose statuses are driven through the fake's webhooks: the variant with
//!   the clearly better read rate wins, the decision and its numbers are recorded, and
//!   the held remainder is sent the winner only;
//! - a campaign of 3,000 recipients killed with SIGKILL in the middle of its fan-out and
//!   started again: at the fake, every targeted recipient received exactly one message;
//! - time: a campaign scheduled at a local date-time without an offset is read in the
//!   tenant's time zone (a past one is a 422) and sends nothing before that instant, then
//!   one message per recipient; quiet hours hold a recipient whose own `timezone` field
//!   puts it inside them (queued in the statistics and the export, cancelled with the
//!   campaign, never sent) while recipients whose zone — their own or the tenant's —
//!   puts them outside are sent at once; an A/B test decides by itself when its duration
//!   is up, keeps the first variant when the samples are under `MIN_SAMPLE` (even though
//!   the other looked better) and says why, and sends the held remainder that variant.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use postdog_host::campaigns::MIN_SAMPLE;
use postdog_host::ids::TenantId;
use postdog_host::storage::{ConsentEntry, ContactData};
use postdog_tests::fake_graph::{Failure, FakeGraph, FakeGraphConfig, SentMessage};
use postdog_tests::{Api, OPERATOR_TOKEN, PostdogServer, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn label(database_url: Option<&String>) -> &'static str {
    if database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    }
}

/// A server with a tenant, a WhatsApp install wired to `fake`, and a high request rate.
async fn setup(
    database_url: Option<String>,
    fake: &FakeGraph,
    plan: &str,
    env: &[(&str, String)],
) -> (PostdogServer, Api, String, String) {
    let mut all_env = vec![(
        "POSTDOG_HTTP_OVERRIDES",
        format!("graph.facebook.com={}", fake.base_url()),
    )];
    all_env.extend(env.iter().cloned());
    let server = PostdogServer::start_with(database_url, &all_env).await;
    let (api, tenant_id) = Api::tenant(&server, plan).await;
    let response = reqwest::Client::new()
        .patch(format!("{}/admin/v1/tenants/{tenant_id}", server.base_url))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"requests_per_minute": 1_000_000}))
        .send()
        .await
        .expect("request");
    assert!(response.status().is_success(), "raise the rate");
    let install_id = connect(&server, &api, fake, 1000).await;
    (server, api, tenant_id, install_id)
}

/// Installs the WhatsApp connector for `api`'s tenant, wired to `fake`'s number with
/// `throughput` sends a second, and points the fake's webhooks at it; the install id.
async fn connect(server: &PostdogServer, api: &Api, fake: &FakeGraph, throughput: u32) -> String {
    let config = fake.config().clone();
    let (status, install) = api
        .post(
            "/v1/installs",
            json!({"plugin": "postdog/whatsapp", "grants": ["http:graph.facebook.com", "webhook"],
                   "config": {"phone_number_id": config.phone_number_id, "waba_id": config.waba_id,
                              "throughput_per_second": throughput}}),
        )
        .await;
    assert_eq!(status, 201, "{install}");
    let install_id = install["id"].as_str().expect("id").to_string();
    for (secret, value) in [
        ("access_token", config.access_token.as_str()),
        ("app_secret", config.app_secret.as_str()),
        ("verify_token", "v"),
    ] {
        let (status, body) = api
            .put(
                &format!("/v1/installs/{install_id}/secrets/{secret}"),
                json!({ "value": value }),
            )
            .await;
        assert!(status.is_success(), "{body}");
    }
    fake.set_webhook_target(format!("{}/hooks/{install_id}", server.base_url));
    install_id
}

/// Creates, submits and approves (through the fake's webhook) a MARKETING template.
async fn approved_template(
    api: &Api,
    fake: &FakeGraph,
    install_id: &str,
    name: &str,
    body: &str,
    examples: &[&str],
) {
    let (status, created) = api
        .post(
            "/v1/templates",
            json!({"install_id": install_id, "template": {
                "name": name, "language": "en_US", "category": "MARKETING",
                "body": {"text": body, "examples": examples},
                "footer": "Reply STOP to opt out"}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["template"]["id"].as_str().expect("id").to_string();
    let (status, submitted) = api
        .post(&format!("/v1/templates/{id}/submit"), json!({}))
        .await;
    assert_eq!(status, 200, "{submitted}");
    assert_eq!(
        fake.approve_template(name, "en_US").await.expect("approve"),
        Some(200)
    );
    let (_, approved) = api.get(&format!("/v1/templates/{id}")).await;
    assert_eq!(approved["template"]["status"], "APPROVED", "{approved}");
}

/// The body parameters of a template send.
fn body_parameters(message: &SentMessage) -> Vec<String> {
    message.body["template"]["components"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|component| component["type"] == "body")
        .flat_map(|component| {
            component["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|parameter| parameter["text"].as_str().map(str::to_string))
        .collect()
}

/// (name, phone, email, tags, city, consent, expected outcome).
type Person = (
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
    Vec<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
);

async fn wait_for_status(api: &Api, id: &str, status: &str) -> Value {
    eventually(&format!("campaign {id} to be {status}"), || async {
        let (_, campaign) = api.get(&format!("/v1/campaigns/{id}")).await;
        (campaign["status"] == status).then_some(campaign)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn campaign_end_to_end_on_every_backend() {
    for database_url in postdog_tests::database_urls().await {
        end_to_end(database_url).await;
    }
}

async fn end_to_end(database_url: Option<String>) {
    let label = label(database_url.as_ref());
    let fake = FakeGraph::start(FakeGraphConfig::default()).await;
    let (server, api, tenant_id, install_id) = setup(database_url, &fake, "starter", &[]).await;
    let (status, body) = api
        .put(
            "/v1/custom-fields/city",
            json!({"label": "City", "kind": "text"}),
        )
        .await;
    assert_eq!(status, 200, "{label}: {body}");
    approved_template(
        &api,
        &fake,
        &install_id,
        "spring_sale",
        "Hi {{1}}, spring sale in {{2}}: 20% off.",
        &["Ada", "Paris"],
    )
    .await;
    let (status, segment) = api
        .post(
            "/v1/segments",
            json!({"name": "Berliners", "expression": {"attribute": "fields.city", "op": "eq", "value": "Berlin"}}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {segment}");
    let berliners = segment["id"].as_str().expect("id").to_string();

    // (name, phone, email, tags, city, consent) → expected outcome.
    let people: Vec<Person> = vec![
        (
            Some("Ada"),
            Some("+14155550101"),
            None,
            vec!["vip"],
            Some("Paris"),
            Some("opted_in"),
            "sent",
        ),
        (
            Some("Grace"),
            Some("+14155550102"),
            None,
            vec!["vip"],
            None,
            Some("opted_in"),
            "sent",
        ),
        (
            Some("Linus"),
            Some("+14155550103"),
            None,
            vec!["fans"],
            Some("Oslo"),
            Some("opted_in"),
            "sent",
        ),
        (
            Some("Barbara"),
            Some("+14155550104"),
            None,
            vec!["vip", "fans"],
            Some("Rome"),
            Some("opted_in"),
            "sent",
        ),
        (
            Some("Ken"),
            Some("+14155550105"),
            None,
            vec!["vip"],
            Some("Lyon"),
            Some("opted_in"),
            "sent",
        ),
        (
            Some("Out"),
            Some("+14155550106"),
            None,
            vec!["vip"],
            None,
            Some("opted_out"),
            "opted_out",
        ),
        (
            Some("Unknown"),
            Some("+14155550107"),
            None,
            vec!["vip"],
            None,
            None,
            "not_opted_in",
        ),
        (
            None,
            Some("+14155550108"),
            None,
            vec!["vip"],
            None,
            Some("opted_in"),
            "missing_variable:1",
        ),
        (
            Some("Blocked"),
            Some("+14155550109"),
            None,
            vec!["vip", "blocked"],
            None,
            Some("opted_in"),
            "excluded_tag",
        ),
        (
            Some("Berlin"),
            Some("+14155550110"),
            None,
            vec!["vip"],
            Some("Berlin"),
            Some("opted_in"),
            "excluded_segment",
        ),
        (
            Some("Mailonly"),
            None,
            Some("mail@example.com"),
            vec!["vip"],
            None,
            Some("opted_in"),
            "no_phone",
        ),
        (
            Some("Outsider"),
            Some("+14155550112"),
            None,
            vec!["other"],
            None,
            Some("opted_in"),
            "not targeted",
        ),
    ];
    let mut expected: HashMap<String, (&str, Option<&str>, Option<&str>)> = HashMap::new(); // id → (outcome, name, city)
    let mut phones: HashMap<String, String> = HashMap::new();
    for (name, phone, email, tags, city, consent, outcome) in &people {
        let mut contact = json!({"tags": tags});
        if let Some(name) = name {
            contact["name"] = json!(name);
        }
        if let Some(phone) = phone {
            contact["phone"] = json!(phone);
        }
        if let Some(email) = email {
            contact["email"] = json!(email);
        }
        if let Some(city) = city {
            contact["fields"] = json!({"city": city});
        }
        let (status, created) = api.post("/v1/contacts", contact).await;
        assert_eq!(status, 201, "{label}: {created}");
        let id = created["id"].as_str().expect("id").to_string();
        if let Some(consent) = consent {
            let (status, body) = api
                .post(
                    &format!("/v1/contacts/{id}/consent"),
                    json!({"channel": "whatsapp", "status": consent}),
                )
                .await;
            assert_eq!(status, 201, "{label}: {body}");
        }
        if let Some(phone) = phone {
            phones.insert(phone.trim_start_matches('+').to_string(), id.clone());
        }
        expected.insert(id, (*outcome, *name, *city));
    }

    // Bad definitions are 422s that say what to fix.
    let good = json!({
        "name": "Spring sale", "install_id": install_id,
        "audience": {"tags": ["vip", "fans"], "exclude": {"segments": [berliners], "tags": ["blocked"]}},
        "template": {"name": "spring_sale", "language": "en_US", "variables": {"body": [
            {"field": "name"}, {"field": "city", "fallback": "your city"}]}},
    });
    for (change, needle) in [
        (json!({"audience": {"tags": []}}), "audience"),
        (json!({"audience": {"segments": ["nope"]}}), "no segment"),
        (
            json!({"template": {"name": "spring_sale", "language": "en_US", "variables": {"body": [{"field": "name"}]}}}),
            "2 body variables",
        ),
        (
            json!({"template": {"name": "spring_sale", "language": "en_US", "variables": {"body": [{"field": "name"}, {"field": "shoe_size"}]}}}),
            "custom field",
        ),
        (
            json!({"template": {"name": "spring_sale", "language": "en_US", "variables": {"header": {"value": "Hi"}, "body": [{"field": "name"}, {"field": "city"}]}}}),
            "the template has no header",
        ),
        (
            json!({"template": {"name": "spring_sale", "language": "en_US", "variables": {"body": [{"field": "name"}, {"value": "line\nbreak"}]}}}),
            "line break",
        ),
        (
            json!({"template": {"name": "missing", "language": "en_US"}}),
            "no template",
        ),
        (json!({"install_id": "nope"}), "install"),
        (json!({"throttle_per_minute": 0}), "throttle_per_minute"),
        (
            json!({"quiet_hours": {"start": "25:00", "end": "08:00"}}),
            "quiet_hours",
        ),
    ] {
        let mut body = good.clone();
        for (key, value) in change.as_object().expect("object") {
            body[key] = value.clone();
        }
        let (status, problem) = api.post("/v1/campaigns", body).await;
        assert_eq!(status, 422, "{label}: {change} → {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{label}: {change} → {problem}"
        );
    }
    let (status, campaign) = api.post("/v1/campaigns", good.clone()).await;
    assert_eq!(status, 201, "{label}: {campaign}");
    let id = campaign["id"].as_str().expect("id").to_string();
    assert_eq!(campaign["status"], "draft");

    // The preview: counts, reasons, a rendered sample; nothing is written or sent.
    let (status, preview) = api
        .post(&format!("/v1/campaigns/{id}/preview?sample=2"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {preview}");
    assert_eq!(preview["targeted"], 11, "{label}: {preview}");
    assert_eq!(preview["eligible"], 5, "{label}: {preview}");
    for reason in [
        "opted_out",
        "not_opted_in",
        "missing_variable:1",
        "excluded_tag",
        "excluded_segment",
        "no_phone",
    ] {
        assert_eq!(
            preview["excluded"][reason], 1,
            "{label}: {reason} in {preview}"
        );
    }
    let sample = preview["sample"].as_array().expect("sample");
    assert_eq!(sample.len(), 2, "{label}: {preview}");
    for entry in sample {
        let (_, name, city) = expected[entry["contact_id"].as_str().expect("id")];
        assert_eq!(
            entry["text"].as_str().expect("text").lines().next(),
            Some(
                format!(
                    "Hi {}, spring sale in {}: 20% off.",
                    name.expect("name"),
                    city.unwrap_or("your city")
                )
                .as_str()
            ),
            "{label}: {entry}"
        );
    }
    assert_eq!(fake.sent_count(), 0, "{label}");
    let (_, untouched) = api.get(&format!("/v1/campaigns/{id}/stats")).await;
    assert_eq!(
        (&untouched["targeted"], &untouched["status"]),
        (&json!(0), &json!("draft")),
        "{label}: the preview writes no recipient: {untouched}"
    );

    // The month's allowance: 4,997 of the starter plan's 5,000 are used, the campaign
    // needs 5 → refused with the numbers; an upgrade lifts it at once.
    let storage = server.storage().await;
    let db = storage.tenant(&TenantId::new(&tenant_id));
    db.record_messages_sent(4_997, postdog_host::storage::now_ms())
        .await
        .expect("usage");
    let (status, refused) = api
        .post(&format!("/v1/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!(status, 422, "{label}: {refused}");
    assert_eq!(
        refused["type"],
        "https://postdog.dev/problems/quota-exceeded"
    );
    assert_eq!(
        (
            &refused["used"],
            &refused["allowance"],
            &refused["remaining"],
            &refused["needed"]
        ),
        (&json!(4_997), &json!(5_000), &json!(3), &json!(5)),
        "{label}: {refused}"
    );
    let response = reqwest::Client::new()
        .patch(format!("{}/admin/v1/tenants/{tenant_id}", server.base_url))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"plan": "pro"}))
        .send()
        .await
        .expect("request");
    assert!(response.status().is_success(), "{label}: upgrade");
    // On the pro plan's 50,000, leave 10: fewer than the 11 contacts the audience
    // reaches, enough for the 5 eligible ones (the eligible count decides), and for
    // the 5 of the throttled campaign below.
    db.record_messages_sent(50_000 - 4_997 - 10, postdog_host::storage::now_ms())
        .await
        .expect("usage");
    let (status, started) = api
        .post(&format!("/v1/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {started}");
    assert_eq!(started["status"], "running", "{label}: {started}");
    let (status, again) = api
        .post(&format!("/v1/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!(status, 409, "{label}: {again}");
    let (status, edit) = api.put(&format!("/v1/campaigns/{id}"), good.clone()).await;
    assert_eq!(status, 409, "{label}: {edit}");

    // Exactly one correctly rendered template per eligible contact.
    eventually("five sends at Meta", || async {
        (fake.sent_count() >= 5).then_some(())
    })
    .await;
    wait_for_status(&api, &id, "completed").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = fake.sent();
    assert_eq!(sent.len(), 5, "{label}: {} sends", sent.len());
    let mut wamids = HashMap::new();
    for message in &sent {
        assert_eq!(message.template_name(), Some("spring_sale"), "{label}");
        let contact_id = &phones[&message.wa_id];
        let (outcome, name, city) = expected[contact_id];
        assert_eq!(outcome, "sent", "{label}: {} got a message", message.wa_id);
        assert_eq!(
            body_parameters(message),
            vec![
                name.expect("name").to_string(),
                city.unwrap_or("your city").to_string()
            ],
            "{label}: {}",
            message.body
        );
        assert!(
            wamids
                .insert(contact_id.clone(), message.wamid.clone())
                .is_none()
        );
    }

    // Statuses and a reply through the fake's webhooks.
    let ids: Vec<String> = wamids.keys().cloned().collect();
    for (index, contact_id) in ids.iter().enumerate() {
        let wamid = &wamids[contact_id];
        assert_eq!(
            fake.deliver_status(wamid, "delivered", None)
                .await
                .expect("status"),
            200
        );
        if index < 3 {
            assert_eq!(
                fake.deliver_status(wamid, "read", None)
                    .await
                    .expect("status"),
                200
            );
        }
    }
    let replier = &ids[0];
    let phone = phones
        .iter()
        .find(|(_, id)| *id == replier)
        .map(|(phone, _)| phone.clone())
        .expect("phone");
    let (_, status) = fake
        .inbound_text(&format!("+{phone}"), "Reply", "Thanks!")
        .await
        .expect("inbound");
    assert_eq!(status, 200, "{label}");
    let stats = eventually("the statuses in the statistics", || async {
        let (_, stats) = api.get(&format!("/v1/campaigns/{id}/stats")).await;
        (stats["read"] == 3 && stats["delivered"] == 5 && stats["replied"] == 1).then_some(stats)
    })
    .await;
    assert_eq!(stats["targeted"], 11, "{label}: {stats}");
    assert_eq!(stats["sent"], 5, "{label}: {stats}");
    assert_eq!(stats["accepted"], 5, "{label}: {stats}");
    assert_eq!(stats["skipped"]["total"], 6, "{label}: {stats}");
    assert_eq!(
        stats["skipped"]["by_reason"]["opted_out"], 1,
        "{label}: {stats}"
    );
    assert_eq!(
        stats["skipped"]["by_reason"]["missing_variable:1"], 1,
        "{label}: {stats}"
    );
    assert_eq!(stats["failed"]["total"], 0, "{label}: {stats}");
    assert_eq!(stats["rates"]["read"], 0.6, "{label}: {stats}");
    assert_eq!(stats["rates"]["reply"], 0.2, "{label}: {stats}");
    assert_eq!(stats["variants"][0]["name"], "A", "{label}: {stats}");
    assert_eq!(stats["variants"][0]["read"], 3, "{label}: {stats}");
    // A zero-hour window would be refused; a narrower one still counts the reply.
    let (status, _) = api
        .get(&format!("/v1/campaigns/{id}/stats?reply_window_hours=0"))
        .await;
    assert_eq!(status, 422, "{label}");
    let (status, narrow) = api
        .get(&format!("/v1/campaigns/{id}/stats?reply_window_hours=0.5"))
        .await;
    assert_eq!(status, 200, "{label}: {narrow}");
    assert_eq!(
        (&narrow["replied"], &narrow["reply_window_hours"]),
        (&json!(1), &json!(0.5)),
        "{label}: {narrow}"
    );

    // The export: one row per recipient with the status history of its message.
    let response = api
        .send(
            reqwest::Method::GET,
            &format!("/v1/campaigns/{id}/recipients.csv"),
            None,
        )
        .await;
    assert_eq!(response.status(), 200, "{label}");
    let csv = response.text().await.expect("csv");
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let headers = reader.headers().expect("headers").clone();
    let column = |name: &str| headers.iter().position(|h| h == name).expect(name);
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), 11, "{label}: {csv}");
    for row in &rows {
        let (outcome, _, _) = expected[&row[column("contact_id")]];
        if outcome == "sent" {
            assert_eq!(&row[column("state")], "sent", "{label}: {row:?}");
            let history = &row[column("status_history")];
            assert!(
                history.contains("accepted@") && history.contains("delivered@"),
                "{label}: {row:?}"
            );
        } else {
            assert_eq!(&row[column("state")], "skipped", "{label}: {row:?}");
            assert_eq!(&row[column("skip_reason")], outcome, "{label}: {row:?}");
        }
    }

    // Another tenant sees nothing of it.
    let (other, _) = Api::tenant(&server, "business").await;
    let (status, list) = other.get("/v1/campaigns").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"], json!([]), "{label}");
    for (method, path) in [
        ("GET", format!("/v1/campaigns/{id}")),
        ("PUT", format!("/v1/campaigns/{id}")),
        ("DELETE", format!("/v1/campaigns/{id}")),
        ("POST", format!("/v1/campaigns/{id}/preview")),
        ("POST", format!("/v1/campaigns/{id}/start")),
        ("POST", format!("/v1/campaigns/{id}/pause")),
        ("POST", format!("/v1/campaigns/{id}/resume")),
        ("POST", format!("/v1/campaigns/{id}/cancel")),
        ("POST", format!("/v1/campaigns/{id}/ab/decide")),
        ("GET", format!("/v1/campaigns/{id}/stats")),
        ("GET", format!("/v1/campaigns/{id}/recipients.csv")),
    ] {
        let body = if method == "PUT" {
            Some(good.clone())
        } else if method == "POST" {
            Some(json!({}))
        } else {
            None
        };
        let (status, problem) = other
            .call(
                reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                &path,
                body,
            )
            .await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{label}: {method} {path}: {problem}"
        );
    }
    let (status, _) = api.delete(&format!("/v1/campaigns/{id}")).await;
    assert_eq!(status, 204, "{label}: a completed campaign can be deleted");

    // Pause, resume and cancel, on a campaign throttled to 12 messages a minute: the
    // first goes at once, the next 5 s later — after a pause and a resume too (a resume
    // queues the waiting recipients again, but does not reset the pace: the campaign's
    // throttle lane still holds the first send's turn); cancelling marks the rest
    // cancelled.
    let mut slow = good.clone();
    slow["name"] = json!("Slow");
    slow["throttle_per_minute"] = json!(12);
    let (status, campaign) = api.post("/v1/campaigns", slow).await;
    assert_eq!(status, 201, "{label}: {campaign}");
    let slow_id = campaign["id"].as_str().expect("id").to_string();
    let (status, started) = api
        .post(&format!("/v1/campaigns/{slow_id}/start"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {started}");
    eventually("the first throttled send", || async {
        (fake.sent_count() == 6).then_some(())
    })
    .await;
    let (status, paused) = api
        .post(&format!("/v1/campaigns/{slow_id}/pause"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {paused}");
    assert_eq!(paused["status"], "paused");
    let (status, _) = api
        .post(&format!("/v1/campaigns/{slow_id}/pause"), json!({}))
        .await;
    assert_eq!(status, 409, "{label}: pausing twice");
    let (status, resumed) = api
        .post(&format!("/v1/campaigns/{slow_id}/resume"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {resumed}");
    eventually("the next send after the resume", || async {
        (fake.sent_count() == 7).then_some(())
    })
    .await;
    let (status, cancelled) = api
        .post(&format!("/v1/campaigns/{slow_id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {cancelled}");
    assert_eq!(cancelled["status"], "cancelled", "{label}: {cancelled}");
    assert_eq!(cancelled["recipients_cancelled"], 3, "{label}: {cancelled}");
    let (_, stats) = api.get(&format!("/v1/campaigns/{slow_id}/stats")).await;
    assert_eq!(
        (&stats["sent"], &stats["cancelled"]),
        (&json!(2), &json!(3)),
        "{label}: {stats}"
    );
    storage.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ab_test_sends_the_winner_to_the_rest_on_every_backend() {
    for database_url in postdog_tests::database_urls().await {
        ab_test(database_url).await;
    }
}

/// Seeds `n` contacts tagged `tag`, opted in to WhatsApp, phones `+1415{prefix}{i:04}`.
async fn seed_contacts(server: &PostdogServer, tenant_id: &str, tag: &str, prefix: &str, n: usize) {
    let storage = server.storage().await;
    let db = storage.tenant(&TenantId::new(tenant_id));
    futures::stream::iter(0..n)
        .map(|i| {
            let db = db.clone();
            async move {
                let contact = db
                    .create_contact(&ContactData {
                        name: Some(format!("Person{i:04}")),
                        phone: Some(format!("+1415{prefix}{i:04}")),
                        email: None,
                        tags: vec![tag.to_string()],
                        fields: json!({}),
                    })
                    .await
                    .expect("contact");
                db.record_consent(
                    &contact.id,
                    &ConsentEntry {
                        channel: "whatsapp".into(),
                        status: "opted_in".into(),
                        source: "test".into(),
                        proof: None,
                        recorded_at: 0,
                    },
                )
                .await
                .expect("consent");
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    storage.close().await;
}

/// An A/B campaign of two approved templates, `{prefix}_a` and `{prefix}_b`, to
/// `contacts` opted-in contacts tagged `prefix` with phones `+1415{phones}…` (test share
/// `test_percent`, metric read, decided after an hour); its id.
async fn ab_campaign(
    server: &PostdogServer,
    api: &Api,
    fake: &FakeGraph,
    (tenant_id, install_id): (&str, &str),
    (prefix, phones): (&str, &str),
    contacts: usize,
    test_percent: u32,
) -> String {
    for (variant, body) in [
        ("a", "Hi {{1}}, new arrivals."),
        ("b", "Dear {{1}}, 30% off today only!"),
    ] {
        let name = format!("{prefix}_{variant}");
        approved_template(api, fake, install_id, &name, body, &["Ada"]).await;
    }
    seed_contacts(server, tenant_id, prefix, phones, contacts).await;
    let variant = |variant: &str| json!({"name": format!("{prefix}_{variant}"), "language": "en_US", "variables": {"body": [{"field": "name"}]}});
    let (status, campaign) = api
        .post(
            "/v1/campaigns",
            json!({"name": prefix, "install_id": install_id, "audience": {"tags": [prefix]},
                   "ab": {"variants": [variant("a"), variant("b")], "test_percent": test_percent,
                          "metric": "read", "duration_seconds": 3600}}),
        )
        .await;
    assert_eq!(status, 201, "{campaign}");
    campaign["id"].as_str().expect("id").to_string()
}

async fn ab_test(database_url: Option<String>) {
    let label = label(database_url.as_ref());
    let fake = FakeGraph::start(FakeGraphConfig::default()).await;
    let (server, api, tenant_id, install_id) = setup(database_url, &fake, "business", &[]).await;
    let id = ab_campaign(
        &server,
        &api,
        &fake,
        (&tenant_id, &install_id),
        ("promo", "555"),
        240,
        50,
    )
    .await;
    let (status, preview) = api
        .post(&format!("/v1/campaigns/{id}/preview"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {preview}");
    let in_a = preview["by_variant"]["A"].as_u64().expect("A");
    let in_b = preview["by_variant"]["B"].as_u64().expect("B");
    let held = preview["held_for_winner"].as_u64().expect("held");
    // Exactly half in the test, split evenly.
    assert_eq!((in_a, in_b, held), (60, 60, 120), "{label}: {preview}");
    let (status, early) = api
        .post(&format!("/v1/campaigns/{id}/ab/decide"), json!({}))
        .await;
    assert_eq!(status, 409, "{label}: a draft has no results yet: {early}");
    let (status, started) = api
        .post(&format!("/v1/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {started}");

    // The test share goes out; B's messages are read, A's only delivered.
    let test_size = usize::try_from(in_a + in_b).expect("size");
    eventually("the test share at Meta", || async {
        (fake.sent_count() >= test_size).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let test_sends = fake.sent();
    assert_eq!(
        test_sends.len(),
        test_size,
        "{label}: only the test share before the decision"
    );
    let count = |template: &str| {
        test_sends
            .iter()
            .filter(|m| m.template_name() == Some(template))
            .count()
    };
    assert_eq!(
        (count("promo_a"), count("promo_b")),
        (
            usize::try_from(in_a).expect("a"),
            usize::try_from(in_b).expect("b")
        ),
        "{label}"
    );
    for message in &test_sends {
        let status = if message.template_name() == Some("promo_b") {
            "read"
        } else {
            "delivered"
        };
        assert_eq!(
            fake.deliver_status(&message.wamid, status, None)
                .await
                .expect("status"),
            200
        );
    }
    eventually("the reads in the statistics", || async {
        let (_, stats) = api.get(&format!("/v1/campaigns/{id}/stats")).await;
        (stats["read"] == in_b && stats["delivered"] == in_a + in_b).then_some(())
    })
    .await;

    // The decision: B, clearly; recorded with the numbers; the remainder gets B only.
    let (status, decided) = api
        .post(&format!("/v1/campaigns/{id}/ab/decide"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {decided}");
    let decision = &decided["decision"];
    assert_eq!(decision["winner"], "B", "{label}: {decision}");
    assert_eq!(decision["rule"], "significant", "{label}: {decision}");
    assert_eq!(
        decision["variants"][1]["successes"], in_b,
        "{label}: {decision}"
    );
    assert_eq!(
        decision["variants"][0]["successes"], 0,
        "{label}: {decision}"
    );
    let (_, shown) = api.get(&format!("/v1/campaigns/{id}")).await;
    assert_eq!(shown["ab_decision"]["winner"], "B", "{label}: {shown}");
    wait_for_status(&api, &id, "completed").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = fake.sent();
    assert_eq!(all.len(), 240, "{label}: every contact once");
    let recipients: HashSet<&str> = all.iter().map(|m| m.wa_id.as_str()).collect();
    assert_eq!(recipients.len(), 240, "{label}: nobody twice");
    let remainder: Vec<&SentMessage> = all[test_size..].iter().collect();
    assert!(
        remainder
            .iter()
            .all(|m| m.template_name() == Some("promo_b")),
        "{label}: the remainder got the winner"
    );
    let (_, again) = api
        .post(&format!("/v1/campaigns/{id}/ab/decide"), json!({}))
        .await;
    assert_eq!(again["decision"], *decision, "{label}: the decision stands");
    let (_, stats) = api.get(&format!("/v1/campaigns/{id}/stats")).await;
    let b = stats["variants"]
        .as_array()
        .expect("variants")
        .iter()
        .find(|v| v["name"] == "B")
        .expect("B");
    assert_eq!(b["sent"], in_b + held, "{label}: {stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ab_decision_before_the_fan_out_ends_still_reaches_the_rest_on_every_backend() {
    for database_url in postdog_tests::database_urls().await {
        ab_decided_early(database_url).await;
    }
}

/// The decision taken while the fan-out is paused halfway: the batches written after it
/// must go to the winner too (they were held for a decision that had already been
/// taken, and the campaign never completed).
async fn ab_decided_early(database_url: Option<String>) {
    const CONTACTS: usize = 2_000;
    let label = label(database_url.as_ref());
    let fake = FakeGraph::start(FakeGraphConfig::default()).await;
    let (server, api, tenant_id, install_id) = setup(database_url, &fake, "business", &[]).await;
    let id = ab_campaign(
        &server,
        &api,
        &fake,
        (&tenant_id, &install_id),
        ("early", "666"),
        CONTACTS,
        10,
    )
    .await;
    let (status, started) = api
        .post(&format!("/v1/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {started}");
    let (status, paused) = api
        .post(&format!("/v1/campaigns/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {paused}");
    // The fan-out stops between batches of 500; some of it must still be to come.
    let storage = server.storage().await;
    let db = storage.tenant(&TenantId::new(&tenant_id));
    let at_pause = db.campaign(&id).await.expect("read").expect("campaign");
    assert!(
        !at_pause.fanout_done,
        "{label}: the fan-out of {CONTACTS} ended before the pause; the test needs a larger audience"
    );
    storage.close().await;
    let (status, decided) = api
        .post(&format!("/v1/campaigns/{id}/ab/decide"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {decided}");
    // No reads yet: the control wins (too small a sample, or a tie at 0).
    assert_eq!(decided["decision"]["winner"], "A", "{label}: {decided}");
    let (status, resumed) = api
        .post(&format!("/v1/campaigns/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {resumed}");
    wait_for_status(&api, &id, "completed").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = fake.sent();
    let recipients: HashSet<&str> = all.iter().map(|m| m.wa_id.as_str()).collect();
    assert_eq!(
        (all.len(), recipients.len()),
        (CONTACTS, CONTACTS),
        "{label}: every contact exactly once"
    );
    let count = |template: &str| {
        all.iter()
            .filter(|m| m.template_name() == Some(template))
            .count()
    };
    // 10 % in the test, split evenly; the other 1,800 get the winner.
    assert_eq!(
        (count("early_a"), count("early_b")),
        (100 + 1_800, 100),
        "{label}"
    );
    let (_, stats) = api.get(&format!("/v1/campaigns/{id}/stats")).await;
    assert_eq!(
        (&stats["held"], &stats["queued"], &stats["sent"]),
        (&json!(0), &json!(0), &json!(CONTACTS)),
        "{label}: {stats}"
    );
}

/// Creates and starts a campaign of a fresh approved template `{tag}_note` to `n` new
/// opted-in contacts tagged `tag` with phones `+1415{phones}…`, with `extra` fields
/// (a throttle); its id.
async fn started_campaign(
    (server, api, fake): (&PostdogServer, &Api, &FakeGraph),
    (tenant_id, install_id): (&str, &str),
    (tag, phones, n): (&str, &str, usize),
    extra: Value,
) -> String {
    let template = format!("{tag}_note");
    approved_template(
        api,
        fake,
        install_id,
        &template,
        "Hello {{1}}, news.",
        &["Ada"],
    )
    .await;
    seed_contacts(server, tenant_id, tag, phones, n).await;
    let mut definition = json!({"name": tag, "install_id": install_id, "audience": {"tags": [tag]},
        "template": {"name": template, "language": "en_US",
                     "variables": {"body": [{"field": "name"}]}}});
    if let (Some(definition), Some(extra)) = (definition.as_object_mut(), extra.as_object()) {
        definition.extend(extra.clone());
    }
    let (status, campaign) = api.post("/v1/campaigns", definition).await;
    assert_eq!(status, 201, "{campaign}");
    let id = campaign["id"].as_str().expect("id").to_string();
    let (status, started) = api
        .post(&format!("/v1/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!(status, 200, "{started}");
    id
}

/// Waits (two minutes at most) for campaign `id` to complete; then each of the `n`
/// contacts with phones `+1415{phones}…` got exactly one message, and Meta refused no
/// send for throughput.
async fn completes_once_each(
    api: &Api,
    fake: &FakeGraph,
    id: &str,
    (phones, n): (&str, usize),
    label: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, shown) = api.get(&format!("/v1/campaigns/{id}")).await;
        if shown["status"] == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: the campaign did not complete: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let sent = sends_to(fake, phones);
    let per = per_recipient(&sent);
    assert_eq!(
        (sent.len(), per.len()),
        (n, n),
        "{label}: every recipient exactly once"
    );
    assert_eq!(
        fake.send_attempts(),
        fake.sent_count(),
        "{label}: Meta refused no send for throughput"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_number_at_its_throughput_limit_holds_no_job_worker_on_every_backend() {
    for database_url in postdog_tests::database_urls().await {
        throttled_number(database_url).await;
    }
}

/// Tenant A's campaign of 100 goes through a number limited to 5 sends a second, on a
/// server that runs 4 jobs at once — 4 batch jobs of 25, enough to take every worker if
/// they waited for their turns inside them. They are deferred instead: tenant B's reply
/// and A's own agent reply on the busy number both reach Meta while most of the
/// campaign is still to go. The campaign still reaches every recipient exactly once,
/// and Meta (which allows 8 a second here) never refuses a send for throughput.
async fn throttled_number(database_url: Option<String>) {
    const RECIPIENTS: usize = 100;
    let label = label(database_url.as_ref());
    let fake = FakeGraph::start(FakeGraphConfig {
        throughput_per_second: Some(8),
        ..FakeGraphConfig::default()
    })
    .await;
    let env = [("POSTDOG_JOB_CONCURRENCY", "4".to_string())];
    let (server, api, tenant_id, _) = setup(database_url, &fake, "business", &env).await;
    let (other_api, _) = Api::tenant(&server, "business").await;
    let other_install = connect(&server, &other_api, &fake, 1000).await;
    let (bea, ann) = ("+14155550201", "+14155550202");
    let (_, status) = fake
        .inbound_text(bea, "Bea", "hello")
        .await
        .expect("inbound");
    assert_eq!(status, 200, "{label}");
    let install_id = connect(&server, &api, &fake, 5).await;
    let (_, status) = fake
        .inbound_text(ann, "Ann", "hello")
        .await
        .expect("inbound");
    assert_eq!(status, 200, "{label}");
    let id = started_campaign(
        (&server, &api, &fake),
        (&tenant_id, &install_id),
        ("busy", "777", RECIPIENTS),
        json!({}),
    )
    .await;
    let campaign_sends = || {
        fake.sent()
            .iter()
            .filter(|m| m.template_name() == Some("busy_note"))
            .count()
    };
    eventually("the campaign's first sends", || async {
        (campaign_sends() > 0).then_some(())
    })
    .await;

    let (status, reply) = other_api
        .post(
            "/v1/messages",
            json!({"install_id": other_install, "to": bea, "text": {"body": "from the other tenant"}}),
        )
        .await;
    assert_eq!(status, 202, "{label}: {reply}");
    let (status, reply) = api
        .post(
            "/v1/messages",
            json!({"install_id": install_id, "to": ann, "text": {"body": "from an agent"}}),
        )
        .await;
    assert_eq!(status, 202, "{label}: {reply}");
    for text in ["from the other tenant", "from an agent"] {
        let before = eventually(text, || async {
            fake.sent()
                .iter()
                .any(|m| m.text() == Some(text))
                .then(campaign_sends)
        })
        .await;
        // At 5 a second, 15 sends are 3 s. (When the campaign's jobs waited in their
        // workers, both replies reached Meta after about 40 of its sends, once a first
        // batch of 25 had finished and freed one; they now come after 1 to 3.)
        assert!(
            before <= 15,
            "{label}: {text:?} reached Meta after {before} of the campaign's {RECIPIENTS} sends"
        );
    }

    completes_once_each(&api, &fake, &id, ("777", RECIPIENTS), label).await;
    let metrics = server.metrics().await;
    let deferred = postdog_tests::counter(&metrics, "postdog_jobs_deferred_total")
        .expect("the deferred counter");
    assert!(
        deferred > 0,
        "{label}: jobs were deferred, not held: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_throttled_campaign_keeps_its_pace_after_the_server_was_down_on_every_backend() {
    for database_url in postdog_tests::database_urls().await {
        throttle_after_downtime(database_url).await;
    }
}

/// A campaign throttled to 120 a minute (one send every 500 ms) on a number Meta lets
/// send 4 a second. The server is killed a few sends in and stays down 4 s, so about 8
/// sends come due while it is down; after the restart they must not all go at once
/// (Meta would refuse the burst with 130429): every recipient gets exactly one message
/// and Meta refuses none.
async fn throttle_after_downtime(database_url: Option<String>) {
    const RECIPIENTS: usize = 20;
    let label = label(database_url.as_ref());
    let fake = FakeGraph::start(FakeGraphConfig {
        throughput_per_second: Some(4),
        auto_statuses: true,
        ..FakeGraphConfig::default()
    })
    .await;
    // A send the kill interrupts waits for its status (the fake redelivers it after the
    // restart) instead of going again.
    let env = [("POSTDOG_SEND_RECONCILE_SECONDS", "30".to_string())];
    let (mut server, api, tenant_id, install_id) =
        setup(database_url, &fake, "business", &env).await;
    let id = started_campaign(
        (&server, &api, &fake),
        (&tenant_id, &install_id),
        ("paced", "888", RECIPIENTS),
        json!({"throttle_per_minute": 120}),
    )
    .await;
    eventually("a few paced sends", || async {
        (sends_to(&fake, "888").len() >= 3).then_some(())
    })
    .await;
    server.kill_hard();
    let at_kill = sends_to(&fake, "888").len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let full_env = [
        (
            "POSTDOG_HTTP_OVERRIDES",
            format!("graph.facebook.com={}", fake.base_url()),
        ),
        env[0].clone(),
    ];
    server.restart_with(&full_env).await;
    assert!(
        at_kill + 8 <= RECIPIENTS,
        "{label}: {at_kill} sent before the kill; the test needs sends due while it is down"
    );
    // No refusal: the sends due during the downtime went at the campaign's pace.
    completes_once_each(&api, &fake, &id, ("888", RECIPIENTS), label).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_campaign_send_held_by_the_pair_rate_limit_goes_after_the_hold_on_every_backend() {
    for database_url in postdog_tests::database_urls().await {
        pair_rate_hold(database_url).await;
    }
}

/// Meta refuses a second message to one recipient within 4 s (131056 here), and the
/// kernel then holds that recipient. A campaign send to them during the hold is
/// deferred past it — and goes then, not after the 120 s the outbox waits for the
/// status of a send a crash interrupted (the campaign's message is stamped as attempted
/// when queued; the deferral must clear that, since nothing reached Meta).
async fn pair_rate_hold(database_url: Option<String>) {
    let label = label(database_url.as_ref());
    let fake = FakeGraph::start(FakeGraphConfig {
        pair_rate_limit: Some(Duration::from_secs(4)),
        ..FakeGraphConfig::default()
    })
    .await;
    let (server, api, tenant_id, install_id) = setup(database_url, &fake, "business", &[]).await;
    approved_template(
        &api,
        &fake,
        &install_id,
        "pair_note",
        "Hello {{1}}, news.",
        &["Ada"],
    )
    .await;
    seed_contacts(&server, &tenant_id, "pair", "999", 1).await;
    let dan = "+14159990000";
    let (_, status) = fake
        .inbound_text(dan, "Dan", "hello")
        .await
        .expect("inbound");
    assert_eq!(status, 200, "{label}");
    for text in ["first", "second"] {
        let (status, sent) = api
            .post(
                "/v1/messages",
                json!({"install_id": install_id, "to": dan, "text": {"body": text}}),
            )
            .await;
        assert_eq!(status, 202, "{label}: {sent}");
        if text == "first" {
            eventually("the first message at Meta", || async {
                fake.sent()
                    .iter()
                    .any(|m| m.text() == Some("first"))
                    .then_some(())
            })
            .await;
        }
    }
    eventually("Meta's 131056 for the second", || async {
        (fake.send_attempts() > fake.sent_count()).then_some(())
    })
    .await;
    let (status, campaign) = api
        .post(
            "/v1/campaigns",
            json!({"name": "Pair", "install_id": install_id, "audience": {"tags": ["pair"]},
                   "template": {"name": "pair_note", "language": "en_US",
                                "variables": {"body": [{"field": "name"}]}}}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {campaign}");
    let id = campaign["id"].as_str().expect("id").to_string();
    let (status, started) = api
        .post(&format!("/v1/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {started}");
    // The hold is a few seconds; `eventually` waits 30 s at most.
    eventually("the campaign's message after the hold", || async {
        fake.sent()
            .iter()
            .any(|m| m.template_name() == Some("pair_note"))
            .then_some(())
    })
    .await;
    eventually("the second message after the hold", || async {
        fake.sent()
            .iter()
            .any(|m| m.text() == Some("second"))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_monthly_allowance_is_a_hard_limit_on_every_backend() {
    for database_url in postdog_tests::database_urls().await {
        hard_allowance(database_url).await;
    }
}

/// A message counts against the month's allowance from the moment it is queued, not
/// when Meta accepts it: with one message left and a number that sends 1 a second, ten
/// requests at once get one 202 and nine 402s (when only accepted messages counted, all
/// ten passed the check while the first still waited for its turn). A message that fails
/// before any provider accepted it gives its count back.
async fn hard_allowance(database_url: Option<String>) {
    let label = label(database_url.as_ref());
    let fake = FakeGraph::start(FakeGraphConfig::default()).await;
    let (server, api, tenant_id, _) = setup(database_url, &fake, "starter", &[]).await;
    let install_id = connect(&server, &api, &fake, 1).await;
    let cleo = "+14155550301";
    let (_, status) = fake
        .inbound_text(cleo, "Cleo", "hello")
        .await
        .expect("inbound");
    assert_eq!(status, 200, "{label}");
    let usage = || async {
        let (_, tenant) = api.get("/v1/tenant").await;
        tenant["usage"]["messages"].clone()
    };
    let allowance = usage().await["allowance"].as_u64().expect("allowance");
    let storage = server.storage().await;
    storage
        .tenant(&TenantId::new(&tenant_id))
        .record_messages_sent(allowance - 1, postdog_host::storage::now_ms())
        .await
        .expect("usage");
    storage.close().await;
    let send = |text: String| {
        let api = &api;
        let body = json!({"install_id": install_id, "to": cleo, "text": {"body": text}});
        async move { api.post("/v1/messages", body).await }
    };

    // A permanent failure before acceptance gives the count back.
    fake.fail_next(1, Failure::graph(131_026));
    let (status, failing) = send("undeliverable".into()).await;
    assert_eq!(status, 202, "{label}: {failing}");
    assert_eq!(
        usage().await["sent"],
        allowance,
        "{label}: counted when queued"
    );
    let id = failing["id"].as_str().expect("id").to_string();
    eventually("the permanent failure", || async {
        let (_, message) = api.get(&format!("/v1/messages/{id}")).await;
        (message["status"] == "failed").then_some(())
    })
    .await;
    assert_eq!(usage().await["sent"], allowance - 1, "{label}: given back");

    let answers = futures::future::join_all((0..10).map(|n| send(format!("allowance {n}")))).await;
    let accepted = answers.iter().filter(|(status, _)| *status == 202).count();
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == 402)
        .map(|(_, body)| body)
        .collect();
    assert_eq!((accepted, refused.len()), (1, 9), "{label}: {answers:?}");
    assert!(
        refused[0]["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains(&format!("({allowance} of {allowance})"))),
        "{label}: {}",
        refused[0]
    );
    eventually("the one accepted message at Meta", || async {
        fake.sent()
            .iter()
            .any(|m| m.text().is_some_and(|text| text.starts_with("allowance")))
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_meta = fake
        .sent()
        .iter()
        .filter(|m| m.text().is_some_and(|text| text.starts_with("allowance")))
        .count();
    assert_eq!(at_meta, 1, "{label}");
    assert_eq!(usage().await["sent"], allowance, "{label}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_campaign_paused_at_its_start_resumes_only_when_it_fits_on_every_backend() {
    for database_url in postdog_tests::database_urls().await {
        resume_checks_the_unsent_audience(database_url).await;
    }
}

/// A scheduled campaign whose audience no longer fits at its start time is paused with
/// nothing written; resuming it must count the whole audience it has yet to reach (it
/// counted only the recipients already written: none, so it always fit).
async fn resume_checks_the_unsent_audience(database_url: Option<String>) {
    let label = label(database_url.as_ref());
    let fake = FakeGraph::start(FakeGraphConfig::default()).await;
    let (server, api, tenant_id, install_id) = setup(database_url, &fake, "starter", &[]).await;
    approved_template(
        &api,
        &fake,
        &install_id,
        "fit_notice",
        "Hi {{1}}, news.",
        &["Ada"],
    )
    .await;
    seed_contacts(&server, &tenant_id, "fit", "777", 5).await;
    let (status, campaign) = api
        .post(
            "/v1/campaigns",
            json!({"name": "Fit", "install_id": install_id,
                   "audience": {"tags": ["fit"]}, "template": note("fit_notice")}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {campaign}");
    let id = campaign["id"].as_str().expect("id").to_string();
    let at = postdog_host::webhooks::utc_rfc3339(unix_ms(SystemTime::now()) + 2_000);
    let (status, scheduled) = api
        .post(&format!("/v1/campaigns/{id}/schedule"), json!({ "at": at }))
        .await;
    assert_eq!(status, 200, "{label}: {scheduled}");
    // After scheduling, other sends use the month up to 3 left of the 5,000.
    let storage = server.storage().await;
    storage
        .tenant(&TenantId::new(&tenant_id))
        .record_messages_sent(4_997, postdog_host::storage::now_ms())
        .await
        .expect("usage");
    storage.close().await;
    let paused = wait_for_status(&api, &id, "paused").await;
    assert!(
        paused["status_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("needs 5 messages"),
        "{label}: {paused}"
    );
    let (status, refused) = api
        .post(&format!("/v1/campaigns/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 422, "{label}: {refused}");
    assert_eq!(
        (&refused["type"], &refused["remaining"], &refused["needed"]),
        (
            &json!("https://postdog.dev/problems/quota-exceeded"),
            &json!(3),
            &json!(5)
        ),
        "{label}: {refused}"
    );
    assert_eq!(fake.sent_count(), 0, "{label}: nothing sent");
    let response = reqwest::Client::new()
        .patch(format!("{}/admin/v1/tenants/{tenant_id}", server.base_url))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"plan": "pro"}))
        .send()
        .await
        .expect("request");
    assert!(response.status().is_success(), "{label}: upgrade");
    let (status, resumed) = api
        .post(&format!("/v1/campaigns/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {resumed}");
    wait_for_status(&api, &id, "completed").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = fake.sent();
    let recipients: HashSet<&str> = sent.iter().map(|m| m.wa_id.as_str()).collect();
    assert_eq!((sent.len(), recipients.len()), (5, 5), "{label}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn campaign_fan_out_survives_sigkill_on_every_backend() {
    for database_url in postdog_tests::database_urls().await {
        crash(database_url).await;
    }
}

const CRASH_RECIPIENTS: usize = 3_000;

async fn crash(database_url: Option<String>) {
    let label = label(database_url.as_ref());
    let began = Instant::now();
    // Statuses echo PostDog's message id, so a send the kill interrupted after Meta took
    // it is completed by its status instead of being sent again.
    let fake = FakeGraph::start(FakeGraphConfig {
        auto_statuses: true,
        ..FakeGraphConfig::default()
    })
    .await;
    let env = [("POSTDOG_SEND_RECONCILE_SECONDS", "30".to_string())];
    let (mut server, api, tenant_id, install_id) =
        setup(database_url, &fake, "business", &env).await;
    let full_env = [
        (
            "POSTDOG_HTTP_OVERRIDES",
            format!("graph.facebook.com={}", fake.base_url()),
        ),
        env[0].clone(),
    ];
    approved_template(
        &api,
        &fake,
        &install_id,
        "crash_note",
        "Hello {{1}}, this is a note for you.",
        &["Ada"],
    )
    .await;
    seed_contacts(&server, &tenant_id, "crash", "666", CRASH_RECIPIENTS).await;
    let (status, campaign) = api
        .post(
            "/v1/campaigns",
            json!({"name": "Crash", "install_id": install_id, "audience": {"tags": ["crash"]},
                   "template": {"name": "crash_note", "language": "en_US",
                                "variables": {"body": [{"field": "name"}]}}}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {campaign}");
    let id = campaign["id"].as_str().expect("id").to_string();
    let (status, started) = api
        .post(&format!("/v1/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {started}");

    // Kill -9 in the middle of the fan-out.
    let storage = server.storage().await;
    let db = storage.tenant(&TenantId::new(&tenant_id));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let materialised = db
            .campaign_recipient_count(&id, "queued")
            .await
            .expect("count")
            + db.campaign_recipient_count(&id, "sent")
                .await
                .expect("count");
        // Past the first batch, and with sends under way if they start before the
        // fan-out is half done.
        if materialised >= 1_500 || (materialised >= 500 && fake.sent_count() > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: the fan-out did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill_hard();
    let at_kill = fake.sent_count();
    assert!(
        at_kill < CRASH_RECIPIENTS,
        "{label}: every send was done before the kill; the test needs a larger audience"
    );
    let campaign_at_kill = db.campaign(&id).await.expect("read").expect("campaign");
    let materialised = db
        .campaign_recipient_count(&id, "queued")
        .await
        .expect("count")
        + db.campaign_recipient_count(&id, "sent")
            .await
            .expect("count");
    storage.close().await;
    eprintln!(
        "{label}: killed with {materialised} recipients materialised (fan-out done: {}), {at_kill} sends at Meta",
        campaign_at_kill.fanout_done
    );

    server.restart_with(&full_env).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, campaign) = api.get(&format!("/v1/campaigns/{id}")).await;
        if campaign["status"] == "completed" && fake.sent_count() >= CRASH_RECIPIENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: {campaign}; {} sends at Meta",
            fake.sent_count()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let a duplicate arrive before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = fake.sent();
    let mut per_recipient: HashMap<&str, usize> = HashMap::new();
    for message in &sent {
        *per_recipient.entry(message.wa_id.as_str()).or_default() += 1;
    }
    let doubled: Vec<_> = per_recipient.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<String> = (0..CRASH_RECIPIENTS)
        .map(|i| format!("1415666{i:04}"))
        .filter(|wa_id| !per_recipient.contains_key(wa_id.as_str()))
        .collect();
    assert!(
        doubled.is_empty() && missing.is_empty(),
        "{label}: {} sends; {} recipients got more than one (e.g. {:?}); {} got none (e.g. {:?})",
        sent.len(),
        doubled.len(),
        doubled.first(),
        missing.len(),
        missing.first()
    );
    assert_eq!(sent.len(), CRASH_RECIPIENTS, "{label}");
    let (_, stats) = api.get(&format!("/v1/campaigns/{id}/stats")).await;
    assert_eq!(stats["targeted"], CRASH_RECIPIENTS, "{label}: {stats}");
    assert_eq!(stats["sent"], CRASH_RECIPIENTS, "{label}: {stats}");
    eprintln!(
        "{label}: every recipient exactly once, {:?} in all",
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn campaign_schedule_quiet_hours_and_timed_ab_on_every_backend() {
    for database_url in postdog_tests::database_urls().await {
        schedule_quiet_hours_and_timed_ab(database_url).await;
    }
}

/// The tenant's time zone in the schedule scenario, and its offset from UTC: India has
/// kept UTC+05:30 without daylight saving since 1945, so its wall clock is arithmetic
/// and the test needs no time-zone database of its own.
const TENANT_ZONE: (&str, i64) = ("Asia/Kolkata", 19_800_000);
/// The shortest A/B duration the API accepts (`ab.duration_seconds` is 60 to 30 days).
const AB_SECONDS: i64 = 60;
const AB_RECIPIENTS: usize = 40;
/// Phone prefixes (after `1415`) of the seeded contacts of each scenario.
const AB_PREFIX: &str = "555";
const SCHEDULED_PREFIX: &str = "777";

fn unix_ms(at: SystemTime) -> i64 {
    let since = at.duration_since(UNIX_EPOCH).expect("a time after 1970");
    i64::try_from(since.as_millis()).expect("milliseconds fit an i64")
}

/// The wall-clock date-time, without an offset (`2025-06-01T14:30:05`), of the instant
/// `at_ms` in a zone `offset_ms` ahead of UTC.
fn local_date_time(at_ms: i64, offset_ms: i64) -> String {
    let shifted = postdog_host::webhooks::utc_rfc3339(at_ms + offset_ms);
    shifted[.."YYYY-MM-DDTHH:MM:SS".len()].to_string()
}

/// The messages the fake accepted for the seeded contacts with phone prefix `prefix`.
fn sends_to(fake: &FakeGraph, prefix: &str) -> Vec<SentMessage> {
    let wa_prefix = format!("1415{prefix}");
    fake.sent()
        .into_iter()
        .filter(|message| message.wa_id.starts_with(&wa_prefix))
        .collect()
}

/// Messages per recipient.
fn per_recipient(messages: &[SentMessage]) -> HashMap<&str, usize> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for message in messages {
        *counts.entry(message.wa_id.as_str()).or_default() += 1;
    }
    counts
}

fn note(template: &str) -> Value {
    json!({"name": template, "language": "en_US", "variables": {"body": [{"field": "name"}]}})
}

async fn schedule_quiet_hours_and_timed_ab(database_url: Option<String>) {
    let label = label(database_url.as_ref());
    let began = Instant::now();
    let fake = FakeGraph::start(FakeGraphConfig::default()).await;
    let (server, api, tenant_id, install_id) = setup(database_url, &fake, "business", &[]).await;
    for (name, body) in [
        ("promo_a", "Hi {{1}}, new arrivals."),
        ("promo_b", "Dear {{1}}, 30% off today only!"),
        ("notice", "Hello {{1}}, a note for you."),
    ] {
        approved_template(&api, &fake, &install_id, name, body, &["Ada"]).await;
    }

    // The timed A/B test starts first: its decision is due a minute later, and the
    // other two scenarios run while it waits.
    seed_contacts(&server, &tenant_id, "ab", AB_PREFIX, AB_RECIPIENTS).await;
    let (status, campaign) = api
        .post(
            "/v1/campaigns",
            json!({"name": "Timed AB", "install_id": install_id, "audience": {"tags": ["ab"]},
                   "ab": {"variants": [note("promo_a"), note("promo_b")], "test_percent": 50,
                          "metric": "delivery", "duration_seconds": AB_SECONDS}}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {campaign}");
    let ab_id = campaign["id"].as_str().expect("id").to_string();
    let (status, preview) = api
        .post(&format!("/v1/campaigns/{ab_id}/preview"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {preview}");
    let in_a = preview["by_variant"]["A"].as_u64().unwrap_or(0);
    let in_b = preview["by_variant"]["B"].as_u64().unwrap_or(0);
    let held = preview["held_for_winner"].as_u64().expect("held");
    assert_eq!(in_a + in_b + held, 40, "{label}: {preview}");
    // The scenario needs both variants and a remainder, and a sample too small to
    // compare (the buckets hash the random campaign id: each holds with p > 0.9999).
    assert!(in_a >= 1 && in_b >= 1 && held >= 1, "{label}: {preview}");
    let min_sample = u64::try_from(MIN_SAMPLE).expect("positive");
    assert!(in_a.min(in_b) < min_sample, "{label}: {preview}");
    let (status, started) = api
        .post(&format!("/v1/campaigns/{ab_id}/start"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {started}");
    let ab_started_at = started["started_at"].as_i64().expect("started_at");
    let test_size = usize::try_from(in_a + in_b).expect("size");
    let test_share = eventually("the A/B test share at Meta", || async {
        let sent = sends_to(&fake, AB_PREFIX);
        (sent.len() >= test_size).then_some(sent)
    })
    .await;
    // B is delivered, A is not: B looks better, but on too small a sample to count.
    for message in &test_share {
        if message.template_name() == Some("promo_b") {
            assert_eq!(
                fake.deliver_status(&message.wamid, "delivered", None)
                    .await
                    .expect("status"),
                200
            );
        }
    }
    eventually("B's deliveries in the statistics", || async {
        let (_, stats) = api.get(&format!("/v1/campaigns/{ab_id}/stats")).await;
        (stats["variants"][1]["delivered"] == in_b).then_some(())
    })
    .await;

    scheduled_start(&server, &api, &fake, &tenant_id, &install_id, label).await;
    quiet_hours(&api, &fake, &install_id, label).await;

    // Until shortly before the duration is up, nothing is decided and the remainder
    // waits; then the decision is taken by itself.
    let due = ab_started_at + AB_SECONDS * 1_000;
    let until_due = due - 2_000 - unix_ms(SystemTime::now());
    assert!(
        until_due > 0,
        "{label}: the other scenarios outlasted the A/B duration; nothing left to check before it"
    );
    tokio::time::sleep(Duration::from_millis(until_due.unsigned_abs())).await;
    let (_, waiting) = api.get(&format!("/v1/campaigns/{ab_id}")).await;
    assert_eq!(waiting["status"], "running", "{label}: {waiting}");
    assert!(
        waiting["ab_decision"].is_null(),
        "{label}: decided before the duration was up: {waiting}"
    );
    assert_eq!(
        sends_to(&fake, AB_PREFIX).len(),
        test_size,
        "{label}: the remainder waits for the decision"
    );
    let decided = eventually("the timed A/B decision", || async {
        let (_, campaign) = api.get(&format!("/v1/campaigns/{ab_id}")).await;
        (!campaign["ab_decision"].is_null()).then_some(campaign)
    })
    .await;
    let decision = &decided["ab_decision"];
    assert_eq!(decision["winner"], "A", "{label}: {decision}");
    assert_eq!(decision["rule"], "sample_too_small", "{label}: {decision}");
    assert_eq!(decision["metric"], "delivery", "{label}: {decision}");
    assert_eq!(decision["min_sample"], MIN_SAMPLE, "{label}: {decision}");
    let explanation = decision["explanation"].as_str().unwrap_or_default();
    assert!(
        explanation.contains(&format!(
            "only {} sent messages (fewer than {MIN_SAMPLE})",
            in_a.min(in_b)
        )) && explanation.contains("the first variant, A, is kept"),
        "{label}: {decision}"
    );
    assert_eq!(
        decision["variants"],
        json!([
            {"variant": "A", "sent": in_a, "successes": 0, "rate": 0.0},
            {"variant": "B", "sent": in_b, "successes": in_b, "rate": 1.0},
        ]),
        "{label}: {decision}"
    );
    // The job's run time is taken a moment before `started_at` is stamped.
    let decided_at = decision["decided_at"].as_i64().expect("decided_at");
    assert!(
        decided_at >= due - 1_000,
        "{label}: decided at {decided_at}, due at {due}"
    );

    // The remainder gets the kept variant only, after the decision; everyone once.
    wait_for_status(&api, &ab_id, "completed").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = sends_to(&fake, AB_PREFIX);
    let counts = per_recipient(&all);
    assert_eq!(counts.len(), AB_RECIPIENTS, "{label}: every contact");
    assert!(
        counts.values().all(|n| *n == 1),
        "{label}: nobody twice: {counts:?}"
    );
    let tested: HashSet<&str> = test_share.iter().map(|m| m.wa_id.as_str()).collect();
    let remainder: Vec<&SentMessage> = all
        .iter()
        .filter(|m| !tested.contains(m.wa_id.as_str()))
        .collect();
    assert_eq!(
        remainder.len(),
        usize::try_from(held).expect("held"),
        "{label}"
    );
    for message in &remainder {
        assert_eq!(
            message.template_name(),
            Some("promo_a"),
            "{label}: {}",
            message.body
        );
        assert!(
            unix_ms(message.accepted_at) >= decided_at - 50,
            "{label}: {} sent before the decision",
            message.wa_id
        );
    }
    let (_, stats) = api.get(&format!("/v1/campaigns/{ab_id}/stats")).await;
    assert_eq!(
        stats["variants"][0]["sent"],
        in_a + held,
        "{label}: {stats}"
    );
    assert_eq!(stats["variants"][1]["sent"], in_b, "{label}: {stats}");
    eprintln!("{label}: {:?}", began.elapsed());
}

/// A campaign scheduled at a local date-time of the tenant's zone starts at that instant.
async fn scheduled_start(
    server: &PostdogServer,
    api: &Api,
    fake: &FakeGraph,
    tenant_id: &str,
    install_id: &str,
    label: &str,
) {
    let (zone, offset_ms) = TENANT_ZONE;
    let (status, tenant) = api.patch("/v1/tenant", json!({"timezone": zone})).await;
    assert_eq!(status, 200, "{label}: {tenant}");
    assert_eq!(tenant["timezone"], zone, "{label}: {tenant}");
    seed_contacts(server, tenant_id, "sched", SCHEDULED_PREFIX, 3).await;
    let (status, campaign) = api
        .post(
            "/v1/campaigns",
            json!({"name": "Scheduled", "install_id": install_id,
                   "audience": {"tags": ["sched"]}, "template": note("notice")}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {campaign}");
    let id = campaign["id"].as_str().expect("id").to_string();
    let schedule = format!("/v1/campaigns/{id}/schedule");

    // A minute ago in the tenant's zone is refused (read as UTC it would be 5½ hours
    // ahead), as is a time that is no time.
    let now = unix_ms(SystemTime::now());
    for (at, needle) in [
        (local_date_time(now - 60_000, offset_ms), "in the past"),
        ("next tuesday".to_string(), "local date-time"),
    ] {
        let (status, problem) = api.post(&schedule, json!({ "at": at })).await;
        assert_eq!(status, 422, "{label}: {at} → {problem}");
        assert_eq!(
            problem["type"], "https://postdog.dev/problems/invalid-campaign",
            "{label}: {at} → {problem}"
        );
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{label}: {at} → {problem}"
        );
    }
    let (_, unchanged) = api.get(&format!("/v1/campaigns/{id}")).await;
    assert_eq!(unchanged["status"], "draft", "{label}: {unchanged}");

    // About four seconds ahead, on a whole second, written in the tenant's zone.
    let at = (unix_ms(SystemTime::now()) + 4_999) / 1_000 * 1_000;
    let local = local_date_time(at, offset_ms);
    let (status, scheduled) = api.post(&schedule, json!({ "at": local })).await;
    assert_eq!(status, 200, "{label}: {local} → {scheduled}");
    assert_eq!(scheduled["status"], "scheduled", "{label}: {scheduled}");
    assert_eq!(
        scheduled["schedule_at"], at,
        "{label}: {local} in {zone} → {scheduled}"
    );
    assert!(sends_to(fake, SCHEDULED_PREFIX).is_empty(), "{label}");
    let running = eventually("the scheduled campaign to start", || async {
        let (_, campaign) = api.get(&format!("/v1/campaigns/{id}")).await;
        matches!(campaign["status"].as_str(), Some("running" | "completed")).then_some(campaign)
    })
    .await;
    let started_at = running["started_at"].as_i64().expect("started_at");
    assert!(started_at >= at, "{label}: started {started_at}, due {at}");
    wait_for_status(api, &id, "completed").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = sends_to(fake, SCHEDULED_PREFIX);
    let counts = per_recipient(&sent);
    assert_eq!(counts.len(), 3, "{label}: every recipient: {counts:?}");
    assert!(
        counts.values().all(|n| *n == 1),
        "{label}: nobody twice: {counts:?}"
    );
    for message in &sent {
        assert_eq!(message.template_name(), Some("notice"), "{label}");
        // 50 ms for the two processes' clocks.
        assert!(
            unix_ms(message.accepted_at) >= at - 50,
            "{label}: {} sent at {} before {at}",
            message.wa_id,
            unix_ms(message.accepted_at)
        );
    }
}

/// Quiet hours in each recipient's zone: its `timezone` field, else the tenant's.
async fn quiet_hours(api: &Api, fake: &FakeGraph, install_id: &str, label: &str) {
    let (status, field) = api
        .put(
            "/v1/custom-fields/timezone",
            json!({"label": "Time zone", "kind": "text"}),
        )
        .await;
    assert_eq!(status, 200, "{label}: {field}");
    // From an hour ago to an hour ahead, in UTC (wrapping midnight when it must).
    let seconds = unix_ms(SystemTime::now()) / 1_000;
    let (hour, minute) = (seconds / 3_600 % 24, seconds / 60 % 60);
    let window = json!({
        "start": format!("{:02}:{minute:02}", (hour + 23) % 24),
        "end": format!("{:02}:{minute:02}", (hour + 1) % 24),
    });
    // Quiet is in the window; Tokyo (UTC+9) is 8 hours past it; Tenant has no zone of
    // its own and takes the tenant's (Kolkata, UTC+05:30), 4½ hours past it.
    let people = [
        ("Quiet", "+14158880001", Some("UTC")),
        ("Tokyo", "+14158880002", Some("Asia/Tokyo")),
        ("Tenant", "+14158880003", None),
    ];
    for (name, phone, zone) in people {
        let mut contact = json!({"name": name, "phone": phone, "tags": ["quiet"]});
        if let Some(zone) = zone {
            contact["fields"] = json!({ "timezone": zone });
        }
        let (status, created) = api.post("/v1/contacts", contact).await;
        assert_eq!(status, 201, "{label}: {created}");
        let contact_id = created["id"].as_str().expect("id");
        let (status, body) = api
            .post(
                &format!("/v1/contacts/{contact_id}/consent"),
                json!({"channel": "whatsapp", "status": "opted_in"}),
            )
            .await;
        assert_eq!(status, 201, "{label}: {body}");
    }
    let (status, campaign) = api
        .post(
            "/v1/campaigns",
            json!({"name": "Quiet", "install_id": install_id, "audience": {"tags": ["quiet"]},
                   "template": note("notice"), "quiet_hours": window}),
        )
        .await;
    assert_eq!(status, 201, "{label}: {campaign}");
    let id = campaign["id"].as_str().expect("id").to_string();
    let (status, started) = api
        .post(&format!("/v1/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {started}");
    let quiet_sends = || sends_to(fake, "888");
    eventually("Tokyo's and Tenant's messages", || async {
        (quiet_sends().len() >= 2).then_some(())
    })
    .await;
    // Time for Quiet's send to run too: it waits for the window's end instead.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = quiet_sends();
    let mut recipients: Vec<&str> = sent.iter().map(|m| m.wa_id.as_str()).collect();
    recipients.sort_unstable();
    assert_eq!(
        recipients,
        ["14158880002", "14158880003"],
        "{label}: quiet hours {window}"
    );
    let (_, stats) = api.get(&format!("/v1/campaigns/{id}/stats")).await;
    assert_eq!(
        (&stats["status"], &stats["sent"], &stats["queued"]),
        (&json!("running"), &json!(2), &json!(1)),
        "{label}: {stats}"
    );
    let states = export_states(api, &id).await;
    assert_eq!(
        states,
        HashMap::from([
            ("+14158880001".to_string(), ("queued".to_string(), false)),
            ("+14158880002".to_string(), ("sent".to_string(), true)),
            ("+14158880003".to_string(), ("sent".to_string(), true)),
        ]),
        "{label}: (state, has a message) by phone"
    );

    // Cancelled while Quiet waits: Quiet is never sent.
    let (status, cancelled) = api
        .post(&format!("/v1/campaigns/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{label}: {cancelled}");
    assert_eq!(cancelled["recipients_cancelled"], 1, "{label}: {cancelled}");
    let (_, stats) = api.get(&format!("/v1/campaigns/{id}/stats")).await;
    assert_eq!(
        (&stats["sent"], &stats["queued"], &stats["cancelled"]),
        (&json!(2), &json!(0), &json!(1)),
        "{label}: {stats}"
    );
    assert_eq!(
        export_states(api, &id).await["+14158880001"],
        ("cancelled".to_string(), false),
        "{label}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(quiet_sends().len(), 2, "{label}: Quiet stays unsent");
}

/// The export's (state, has a message id) of each recipient, by phone.
async fn export_states(api: &Api, id: &str) -> HashMap<String, (String, bool)> {
    let response = api
        .send(
            reqwest::Method::GET,
            &format!("/v1/campaigns/{id}/recipients.csv"),
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
    let csv = response.text().await.expect("csv");
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let headers = reader.headers().expect("headers").clone();
    let column = |name: &str| headers.iter().position(|h| h == name).expect(name);
    let (phone, state, message) = (column("phone"), column("state"), column("message_id"));
    reader
        .records()
        .map(|row| {
            let row = row.expect("row");
            (
                row[phone].to_string(),
                (row[state].to_string(), !row[message].is_empty()),
            )
        })
        .collect()
}
