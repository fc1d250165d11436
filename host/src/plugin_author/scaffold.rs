//! `postdog plugin new`: writes a plugin crate for one world that builds to a component
//! and passes its own tests as soon as it is written.
//!
//! The SDK is not on crates.io, so this binary carries its sources and the WIT package
//! (embedded at build time from `sdk/` and `wit/`) and writes them into the plugin as
//! `postdog/sdk` and `postdog/wit`: the same sibling layout as in the PostDog
//! repository, which the SDK's build script and its `generate!` rely on (`../wit`). The
//! WIT deliberately does not go to the crate's own `wit/`: `wit-bindgen` loads that
//! directory by default, and the SDK's export macro already carries the package inline,
//! so the crate would define it twice. The SDK's dependencies are pinned as in the
//! PostDog workspace (read from the embedded workspace `Cargo.toml`).
//!
//! Everything is written to a temporary directory next to the target and renamed into
//! place, so a failure never leaves half a plugin behind.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use postdog_registry::PluginName;
use postdog_registry::manifest::check_publisher;

use crate::runtime::World;

/// Embeds repository files, keyed by their path in the repository.
macro_rules! embedded {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../../", $path)))),*]
    };
}

/// The SDK's sources. The unit tests check that this list matches `sdk/src`.
const SDK_FILES: &[(&str, &str)] = embedded![
    "sdk/build.rs",
    "sdk/src/action.rs",
    "sdk/src/channel.rs",
    "sdk/src/config.rs",
    "sdk/src/contacts.rs",
    "sdk/src/http.rs",
    "sdk/src/integration.rs",
    "sdk/src/kv.rs",
    "sdk/src/lib.rs",
    "sdk/src/log.rs",
    "sdk/src/message.rs",
    "sdk/src/social.rs",
];

/// The WIT package. The unit tests check that this list matches `wit/`.
const WIT_FILES: &[(&str, &str)] = embedded![
    "wit/action-types.wit",
    "wit/action.wit",
    "wit/channel-types.wit",
    "wit/channel.wit",
    "wit/config.wit",
    "wit/contacts.wit",
    "wit/http.wit",
    "wit/integration-handler.wit",
    "wit/integration-types.wit",
    "wit/kv.wit",
    "wit/log.wit",
    "wit/social-types.wit",
    "wit/social.wit",
    "wit/types.wit",
    "wit/worlds.wit",
];

/// The workspace manifest, for the versions the SDK's dependencies are pinned to.
const WORKSPACE_MANIFEST: &str = include_str!("../../../Cargo.toml");

const CARGO_TOML: &str = include_str!("templates/Cargo.toml.tmpl");
const SDK_CARGO_TOML: &str = include_str!("templates/sdk-Cargo.toml.tmpl");
const SDK_README: &str = include_str!("templates/postdog-README.md.tmpl");
const README: &str = include_str!("templates/README.md.tmpl");
const GITIGNORE: &str = include_str!("templates/gitignore.tmpl");

/// The world-specific files: `src/lib.rs`, `postdog-plugin.toml`, and the README's
/// "try it" step.
struct WorldTemplates {
    lib: &'static str,
    manifest: &'static str,
    try_it: &'static str,
}

fn world_templates(world: World) -> WorldTemplates {
    macro_rules! world {
        ($dir:literal) => {
            WorldTemplates {
                lib: include_str!(concat!("templates/", $dir, "/lib.rs.tmpl")),
                manifest: include_str!(concat!("templates/", $dir, "/postdog-plugin.toml.tmpl")),
                try_it: include_str!(concat!("templates/", $dir, "/try-it.md.tmpl")),
            }
        };
    }
    match world {
        World::FlowAction => world!("flow-action"),
        World::MessagingChannel => world!("messaging-channel"),
        World::SocialChannel => world!("social-channel"),
        World::Integration => world!("integration"),
    }
}

/// Options of `postdog plugin new`.
#[derive(Debug, Clone)]
pub struct NewOptions {
    /// The plugin's name: the crate name and the part after `publisher/`.
    pub name: String,
    /// The world it implements.
    pub world: World,
    /// The publisher part of its full name; `None` derives one from the user name.
    pub publisher: Option<String>,
    /// The directory to create the plugin in (as `<parent>/<name>`).
    pub parent: PathBuf,
}

/// What [`new_plugin`] created.
#[derive(Debug, Clone)]
pub struct NewReport {
    /// The plugin's directory.
    pub dir: PathBuf,
    /// `publisher/name`.
    pub plugin_name: PluginName,
    /// Its world.
    pub world: World,
    /// The component's file name (`<crate>.wasm`).
    pub component_file: String,
    /// Whether the publisher was derived rather than given.
    pub derived_publisher: bool,
}

impl fmt::Display for NewReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "created {} ({}) in {}",
            self.plugin_name,
            self.world,
            self.dir.display()
        )?;
        if self.derived_publisher {
            writeln!(
                f,
                "publisher `{}` was derived from your user name; change `name` in \
                 postdog-plugin.toml before the first publish if you publish under another",
                self.plugin_name.publisher()
            )?;
        }
        writeln!(f)?;
        writeln!(f, "next steps (README.md has the details):")?;
        writeln!(f, "  cd {}", self.dir.display())?;
        writeln!(f, "  cargo test")?;
        writeln!(f, "  cargo build --release --target wasm32-wasip2")?;
        writeln!(
            f,
            "  postdog plugin run target/wasm32-wasip2/release/{} --world {} …",
            self.component_file, self.world
        )?;
        writeln!(
            f,
            "  postdog plugin keygen --out ~/.postdog/publisher.key   # once"
        )?;
        writeln!(f, "  postdog plugin package --key ~/.postdog/publisher.key")?;
        write!(
            f,
            "  postdog plugin publish {}-{}-0.1.0.pdpkg --registry <url or directory>",
            self.plugin_name.publisher(),
            self.plugin_name.plugin()
        )
    }
}

/// Names a crate may not have (Rust keywords and the standard crates).
const RESERVED_NAMES: &[&str] = &[
    "abstract",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
    "test",
    "std",
    "core",
    "alloc",
    "proc-macro",
    "postdog-sdk",
    "build",
];

/// Checks a new plugin's name: it must be valid both as the name part of a registry
/// plugin name and as a cargo package name.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let rule = "use 1-64 characters of lowercase letters, digits and `-`, starting with a \
                letter and not ending with `-`, e.g. `order-notifier`";
    let well_formed = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !well_formed {
        bail!("invalid plugin name `{name}`: {rule}");
    }
    if RESERVED_NAMES.contains(&name) || RESERVED_NAMES.contains(&name.replace('-', "_").as_str()) {
        bail!("`{name}` is reserved in Rust or by PostDog; choose another plugin name");
    }
    Ok(())
}

/// A publisher name derived from the user's login name, if it makes a valid one.
fn derived_publisher() -> Option<String> {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .ok()?;
    let cleaned: String = user
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let cleaned = cleaned.trim_matches('-').to_string();
    check_publisher(&cleaned).is_ok().then_some(cleaned)
}

/// `{{key}}` → value for every pair.
fn render(template: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(template.to_string(), |text, (key, value)| {
            text.replace(&format!("{{{{{key}}}}}"), value)
        })
}

/// The line declaring `name` in the workspace's `[workspace.dependencies]`.
fn workspace_dependency(name: &str) -> anyhow::Result<&'static str> {
    let mut in_dependencies = false;
    for line in WORKSPACE_MANIFEST.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_dependencies = trimmed == "[workspace.dependencies]";
        } else if in_dependencies
            && let Some((key, _)) = trimmed.split_once('=')
            && key.trim() == name
        {
            return Ok(trimmed);
        }
    }
    bail!("this postdog build does not know which version of `{name}` the SDK needs (a bug)")
}

/// The version of the embedded WIT package (`0.1.0` of `package postdog:plugin@0.1.0;`).
fn wit_version() -> anyhow::Result<&'static str> {
    WIT_FILES
        .iter()
        .flat_map(|(_, text)| text.lines())
        .find_map(|line| {
            line.trim()
                .strip_prefix("package postdog:plugin@")?
                .strip_suffix(';')
        })
        .context("the embedded WIT declares no `postdog:plugin` package (a bug)")
}

/// Every file of a new plugin, by path relative to its directory.
fn plugin_files(plugin_name: &PluginName, world: World) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let crate_name = plugin_name.plugin();
    let crate_file = crate_name.replace('-', "_");
    let serde_json = workspace_dependency("serde_json")?;
    let values = [
        ("plugin_name", plugin_name.as_str()),
        ("publisher", plugin_name.publisher()),
        ("plugin", crate_name),
        ("crate_name", crate_name),
        ("crate_file", crate_file.as_str()),
        ("world", world.name()),
        ("wit_version", wit_version()?),
        ("postdog_version", env!("CARGO_PKG_VERSION")),
        (
            "wit_bindgen_dependency",
            workspace_dependency("wit-bindgen")?,
        ),
        ("serde_dependency", workspace_dependency("serde")?),
        ("serde_json_dependency", serde_json),
    ];
    let templates = world_templates(world);
    let try_it = render(templates.try_it, &values);
    let mut readme_values = values.to_vec();
    readme_values.push(("try_it", &try_it));
    let mut files = vec![
        (PathBuf::from("Cargo.toml"), render(CARGO_TOML, &values)),
        (PathBuf::from(".gitignore"), GITIGNORE.to_string()),
        (PathBuf::from("README.md"), render(README, &readme_values)),
        (
            PathBuf::from("postdog-plugin.toml"),
            render(templates.manifest, &values),
        ),
        (PathBuf::from("src/lib.rs"), render(templates.lib, &values)),
        (
            PathBuf::from("postdog/sdk/Cargo.toml"),
            render(SDK_CARGO_TOML, &values),
        ),
        (
            PathBuf::from("postdog/README.md"),
            render(SDK_README, &values),
        ),
    ];
    for (path, text) in SDK_FILES.iter().chain(WIT_FILES) {
        files.push((Path::new("postdog").join(path), (*text).to_string()));
    }
    Ok(files)
}

/// Creates the plugin (see the module docs).
pub fn new_plugin(options: &NewOptions) -> anyhow::Result<NewReport> {
    check_name(&options.name)?;
    let (publisher, derived) = match &options.publisher {
        Some(publisher) => (publisher.clone(), false),
        None => (
            derived_publisher().context(
                "cannot derive a publisher name from your user name; pass --publisher NAME",
            )?,
            true,
        ),
    };
    check_publisher(&publisher)?;
    let plugin_name: PluginName = format!("{publisher}/{}", options.name).parse()?;
    let dir = options.parent.join(&options.name);
    if let Ok(metadata) = std::fs::symlink_metadata(&dir) {
        let empty = metadata.is_dir()
            && std::fs::read_dir(&dir)
                .with_context(|| format!("while reading {}", dir.display()))?
                .next()
                .is_none();
        if !empty {
            bail!(
                "{} already exists and is not empty; choose another name, or another parent \
                 directory with --dir",
                dir.display()
            );
        }
    }
    let files = plugin_files(&plugin_name, options.world)?;

    std::fs::create_dir_all(&options.parent)
        .with_context(|| format!("while creating {}", options.parent.display()))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".postdog-new-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        // A normal directory (the umask applies), not the temporary one's 0700.
        builder.permissions(std::fs::Permissions::from_mode(0o777));
    }
    let staging = builder
        .tempdir_in(&options.parent)
        .with_context(|| format!("while creating a directory in {}", options.parent.display()))?;
    for (path, text) in &files {
        let path = staging.path().join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("while creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("while writing {}", path.display()))?;
    }
    // Renaming onto an empty directory replaces it; onto anything else it fails.
    std::fs::rename(staging.path(), &dir)
        .with_context(|| format!("while moving the new plugin to {}", dir.display()))?;
    // The directory now lives at `dir`; nothing is left to clean up.
    let _ = staging.keep();
    Ok(NewReport {
        dir,
        component_file: format!("{}.wasm", options.name.replace('-', "_")),
        plugin_name,
        world: options.world,
        derived_publisher: derived,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use postdog_registry::Manifest;

    fn listing(dir: &str, extension: &str) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut names: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(extension))
            .map(|name| format!("{dir}/{name}"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn every_sdk_and_wit_file_is_embedded() {
        let embedded = |files: &[(&str, &str)], dir: &str| {
            files
                .iter()
                .map(|(path, _)| path.to_string())
                .filter(|path| path.starts_with(dir))
                .collect::<Vec<_>>()
        };
        assert_eq!(embedded(SDK_FILES, "sdk/src/"), listing("sdk/src", ".rs"));
        assert_eq!(embedded(WIT_FILES, "wit/"), listing("wit", ".wit"));
    }

    #[test]
    fn sdk_dependencies_are_pinned_as_in_the_workspace() {
        assert!(
            workspace_dependency("wit-bindgen")
                .unwrap()
                .contains("version = \"0.61\"")
        );
        assert!(
            workspace_dependency("serde")
                .unwrap()
                .starts_with("serde = ")
        );
        assert!(
            workspace_dependency("serde_json")
                .unwrap()
                .starts_with("serde_json = ")
        );
        assert!(workspace_dependency("no-such-crate").is_err());
        assert_eq!(wit_version().unwrap(), "0.1.0");
    }

    #[test]
    fn every_world_renders_completely_with_a_valid_manifest() {
        let name: PluginName = "acme/my-plugin".parse().unwrap();
        for world in World::ALL {
            let files = plugin_files(&name, world).unwrap();
            for (path, text) in &files {
                assert!(
                    !text.contains("{{") || path.starts_with("postdog/"),
                    "{world}: {} has an unfilled placeholder",
                    path.display()
                );
            }
            let manifest = files
                .iter()
                .find(|(path, _)| path == Path::new("postdog-plugin.toml"))
                .map(|(_, text)| Manifest::parse(text).unwrap())
                .unwrap();
            assert_eq!(manifest.world.as_str(), world.name());
            assert_eq!(manifest.name, name);
        }
    }

    #[test]
    fn names_are_checked() {
        for good in ["greeter", "order-notifier", "a1", "x"] {
            check_name(good).unwrap();
        }
        for bad in [
            "",
            "Greeter",
            "1st",
            "-x",
            "x-",
            "a_b",
            "a/b",
            "self",
            "test",
            "postdog-sdk",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(check_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn new_refuses_a_non_empty_directory_and_fills_an_empty_one() {
        let parent = tempfile::tempdir().unwrap();
        let options = NewOptions {
            name: "greeter".into(),
            world: World::FlowAction,
            publisher: Some("acme".into()),
            parent: parent.path().to_path_buf(),
        };
        std::fs::create_dir(parent.path().join("greeter")).unwrap();
        let report = new_plugin(&options).unwrap();
        assert!(report.dir.join("postdog/sdk/src/lib.rs").is_file());
        assert!(report.dir.join("postdog/wit/worlds.wit").is_file());
        assert!(new_plugin(&options).is_err());
        // Nothing but the plugin was left in the parent.
        let entries: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }
}
