//! The `[config]` table of a manifest: which configuration keys an install of the plugin
//! takes, their types and constraints, and which of them are secrets. It is a documented
//! subset of JSON Schema written in TOML; anything outside the subset is refused when the
//! manifest is parsed, so a schema that the registry accepts is one the host can enforce.
//!
//! Supported, at the top of `[config]`:
//! - `type` — `"object"` (optional, it is the only choice);
//! - `properties` — one table per key;
//! - `required` — keys that must be set, each naming a property;
//! - `additionalProperties` — `true` to accept keys the schema does not name. **Unlike
//!   JSON Schema the default is `false`**, so a misspelt key is refused instead of being
//!   silently ignored ([`ConfigSchema::to_json_schema`] always writes it out explicitly).
//!
//! Per property: `type` (`string`, `number`, `integer`, `boolean`, `array`, `object`;
//! required), `title`, `description`, `default` (must satisfy the property itself),
//! `enum`, `minimum`/`maximum` (numbers), `minLength`/`maxLength` (strings, in
//! characters), `pattern` (strings; a [`regex`] searched anywhere in the value, as in JSON
//! Schema), `format` (strings: `uri`, `email`, `hostname`), `items` (arrays: the schema of
//! every element, same keywords minus `default` and `secret`), and the PostDog extension
//! `secret = true` (strings only): the value is stored encrypted and never returned by the
//! API. An `object` property accepts any JSON object.
//!
//! A manifest without `[config]` has an empty schema: no keys at all are accepted.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use toml::de::DeValue;

use crate::capability::check_hostname;
use crate::manifest::checker::{Checker, Node, TableView, suggest, type_name};

/// Schema keywords accepted at the top of `[config]`.
const TOP_KEYWORDS: [&str; 4] = ["type", "properties", "required", "additionalProperties"];
/// Schema keywords accepted on a property.
const PROPERTY_KEYWORDS: [&str; 13] = [
    "type",
    "title",
    "description",
    "default",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "items",
    "secret",
];
/// Schema keywords accepted on the `items` of an array property.
const ITEM_KEYWORDS: [&str; 11] = [
    "type",
    "title",
    "description",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "items",
];
/// Longest configuration key name.
const MAX_KEY_LENGTH: usize = 64;
/// Compiled-size cap for `pattern`s, which come from untrusted manifests.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// The configuration schema of a plugin (see the module docs for the supported subset).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfigSchema {
    properties: BTreeMap<String, PropertySchema>,
    required: Vec<String>,
    additional_properties: bool,
}

/// The schema of one configuration key (or of the elements of an array key).
#[derive(Debug, Clone, PartialEq)]
pub struct PropertySchema {
    /// The JSON type the value must have.
    pub value_type: ValueType,
    /// A short human title.
    pub title: Option<String>,
    /// What the key is for.
    pub description: Option<String>,
    /// The value used when the key is not set; it satisfies this schema.
    pub default: Option<Value>,
    /// The only values allowed, when set.
    pub allowed_values: Option<Vec<Value>>,
    /// Smallest allowed number (inclusive).
    pub minimum: Option<f64>,
    /// Largest allowed number (inclusive).
    pub maximum: Option<f64>,
    /// Fewest characters a string may have.
    pub min_length: Option<u64>,
    /// Most characters a string may have.
    pub max_length: Option<u64>,
    /// A regular expression a string must contain a match of.
    pub pattern: Option<Pattern>,
    /// A well-known string format the value must have.
    pub format: Option<StringFormat>,
    /// The schema of every element of an array.
    pub items: Option<Box<PropertySchema>>,
    /// Whether the value is a secret: stored encrypted, never returned.
    pub secret: bool,
}

/// The JSON types a configuration value can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// A JSON string.
    String,
    /// Any JSON number.
    Number,
    /// A JSON number without a fractional part.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A JSON array.
    Array,
    /// A JSON object (free-form).
    Object,
}

impl ValueType {
    const ALL: [ValueType; 6] = [
        ValueType::String,
        ValueType::Number,
        ValueType::Integer,
        ValueType::Boolean,
        ValueType::Array,
        ValueType::Object,
    ];

    /// The JSON Schema name of the type.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Number => "number",
            ValueType::Integer => "integer",
            ValueType::Boolean => "boolean",
            ValueType::Array => "array",
            ValueType::Object => "object",
        }
    }

    fn described(self) -> &'static str {
        match self {
            ValueType::String => "a string",
            ValueType::Number => "a number",
            ValueType::Integer => "an integer",
            ValueType::Boolean => "`true` or `false`",
            ValueType::Array => "an array",
            ValueType::Object => "an object",
        }
    }

    fn matches(self, value: &Value) -> bool {
        match self {
            ValueType::String => value.is_string(),
            ValueType::Number => value.is_number(),
            ValueType::Integer => match value {
                Value::Number(number) => {
                    number.is_i64()
                        || number.is_u64()
                        || number.as_f64().is_some_and(|float| float.fract() == 0.0)
                }
                _ => false,
            },
            ValueType::Boolean => value.is_boolean(),
            ValueType::Array => value.is_array(),
            ValueType::Object => value.is_object(),
        }
    }
}

/// The string formats a property may require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StringFormat {
    /// `uri`: an absolute URI with a scheme, such as `https://example.com/hook`.
    Uri,
    /// `email`: an address such as `ops@example.com`.
    Email,
    /// `hostname`: a DNS host name such as `api.example.com`.
    Hostname,
}

impl StringFormat {
    const ALL: [StringFormat; 3] = [
        StringFormat::Uri,
        StringFormat::Email,
        StringFormat::Hostname,
    ];

    /// The JSON Schema name of the format.
    pub fn name(self) -> &'static str {
        match self {
            StringFormat::Uri => "uri",
            StringFormat::Email => "email",
            StringFormat::Hostname => "hostname",
        }
    }

    fn accepts(self, text: &str) -> bool {
        match self {
            StringFormat::Uri => url::Url::parse(text).is_ok(),
            StringFormat::Email => is_email(text),
            StringFormat::Hostname => check_hostname(text).is_ok(),
        }
    }

    fn described(self) -> &'static str {
        match self {
            StringFormat::Uri => "a URI (such as https://example.com/path)",
            StringFormat::Email => "an email address (such as ops@example.com)",
            StringFormat::Hostname => "a host name (such as api.example.com)",
        }
    }
}

fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !local
            .chars()
            .any(|c| c.is_whitespace() || c == '@' || c.is_control())
        && domain.contains('.')
        && check_hostname(domain).is_ok()
}

/// A compiled `pattern`, compared by its source text.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl Pattern {
    /// Compiles `source`; the error is a one-line reason.
    pub fn new(source: &str) -> Result<Self, String> {
        regex::RegexBuilder::new(source)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map(|regex| Self {
                source: source.to_string(),
                regex,
            })
            .map_err(|error| one_line_regex_error(&error))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `text` contains a match.
    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

fn one_line_regex_error(error: &regex::Error) -> String {
    match error {
        regex::Error::Syntax(text) => text
            .lines()
            .find_map(|line| line.strip_prefix("error: "))
            .unwrap_or("invalid syntax")
            .to_string(),
        regex::Error::CompiledTooBig(_) => "the pattern is too large".to_string(),
        other => other.to_string(),
    }
}

/// One reason a set of configuration values does not satisfy a schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigError {
    /// The top-level configuration key concerned.
    pub key: String,
    /// What is wrong, naming the key, e.g. "`api_url` must be a URI (…)".
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl ConfigSchema {
    /// The properties by key.
    pub fn properties(&self) -> &BTreeMap<String, PropertySchema> {
        &self.properties
    }

    /// The schema of one key.
    pub fn property(&self, key: &str) -> Option<&PropertySchema> {
        self.properties.get(key)
    }

    /// The keys that must be set.
    pub fn required(&self) -> &[String] {
        &self.required
    }

    /// Whether keys the schema does not name are accepted.
    pub fn additional_properties(&self) -> bool {
        self.additional_properties
    }

    /// The keys whose values are secrets, in key order.
    pub fn secret_keys(&self) -> Vec<&str> {
        self.properties
            .iter()
            .filter(|(_, property)| property.secret)
            .map(|(key, _)| key.as_str())
            .collect()
    }

    /// Checks an install's configuration; every problem found is returned, one per key.
    ///
    /// ```
    /// use postdog_registry::Manifest;
    /// let manifest = Manifest::parse(r#"
    /// [plugin]
    /// name = "acme/notifier"
    /// version = "1.0.0"
    /// world = "flow-action"
    /// wit = "0.1.0"
    /// description = "Notifies"
    /// [config]
    /// required = ["api_url"]
    /// [config.properties.api_url]
    /// type = "string"
    /// format = "uri"
    /// "#).unwrap();
    /// let values = serde_json::json!({"api_url": "not a url"});
    /// let errors = manifest.config.validate(values.as_object().unwrap()).unwrap_err();
    /// assert!(errors[0].message.starts_with("`api_url` must be a URI"));
    /// ```
    pub fn validate(&self, values: &Map<String, Value>) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        for (key, value) in values {
            match self.properties.get(key) {
                Some(property) => {
                    if let Err(message) = property.check(key, value) {
                        errors.push(ConfigError {
                            key: key.clone(),
                            message,
                        });
                    }
                }
                None if self.additional_properties => {}
                None => {
                    let message = if self.properties.is_empty() {
                        format!("unknown key `{key}`; this plugin takes no configuration")
                    } else {
                        let known: Vec<&str> = self.properties.keys().map(String::as_str).collect();
                        match suggest(key, known.iter().copied()) {
                            Some(near) => format!(
                                "unknown key `{key}`; did you mean `{near}`? This plugin's \
                                 config has: {}",
                                known.join(", ")
                            ),
                            None => format!(
                                "unknown key `{key}`; this plugin's config has: {}",
                                known.join(", ")
                            ),
                        }
                    };
                    errors.push(ConfigError {
                        key: key.clone(),
                        message,
                    });
                }
            }
        }
        for key in &self.required {
            if !values.contains_key(key) {
                errors.push(ConfigError {
                    key: key.clone(),
                    message: format!("missing required key `{key}`"),
                });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// `values` with the default of every unset key that has one filled in.
    pub fn with_defaults(&self, values: &Map<String, Value>) -> Map<String, Value> {
        let mut filled = values.clone();
        for (key, property) in &self.properties {
            if let Some(default) = &property.default {
                filled.entry(key.clone()).or_insert_with(|| default.clone());
            }
        }
        filled
    }

    /// The schema as standard JSON Schema (draft 2020-12). `additionalProperties` is
    /// always written out; a secret property carries `"writeOnly": true` (the standard
    /// keyword for "accepted but never returned") and the extension `"x-secret": true`.
    pub fn to_json_schema(&self) -> Value {
        let properties: Map<String, Value> = self
            .properties
            .iter()
            .map(|(key, property)| (key.clone(), property.to_json_schema()))
            .collect();
        let mut schema = Map::new();
        schema.insert(
            "$schema".into(),
            "https://json-schema.org/draft/2020-12/schema".into(),
        );
        schema.insert("type".into(), "object".into());
        schema.insert("properties".into(), Value::Object(properties));
        if !self.required.is_empty() {
            schema.insert("required".into(), self.required.clone().into());
        }
        schema.insert(
            "additionalProperties".into(),
            self.additional_properties.into(),
        );
        Value::Object(schema)
    }

    /// Reads `[config]`, recording every mistake; `None` when there was one.
    pub(crate) fn from_toml(checker: &mut Checker<'_>, view: &TableView<'_, '_>) -> Option<Self> {
        let errors_before = checker.error_count();
        checker.unknown_keys(view, &TOP_KEYWORDS, "schema keyword");
        if let Some((value_type, span)) = checker.string(view, "type", false)
            && value_type != "object"
        {
            checker.error(
                span.start,
                format!(
                    "the `type` of [config] must be \"object\" (a configuration is a set of \
                     named keys), not \"{value_type}\""
                ),
            );
        }
        let mut properties = BTreeMap::new();
        if let Some(table) = checker.table(view, "properties", false, "[config.properties]".into())
        {
            for (key, node) in table.table.iter() {
                let key_text: &str = key.get_ref();
                if let Err(why) = check_key_name(key_text) {
                    checker.error(key.span().start, why);
                    continue;
                }
                let label = format!("[config.properties.{key_text}]");
                let DeValue::Table(property_table) = node.get_ref() else {
                    checker.error(
                        node.span().start,
                        format!(
                            "property `{key_text}` must be a table such as `{label}` with at \
                             least a `type`, found {}",
                            type_name(node.get_ref())
                        ),
                    );
                    continue;
                };
                let property_view = TableView {
                    table: property_table,
                    span: node.span(),
                    label,
                };
                if let Some(property) =
                    PropertySchema::from_toml(checker, key_text, &property_view, false)
                {
                    properties.insert(key_text.to_string(), property);
                }
            }
        }
        let mut required = Vec::new();
        if let Some(names) = checker.string_array(view, "required", false) {
            let all_properties: Vec<&str> = view
                .get("properties")
                .and_then(|node| match node.get_ref() {
                    DeValue::Table(table) => {
                        Some(table.keys().map(|key| -> &str { key.get_ref() }).collect())
                    }
                    _ => None,
                })
                .unwrap_or_default();
            for (name, span) in names {
                if required.iter().any(|known: &String| known == name) {
                    checker.error(
                        span.start,
                        format!("`{name}` is listed twice in `required`"),
                    );
                } else if !all_properties.contains(&name) {
                    let hint = match suggest(name, all_properties.iter().copied()) {
                        Some(near) => format!("did you mean `{near}`?"),
                        None => format!("add a [config.properties.{name}] table"),
                    };
                    checker.error(
                        span.start,
                        format!("`required` names `{name}`, which is not a property; {hint}"),
                    );
                } else {
                    required.push(name.to_string());
                }
            }
        }
        let additional_properties = checker
            .boolean(view, "additionalProperties", false)
            .is_some_and(|(value, _)| value);
        (checker.error_count() == errors_before).then_some(ConfigSchema {
            properties,
            required,
            additional_properties,
        })
    }
}

/// Configuration keys are identifiers, so they read the same in TOML, JSON and the
/// `config.get` host call.
fn check_key_name(key: &str) -> Result<(), String> {
    let valid_start = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let valid_rest = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid_start && valid_rest && key.len() <= MAX_KEY_LENGTH {
        Ok(())
    } else {
        Err(format!(
            "invalid configuration key `{key}`: use 1-{MAX_KEY_LENGTH} letters, digits, `_` \
             and `-`, starting with a letter or `_`"
        ))
    }
}

impl PropertySchema {
    /// Checks one value, `path` naming it in the message (`api_url`, `tags[2]`).
    pub fn check(&self, path: &str, value: &Value) -> Result<(), String> {
        if !self.value_type.matches(value) {
            return Err(format!(
                "`{path}` must be {}, found {}",
                self.value_type.described(),
                json_type_name(value)
            ));
        }
        if let Some(allowed) = &self.allowed_values
            && !allowed.contains(value)
        {
            let listed: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return Err(format!("`{path}` must be one of: {}", listed.join(", ")));
        }
        if let Some(number) = value.as_f64() {
            if let Some(minimum) = self.minimum
                && number < minimum
            {
                return Err(format!("`{path}` must be at least {minimum}"));
            }
            if let Some(maximum) = self.maximum
                && number > maximum
            {
                return Err(format!("`{path}` must be at most {maximum}"));
            }
        }
        if let Some(text) = value.as_str() {
            let length = text.chars().count() as u64;
            if let Some(min_length) = self.min_length
                && length < min_length
            {
                return Err(format!(
                    "`{path}` must be at least {min_length} characters long"
                ));
            }
            if let Some(max_length) = self.max_length
                && length > max_length
            {
                return Err(format!(
                    "`{path}` must be at most {max_length} characters long"
                ));
            }
            if let Some(pattern) = &self.pattern
                && !pattern.is_match(text)
            {
                return Err(format!(
                    "`{path}` must match the pattern `{}`",
                    pattern.as_str()
                ));
            }
            if let Some(format) = self.format
                && !format.accepts(text)
            {
                return Err(format!("`{path}` must be {}", format.described()));
            }
        }
        if let (Some(items), Some(elements)) = (&self.items, value.as_array()) {
            for (index, element) in elements.iter().enumerate() {
                items.check(&format!("{path}[{index}]"), element)?;
            }
        }
        Ok(())
    }

    /// The property as standard JSON Schema (see [`ConfigSchema::to_json_schema`]).
    pub fn to_json_schema(&self) -> Value {
        let mut schema = Map::new();
        schema.insert("type".into(), self.value_type.name().into());
        if let Some(title) = &self.title {
            schema.insert("title".into(), title.clone().into());
        }
        if let Some(description) = &self.description {
            schema.insert("description".into(), description.clone().into());
        }
        if let Some(default) = &self.default {
            schema.insert("default".into(), default.clone());
        }
        if let Some(allowed) = &self.allowed_values {
            schema.insert("enum".into(), Value::Array(allowed.clone()));
        }
        if let Some(minimum) = self.minimum {
            schema.insert("minimum".into(), json_number(minimum));
        }
        if let Some(maximum) = self.maximum {
            schema.insert("maximum".into(), json_number(maximum));
        }
        if let Some(min_length) = self.min_length {
            schema.insert("minLength".into(), min_length.into());
        }
        if let Some(max_length) = self.max_length {
            schema.insert("maxLength".into(), max_length.into());
        }
        if let Some(pattern) = &self.pattern {
            schema.insert("pattern".into(), pattern.as_str().into());
        }
        if let Some(format) = self.format {
            schema.insert("format".into(), format.name().into());
        }
        if let Some(items) = &self.items {
            schema.insert("items".into(), items.to_json_schema());
        }
        if self.secret {
            schema.insert("writeOnly".into(), true.into());
            schema.insert("x-secret".into(), true.into());
        }
        Value::Object(schema)
    }

    /// Reads one property table (`in_items`: the `items` of an array), recording every
    /// mistake; `None` when there was one.
    fn from_toml(
        checker: &mut Checker<'_>,
        path: &str,
        view: &TableView<'_, '_>,
        in_items: bool,
    ) -> Option<Self> {
        let errors_before = checker.error_count();
        let keywords: &[&str] = if in_items {
            &ITEM_KEYWORDS
        } else {
            &PROPERTY_KEYWORDS
        };
        checker.unknown_keys(view, keywords, "schema keyword");

        let value_type = checker.string(view, "type", true).and_then(|(name, span)| {
            let found = ValueType::ALL.into_iter().find(|kind| kind.name() == name);
            if found.is_none() {
                let names = ValueType::ALL.map(ValueType::name);
                let hint = match suggest(name, names.into_iter()) {
                    Some(near) => format!("did you mean \"{near}\"?"),
                    None => format!("use one of: {}", names.join(", ")),
                };
                checker.error(
                    span.start,
                    format!("unknown type \"{name}\" for `{path}`; {hint}"),
                );
            }
            found
        });

        // Which keywords apply to which types; a keyword on the wrong type is a mistake
        // (JSON Schema would silently ignore it).
        let applies = |keyword: &str| -> Option<&'static str> {
            let kind = value_type?;
            let fits = match keyword {
                "minimum" | "maximum" => matches!(kind, ValueType::Number | ValueType::Integer),
                "minLength" | "maxLength" | "pattern" | "format" | "secret" => {
                    kind == ValueType::String
                }
                "items" => kind == ValueType::Array,
                _ => true,
            };
            (!fits).then_some(match keyword {
                "minimum" | "maximum" => "number and integer",
                "items" => "array",
                _ => "string",
            })
        };
        for (key, node) in view.table.iter() {
            let keyword: &str = key.get_ref();
            if let (Some(kinds), Some(kind)) = (applies(keyword), value_type) {
                checker.error(
                    node.span().start,
                    format!(
                        "`{keyword}` applies to {kinds} properties only, and `{path}` is of \
                         type \"{}\"",
                        kind.name()
                    ),
                );
            }
        }

        let title = checker
            .string(view, "title", false)
            .map(|(text, _)| text.to_string());
        let description = checker
            .string(view, "description", false)
            .map(|(text, _)| text.to_string());
        let minimum = number(checker, view, "minimum");
        let maximum = number(checker, view, "maximum");
        if let (Some(minimum), Some(maximum)) = (minimum, maximum)
            && minimum > maximum
            && let Some(node) = view.get("minimum")
        {
            checker.error(
                node.span().start,
                format!(
                    "`minimum` ({minimum}) of `{path}` is greater than its `maximum` ({maximum})"
                ),
            );
        }
        let min_length = length(checker, view, "minLength");
        let max_length = length(checker, view, "maxLength");
        if let (Some(min_length), Some(max_length)) = (min_length, max_length)
            && min_length > max_length
            && let Some(node) = view.get("minLength")
        {
            checker.error(
                node.span().start,
                format!(
                    "`minLength` ({min_length}) of `{path}` is greater than its `maxLength` \
                     ({max_length})"
                ),
            );
        }
        let pattern = checker
            .string(view, "pattern", false)
            .and_then(|(source, span)| match Pattern::new(source) {
                Ok(pattern) => Some(pattern),
                Err(why) => {
                    checker.error(
                        span.start,
                        format!("`pattern` of `{path}` is not a valid regular expression: {why}"),
                    );
                    None
                }
            });
        let format = checker
            .string(view, "format", false)
            .and_then(|(name, span)| {
                let found = StringFormat::ALL
                    .into_iter()
                    .find(|format| format.name() == name);
                if found.is_none() {
                    checker.error(
                        span.start,
                        format!(
                            "unsupported format \"{name}\" for `{path}`; use \"uri\", \"email\" \
                             or \"hostname\", or a `pattern`"
                        ),
                    );
                }
                found
            });
        let secret = checker
            .boolean(view, "secret", false)
            .is_some_and(|(secret, _)| secret);
        let items = checker
            .table(view, "items", false, format!("the `items` of `{path}`"))
            .and_then(|items_view| {
                PropertySchema::from_toml(checker, &format!("{path}[]"), &items_view, true)
            })
            .map(Box::new);

        let mut property = PropertySchema {
            // Placeholder when the type was wrong; the property is dropped below anyway.
            value_type: value_type.unwrap_or(ValueType::Object),
            title,
            description,
            default: None,
            allowed_values: None,
            minimum,
            maximum,
            min_length,
            max_length,
            pattern,
            format,
            items,
            secret,
        };
        let constraints_ok = checker.error_count() == errors_before;

        if let Some(node) = view.get("enum") {
            match node.get_ref() {
                DeValue::Array(members) if !members.is_empty() => {
                    let mut allowed = Vec::with_capacity(members.len());
                    for member in members.iter() {
                        match to_json(member) {
                            Ok(value) => {
                                // With other mistakes in the property, check the type only.
                                let fits = if constraints_ok {
                                    property.check(path, &value)
                                } else {
                                    match value_type {
                                        Some(kind) if !kind.matches(&value) => Err(format!(
                                            "`{path}` must be {}, found {}",
                                            kind.described(),
                                            json_type_name(&value)
                                        )),
                                        _ => Ok(()),
                                    }
                                };
                                if let Err(why) = fits {
                                    checker.error(
                                        member.span().start,
                                        format!(
                                            "this `enum` value does not fit its property: {why}"
                                        ),
                                    );
                                }
                                allowed.push(value);
                            }
                            Err((offset, why)) => checker.error(offset, why),
                        }
                    }
                    property.allowed_values = Some(allowed);
                }
                DeValue::Array(_) => checker.error(
                    node.span().start,
                    format!("`enum` of `{path}` is empty; list the allowed values or remove it"),
                ),
                other => checker.error(
                    node.span().start,
                    format!(
                        "`enum` of `{path}` must be an array of values, found {}",
                        type_name(other)
                    ),
                ),
            }
        }
        if let Some(node) = view.get("default") {
            if property.secret {
                checker.error(
                    node.span().start,
                    format!(
                        "`{path}` is a secret and cannot have a `default` (a manifest is public)"
                    ),
                );
            }
            match to_json(node) {
                Ok(value) => {
                    if checker.error_count() == errors_before
                        && let Err(why) = property.check(path, &value)
                    {
                        checker.error(
                            node.span().start,
                            format!("`default` does not fit its own property: {why}"),
                        );
                    }
                    property.default = Some(value);
                }
                Err((offset, why)) => checker.error(offset, why),
            }
        }
        (checker.error_count() == errors_before).then_some(property)
    }
}

/// A `minimum`/`maximum`: an integer or a finite float.
fn number(checker: &mut Checker<'_>, view: &TableView<'_, '_>, key: &str) -> Option<f64> {
    let node = view.get(key)?;
    match to_json(node) {
        Ok(Value::Number(number)) => number.as_f64(),
        Ok(_) => {
            checker.error(
                node.span().start,
                format!(
                    "`{key}` in {} must be a number, found {}",
                    view.label,
                    type_name(node.get_ref())
                ),
            );
            None
        }
        Err((offset, why)) => {
            checker.error(offset, why);
            None
        }
    }
}

/// A `minLength`/`maxLength`: a non-negative integer.
fn length(checker: &mut Checker<'_>, view: &TableView<'_, '_>, key: &str) -> Option<u64> {
    let (value, span) = checker.integer(view, key, false)?;
    match u64::try_from(value) {
        Ok(length) => Some(length),
        Err(_) => {
            checker.error(
                span.start,
                format!("`{key}` in {} cannot be negative", view.label),
            );
            None
        }
    }
}

/// A TOML value as JSON (for `default` and `enum`); date-times and non-finite floats have
/// no JSON form.
fn to_json(node: &Node<'_>) -> Result<Value, (usize, String)> {
    let at = node.span().start;
    Ok(match node.get_ref() {
        DeValue::String(text) => Value::String(text.to_string()),
        DeValue::Integer(integer) => i64::from_str_radix(integer.as_str(), integer.radix())
            .map(Value::from)
            .map_err(|_| (at, "this integer is too large".to_string()))?,
        DeValue::Float(float) => float
            .as_str()
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .ok_or((
                at,
                "`inf` and `nan` are not valid configuration values".to_string(),
            ))?,
        DeValue::Boolean(value) => Value::Bool(*value),
        DeValue::Datetime(_) => {
            return Err((
                at,
                "date-times are not configuration values; write the date as a string".to_string(),
            ));
        }
        DeValue::Array(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        DeValue::Table(table) => Value::Object(
            table
                .iter()
                .map(|(key, value)| Ok((key.get_ref().to_string(), to_json(value)?)))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// A bound as a JSON number: integral values as integers, so `1` does not become `1.0`.
fn json_number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        // In range and integral, so the conversion is exact.
        Value::from(value as i64)
    } else {
        Number::from_f64(value).map_or(Value::Null, Value::Number)
    }
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(number) if number.is_f64() => "a number with a fraction",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
