//! `postdog-registry`: the plugin registry — manifests (`postdog-plugin.toml`), publisher
//! keys, signed content-addressed artifacts, semver resolution, and the registry itself
//! with two interchangeable backends (a directory and an HTTP client) plus the HTTP
//! service that the HTTP client talks to.
//!
//! Layout:
//! - [`manifest`] parses and checks `postdog-plugin.toml`, reporting every mistake with
//!   its line and column; [`capability`] and [`config_schema`] are its parts.
//! - [`signing`] holds publisher keys; [`artifact`] the signed single-file artifact format.

pub mod artifact;
pub mod capability;
pub mod config_schema;
pub mod manifest;
pub mod signing;

pub use artifact::{Artifact, ArtifactError, Digest};
pub use capability::Capability;
pub use config_schema::{ConfigError, ConfigSchema, PropertySchema, StringFormat, ValueType};
pub use manifest::{Category, Limits, Manifest, ManifestError, ManifestErrors, PluginName, World};
pub use signing::{KeyError, PublicKey, PublisherKey};
