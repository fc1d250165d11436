//! Notes: free text agents keep on a contact, newest last. Deleted with the contact.

use serde::Serialize;
use sqlx::Row;

use super::{QueryContext, StorageError, TenantDb, now_ms};

/// A note on a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    /// The note's id.
    pub id: String,
    /// The contact it is about.
    pub contact_id: String,
    /// The text.
    pub body: String,
    /// The API key that wrote it.
    pub author_key_id: Option<String>,
    /// When, Unix milliseconds.
    pub created_at: i64,
}

impl TenantDb {
    /// Adds a note to one of this tenant's contacts; `None` if there is no such contact.
    pub async fn add_note(
        &self,
        contact_id: &str,
        body: &str,
        author_key_id: Option<&str>,
    ) -> Result<Option<Note>, StorageError> {
        let note = Note {
            id: uuid::Uuid::now_v7().to_string(),
            contact_id: contact_id.to_string(),
            body: body.to_string(),
            author_key_id: author_key_id.map(str::to_string),
            created_at: now_ms(),
        };
        let inserted = sqlx::query(
            "INSERT INTO contact_notes (id, tenant_id, contact_id, body, author_key_id, created_at) \
             SELECT $1, $2, $3, $4, $5, $6 FROM contacts WHERE tenant_id = $2 AND id = $3",
        )
        .bind(&note.id)
        .bind(self.tenant_id().as_str())
        .bind(contact_id)
        .bind(body)
        .bind(author_key_id)
        .bind(note.created_at)
        .execute(self.storage().pool())
        .await
        .context("adding a note")?
        .rows_affected();
        Ok((inserted > 0).then_some(note))
    }

    /// A contact's notes, oldest first.
    pub async fn notes(&self, contact_id: &str) -> Result<Vec<Note>, StorageError> {
        let rows = sqlx::query(
            "SELECT id, contact_id, body, author_key_id, created_at FROM contact_notes \
             WHERE tenant_id = $1 AND contact_id = $2 ORDER BY id",
        )
        .bind(self.tenant_id().as_str())
        .bind(contact_id)
        .fetch_all(self.storage().pool())
        .await
        .context("reading notes")?;
        rows.iter()
            .map(|row| {
                Ok(Note {
                    id: row.try_get("id")?,
                    contact_id: row.try_get("contact_id")?,
                    body: row.try_get("body")?,
                    author_key_id: row.try_get("author_key_id")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding notes")
    }

    /// Deletes a note of a contact; whether it existed.
    pub async fn delete_note(&self, contact_id: &str, note_id: &str) -> Result<bool, StorageError> {
        let deleted = sqlx::query(
            "DELETE FROM contact_notes WHERE tenant_id = $1 AND contact_id = $2 AND id = $3",
        )
        .bind(self.tenant_id().as_str())
        .bind(contact_id)
        .bind(note_id)
        .execute(self.storage().pool())
        .await
        .context("deleting a note")?
        .rows_affected();
        Ok(deleted > 0)
    }
}
