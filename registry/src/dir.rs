//! [`DirRegistry`]: a registry in a local directory — the embedded default, and the store
//! behind the HTTP service. Several processes may publish into the same directory at
//! once: nothing is ever rewritten in place, and every "claim" is an atomic
//! create-if-absent.
//!
//! Layout:
//!
//! ```text
//! <root>/
//!   blobs/sha256/<hex>                              artifacts by digest (temp file + rename)
//!   plugins/<publisher>/<name>/versions/<version>.json  the version record (claimed)
//!   plugins/<publisher>/<name>/yanked/<version>     yank marker (claimed)
//!   publishers/<publisher>/keys/<n>                 key history, 00000001 first (claimed)
//!   changes/<sequence>.json                         change log, 1, 2, 3, … (claimed)
//!   tmp/                                            files being written
//! ```
//!
//! A claim writes the complete file under `tmp/`, syncs it, and hard-links it to its
//! final name. Like `create_new` (`O_CREAT | O_EXCL`) the link fails if the name is
//! taken, so exactly one of several concurrent claimants wins; unlike `create_new` +
//! `write`, no reader can ever see a half-written file. Version files are named without
//! build metadata, so `1.0.0+a` and `1.0.0+b` claim the same name.
//!
//! The change log has no gaps: a writer tries sequence `n` only after seeing `n - 1`
//! taken, so the taken numbers are always `1..=N`, and a reader can read forward from its
//! cursor until the first missing file. A publish claims its version record before its
//! change entry; a crash between the two loses only the notification, not the version.
//!
//! Listing and search read the records from disk on every call (there is no index to
//! keep consistent between processes), so every process sees every other's publishes at
//! once; that is fine for the thousands of versions a registry holds. All file system
//! work runs on tokio's blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use semver::{BuildMetadata, Version};

use crate::artifact::{Artifact, Digest};
use crate::error::RegistryError;
use crate::manifest::{PluginName, check_publisher};
use crate::registry::{
    CHANGES_PAGE_SIZE, Change, MAX_ARTIFACT_BYTES, PluginSummary, SearchQuery, VersionInfo,
    YankRequest, parse_digest, parse_name, summarize,
};
use crate::signing::PublicKey;

/// How many times a key rotation retries when it loses a race with another rotation.
const ROTATION_ATTEMPTS: usize = 16;
/// Temporary files older than this are left-overs of a crash and are removed on open.
const STALE_TEMP_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// A registry stored in a directory (see the module docs for the layout).
#[derive(Debug, Clone)]
pub struct DirRegistry {
    inner: Arc<Store>,
}

#[derive(Debug)]
struct Store {
    root: PathBuf,
    /// The highest change sequence number this process has seen taken.
    seen_sequence: AtomicU64,
    /// Makes temporary file names unique within the process.
    temp_counter: AtomicU64,
}

impl DirRegistry {
    /// Opens (creating if needed) the registry in `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<DirRegistry, RegistryError> {
        let root = root.as_ref().to_path_buf();
        for dir in ["blobs/sha256", "plugins", "publishers", "changes", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(|error| {
                RegistryError::io(format!("creating {}", path.display()), error)
            })?;
        }
        remove_stale_temp_files(&root.join("tmp"));
        Ok(DirRegistry {
            inner: Arc::new(Store {
                root,
                seen_sequence: AtomicU64::new(0),
                temp_counter: AtomicU64::new(0),
            }),
        })
    }

    /// The registry's directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Verifies and publishes an artifact (see [`crate::Registry::publish`]).
    pub async fn publish(&self, artifact_bytes: &[u8]) -> Result<VersionInfo, RegistryError> {
        if artifact_bytes.len() > MAX_ARTIFACT_BYTES {
            return Err(RegistryError::TooLarge {
                limit: MAX_ARTIFACT_BYTES as u64,
            });
        }
        let bytes = artifact_bytes.to_vec();
        self.blocking(move |store| store.publish(&bytes)).await
    }

    /// Searches the registry (see [`crate::Registry::search`]).
    pub async fn search(&self, query: &SearchQuery) -> Result<Vec<PluginSummary>, RegistryError> {
        let query = query.clone();
        self.blocking(move |store| store.search(&query)).await
    }

    /// Every version of a plugin (see [`crate::Registry::versions`]).
    pub async fn versions(&self, name: &str) -> Result<Vec<VersionInfo>, RegistryError> {
        let name = parse_name(name)?;
        self.blocking(move |store| store.versions(&name)).await
    }

    /// Reads and verifies an artifact (see [`crate::Registry::download`]).
    pub async fn download(&self, digest: &str) -> Result<Artifact, RegistryError> {
        let digest = parse_digest(digest)?;
        self.blocking(move |store| store.download(&digest).map(|(artifact, _)| artifact))
            .await
    }

    /// The file bytes of an artifact, after the same verification as
    /// [`DirRegistry::download`] (what the HTTP service sends).
    pub async fn download_bytes(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let digest = parse_digest(digest)?;
        self.blocking(move |store| store.download(&digest).map(|(_, bytes)| bytes))
            .await
    }

    /// Applies a signed yank request (see [`crate::Registry::yank`]).
    pub async fn apply_yank(
        &self,
        name: &PluginName,
        version: &Version,
        request: &YankRequest,
    ) -> Result<(), RegistryError> {
        let (name, version, request) = (name.clone(), version.clone(), request.clone());
        self.blocking(move |store| store.yank(&name, &version, &request))
            .await
    }

    /// Every key the publisher has had, oldest first; empty for an unknown publisher.
    pub async fn publisher_key_history(
        &self,
        publisher: &str,
    ) -> Result<Vec<PublicKey>, RegistryError> {
        check_publisher(publisher).map_err(RegistryError::invalid)?;
        let publisher = publisher.to_string();
        self.blocking(move |store| store.keys(&publisher)).await
    }

    /// Makes `new_key` the publisher's key (see [`crate::Registry::rotate_publisher_key`]);
    /// the caller is responsible for checking that an operator asked for it.
    pub async fn rotate_publisher_key(
        &self,
        publisher: &str,
        new_key: &PublicKey,
    ) -> Result<(), RegistryError> {
        check_publisher(publisher).map_err(RegistryError::invalid)?;
        let (publisher, new_key) = (publisher.to_string(), *new_key);
        self.blocking(move |store| store.rotate(&publisher, new_key))
            .await
    }

    /// Changes after `sequence` (see [`crate::Registry::changes_since`]).
    pub async fn changes_since(&self, sequence: u64) -> Result<(Vec<Change>, u64), RegistryError> {
        self.blocking(move |store| store.changes_since(sequence))
            .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let store = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|error| {
                RegistryError::io(
                    "running a registry task",
                    io::Error::other(error.to_string()),
                )
            })?
    }
}

impl Store {
    fn publish(&self, bytes: &[u8]) -> Result<VersionInfo, RegistryError> {
        let artifact = Artifact::from_bytes(bytes)?;
        let manifest = artifact.manifest();
        let publisher = manifest.publisher().to_string();
        let presented = artifact.publisher_key();

        let mut keys = self.keys(&publisher)?;
        if keys.is_empty() {
            // Trust on first use: whoever publishes first under a publisher name owns it.
            self.claim(
                &self.key_path(&publisher, 1),
                format!("{presented}\n").as_bytes(),
                "registering the publisher's key",
            )?;
            keys = self.keys(&publisher)?;
        }
        match keys.last() {
            Some(registered) if *registered == presented => {}
            Some(registered) => {
                return Err(RegistryError::PublisherKeyMismatch {
                    publisher,
                    registered: *registered,
                    presented,
                });
            }
            None => {
                return Err(RegistryError::Corrupt {
                    path: self.keys_dir(&publisher).display().to_string(),
                    detail: "the publisher's key was registered but cannot be read back".into(),
                });
            }
        }

        let version_path = self.version_path(&manifest.name, &manifest.version);
        let exists = || RegistryError::VersionExists {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
        };
        if version_path.exists() {
            return Err(exists());
        }
        self.store_blob(&artifact.digest(), bytes)?;
        let info = VersionInfo::of_artifact(&artifact, now_ms());
        let record = serde_json::to_vec_pretty(&info).map_err(|error| {
            RegistryError::io("encoding a version record", io::Error::other(error))
        })?;
        if !self.claim(&version_path, &record, "recording the version")? {
            return Err(exists());
        }
        self.append_change(&Change::Published(info.clone()))?;
        tracing::info!(plugin = %info.name, version = %info.version, digest = %info.digest, "published");
        Ok(info)
    }

    fn search(&self, query: &SearchQuery) -> Result<Vec<PluginSummary>, RegistryError> {
        let mut results = Vec::new();
        for publisher in self.subdirectories(&self.root.join("plugins"))? {
            let publisher_dir = self.root.join("plugins").join(&publisher);
            for plugin in self.subdirectories(&publisher_dir)? {
                let Ok(name) = format!("{publisher}/{plugin}").parse::<PluginName>() else {
                    continue;
                };
                let versions = match self.versions(&name) {
                    Ok(versions) => versions,
                    Err(RegistryError::NotFound { .. }) => continue,
                    Err(error) => return Err(error),
                };
                results.extend(summarize(&versions, query));
            }
        }
        results.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(results)
    }

    fn versions(&self, name: &PluginName) -> Result<Vec<VersionInfo>, RegistryError> {
        let versions_dir = self.plugin_dir(name).join("versions");
        let entries = match fs::read_dir(&versions_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(RegistryError::not_found(format!("plugin `{name}`")));
            }
            Err(error) => return Err(RegistryError::io("listing versions", error)),
        };
        let mut versions = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|error| RegistryError::io("listing versions", error))?
                .path();
            if path.extension().is_none_or(|extension| extension != "json") {
                continue;
            }
            let mut info: VersionInfo = read_json(&path)?;
            info.yanked = self.yank_path(name, &info.version).exists();
            versions.push(info);
        }
        if versions.is_empty() {
            return Err(RegistryError::not_found(format!("plugin `{name}`")));
        }
        versions.sort_by(|a, b| b.version.cmp(&a.version));
        Ok(versions)
    }

    /// Reads and verifies a stored artifact; returns it with its file bytes.
    fn download(&self, digest: &Digest) -> Result<(Artifact, Vec<u8>), RegistryError> {
        let path = self.blob_path(digest);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(RegistryError::not_found(format!("artifact {digest}")));
            }
            Err(error) => return Err(RegistryError::io("reading an artifact", error)),
        };
        let artifact = Artifact::from_bytes(&bytes)?;
        if artifact.digest() != *digest {
            return Err(RegistryError::Tampered {
                recorded: digest.to_string(),
                computed: artifact.digest().to_string(),
            });
        }
        let publisher = artifact.manifest().publisher();
        if !self.keys(publisher)?.contains(&artifact.publisher_key()) {
            return Err(RegistryError::UntrustedSigner {
                publisher: publisher.to_string(),
                signer: artifact.publisher_key(),
                digest: digest.to_string(),
            });
        }
        Ok((artifact, bytes))
    }

    fn yank(
        &self,
        name: &PluginName,
        version: &Version,
        request: &YankRequest,
    ) -> Result<(), RegistryError> {
        if !request.is_valid_for(name, version) {
            return Err(RegistryError::Unauthorized {
                reason: format!(
                    "the yank request's signature is not valid for {name}@{version}; sign it \
                     with the publisher's key"
                ),
            });
        }
        let version_path = self.version_path(name, version);
        if !version_path.exists() {
            return Err(RegistryError::not_found(format!("{name}@{version}")));
        }
        let current = self.keys(name.publisher())?.last().copied();
        if current != Some(request.publisher_key) {
            return Err(RegistryError::Unauthorized {
                reason: format!(
                    "only the current key of publisher `{}` may yank its versions, and this \
                     request is signed by {}",
                    name.publisher(),
                    request.publisher_key
                ),
            });
        }
        // The record names the version exactly as published (with any build metadata).
        let record: VersionInfo = read_json(&version_path)?;
        let marker = serde_json::json!({ "yanked_at": now_ms() }).to_string();
        if self.claim(
            &self.yank_path(name, version),
            marker.as_bytes(),
            "recording the yank",
        )? {
            self.append_change(&Change::Yanked {
                name: name.clone(),
                version: record.version.clone(),
            })?;
            tracing::info!(plugin = %name, version = %record.version, "yanked");
        }
        Ok(())
    }

    fn rotate(&self, publisher: &str, new_key: PublicKey) -> Result<(), RegistryError> {
        for _ in 0..ROTATION_ATTEMPTS {
            let keys = self.keys(publisher)?;
            if keys.last() == Some(&new_key) {
                return Ok(());
            }
            let next = keys.len() as u64 + 1;
            if self.claim(
                &self.key_path(publisher, next),
                format!("{new_key}\n").as_bytes(),
                "rotating the publisher's key",
            )? {
                tracing::info!(publisher, key = %new_key, "publisher key rotated");
                return Ok(());
            }
        }
        Err(RegistryError::io(
            "rotating the publisher's key",
            io::Error::other("other rotations kept winning the race; try again"),
        ))
    }

    fn changes_since(&self, since: u64) -> Result<(Vec<Change>, u64), RegistryError> {
        let mut changes = Vec::new();
        let mut cursor = since;
        while changes.len() < CHANGES_PAGE_SIZE {
            let path = self.change_path(cursor + 1);
            match fs::read(&path) {
                Ok(bytes) => {
                    let change =
                        serde_json::from_slice(&bytes).map_err(|error| RegistryError::Corrupt {
                            path: path.display().to_string(),
                            detail: error.to_string(),
                        })?;
                    changes.push(change);
                    cursor += 1;
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => break,
                Err(error) => return Err(RegistryError::io("reading the change log", error)),
            }
        }
        self.seen_sequence.fetch_max(cursor, Ordering::Relaxed);
        Ok((changes, cursor))
    }

    /// The publisher's keys, oldest first.
    fn keys(&self, publisher: &str) -> Result<Vec<PublicKey>, RegistryError> {
        let dir = self.keys_dir(publisher);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(RegistryError::io("reading publisher keys", error)),
        };
        let mut numbered = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|error| RegistryError::io("reading publisher keys", error))?;
            if let Some(number) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u64>().ok())
            {
                numbered.push((number, entry.path()));
            }
        }
        numbered.sort();
        numbered
            .into_iter()
            .map(|(_, path)| {
                let text = fs::read_to_string(&path)
                    .map_err(|error| RegistryError::io("reading a publisher key", error))?;
                text.trim()
                    .parse()
                    .map_err(|error: crate::KeyError| RegistryError::Corrupt {
                        path: path.display().to_string(),
                        detail: error.to_string(),
                    })
            })
            .collect()
    }

    /// Appends to the change log; returns the change's sequence number.
    fn append_change(&self, change: &Change) -> Result<u64, RegistryError> {
        let content = serde_json::to_vec(change)
            .map_err(|error| RegistryError::io("encoding a change", io::Error::other(error)))?;
        let temp = self.write_temp(&content)?;
        let result = self.link_next_sequence(&temp);
        let _ = fs::remove_file(&temp);
        result
    }

    fn link_next_sequence(&self, temp: &Path) -> Result<u64, RegistryError> {
        let mut sequence = match self.seen_sequence.load(Ordering::Relaxed) {
            0 => self.highest_sequence()?,
            seen => seen,
        } + 1;
        loop {
            let path = self.change_path(sequence);
            if path.exists() {
                sequence += 1;
                continue;
            }
            match fs::hard_link(temp, &path) {
                Ok(()) => {
                    sync_dir(&self.root.join("changes"));
                    self.seen_sequence.fetch_max(sequence, Ordering::Relaxed);
                    return Ok(sequence);
                }
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => sequence += 1,
                Err(error) => return Err(RegistryError::io("appending to the change log", error)),
            }
        }
    }

    fn highest_sequence(&self) -> Result<u64, RegistryError> {
        let entries = fs::read_dir(self.root.join("changes"))
            .map_err(|error| RegistryError::io("reading the change log", error))?;
        let mut highest = 0;
        for entry in entries {
            let entry =
                entry.map_err(|error| RegistryError::io("reading the change log", error))?;
            if let Some(sequence) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_suffix(".json"))
                .and_then(|number| number.parse::<u64>().ok())
            {
                highest = highest.max(sequence);
            }
        }
        Ok(highest)
    }

    /// Stores an artifact under its digest; a blob that exists already has this content.
    fn store_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), RegistryError> {
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(());
        }
        let temp = self.write_temp(bytes)?;
        let renamed = fs::rename(&temp, &path);
        if renamed.is_err() {
            let _ = fs::remove_file(&temp);
        }
        renamed.map_err(|error| RegistryError::io("storing the artifact", error))?;
        sync_dir(&self.root.join("blobs/sha256"));
        Ok(())
    }

    /// Creates `path` with `content` unless it exists (see the module docs); returns
    /// whether this call created it.
    fn claim(&self, path: &Path, content: &[u8], doing: &str) -> Result<bool, RegistryError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|error| RegistryError::io(doing, error))?;
        }
        let temp = self.write_temp(content)?;
        let linked = fs::hard_link(&temp, path);
        let _ = fs::remove_file(&temp);
        match linked {
            Ok(()) => {
                if let Some(parent) = path.parent() {
                    sync_dir(parent);
                }
                Ok(true)
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(error) => Err(RegistryError::io(doing, error)),
        }
    }

    /// Writes `content` to a new file under `tmp/` and syncs it.
    fn write_temp(&self, content: &[u8]) -> Result<PathBuf, RegistryError> {
        let fail = |error| RegistryError::io("writing a temporary file", error);
        loop {
            let name = format!(
                "{}-{}-{}",
                std::process::id(),
                self.temp_counter.fetch_add(1, Ordering::Relaxed),
                now_ms()
            );
            let path = self.root.join("tmp").join(name);
            let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => file,
                // Another process with the same id (in another container) picked the name.
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(fail(error)),
            };
            let written = file.write_all(content).and_then(|()| file.sync_all());
            if let Err(error) = written {
                let _ = fs::remove_file(&path);
                return Err(fail(error));
            }
            return Ok(path);
        }
    }

    fn subdirectories(&self, dir: &Path) -> Result<Vec<String>, RegistryError> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(RegistryError::io("listing plugins", error)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|error| RegistryError::io("listing plugins", error))?;
            let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
            if let (true, Ok(name)) = (is_dir, entry.file_name().into_string()) {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    fn plugin_dir(&self, name: &PluginName) -> PathBuf {
        // Both parts are `[a-z0-9][a-z0-9-]*`, so they are safe path components.
        self.root
            .join("plugins")
            .join(name.publisher())
            .join(name.plugin())
    }

    fn version_path(&self, name: &PluginName, version: &Version) -> PathBuf {
        self.plugin_dir(name)
            .join("versions")
            .join(format!("{}.json", version_key(version)))
    }

    fn yank_path(&self, name: &PluginName, version: &Version) -> PathBuf {
        self.plugin_dir(name)
            .join("yanked")
            .join(version_key(version))
    }

    fn keys_dir(&self, publisher: &str) -> PathBuf {
        self.root.join("publishers").join(publisher).join("keys")
    }

    fn key_path(&self, publisher: &str, number: u64) -> PathBuf {
        self.keys_dir(publisher).join(format!("{number:08}"))
    }

    fn change_path(&self, sequence: u64) -> PathBuf {
        self.root
            .join("changes")
            .join(format!("{sequence:020}.json"))
    }
}

/// A version's file name: without build metadata, which does not make a new version.
/// Semver characters (`0-9A-Za-z.-`) are safe in file names.
fn version_key(version: &Version) -> String {
    let mut key = version.clone();
    key.build = BuildMetadata::EMPTY;
    key.to_string()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, RegistryError> {
    let bytes = fs::read(path)
        .map_err(|error| RegistryError::io(format!("reading {}", path.display()), error))?;
    serde_json::from_slice(&bytes).map_err(|error| RegistryError::Corrupt {
        path: path.display().to_string(),
        detail: error.to_string(),
    })
}

/// Makes a directory entry durable. Best effort: where directories cannot be opened for
/// syncing, the file data itself was still synced before it was linked.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
}

fn remove_stale_temp_files(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP_AGE);
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}
