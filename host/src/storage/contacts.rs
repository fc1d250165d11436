//! The contacts aggregate: a tenant's CRM records with tags and custom field values.
//! Values arrive normalized (see `crate::contacts`); this module enforces uniqueness of
//! phone and email per tenant, also under concurrent writers (unique indexes), and
//! reports the existing contact on a conflict.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use sqlx::Row;

use super::filter_sql::{Bind, Sql};
use super::{ConsentEntry, QueryContext, StorageError, TenantDb, now_ms};
use crate::segments::Expr;

/// A contact.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contact {
    /// The contact's id.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// Phone in E.164.
    pub phone: Option<String>,
    /// Normalized email.
    pub email: Option<String>,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// Custom field values (a JSON object).
    pub fields: serde_json::Value,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Last change, Unix milliseconds.
    pub updated_at: i64,
    /// When the tenant last messaged the contact, Unix milliseconds.
    pub last_contacted_at: Option<i64>,
    /// The current consent per channel (the latest entry of each channel's history).
    pub consent: BTreeMap<String, ConsentEntry>,
}

/// The columns `contact_rows` reads, for queries to select.
pub(crate) const CONTACT_COLUMNS: &str =
    "id, name, phone, email, fields, created_at, updated_at, last_contacted_at";

/// The writable part of a contact, already normalized.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContactData {
    /// Display name.
    pub name: Option<String>,
    /// Phone in E.164.
    pub phone: Option<String>,
    /// Normalized email.
    pub email: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Custom field values (a JSON object).
    pub fields: serde_json::Value,
}

/// Why a contact write failed.
#[derive(Debug, thiserror::Error)]
pub enum ContactWriteError {
    /// Another contact of the tenant has the same phone or email.
    #[error("another contact ({existing_id}) already has this {field}")]
    Duplicate {
        /// `phone` or `email`.
        field: &'static str,
        /// The contact that has it.
        existing_id: String,
    },
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A committed change to a contact, reported to whoever subscribed (the flow engine's
/// contact-event triggers). Reported after the commit, in process: a crash between the
/// commit and the report loses the report (see docs/ARCHITECTURE.md).
#[derive(Debug, Clone, PartialEq)]
pub enum ContactChange {
    /// The contact was created.
    Created,
    /// A tag was added.
    TagAdded(String),
    /// A tag was removed.
    TagRemoved(String),
    /// A custom field changed value (`null` when unset).
    FieldChanged {
        /// The field's key.
        field: String,
        /// The value before.
        old: serde_json::Value,
        /// The value after.
        new: serde_json::Value,
    },
    /// Consent for a channel changed to `status` (`opted_in` / `opted_out`).
    Consent {
        /// The channel.
        channel: String,
        /// The new status.
        status: String,
    },
}

/// The jobs announcing a contact just created (id, data): its `contact.created` webhook
/// deliveries, written in the transaction that creates it.
pub type Announce<'a> = &'a (dyn Fn(&str, &ContactData) -> Vec<super::NewJob> + Send + Sync);

/// (tenant id, contact id, change).
pub(super) type ChangeSender = tokio::sync::mpsc::UnboundedSender<(String, String, ContactChange)>;

impl super::Storage {
    /// Subscribes to committed contact changes; one subscriber per storage (later calls
    /// get `None`).
    pub fn subscribe_contact_changes(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<(String, String, ContactChange)>> {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        self.contact_changes.set(sender).ok()?;
        Some(receiver)
    }

    /// Whether anyone listens to contact changes (diffs are only computed if so).
    pub(crate) fn contact_changes_watched(&self) -> bool {
        self.contact_changes.get().is_some()
    }

    /// Reports committed changes of one contact.
    pub fn report_contact_changes(
        &self,
        tenant_id: &str,
        contact_id: &str,
        changes: impl IntoIterator<Item = ContactChange>,
    ) {
        if let Some(sender) = self.contact_changes.get() {
            for change in changes {
                // A closed receiver means the server is shutting down.
                let _ = sender.send((tenant_id.to_string(), contact_id.to_string(), change));
            }
        }
    }
}

/// What changed between two versions of a contact's tags and fields.
pub(super) fn diff(
    old_tags: &[String],
    old_fields: &serde_json::Value,
    new_tags: &[String],
    new_fields: &serde_json::Value,
) -> Vec<ContactChange> {
    let mut changes: Vec<ContactChange> = new_tags
        .iter()
        .filter(|tag| !old_tags.contains(tag))
        .map(|tag| ContactChange::TagAdded(tag.clone()))
        .collect();
    changes.extend(
        old_tags
            .iter()
            .filter(|tag| !new_tags.contains(tag))
            .map(|tag| ContactChange::TagRemoved(tag.clone())),
    );
    let empty = serde_json::Map::new();
    let old = old_fields.as_object().unwrap_or(&empty);
    let new = new_fields.as_object().unwrap_or(&empty);
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for key in keys {
        let before = old.get(key).cloned().unwrap_or(serde_json::Value::Null);
        let after = new.get(key).cloned().unwrap_or(serde_json::Value::Null);
        if before != after {
            changes.push(ContactChange::FieldChanged {
                field: key.clone(),
                old: before,
                new: after,
            });
        }
    }
    changes
}

impl TenantDb {
    /// The id of the contact with this phone number or email, if any.
    pub async fn contact_id_by(
        &self,
        phone: Option<&str>,
        email: Option<&str>,
    ) -> Result<Option<String>, StorageError> {
        let probe = ContactData {
            name: None,
            phone: phone.map(str::to_string),
            email: email.map(str::to_string),
            tags: Vec::new(),
            fields: serde_json::json!({}),
        };
        Ok(match self.find_duplicate(&probe, "").await? {
            Some(ContactWriteError::Duplicate { existing_id, .. }) => Some(existing_id),
            _ => None,
        })
    }

    async fn find_duplicate(
        &self,
        data: &ContactData,
        except: &str,
    ) -> Result<Option<ContactWriteError>, StorageError> {
        for (field, value) in [("phone", &data.phone), ("email", &data.email)] {
            let Some(value) = value else { continue };
            let query = if field == "phone" {
                "SELECT id FROM contacts WHERE tenant_id = $1 AND phone = $2 AND id <> $3"
            } else {
                "SELECT id FROM contacts WHERE tenant_id = $1 AND email = $2 AND id <> $3"
            };
            let row = sqlx::query(query)
                .bind(self.tenant_id().as_str())
                .bind(value)
                .bind(except)
                .fetch_optional(self.storage().pool())
                .await
                .context("checking contact uniqueness")?;
            if let Some(row) = row {
                return Ok(Some(ContactWriteError::Duplicate {
                    field,
                    existing_id: row.try_get("id").context("decoding a contact id")?,
                }));
            }
        }
        Ok(None)
    }

    /// Maps a unique-index violation (a concurrent writer won) to the duplicate it is.
    async fn conflict_or(
        &self,
        error: sqlx::Error,
        data: &ContactData,
        except: &str,
        context: &'static str,
    ) -> ContactWriteError {
        let unique = matches!(&error, sqlx::Error::Database(db) if db.is_unique_violation());
        if unique && let Ok(Some(duplicate)) = self.find_duplicate(data, except).await {
            return duplicate;
        }
        ContactWriteError::Storage(StorageError::Query {
            context,
            source: error,
        })
    }

    pub(super) async fn write_tags(
        tx: &mut sqlx::AnyConnection,
        tenant: &str,
        id: &str,
        tags: &[String],
    ) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM contact_tags WHERE tenant_id = $1 AND contact_id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let mut unique: Vec<&String> = tags.iter().collect();
        unique.sort();
        unique.dedup();
        for tag in unique {
            sqlx::query(
                "INSERT INTO contact_tags (tenant_id, contact_id, tag) VALUES ($1, $2, $3)",
            )
            .bind(tenant)
            .bind(id)
            .bind(tag)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    /// Creates a contact.
    pub async fn create_contact(&self, data: &ContactData) -> Result<Contact, ContactWriteError> {
        self.create_contact_announced(data, &|_, _| Vec::new())
            .await
    }

    /// As [`TenantDb::create_contact`], and writes the jobs `announce` gives for the new
    /// contact (its `contact.created` webhook deliveries) in the same transaction.
    ///
    /// # Errors
    /// As [`TenantDb::create_contact`].
    pub async fn create_contact_announced(
        &self,
        data: &ContactData,
        announce: Announce<'_>,
    ) -> Result<Contact, ContactWriteError> {
        if let Some(duplicate) = self.find_duplicate(data, "").await? {
            return Err(duplicate);
        }
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let tenant = self.tenant_id().as_str();
        let result: Result<(), sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            sqlx::query(
                "INSERT INTO contacts (id, tenant_id, name, phone, email, fields, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            )
            .bind(&id)
            .bind(tenant)
            .bind(data.name.as_deref())
            .bind(data.phone.as_deref())
            .bind(data.email.as_deref())
            .bind(data.fields.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            Self::write_tags(&mut tx, tenant, &id, &data.tags).await?;
            for job in announce(&id, data) {
                super::jobs::insert_job(&mut *tx, &job).await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(error) = result {
            return Err(self
                .conflict_or(error, data, "", "creating a contact")
                .await);
        }
        self.storage().report_contact_changes(
            tenant,
            &id,
            std::iter::once(ContactChange::Created)
                .chain(data.tags.iter().cloned().map(ContactChange::TagAdded)),
        );
        Ok(self
            .get_contact(&id)
            .await?
            .ok_or_else(|| StorageError::Query {
                context: "reading a created contact",
                source: sqlx::Error::RowNotFound,
            })?)
    }

    /// Replaces a contact's data; `None` if this tenant has no such contact.
    pub async fn update_contact(
        &self,
        id: &str,
        data: &ContactData,
    ) -> Result<Option<Contact>, ContactWriteError> {
        if let Some(duplicate) = self.find_duplicate(data, id).await? {
            return Err(duplicate);
        }
        let tenant = self.tenant_id().as_str();
        let before = if self.storage().contact_changes_watched() {
            self.get_contact(id).await?
        } else {
            None
        };
        let result: Result<u64, sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            let updated = sqlx::query(
                "UPDATE contacts SET name = $1, phone = $2, email = $3, fields = $4, updated_at = $5 \
                 WHERE tenant_id = $6 AND id = $7",
            )
            .bind(data.name.as_deref())
            .bind(data.phone.as_deref())
            .bind(data.email.as_deref())
            .bind(data.fields.to_string())
            .bind(now_ms())
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated > 0 {
                Self::write_tags(&mut tx, tenant, id, &data.tags).await?;
            }
            tx.commit().await?;
            Ok(updated)
        }
        .await;
        match result {
            Ok(0) => Ok(None),
            Ok(_) => {
                let after = self.get_contact(id).await?;
                if let (Some(before), Some(after)) = (&before, &after) {
                    self.storage().report_contact_changes(
                        tenant,
                        id,
                        diff(&before.tags, &before.fields, &after.tags, &after.fields),
                    );
                }
                Ok(after)
            }
            Err(error) => Err(self
                .conflict_or(error, data, id, "updating a contact")
                .await),
        }
    }

    /// Changes a contact's tags and custom fields atomically: read, `change` and write in
    /// one write transaction holding the contact (`BEGIN IMMEDIATE` on SQLite, the row
    /// locked `FOR UPDATE` on PostgreSQL), so concurrent changes — two flow runs tagging
    /// the same contact — never overwrite each other. `None` if there is no such contact.
    pub async fn change_tags_and_fields(
        &self,
        id: &str,
        change: impl FnOnce(&mut Vec<String>, &mut serde_json::Value),
    ) -> Result<Option<Vec<ContactChange>>, StorageError> {
        let tenant = self.tenant_id().as_str();
        let result: Result<Option<Vec<ContactChange>>, sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            let changes = self.change_tags_and_fields_in(&mut tx, id, change).await?;
            tx.commit().await?;
            Ok(changes)
        }
        .await;
        let changes = result.context("changing a contact's tags and fields")?;
        if let Some(changes) = &changes {
            self.storage()
                .report_contact_changes(tenant, id, changes.iter().cloned());
        }
        Ok(changes)
    }

    /// [`Self::change_tags_and_fields`] inside the caller's write transaction `tx`; the
    /// caller reports the changes once it has committed.
    pub(crate) async fn change_tags_and_fields_in(
        &self,
        tx: &mut sqlx::AnyConnection,
        id: &str,
        change: impl FnOnce(&mut Vec<String>, &mut serde_json::Value),
    ) -> Result<Option<Vec<ContactChange>>, sqlx::Error> {
        let tenant = self.tenant_id().as_str();
        let lock = match self.storage().backend() {
            super::Backend::Postgres => " FOR UPDATE",
            super::Backend::Sqlite => "",
        };
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT fields FROM contacts WHERE tenant_id = $1 AND id = $2{lock}"
        )))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let text: String = row.try_get("fields")?;
        let old_fields: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({}));
        let old_tags: Vec<String> = sqlx::query(
            "SELECT tag FROM contact_tags WHERE tenant_id = $1 AND contact_id = $2 ORDER BY tag",
        )
        .bind(tenant)
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get("tag"))
        .collect::<Result<_, _>>()?;
        let (mut tags, mut fields) = (old_tags.clone(), old_fields.clone());
        change(&mut tags, &mut fields);
        let changes = diff(&old_tags, &old_fields, &tags, &fields);
        if changes.is_empty() {
            return Ok(Some(changes));
        }
        if fields != old_fields {
            sqlx::query(
                "UPDATE contacts SET fields = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4",
            )
            .bind(fields.to_string())
            .bind(now_ms())
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query("UPDATE contacts SET updated_at = $1 WHERE tenant_id = $2 AND id = $3")
                .bind(now_ms())
                .bind(tenant)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if tags != old_tags {
            Self::write_tag_changes(tx, tenant, id, &old_tags, &tags).await?;
        }
        Ok(Some(changes))
    }

    /// Writes the difference between a contact's `old` and `new` tags (not all of them).
    async fn write_tag_changes(
        tx: &mut sqlx::AnyConnection,
        tenant: &str,
        id: &str,
        old: &[String],
        new: &[String],
    ) -> Result<(), sqlx::Error> {
        for tag in old.iter().filter(|tag| !new.contains(tag)) {
            sqlx::query(
                "DELETE FROM contact_tags WHERE tenant_id = $1 AND contact_id = $2 AND tag = $3",
            )
            .bind(tenant)
            .bind(id)
            .bind(tag)
            .execute(&mut *tx)
            .await?;
        }
        let mut added: Vec<&String> = new.iter().filter(|tag| !old.contains(tag)).collect();
        added.sort();
        added.dedup();
        for tag in added {
            sqlx::query(
                "INSERT INTO contact_tags (tenant_id, contact_id, tag) VALUES ($1, $2, $3)",
            )
            .bind(tenant)
            .bind(id)
            .bind(tag)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    /// Decodes contact rows and loads their tags and current consent in two queries.
    pub(super) async fn contact_rows(
        &self,
        rows: &[sqlx::any::AnyRow],
    ) -> Result<Vec<Contact>, StorageError> {
        let decode = |error| StorageError::Query {
            context: "decoding a contact",
            source: error,
        };
        let mut contacts = Vec::with_capacity(rows.len());
        for row in rows {
            let fields: String = row.try_get("fields").map_err(decode)?;
            contacts.push(Contact {
                id: row.try_get("id").map_err(decode)?,
                name: row.try_get("name").map_err(decode)?,
                phone: row.try_get("phone").map_err(decode)?,
                email: row.try_get("email").map_err(decode)?,
                tags: Vec::new(),
                fields: serde_json::from_str(&fields).unwrap_or_else(|_| serde_json::json!({})),
                created_at: row.try_get("created_at").map_err(decode)?,
                updated_at: row.try_get("updated_at").map_err(decode)?,
                last_contacted_at: row.try_get("last_contacted_at").map_err(decode)?,
                consent: BTreeMap::new(),
            });
        }
        if contacts.is_empty() {
            return Ok(contacts);
        }
        let index: HashMap<String, usize> = contacts
            .iter()
            .enumerate()
            .map(|(position, contact)| (contact.id.clone(), position))
            .collect();
        let ids: Vec<&str> = contacts.iter().map(|contact| contact.id.as_str()).collect();

        let mut tags = Sql::new("SELECT contact_id, tag FROM contact_tags WHERE tenant_id = ");
        self.in_ids(&mut tags, &ids);
        tags.push(" ORDER BY contact_id, tag");
        let mut consent = Sql::new(
            "SELECT contact_id, channel, status, source, proof, recorded_at FROM contact_consent WHERE tenant_id = ",
        );
        self.in_ids(&mut consent, &ids);
        consent.push(" ORDER BY id");
        drop(ids);
        for row in tags
            .into_query()
            .fetch_all(self.storage().pool())
            .await
            .context("reading contact tags")?
        {
            let id: String = row.try_get("contact_id").map_err(decode)?;
            if let Some(&position) = index.get(&id) {
                contacts[position]
                    .tags
                    .push(row.try_get("tag").map_err(decode)?);
            }
        }

        for row in consent
            .into_query()
            .fetch_all(self.storage().pool())
            .await
            .context("reading consent")?
        {
            let id: String = row.try_get("contact_id").map_err(decode)?;
            let entry = ConsentEntry {
                channel: row.try_get("channel").map_err(decode)?,
                status: row.try_get("status").map_err(decode)?,
                source: row.try_get("source").map_err(decode)?,
                proof: row.try_get("proof").map_err(decode)?,
                recorded_at: row.try_get("recorded_at").map_err(decode)?,
            };
            if let Some(&position) = index.get(&id) {
                contacts[position]
                    .consent
                    .insert(entry.channel.clone(), entry);
            }
        }
        Ok(contacts)
    }

    /// Appends `<tenant> AND contact_id IN (<ids>)` to a query.
    fn in_ids(&self, sql: &mut Sql, ids: &[&str]) {
        let tenant = sql.bind(Bind::Text(self.tenant_id().as_str().to_string()));
        sql.push(&tenant);
        sql.push(" AND contact_id IN (");
        for (position, id) in ids.iter().enumerate() {
            if position > 0 {
                sql.push(", ");
            }
            let placeholder = sql.bind(Bind::Text((*id).to_string()));
            sql.push(&placeholder);
        }
        sql.push(")");
    }

    /// One of this tenant's contacts.
    pub async fn get_contact(&self, id: &str) -> Result<Option<Contact>, StorageError> {
        if let Some(reads) = self.storage().sqlite_reads() {
            match reads.read(|connection| read_contact(connection, self.tenant_id().as_str(), id)) {
                Ok(contact) => return Ok(contact),
                Err(error) => {
                    tracing::debug!(%error, "direct SQLite read failed; reading through sqlx");
                }
            }
        }
        let mut sql = Sql::new(&format!(
            "SELECT {CONTACT_COLUMNS} FROM contacts WHERE tenant_id = "
        ));
        let tenant = sql.bind(Bind::Text(self.tenant_id().as_str().to_string()));
        sql.push(&tenant);
        let id = sql.bind(Bind::Text(id.to_string()));
        sql.push(&format!(" AND id = {id}"));
        let rows = sql
            .into_query()
            .fetch_all(self.storage().pool())
            .await
            .context("reading a contact")?;
        Ok(self.contact_rows(&rows).await?.pop())
    }

    /// The start of a query over this tenant's contacts matching `filter`.
    fn matching(&self, select: &str, filter: &Expr) -> Sql {
        let mut sql = Sql::new(&format!("SELECT {select} FROM contacts WHERE tenant_id = "));
        let tenant = sql.bind(Bind::Text(self.tenant_id().as_str().to_string()));
        sql.push(&tenant);
        sql.and_expr(self.storage().backend(), filter, now_ms());
        sql
    }

    /// Up to `limit` contacts matching `filter` with ids after `after` (a cursor), in id
    /// order.
    pub async fn list_contacts(
        &self,
        filter: &Expr,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Contact>, StorageError> {
        let mut sql = self.matching(CONTACT_COLUMNS, filter);
        let after = sql.bind(Bind::Text(after.unwrap_or("").to_string()));
        let limit = sql.bind(Bind::Int(i64::from(limit)));
        sql.push(&format!(" AND id > {after} ORDER BY id LIMIT {limit}"));
        if self.storage().sqlite_reads().is_some() {
            // A page is hundreds of rows: read off the async workers, in one snapshot,
            // without sqlx's per-row hand-offs (a campaign's fan-out reads every page).
            let storage = self.storage().clone();
            let tenant = self.tenant_id().as_str().to_string();
            let read = tokio::task::spawn_blocking(move || {
                storage
                    .read_direct(|connection| {
                        let transaction = connection.unchecked_transaction()?;
                        let mut contacts = super::sqlite_writer::query(
                            &transaction,
                            &sql.text,
                            &sql.params(),
                            decode_contact_direct,
                        )?;
                        fill_tags_and_consent(&transaction, &tenant, &mut contacts)?;
                        transaction.commit()?;
                        Ok(contacts)
                    })
                    .ok_or(sql)
            })
            .await;
            match read {
                Ok(Ok(contacts)) => return Ok(contacts),
                // The direct read failed (logged): the same query through sqlx.
                Ok(Err(returned)) => sql = returned,
                Err(error) => {
                    return Err(StorageError::Direct {
                        context: "listing contacts",
                        message: error.to_string(),
                    });
                }
            }
        }
        let rows = sql
            .into_query()
            .fetch_all(self.storage().pool())
            .await
            .context("listing contacts")?;
        self.contact_rows(&rows).await
    }

    /// How many of this tenant's contacts match `filter`.
    pub async fn count_matching(&self, filter: &Expr) -> Result<u64, StorageError> {
        let row = self
            .matching("COUNT(*) AS n", filter)
            .into_query()
            .fetch_one(self.storage().pool())
            .await
            .context("counting contacts")?;
        let count: i64 = row.try_get("n").context("counting contacts")?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Records that the tenant messaged a contact at `at` (Unix milliseconds).
    pub async fn mark_contacted(&self, id: &str, at: i64) -> Result<bool, StorageError> {
        let updated = sqlx::query(
            "UPDATE contacts SET last_contacted_at = $1 WHERE tenant_id = $2 AND id = $3",
        )
        .bind(at)
        .bind(self.tenant_id().as_str())
        .bind(id)
        .execute(self.storage().pool())
        .await
        .context("recording a contact's last message")?
        .rows_affected();
        Ok(updated > 0)
    }

    /// Deletes one of this tenant's contacts; whether it existed.
    pub async fn delete_contact(&self, id: &str) -> Result<bool, StorageError> {
        let mut tx = self
            .storage()
            .begin_write()
            .await
            .context("deleting a contact")?;
        sqlx::query("DELETE FROM contact_tags WHERE tenant_id = $1 AND contact_id = $2")
            .bind(self.tenant_id().as_str())
            .bind(id)
            .execute(&mut *tx)
            .await
            .context("deleting a contact's tags")?;
        let deleted = sqlx::query("DELETE FROM contacts WHERE tenant_id = $1 AND id = $2")
            .bind(self.tenant_id().as_str())
            .bind(id)
            .execute(&mut *tx)
            .await
            .context("deleting a contact")?
            .rows_affected();
        tx.commit().await.context("deleting a contact")?;
        Ok(deleted > 0)
    }

    /// Merges `source` into `target` in one transaction: the target keeps its values and
    /// takes the source's name, phone and email where it has none, the union of tags,
    /// the source's custom field values it lacks, and the source's consent history and
    /// notes; the
    /// source is deleted. `None` if either is not this tenant's contact.
    pub async fn merge_contacts(
        &self,
        target_id: &str,
        source_id: &str,
    ) -> Result<Option<Contact>, StorageError> {
        let (Some(target), Some(source)) = (
            self.get_contact(target_id).await?,
            self.get_contact(source_id).await?,
        ) else {
            return Ok(None);
        };
        let mut fields = source.fields.as_object().cloned().unwrap_or_default();
        fields.extend(target.fields.as_object().cloned().unwrap_or_default());
        let mut tags = target.tags.clone();
        tags.extend(source.tags.iter().cloned());
        let last_contacted_at = target.last_contacted_at.max(source.last_contacted_at);
        let merged = ContactData {
            name: target.name.or(source.name),
            phone: target.phone.or(source.phone),
            email: target.email.or(source.email),
            tags,
            fields: serde_json::Value::Object(fields),
        };
        let tenant = self.tenant_id().as_str();
        let result: Result<(), sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            for moved in [
                "UPDATE contact_consent SET contact_id = $1 WHERE tenant_id = $2 AND contact_id = $3",
                "UPDATE contact_notes SET contact_id = $1 WHERE tenant_id = $2 AND contact_id = $3",
            ] {
                sqlx::query(moved)
                    .bind(target_id)
                    .bind(tenant)
                    .bind(source_id)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM contact_tags WHERE tenant_id = $1 AND contact_id = $2")
                .bind(tenant)
                .bind(source_id)
                .execute(&mut *tx)
                .await?;
            // Delete the source first: its phone and email move to the target.
            sqlx::query("DELETE FROM contacts WHERE tenant_id = $1 AND id = $2")
                .bind(tenant)
                .bind(source_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE contacts SET name = $1, phone = $2, email = $3, fields = $4, updated_at = $5, \
                 last_contacted_at = $8 WHERE tenant_id = $6 AND id = $7",
            )
            .bind(merged.name.as_deref())
            .bind(merged.phone.as_deref())
            .bind(merged.email.as_deref())
            .bind(merged.fields.to_string())
            .bind(now_ms())
            .bind(tenant)
            .bind(target_id)
            .bind(last_contacted_at)
            .execute(&mut *tx)
            .await?;
            Self::write_tags(&mut tx, tenant, target_id, &merged.tags).await?;
            tx.commit().await
        }
        .await;
        result.context("merging contacts")?;
        self.get_contact(target_id).await
    }

    /// How many contacts this tenant has.
    pub async fn count_contacts(&self) -> Result<u64, StorageError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM contacts WHERE tenant_id = $1")
            .bind(self.tenant_id().as_str())
            .fetch_one(self.storage().pool())
            .await
            .context("counting contacts")?;
        let count: i64 = row.try_get("n").context("counting contacts")?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}

/// [`TenantDb::change_tags_and_fields_in`] on the direct SQLite path (the same SQL), inside
/// the writer's transaction; the caller reports the changes after the commit.
pub(crate) fn change_tags_and_fields_direct(
    connection: &rusqlite::Connection,
    tenant: &str,
    id: &str,
    change: impl FnOnce(&mut Vec<String>, &mut serde_json::Value),
) -> rusqlite::Result<Option<Vec<ContactChange>>> {
    use super::sqlite_writer::{exec, query};
    let Some(text) = query(
        connection,
        "SELECT fields FROM contacts WHERE tenant_id = $1 AND id = $2",
        &[&tenant, &id],
        |row| row.get::<_, String>(0),
    )?
    .pop() else {
        return Ok(None);
    };
    let old_fields: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({}));
    let old_tags: Vec<String> = query(
        connection,
        "SELECT tag FROM contact_tags WHERE tenant_id = $1 AND contact_id = $2 ORDER BY tag",
        &[&tenant, &id],
        |row| row.get(0),
    )?;
    let (mut tags, mut fields) = (old_tags.clone(), old_fields.clone());
    change(&mut tags, &mut fields);
    let changes = diff(&old_tags, &old_fields, &tags, &fields);
    if changes.is_empty() {
        return Ok(Some(changes));
    }
    if fields != old_fields {
        exec(
            connection,
            "UPDATE contacts SET fields = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4",
            &[&fields.to_string(), &now_ms(), &tenant, &id],
        )?;
    } else {
        exec(
            connection,
            "UPDATE contacts SET updated_at = $1 WHERE tenant_id = $2 AND id = $3",
            &[&now_ms(), &tenant, &id],
        )?;
    }
    for tag in old_tags.iter().filter(|tag| !tags.contains(tag)) {
        exec(
            connection,
            "DELETE FROM contact_tags WHERE tenant_id = $1 AND contact_id = $2 AND tag = $3",
            &[&tenant, &id, tag],
        )?;
    }
    let mut added: Vec<&String> = tags.iter().filter(|tag| !old_tags.contains(tag)).collect();
    added.sort();
    added.dedup();
    for tag in added {
        exec(
            connection,
            "INSERT INTO contact_tags (tenant_id, contact_id, tag) VALUES ($1, $2, $3)",
            &[&tenant, &id, tag],
        )?;
    }
    Ok(Some(changes))
}

/// A contact with its tags and current consent, read synchronously from SQLite (see
/// `sqlite_reads`); the same result as `TenantDb::get_contact`'s sqlx path.
fn read_contact(
    connection: &rusqlite::Connection,
    tenant: &str,
    id: &str,
) -> rusqlite::Result<Option<Contact>> {
    // One read transaction for the three statements: one snapshot (a consistent
    // contact) and one WAL lock acquisition instead of three.
    let transaction = connection.unchecked_transaction()?;
    let contact = read_contact_in(&transaction, tenant, id)?;
    transaction.commit()?;
    Ok(contact)
}

pub(super) fn read_contact_in(
    connection: &rusqlite::Connection,
    tenant: &str,
    id: &str,
) -> rusqlite::Result<Option<Contact>> {
    use rusqlite::OptionalExtension;
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {CONTACT_COLUMNS} FROM contacts WHERE tenant_id = ?1 AND id = ?2"
    ))?;
    let Some(mut contact) = statement
        .query_row((tenant, id), decode_contact_direct)
        .optional()?
    else {
        return Ok(None);
    };
    fill_tags_and_consent(connection, tenant, std::slice::from_mut(&mut contact))?;
    Ok(Some(contact))
}

/// A `CONTACT_COLUMNS` row, without its tags and consent.
fn decode_contact_direct(row: &rusqlite::Row<'_>) -> rusqlite::Result<Contact> {
    let fields: String = row.get("fields")?;
    Ok(Contact {
        id: row.get("id")?,
        name: row.get("name")?,
        phone: row.get("phone")?,
        email: row.get("email")?,
        tags: Vec::new(),
        fields: serde_json::from_str(&fields).unwrap_or_else(|_| serde_json::json!({})),
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
        last_contacted_at: row.get("last_contacted_at")?,
        consent: BTreeMap::new(),
    })
}

/// The contacts among `ids` (a contact that does not exist is left out), with their
/// tags and current consent: three statements whatever the number of ids.
pub(super) fn read_contacts_in(
    connection: &rusqlite::Connection,
    tenant: &str,
    ids: &[&str],
) -> rusqlite::Result<Vec<Contact>> {
    let ids_json = serde_json::to_string(ids)
        .map_err(|error| rusqlite::Error::ToSqlConversionFailure(Box::new(error)))?;
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {CONTACT_COLUMNS} FROM contacts \
         WHERE tenant_id = ?1 AND id IN (SELECT value FROM json_each(?2))"
    ))?;
    let mut contacts = statement
        .query_map((tenant, &ids_json), decode_contact_direct)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    fill_tags_and_consent(connection, tenant, &mut contacts)?;
    Ok(contacts)
}

/// Fills in the tags and current consent of `contacts`: two statements whatever their
/// number (one tags and one consent lookup per contact had cost a campaign's fan-out and
/// send batches three statements per recipient). One contact is matched by `=`, several
/// by `IN` over a JSON array of their ids.
fn fill_tags_and_consent(
    connection: &rusqlite::Connection,
    tenant: &str,
    contacts: &mut [Contact],
) -> rusqlite::Result<()> {
    let (matching, key) = match &*contacts {
        [] => return Ok(()),
        [one] => ("contact_id = ?2", one.id.clone()),
        several => (
            "contact_id IN (SELECT value FROM json_each(?2))",
            serde_json::to_string(&several.iter().map(|c| &c.id).collect::<Vec<_>>())
                .map_err(|error| rusqlite::Error::ToSqlConversionFailure(Box::new(error)))?,
        ),
    };
    let position: HashMap<String, usize> = contacts
        .iter()
        .enumerate()
        .map(|(index, contact)| (contact.id.clone(), index))
        .collect();
    let mut tags = connection.prepare_cached(&format!(
        "SELECT contact_id, tag FROM contact_tags WHERE tenant_id = ?1 AND {matching} \
         ORDER BY contact_id, tag"
    ))?;
    let mut rows = tags.query((tenant, &key))?;
    while let Some(row) = rows.next()? {
        let contact_id: String = row.get(0)?;
        if let Some(&index) = position.get(&contact_id) {
            contacts[index].tags.push(row.get(1)?);
        }
    }
    // By id within a contact: a later entry of a channel replaces an earlier one.
    let mut consent = connection.prepare_cached(&format!(
        "SELECT contact_id, channel, status, source, proof, recorded_at FROM contact_consent \
         WHERE tenant_id = ?1 AND {matching} ORDER BY contact_id, id"
    ))?;
    let mut rows = consent.query((tenant, &key))?;
    while let Some(row) = rows.next()? {
        let contact_id: String = row.get(0)?;
        if let Some(&index) = position.get(&contact_id) {
            let entry = ConsentEntry {
                channel: row.get(1)?,
                status: row.get(2)?,
                source: row.get(3)?,
                proof: row.get(4)?,
                recorded_at: row.get(5)?,
            };
            contacts[index].consent.insert(entry.channel.clone(), entry);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing;

    fn consent(channel: &str, status: &str, recorded_at: i64) -> ConsentEntry {
        ConsentEntry {
            channel: channel.into(),
            status: status.into(),
            source: "api".into(),
            proof: Some(format!("{channel} {status}")),
            recorded_at,
        }
    }

    /// A page of contacts gets each contact's own tags (sorted) and latest consent per
    /// channel, the same as reading the contacts one by one, and nothing of another
    /// tenant's contacts.
    #[tokio::test]
    async fn a_page_of_contacts_carries_each_ones_tags_and_latest_consent() -> anyhow::Result<()> {
        for db in testing::all_backends().await? {
            let label = db.label;
            let other = db.storage.create_tenant("Other", "pro").await?;
            let other_db = db.storage.tenant(&other.id);
            let tenant = db.storage.create_tenant("Page", "pro").await?;
            let tenant_db = db.storage.tenant(&tenant.id);
            let write_error = |error: ContactWriteError| anyhow::anyhow!("{error:?}");
            let mut ids = Vec::new();
            for (n, tags) in [vec!["vip", "b2b"], vec![], vec!["zeta", "alpha", "mid"]]
                .into_iter()
                .enumerate()
            {
                let contact = tenant_db
                    .create_contact(&ContactData {
                        name: Some(format!("Contact {n}")),
                        phone: Some(format!("+1415555010{n}")),
                        tags: tags.into_iter().map(String::from).collect(),
                        ..ContactData::default()
                    })
                    .await
                    .map_err(write_error)?;
                ids.push(contact.id);
            }
            let stranger = other_db
                .create_contact(&ContactData {
                    phone: Some("+14155550100".into()),
                    tags: vec!["intruder".into()],
                    ..ContactData::default()
                })
                .await
                .map_err(write_error)?;
            other_db
                .record_consent(&stranger.id, &consent("whatsapp", "opted_in", 1))
                .await?;
            // Contact 0: opted in, then out, on WhatsApp (the later entry counts); in on
            // email. Contact 1: none. Contact 2: out, then in again.
            for (contact, entry) in [
                (0, consent("whatsapp", "opted_in", 10)),
                (0, consent("email", "opted_in", 11)),
                (2, consent("whatsapp", "opted_out", 12)),
                (0, consent("whatsapp", "opted_out", 13)),
                (2, consent("whatsapp", "opted_in", 14)),
            ] {
                assert!(tenant_db.record_consent(&ids[contact], &entry).await?);
            }

            let page = tenant_db
                .list_contacts(&Expr::And(Vec::new()), None, 50)
                .await?;
            assert_eq!(
                page.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
                ids.iter().map(String::as_str).collect::<Vec<_>>(),
                "{label}"
            );
            assert_eq!(page[0].tags, ["b2b", "vip"], "{label}");
            assert!(page[1].tags.is_empty(), "{label}");
            assert_eq!(page[2].tags, ["alpha", "mid", "zeta"], "{label}");
            let status = |contact: &Contact, channel: &str| {
                contact
                    .consent
                    .get(channel)
                    .map(|entry| entry.status.clone())
            };
            assert_eq!(
                status(&page[0], "whatsapp").as_deref(),
                Some("opted_out"),
                "{label}"
            );
            assert_eq!(
                status(&page[0], "email").as_deref(),
                Some("opted_in"),
                "{label}"
            );
            assert!(page[1].consent.is_empty(), "{label}");
            assert_eq!(
                status(&page[2], "whatsapp").as_deref(),
                Some("opted_in"),
                "{label}"
            );
            for contact in &page {
                let alone = tenant_db.get_contact(&contact.id).await?;
                assert_eq!(alone.as_ref(), Some(contact), "{label}");
            }

            // The batch read of the campaign path: unknown ids are left out.
            let direct = db.storage.read_direct(|connection| {
                read_contacts_in(
                    connection,
                    tenant.id.as_str(),
                    &[
                        ids[2].as_str(),
                        "missing",
                        ids[0].as_str(),
                        stranger.id.as_str(),
                    ],
                )
            });
            if let Some(mut read) = direct {
                read.sort_by(|a, b| a.id.cmp(&b.id));
                assert_eq!(read, vec![page[0].clone(), page[2].clone()], "{label}");
            } else {
                assert_eq!(label, "postgres", "SQLite reads directly");
            }
        }
        Ok(())
    }
}
