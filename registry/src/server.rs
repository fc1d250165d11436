//! The registry HTTP service: a [`DirRegistry`] behind HTTP, so it enforces exactly the
//! directory backend's rules. [`crate::HttpRegistry`] is its client.
//!
//! Routes (all under `/registry/v1`):
//!
//! | method and path                                   | what                                          | success |
//! |---------------------------------------------------|-----------------------------------------------|---------|
//! | `GET /plugins?q=&category=&world=`                | search → `{"data": [PluginSummary]}`          | 200 |
//! | `GET /plugins/{publisher}/{name}`                 | versions, newest first → `{"data": [VersionInfo]}` | 200 |
//! | `POST /plugins/{publisher}/{name}/{version}/yank` | yank; body `{"publisher_key", "signature"}` ([`crate::YankRequest`]) | 204 |
//! | `POST /artifacts`                                 | publish; body = artifact bytes (≤ 64 MiB) → `VersionInfo` | 201 |
//! | `GET /artifacts/{digest}`                         | the verified artifact bytes, `application/octet-stream` | 200 |
//! | `GET /publishers/{publisher}/key`                 | `{"publisher", "key", "history"}` (`key` null when unknown) | 200 |
//! | `PUT /publishers/{publisher}/key`                 | operator: rotate; `Authorization: Bearer <operator token>`, body `{"key": "ed25519:…"}` | 204 |
//! | `GET /changes?since=N`                            | `{"changes": [Change], "cursor": N}` | 200 |
//!
//! Errors are `application/problem+json` with a stable `type` per error (see
//! `problem.rs` for the table). Bad input of any kind — unknown routes and methods,
//! malformed names, digests, versions, query parameters or JSON, oversized bodies — is a
//! 4xx problem, never a 500. The operator route is disabled (401) when the service runs
//! without an operator token.

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use semver::Version;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::dir::DirRegistry;
use crate::error::RegistryError;
use crate::manifest::{Category, PluginName, World, check_publisher};
use crate::problem::to_problem;
use crate::registry::{MAX_ARTIFACT_BYTES, SearchQuery, YankRequest, parse_digest};
use crate::signing::PublicKey;

struct Service {
    registry: DirRegistry,
    operator_token: Option<String>,
}

type Shared = State<Arc<Service>>;

/// The service's routes over `registry`. Without `operator_token`, key rotation over
/// HTTP is disabled.
pub fn router(registry: DirRegistry, operator_token: Option<String>) -> Router {
    let service = Arc::new(Service {
        registry,
        operator_token: operator_token.filter(|token| !token.is_empty()),
    });
    Router::new()
        .route("/registry/v1/plugins", get(search))
        .route("/registry/v1/plugins/{publisher}/{name}", get(versions))
        .route(
            "/registry/v1/plugins/{publisher}/{name}/{version}/yank",
            post(yank),
        )
        .route(
            "/registry/v1/artifacts",
            // The whole artifact file counts, as in `DirRegistry::publish`.
            post(publish).layer(DefaultBodyLimit::max(MAX_ARTIFACT_BYTES)),
        )
        .route("/registry/v1/artifacts/{digest}", get(download))
        .route(
            "/registry/v1/publishers/{publisher}/key",
            get(publisher_key).put(rotate_key),
        )
        .route("/registry/v1/changes", get(changes))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(service)
}

/// Serves the registry on `listener` until `shutdown` completes, then finishes the
/// requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: DirRegistry,
    operator_token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry, operator_token))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A registry error as an HTTP answer.
struct ApiError(RegistryError);

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        ApiError(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = to_problem(&self.0);
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            problem.body.to_string(),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

type Answer = Result<Response, ApiError>;

fn invalid(message: impl std::fmt::Display) -> ApiError {
    ApiError(RegistryError::invalid(message))
}

async fn search(State(service): Shared, RawQuery(query): RawQuery) -> Answer {
    let mut search = SearchQuery::default();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "q" if !value.trim().is_empty() => search.text = Some(value.into_owned()),
            "q" => {}
            "category" => search.category = Some(value.parse::<Category>().map_err(invalid)?),
            "world" => search.world = Some(value.parse::<World>().map_err(invalid)?),
            other => {
                return Err(invalid(format!(
                    "unknown query parameter `{other}`; use q, category and world"
                )));
            }
        }
    }
    let plugins = service.registry.search(&search).await?;
    Ok(Json(serde_json::json!({ "data": plugins })).into_response())
}

async fn versions(
    State(service): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Answer {
    let Path((publisher, name)) = path.map_err(|rejection| invalid(rejection.body_text()))?;
    let name = plugin_name(&publisher, &name)?;
    let versions = service.registry.versions(name.as_str()).await?;
    Ok(Json(serde_json::json!({ "data": versions })).into_response())
}

async fn yank(
    State(service): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let Path((publisher, name, version)) =
        path.map_err(|rejection| invalid(rejection.body_text()))?;
    let name = plugin_name(&publisher, &name)?;
    let version = Version::parse(&version)
        .map_err(|error| invalid(format!("`{version}` is not a semantic version ({error})")))?;
    let request: YankRequest = json_body(body)?;
    service
        .registry
        .apply_yank(&name, &version, &request)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn publish(State(service): Shared, body: Result<Bytes, BytesRejection>) -> Answer {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(RegistryError::TooLarge {
                limit: MAX_ARTIFACT_BYTES as u64,
            })
        } else {
            invalid(rejection.body_text())
        }
    })?;
    let info = service.registry.publish(&body).await?;
    let location = format!("/registry/v1/artifacts/{}", info.digest);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(info),
    )
        .into_response())
}

async fn download(State(service): Shared, path: Result<Path<String>, PathRejection>) -> Answer {
    let Path(digest) = path.map_err(|rejection| invalid(rejection.body_text()))?;
    let digest = parse_digest(&digest)?;
    let bytes = service.registry.download_bytes(&digest.to_string()).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::ETAG, format!("\"{digest}\"")),
            // Content-addressed: the bytes behind a digest never change.
            (
                header::CACHE_CONTROL,
                "public, max-age=31536000, immutable".to_string(),
            ),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Serialize)]
struct PublisherKeyAnswer {
    publisher: String,
    key: Option<PublicKey>,
    history: Vec<PublicKey>,
}

async fn publisher_key(
    State(service): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Answer {
    let Path(publisher) = path.map_err(|rejection| invalid(rejection.body_text()))?;
    let history = service.registry.publisher_key_history(&publisher).await?;
    Ok(Json(PublisherKeyAnswer {
        publisher,
        key: history.last().copied(),
        history,
    })
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateKeyBody {
    key: PublicKey,
}

async fn rotate_key(
    State(service): Shared,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    check_operator(&service, &headers)?;
    let Path(publisher) = path.map_err(|rejection| invalid(rejection.body_text()))?;
    check_publisher(&publisher).map_err(invalid)?;
    let body: RotateKeyBody = json_body(body)?;
    service
        .registry
        .rotate_publisher_key(&publisher, &body.key)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn changes(State(service): Shared, RawQuery(query): RawQuery) -> Answer {
    let mut since = 0;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "since" => {
                since = value.parse::<u64>().map_err(|_| {
                    invalid(format!(
                        "`since` must be a change sequence number (0 or more), not `{value}`"
                    ))
                })?;
            }
            other => {
                return Err(invalid(format!(
                    "unknown query parameter `{other}`; use since"
                )));
            }
        }
    }
    let (changes, cursor) = service.registry.changes_since(since).await?;
    Ok(Json(serde_json::json!({ "changes": changes, "cursor": cursor })).into_response())
}

async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError(RegistryError::not_found(format!(
        "route `{}` (the registry API lives under /registry/v1/)",
        uri.path()
    )))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let body = serde_json::json!({
        "type": format!("{}method-not-allowed", crate::problem::PROBLEM_TYPE_PREFIX),
        "title": "Method not allowed",
        "status": 405,
        "detail": format!("`{}` does not accept {method}", uri.path()),
    });
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn plugin_name(publisher: &str, name: &str) -> Result<PluginName, ApiError> {
    format!("{publisher}/{name}").parse().map_err(invalid)
}

fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| invalid(rejection.body_text()))?;
    serde_json::from_slice(&body).map_err(|error| invalid(format!("invalid JSON body: {error}")))
}

/// Checks the `Authorization: Bearer <operator token>` header, in constant time.
fn check_operator(service: &Service, headers: &HeaderMap) -> Result<(), ApiError> {
    let unauthorized = |reason: &str| {
        ApiError(RegistryError::Unauthorized {
            reason: reason.to_string(),
        })
    };
    let Some(expected) = &service.operator_token else {
        return Err(unauthorized(
            "the operator API is disabled; start the registry service with an operator token",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| {
            unauthorized("send the operator token as `Authorization: Bearer <token>`")
        })?;
    // Comparing hashes keeps the time independent of where the tokens differ.
    let (expected, presented) = (
        Sha256::digest(expected.as_bytes()),
        Sha256::digest(presented.trim().as_bytes()),
    );
    let difference = expected
        .iter()
        .zip(presented.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if difference == 0 {
        Ok(())
    } else {
        Err(unauthorized("the operator token is wrong"))
    }
}
