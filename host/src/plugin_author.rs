//! The plugin author's tools behind `postdog plugin …` and `postdog registry serve`: from
//! an empty directory to a version in a registry.
//!
//! - [`keygen`] writes a publisher key file (mode 0600, never overwritten by accident);
//! - [`scaffold`] (`plugin new`) writes a plugin crate that builds to a component and
//!   passes its own tests out of the box, carrying the SDK and WIT sources embedded in
//!   this binary (the SDK is not on crates.io);
//! - [`package`] checks a manifest (every mistake, with line and column), checks the
//!   component against it (its world, and its imports against the requested
//!   capabilities), and signs both into a `PDPKG001` artifact;
//! - [`publish`] and [`yank`] talk to a registry (a directory or an `http(s)://` URL);
//! - [`serve_registry`] runs the registry HTTP service over a directory.
//!
//! The registry rules (signatures, immutable versions, publisher keys) live in
//! `postdog-registry`; this module adds only what an author needs around them: files,
//! the checks that need the plugin runtime, and messages that say what to do next.

pub mod package;
pub mod scaffold;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use postdog_registry::{DirRegistry, PluginName, PublicKey, PublisherKey, Registry, VersionInfo};
use semver::Version;

pub use package::{PackageOptions, PackageReport, package};
pub use scaffold::{NewOptions, NewReport, new_plugin};

/// Where `postdog plugin keygen` writes the key unless told otherwise.
pub const DEFAULT_KEY_FILE: &str = "postdog-publisher.key";

/// The outcome of [`keygen`].
#[derive(Debug, Clone)]
pub struct KeygenReport {
    /// The key file written.
    pub path: PathBuf,
    /// Its public half, as registries know it.
    pub public_key: PublicKey,
}

impl fmt::Display for KeygenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "public key: {}", self.public_key)?;
        write!(
            f,
            "secret key: {} (readable only by you)\n\n\
             Keep the file secret and back it up: the first version you publish registers \
             this key for your publisher name, and only this key can publish or yank its \
             plugins later (a registry operator can rotate it if it is lost).",
            self.path.display()
        )
    }
}

/// Generates a publisher key and writes it to `path` with mode 0600. An existing file
/// is refused unless `force` (it may be the only copy of a registered key).
pub fn keygen(path: &Path, force: bool) -> anyhow::Result<KeygenReport> {
    if !force && path.exists() {
        bail!(
            "{} already exists; it may be a key a registry knows you by. Pass --force to \
             replace it (the old key is then lost), or choose another file with --out",
            path.display()
        );
    }
    let key = PublisherKey::generate().context("while generating a publisher key")?;
    write_private_file(path, key.to_file_text().as_bytes(), force)?;
    Ok(KeygenReport {
        path: path.to_path_buf(),
        public_key: key.public(),
    })
}

/// Writes `contents` to `path` atomically (a temporary file in the same directory,
/// renamed into place) with mode 0600 from the start, so the secret is never readable
/// by others, not even briefly. Without `overwrite`, an existing file is refused.
fn write_private_file(path: &Path, contents: &[u8], overwrite: bool) -> anyhow::Result<()> {
    crate::key_files::write_private(path, contents, overwrite).map_err(|error| {
        let hint = if error.kind() == std::io::ErrorKind::AlreadyExists {
            " (pass --force to replace an existing file)"
        } else {
            ""
        };
        anyhow::Error::new(error).context(format!("while writing {}{hint}", path.display()))
    })
}

/// Reads a publisher key file, warning (like ssh) when others may read it.
pub fn read_key(path: &Path) -> anyhow::Result<PublisherKey> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "while reading the publisher key {}; create one with `postdog plugin keygen --out {}`",
            path.display(),
            path.display()
        )
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(metadata) = std::fs::metadata(path)
            && metadata.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: {} is readable by other users; restrict it with `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    PublisherKey::from_file_text(&text)
        .with_context(|| format!("{} is not a usable publisher key", path.display()))
}

/// Opens a registry location (`http(s)://…` or a directory).
fn open_registry(location: &str) -> anyhow::Result<Registry> {
    Registry::open(location).with_context(|| format!("while opening the registry `{location}`"))
}

/// The outcome of [`publish`].
#[derive(Debug, Clone)]
pub struct PublishReport {
    /// The registry's record of the new version.
    pub info: VersionInfo,
    /// Where it was published.
    pub registry: String,
}

impl fmt::Display for PublishReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "published {}@{} ({})",
            self.info.name, self.info.version, self.info.world
        )?;
        writeln!(f, "digest: {}", self.info.digest)?;
        writeln!(f, "signed by: {}", self.info.publisher_key)?;
        write!(f, "registry: {}", self.registry)
    }
}

/// Publishes the artifact file at `artifact` to the registry at `location`.
pub async fn publish(artifact: &Path, location: &str) -> anyhow::Result<PublishReport> {
    let bytes = tokio::fs::read(artifact).await.with_context(|| {
        format!(
            "while reading {}; build it with `postdog plugin package`",
            artifact.display()
        )
    })?;
    let registry = open_registry(location)?;
    let info = registry
        .publish(&bytes)
        .await
        .with_context(|| format!("the registry `{location}` refused {}", artifact.display()))?;
    Ok(PublishReport {
        info,
        registry: location.to_string(),
    })
}

/// Parses `publisher/name@version`.
pub fn parse_name_version(text: &str) -> anyhow::Result<(PluginName, Version)> {
    let Some((name, version)) = text.rsplit_once('@') else {
        bail!(
            "`{text}` names no version; write `publisher/name@version`, e.g. `acme/greeter@1.0.0`"
        );
    };
    let name: PluginName = name.parse()?;
    let version = Version::parse(version).with_context(|| {
        format!("`{version}` is not a semantic version; write e.g. `{name}@1.0.0`")
    })?;
    Ok((name, version))
}

/// Yanks `publisher/name@version` from the registry at `location`, signing the request
/// with the key file at `key`.
pub async fn yank(target: &str, location: &str, key: &Path) -> anyhow::Result<String> {
    let (name, version) = parse_name_version(target)?;
    let key = read_key(key)?;
    let registry = open_registry(location)?;
    registry
        .yank(name.as_str(), &version, &key)
        .await
        .with_context(|| format!("the registry `{location}` refused to yank {name}@{version}"))?;
    Ok(format!(
        "yanked {name}@{version}: it is no longer offered for new installs; existing installs \
         keep working"
    ))
}

/// Options of `postdog registry serve`.
#[derive(Debug, Clone)]
pub struct RegistryServeOptions {
    /// Address to listen on (port 0 picks a free one; the address is printed).
    pub listen: SocketAddr,
    /// The registry's directory (created if missing).
    pub dir: PathBuf,
    /// The operator token for key rotation; `None` turns operator routes off.
    pub operator_token: Option<String>,
}

/// Serves the registry in `options.dir` over HTTP until `shutdown` completes, then
/// finishes the requests in flight. Prints the address it listens on to stderr.
pub async fn serve_registry(
    options: RegistryServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let registry = DirRegistry::open(&options.dir)
        .with_context(|| format!("while opening the registry in {}", options.dir.display()))?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("while binding {}", options.listen))?;
    let address = listener
        .local_addr()
        .context("while reading the bound address")?;
    let operator = if options
        .operator_token
        .as_deref()
        .is_some_and(|t| !t.is_empty())
    {
        "operator key rotation on"
    } else {
        "operator key rotation off: no --operator-token"
    };
    eprintln!(
        "postdog registry listening on http://{address} (directory {}; {operator})",
        options.dir.display()
    );
    postdog_registry::server::serve(listener, registry, options.operator_token, shutdown)
        .await
        .context("while serving the registry")?;
    eprintln!("postdog registry shut down cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_and_version_are_parsed() {
        let (name, version) = parse_name_version("acme/greeter@1.2.3").unwrap();
        assert_eq!(name.as_str(), "acme/greeter");
        assert_eq!(version, Version::new(1, 2, 3));
        assert!(parse_name_version("acme/greeter").is_err());
        assert!(parse_name_version("acme/greeter@1.2").is_err());
        assert!(parse_name_version("greeter@1.2.3").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_private_and_not_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("publisher.key");
        let report = keygen(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_key(&path).unwrap().public(), report.public_key);
        assert!(keygen(&path, false).is_err());
        assert_eq!(read_key(&path).unwrap().public(), report.public_key);
        let replaced = keygen(&path, true).unwrap();
        assert_ne!(replaced.public_key, report.public_key);
        assert_eq!(read_key(&path).unwrap().public(), replaced.public_key);
    }
}
