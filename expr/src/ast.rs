//! The parsed form of an expression. Only [`parse`](crate::parse) builds an [`Expr`], so
//! every tree respects the nesting limit and the walkers (`check`, `eval`, `Display`)
//! can recurse without risking the stack. `Display` writes an expression back in a
//! canonical spelling, which error messages use to quote the part they are about.

use std::fmt;

/// A parsed expression: what it is and the byte offset where it starts in the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub(crate) kind: ExprKind,
    pub(crate) offset: usize,
}

/// The kinds of expression.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number literal.
    Number(f64),
    /// A quoted text literal.
    Text(String),
    /// A list literal, `['a', 'b']`.
    List(Vec<Expr>),
    /// A path into the contact, the trigger or earlier steps' outputs.
    Path(Path),
    /// A function call.
    Call {
        /// The function.
        function: Function,
        /// Its arguments (each function takes exactly one).
        args: Vec<Expr>,
    },
    /// `not x`.
    Not(Box<Expr>),
    /// `a and b and …` (two or more operands).
    And(Vec<Expr>),
    /// `a or b or …` (two or more operands).
    Or(Vec<Expr>),
    /// A comparison of two values.
    Compare {
        /// The operator.
        op: CompareOp,
        /// The byte offset of the operator.
        op_offset: usize,
        /// The left operand.
        left: Box<Expr>,
        /// The right operand.
        right: Box<Expr>,
    },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `contains`: text contains text (case-insensitively) or a list contains an element.
    Contains,
    /// `in`: an element is in a list (or text in text).
    In,
    /// `not in`: the negation of `in`.
    NotIn,
    /// `starts_with` (case-insensitive).
    StartsWith,
    /// `ends_with` (case-insensitive).
    EndsWith,
}

impl CompareOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Contains => "contains",
            CompareOp::In => "in",
            CompareOp::NotIn => "not in",
            CompareOp::StartsWith => "starts_with",
            CompareOp::EndsWith => "ends_with",
        }
    }
}

/// A built-in function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// `lower(text)`.
    Lower,
    /// `upper(text)`.
    Upper,
    /// `len(text or list)`: characters or elements.
    Len,
    /// `exists(path)`: whether the path has a non-null value.
    Exists,
    /// `number(x)`: a number, or text holding one; null otherwise.
    Number,
    /// `days_since(date)`: whole days from a Unix-ms number or a date text until now.
    DaysSince,
}

/// Every function, for error messages and lookups.
pub(crate) const FUNCTIONS: [Function; 6] = [
    Function::Lower,
    Function::Upper,
    Function::Len,
    Function::Exists,
    Function::Number,
    Function::DaysSince,
];

impl Function {
    /// The function's name.
    pub fn name(self) -> &'static str {
        match self {
            Function::Lower => "lower",
            Function::Upper => "upper",
            Function::Len => "len",
            Function::Exists => "exists",
            Function::Number => "number",
            Function::DaysSince => "days_since",
        }
    }
}

/// Where a path starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Root {
    /// `contact`: the run's contact (`id`, `name`, `phone`, `email`, `tags`, `fields`).
    Contact,
    /// `trigger`: the trigger's payload.
    Trigger,
    /// `steps`: earlier steps' outputs, keyed by step id.
    Steps,
}

impl Root {
    /// The root's name.
    pub fn name(self) -> &'static str {
        match self {
            Root::Contact => "contact",
            Root::Trigger => "trigger",
            Root::Steps => "steps",
        }
    }
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// An object key: `.name` or `["key with space"]`.
    Key(String),
    /// A list position: `[0]`.
    Index(usize),
}

/// A path such as `contact.fields.plan`, `trigger["order id"]` or `steps.ask.reply`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    /// Where it starts.
    pub root: Root,
    /// The steps after the root.
    pub segments: Vec<Segment>,
    /// The byte offset of the path in the text it was parsed from.
    pub offset: usize,
}

impl Path {
    /// The first key after the root, if any: for `steps.ask.reply`, the step id `ask`.
    pub fn first_key(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Key(key)) => Some(key),
            _ => None,
        }
    }
}

impl Expr {
    /// What the expression is.
    pub fn kind(&self) -> &ExprKind {
        &self.kind
    }

    /// The byte offset where the expression starts in the text it was parsed from.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Every path the expression reads, in the order written (to check, for example,
    /// that `steps.<id>` names an earlier step).
    pub fn paths(&self) -> Vec<&Path> {
        let mut paths = Vec::new();
        self.collect_paths(&mut paths);
        paths
    }

    fn collect_paths<'a>(&'a self, paths: &mut Vec<&'a Path>) {
        match &self.kind {
            ExprKind::Null | ExprKind::Bool(_) | ExprKind::Number(_) | ExprKind::Text(_) => {}
            ExprKind::Path(path) => paths.push(path),
            ExprKind::List(items)
            | ExprKind::And(items)
            | ExprKind::Or(items)
            | ExprKind::Call { args: items, .. } => {
                for item in items {
                    item.collect_paths(paths);
                }
            }
            ExprKind::Not(inner) => inner.collect_paths(paths),
            ExprKind::Compare { left, right, .. } => {
                left.collect_paths(paths);
                right.collect_paths(paths);
            }
        }
    }

    /// Binding strength, for deciding where `Display` needs parentheses.
    fn precedence(&self) -> u8 {
        match self.kind {
            ExprKind::Or(_) => 1,
            ExprKind::And(_) => 2,
            ExprKind::Not(_) => 3,
            ExprKind::Compare { .. } => 4,
            _ => 5,
        }
    }

    fn fmt_operand(&self, f: &mut fmt::Formatter<'_>, min: u8) -> fmt::Result {
        if self.precedence() < min {
            write!(f, "({self})")
        } else {
            write!(f, "{self}")
        }
    }
}

/// Writes a number the way a person would type it (`3`, not `3.0`).
pub(crate) fn format_number(number: f64) -> String {
    if number.fract() == 0.0 && number.abs() < 1e15 {
        format!("{number:.0}")
    } else {
        format!("{number}")
    }
}

/// Writes a text literal in single quotes, escaping what needs it.
pub(crate) fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.root.name())?;
        for segment in &self.segments {
            match segment {
                Segment::Key(key) if is_identifier(key) => write!(f, ".{key}")?,
                Segment::Key(key) => write!(f, "[{}]", quote(key))?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Null => f.write_str("null"),
            ExprKind::Bool(value) => write!(f, "{value}"),
            ExprKind::Number(number) => f.write_str(&format_number(*number)),
            ExprKind::Text(text) => f.write_str(&quote(text)),
            ExprKind::Path(path) => write!(f, "{path}"),
            ExprKind::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            ExprKind::Call { function, args } => {
                write!(f, "{}(", function.name())?;
                for (i, arg) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{arg}")?;
                }
                f.write_str(")")
            }
            ExprKind::Not(inner) => {
                f.write_str("not ")?;
                inner.fmt_operand(f, 3)
            }
            ExprKind::And(items) | ExprKind::Or(items) => {
                let (word, min) = if matches!(self.kind, ExprKind::And(_)) {
                    (" and ", 3)
                } else {
                    (" or ", 2)
                };
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(word)?;
                    }
                    item.fmt_operand(f, min)?;
                }
                Ok(())
            }
            ExprKind::Compare {
                op, left, right, ..
            } => {
                left.fmt_operand(f, 5)?;
                write!(f, " {} ", op.as_str())?;
                right.fmt_operand(f, 5)
            }
        }
    }
}
