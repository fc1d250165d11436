//! The `csv-import` scenario.
//!
//! Generates (untimed) a CSV of `--rows` contacts with the header `name,phone,email,tags`:
//! US numbers from NYC, SF and LA area codes in a rotation of five formats, emails
//! `user<i>@example.com`, names with non-ASCII letters and quoted commas, one tag per row;
//! 5% of the rows repeat an earlier contact (its phone in another format, same email) and
//! 1% have an invalid phone. Every row is normalized with PostDog's own
//! `normalize_phone` / `normalize_email` to count exactly how many contacts the import
//! must create, skip (duplicates) and reject (invalid).
//!
//! Timed: the real `postdog` binary (a child process, SQLite in a temporary directory)
//! receives the file streamed from disk as the body of
//! `POST /v1/contacts/imports?duplicates=skip`, from the start of that request until
//! the job, polled every 100 ms, reports `completed`. Printed: rows/s, the job's counters
//! against the expectation (a WARNING line if they differ) and the server's peak RSS.
//!
//! Baseline, timed separately in the same run: the contacts the import must create,
//! already parsed, normalized and deduplicated (untimed), inserted with plain sqlx into a
//! fresh SQLite database with PostDog's schema and settings (WAL, `synchronous=NORMAL`,
//! 32 MiB page cache) the way the
//! import writes them: 1,000 rows per transaction, one `INSERT … SELECT` per table over
//! a bound JSON array of the rows.
//! The last line is `ratio: X`, import time ÷ baseline time.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use postdog_host::contacts::{normalize_email, normalize_phone};
use serde_json::Value;
use sqlx::ConnectOptions;
use tokio::io::AsyncReadExt;

use crate::server_process::{self, ServerProcess, bench_tenant};

/// Options of `csv-import`.
#[derive(clap::Args)]
pub struct Options {
    /// Rows in the generated file.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
}

/// NYC, SF and LA area codes.
const AREAS: [u32; 8] = [212, 646, 718, 415, 310, 213, 917, 347];
/// Phones that must be rejected.
const INVALID: [&str; 3] = ["12345", "+1 000 000 0000", "555-CALL-NOW"];
const TAGS: [&str; 3] = ["lead", "customer", "vip"];

/// Exchanges 201–998 without the N11 codes and 555.
fn exchanges() -> Vec<u32> {
    (201..=998)
        .filter(|exchange| exchange % 100 != 11 && *exchange != 555)
        .collect()
}

/// The ten digits of the `n`th generated number (distinct for distinct `n`).
fn digits(n: usize, exchanges: &[u32]) -> String {
    let area = AREAS[n % AREAS.len()];
    let rest = n / AREAS.len();
    let exchange = exchanges[(rest / 10_000) % exchanges.len()];
    format!("{area}{exchange}{:04}", rest % 10_000)
}

/// `ten` digits written in format `style` (0–4).
fn formatted(ten: &str, style: usize) -> String {
    let (a, e, l) = (&ten[0..3], &ten[3..6], &ten[6..10]);
    match style % 5 {
        0 => format!("+1 {a}-{e}-{l}"),
        1 => format!("({a}) {e}-{l}"),
        2 => format!("{a}.{e}.{l}"),
        3 => format!("+1{a}{e}{l}"),
        _ => format!("1 {a} {e} {l}"),
    }
}

fn name(row: usize) -> String {
    match row % 6 {
        0 => format!("José {row}"),
        1 => "Smith, Ann".to_string(),
        2 => format!("Zoë {row}"),
        3 => format!("Li Wei {row}"),
        4 => format!("Müller, Jörg {row}"),
        _ => format!("Contact {row}"),
    }
}

/// A CSV field, quoted when it needs to be.
fn field(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\"")).into()
    } else {
        value.into()
    }
}

/// What the generator meant a row to be.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Original,
    Duplicate,
    Invalid,
}

/// A raw row as written to the file.
struct RawRow {
    kind: Kind,
    name: String,
    phone: String,
    email: String,
    tag: &'static str,
}

/// A contact the import must create, normalized as PostDog stores it.
struct Contact {
    name: String,
    phone: String,
    email: String,
    tag: &'static str,
}

/// What the import must report.
#[derive(Default)]
struct Expectation {
    created: u64,
    skipped: u64,
    failed: u64,
    /// Rows meant to be valid and new that normalization rejected or found duplicate.
    surprises: u64,
}

fn raw_rows(rows: usize) -> Vec<RawRow> {
    let exchanges = exchanges();
    // (number index, row) of the original contacts so far.
    let mut originals: Vec<(usize, usize)> = Vec::with_capacity(rows);
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        let raw = if row % 100 == 50 {
            RawRow {
                kind: Kind::Invalid,
                name: name(row),
                phone: INVALID[row % INVALID.len()].to_string(),
                email: format!("user{row}@example.com"),
                tag: TAGS[row % TAGS.len()],
            }
        } else if row % 20 == 19 && !originals.is_empty() {
            let (n, earlier) = originals[row.wrapping_mul(2_654_435_761) % originals.len()];
            RawRow {
                kind: Kind::Duplicate,
                name: name(earlier),
                // Any of the four other formats.
                phone: formatted(&digits(n, &exchanges), earlier % 5 + 1 + row % 4),
                email: format!("user{earlier}@example.com"),
                tag: TAGS[earlier % TAGS.len()],
            }
        } else {
            let n = originals.len();
            originals.push((n, row));
            RawRow {
                kind: Kind::Original,
                name: name(row),
                phone: formatted(&digits(n, &exchanges), row % 5),
                email: format!("user{row}@example.com"),
                tag: TAGS[row % TAGS.len()],
            }
        };
        out.push(raw);
    }
    out
}

/// Normalized phones and emails of `rows` (`None` where invalid), on every core.
fn normalize(rows: &[RawRow]) -> Vec<Option<(String, String)>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .map(|rows| {
                scope.spawn(move || {
                    rows.iter()
                        .map(|row| {
                            let phone = normalize_phone(&row.phone, "US").ok()?;
                            let email = normalize_email(&row.email).ok()?;
                            Some((phone, email))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().unwrap_or_default())
            .collect()
    })
}

/// Writes the file; the contacts the import must create and the expected counters.
fn generate(path: &Path, rows: usize) -> anyhow::Result<(Vec<Contact>, Expectation)> {
    let raw = raw_rows(rows);
    let normalized = normalize(&raw);
    if normalized.len() != raw.len() {
        bail!("normalizing the generated rows failed");
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(file, "name,phone,email,tags")?;
    let mut expectation = Expectation::default();
    let mut contacts = Vec::with_capacity(rows);
    let (mut phones, mut emails) = (HashSet::new(), HashSet::new());
    for (row, normalized) in raw.into_iter().zip(normalized) {
        writeln!(
            file,
            "{},{},{},{}",
            field(&row.name),
            field(&row.phone),
            field(&row.email),
            row.tag
        )?;
        match normalized {
            None => {
                expectation.failed += 1;
                expectation.surprises += u64::from(row.kind != Kind::Invalid);
            }
            Some((phone, email)) => {
                if phones.contains(&phone) || emails.contains(&email) {
                    expectation.skipped += 1;
                    expectation.surprises += u64::from(row.kind != Kind::Duplicate);
                } else {
                    expectation.created += 1;
                    expectation.surprises += u64::from(row.kind != Kind::Original);
                    phones.insert(phone.clone());
                    emails.insert(email.clone());
                    contacts.push(Contact {
                        name: row.name,
                        phone,
                        email,
                        tag: row.tag,
                    });
                }
            }
        }
    }
    file.flush()?;
    Ok((contacts, expectation))
}

/// The file as a stream of 256 KiB chunks.
async fn file_body(path: &Path) -> anyhow::Result<reqwest::Body> {
    let file = tokio::fs::File::open(path).await?;
    let chunks = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = Vec::with_capacity(256 * 1024);
        match (&mut file).take(256 * 1024).read_to_end(&mut buffer).await {
            Ok(0) => None,
            Ok(_) => Some((Ok::<_, std::io::Error>(buffer), Some(file))),
            Err(error) => Some((Err(error), None)),
        }
    });
    Ok(reqwest::Body::wrap_stream(chunks.boxed()))
}

/// Imports the file; the time from the start of the upload to completion, and the job.
async fn import(base_url: &str, key: &str, path: &Path) -> anyhow::Result<(Duration, Value)> {
    let client = reqwest::Client::new();
    let body = file_body(path).await?;
    let start = Instant::now();
    let response = client
        .post(format!("{base_url}/v1/contacts/imports?duplicates=skip"))
        .bearer_auth(key)
        .header(reqwest::header::CONTENT_TYPE, "text/csv")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::METHOD_NOT_ALLOWED
    {
        bail!(
            "import API not available: POST /v1/contacts/imports answered {status} {}",
            response.text().await.unwrap_or_default()
        );
    }
    if status != reqwest::StatusCode::ACCEPTED {
        bail!(
            "the import was refused: {status} {}",
            response.text().await?
        );
    }
    let job: Value = response.json().await?;
    let id = job["id"].as_str().context("the job has no id")?.to_string();
    let mut last_progress = (Instant::now(), Value::Null);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let job: Value = client
            .get(format!("{base_url}/v1/contacts/imports/{id}"))
            .bearer_auth(key)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        match job["status"].as_str() {
            Some("completed") => return Ok((start.elapsed(), job)),
            Some("failed") => bail!("the import failed: {job}"),
            _ => {}
        }
        if job["rows_read"] != last_progress.1 {
            last_progress = (Instant::now(), job["rows_read"].clone());
        } else if last_progress.0.elapsed() > Duration::from_secs(120) {
            bail!("the import made no progress for 120 s: {job}");
        }
    }
}

/// Inserts `contacts` with plain sqlx into a fresh database with PostDog's schema.
async fn baseline(dir: &Path, contacts: &[Contact]) -> anyhow::Result<Duration> {
    let storage = postdog_host::storage::Storage::open_data_dir(dir).await?;
    storage.migrate().await?;
    let tenant = storage.create_tenant("bench", "business").await?;
    storage.close().await;
    let tenant = tenant.id.as_str().to_string();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("postdog.db"))
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .pragma("cache_size", "-32768")
        .disable_statement_logging();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let start = Instant::now();
    // The same writes as the import: 1,000 rows per transaction, each table's rows in
    // one INSERT … SELECT over a bound JSON array (the fastest way we found to insert
    // many rows through sqlx), so the ratio measures everything around the writes.
    for chunk in contacts.chunks(1_000) {
        let now = postdog_host::storage::now_ms();
        let ids: Vec<String> = chunk
            .iter()
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect();
        let rows: Vec<serde_json::Value> = chunk
            .iter()
            .zip(&ids)
            .map(|(contact, id)| {
                serde_json::json!([id, contact.name, contact.phone, contact.email, "{}"])
            })
            .collect();
        let tags: Vec<[&str; 2]> = chunk
            .iter()
            .zip(&ids)
            .map(|(contact, id)| [id.as_str(), contact.tag])
            .collect();
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO contacts (id, tenant_id, name, phone, email, fields, created_at, updated_at) \
             SELECT value ->> 0, $1, value ->> 1, value ->> 2, value ->> 3, value ->> 4, $2, $2 \
             FROM json_each($3)",
        )
        .bind(&tenant)
        .bind(now)
        .bind(serde_json::Value::Array(rows).to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO contact_tags (tenant_id, contact_id, tag) \
             SELECT $1, value ->> 0, value ->> 1 FROM json_each($2)",
        )
        .bind(&tenant)
        .bind(serde_json::json!(tags).to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    let elapsed = start.elapsed();
    pool.close().await;
    Ok(elapsed)
}

/// Runs the scenario.
pub fn run(options: Options) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let file = work.path().join("contacts.csv");
    let started = Instant::now();
    let (contacts, expected) = generate(&file, options.rows)?;
    println!(
        "generated {} rows ({:.1} MB) in {:.1} s; expect created {}, skipped {} (duplicates), failed {} (invalid phones)",
        options.rows,
        std::fs::metadata(&file)?.len() as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        expected.created,
        expected.skipped,
        expected.failed
    );
    if expected.surprises > 0 {
        println!(
            "WARNING: {} generated rows normalized differently than intended",
            expected.surprises
        );
    }

    let binary = server_process::build()?;
    let server = ServerProcess::start(&binary, &work.path().join("server"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (took, job) = runtime.block_on(async {
        let key = bench_tenant(&reqwest::Client::new(), &server.base_url).await?;
        import(&server.base_url, &key, &file).await
    })?;
    let rss = server.peak_rss_mb()?;
    drop(server);
    let counter = |name: &str| job[name].as_u64().unwrap_or(u64::MAX);
    let got = [
        counter("rows_read"),
        counter("created"),
        counter("updated"),
        counter("skipped"),
        counter("failed"),
    ];
    let want = [
        options.rows as u64,
        expected.created,
        0,
        expected.skipped,
        expected.failed,
    ];
    println!(
        "postdog import: {} rows in {:.2} s, {:.0} rows/s",
        options.rows,
        took.as_secs_f64(),
        options.rows as f64 / took.as_secs_f64()
    );
    println!(
        "job: rows_read {}, created {}, updated {}, skipped {}, failed {} (expected {}, {}, {}, {}, {})",
        got[0], got[1], got[2], got[3], got[4], want[0], want[1], want[2], want[3], want[4]
    );
    if got != want {
        println!("WARNING: the job's counters differ from the expectation");
    }
    println!("postdog server peak RSS (VmHWM): {rss:.1} MB");

    let base = runtime.block_on(baseline(&work.path().join("baseline"), &contacts))?;
    println!(
        "baseline (plain sqlx, {} contacts + tags, 1000 rows per transaction): {:.2} s, {:.0} rows/s",
        contacts.len(),
        base.as_secs_f64(),
        contacts.len() as f64 / base.as_secs_f64()
    );
    println!("targets: import < 20 s, peak RSS < 300 MB, ratio <= 3");
    println!("ratio: {:.3}", took.as_secs_f64() / base.as_secs_f64());
    Ok(())
}
