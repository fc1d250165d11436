//! Tenants, API keys, roles and per-plan rate limits through the real HTTP API of a
//! running `postdog serve`, on SQLite and on PostgreSQL.

use postdog_tests::{OPERATOR_TOKEN, PostdogServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn servers() -> Vec<PostdogServer> {
    postdog_tests::servers_on_every_backend().await
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn problem(response: reqwest::Response, status: StatusCode, kind: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.expect("problem JSON");
    assert_eq!(
        body["type"],
        format!("https://postdog.dev/problems/{kind}"),
        "{body}"
    );
    assert_eq!(body["status"], status.as_u16());
    body
}

async fn create_tenant(
    server: &PostdogServer,
    name: &str,
    plan: &str,
    parent: Option<&str>,
) -> (String, String) {
    let response = client()
        .post(format!("{}/admin/v1/tenants", server.base_url))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({ "name": name, "plan": plan, "parent_id": parent }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.expect("JSON");
    (
        body["tenant_id"].as_str().expect("id").to_string(),
        body["api_key"].as_str().expect("key").to_string(),
    )
}

#[tokio::test]
async fn cli_created_tenants_authenticate_and_manage_keys() {
    for server in servers().await {
        let created: Value = serde_json::from_str(
            &server.cli(&["tenant", "create", "--name", "Acme", "--plan", "pro"]),
        )
        .expect("JSON");
        let key = created["api_key"].as_str().expect("api_key");
        assert!(key.starts_with("pdk_") && key.len() > 60);
        let keys_url = format!("{}/v1/api-keys", server.base_url);

        // Missing, malformed and unknown keys: 401 problems.
        problem(
            client().get(&keys_url).send().await.expect("request"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        problem(
            client()
                .get(&keys_url)
                .header("authorization", "Basic abc")
                .send()
                .await
                .expect("request"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        problem(
            client()
                .get(&keys_url)
                .bearer_auth("pdk_nope")
                .send()
                .await
                .expect("request"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;

        // Listing never shows secrets.
        let response = client()
            .get(&keys_url)
            .bearer_auth(key)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["ratelimit-limit"], "500", "pro plan");
        let listing = response.text().await.expect("body");
        assert!(
            !listing.contains(key) && !listing.contains("secret"),
            "{listing}"
        );
        let listing: Value = serde_json::from_str(&listing).expect("JSON");
        assert_eq!(listing["data"].as_array().map(Vec::len), Some(1));
        assert_eq!(listing["data"][0]["role"], "admin");
        assert_eq!(listing["data"][0]["prefix"], &key[..12]);

        // An agent key, shown once.
        let response = client()
            .post(&keys_url)
            .bearer_auth(key)
            .json(&json!({"name": "inbox", "role": "agent"}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::CREATED);
        let agent: Value = response.json().await.expect("JSON");
        let agent_key = agent["secret"].as_str().expect("secret").to_string();
        let agent_id = agent["id"].as_str().expect("id").to_string();
        // The agent may not manage keys.
        let response = client()
            .post(&keys_url)
            .bearer_auth(&agent_key)
            .json(&json!({"name": "x", "role": "admin"}))
            .send()
            .await
            .expect("request");
        let body = problem(response, StatusCode::FORBIDDEN, "insufficient-role").await;
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("`agent` role"))
        );

        // Bad bodies are 4xx problems that say what is wrong.
        for (body, status, kind, fragment) in [
            ("{not json", StatusCode::BAD_REQUEST, "malformed-json", ""),
            (
                r#"{"name":"x","role":"owner"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "role",
            ),
            (
                r#"{"name":"x","role":"admin","extra":1}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "extra",
            ),
            (
                r#"{"name":"  ","role":"admin"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "name",
            ),
        ] {
            let response = client()
                .post(&keys_url)
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("request");
            let problem = problem(response, status, kind).await;
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(fragment)),
                "{body}: {problem}"
            );
        }

        // Revoking the agent key: it stops working at once.
        let response = client()
            .delete(format!("{keys_url}/{agent_id}"))
            .bearer_auth(key)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        problem(
            client()
                .get(&keys_url)
                .bearer_auth(&agent_key)
                .send()
                .await
                .expect("request"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        let response = client()
            .delete(format!("{keys_url}/{agent_id}"))
            .bearer_auth(key)
            .send()
            .await
            .expect("request");
        problem(response, StatusCode::NOT_FOUND, "not-found").await;
    }
}

#[tokio::test]
async fn tenants_cannot_touch_each_others_keys() {
    for server in servers().await {
        let (_, key_a) = create_tenant(&server, "A", "pro", None).await;
        let (_, key_b) = create_tenant(&server, "B", "pro", None).await;
        let keys_url = format!("{}/v1/api-keys", server.base_url);
        let a_keys: Value = client()
            .get(&keys_url)
            .bearer_auth(&key_a)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON");
        let a_key_id = a_keys["data"][0]["id"].as_str().expect("id").to_string();
        // B sees only its own key and cannot revoke A's.
        let b_keys: Value = client()
            .get(&keys_url)
            .bearer_auth(&key_b)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON");
        assert_eq!(b_keys["data"].as_array().map(Vec::len), Some(1));
        assert_ne!(b_keys["data"][0]["id"], a_key_id);
        let response = client()
            .delete(format!("{keys_url}/{a_key_id}"))
            .bearer_auth(&key_b)
            .send()
            .await
            .expect("request");
        problem(response, StatusCode::NOT_FOUND, "not-found").await;
        assert_eq!(
            client()
                .get(&keys_url)
                .bearer_auth(&key_a)
                .send()
                .await
                .expect("request")
                .status(),
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn plans_limit_request_rates_and_changes_apply_at_once() {
    for server in servers().await {
        let (tenant, key) = create_tenant(&server, "Small", "starter", None).await;
        let (_, other_key) = create_tenant(&server, "Other", "starter", None).await;
        let url = format!("{}/v1/api-keys", server.base_url);
        // The bucket starts full (100) and refills at 100/min while we spend it, so the
        // first refusal comes after 100 plus what refilled meanwhile.
        let started = std::time::Instant::now();
        let mut allowed = 0u32;
        let response = loop {
            let response = client()
                .get(&url)
                .bearer_auth(&key)
                .send()
                .await
                .expect("request");
            if response.status() != StatusCode::OK {
                break response;
            }
            allowed += 1;
            assert!(allowed < 1000, "the starter limit was never enforced");
        };
        let refilled = (started.elapsed().as_secs_f64() * 100.0 / 60.0).ceil() as u32;
        assert!(
            (100..=100 + refilled + 1).contains(&allowed),
            "{allowed} requests allowed, {refilled} refilled"
        );
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!((1..=60).contains(&retry_after));
        assert_eq!(response.headers()["ratelimit-limit"], "100");
        assert_eq!(response.headers()["ratelimit-remaining"], "0");
        let body = problem(response, StatusCode::TOO_MANY_REQUESTS, "rate-limited").await;
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("100 requests per minute"))
        );
        // Another tenant is unaffected.
        assert_eq!(
            client()
                .get(&url)
                .bearer_auth(&other_key)
                .send()
                .await
                .expect("request")
                .status(),
            StatusCode::OK
        );

        // The operator upgrades the tenant: the larger allowance applies immediately.
        let response = client()
            .patch(format!("{}/admin/v1/tenants/{tenant}", server.base_url))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"plan": "business"}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        let response = client()
            .get(&url)
            .bearer_auth(&key)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["ratelimit-limit"], "2000");

        // Suspension locks the tenant out with a clear 403.
        client()
            .patch(format!("{}/admin/v1/tenants/{tenant}", server.base_url))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"status": "suspended"}))
            .send()
            .await
            .expect("request");
        problem(
            client()
                .get(&url)
                .bearer_auth(&key)
                .send()
                .await
                .expect("request"),
            StatusCode::FORBIDDEN,
            "tenant-suspended",
        )
        .await;
    }
}

#[tokio::test]
async fn the_operator_api_needs_its_token_and_validates_tenants() {
    for server in servers().await {
        let url = format!("{}/admin/v1/tenants", server.base_url);
        problem(
            client().get(&url).send().await.expect("request"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        problem(
            client()
                .get(&url)
                .bearer_auth("wrong")
                .send()
                .await
                .expect("request"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        // A tenant key is not an operator token.
        let (starter, starter_key) = create_tenant(&server, "S", "starter", None).await;
        problem(
            client()
                .get(&url)
                .bearer_auth(&starter_key)
                .send()
                .await
                .expect("request"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;

        // Sub-tenants only under Business tenants.
        let response = client()
            .post(&url)
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"name": "Sub", "plan": "starter", "parent_id": starter}))
            .send()
            .await
            .expect("request");
        let body = problem(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid-tenant").await;
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("not on the business plan"))
        );
        let (agency, _) = create_tenant(&server, "Agency", "business", None).await;
        let (sub, _) = create_tenant(&server, "Client", "starter", Some(&agency)).await;
        let shown: Value = client()
            .get(format!("{url}/{sub}"))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON");
        assert_eq!(shown["parent_id"], agency);
        let response = client()
            .post(&url)
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"name": "X", "plan": "gold"}))
            .send()
            .await
            .expect("request");
        problem(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid-body").await;
        let listed: Value = client()
            .get(&url)
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON");
        assert_eq!(listed["data"].as_array().map(Vec::len), Some(3));
    }
}
