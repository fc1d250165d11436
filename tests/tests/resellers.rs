//! Resellers: a Business tenant creates sub-tenants and acts on them explicitly; a
//! sub-tenant sees only itself, never its parent or siblings.

use postdog_tests::{OPERATOR_TOKEN, PostdogServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn call(
    server: &PostdogServer,
    key: &str,
    act_as: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut api = postdog_tests::Api::new(server, key);
    api.act_as = act_as.map(str::to_string);
    api.call(method, path, body).await
}

#[tokio::test]
async fn resellers_manage_and_act_on_their_sub_tenants_only() {
    for server in postdog_tests::servers_on_every_backend().await {
        let admin = |plan: &str, name: &str| {
            let server = &server;
            let body = json!({"name": name, "plan": plan});
            async move {
                let response = reqwest::Client::new()
                    .post(format!("{}/admin/v1/tenants", server.base_url))
                    .bearer_auth(OPERATOR_TOKEN)
                    .json(&body)
                    .send()
                    .await
                    .expect("request");
                let body: Value = response.json().await.expect("JSON");
                (
                    body["tenant_id"].as_str().expect("id").to_string(),
                    body["api_key"].as_str().expect("key").to_string(),
                )
            }
        };
        let (_, agency_key) = admin("business", "Agency").await;
        let (other_agency, other_key) = admin("business", "Other agency").await;
        let (_, starter_key) = admin("starter", "Shop").await;

        // Only business tenants have sub-tenants.
        let (status, _) = call(
            &server,
            &starter_key,
            None,
            Method::POST,
            "/v1/sub-tenants",
            Some(json!({"name": "X", "plan": "starter"})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        let (status, one) = call(
            &server,
            &agency_key,
            None,
            Method::POST,
            "/v1/sub-tenants",
            Some(json!({"name": "Client one", "plan": "starter"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{one}");
        let (_, two) = call(
            &server,
            &agency_key,
            None,
            Method::POST,
            "/v1/sub-tenants",
            Some(json!({"name": "Client two", "plan": "pro"})),
        )
        .await;
        let one_id = one["tenant_id"].as_str().expect("id");
        let one_key = one["api_key"].as_str().expect("key");
        let two_id = two["tenant_id"].as_str().expect("id");
        let (_, listed) = call(
            &server,
            &agency_key,
            None,
            Method::GET,
            "/v1/sub-tenants",
            None,
        )
        .await;
        assert_eq!(listed["data"].as_array().map(Vec::len), Some(2));
        let (_, other_listed) = call(
            &server,
            &other_key,
            None,
            Method::GET,
            "/v1/sub-tenants",
            None,
        )
        .await;
        assert_eq!(other_listed["data"], json!([]));

        // The agency acts on client one explicitly; the contact lands in client one.
        let (status, contact) = call(
            &server,
            &agency_key,
            Some(one_id),
            Method::POST,
            "/v1/contacts",
            Some(json!({"name": "Customer of one"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{contact}");
        let contact_id = contact["id"].as_str().expect("id");
        let (status, _) = call(
            &server,
            one_key,
            None,
            Method::GET,
            &format!("/v1/contacts/{contact_id}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "client one owns it");
        let (status, _) = call(
            &server,
            &agency_key,
            None,
            Method::GET,
            &format!("/v1/contacts/{contact_id}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "not the agency's own data");
        let (status, _) = call(
            &server,
            &agency_key,
            Some(two_id),
            Method::GET,
            &format!("/v1/contacts/{contact_id}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "nor client two's");

        // Nobody else may act on client one: not another agency, not a sibling, not the
        // sub-tenant on its parent, not a made-up id.
        for (key, target) in [
            (&other_key, one_id),
            (&one_key.to_string(), two_id),
            (&one_key.to_string(), other_agency.as_str()),
            (&agency_key, "no-such-tenant"),
        ] {
            let (status, problem) = call(
                &server,
                key,
                Some(target),
                Method::GET,
                "/v1/contacts",
                None,
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
            assert_eq!(
                problem["type"],
                "https://postdog.dev/problems/not-your-sub-tenant"
            );
        }
        // A sub-tenant cannot list or create sub-tenants of its own (it is not a reseller).
        let (status, _) = call(&server, one_key, None, Method::GET, "/v1/sub-tenants", None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
}
