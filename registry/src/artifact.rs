//! Artifacts: a plugin's manifest and component, content-addressed and signed by its
//! publisher, in one file.
//!
//! # Format (`PDPKG001`)
//!
//! All integers are big-endian; every section is a `u64` length followed by that many
//! bytes, in this fixed order:
//!
//! | section     | content                                                  |
//! |-------------|----------------------------------------------------------|
//! | magic       | the 8 bytes `PDPKG001` (no length prefix)                |
//! | manifest    | `postdog-plugin.toml`, UTF-8, at most 256 KiB            |
//! | component   | the WebAssembly component                                |
//! | digest      | 32 bytes: the [`Digest`] of manifest and component       |
//! | publisher   | 32 bytes: the publisher's ed25519 public key             |
//! | signature   | 64 bytes: ed25519 signature of the digest (see below)    |
//!
//! Nothing may follow the signature. The encoding is canonical, so
//! `Artifact::from_bytes(b)?.to_bytes() == b`.
//!
//! The **digest** is `sha256("postdog-artifact-digest-v1\0" ‖ u64(len(manifest)) ‖
//! manifest ‖ u64(len(component)) ‖ component)`, written `sha256:<hex>`: the same plugin
//! content always has the same address, and the length prefixes make the split between
//! manifest and component unambiguous. The **signature** is over
//! `"postdog-artifact-signature-v1\0" ‖ "sha256:<hex>"`.
//!
//! [`Artifact::from_bytes`] always checks the structure, the digest, the signature, the
//! manifest and the component header, so an `Artifact` value is always a verified one.
//! Whether its signer is *the right* key for the publisher is the registry's question
//! ([`Artifact::verify_against`]).

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::manifest::{Manifest, ManifestErrors};
use crate::signing::{PublicKey, PublisherKey, SIGNATURE_LENGTH};

/// The first bytes of every artifact (format version 1).
pub const MAGIC: &[u8; 8] = b"PDPKG001";
/// The first bytes of a WebAssembly component (`\0asm`, version 0x0d, layer 1).
pub const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
/// Largest manifest an artifact may carry.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

const DIGEST_DOMAIN: &[u8] = b"postdog-artifact-digest-v1\0";
const SIGNATURE_DOMAIN: &[u8] = b"postdog-artifact-signature-v1\0";

/// A verified artifact (see the module docs).
#[derive(Clone)]
pub struct Artifact {
    manifest: Manifest,
    manifest_text: String,
    component: Bytes,
    digest: Digest,
    publisher_key: PublicKey,
    signature: [u8; SIGNATURE_LENGTH],
}

/// The content address of an artifact, written `sha256:<64 lowercase hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why bytes are not a valid artifact, or an artifact is not what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ArtifactError {
    /// The bytes do not start with the `PDPKG` magic.
    #[error("not a PostDog artifact: it does not start with `PDPKG001`")]
    NotAnArtifact,
    /// A PostDog artifact of a format this version cannot read.
    #[error("artifact format `PDPKG{version}` is not supported; this registry reads PDPKG001")]
    UnsupportedFormat {
        /// The format version found.
        version: String,
    },
    /// The bytes end inside a section.
    #[error(
        "truncated artifact: the {section} section needs {expected} bytes but only {available} \
         remain; the file was cut short (an interrupted download or upload?)"
    )]
    Truncated {
        /// The section being read.
        section: String,
        /// Bytes it needs.
        expected: u64,
        /// Bytes left.
        available: u64,
    },
    /// A section has an impossible size or content.
    #[error("malformed artifact: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// Bytes follow the signature.
    #[error("malformed artifact: {count} unexpected bytes after the signature")]
    TrailingBytes {
        /// How many.
        count: u64,
    },
    /// There is no signature.
    #[error("the artifact is not signed; build it with the publisher's key")]
    Unsigned,
    /// The manifest or component do not match the recorded digest.
    #[error(
        "the artifact was tampered with: its content hashes to {computed}, but it records \
         {recorded}; rebuild it from the original manifest and component"
    )]
    Tampered {
        /// The digest the artifact records.
        recorded: String,
        /// The digest of its actual content.
        computed: String,
    },
    /// The signature is not the publisher key's signature of the digest.
    #[error(
        "the artifact's signature is not valid for its digest and publisher key; it was \
         altered or signed with another key"
    )]
    BadSignature,
    /// The publisher key section is not an ed25519 public key.
    #[error("the artifact's publisher key is not a valid ed25519 public key")]
    BadPublicKey,
    /// The manifest has mistakes.
    #[error("the artifact's manifest is invalid:\n{0}")]
    InvalidManifest(ManifestErrors),
    /// The component is not a WebAssembly component.
    #[error("the artifact's component is {reason}")]
    NotAComponent {
        /// What it is instead.
        reason: String,
    },
    /// The artifact is signed by another key than the one expected.
    #[error("the artifact is signed by {found}, not by the expected key {expected}")]
    SignerMismatch {
        /// The key that should have signed it.
        expected: PublicKey,
        /// The key that did.
        found: PublicKey,
    },
}

impl Artifact {
    /// Builds and signs an artifact from a manifest and a component.
    pub fn build(
        manifest_text: &str,
        component: impl Into<Bytes>,
        key: &PublisherKey,
    ) -> Result<Artifact, ArtifactError> {
        let component = component.into();
        if manifest_text.len() > MAX_MANIFEST_BYTES {
            return Err(manifest_too_large(manifest_text.len() as u64));
        }
        let manifest = Manifest::parse(manifest_text).map_err(ArtifactError::InvalidManifest)?;
        check_component(&component)?;
        let digest = Digest::of(manifest_text.as_bytes(), &component);
        let signature = key.sign(SIGNATURE_DOMAIN, digest.to_string().as_bytes());
        Ok(Artifact {
            manifest,
            manifest_text: manifest_text.to_string(),
            component,
            digest,
            publisher_key: key.public(),
            signature,
        })
    }

    /// Reads and verifies an artifact: structure, digest, signature, manifest and
    /// component header.
    pub fn from_bytes(bytes: &[u8]) -> Result<Artifact, ArtifactError> {
        let mut reader = Reader { bytes, position: 0 };
        let magic = reader.take_raw(MAGIC.len());
        match magic {
            Some(magic) if magic == MAGIC => {}
            Some(magic) if magic.starts_with(b"PDPKG") => {
                return Err(ArtifactError::UnsupportedFormat {
                    version: String::from_utf8_lossy(&magic[5..]).into_owned(),
                });
            }
            _ => return Err(ArtifactError::NotAnArtifact),
        }
        let manifest_bytes = reader.section("manifest", Some(MAX_MANIFEST_BYTES as u64))?;
        let component = reader.section("component", None)?;
        let recorded = fixed::<32>(reader.section("digest", Some(32))?, "digest")?;
        let key_bytes = fixed::<32>(reader.section("publisher key", Some(32))?, "publisher key")?;
        if reader.remaining() == 0 {
            return Err(ArtifactError::Unsigned);
        }
        let signature_bytes = reader.section("signature", Some(SIGNATURE_LENGTH as u64))?;
        if signature_bytes.is_empty() {
            return Err(ArtifactError::Unsigned);
        }
        let signature = fixed::<SIGNATURE_LENGTH>(signature_bytes, "signature")?;
        if reader.remaining() > 0 {
            return Err(ArtifactError::TrailingBytes {
                count: reader.remaining() as u64,
            });
        }

        // Content first: a changed byte anywhere in manifest or component is "tampered",
        // whatever else it breaks.
        let digest = Digest::of(manifest_bytes, component);
        if digest.0 != recorded {
            return Err(ArtifactError::Tampered {
                recorded: Digest(recorded).to_string(),
                computed: digest.to_string(),
            });
        }
        let publisher_key =
            PublicKey::from_bytes(&key_bytes).map_err(|_| ArtifactError::BadPublicKey)?;
        if !publisher_key.verifies(SIGNATURE_DOMAIN, digest.to_string().as_bytes(), &signature) {
            return Err(ArtifactError::BadSignature);
        }
        let manifest_text =
            std::str::from_utf8(manifest_bytes).map_err(|error| ArtifactError::Malformed {
                reason: format!("the manifest is not UTF-8 text ({error})"),
            })?;
        let manifest = Manifest::parse(manifest_text).map_err(ArtifactError::InvalidManifest)?;
        check_component(component)?;
        Ok(Artifact {
            manifest,
            manifest_text: manifest_text.to_string(),
            component: Bytes::copy_from_slice(component),
            digest,
            publisher_key,
            signature,
        })
    }

    /// The artifact in its file format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let manifest = self.manifest_text.as_bytes();
        let mut bytes = Vec::with_capacity(
            MAGIC.len() + 5 * 8 + manifest.len() + self.component.len() + 32 + 32 + 64,
        );
        bytes.extend_from_slice(MAGIC);
        for section in [
            manifest,
            &self.component[..],
            &self.digest.0[..],
            &self.publisher_key.to_bytes()[..],
            &self.signature[..],
        ] {
            bytes.extend_from_slice(&(section.len() as u64).to_be_bytes());
            bytes.extend_from_slice(section);
        }
        bytes
    }

    /// Checks that `expected` signed the artifact.
    pub fn verify_against(&self, expected: &PublicKey) -> Result<(), ArtifactError> {
        if &self.publisher_key == expected {
            Ok(())
        } else {
            Err(ArtifactError::SignerMismatch {
                expected: *expected,
                found: self.publisher_key,
            })
        }
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest exactly as signed.
    pub fn manifest_text(&self) -> &str {
        &self.manifest_text
    }

    /// The component bytes.
    pub fn component(&self) -> &Bytes {
        &self.component
    }

    /// The artifact's content address.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The key that signed the artifact.
    pub fn publisher_key(&self) -> PublicKey {
        self.publisher_key
    }

    /// Hex sha256 of the component bytes alone (what the host's compile cache is keyed by).
    pub fn component_sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.component))
    }
}

impl fmt::Debug for Artifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Artifact")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("digest", &self.digest)
            .field("publisher_key", &self.publisher_key)
            .field("component_bytes", &self.component.len())
            .finish()
    }
}

/// Reads length-prefixed sections, never trusting a length beyond the bytes present.
struct Reader<'b> {
    bytes: &'b [u8],
    position: usize,
}

impl<'b> Reader<'b> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    fn take_raw(&mut self, count: usize) -> Option<&'b [u8]> {
        let taken = self
            .bytes
            .get(self.position..self.position.checked_add(count)?)?;
        self.position += count;
        Some(taken)
    }

    fn section(&mut self, name: &str, max: Option<u64>) -> Result<&'b [u8], ArtifactError> {
        let truncated = |expected: u64, available: usize| ArtifactError::Truncated {
            section: name.to_string(),
            expected,
            available: available as u64,
        };
        let length_bytes = self
            .take_raw(8)
            .ok_or_else(|| truncated(8, self.remaining()))?;
        let mut length = [0u8; 8];
        length.copy_from_slice(length_bytes);
        let length = u64::from_be_bytes(length);
        if let Some(max) = max
            && length > max
        {
            return Err(if name == "manifest" {
                manifest_too_large(length)
            } else {
                ArtifactError::Malformed {
                    reason: format!("the {name} section is {length} bytes; it must be {max}"),
                }
            });
        }
        let available = self.remaining();
        usize::try_from(length)
            .ok()
            .and_then(|length| self.take_raw(length))
            .ok_or_else(|| truncated(length, available))
    }
}

fn fixed<const N: usize>(bytes: &[u8], name: &str) -> Result<[u8; N], ArtifactError> {
    bytes.try_into().map_err(|_| ArtifactError::Malformed {
        reason: format!(
            "the {name} section is {} bytes; it must be {N}",
            bytes.len()
        ),
    })
}

fn manifest_too_large(length: u64) -> ArtifactError {
    ArtifactError::Malformed {
        reason: format!(
            "the manifest is {length} bytes; a manifest may have at most {MAX_MANIFEST_BYTES}"
        ),
    }
}

/// Checks the component header (the host checks exports and imports when it loads it).
fn check_component(component: &[u8]) -> Result<(), ArtifactError> {
    if component.starts_with(&COMPONENT_HEADER) {
        return Ok(());
    }
    let reason = if component.starts_with(b"\0asm\x01\0\0\0") {
        "a core WebAssembly module, not a component; build it for `wasm32-wasip2` (or wrap it \
         with `wasm-tools component new`)"
    } else if component.starts_with(b"\0asm") {
        "WebAssembly of an unsupported version; build it for `wasm32-wasip2`"
    } else {
        "not WebAssembly: a component starts with the bytes 00 61 73 6d 0d 00 01 00"
    };
    Err(ArtifactError::NotAComponent {
        reason: reason.to_string(),
    })
}

impl Digest {
    /// The digest of a manifest and component (see the module docs).
    pub fn of(manifest: &[u8], component: &[u8]) -> Digest {
        let mut hasher = Sha256::new();
        hasher.update(DIGEST_DOMAIN);
        hasher.update((manifest.len() as u64).to_be_bytes());
        hasher.update(manifest);
        hasher.update((component.len() as u64).to_be_bytes());
        hasher.update(component);
        Digest(hasher.finalize().into())
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The 32 hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// A string that is not `sha256:<64 lowercase hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a digest; a digest is written `sha256:<64 lowercase hex digits>`")]
pub struct InvalidDigest(pub String);

impl FromStr for Digest {
    type Err = InvalidDigest;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidDigest(text.chars().take(100).collect());
        let hex_digits = text.strip_prefix("sha256:").ok_or_else(invalid)?;
        if hex_digits.len() != 64
            || !hex_digits
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
        {
            return Err(invalid());
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut bytes).map_err(|_| invalid())?;
        Ok(Digest(bytes))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"[plugin]
name = "acme/order-notifier"
version = "1.2.0"
world = "flow-action"
wit = "0.1.0"
description = "Sends order notifications"
categories = ["ecommerce"]
capabilities = ["kv", "http:api.example.com"]
"#;

    fn component() -> Vec<u8> {
        let mut bytes = COMPONENT_HEADER.to_vec();
        bytes.extend_from_slice(b"fake component body");
        bytes
    }

    fn built() -> Result<(Artifact, PublisherKey), ArtifactError> {
        let key = PublisherKey::from_seed([3; 32]);
        Ok((Artifact::build(MANIFEST, component(), &key)?, key))
    }

    /// Offsets of each section's content in the encoded artifact.
    fn offsets(artifact: &Artifact) -> (usize, usize, usize, usize, usize) {
        let manifest = 8 + 8;
        let component = manifest + artifact.manifest_text().len() + 8;
        let digest = component + artifact.component().len() + 8;
        let key = digest + 32 + 8;
        let signature = key + 32 + 8;
        (manifest, component, digest, key, signature)
    }

    #[test]
    fn artifacts_round_trip_byte_for_byte() -> Result<(), ArtifactError> {
        let (artifact, key) = built()?;
        let bytes = artifact.to_bytes();
        assert!(bytes.starts_with(b"PDPKG001"));
        let read = Artifact::from_bytes(&bytes)?;
        assert_eq!(read.to_bytes(), bytes);
        assert_eq!(read.manifest_text(), MANIFEST);
        assert_eq!(read.manifest().name.as_str(), "acme/order-notifier");
        assert_eq!(read.component()[..], component()[..]);
        assert_eq!(read.digest(), artifact.digest());
        assert_eq!(read.publisher_key(), key.public());
        assert_eq!(read.verify_against(&key.public()), Ok(()));
        assert_eq!(
            read.component_sha256(),
            hex::encode(Sha256::digest(component()))
        );
        Ok(())
    }

    #[test]
    fn the_digest_is_content_addressed_and_domain_separated() -> Result<(), ArtifactError> {
        let (artifact, _) = built()?;
        // Same content, another key: same address.
        let other = Artifact::build(MANIFEST, component(), &PublisherKey::from_seed([4; 32]))?;
        assert_eq!(other.digest(), artifact.digest());
        // Not a plain hash of the concatenation.
        let mut plain = Sha256::new();
        plain.update(MANIFEST.as_bytes());
        plain.update(component());
        assert_ne!(artifact.digest().as_bytes()[..], plain.finalize()[..]);
        // Moving a byte from manifest to component changes it.
        assert_ne!(Digest::of(b"ab", b"c"), Digest::of(b"a", b"bc"));
        let text = artifact.digest().to_string();
        assert_eq!(text.parse::<Digest>(), Ok(artifact.digest()));
        assert!("sha256:ABC".parse::<Digest>().is_err());
        assert!(text.to_uppercase().parse::<Digest>().is_err());
        Ok(())
    }

    #[test]
    fn a_flipped_byte_in_the_manifest_or_component_is_tampering() -> Result<(), ArtifactError> {
        let (artifact, _) = built()?;
        let bytes = artifact.to_bytes();
        let (manifest, component, ..) = offsets(&artifact);
        for position in [manifest + 20, component + 3, component + 12] {
            let mut tampered = bytes.clone();
            tampered[position] ^= 0x01;
            assert!(
                matches!(
                    Artifact::from_bytes(&tampered),
                    Err(ArtifactError::Tampered { .. })
                ),
                "byte {position}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_flipped_signature_or_digest_byte_is_refused() -> Result<(), ArtifactError> {
        let (artifact, _) = built()?;
        let bytes = artifact.to_bytes();
        let (_, _, digest, _, signature) = offsets(&artifact);
        let mut bad_signature = bytes.clone();
        bad_signature[signature + 10] ^= 0x80;
        assert_eq!(
            Artifact::from_bytes(&bad_signature).err(),
            Some(ArtifactError::BadSignature)
        );
        let mut bad_digest = bytes.clone();
        bad_digest[digest] ^= 0x01;
        assert!(matches!(
            Artifact::from_bytes(&bad_digest),
            Err(ArtifactError::Tampered { .. })
        ));
        Ok(())
    }

    #[test]
    fn a_swapped_publisher_key_is_a_bad_signature() -> Result<(), ArtifactError> {
        let (artifact, _) = built()?;
        let mut bytes = artifact.to_bytes();
        let (_, _, _, key, _) = offsets(&artifact);
        let impostor = PublisherKey::from_seed([9; 32]).public().to_bytes();
        bytes[key..key + 32].copy_from_slice(&impostor);
        assert_eq!(
            Artifact::from_bytes(&bytes).err(),
            Some(ArtifactError::BadSignature)
        );
        Ok(())
    }

    #[test]
    fn the_wrong_signer_is_named() -> Result<(), ArtifactError> {
        let (artifact, key) = built()?;
        let expected = PublisherKey::from_seed([5; 32]).public();
        assert_eq!(
            artifact.verify_against(&expected),
            Err(ArtifactError::SignerMismatch {
                expected,
                found: key.public()
            })
        );
        Ok(())
    }

    #[test]
    fn truncation_anywhere_is_reported() -> Result<(), ArtifactError> {
        let (artifact, _) = built()?;
        let bytes = artifact.to_bytes();
        let (_, _, _, _, signature) = offsets(&artifact);
        for length in [
            10,
            20,
            100,
            signature - 8 - 40,
            signature + 30,
            bytes.len() - 1,
        ] {
            let result = Artifact::from_bytes(&bytes[..length]);
            assert!(
                matches!(result, Err(ArtifactError::Truncated { .. })),
                "length {length}: {result:?}"
            );
        }
        assert_eq!(
            Artifact::from_bytes(&bytes[..5]).err(),
            Some(ArtifactError::NotAnArtifact)
        );
        Ok(())
    }

    #[test]
    fn missing_or_empty_signatures_are_unsigned() -> Result<(), ArtifactError> {
        let (artifact, _) = built()?;
        let bytes = artifact.to_bytes();
        let (_, _, _, _, signature) = offsets(&artifact);
        let without = &bytes[..signature - 8];
        assert_eq!(
            Artifact::from_bytes(without).err(),
            Some(ArtifactError::Unsigned)
        );
        let mut empty = without.to_vec();
        empty.extend_from_slice(&0u64.to_be_bytes());
        assert_eq!(
            Artifact::from_bytes(&empty).err(),
            Some(ArtifactError::Unsigned)
        );
        Ok(())
    }

    #[test]
    fn other_malformations_are_named() -> Result<(), ArtifactError> {
        let (artifact, _) = built()?;
        let bytes = artifact.to_bytes();
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            Artifact::from_bytes(&trailing).err(),
            Some(ArtifactError::TrailingBytes { count: 1 })
        );
        assert_eq!(
            Artifact::from_bytes(b"\0asm\x0d\0\x01\0").err(),
            Some(ArtifactError::NotAnArtifact)
        );
        let mut newer = bytes.clone();
        newer[..8].copy_from_slice(b"PDPKG002");
        assert_eq!(
            Artifact::from_bytes(&newer).err(),
            Some(ArtifactError::UnsupportedFormat {
                version: "002".into()
            })
        );
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            Artifact::from_bytes(&huge),
            Err(ArtifactError::Malformed { .. })
        ));
        Ok(())
    }

    #[test]
    fn build_refuses_bad_manifests_and_non_components() {
        let key = PublisherKey::from_seed([3; 32]);
        assert!(matches!(
            Artifact::build("[plugin]\nname = 1\n", component(), &key),
            Err(ArtifactError::InvalidManifest(_))
        ));
        let core_module = b"\0asm\x01\0\0\0rest".to_vec();
        let error = Artifact::build(MANIFEST, core_module, &key).err();
        assert!(
            matches!(&error, Some(ArtifactError::NotAComponent { reason }) if reason.contains("core WebAssembly module")),
            "{error:?}"
        );
        assert!(matches!(
            Artifact::build(MANIFEST, b"hello".to_vec(), &key),
            Err(ArtifactError::NotAComponent { .. })
        ));
    }
}
