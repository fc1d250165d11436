//! The wire form of [`RegistryError`]: RFC 9457 `application/problem+json` documents with
//! a stable `type` per variant under `https://postdog.dev/problems/registry/`, the
//! variant's data as extension members, and the way back. The service uses
//! [`to_problem`], the HTTP client [`from_problem`], so both backends surface the same
//! variants.
//!
//! | type slug                | status | variant                 | extension members            |
//! |--------------------------|--------|-------------------------|------------------------------|
//! | `invalid-manifest`       | 422    | `InvalidManifest`       | `errors` [{line, column, message}] |
//! | `unsigned-artifact`      | 422    | `Unsigned`              |                              |
//! | `tampered-artifact`      | 422    | `Tampered`              | `recorded`, `computed`       |
//! | `bad-signature`          | 422    | `BadSignature`          |                              |
//! | `invalid-artifact`       | 422    | `InvalidArtifact`       | `artifact_error` (tagged)    |
//! | `version-exists`         | 409    | `VersionExists`         | `name`, `version`            |
//! | `publisher-key-mismatch` | 403    | `PublisherKeyMismatch`  | `publisher`, `registered`, `presented` |
//! | `untrusted-signer`       | 500    | `UntrustedSigner`       | `publisher`, `signer`, `digest` |
//! | `not-found`              | 404    | `NotFound`              | `what`                       |
//! | `unauthorized`           | 401    | `Unauthorized`          | `reason`                     |
//! | `invalid-request`        | 400    | `InvalidRequest`        | `message`                    |
//! | `too-large`              | 413    | `TooLarge`              | `limit`                      |
//! | `internal`               | 500    | `Io`, `Corrupt` (logged, not shown) |                  |

use serde_json::{Map, Value, json};

use crate::error::RegistryError;

/// The prefix of every registry problem `type`.
pub const PROBLEM_TYPE_PREFIX: &str = "https://postdog.dev/problems/registry/";

/// A problem document: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The HTTP status.
    pub status: u16,
    /// The `application/problem+json` body.
    pub body: Value,
}

/// The problem document for an error. Internal errors (`Io`, `Corrupt`) are logged here
/// and answered with a generic detail.
pub fn to_problem(error: &RegistryError) -> Problem {
    let (status, slug, title, extensions) = match error {
        RegistryError::InvalidManifest(errors) => (
            422,
            "invalid-manifest",
            "Invalid manifest",
            json!({ "errors": errors }),
        ),
        RegistryError::Unsigned => (422, "unsigned-artifact", "Unsigned artifact", json!({})),
        RegistryError::Tampered { recorded, computed } => (
            422,
            "tampered-artifact",
            "Tampered artifact",
            json!({ "recorded": recorded, "computed": computed }),
        ),
        RegistryError::BadSignature => (422, "bad-signature", "Bad signature", json!({})),
        RegistryError::InvalidArtifact(artifact_error) => (
            422,
            "invalid-artifact",
            "Invalid artifact",
            json!({ "artifact_error": artifact_error }),
        ),
        RegistryError::VersionExists { name, version } => (
            409,
            "version-exists",
            "Version already published",
            json!({ "name": name, "version": version }),
        ),
        RegistryError::PublisherKeyMismatch {
            publisher,
            registered,
            presented,
        } => (
            403,
            "publisher-key-mismatch",
            "Not the publisher's key",
            json!({ "publisher": publisher, "registered": registered, "presented": presented }),
        ),
        RegistryError::UntrustedSigner {
            publisher,
            signer,
            digest,
        } => {
            tracing::error!(%publisher, %signer, %digest, "stored artifact signed by an unregistered key");
            (
                500,
                "untrusted-signer",
                "Untrusted signer",
                json!({ "publisher": publisher, "signer": signer, "digest": digest }),
            )
        }
        RegistryError::NotFound { what } => {
            (404, "not-found", "Not found", json!({ "what": what }))
        }
        RegistryError::Unauthorized { reason } => (
            401,
            "unauthorized",
            "Unauthorized",
            json!({ "reason": reason }),
        ),
        RegistryError::InvalidRequest { message } => (
            400,
            "invalid-request",
            "Invalid request",
            json!({ "message": message }),
        ),
        RegistryError::TooLarge { limit } => (
            413,
            "too-large",
            "Artifact too large",
            json!({ "limit": limit }),
        ),
        RegistryError::Io { .. }
        | RegistryError::Corrupt { .. }
        | RegistryError::Http { .. }
        | RegistryError::Unreachable { .. } => {
            tracing::error!(error = %error, "internal error answering a registry request");
            let body = json!({
                "type": format!("{PROBLEM_TYPE_PREFIX}internal"),
                "title": "Internal error",
                "status": 500,
                "detail": "the registry failed to answer; the error has been logged",
            });
            return Problem { status: 500, body };
        }
    };
    let mut body = Map::new();
    body.insert("type".into(), format!("{PROBLEM_TYPE_PREFIX}{slug}").into());
    body.insert("title".into(), title.into());
    body.insert("status".into(), status.into());
    body.insert("detail".into(), error.to_string().into());
    if let Value::Object(extensions) = extensions {
        body.extend(extensions);
    }
    Problem {
        status,
        body: Value::Object(body),
    }
}

/// The error an HTTP answer with `status` and `body` stands for: the same variant the
/// service started from when the body is one of its problem documents, `Http` otherwise.
pub fn from_problem(status: u16, body: &[u8]) -> RegistryError {
    let document: Option<Map<String, Value>> = serde_json::from_slice(body).ok();
    let fallback_message = || match &document {
        Some(document) => document
            .get("detail")
            .and_then(Value::as_str)
            .unwrap_or("no detail")
            .to_string(),
        None => String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
    };
    let fallback = || RegistryError::Http {
        status,
        message: fallback_message(),
    };
    let Some(document) = &document else {
        return fallback();
    };
    let Some(slug) = document
        .get("type")
        .and_then(Value::as_str)
        .and_then(|kind| kind.strip_prefix(PROBLEM_TYPE_PREFIX))
    else {
        return fallback();
    };
    let parse = |name: &'static str| Field { document, name };
    let text = |name: &'static str| parse(name).get::<String>();
    let error = match slug {
        "invalid-manifest" => parse("errors").get().map(RegistryError::InvalidManifest),
        "unsigned-artifact" => Some(RegistryError::Unsigned),
        "tampered-artifact" => text("recorded")
            .zip(text("computed"))
            .map(|(recorded, computed)| RegistryError::Tampered { recorded, computed }),
        "bad-signature" => Some(RegistryError::BadSignature),
        "invalid-artifact" => parse("artifact_error")
            .get()
            .map(RegistryError::InvalidArtifact),
        "version-exists" => parse("name")
            .get()
            .zip(parse("version").get())
            .map(|(name, version)| RegistryError::VersionExists { name, version }),
        "publisher-key-mismatch" => match (
            text("publisher"),
            parse("registered").get(),
            parse("presented").get(),
        ) {
            (Some(publisher), Some(registered), Some(presented)) => {
                Some(RegistryError::PublisherKeyMismatch {
                    publisher,
                    registered,
                    presented,
                })
            }
            _ => None,
        },
        "untrusted-signer" => match (text("publisher"), parse("signer").get(), text("digest")) {
            (Some(publisher), Some(signer), Some(digest)) => Some(RegistryError::UntrustedSigner {
                publisher,
                signer,
                digest,
            }),
            _ => None,
        },
        "not-found" => text("what").map(|what| RegistryError::NotFound { what }),
        "unauthorized" => text("reason").map(|reason| RegistryError::Unauthorized { reason }),
        "invalid-request" => {
            text("message").map(|message| RegistryError::InvalidRequest { message })
        }
        "too-large" => parse("limit")
            .get()
            .map(|limit| RegistryError::TooLarge { limit }),
        _ => None,
    };
    error.unwrap_or_else(fallback)
}

/// One extension member of a problem document, read as whatever type is needed.
struct Field<'d> {
    document: &'d Map<String, Value>,
    name: &'static str,
}

impl Field<'_> {
    fn get<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        T::deserialize(self.document.get(self.name)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use semver::Version;

    use super::*;
    use crate::artifact::ArtifactError;
    use crate::manifest::{ManifestError, ManifestErrors};
    use crate::signing::PublisherKey;

    #[test]
    fn every_client_visible_error_survives_the_round_trip() {
        let key = PublisherKey::from_seed([1; 32]).public();
        let other = PublisherKey::from_seed([2; 32]).public();
        let errors = vec![
            RegistryError::InvalidManifest(ManifestErrors::new(vec![ManifestError {
                line: 3,
                column: 7,
                message: "bad".into(),
            }])),
            RegistryError::Unsigned,
            RegistryError::Tampered {
                recorded: "sha256:aa".into(),
                computed: "sha256:bb".into(),
            },
            RegistryError::BadSignature,
            RegistryError::InvalidArtifact(ArtifactError::Truncated {
                section: "component".into(),
                expected: 10,
                available: 3,
            }),
            RegistryError::VersionExists {
                name: "acme/x".parse().unwrap(),
                version: Version::new(1, 2, 3),
            },
            RegistryError::PublisherKeyMismatch {
                publisher: "acme".into(),
                registered: key,
                presented: other,
            },
            RegistryError::UntrustedSigner {
                publisher: "acme".into(),
                signer: other,
                digest: "sha256:cc".into(),
            },
            RegistryError::NotFound {
                what: "plugin `acme/x`".into(),
            },
            RegistryError::Unauthorized {
                reason: "no".into(),
            },
            RegistryError::InvalidRequest {
                message: "bad digest".into(),
            },
            RegistryError::TooLarge { limit: 42 },
        ];
        for error in errors {
            let problem = to_problem(&error);
            assert_eq!(problem.body["status"], problem.status);
            assert_eq!(problem.body["detail"], error.to_string());
            let body = serde_json::to_vec(&problem.body).unwrap();
            let back = from_problem(problem.status, &body);
            assert_eq!(format!("{back:?}"), format!("{error:?}"));
        }
    }

    #[test]
    fn internal_errors_are_not_leaked_and_unknown_answers_keep_their_status() {
        let error = RegistryError::io(
            "reading /secret/path",
            std::io::Error::other("disk on fire"),
        );
        let problem = to_problem(&error);
        assert_eq!(problem.status, 500);
        assert!(!problem.body.to_string().contains("secret"));
        let back = from_problem(500, &serde_json::to_vec(&problem.body).unwrap());
        assert!(
            matches!(back, RegistryError::Http { status: 500, .. }),
            "{back:?}"
        );

        let back = from_problem(502, b"<html>bad gateway</html>");
        assert!(
            matches!(&back, RegistryError::Http { status: 502, message } if message.contains("bad gateway")),
            "{back:?}"
        );
    }
}
