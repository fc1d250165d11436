//! What only the HTTP backend has: the wire (problem documents, status codes, headers,
//! the body size cap), the operator token, bad input of every kind answered with a 4xx
//! and never a 500, and the client's own verification of what a (lying) service sends.

#[path = "support/harness.rs"]
mod harness;

use anyhow::{Context as _, Result, bail, ensure};
use axum::Router;
use axum::routing::get;
use harness::{Backend, OPERATOR_TOKEN, Plugin, Server, key};
use postdog_registry::{MAX_ARTIFACT_BYTES, Registry, RegistryError};
use reqwest::StatusCode;
use serde_json::Value;

/// Sends a request and returns status, headers and the body as JSON (Null if not JSON).
async fn send(
    request: reqwest::RequestBuilder,
) -> Result<(StatusCode, reqwest::header::HeaderMap, Value)> {
    let response = request.send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await?;
    Ok((
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    ))
}

fn assert_problem(
    what: &str,
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
    expected_status: u16,
    expected_type: &str,
) -> Result<()> {
    ensure!(
        status.as_u16() == expected_status,
        "{what}: status {status}, body {body}"
    );
    let content_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    ensure!(
        content_type == "application/problem+json",
        "{what}: content type `{content_type}`"
    );
    ensure!(
        body["type"] == format!("https://postdog.dev/problems/registry/{expected_type}"),
        "{what}: {body}"
    );
    ensure!(body["status"] == expected_status, "{what}: {body}");
    ensure!(
        body["title"].is_string() && body["detail"].is_string(),
        "{what}: {body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_with_a_problem_never_a_500() -> Result<()> {
    let backend = Backend::http().await?;
    let base = &backend.server.as_ref().context("no server")?.base_url;
    let owner = key(1);
    backend
        .registry
        .publish(&Plugin::new("acme/x", "1.0.0").bytes(&owner)?)
        .await?;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{base}/registry/v1{path}");
    let yank_url = url("/plugins/acme/x/1.0.0/yank");
    let key_url = url("/publishers/acme/key");
    let signed_yank = serde_json::to_string(&postdog_registry::YankRequest::sign(
        &"acme/x".parse()?,
        &semver::Version::new(1, 0, 0),
        &key(2),
    ))?;

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("unknown route", client.get(url("/nope")), 404, "not-found"),
        (
            "outside the API",
            client.get(format!("{base}/")),
            404,
            "not-found",
        ),
        (
            "wrong method",
            client.delete(url("/plugins")),
            405,
            "method-not-allowed",
        ),
        (
            "unknown category",
            client.get(url("/plugins?category=shopping")),
            400,
            "invalid-request",
        ),
        (
            "unknown world",
            client.get(url("/plugins?world=flow_action")),
            400,
            "invalid-request",
        ),
        (
            "unknown parameter",
            client.get(url("/plugins?sort=name")),
            400,
            "invalid-request",
        ),
        (
            "bad plugin name",
            client.get(url("/plugins/Acme/X")),
            400,
            "invalid-request",
        ),
        (
            "unknown plugin",
            client.get(url("/plugins/acme/nope")),
            404,
            "not-found",
        ),
        (
            "bad digest",
            client.get(url("/artifacts/sha256:zz")),
            400,
            "invalid-request",
        ),
        (
            "non-UTF-8 path",
            client.get(url("/artifacts/%FF%FE")),
            400,
            "invalid-request",
        ),
        (
            "negative since",
            client.get(url("/changes?since=-1")),
            400,
            "invalid-request",
        ),
        (
            "text since",
            client.get(url("/changes?since=abc")),
            400,
            "invalid-request",
        ),
        (
            "empty artifact",
            client.post(url("/artifacts")),
            422,
            "invalid-artifact",
        ),
        (
            "yank: not JSON",
            client.post(&yank_url).body("yank please"),
            400,
            "invalid-request",
        ),
        (
            "yank: empty JSON",
            client.post(&yank_url).body("{}"),
            400,
            "invalid-request",
        ),
        (
            "yank: bad version",
            client
                .post(url("/plugins/acme/x/1.x/yank"))
                .body(signed_yank.clone()),
            400,
            "invalid-request",
        ),
        (
            "yank: wrong key",
            client.post(&yank_url).body(signed_yank.clone()),
            401,
            "unauthorized",
        ),
        (
            "yank: signed for another version",
            client
                .post(url("/plugins/acme/x/2.0.0/yank"))
                .body(signed_yank),
            401,
            "unauthorized",
        ),
        (
            "rotate: no token",
            client.put(&key_url).body("{}"),
            401,
            "unauthorized",
        ),
        (
            "rotate: wrong token",
            client.put(&key_url).bearer_auth("guess").body("{}"),
            401,
            "unauthorized",
        ),
        (
            "rotate: not JSON",
            client.put(&key_url).bearer_auth(OPERATOR_TOKEN).body("["),
            400,
            "invalid-request",
        ),
        (
            "rotate: bad key",
            client
                .put(&key_url)
                .bearer_auth(OPERATOR_TOKEN)
                .body(r#"{"key": "rsa:abc"}"#),
            400,
            "invalid-request",
        ),
        (
            "rotate: bad publisher",
            client
                .put(url("/publishers/A_B/key"))
                .bearer_auth(OPERATOR_TOKEN)
                .body("{}"),
            400,
            "invalid-request",
        ),
        (
            "key: bad publisher",
            client.get(url("/publishers/A_B/key")),
            400,
            "invalid-request",
        ),
    ];
    for (what, request, status, kind) in cases {
        let (got_status, headers, body) = send(request).await?;
        assert_problem(what, got_status, &headers, &body, status, kind)?;
        if status == 401 {
            ensure!(
                headers.get(reqwest::header::WWW_AUTHENTICATE).is_some(),
                "{what}: no WWW-Authenticate"
            );
        }
    }
    // None of that changed anything.
    assert!(!backend.registry.versions("acme/x").await?[0].yanked);
    assert_eq!(
        backend.registry.publisher_key("acme").await?,
        Some(owner.public())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_64_mib_are_refused_with_413() -> Result<()> {
    let backend = Backend::http().await?;
    let base = &backend.server.as_ref().context("no server")?.base_url;
    let too_big = vec![0u8; MAX_ARTIFACT_BYTES + 1];
    let (status, headers, body) = send(
        reqwest::Client::new()
            .post(format!("{base}/registry/v1/artifacts"))
            .body(too_big.clone()),
    )
    .await?;
    assert_problem(
        "oversized publish",
        status,
        &headers,
        &body,
        413,
        "too-large",
    )?;
    assert_eq!(body["limit"], MAX_ARTIFACT_BYTES);
    // The client refuses before sending.
    match backend.registry.publish(&too_big).await {
        Err(RegistryError::TooLarge { limit }) => assert_eq!(limit, MAX_ARTIFACT_BYTES as u64),
        other => bail!("expected TooLarge, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_answers_carry_their_headers() -> Result<()> {
    let backend = Backend::http().await?;
    let base = &backend.server.as_ref().context("no server")?.base_url;
    let client = reqwest::Client::new();
    let bytes = Plugin::new("acme/x", "1.0.0").bytes(&key(1))?;

    let response = client
        .post(format!("{base}/registry/v1/artifacts"))
        .body(bytes.clone())
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
        .context("no Location")?;
    let info: Value = serde_json::from_slice(&response.bytes().await?)?;
    let digest = info["digest"].as_str().context("no digest")?;
    assert_eq!(location, format!("/registry/v1/artifacts/{digest}"));

    let response = client.get(format!("{base}{location}")).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(
        header(reqwest::header::CONTENT_TYPE).as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(header(reqwest::header::ETAG), Some(format!("\"{digest}\"")));
    assert_eq!(response.bytes().await?.to_vec(), bytes);

    // A repeated publish is a 409 naming the version.
    let (status, headers, body) = send(
        client
            .post(format!("{base}/registry/v1/artifacts"))
            .body(bytes),
    )
    .await?;
    assert_problem("republish", status, &headers, &body, 409, "version-exists")?;
    assert_eq!(
        (body["name"].as_str(), body["version"].as_str()),
        (Some("acme/x"), Some("1.0.0"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_operator_token_rotation_is_disabled() -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let server = Server::start(dir.path(), None).await?;
    let registry = Registry::open(&server.base_url)?;
    for token in [None, Some(""), Some("anything")] {
        match registry
            .rotate_publisher_key("acme", &key(1).public(), token)
            .await
        {
            Err(RegistryError::Unauthorized { reason }) => {
                ensure!(reason.contains("disabled"), "{reason}");
            }
            other => bail!("expected Unauthorized, got {other:?}"),
        }
    }
    assert_eq!(registry.publisher_key("acme").await?, None);
    Ok(())
}

/// A fake registry service that answers downloads with `artifact` and reports `history`
/// as the publisher's keys, whatever is asked.
async fn lying_service(
    artifact: Vec<u8>,
    history: Vec<String>,
) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let history =
        serde_json::json!({ "publisher": "acme", "key": history.last(), "history": history });
    let app = Router::new()
        .route(
            "/registry/v1/artifacts/{digest}",
            get(move || {
                let artifact = artifact.clone();
                async move { artifact }
            }),
        )
        .route(
            "/registry/v1/publishers/{publisher}/key",
            get(move || {
                let history = history.clone();
                async move { axum::Json(history) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((base, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_verifies_what_the_service_sends() -> Result<()> {
    let owner = key(1);
    let forger = key(2);
    let genuine = Plugin::new("acme/x", "1.0.0").artifact(&owner)?;
    let digest = genuine.digest().to_string();

    // The same content signed by a key the service does not list for the publisher.
    let forged = Plugin::new("acme/x", "1.0.0").artifact(&forger)?;
    let (base, task) = lying_service(forged.to_bytes(), vec![owner.public().to_string()]).await?;
    match Registry::open(&base)?.download(&digest).await {
        Err(RegistryError::UntrustedSigner {
            signer, publisher, ..
        }) => {
            assert_eq!((signer, publisher.as_str()), (forger.public(), "acme"));
        }
        other => bail!(
            "expected UntrustedSigner, got {:?}",
            other.map(|a| a.digest())
        ),
    }
    task.abort();

    // Another genuine artifact than the one asked for.
    let other = Plugin::new("acme/x", "6.6.6").bytes(&owner)?;
    let (base, task) = lying_service(other, vec![owner.public().to_string()]).await?;
    match Registry::open(&base)?.download(&digest).await {
        Err(RegistryError::Tampered { recorded, .. }) => assert_eq!(recorded, digest),
        other => bail!("expected Tampered, got {:?}", other.map(|a| a.digest())),
    }
    task.abort();

    // The genuine bytes with one byte of the component changed.
    let mut altered = genuine.to_bytes();
    let in_component = altered.len() - 160;
    altered[in_component] ^= 0x01;
    let (base, task) = lying_service(altered, vec![owner.public().to_string()]).await?;
    match Registry::open(&base)?.download(&digest).await {
        Err(RegistryError::Tampered { .. }) => {}
        other => bail!("expected Tampered, got {:?}", other.map(|a| a.digest())),
    }
    task.abort();

    // And the honest answer passes, also when the signer is an earlier key.
    let (base, task) = lying_service(
        genuine.to_bytes(),
        vec![owner.public().to_string(), forger.public().to_string()],
    )
    .await?;
    assert_eq!(
        Registry::open(&base)?.download(&digest).await?.digest(),
        genuine.digest()
    );
    task.abort();
    Ok(())
}

#[tokio::test]
async fn locations_pick_the_backend() -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let path = dir.path().join("nested/registry");
    let path = path.to_str().context("non-UTF-8 temp path")?;
    assert!(matches!(Registry::open(path)?, Registry::Dir(_)));
    assert!(std::path::Path::new(path).join("blobs/sha256").is_dir());
    assert!(matches!(
        Registry::open("https://registry.example.com")?,
        Registry::Http(_)
    ));
    match Registry::open("ftp://registry.example.com") {
        Err(RegistryError::InvalidRequest { message }) => {
            ensure!(message.contains("ftp://"), "{message}")
        }
        other => bail!("expected InvalidRequest, got {other:?}"),
    }

    // Nothing listens on port 1: the error says the registry cannot be reached.
    let unreachable = Registry::open("http://127.0.0.1:1")?;
    match unreachable.search(&Default::default()).await {
        Err(RegistryError::Unreachable { url, .. }) => {
            ensure!(url.starts_with("http://127.0.0.1:1/"), "{url}")
        }
        other => bail!("expected Unreachable, got {other:?}"),
    }
    Ok(())
}
