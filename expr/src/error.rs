//! The one error type of the crate: where in the text the problem is and what to fix.

use std::fmt;

/// A problem with an expression or a template: the byte offset in the text where it was
/// found and a message that says what to fix. Its `Display` is `"<message> at <offset>"`,
/// for example `expected a value after `and` at 14`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// Byte offset into the text the error refers to (the text's length for "it ended
    /// too early").
    pub offset: usize,
    /// What is wrong and how to fix it, without the offset.
    pub message: String,
}

impl ExprError {
    pub(crate) fn new(offset: usize, message: impl Into<String>) -> Self {
        Self {
            offset,
            message: message.into(),
        }
    }
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.message, self.offset)
    }
}

impl std::error::Error for ExprError {}
