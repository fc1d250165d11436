//! CSV contact imports. The upload is spooled to a file under the data directory (never
//! held in memory), its header is checked against the column mapping before the request
//! is answered, and a background job then streams the file: a blocking thread parses and
//! normalizes rows (UTF-8 with or without BOM; `,` `;` or tab; quoted fields with
//! embedded newlines) and hands batches over a bounded channel to the writer, which
//! applies them with the duplicate strategy (`TenantDb::import_batch`), counts outcomes,
//! appends every rejected row with its line number and reason to an error CSV, and
//! reports progress after each batch.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::contacts::{normalize_email, normalize_phone, normalize_tag};
use crate::storage::{
    CONSENT_CHANNELS, ContactData, CustomField, DuplicateStrategy, FieldKind, ImportCounts,
    ImportRow, RowOutcome, TenantDb,
};

/// Rows per batch written in one transaction.
pub const BATCH_ROWS: usize = 1_000;
/// Largest accepted upload.
pub const MAX_UPLOAD_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Where a column goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The contact's name.
    Name,
    /// Its phone (normalized to E.164).
    Phone,
    /// Its email.
    Email,
    /// Tags, separated by `,`, `;` or `|` inside the cell.
    Tags,
    /// A custom field.
    Field(CustomField),
    /// Consent for a channel (`whatsapp`, `email`, `sms`, `social`): `opted_in` /
    /// `opted_out` (or yes/no, true/false, 1/0, subscribed/unsubscribed); empty records
    /// nothing.
    Consent(String),
    /// Not imported.
    Ignore,
}

impl Target {
    fn name(&self) -> String {
        match self {
            Target::Name => "name".into(),
            Target::Phone => "phone".into(),
            Target::Email => "email".into(),
            Target::Tags => "tags".into(),
            Target::Field(field) => format!("fields.{}", field.key),
            Target::Consent(channel) => format!("consent.{channel}"),
            Target::Ignore => "ignore".into(),
        }
    }
}

/// The consent channel a column header names, if it reads as one: `consent.whatsapp`,
/// `WhatsApp consent`, `whatsapp_opt_in`, `Email opt-in`, `consent email`, …
fn consent_header(header: &str) -> Option<&'static str> {
    let words: Vec<String> = header
        .to_lowercase()
        .split(|c: char| c.is_whitespace() || matches!(c, '_' | '-' | '.' | ':'))
        .filter(|word| !word.is_empty())
        .map(str::to_string)
        .collect();
    let channel = CONSENT_CHANNELS.into_iter().find(|channel| {
        words.first().map(String::as_str) == Some(*channel)
            || words.last().map(String::as_str) == Some(*channel)
    })?;
    let rest: Vec<&str> = words
        .iter()
        .map(String::as_str)
        .filter(|word| *word != channel)
        .collect();
    matches!(
        rest.as_slice(),
        ["consent"] | ["opt", "in"] | ["optin"] | ["opted", "in"] | ["subscribed"]
    )
    .then_some(channel)
}

/// Reads a consent cell: `opted_in` or `opted_out`, or why the value is not one.
fn consent_value(channel: &str, cell: &str) -> Result<&'static str, String> {
    match cell.to_ascii_lowercase().replace(['-', ' '], "_").as_str() {
        "opted_in" | "opt_in" | "optin" | "in" | "yes" | "y" | "true" | "1" | "subscribed" => {
            Ok("opted_in")
        }
        "opted_out" | "opt_out" | "optout" | "out" | "no" | "n" | "false" | "0"
        | "unsubscribed" => Ok("opted_out"),
        _ => Err(format!(
            "`{cell}` is not a {channel} consent value; use opted_in or opted_out (yes/no, true/false and 1/0 work too), or leave the cell empty to record nothing"
        )),
    }
}

/// The file's layout: delimiter, header and where each column goes.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The field delimiter.
    pub delimiter: u8,
    /// The header's column names.
    pub headers: Vec<String>,
    /// One target per column.
    pub targets: Vec<Target>,
}

impl Layout {
    /// The mapping as JSON (`{"column": "target"}`), as reported on the job.
    pub fn mapping_json(&self) -> Value {
        let mut mapping = Map::new();
        for (header, target) in self.headers.iter().zip(&self.targets) {
            mapping.insert(header.clone(), json!(target.name()));
        }
        Value::Object(mapping)
    }
}

/// Opens a spooled file positioned after a UTF-8 byte-order mark, if it has one.
fn open_without_bom(path: &Path) -> std::io::Result<BufReader<File>> {
    let mut file = File::open(path)?;
    let mut start = [0_u8; 3];
    let mut read = 0;
    while read < 3 {
        let n = file.read(&mut start[read..])?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let skip = if read == 3 && start == [0xEF, 0xBB, 0xBF] {
        3
    } else {
        0
    };
    file.seek(SeekFrom::Start(skip))?;
    Ok(BufReader::with_capacity(256 * 1024, file))
}

/// Guesses the delimiter from the header line: the most frequent of `,` `;` and tab
/// outside quotes (`,` when none appears, a one-column file).
fn detect_delimiter(path: &Path) -> std::io::Result<u8> {
    let mut reader = open_without_bom(path)?;
    let mut head = vec![0_u8; 64 * 1024];
    let mut filled = 0;
    loop {
        let n = reader.read(&mut head[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
        if filled == head.len() || head[..filled].contains(&b'\n') {
            break;
        }
    }
    let mut counts = [(b',', 0_usize), (b';', 0), (b'\t', 0)];
    let mut quoted = false;
    for &byte in &head[..filled] {
        match byte {
            b'"' => quoted = !quoted,
            b'\n' | b'\r' if !quoted => break,
            _ if !quoted => {
                for (delimiter, count) in &mut counts {
                    if byte == *delimiter {
                        *count += 1;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(counts
        .iter()
        .max_by_key(|(_, count)| *count)
        .filter(|(_, count)| *count > 0)
        .map_or(b',', |(delimiter, _)| *delimiter))
}

fn csv_reader<R: Read>(input: R, delimiter: u8) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(true)
        .from_reader(input)
}

/// Offsets of the CR and LF bytes the CSV parser has been handed and not yet passed,
/// shared with [`LineCounting`]. The parser's own positions can point at the tail of the
/// previous record's terminator (CRLF files, blank lines), so line numbers are computed
/// here: 1 + the LFs before the record's first byte that is not a terminator.
#[derive(Default)]
struct LineIndex {
    terminators: std::collections::VecDeque<(u64, bool)>,
    lines_passed: u64,
}

impl LineIndex {
    /// The line on which the record starting at byte `start` (or at the first
    /// non-terminator byte after it) begins.
    fn line_of(&mut self, start: u64) -> u64 {
        while let Some(&(offset, lf)) = self.terminators.front() {
            if offset >= start {
                break;
            }
            self.lines_passed += u64::from(lf);
            self.terminators.pop_front();
        }
        let mut position = start;
        while let Some(&(offset, lf)) = self.terminators.front() {
            if offset != position {
                break;
            }
            self.lines_passed += u64::from(lf);
            self.terminators.pop_front();
            position += 1;
        }
        self.lines_passed + 1
    }
}

/// A reader that records where CR and LF bytes are, for [`LineIndex`].
struct LineCounting<R> {
    inner: R,
    offset: u64,
    index: std::rc::Rc<std::cell::RefCell<LineIndex>>,
}

impl<R: Read> Read for LineCounting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut index = self.index.borrow_mut();
        for (position, &byte) in buf[..n].iter().enumerate() {
            if byte == b'\n' || byte == b'\r' {
                index
                    .terminators
                    .push_back((self.offset + position as u64, byte == b'\n'));
            }
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// Reads the header and resolves the mapping: `explicit` maps column names to `name`,
/// `phone`, `email`, `tags`, `fields.<key>` or `ignore`; columns it does not name are
/// matched by their header (name/full name, phone/mobile/whatsapp, email/e-mail, tags,
/// or a custom field's key or label), others ignored. The error says what to fix.
pub fn read_layout(
    path: &Path,
    explicit: Option<&Map<String, Value>>,
    definitions: &[CustomField],
) -> Result<Layout, String> {
    let delimiter =
        detect_delimiter(path).map_err(|error| format!("cannot read the file: {error}"))?;
    let mut reader = csv_reader(
        open_without_bom(path).map_err(|error| format!("cannot read the file: {error}"))?,
        delimiter,
    );
    let headers: Vec<String> = reader
        .headers()
        .map_err(|error| match error.kind() {
            csv::ErrorKind::Utf8 { .. } => {
                "the header row is not UTF-8 text; save the file as UTF-8 CSV".to_string()
            }
            _ => format!("cannot read the header row: {error}"),
        })?
        .iter()
        .map(|header| header.trim().to_string())
        .collect();
    if headers.iter().all(String::is_empty) {
        return Err("the file is empty: the first row must name the columns".into());
    }
    if let Some(explicit) = explicit {
        for column in explicit.keys() {
            if !headers.contains(column) {
                return Err(format!(
                    "the mapping names column `{column}`, which the file does not have; its columns are: {}",
                    headers.join(", ")
                ));
            }
        }
    }
    let field_by = |name: &str| {
        definitions.iter().find(|definition| {
            definition.key.eq_ignore_ascii_case(name) || definition.label.eq_ignore_ascii_case(name)
        })
    };
    let mut targets = Vec::with_capacity(headers.len());
    for header in &headers {
        let target = match explicit.and_then(|explicit| explicit.get(header)) {
            Some(Value::String(target)) => match target.as_str() {
                "name" => Target::Name,
                "phone" => Target::Phone,
                "email" => Target::Email,
                "tags" => Target::Tags,
                "ignore" => Target::Ignore,
                other if other.starts_with("consent.") => {
                    let channel = &other["consent.".len()..];
                    match CONSENT_CHANNELS.into_iter().find(|known| *known == channel) {
                        Some(channel) => Target::Consent(channel.to_string()),
                        None => {
                            return Err(format!(
                                "the mapping sends `{header}` to `{other}`, but `{channel}` is not a consent channel; use consent.{}",
                                CONSENT_CHANNELS.join(", consent.")
                            ));
                        }
                    }
                }
                other => match other.strip_prefix("fields.") {
                    Some(key) => Target::Field(
                        definitions
                            .iter()
                            .find(|definition| definition.key == key)
                            .cloned()
                            .ok_or_else(|| {
                                format!(
                                    "the mapping sends `{header}` to `{other}`, but no custom field `{key}` is defined; define it with PUT /v1/custom-fields/{key}"
                                )
                            })?,
                    ),
                    None => {
                        return Err(format!(
                            "the mapping sends `{header}` to `{other}`; targets are name, phone, email, tags, fields.<key>, consent.<channel> or ignore"
                        ));
                    }
                },
            },
            Some(_) => return Err(format!("the mapping of `{header}` must be a string")),
            None => match header.to_lowercase().as_str() {
                "name" | "full name" | "full_name" | "contact name" => Target::Name,
                "phone" | "phone number" | "phone_number" | "mobile" | "whatsapp" | "tel" => {
                    Target::Phone
                }
                "email" | "e-mail" | "email address" | "email_address" => Target::Email,
                "tags" | "tag" | "labels" => Target::Tags,
                other => match field_by(other) {
                    Some(field) => Target::Field(field.clone()),
                    None => consent_header(other)
                        .map_or(Target::Ignore, |channel| Target::Consent(channel.into())),
                },
            },
        };
        targets.push(target);
    }
    let consent_columns = CONSENT_CHANNELS
        .into_iter()
        .map(|channel| Target::Consent(channel.into()));
    for unique in [Target::Name, Target::Phone, Target::Email, Target::Tags]
        .into_iter()
        .chain(consent_columns)
    {
        if targets.iter().filter(|target| **target == unique).count() > 1 {
            return Err(format!(
                "several columns map to `{}`; map all but one to `ignore`",
                unique.name()
            ));
        }
    }
    if !targets
        .iter()
        .any(|target| matches!(target, Target::Name | Target::Phone | Target::Email))
    {
        return Err(format!(
            "no column maps to name, phone or email (columns: {}); name them so or send a mapping such as {{\"Mobile\": \"phone\"}}",
            headers.join(", ")
        ));
    }
    Ok(Layout {
        delimiter,
        headers,
        targets,
    })
}

/// Parses one cell of a custom field.
fn field_value(field: &CustomField, cell: &str) -> Result<Value, String> {
    let value = match field.kind {
        FieldKind::Number => cell
            .replace(' ', "")
            .parse::<f64>()
            .ok()
            .and_then(|number| {
                if number.fract() == 0.0 && number.abs() < 9.0e15 {
                    // Whole numbers stay integers in JSON.
                    #[allow(clippy::cast_possible_truncation)]
                    Some(json!(number as i64))
                } else {
                    serde_json::Number::from_f64(number).map(Value::Number)
                }
            })
            .ok_or_else(|| format!("`{cell}` is not a number for field `{}`", field.key))?,
        FieldKind::Boolean => match cell.to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "1" => json!(true),
            "false" | "no" | "n" | "0" => json!(false),
            _ => {
                return Err(format!(
                    "`{cell}` is not true/false for field `{}`",
                    field.key
                ));
            }
        },
        _ => json!(cell),
    };
    field.check(&value)?;
    Ok(value)
}

/// Turns one record into contact values and consent, or the reason it is rejected.
/// `proof` is what the consent history will name as the consent's proof.
pub fn parse_record(
    layout: &Layout,
    cells: &[&str],
    country: &str,
    proof: String,
) -> Result<ImportRow, String> {
    if cells.len() != layout.headers.len() {
        return Err(format!(
            "it has {} columns but the header has {}; check for an unquoted delimiter or a broken quote",
            cells.len(),
            layout.headers.len()
        ));
    }
    let mut data = ContactData {
        fields: json!({}),
        ..ContactData::default()
    };
    let mut fields = Map::new();
    let mut consent = Vec::new();
    for (cell, target) in cells.iter().zip(&layout.targets) {
        let cell = crate::csv_out::from_inert(cell.trim()).trim();
        if cell.is_empty() {
            continue;
        }
        match target {
            Target::Name => data.name = Some(cell.to_string()),
            Target::Phone => {
                data.phone =
                    Some(normalize_phone(cell, country).map_err(|error| error.to_string())?);
            }
            Target::Email => {
                data.email = Some(normalize_email(cell).map_err(|error| error.to_string())?);
            }
            Target::Tags => {
                for tag in cell
                    .split([',', ';', '|'])
                    .filter(|tag| !tag.trim().is_empty())
                {
                    data.tags
                        .push(normalize_tag(tag).map_err(|error| error.to_string())?);
                }
            }
            Target::Field(field) => {
                fields.insert(field.key.clone(), field_value(field, cell)?);
            }
            Target::Consent(channel) => {
                consent.push((channel.clone(), consent_value(channel, cell)?.to_string()));
            }
            Target::Ignore => {}
        }
    }
    if data.name.is_none() && data.phone.is_none() && data.email.is_none() {
        return Err("the row has no name, phone or email".into());
    }
    data.fields = Value::Object(fields);
    Ok(ImportRow {
        data,
        consent,
        proof,
    })
}

/// A parsed row: its line and either its values or why it was rejected (with its cells,
/// for the error CSV).
enum Parsed {
    Row(u64, ImportRow),
    Rejected(u64, Vec<String>, String),
}

/// Everything a job needs.
pub struct ImportJobSpec {
    /// The job's id.
    pub id: String,
    /// The tenant's database handle.
    pub db: TenantDb,
    /// The spooled upload.
    pub file: PathBuf,
    /// Where rejected rows go.
    pub errors_file: PathBuf,
    /// How columns map.
    pub layout: Layout,
    /// Duplicate strategy.
    pub strategy: DuplicateStrategy,
    /// The tenant's default country for phone numbers.
    pub country: String,
    /// The plan's contact limit (`None`: unlimited).
    pub contact_limit: Option<u64>,
    /// Tenant webhooks: each created contact's `contact.created` deliveries are written
    /// with it.
    pub webhooks: crate::webhooks::Webhooks,
}

/// Runs import jobs in the background, a few at a time.
#[derive(Clone)]
pub struct Importer {
    data_dir: PathBuf,
    slots: Arc<Semaphore>,
}

impl Importer {
    /// Jobs keep their files under `<data_dir>/imports`; at most `concurrent` run at once.
    pub fn new(data_dir: &Path, concurrent: usize) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            slots: Arc::new(Semaphore::new(concurrent.max(1))),
        }
    }

    /// The directory of upload and error files.
    pub fn dir(&self) -> PathBuf {
        self.data_dir.join("imports")
    }

    /// The spooled upload of job `id`.
    pub fn upload_path(&self, id: &str) -> PathBuf {
        self.dir().join(format!("{id}.csv"))
    }

    /// The rejected-rows CSV of job `id`.
    pub fn errors_path(&self, id: &str) -> PathBuf {
        self.dir().join(format!("{id}.errors.csv"))
    }

    /// Starts a job in the background; it waits for a free slot while `queued`.
    pub fn spawn(&self, spec: ImportJobSpec) {
        let slots = self.slots.clone();
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            let (db, id, file) = (spec.db.clone(), spec.id.clone(), spec.file.clone());
            let result = run(spec).await;
            // The upload is not needed once the job ends; the error CSV stays.
            if let Err(error) = tokio::fs::remove_file(&file).await {
                tracing::warn!(%error, job = %id, "could not remove an import's upload");
            }
            if let Err((counts, message)) = result {
                tracing::error!(job = %id, error = %message, "import failed");
                if let Err(error) = db
                    .update_import(&id, "failed", counts, Some(&message))
                    .await
                {
                    tracing::error!(%error, job = %id, "could not record an import's failure");
                }
            }
        });
    }
}

/// Runs one job to its end; on failure the counts so far and why.
async fn run(spec: ImportJobSpec) -> Result<(), (ImportCounts, String)> {
    let mut counts = ImportCounts::default();
    let fail = |counts: ImportCounts, message: String| (counts, message);
    spec.db
        .update_import(&spec.id, "running", counts, None)
        .await
        .map_err(|error| fail(counts, error.to_string()))?;
    let mut room = match spec.contact_limit {
        Some(limit) => Some(
            limit.saturating_sub(
                spec.db
                    .count_contacts()
                    .await
                    .map_err(|error| fail(counts, error.to_string()))?,
            ),
        ),
        None => None,
    };

    let (sender, mut receiver) = mpsc::channel::<Vec<Parsed>>(4);
    let reader_layout = spec.layout.clone();
    let reader_file = spec.file.clone();
    let country = spec.country.clone();
    let job_id = spec.id.clone();
    let reader = tokio::task::spawn_blocking(move || {
        read_batches(&reader_file, &reader_layout, &country, &job_id, &sender)
    });

    let mut errors = ErrorCsv::new(&spec.errors_file, &spec.layout.headers);
    // Progress is written at most this often: a write per 1,000-row batch cost a commit
    // per batch for no reader's benefit.
    const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
    let mut progress_written = std::time::Instant::now();
    while let Some(batch) = receiver.recv().await {
        let mut rows = Vec::with_capacity(batch.len());
        let mut lines = Vec::with_capacity(batch.len());
        for parsed in batch {
            counts.rows_read += 1;
            match parsed {
                Parsed::Row(line, row) => {
                    lines.push(line);
                    rows.push(row);
                }
                Parsed::Rejected(line, cells, reason) => {
                    counts.failed += 1;
                    errors.push(line, &reason, &cells);
                }
            }
        }
        let subscribed = spec
            .webhooks
            .subscriptions(&spec.db)
            .await
            .map_err(|error| fail(counts, error.to_string()))?;
        let tenant = spec.db.tenant_id().as_str();
        let announce = |id: &str, data: &crate::storage::ContactData| {
            subscribed.contact_created(tenant, "import", id, data)
        };
        let (outcomes, opt_ins_refused) = spec
            .db
            .import_batch(&rows, spec.strategy, room, &announce)
            .await
            .map_err(|error| fail(counts, error.to_string()))?;
        counts.opt_ins_refused += opt_ins_refused;
        for ((outcome, line), row) in outcomes.into_iter().zip(lines).zip(&rows) {
            match outcome {
                RowOutcome::Created => {
                    counts.created += 1;
                    room = room.map(|room| room.saturating_sub(1));
                }
                RowOutcome::Updated => counts.updated += 1,
                RowOutcome::Skipped => counts.skipped += 1,
                RowOutcome::Failed(reason) => {
                    counts.failed += 1;
                    errors.push(line, &reason, &row_cells(&spec.layout, row));
                }
            }
        }
        if progress_written.elapsed() >= PROGRESS_EVERY {
            spec.db
                .update_import(&spec.id, "running", counts, None)
                .await
                .map_err(|error| fail(counts, error.to_string()))?;
            progress_written = std::time::Instant::now();
        }
    }
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(message)) => return Err(fail(counts, message)),
        Err(error) => return Err(fail(counts, format!("the reader stopped: {error}"))),
    }
    errors
        .finish()
        .map_err(|error| fail(counts, format!("cannot write the error file: {error}")))?;
    spec.db
        .update_import(&spec.id, "completed", counts, None)
        .await
        .map_err(|error| fail(counts, error.to_string()))
}

/// The cells of a parsed row, for the error CSV (normalized values, by column).
fn row_cells(layout: &Layout, row: &ImportRow) -> Vec<String> {
    layout
        .targets
        .iter()
        .map(|target| match target {
            Target::Name => row.data.name.clone().unwrap_or_default(),
            Target::Phone => row.data.phone.clone().unwrap_or_default(),
            Target::Email => row.data.email.clone().unwrap_or_default(),
            Target::Tags => row.data.tags.join(", "),
            Target::Field(field) => match row.data.fields.get(&field.key) {
                Some(Value::String(text)) => text.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            },
            Target::Consent(channel) => row
                .consent
                .iter()
                .find(|(of, _)| of == channel)
                .map(|(_, status)| status.clone())
                .unwrap_or_default(),
            Target::Ignore => String::new(),
        })
        .collect()
}

/// The blocking reader: parses the file into batches and sends them on.
fn read_batches(
    file: &Path,
    layout: &Layout,
    country: &str,
    job_id: &str,
    sender: &mpsc::Sender<Vec<Parsed>>,
) -> Result<(), String> {
    let index = std::rc::Rc::new(std::cell::RefCell::new(LineIndex::default()));
    let input = LineCounting {
        inner: open_without_bom(file)
            .map_err(|error| format!("cannot read the upload: {error}"))?,
        offset: 0,
        index: index.clone(),
    };
    let mut reader = csv_reader(input, layout.delimiter);
    let mut record = csv::ByteRecord::new();
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(error) => return Err(format!("cannot read the upload: {error}")),
        }
        let line = index
            .borrow_mut()
            .line_of(record.position().map_or(0, csv::Position::byte));
        let mut cells: Vec<&str> = Vec::with_capacity(record.len());
        let mut utf8 = true;
        for cell in &record {
            match std::str::from_utf8(cell) {
                Ok(text) => cells.push(text),
                Err(_) => {
                    utf8 = false;
                    break;
                }
            }
        }
        if cells.iter().all(|cell| cell.trim().is_empty()) && utf8 {
            continue; // a blank row
        }
        let parsed = if !utf8 {
            let lossy = record
                .iter()
                .map(|cell| String::from_utf8_lossy(cell).into_owned())
                .collect();
            Parsed::Rejected(
                line,
                lossy,
                "the row is not UTF-8 text; save the file as UTF-8 CSV".into(),
            )
        } else {
            match parse_record(
                layout,
                &cells,
                country,
                format!("import {job_id} line {line}"),
            ) {
                Ok(row) => Parsed::Row(line, row),
                Err(reason) => Parsed::Rejected(
                    line,
                    cells.iter().map(|cell| (*cell).to_string()).collect(),
                    reason,
                ),
            }
        };
        batch.push(parsed);
        if batch.len() == BATCH_ROWS {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
            if sender.blocking_send(full).is_err() {
                return Ok(()); // the writer stopped; it reports why
            }
        }
    }
    if !batch.is_empty() {
        let _ = sender.blocking_send(batch);
    }
    Ok(())
}

/// The rejected-rows CSV: `line,error,<the file's columns>`, created on the first row.
struct ErrorCsv {
    path: PathBuf,
    headers: Vec<String>,
    writer: Option<csv::Writer<File>>,
    failed: Option<std::io::Error>,
}

impl ErrorCsv {
    fn new(path: &Path, headers: &[String]) -> Self {
        Self {
            path: path.to_path_buf(),
            headers: headers.to_vec(),
            writer: None,
            failed: None,
        }
    }

    fn push(&mut self, line: u64, reason: &str, cells: &[String]) {
        if self.failed.is_some() {
            return;
        }
        if let Err(error) = self.try_push(line, reason, cells) {
            self.failed = Some(error);
        }
    }

    fn try_push(&mut self, line: u64, reason: &str, cells: &[String]) -> std::io::Result<()> {
        if self.writer.is_none() {
            let mut writer = csv::Writer::from_writer(File::create(&self.path)?);
            let mut header = vec!["line".to_string(), "error".to_string()];
            header.extend(self.headers.iter().cloned());
            writer.write_record(&header)?;
            self.writer = Some(writer);
        }
        if let Some(writer) = &mut self.writer {
            let mut record = vec![line.to_string(), reason.to_string()];
            record.extend(cells.iter().cloned());
            writer.write_record(record.iter().map(|cell| crate::csv_out::inert_bytes(cell)))?;
        }
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        if let Some(error) = self.failed.take() {
            return Err(error);
        }
        if let Some(mut writer) = self.writer.take() {
            writer.flush()?;
        }
        Ok(())
    }
}

/// Headers for a contact export, matching what an import maps back automatically.
pub fn export_headers(fields: &[CustomField]) -> Vec<String> {
    let mut headers: Vec<String> = [
        "id",
        "name",
        "phone",
        "email",
        "tags",
        "created_at",
        "updated_at",
        "last_contacted_at",
    ]
    .iter()
    .map(|header| (*header).to_string())
    .collect();
    for channel in crate::storage::CONSENT_CHANNELS {
        headers.push(format!("consent_{channel}"));
    }
    headers.extend(fields.iter().map(|field| field.key.clone()));
    headers
}

/// One contact as an export CSV record, in `export_headers` order.
pub fn export_record(contact: &crate::storage::Contact, fields: &[CustomField]) -> Vec<String> {
    let mut record = vec![
        contact.id.clone(),
        contact.name.clone().unwrap_or_default(),
        contact.phone.clone().unwrap_or_default(),
        contact.email.clone().unwrap_or_default(),
        contact.tags.join(", "),
        contact.created_at.to_string(),
        contact.updated_at.to_string(),
        contact
            .last_contacted_at
            .map(|at| at.to_string())
            .unwrap_or_default(),
    ];
    for channel in crate::storage::CONSENT_CHANNELS {
        record.push(
            contact
                .consent
                .get(channel)
                .map(|entry| entry.status.clone())
                .unwrap_or_default(),
        );
    }
    let values: HashMap<&str, &Value> = contact
        .fields
        .as_object()
        .map(|object| {
            object
                .iter()
                .map(|(key, value)| (key.as_str(), value))
                .collect()
        })
        .unwrap_or_default();
    for field in fields {
        record.push(match values.get(field.key.as_str()) {
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        });
    }
    record
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(bytes).expect("write");
        file
    }

    fn rows(path: &Path, layout: &Layout) -> Vec<(u64, Result<ContactData, String>)> {
        let (sender, mut receiver) = mpsc::channel(1024);
        read_batches(path, layout, "US", "job-1", &sender).expect("read");
        drop(sender);
        let mut out = Vec::new();
        while let Ok(batch) = receiver.try_recv() {
            for parsed in batch {
                out.push(match parsed {
                    Parsed::Row(line, row) => (line, Ok(row.data)),
                    Parsed::Rejected(line, _, reason) => (line, Err(reason)),
                });
            }
        }
        out
    }

    #[test]
    fn consent_columns_are_recognized_and_their_cells_checked() {
        for (header, channel) in [
            ("WhatsApp consent", Some("whatsapp")),
            ("whatsapp_opt_in", Some("whatsapp")),
            ("consent.email", Some("email")),
            ("Email opt-in", Some("email")),
            ("SMS subscribed", Some("sms")),
            ("consent", None),
            ("whatsapp", None),
            ("whatsapp number", None),
            ("email consent date", None),
        ] {
            assert_eq!(consent_header(header), channel, "{header}");
        }
        let file = write(
            b"Name,Mobile,WhatsApp consent,Email\nAda,+14155550132,yes,\nBob,+14155550133,Opted-Out,\nCy,+14155550134,,\nDee,+14155550135,maybe,\n",
        );
        let layout = read_layout(file.path(), None, &[]).expect("layout");
        assert_eq!(layout.targets[2], Target::Consent("whatsapp".into()));
        let (sender, mut receiver) = mpsc::channel(16);
        read_batches(file.path(), &layout, "US", "job-7", &sender).expect("read");
        drop(sender);
        let batch = receiver.try_recv().expect("a batch");
        let mut parsed = batch.into_iter().map(|parsed| match parsed {
            Parsed::Row(line, row) => Ok((line, row.consent, row.proof)),
            Parsed::Rejected(line, _, reason) => Err((line, reason)),
        });
        let whatsapp = |status: &str| vec![("whatsapp".to_string(), status.to_string())];
        assert_eq!(
            parsed.next(),
            Some(Ok((2, whatsapp("opted_in"), "import job-7 line 2".into())))
        );
        assert_eq!(
            parsed.next(),
            Some(Ok((3, whatsapp("opted_out"), "import job-7 line 3".into())))
        );
        assert_eq!(
            parsed.next(),
            Some(Ok((4, vec![], "import job-7 line 4".into())))
        );
        let Some(Err((5, reason))) = parsed.next() else {
            panic!("the row with `maybe` is rejected");
        };
        assert!(
            reason.contains("`maybe` is not a whatsapp consent value"),
            "{reason}"
        );

        let explicit = serde_json::json!({"Opt": "consent.fax"});
        let file = write(b"Name,Opt\nAda,yes\n");
        let error = read_layout(file.path(), explicit.as_object(), &[]).expect_err("fax");
        assert!(error.contains("`fax` is not a consent channel"), "{error}");
        let explicit = serde_json::json!({"Opt": "consent.sms"});
        let layout = read_layout(file.path(), explicit.as_object(), &[]).expect("sms");
        assert_eq!(layout.targets[1], Target::Consent("sms".into()));
        let file = write(b"Name,WhatsApp consent,whatsapp_opt_in\nAda,yes,no\n");
        let error = read_layout(file.path(), None, &[]).expect_err("two columns");
        assert!(
            error.contains("several columns map to `consent.whatsapp`"),
            "{error}"
        );
    }

    #[test]
    fn reads_bom_semicolons_tabs_and_quoted_newlines() {
        for (bytes, delimiter) in [
            (
                &b"\xEF\xBB\xBFName,Phone,Email\n\"Smith, Ann\",(415) 555-0132,ANN@Example.com\n"[..],
                b',',
            ),
            (
                &b"name;phone;email\n\"Smith, Ann\";+1 415 555 0132;ann@example.com\n"[..],
                b';',
            ),
            (
                &b"name\tphone\temail\r\n\"Smith, Ann\"\t415.555.0132\tann@example.com\r\n"[..],
                b'\t',
            ),
        ] {
            let file = write(bytes);
            let layout = read_layout(file.path(), None, &[]).expect("layout");
            assert_eq!(layout.delimiter, delimiter);
            assert_eq!(layout.targets, [Target::Name, Target::Phone, Target::Email]);
            let parsed = rows(file.path(), &layout);
            let (line, data) = &parsed[0];
            let data = data.as_ref().expect("valid row");
            assert_eq!(*line, 2);
            assert_eq!(data.name.as_deref(), Some("Smith, Ann"));
            assert_eq!(data.phone.as_deref(), Some("+14155550132"));
            assert_eq!(data.email.as_deref(), Some("ann@example.com"));
        }
        for newline in ["\n", "\r\n"] {
            let text =
                "name,phone\n\"Multi\nline\",+14155550132\n\nBad,12345\n".replace('\n', newline);
            let mut bytes = text.into_bytes();
            bytes.extend_from_slice(b"\xFF\xFE,+14155550133");
            let file = write(&bytes);
            let layout = read_layout(file.path(), None, &[]).expect("layout");
            let parsed = rows(file.path(), &layout);
            assert_eq!(parsed.len(), 3);
            assert_eq!(parsed[0].0, 2);
            assert_eq!(
                parsed[0]
                    .1
                    .as_ref()
                    .expect("ok")
                    .name
                    .as_deref()
                    .map(|name| name.replace('\r', "")),
                Some("Multi\nline".to_string())
            );
            assert_eq!(
                parsed[1].0, 5,
                "lines count embedded and blank lines ({newline:?})"
            );
            assert_eq!(parsed[2].0, 6);
            assert!(
                parsed[1]
                    .1
                    .as_ref()
                    .expect_err("bad phone")
                    .contains("12345")
            );
            assert!(
                parsed[2]
                    .1
                    .as_ref()
                    .expect_err("not utf-8")
                    .contains("UTF-8")
            );
        }
        let file =
            write(b"name,phone\n\"Multi\nline\",+14155550132\nBad,12345\n\xFF\xFE,+14155550133\n");
        let layout = read_layout(file.path(), None, &[]).expect("layout");
        let parsed = rows(file.path(), &layout);
        assert_eq!(parsed.len(), 3);
        assert_eq!(
            parsed[0].1.as_ref().expect("ok").name.as_deref(),
            Some("Multi\nline")
        );
        assert_eq!(parsed[1].0, 4, "line numbers count the embedded newline");
        assert!(
            parsed[1]
                .1
                .as_ref()
                .expect_err("bad phone")
                .contains("12345")
        );
        assert!(
            parsed[2]
                .1
                .as_ref()
                .expect_err("not utf-8")
                .contains("UTF-8")
        );
    }

    #[test]
    fn mappings_are_checked_against_the_header() {
        let file = write(b"Full Name,Mobile,City\nAda,+14155550132,Paris\n");
        let city = CustomField {
            key: "city".into(),
            label: "City".into(),
            kind: FieldKind::Text,
            options: vec![],
        };
        let layout = read_layout(file.path(), None, std::slice::from_ref(&city)).expect("auto");
        assert_eq!(
            layout.targets,
            [Target::Name, Target::Phone, Target::Field(city.clone())]
        );
        let explicit = json!({"Mobile": "ignore", "City": "fields.nope"});
        let error = read_layout(
            file.path(),
            explicit.as_object(),
            std::slice::from_ref(&city),
        )
        .expect_err("bad");
        assert!(error.contains("nope"), "{error}");
        let explicit = json!({"Phone": "phone"});
        let error = read_layout(file.path(), explicit.as_object(), &[]).expect_err("bad");
        assert!(
            error.contains("`Phone`") && error.contains("Mobile"),
            "{error}"
        );
        let file = write(b"a,b\n1,2\n");
        assert!(
            read_layout(file.path(), None, &[])
                .expect_err("no columns")
                .contains("no column")
        );
    }
}
