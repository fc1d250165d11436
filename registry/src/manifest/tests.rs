//! Manifest parsing: the full format, and the line, column and message of every kind of
//! mistake.

use serde_json::json;

use super::*;
use crate::config_schema::{StringFormat, ValueType};

const FULL: &str = r#"[plugin]
name = "acme/order-notifier"
version = "1.2.0"
world = "flow-action"
wit = "0.1.0"
description = "Sends order notifications"
categories = ["ecommerce"]
icon = "https://example.com/icon.svg"
homepage = "https://example.com"
min_host_version = "0.1.0"
capabilities = ["kv", "http:api.example.com", "http:*.myshopify.com", "contacts:read", "contacts:write", "webhook"]

[limits]
memory_mb = 64
timeout_ms = 5000

[config]
type = "object"
required = ["api_url"]
[config.properties.api_url]
type = "string"
format = "uri"
description = "Where to send notifications"
[config.properties.api_token]
type = "string"
secret = true
"#;

fn errors_of(text: &str) -> Vec<(usize, usize, String)> {
    match Manifest::parse(text) {
        Ok(manifest) => panic!("expected errors, parsed {manifest:?}"),
        Err(errors) => errors
            .errors()
            .iter()
            .map(|error| (error.line, error.column, error.message.clone()))
            .collect(),
    }
}

/// Asserts the errors are exactly at `expected` positions, in order, each message
/// containing its fragment.
fn assert_errors(text: &str, expected: &[(usize, usize, &str)]) {
    let found = errors_of(text);
    let listing = found
        .iter()
        .map(|(line, column, message)| format!("{line}:{column}: {message}"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(found.len(), expected.len(), "found:\n{listing}");
    for ((line, column, message), (want_line, want_column, fragment)) in found.iter().zip(expected)
    {
        assert_eq!(
            (*line, *column),
            (*want_line, *want_column),
            "`{fragment}` in:\n{listing}"
        );
        assert!(
            message.contains(fragment),
            "`{fragment}` not in `{message}`"
        );
    }
}

#[test]
fn the_full_format_parses() -> Result<(), ManifestErrors> {
    let manifest = Manifest::parse(FULL)?;
    assert_eq!(manifest.name.as_str(), "acme/order-notifier");
    assert_eq!(manifest.publisher(), "acme");
    assert_eq!(manifest.name.plugin(), "order-notifier");
    assert_eq!(manifest.version, Version::new(1, 2, 0));
    assert_eq!(manifest.world, World::FlowAction);
    assert_eq!(manifest.wit, Version::new(0, 1, 0));
    assert_eq!(manifest.description, "Sends order notifications");
    assert_eq!(manifest.categories, vec![Category::Ecommerce]);
    assert_eq!(
        manifest.icon.as_ref().map(Url::as_str),
        Some("https://example.com/icon.svg")
    );
    assert_eq!(
        manifest.homepage.as_ref().map(Url::as_str),
        Some("https://example.com/")
    );
    assert_eq!(manifest.min_host_version, Some(Version::new(0, 1, 0)));
    assert_eq!(
        manifest.capabilities,
        vec![
            Capability::Kv,
            Capability::Http("api.example.com".into()),
            Capability::Http("*.myshopify.com".into()),
            Capability::ContactsRead,
            Capability::ContactsWrite,
            Capability::Webhook,
        ]
    );
    assert_eq!(
        manifest.limits,
        Limits {
            memory_mb: Some(64),
            timeout_ms: Some(5000)
        }
    );
    assert_eq!(manifest.config.required(), ["api_url".to_string()]);
    assert_eq!(manifest.config.secret_keys(), vec!["api_token"]);
    let api_url = manifest.config.property("api_url");
    assert_eq!(
        api_url.map(|property| property.value_type),
        Some(ValueType::String)
    );
    assert_eq!(
        api_url.and_then(|property| property.format),
        Some(StringFormat::Uri)
    );
    Ok(())
}

#[test]
fn a_minimal_manifest_has_empty_defaults() -> Result<(), ManifestErrors> {
    let manifest = Manifest::parse(
        "[plugin]\nname = \"a/b\"\nversion = \"0.1.0-beta.1\"\nworld = \"integration\"\nwit = \"0.1.0\"\ndescription = \"x\"\n",
    )?;
    assert!(manifest.categories.is_empty());
    assert!(manifest.capabilities.is_empty());
    assert_eq!(manifest.limits, Limits::default());
    assert!(manifest.config.properties().is_empty());
    assert!(!manifest.config.additional_properties());
    // An empty schema accepts no keys at all.
    let values = json!({"anything": 1});
    assert!(
        manifest
            .config
            .validate(values.as_object().unwrap())
            .is_err()
    );
    Ok(())
}

#[test]
fn every_mistake_is_reported_with_its_position() {
    let text = r#"[plugin]
name = "Acme/order notifier"
version = "1.2"
world = "flow_action"
wit = "0.2.0"
description = ""
categories = ["ecommerce", "shopping", "ecommerce"]
capabilities = ["kv", "http:https://x.com", "telepathy", "http:*.shop.com:443"]
icon = "http://example.com/icon.svg"
homepage = "not a url"
nmae = "x"
min_host_version = "latest"

[limits]
memory_mb = 1024
timeout_ms = 0
cpu = 1

[config]
required = ["api_url", "api_ulr"]
additionalProperties = "no"
[config.properties.api_url]
type = "strin"
[config.properties.port]
type = "integer"
minimum = 10
maximum = 1
minLength = 3
[config.properties.mode]
type = "string"
enum = ["a", "b", 3]
pattern = "(["
format = "url"
secret = "yes"
oneOf = []
[config.properties.level]
type = "integer"
default = 0
minimum = 1
"#;
    assert_errors(
        text,
        &[
            (
                2,
                8,
                "invalid plugin name `Acme/order notifier`: write `publisher/name`",
            ),
            (
                3,
                11,
                "`1.2` is not a semantic version: write MAJOR.MINOR.PATCH",
            ),
            (
                4,
                9,
                "unknown world `flow_action`; did you mean `flow-action`?",
            ),
            (5, 7, "unsupported WIT version `0.2.0`"),
            (6, 15, "`description` is empty"),
            (
                7,
                28,
                "unknown category `shopping`; use one of: messaging, social, ecommerce",
            ),
            (7, 40, "`ecommerce` is listed twice in `categories`"),
            (8, 23, "without a scheme"),
            (8, 45, "unknown capability `telepathy`"),
            (8, 58, "without a port"),
            (9, 8, "`icon` must be an https URL"),
            (10, 12, "`homepage` is not a valid URL"),
            (
                11,
                1,
                "unknown key `nmae` in [plugin]; did you mean `name`?",
            ),
            (12, 20, "`latest` is not a semantic version"),
            (
                15,
                13,
                "`memory_mb` must be between 1 and 512 MiB, not 1024",
            ),
            (16, 14, "`timeout_ms` must be between 1 and 60000 ms, not 0"),
            (17, 1, "unknown key `cpu` in [limits]"),
            (
                20,
                24,
                "`required` names `api_ulr`, which is not a property; did you mean `api_url`?",
            ),
            (
                21,
                24,
                "`additionalProperties` in [config] must be `true` or `false`, found a string",
            ),
            (
                23,
                8,
                "unknown type \"strin\" for `api_url`; did you mean \"string\"?",
            ),
            (
                26,
                11,
                "`minimum` (10) of `port` is greater than its `maximum` (1)",
            ),
            (
                28,
                13,
                "`minLength` applies to string properties only, and `port` is of type \"integer\"",
            ),
            (
                31,
                19,
                "this `enum` value does not fit its property: `mode` must be a string, found a number",
            ),
            (
                32,
                11,
                "`pattern` of `mode` is not a valid regular expression",
            ),
            (33, 10, "unsupported format \"url\" for `mode`; use \"uri\""),
            (
                34,
                10,
                "`secret` in [config.properties.mode] must be `true` or `false`, found a string",
            ),
            (
                35,
                1,
                "unknown schema keyword `oneOf` in [config.properties.mode]; allowed: type, title",
            ),
            (
                38,
                11,
                "`default` does not fit its own property: `level` must be at least 1",
            ),
        ],
    );
}

#[test]
fn missing_required_keys_point_at_their_table() {
    let text = "# a plugin\n\n[plugin]\nname = \"acme/x\"\nversion = \"1.0.0\"\n";
    assert_errors(
        text,
        &[
            (3, 1, "missing required key `world` in [plugin]"),
            (3, 1, "missing required key `wit` in [plugin]"),
            (3, 1, "missing required key `description` in [plugin]"),
        ],
    );
    assert_errors(
        "[limits]\nmemory_mb = 64\n",
        &[(1, 1, "missing required key `plugin` in the manifest")],
    );
    let property_without_type = format!(
        "{}\n[config.properties.x]\ndescription = \"no type\"\n",
        FULL.lines().take(6).collect::<Vec<_>>().join("\n")
    );
    assert_errors(
        &property_without_type,
        &[(7, 1, "missing required key `type` in [config.properties.x]")],
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    let text = "[plugin]\nname = 1\nversion = \"1.0.0\"\nworld = \"integration\"\nwit = \"0.1.0\"\ndescription = \"x\"\ncapabilities = \"kv\"\ncategories = [1, \"ai\"]\n[limits]\nmemory_mb = \"64\"\n";
    assert_errors(
        text,
        &[
            (
                2,
                8,
                "`name` in [plugin] must be a string, found an integer",
            ),
            (
                7,
                16,
                "`capabilities` in [plugin] must be an array of strings, found a string",
            ),
            (
                8,
                15,
                "`categories` in [plugin] must contain only strings, found an integer",
            ),
            (
                10,
                13,
                "`memory_mb` in [limits] must be an integer, found a string",
            ),
        ],
    );
}

#[test]
fn syntax_errors_are_reported_once_per_line() {
    let text = "[plugin]\nname = \"acme/x\nversion = \"1.0.0\"\n";
    let errors = errors_of(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].0, errors[0].1), (2, 15));
    assert!(errors[0].2.starts_with("invalid TOML"), "{}", errors[0].2);

    assert_errors(
        "[plugin]\nname = \"a/b\"\nname = \"a/c\"\n",
        &[(3, 1, "duplicate key `name`")],
    );
}

#[test]
fn descriptions_are_limited_to_280_characters() {
    let long = "é".repeat(281);
    let text = format!(
        "[plugin]\nname = \"a/b\"\nversion = \"1.0.0\"\nworld = \"integration\"\nwit = \"0.1.0\"\ndescription = \"{long}\"\n"
    );
    assert_errors(
        &text,
        &[(
            6,
            15,
            "`description` has 281 characters; shorten it to at most 280",
        )],
    );
    let fits = text.replacen(&long, &"é".repeat(280), 1);
    assert!(Manifest::parse(&fits).is_ok());
}

#[test]
fn errors_display_as_file_line_column_lines() {
    let Err(errors) = Manifest::parse("[plugin]\nname = \"a/b\"\n") else {
        panic!("parsed an incomplete manifest");
    };
    let text = errors.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(
        lines[0],
        "postdog-plugin.toml:1:1: missing required key `version` in [plugin]"
    );
}

#[test]
fn plugin_names_follow_the_rules() {
    for good in [
        "a/b",
        "acme/order-notifier",
        "0/0-",
        &format!("{}/x", "a".repeat(64)),
    ] {
        assert!(good.parse::<PluginName>().is_ok(), "{good}");
    }
    for bad in [
        "acme",
        "/b",
        "a/",
        "A/b",
        "a/b/c",
        "a/-b",
        "a_b/c",
        "a/b c",
        &format!("{}/x", "a".repeat(65)),
    ] {
        assert!(bad.parse::<PluginName>().is_err(), "{bad}");
    }
}

mod config_schema {
    use super::*;

    fn schema(config: &str) -> Result<ConfigSchema, ManifestErrors> {
        let text = format!(
            "[plugin]\nname = \"a/b\"\nversion = \"1.0.0\"\nworld = \"integration\"\nwit = \"0.1.0\"\ndescription = \"x\"\n{config}"
        );
        Ok(Manifest::parse(&text)?.config)
    }

    fn messages(schema: &ConfigSchema, values: serde_json::Value) -> Vec<String> {
        let empty = serde_json::Map::new();
        match schema.validate(values.as_object().unwrap_or(&empty)) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.into_iter().map(|error| error.message).collect(),
        }
    }

    const CONFIG: &str = r#"
[config]
required = ["api_url", "api_token"]
[config.properties.api_url]
type = "string"
format = "uri"
[config.properties.api_token]
type = "string"
secret = true
minLength = 8
[config.properties.email]
type = "string"
format = "email"
[config.properties.host]
type = "string"
format = "hostname"
[config.properties.retries]
type = "integer"
minimum = 0
maximum = 5
default = 3
[config.properties.ratio]
type = "number"
maximum = 1.5
[config.properties.mode]
type = "string"
enum = ["fast", "safe"]
[config.properties.sku]
type = "string"
pattern = "^[A-Z]{3}-[0-9]+$"
maxLength = 10
[config.properties.tags]
type = "array"
items = { type = "string", minLength = 1 }
[config.properties.enabled]
type = "boolean"
[config.properties.extra]
type = "object"
"#;

    #[test]
    fn good_values_pass() -> Result<(), ManifestErrors> {
        let schema = schema(CONFIG)?;
        let values = json!({
            "api_url": "https://hooks.example.com/orders",
            "api_token": "0123456789",
            "email": "ops@example.com",
            "host": "api.example.com",
            "retries": 5,
            "ratio": 1.25,
            "mode": "safe",
            "sku": "ABC-42",
            "tags": ["a", "b"],
            "enabled": false,
            "extra": {"anything": [1, 2]},
        });
        assert_eq!(messages(&schema, values), Vec::<String>::new());
        // 2.0 is an integer in JSON Schema.
        assert_eq!(
            messages(
                &schema,
                json!({"api_url": "https://x.io", "api_token": "abcdefgh", "retries": 2.0})
            ),
            Vec::<String>::new()
        );
        Ok(())
    }

    #[test]
    fn each_violation_names_the_key_and_the_rule() -> Result<(), ManifestErrors> {
        let schema = schema(CONFIG)?;
        let values = json!({
            "api_token": "short",
            "email": "not-an-email",
            "host": "bad_host!",
            "retries": 9,
            "ratio": "high",
            "mode": "turbo",
            "sku": "abc-1",
            "tags": ["ok", ""],
            "enabled": "yes",
            "api_urll": "https://x.io",
        });
        assert_eq!(
            messages(&schema, values),
            vec![
                "`api_token` must be at least 8 characters long",
                "unknown key `api_urll`; did you mean `api_url`? This plugin's config has: api_token, api_url, email, enabled, extra, host, mode, ratio, retries, sku, tags",
                "`email` must be an email address (such as ops@example.com)",
                "`enabled` must be `true` or `false`, found a string",
                "`host` must be a host name (such as api.example.com)",
                "`mode` must be one of: \"fast\", \"safe\"",
                "`ratio` must be a number, found a string",
                "`retries` must be at most 5",
                "`sku` must match the pattern `^[A-Z]{3}-[0-9]+$`",
                "`tags[1]` must be at least 1 characters long",
                "missing required key `api_url`",
            ]
        );
        let keys: Vec<String> = schema
            .validate(
                json!({"api_url": "nope", "api_token": "0123456789", "zzz": 1})
                    .as_object()
                    .unwrap(),
            )
            .unwrap_err()
            .into_iter()
            .map(|error| error.key)
            .collect();
        assert_eq!(keys, vec!["api_url", "zzz"]);
        assert_eq!(
            messages(
                &schema,
                json!({"api_url": "nope", "api_token": "0123456789", "retries": 1.5})
            ),
            vec![
                "`api_url` must be a URI (such as https://example.com/path)",
                "`retries` must be an integer, found a number with a fraction",
            ]
        );
        Ok(())
    }

    #[test]
    fn additional_properties_can_be_allowed() -> Result<(), ManifestErrors> {
        let schema = schema(
            "[config]\nadditionalProperties = true\n[config.properties.a]\ntype = \"string\"\n",
        )?;
        assert_eq!(messages(&schema, json!({"b": 1})), Vec::<String>::new());
        assert_eq!(
            messages(&schema, json!({"a": 1})),
            vec!["`a` must be a string, found a number"]
        );
        Ok(())
    }

    #[test]
    fn defaults_fill_unset_keys() -> Result<(), ManifestErrors> {
        let schema = schema(CONFIG)?;
        let filled = schema.with_defaults(json!({"ratio": 1}).as_object().unwrap());
        assert_eq!(filled.get("retries"), Some(&json!(3)));
        assert_eq!(filled.get("ratio"), Some(&json!(1)));
        Ok(())
    }

    #[test]
    fn the_json_schema_is_standard_with_secrets_marked() -> Result<(), ManifestErrors> {
        let schema = schema(CONFIG)?;
        let json = schema.to_json_schema();
        assert_eq!(json["type"], "object");
        assert_eq!(json["additionalProperties"], false);
        assert_eq!(json["required"], json!(["api_url", "api_token"]));
        assert_eq!(
            json["properties"]["api_token"],
            json!({"type": "string", "minLength": 8, "writeOnly": true, "x-secret": true})
        );
        assert_eq!(
            json["properties"]["retries"],
            json!({"type": "integer", "minimum": 0, "maximum": 5, "default": 3})
        );
        assert_eq!(
            json["properties"]["ratio"],
            json!({"type": "number", "maximum": 1.5})
        );
        assert_eq!(
            json["properties"]["tags"],
            json!({"type": "array", "items": {"type": "string", "minLength": 1}})
        );
        assert_eq!(
            json["properties"]["api_url"],
            json!({"type": "string", "format": "uri"})
        );
        Ok(())
    }

    #[test]
    fn schema_mistakes_are_pointed() {
        let cases: [(&str, &str); 9] = [
            (
                "[config]\ntype = \"array\"\n",
                "the `type` of [config] must be \"object\"",
            ),
            (
                "[config.properties.n]\ntype = \"number\"\nsecret = true\n",
                "`secret` applies to string properties only",
            ),
            (
                "[config.properties.s]\ntype = \"string\"\nsecret = true\ndefault = \"x\"\n",
                "is a secret and cannot have a `default`",
            ),
            (
                "[config.properties.s]\ntype = \"string\"\nitems = { type = \"string\" }\n",
                "`items` applies to array properties only",
            ),
            (
                "[config.properties.a]\ntype = \"array\"\nitems = { type = \"string\", secret = true }\n",
                "unknown schema keyword `secret` in the `items` of `a`",
            ),
            (
                "[config.properties.s]\ntype = \"string\"\nenum = []\n",
                "`enum` of `s` is empty",
            ),
            (
                "[config.properties.s]\ntype = \"string\"\nmaxLength = -1\n",
                "`maxLength` in [config.properties.s] cannot be negative",
            ),
            (
                "[config.properties.\"bad key\"]\ntype = \"string\"\n",
                "invalid configuration key `bad key`",
            ),
            (
                "[config.properties.d]\ntype = \"string\"\ndefault = 1979-05-27\n",
                "date-times are not configuration values",
            ),
        ];
        for (config, fragment) in cases {
            let error = schema(config)
                .err()
                .map(|errors| errors.to_string())
                .unwrap_or_default();
            assert!(error.contains(fragment), "{config}\n→ {error}");
        }
    }
}
