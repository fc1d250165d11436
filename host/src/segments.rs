//! Contact filter expressions: what a segment saves and what search evaluates. An
//! expression is JSON — nested `{"and": [...]}`, `{"or": [...]}`, `{"not": {...}}` groups
//! of conditions `{"attribute": "...", "op": "...", "value": ...}` — parsed here into an
//! [`Expr`] that the storage layer turns into SQL. Parsing checks everything the SQL
//! relies on (attribute names, operators, value types against the tenant's custom field
//! definitions) and reports the first problem with a JSON Pointer to it.
//!
//! Attributes: `tag`, `text` (free text over name, phone and email), `name`, `phone`,
//! `email`, `created_at`, `updated_at`, `last_contacted_at`, `consent.<channel>` and
//! `fields.<key>`.

use serde_json::Value;

use crate::storage::{CONSENT_CHANNELS, CustomField, FieldKind};

/// Deepest nesting of groups accepted.
pub const MAX_DEPTH: usize = 8;
/// Most conditions in one expression.
pub const MAX_CONDITIONS: usize = 100;

/// A parsed filter expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Every part holds (an empty `and` holds for every contact).
    And(Vec<Expr>),
    /// At least one part holds.
    Or(Vec<Expr>),
    /// The part does not hold.
    Not(Box<Expr>),
    /// One condition.
    Condition(Condition),
}

/// A contact column compared as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextColumn {
    /// `name`.
    Name,
    /// `phone` (E.164).
    Phone,
    /// `email` (lower-case).
    Email,
}

/// A contact timestamp column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeColumn {
    /// `created_at`.
    Created,
    /// `updated_at`.
    Updated,
    /// `last_contacted_at`.
    LastContacted,
}

/// How a value is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Equal.
    Eq,
    /// Not equal (or not set).
    Neq,
    /// Contains the text, ignoring case.
    Contains,
    /// Starts with the text, ignoring case.
    StartsWith,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// Equal to one of a list.
    In,
    /// Has a value.
    IsSet,
    /// Has no value.
    IsNotSet,
}

impl Op {
    fn parse(name: &str) -> Option<Op> {
        Some(match name {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "contains" => Op::Contains,
            "starts_with" => Op::StartsWith,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "in" => Op::In,
            "is_set" => Op::IsSet,
            "is_not_set" => Op::IsNotSet,
            _ => return None,
        })
    }
}

/// A value a condition compares with, already checked against the attribute's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// No value (`is_set`, `is_not_set`).
    None,
    /// Text (also dates `YYYY-MM-DD` and select options).
    Text(String),
    /// A number.
    Number(f64),
    /// A boolean.
    Bool(bool),
    /// A list of texts (`in`).
    List(Vec<String>),
}

/// One condition on a contact.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Has (or, negated by `op: lacks`, has not) a tag.
    Tag {
        /// The tag, normalized.
        tag: String,
        /// `false` for `lacks`.
        has: bool,
    },
    /// Name, phone or email contains the text.
    Text(String),
    /// A text column compared.
    Column {
        /// Which column.
        column: TextColumn,
        /// How.
        op: Op,
        /// With what.
        value: Operand,
    },
    /// A timestamp compared: `before`/`after` a Unix-ms instant, or within the last days.
    Time {
        /// Which column.
        column: TimeColumn,
        /// The comparison.
        comparison: TimeComparison,
    },
    /// The current consent state of a channel.
    Consent {
        /// The channel.
        channel: String,
        /// `opted_in`, `opted_out` or `unknown` (never recorded).
        status: String,
    },
    /// A custom field value compared.
    Field {
        /// The field key.
        key: String,
        /// Its type.
        kind: FieldKind,
        /// How.
        op: Op,
        /// With what.
        value: Operand,
    },
}

/// How a timestamp is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeComparison {
    /// Strictly before this Unix-ms instant.
    Before(i64),
    /// Strictly after this Unix-ms instant.
    After(i64),
    /// Within the last this many days (relative to when the query runs).
    WithinDays(i64),
    /// Not within the last this many days, or never.
    NotWithinDays(i64),
    /// Has a value.
    IsSet,
    /// Has no value.
    IsNotSet,
}

/// Why an expression was refused: where (a JSON Pointer into it) and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at `{pointer}`)")]
pub struct ExprError {
    /// RFC 6901 pointer to the offending part (`""` is the whole expression).
    pub pointer: String,
    /// What is wrong and what is expected.
    pub message: String,
}

fn fail<T>(pointer: &str, message: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError {
        pointer: pointer.to_string(),
        message: message.into(),
    })
}

/// Parses and checks an expression against the tenant's custom fields.
pub fn parse(value: &Value, fields: &[CustomField]) -> Result<Expr, ExprError> {
    let mut parser = Parser {
        fields,
        conditions: 0,
    };
    parser.expr(value, "", 0)
}

struct Parser<'a> {
    fields: &'a [CustomField],
    conditions: usize,
}

impl Parser<'_> {
    fn expr(&mut self, value: &Value, at: &str, depth: usize) -> Result<Expr, ExprError> {
        let Value::Object(object) = value else {
            return fail(
                at,
                "expected an object: {\"and\": [...]}, {\"or\": [...]}, {\"not\": {...}} or a condition {\"attribute\", \"op\", \"value\"}",
            );
        };
        if depth > MAX_DEPTH {
            return fail(at, format!("groups nest at most {MAX_DEPTH} deep"));
        }
        for group in ["and", "or", "not"] {
            let Some(inner) = object.get(group) else {
                continue;
            };
            if object.len() != 1 {
                return fail(at, format!("a `{group}` group has no other keys"));
            }
            let here = format!("{at}/{group}");
            if group == "not" {
                return Ok(Expr::Not(Box::new(self.expr(inner, &here, depth + 1)?)));
            }
            let Value::Array(parts) = inner else {
                return fail(&here, format!("`{group}` takes an array of expressions"));
            };
            if group == "or" && parts.is_empty() {
                return fail(&here, "an `or` needs at least one expression");
            }
            let parts = parts
                .iter()
                .enumerate()
                .map(|(index, part)| self.expr(part, &format!("{here}/{index}"), depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(if group == "and" {
                Expr::And(parts)
            } else {
                Expr::Or(parts)
            });
        }
        self.conditions += 1;
        if self.conditions > MAX_CONDITIONS {
            return fail(
                at,
                format!("an expression has at most {MAX_CONDITIONS} conditions"),
            );
        }
        self.condition(object, at).map(Expr::Condition)
    }

    fn condition(
        &self,
        object: &serde_json::Map<String, Value>,
        at: &str,
    ) -> Result<Condition, ExprError> {
        if let Some(key) = object
            .keys()
            .find(|key| !["attribute", "op", "value"].contains(&key.as_str()))
        {
            return fail(
                &format!("{at}/{}", escape(key)),
                format!("unknown key `{key}`; a condition has attribute, op and value"),
            );
        }
        let Some(Value::String(attribute)) = object.get("attribute") else {
            return fail(
                &format!("{at}/attribute"),
                "a condition needs `attribute` (a string)",
            );
        };
        let Some(Value::String(op_name)) = object.get("op") else {
            return fail(&format!("{at}/op"), "a condition needs `op` (a string)");
        };
        let value = object.get("value").unwrap_or(&Value::Null);
        let op_at = format!("{at}/op");
        let value_at = format!("{at}/value");
        let attribute_at = format!("{at}/attribute");

        match attribute.as_str() {
            "tag" => {
                let has = match op_name.as_str() {
                    "has" => true,
                    "lacks" => false,
                    _ => return fail(&op_at, "`tag` takes op `has` or `lacks`"),
                };
                let Value::String(tag) = value else {
                    return fail(&value_at, "`tag` needs a tag name as `value`");
                };
                let tag = crate::contacts::normalize_tag(tag).map_err(|error| ExprError {
                    pointer: value_at.clone(),
                    message: error.to_string(),
                })?;
                Ok(Condition::Tag { tag, has })
            }
            "text" => {
                if op_name != "contains" {
                    return fail(&op_at, "`text` takes op `contains`");
                }
                match value {
                    Value::String(text) if !text.trim().is_empty() => {
                        Ok(Condition::Text(text.trim().to_string()))
                    }
                    _ => fail(&value_at, "`text` needs a non-empty string `value`"),
                }
            }
            "name" | "phone" | "email" => {
                let column = match attribute.as_str() {
                    "name" => TextColumn::Name,
                    "phone" => TextColumn::Phone,
                    _ => TextColumn::Email,
                };
                let op = Op::parse(op_name)
                    .filter(|op| {
                        matches!(
                            op,
                            Op::Eq
                                | Op::Neq
                                | Op::Contains
                                | Op::StartsWith
                                | Op::In
                                | Op::IsSet
                                | Op::IsNotSet
                        )
                    })
                    .map_or_else(
                        || fail(&op_at, format!("`{attribute}` takes op eq, neq, contains, starts_with, in, is_set or is_not_set")),
                        Ok,
                    )?;
                let value = text_operand(op, value, &value_at)?;
                Ok(Condition::Column { column, op, value })
            }
            "created_at" | "updated_at" | "last_contacted_at" => {
                let column = match attribute.as_str() {
                    "created_at" => TimeColumn::Created,
                    "updated_at" => TimeColumn::Updated,
                    _ => TimeColumn::LastContacted,
                };
                let number = || match value.as_i64() {
                    Some(number) if number >= 0 => Ok(number),
                    _ => fail(
                        &value_at,
                        format!("`{op_name}` needs a non-negative integer `value`"),
                    ),
                };
                let comparison = match op_name.as_str() {
                    "before" => TimeComparison::Before(number()?),
                    "after" => TimeComparison::After(number()?),
                    "within_days" => TimeComparison::WithinDays(number()?),
                    "not_within_days" => TimeComparison::NotWithinDays(number()?),
                    "is_set" => TimeComparison::IsSet,
                    "is_not_set" => TimeComparison::IsNotSet,
                    _ => {
                        return fail(
                            &op_at,
                            format!(
                                "`{attribute}` takes op before, after (Unix milliseconds), within_days, not_within_days (days), is_set or is_not_set"
                            ),
                        );
                    }
                };
                Ok(Condition::Time { column, comparison })
            }
            other => {
                if let Some(channel) = other.strip_prefix("consent.") {
                    if !CONSENT_CHANNELS.contains(&channel) {
                        return fail(
                            &attribute_at,
                            format!(
                                "unknown consent channel `{channel}`; use one of {}",
                                CONSENT_CHANNELS.join(", ")
                            ),
                        );
                    }
                    if op_name != "eq" {
                        return fail(&op_at, format!("`{other}` takes op `eq`"));
                    }
                    return match value.as_str() {
                        Some(status @ ("opted_in" | "opted_out" | "unknown")) => {
                            Ok(Condition::Consent {
                                channel: channel.to_string(),
                                status: status.to_string(),
                            })
                        }
                        _ => fail(
                            &value_at,
                            "consent `value` is opted_in, opted_out or unknown",
                        ),
                    };
                }
                if let Some(key) = other.strip_prefix("fields.") {
                    return self.field_condition(
                        key,
                        op_name,
                        value,
                        &attribute_at,
                        &op_at,
                        &value_at,
                    );
                }
                fail(
                    &attribute_at,
                    format!(
                        "unknown attribute `{other}`; use tag, text, name, phone, email, created_at, updated_at, last_contacted_at, consent.<channel> or fields.<key>"
                    ),
                )
            }
        }
    }

    fn field_condition(
        &self,
        key: &str,
        op_name: &str,
        value: &Value,
        attribute_at: &str,
        op_at: &str,
        value_at: &str,
    ) -> Result<Condition, ExprError> {
        let Some(definition) = self.fields.iter().find(|field| field.key == key) else {
            return fail(
                attribute_at,
                format!("no custom field `{key}` is defined for this tenant"),
            );
        };
        let allowed: &[Op] = match definition.kind {
            FieldKind::Text => &[
                Op::Eq,
                Op::Neq,
                Op::Contains,
                Op::StartsWith,
                Op::In,
                Op::IsSet,
                Op::IsNotSet,
            ],
            FieldKind::Select => &[Op::Eq, Op::Neq, Op::In, Op::IsSet, Op::IsNotSet],
            FieldKind::Number | FieldKind::Date => &[
                Op::Eq,
                Op::Neq,
                Op::Gt,
                Op::Gte,
                Op::Lt,
                Op::Lte,
                Op::IsSet,
                Op::IsNotSet,
            ],
            FieldKind::Boolean => &[Op::Eq, Op::Neq, Op::IsSet, Op::IsNotSet],
        };
        let Some(op) = Op::parse(op_name).filter(|op| allowed.contains(op)) else {
            return fail(
                op_at,
                format!(
                    "op `{op_name}` does not apply to {:?} field `{key}`",
                    definition.kind
                )
                .to_lowercase(),
            );
        };
        let value = match op {
            Op::IsSet | Op::IsNotSet => Operand::None,
            Op::Contains | Op::StartsWith => text_operand(op, value, value_at)?,
            Op::In => {
                let Value::Array(items) = value else {
                    return fail(value_at, "`in` takes an array of values");
                };
                let mut list = Vec::with_capacity(items.len());
                for (index, item) in items.iter().enumerate() {
                    definition.check(item).map_err(|message| ExprError {
                        pointer: format!("{value_at}/{index}"),
                        message,
                    })?;
                    list.push(item.as_str().unwrap_or_default().to_string());
                }
                if list.is_empty() {
                    return fail(value_at, "`in` needs at least one value");
                }
                Operand::List(list)
            }
            _ => {
                definition.check(value).map_err(|message| ExprError {
                    pointer: value_at.to_string(),
                    message,
                })?;
                match value {
                    Value::Number(number) => Operand::Number(number.as_f64().unwrap_or(0.0)),
                    Value::Bool(flag) => Operand::Bool(*flag),
                    Value::String(text) => Operand::Text(text.clone()),
                    _ => return fail(value_at, "unsupported value"),
                }
            }
        };
        Ok(Condition::Field {
            key: key.to_string(),
            kind: definition.kind,
            op,
            value,
        })
    }
}

fn text_operand(op: Op, value: &Value, at: &str) -> Result<Operand, ExprError> {
    match op {
        Op::IsSet | Op::IsNotSet => Ok(Operand::None),
        Op::In => match value {
            Value::Array(items) if !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(index, item)| match item {
                    Value::String(text) => Ok(text.clone()),
                    _ => fail(&format!("{at}/{index}"), "`in` takes strings"),
                })
                .collect::<Result<_, _>>()
                .map(Operand::List),
            _ => fail(at, "`in` takes a non-empty array of strings"),
        },
        _ => match value {
            Value::String(text) => Ok(Operand::Text(text.clone())),
            _ => fail(at, "this op needs a string `value`"),
        },
    }
}

/// Escapes a key for a JSON Pointer (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields() -> Vec<CustomField> {
        vec![
            CustomField {
                key: "city".into(),
                label: "City".into(),
                kind: FieldKind::Text,
                options: vec![],
            },
            CustomField {
                key: "score".into(),
                label: "Score".into(),
                kind: FieldKind::Number,
                options: vec![],
            },
            CustomField {
                key: "plan".into(),
                label: "Plan".into(),
                kind: FieldKind::Select,
                options: vec!["free".into(), "paid".into()],
            },
        ]
    }

    fn error(value: Value) -> ExprError {
        parse(&value, &fields()).expect_err("should be refused")
    }

    #[test]
    fn parses_nested_groups() {
        let expr = parse(
            &json!({"and": [
                {"attribute": "tag", "op": "has", "value": "VIP"},
                {"or": [
                    {"attribute": "fields.score", "op": "gte", "value": 10},
                    {"not": {"attribute": "consent.email", "op": "eq", "value": "opted_out"}}
                ]}
            ]}),
            &fields(),
        )
        .expect("valid");
        let Expr::And(parts) = expr else {
            panic!("not an and: {expr:?}")
        };
        assert_eq!(
            parts[0],
            Expr::Condition(Condition::Tag {
                tag: "VIP".into(),
                has: true
            })
        );
        assert!(matches!(&parts[1], Expr::Or(inner) if inner.len() == 2));
    }

    #[test]
    fn errors_point_at_the_bad_part() {
        let bad = error(json!({"and": [
            {"attribute": "tag", "op": "has", "value": "vip"},
            {"or": [{"attribute": "fields.score", "op": "gt", "value": "ten"}]}
        ]}));
        assert_eq!(bad.pointer, "/and/1/or/0/value");
        assert!(bad.message.contains("number"), "{bad}");

        let bad = error(json!({"or": [{"attribute": "fields.nope", "op": "eq", "value": 1}]}));
        assert_eq!(bad.pointer, "/or/0/attribute");
        assert!(bad.message.contains("nope"));

        let bad = error(json!({"attribute": "fields.plan", "op": "gt", "value": "free"}));
        assert_eq!(bad.pointer, "/op");

        let bad = error(json!({"attribute": "fields.plan", "op": "in", "value": ["free", "gold"]}));
        assert_eq!(bad.pointer, "/value/1");

        let bad = error(json!({"attribute": "consent.fax", "op": "eq", "value": "opted_in"}));
        assert_eq!(bad.pointer, "/attribute");

        let bad = error(json!({"and": [1]}));
        assert_eq!(bad.pointer, "/and/0");

        let bad = error(json!({"or": []}));
        assert_eq!(bad.pointer, "/or");

        let bad = error(json!({"attribute": "tag", "op": "has", "value": "x", "extra/key": 1}));
        assert_eq!(bad.pointer, "/extra~1key");
    }

    #[test]
    fn limits_depth_and_size() {
        let mut deep = json!({"attribute": "tag", "op": "has", "value": "a"});
        for _ in 0..=MAX_DEPTH {
            deep = json!({"not": deep});
        }
        assert!(error(deep).message.contains("nest"));
        let many: Vec<Value> = (0..=MAX_CONDITIONS)
            .map(|_| json!({"attribute": "tag", "op": "has", "value": "a"}))
            .collect();
        assert!(error(json!({"and": many})).message.contains("at most"));
    }
}
