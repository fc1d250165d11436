//! Turns a checked filter [`Expr`] into a SQL condition on the `contacts` table. SQL is
//! assembled from fixed fragments only; every value (tags, texts, field keys, numbers)
//! is a bound `$N` parameter, which both backends accept (sqlx's Any `QueryBuilder`
//! writes `?`, which PostgreSQL refuses). Custom field values live in a JSON text
//! column, read with `json_extract` on SQLite and `::jsonb` operators on PostgreSQL.

use sqlx::Any;
use sqlx::any::AnyArguments;
use sqlx::query::Query;

use super::Backend;
use crate::segments::{Condition, Expr, Op, Operand, TextColumn, TimeColumn, TimeComparison};
use crate::storage::FieldKind;

/// A bound value.
#[derive(Debug, Clone)]
pub(crate) enum Bind {
    Text(String),
    Int(i64),
    Float(f64),
}

impl rusqlite::types::ToSql for Bind {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Self::Text(text) => text.to_sql(),
            Self::Int(number) => number.to_sql(),
            Self::Float(number) => number.to_sql(),
        }
    }
}

/// SQL text plus its parameters, numbered in order.
#[derive(Debug, Default)]
pub(crate) struct Sql {
    pub(crate) text: String,
    binds: Vec<Bind>,
}

impl Sql {
    pub(crate) fn new(text: &str) -> Self {
        Self {
            text: text.to_string(),
            binds: Vec::new(),
        }
    }

    /// Adds a parameter; returns its placeholder.
    pub(crate) fn bind(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    /// The parameters, for the direct SQLite path (`sqlite_writer::query` binds `$N` by
    /// name, so the text runs unchanged).
    pub(crate) fn params(&self) -> Vec<&dyn rusqlite::types::ToSql> {
        self.binds
            .iter()
            .map(|bind| bind as &dyn rusqlite::types::ToSql)
            .collect()
    }

    pub(crate) fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    pub(crate) fn into_query(self) -> Query<'static, Any, AnyArguments> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(self.text));
        for bind in self.binds {
            query = match bind {
                Bind::Text(text) => query.bind(text),
                Bind::Int(number) => query.bind(number),
                Bind::Float(number) => query.bind(number),
            };
        }
        query
    }

    /// Appends ` AND (<expr>)`.
    pub(crate) fn and_expr(&mut self, backend: Backend, expr: &Expr, now_ms: i64) {
        self.push(" AND ");
        self.expr(backend, expr, now_ms);
    }

    fn expr(&mut self, backend: Backend, expr: &Expr, now_ms: i64) {
        match expr {
            Expr::And(parts) | Expr::Or(parts) if parts.is_empty() => {
                self.push(if matches!(expr, Expr::And(_)) {
                    "(1 = 1)"
                } else {
                    "(1 = 0)"
                });
            }
            Expr::And(parts) | Expr::Or(parts) => {
                let joiner = if matches!(expr, Expr::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                self.push("(");
                for (index, part) in parts.iter().enumerate() {
                    if index > 0 {
                        self.push(joiner);
                    }
                    self.expr(backend, part, now_ms);
                }
                self.push(")");
            }
            Expr::Not(inner) => {
                // NOT over a NULL comparison is NULL; COALESCE makes "not" total.
                self.push("(NOT COALESCE(");
                self.expr(backend, inner, now_ms);
                self.push(", FALSE))");
            }
            Expr::Condition(condition) => self.condition(backend, condition, now_ms),
        }
    }

    fn condition(&mut self, backend: Backend, condition: &Condition, now_ms: i64) {
        match condition {
            Condition::Tag { tag, has } => {
                let tag = self.bind(Bind::Text(tag.clone()));
                self.push(&format!(
                    "({}EXISTS (SELECT 1 FROM contact_tags t WHERE t.tenant_id = contacts.tenant_id \
                     AND t.contact_id = contacts.id AND t.tag = {tag}))",
                    if *has { "" } else { "NOT " }
                ));
            }
            Condition::Text(text) => {
                let pattern = self.bind(Bind::Text(like_pattern(text, true, true)));
                self.push(&format!(
                    "(LOWER(COALESCE(name, '')) LIKE {pattern} ESCAPE '\\' \
                     OR COALESCE(phone, '') LIKE {pattern} ESCAPE '\\' \
                     OR COALESCE(email, '') LIKE {pattern} ESCAPE '\\')"
                ));
            }
            Condition::Column { column, op, value } => {
                let column = match column {
                    TextColumn::Name => "name",
                    TextColumn::Phone => "phone",
                    TextColumn::Email => "email",
                };
                self.compare_text(column, *op, value);
            }
            Condition::Time { column, comparison } => {
                let column = match column {
                    TimeColumn::Created => "created_at",
                    TimeColumn::Updated => "updated_at",
                    TimeColumn::LastContacted => "last_contacted_at",
                };
                let day = 86_400_000_i64;
                match comparison {
                    TimeComparison::Before(at) => {
                        let at = self.bind(Bind::Int(*at));
                        self.push(&format!("({column} < {at})"));
                    }
                    TimeComparison::After(at) => {
                        let at = self.bind(Bind::Int(*at));
                        self.push(&format!("({column} > {at})"));
                    }
                    TimeComparison::WithinDays(days) => {
                        let since = self.bind(Bind::Int(now_ms - days.saturating_mul(day)));
                        self.push(&format!("({column} >= {since})"));
                    }
                    TimeComparison::NotWithinDays(days) => {
                        let since = self.bind(Bind::Int(now_ms - days.saturating_mul(day)));
                        self.push(&format!("({column} IS NULL OR {column} < {since})"));
                    }
                    TimeComparison::IsSet => self.push(&format!("({column} IS NOT NULL)")),
                    TimeComparison::IsNotSet => self.push(&format!("({column} IS NULL)")),
                }
            }
            Condition::Consent { channel, status } => {
                let channel = self.bind(Bind::Text(channel.clone()));
                let status = self.bind(Bind::Text(status.clone()));
                self.push(&format!(
                    "(COALESCE((SELECT c.status FROM contact_consent c WHERE c.tenant_id = contacts.tenant_id \
                     AND c.contact_id = contacts.id AND c.channel = {channel} ORDER BY c.id DESC LIMIT 1), 'unknown') = {status})"
                ));
            }
            Condition::Field {
                key,
                kind,
                op,
                value,
            } => self.compare_field(backend, key, *kind, *op, value),
        }
    }

    /// `expr <op> value` for text (columns, text/select/date fields).
    fn compare_text(&mut self, expr: &str, op: Op, value: &Operand) {
        let text = match value {
            Operand::Text(text) => text.clone(),
            _ => String::new(),
        };
        match op {
            Op::IsSet => self.push(&format!("({expr} IS NOT NULL)")),
            Op::IsNotSet => self.push(&format!("({expr} IS NULL)")),
            Op::Contains | Op::StartsWith => {
                let pattern = self.bind(Bind::Text(like_pattern(&text, op == Op::Contains, true)));
                self.push(&format!("(LOWER({expr}) LIKE {pattern} ESCAPE '\\')"));
            }
            Op::In => {
                let items = match value {
                    Operand::List(items) => items.clone(),
                    _ => Vec::new(),
                };
                let placeholders: Vec<String> = items
                    .into_iter()
                    .map(|item| self.bind(Bind::Text(item)))
                    .collect();
                self.push(&format!("({expr} IN ({}))", placeholders.join(", ")));
            }
            Op::Neq => {
                let value = self.bind(Bind::Text(text));
                self.push(&format!("({expr} IS NULL OR {expr} <> {value})"));
            }
            _ => {
                let value = self.bind(Bind::Text(text));
                self.push(&format!("({expr} {} {value})", sql_op(op)));
            }
        }
    }

    fn compare_field(
        &mut self,
        backend: Backend,
        key: &str,
        kind: FieldKind,
        op: Op,
        value: &Operand,
    ) {
        // The value as text: a JSON string's content, a number's or boolean's text.
        let (text_expr, number_expr) = match backend {
            Backend::Sqlite => {
                let path = self.bind(Bind::Text(format!("$.\"{key}\"")));
                (
                    format!("json_extract(fields, {path})"),
                    format!("json_extract(fields, {path})"),
                )
            }
            Backend::Postgres => {
                let key = self.bind(Bind::Text(key.to_string()));
                (
                    format!("(fields::jsonb ->> {key})"),
                    format!(
                        "(CASE WHEN jsonb_typeof(fields::jsonb -> {key}) = 'number' \
                         THEN (fields::jsonb ->> {key})::double precision END)"
                    ),
                )
            }
        };
        match (kind, value) {
            (_, Operand::None) => self.compare_text(&text_expr, op, value),
            (FieldKind::Number, Operand::Number(number)) => {
                let value = self.bind(Bind::Float(*number));
                if op == Op::Neq {
                    self.push(&format!(
                        "({number_expr} IS NULL OR {number_expr} <> {value})"
                    ));
                } else {
                    self.push(&format!("({number_expr} {} {value})", sql_op(op)));
                }
            }
            (FieldKind::Boolean, Operand::Bool(flag)) => {
                // SQLite's json_extract gives 1/0; PostgreSQL's ->> gives 'true'/'false'.
                let value = match backend {
                    Backend::Sqlite => self.bind(Bind::Int(i64::from(*flag))),
                    Backend::Postgres => self.bind(Bind::Text(flag.to_string())),
                };
                if op == Op::Neq {
                    self.push(&format!("({text_expr} IS NULL OR {text_expr} <> {value})"));
                } else {
                    self.push(&format!("({text_expr} = {value})"));
                }
            }
            _ => self.compare_text(&text_expr, op, value),
        }
    }
}

fn sql_op(op: Op) -> &'static str {
    match op {
        Op::Gt => ">",
        Op::Gte => ">=",
        Op::Lt => "<",
        Op::Lte => "<=",
        Op::Neq => "<>",
        _ => "=",
    }
}

/// A LIKE pattern matching `text` (lower-cased), with `\` escaping LIKE's wildcards.
fn like_pattern(text: &str, leading: bool, trailing: bool) -> String {
    let escaped = text
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!(
        "{}{escaped}{}",
        if leading { "%" } else { "" },
        if trailing { "%" } else { "" }
    )
}
