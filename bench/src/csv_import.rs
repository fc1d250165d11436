//! The `csv-import` scenario.
//!
//! Generates a CSV of `--rows` contacts (default 1,000,000): US phone numbers in five
//! formats, 5% rows repeating an earlier contact (its phone in another format, same
//! email), 1% invalid phone numbers, names with commas and non-ASCII letters. It is
//! streamed to `POST /v1/contacts/imports` of a real PostDog server (SQLite, in this
//! process, `duplicates=skip`) and timed until the job reports `completed`.
//!
//! Baseline, in the same run: the rows the import must create, already parsed and
//! normalized (untimed), inserted with plain sqlx — one prepared `INSERT` per contact and
//! per tag, 1,000 rows per transaction — into a fresh database with PostDog's schema.
//! The last line is `ratio: X`, import time ÷ baseline time.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::Value;
use sqlx::ConnectOptions;
use tokio::io::AsyncReadExt;

use crate::server::{Server, bench_tenant, peak_rss_mib};

/// Options of `csv-import`.
#[derive(clap::Args)]
pub struct Options {
    /// Rows in the generated file.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
}

const AREAS: [u32; 8] = [212, 646, 718, 415, 310, 213, 917, 347];

/// A plausible US number for `n` (distinct for distinct `n`), as ten digits.
fn digits(n: usize) -> String {
    let area = AREAS[n % AREAS.len()];
    let rest = n / AREAS.len();
    let exchanges: Vec<u32> = (201..=998)
        .filter(|exchange| exchange % 100 != 11 && *exchange != 555)
        .collect();
    let exchange = exchanges[(rest / 10_000) % exchanges.len()];
    format!("{area}{exchange}{:04}", rest % 10_000)
}

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

/// A contact the import must create, normalized as PostDog stores it.
struct Expected {
    name: String,
    phone: String,
    email: String,
    tag: String,
}

/// Writes the file; returns the contacts it must create and the duplicate and invalid
/// row counts.
fn generate(path: &std::path::Path, rows: usize) -> anyhow::Result<(Vec<Expected>, usize, usize)> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "name,phone,email,tags")?;
    let mut created: Vec<Expected> = Vec::with_capacity(rows);
    let (mut duplicates, mut invalid) = (0, 0);
    let mut candidate = 0_usize;
    for row in 0..rows {
        if row % 20 == 19 && !created.is_empty() {
            // A duplicate of an earlier contact: its phone in another format, same email.
            let earlier = &created[(row * 7919) % created.len()];
            let ten = &earlier.phone[2..];
            writeln!(
                out,
                "\"Again, {}\",{},{},repeat",
                row,
                formatted(ten, row + 1),
                earlier.email
            )?;
            duplicates += 1;
            continue;
        }
        if row % 100 == 50 {
            let bad = ["12345", "+1 000 000 0000", "555-CALL-NOW"][row % 3];
            writeln!(out, "Bad {row},{bad},bad{row}@example.com,invalid")?;
            invalid += 1;
            continue;
        }
        // The next number PostDog considers valid.
        let (ten, phone) = loop {
            let ten = digits(candidate);
            candidate += 1;
            if let Ok(phone) = postdog_host::contacts::normalize_phone(&ten, "US") {
                break (ten, phone);
            }
        };
        let name = match row % 4 {
            0 => format!("José {row}"),
            1 => format!("Smith, Ann {row}"),
            2 => format!("Zoë {row}"),
            _ => format!("Lee {row}"),
        };
        let tag = ["lead", "customer", "vip"][row % 3].to_string();
        let email = format!("user{row}@example.com");
        writeln!(
            out,
            "\"{name}\",{},{},{tag}",
            formatted(&ten, row),
            email.to_uppercase()
        )?;
        created.push(Expected {
            name,
            phone,
            email,
            tag,
        });
    }
    out.flush()?;
    Ok((created, duplicates, invalid))
}

async fn import(
    base_url: &str,
    key: &str,
    path: &std::path::Path,
) -> anyhow::Result<(Duration, Value)> {
    let client = reqwest::Client::new();
    let file = tokio::fs::File::open(path).await?;
    let chunks = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = vec![0_u8; 256 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok::<_, std::io::Error>(buffer), Some(file)))
            }
            Err(error) => Some((Err(error), None)),
        }
    })
    .boxed();
    let start = Instant::now();
    let response = client
        .post(format!("{base_url}/v1/contacts/imports?duplicates=skip"))
        .bearer_auth(key)
        .header("content-type", "text/csv")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        bail!("import API not available");
    }
    if response.status() != reqwest::StatusCode::ACCEPTED {
        bail!(
            "the import was refused: {} {}",
            response.status(),
            response.text().await?
        );
    }
    let job: Value = response.json().await?;
    let id = job["id"].as_str().context("job id")?.to_string();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let job: Value = client
            .get(format!("{base_url}/v1/contacts/imports/{id}"))
            .bearer_auth(key)
            .send()
            .await?
            .json()
            .await?;
        match job["status"].as_str() {
            Some("completed") => return Ok((start.elapsed(), job)),
            Some("failed") => bail!("the import failed: {job}"),
            _ => {}
        }
    }
}

async fn baseline(dir: &std::path::Path, rows: &[Expected]) -> anyhow::Result<Duration> {
    let storage = postdog_host::storage::Storage::open_data_dir(dir).await?;
    storage.migrate().await?;
    let tenant = storage.create_tenant("baseline", "business").await?;
    storage.close().await;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("postdog.db"))
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .disable_statement_logging();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let tenant = tenant.id.as_str().to_string();
    let start = Instant::now();
    for chunk in rows.chunks(1_000) {
        let mut tx = pool.begin().await?;
        for row in chunk {
            let id = uuid::Uuid::now_v7().to_string();
            let now = postdog_host::storage::now_ms();
            sqlx::query(
                "INSERT INTO contacts (id, tenant_id, name, phone, email, fields, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, '{}', ?, ?)",
            )
            .bind(&id)
            .bind(&tenant)
            .bind(&row.name)
            .bind(&row.phone)
            .bind(&row.email)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO contact_tags (tenant_id, contact_id, tag) VALUES (?, ?, ?)")
                .bind(&tenant)
                .bind(&id)
                .bind(&row.tag)
                .execute(&mut *tx)
                .await?;
        }
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
    let (expected, duplicates, invalid) = generate(&file, options.rows)?;
    println!(
        "generated {} rows ({:.1} MB) in {:.1} s: expect created {}, skipped {} (duplicates), failed {} (invalid phones)",
        options.rows,
        std::fs::metadata(&file)?.len() as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        expected.len(),
        duplicates,
        invalid
    );

    let server = Server::start(&work.path().join("server"), 2)?;
    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (took, job) = client_runtime.block_on(async {
        let key = bench_tenant(&reqwest::Client::new(), &server.base_url).await?;
        import(&server.base_url, &key, &file).await
    })?;
    let rss = peak_rss_mib();
    drop(server);
    let counts = ["rows_read", "created", "updated", "skipped", "failed"]
        .map(|key| job[key].as_u64().unwrap_or(0));
    println!(
        "postdog import: {:.2} s, {:.0} rows/s; job: read {}, created {}, updated {}, skipped {}, failed {}",
        took.as_secs_f64(),
        options.rows as f64 / took.as_secs_f64(),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4]
    );
    if counts
        != [
            options.rows as u64,
            expected.len() as u64,
            0,
            duplicates as u64,
            invalid as u64,
        ]
    {
        println!("WARNING: the job's counts differ from the expectation");
    }
    println!("peak RSS of the process hosting the server (and this client): {rss:.0} MiB");

    let base = client_runtime.block_on(baseline(&work.path().join("baseline"), &expected))?;
    println!(
        "baseline (plain sqlx inserts of the {} normalized rows): {:.2} s, {:.0} rows/s",
        expected.len(),
        base.as_secs_f64(),
        expected.len() as f64 / base.as_secs_f64()
    );
    println!("targets: import < 20 s, peak RSS < 300 MB, ratio <= 3");
    println!("ratio: {:.3}", took.as_secs_f64() / base.as_secs_f64());
    Ok(())
}
