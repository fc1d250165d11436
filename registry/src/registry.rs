//! [`Registry`]: one async API over the two backends — a directory ([`DirRegistry`], the
//! embedded default) and an HTTP registry service ([`HttpRegistry`]) — plus the records
//! both return. Both backends enforce the same rules:
//!
//! - only signed, untampered artifacts with a valid manifest are accepted;
//! - the first publish of a publisher registers its key (trust on first use); later
//!   publishes must be signed by the publisher's current key, which only the operator can
//!   rotate (versions signed by earlier keys stay downloadable);
//! - `name@version` is immutable: re-publishing it is refused, even with identical bytes
//!   (build metadata does not make a new version: `1.0.0+a` and `1.0.0+b` are the same);
//! - yanking needs a request signed by the publisher's current key; a yanked version stays
//!   downloadable by digest (existing installs keep working) but is no longer resolved;
//! - every publish and yank gets the next number of a gap-free change sequence, so a
//!   running host can poll [`Registry::changes_since`] cheaply and hot-load new versions.

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};

use crate::artifact::{Artifact, Digest};
use crate::dir::DirRegistry;
use crate::error::RegistryError;
use crate::http_client::HttpRegistry;
use crate::manifest::{Category, Limits, Manifest, PluginName, World};
use crate::signing::{PublicKey, PublisherKey, SIGNATURE_LENGTH, decode_fixed};

/// Largest artifact a registry accepts (64 MiB).
pub const MAX_ARTIFACT_BYTES: usize = 64 * 1024 * 1024;
/// Most changes one [`Registry::changes_since`] call returns; call again with the
/// returned cursor until it returns no changes.
pub const CHANGES_PAGE_SIZE: usize = 500;

const YANK_DOMAIN: &[u8] = b"postdog-yank-v1\0";

/// A plugin registry, local or remote.
#[derive(Debug, Clone)]
pub enum Registry {
    /// A registry in a local directory.
    Dir(DirRegistry),
    /// A remote registry service.
    Http(HttpRegistry),
}

/// One published version of a plugin, as the registry records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// `publisher/name`.
    pub name: PluginName,
    /// The version.
    pub version: Version,
    /// The artifact's content address; pass it to [`Registry::download`].
    pub digest: Digest,
    /// The plugin's world.
    pub world: World,
    /// The `postdog:plugin` WIT version it was built against.
    pub wit: Version,
    /// What the plugin does.
    pub description: String,
    /// Marketplace categories.
    pub categories: Vec<Category>,
    /// Requested capabilities, as written in the manifest (`http:api.example.com`, …).
    pub capabilities: Vec<String>,
    /// The configuration schema as standard JSON Schema
    /// ([`crate::ConfigSchema::to_json_schema`]).
    pub config_schema: serde_json::Value,
    /// The oldest host version that can run it.
    pub min_host_version: Option<Version>,
    /// Requested resource limits.
    pub limits: Limits,
    /// Icon URL.
    pub icon: Option<String>,
    /// Home page URL.
    pub homepage: Option<String>,
    /// When it was published, in Unix milliseconds.
    pub published_at: u64,
    /// Whether the publisher yanked it.
    pub yanked: bool,
    /// The key that signed it.
    pub publisher_key: PublicKey,
}

impl VersionInfo {
    /// The record of a freshly published artifact.
    pub(crate) fn of_artifact(artifact: &Artifact, published_at: u64) -> Self {
        let manifest: &Manifest = artifact.manifest();
        VersionInfo {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            digest: artifact.digest(),
            world: manifest.world,
            wit: manifest.wit.clone(),
            description: manifest.description.clone(),
            categories: manifest.categories.clone(),
            capabilities: manifest
                .capabilities
                .iter()
                .map(ToString::to_string)
                .collect(),
            config_schema: manifest.config.to_json_schema(),
            min_host_version: manifest.min_host_version.clone(),
            limits: manifest.limits,
            icon: manifest.icon.as_ref().map(ToString::to_string),
            homepage: manifest.homepage.as_ref().map(ToString::to_string),
            published_at,
            yanked: false,
            publisher_key: artifact.publisher_key(),
        }
    }
}

/// A plugin in search results, described by its latest version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginSummary {
    /// `publisher/name`.
    pub name: PluginName,
    /// The latest version's description.
    pub description: String,
    /// The latest version's categories.
    pub categories: Vec<Category>,
    /// The latest version's world.
    pub world: World,
    /// The newest version that is not yanked (a stable one when there is any).
    pub latest_version: Version,
    /// How many versions are published and not yanked.
    pub versions: usize,
    /// The latest version's icon URL.
    pub icon: Option<String>,
    /// The latest version's home page.
    pub homepage: Option<String>,
}

/// What to search for; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    /// Words that must all appear (case-insensitively) in the name or description.
    pub text: Option<String>,
    /// A category the plugin must list.
    pub category: Option<Category>,
    /// The plugin's world.
    pub world: Option<World>,
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// Changes are short-lived values read a page at a time; boxing the record would only add
// an allocation and clumsier matching for every caller.
#[allow(clippy::large_enum_variant)]
pub enum Change {
    /// A version was published (the record as it was then, so `yanked` is `false`).
    Published(VersionInfo),
    /// A version was yanked.
    Yanked {
        /// The plugin.
        name: PluginName,
        /// The version.
        version: Version,
    },
}

/// A yank, signed by the publisher: the body of the HTTP yank request. The signature
/// covers `postdog-yank-v1\0` ‖ `publisher/name@version`, so it cannot be replayed for
/// another version (replaying it for the same version is harmless: yanking is idempotent
/// and cannot be undone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YankRequest {
    /// The key that signed the request.
    pub publisher_key: PublicKey,
    /// Base64 ed25519 signature.
    pub signature: String,
}

impl YankRequest {
    /// Signs a yank of `name@version` with `key`.
    pub fn sign(name: &PluginName, version: &Version, key: &PublisherKey) -> Self {
        use base64::Engine as _;
        let signature = key.sign(YANK_DOMAIN, yank_message(name, version).as_bytes());
        YankRequest {
            publisher_key: key.public(),
            signature: base64::engine::general_purpose::STANDARD.encode(signature),
        }
    }

    /// Whether the signature is `publisher_key`'s signature of a yank of `name@version`.
    pub fn is_valid_for(&self, name: &PluginName, version: &Version) -> bool {
        decode_fixed::<SIGNATURE_LENGTH>(&self.signature, "signature").is_ok_and(|signature| {
            self.publisher_key.verifies(
                YANK_DOMAIN,
                yank_message(name, version).as_bytes(),
                &signature,
            )
        })
    }
}

fn yank_message(name: &PluginName, version: &Version) -> String {
    format!("{name}@{version}")
}

impl Registry {
    /// Opens a registry: `http://` and `https://` locations are registry services (the URL
    /// the service is served at), other `scheme://` locations are refused, and anything
    /// else is a directory, created if missing.
    pub fn open(location: &str) -> Result<Registry, RegistryError> {
        if location.starts_with("http://") || location.starts_with("https://") {
            Ok(Registry::Http(HttpRegistry::new(location)?))
        } else if let Some((scheme, _)) = location.split_once("://") {
            Err(RegistryError::invalid(format!(
                "`{scheme}://` registries are not supported; use an http(s):// URL or a \
                 directory path"
            )))
        } else {
            Ok(Registry::Dir(DirRegistry::open(location)?))
        }
    }

    /// Publishes an artifact (its file bytes) and returns its record.
    pub async fn publish(&self, artifact_bytes: &[u8]) -> Result<VersionInfo, RegistryError> {
        match self {
            Registry::Dir(registry) => registry.publish(artifact_bytes).await,
            Registry::Http(registry) => registry.publish(artifact_bytes).await,
        }
    }

    /// Plugins matching `query` that have at least one version not yanked, by name.
    pub async fn search(&self, query: &SearchQuery) -> Result<Vec<PluginSummary>, RegistryError> {
        match self {
            Registry::Dir(registry) => registry.search(query).await,
            Registry::Http(registry) => registry.search(query).await,
        }
    }

    /// Every version of a plugin, newest first, yanked ones included (and flagged);
    /// `NotFound` for an unknown plugin.
    pub async fn versions(&self, name: &str) -> Result<Vec<VersionInfo>, RegistryError> {
        match self {
            Registry::Dir(registry) => registry.versions(name).await,
            Registry::Http(registry) => registry.versions(name).await,
        }
    }

    /// The newest version that is not yanked and matches `req` (pre-releases only when
    /// `req` names one, as in Cargo); `Ok(None)` when none does, `NotFound` for an unknown
    /// plugin.
    pub async fn resolve(
        &self,
        name: &str,
        req: &VersionReq,
    ) -> Result<Option<VersionInfo>, RegistryError> {
        Ok(pick_resolution(self.versions(name).await?, req))
    }

    /// Downloads an artifact by digest, verified: digest, signature, and that the signer
    /// is a key registered (now or before) for the artifact's publisher.
    pub async fn download(&self, digest: &str) -> Result<Artifact, RegistryError> {
        match self {
            Registry::Dir(registry) => registry.download(digest).await,
            Registry::Http(registry) => registry.download(digest).await,
        }
    }

    /// Yanks `name@version`; `key` must be the publisher's current key. Yanking a yanked
    /// version again is a no-op.
    pub async fn yank(
        &self,
        name: &str,
        version: &Version,
        key: &PublisherKey,
    ) -> Result<(), RegistryError> {
        let name = parse_name(name)?;
        let request = YankRequest::sign(&name, version, key);
        match self {
            Registry::Dir(registry) => registry.apply_yank(&name, version, &request).await,
            Registry::Http(registry) => registry.send_yank(&name, version, &request).await,
        }
    }

    /// The publisher's current key, if the publisher is known.
    pub async fn publisher_key(&self, publisher: &str) -> Result<Option<PublicKey>, RegistryError> {
        Ok(self.publisher_key_history(publisher).await?.last().copied())
    }

    /// Every key the publisher has had, oldest first (the last is the current one).
    pub async fn publisher_key_history(
        &self,
        publisher: &str,
    ) -> Result<Vec<PublicKey>, RegistryError> {
        match self {
            Registry::Dir(registry) => registry.publisher_key_history(publisher).await,
            Registry::Http(registry) => registry.publisher_key_history(publisher).await,
        }
    }

    /// Operator action: makes `new_key` the publisher's key (registering the publisher if
    /// it is new). Versions signed by earlier keys stay downloadable. A directory registry
    /// needs no token (file system access is the authority); an HTTP registry needs the
    /// service's operator token, sent as a Bearer token.
    pub async fn rotate_publisher_key(
        &self,
        publisher: &str,
        new_key: &PublicKey,
        operator_token: Option<&str>,
    ) -> Result<(), RegistryError> {
        match self {
            Registry::Dir(registry) => registry.rotate_publisher_key(publisher, new_key).await,
            Registry::Http(registry) => {
                registry
                    .rotate_publisher_key(publisher, new_key, operator_token)
                    .await
            }
        }
    }

    /// Changes with a sequence number above `sequence`, oldest first, at most
    /// [`CHANGES_PAGE_SIZE`], and the cursor to pass next time (the last sequence number
    /// returned, or `sequence` when there is nothing new). Start from 0.
    pub async fn changes_since(&self, sequence: u64) -> Result<(Vec<Change>, u64), RegistryError> {
        match self {
            Registry::Dir(registry) => registry.changes_since(sequence).await,
            Registry::Http(registry) => registry.changes_since(sequence).await,
        }
    }
}

/// Parses a `publisher/name` argument.
pub(crate) fn parse_name(name: &str) -> Result<PluginName, RegistryError> {
    name.parse().map_err(RegistryError::invalid)
}

/// Parses a `sha256:<hex>` argument.
pub(crate) fn parse_digest(digest: &str) -> Result<Digest, RegistryError> {
    digest.parse().map_err(RegistryError::invalid)
}

/// The resolution rule shared by both backends.
pub(crate) fn pick_resolution(versions: Vec<VersionInfo>, req: &VersionReq) -> Option<VersionInfo> {
    versions
        .into_iter()
        .filter(|info| !info.yanked && req.matches(&info.version))
        .max_by(|a, b| a.version.cmp(&b.version))
}

/// The search result for one plugin's versions, or `None` when every version is yanked
/// or the plugin does not match `query`.
pub(crate) fn summarize(versions: &[VersionInfo], query: &SearchQuery) -> Option<PluginSummary> {
    let available: Vec<&VersionInfo> = versions.iter().filter(|info| !info.yanked).collect();
    let newest = |stable_only: bool| {
        available
            .iter()
            .copied()
            .filter(|info| !stable_only || info.version.pre.is_empty())
            .max_by(|a, b| a.version.cmp(&b.version))
    };
    let latest = newest(true).or_else(|| newest(false))?;
    if let Some(category) = query.category
        && !latest.categories.contains(&category)
    {
        return None;
    }
    if let Some(world) = query.world
        && latest.world != world
    {
        return None;
    }
    if let Some(text) = &query.text {
        let haystack = format!("{} {}", latest.name, latest.description).to_lowercase();
        if !text
            .split_whitespace()
            .all(|word| haystack.contains(&word.to_lowercase()))
        {
            return None;
        }
    }
    Some(PluginSummary {
        name: latest.name.clone(),
        description: latest.description.clone(),
        categories: latest.categories.clone(),
        world: latest.world,
        latest_version: latest.version.clone(),
        versions: available.len(),
        icon: latest.icon.clone(),
        homepage: latest.homepage.clone(),
    })
}
