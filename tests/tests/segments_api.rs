//! Search, segments and notes through the real HTTP API of a running `postdog serve`, on
//! SQLite and PostgreSQL: nested AND/OR expressions over tags, typed custom fields,
//! consent and dates evaluated in SQL, live counts, paginated members, 422s that point
//! at the bad part, and notes that follow a merge and stay inside their tenant.

use std::collections::BTreeSet;

use postdog_tests::Api;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Names of the contacts in a listing.
fn names(listing: &Value) -> BTreeSet<String> {
    listing["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|contact| contact["name"].as_str().expect("name").to_string())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

/// Every member of a segment, walking the cursor one contact at a time.
async fn all_members(api: &Api, segment: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut after = String::new();
    loop {
        let (status, page) = api
            .get(&format!("/v1/segments/{segment}/contacts?limit=1{after}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(names(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => after = format!("&after={cursor}"),
            None => return seen,
        }
    }
}

#[tokio::test]
async fn segments_evaluate_nested_expressions_live() {
    for server in postdog_tests::servers_on_every_backend().await {
        let (api, tenant_id) = Api::tenant(&server, "pro").await;
        for (key, definition) in [
            ("city", json!({"label": "City", "kind": "text"})),
            ("score", json!({"label": "Score", "kind": "number"})),
            ("vip", json!({"label": "VIP", "kind": "boolean"})),
            ("joined", json!({"label": "Joined", "kind": "date"})),
            (
                "tier",
                json!({"label": "Tier", "kind": "select", "options": ["gold", "silver"]}),
            ),
        ] {
            let (status, body) = api
                .put(&format!("/v1/custom-fields/{key}"), definition)
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let mut ids = std::collections::HashMap::new();
        for (name, tags, fields) in [
            (
                "Ada",
                json!(["lead", "newsletter"]),
                json!({"city": "Paris", "score": 80, "vip": true, "joined": "2024-01-15", "tier": "gold"}),
            ),
            (
                "Ben",
                json!(["lead"]),
                json!({"city": "Berlin", "score": 20, "vip": false, "joined": "2025-06-01"}),
            ),
            (
                "Cy",
                json!(["customer"]),
                json!({"city": "Paris", "score": 5}),
            ),
            (
                "Di",
                json!(["lead"]),
                json!({"city": "paris-sud", "score": 50.5, "tier": "silver"}),
            ),
            ("Ed", json!([]), json!({})),
        ] {
            let (status, contact) = api
                .post(
                    "/v1/contacts",
                    json!({"name": name, "tags": tags, "fields": fields}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{contact}");
            ids.insert(name, contact["id"].as_str().expect("id").to_string());
        }
        let (status, _) = api
            .post(
                &format!("/v1/contacts/{}/consent", ids["Ada"]),
                json!({"channel": "email", "status": "opted_in"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        for (name, status) in [("Ben", "opted_in"), ("Ben", "opted_out")] {
            api.post(
                &format!("/v1/contacts/{}/consent", ids[name]),
                json!({"channel": "email", "status": status}),
            )
            .await;
        }
        // Nothing writes last_contacted_at through the API yet (messaging does, later).
        let storage = server.storage().await;
        let db = storage.tenant(&postdog_host::ids::TenantId::new(&tenant_id));
        let now = postdog_host::storage::now_ms();
        assert!(
            db.mark_contacted(&ids["Ada"], now - 2 * 86_400_000)
                .await
                .expect("mark")
        );
        assert!(
            db.mark_contacted(&ids["Cy"], now - 40 * 86_400_000)
                .await
                .expect("mark")
        );
        storage.close().await;

        // Each expression with the contacts it must select.
        let cases = [
            (json!({"and": []}), vec!["Ada", "Ben", "Cy", "Di", "Ed"]),
            (
                json!({"and": [
                    {"attribute": "tag", "op": "has", "value": "lead"},
                    {"or": [
                        {"attribute": "fields.score", "op": "gte", "value": 50},
                        {"attribute": "fields.city", "op": "eq", "value": "Berlin"}
                    ]}
                ]}),
                vec!["Ada", "Ben", "Di"],
            ),
            (
                json!({"attribute": "fields.score", "op": "gt", "value": 50}),
                vec!["Ada", "Di"],
            ),
            (
                json!({"attribute": "fields.score", "op": "lt", "value": 20}),
                vec!["Cy"],
            ),
            (
                json!({"attribute": "fields.city", "op": "contains", "value": "PARIS"}),
                vec!["Ada", "Cy", "Di"],
            ),
            (
                json!({"attribute": "fields.city", "op": "neq", "value": "Paris"}),
                vec!["Ben", "Di", "Ed"],
            ),
            (
                json!({"attribute": "fields.vip", "op": "eq", "value": true}),
                vec!["Ada"],
            ),
            (
                json!({"attribute": "fields.vip", "op": "eq", "value": false}),
                vec!["Ben"],
            ),
            (
                json!({"attribute": "fields.joined", "op": "gte", "value": "2025-01-01"}),
                vec!["Ben"],
            ),
            (
                json!({"attribute": "fields.tier", "op": "in", "value": ["gold", "silver"]}),
                vec!["Ada", "Di"],
            ),
            (
                json!({"attribute": "fields.tier", "op": "is_not_set"}),
                vec!["Ben", "Cy", "Ed"],
            ),
            (
                json!({"attribute": "consent.email", "op": "eq", "value": "opted_in"}),
                vec!["Ada"],
            ),
            (
                json!({"attribute": "consent.email", "op": "eq", "value": "unknown"}),
                vec!["Cy", "Di", "Ed"],
            ),
            (
                json!({"not": {"attribute": "tag", "op": "has", "value": "lead"}}),
                vec!["Cy", "Ed"],
            ),
            (
                json!({"attribute": "tag", "op": "lacks", "value": "lead"}),
                vec!["Cy", "Ed"],
            ),
            (
                json!({"attribute": "last_contacted_at", "op": "within_days", "value": 7}),
                vec!["Ada"],
            ),
            (
                json!({"attribute": "last_contacted_at", "op": "not_within_days", "value": 7}),
                vec!["Ben", "Cy", "Di", "Ed"],
            ),
            (
                json!({"attribute": "text", "op": "contains", "value": "d"}),
                vec!["Ada", "Di", "Ed"],
            ),
            (
                json!({"attribute": "name", "op": "starts_with", "value": "b"}),
                vec!["Ben"],
            ),
        ];
        for (expression, expected) in cases {
            let (status, preview) = api
                .post("/v1/segments/preview", json!({ "expression": expression }))
                .await;
            assert_eq!(status, StatusCode::OK, "{expression}: {preview}");
            assert_eq!(preview["count"], json!(expected.len()), "{expression}");
            let (status, found) = api
                .post(
                    "/v1/contacts/search",
                    json!({ "filter": expression, "limit": 200 }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{found}");
            assert_eq!(names(&found), set(&expected), "{expression}");
            assert_eq!(found["total"], json!(expected.len()));
        }

        // A saved segment: live count and paginated members.
        let expression = json!({"and": [
            {"attribute": "tag", "op": "has", "value": "lead"},
            {"or": [
                {"attribute": "fields.score", "op": "gte", "value": 50},
                {"attribute": "fields.city", "op": "eq", "value": "Berlin"}
            ]}
        ]});
        let (status, segment) = api
            .post(
                "/v1/segments",
                json!({"name": "Hot leads", "expression": expression}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{segment}");
        assert_eq!(segment["count"], json!(3));
        let id = segment["id"].as_str().expect("id").to_string();
        assert_eq!(all_members(&api, &id).await, set(&["Ada", "Ben", "Di"]));
        let (status, _) = api
            .post(
                "/v1/contacts",
                json!({"name": "Flo", "tags": ["lead"], "fields": {"score": 99}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (_, segment) = api.get(&format!("/v1/segments/{id}")).await;
        assert_eq!(segment["count"], json!(4), "membership is live");
        let (_, listing) = api
            .get(&format!("/v1/contacts?segment={id}&fields.city=Paris"))
            .await;
        assert_eq!(names(&listing), set(&["Ada"]));
        let (_, listing) = api
            .get("/v1/contacts?tag=lead&consent.email=opted_out")
            .await;
        assert_eq!(names(&listing), set(&["Ben"]));
        let (_, listing) = api.get("/v1/contacts?fields.score=5").await;
        assert_eq!(names(&listing), set(&["Cy"]));
        let (status, problem) = api.get("/v1/contacts?colour=red").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert!(
            problem["detail"]
                .as_str()
                .expect("detail")
                .contains("colour")
        );

        let (status, problem) = api
            .post(
                "/v1/segments",
                json!({"name": "Hot leads", "expression": {"and": []}}),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{problem}");
        let (status, renamed) = api
            .patch(&format!("/v1/segments/{id}"), json!({"name": "Warm leads"}))
            .await;
        assert_eq!(
            (status, renamed["name"].clone()),
            (StatusCode::OK, json!("Warm leads"))
        );
        let (_, listed) = api.get("/v1/segments").await;
        assert_eq!(listed["data"][0]["count"], json!(4));

        // Invalid expressions: a 422 whose pointer names the bad part; nothing saved.
        for (expression, pointer) in [
            (
                json!({"and": [
                    {"attribute": "tag", "op": "has", "value": "lead"},
                    {"or": [{"attribute": "fields.score", "op": "gte", "value": "fifty"}]}
                ]}),
                "/expression/and/1/or/0/value",
            ),
            (
                json!({"or": [{"attribute": "fields.shoe", "op": "eq", "value": 1}]}),
                "/expression/or/0/attribute",
            ),
            (
                json!({"attribute": "fields.tier", "op": "eq", "value": "bronze"}),
                "/expression/value",
            ),
            (
                json!({"attribute": "fields.vip", "op": "gt", "value": true}),
                "/expression/op",
            ),
            (json!({"and": "nope"}), "/expression/and"),
            (json!([1, 2]), "/expression"),
        ] {
            let (status, problem) = api
                .post(
                    "/v1/segments",
                    json!({"name": "Bad", "expression": expression}),
                )
                .await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{expression}: {problem}"
            );
            assert_eq!(
                problem["type"],
                "https://postdog.dev/problems/invalid-filter"
            );
            assert_eq!(
                problem["pointer"],
                json!(pointer),
                "{expression}: {problem}"
            );
        }
        let (_, listed) = api.get("/v1/segments").await;
        assert_eq!(listed["data"].as_array().map(Vec::len), Some(1));

        // A segment whose field was deleted says so instead of failing.
        let (status, _) = api.delete("/v1/custom-fields/score").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, problem) = api.get(&format!("/v1/segments/{id}/contacts")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["pointer"], "/expression/and/1/or/0/attribute");

        // Another tenant sees none of it.
        let (other, _) = Api::tenant(&server, "pro").await;
        let (status, _) = other.get(&format!("/v1/segments/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = other.get(&format!("/v1/segments/{id}/contacts")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = other.delete(&format!("/v1/segments/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, preview) = other
            .post("/v1/segments/preview", json!({"expression": {"and": []}}))
            .await;
        assert_eq!(preview["count"], json!(0));
        let (status, _) = api.delete(&format!("/v1/segments/{id}")).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
}

#[tokio::test]
async fn notes_are_kept_per_contact_follow_merges_and_stay_in_their_tenant() {
    for server in postdog_tests::servers_on_every_backend().await {
        let (api, _) = Api::tenant(&server, "pro").await;
        let (_, keep) = api.post("/v1/contacts", json!({"name": "Keep"})).await;
        let (_, gone) = api
            .post(
                "/v1/contacts",
                json!({"name": "Gone", "email": "g@example.com"}),
            )
            .await;
        let keep = keep["id"].as_str().expect("id").to_string();
        let gone = gone["id"].as_str().expect("id").to_string();
        let (status, first) = api
            .post(
                &format!("/v1/contacts/{keep}/notes"),
                json!({"body": "Called, wants a demo"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{first}");
        assert!(first["author_key_id"].is_string());
        let (status, _) = api
            .post(
                &format!("/v1/contacts/{gone}/notes"),
                json!({"body": "Prefers email"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        for bad in [
            json!({"body": "  "}),
            json!({"body": 3}),
            json!({"text": "x"}),
        ] {
            let (status, problem) = api
                .post(&format!("/v1/contacts/{keep}/notes"), bad.clone())
                .await;
            assert!(status.is_client_error(), "{bad}: {status} {problem}");
            assert!(problem["detail"].is_string(), "{problem}");
        }

        let (other, _) = Api::tenant(&server, "pro").await;
        let (status, _) = other
            .post(
                &format!("/v1/contacts/{keep}/notes"),
                json!({"body": "intrusion"}),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = other.get(&format!("/v1/contacts/{keep}/notes")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let note_id = first["id"].as_str().expect("id");
        let (status, _) = other
            .delete(&format!("/v1/contacts/{keep}/notes/{note_id}"))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let (status, merged) = api
            .post(&format!("/v1/contacts/{keep}/merge"), json!({"from": gone}))
            .await;
        assert_eq!(status, StatusCode::OK, "{merged}");
        let (_, notes) = api.get(&format!("/v1/contacts/{keep}/notes")).await;
        let bodies: Vec<&str> = notes["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|note| note["body"].as_str().expect("body"))
            .collect();
        assert_eq!(bodies, ["Called, wants a demo", "Prefers email"]);

        let (status, _) = api
            .delete(&format!("/v1/contacts/{keep}/notes/{note_id}"))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (_, notes) = api.get(&format!("/v1/contacts/{keep}/notes")).await;
        assert_eq!(notes["data"].as_array().map(Vec::len), Some(1));
    }
}
