//! `postdog-registry`: the plugin registry — manifests (`postdog-plugin.toml`), publisher
//! keys, signed content-addressed artifacts, semver resolution, and the registry itself
//! with two interchangeable backends (a directory and an HTTP client) plus the HTTP
//! service that the HTTP client talks to.
//!
//! Layout:
//! - [`manifest`] parses and checks `postdog-plugin.toml`, reporting every mistake with
//!   its line and column; [`capability`] and [`config_schema`] are its parts.
//! - [`signing`] holds publisher keys; [`artifact`] the signed single-file artifact format.
//! - [`registry`] is the one async API ([`Registry`]) over [`dir`] (a directory, safe for
//!   several processes) and [`http_client`] (a client of [`server`], the HTTP service);
//!   [`error`] and [`problem`] are the errors both share and their HTTP form.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use postdog_registry::{Artifact, PublisherKey, Registry};
//! let key = PublisherKey::generate()?;
//! let manifest = std::fs::read_to_string("postdog-plugin.toml")?;
//! let component = std::fs::read("plugin.wasm")?;
//! let artifact = Artifact::build(&manifest, component, &key)?;
//! let registry = Registry::open("./registry")?; // or "https://registry.example.com"
//! let published = registry.publish(&artifact.to_bytes()).await?;
//! let resolved = registry.resolve("acme/order-notifier", &"^1.2".parse()?).await?;
//! # Ok(()) }
//! ```

pub mod artifact;
pub mod capability;
pub mod config_schema;
pub mod dir;
pub mod error;
pub mod http_client;
pub mod manifest;
pub mod problem;
pub mod registry;
pub mod server;
pub mod signing;

pub use artifact::{Artifact, ArtifactError, Digest};
pub use capability::Capability;
pub use config_schema::{ConfigError, ConfigSchema, PropertySchema, StringFormat, ValueType};
pub use dir::DirRegistry;
pub use error::RegistryError;
pub use http_client::HttpRegistry;
pub use manifest::{Category, Limits, Manifest, ManifestError, ManifestErrors, PluginName, World};
pub use registry::{
    CHANGES_PAGE_SIZE, Change, MAX_ARTIFACT_BYTES, PluginSummary, Registry, SearchQuery,
    VersionInfo, YankRequest,
};
pub use signing::{KeyError, PublicKey, PublisherKey};
