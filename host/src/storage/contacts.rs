//! The contacts aggregate: a tenant's CRM records with tags and custom field values.
//! Values arrive normalized (see `crate::contacts`); this module enforces uniqueness of
//! phone and email per tenant, also under concurrent writers (unique indexes), and
//! reports the existing contact on a conflict.

use serde::Serialize;
use sqlx::Row;

use super::{QueryContext, StorageError, TenantDb, now_ms};

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
}

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

/// Which contacts to list; every set condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactFilter {
    /// Has this tag.
    pub tag: Option<String>,
    /// Name (case-insensitive), phone or email contains this text.
    pub text: Option<String>,
    /// Created after this time (Unix milliseconds).
    pub created_after: Option<i64>,
    /// Created before this time (Unix milliseconds).
    pub created_before: Option<i64>,
    /// Changed after this time (Unix milliseconds).
    pub updated_after: Option<i64>,
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

impl TenantDb {
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

    async fn write_tags(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        tenant: &str,
        id: &str,
        tags: &[String],
    ) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM contact_tags WHERE tenant_id = $1 AND contact_id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut **tx)
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
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Creates a contact.
    pub async fn create_contact(&self, data: &ContactData) -> Result<Contact, ContactWriteError> {
        if let Some(duplicate) = self.find_duplicate(data, "").await? {
            return Err(duplicate);
        }
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let tenant = self.tenant_id().as_str();
        let result: Result<(), sqlx::Error> = async {
            let mut tx = self.storage().pool().begin().await?;
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
            tx.commit().await
        }
        .await;
        if let Err(error) = result {
            return Err(self
                .conflict_or(error, data, "", "creating a contact")
                .await);
        }
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
        let result: Result<u64, sqlx::Error> = async {
            let mut tx = self.storage().pool().begin().await?;
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
            Ok(_) => Ok(self.get_contact(id).await?),
            Err(error) => Err(self
                .conflict_or(error, data, id, "updating a contact")
                .await),
        }
    }

    async fn tags_of(&self, id: &str) -> Result<Vec<String>, StorageError> {
        let rows = sqlx::query(
            "SELECT tag FROM contact_tags WHERE tenant_id = $1 AND contact_id = $2 ORDER BY tag",
        )
        .bind(self.tenant_id().as_str())
        .bind(id)
        .fetch_all(self.storage().pool())
        .await
        .context("reading contact tags")?;
        rows.iter()
            .map(|row| row.try_get("tag"))
            .collect::<Result<_, _>>()
            .context("decoding contact tags")
    }

    async fn contact_from_row(&self, row: &sqlx::any::AnyRow) -> Result<Contact, StorageError> {
        let decode = |error| StorageError::Query {
            context: "decoding a contact",
            source: error,
        };
        let id: String = row.try_get("id").map_err(decode)?;
        let fields: String = row.try_get("fields").map_err(decode)?;
        Ok(Contact {
            tags: self.tags_of(&id).await?,
            name: row.try_get("name").map_err(decode)?,
            phone: row.try_get("phone").map_err(decode)?,
            email: row.try_get("email").map_err(decode)?,
            fields: serde_json::from_str(&fields).unwrap_or_else(|_| serde_json::json!({})),
            created_at: row.try_get("created_at").map_err(decode)?,
            updated_at: row.try_get("updated_at").map_err(decode)?,
            id,
        })
    }

    /// One of this tenant's contacts.
    pub async fn get_contact(&self, id: &str) -> Result<Option<Contact>, StorageError> {
        let row = sqlx::query(
            "SELECT id, name, phone, email, fields, created_at, updated_at FROM contacts WHERE tenant_id = $1 AND id = $2",
        )
        .bind(self.tenant_id().as_str())
        .bind(id)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a contact")?;
        match row {
            Some(row) => Ok(Some(self.contact_from_row(&row).await?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` contacts matching `filter` with ids after `after` (a cursor), in id
    /// order.
    pub async fn list_contacts(
        &self,
        filter: &ContactFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Contact>, StorageError> {
        // Built from fixed fragments only; every value is a bound parameter (`$N` works on
        // both backends, unlike sqlx's Any QueryBuilder, which writes `?`).
        enum Bind {
            Text(String),
            Number(i64),
        }
        let mut binds = vec![
            Bind::Text(self.tenant_id().as_str().to_string()),
            Bind::Text(after.unwrap_or("").to_string()),
        ];
        let mut sql = String::from(
            "SELECT id, name, phone, email, fields, created_at, updated_at FROM contacts \
             WHERE tenant_id = $1 AND id > $2",
        );
        let next = |bind: Bind, binds: &mut Vec<Bind>| {
            binds.push(bind);
            binds.len()
        };
        if let Some(tag) = &filter.tag {
            let n = next(Bind::Text(tag.clone()), &mut binds);
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM contact_tags t WHERE t.tenant_id = contacts.tenant_id \
                 AND t.contact_id = contacts.id AND t.tag = ${n})"
            ));
        }
        if let Some(text) = &filter.text {
            let escaped = text
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            let n = next(Bind::Text(format!("%{escaped}%")), &mut binds);
            sql.push_str(&format!(
                " AND (LOWER(COALESCE(name, '')) LIKE ${n} ESCAPE '\\' OR COALESCE(phone, '') LIKE ${n} ESCAPE '\\' \
                 OR COALESCE(email, '') LIKE ${n} ESCAPE '\\')"
            ));
        }
        for (value, condition) in [
            (filter.created_after, "created_at >"),
            (filter.created_before, "created_at <"),
            (filter.updated_after, "updated_at >"),
        ] {
            if let Some(value) = value {
                let n = next(Bind::Number(value), &mut binds);
                sql.push_str(&format!(" AND {condition} ${n}"));
            }
        }
        let n = next(Bind::Number(i64::from(limit)), &mut binds);
        sql.push_str(&format!(" ORDER BY id LIMIT ${n}"));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for bind in binds {
            query = match bind {
                Bind::Text(text) => query.bind(text),
                Bind::Number(number) => query.bind(number),
            };
        }
        let rows = query
            .fetch_all(self.storage().pool())
            .await
            .context("listing contacts")?;
        let mut contacts = Vec::with_capacity(rows.len());
        for row in &rows {
            contacts.push(self.contact_from_row(row).await?);
        }
        Ok(contacts)
    }

    /// Deletes one of this tenant's contacts; whether it existed.
    pub async fn delete_contact(&self, id: &str) -> Result<bool, StorageError> {
        let mut tx = self
            .storage()
            .pool()
            .begin()
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
    /// the source's custom field values it lacks, and the source's consent history; the
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
        let merged = ContactData {
            name: target.name.or(source.name),
            phone: target.phone.or(source.phone),
            email: target.email.or(source.email),
            tags,
            fields: serde_json::Value::Object(fields),
        };
        let tenant = self.tenant_id().as_str();
        let result: Result<(), sqlx::Error> = async {
            let mut tx = self.storage().pool().begin().await?;
            sqlx::query("UPDATE contact_consent SET contact_id = $1 WHERE tenant_id = $2 AND contact_id = $3")
                .bind(target_id)
                .bind(tenant)
                .bind(source_id)
                .execute(&mut *tx)
                .await?;
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
                "UPDATE contacts SET name = $1, phone = $2, email = $3, fields = $4, updated_at = $5 \
                 WHERE tenant_id = $6 AND id = $7",
            )
            .bind(merged.name.as_deref())
            .bind(merged.phone.as_deref())
            .bind(merged.email.as_deref())
            .bind(merged.fields.to_string())
            .bind(now_ms())
            .bind(tenant)
            .bind(target_id)
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
