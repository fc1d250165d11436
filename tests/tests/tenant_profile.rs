//! A tenant's own profile through the real HTTP API, on SQLite and PostgreSQL: default
//! country for phone numbers, white-label branding only on Business with validated
//! values and unique custom domains, usage against the plan (contacts, the month's
//! message allowance), and the operator's custom request rate.

use postdog_tests::{Api, OPERATOR_TOKEN};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn operator_patch(api: &Api, tenant: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .patch(format!("{}/admin/v1/tenants/{tenant}", api.base_url))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn tenants_set_country_branding_and_see_usage() {
    for server in postdog_tests::servers_on_every_backend().await {
        let (starter, starter_id) = Api::tenant(&server, "starter").await;
        let (_, me) = starter.get("/v1/tenant").await;
        assert_eq!(me["id"], json!(starter_id));
        assert_eq!(me["default_country"], "US");
        assert_eq!(me["usage"]["contacts"], json!({"count": 0, "limit": 1000}));
        assert_eq!(me["usage"]["messages"]["allowance"], 5000);
        assert_eq!(me["usage"]["messages"]["sent"], 0);
        assert_eq!(me["usage"]["requests_per_minute"], 100);

        // The default country decides how national numbers are read.
        let (status, contact) = starter
            .post("/v1/contacts", json!({"phone": "020 7946 0018"}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{contact}");
        let (status, me) = starter
            .patch("/v1/tenant", json!({"default_country": "gb"}))
            .await;
        assert_eq!(
            (status, me["default_country"].clone()),
            (StatusCode::OK, json!("GB"))
        );
        let (status, contact) = starter
            .post("/v1/contacts", json!({"phone": "020 7946 0018"}))
            .await;
        assert_eq!(
            (status, contact["phone"].clone()),
            (StatusCode::CREATED, json!("+442079460018"))
        );
        for bad in [
            json!({"default_country": "XX"}),
            json!({"default_country": "GBR"}),
            json!({"name": ""}),
            json!({"plan": "business"}),
        ] {
            let (status, problem) = starter.patch("/v1/tenant", bad.clone()).await;
            assert!(status.is_client_error(), "{bad}: {status}");
            assert!(problem["detail"].is_string(), "{problem}");
        }
        // Branding is a Business feature.
        let (status, problem) = starter
            .patch("/v1/tenant", json!({"brand_name": "Acme Chat"}))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
        assert_eq!(problem["type"], "https://postdog.dev/problems/plan-feature");

        // Messages sent are recorded per calendar month (the messaging layer writes them).
        let storage = server.storage().await;
        let db = storage.tenant(&postdog_host::ids::TenantId::new(&starter_id));
        let now = postdog_host::storage::now_ms();
        db.record_messages_sent(120, now).await.expect("usage");
        db.record_messages_sent(30, now).await.expect("usage");
        db.record_messages_sent(999, now - 40 * 86_400_000)
            .await
            .expect("last month");
        storage.close().await;
        let (_, me) = starter.get("/v1/tenant").await;
        assert_eq!(me["usage"]["messages"]["sent"], 150, "{me}");
        assert_eq!(me["usage"]["messages"]["remaining"], 4850);
        assert_eq!(me["usage"]["contacts"]["count"], 1);

        let (agency, agency_id) = Api::tenant(&server, "business").await;
        let branding = json!({
            "brand_name": "Acme Chat",
            "logo_url": "https://cdn.acme.example/logo.png",
            "primary_color": "#1A2B3C",
            "custom_domain": "Chat.Acme.example."
        });
        let (status, me) = agency.patch("/v1/tenant", branding).await;
        assert_eq!(status, StatusCode::OK, "{me}");
        assert_eq!(
            me["branding"],
            json!({
                "brand_name": "Acme Chat",
                "logo_url": "https://cdn.acme.example/logo.png",
                "primary_color": "#1a2b3c",
                "custom_domain": "chat.acme.example"
            })
        );
        for (bad, needle) in [
            (
                json!({"logo_url": "http://insecure.example/logo.png"}),
                "https",
            ),
            (json!({"logo_url": "not a url"}), "logo_url"),
            (json!({"primary_color": "blue"}), "primary_color"),
            (json!({"custom_domain": "10.0.0.1"}), "custom_domain"),
            (
                json!({"custom_domain": "no_underscores.example"}),
                "custom_domain",
            ),
            (json!({"brand_name": 7}), "brand_name"),
            (json!({"colour": "#fff"}), "colour"),
        ] {
            let (status, problem) = agency.patch("/v1/tenant", bad.clone()).await;
            assert!(status.is_client_error(), "{bad}: {status}");
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|detail| detail.contains(needle)),
                "{bad}: {problem}"
            );
        }
        let (_, unchanged) = agency.get("/v1/tenant").await;
        assert_eq!(unchanged["branding"]["primary_color"], "#1a2b3c");
        // A custom domain belongs to one tenant.
        let (other_agency, _) = Api::tenant(&server, "business").await;
        let (status, problem) = other_agency
            .patch("/v1/tenant", json!({"custom_domain": "chat.acme.example"}))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{problem}");
        let (status, me) = agency
            .patch("/v1/tenant", json!({"custom_domain": null}))
            .await;
        assert_eq!(
            (status, me["branding"]["custom_domain"].clone()),
            (StatusCode::OK, Value::Null)
        );
        // Only admins change the profile.
        let (_, reader) = agency
            .post("/v1/api-keys", json!({"name": "r", "role": "read-only"}))
            .await;
        let reader = Api::new(&server, reader["secret"].as_str().expect("secret"));
        let (status, _) = reader.patch("/v1/tenant", json!({"name": "Mine"})).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = reader.get("/v1/tenant").await;
        assert_eq!(status, StatusCode::OK);

        // The operator sets a custom request rate; null returns to the plan's.
        let (status, tenant) =
            operator_patch(&agency, &agency_id, json!({"requests_per_minute": 3})).await;
        assert_eq!(
            (status, tenant["requests_per_minute"].clone()),
            (StatusCode::OK, json!(3))
        );
        let mut refused = None;
        for _ in 0..5 {
            let response = agency.send(reqwest::Method::GET, "/v1/tenant", None).await;
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                refused = Some(
                    response.headers()["ratelimit-limit"]
                        .to_str()
                        .expect("limit")
                        .to_string(),
                );
                break;
            }
        }
        assert_eq!(refused.as_deref(), Some("3"));
        let (status, tenant) =
            operator_patch(&agency, &agency_id, json!({"requests_per_minute": null})).await;
        assert_eq!(
            (status, tenant["requests_per_minute"].clone()),
            (StatusCode::OK, Value::Null)
        );
        let (status, _) =
            operator_patch(&agency, &agency_id, json!({"requests_per_minute": 0})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let (status, tenant) = operator_patch(
            &agency,
            &agency_id,
            json!({"default_country": "DE", "brand_name": "Renamed"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{tenant}");
        assert_eq!(
            (
                tenant["default_country"].clone(),
                tenant["branding"]["brand_name"].clone()
            ),
            (json!("DE"), json!("Renamed"))
        );
    }
}
