//! # postdog-expr — conditions and templates for automation flows
//!
//! A small, safe expression language: no loops, no assignment, no arithmetic, no access
//! to anything but the run's contact, trigger payload and earlier steps' outputs. It is
//! pure Rust with no I/O, so the host (validating a flow before it is saved) and the
//! flow-action plugins (evaluating it in the sandbox, `wasm32-wasip2`) share it. No input
//! can make it panic or overflow the stack: nesting is limited to [`MAX_DEPTH`] levels
//! and texts to [`MAX_LENGTH`] bytes.
//!
//! ## Grammar
//!
//! ```text
//! expr       := or
//! or         := and ("or" and)*
//! and        := not ("and" not)*
//! not        := "not" not | comparison
//! comparison := value (op value)?          one comparison at a time: a < b and b < c
//! op         := "==" | "!=" | "<" | "<=" | ">" | ">=" | "contains" | "in" | "not in"
//!             | "starts_with" | "ends_with"
//! value      := number | text | "true" | "false" | "null" | list | path | call | "(" expr ")"
//! number     := -?digits(.digits)?(e[+-]?digits)?      (a float, like JSON)
//! text       := '…' | "…"                  escapes: \\ \' \" \n \t
//! list       := "[" (expr ("," expr)* ","?)? "]"
//! path       := ("contact" | "trigger" | "steps") ("." name | "[" text "]" | "[" digits "]")*
//! name       := [A-Za-z_][A-Za-z0-9_-]*
//! call       := ("lower" | "upper" | "len" | "exists" | "number" | "days_since") "(" expr ")"
//! ```
//!
//! Paths: `contact.id`, `contact.name`, `contact.phone`, `contact.email`, `contact.tags`,
//! `contact.fields.<key>`; `trigger.<a>.<b>…` (also `trigger["key with space"]`,
//! `trigger.items[0]`); `steps.<step_id>.<a>…`. Functions: `lower(x)`, `upper(x)`,
//! `len(x)` (characters or elements), `exists(path)`, `number(x)` (text holding a number
//! becomes one), `days_since(x)` (whole days since a Unix-ms number or a date text,
//! see [`timestamp_ms`]; needs [`Context::now_ms`]).
//!
//! ## Use
//!
//! ```
//! use postdog_expr::{Context, FieldType, Schema, check, eval, parse, truthy};
//! use serde_json::json;
//!
//! let expr = parse("contact.fields.plan in ['pro', 'team'] and not (trigger.total < 100)")?;
//! let mut schema = Schema::default();
//! schema.contact_fields.insert("plan".into(), FieldType::Text);
//! check(&expr, &schema)?; // at save time: unknown fields, type mistakes
//! let context = Context {
//!     contact: json!({"fields": {"plan": "pro"}}),
//!     trigger: json!({"total": 250}),
//!     ..Context::default()
//! };
//! assert!(truthy(&eval(&expr, &context)?));
//! # Ok::<(), postdog_expr::ExprError>(())
//! ```
//!
//! Templates (`Hi {{contact.name}}`) use the same paths: [`render_template`],
//! [`render_template_value`], and [`template_paths`] to validate them.

#![forbid(unsafe_code)]

mod ast;
mod check;
mod error;
mod eval;
mod lexer;
mod parser;
mod template;
mod timestamps;

#[cfg(test)]
mod tests;

pub use ast::{CompareOp, Expr, ExprKind, Function, Path, Root, Segment};
pub use check::{FieldType, Schema, Type, check, infer};
pub use error::ExprError;
pub use eval::{Context, eval, resolve, truthy};
pub use parser::{MAX_DEPTH, MAX_LENGTH};
pub use template::{
    render_template, render_template_value, render_template_with, template_paths, to_text,
};
pub use timestamps::{MS_PER_DAY, timestamp_ms};

/// Parses an expression.
///
/// ```
/// let error = postdog_expr::parse("contact.name == 'Ada' and").unwrap_err();
/// assert_eq!(error.to_string(), "expected a value after `and`, but the expression ends at 25");
/// ```
pub fn parse(text: &str) -> Result<Expr, ExprError> {
    parser::parse(text)
}
