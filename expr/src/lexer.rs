//! Turns expression text into tokens, each with the byte offset where it starts. Only the
//! parser uses it; mistakes that are clear at this level (an unclosed string, `&&`, a
//! lone `=`) are reported here with a hint at the right spelling.

use crate::error::ExprError;

/// One token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A finite number literal (a leading `-` is part of it).
    Number(f64),
    /// A quoted string literal, escapes resolved.
    Text(String),
    /// An identifier or keyword: `[A-Za-z_][A-Za-z0-9_-]*`.
    Word(String),
    Dot,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// The end of the text.
    End,
}

impl Tok {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Number(number) => format!("`{}`", crate::ast::format_number(*number)),
            Tok::Text(text) => format!("`{}`", crate::ast::quote(text)),
            Tok::Word(word) => format!("`{word}`"),
            Tok::Dot => "`.`".into(),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Eq => "`==`".into(),
            Tok::Ne => "`!=`".into(),
            Tok::Lt => "`<`".into(),
            Tok::Le => "`<=`".into(),
            Tok::Gt => "`>`".into(),
            Tok::Ge => "`>=`".into(),
            Tok::End => "the end of the expression".into(),
        }
    }
}

/// A token and the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub offset: usize,
}

fn is_word_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Splits `text` into tokens ending with [`Tok::End`]; offsets are `base` plus the byte
/// offset in `text` (templates lex the inside of a placeholder).
pub(crate) fn tokenize(text: &str, base: usize) -> Result<Vec<Token>, ExprError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let offset = base + start;
        let next = chars.peek().map(|&(_, next)| next);
        let tok = match c {
            c if c.is_whitespace() => continue,
            '.' => Tok::Dot,
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '[' => Tok::LBracket,
            ']' => Tok::RBracket,
            ',' => Tok::Comma,
            '=' if next == Some('=') => {
                chars.next();
                Tok::Eq
            }
            '=' => {
                return Err(ExprError::new(
                    offset,
                    "a single `=` does not compare: write `==`",
                ));
            }
            '!' if next == Some('=') => {
                chars.next();
                Tok::Ne
            }
            '!' => return Err(ExprError::new(offset, "write `not` instead of `!`")),
            '<' if next == Some('=') => {
                chars.next();
                Tok::Le
            }
            '<' => Tok::Lt,
            '>' if next == Some('=') => {
                chars.next();
                Tok::Ge
            }
            '>' => Tok::Gt,
            '&' => return Err(ExprError::new(offset, "write `and` instead of `&&`")),
            '|' => return Err(ExprError::new(offset, "write `or` instead of `||`")),
            '\'' | '"' => Tok::Text(string(&mut chars, c, offset, base)?),
            '-' if next.is_some_and(|next| next.is_ascii_digit()) => {
                Tok::Number(number(text, start, &mut chars, base)?)
            }
            '-' => {
                return Err(ExprError::new(
                    offset,
                    "`-` may only start a negative number such as -5; expressions have no arithmetic",
                ));
            }
            c if c.is_ascii_digit() => Tok::Number(number(text, start, &mut chars, base)?),
            c if is_word_start(c) => {
                let mut end = start + c.len_utf8();
                while let Some(&(at, next)) = chars.peek() {
                    if !is_word_char(next) {
                        break;
                    }
                    end = at + next.len_utf8();
                    chars.next();
                }
                Tok::Word(text.get(start..end).unwrap_or_default().to_string())
            }
            other => {
                return Err(ExprError::new(
                    offset,
                    format!("unexpected character `{other}`; text must be quoted, e.g. 'text'"),
                ));
            }
        };
        tokens.push(Token { tok, offset });
    }
    tokens.push(Token {
        tok: Tok::End,
        offset: base + text.len(),
    });
    Ok(tokens)
}

type Chars<'a> = std::iter::Peekable<std::str::CharIndices<'a>>;

/// Reads a string literal whose opening `quote` was at `offset` (`base` is the offset of
/// the text being lexed).
fn string(
    chars: &mut Chars<'_>,
    quote: char,
    offset: usize,
    base: usize,
) -> Result<String, ExprError> {
    let mut value = String::new();
    loop {
        let Some((_, c)) = chars.next() else {
            return Err(ExprError::new(
                offset,
                format!("this text is never closed: add a `{quote}` at its end"),
            ));
        };
        match c {
            c if c == quote => return Ok(value),
            '\\' => {
                let Some((at, escaped)) = chars.next() else {
                    return Err(ExprError::new(
                        offset,
                        format!("this text is never closed: add a `{quote}` at its end"),
                    ));
                };
                value.push(match escaped {
                    '\\' => '\\',
                    '\'' => '\'',
                    '"' => '"',
                    'n' => '\n',
                    't' => '\t',
                    other => {
                        return Err(ExprError::new(
                            base + at.saturating_sub(1),
                            format!("unknown escape `\\{other}`: use \\\\, \\', \\\", \\n or \\t"),
                        ));
                    }
                });
            }
            c => value.push(c),
        }
    }
}

/// Reads a number starting at byte `start` of `text` (its first character, a digit or
/// `-`, has been consumed): digits, an optional fraction and an optional exponent.
fn number(text: &str, start: usize, chars: &mut Chars<'_>, base: usize) -> Result<f64, ExprError> {
    let bytes = text.as_bytes();
    let mut end = start + 1;
    let digits = |end: &mut usize, chars: &mut Chars<'_>| {
        let mut any = false;
        while bytes.get(*end).is_some_and(u8::is_ascii_digit) {
            *end += 1;
            chars.next();
            any = true;
        }
        any
    };
    digits(&mut end, chars);
    if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        end += 1;
        chars.next();
        digits(&mut end, chars);
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(end + 1), Some(b'+' | b'-')));
        if bytes.get(end + 1 + sign).is_some_and(u8::is_ascii_digit) {
            for _ in 0..=sign {
                chars.next();
            }
            end += 1 + sign;
            digits(&mut end, chars);
        }
    }
    let literal = text.get(start..end).unwrap_or_default();
    match literal.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        _ => Err(ExprError::new(
            base + start,
            format!("`{literal}` is not a number this language can hold; use a smaller one"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<Tok> {
        tokenize(text, 0)
            .expect("valid tokens")
            .into_iter()
            .map(|token| token.tok)
            .collect()
    }

    fn error(text: &str) -> ExprError {
        tokenize(text, 0).expect_err("a lexing error")
    }

    #[test]
    fn tokens_and_offsets() {
        let tokens = tokenize("a.b-c == 'x' ", 3).expect("valid");
        let offsets: Vec<usize> = tokens.iter().map(|token| token.offset).collect();
        assert_eq!(offsets, [3, 4, 5, 9, 12, 16]);
        assert_eq!(
            toks("x<=1 >= 2 < > != ( ) [ ] ,"),
            [
                Tok::Word("x".into()),
                Tok::Le,
                Tok::Number(1.0),
                Tok::Ge,
                Tok::Number(2.0),
                Tok::Lt,
                Tok::Gt,
                Tok::Ne,
                Tok::LParen,
                Tok::RParen,
                Tok::LBracket,
                Tok::RBracket,
                Tok::Comma,
                Tok::End
            ]
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(toks("12"), [Tok::Number(12.0), Tok::End]);
        assert_eq!(toks("-1.5"), [Tok::Number(-1.5), Tok::End]);
        assert_eq!(toks("2e3"), [Tok::Number(2000.0), Tok::End]);
        assert_eq!(toks("2E-1"), [Tok::Number(0.2), Tok::End]);
        // `1.` followed by a name is a number and a path step, not a fraction.
        assert_eq!(
            toks("1.x"),
            [Tok::Number(1.0), Tok::Dot, Tok::Word("x".into()), Tok::End]
        );
        assert!(error("1e999").message.contains("not a number"));
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(
            toks(r#"'it\'s' "say \"hi\"" 'a\\b\n\t'"#),
            [
                Tok::Text("it's".into()),
                Tok::Text("say \"hi\"".into()),
                Tok::Text("a\\b\n\t".into()),
                Tok::End
            ]
        );
        assert_eq!(toks("'é ü'"), [Tok::Text("é ü".into()), Tok::End]);
        let unclosed = error("x == 'abc");
        assert_eq!(unclosed.offset, 5);
        assert!(unclosed.message.contains("never closed"));
        let escape = error(r"'a\q'");
        assert_eq!(escape.offset, 2);
        assert!(escape.message.contains("unknown escape"));
        assert!(error(r"'a\").message.contains("never closed"));
    }

    #[test]
    fn wrong_spellings_get_hints() {
        assert!(error("a = b").message.contains("`==`"));
        assert!(error("a && b").message.contains("`and`"));
        assert!(error("a || b").message.contains("`or`"));
        assert!(error("!a").message.contains("`not`"));
        assert!(error("a - b").message.contains("no arithmetic"));
        let unknown = error("a # b");
        assert_eq!(unknown.offset, 2);
        assert!(unknown.message.contains("unexpected character `#`"));
    }
}
