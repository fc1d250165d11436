//! Evaluating an expression against one run's data. Lenient by design: the data comes
//! from contacts, trigger payloads and other steps, so a missing path is `null` and an
//! operator given values it cannot work on is `false` (or a function `null`) rather
//! than an error that would stop the run.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use crate::ast::{CompareOp, Expr, ExprKind, Function, Path, Root, Segment};
use crate::error::ExprError;
use crate::timestamps::{MS_PER_DAY, timestamp_ms};

/// The data an expression reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    /// The run's contact: `{"id", "name", "phone", "email", "tags": [...], "fields": {...}}`
    /// (`null` when the run has none).
    pub contact: Value,
    /// The trigger's payload.
    pub trigger: Value,
    /// Earlier steps' outputs, an object keyed by step id.
    pub steps: Value,
    /// The current time in Unix milliseconds (for `days_since`).
    pub now_ms: i64,
}

/// Evaluates `expr` against `context`.
///
/// Missing paths are `null`. `==` and `!=` compare any two values (numbers by value,
/// `missing == null` is true, `missing != 'x'` is true); `<`, `<=`, `>`, `>=` order two
/// numbers or two texts and are false otherwise (so any comparison with `null` is
/// false); `contains`, `in`, `starts_with` and `ends_with` compare text
/// case-insensitively and are false for values they cannot work on. `and`, `or` and
/// `not` use [`truthy`].
///
/// An expression from [`parse`](crate::parse) always evaluates; the `Result` leaves room
/// for functions that can fail.
///
/// ```
/// use postdog_expr::{Context, eval, parse};
/// use serde_json::json;
/// let context = Context {
///     contact: json!({"name": "Ada", "tags": ["VIP"], "fields": {"age": 36}}),
///     ..Context::default()
/// };
/// let expr = parse("contact.tags contains 'vip' and contact.fields.age >= 18").unwrap();
/// assert_eq!(eval(&expr, &context), Ok(json!(true)));
/// ```
pub fn eval(expr: &Expr, context: &Context) -> Result<Value, ExprError> {
    Ok(value_of(expr, context))
}

/// Whether a value counts as true: `null`, `false`, `0`, `""`, `[]` and `{}` do not;
/// everything else does.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(value) => *value,
        Value::Number(number) => number.as_f64().is_some_and(|n| n != 0.0),
        Value::String(text) => !text.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

/// The value at `path`, or `Value::Null` when any step of it is missing.
pub fn resolve<'a>(path: &Path, context: &'a Context) -> &'a Value {
    static NULL: Value = Value::Null;
    let mut value = match path.root {
        Root::Contact => &context.contact,
        Root::Trigger => &context.trigger,
        Root::Steps => &context.steps,
    };
    for segment in &path.segments {
        let next = match (segment, value) {
            (Segment::Key(key), Value::Object(map)) => map.get(key),
            (Segment::Index(index), Value::Array(items)) => items.get(*index),
            _ => None,
        };
        match next {
            Some(next) => value = next,
            None => return &NULL,
        }
    }
    value
}

fn value_of(expr: &Expr, context: &Context) -> Value {
    match &expr.kind {
        ExprKind::Null => Value::Null,
        ExprKind::Bool(value) => Value::Bool(*value),
        ExprKind::Number(number) => number_value(*number),
        ExprKind::Text(text) => Value::String(text.clone()),
        ExprKind::List(items) => {
            Value::Array(items.iter().map(|item| value_of(item, context)).collect())
        }
        ExprKind::Path(path) => resolve(path, context).clone(),
        ExprKind::Call { function, args } => {
            let Some(arg) = args.first() else {
                return Value::Null;
            };
            call(*function, arg, context)
        }
        ExprKind::Not(inner) => Value::Bool(!truthy(&value_of(inner, context))),
        ExprKind::And(items) => {
            Value::Bool(items.iter().all(|item| truthy(&value_of(item, context))))
        }
        ExprKind::Or(items) => {
            Value::Bool(items.iter().any(|item| truthy(&value_of(item, context))))
        }
        ExprKind::Compare {
            op, left, right, ..
        } => Value::Bool(compare(
            *op,
            &value_of(left, context),
            &value_of(right, context),
        )),
    }
}

/// A JSON number for `number`: whole numbers become integers (so they render as `3`, not
/// `3.0`); non-finite numbers, which JSON cannot hold, become `null`.
pub(crate) fn number_value(number: f64) -> Value {
    if number.fract() == 0.0 && number.abs() < 9_007_199_254_740_992.0 {
        // Checked just above: a whole number within ±2^53 is exactly an i64.
        #[allow(clippy::cast_possible_truncation)]
        return Value::from(number as i64);
    }
    Number::from_f64(number).map_or(Value::Null, Value::Number)
}

fn call(function: Function, arg: &Expr, context: &Context) -> Value {
    if function == Function::Exists {
        return Value::Bool(match &arg.kind {
            ExprKind::Path(path) => !resolve(path, context).is_null(),
            _ => !value_of(arg, context).is_null(),
        });
    }
    let value = value_of(arg, context);
    match function {
        Function::Lower => match value {
            Value::String(text) => Value::String(text.to_lowercase()),
            other => other,
        },
        Function::Upper => match value {
            Value::String(text) => Value::String(text.to_uppercase()),
            other => other,
        },
        Function::Len => match value {
            Value::Null => Value::from(0),
            Value::String(text) => Value::from(text.chars().count()),
            Value::Array(items) => Value::from(items.len()),
            Value::Object(map) => Value::from(map.len()),
            Value::Bool(_) | Value::Number(_) => Value::Null,
        },
        Function::Number => to_number(&value).map_or(Value::Null, number_value),
        Function::DaysSince => days_since(&value, context.now_ms),
        Function::Exists => Value::Null,
    }
}

fn to_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
        Value::Bool(value) => Some(if *value { 1.0 } else { 0.0 }),
        _ => None,
    }
}

fn days_since(value: &Value, now_ms: i64) -> Value {
    let then_ms = match value {
        Value::Number(number) => number.as_i64().or_else(|| {
            number
                .as_f64()
                .filter(|n| n.is_finite() && n.abs() < 9.0e18)
                // Checked just above: the value fits an i64.
                .map(|n| {
                    #[allow(clippy::cast_possible_truncation)]
                    let whole = n.floor() as i64;
                    whole
                })
        }),
        Value::String(text) => timestamp_ms(text),
        _ => None,
    };
    match then_ms.and_then(|then_ms| now_ms.checked_sub(then_ms)) {
        Some(elapsed) => Value::from(elapsed.div_euclid(MS_PER_DAY)),
        None => Value::Null,
    }
}

/// `==` on JSON values, with numbers compared by value (`1 == 1.0`).
fn equal(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| equal(a, b))
        }
        (Value::Object(a), Value::Object(b)) => objects_equal(a, b),
        (a, b) => a == b,
    }
}

fn objects_equal(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(key, value)| b.get(key).is_some_and(|other| equal(value, other)))
}

/// Element equality for `contains` / `in`: text case-insensitively, the rest by `==`.
fn same_element(element: &Value, needle: &Value) -> bool {
    match (element, needle) {
        (Value::String(a), Value::String(b)) => a.to_lowercase() == b.to_lowercase(),
        (a, b) => equal(a, b),
    }
}

fn contains(haystack: &Value, needle: &Value) -> bool {
    match (haystack, needle) {
        (Value::String(text), Value::String(part)) => {
            text.to_lowercase().contains(&part.to_lowercase())
        }
        (Value::Array(items), needle) if !needle.is_null() => {
            items.iter().any(|item| same_element(item, needle))
        }
        _ => false,
    }
}

fn ordering(left: &Value, right: &Value) -> Option<Ordering> {
    match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

fn affix(left: &Value, right: &Value, start: bool) -> bool {
    let (Value::String(text), Value::String(part)) = (left, right) else {
        return false;
    };
    let (text, part) = (text.to_lowercase(), part.to_lowercase());
    if start {
        text.starts_with(&part)
    } else {
        text.ends_with(&part)
    }
}

fn compare(op: CompareOp, left: &Value, right: &Value) -> bool {
    match op {
        CompareOp::Eq => equal(left, right),
        CompareOp::Ne => !equal(left, right),
        CompareOp::Lt => ordering(left, right) == Some(Ordering::Less),
        CompareOp::Le => matches!(
            ordering(left, right),
            Some(Ordering::Less | Ordering::Equal)
        ),
        CompareOp::Gt => ordering(left, right) == Some(Ordering::Greater),
        CompareOp::Ge => matches!(
            ordering(left, right),
            Some(Ordering::Greater | Ordering::Equal)
        ),
        CompareOp::Contains => contains(left, right),
        CompareOp::In => contains(right, left),
        CompareOp::NotIn => !contains(right, left),
        CompareOp::StartsWith => affix(left, right, true),
        CompareOp::EndsWith => affix(left, right, false),
    }
}
