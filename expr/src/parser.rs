//! Recursive-descent parser from tokens to an [`Expr`]. Nesting (parentheses, `not`,
//! lists, function calls) is counted and refused beyond [`MAX_DEPTH`] levels, and `and` /
//! `or` chains are flattened, so neither the parser nor the tree walkers can exhaust the
//! stack whatever the input.

use crate::ast::{CompareOp, Expr, ExprKind, FUNCTIONS, Function, Path, Root, Segment};
use crate::error::ExprError;
use crate::lexer::{Tok, Token, tokenize};

/// How deeply parentheses, `not`, lists and function calls may nest.
pub const MAX_DEPTH: usize = 64;
/// The longest expression text accepted, in bytes.
pub const MAX_LENGTH: usize = 64 * 1024;

/// Words that are operators or literals, never paths.
const KEYWORDS: [&str; 10] = [
    "and",
    "or",
    "not",
    "true",
    "false",
    "null",
    "contains",
    "in",
    "starts_with",
    "ends_with",
];

struct Parser {
    tokens: Vec<Token>,
    position: usize,
    depth: usize,
}

/// Parses a whole expression.
pub(crate) fn parse(text: &str) -> Result<Expr, ExprError> {
    if text.len() > MAX_LENGTH {
        return Err(ExprError::new(
            MAX_LENGTH,
            format!(
                "the expression is longer than {MAX_LENGTH} bytes; split it into several steps"
            ),
        ));
    }
    let mut parser = Parser::new(tokenize(text, 0)?);
    if parser.peek() == &Tok::End {
        return Err(ExprError::new(
            0,
            "the expression is empty: write a condition such as `contact.name != ''`",
        ));
    }
    let expr = parser.or()?;
    parser.finish(&expr)?;
    Ok(expr)
}

/// Parses a path alone (the inside of a template placeholder), `base` being the offset of
/// `text` in the template.
pub(crate) fn parse_path(text: &str, base: usize) -> Result<Path, ExprError> {
    let mut parser = Parser::new(tokenize(text, base)?);
    let token = parser.next();
    let hint = "a placeholder holds a path such as `contact.name`, `trigger.order_id` or `steps.ask.reply`";
    let root = match &token.tok {
        Tok::Word(word) => root_of(word),
        _ => None,
    };
    let Some(root) = root else {
        return Err(ExprError::new(
            token.offset,
            format!("{} is not a path: {hint}", token.tok.describe()),
        ));
    };
    let path = parser.path_rest(root, token.offset)?;
    let rest = parser.next();
    if rest.tok != Tok::End {
        return Err(ExprError::new(
            rest.offset,
            format!("unexpected {} after `{path}`: {hint}", rest.tok.describe()),
        ));
    }
    Ok(path)
}

fn root_of(word: &str) -> Option<Root> {
    match word {
        "contact" => Some(Root::Contact),
        "trigger" => Some(Root::Trigger),
        "steps" => Some(Root::Steps),
        _ => None,
    }
}

fn is_word(tok: &Tok, word: &str) -> bool {
    matches!(tok, Tok::Word(w) if w == word)
}

impl Parser {
    fn new(tokens: Vec<Token>) -> Self {
        Self {
            tokens,
            position: 0,
            depth: 0,
        }
    }

    fn token(&self, ahead: usize) -> &Token {
        // `tokenize` always ends the list with `End`; past it, keep answering `End`.
        let last = self.tokens.len().saturating_sub(1);
        &self.tokens[(self.position + ahead).min(last)]
    }

    fn peek(&self) -> &Tok {
        &self.token(0).tok
    }

    fn next(&mut self) -> Token {
        let token = self.token(0).clone();
        if token.tok != Tok::End {
            self.position += 1;
        }
        token
    }

    /// The token before the current one, for "after `x`" in messages.
    fn previous(&self) -> Option<&Token> {
        self.position
            .checked_sub(1)
            .and_then(|index| self.tokens.get(index))
    }

    fn enter(&mut self, offset: usize) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ExprError::new(
                offset,
                format!(
                    "the expression nests more than {MAX_DEPTH} levels deep; split it into simpler conditions"
                ),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let first = self.and()?;
        if !is_word(self.peek(), "or") {
            return Ok(first);
        }
        let offset = first.offset;
        let mut items = vec![first];
        while is_word(self.peek(), "or") {
            self.next();
            items.push(self.and()?);
        }
        Ok(Expr {
            kind: ExprKind::Or(items),
            offset,
        })
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let first = self.not()?;
        if !is_word(self.peek(), "and") {
            return Ok(first);
        }
        let offset = first.offset;
        let mut items = vec![first];
        while is_word(self.peek(), "and") {
            self.next();
            items.push(self.not()?);
        }
        Ok(Expr {
            kind: ExprKind::And(items),
            offset,
        })
    }

    fn not(&mut self) -> Result<Expr, ExprError> {
        if !is_word(self.peek(), "not") {
            return self.comparison();
        }
        let offset = self.next().offset;
        self.enter(offset)?;
        let inner = self.not()?;
        self.leave();
        Ok(Expr {
            kind: ExprKind::Not(Box::new(inner)),
            offset,
        })
    }

    /// The comparison operator at the current position, if any, and how many tokens it
    /// takes (`not in` takes two).
    fn comparison_op(&self) -> Option<(CompareOp, usize)> {
        let op = match self.peek() {
            Tok::Eq => CompareOp::Eq,
            Tok::Ne => CompareOp::Ne,
            Tok::Lt => CompareOp::Lt,
            Tok::Le => CompareOp::Le,
            Tok::Gt => CompareOp::Gt,
            Tok::Ge => CompareOp::Ge,
            Tok::Word(word) => match word.as_str() {
                "contains" => CompareOp::Contains,
                "in" => CompareOp::In,
                "starts_with" => CompareOp::StartsWith,
                "ends_with" => CompareOp::EndsWith,
                "not" if is_word(&self.token(1).tok, "in") => return Some((CompareOp::NotIn, 2)),
                _ => return None,
            },
            _ => return None,
        };
        Some((op, 1))
    }

    fn comparison(&mut self) -> Result<Expr, ExprError> {
        let left = self.primary()?;
        let Some((op, width)) = self.comparison_op() else {
            return Ok(left);
        };
        let op_offset = self.token(0).offset;
        for _ in 0..width {
            self.next();
        }
        let right = self.primary()?;
        if let Some((second, _)) = self.comparison_op() {
            return Err(ExprError::new(
                self.token(0).offset,
                format!(
                    "`{}` cannot follow a comparison directly: compare two values at a time and join comparisons with `and`, e.g. `a < b and b < c`",
                    second.as_str()
                ),
            ));
        }
        let offset = left.offset;
        Ok(Expr {
            kind: ExprKind::Compare {
                op,
                op_offset,
                left: Box::new(left),
                right: Box::new(right),
            },
            offset,
        })
    }

    /// A value was expected but `token` came: say what is missing.
    fn expected_value(&self, token: &Token) -> ExprError {
        let after = match self.previous() {
            Some(previous) => format!(" after {}", previous.tok.describe()),
            None => String::new(),
        };
        let found = match &token.tok {
            Tok::End => ", but the expression ends".to_string(),
            other => format!(", found {}", other.describe()),
        };
        ExprError::new(token.offset, format!("expected a value{after}{found}"))
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let token = self.token(0).clone();
        let offset = token.offset;
        let kind = match &token.tok {
            Tok::Number(number) => {
                self.next();
                ExprKind::Number(*number)
            }
            Tok::Text(text) => {
                self.next();
                ExprKind::Text(text.clone())
            }
            Tok::LParen => {
                self.next();
                self.enter(offset)?;
                let inner = self.or()?;
                self.expect_close(&Tok::RParen, "`)`", "the `(`", offset)?;
                self.leave();
                return Ok(inner);
            }
            Tok::LBracket => {
                self.next();
                self.enter(offset)?;
                let items = self.items(&Tok::RBracket, "`]`", "the list", offset)?;
                self.leave();
                ExprKind::List(items)
            }
            Tok::Word(word) => match word.as_str() {
                "true" => {
                    self.next();
                    ExprKind::Bool(true)
                }
                "false" => {
                    self.next();
                    ExprKind::Bool(false)
                }
                "null" => {
                    self.next();
                    ExprKind::Null
                }
                word if self.token(1).tok == Tok::LParen => {
                    let word = word.to_string();
                    self.next();
                    self.next();
                    return self.call(&word, offset);
                }
                word => {
                    if let Some(root) = root_of(word) {
                        self.next();
                        ExprKind::Path(self.path_rest(root, offset)?)
                    } else if KEYWORDS.contains(&word) {
                        return Err(self.expected_value(&token));
                    } else {
                        return Err(unknown_name(word, offset));
                    }
                }
            },
            _ => return Err(self.expected_value(&token)),
        };
        Ok(Expr { kind, offset })
    }

    /// Expects `close` (after a group, list or call that started at `open_offset`).
    fn expect_close(
        &mut self,
        close: &Tok,
        close_text: &str,
        what: &str,
        open_offset: usize,
    ) -> Result<(), ExprError> {
        let token = self.next();
        if &token.tok == close {
            return Ok(());
        }
        Err(ExprError::new(
            token.offset,
            format!(
                "expected {close_text} to close {what} opened at {open_offset}, found {}",
                token.tok.describe()
            ),
        ))
    }

    /// Comma-separated expressions up to `close` (a trailing comma is fine).
    fn items(
        &mut self,
        close: &Tok,
        close_text: &str,
        what: &str,
        open_offset: usize,
    ) -> Result<Vec<Expr>, ExprError> {
        let mut items = Vec::new();
        loop {
            if self.peek() == close {
                self.next();
                return Ok(items);
            }
            items.push(self.or()?);
            if self.peek() == &Tok::Comma {
                self.next();
            } else {
                self.expect_close(close, close_text, what, open_offset)?;
                return Ok(items);
            }
        }
    }

    fn call(&mut self, name: &str, offset: usize) -> Result<Expr, ExprError> {
        let Some(function) = FUNCTIONS.into_iter().find(|f| f.name() == name) else {
            let known: Vec<&str> = FUNCTIONS.iter().map(|f| f.name()).collect();
            return Err(ExprError::new(
                offset,
                format!(
                    "unknown function `{name}`: use {}",
                    known
                        .iter()
                        .map(|name| format!("`{name}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        self.enter(offset)?;
        let args = self.items(&Tok::RParen, "`)`", &format!("`{name}(`"), offset)?;
        self.leave();
        if args.len() != 1 {
            return Err(ExprError::new(
                offset,
                format!(
                    "`{name}` takes exactly 1 argument, but {} {} given",
                    args.len(),
                    if args.len() == 1 { "was" } else { "were" }
                ),
            ));
        }
        if function == Function::Exists
            && !args.iter().all(|arg| matches!(arg.kind, ExprKind::Path(_)))
        {
            return Err(ExprError::new(
                args.first().map_or(offset, |arg| arg.offset),
                "`exists` takes a path such as `contact.fields.plan` or `trigger.order_id`",
            ));
        }
        Ok(Expr {
            kind: ExprKind::Call { function, args },
            offset,
        })
    }

    /// The steps of a path after its root word.
    fn path_rest(&mut self, root: Root, offset: usize) -> Result<Path, ExprError> {
        let mut segments = Vec::new();
        loop {
            match self.peek() {
                Tok::Dot => {
                    self.next();
                    let token = self.next();
                    match token.tok {
                        Tok::Word(word) => segments.push(Segment::Key(word)),
                        other => {
                            return Err(ExprError::new(
                                token.offset,
                                format!(
                                    "expected a name after `.`, found {}; write keys that are not plain names as [\"key\"]",
                                    other.describe()
                                ),
                            ));
                        }
                    }
                }
                Tok::LBracket => {
                    let open = self.next().offset;
                    let token = self.next();
                    let segment = match token.tok {
                        Tok::Text(key) => Segment::Key(key),
                        Tok::Number(number)
                            if number >= 0.0 && number.fract() == 0.0 && number < 1e9 =>
                        {
                            // Checked just above: a whole number below 1e9 fits a usize.
                            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                            Segment::Index(number as usize)
                        }
                        other => {
                            return Err(ExprError::new(
                                token.offset,
                                format!(
                                    "expected a quoted key such as [\"order id\"] or a position such as [0] inside `[ ]`, found {}",
                                    other.describe()
                                ),
                            ));
                        }
                    };
                    self.expect_close(&Tok::RBracket, "`]`", "the `[`", open)?;
                    segments.push(segment);
                }
                _ => {
                    return Ok(Path {
                        root,
                        segments,
                        offset,
                    });
                }
            }
        }
    }

    /// Everything must have been read.
    fn finish(&mut self, expr: &Expr) -> Result<(), ExprError> {
        let token = self.next();
        match token.tok {
            Tok::End => Ok(()),
            Tok::RParen => Err(ExprError::new(
                token.offset,
                "this `)` closes nothing: remove it or add the matching `(`",
            )),
            other => Err(ExprError::new(
                token.offset,
                format!(
                    "unexpected {} after `{expr}`: join conditions with `and` or `or`, or compare with an operator such as `==` or `contains`",
                    other.describe()
                ),
            )),
        }
    }
}

fn unknown_name(word: &str, offset: usize) -> ExprError {
    let lower = word.to_ascii_lowercase();
    if lower != word && (KEYWORDS.contains(&lower.as_str()) || root_of(&lower).is_some()) {
        return ExprError::new(
            offset,
            format!("unknown name `{word}`: keywords and paths are lower case, write `{lower}`"),
        );
    }
    ExprError::new(
        offset,
        format!(
            "unknown name `{word}`: paths start with `contact.`, `trigger.` or `steps.`, and text needs quotes, e.g. '{word}'"
        ),
    )
}
