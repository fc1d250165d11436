//! The machinery behind `Manifest::parse`: walks the span-carrying TOML tree that
//! `toml::de::DeTable` produces, reads typed values out of it and collects every mistake
//! with the byte offset it points at, so the parser can report all of them at once (a
//! serde derive would stop at the first). Byte offsets become 1-based line and column
//! numbers only when the errors are handed out.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::ManifestError;

/// A TOML value with the byte range it was written at.
pub(crate) type Node<'i> = Spanned<DeValue<'i>>;

/// Collects mistakes found in one manifest text.
pub(crate) struct Checker<'t> {
    text: &'t str,
    errors: Vec<(usize, String)>,
}

impl<'t> Checker<'t> {
    pub(crate) fn new(text: &'t str) -> Self {
        Self {
            text,
            errors: Vec::new(),
        }
    }

    /// Records a mistake at byte `offset`.
    pub(crate) fn error(&mut self, offset: usize, message: impl Into<String>) {
        self.errors.push((offset, message.into()));
    }

    /// How many mistakes were recorded so far (to tell whether a sub-parse failed).
    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// Records TOML syntax errors. Recovery after a syntax error tends to cascade, so only
    /// the first error of each line is kept.
    pub(crate) fn syntax_errors(&mut self, errors: Vec<toml::de::Error>) {
        let mut located: Vec<(usize, String)> = errors
            .into_iter()
            .map(|error| {
                let span = error.span().unwrap_or(0..0);
                let message = if error.message() == "duplicate key" {
                    let key = self.text.get(span.clone()).unwrap_or("").trim();
                    format!(
                        "duplicate key `{key}`: a key (or table header) may appear only once \
                         in a table; remove or rename one of them"
                    )
                } else {
                    format!("invalid TOML: {}", error.message())
                };
                (span.start, message)
            })
            .collect();
        located.sort_by_key(|(offset, _)| *offset);
        let mut last_line = None;
        for (offset, message) in located {
            let (line, _) = line_column(self.text, offset);
            if last_line != Some(line) {
                self.errors.push((offset, message));
                last_line = Some(line);
            }
        }
    }

    /// The recorded mistakes with their positions, in the order they appear in the text.
    pub(crate) fn into_errors(self) -> Vec<ManifestError> {
        let mut errors: Vec<ManifestError> = self
            .errors
            .into_iter()
            .map(|(offset, message)| {
                let (line, column) = line_column(self.text, offset);
                ManifestError {
                    line,
                    column,
                    message,
                }
            })
            .collect();
        // Stable: mistakes at the same place keep the order they were found in.
        errors.sort_by_key(|error| (error.line, error.column));
        errors.dedup();
        errors
    }

    /// The string at `key`, or `None` (after recording why) when it is missing and
    /// required, or is not a string.
    pub(crate) fn string<'a>(
        &mut self,
        table: &TableView<'a, '_>,
        key: &str,
        required: bool,
    ) -> Option<(&'a str, Range<usize>)> {
        let node = self.value(table, key, required)?;
        match node.get_ref() {
            DeValue::String(text) => Some((text.as_ref(), node.span())),
            other => {
                self.wrong_type(table, key, node, "a string", other);
                None
            }
        }
    }

    /// The integer at `key` (see [`Checker::string`]).
    pub(crate) fn integer(
        &mut self,
        table: &TableView<'_, '_>,
        key: &str,
        required: bool,
    ) -> Option<(i64, Range<usize>)> {
        let node = self.value(table, key, required)?;
        match node.get_ref() {
            DeValue::Integer(integer) => {
                match i64::from_str_radix(integer.as_str(), integer.radix()) {
                    Ok(value) => Some((value, node.span())),
                    Err(_) => {
                        self.error(
                            node.span().start,
                            format!("`{key}` in {} is too large", table.label),
                        );
                        None
                    }
                }
            }
            other => {
                self.wrong_type(table, key, node, "an integer", other);
                None
            }
        }
    }

    /// The boolean at `key` (see [`Checker::string`]).
    pub(crate) fn boolean(
        &mut self,
        table: &TableView<'_, '_>,
        key: &str,
        required: bool,
    ) -> Option<(bool, Range<usize>)> {
        let node = self.value(table, key, required)?;
        match node.get_ref() {
            DeValue::Boolean(value) => Some((*value, node.span())),
            other => {
                self.wrong_type(table, key, node, "`true` or `false`", other);
                None
            }
        }
    }

    /// The array of strings at `key`; elements that are not strings are reported and
    /// skipped.
    pub(crate) fn string_array<'a>(
        &mut self,
        table: &TableView<'a, '_>,
        key: &str,
        required: bool,
    ) -> Option<Vec<(&'a str, Range<usize>)>> {
        let node = self.value(table, key, required)?;
        let DeValue::Array(items) = node.get_ref() else {
            self.wrong_type(table, key, node, "an array of strings", node.get_ref());
            return None;
        };
        let mut strings = Vec::with_capacity(items.len());
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(text) => strings.push((text.as_ref(), item.span())),
                other => self.error(
                    item.span().start,
                    format!(
                        "`{key}` in {} must contain only strings, found {}",
                        table.label,
                        type_name(other)
                    ),
                ),
            }
        }
        Some(strings)
    }

    /// The table at `key`, labelled `label` in messages.
    pub(crate) fn table<'a, 'i>(
        &mut self,
        parent: &TableView<'a, 'i>,
        key: &str,
        required: bool,
        label: String,
    ) -> Option<TableView<'a, 'i>> {
        let node = self.value(parent, key, required)?;
        match node.get_ref() {
            DeValue::Table(table) => Some(TableView {
                table,
                span: node.span(),
                label,
            }),
            other => {
                self.wrong_type(parent, key, node, "a table", other);
                None
            }
        }
    }

    /// Reports every key of `table` not in `allowed`, naming a near miss when there is one.
    /// `noun` names what the keys are in messages (`key`, `schema keyword`).
    pub(crate) fn unknown_keys(&mut self, table: &TableView<'_, '_>, allowed: &[&str], noun: &str) {
        for (key, _) in table.table.iter() {
            let key_text: &str = key.get_ref();
            if allowed.contains(&key_text) {
                continue;
            }
            let message = match suggest(key_text, allowed.iter().copied()) {
                Some(near) => format!(
                    "unknown {noun} `{key_text}` in {}; did you mean `{near}`?",
                    table.label
                ),
                None => format!(
                    "unknown {noun} `{key_text}` in {}; allowed: {}",
                    table.label,
                    allowed.join(", ")
                ),
            };
            self.error(key.span().start, message);
        }
    }

    fn value<'a, 'i>(
        &mut self,
        table: &TableView<'a, 'i>,
        key: &str,
        required: bool,
    ) -> Option<&'a Node<'i>> {
        let found = table.get(key);
        if found.is_none() && required {
            self.error(
                table.span.start,
                format!("missing required key `{key}` in {}", table.label),
            );
        }
        found
    }

    fn wrong_type(
        &mut self,
        table: &TableView<'_, '_>,
        key: &str,
        node: &Node<'_>,
        expected: &str,
        found: &DeValue<'_>,
    ) {
        self.error(
            node.span().start,
            format!(
                "`{key}` in {} must be {expected}, found {}",
                table.label,
                type_name(found)
            ),
        );
    }
}

/// A TOML table with where it was written and how messages name it (`[plugin]`).
pub(crate) struct TableView<'a, 'i> {
    pub(crate) table: &'a DeTable<'i>,
    pub(crate) span: Range<usize>,
    pub(crate) label: String,
}

impl<'a, 'i> TableView<'a, 'i> {
    /// The value at `key`, if present.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Node<'i>> {
        self.table.get(key)
    }
}

/// The TOML type of a value, as messages name it.
pub(crate) fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The candidate closest to `word` when it is a plausible typo: same letters ignoring
/// case, `_` and `-`, or at most two edits away (one for words of three letters or fewer).
pub(crate) fn suggest<'c>(
    word: &str,
    candidates: impl Iterator<Item = &'c str>,
) -> Option<&'c str> {
    let normalize = |text: &str| -> String {
        text.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let normalized_word = normalize(word);
    let budget = if word.chars().count() <= 3 { 1 } else { 2 };
    let mut best: Option<(usize, &'c str)> = None;
    for candidate in candidates {
        let distance = if normalize(candidate) == normalized_word {
            0
        } else {
            edit_distance(word, candidate)
        };
        if distance <= budget && best.is_none_or(|(best_distance, _)| distance < best_distance) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, a_char) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, b_char) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(a_char != *b_char);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "ab\nçd = 1\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 3), (2, 1));
        // `d` follows the two-byte `ç`.
        assert_eq!(line_column(text, 5), (2, 2));
        assert_eq!(line_column(text, 1000), (3, 1));
    }

    #[test]
    fn suggestions_catch_typos_and_case_but_not_strangers() {
        let keys = ["name", "version", "minLength"];
        assert_eq!(suggest("nmae", keys.into_iter()), Some("name"));
        assert_eq!(suggest("verison", keys.into_iter()), Some("version"));
        assert_eq!(suggest("min_length", keys.into_iter()), Some("minLength"));
        assert_eq!(suggest("colour", keys.into_iter()), None);
    }
}
