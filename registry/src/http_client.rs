//! [`HttpRegistry`]: the client of the registry HTTP service (`server.rs`). Every call has
//! a timeout; error answers are turned back into the [`RegistryError`] variant the
//! service started from (`problem.rs`). Downloads are verified here again — structure,
//! digest, signature, and that the signer is one of the keys the service reports for the
//! publisher — so a compromised or buggy service cannot hand out altered plugins.

use std::time::Duration;

use semver::Version;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::artifact::Artifact;
use crate::error::RegistryError;
use crate::manifest::PluginName;
use crate::problem::from_problem;
use crate::registry::{
    Change, MAX_ARTIFACT_BYTES, PluginSummary, SearchQuery, VersionInfo, YankRequest, parse_digest,
    parse_name,
};
use crate::signing::PublicKey;

/// Time allowed to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a metadata call (search, versions, keys, changes, yank).
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed to upload or download an artifact.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest JSON answer accepted.
const MAX_JSON_BYTES: usize = 16 * 1024 * 1024;
/// Room for an artifact's framing and manifest beyond the component limit.
const MAX_DOWNLOAD_BYTES: usize = MAX_ARTIFACT_BYTES + 1024 * 1024;

/// A client of a registry service at a base URL.
#[derive(Debug, Clone)]
pub struct HttpRegistry {
    base: Url,
    client: reqwest::Client,
}

/// `{"data": …}`, the envelope of list answers.
#[derive(Deserialize)]
struct Data<T> {
    data: T,
}

/// The answer of `GET /registry/v1/publishers/{publisher}/key`.
#[derive(Deserialize)]
pub(crate) struct PublisherKeys {
    pub(crate) history: Vec<PublicKey>,
}

/// The answer of `GET /registry/v1/changes`.
#[derive(Deserialize)]
struct ChangesPage {
    changes: Vec<Change>,
    cursor: u64,
}

impl HttpRegistry {
    /// A client of the service at `base_url` (the URL the service is served at, e.g.
    /// `http://127.0.0.1:8765`; routes live under `/registry/v1/`).
    pub fn new(base_url: &str) -> Result<HttpRegistry, RegistryError> {
        let base = Url::parse(base_url).map_err(|error| {
            RegistryError::invalid(format!(
                "`{base_url}` is not a valid registry URL ({error})"
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(RegistryError::invalid(format!(
                "`{base_url}` is not an http:// or https:// URL"
            )));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(TRANSFER_TIMEOUT)
            .user_agent(concat!("postdog-registry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| RegistryError::Unreachable {
                url: base_url.to_string(),
                message: format!("could not set up the HTTP client: {error}"),
            })?;
        Ok(HttpRegistry { base, client })
    }

    /// The service's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Publishes an artifact (see [`crate::Registry::publish`]).
    pub async fn publish(&self, artifact_bytes: &[u8]) -> Result<VersionInfo, RegistryError> {
        if artifact_bytes.len() > MAX_ARTIFACT_BYTES {
            return Err(RegistryError::TooLarge {
                limit: MAX_ARTIFACT_BYTES as u64,
            });
        }
        let url = self.url(&["artifacts"])?;
        let request = self
            .client
            .post(url.clone())
            .timeout(TRANSFER_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(artifact_bytes.to_vec());
        self.json(url, request).await
    }

    /// Searches (see [`crate::Registry::search`]).
    pub async fn search(&self, query: &SearchQuery) -> Result<Vec<PluginSummary>, RegistryError> {
        let mut url = self.url(&["plugins"])?;
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(text) = &query.text {
                pairs.append_pair("q", text);
            }
            if let Some(category) = query.category {
                pairs.append_pair("category", category.as_str());
            }
            if let Some(world) = query.world {
                pairs.append_pair("world", world.as_str());
            }
        }
        let request = self.client.get(url.clone()).timeout(METADATA_TIMEOUT);
        let page: Data<Vec<PluginSummary>> = self.json(url, request).await?;
        Ok(page.data)
    }

    /// Every version of a plugin (see [`crate::Registry::versions`]).
    pub async fn versions(&self, name: &str) -> Result<Vec<VersionInfo>, RegistryError> {
        let name = parse_name(name)?;
        let url = self.url(&["plugins", name.publisher(), name.plugin()])?;
        let request = self.client.get(url.clone()).timeout(METADATA_TIMEOUT);
        let page: Data<Vec<VersionInfo>> = self.json(url, request).await?;
        Ok(page.data)
    }

    /// Downloads and verifies an artifact (see the module docs).
    pub async fn download(&self, digest: &str) -> Result<Artifact, RegistryError> {
        let digest = parse_digest(digest)?;
        let url = self.url(&["artifacts", &digest.to_string()])?;
        let request = self.client.get(url.clone()).timeout(TRANSFER_TIMEOUT);
        let bytes = self.bytes(url, request, MAX_DOWNLOAD_BYTES).await?;
        let artifact = Artifact::from_bytes(&bytes)?;
        if artifact.digest() != digest {
            return Err(RegistryError::Tampered {
                recorded: digest.to_string(),
                computed: artifact.digest().to_string(),
            });
        }
        let publisher = artifact.manifest().publisher().to_string();
        if !self
            .publisher_key_history(&publisher)
            .await?
            .contains(&artifact.publisher_key())
        {
            return Err(RegistryError::UntrustedSigner {
                publisher,
                signer: artifact.publisher_key(),
                digest: digest.to_string(),
            });
        }
        Ok(artifact)
    }

    /// Sends a signed yank request (see [`crate::Registry::yank`]).
    pub async fn send_yank(
        &self,
        name: &PluginName,
        version: &Version,
        request: &YankRequest,
    ) -> Result<(), RegistryError> {
        let url = self.url(&[
            "plugins",
            name.publisher(),
            name.plugin(),
            &version.to_string(),
            "yank",
        ])?;
        let body = serde_json::to_vec(request)
            .map_err(|error| RegistryError::invalid(format!("encoding the yank: {error}")))?;
        let request = self
            .client
            .post(url.clone())
            .timeout(METADATA_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.bytes(url, request, MAX_JSON_BYTES).await.map(drop)
    }

    /// Every key the publisher has had, oldest first (see
    /// [`crate::Registry::publisher_key_history`]).
    pub async fn publisher_key_history(
        &self,
        publisher: &str,
    ) -> Result<Vec<PublicKey>, RegistryError> {
        crate::manifest::check_publisher(publisher).map_err(RegistryError::invalid)?;
        let url = self.url(&["publishers", publisher, "key"])?;
        let request = self.client.get(url.clone()).timeout(METADATA_TIMEOUT);
        let keys: PublisherKeys = self.json(url, request).await?;
        Ok(keys.history)
    }

    /// Asks the service to rotate a publisher's key, with the operator token as Bearer.
    pub async fn rotate_publisher_key(
        &self,
        publisher: &str,
        new_key: &PublicKey,
        operator_token: Option<&str>,
    ) -> Result<(), RegistryError> {
        crate::manifest::check_publisher(publisher).map_err(RegistryError::invalid)?;
        let url = self.url(&["publishers", publisher, "key"])?;
        let body = serde_json::json!({ "key": new_key }).to_string();
        let mut request = self
            .client
            .put(url.clone())
            .timeout(METADATA_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(token) = operator_token {
            request = request.bearer_auth(token);
        }
        self.bytes(url, request, MAX_JSON_BYTES).await.map(drop)
    }

    /// Changes after `sequence` (see [`crate::Registry::changes_since`]).
    pub async fn changes_since(&self, sequence: u64) -> Result<(Vec<Change>, u64), RegistryError> {
        let mut url = self.url(&["changes"])?;
        url.query_pairs_mut()
            .append_pair("since", &sequence.to_string());
        let request = self.client.get(url.clone()).timeout(METADATA_TIMEOUT);
        let page: ChangesPage = self.json(url, request).await?;
        Ok((page.changes, page.cursor))
    }

    /// `<base>/registry/v1/<segments…>`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Result<Url, RegistryError> {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        url.path_segments_mut()
            .map_err(|()| RegistryError::invalid(format!("`{}` cannot be a base URL", self.base)))?
            .pop_if_empty()
            .extend(["registry", "v1"])
            .extend(segments);
        Ok(url)
    }

    async fn json<T: DeserializeOwned>(
        &self,
        url: Url,
        request: reqwest::RequestBuilder,
    ) -> Result<T, RegistryError> {
        let body = self.bytes(url.clone(), request, MAX_JSON_BYTES).await?;
        serde_json::from_slice(&body).map_err(|error| RegistryError::Http {
            status: 200,
            message: format!(
                "the registry at {url} sent an answer this client cannot read: {error}"
            ),
        })
    }

    /// Sends a request and reads the whole body (at most `limit` bytes); error answers
    /// become the error they describe.
    async fn bytes(
        &self,
        url: Url,
        request: reqwest::RequestBuilder,
        limit: usize,
    ) -> Result<Vec<u8>, RegistryError> {
        let unreachable = |error: reqwest::Error| RegistryError::Unreachable {
            url: url.to_string(),
            message: error_chain(&error),
        };
        let mut response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        // Error bodies are small problem documents; don't read a huge one.
        let limit = if status.is_success() {
            limit
        } else {
            64 * 1024
        };
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > limit {
                if !status.is_success() {
                    break;
                }
                return Err(RegistryError::Http {
                    status: status.as_u16(),
                    message: format!("the answer from {url} is larger than {limit} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            Ok(body)
        } else {
            Err(from_problem(status.as_u16(), &body))
        }
    }
}

/// An error with its causes, `a: b: c`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
