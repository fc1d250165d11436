//! The same behaviours, run against both backends: a directory registry, and the HTTP
//! service (over real HTTP on 127.0.0.1) through `HttpRegistry`. Every behaviour is an
//! `async fn(Backend)`; `both_backends!` turns each into one test per backend, so the two
//! cannot drift apart.

#[path = "support/harness.rs"]
mod harness;

use std::collections::BTreeSet;

use anyhow::{Result, bail, ensure};
use harness::{Backend, Kind, Plugin, key};
use postdog_registry::{
    ArtifactError, Category, Change, PublicKey, RegistryError, SearchQuery, World,
};
use semver::{Version, VersionReq};
use serde_json::json;

macro_rules! both_backends {
    ($($behaviour:ident),* $(,)?) => {
        mod dir {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() -> anyhow::Result<()> {
                    super::$behaviour(super::Backend::dir()?).await
                }
            )*
        }
        mod http {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() -> anyhow::Result<()> {
                    super::$behaviour(super::Backend::http().await?).await
                }
            )*
        }
    };
}

both_backends!(
    publish_records_the_version_and_download_verifies,
    search_by_text_category_and_world,
    search_summarizes_and_skips_fully_yanked_plugins,
    resolve_picks_the_newest_matching_version_not_yanked,
    only_the_publishers_key_may_yank,
    a_published_version_cannot_be_published_again,
    another_key_cannot_publish_for_a_publisher,
    operator_rotation_moves_publishing_to_the_new_key,
    tampered_and_unsigned_artifacts_are_refused,
    altered_blobs_in_the_store_are_not_served,
    concurrent_publishes_all_land_with_distinct_sequence_numbers,
    concurrent_first_publishes_register_exactly_one_key,
    the_change_log_pages_from_a_cursor,
    malformed_arguments_are_invalid_requests,
);

fn versions_of(infos: &[postdog_registry::VersionInfo]) -> Vec<String> {
    infos.iter().map(|info| info.version.to_string()).collect()
}

async fn publish_records_the_version_and_download_verifies(backend: Backend) -> Result<()> {
    let registry = &backend.registry;
    let key = key(1);
    let plugin = Plugin::new("acme/order-notifier", "1.2.0")
        .world("integration")
        .categories(&["ecommerce", "crm"])
        .description("Sends order notifications");
    let artifact = plugin.artifact(&key)?;
    let info = registry.publish(&artifact.to_bytes()).await?;

    assert_eq!(info.name.as_str(), "acme/order-notifier");
    assert_eq!(info.version, Version::new(1, 2, 0));
    assert_eq!(info.digest, artifact.digest());
    assert_eq!(info.world, World::Integration);
    assert_eq!(info.wit, Version::new(0, 1, 0));
    assert_eq!(info.description, "Sends order notifications");
    assert_eq!(info.categories, vec![Category::Ecommerce, Category::Crm]);
    assert_eq!(info.capabilities, vec!["kv", "http:api.example.com"]);
    assert_eq!(info.config_schema["required"], json!(["api_url"]));
    assert_eq!(
        info.config_schema["properties"]["api_token"]["x-secret"],
        true
    );
    assert_eq!(info.publisher_key, key.public());
    assert!(!info.yanked);
    assert!(
        info.published_at > 1_600_000_000_000,
        "{}",
        info.published_at
    );

    assert_eq!(
        registry.versions("acme/order-notifier").await?,
        vec![info.clone()]
    );
    assert_eq!(registry.publisher_key("acme").await?, Some(key.public()));
    assert_eq!(registry.publisher_key("nobody").await?, None);

    let downloaded = registry.download(&info.digest.to_string()).await?;
    assert_eq!(downloaded.to_bytes(), artifact.to_bytes());
    assert_eq!(downloaded.manifest_text(), plugin.manifest());
    assert_eq!(downloaded.component_sha256(), artifact.component_sha256());
    assert_eq!(downloaded.verify_against(&key.public()), Ok(()));

    let missing = format!("sha256:{}", "0".repeat(64));
    match registry.download(&missing).await {
        Err(RegistryError::NotFound { what }) => ensure!(what.contains(&missing), "{what}"),
        other => bail!("expected NotFound, got {other:?}"),
    }
    match registry.versions("acme/unknown").await {
        Err(RegistryError::NotFound { what }) => ensure!(what.contains("acme/unknown"), "{what}"),
        other => bail!("expected NotFound, got {other:?}"),
    }
    Ok(())
}

async fn search_by_text_category_and_world(backend: Backend) -> Result<()> {
    let registry = &backend.registry;
    let acme = key(1);
    let zeta = key(2);
    for (plugin, key) in [
        (
            Plugin::new("acme/order-notifier", "1.0.0")
                .categories(&["ecommerce"])
                .description("Sends ORDER notifications to a webhook"),
            &acme,
        ),
        (
            Plugin::new("acme/whatsapp", "0.3.0")
                .world("messaging-channel")
                .categories(&["messaging"])
                .description("WhatsApp Cloud API channel"),
            &acme,
        ),
        (
            Plugin::new("zeta/crm-sync", "2.0.0")
                .world("integration")
                .categories(&["crm", "ecommerce"])
                .description("Keeps contacts in sync with the CRM"),
            &zeta,
        ),
    ] {
        registry.publish(&plugin.bytes(key)?).await?;
    }
    let names = |results: Vec<postdog_registry::PluginSummary>| -> Vec<String> {
        results
            .into_iter()
            .map(|summary| summary.name.to_string())
            .collect()
    };
    let search =
        |text: Option<&str>, category: Option<Category>, world: Option<World>| SearchQuery {
            text: text.map(str::to_string),
            category,
            world,
        };

    assert_eq!(
        names(registry.search(&SearchQuery::default()).await?),
        ["acme/order-notifier", "acme/whatsapp", "zeta/crm-sync"]
    );
    assert_eq!(
        names(
            registry
                .search(&search(Some("order notif"), None, None))
                .await?
        ),
        ["acme/order-notifier"]
    );
    // The name counts as text too.
    assert_eq!(
        names(registry.search(&search(Some("ZETA"), None, None)).await?),
        ["zeta/crm-sync"]
    );
    assert_eq!(
        names(
            registry
                .search(&search(None, Some(Category::Ecommerce), None))
                .await?
        ),
        ["acme/order-notifier", "zeta/crm-sync"]
    );
    assert_eq!(
        names(
            registry
                .search(&search(None, None, Some(World::MessagingChannel)))
                .await?
        ),
        ["acme/whatsapp"]
    );
    assert_eq!(
        names(
            registry
                .search(&search(
                    Some("sync"),
                    Some(Category::Ecommerce),
                    Some(World::Integration)
                ))
                .await?
        ),
        ["zeta/crm-sync"]
    );
    assert!(
        registry
            .search(&search(Some("order"), None, Some(World::Integration)))
            .await?
            .is_empty()
    );
    assert!(
        registry
            .search(&search(Some("telegram"), None, None))
            .await?
            .is_empty()
    );
    Ok(())
}

async fn search_summarizes_and_skips_fully_yanked_plugins(backend: Backend) -> Result<()> {
    let registry = &backend.registry;
    let key = key(1);
    for version in ["1.0.0", "1.1.0", "2.0.0-rc.1"] {
        registry
            .publish(
                &Plugin::new("acme/a", version)
                    .description(&format!("A at {version}"))
                    .bytes(&key)?,
            )
            .await?;
    }
    registry
        .publish(&Plugin::new("acme/b", "0.1.0").bytes(&key)?)
        .await?;
    registry
        .publish(&Plugin::new("acme/c", "0.1.0-alpha").bytes(&key)?)
        .await?;

    let results = registry.search(&SearchQuery::default()).await?;
    let a = results
        .iter()
        .find(|summary| summary.name.as_str() == "acme/a")
        .ok_or_else(|| anyhow::anyhow!("acme/a missing from {results:?}"))?;
    // The latest is the newest stable version; pre-releases only when there is nothing else.
    assert_eq!(a.latest_version, Version::new(1, 1, 0));
    assert_eq!(a.description, "A at 1.1.0");
    assert_eq!(a.versions, 3);
    let c = results
        .iter()
        .find(|summary| summary.name.as_str() == "acme/c")
        .ok_or_else(|| anyhow::anyhow!("acme/c missing"))?;
    assert_eq!(c.latest_version.to_string(), "0.1.0-alpha");

    registry
        .yank("acme/b", &Version::new(0, 1, 0), &key)
        .await?;
    registry
        .yank("acme/a", &Version::new(1, 1, 0), &key)
        .await?;
    let results = registry.search(&SearchQuery::default()).await?;
    let names: Vec<&str> = results
        .iter()
        .map(|summary| summary.name.as_str())
        .collect();
    assert_eq!(names, ["acme/a", "acme/c"]);
    assert_eq!(results[0].latest_version, Version::new(1, 0, 0));
    assert_eq!(results[0].versions, 2);
    // A fully yanked plugin still lists its versions (for existing installs).
    assert_eq!(versions_of(&registry.versions("acme/b").await?), ["0.1.0"]);
    Ok(())
}

async fn resolve_picks_the_newest_matching_version_not_yanked(backend: Backend) -> Result<()> {
    let registry = &backend.registry;
    let key = key(1);
    for version in ["1.1.0", "1.2.0", "1.2.5", "1.3.0-beta.1", "1.4.0", "2.0.0"] {
        registry
            .publish(&Plugin::new("acme/x", version).bytes(&key)?)
            .await?;
    }
    let resolve = |req: &'static str| async move {
        let req: VersionReq = req.parse()?;
        anyhow::Ok(
            registry
                .resolve("acme/x", &req)
                .await?
                .map(|info| info.version.to_string()),
        )
    };
    assert_eq!(resolve("^1.2").await?.as_deref(), Some("1.4.0"));
    assert_eq!(resolve("~1.2").await?.as_deref(), Some("1.2.5"));
    assert_eq!(resolve("^1.3.0-beta.1").await?.as_deref(), Some("1.4.0"));
    assert_eq!(
        resolve("=1.3.0-beta.1").await?.as_deref(),
        Some("1.3.0-beta.1")
    );
    assert_eq!(resolve("*").await?.as_deref(), Some("2.0.0"));
    assert_eq!(resolve("^3").await?, None);

    registry
        .yank("acme/x", &Version::new(1, 4, 0), &key)
        .await?;
    // Pre-releases are not picked for a requirement that does not name one.
    assert_eq!(resolve("^1.2").await?.as_deref(), Some("1.2.5"));
    registry
        .yank("acme/x", &Version::new(1, 2, 5), &key)
        .await?;
    assert_eq!(resolve("^1.2").await?.as_deref(), Some("1.2.0"));
    assert_eq!(resolve("=1.2.5").await?, None);

    let versions = registry.versions("acme/x").await?;
    assert_eq!(
        versions_of(&versions),
        ["2.0.0", "1.4.0", "1.3.0-beta.1", "1.2.5", "1.2.0", "1.1.0"]
    );
    let yanked: Vec<bool> = versions.iter().map(|info| info.yanked).collect();
    assert_eq!(yanked, [false, true, false, true, false, false]);

    match registry.resolve("acme/nothing", &"^1".parse()?).await {
        Err(RegistryError::NotFound { .. }) => Ok(()),
        other => bail!("expected NotFound, got {other:?}"),
    }
}

async fn only_the_publishers_key_may_yank(backend: Backend) -> Result<()> {
    let registry = &backend.registry;
    let owner = key(1);
    let stranger = key(2);
    let info = registry
        .publish(&Plugin::new("acme/x", "1.0.0").bytes(&owner)?)
        .await?;
    let version = Version::new(1, 0, 0);

    match registry.yank("acme/x", &version, &stranger).await {
        Err(RegistryError::Unauthorized { reason }) => {
            ensure!(reason.contains(&stranger.public().to_string()), "{reason}");
        }
        other => bail!("expected Unauthorized, got {other:?}"),
    }
    assert!(!registry.versions("acme/x").await?[0].yanked);
    match registry
        .yank("acme/x", &Version::new(9, 9, 9), &owner)
        .await
    {
        Err(RegistryError::NotFound { what }) => ensure!(what.contains("acme/x@9.9.9"), "{what}"),
        other => bail!("expected NotFound, got {other:?}"),
    }

    registry.yank("acme/x", &version, &owner).await?;
    // Yanking again changes nothing and logs nothing.
    registry.yank("acme/x", &version, &owner).await?;
    assert!(registry.versions("acme/x").await?[0].yanked);
    let (changes, _) = registry.changes_since(0).await?;
    let yanks = changes
        .iter()
        .filter(|change| matches!(change, Change::Yanked { .. }))
        .count();
    assert_eq!(yanks, 1);

    // Existing installs keep working: the yanked version still downloads by digest.
    let downloaded = registry.download(&info.digest.to_string()).await?;
    assert_eq!(downloaded.digest(), info.digest);
    Ok(())
}

async fn a_published_version_cannot_be_published_again(backend: Backend) -> Result<()> {
    let registry = &backend.registry;
    let key = key(1);
    let plugin = Plugin::new("acme/x", "1.0.0");
    let bytes = plugin.bytes(&key)?;
    registry.publish(&bytes).await?;

    let changed = plugin
        .clone()
        .description("Different content, same version");
    let with_build = Plugin::new("acme/x", "1.0.0+build.2");
    for attempt in [bytes.clone(), changed.bytes(&key)?, with_build.bytes(&key)?] {
        match registry.publish(&attempt).await {
            Err(RegistryError::VersionExists { name, version }) => {
                assert_eq!(name.as_str(), "acme/x");
                assert_eq!((version.major, version.minor, version.patch), (1, 0, 0));
            }
            other => bail!("expected VersionExists, got {other:?}"),
        }
    }
    assert_eq!(registry.versions("acme/x").await?.len(), 1);
    let (changes, cursor) = registry.changes_since(0).await?;
    assert_eq!((changes.len(), cursor), (1, 1));
    Ok(())
}

async fn another_key_cannot_publish_for_a_publisher(backend: Backend) -> Result<()> {
    let registry = &backend.registry;
    let owner = key(1);
    let impostor = key(2);
    registry
        .publish(&Plugin::new("acme/x", "1.0.0").bytes(&owner)?)
        .await?;

    // Neither a new version of an existing plugin nor a new plugin under the publisher.
    for plugin in [
        Plugin::new("acme/x", "1.0.1"),
        Plugin::new("acme/other", "1.0.0"),
    ] {
        match registry.publish(&plugin.bytes(&impostor)?).await {
            Err(RegistryError::PublisherKeyMismatch {
                publisher,
                registered,
                presented,
            }) => {
                assert_eq!(publisher, "acme");
                assert_eq!(registered, owner.public());
                assert_eq!(presented, impostor.public());
            }
            other => bail!("expected PublisherKeyMismatch, got {other:?}"),
        }
    }
    assert_eq!(registry.publisher_key("acme").await?, Some(owner.public()));
    match registry.versions("acme/other").await {
        Err(RegistryError::NotFound { .. }) => {}
        other => bail!("expected NotFound, got {other:?}"),
    }
    // The impostor may publish under its own publisher name.
    registry
        .publish(&Plugin::new("mallory/x", "1.0.0").bytes(&impostor)?)
        .await?;
    Ok(())
}

async fn operator_rotation_moves_publishing_to_the_new_key(backend: Backend) -> Result<()> {
    let registry = &backend.registry;
    let old = key(1);
    let new = key(2);
    let first = registry
        .publish(&Plugin::new("acme/x", "1.0.0").bytes(&old)?)
        .await?;

    registry
        .rotate_publisher_key("acme", &new.public(), backend.operator_token())
        .await?;
    assert_eq!(registry.publisher_key("acme").await?, Some(new.public()));
    assert_eq!(
        registry.publisher_key_history("acme").await?,
        vec![old.public(), new.public()]
    );

    let second = registry
        .publish(&Plugin::new("acme/x", "2.0.0").bytes(&new)?)
        .await?;
    assert_eq!(second.publisher_key, new.public());
    match registry
        .publish(&Plugin::new("acme/x", "3.0.0").bytes(&old)?)
        .await
    {
        Err(RegistryError::PublisherKeyMismatch { registered, .. }) => {
            assert_eq!(registered, new.public());
        }
        other => bail!("expected PublisherKeyMismatch, got {other:?}"),
    }

    // Versions signed by the old key still download, and still verify.
    let downloaded = registry.download(&first.digest.to_string()).await?;
    assert_eq!(downloaded.publisher_key(), old.public());
    assert_eq!(
        registry
            .download(&second.digest.to_string())
            .await?
            .publisher_key(),
        new.public()
    );

    // Only the current key may yank, also the versions the old key signed.
    match registry.yank("acme/x", &Version::new(1, 0, 0), &old).await {
        Err(RegistryError::Unauthorized { .. }) => {}
        other => bail!("expected Unauthorized, got {other:?}"),
    }
    registry
        .yank("acme/x", &Version::new(1, 0, 0), &new)
        .await?;

    // Rotating to the current key is a no-op; an operator may also pre-register a publisher.
    registry
        .rotate_publisher_key("acme", &new.public(), backend.operator_token())
        .await?;
    assert_eq!(registry.publisher_key_history("acme").await?.len(), 2);
    registry
        .rotate_publisher_key("fresh", &old.public(), backend.operator_token())
        .await?;
    match registry
        .publish(&Plugin::new("fresh/x", "1.0.0").bytes(&new)?)
        .await
    {
        Err(RegistryError::PublisherKeyMismatch { registered, .. }) => {
            assert_eq!(registered, old.public());
        }
        other => bail!("expected PublisherKeyMismatch, got {other:?}"),
    }
    Ok(())
}

async fn tampered_and_unsigned_artifacts_are_refused(backend: Backend) -> Result<()> {
    let registry = &backend.registry;
    let key = key(1);
    let artifact = Plugin::new("acme/x", "1.0.0").artifact(&key)?;
    let bytes = artifact.to_bytes();
    let manifest_start = 16;
    let component_start = manifest_start + artifact.manifest_text().len() + 8;
    let signature_start = bytes.len() - 64;

    let mut tampered_manifest = bytes.clone();
    tampered_manifest[manifest_start + 30] ^= 0x01;
    let mut tampered_component = bytes.clone();
    tampered_component[component_start + 9] ^= 0x01;
    for tampered in [tampered_manifest, tampered_component] {
        match registry.publish(&tampered).await {
            Err(RegistryError::Tampered { recorded, computed }) => {
                assert_eq!(recorded, artifact.digest().to_string());
                assert_ne!(computed, recorded);
            }
            other => bail!("expected Tampered, got {other:?}"),
        }
    }

    let mut bad_signature = bytes.clone();
    bad_signature[signature_start + 5] ^= 0x01;
    match registry.publish(&bad_signature).await {
        Err(RegistryError::BadSignature) => {}
        other => bail!("expected BadSignature, got {other:?}"),
    }

    let unsigned = &bytes[..signature_start - 8];
    match registry.publish(unsigned).await {
        Err(RegistryError::Unsigned) => {}
        other => bail!("expected Unsigned, got {other:?}"),
    }

    match registry.publish(&bytes[..bytes.len() / 2]).await {
        Err(RegistryError::InvalidArtifact(ArtifactError::Truncated { .. })) => {}
        other => bail!("expected a truncated artifact, got {other:?}"),
    }
    match registry.publish(b"definitely not an artifact").await {
        Err(RegistryError::InvalidArtifact(ArtifactError::NotAnArtifact)) => {}
        other => bail!("expected NotAnArtifact, got {other:?}"),
    }

    // Nothing of that was stored, and no key was registered.
    match registry.versions("acme/x").await {
        Err(RegistryError::NotFound { .. }) => {}
        other => bail!("expected NotFound, got {other:?}"),
    }
    assert_eq!(registry.publisher_key("acme").await?, None);
    assert_eq!(registry.changes_since(0).await?, (Vec::new(), 0));
    Ok(())
}

async fn altered_blobs_in_the_store_are_not_served(backend: Backend) -> Result<()> {
    let registry = &backend.registry;
    let owner = key(1);
    let info = registry
        .publish(&Plugin::new("acme/x", "1.0.0").bytes(&owner)?)
        .await?;
    let digest = info.digest.to_string();
    let path = backend.blob_path(&digest);

    // A byte of the component flipped on disk (the component ends 152 bytes before the
    // end: digest, key and signature sections follow it).
    let original = std::fs::read(&path)?;
    let mut flipped = original.clone();
    let in_component = flipped.len() - 160;
    flipped[in_component] ^= 0x01;
    std::fs::write(&path, &flipped)?;
    match registry.download(&digest).await {
        Err(RegistryError::Tampered { recorded, .. }) => assert_eq!(recorded, digest),
        other => bail!("expected Tampered, got {:?}", other.map(|a| a.digest())),
    }

    // Another valid artifact, signed by the right key, swapped in under this digest.
    let swapped = Plugin::new("acme/x", "9.9.9").bytes(&owner)?;
    std::fs::write(&path, &swapped)?;
    match registry.download(&digest).await {
        Err(RegistryError::Tampered { recorded, computed }) => {
            assert_eq!(recorded, digest);
            assert_ne!(computed, digest);
        }
        other => bail!("expected Tampered, got {:?}", other.map(|a| a.digest())),
    }

    // Same content signed by an unregistered key lands at the same digest: only the
    // signer check can catch it.
    let same_content = Plugin::new("acme/x", "1.0.0").artifact(&key(66))?;
    assert_eq!(same_content.digest(), info.digest);
    std::fs::write(&path, same_content.to_bytes())?;
    match registry.download(&digest).await {
        Err(RegistryError::UntrustedSigner {
            publisher,
            signer,
            digest: reported,
        }) => {
            assert_eq!(publisher, "acme");
            assert_eq!(signer, key(66).public());
            assert_eq!(reported, digest);
        }
        other => bail!(
            "expected UntrustedSigner, got {:?}",
            other.map(|a| a.digest())
        ),
    }

    std::fs::write(&path, &original)?;
    assert_eq!(registry.download(&digest).await?.digest(), info.digest);
    Ok(())
}

async fn concurrent_publishes_all_land_with_distinct_sequence_numbers(
    backend: Backend,
) -> Result<()> {
    let key = key(1);
    // The first publish registers the key; the rest race each other.
    backend
        .registry
        .publish(&Plugin::new("acme/x", "0.1.0").bytes(&key)?)
        .await?;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8u64 {
        // Each task opens its own handle, as separate processes would.
        let registry = backend.reopen()?;
        let plugins: Vec<Vec<u8>> = (0..3)
            .map(|round| Plugin::new("acme/x", &format!("1.{task}.{round}")).bytes(&key))
            .collect::<Result<_>>()?;
        tasks.spawn(async move {
            let mut published = Vec::new();
            for bytes in plugins {
                published.push(registry.publish(&bytes).await?.version.to_string());
            }
            anyhow::Ok(published)
        });
    }
    let mut expected = BTreeSet::from(["0.1.0".to_string()]);
    while let Some(result) = tasks.join_next().await {
        expected.extend(result??);
    }
    assert_eq!(expected.len(), 25);

    let (changes, cursor) = backend.registry.changes_since(0).await?;
    assert_eq!(cursor, 25);
    let logged: BTreeSet<String> = changes
        .iter()
        .map(|change| match change {
            Change::Published(info) => Ok(info.version.to_string()),
            other => Err(anyhow::anyhow!("unexpected change {other:?}")),
        })
        .collect::<Result<_>>()?;
    assert_eq!(logged, expected);
    // Gap-free: reading from any cursor yields exactly the rest.
    for since in [0, 1, 12, 24, 25] {
        let (rest, cursor) = backend.registry.changes_since(since).await?;
        assert_eq!(rest.len() as u64, 25 - since);
        assert_eq!(cursor, 25);
    }
    assert_eq!(backend.registry.versions("acme/x").await?.len(), 25);
    Ok(())
}

async fn concurrent_first_publishes_register_exactly_one_key(backend: Backend) -> Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for contender in 0..6u8 {
        let registry = backend.reopen()?;
        let key = key(10 + contender);
        let bytes = Plugin::new("race/x", &format!("1.0.{contender}")).bytes(&key)?;
        tasks.spawn(async move { (key.public(), registry.publish(&bytes).await) });
    }
    let mut winners: Vec<PublicKey> = Vec::new();
    let mut losers = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            (key, Ok(_)) => winners.push(key),
            (_, Err(RegistryError::PublisherKeyMismatch { .. })) => losers += 1,
            (_, Err(other)) => bail!("unexpected error {other:?}"),
        }
    }
    assert_eq!((winners.len(), losers), (1, 5));
    assert_eq!(
        backend.registry.publisher_key("race").await?,
        winners.first().copied()
    );
    assert_eq!(
        backend.registry.publisher_key_history("race").await?.len(),
        1
    );
    Ok(())
}

async fn the_change_log_pages_from_a_cursor(backend: Backend) -> Result<()> {
    let registry = &backend.registry;
    let key = key(1);
    assert_eq!(registry.changes_since(0).await?, (Vec::new(), 0));
    let first = registry
        .publish(&Plugin::new("acme/x", "1.0.0").bytes(&key)?)
        .await?;
    let second = registry
        .publish(&Plugin::new("acme/y", "0.1.0").bytes(&key)?)
        .await?;
    registry
        .yank("acme/x", &Version::new(1, 0, 0), &key)
        .await?;

    let (changes, cursor) = registry.changes_since(0).await?;
    assert_eq!(cursor, 3);
    assert_eq!(
        changes,
        vec![
            Change::Published(first),
            Change::Published(second.clone()),
            Change::Yanked {
                name: "acme/x".parse()?,
                version: Version::new(1, 0, 0)
            },
        ]
    );
    // A poller that saw the first change gets the other two, then nothing.
    let (rest, cursor) = registry.changes_since(1).await?;
    assert_eq!((rest.len(), cursor), (2, 3));
    assert_eq!(rest[0], Change::Published(second));
    assert_eq!(registry.changes_since(3).await?, (Vec::new(), 3));
    assert_eq!(registry.changes_since(100).await?, (Vec::new(), 100));
    Ok(())
}

async fn malformed_arguments_are_invalid_requests(backend: Backend) -> Result<()> {
    let registry = &backend.registry;
    let key = key(1);
    for result in [
        registry.versions("Acme/X").await.map(drop),
        registry.versions("no-slash").await.map(drop),
        registry.download("md5:abc").await.map(drop),
        registry.download("sha256:XYZ").await.map(drop),
        registry.yank("../etc", &Version::new(1, 0, 0), &key).await,
        registry.publisher_key("Bad Publisher").await.map(drop),
        registry
            .rotate_publisher_key("../x", &key.public(), backend.operator_token())
            .await,
    ] {
        match result {
            Err(RegistryError::InvalidRequest { .. }) => {}
            other => bail!("expected InvalidRequest, got {other:?}"),
        }
    }
    ensure!(backend.kind == Kind::Dir || backend.server.is_some());
    Ok(())
}
