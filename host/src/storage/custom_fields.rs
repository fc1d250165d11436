//! Custom field definitions: the typed fields a tenant adds to its contacts.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{QueryContext, StorageError, TenantDb, now_ms};

/// A custom field's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    /// Any text.
    Text,
    /// A JSON number.
    Number,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// `true` or `false`.
    Boolean,
    /// One of the field's options.
    Select,
}

impl FieldKind {
    fn as_str(self) -> &'static str {
        match self {
            FieldKind::Text => "text",
            FieldKind::Number => "number",
            FieldKind::Date => "date",
            FieldKind::Boolean => "boolean",
            FieldKind::Select => "select",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [
            FieldKind::Text,
            FieldKind::Number,
            FieldKind::Date,
            FieldKind::Boolean,
            FieldKind::Select,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == name)
    }
}

/// A custom field definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomField {
    /// The key used in a contact's `fields`.
    pub key: String,
    /// A human label.
    pub label: String,
    /// The type of its values.
    pub kind: FieldKind,
    /// Allowed values of a select field.
    #[serde(default)]
    pub options: Vec<String>,
}

impl CustomField {
    /// Checks a value against the definition; the error says what is expected.
    pub fn check(&self, value: &serde_json::Value) -> Result<(), String> {
        use serde_json::Value;
        let ok = match (self.kind, value) {
            (FieldKind::Text, Value::String(_))
            | (FieldKind::Number, Value::Number(_))
            | (FieldKind::Boolean, Value::Bool(_)) => true,
            (FieldKind::Date, Value::String(text)) => is_date(text),
            (FieldKind::Select, Value::String(text)) => self.options.contains(text),
            _ => false,
        };
        if ok {
            return Ok(());
        }
        Err(match self.kind {
            FieldKind::Text => format!("field `{}` takes text", self.key),
            FieldKind::Number => format!("field `{}` takes a number", self.key),
            FieldKind::Boolean => format!("field `{}` takes true or false", self.key),
            FieldKind::Date => format!("field `{}` takes a date as YYYY-MM-DD", self.key),
            FieldKind::Select => format!(
                "field `{}` takes one of: {}",
                self.key,
                self.options.join(", ")
            ),
        })
    }
}

fn is_date(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    let [year, month, day] = parts.as_slice() else {
        return false;
    };
    let number = |part: &str, len: usize| {
        (part.len() == len && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse::<u32>().ok())
            .flatten()
    };
    let (Some(year), Some(month), Some(day)) = (number(year, 4), number(month, 2), number(day, 2))
    else {
        return false;
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

impl TenantDb {
    /// Defines (or redefines) a custom field.
    pub async fn put_custom_field(&self, field: &CustomField) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO custom_fields (tenant_id, key, label, kind, options, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant_id, key) DO UPDATE SET label = excluded.label, kind = excluded.kind, options = excluded.options",
        )
        .bind(self.tenant_id().as_str())
        .bind(&field.key)
        .bind(&field.label)
        .bind(field.kind.as_str())
        .bind(serde_json::to_string(&field.options).unwrap_or_else(|_| "[]".into()))
        .bind(now_ms())
        .execute(self.storage().pool())
        .await
        .context("defining a custom field")
        .map(drop)
    }

    /// This tenant's custom fields, by key.
    pub async fn custom_fields(&self) -> Result<Vec<CustomField>, StorageError> {
        let rows = sqlx::query(
            "SELECT key, label, kind, options FROM custom_fields WHERE tenant_id = $1 ORDER BY key",
        )
        .bind(self.tenant_id().as_str())
        .fetch_all(self.storage().pool())
        .await
        .context("reading custom fields")?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                let options: String = row.try_get("options")?;
                Ok(CustomField {
                    key: row.try_get("key")?,
                    label: row.try_get("label")?,
                    kind: FieldKind::parse(&kind).ok_or_else(|| {
                        sqlx::Error::Decode(format!("unknown field kind `{kind}`").into())
                    })?,
                    options: serde_json::from_str(&options).unwrap_or_default(),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding custom fields")
    }

    /// Removes a custom field definition; whether it existed. Stored values stay on
    /// contacts until changed.
    pub async fn delete_custom_field(&self, key: &str) -> Result<bool, StorageError> {
        let result = sqlx::query("DELETE FROM custom_fields WHERE tenant_id = $1 AND key = $2")
            .bind(self.tenant_id().as_str())
            .bind(key)
            .execute(self.storage().pool())
            .await
            .context("deleting a custom field")?;
        Ok(result.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_are_checked_against_their_kind() {
        let field = |kind, options: &[&str]| CustomField {
            key: "f".into(),
            label: "F".into(),
            kind,
            options: options.iter().map(|o| o.to_string()).collect(),
        };
        assert!(field(FieldKind::Text, &[]).check(&json!("x")).is_ok());
        assert!(field(FieldKind::Text, &[]).check(&json!(1)).is_err());
        assert!(field(FieldKind::Number, &[]).check(&json!(1.5)).is_ok());
        assert!(field(FieldKind::Number, &[]).check(&json!("1")).is_err());
        assert!(field(FieldKind::Boolean, &[]).check(&json!(true)).is_ok());
        for good in ["2024-02-29", "1999-12-31"] {
            assert!(
                field(FieldKind::Date, &[]).check(&json!(good)).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "24-01-01",
            "2024-1-01",
            "tomorrow",
        ] {
            assert!(
                field(FieldKind::Date, &[]).check(&json!(bad)).is_err(),
                "{bad}"
            );
        }
        let select = field(FieldKind::Select, &["gold", "silver"]);
        assert!(select.check(&json!("gold")).is_ok());
        assert!(
            select
                .check(&json!("bronze"))
                .unwrap_err()
                .contains("gold, silver")
        );
    }
}
