//! `postdog-plugin.toml`: what a plugin is (name, version, world, WIT version), what it
//! asks to be allowed to do (capabilities, limits) and what configuration it takes.
//!
//! [`Manifest::parse`] reports *every* mistake it finds, each with the 1-based line and
//! column of the offending value (or of the table a required key is missing from) and a
//! message saying what to fix, so a plugin author fixes a manifest in one round:
//!
//! ```text
//! postdog-plugin.toml:3:11: `1.2` is not a semantic version: write MAJOR.MINOR.PATCH, e.g. `1.2.0` (unexpected end of input while parsing minor version number)
//! postdog-plugin.toml:4:9: unknown world `flow_action`; did you mean `flow-action`?
//! ```
//!
//! The format:
//!
//! ```toml
//! [plugin]
//! name = "acme/order-notifier"   # publisher/name
//! version = "1.2.0"              # semver
//! world = "flow-action"          # flow-action | messaging-channel | social-channel | integration
//! wit = "0.1.0"                  # postdog:plugin@X the component was built against
//! description = "Sends order notifications"   # 1..=280 characters
//! categories = ["ecommerce"]     # optional; see `Category`
//! icon = "https://example.com/icon.svg"       # optional, https
//! homepage = "https://example.com"            # optional, http(s)
//! min_host_version = "0.1.0"     # optional
//! capabilities = ["kv", "http:api.example.com"]   # optional; see `Capability`
//!
//! [limits]          # optional
//! memory_mb = 64    # 1..=512
//! timeout_ms = 5000 # 1..=60000
//!
//! [config]          # optional; see `ConfigSchema`
//! ```

pub(crate) mod checker;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use semver::Version;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::de::DeTable;
use url::Url;

use crate::capability::Capability;
use crate::config_schema::ConfigSchema;
pub(crate) use checker::suggest;
use checker::{Checker, TableView};

/// The manifest's file name inside a plugin's source tree.
pub const MANIFEST_FILE_NAME: &str = "postdog-plugin.toml";
/// The `wit` versions (of the `postdog:plugin` WIT package) this registry accepts.
pub const SUPPORTED_WIT_VERSIONS: [&str; 1] = ["0.1.0"];
/// Most characters a description may have.
pub const MAX_DESCRIPTION_CHARS: usize = 280;
/// Allowed `[limits] memory_mb`.
pub const MEMORY_MB_RANGE: std::ops::RangeInclusive<u32> = 1..=512;
/// Allowed `[limits] timeout_ms`.
pub const TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u32> = 1..=60_000;

/// A parsed, checked `postdog-plugin.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// `publisher/name`.
    pub name: PluginName,
    /// The plugin's version.
    pub version: Version,
    /// The WIT world the component is built for.
    pub world: World,
    /// The version of the `postdog:plugin` WIT package the component was built against.
    pub wit: Version,
    /// What the plugin does, 1..=280 characters.
    pub description: String,
    /// Marketplace categories, without duplicates.
    pub categories: Vec<Category>,
    /// An https URL of the plugin's icon.
    pub icon: Option<Url>,
    /// The plugin's home page.
    pub homepage: Option<Url>,
    /// The oldest PostDog host version that can run the plugin.
    pub min_host_version: Option<Version>,
    /// The capabilities the plugin requests, without duplicates.
    pub capabilities: Vec<Capability>,
    /// Resource limits the plugin asks for.
    pub limits: Limits,
    /// The schema of an install's configuration.
    pub config: ConfigSchema,
}

/// `[limits]`: what the plugin asks for; the host clamps them to its operator's ceilings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Linear memory, in MiB (1..=512).
    pub memory_mb: Option<u32>,
    /// Wall-clock time per call, in milliseconds (1..=60000).
    pub timeout_ms: Option<u32>,
}

impl Manifest {
    /// Parses and checks a manifest, reporting every mistake found.
    pub fn parse(text: &str) -> Result<Manifest, ManifestErrors> {
        let (root, syntax_errors) = DeTable::parse_recoverable(text);
        let mut checker = Checker::new(text);
        if !syntax_errors.is_empty() {
            // The tree after a syntax error is a guess; checking it would add noise.
            checker.syntax_errors(syntax_errors);
            return Err(ManifestErrors::new(checker.into_errors()));
        }
        let root = TableView {
            table: root.get_ref(),
            span: 0..0,
            label: "the manifest".to_string(),
        };
        checker.unknown_keys(&root, &["plugin", "limits", "config"], "table");
        let parsed = checker
            .table(&root, "plugin", true, "[plugin]".to_string())
            .map(|plugin| parse_plugin_table(&mut checker, &plugin));
        let limits = checker
            .table(&root, "limits", false, "[limits]".to_string())
            .map(|limits| parse_limits(&mut checker, &limits))
            .unwrap_or_default();
        let config = match checker.table(&root, "config", false, "[config]".to_string()) {
            Some(config) => ConfigSchema::from_toml(&mut checker, &config),
            None => Some(ConfigSchema::default()),
        };
        match (parsed, config) {
            (Some(Some(plugin)), Some(config)) if checker.error_count() == 0 => Ok(Manifest {
                name: plugin.name,
                version: plugin.version,
                world: plugin.world,
                wit: plugin.wit,
                description: plugin.description,
                categories: plugin.categories,
                icon: plugin.icon,
                homepage: plugin.homepage,
                min_host_version: plugin.min_host_version,
                capabilities: plugin.capabilities,
                limits,
                config,
            }),
            _ => {
                if checker.error_count() == 0 {
                    // Every path that drops a field records why; keep the promise anyway.
                    checker.error(0, "the manifest could not be read");
                }
                Err(ManifestErrors::new(checker.into_errors()))
            }
        }
    }

    /// The publisher part of the name (`acme` in `acme/order-notifier`).
    pub fn publisher(&self) -> &str {
        self.name.publisher()
    }
}

/// The `[plugin]` fields, all present.
struct PluginFields {
    name: PluginName,
    version: Version,
    world: World,
    wit: Version,
    description: String,
    categories: Vec<Category>,
    icon: Option<Url>,
    homepage: Option<Url>,
    min_host_version: Option<Version>,
    capabilities: Vec<Capability>,
}

const PLUGIN_KEYS: [&str; 10] = [
    "name",
    "version",
    "world",
    "wit",
    "description",
    "categories",
    "icon",
    "homepage",
    "min_host_version",
    "capabilities",
];

fn parse_plugin_table(
    checker: &mut Checker<'_>,
    plugin: &TableView<'_, '_>,
) -> Option<PluginFields> {
    checker.unknown_keys(plugin, &PLUGIN_KEYS, "key");
    let name = checker
        .string(plugin, "name", true)
        .and_then(|(text, span)| match text.parse::<PluginName>() {
            Ok(name) => Some(name),
            Err(error) => {
                checker.error(span.start, error.to_string());
                None
            }
        });
    let version = semver_field(checker, plugin, "version", true);
    let world = checker
        .string(plugin, "world", true)
        .and_then(|(text, span)| match text.parse::<World>() {
            Ok(world) => Some(world),
            Err(error) => {
                checker.error(span.start, error.to_string());
                None
            }
        });
    let wit = checker
        .string(plugin, "wit", true)
        .and_then(|(text, span)| {
            if SUPPORTED_WIT_VERSIONS.contains(&text) {
                Version::parse(text).ok()
            } else {
                checker.error(
                    span.start,
                    format!(
                        "unsupported WIT version `{text}`: this registry accepts components \
                         built against postdog:plugin@{}",
                        SUPPORTED_WIT_VERSIONS.join(", postdog:plugin@")
                    ),
                );
                None
            }
        });
    let description = checker
        .string(plugin, "description", true)
        .and_then(|(text, span)| {
            let length = text.chars().count();
            if text.trim().is_empty() {
                checker.error(
                    span.start,
                    "`description` is empty; say in a sentence what the plugin does",
                );
                None
            } else if length > MAX_DESCRIPTION_CHARS {
                checker.error(
                    span.start,
                    format!(
                        "`description` has {length} characters; shorten it to at most \
                         {MAX_DESCRIPTION_CHARS}"
                    ),
                );
                None
            } else {
                Some(text.to_string())
            }
        });
    let categories = list_field(checker, plugin, "categories", |text| {
        text.parse::<Category>()
    });
    let capabilities = list_field(checker, plugin, "capabilities", |text| {
        text.parse::<Capability>()
    });
    let icon = url_field(checker, plugin, "icon", &["https"]);
    let homepage = url_field(checker, plugin, "homepage", &["http", "https"]);
    let min_host_version = semver_field(checker, plugin, "min_host_version", false);
    Some(PluginFields {
        name: name?,
        version: version??,
        world: world?,
        wit: wit?,
        description: description?,
        categories: categories?,
        icon: icon?,
        homepage: homepage?,
        min_host_version: min_host_version?,
        capabilities: capabilities?,
    })
}

/// A semver string field; `Some(None)` when absent and optional, `None` on a mistake.
fn semver_field(
    checker: &mut Checker<'_>,
    table: &TableView<'_, '_>,
    key: &str,
    required: bool,
) -> Option<Option<Version>> {
    let missing = table.get(key).is_none();
    if missing && !required {
        return Some(None);
    }
    let (text, span) = checker.string(table, key, required)?;
    match Version::parse(text) {
        Ok(version) => Some(Some(version)),
        Err(error) => {
            checker.error(
                span.start,
                format!(
                    "`{text}` is not a semantic version: write MAJOR.MINOR.PATCH, e.g. `1.2.0` \
                     ({error})"
                ),
            );
            None
        }
    }
}

/// An optional array of strings parsed one by one, refusing duplicates.
fn list_field<T: PartialEq, E: fmt::Display>(
    checker: &mut Checker<'_>,
    table: &TableView<'_, '_>,
    key: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Option<Vec<T>> {
    if table.get(key).is_none() {
        return Some(Vec::new());
    }
    let errors_before = checker.error_count();
    let texts = checker.string_array(table, key, false)?;
    let mut items = Vec::with_capacity(texts.len());
    for (text, span) in texts {
        match parse(text) {
            Ok(item) if items.contains(&item) => {
                checker.error(span.start, format!("`{text}` is listed twice in `{key}`"));
            }
            Ok(item) => items.push(item),
            Err(error) => checker.error(span.start, error.to_string()),
        }
    }
    (checker.error_count() == errors_before).then_some(items)
}

/// An optional URL field with one of `schemes`; `Some(None)` when absent.
fn url_field(
    checker: &mut Checker<'_>,
    table: &TableView<'_, '_>,
    key: &str,
    schemes: &[&str],
) -> Option<Option<Url>> {
    if table.get(key).is_none() {
        return Some(None);
    }
    let (text, span) = checker.string(table, key, false)?;
    let wanted = schemes.join(" or ");
    match Url::parse(text) {
        Ok(url) if schemes.contains(&url.scheme()) && url.host().is_some() => Some(Some(url)),
        Ok(url) => {
            checker.error(
                span.start,
                format!(
                    "`{key}` must be an {wanted} URL with a host, e.g. `https://example.com/…`; \
                     `{}` URLs are not accepted",
                    url.scheme()
                ),
            );
            None
        }
        Err(error) => {
            checker.error(
                span.start,
                format!("`{key}` is not a valid URL ({error}); write e.g. `https://example.com/…`"),
            );
            None
        }
    }
}

fn parse_limits(checker: &mut Checker<'_>, limits: &TableView<'_, '_>) -> Limits {
    checker.unknown_keys(limits, &["memory_mb", "timeout_ms"], "key");
    let mut bounded = |key: &str, range: std::ops::RangeInclusive<u32>, unit: &str| {
        let (value, span) = checker.integer(limits, key, false)?;
        match u32::try_from(value) {
            Ok(value) if range.contains(&value) => Some(value),
            _ => {
                checker.error(
                    span.start,
                    format!(
                        "`{key}` must be between {} and {} {unit}, not {value}",
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
        }
    };
    Limits {
        memory_mb: bounded("memory_mb", MEMORY_MB_RANGE, "MiB"),
        timeout_ms: bounded("timeout_ms", TIMEOUT_MS_RANGE, "ms"),
    }
}

/// One mistake in a manifest, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{MANIFEST_FILE_NAME}:{}:{}: {}",
            self.line, self.column, self.message
        )
    }
}

/// Every mistake found in a manifest, in the order they appear; displays one
/// `postdog-plugin.toml:LINE:COL: message` line per mistake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ManifestErrors {
    errors: Vec<ManifestError>,
}

impl ManifestErrors {
    /// Wraps a list of mistakes.
    pub fn new(errors: Vec<ManifestError>) -> Self {
        Self { errors }
    }

    /// The individual mistakes.
    pub fn errors(&self) -> &[ManifestError] {
        &self.errors
    }
}

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.errors.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

/// A plugin's full name, `publisher/name`, each part `[a-z0-9][a-z0-9-]{0,63}`.
///
/// The parts are safe as path components and URL segments, which the registry relies on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PluginName {
    full: String,
    slash: usize,
}

/// A plugin or publisher name that does not follow the rules; says what the rules are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{text}`: {rule}")]
pub struct InvalidName {
    what: &'static str,
    text: String,
    rule: &'static str,
}

impl PluginName {
    /// The publisher (`acme`).
    pub fn publisher(&self) -> &str {
        &self.full[..self.slash]
    }

    /// The name within the publisher (`order-notifier`).
    pub fn plugin(&self) -> &str {
        &self.full[self.slash + 1..]
    }

    /// `publisher/name`.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

/// Checks a publisher name (one part of a plugin name).
pub fn check_publisher(text: &str) -> Result<(), InvalidName> {
    if is_name_part(text) {
        Ok(())
    } else {
        Err(InvalidName {
            what: "publisher name",
            text: text.to_string(),
            rule: "use 1-64 characters of lowercase letters, digits and `-`, starting with a \
                   letter or digit",
        })
    }
}

fn is_name_part(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0] != b'-'
        && bytes
            .iter()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || *byte == b'-')
}

impl FromStr for PluginName {
    type Err = InvalidName;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |rule| InvalidName {
            what: "plugin name",
            text: text.to_string(),
            rule,
        };
        let Some((publisher, plugin)) = text.split_once('/') else {
            return Err(invalid(
                "write `publisher/name`, e.g. `acme/order-notifier`",
            ));
        };
        if is_name_part(publisher) && is_name_part(plugin) {
            Ok(PluginName {
                full: text.to_string(),
                slash: publisher.len(),
            })
        } else {
            Err(invalid(
                "write `publisher/name`, where each part is 1-64 characters of lowercase \
                 letters, digits and `-`, starting with a letter or digit",
            ))
        }
    }
}

impl fmt::Display for PluginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl Serialize for PluginName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for PluginName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Defines a closed set of names (worlds, categories) with parsing that suggests near
/// misses, `Display` and string serde.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$variant_meta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every value, in a fixed order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name as written in manifests.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|value| value.as_str() == text)
                    .ok_or_else(|| {
                        let names = $name::ALL.iter().map(|value| value.as_str());
                        UnknownName {
                            what: $what,
                            text: text.to_string(),
                            suggestion: suggest(text, names.clone()).map(str::to_string),
                            known: names.collect::<Vec<_>>().join(", "),
                        }
                    })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

named_enum! {
    /// The kinds of plugin, one WIT world each.
    World, "world" {
        /// `flow-action`: a step of automation flows.
        FlowAction = "flow-action",
        /// `messaging-channel`: a channel connector such as WhatsApp.
        MessagingChannel = "messaging-channel",
        /// `social-channel`: a social network connector.
        SocialChannel = "social-channel",
        /// `integration`: an integration with another business system.
        Integration = "integration",
    }
}

named_enum! {
    /// Marketplace categories.
    Category, "category" {
        /// Messaging channels and tools.
        Messaging = "messaging",
        /// Social networks.
        Social = "social",
        /// Online shops.
        Ecommerce = "ecommerce",
        /// Customer relationship management.
        Crm = "crm",
        /// Campaigns and marketing automation.
        Marketing = "marketing",
        /// General-purpose helpers.
        Utility = "utility",
        /// AI models and assistants.
        Ai = "ai",
        /// Reporting and analytics.
        Analytics = "analytics",
        /// Tools for developers.
        Developer = "developer",
    }
}

/// A world or category name that PostDog does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownName {
    what: &'static str,
    text: String,
    suggestion: Option<String>,
    known: String,
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} `{}`; ", self.what, self.text)?;
        match &self.suggestion {
            Some(near) => write!(f, "did you mean `{near}`?"),
            None => write!(f, "use one of: {}", self.known),
        }
    }
}

impl std::error::Error for UnknownName {}
