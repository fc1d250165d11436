//! Contacts through the real HTTP API of a running `postdog serve`, on SQLite and
//! PostgreSQL: normalization, uniqueness with 409s that name the existing contact,
//! roles, plan limits, pagination and tenant isolation.

use postdog_tests::{Api, PostdogServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn servers() -> Vec<PostdogServer> {
    postdog_tests::servers_on_every_backend().await
}

async fn tenant(server: &PostdogServer, plan: &str) -> (String, Api) {
    let (api, id) = Api::tenant(server, plan).await;
    (id, api)
}

#[tokio::test]
async fn contacts_crud_with_normalization_and_uniqueness() {
    for server in servers().await {
        let (_, api) = tenant(&server, "pro").await;
        for (key, definition) in [
            (
                "plan",
                json!({"label": "Plan", "kind": "select", "options": ["gold", "silver"]}),
            ),
            ("city", json!({"label": "City", "kind": "text"})),
        ] {
            let (status, body) = api
                .call(
                    reqwest::Method::PUT,
                    &format!("/v1/custom-fields/{key}"),
                    Some(definition),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        use reqwest::Method;

        let (status, ada) = api
            .call(Method::POST, "/v1/contacts", Some(json!({"name": "Ada", "phone": "(415) 555-0132", "email": " Ada@Example.COM ", "tags": ["vip", "vip", " lead "], "fields": {"plan": "gold"}})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{ada}");
        assert_eq!(ada["phone"], "+14155550132");
        assert_eq!(ada["email"], "ada@example.com");
        assert_eq!(ada["tags"], json!(["lead", "vip"]));
        assert_eq!(ada["fields"], json!({"plan": "gold"}));
        let ada_id = ada["id"].as_str().expect("id").to_string();

        // The same phone written differently, or the same email: 409 naming Ada.
        for body in [
            json!({"phone": "+1 415 555 0132"}),
            json!({"email": "ADA@example.com"}),
        ] {
            let (status, problem) = api
                .call(Method::POST, "/v1/contacts", Some(body.clone()))
                .await;
            assert_eq!(status, StatusCode::CONFLICT, "{body}");
            assert_eq!(problem["existing_contact_id"], ada_id);
            assert_eq!(
                problem["type"],
                "https://postdog.dev/problems/duplicate-contact"
            );
        }
        // Invalid values are 422s with the reason.
        for (body, fragment) in [
            (json!({"phone": "12345"}), "not a valid phone number"),
            (json!({"email": "ada@"}), "not a valid email"),
            (
                json!({"name": "X", "colour": "red"}),
                "unknown field `colour`",
            ),
            (json!({"tags": "vip"}), "array of strings"),
            (json!({}), "at least a name"),
        ] {
            let (status, problem) = api
                .call(Method::POST, "/v1/contacts", Some(body.clone()))
                .await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{body}: {problem}"
            );
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(fragment)),
                "{body}: {problem}"
            );
        }

        // Update: absent keys stay, null clears, fields merge; a conflicting phone is 409.
        let (status, bob) = api
            .call(
                Method::POST,
                "/v1/contacts",
                Some(json!({"name": "Bob", "phone": "+44 20 7946 0018"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let bob_id = bob["id"].as_str().expect("id");
        let (status, problem) = api
            .call(
                Method::PATCH,
                &format!("/v1/contacts/{bob_id}"),
                Some(json!({"phone": "415-555-0132"})),
            )
            .await;
        assert_eq!(
            (status, problem["existing_contact_id"].clone()),
            (StatusCode::CONFLICT, json!(ada_id))
        );
        let (status, updated) = api
            .call(
                Method::PATCH,
                &format!("/v1/contacts/{ada_id}"),
                Some(json!({"email": null, "fields": {"city": "London"}, "tags": ["customer"]})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{updated}");
        assert_eq!(updated["email"], Value::Null);
        assert_eq!(updated["phone"], "+14155550132");
        assert_eq!(updated["fields"], json!({"plan": "gold", "city": "London"}));
        assert_eq!(updated["tags"], json!(["customer"]));
        let (status, fetched) = api
            .call(Method::GET, &format!("/v1/contacts/{ada_id}"), None)
            .await;
        assert_eq!((status, fetched), (StatusCode::OK, updated));

        // Pagination by cursor.
        for index in 0..3 {
            let (status, _) = api
                .call(
                    Method::POST,
                    "/v1/contacts",
                    Some(json!({"name": format!("C{index}")})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let (_, page1) = api.call(Method::GET, "/v1/contacts?limit=3", None).await;
        assert_eq!(page1["data"].as_array().map(Vec::len), Some(3));
        let cursor = page1["next_cursor"].as_str().expect("a next page");
        let (_, page2) = api
            .call(
                Method::GET,
                &format!("/v1/contacts?limit=3&after={cursor}"),
                None,
            )
            .await;
        assert_eq!(page2["data"].as_array().map(Vec::len), Some(2));
        assert_eq!(page2["next_cursor"], Value::Null);
        let (status, problem) = api.call(Method::GET, "/v1/contacts?limit=0", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");

        // Delete.
        let (status, _) = api
            .call(Method::DELETE, &format!("/v1/contacts/{bob_id}"), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = api
            .call(Method::GET, &format!("/v1/contacts/{bob_id}"), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn contacts_are_isolated_between_tenants() {
    for server in servers().await {
        use reqwest::Method;
        let (_, a) = tenant(&server, "pro").await;
        let (_, b) = tenant(&server, "pro").await;
        let (_, contact) = a
            .call(
                Method::POST,
                "/v1/contacts",
                Some(json!({"name": "Secret", "phone": "+14155550132"})),
            )
            .await;
        let id = contact["id"].as_str().expect("id");
        // B can use the same phone (uniqueness is per tenant) and never sees A's contact.
        let (status, _) = b
            .call(
                Method::POST,
                "/v1/contacts",
                Some(json!({"phone": "+14155550132"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        for (method, body) in [
            (Method::GET, None),
            (Method::PATCH, Some(json!({"name": "Owned"}))),
            (Method::DELETE, None),
        ] {
            let (status, _) = b
                .call(method.clone(), &format!("/v1/contacts/{id}"), body)
                .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method}");
        }
        let (_, listing) = b.call(Method::GET, "/v1/contacts", None).await;
        assert!(
            listing["data"]
                .as_array()
                .is_some_and(|data| data.iter().all(|c| c["id"] != id))
        );
        let (status, unchanged) = a
            .call(Method::GET, &format!("/v1/contacts/{id}"), None)
            .await;
        assert_eq!(
            (status, unchanged["name"].clone()),
            (StatusCode::OK, json!("Secret"))
        );
    }
}

#[tokio::test]
async fn roles_and_the_plan_contact_limit_are_enforced() {
    for server in servers().await {
        use reqwest::Method;
        let (tenant_id, admin) = tenant(&server, "starter").await;
        let (_, reader) = admin
            .call(
                Method::POST,
                "/v1/api-keys",
                Some(json!({"name": "r", "role": "read-only"})),
            )
            .await;
        let reader = Api::new(&server, reader["secret"].as_str().expect("secret"));
        let (status, problem) = reader
            .call(Method::POST, "/v1/contacts", Some(json!({"name": "X"})))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
        let (status, _) = reader.call(Method::GET, "/v1/contacts", None).await;
        assert_eq!(status, StatusCode::OK);

        // Fill the starter plan's 1,000 contacts straight in the database (the API path
        // is covered above), then the API refuses the 1,001st with the numbers.
        let storage = server.storage().await;
        let db = storage.tenant(&postdog_host::ids::TenantId::new(&tenant_id));
        for index in 0..1000 {
            db.create_contact(&postdog_host::storage::ContactData {
                name: Some(format!("N{index}")),
                fields: json!({}),
                ..Default::default()
            })
            .await
            .expect("insert");
        }
        let (status, problem) = admin
            .call(
                Method::POST,
                "/v1/contacts",
                Some(json!({"name": "One too many"})),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
        assert_eq!(problem["type"], "https://postdog.dev/problems/plan-limit");
        assert_eq!(
            (problem["limit"].clone(), problem["count"].clone()),
            (json!(1000), json!(1000))
        );
        storage.close().await;
    }
}

#[tokio::test]
async fn consent_is_an_append_only_history_and_calls_are_audited() {
    for server in servers().await {
        use reqwest::Method;
        let (_, api) = tenant(&server, "pro").await;
        let (_, contact) = api
            .call(
                Method::POST,
                "/v1/contacts",
                Some(json!({"name": "Ada", "phone": "+14155550132"})),
            )
            .await;
        assert_eq!(contact["consent"], json!({}));
        let id = contact["id"].as_str().expect("id").to_string();
        let consent_url = format!("/v1/contacts/{id}/consent");
        for (status, source) in [("opted_in", "form"), ("opted_out", "keyword")] {
            let (code, body) = api
                .call(Method::POST, &consent_url, Some(json!({"channel": "whatsapp", "status": status, "source": source, "proof": "msg-1"})))
                .await;
            assert_eq!(code, StatusCode::CREATED, "{body}");
        }
        api.call(
            Method::POST,
            &consent_url,
            Some(json!({"channel": "email", "status": "opted_in"})),
        )
        .await;
        // The current state is the latest entry per channel; the history keeps everything.
        let (_, shown) = api
            .call(Method::GET, &format!("/v1/contacts/{id}"), None)
            .await;
        assert_eq!(shown["consent"]["whatsapp"]["status"], "opted_out");
        assert_eq!(shown["consent"]["whatsapp"]["source"], "keyword");
        assert_eq!(shown["consent"]["email"]["status"], "opted_in");
        assert_eq!(shown["consent"]["email"]["source"], "api");
        let (_, history) = api.call(Method::GET, &consent_url, None).await;
        let statuses: Vec<&str> = history["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter_map(|e| e["status"].as_str())
            .collect();
        assert_eq!(statuses, ["opted_in", "opted_out", "opted_in"]);
        for (body, fragment) in [
            (
                json!({"channel": "fax", "status": "opted_in"}),
                "`channel` must be one of",
            ),
            (
                json!({"channel": "email", "status": "maybe"}),
                "`status` must be",
            ),
        ] {
            let (code, problem) = api.call(Method::POST, &consent_url, Some(body)).await;
            assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(fragment)),
                "{problem}"
            );
        }
        let (code, _) = api
            .call(
                Method::POST,
                "/v1/contacts/nope/consent",
                Some(json!({"channel": "email", "status": "opted_in"})),
            )
            .await;
        assert_eq!(code, StatusCode::NOT_FOUND);

        // Every state-changing call above is in the audit log, newest first, with its key.
        let (code, audit) = api.call(Method::GET, "/v1/audit?limit=200", None).await;
        assert_eq!(code, StatusCode::OK, "{audit}");
        let entries = audit["data"].as_array().expect("data");
        let calls: Vec<(String, String, i64)> = entries
            .iter()
            .map(|e| {
                (
                    e["method"].as_str().unwrap_or("").to_string(),
                    e["path"].as_str().unwrap_or("").to_string(),
                    e["status"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(calls.len(), 7, "{calls:?}");
        assert_eq!(
            calls.last(),
            Some(&("POST".to_string(), "/v1/contacts".to_string(), 201))
        );
        assert_eq!(
            calls[0],
            (
                "POST".to_string(),
                "/v1/contacts/nope/consent".to_string(),
                404
            )
        );
        assert!(entries.iter().all(|e| e["api_key_id"].is_string()));
        assert!(
            calls.iter().all(|(method, _, _)| method == "POST"),
            "reads are not audited"
        );
    }
}

#[tokio::test]
async fn contacts_are_searchable_by_tag_text_and_dates() {
    for server in servers().await {
        use reqwest::Method;
        let (_, api) = tenant(&server, "pro").await;
        for (name, email, tags) in [
            ("Ada Lovelace", "ada@example.com", json!(["vip"])),
            ("Alan Turing", "alan@example.org", json!(["vip", "lead"])),
            ("Grace 100%_Hopper", "grace@example.net", json!(["lead"])),
        ] {
            let (status, _) = api
                .call(
                    Method::POST,
                    "/v1/contacts",
                    Some(json!({"name": name, "email": email, "tags": tags})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let names = |page: &Value| -> Vec<String> {
            page["data"]
                .as_array()
                .expect("data")
                .iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        };
        let (_, vip) = api.call(Method::GET, "/v1/contacts?tag=vip", None).await;
        assert_eq!(names(&vip), ["Ada Lovelace", "Alan Turing"]);
        let (_, text) = api.call(Method::GET, "/v1/contacts?q=LOVE", None).await;
        assert_eq!(names(&text), ["Ada Lovelace"]);
        let (_, by_email) = api
            .call(Method::GET, "/v1/contacts?q=example.org", None)
            .await;
        assert_eq!(names(&by_email), ["Alan Turing"]);
        // `%` and `_` are literal, not wildcards.
        let (_, literal) = api.call(Method::GET, "/v1/contacts?q=100%25_", None).await;
        assert_eq!(names(&literal), ["Grace 100%_Hopper"]);
        let (_, none) = api.call(Method::GET, "/v1/contacts?q=%25", None).await;
        assert_eq!(names(&none), ["Grace 100%_Hopper"]);
        let (_, both) = api
            .call(Method::GET, "/v1/contacts?tag=lead&q=alan", None)
            .await;
        assert_eq!(names(&both), ["Alan Turing"]);
        let (_, future) = api
            .call(
                Method::GET,
                "/v1/contacts?created_after=4102444800000",
                None,
            )
            .await;
        assert_eq!(names(&future), Vec::<String>::new());
        let (status, problem) = api
            .call(Method::GET, "/v1/contacts?created_after=yesterday", None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    }
}

#[tokio::test]
async fn custom_fields_are_typed_and_validated() {
    for server in servers().await {
        use reqwest::Method;
        let (_, api) = tenant(&server, "pro").await;
        for (key, definition) in [
            ("birthday", json!({"label": "Birthday", "kind": "date"})),
            ("score", json!({"label": "Score", "kind": "number"})),
            (
                "newsletter",
                json!({"label": "Newsletter", "kind": "boolean"}),
            ),
            (
                "tier",
                json!({"label": "Tier", "kind": "select", "options": ["a", "b"]}),
            ),
        ] {
            let (status, body) = api
                .call(
                    Method::PUT,
                    &format!("/v1/custom-fields/{key}"),
                    Some(definition),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        for (key, definition, fragment) in [
            (
                "Bad-Key",
                json!({"label": "x", "kind": "text"}),
                "a-z, 0-9 and _",
            ),
            ("color", json!({"label": "x", "kind": "select"}), "options"),
            ("color", json!({"label": "x", "kind": "colour"}), "kind"),
        ] {
            let (status, problem) = api
                .call(
                    Method::PUT,
                    &format!("/v1/custom-fields/{key}"),
                    Some(definition),
                )
                .await;
            assert!(status.is_client_error(), "{key}: {problem}");
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(fragment)),
                "{key}: {problem}"
            );
        }
        let (_, listed) = api.call(Method::GET, "/v1/custom-fields", None).await;
        assert_eq!(listed["data"].as_array().map(Vec::len), Some(4));

        let fields =
            json!({"birthday": "1990-02-28", "score": 7.5, "newsletter": true, "tier": "a"});
        let (status, contact) = api
            .call(
                Method::POST,
                "/v1/contacts",
                Some(json!({"name": "Ada", "fields": fields})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{contact}");
        assert_eq!(contact["fields"], fields);
        let id = contact["id"].as_str().expect("id");
        for (bad, fragment) in [
            (json!({"birthday": "1990-02-30"}), "YYYY-MM-DD"),
            (json!({"score": "high"}), "takes a number"),
            (json!({"newsletter": "yes"}), "true or false"),
            (json!({"tier": "z"}), "one of: a, b"),
            (json!({"shoe_size": 42}), "not defined"),
        ] {
            let (status, problem) = api
                .call(
                    Method::PATCH,
                    &format!("/v1/contacts/{id}"),
                    Some(json!({"fields": bad})),
                )
                .await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(fragment)),
                "{problem}"
            );
        }
        let (_, unchanged) = api
            .call(Method::GET, &format!("/v1/contacts/{id}"), None)
            .await;
        assert_eq!(
            unchanged["fields"], fields,
            "refused changes leave the contact as it was"
        );
    }
}

#[tokio::test]
async fn merging_two_contacts_keeps_everything_once() {
    for server in servers().await {
        use reqwest::Method;
        let (_, api) = tenant(&server, "pro").await;
        api.call(
            Method::PUT,
            "/v1/custom-fields/city",
            Some(json!({"label": "City", "kind": "text"})),
        )
        .await;
        api.call(
            Method::PUT,
            "/v1/custom-fields/plan",
            Some(json!({"label": "Plan", "kind": "text"})),
        )
        .await;
        let (_, phone_only) = api.call(Method::POST, "/v1/contacts", Some(json!({"name": "Ada", "phone": "+14155550132", "tags": ["a"], "fields": {"city": "London"}}))).await;
        let (_, email_only) = api.call(Method::POST, "/v1/contacts", Some(json!({"name": "A. Lovelace", "email": "ada@example.com", "tags": ["b", "a"], "fields": {"city": "Paris", "plan": "gold"}}))).await;
        let target = phone_only["id"].as_str().expect("id");
        let source = email_only["id"].as_str().expect("id");
        api.call(
            Method::POST,
            &format!("/v1/contacts/{source}/consent"),
            Some(json!({"channel": "email", "status": "opted_in"})),
        )
        .await;

        let (status, merged) = api
            .call(
                Method::POST,
                &format!("/v1/contacts/{target}/merge"),
                Some(json!({"from": source})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{merged}");
        assert_eq!(merged["name"], "Ada", "the target's values win");
        assert_eq!(merged["phone"], "+14155550132");
        assert_eq!(
            merged["email"], "ada@example.com",
            "missing values come from the source"
        );
        assert_eq!(merged["tags"], json!(["a", "b"]));
        assert_eq!(merged["fields"], json!({"city": "London", "plan": "gold"}));
        assert_eq!(
            merged["consent"]["email"]["status"], "opted_in",
            "consent history moves along"
        );
        let (status, _) = api
            .call(Method::GET, &format!("/v1/contacts/{source}"), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // The email is now the merged contact's: creating it again is a conflict naming it.
        let (status, problem) = api
            .call(
                Method::POST,
                "/v1/contacts",
                Some(json!({"email": "ada@example.com"})),
            )
            .await;
        assert_eq!(
            (status, problem["existing_contact_id"].as_str()),
            (StatusCode::CONFLICT, Some(target))
        );
        let (status, _) = api
            .call(
                Method::POST,
                &format!("/v1/contacts/{target}/merge"),
                Some(json!({"from": target})),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let (status, _) = api
            .call(
                Method::POST,
                &format!("/v1/contacts/{target}/merge"),
                Some(json!({"from": "nope"})),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
