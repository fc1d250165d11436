//! WhatsApp message templates as tenants build them: a structured [`TemplateSpec`], a
//! [`lint`] that catches Meta's common rejection reasons before a template is submitted
//! (a rejection costs the tenant a day), the conversion to Meta's creation `components`
//! ([`to_meta_components`]) and the send-time side: turning a tenant's variable values
//! into the Cloud API's send `components` ([`send_components`]) and the text the
//! recipient will read ([`render_preview`]).
//!
//! Pure functions over plain data: no I/O, no clock, no storage; nothing here panics on
//! any input. Variables are Meta's positional `{{1}}`, `{{2}}`, …; lengths are counted in
//! Unicode characters.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Longest template name Meta accepts.
pub const NAME_MAX_CHARS: usize = 512;
/// Longest body text, in characters (also the limit of the body once variables are filled).
pub const BODY_MAX_CHARS: usize = 1024;
/// Longest text header, in characters.
pub const HEADER_TEXT_MAX_CHARS: usize = 60;
/// Longest footer, in characters.
pub const FOOTER_MAX_CHARS: usize = 60;
/// Longest button label, in characters.
pub const BUTTON_TEXT_MAX_CHARS: usize = 25;
/// Most buttons a template may have, all kinds together.
pub const MAX_BUTTONS: usize = 10;
/// Most URL buttons a template may have.
pub const MAX_URL_BUTTONS: usize = 2;
/// Most phone-number buttons a template may have.
pub const MAX_PHONE_BUTTONS: usize = 1;
/// Most copy-code buttons a template may have.
pub const MAX_COPY_CODE_BUTTONS: usize = 1;
/// Longest code a copy-code button may carry.
pub const COPY_CODE_MAX_CHARS: usize = 15;
/// Longest URL of a URL button.
pub const URL_MAX_CHARS: usize = 2000;

/// A WhatsApp message template as a tenant writes it.
///
/// ```json
/// {"name": "order_update", "language": "en_US", "category": "utility",
///  "body": {"text": "Hi {{1}}, order {{2}} has shipped.", "examples": ["Ada", "#1042"]},
///  "buttons": [{"type": "url", "text": "Track it", "url": "https://shop.example/t/{{1}}",
///               "example": "1042"}]}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// Lowercase letters, digits and underscores, e.g. `order_update`.
    pub name: String,
    /// Locale code, e.g. `en_US` or `de`.
    pub language: String,
    /// What the template is for; decides pricing and review rules.
    pub category: Category,
    /// Optional header above the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<Header>,
    /// The message text (required; an empty body is a lint error).
    #[serde(default)]
    pub body: Body,
    /// Optional small grey text under the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footer: Option<String>,
    /// Buttons under the message, in display order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<Button>,
}

/// A template's category. Accepted in any case on input, written in upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE", try_from = "String")]
pub enum Category {
    /// Promotions, offers, announcements.
    Marketing,
    /// Updates about something the recipient did or asked for (orders, bookings…).
    Utility,
    /// One-time passwords.
    Authentication,
}

impl Category {
    /// Meta's spelling: `MARKETING`, `UTILITY` or `AUTHENTICATION`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Marketing => "MARKETING",
            Self::Utility => "UTILITY",
            Self::Authentication => "AUTHENTICATION",
        }
    }
}

impl TryFrom<String> for Category {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.trim().to_ascii_uppercase().as_str() {
            "MARKETING" => Ok(Self::Marketing),
            "UTILITY" => Ok(Self::Utility),
            "AUTHENTICATION" => Ok(Self::Authentication),
            _ => Err(format!(
                "unknown category `{value}`: expected MARKETING, UTILITY or AUTHENTICATION"
            )),
        }
    }
}

/// A template header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// What the header shows.
    pub format: HeaderFormat,
    /// The header text (text headers only); may hold one variable, `{{1}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// For a text header with `{{1}}`: an example value. For a media header: a sample
    /// media URL (or an upload handle), which Meta's review requires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example: Option<String>,
}

/// The kind of a template header. Accepted in any case on input, written in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum HeaderFormat {
    /// A line of bold text.
    Text,
    /// An image.
    Image,
    /// A video.
    Video,
    /// A document (e.g. a PDF).
    Document,
    /// A location pin.
    Location,
}

impl HeaderFormat {
    /// Meta's spelling: `TEXT`, `IMAGE`, `VIDEO`, `DOCUMENT` or `LOCATION`.
    #[must_use]
    pub fn meta_name(self) -> &'static str {
        match self {
            Self::Text => "TEXT",
            Self::Image => "IMAGE",
            Self::Video => "VIDEO",
            Self::Document => "DOCUMENT",
            Self::Location => "LOCATION",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Image => "image",
            Self::Video => "video",
            Self::Document => "document",
            Self::Location => "location",
        }
    }

    fn is_media(self) -> bool {
        matches!(self, Self::Image | Self::Video | Self::Document)
    }
}

impl TryFrom<String> for HeaderFormat {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "image" => Ok(Self::Image),
            "video" => Ok(Self::Video),
            "document" => Ok(Self::Document),
            "location" => Ok(Self::Location),
            _ => Err(format!(
                "unknown header format `{value}`: expected text, image, video, document or location"
            )),
        }
    }
}

/// The template body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    /// The text, with variables `{{1}}`, `{{2}}`, ….
    #[serde(default)]
    pub text: String,
    /// `examples[i]` is the example value of `{{i+1}}`; Meta's review needs one per variable.
    #[serde(default)]
    pub examples: Vec<String>,
}

/// A template button.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Button {
    /// A button that sends its label (or a payload chosen at send time) back as a reply.
    QuickReply {
        /// The label.
        text: String,
    },
    /// A button that opens a web page.
    Url {
        /// The label.
        text: String,
        /// An `https://` URL; may end with one variable, `{{1}}`, filled at send time.
        url: String,
        /// When `url` has `{{1}}`: an example value for it (e.g. `1042`), or a complete
        /// example URL (anything starting with `http://` or `https://` is taken as one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        example: Option<String>,
    },
    /// A button that calls a phone number.
    PhoneNumber {
        /// The label.
        text: String,
        /// The number in E.164 form, e.g. `+15550051310`.
        phone_number: String,
    },
    /// A button that copies a code (e.g. a coupon) to the clipboard.
    CopyCode {
        /// An example code, for review; the real code is given at send time.
        example: String,
    },
}

impl Button {
    fn kind(&self) -> &'static str {
        match self {
            Self::QuickReply { .. } => "quick reply",
            Self::Url { .. } => "URL",
            Self::PhoneNumber { .. } => "phone number",
            Self::CopyCode { .. } => "copy code",
        }
    }

    fn label(&self) -> Option<&str> {
        match self {
            Self::QuickReply { text } | Self::Url { text, .. } | Self::PhoneNumber { text, .. } => {
                Some(text)
            }
            Self::CopyCode { .. } => None,
        }
    }
}

/// How serious a lint finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Meta rejects the template (or it cannot be sent as written): fix before submitting.
    Error,
    /// Meta's review often rejects this, or it renders badly: worth fixing.
    Warning,
}

/// One problem [`lint`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// Where, as a path into the spec: `body.text`, `buttons[2].text`, `header.example`.
    pub field: String,
    /// A stable kebab-case identifier, e.g. `body-too-long`.
    pub code: String,
    /// What is wrong and how to fix it, for a person.
    pub message: String,
}

/// Whether any finding is an error (the template should not be submitted).
#[must_use]
pub fn has_errors(findings: &[Finding]) -> bool {
    findings
        .iter()
        .any(|finding| finding.severity == Severity::Error)
}

/// The number of body values a send needs: the highest variable number in `text` (so
/// `{{1}}` … `{{3}}` gives 3), 0 without variables. Malformed placeholders don't count.
#[must_use]
pub fn variable_count(text: &str) -> usize {
    scan(text)
        .placeholders
        .iter()
        .map(|placeholder| placeholder.number)
        .max()
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Placeholder scanning
// ---------------------------------------------------------------------------------------

/// A well-formed `{{n}}` and its byte range in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Placeholder {
    number: usize,
    start: usize,
    end: usize,
}

/// Something that looks like an attempt at a variable but isn't one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Malformed {
    snippet: String,
    hint: String,
}

#[derive(Debug, Default)]
struct Scan {
    placeholders: Vec<Placeholder>,
    malformed: Vec<Malformed>,
}

/// Content between braces longer than this is not taken for an attempted variable.
const MAX_BRACED_CONTENT: usize = 40;

/// Finds `{{n}}` variables and near-misses (`{{ 1 }}`, `{{name}}`, `{1}`, `{{01}}`, an
/// unclosed `{{`, a stray `}}`). Only ASCII braces are matched, so every slice boundary
/// below sits next to an ASCII byte and is a char boundary.
fn scan(text: &str) -> Scan {
    let bytes = text.as_bytes();
    let mut scan = Scan::default();
    let mut i = 0;
    while i < bytes.len() {
        let here = bytes[i];
        let next = bytes.get(i + 1).copied();
        if here == b'{' && next == Some(b'{') {
            let rest = &text[i + 2..];
            let close = rest.find("}}");
            let reopen = rest.find("{{");
            match close {
                Some(close)
                    if reopen.is_none_or(|reopen| reopen > close)
                        && close <= MAX_BRACED_CONTENT
                        && !rest[..close].contains('\n') =>
                {
                    let content = &rest[..close];
                    let end = i + 2 + close + 2;
                    match classify(content) {
                        Ok(number) => scan.placeholders.push(Placeholder {
                            number,
                            start: i,
                            end,
                        }),
                        Err(hint) => scan.malformed.push(Malformed {
                            snippet: text[i..end].to_owned(),
                            hint,
                        }),
                    }
                    i = end;
                }
                _ => {
                    scan.malformed.push(Malformed {
                        snippet: snippet_from(&text[i..]),
                        hint: "this `{{` is never closed: a variable is written `{{1}}`".to_owned(),
                    });
                    i += 2;
                }
            }
        } else if here == b'{' {
            let rest = &text[i + 1..];
            let single = rest.find('}').filter(|&close| {
                let content = &rest[..close];
                close <= MAX_BRACED_CONTENT
                    && !content.trim().is_empty()
                    && content
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == ' ')
            });
            if let Some(close) = single {
                let end = i + 1 + close + 1;
                let content = rest[..close].trim();
                scan.malformed.push(Malformed {
                    snippet: text[i..end].to_owned(),
                    hint: if is_digits(content) {
                        format!("variables take double braces: write `{{{{{content}}}}}`")
                    } else {
                        "variables take double braces and a number, like `{{1}}`".to_owned()
                    },
                });
                i = end;
            } else {
                i += 1;
            }
        } else if here == b'}' && next == Some(b'}') {
            scan.malformed.push(Malformed {
                snippet: "}}".to_owned(),
                hint: "a `}}` without a matching `{{`: a variable is written `{{1}}`".to_owned(),
            });
            i += 2;
        } else {
            i += 1;
        }
    }
    scan
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// The variable number of `{{content}}`, or a hint on how to write it.
fn classify(content: &str) -> Result<usize, String> {
    let trimmed = content.trim();
    if is_digits(content) {
        if content.len() > 1 && content.starts_with('0') {
            let number = content.trim_start_matches('0');
            let number = if number.is_empty() { "0" } else { number };
            return Err(format!("write `{{{{{number}}}}}` without leading zeros"));
        }
        return content
            .parse()
            .map_err(|_| "this variable number is far too large".to_owned());
    }
    if is_digits(trimmed) {
        return Err(format!(
            "write `{{{{{trimmed}}}}}` without spaces inside the braces"
        ));
    }
    if trimmed.is_empty() {
        return Err("empty braces: a variable is written `{{1}}`".to_owned());
    }
    let starts_with_letter = trimmed.chars().next().is_some_and(char::is_alphabetic);
    if starts_with_letter && trimmed.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return Err(
            "named variables are not supported: use numbered ones, `{{1}}`, `{{2}}`, …".to_owned(),
        );
    }
    Err(
        "a variable is a number in double braces, like `{{1}}`, with no other characters"
            .to_owned(),
    )
}

/// The first few characters of `text`, for quoting an unclosed `{{`.
fn snippet_from(text: &str) -> String {
    let mut snippet: String = text.chars().take(12).collect();
    if text.chars().nth(12).is_some() {
        snippet.push('…');
    }
    snippet
}

/// Calls `value(n)` for each well-formed `{{n}}` and puts its answer in place; `None`
/// leaves the placeholder as written. One pass, so a value containing `{{2}}` stays as is.
fn substitute<'a>(text: &str, value: impl Fn(usize) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut written = 0;
    for placeholder in scan(text).placeholders {
        if let Some(value) = value(placeholder.number) {
            out.push_str(&text[written..placeholder.start]);
            out.push_str(value);
            written = placeholder.end;
        }
    }
    out.push_str(&text[written..]);
    out
}

fn char_count(text: &str) -> usize {
    text.chars().count()
}

fn plural(count: usize, one: &str, many: &str) -> String {
    if count == 1 {
        format!("{count} {one}")
    } else {
        format!("{count} {many}")
    }
}

/// `{{2}}, {{3}}` (at most five, then "and N more").
fn list_variables(numbers: &[usize]) -> String {
    let mut out = String::new();
    for (index, number) in numbers.iter().take(5).enumerate() {
        if index > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "`{{{{{number}}}}}`");
    }
    if numbers.len() > 5 {
        let _ = write!(out, " and {} more", numbers.len() - 5);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Lint
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn error(&mut self, field: impl Into<String>, code: &str, message: impl Into<String>) {
        self.push(Severity::Error, field.into(), code, message.into());
    }

    fn warning(&mut self, field: impl Into<String>, code: &str, message: impl Into<String>) {
        self.push(Severity::Warning, field.into(), code, message.into());
    }

    fn push(&mut self, severity: Severity, field: String, code: &str, message: String) {
        self.0.push(Finding {
            severity,
            field,
            code: code.to_owned(),
            message,
        });
    }

    fn malformed(&mut self, field: &str, scan: &Scan) {
        for malformed in &scan.malformed {
            self.error(
                field,
                "placeholder-malformed",
                format!(
                    "`{}` is not a valid variable: {}",
                    malformed.snippet, malformed.hint
                ),
            );
        }
    }
}

/// Checks a template against Meta's rules and common rejection reasons.
///
/// Errors are things Meta rejects (or that make the template unusable); warnings are
/// things its review often rejects. An empty result means the template is well-formed —
/// Meta's human review can still reject it for its content. Codes are stable:
///
/// | code | severity | rule |
/// |---|---|---|
/// | `name-invalid` | error | name is `^[a-z0-9_]{1,512}$` |
/// | `language-invalid` | error | language is `xx`, `xxx` or `xx_YY` |
/// | `body-required` | error | body text is not empty |
/// | `body-too-long` | error | body ≤ 1,024 characters |
/// | `placeholder-malformed` | error | `{{ 1 }}`, `{{name}}`, `{1}`, `{{01}}`, unclosed `{{`, stray `}}` |
/// | `variable-numbering` | error | variables run `{{1}}`…`{{n}}` without gaps (header and URL: only `{{1}}`) |
/// | `variables-out-of-order` | warning | variables first appear in increasing order |
/// | `body-starts-with-variable`, `body-ends-with-variable` | error | not for AUTHENTICATION |
/// | `adjacent-variables` | error | two variables with only whitespace between |
/// | `too-many-variables` | warning | at least 2n+1 words of fixed text for n variables (not for AUTHENTICATION) |
/// | `body-example-missing`, `body-example-extra`, `body-example-empty` | error | one non-empty example per body variable |
/// | `body-newlines`, `body-spaces` | warning | no more than 2 line breaks in a row, 4 spaces in a row |
/// | `header-text-required`, `header-too-long`, `header-newline` | error | text header has 1–60 characters on one line |
/// | `header-formatting` | warning | no emoji, `*` or `~` in a text header |
/// | `header-too-many-variables` | error | at most one variable in a text header |
/// | `header-example-missing` | error | a header variable or a media header needs an example |
/// | `header-example-unused` | warning | an example where none is used |
/// | `header-text-not-allowed` | error | media and location headers have no text |
/// | `footer-empty`, `footer-too-long`, `footer-variables`, `footer-newline` | error | footer has 1–60 characters, one line, no variables |
/// | `too-many-buttons` | error | ≤ 10 buttons |
/// | `too-many-url-buttons`, `too-many-phone-buttons`, `too-many-copy-code-buttons` | error | ≤ 2, ≤ 1, ≤ 1 |
/// | `buttons-not-grouped` | warning | quick replies are not interleaved with other buttons |
/// | `button-text-required`, `button-text-too-long`, `button-text-variable` | error | label has 1–25 characters, no variables |
/// | `button-text-duplicate` | warning | labels are distinct |
/// | `url-invalid`, `url-too-long` | error | an `https://` URL with a host, no spaces, ≤ 2,000 characters |
/// | `url-too-many-variables`, `url-variable-not-at-end`, `url-variable-in-domain` | error | at most one variable, at the end of the path |
/// | `url-example-missing` | error / `url-example-unused` warning | an example exactly when the URL has a variable |
/// | `url-shortened` | warning | no link shorteners |
/// | `phone-invalid` | error | E.164: `+` and 7–15 digits |
/// | `copy-code-example-missing`, `copy-code-example-too-long` | error | code example has 1–15 characters |
/// | `auth-media-header`, `auth-button-not-allowed` | error | AUTHENTICATION: no media/location header, no URL/phone buttons |
/// | `auth-body-format` | warning | AUTHENTICATION: the body is the one-time-password text with one variable |
#[must_use]
pub fn lint(spec: &TemplateSpec) -> Vec<Finding> {
    let mut findings = Findings::default();
    lint_name(&spec.name, &mut findings);
    lint_language(&spec.language, &mut findings);
    if let Some(header) = &spec.header {
        lint_header(header, spec.category, &mut findings);
    }
    lint_body(&spec.body, spec.category, &mut findings);
    if let Some(footer) = &spec.footer {
        lint_footer(footer, &mut findings);
    }
    lint_buttons(&spec.buttons, spec.category, &mut findings);
    findings.0
}

fn lint_name(name: &str, findings: &mut Findings) {
    let length = char_count(name);
    if name.is_empty() {
        findings.error("name", "name-invalid", "the template name is empty: use lowercase letters, digits and underscores, like `order_update`");
    } else if length > NAME_MAX_CHARS {
        findings.error(
            "name",
            "name-invalid",
            format!("the template name has {length} characters; the limit is {NAME_MAX_CHARS}"),
        );
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        let suggestion: String = name
            .trim()
            .chars()
            .map(|c| match c {
                'A'..='Z' => c.to_ascii_lowercase(),
                'a'..='z' | '0'..='9' | '_' => c,
                _ => '_',
            })
            .collect();
        findings.error(
            "name",
            "name-invalid",
            format!("the template name `{name}` may only hold lowercase letters, digits and underscores: try `{suggestion}`"),
        );
    }
}

fn lint_language(language: &str, findings: &mut Findings) {
    let is_lower = |part: &str| part.bytes().all(|b| b.is_ascii_lowercase());
    let valid = match language.split_once('_') {
        None => matches!(language.len(), 2 | 3) && is_lower(language),
        Some((lang, region)) => {
            matches!(lang.len(), 2 | 3)
                && is_lower(lang)
                && region.len() == 2
                && region.bytes().all(|b| b.is_ascii_uppercase())
        }
    };
    if !valid {
        let hint = if language.contains('-') {
            format!(" (Meta writes `{}`)", language.replace('-', "_"))
        } else {
            String::new()
        };
        findings.error(
            "language",
            "language-invalid",
            format!("`{language}` is not a language code Meta accepts: use a code like `en`, `de` or `en_US`{hint}"),
        );
    }
}

fn lint_header(header: &Header, category: Category, findings: &mut Findings) {
    let format = header.format;
    let has_text = header.text.as_deref().is_some_and(|text| !text.is_empty());
    let has_example = header
        .example
        .as_deref()
        .is_some_and(|example| !example.trim().is_empty());
    if category == Category::Authentication && format != HeaderFormat::Text {
        findings.error(
            "header.format",
            "auth-media-header",
            format!(
                "AUTHENTICATION templates cannot have a {} header: remove it",
                format.label()
            ),
        );
    }
    if format != HeaderFormat::Text {
        if has_text {
            findings.error(
                "header.text",
                "header-text-not-allowed",
                format!(
                    "a {} header has no text: remove header.text (or make it a text header)",
                    format.label()
                ),
            );
        }
        if format.is_media() && !has_example {
            findings.error(
                "header.example",
                "header-example-missing",
                format!("Meta's review needs a sample for a {} header: set header.example to a sample media URL", format.label()),
            );
        } else if !format.is_media() && header.example.is_some() {
            findings.warning(
                "header.example",
                "header-example-unused",
                "a location header takes no example: remove header.example",
            );
        }
        return;
    }

    let text = header.text.as_deref().unwrap_or_default();
    if text.trim().is_empty() {
        findings.error(
            "header.text",
            "header-text-required",
            "a text header needs text: set header.text, or remove the header",
        );
        return;
    }
    let length = char_count(text);
    if length > HEADER_TEXT_MAX_CHARS {
        findings.error(
            "header.text",
            "header-too-long",
            format!("the header has {length} characters; the limit is {HEADER_TEXT_MAX_CHARS}: shorten it by {}", length - HEADER_TEXT_MAX_CHARS),
        );
    }
    if text.contains(['\n', '\r']) {
        findings.error(
            "header.text",
            "header-newline",
            "a text header is one line: remove the line breaks",
        );
    }
    if text.contains(['*', '~']) || text.chars().any(is_emoji) {
        findings.warning(
            "header.text",
            "header-formatting",
            "Meta rejects text headers with emoji or formatting (`*`, `~`): use plain text",
        );
    }
    let scan = scan(text);
    findings.malformed("header.text", &scan);
    match scan.placeholders.as_slice() {
        [] => {
            if header.example.is_some() {
                findings.warning(
                    "header.example",
                    "header-example-unused",
                    "the header has no variable, so its example is unused: remove header.example",
                );
            }
        }
        [only] => {
            if only.number != 1 {
                findings.error(
                    "header.text",
                    "variable-numbering",
                    format!(
                        "the header variable must be `{{{{1}}}}`, not `{{{{{}}}}}`",
                        only.number
                    ),
                );
            }
            if !has_example {
                findings.error(
                    "header.example",
                    "header-example-missing",
                    "the header has a variable: set header.example to an example value for it",
                );
            }
        }
        many => findings.error(
            "header.text",
            "header-too-many-variables",
            format!(
                "a header may have one variable; this one has {}: keep only `{{{{1}}}}`",
                many.len()
            ),
        ),
    }
}

/// Emoji and pictographs (the blocks Meta's review treats as emoji).
fn is_emoji(c: char) -> bool {
    matches!(u32::from(c), 0x1F000..=0x1FAFF | 0x2600..=0x27BF | 0x2B00..=0x2BFF)
}

fn lint_body(body: &Body, category: Category, findings: &mut Findings) {
    let text = body.text.as_str();
    if text.trim().is_empty() {
        findings.error(
            "body.text",
            "body-required",
            "the body text is required: write the message in body.text",
        );
        if !body.examples.is_empty() {
            findings.error(
                "body.examples",
                "body-example-extra",
                format!(
                    "the body has no variables but {}: remove them",
                    plural(body.examples.len(), "example", "examples")
                ),
            );
        }
        return;
    }
    let length = char_count(text);
    if length > BODY_MAX_CHARS {
        findings.error(
            "body.text",
            "body-too-long",
            format!(
                "the body has {length} characters; the limit is {BODY_MAX_CHARS}: shorten it by {}",
                length - BODY_MAX_CHARS
            ),
        );
    }
    let scan = scan(text);
    findings.malformed("body.text", &scan);
    lint_numbering(&scan.placeholders, findings);
    lint_placement(text, &scan.placeholders, category, findings);
    lint_examples(body, &scan.placeholders, findings);
    lint_whitespace(text, findings);
    if category == Category::Authentication {
        let variables = variable_count(text);
        if variables != 1 || !text.to_lowercase().contains("code") {
            findings.warning(
                "body.text",
                "auth-body-format",
                format!("an AUTHENTICATION body should be Meta's one-time-password text with one variable for the code, like `{{{{1}}}} is your verification code.`; this one has {}", plural(variables, "variable", "variables")),
            );
        }
    }
}

fn lint_numbering(placeholders: &[Placeholder], findings: &mut Findings) {
    let numbers: BTreeSet<usize> = placeholders.iter().map(|p| p.number).collect();
    if numbers.contains(&0) {
        findings.error(
            "body.text",
            "variable-numbering",
            "variables are numbered from `{{1}}`: renumber `{{0}}` and the ones after it",
        );
    }
    let highest = numbers.last().copied().unwrap_or(0);
    // Walks the set rather than 1..=highest, so `{{4000000000}}` costs nothing.
    let mut missing = Vec::new();
    let mut expected = 1;
    let mut missing_total = 0usize;
    for &number in numbers.iter().filter(|&&n| n > 0) {
        if number > expected {
            missing_total = missing_total.saturating_add(number - expected);
            missing.extend((expected..number).take(6usize.saturating_sub(missing.len())));
        }
        expected = number.saturating_add(1);
    }
    if missing_total > 0 {
        let listed = if missing_total > missing.len() {
            let shown: Vec<usize> = missing.iter().copied().take(5).collect();
            format!(
                "{} and {} more",
                list_variables(&shown),
                missing_total - shown.len()
            )
        } else {
            list_variables(&missing)
        };
        findings.error(
            "body.text",
            "variable-numbering",
            format!("variables must run from `{{{{1}}}}` to `{{{{{highest}}}}}` without gaps: {listed} {} missing — renumber them", if missing_total == 1 { "is" } else { "are" }),
        );
        return;
    }
    let mut seen = BTreeSet::new();
    let mut first_appearances = Vec::new();
    for placeholder in placeholders {
        if seen.insert(placeholder.number) {
            first_appearances.push(placeholder.number);
        }
    }
    if let Some(pair) = first_appearances.windows(2).find(|pair| pair[0] > pair[1]) {
        findings.warning(
            "body.text",
            "variables-out-of-order",
            format!(
                "`{{{{{}}}}}` comes before `{{{{{}}}}}`: number variables in the order they appear",
                pair[0], pair[1]
            ),
        );
    }
}

fn lint_placement(
    text: &str,
    placeholders: &[Placeholder],
    category: Category,
    findings: &mut Findings,
) {
    let (Some(first), Some(last)) = (placeholders.first(), placeholders.last()) else {
        return;
    };
    // Meta's own one-time-password body starts with the code variable.
    if category != Category::Authentication {
        let leading = text.len() - text.trim_start().len();
        if first.start == leading {
            findings.error(
                "body.text",
                "body-starts-with-variable",
                format!(
                    "the body may not start with a variable: put some words before `{{{{{}}}}}`",
                    first.number
                ),
            );
        }
        if last.end == text.trim_end().len() {
            findings.error(
                "body.text",
                "body-ends-with-variable",
                format!("the body may not end with a variable: put some words (or a full stop) after `{{{{{}}}}}`", last.number),
            );
        }
    }
    for pair in placeholders.windows(2) {
        if text[pair[0].end..pair[1].start].trim().is_empty() {
            findings.error(
                "body.text",
                "adjacent-variables",
                format!(
                    "`{{{{{}}}}}` and `{{{{{}}}}}` are next to each other: put words between them",
                    pair[0].number, pair[1].number
                ),
            );
        }
    }
    if category != Category::Authentication {
        let words = substitute(text, |_| Some(" "))
            .split_whitespace()
            .filter(|word| word.chars().any(char::is_alphanumeric))
            .count();
        let variables = placeholders.len();
        let needed = variables.saturating_mul(2).saturating_add(1);
        if words < needed {
            findings.warning(
                "body.text",
                "too-many-variables",
                format!("the body has {} and {} of fixed text; Meta rejects templates with too many variables for their length: use at least {needed} words of fixed text, or fewer variables", plural(variables, "variable", "variables"), plural(words, "word", "words")),
            );
        }
    }
}

fn lint_examples(body: &Body, placeholders: &[Placeholder], findings: &mut Findings) {
    let count = placeholders.iter().map(|p| p.number).max().unwrap_or(0);
    let given = body.examples.len();
    if given < count {
        let missing: Vec<usize> = (given + 1..=count).take(6).collect();
        let listed = if count - given > 5 {
            format!(
                "{} and {} more",
                list_variables(&missing[..5]),
                count - given - 5
            )
        } else {
            list_variables(&missing)
        };
        findings.error(
            "body.examples",
            "body-example-missing",
            format!(
                "the body has {} but {}: add examples for {listed}",
                plural(count, "variable", "variables"),
                plural(given, "example", "examples")
            ),
        );
    } else if given > count {
        findings.error(
            "body.examples",
            "body-example-extra",
            format!(
                "the body has {} but {}: remove the last {}",
                plural(count, "variable", "variables"),
                plural(given, "example", "examples"),
                given - count
            ),
        );
    }
    for (index, example) in body.examples.iter().enumerate().take(count) {
        if example.trim().is_empty() {
            findings.error(
                format!("body.examples[{index}]"),
                "body-example-empty",
                format!(
                    "the example for `{{{{{}}}}}` is empty: give a realistic sample value",
                    index + 1
                ),
            );
        }
    }
}

fn lint_whitespace(text: &str, findings: &mut Findings) {
    let mut newlines = 0usize;
    let mut spaces = 0usize;
    let mut longest_newlines = 0usize;
    let mut longest_spaces = 0usize;
    for c in text.chars() {
        match c {
            '\n' => {
                newlines += 1;
                spaces = 0;
            }
            '\r' => {}
            ' ' => {
                spaces += 1;
                // Spaces on an otherwise empty line don't end a run of line breaks.
            }
            _ => {
                newlines = 0;
                spaces = 0;
            }
        }
        longest_newlines = longest_newlines.max(newlines);
        longest_spaces = longest_spaces.max(spaces);
    }
    if longest_newlines > 2 {
        findings.warning(
            "body.text",
            "body-newlines",
            format!("the body has {longest_newlines} line breaks in a row: keep at most 2 (one empty line)"),
        );
    }
    if longest_spaces > 4 {
        findings.warning(
            "body.text",
            "body-spaces",
            format!("the body has {longest_spaces} spaces in a row: keep at most 4"),
        );
    }
}

fn lint_footer(footer: &str, findings: &mut Findings) {
    if footer.trim().is_empty() {
        findings.error(
            "footer",
            "footer-empty",
            "the footer is empty: write some text or remove it",
        );
        return;
    }
    let length = char_count(footer);
    if length > FOOTER_MAX_CHARS {
        findings.error(
            "footer",
            "footer-too-long",
            format!("the footer has {length} characters; the limit is {FOOTER_MAX_CHARS}: shorten it by {}", length - FOOTER_MAX_CHARS),
        );
    }
    let scan = scan(footer);
    if !scan.placeholders.is_empty() || !scan.malformed.is_empty() {
        findings.error(
            "footer",
            "footer-variables",
            "a footer cannot have variables: remove the `{{…}}`",
        );
    }
    if footer.contains(['\n', '\r']) {
        findings.error(
            "footer",
            "footer-newline",
            "a footer is one line: remove the line breaks",
        );
    }
}

const URL_SHORTENERS: &[&str] = &[
    "bit.ly",
    "tinyurl.com",
    "t.co",
    "goo.gl",
    "ow.ly",
    "is.gd",
    "buff.ly",
    "cutt.ly",
    "rebrand.ly",
    "shorturl.at",
    "t.ly",
    "rb.gy",
    "tiny.cc",
];

fn lint_buttons(buttons: &[Button], category: Category, findings: &mut Findings) {
    if buttons.len() > MAX_BUTTONS {
        findings.error(
            "buttons",
            "too-many-buttons",
            format!(
                "a template may have {MAX_BUTTONS} buttons; this one has {}: remove {}",
                buttons.len(),
                buttons.len() - MAX_BUTTONS
            ),
        );
    }
    let count = |matches: fn(&Button) -> bool| buttons.iter().filter(|b| matches(b)).count();
    let limits: [(usize, usize, &str, &str); 3] = [
        (
            count(|b| matches!(b, Button::Url { .. })),
            MAX_URL_BUTTONS,
            "too-many-url-buttons",
            "URL",
        ),
        (
            count(|b| matches!(b, Button::PhoneNumber { .. })),
            MAX_PHONE_BUTTONS,
            "too-many-phone-buttons",
            "phone-number",
        ),
        (
            count(|b| matches!(b, Button::CopyCode { .. })),
            MAX_COPY_CODE_BUTTONS,
            "too-many-copy-code-buttons",
            "copy-code",
        ),
    ];
    for (found, limit, code, kind) in limits {
        if found > limit {
            findings.error(
                "buttons",
                code,
                format!(
                    "a template may have {} {kind} {}; this one has {found}",
                    limit,
                    if limit == 1 { "button" } else { "buttons" }
                ),
            );
        }
    }
    lint_button_grouping(buttons, findings);

    let mut labels: BTreeMap<String, usize> = BTreeMap::new();
    for (index, button) in buttons.iter().enumerate() {
        let field = |name: &str| format!("buttons[{index}].{name}");
        if let Some(label) = button.label() {
            lint_button_label(label, &field("text"), findings);
            let key = label.trim().to_lowercase();
            if !key.is_empty() {
                if let Some(first) = labels.get(&key) {
                    findings.warning(
                        field("text"),
                        "button-text-duplicate",
                        format!(
                            "buttons[{first}] already says `{}`: give each button its own label",
                            label.trim()
                        ),
                    );
                } else {
                    labels.insert(key, index);
                }
            }
        }
        match button {
            Button::QuickReply { .. } => {}
            Button::Url { url, example, .. } => {
                lint_url_button(url, example.as_deref(), index, findings)
            }
            Button::PhoneNumber { phone_number, .. } => {
                if !is_e164(phone_number) {
                    findings.error(
                        field("phone_number"),
                        "phone-invalid",
                        format!("`{phone_number}` is not an E.164 phone number: write + country code and number, digits only, like `+15550051310`"),
                    );
                }
            }
            Button::CopyCode { example } => {
                let length = char_count(example.trim());
                if length == 0 {
                    findings.error(
                        field("example"),
                        "copy-code-example-missing",
                        "a copy-code button needs an example code, like `SUMMER25`",
                    );
                } else if length > COPY_CODE_MAX_CHARS {
                    findings.error(
                        field("example"),
                        "copy-code-example-too-long",
                        format!("the example code has {length} characters; the limit is {COPY_CODE_MAX_CHARS}"),
                    );
                }
            }
        }
        if category == Category::Authentication
            && matches!(button, Button::Url { .. } | Button::PhoneNumber { .. })
        {
            findings.error(
                format!("buttons[{index}]"),
                "auth-button-not-allowed",
                format!(
                    "AUTHENTICATION templates cannot have {} buttons: remove buttons[{index}]",
                    button.kind()
                ),
            );
        }
    }
}

/// WhatsApp shows quick replies as one group and call-to-action buttons as another; a
/// quick reply between call-to-action buttons (or the reverse) cannot be displayed.
fn lint_button_grouping(buttons: &[Button], findings: &mut Findings) {
    let mut groups = 0;
    let mut previous: Option<bool> = None;
    for (index, button) in buttons.iter().enumerate() {
        let quick_reply = matches!(button, Button::QuickReply { .. });
        if previous != Some(quick_reply) {
            groups += 1;
            previous = Some(quick_reply);
            if groups > 2 {
                findings.warning(
                    "buttons",
                    "buttons-not-grouped",
                    format!(
                        "buttons[{index}] starts a second group of {} buttons: put all quick replies together, before or after the other buttons",
                        if quick_reply { "quick-reply" } else { "call-to-action" }
                    ),
                );
                return;
            }
        }
    }
}

fn lint_button_label(label: &str, field: &str, findings: &mut Findings) {
    let length = char_count(label);
    if label.trim().is_empty() {
        findings.error(field, "button-text-required", "the button needs a label");
    } else if length > BUTTON_TEXT_MAX_CHARS {
        findings.error(
            field,
            "button-text-too-long",
            format!("the label has {length} characters; the limit is {BUTTON_TEXT_MAX_CHARS}: shorten it by {}", length - BUTTON_TEXT_MAX_CHARS),
        );
    }
    if label.contains("{{") || label.contains("}}") {
        findings.error(
            field,
            "button-text-variable",
            "button labels cannot have variables: remove the `{{…}}`",
        );
    }
}

/// Splits an `https://` URL into its host and the byte offset where the host ends.
fn url_host(url: &str) -> Option<(&str, usize)> {
    let scheme = "https://";
    let rest = url
        .get(..scheme.len())
        .filter(|s| s.eq_ignore_ascii_case(scheme))
        .map(|_| &url[scheme.len()..])?;
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((&rest[..host_end], scheme.len() + host_end))
}

fn lint_url_button(url: &str, example: Option<&str>, index: usize, findings: &mut Findings) {
    let field = format!("buttons[{index}].url");
    let length = char_count(url);
    if length > URL_MAX_CHARS {
        findings.error(
            &field,
            "url-too-long",
            format!("the URL has {length} characters; the limit is {URL_MAX_CHARS}"),
        );
    }
    let scan = scan(url);
    let Some((host, host_end)) = url_host(url) else {
        let hint = if url
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
        {
            "use `https://`"
        } else {
            "write a full `https://` address, like `https://shop.example/orders/{{1}}`"
        };
        findings.error(
            &field,
            "url-invalid",
            format!("`{url}` is not an https URL: {hint}"),
        );
        return;
    };
    if host.contains("{{") {
        findings.error(
            &field,
            "url-variable-in-domain",
            "the domain cannot be a variable: only the end of the path may be `{{1}}`",
        );
    } else if host.is_empty() || !host.contains('.') || host.starts_with('.') || host.ends_with('.')
    {
        findings.error(
            &field,
            "url-invalid",
            format!("`{url}` has no valid domain: write it like `https://shop.example/…`"),
        );
    } else {
        let bare = host.rsplit('@').next().unwrap_or(host).to_ascii_lowercase();
        let bare = bare.split(':').next().unwrap_or_default();
        let bare = bare.strip_prefix("www.").unwrap_or(bare);
        if URL_SHORTENERS.contains(&bare) {
            findings.warning(
                &field,
                "url-shortened",
                format!(
                    "Meta rejects shortened links ({bare}): use the full address on your own domain"
                ),
            );
        }
    }
    if url.chars().any(char::is_whitespace) {
        findings.error(
            &field,
            "url-invalid",
            "the URL contains whitespace: URL-encode it (`%20`) or remove it",
        );
    }
    findings.malformed(&field, &scan);
    match scan.placeholders.as_slice() {
        [] => {
            if example.is_some() {
                findings.warning(
                    format!("buttons[{index}].example"),
                    "url-example-unused",
                    "the URL has no variable, so its example is unused: remove it",
                );
            }
        }
        [only] => {
            if only.number != 1 {
                findings.error(
                    &field,
                    "variable-numbering",
                    format!(
                        "the URL variable must be `{{{{1}}}}`, not `{{{{{}}}}}`",
                        only.number
                    ),
                );
            }
            if only.end != url.len() && only.start >= host_end {
                findings.error(&field, "url-variable-not-at-end", "the variable must be at the very end of the URL, like `https://shop.example/orders/{{1}}`");
            }
            if example.is_none_or(|example| example.trim().is_empty()) {
                findings.error(
                    format!("buttons[{index}].example"),
                    "url-example-missing",
                    "the URL has a variable: set example to a sample value for it (like `1042`) or a full sample URL",
                );
            }
        }
        many => findings.error(
            &field,
            "url-too-many-variables",
            format!(
                "a URL may have one variable, at its end; this one has {}",
                many.len()
            ),
        ),
    }
}

/// `+`, a non-zero digit, then 6–14 more digits (E.164 allows 15 digits in all).
fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

// ---------------------------------------------------------------------------------------
// Meta's creation components
// ---------------------------------------------------------------------------------------

/// The `components` array of Meta's template-creation request (`POST
/// /{waba-id}/message_templates`), in header, body, footer, buttons order. Examples are
/// included where the spec has them; run [`lint`] first, this does not check anything.
#[must_use]
pub fn to_meta_components(spec: &TemplateSpec) -> Value {
    let mut components = Vec::new();
    if let Some(header) = &spec.header {
        let mut component = json!({"type": "HEADER", "format": header.format.meta_name()});
        match header.format {
            HeaderFormat::Text => {
                let text = header.text.clone().unwrap_or_default();
                let has_variable = !scan(&text).placeholders.is_empty();
                component["text"] = json!(text);
                if let (true, Some(example)) = (has_variable, &header.example) {
                    component["example"] = json!({"header_text": [example]});
                }
            }
            HeaderFormat::Image | HeaderFormat::Video | HeaderFormat::Document => {
                if let Some(example) = &header.example {
                    component["example"] = json!({"header_handle": [example]});
                }
            }
            HeaderFormat::Location => {}
        }
        components.push(component);
    }
    let mut body = json!({"type": "BODY", "text": spec.body.text});
    if !spec.body.examples.is_empty() {
        body["example"] = json!({"body_text": [spec.body.examples]});
    }
    components.push(body);
    if let Some(footer) = &spec.footer {
        components.push(json!({"type": "FOOTER", "text": footer}));
    }
    if !spec.buttons.is_empty() {
        let buttons: Vec<Value> = spec.buttons.iter().map(meta_button).collect();
        components.push(json!({"type": "BUTTONS", "buttons": buttons}));
    }
    Value::Array(components)
}

fn meta_button(button: &Button) -> Value {
    match button {
        Button::QuickReply { text } => json!({"type": "QUICK_REPLY", "text": text}),
        Button::Url { text, url, example } => {
            let mut value = json!({"type": "URL", "text": text, "url": url});
            if let Some(example) = example {
                let full = if starts_with_http(example) {
                    example.clone()
                } else {
                    substitute(url, |_| Some(example.as_str()))
                };
                value["example"] = json!([full]);
            }
            value
        }
        Button::PhoneNumber { text, phone_number } => {
            json!({"type": "PHONE_NUMBER", "text": text, "phone_number": phone_number})
        }
        Button::CopyCode { example } => json!({"type": "COPY_CODE", "example": example}),
    }
}

fn starts_with_http(text: &str) -> bool {
    let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

/// Meta's whole creation request body: name, language, category and components.
#[must_use]
pub fn to_meta_template(spec: &TemplateSpec) -> Value {
    json!({
        "name": spec.name,
        "language": spec.language,
        "category": spec.category.as_str(),
        "components": to_meta_components(spec),
    })
}

// ---------------------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------------------

/// The values a tenant gives when sending a template.
///
/// ```json
/// {"header": "https://cdn.example/receipt.pdf", "body": ["Ada", "#1042"], "buttons": {"1": "1042"}}
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendVariables {
    /// The header value: the text for `{{1}}` of a text header, the media link of an
    /// image/video/document header, or `latitude,longitude[,name[,address]]` of a location
    /// header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// `body[i]` is the value of `{{i+1}}`.
    #[serde(default)]
    pub body: Vec<String>,
    /// Values by button position (0-based, as in the template): the end of the URL for a
    /// URL button with `{{1}}`, the payload of a quick reply (optional), the code of a
    /// copy-code button.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub buttons: BTreeMap<usize, String>,
}

impl SendVariables {
    /// The template's own examples as send values, e.g. for a preview of the sample.
    #[must_use]
    pub fn from_examples(spec: &TemplateSpec) -> Self {
        let header = spec
            .header
            .as_ref()
            .and_then(|header| header.example.clone());
        let buttons = spec
            .buttons
            .iter()
            .enumerate()
            .filter_map(|(index, button)| match button {
                Button::Url {
                    url,
                    example: Some(example),
                    ..
                } if !scan(url).placeholders.is_empty() => {
                    // A full example URL gives its tail after the fixed part.
                    let fixed = scan(url)
                        .placeholders
                        .first()
                        .map_or(url.as_str(), |p| &url[..p.start]);
                    let value = example.strip_prefix(fixed).unwrap_or(example);
                    Some((index, value.to_owned()))
                }
                Button::CopyCode { example } => Some((index, example.clone())),
                _ => None,
            })
            .collect();
        Self {
            header,
            body: spec.body.examples.clone(),
            buttons,
        }
    }
}

/// The `components` array of a Cloud API template send (`"type":"template"`), built from
/// the template and the tenant's values, or every problem with the values.
///
/// # Errors
/// One message per problem: wrong number of body values (expected vs given), a missing,
/// empty or invalid header value, a missing URL suffix or copy code, values where the
/// template has no variable, values over Meta's limits or with characters Meta refuses in
/// parameters (line breaks, tabs, more than 4 spaces in a row).
pub fn send_components(spec: &TemplateSpec, vars: &SendVariables) -> Result<Value, Vec<String>> {
    let mut errors = Vec::new();
    let mut components = Vec::new();
    if let Some(component) = send_header(spec, vars, &mut errors) {
        components.push(component);
    }
    if let Some(component) = send_body(spec, vars, &mut errors) {
        components.push(component);
    }
    send_buttons(spec, vars, &mut errors, &mut components);
    if errors.is_empty() {
        Ok(Value::Array(components))
    } else {
        Err(errors)
    }
}

/// Meta refuses parameters with line breaks, tabs or more than 4 consecutive spaces.
fn parameter_problem(value: &str) -> Option<&'static str> {
    if value.contains(['\n', '\r', '\t']) {
        Some("contains a line break or tab, which Meta refuses in parameters")
    } else if value.contains("     ") {
        Some("has more than 4 spaces in a row, which Meta refuses in parameters")
    } else {
        None
    }
}

fn send_header(
    spec: &TemplateSpec,
    vars: &SendVariables,
    errors: &mut Vec<String>,
) -> Option<Value> {
    let value = vars.header.as_deref();
    let Some(header) = &spec.header else {
        if value.is_some() {
            errors.push("the template has no header: remove the header value".to_owned());
        }
        return None;
    };
    let present = value.filter(|value| !value.trim().is_empty());
    match header.format {
        HeaderFormat::Text => {
            let text = header.text.as_deref().unwrap_or_default();
            if scan(text).placeholders.is_empty() {
                if value.is_some() {
                    errors.push("the header has no variable: remove the header value".to_owned());
                }
                return None;
            }
            let Some(value) = present else {
                errors.push(if value.is_some() {
                    "the header value is empty: give the text for the header's `{{1}}`".to_owned()
                } else {
                    "missing header value: the header has a variable, `{{1}}`".to_owned()
                });
                return None;
            };
            if let Some(problem) = parameter_problem(value) {
                errors.push(format!("the header value {problem}"));
            }
            let rendered = char_count(&substitute(text, |_| Some(value)));
            if rendered > HEADER_TEXT_MAX_CHARS {
                errors.push(format!("the header would be {rendered} characters with this value; the limit is {HEADER_TEXT_MAX_CHARS}"));
            }
            Some(json!({"type": "header", "parameters": [{"type": "text", "text": value}]}))
        }
        HeaderFormat::Image | HeaderFormat::Video | HeaderFormat::Document => {
            let kind = header.format.label();
            let Some(link) = present else {
                errors.push(format!(
                    "missing header value: the {kind} header needs a link to the {kind}"
                ));
                return None;
            };
            let link = link.trim();
            if !starts_with_http(link) || link.contains(char::is_whitespace) {
                errors.push(format!(
                    "the header value `{link}` is not a link: give an https:// URL of the {kind}"
                ));
                return None;
            }
            Some(json!({"type": "header", "parameters": [{"type": kind, kind: {"link": link}}]}))
        }
        HeaderFormat::Location => {
            let Some(value) = present else {
                errors.push("missing header value: the location header needs `latitude,longitude` (optionally `,name,address`)".to_owned());
                return None;
            };
            let mut parts = value.splitn(4, ',').map(str::trim);
            let coordinate = |part: Option<&'_ str>, limit: f64| {
                part.filter(|p| {
                    p.parse::<f64>()
                        .is_ok_and(|v| (-limit..=limit).contains(&v))
                })
                .map(str::to_owned)
            };
            let latitude = coordinate(parts.next(), 90.0);
            let longitude = coordinate(parts.next(), 180.0);
            let (Some(latitude), Some(longitude)) = (latitude, longitude) else {
                errors.push(format!("the header value `{value}` is not a location: write `latitude,longitude` like `52.52,13.40` (optionally `,name,address`)"));
                return None;
            };
            let mut location = json!({"latitude": latitude, "longitude": longitude});
            if let Some(name) = parts.next().filter(|p| !p.is_empty()) {
                location["name"] = json!(name);
            }
            if let Some(address) = parts.next().filter(|p| !p.is_empty()) {
                location["address"] = json!(address);
            }
            Some(
                json!({"type": "header", "parameters": [{"type": "location", "location": location}]}),
            )
        }
    }
}

fn send_body(spec: &TemplateSpec, vars: &SendVariables, errors: &mut Vec<String>) -> Option<Value> {
    let text = spec.body.text.as_str();
    let expected = variable_count(text);
    let given = vars.body.len();
    if expected != given {
        errors.push(if expected == 0 {
            format!(
                "the body has no variables but {} given: remove them",
                plural(given, "value was", "values were")
            )
        } else {
            format!(
                "the body has {} (`{{{{1}}}}`…`{{{{{expected}}}}}`) but {} given",
                plural(expected, "variable", "variables"),
                plural(given, "value was", "values were")
            )
        });
    }
    let mut values_ok = true;
    for (index, value) in vars.body.iter().enumerate().take(expected) {
        let number = index + 1;
        let length = char_count(value);
        if value.trim().is_empty() {
            errors.push(format!("the body value for `{{{{{number}}}}}` is empty"));
            values_ok = false;
        } else if length > BODY_MAX_CHARS {
            errors.push(format!("the body value for `{{{{{number}}}}}` has {length} characters; the limit is {BODY_MAX_CHARS}"));
            values_ok = false;
        } else if let Some(problem) = parameter_problem(value) {
            errors.push(format!("the body value for `{{{{{number}}}}}` {problem}"));
            values_ok = false;
        }
    }
    if expected == 0 {
        return None;
    }
    if values_ok && expected == given {
        let rendered = char_count(&substitute(text, |n| {
            n.checked_sub(1)
                .and_then(|i| vars.body.get(i))
                .map(String::as_str)
        }));
        if rendered > BODY_MAX_CHARS {
            errors.push(format!("the body would be {rendered} characters with these values; the limit is {BODY_MAX_CHARS}: shorten the values by {}", rendered - BODY_MAX_CHARS));
        }
    }
    let parameters: Vec<Value> = vars
        .body
        .iter()
        .map(|value| json!({"type": "text", "text": value}))
        .collect();
    Some(json!({"type": "body", "parameters": parameters}))
}

fn send_buttons(
    spec: &TemplateSpec,
    vars: &SendVariables,
    errors: &mut Vec<String>,
    components: &mut Vec<Value>,
) {
    for (&index, _) in vars.buttons.range(spec.buttons.len()..) {
        errors.push(format!(
            "there is no button {index}: the template has {} (numbered from 0)",
            plural(spec.buttons.len(), "button", "buttons")
        ));
    }
    for (index, button) in spec.buttons.iter().enumerate() {
        let value = vars.buttons.get(&index).map(String::as_str);
        let present = value.filter(|value| !value.trim().is_empty());
        let describe = || match button.label() {
            Some(label) => format!("button {index} ({} \"{label}\")", button.kind()),
            None => format!("button {index} ({})", button.kind()),
        };
        match button {
            Button::Url { url, .. } => {
                if scan(url).placeholders.is_empty() {
                    if value.is_some() {
                        errors.push(format!("{} has a fixed URL: remove its value", describe()));
                    }
                    continue;
                }
                let Some(suffix) = present else {
                    errors.push(format!(
                        "missing URL suffix: {} needs the value for the end of `{url}`",
                        describe()
                    ));
                    continue;
                };
                if suffix.contains(char::is_whitespace) {
                    errors.push(format!(
                        "the URL suffix for {} contains whitespace: URL-encode it",
                        describe()
                    ));
                    continue;
                }
                components.push(json!({"type": "button", "sub_type": "url", "index": index.to_string(), "parameters": [{"type": "text", "text": suffix}]}));
            }
            Button::QuickReply { .. } => {
                let Some(payload) = value else { continue };
                if payload.trim().is_empty() {
                    errors.push(format!(
                        "the payload for {} is empty: give one or leave it out",
                        describe()
                    ));
                    continue;
                }
                components.push(json!({"type": "button", "sub_type": "quick_reply", "index": index.to_string(), "parameters": [{"type": "payload", "payload": payload}]}));
            }
            Button::CopyCode { .. } => {
                let Some(code) = present else {
                    errors.push(format!(
                        "missing code: {} needs the code to copy",
                        describe()
                    ));
                    continue;
                };
                let length = char_count(code);
                if length > COPY_CODE_MAX_CHARS {
                    errors.push(format!("the code for {} has {length} characters; the limit is {COPY_CODE_MAX_CHARS}", describe()));
                    continue;
                }
                components.push(json!({"type": "button", "sub_type": "copy_code", "index": index.to_string(), "parameters": [{"type": "coupon_code", "coupon_code": code}]}));
            }
            Button::PhoneNumber { .. } => {
                if value.is_some() {
                    errors.push(format!("{} takes no value: remove it", describe()));
                }
            }
        }
    }
}

/// The text the recipient reads: the header text, the body with the values filled in
/// and the footer, one per paragraph. A media header shows as `[image]` (etc.), a
/// location header as `[location]`; a variable without a value stays `{{n}}`.
#[must_use]
pub fn render_preview(spec: &TemplateSpec, vars: &SendVariables) -> String {
    let mut parts = Vec::new();
    if let Some(header) = &spec.header {
        match header.format {
            HeaderFormat::Text => {
                let text = header.text.as_deref().unwrap_or_default();
                let value = vars.header.as_deref().filter(|value| !value.is_empty());
                parts.push(substitute(text, |n| value.filter(|_| n == 1)));
            }
            format => parts.push(format!("[{}]", format.label())),
        }
    }
    parts.push(substitute(&spec.body.text, |n| {
        n.checked_sub(1)
            .and_then(|index| vars.body.get(index))
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }));
    if let Some(footer) = &spec.footer {
        parts.push(footer.clone());
    }
    parts.retain(|part| !part.is_empty());
    parts.join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(value: Value) -> TemplateSpec {
        serde_json::from_value(value).unwrap()
    }

    /// A realistic UTILITY template that uses every part.
    fn order_update() -> TemplateSpec {
        spec(json!({
            "name": "order_update",
            "language": "en_US",
            "category": "utility",
            "header": {"format": "text", "text": "Order {{1}} update", "example": "#1042"},
            "body": {
                "text": "Hi {{1}}, your order {{2}} has shipped and should arrive on {{3}}. Reply if anything looks wrong.",
                "examples": ["Ada", "#1042", "Friday 12 May"]
            },
            "footer": "Acme Shop · reply STOP to opt out",
            "buttons": [
                {"type": "url", "text": "Track order", "url": "https://shop.example/track/{{1}}", "example": "1042"},
                {"type": "phone_number", "text": "Call us", "phone_number": "+15550051310"},
                {"type": "quick_reply", "text": "Thanks!"},
                {"type": "quick_reply", "text": "Wrong address"}
            ]
        }))
    }

    /// Lints `spec` and returns the codes found at `field`.
    fn codes_at(spec: &TemplateSpec, field: &str) -> Vec<String> {
        lint(spec)
            .into_iter()
            .filter(|finding| finding.field == field)
            .map(|finding| finding.code)
            .collect()
    }

    fn codes(spec: &TemplateSpec) -> Vec<String> {
        lint(spec).into_iter().map(|finding| finding.code).collect()
    }

    fn finding(spec: &TemplateSpec, code: &str) -> Finding {
        lint(spec)
            .into_iter()
            .find(|finding| finding.code == code)
            .unwrap_or_else(|| panic!("no `{code}` in {:#?}", lint(spec)))
    }

    fn with_body(text: &str, examples: &[&str]) -> TemplateSpec {
        let mut spec = order_update();
        spec.body = Body {
            text: text.to_owned(),
            examples: examples.iter().map(|&e| e.to_owned()).collect(),
        };
        spec
    }

    fn with_buttons(buttons: Value) -> TemplateSpec {
        let mut spec = order_update();
        spec.buttons = serde_json::from_value(buttons).unwrap();
        spec
    }

    fn with_header(header: Value) -> TemplateSpec {
        let mut spec = order_update();
        spec.header = Some(serde_json::from_value(header).unwrap());
        spec
    }

    // --- parsing ---------------------------------------------------------------------

    #[test]
    fn parses_categories_and_formats_in_any_case_and_writes_meta_case() {
        let spec = order_update();
        assert_eq!(spec.category, Category::Utility);
        for (input, category) in [
            ("marketing", Category::Marketing),
            ("Utility", Category::Utility),
            ("AUTHENTICATION", Category::Authentication),
        ] {
            assert_eq!(
                serde_json::from_value::<Category>(json!(input)).unwrap(),
                category
            );
        }
        assert_eq!(
            serde_json::to_value(Category::Marketing).unwrap(),
            json!("MARKETING")
        );
        assert_eq!(
            serde_json::from_value::<HeaderFormat>(json!("IMAGE")).unwrap(),
            HeaderFormat::Image
        );
        assert_eq!(
            serde_json::to_value(HeaderFormat::Document).unwrap(),
            json!("document")
        );
        let written = serde_json::to_value(&spec).unwrap();
        assert_eq!(written["category"], json!("UTILITY"));
        assert_eq!(
            serde_json::from_value::<TemplateSpec>(written).unwrap(),
            spec
        );
    }

    #[test]
    fn rejects_unknown_fields_categories_and_button_types() {
        let mut value = serde_json::to_value(order_update()).unwrap();
        value["bdy"] = json!("typo");
        let error = serde_json::from_value::<TemplateSpec>(value)
            .unwrap_err()
            .to_string();
        assert!(error.contains("bdy"), "{error}");

        let mut value = serde_json::to_value(order_update()).unwrap();
        value["category"] = json!("promo");
        let error = serde_json::from_value::<TemplateSpec>(value)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("MARKETING, UTILITY or AUTHENTICATION"),
            "{error}"
        );

        let button = serde_json::from_value::<Button>(
            json!({"type": "quick_reply", "text": "Hi", "url": "x"}),
        );
        assert!(button.is_err());
        let button = serde_json::from_value::<Button>(json!({"type": "flow", "text": "Hi"}));
        assert!(button.is_err());
        let header = serde_json::from_value::<Header>(json!({"format": "gif"}))
            .unwrap_err()
            .to_string();
        assert!(
            header.contains("text, image, video, document or location"),
            "{header}"
        );
    }

    #[test]
    fn a_missing_body_parses_and_lints_as_required() {
        let spec = spec(json!({"name": "hello", "language": "en", "category": "marketing"}));
        assert_eq!(codes(&spec), ["body-required"]);
        assert!(has_errors(&lint(&spec)));
    }

    // --- valid templates --------------------------------------------------------------

    #[test]
    fn realistic_templates_have_no_findings() {
        assert_eq!(lint(&order_update()), []);
        let promo = spec(json!({
            "name": "summer_sale_2024",
            "language": "de",
            "category": "MARKETING",
            "header": {"format": "image", "example": "https://cdn.example/summer.jpg"},
            "body": {"text": "Hallo {{1}}, unser Sommerschlussverkauf läuft: 25 % auf alles bis Sonntag!", "examples": ["Ada"]},
            "buttons": [
                {"type": "copy_code", "example": "SUMMER25"},
                {"type": "url", "text": "Zum Shop", "url": "https://shop.example/sale"}
            ]
        }));
        assert_eq!(lint(&promo), []);
        let otp = spec(json!({
            "name": "login_code",
            "language": "en_GB",
            "category": "authentication",
            "body": {"text": "{{1}} is your verification code.", "examples": ["123456"]},
            "buttons": [{"type": "copy_code", "example": "123456"}]
        }));
        assert_eq!(lint(&otp), []);
        assert!(!has_errors(&[]));
    }

    #[test]
    fn findings_serialize_as_documented() {
        let spec = with_body("", &[]);
        assert_eq!(
            serde_json::to_value(lint(&spec)).unwrap(),
            json!([{
                "severity": "error",
                "field": "body.text",
                "code": "body-required",
                "message": "the body text is required: write the message in body.text"
            }])
        );
        let warning_only = with_body("Hello {{1}}, thanks!", &["Ada"]);
        assert_eq!(codes(&warning_only), ["too-many-variables"]);
        assert!(!has_errors(&lint(&warning_only)));
    }

    // --- name and language ------------------------------------------------------------

    #[test]
    fn name_must_be_lowercase_digits_underscores() {
        for good in ["a", "order_update_2", &"x".repeat(512)] {
            let mut spec = order_update();
            spec.name = good.to_owned();
            assert_eq!(codes_at(&spec, "name"), Vec::<String>::new(), "{good}");
        }
        let mut spec = order_update();
        spec.name = "Order Update!".to_owned();
        let found = finding(&spec, "name-invalid");
        assert_eq!(found.severity, Severity::Error);
        assert!(
            found.message.contains("`order_update_`"),
            "{}",
            found.message
        );
        spec.name = String::new();
        assert_eq!(codes_at(&spec, "name"), ["name-invalid"]);
        spec.name = "x".repeat(513);
        assert!(
            finding(&spec, "name-invalid")
                .message
                .contains("513 characters")
        );
        spec.name = "ordér".to_owned();
        assert_eq!(codes_at(&spec, "name"), ["name-invalid"]);
    }

    #[test]
    fn language_must_look_like_a_locale() {
        for good in ["en", "en_US", "pt_BR", "fil", "zh_CN"] {
            let mut spec = order_update();
            spec.language = good.to_owned();
            assert_eq!(codes_at(&spec, "language"), Vec::<String>::new(), "{good}");
        }
        for bad in ["", "english", "EN", "en_us", "en_USA", "e", "en_"] {
            let mut spec = order_update();
            spec.language = bad.to_owned();
            assert_eq!(codes_at(&spec, "language"), ["language-invalid"], "{bad}");
        }
        let mut spec = order_update();
        spec.language = "en-US".to_owned();
        assert!(
            finding(&spec, "language-invalid")
                .message
                .contains("`en_US`")
        );
    }

    // --- body -------------------------------------------------------------------------

    #[test]
    fn body_length_limit() {
        let prefix = "Hi {{1}}, here is a long message for you: ";
        let text = format!("{prefix}{}.", "x".repeat(BODY_MAX_CHARS - prefix.len() - 1));
        assert_eq!(char_count(&text), BODY_MAX_CHARS);
        assert_eq!(
            codes_at(&with_body(&text, &["Ada"]), "body.text"),
            Vec::<String>::new()
        );
        let over = format!("{text}y");
        let found = finding(&with_body(&over, &["Ada"]), "body-too-long");
        assert!(
            found.message.contains("1025 characters") && found.message.contains("1024"),
            "{}",
            found.message
        );
        // Characters, not bytes: 1,024 emoji are fine.
        let emoji = format!("Hi {{{{1}}}}, {}", "é".repeat(BODY_MAX_CHARS - 10));
        assert!(!codes(&with_body(&emoji, &["Ada"])).contains(&"body-too-long".to_owned()));
    }

    #[test]
    fn malformed_placeholders_are_flagged_with_a_fix() {
        let cases = [
            (
                "Hello {{ 1 }} and welcome to our shop today.",
                "write `{{1}}` without spaces",
            ),
            (
                "Hello {{name}} and welcome to our shop today.",
                "named variables are not supported",
            ),
            ("Hello {1} and welcome to our shop today.", "write `{{1}}`"),
            (
                "Hello {{01}} and welcome to our shop today.",
                "without leading zeros",
            ),
            (
                "Hello {{1a}} and welcome to our shop today.",
                "a number in double braces",
            ),
            (
                "Hello {{#1}} and welcome to our shop today.",
                "a number in double braces",
            ),
            ("Hello {{}} and welcome to our shop today.", "empty braces"),
            ("Hello {{1 and welcome to our shop today.", "never closed"),
            (
                "Hello 1}} and welcome to our shop today.",
                "without a matching `{{`",
            ),
            (
                "Hello {{{1}}} and welcome to our shop today.",
                "a number in double braces",
            ),
        ];
        for (text, hint) in cases {
            let spec = with_body(text, &[]);
            let found = finding(&spec, "placeholder-malformed");
            assert_eq!(found.field, "body.text");
            assert_eq!(found.severity, Severity::Error);
            assert!(found.message.contains(hint), "{text}: {}", found.message);
        }
        // Ordinary braces in prose are not variables.
        let prose = with_body(
            "Use the code {SUMMER 25%} at checkout, or reply {} for help today.",
            &[],
        );
        assert_eq!(codes(&prose), Vec::<String>::new());
    }

    #[test]
    fn variables_run_from_one_without_gaps() {
        let found = finding(
            &with_body(
                "Hi {{1}}, order {{3}} has shipped to you today.",
                &["a", "b", "c"],
            ),
            "variable-numbering",
        );
        assert!(
            found.message.contains("`{{2}}` is missing"),
            "{}",
            found.message
        );
        let found = finding(
            &with_body(
                "Hi {{2}}, your order has shipped to you today.",
                &["a", "b"],
            ),
            "variable-numbering",
        );
        assert!(
            found.message.contains("`{{1}}` is missing"),
            "{}",
            found.message
        );
        let found = finding(
            &with_body("Hi {{0}}, your order has shipped to you today.", &[]),
            "variable-numbering",
        );
        assert!(found.message.contains("`{{0}}`"), "{}", found.message);
        // A huge number is reported without listing millions of gaps.
        let spec = with_body("Hi {{4000000000}}, your order has shipped to you.", &[]);
        let found = finding(&spec, "variable-numbering");
        assert!(
            found.message.contains("and 3999999994 more are missing"),
            "{}",
            found.message
        );
        assert!(
            finding(&spec, "body-example-missing")
                .message
                .contains("and 3999999995 more")
        );
        // Reusing a variable is not a gap.
        let reused = with_body(
            "Hi {{1}}, order {{2}} is ready, {{1}}. See you soon at the shop counter.",
            &["Ada", "#1"],
        );
        assert_eq!(codes(&reused), Vec::<String>::new());
    }

    #[test]
    fn variables_out_of_order_are_a_warning() {
        let spec = with_body(
            "Order {{2}} for {{1}} has shipped and arrives on Friday.",
            &["Ada", "#1"],
        );
        let found = finding(&spec, "variables-out-of-order");
        assert_eq!(found.severity, Severity::Warning);
        assert!(
            found.message.contains("`{{2}}` comes before `{{1}}`"),
            "{}",
            found.message
        );
        assert!(
            !codes(&with_body(
                "Hi {{1}}, order {{2}} from {{1}} has shipped today, enjoy.",
                &["a", "b"]
            ))
            .contains(&"variables-out-of-order".to_owned())
        );
    }

    #[test]
    fn body_may_not_start_or_end_with_a_variable() {
        let spec = with_body(
            "  {{1}}, your order has shipped and arrives on {{2}}\n",
            &["Ada", "Friday"],
        );
        assert_eq!(
            codes_at(&spec, "body.text"),
            ["body-starts-with-variable", "body-ends-with-variable"]
        );
        assert!(
            finding(&spec, "body-ends-with-variable")
                .message
                .contains("after `{{2}}`")
        );
        let fine = with_body(
            "Dear {{1}}, your order has shipped and arrives on {{2}}.",
            &["Ada", "Friday"],
        );
        assert_eq!(codes(&fine), Vec::<String>::new());
    }

    #[test]
    fn adjacent_variables_are_an_error() {
        let spec = with_body(
            "Dear customer, {{1}} {{2}} has shipped and is on its way to you.",
            &["Ada", "Lovelace"],
        );
        let found = finding(&spec, "adjacent-variables");
        assert!(
            found.message.contains("`{{1}}` and `{{2}}`"),
            "{}",
            found.message
        );
        assert!(
            codes(&with_body(
                "Dear customer, {{1}}{{2}} has shipped and is on its way to you.",
                &["a", "b"]
            ))
            .contains(&"adjacent-variables".to_owned())
        );
        assert!(
            !codes(&with_body(
                "Dear customer, {{1}}, {{2}} has shipped and is on its way to you.",
                &["a", "b"]
            ))
            .contains(&"adjacent-variables".to_owned())
        );
    }

    #[test]
    fn too_many_variables_for_the_length_is_a_warning() {
        // 3 variables need 7 words of fixed text; this has 5 (a lone comma is no word).
        let spec = with_body(
            "Dear {{1}} , order {{2}} ships {{3}} via courier.",
            &["a", "b", "c"],
        );
        let found = finding(&spec, "too-many-variables");
        assert_eq!(found.severity, Severity::Warning);
        assert!(
            found.message.contains("3 variables and 5 words")
                && found.message.contains("at least 7"),
            "{}",
            found.message
        );
        let enough = with_body(
            "Dear {{1}}, order {{2}} ships {{3}} via our courier today.",
            &["a", "b", "c"],
        );
        assert!(!codes(&enough).contains(&"too-many-variables".to_owned()));
    }

    #[test]
    fn every_body_variable_needs_one_non_empty_example() {
        let text = "Hi {{1}}, your order {{2}} arrives on {{3}}. Thanks for shopping!";
        let found = finding(&with_body(text, &["Ada"]), "body-example-missing");
        assert_eq!(found.field, "body.examples");
        assert!(
            found.message.contains("3 variables but 1 example")
                && found.message.contains("`{{2}}`, `{{3}}`"),
            "{}",
            found.message
        );
        let found = finding(
            &with_body(text, &["a", "b", "c", "d", "e"]),
            "body-example-extra",
        );
        assert!(
            found
                .message
                .contains("3 variables but 5 examples: remove the last 2"),
            "{}",
            found.message
        );
        let found = finding(&with_body(text, &["a", " ", "c"]), "body-example-empty");
        assert_eq!(found.field, "body.examples[1]");
        assert!(found.message.contains("`{{2}}`"));
        assert_eq!(
            codes(&with_body(text, &["a", "b", "c"])),
            Vec::<String>::new()
        );
        assert_eq!(
            codes(&with_body(
                "A plain message without any variables at all.",
                &["x"]
            )),
            ["body-example-extra"]
        );
    }

    #[test]
    fn whitespace_runs_are_warnings() {
        let spec = with_body("Hi {{1}},\n\n\nyour order has shipped today.", &["Ada"]);
        let found = finding(&spec, "body-newlines");
        assert_eq!(found.severity, Severity::Warning);
        assert!(found.message.contains("3 line breaks"), "{}", found.message);
        assert!(
            !codes(&with_body(
                "Hi {{1}},\n\nyour order has shipped today.",
                &["Ada"]
            ))
            .contains(&"body-newlines".to_owned())
        );
        assert!(
            codes(&with_body(
                "Hi {{1}},\r\n \r\n\r\nyour order has shipped today.",
                &["Ada"]
            ))
            .contains(&"body-newlines".to_owned())
        );
        let found = finding(
            &with_body("Hi {{1}},     your order has shipped today.", &["Ada"]),
            "body-spaces",
        );
        assert!(found.message.contains("5 spaces"), "{}", found.message);
        assert!(
            !codes(&with_body(
                "Hi {{1}},    your order has shipped today.",
                &["Ada"]
            ))
            .contains(&"body-spaces".to_owned())
        );
    }

    // --- header -----------------------------------------------------------------------

    #[test]
    fn text_header_rules() {
        let found = finding(
            &with_header(json!({"format": "text", "text": "x".repeat(61)})),
            "header-too-long",
        );
        assert!(
            found.message.contains("61 characters") && found.message.contains("60"),
            "{}",
            found.message
        );
        assert!(
            !codes(&with_header(
                json!({"format": "text", "text": "x".repeat(60)})
            ))
            .contains(&"header-too-long".to_owned())
        );
        assert_eq!(
            codes_at(&with_header(json!({"format": "text"})), "header.text"),
            ["header-text-required"]
        );
        assert_eq!(
            codes_at(
                &with_header(json!({"format": "text", "text": "Your\norder"})),
                "header.text"
            ),
            ["header-newline"]
        );
        let formatting = finding(
            &with_header(json!({"format": "text", "text": "*Big* sale 🎉"})),
            "header-formatting",
        );
        assert_eq!(formatting.severity, Severity::Warning);
        let two = with_header(json!({"format": "text", "text": "{{1}} and {{2}}", "example": "x"}));
        assert!(
            finding(&two, "header-too-many-variables")
                .message
                .contains("has 2")
        );
        let numbered =
            with_header(json!({"format": "text", "text": "Order {{2}}", "example": "x"}));
        assert_eq!(
            finding(&numbered, "variable-numbering").field,
            "header.text"
        );
        let no_example = with_header(json!({"format": "text", "text": "Order {{1}}"}));
        assert_eq!(
            finding(&no_example, "header-example-missing").field,
            "header.example"
        );
        let empty_example =
            with_header(json!({"format": "text", "text": "Order {{1}}", "example": ""}));
        assert!(codes(&empty_example).contains(&"header-example-missing".to_owned()));
        let unused = with_header(json!({"format": "text", "text": "Your order", "example": "x"}));
        assert_eq!(
            finding(&unused, "header-example-unused").severity,
            Severity::Warning
        );
        let malformed = with_header(json!({"format": "text", "text": "Order {{ 1 }}"}));
        assert_eq!(
            codes_at(&malformed, "header.text"),
            ["placeholder-malformed"]
        );
        assert_eq!(
            codes(&with_header(
                json!({"format": "text", "text": "Order {{1}} update", "example": "#1"})
            )),
            Vec::<String>::new()
        );
    }

    #[test]
    fn media_and_location_header_rules() {
        for format in ["image", "video", "document"] {
            let spec = with_header(json!({"format": format}));
            let found = finding(&spec, "header-example-missing");
            assert!(found.message.contains(format), "{}", found.message);
            let fine = with_header(json!({"format": format, "example": "https://cdn.example/x"}));
            assert_eq!(codes(&fine), Vec::<String>::new(), "{format}");
        }
        let with_text = with_header(
            json!({"format": "image", "text": "Hi", "example": "https://cdn.example/x.jpg"}),
        );
        assert_eq!(codes(&with_text), ["header-text-not-allowed"]);
        assert_eq!(
            codes(&with_header(json!({"format": "location"}))),
            Vec::<String>::new()
        );
        assert_eq!(
            codes(&with_header(json!({"format": "location", "example": "x"}))),
            ["header-example-unused"]
        );
    }

    // --- footer -----------------------------------------------------------------------

    #[test]
    fn footer_rules() {
        let mut spec = order_update();
        spec.footer = Some("x".repeat(60));
        assert_eq!(codes_at(&spec, "footer"), Vec::<String>::new());
        spec.footer = Some("x".repeat(61));
        assert!(
            finding(&spec, "footer-too-long")
                .message
                .contains("61 characters")
        );
        spec.footer = Some("Sent to {{1}}".to_owned());
        assert_eq!(codes_at(&spec, "footer"), ["footer-variables"]);
        spec.footer = Some("Sent to {name}".to_owned());
        assert_eq!(codes_at(&spec, "footer"), ["footer-variables"]);
        spec.footer = Some(" ".to_owned());
        assert_eq!(codes_at(&spec, "footer"), ["footer-empty"]);
        spec.footer = Some("Acme\nShop".to_owned());
        assert_eq!(codes_at(&spec, "footer"), ["footer-newline"]);
    }

    // --- buttons ----------------------------------------------------------------------

    fn quick_replies(count: usize) -> Vec<Value> {
        (0..count)
            .map(|i| json!({"type": "quick_reply", "text": format!("Option {i}")}))
            .collect()
    }

    #[test]
    fn button_count_limits() {
        assert_eq!(
            codes_at(&with_buttons(json!(quick_replies(10))), "buttons"),
            Vec::<String>::new()
        );
        let found = finding(&with_buttons(json!(quick_replies(11))), "too-many-buttons");
        assert!(
            found.message.contains("this one has 11: remove 1"),
            "{}",
            found.message
        );
        let url = |i: usize| json!({"type": "url", "text": format!("Site {i}"), "url": "https://shop.example/"});
        assert_eq!(
            codes_at(&with_buttons(json!([url(0), url(1)])), "buttons"),
            Vec::<String>::new()
        );
        let found = finding(
            &with_buttons(json!([url(0), url(1), url(2)])),
            "too-many-url-buttons",
        );
        assert!(
            found.message.contains("2 URL buttons; this one has 3"),
            "{}",
            found.message
        );
        let phone = |i: usize| json!({"type": "phone_number", "text": format!("Call {i}"), "phone_number": "+15550051310"});
        assert_eq!(
            codes_at(&with_buttons(json!([phone(0), phone(1)])), "buttons"),
            ["too-many-phone-buttons"]
        );
        let code = json!({"type": "copy_code", "example": "A1"});
        assert_eq!(
            codes_at(&with_buttons(json!([code, code])), "buttons"),
            ["too-many-copy-code-buttons"]
        );
    }

    #[test]
    fn quick_replies_must_be_grouped() {
        let url = json!({"type": "url", "text": "Site", "url": "https://shop.example/"});
        let qr = |text: &str| json!({"type": "quick_reply", "text": text});
        let grouped_first = with_buttons(json!([qr("Yes"), qr("No"), url]));
        let grouped_last = with_buttons(json!([url, qr("Yes"), qr("No")]));
        assert_eq!(codes_at(&grouped_first, "buttons"), Vec::<String>::new());
        assert_eq!(codes_at(&grouped_last, "buttons"), Vec::<String>::new());
        let interleaved = with_buttons(json!([qr("Yes"), url, qr("No")]));
        let found = finding(&interleaved, "buttons-not-grouped");
        assert_eq!(found.severity, Severity::Warning);
        assert!(
            found
                .message
                .contains("buttons[2] starts a second group of quick-reply"),
            "{}",
            found.message
        );
        let split_links = with_buttons(json!([url, qr("Yes"), url]));
        let found = finding(&split_links, "buttons-not-grouped");
        assert!(
            found
                .message
                .contains("buttons[2] starts a second group of call-to-action"),
            "{}",
            found.message
        );
    }

    #[test]
    fn button_label_rules() {
        let spec = with_buttons(json!([
            {"type": "quick_reply", "text": "x".repeat(26)},
            {"type": "quick_reply", "text": " "},
            {"type": "quick_reply", "text": "Hi {{1}}"},
            {"type": "quick_reply", "text": "x".repeat(25)},
            {"type": "quick_reply", "text": "Hi {{1}}"}
        ]));
        assert_eq!(codes_at(&spec, "buttons[0].text"), ["button-text-too-long"]);
        assert!(
            finding(&spec, "button-text-too-long")
                .message
                .contains("26 characters")
        );
        assert_eq!(codes_at(&spec, "buttons[1].text"), ["button-text-required"]);
        assert_eq!(codes_at(&spec, "buttons[2].text"), ["button-text-variable"]);
        assert_eq!(codes_at(&spec, "buttons[3].text"), Vec::<String>::new());
        assert_eq!(
            codes_at(&spec, "buttons[4].text"),
            ["button-text-variable", "button-text-duplicate"]
        );
        assert!(
            finding(&spec, "button-text-duplicate")
                .message
                .contains("buttons[2]")
        );
    }

    fn url_button(url: &str, example: Option<&str>) -> TemplateSpec {
        let mut button = json!({"type": "url", "text": "Open", "url": url});
        if let Some(example) = example {
            button["example"] = json!(example);
        }
        with_buttons(json!([button]))
    }

    #[test]
    fn url_button_rules() {
        let field = "buttons[0].url";
        assert_eq!(
            codes(&url_button("https://shop.example/t/{{1}}", Some("42"))),
            Vec::<String>::new()
        );
        assert_eq!(
            codes(&url_button("https://shop.example", None)),
            Vec::<String>::new()
        );
        assert!(
            finding(&url_button("http://shop.example/", None), "url-invalid")
                .message
                .contains("use `https://`")
        );
        assert_eq!(
            codes_at(&url_button("shop.example/x", None), field),
            ["url-invalid"]
        );
        assert_eq!(
            codes_at(&url_button("https://localhost/x", None), field),
            ["url-invalid"]
        );
        assert_eq!(
            codes_at(&url_button("https:///x", None), field),
            ["url-invalid"]
        );
        assert_eq!(
            codes_at(&url_button("https://shop.example/a b", None), field),
            ["url-invalid"]
        );
        let long = format!("https://shop.example/{}", "a".repeat(2000));
        assert_eq!(codes_at(&url_button(&long, None), field), ["url-too-long"]);
        assert_eq!(
            codes_at(
                &url_button("https://shop.example/{{1}}/{{2}}", Some("x")),
                field
            ),
            ["url-too-many-variables"]
        );
        assert_eq!(
            codes_at(
                &url_button("https://shop.example/{{1}}/track", Some("x")),
                field
            ),
            ["url-variable-not-at-end"]
        );
        assert_eq!(
            codes_at(
                &url_button("https://shop.example/?id={{2}}", Some("x")),
                field
            ),
            ["variable-numbering"]
        );
        assert_eq!(
            codes_at(&url_button("https://{{1}}", Some("x")), field),
            ["url-variable-in-domain"]
        );
        assert_eq!(
            codes_at(&url_button("https://shop.example/{{one}}", None), field),
            ["placeholder-malformed"]
        );
        assert_eq!(
            codes_at(
                &url_button("https://shop.example/{{1}}", None),
                "buttons[0].example"
            ),
            ["url-example-missing"]
        );
        assert_eq!(
            codes_at(
                &url_button("https://shop.example/{{1}}", Some(" ")),
                "buttons[0].example"
            ),
            ["url-example-missing"]
        );
        let unused = finding(
            &url_button("https://shop.example/", Some("x")),
            "url-example-unused",
        );
        assert_eq!(unused.severity, Severity::Warning);
        let short = finding(&url_button("https://bit.ly/abc", None), "url-shortened");
        assert_eq!(short.severity, Severity::Warning);
        assert!(short.message.contains("bit.ly"));
    }

    #[test]
    fn phone_numbers_must_look_like_e164() {
        for good in ["+15550051310", "+442071838750", "+4930123"] {
            let spec = with_buttons(
                json!([{"type": "phone_number", "text": "Call", "phone_number": good}]),
            );
            assert_eq!(codes(&spec), Vec::<String>::new(), "{good}");
        }
        for bad in [
            "15550051310",
            "+1 555 005 1310",
            "+0123456789",
            "+123",
            "+1234567890123456",
            "",
            "+",
        ] {
            let spec = with_buttons(
                json!([{"type": "phone_number", "text": "Call", "phone_number": bad}]),
            );
            assert_eq!(
                codes_at(&spec, "buttons[0].phone_number"),
                ["phone-invalid"],
                "{bad}"
            );
        }
    }

    #[test]
    fn copy_code_example_rules() {
        let code = |example: &str| with_buttons(json!([{"type": "copy_code", "example": example}]));
        assert_eq!(codes(&code("SUMMER25")), Vec::<String>::new());
        assert_eq!(codes(&code(&"X".repeat(15))), Vec::<String>::new());
        assert_eq!(
            codes_at(&code(""), "buttons[0].example"),
            ["copy-code-example-missing"]
        );
        assert!(
            finding(&code(&"X".repeat(16)), "copy-code-example-too-long")
                .message
                .contains("16 characters")
        );
    }

    // --- categories -------------------------------------------------------------------

    #[test]
    fn authentication_rules() {
        let mut spec = order_update();
        spec.category = Category::Authentication;
        spec.body = Body {
            text: "{{1}} is your verification code.".to_owned(),
            examples: vec!["123456".to_owned()],
        };
        spec.header = Some(Header {
            format: HeaderFormat::Image,
            text: None,
            example: Some("https://x.example/a.png".to_owned()),
        });
        let found = codes(&spec);
        assert!(found.contains(&"auth-media-header".to_owned()), "{found:?}");
        assert_eq!(codes_at(&spec, "buttons[0]"), ["auth-button-not-allowed"]);
        assert_eq!(codes_at(&spec, "buttons[1]"), ["auth-button-not-allowed"]);
        // The OTP body may start with its variable, unlike other categories.
        assert!(!found.contains(&"body-starts-with-variable".to_owned()));
        assert!(!found.contains(&"auth-body-format".to_owned()));
        spec.body = Body {
            text: "Welcome back {{1}}, nice to see you again.".to_owned(),
            examples: vec!["Ada".to_owned()],
        };
        assert_eq!(
            finding(&spec, "auth-body-format").severity,
            Severity::Warning
        );
        // The same template as MARKETING or UTILITY raises none of these.
        spec.category = Category::Marketing;
        assert!(codes(&spec).iter().all(|code| !code.starts_with("auth-")));
    }

    // --- Meta components --------------------------------------------------------------

    #[test]
    fn meta_components_have_meta_shapes() {
        assert_eq!(
            to_meta_components(&order_update()),
            json!([
                {"type": "HEADER", "format": "TEXT", "text": "Order {{1}} update", "example": {"header_text": ["#1042"]}},
                {"type": "BODY", "text": "Hi {{1}}, your order {{2}} has shipped and should arrive on {{3}}. Reply if anything looks wrong.",
                 "example": {"body_text": [["Ada", "#1042", "Friday 12 May"]]}},
                {"type": "FOOTER", "text": "Acme Shop · reply STOP to opt out"},
                {"type": "BUTTONS", "buttons": [
                    {"type": "URL", "text": "Track order", "url": "https://shop.example/track/{{1}}", "example": ["https://shop.example/track/1042"]},
                    {"type": "PHONE_NUMBER", "text": "Call us", "phone_number": "+15550051310"},
                    {"type": "QUICK_REPLY", "text": "Thanks!"},
                    {"type": "QUICK_REPLY", "text": "Wrong address"}
                ]}
            ])
        );
        let minimal = spec(json!({
            "name": "promo", "language": "en", "category": "marketing",
            "header": {"format": "video", "example": "4::aW1hZ2U="},
            "body": {"text": "Our new collection is here."},
            "buttons": [
                {"type": "copy_code", "example": "NEW10"},
                {"type": "url", "text": "Shop", "url": "https://shop.example/{{1}}", "example": "https://shop.example/new"}
            ]
        }));
        assert_eq!(
            to_meta_template(&minimal),
            json!({
                "name": "promo", "language": "en", "category": "MARKETING",
                "components": [
                    {"type": "HEADER", "format": "VIDEO", "example": {"header_handle": ["4::aW1hZ2U="]}},
                    {"type": "BODY", "text": "Our new collection is here."},
                    {"type": "BUTTONS", "buttons": [
                        {"type": "COPY_CODE", "example": "NEW10"},
                        {"type": "URL", "text": "Shop", "url": "https://shop.example/{{1}}", "example": ["https://shop.example/new"]}
                    ]}
                ]
            })
        );
        let plain_header = with_header(json!({"format": "text", "text": "Hello"}));
        assert_eq!(
            to_meta_components(&plain_header)[0],
            json!({"type": "HEADER", "format": "TEXT", "text": "Hello"})
        );
        let location = with_header(json!({"format": "location"}));
        assert_eq!(
            to_meta_components(&location)[0],
            json!({"type": "HEADER", "format": "LOCATION"})
        );
    }

    // --- sending ----------------------------------------------------------------------

    fn order_vars() -> SendVariables {
        serde_json::from_value(json!({
            "header": "#1042",
            "body": ["Ada", "#1042", "Friday"],
            "buttons": {"0": "1042", "3": "wrong-address"}
        }))
        .unwrap()
    }

    #[test]
    fn send_components_have_cloud_api_shapes() {
        assert_eq!(
            send_components(&order_update(), &order_vars()).unwrap(),
            json!([
                {"type": "header", "parameters": [{"type": "text", "text": "#1042"}]},
                {"type": "body", "parameters": [
                    {"type": "text", "text": "Ada"}, {"type": "text", "text": "#1042"}, {"type": "text", "text": "Friday"}
                ]},
                {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "1042"}]},
                {"type": "button", "sub_type": "quick_reply", "index": "3", "parameters": [{"type": "payload", "payload": "wrong-address"}]}
            ])
        );
        let promo = spec(json!({
            "name": "promo", "language": "en", "category": "marketing",
            "header": {"format": "document", "example": "https://cdn.example/a.pdf"},
            "body": {"text": "Your receipt is attached."},
            "buttons": [{"type": "copy_code", "example": "NEW10"}]
        }));
        let vars = SendVariables {
            header: Some("https://cdn.example/r.pdf".to_owned()),
            body: vec![],
            buttons: BTreeMap::from([(0, "SAVE15".to_owned())]),
        };
        assert_eq!(
            send_components(&promo, &vars).unwrap(),
            json!([
                {"type": "header", "parameters": [{"type": "document", "document": {"link": "https://cdn.example/r.pdf"}}]},
                {"type": "button", "sub_type": "copy_code", "index": "0", "parameters": [{"type": "coupon_code", "coupon_code": "SAVE15"}]}
            ])
        );
        let location = with_header(json!({"format": "location"}));
        let mut vars = order_vars();
        vars.header = Some("52.520, 13.405, Acme Store, Unter den Linden 1, Berlin".to_owned());
        assert_eq!(
            send_components(&location, &vars).unwrap()[0],
            json!({"type": "header", "parameters": [{"type": "location", "location": {
                "latitude": "52.520", "longitude": "13.405", "name": "Acme Store", "address": "Unter den Linden 1, Berlin"}}]})
        );
        // A template without variables sends no components.
        let plain = spec(
            json!({"name": "hi", "language": "en", "category": "utility", "body": {"text": "Your order has shipped."}}),
        );
        assert_eq!(
            send_components(&plain, &SendVariables::default()).unwrap(),
            json!([])
        );
    }

    fn send_errors(spec: &TemplateSpec, vars: &SendVariables) -> Vec<String> {
        send_components(spec, vars).unwrap_err()
    }

    #[test]
    fn wrong_body_value_count_says_expected_and_given() {
        let mut vars = order_vars();
        vars.body.pop();
        assert_eq!(
            send_errors(&order_update(), &vars),
            ["the body has 3 variables (`{{1}}`…`{{3}}`) but 2 values were given"]
        );
        vars.body = vec!["a".into(), "b".into(), "c".into(), "d".into()];
        assert_eq!(
            send_errors(&order_update(), &vars),
            ["the body has 3 variables (`{{1}}`…`{{3}}`) but 4 values were given"]
        );
        let plain = spec(
            json!({"name": "hi", "language": "en", "category": "utility", "body": {"text": "Shipped."}}),
        );
        let vars = SendVariables {
            body: vec!["x".into()],
            ..SendVariables::default()
        };
        assert_eq!(
            send_errors(&plain, &vars),
            ["the body has no variables but 1 value was given: remove them"]
        );
    }

    #[test]
    fn bad_body_values_are_each_reported() {
        let mut vars = order_vars();
        vars.body = vec![" ".into(), "x".repeat(1025), "line\nbreak".into()];
        let errors = send_errors(&order_update(), &vars);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("`{{1}}` is empty"));
        assert!(errors[1].contains("`{{2}}` has 1025 characters; the limit is 1024"));
        assert!(errors[2].contains("`{{3}}` contains a line break"));
        vars.body = vec!["a".into(), "b     c".into(), "tab\there".into()];
        let errors = send_errors(&order_update(), &vars);
        assert!(
            errors[0].contains("more than 4 spaces") && errors[1].contains("tab"),
            "{errors:?}"
        );
        // Values fine on their own but too long together.
        vars.body = vec!["x".repeat(500), "y".repeat(500), "z".into()];
        let errors = send_errors(&order_update(), &vars);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("the body would be") && errors[0].contains("limit is 1024"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn header_value_problems() {
        let mut vars = order_vars();
        vars.header = None;
        assert_eq!(
            send_errors(&order_update(), &vars),
            ["missing header value: the header has a variable, `{{1}}`"]
        );
        vars.header = Some(String::new());
        assert!(send_errors(&order_update(), &vars)[0].contains("header value is empty"));
        vars.header = Some("x".repeat(60));
        assert!(
            send_errors(&order_update(), &vars)[0].contains("the header would be 73 characters")
        );

        let image = with_header(json!({"format": "image", "example": "https://cdn.example/a.jpg"}));
        vars.header = None;
        assert_eq!(
            send_errors(&image, &vars),
            ["missing header value: the image header needs a link to the image"]
        );
        vars.header = Some("not a link".to_owned());
        assert!(send_errors(&image, &vars)[0].contains("is not a link"));

        let location = with_header(json!({"format": "location"}));
        vars.header = Some("91,0".to_owned());
        assert!(send_errors(&location, &vars)[0].contains("is not a location"));

        let plain_header = with_header(json!({"format": "text", "text": "Hello"}));
        vars.header = Some("x".to_owned());
        assert_eq!(
            send_errors(&plain_header, &vars),
            ["the header has no variable: remove the header value"]
        );
        let mut no_header = order_update();
        no_header.header = None;
        assert_eq!(
            send_errors(&no_header, &vars),
            ["the template has no header: remove the header value"]
        );
    }

    #[test]
    fn button_value_problems() {
        let mut vars = order_vars();
        vars.buttons.remove(&0);
        assert_eq!(
            send_errors(&order_update(), &vars),
            [
                "missing URL suffix: button 0 (URL \"Track order\") needs the value for the end of `https://shop.example/track/{{1}}`"
            ]
        );
        vars.buttons.insert(0, "a b".to_owned());
        assert!(send_errors(&order_update(), &vars)[0].contains("contains whitespace"));
        vars.buttons.insert(0, "1042".to_owned());
        vars.buttons.insert(1, "x".to_owned());
        vars.buttons.insert(3, String::new());
        vars.buttons.insert(9, "x".to_owned());
        let errors = send_errors(&order_update(), &vars);
        assert_eq!(
            errors,
            [
                "there is no button 9: the template has 4 buttons (numbered from 0)",
                "button 1 (phone number \"Call us\") takes no value: remove it",
                "the payload for button 3 (quick reply \"Wrong address\") is empty: give one or leave it out",
            ]
        );
        let code = with_buttons(
            json!([{"type": "copy_code", "example": "A"}, {"type": "url", "text": "Shop", "url": "https://shop.example/"}]),
        );
        let vars = SendVariables {
            header: Some("#1".into()),
            body: vec!["a".into(), "b".into(), "c".into()],
            buttons: BTreeMap::from([(1, "x".to_owned())]),
        };
        assert_eq!(
            send_errors(&code, &vars),
            [
                "missing code: button 0 (copy code) needs the code to copy",
                "button 1 (URL \"Shop\") has a fixed URL: remove its value"
            ]
        );
    }

    #[test]
    fn send_variables_reject_unknown_fields() {
        assert!(serde_json::from_value::<SendVariables>(json!({"bodies": []})).is_err());
        assert_eq!(
            serde_json::from_value::<SendVariables>(json!({})).unwrap(),
            SendVariables::default()
        );
    }

    // --- preview and counting ---------------------------------------------------------

    #[test]
    fn preview_shows_what_the_recipient_reads() {
        assert_eq!(
            render_preview(&order_update(), &order_vars()),
            "Order #1042 update\n\nHi Ada, your order #1042 has shipped and should arrive on Friday. Reply if anything looks wrong.\n\nAcme Shop · reply STOP to opt out"
        );
        // Missing values stay visible; values are not substituted again.
        let vars = SendVariables {
            body: vec!["{{2}}".into()],
            ..SendVariables::default()
        };
        assert_eq!(
            render_preview(&order_update(), &vars),
            "Order {{1}} update\n\nHi {{2}}, your order {{2}} has shipped and should arrive on {{3}}. Reply if anything looks wrong.\n\nAcme Shop · reply STOP to opt out"
        );
        let image = with_header(json!({"format": "image", "example": "https://cdn.example/a.jpg"}));
        assert!(render_preview(&image, &order_vars()).starts_with("[image]\n\nHi Ada"));
        let examples = SendVariables::from_examples(&order_update());
        assert_eq!(examples.buttons, BTreeMap::from([(0, "1042".to_owned())]));
        assert!(send_components(&order_update(), &examples).is_ok());
        assert!(
            render_preview(&order_update(), &examples)
                .starts_with("Order #1042 update\n\nHi Ada, your order #1042")
        );
    }

    #[test]
    fn variable_count_is_the_highest_number() {
        assert_eq!(variable_count("No variables."), 0);
        assert_eq!(variable_count("Hi {{1}}, {{2}} and {{1}}"), 2);
        assert_eq!(variable_count("Hi {{1}} and {{3}}"), 3);
        assert_eq!(variable_count("Hi {{ 1 }} {name} {1}"), 0);
    }

    #[test]
    fn odd_input_never_panics() {
        let nasty = [
            "{",
            "{{",
            "}}",
            "{{{",
            "}}}",
            "{{{{}}}}",
            "{é}",
            "{{é}}",
            "é{{1}}é",
            "{{1}}",
            "{{99999999999999999999999}}",
            "{{1}}{{",
            "\u{1F600}{{1}}\u{1F600}",
            "{{\n1}}",
            "{ {1} }",
            "https://é.example/{{1}}",
            "{{1}}}}",
        ];
        for text in nasty {
            let mut spec = with_body(text, &[]);
            spec.footer = Some(text.to_owned());
            spec.header = Some(Header {
                format: HeaderFormat::Text,
                text: Some(text.to_owned()),
                example: None,
            });
            spec.buttons = vec![
                Button::Url {
                    text: text.to_owned(),
                    url: text.to_owned(),
                    example: Some(text.to_owned()),
                },
                Button::PhoneNumber {
                    text: text.to_owned(),
                    phone_number: text.to_owned(),
                },
            ];
            spec.name = text.to_owned();
            spec.language = text.to_owned();
            let _ = lint(&spec);
            let _ = to_meta_components(&spec);
            let vars = SendVariables {
                header: Some(text.to_owned()),
                body: vec![text.to_owned()],
                buttons: BTreeMap::from([(0, text.to_owned())]),
            };
            let _ = send_components(&spec, &vars);
            let _ = render_preview(&spec, &vars);
            let _ = SendVariables::from_examples(&spec);
        }
    }
}
