//! [`RegistryError`]: everything a registry operation can fail with, identical for both
//! backends. The HTTP service turns each variant into a problem document with a stable
//! `type` (`problem.rs`) and the HTTP client turns it back into the same variant, so a
//! caller never needs to know which backend it talks to.

use semver::Version;

use crate::artifact::ArtifactError;
use crate::manifest::{ManifestErrors, PluginName};
use crate::signing::PublicKey;

/// Why a registry operation failed; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The artifact's manifest has mistakes (all of them are listed).
    #[error("the plugin's manifest is invalid:\n{0}")]
    InvalidManifest(ManifestErrors),
    /// The artifact carries no signature.
    #[error("the artifact is not signed; build it with the publisher's key")]
    Unsigned,
    /// The artifact's content does not match its digest.
    #[error(
        "the artifact was tampered with: its content hashes to {computed}, but it claims to be \
         {recorded}; rebuild it from the original manifest and component"
    )]
    Tampered {
        /// The digest the artifact (or the request) claims.
        recorded: String,
        /// The digest of the actual content.
        computed: String,
    },
    /// The signature is not valid for the artifact's digest and key.
    #[error(
        "the artifact's signature is not valid for its content and key; it was altered or \
         signed with another key — rebuild and sign it again"
    )]
    BadSignature,
    /// The bytes are not a well-formed artifact (truncated, not a component, …).
    #[error("invalid artifact: {0}")]
    InvalidArtifact(ArtifactError),
    /// `name@version` is already published.
    #[error(
        "{name}@{version} is already published and versions are immutable; publish it under \
         a new version number"
    )]
    VersionExists {
        /// The plugin.
        name: PluginName,
        /// The version.
        version: Version,
    },
    /// The artifact is signed by another key than the one registered for its publisher.
    #[error(
        "publisher `{publisher}` is registered with key {registered}, but this artifact is \
         signed by {presented}; sign it with the registered key, or ask the registry operator \
         to rotate the publisher's key"
    )]
    PublisherKeyMismatch {
        /// The publisher.
        publisher: String,
        /// The key the registry has for the publisher.
        registered: PublicKey,
        /// The key that signed the artifact.
        presented: PublicKey,
    },
    /// A stored or downloaded artifact is signed by a key that was never registered for
    /// its publisher.
    #[error(
        "the artifact {digest} is signed by {signer}, which is not a key registered for \
         publisher `{publisher}`; it was not published through this registry — do not use it"
    )]
    UntrustedSigner {
        /// The publisher named in the artifact's manifest.
        publisher: String,
        /// The key that signed it.
        signer: PublicKey,
        /// The artifact.
        digest: String,
    },
    /// A plugin, version, artifact or publisher does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. "plugin `acme/x`".
        what: String,
    },
    /// The caller may not do this (wrong key, missing or wrong operator token).
    #[error("not authorized: {reason}")]
    Unauthorized {
        /// Why, and what would be accepted.
        reason: String,
    },
    /// A request argument is malformed (a bad name, digest or version).
    #[error("invalid request: {message}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
    },
    /// The artifact is larger than the registry accepts.
    #[error("the artifact is too large: the registry accepts at most {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The registry's storage failed.
    #[error("registry storage failed while {context}: {source}")]
    Io {
        /// What the registry was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file of the registry's directory is not what the registry wrote.
    #[error("the registry's data is corrupt ({path}): {detail}; restore it from a backup")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// An HTTP registry answered with an error this client does not know.
    #[error("the registry answered HTTP {status}: {message}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The problem's detail, or the start of the body.
        message: String,
    },
    /// An HTTP registry could not be reached (connection, timeout, TLS).
    #[error("could not reach the registry at {url}: {message}; check the URL and the network")]
    Unreachable {
        /// The URL requested.
        url: String,
        /// What went wrong.
        message: String,
    },
}

impl RegistryError {
    /// An I/O failure while doing `context`.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RegistryError::Io {
            context: context.into(),
            source,
        }
    }

    /// A malformed request argument.
    pub(crate) fn invalid(message: impl std::fmt::Display) -> Self {
        RegistryError::InvalidRequest {
            message: message.to_string(),
        }
    }

    /// Something that does not exist.
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        RegistryError::NotFound { what: what.into() }
    }
}

impl From<ArtifactError> for RegistryError {
    /// Lifts the artifact errors callers act on differently (bad manifest, unsigned,
    /// tampered, bad signature) to their own variants; the rest stay `InvalidArtifact`.
    fn from(error: ArtifactError) -> Self {
        match error {
            ArtifactError::InvalidManifest(errors) => RegistryError::InvalidManifest(errors),
            ArtifactError::Unsigned => RegistryError::Unsigned,
            ArtifactError::Tampered { recorded, computed } => {
                RegistryError::Tampered { recorded, computed }
            }
            ArtifactError::BadSignature => RegistryError::BadSignature,
            other => RegistryError::InvalidArtifact(other),
        }
    }
}
