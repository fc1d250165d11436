//! The first-party plugins that ship inside the `postdog` binary, and seeding them into
//! the embedded registry on start, signed with the operator's publisher key, so a new
//! tenant can install them from the marketplace with no extra step.
//!
//! The components are built from `plugins/` by the host's build script (`build.rs`) and
//! bundled with `include_bytes!`; their manifests are the plugins' own
//! `postdog-plugin.toml`. The operator's key is `POSTDOG_OPERATOR_KEY_FILE` or
//! `<data-dir>/operator-publisher.key`, created (mode 0600) on first start; the same key
//! publishes the operator's own plugins under the `postdog` publisher.

use std::path::{Path, PathBuf};

use anyhow::Context;
use postdog_registry::{Artifact, PublisherKey, Registry, RegistryError};

/// One bundled plugin.
pub struct Bundled {
    /// Its manifest text.
    pub manifest: &'static str,
    /// Its component.
    pub component: &'static [u8],
}

/// Every plugin shipped with this build.
pub const BUNDLED: &[Bundled] = &[
    Bundled {
        manifest: include_str!("../../plugins/examples/hello-action/postdog-plugin.toml"),
        component: include_bytes!(concat!(
            env!("POSTDOG_FIRST_PARTY_DIR"),
            "/hello_action.wasm"
        )),
    },
    Bundled {
        manifest: include_str!("../../plugins/examples/echo-channel/postdog-plugin.toml"),
        component: include_bytes!(concat!(
            env!("POSTDOG_FIRST_PARTY_DIR"),
            "/echo_channel.wasm"
        )),
    },
    Bundled {
        manifest: include_str!("../../plugins/whatsapp/postdog-plugin.toml"),
        component: include_bytes!(concat!(env!("POSTDOG_FIRST_PARTY_DIR"), "/whatsapp.wasm")),
    },
    Bundled {
        manifest: include_str!("../../plugins/actions-core/send-message/postdog-plugin.toml"),
        component: include_bytes!(concat!(
            env!("POSTDOG_FIRST_PARTY_DIR"),
            "/action_send_message.wasm"
        )),
    },
    Bundled {
        manifest: include_str!("../../plugins/actions-core/wait/postdog-plugin.toml"),
        component: include_bytes!(concat!(
            env!("POSTDOG_FIRST_PARTY_DIR"),
            "/action_wait.wasm"
        )),
    },
    Bundled {
        manifest: include_str!("../../plugins/actions-core/wait-for-reply/postdog-plugin.toml"),
        component: include_bytes!(concat!(
            env!("POSTDOG_FIRST_PARTY_DIR"),
            "/action_wait_for_reply.wasm"
        )),
    },
    Bundled {
        manifest: include_str!("../../plugins/actions-core/condition/postdog-plugin.toml"),
        component: include_bytes!(concat!(
            env!("POSTDOG_FIRST_PARTY_DIR"),
            "/action_condition.wasm"
        )),
    },
    Bundled {
        manifest: include_str!("../../plugins/actions-core/assign/postdog-plugin.toml"),
        component: include_bytes!(concat!(
            env!("POSTDOG_FIRST_PARTY_DIR"),
            "/action_assign.wasm"
        )),
    },
    Bundled {
        manifest: include_str!("../../plugins/actions-core/add-tag/postdog-plugin.toml"),
        component: include_bytes!(concat!(
            env!("POSTDOG_FIRST_PARTY_DIR"),
            "/action_add_tag.wasm"
        )),
    },
    Bundled {
        manifest: include_str!("../../plugins/actions-core/remove-tag/postdog-plugin.toml"),
        component: include_bytes!(concat!(
            env!("POSTDOG_FIRST_PARTY_DIR"),
            "/action_remove_tag.wasm"
        )),
    },
    Bundled {
        manifest: include_str!("../../plugins/actions-core/set-field/postdog-plugin.toml"),
        component: include_bytes!(concat!(
            env!("POSTDOG_FIRST_PARTY_DIR"),
            "/action_set_field.wasm"
        )),
    },
    Bundled {
        manifest: include_str!("../../plugins/actions-core/http-request/postdog-plugin.toml"),
        component: include_bytes!(concat!(
            env!("POSTDOG_FIRST_PARTY_DIR"),
            "/action_http_request.wasm"
        )),
    },
    Bundled {
        manifest: include_str!("../../plugins/actions-core/end/postdog-plugin.toml"),
        component: include_bytes!(concat!(env!("POSTDOG_FIRST_PARTY_DIR"), "/action_end.wasm")),
    },
];

/// Where the operator's publisher key lives.
pub fn operator_key_path(data_dir: &Path) -> PathBuf {
    std::env::var_os("POSTDOG_OPERATOR_KEY_FILE")
        .filter(|path| !path.is_empty())
        .map_or_else(|| data_dir.join("operator-publisher.key"), PathBuf::from)
}

/// The operator's publisher key, created on first use.
pub fn operator_key(path: &Path) -> anyhow::Result<PublisherKey> {
    // Generated up front (cheap) so a failure cannot leave an empty key file behind.
    let fresh = PublisherKey::generate()
        .context("while generating the operator key")?
        .to_file_text();
    let text = crate::key_files::read_or_create(path, || fresh).with_context(|| {
        format!(
            "while reading or creating the operator key {}",
            path.display()
        )
    })?;
    PublisherKey::from_file_text(&text)
        .with_context(|| format!("while reading the operator key {}", path.display()))
}

/// Publishes every bundled plugin version the registry does not have yet; how many.
pub async fn seed(registry: &Registry, key: &PublisherKey) -> anyhow::Result<usize> {
    let mut published = 0;
    for bundled in BUNDLED {
        let artifact = Artifact::build(bundled.manifest, bundled.component.to_vec(), key)
            .context("while packaging a bundled plugin")?;
        match registry.publish(&artifact.to_bytes()).await {
            Ok(version) => {
                tracing::info!(plugin = %version.name, version = %version.version, "seeded a first-party plugin");
                published += 1;
            }
            Err(RegistryError::VersionExists { .. }) => {}
            Err(error @ RegistryError::PublisherKeyMismatch { .. }) => {
                tracing::warn!(%error, "first-party plugins not seeded: the `postdog` publisher has another key (rotate it to the operator key)");
                return Ok(published);
            }
            Err(error) => return Err(error).context("while seeding first-party plugins"),
        }
    }
    Ok(published)
}
