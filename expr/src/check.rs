//! Static checks before a flow is saved: every path names something that exists (contact
//! attributes and the tenant's custom fields), operators get operands they can work on,
//! and a condition is true/false. `trigger.*` and `steps.*` are not known in advance, so
//! they are [`Type::Any`] and pass every check; eval treats them leniently instead.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ast::{CompareOp, Expr, ExprKind, Function, Path, Root, Segment};
use crate::error::ExprError;

/// The type of a contact's custom field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// Text (select fields are text too).
    Text,
    /// A number.
    Number,
    /// `true` or `false`.
    Bool,
    /// A date, stored as text (`YYYY-MM-DD`); compare with date text or use `days_since`.
    Date,
}

/// What the checker knows about the data an expression reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// The tenant's contact custom fields, by key.
    pub contact_fields: BTreeMap<String, FieldType>,
}

/// The type of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    /// `true` or `false`.
    Bool,
    /// A number.
    Number,
    /// Text.
    Text,
    /// A list.
    List,
    /// Not known before the flow runs (`trigger.*`, `steps.*`, `null`).
    Any,
}

impl Type {
    /// Whether a value of this type may be used where `wanted` is needed.
    fn fits(self, wanted: Type) -> bool {
        self == wanted || self == Type::Any
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Bool => "true/false",
            Type::Number => "a number",
            Type::Text => "text",
            Type::List => "a list",
            Type::Any => "any value",
        })
    }
}

/// Checks a condition: its type, which must be [`Type::Bool`] or [`Type::Any`].
///
/// ```
/// use postdog_expr::{FieldType, Schema, Type, check, parse};
/// let mut schema = Schema::default();
/// schema.contact_fields.insert("age".into(), FieldType::Number);
/// assert_eq!(check(&parse("contact.fields.age >= 18").unwrap(), &schema), Ok(Type::Bool));
/// let error = check(&parse("contact.fields.age == '18'").unwrap(), &schema).unwrap_err();
/// assert_eq!(error.offset, 22);
/// ```
pub fn check(expr: &Expr, schema: &Schema) -> Result<Type, ExprError> {
    let ty = infer(expr, schema)?;
    if ty.fits(Type::Bool) {
        return Ok(ty);
    }
    Err(ExprError::new(
        expr.offset,
        format!(
            "a condition must be true or false, but `{expr}` is {ty}: compare it, e.g. `{}`",
            example_comparison(expr, ty)
        ),
    ))
}

fn example_comparison(expr: &Expr, ty: Type) -> String {
    match ty {
        Type::Number => format!("{expr} > 0"),
        Type::List => format!("{expr} contains 'vip'"),
        _ => format!("{expr} != ''"),
    }
}

/// The type of any expression (a condition or a value), checking everything inside it.
pub fn infer(expr: &Expr, schema: &Schema) -> Result<Type, ExprError> {
    match &expr.kind {
        ExprKind::Null => Ok(Type::Any),
        ExprKind::Bool(_) => Ok(Type::Bool),
        ExprKind::Number(_) => Ok(Type::Number),
        ExprKind::Text(_) => Ok(Type::Text),
        ExprKind::List(items) => {
            for item in items {
                infer(item, schema)?;
            }
            Ok(Type::List)
        }
        ExprKind::Path(path) => path_type(path, schema),
        ExprKind::Call { function, args } => call_type(*function, args, expr.offset, schema),
        ExprKind::Not(inner) => {
            need(inner, infer(inner, schema)?, Type::Bool, "`not`")?;
            Ok(Type::Bool)
        }
        ExprKind::And(items) | ExprKind::Or(items) => {
            let word = if matches!(expr.kind, ExprKind::And(_)) {
                "`and`"
            } else {
                "`or`"
            };
            for item in items {
                need(item, infer(item, schema)?, Type::Bool, word)?;
            }
            Ok(Type::Bool)
        }
        ExprKind::Compare {
            op, left, right, ..
        } => {
            let left_type = infer(left, schema)?;
            let right_type = infer(right, schema)?;
            compare_types(*op, (left, left_type), (right, right_type))?;
            Ok(Type::Bool)
        }
    }
}

/// `expr` (of type `ty`) must fit `wanted` as the operand of `what`.
fn need(expr: &Expr, ty: Type, wanted: Type, what: &str) -> Result<(), ExprError> {
    if ty.fits(wanted) {
        return Ok(());
    }
    let hint = if wanted == Type::Bool {
        format!(": compare it, e.g. `{}`", example_comparison(expr, ty))
    } else {
        String::new()
    };
    Err(ExprError::new(
        expr.offset,
        format!("{what} needs {wanted}, but `{expr}` is {ty}{hint}"),
    ))
}

fn compare_types(
    op: CompareOp,
    (left, left_type): (&Expr, Type),
    (right, right_type): (&Expr, Type),
) -> Result<(), ExprError> {
    let what = format!("`{}`", op.as_str());
    match op {
        CompareOp::Eq | CompareOp::Ne => {
            if left_type == Type::Any || right_type == Type::Any || left_type == right_type {
                return Ok(());
            }
            Err(mismatch(op, (left, left_type), (right, right_type)))
        }
        CompareOp::Lt | CompareOp::Le | CompareOp::Gt | CompareOp::Ge => {
            for (side, ty) in [(left, left_type), (right, right_type)] {
                if !matches!(ty, Type::Number | Type::Text | Type::Any) {
                    return Err(ExprError::new(
                        side.offset,
                        format!("{what} orders numbers or text, but `{side}` is {ty}"),
                    ));
                }
            }
            if left_type == Type::Any || right_type == Type::Any || left_type == right_type {
                return Ok(());
            }
            Err(mismatch(op, (left, left_type), (right, right_type)))
        }
        CompareOp::Contains => {
            match left_type {
                Type::Text => need(right, right_type, Type::Text, "`contains` on text")?,
                Type::List | Type::Any => {}
                other => {
                    return Err(ExprError::new(
                        left.offset,
                        format!(
                            "`contains` needs text or a list on its left, but `{left}` is {other}{}",
                            if other == Type::Number {
                                ": compare numbers with `==`, `<` or `>`"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
            }
            Ok(())
        }
        CompareOp::In | CompareOp::NotIn => {
            match right_type {
                Type::List | Type::Any => {}
                Type::Text => need(left, left_type, Type::Text, &format!("{what} on text"))?,
                other => {
                    return Err(ExprError::new(
                        right.offset,
                        format!(
                            "{what} needs a list on its right, such as ['a', 'b'], but `{right}` is {other}"
                        ),
                    ));
                }
            }
            Ok(())
        }
        CompareOp::StartsWith | CompareOp::EndsWith => {
            need(left, left_type, Type::Text, &what)?;
            need(right, right_type, Type::Text, &what)
        }
    }
}

fn mismatch(
    op: CompareOp,
    (left, left_type): (&Expr, Type),
    (right, right_type): (&Expr, Type),
) -> ExprError {
    // Point at the side that is most likely the mistake: a literal, else the right.
    let literal = |expr: &Expr| {
        matches!(
            expr.kind,
            ExprKind::Number(_) | ExprKind::Text(_) | ExprKind::Bool(_) | ExprKind::List(_)
        )
    };
    let (wrong, other_type) = if literal(left) && !literal(right) {
        (left, right_type)
    } else {
        (right, left_type)
    };
    let hint = match (&wrong.kind, other_type) {
        (ExprKind::Text(text), Type::Number) if text.trim().parse::<f64>().is_ok() => {
            format!(": write the number without quotes, {}", text.trim())
        }
        (ExprKind::Text(text), Type::Bool) if matches!(text.as_str(), "true" | "false") => {
            format!(": write {text} without quotes")
        }
        (ExprKind::Number(_) | ExprKind::Bool(_), Type::Text) => {
            format!(": put the value in quotes, '{wrong}'")
        }
        _ => format!(": {} compares values of the same kind", op.as_str()),
    };
    ExprError::new(
        wrong.offset,
        format!("`{left}` is {left_type} but `{right}` is {right_type}{hint}"),
    )
}

fn call_type(
    function: Function,
    args: &[Expr],
    offset: usize,
    schema: &Schema,
) -> Result<Type, ExprError> {
    let Some(arg) = args.first() else {
        return Err(ExprError::new(
            offset,
            format!("`{}` takes exactly 1 argument", function.name()),
        ));
    };
    let ty = infer(arg, schema)?;
    let what = format!("`{}`", function.name());
    match function {
        Function::Lower | Function::Upper => {
            need(arg, ty, Type::Text, &what)?;
            Ok(Type::Text)
        }
        Function::Len => {
            if !matches!(ty, Type::Text | Type::List | Type::Any) {
                return Err(ExprError::new(
                    arg.offset,
                    format!(
                        "`len` counts the characters of text or the elements of a list, but `{arg}` is {ty}"
                    ),
                ));
            }
            Ok(Type::Number)
        }
        Function::Exists => Ok(Type::Bool),
        Function::Number => Ok(Type::Number),
        Function::DaysSince => {
            if !matches!(ty, Type::Text | Type::Number | Type::Any) {
                return Err(ExprError::new(
                    arg.offset,
                    format!(
                        "`days_since` takes a date (text such as '2024-05-01' or '2024-05-01T10:00:00Z') or Unix milliseconds, but `{arg}` is {ty}"
                    ),
                ));
            }
            Ok(Type::Number)
        }
    }
}

/// The contact attributes other than `fields`.
const CONTACT_ATTRIBUTES: &str =
    "contact.id, contact.name, contact.phone, contact.email, contact.tags or contact.fields.<key>";

fn path_type(path: &Path, schema: &Schema) -> Result<Type, ExprError> {
    if path.root != Root::Contact {
        return Ok(Type::Any);
    }
    let error = |message: String| Err(ExprError::new(path.offset, message));
    let mut segments = path.segments.iter();
    let Some(first) = segments.next() else {
        return error(format!(
            "`contact` alone is not a value: use {CONTACT_ATTRIBUTES}"
        ));
    };
    let Segment::Key(attribute) = first else {
        return error(format!("`contact` is not a list: use {CONTACT_ATTRIBUTES}"));
    };
    let rest: Vec<&Segment> = segments.collect();
    let (ty, used) = match attribute.as_str() {
        "id" | "name" | "phone" | "email" => (Type::Text, 0),
        "tags" => match rest.first() {
            Some(Segment::Index(_)) => (Type::Text, 1),
            _ => (Type::List, 0),
        },
        "fields" => match rest.first() {
            None => (Type::Any, 0),
            Some(Segment::Index(_)) => {
                return error("`contact.fields` is not a list: write contact.fields.<key>".into());
            }
            Some(Segment::Key(key)) => match schema.contact_fields.get(key) {
                Some(FieldType::Text | FieldType::Date) => (Type::Text, 1),
                Some(FieldType::Number) => (Type::Number, 1),
                Some(FieldType::Bool) => (Type::Bool, 1),
                None if schema.contact_fields.is_empty() => {
                    return error(format!(
                        "unknown contact field `{key}`: no custom contact fields are defined yet"
                    ));
                }
                None => {
                    let known: Vec<String> = schema
                        .contact_fields
                        .keys()
                        .map(|key| format!("`{key}`"))
                        .collect();
                    return error(format!(
                        "unknown contact field `{key}`; the known fields are {}",
                        known.join(", ")
                    ));
                }
            },
        },
        other => {
            return error(format!(
                "unknown contact attribute `{other}`: use {CONTACT_ATTRIBUTES}"
            ));
        }
    };
    if rest.len() > used {
        let prefix = Path {
            root: path.root,
            segments: path.segments.iter().take(used + 1).cloned().collect(),
            offset: path.offset,
        };
        return error(format!(
            "`{prefix}` is {ty}; it has nothing inside to read with `{path}`"
        ));
    }
    Ok(ty)
}
