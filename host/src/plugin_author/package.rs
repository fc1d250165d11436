//! `postdog plugin package`: checks a plugin before it is signed, so an author learns
//! about a mistake on their machine rather than from a registry or a tenant's `denied`.
//!
//! 1. The manifest parses (every mistake is reported, each with line and column).
//! 2. The component loads in the plugin runtime (a component, one PostDog world, only
//!    WASI 0.2 and `postdog:plugin@0.1.0` imports).
//! 3. Its world is the manifest's `world`.
//! 4. It imports only what the manifest's capabilities allow: `postdog:plugin/kv` needs
//!    `kv`, `postdog:plugin/http` an `http:` capability, `postdog:plugin/contacts`
//!    `contacts:read` or `contacts:write`; `log`, `config`, the type-only interfaces and
//!    WASI need none. This is enforceable because a component built with the SDK
//!    imports only the interfaces its code calls: the linker drops unused import
//!    functions and `wit-component` then leaves out interfaces nothing uses (checked on
//!    the example plugins: `hello-action` imports kv, config and log but not http;
//!    `echo-channel` imports http and config but not kv). Capabilities requested but not
//!    used are reported as warnings: tenants would be asked to grant them for nothing.
//!
//! Then the manifest and component are signed into one artifact
//! (`<publisher>-<name>-<version>.pdpkg`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, bail};
use postdog_registry::{Artifact, Capability, Manifest};

use crate::runtime::{Runtime, RuntimeConfig};

/// Options of `postdog plugin package`.
#[derive(Debug, Clone)]
pub struct PackageOptions {
    /// The manifest (`postdog-plugin.toml`).
    pub manifest: PathBuf,
    /// The component; `None` means the manifest's crate's release build for
    /// `wasm32-wasip2`.
    pub component: Option<PathBuf>,
    /// The publisher key file.
    pub key: PathBuf,
    /// Where to write the artifact; `None` means `<publisher>-<name>-<version>.pdpkg` in
    /// the current directory.
    pub out: Option<PathBuf>,
}

/// What [`package`] wrote.
#[derive(Debug, Clone)]
pub struct PackageReport {
    /// The artifact file.
    pub path: PathBuf,
    /// The component that went into it.
    pub component: PathBuf,
    /// `publisher/name@version (world)`.
    pub title: String,
    /// The artifact's content address (`sha256:…`).
    pub digest: String,
    /// The artifact's size in bytes.
    pub size: u64,
    /// The public key that signed it.
    pub signed_by: String,
    /// The `postdog:plugin` interfaces the component imports.
    pub imports: Vec<String>,
    /// Things worth fixing that do not stop packaging.
    pub warnings: Vec<String>,
}

impl fmt::Display for PackageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "packaged {}", self.title)?;
        writeln!(f, "artifact: {}", self.path.display())?;
        writeln!(f, "digest: {}", self.digest)?;
        writeln!(f, "size: {} bytes", self.size)?;
        writeln!(f, "component: {}", self.component.display())?;
        writeln!(f, "imports: {}", self.imports.join(", "))?;
        write!(f, "signed by: {}", self.signed_by)
    }
}

/// Checks the plugin and writes its signed artifact (see the module docs).
pub async fn package(options: PackageOptions) -> anyhow::Result<PackageReport> {
    let manifest_path = &options.manifest;
    let manifest_text = tokio::fs::read_to_string(manifest_path)
        .await
        .with_context(|| {
            format!(
                "while reading the manifest {}; run this in the plugin's directory or pass \
                 --manifest",
                manifest_path.display()
            )
        })?;
    let manifest = Manifest::parse(&manifest_text).map_err(|errors| {
        let count = errors.errors().len();
        let lines: Vec<String> = errors
            .errors()
            .iter()
            .map(|error| {
                format!(
                    "{}:{}:{}: {}",
                    manifest_path.display(),
                    error.line,
                    error.column,
                    error.message
                )
            })
            .collect();
        anyhow::anyhow!(
            "the manifest has {count} mistake{}; fix {} and package again:\n{}",
            if count == 1 { "" } else { "s" },
            if count == 1 { "it" } else { "them" },
            lines.join("\n")
        )
    })?;
    // Read the key before the (slow) component check, so a wrong path fails at once.
    let key = super::read_key(&options.key)?;
    let manifest_dir = manifest_path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let component_path = match &options.component {
        Some(path) => path.clone(),
        None => default_component(&manifest_dir, &manifest)?,
    };
    let component = tokio::fs::read(&component_path)
        .await
        .with_context(|| format!("while reading the component {}", component_path.display()))?;

    let runtime = Runtime::new(RuntimeConfig::default(), None)?;
    let loaded = {
        let component = component.clone();
        tokio::task::spawn_blocking(move || runtime.load(&component))
            .await
            .context("the component check stopped unexpectedly")?
            .with_context(|| {
                format!(
                    "{} is not a plugin PostDog can load",
                    component_path.display()
                )
            })?
    };
    if loaded.world().name() != manifest.world.as_str() {
        bail!(
            "{} implements the `{}` world, but {} declares `world = \"{}\"`; package the \
             component built from this plugin's crate, or correct `world` in the manifest",
            component_path.display(),
            loaded.world(),
            manifest_path.display(),
            manifest.world
        );
    }
    let imports: Vec<String> = loaded
        .imports()
        .iter()
        .filter(|name| name.starts_with("postdog:plugin/"))
        .cloned()
        .collect();
    let check = check_imports(&imports, &manifest.capabilities);
    if !check.missing.is_empty() {
        bail!(
            "{} uses host interfaces its manifest does not request:\n{}",
            component_path.display(),
            check.missing.join("\n")
        );
    }
    let mut warnings = check.unused;
    if let Some(warning) = stale_component_warning(&manifest_dir, &component_path) {
        warnings.push(warning);
    }

    let artifact = Artifact::build(&manifest_text, component, &key)
        .context("while building the signed artifact")?;
    let bytes = artifact.to_bytes();
    let out = options.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "{}-{}-{}.pdpkg",
            manifest.publisher(),
            manifest.name.plugin(),
            manifest.version
        ))
    });
    write_atomically(&out, &bytes)?;
    Ok(PackageReport {
        path: out,
        component: component_path,
        title: format!(
            "{}@{} ({})",
            manifest.name, manifest.version, manifest.world
        ),
        digest: artifact.digest().to_string(),
        size: bytes.len() as u64,
        signed_by: artifact.publisher_key().to_string(),
        imports,
        warnings,
    })
}

/// The outcome of comparing a component's imports with a manifest's capabilities.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportCheck {
    /// One line per import the capabilities do not cover, saying what to add.
    pub missing: Vec<String>,
    /// One line per capability that no import uses.
    pub unused: Vec<String>,
}

/// Compares `postdog:plugin/…` import names with the requested capabilities.
pub fn check_imports(imports: &[String], capabilities: &[Capability]) -> ImportCheck {
    let has_http = capabilities.iter().any(|capability| {
        matches!(
            capability,
            Capability::Http(_) | Capability::HttpTenantHosts
        )
    });
    let has_contacts = capabilities.iter().any(|capability| {
        matches!(
            capability,
            Capability::ContactsRead | Capability::ContactsWrite
        )
    });
    let mut check = ImportCheck::default();
    let uses = |interface: &str| {
        imports
            .iter()
            .any(|name| interface_of(name) == Some(interface))
    };
    let (uses_kv, uses_http, uses_contacts) = (uses("kv"), uses("http"), uses("contacts"));
    for name in imports {
        let Some(interface) = interface_of(name) else {
            continue;
        };
        let missing = match interface {
            "kv" if !capabilities.contains(&Capability::Kv) => {
                "add \"kv\" to `capabilities` in [plugin]"
            }
            "http" if !has_http => {
                "add one \"http:<host>\" per API host to `capabilities` in [plugin], e.g. \
                 \"http:api.example.com\""
            }
            "contacts" if !has_contacts => {
                "add \"contacts:read\" (and \"contacts:write\" if it changes contacts) to \
                 `capabilities` in [plugin]"
            }
            "kv" | "http" | "contacts" | "log" | "config" | "types" | "action-types"
            | "channel-types" | "social-types" | "integration-types" => continue,
            _ => {
                "this PostDog does not know the interface; build against the WIT \
                  that came with it"
            }
        };
        check.missing.push(format!("  {name}: {missing}"));
    }
    for capability in capabilities {
        let used = match capability {
            Capability::Kv => uses_kv,
            Capability::Http(_) | Capability::HttpTenantHosts => uses_http,
            Capability::ContactsRead | Capability::ContactsWrite => uses_contacts,
            // Webhooks arrive through the world's exports; no import to look for.
            Capability::Webhook => true,
        };
        if !used {
            check.unused.push(format!(
                "the manifest requests `{capability}`, but the component never uses it; \
                 remove it, or tenants are asked to grant it for nothing"
            ));
        }
    }
    check
}

/// `kv` for `postdog:plugin/kv@0.1.0`; `None` for other packages.
fn interface_of(import: &str) -> Option<&str> {
    let rest = import.strip_prefix("postdog:plugin/")?;
    Some(
        rest.split_once('@')
            .map_or(rest, |(interface, _)| interface),
    )
}

/// The release component of the manifest's crate: `<target>/wasm32-wasip2/release/
/// <crate>.wasm`, where the target directory is `CARGO_TARGET_DIR` when set (as for
/// cargo) or the `target/` next to the manifest or above it (a cargo workspace's).
fn default_component(manifest_dir: &Path, manifest: &Manifest) -> anyhow::Result<PathBuf> {
    let crate_name = crate_name(manifest_dir).unwrap_or_else(|| manifest.name.plugin().to_string());
    let file = Path::new("wasm32-wasip2")
        .join("release")
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    let expected = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(target) if !target.is_empty() => PathBuf::from(target).join(&file),
        _ => {
            let local = manifest_dir.join("target").join(&file);
            let in_workspace = manifest_dir
                .ancestors()
                .skip(1)
                .map(|dir| dir.join("target").join(&file))
                .find(|path| path.is_file());
            match in_workspace {
                Some(path) if !local.is_file() => path,
                _ => local,
            }
        }
    };
    if !expected.is_file() {
        bail!(
            "the component {} does not exist; build it with `cargo build --release --target \
             wasm32-wasip2` in {}, or name the .wasm file with --component",
            expected.display(),
            manifest_dir.display()
        );
    }
    Ok(expected)
}

/// The `[package] name` of the `Cargo.toml` in `dir`, if there is one. A line-based
/// reading is enough for the `name = "…"` cargo itself writes.
fn crate_name(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
    let mut in_package = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "name"
        {
            let value = value.trim();
            return value
                .strip_prefix('"')
                .and_then(|value| value.strip_suffix('"'))
                .map(str::to_string);
        }
    }
    None
}

/// A warning when a source file next to the manifest is newer than the component (a
/// build was probably forgotten).
fn stale_component_warning(manifest_dir: &Path, component: &Path) -> Option<String> {
    fn newest(path: &Path) -> Option<SystemTime> {
        let metadata = std::fs::metadata(path).ok()?;
        if !metadata.is_dir() {
            return metadata.modified().ok();
        }
        std::fs::read_dir(path)
            .ok()?
            .flatten()
            .filter_map(|entry| newest(&entry.path()))
            .max()
    }
    let built = std::fs::metadata(component).ok()?.modified().ok()?;
    let sources = [manifest_dir.join("src"), manifest_dir.join("Cargo.toml")]
        .iter()
        .filter_map(|path| newest(path))
        .max()?;
    (sources > built).then(|| {
        format!(
            "{} is older than the sources in {}; rebuild it with `cargo build --release \
             --target wasm32-wasip2` if you changed them",
            component.display(),
            manifest_dir.display()
        )
    })
}

/// Writes `bytes` to `path` through a temporary file in the same directory, so a reader
/// never sees half an artifact.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("while creating the directory {}", dir.display()))?;
    let mut file = tempfile::Builder::new()
        .prefix(".postdog-package-")
        .tempfile_in(&dir)
        .with_context(|| format!("while creating a file in {}", dir.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("while writing {}", path.display()))?;
    file.persist(path)
        .with_context(|| format!("while writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    fn capabilities(items: &[&str]) -> Vec<Capability> {
        items.iter().map(|item| item.parse().unwrap()).collect()
    }

    #[test]
    fn imports_covered_by_capabilities_pass() {
        let imports = names(&[
            "postdog:plugin/types@0.1.0",
            "postdog:plugin/action-types@0.1.0",
            "postdog:plugin/kv@0.1.0",
            "postdog:plugin/log@0.1.0",
            "postdog:plugin/config@0.1.0",
            "postdog:plugin/http@0.1.0",
            "postdog:plugin/contacts@0.1.0",
        ]);
        let check = check_imports(
            &imports,
            &capabilities(&["kv", "http:api.example.com", "contacts:read"]),
        );
        assert_eq!(check, ImportCheck::default());
    }

    #[test]
    fn each_uncovered_import_is_named_with_its_fix() {
        let imports = names(&[
            "postdog:plugin/kv@0.1.0",
            "postdog:plugin/http@0.1.0",
            "postdog:plugin/contacts@0.1.0",
            "postdog:plugin/log@0.1.0",
        ]);
        let check = check_imports(&imports, &[]);
        assert_eq!(check.missing.len(), 3, "{check:?}");
        assert!(check.missing[0].contains("kv@0.1.0") && check.missing[0].contains("\"kv\""));
        assert!(check.missing[1].contains("http:<host>"));
        assert!(check.missing[2].contains("contacts:read"));
    }

    #[test]
    fn unused_capabilities_are_warnings() {
        let check = check_imports(
            &names(&["postdog:plugin/log@0.1.0"]),
            &capabilities(&["kv", "webhook", "contacts:write"]),
        );
        assert!(check.missing.is_empty());
        assert_eq!(check.unused.len(), 2, "{check:?}");
    }

    #[test]
    fn crate_name_comes_from_the_package_table() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("Cargo.toml"),
            "[workspace]\nname = \"no\"\n\n[package]\nversion = \"0.1.0\"\nname = \"my-plugin\"\n",
        )
        .unwrap();
        assert_eq!(crate_name(dir.path()).as_deref(), Some("my-plugin"));
        assert_eq!(crate_name(&dir.path().join("missing")), None);
    }
}
