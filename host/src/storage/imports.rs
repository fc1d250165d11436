//! Contact imports: the job rows that report progress, and the batched write that applies
//! a chunk of parsed rows. A batch costs one lookup query and one transaction whatever
//! its size: existing contacts matching the batch's phones and emails are loaded at
//! once, duplicates (in the file and against the database) are resolved in memory with
//! the chosen strategy, and new contacts are inserted with multi-row statements. If the
//! transaction fails (a concurrent writer took a phone or email meanwhile), the batch is
//! replayed row by row so one row never sinks the others.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use sqlx::Row;

use super::contacts::{Announce, CONTACT_COLUMNS};
use super::filter_sql::{Bind, Sql};
use super::{Backend, Contact, ContactData, QueryContext, StorageError, TenantDb, now_ms};

/// What to do with a row whose phone or email an existing contact already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DuplicateStrategy {
    /// Leave the existing contact alone.
    Skip,
    /// Overwrite the existing contact's values with the row's non-empty ones; add tags.
    Update,
    /// Fill only the existing contact's empty values; add tags.
    Merge,
}

impl DuplicateStrategy {
    /// The strategy's name.
    pub fn as_str(self) -> &'static str {
        match self {
            DuplicateStrategy::Skip => "skip",
            DuplicateStrategy::Update => "update",
            DuplicateStrategy::Merge => "merge",
        }
    }

    /// Parses a strategy name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Skip, Self::Update, Self::Merge]
            .into_iter()
            .find(|strategy| strategy.as_str() == name)
    }
}

/// An import job as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportJob {
    /// The job's id.
    pub id: String,
    /// `queued`, `running`, `completed` or `failed`.
    pub status: String,
    /// The duplicate strategy.
    pub duplicates: String,
    /// Column → target mapping used (JSON object).
    pub mapping: serde_json::Value,
    /// Data rows read so far.
    pub rows_read: u64,
    /// Contacts created.
    pub created: u64,
    /// Existing contacts changed.
    pub updated: u64,
    /// Rows that matched an existing contact and changed nothing.
    pub skipped: u64,
    /// Rows rejected (listed in the error CSV).
    pub failed: u64,
    /// Opt-ins in the file not recorded because the contact had opted out: an import
    /// never re-subscribes.
    pub opt_ins_refused: u64,
    /// Why the job failed as a whole, if it did.
    pub error: Option<String>,
    /// When it was submitted, Unix milliseconds.
    pub created_at: i64,
    /// When it ended, Unix milliseconds.
    pub finished_at: Option<i64>,
}

/// Progress counters of a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    /// Data rows read.
    pub rows_read: u64,
    /// Contacts created.
    pub created: u64,
    /// Contacts changed.
    pub updated: u64,
    /// Rows that changed nothing.
    pub skipped: u64,
    /// Rows rejected.
    pub failed: u64,
    /// Opt-ins not recorded over an opt-out.
    pub opt_ins_refused: u64,
}

/// One parsed row of an import: its values (already normalized and checked), which of
/// them the file gave, and its position for error reports.
#[derive(Debug, Clone)]
pub struct ImportRow {
    /// The values (fields holds only the file's custom field values; `None` and
    /// missing keys are what the row left empty).
    pub data: ContactData,
    /// Consent the row states, as (channel, `opted_in` | `opted_out`); see
    /// [`consent_to_record`] for what of it is recorded.
    pub consent: Vec<(String, String)>,
    /// The proof recorded with the row's consent (which import, which line).
    pub proof: String,
}

/// What of a row's stated consent joins the history of a contact whose current
/// consent is `current` (updated here): only changes; an opt-out always; an opt-in for a
/// new contact or, with `opt_in_existing`, an existing one — but never over an opt-out
/// already recorded: a list import must not re-subscribe someone who unsubscribed (the
/// contact opts in again through the API or a `START` keyword, with its own proof).
/// `refused` counts the opt-ins an opt-out stopped. The entries come with the row's
/// proof.
fn consent_to_record(
    current: &mut BTreeMap<String, String>,
    row: &ImportRow,
    opt_in_existing: bool,
    refused: &mut u64,
) -> Vec<(String, String, String)> {
    let mut record = Vec::new();
    for (channel, status) in &row.consent {
        let now = current.get(channel).map(String::as_str);
        let wanted = match (status.as_str(), now) {
            (_, Some(now)) if now == status => false,
            ("opted_out", _) => true,
            (_, Some("opted_out")) => {
                *refused += 1;
                false
            }
            _ => opt_in_existing,
        };
        if wanted {
            current.insert(channel.clone(), status.clone());
            record.push((channel.clone(), status.clone(), row.proof.clone()));
        }
    }
    record
}

/// What happened to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    /// A new contact.
    Created,
    /// An existing contact changed.
    Updated,
    /// Matched an existing contact; nothing to change.
    Skipped,
    /// Rejected, with the reason.
    Failed(String),
}

/// A contact being written by a batch: an existing one (with its id) or a new one.
struct Pending {
    id: String,
    contact: ContactData,
    existing: bool,
    /// The contact's own values or tags changed (an existing one is rewritten).
    data_changed: bool,
    /// An existing contact's tags and fields as loaded (for the change report).
    original: Option<(Vec<String>, serde_json::Value)>,
    /// Current consent status per channel, with this batch's entries applied.
    consent: BTreeMap<String, String>,
    /// Consent entries to append: (channel, status, proof).
    new_consent: Vec<(String, String, String)>,
}

impl Pending {
    /// Anything to write: the contact or its consent.
    fn changed(&self) -> bool {
        self.data_changed || !self.new_consent.is_empty()
    }
}

fn job_from_row(row: &sqlx::any::AnyRow) -> Result<ImportJob, sqlx::Error> {
    let count = |name: &str| -> Result<u64, sqlx::Error> {
        Ok(u64::try_from(row.try_get::<i64, _>(name)?).unwrap_or(0))
    };
    let mapping: String = row.try_get("mapping")?;
    Ok(ImportJob {
        id: row.try_get("id")?,
        status: row.try_get("status")?,
        duplicates: row.try_get("duplicates")?,
        mapping: serde_json::from_str(&mapping).unwrap_or(serde_json::Value::Null),
        rows_read: count("rows_read")?,
        created: count("created")?,
        updated: count("updated")?,
        skipped: count("skipped")?,
        failed: count("failed")?,
        opt_ins_refused: count("opt_ins_refused")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

const JOB_COLUMNS: &str = "id, status, duplicates, mapping, rows_read, created, updated, skipped, failed, opt_ins_refused, error, created_at, finished_at";

impl TenantDb {
    /// Records a new queued import job.
    pub async fn create_import(
        &self,
        id: &str,
        duplicates: DuplicateStrategy,
        mapping: &serde_json::Value,
    ) -> Result<ImportJob, StorageError> {
        sqlx::query(
            "INSERT INTO contact_imports (id, tenant_id, status, duplicates, mapping, created_at) \
             VALUES ($1, $2, 'queued', $3, $4, $5)",
        )
        .bind(id)
        .bind(self.tenant_id().as_str())
        .bind(duplicates.as_str())
        .bind(mapping.to_string())
        .bind(now_ms())
        .execute(self.storage().pool())
        .await
        .context("creating an import")?;
        self.get_import(id)
            .await?
            .ok_or_else(|| StorageError::Query {
                context: "reading a created import",
                source: sqlx::Error::RowNotFound,
            })
    }

    /// One of this tenant's imports.
    pub async fn get_import(&self, id: &str) -> Result<Option<ImportJob>, StorageError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM contact_imports WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(self.tenant_id().as_str())
        .bind(id)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading an import")?;
        row.as_ref()
            .map(job_from_row)
            .transpose()
            .context("decoding an import")
    }

    /// This tenant's imports, newest first.
    pub async fn list_imports(&self, limit: u32) -> Result<Vec<ImportJob>, StorageError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM contact_imports WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2"
        )))
        .bind(self.tenant_id().as_str())
        .bind(i64::from(limit))
        .fetch_all(self.storage().pool())
        .await
        .context("listing imports")?;
        rows.iter()
            .map(job_from_row)
            .collect::<Result<_, _>>()
            .context("decoding imports")
    }

    /// Saves a job's status and counters; `error` and the finish time when it ends.
    pub async fn update_import(
        &self,
        id: &str,
        status: &str,
        counts: ImportCounts,
        error: Option<&str>,
    ) -> Result<(), StorageError> {
        let finished = matches!(status, "completed" | "failed").then(now_ms);
        let number = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        sqlx::query(
            "UPDATE contact_imports SET status = $1, rows_read = $2, created = $3, updated = $4, \
             skipped = $5, failed = $6, error = $7, finished_at = $8, opt_ins_refused = $11 \
             WHERE tenant_id = $9 AND id = $10",
        )
        .bind(status)
        .bind(number(counts.rows_read))
        .bind(number(counts.created))
        .bind(number(counts.updated))
        .bind(number(counts.skipped))
        .bind(number(counts.failed))
        .bind(error)
        .bind(finished)
        .bind(self.tenant_id().as_str())
        .bind(id)
        .bind(number(counts.opt_ins_refused))
        .execute(self.storage().pool())
        .await
        .context("updating an import")?;
        Ok(())
    }

    /// Applies a batch of rows with `strategy`; one outcome per row, in order, and the
    /// opt-ins refused over an opt-out. At most `room` contacts are created (the plan's
    /// remaining allowance; `None` is unlimited).
    /// The jobs `announce` gives for each created contact are written with it.
    pub async fn import_batch(
        &self,
        rows: &[ImportRow],
        strategy: DuplicateStrategy,
        room: Option<u64>,
        announce: Announce<'_>,
    ) -> Result<(Vec<RowOutcome>, u64), StorageError> {
        let (outcomes, pending, refused) = self.plan_batch(rows, strategy, room).await?;
        match self.write_batch(&pending, announce).await {
            Ok(()) => {
                self.report_import_changes(&pending);
                Ok((outcomes, refused))
            }
            Err(error) if rows.len() > 1 => {
                tracing::debug!(%error, "import batch conflicted; replaying it row by row");
                let mut outcomes = Vec::with_capacity(rows.len());
                let mut room = room;
                let mut refused = 0;
                for row in rows {
                    let (mut single, pending, row_refused) = self
                        .plan_batch(std::slice::from_ref(row), strategy, room)
                        .await?;
                    let outcome = match self.write_batch(&pending, announce).await {
                        Ok(()) => {
                            self.report_import_changes(&pending);
                            refused += row_refused;
                            single.pop().unwrap_or(RowOutcome::Skipped)
                        }
                        Err(error) => RowOutcome::Failed(format!(
                            "could not be written: {}",
                            write_reason(&error)
                        )),
                    };
                    if outcome == RowOutcome::Created {
                        room = room.map(|room| room.saturating_sub(1));
                    }
                    outcomes.push(outcome);
                }
                Ok((outcomes, refused))
            }
            Err(error) => Ok((
                vec![RowOutcome::Failed(format!(
                    "could not be written: {}",
                    write_reason(&error)
                ))],
                0,
            )),
        }
    }

    /// Resolves each row against existing contacts and earlier rows, in memory.
    async fn plan_batch(
        &self,
        rows: &[ImportRow],
        strategy: DuplicateStrategy,
        mut room: Option<u64>,
    ) -> Result<(Vec<RowOutcome>, Vec<Pending>, u64), StorageError> {
        let existing = self.contacts_matching(rows).await?;
        let mut refused = 0;
        let mut pending: Vec<Pending> = existing
            .into_iter()
            .map(|contact| Pending {
                id: contact.id.clone(),
                original: Some((contact.tags.clone(), contact.fields.clone())),
                consent: contact
                    .consent
                    .iter()
                    .map(|(channel, entry)| (channel.clone(), entry.status.clone()))
                    .collect(),
                new_consent: Vec::new(),
                contact: ContactData {
                    name: contact.name,
                    phone: contact.phone,
                    email: contact.email,
                    tags: contact.tags,
                    fields: contact.fields,
                },
                existing: true,
                data_changed: false,
            })
            .collect();
        let mut by_phone: HashMap<String, usize> = HashMap::new();
        let mut by_email: HashMap<String, usize> = HashMap::new();
        for (index, entry) in pending.iter().enumerate() {
            if let Some(phone) = &entry.contact.phone {
                by_phone.insert(phone.clone(), index);
            }
            if let Some(email) = &entry.contact.email {
                by_email.insert(email.clone(), index);
            }
        }
        let mut outcomes = Vec::with_capacity(rows.len());
        for row in rows {
            let data = &row.data;
            let phone_match = data
                .phone
                .as_ref()
                .and_then(|phone| by_phone.get(phone))
                .copied();
            let email_match = data
                .email
                .as_ref()
                .and_then(|email| by_email.get(email))
                .copied();
            let target = match (phone_match, email_match) {
                (Some(a), Some(b)) if a != b => {
                    outcomes.push(RowOutcome::Failed(format!(
                        "its phone belongs to contact {} and its email to contact {}; merge those contacts first",
                        pending[a].id, pending[b].id
                    )));
                    continue;
                }
                (Some(index), _) | (None, Some(index)) => Some(index),
                (None, None) => None,
            };
            let Some(index) = target else {
                if room == Some(0) {
                    outcomes.push(RowOutcome::Failed(
                        "the plan's contact limit is reached; upgrade the plan to import more"
                            .into(),
                    ));
                    continue;
                }
                room = room.map(|room| room - 1);
                let index = pending.len();
                let mut consent = BTreeMap::new();
                let new_consent = consent_to_record(&mut consent, row, true, &mut refused);
                pending.push(Pending {
                    original: None,
                    consent,
                    new_consent,
                    id: uuid::Uuid::now_v7().to_string(),
                    contact: ContactData {
                        tags: data
                            .tags
                            .iter()
                            .cloned()
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect(),
                        ..data.clone()
                    },
                    existing: false,
                    data_changed: true,
                });
                if let Some(phone) = &data.phone {
                    by_phone.insert(phone.clone(), index);
                }
                if let Some(email) = &data.email {
                    by_email.insert(email.clone(), index);
                }
                outcomes.push(RowOutcome::Created);
                continue;
            };
            // Stated opt-outs are recorded whatever the strategy; opt-ins unless `skip`.
            let consent = consent_to_record(
                &mut pending[index].consent,
                row,
                strategy != DuplicateStrategy::Skip,
                &mut refused,
            );
            // What a row that changes none of the contact's values did.
            let unchanged = if consent.is_empty() {
                RowOutcome::Skipped
            } else {
                RowOutcome::Updated
            };
            pending[index].new_consent.extend(consent);
            if strategy == DuplicateStrategy::Skip {
                outcomes.push(unchanged);
                continue;
            }
            let before = pending[index].contact.clone();
            let mut after = before.clone();
            let overwrite = strategy == DuplicateStrategy::Update;
            let take = |current: &mut Option<String>, new: &Option<String>| {
                if new.is_some() && (overwrite || current.is_none()) {
                    current.clone_from(new);
                }
            };
            take(&mut after.name, &data.name);
            take(&mut after.phone, &data.phone);
            take(&mut after.email, &data.email);
            let mut tags: BTreeSet<String> = after.tags.iter().cloned().collect();
            tags.extend(data.tags.iter().cloned());
            after.tags = tags.into_iter().collect();
            let mut fields = after.fields.as_object().cloned().unwrap_or_default();
            for (key, value) in data.fields.as_object().into_iter().flatten() {
                if overwrite || !fields.contains_key(key) {
                    fields.insert(key.clone(), value.clone());
                }
            }
            after.fields = serde_json::Value::Object(fields);
            // A changed phone or email must not collide with another contact.
            let collides = |value: &Option<String>, map: &HashMap<String, usize>| {
                value
                    .as_ref()
                    .and_then(|value| map.get(value))
                    .is_some_and(|&other| other != index)
            };
            if collides(&after.phone, &by_phone) || collides(&after.email, &by_email) {
                outcomes.push(RowOutcome::Failed(
                    "updating the matched contact would give it another contact's phone or email"
                        .into(),
                ));
                continue;
            }
            if after == before {
                outcomes.push(unchanged);
                continue;
            }
            for (old, new, map) in [
                (&before.phone, &after.phone, &mut by_phone),
                (&before.email, &after.email, &mut by_email),
            ] {
                if old != new {
                    if let Some(old) = old {
                        map.remove(old);
                    }
                    if let Some(new) = new {
                        map.insert(new.clone(), index);
                    }
                }
            }
            pending[index].contact = after;
            pending[index].data_changed = true;
            // Also when the contact was created by an earlier row of this file.
            outcomes.push(RowOutcome::Updated);
        }
        pending.retain(Pending::changed);
        Ok((outcomes, pending, refused))
    }

    /// Existing contacts sharing a phone or email with any row.
    async fn contacts_matching(&self, rows: &[ImportRow]) -> Result<Vec<Contact>, StorageError> {
        let phones: BTreeSet<&str> = rows
            .iter()
            .filter_map(|row| row.data.phone.as_deref())
            .collect();
        let emails: BTreeSet<&str> = rows
            .iter()
            .filter_map(|row| row.data.email.as_deref())
            .collect();
        if phones.is_empty() && emails.is_empty() {
            return Ok(Vec::new());
        }
        // One SELECT per unique index, joined by UNION: with `phone IN (…) OR email IN (…)`
        // SQLite scans every contact of the tenant for each batch (quadratic imports).
        // Each list is one bound JSON array: thousands of `$N` parameters cost sqlx's
        // SQLite driver a quadratic parameter-name lookup.
        let backend = self.storage().backend();
        let mut sql = Sql::new("");
        let tenant = sql.bind(Bind::Text(self.tenant_id().as_str().to_string()));
        for (position, (column, values)) in [("phone", &phones), ("email", &emails)]
            .into_iter()
            .filter(|(_, values)| !values.is_empty())
            .enumerate()
        {
            if position > 0 {
                sql.push(" UNION ");
            }
            let list = sql.bind(Bind::Text(serde_json::json!(values).to_string()));
            sql.push(&format!(
                "SELECT {CONTACT_COLUMNS} FROM contacts WHERE tenant_id = {tenant} AND {column} IN \
                 (SELECT value FROM {})",
                json_text_rows(backend, &list)
            ));
        }
        let found = sql
            .into_query()
            .fetch_all(self.storage().pool())
            .await
            .context("finding contacts an import matches")?;
        self.contact_rows(&found).await
    }

    /// Reports the committed changes of a batch (contact-event triggers): created
    /// contacts and their tags, and what changed on existing ones.
    fn report_import_changes(&self, pending: &[Pending]) {
        if !self.storage().contact_changes_watched() {
            return;
        }
        let tenant = self.tenant_id().as_str();
        for entry in pending.iter().filter(|entry| entry.changed()) {
            let changes = match &entry.original {
                Some((tags, fields)) => {
                    super::contacts::diff(tags, fields, &entry.contact.tags, &entry.contact.fields)
                }
                None => std::iter::once(super::ContactChange::Created)
                    .chain(
                        entry
                            .contact
                            .tags
                            .iter()
                            .cloned()
                            .map(super::ContactChange::TagAdded),
                    )
                    .collect(),
            };
            let consent = entry.new_consent.iter().map(|(channel, status, _)| {
                super::ContactChange::Consent {
                    channel: channel.clone(),
                    status: status.clone(),
                }
            });
            self.storage().report_contact_changes(
                tenant,
                &entry.id,
                changes.into_iter().chain(consent).collect::<Vec<_>>(),
            );
        }
    }

    /// Writes a batch's new and changed contacts in one transaction.
    async fn write_batch(
        &self,
        pending: &[Pending],
        announce: Announce<'_>,
    ) -> Result<(), sqlx::Error> {
        if pending.is_empty() {
            return Ok(());
        }
        let tenant = self.tenant_id().as_str();
        let now = now_ms();
        let mut tx = self.storage().begin_write().await?;
        let created: Vec<&Pending> = pending.iter().filter(|entry| !entry.existing).collect();
        // Changed contacts first: one may have given up a phone a new one takes.
        for entry in pending
            .iter()
            .filter(|entry| entry.existing && entry.data_changed)
        {
            let data = &entry.contact;
            sqlx::query(
                "UPDATE contacts SET name = $1, phone = $2, email = $3, fields = $4, updated_at = $5 \
                 WHERE tenant_id = $6 AND id = $7",
            )
            .bind(data.name.as_deref())
            .bind(data.phone.as_deref())
            .bind(data.email.as_deref())
            .bind(data.fields.to_string())
            .bind(now)
            .bind(tenant)
            .bind(&entry.id)
            .execute(&mut *tx)
            .await?;
            Self::write_tags(&mut tx, tenant, &entry.id, &data.tags).await?;
        }
        // All new contacts in one statement whose rows are one bound JSON array (see
        // `contacts_matching` on parameter counts).
        if !created.is_empty() {
            let backend = self.storage().backend();
            let rows: Vec<serde_json::Value> = created
                .iter()
                .map(|entry| {
                    let data = &entry.contact;
                    serde_json::json!([
                        entry.id,
                        data.name,
                        data.phone,
                        data.email,
                        data.fields.to_string()
                    ])
                })
                .collect();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO contacts (id, tenant_id, name, phone, email, fields, created_at, updated_at) \
                 SELECT value ->> 0, $1, value ->> 1, value ->> 2, value ->> 3, value ->> 4, $2, $2 FROM {}",
                json_array_rows(backend, "$3")
            )))
            .bind(tenant)
            .bind(now)
            .bind(serde_json::Value::Array(rows).to_string())
            .execute(&mut *tx)
            .await?;
            let tags: Vec<[&str; 2]> = created
                .iter()
                .flat_map(|entry| {
                    entry
                        .contact
                        .tags
                        .iter()
                        .map(|tag| [entry.id.as_str(), tag.as_str()])
                })
                .collect();
            if !tags.is_empty() {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO contact_tags (tenant_id, contact_id, tag) \
                     SELECT $1, value ->> 0, value ->> 1 FROM {}",
                    json_array_rows(backend, "$2")
                )))
                .bind(tenant)
                .bind(serde_json::json!(tags).to_string())
                .execute(&mut *tx)
                .await?;
            }
            for entry in &created {
                for job in announce(&entry.id, &entry.contact) {
                    super::jobs::insert_job(&mut *tx, &job).await?;
                }
            }
        }
        // Consent after the contacts it belongs to; ids are v7, so the history keeps the
        // file's order. An opt-in is checked again here, in the write transaction: an
        // opt-out recorded since the batch was planned (a STOP keyword) still wins.
        let consent: Vec<[String; 5]> = pending
            .iter()
            .flat_map(|entry| {
                entry.new_consent.iter().map(|(channel, status, proof)| {
                    [
                        uuid::Uuid::now_v7().to_string(),
                        entry.id.clone(),
                        channel.clone(),
                        status.clone(),
                        proof.clone(),
                    ]
                })
            })
            .collect();
        if !consent.is_empty() {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO contact_consent (id, tenant_id, contact_id, channel, status, source, proof, recorded_at) \
                 SELECT value ->> 0, $1, value ->> 1, value ->> 2, value ->> 3, 'import', value ->> 4, $2 FROM {} \
                 WHERE value ->> 3 = 'opted_out' OR COALESCE((SELECT c.status FROM contact_consent c \
                   WHERE c.tenant_id = $1 AND c.contact_id = value ->> 1 AND c.channel = value ->> 2 \
                   ORDER BY c.id DESC LIMIT 1), '') <> 'opted_out'",
                json_array_rows(self.storage().backend(), "$3")
            )))
            .bind(tenant)
            .bind(now)
            .bind(serde_json::json!(consent).to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }
}

/// A row source over the strings of the JSON array bound as `placeholder`, each as a
/// text column `value`.
fn json_text_rows(backend: Backend, placeholder: &str) -> String {
    match backend {
        Backend::Sqlite => format!("json_each({placeholder})"),
        Backend::Postgres => {
            format!("jsonb_array_elements_text({placeholder}::jsonb) AS rows(value)")
        }
    }
}

/// A row source over the elements of the JSON array bound as `placeholder`, each as a
/// column `value` (JSON) that `value ->> N` reads on both backends.
fn json_array_rows(backend: Backend, placeholder: &str) -> String {
    match backend {
        Backend::Sqlite => format!("json_each({placeholder})"),
        Backend::Postgres => format!("jsonb_array_elements({placeholder}::jsonb) AS rows(value)"),
    }
}

fn write_reason(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            "another contact got the same phone or email meanwhile".to_string()
        }
        other => other.to_string(),
    }
}

impl super::Storage {
    /// Marks imports left queued or running by a previous process as failed; how many.
    pub async fn fail_interrupted_imports(&self) -> Result<u64, StorageError> {
        let result = sqlx::query(
            "UPDATE contact_imports SET status = 'failed', finished_at = $1, \
             error = 'interrupted by a server restart; import the file again (rows already imported are matched, not duplicated)' \
             WHERE status IN ('queued', 'running')",
        )
        .bind(now_ms())
        .execute(self.pool())
        .await
        .context("failing interrupted imports")?;
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{ConsentEntry, testing};

    #[tokio::test]
    async fn an_opt_out_recorded_after_planning_wins_over_the_imports_opt_in() -> anyhow::Result<()>
    {
        for db in testing::all_backends().await? {
            let label = db.label;
            let tenant = db.storage.create_tenant("Consent", "pro").await?;
            let tenant_db = db.storage.tenant(&tenant.id);
            let contact = tenant_db
                .create_contact(&ContactData {
                    name: Some("Ada".into()),
                    phone: Some("+14155550132".into()),
                    ..ContactData::default()
                })
                .await
                .map_err(|error| anyhow::anyhow!("{error:?}"))?;
            let row = ImportRow {
                data: ContactData {
                    phone: Some("+14155550132".into()),
                    ..ContactData::default()
                },
                consent: vec![
                    ("whatsapp".into(), "opted_in".into()),
                    ("email".into(), "opted_in".into()),
                ],
                proof: "import test line 2".into(),
            };
            let (_, pending, refused) = tenant_db
                .plan_batch(std::slice::from_ref(&row), DuplicateStrategy::Update, None)
                .await?;
            assert_eq!(refused, 0, "{label}: nothing was opted out when planned");
            // The contact texts STOP between the plan and the write.
            let stop = ConsentEntry {
                channel: "whatsapp".into(),
                status: "opted_out".into(),
                source: "keyword".into(),
                proof: None,
                recorded_at: 0,
            };
            assert!(tenant_db.record_consent(&contact.id, &stop).await?);
            tenant_db.write_batch(&pending, &|_, _| Vec::new()).await?;
            let current = tenant_db.current_consent(&contact.id).await?;
            assert_eq!(current["whatsapp"].status, "opted_out", "{label}");
            assert_eq!(current["email"].status, "opted_in", "{label}");
            assert_eq!(current["email"].source, "import", "{label}");
        }
        Ok(())
    }
}
