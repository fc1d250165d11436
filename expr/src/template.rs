//! Message templates: text with `{{ path }}` placeholders, filled from a run's data.
//! Rendering never fails (a run must not stop because a contact lacks a name: a missing
//! value is empty); [`template_paths`] is the strict side, for validating a flow before
//! it is saved.

use serde_json::Value;

use crate::ast::Path;
use crate::error::ExprError;
use crate::eval::{Context, resolve};
use crate::parser::parse_path;

/// One piece of a template.
enum Piece<'a> {
    /// Literal text.
    Text(&'a str),
    /// A placeholder: its raw text (`{{ … }}`) and what parsing its inside gave.
    Placeholder(&'a str, Result<Path, ExprError>),
}

/// Splits `text` into literal text and placeholders; `Err` for an unclosed `{{`.
fn pieces(text: &str) -> Result<Vec<Piece<'_>>, (Vec<Piece<'_>>, ExprError)> {
    let mut pieces = Vec::new();
    let mut rest = 0;
    while let Some(found) = text.get(rest..).and_then(|tail| tail.find("{{")) {
        let open = rest + found;
        let inner_start = open + 2;
        let Some(close) = text.get(inner_start..).and_then(|tail| tail.find("}}")) else {
            pieces.push(Piece::Text(text.get(rest..).unwrap_or_default()));
            let error = ExprError::new(
                open,
                "this `{{` is never closed: end the placeholder with `}}`",
            );
            return Err((pieces, error));
        };
        let inner_end = inner_start + close;
        if open > rest {
            pieces.push(Piece::Text(text.get(rest..open).unwrap_or_default()));
        }
        let inner = text.get(inner_start..inner_end).unwrap_or_default();
        let parsed = if inner.trim().is_empty() {
            Err(ExprError::new(
                open,
                "this placeholder is empty: write a path such as {{contact.name}}",
            ))
        } else {
            parse_path(inner, inner_start)
        };
        pieces.push(Piece::Placeholder(
            text.get(open..inner_end + 2).unwrap_or_default(),
            parsed,
        ));
        rest = inner_end + 2;
    }
    if rest < text.len() {
        pieces.push(Piece::Text(text.get(rest..).unwrap_or_default()));
    }
    Ok(pieces)
}

/// How a value reads inside text: text as it is, `null` as nothing, anything else as
/// JSON (`3`, `true`, `["a"]`).
pub fn to_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Replaces each `{{ path }}` in `text` with the value at the path (see [`to_text`]).
/// A placeholder that is not a valid path, and an unclosed `{{`, are left as written
/// ([`template_paths`] reports them).
///
/// ```
/// use postdog_expr::{Context, render_template};
/// use serde_json::json;
/// let context = Context {
///     contact: json!({"name": "Ada"}),
///     steps: json!({"ask": {"reply": "yes"}}),
///     ..Context::default()
/// };
/// assert_eq!(
///     render_template("Hi {{ contact.name }}, you said {{steps.ask.reply}}{{trigger.x}}!", &context),
///     "Hi Ada, you said yes!"
/// );
/// ```
pub fn render_template(text: &str, context: &Context) -> String {
    render_template_with(text, context, |value| value.to_string())
}

/// Like [`render_template`], but each value is passed through `escape` before it is
/// inserted (for example percent-encoding for a URL); the literal text is not.
///
/// ```
/// use postdog_expr::{Context, render_template_with};
/// use serde_json::json;
/// let context = Context { trigger: json!({"q": "a&b"}), ..Context::default() };
/// let url = render_template_with("https://x.example/?q={{trigger.q}}", &context, |v| v.replace('&', "%26"));
/// assert_eq!(url, "https://x.example/?q=a%26b");
/// ```
pub fn render_template_with(
    text: &str,
    context: &Context,
    escape: impl Fn(&str) -> String,
) -> String {
    let pieces = match pieces(text) {
        Ok(pieces) | Err((pieces, _)) => pieces,
    };
    let mut out = String::with_capacity(text.len());
    for piece in pieces {
        match piece {
            Piece::Text(literal) | Piece::Placeholder(literal, Err(_)) => out.push_str(literal),
            Piece::Placeholder(_, Ok(path)) => {
                out.push_str(&escape(&to_text(resolve(&path, context))));
            }
        }
    }
    out
}

/// Like [`render_template`], but when `text` is exactly one placeholder (spaces around
/// it allowed) the value at the path is returned as it is, number, list or `null`
/// included, so `{{steps.order.total}}` keeps its type when stored in a field.
pub fn render_template_value(text: &str, context: &Context) -> Value {
    if let Ok(pieces) = pieces(text.trim())
        && let [Piece::Placeholder(_, Ok(path))] = pieces.as_slice()
    {
        return resolve(path, context).clone();
    }
    Value::String(render_template(text, context))
}

/// Every placeholder's path in `text`, in order; the first malformed placeholder or an
/// unclosed `{{` is an error with its offset in `text`.
pub fn template_paths(text: &str) -> Result<Vec<Path>, ExprError> {
    let pieces = pieces(text).map_err(|(_, error)| error)?;
    let mut paths = Vec::new();
    for piece in pieces {
        if let Piece::Placeholder(_, parsed) = piece {
            paths.push(parsed?);
        }
    }
    Ok(paths)
}
