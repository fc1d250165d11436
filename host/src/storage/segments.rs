//! Segments: named, saved filter expressions. The expression is stored as the JSON the
//! tenant wrote and parsed again (against the current custom fields) whenever it is
//! evaluated, so membership is always live.

use serde::Serialize;
use sqlx::Row;

use super::{QueryContext, StorageError, TenantDb, now_ms};

/// A saved segment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    /// The segment's id.
    pub id: String,
    /// Its name, unique per tenant.
    pub name: String,
    /// The filter expression, as written.
    pub expression: serde_json::Value,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Last change, Unix milliseconds.
    pub updated_at: i64,
}

fn segment_from_row(row: &sqlx::any::AnyRow) -> Result<Segment, sqlx::Error> {
    let expression: String = row.try_get("expression")?;
    Ok(Segment {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        expression: serde_json::from_str(&expression).unwrap_or(serde_json::Value::Null),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Why a segment could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum SegmentWriteError {
    /// Another segment of the tenant has this name.
    #[error("a segment named `{0}` already exists")]
    DuplicateName(String),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn unique_or(error: sqlx::Error, name: &str, context: &'static str) -> SegmentWriteError {
    if matches!(&error, sqlx::Error::Database(db) if db.is_unique_violation()) {
        SegmentWriteError::DuplicateName(name.to_string())
    } else {
        SegmentWriteError::Storage(StorageError::Query {
            context,
            source: error,
        })
    }
}

impl TenantDb {
    /// Saves a new segment (the expression already checked).
    pub async fn create_segment(
        &self,
        name: &str,
        expression: &serde_json::Value,
    ) -> Result<Segment, SegmentWriteError> {
        let now = now_ms();
        let segment = Segment {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.to_string(),
            expression: expression.clone(),
            created_at: now,
            updated_at: now,
        };
        sqlx::query(
            "INSERT INTO segments (id, tenant_id, name, expression, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(&segment.id)
        .bind(self.tenant_id().as_str())
        .bind(name)
        .bind(expression.to_string())
        .bind(now)
        .execute(self.storage().pool())
        .await
        .map_err(|error| unique_or(error, name, "creating a segment"))?;
        Ok(segment)
    }

    /// Renames a segment and/or replaces its expression; `None` if there is no such segment.
    pub async fn update_segment(
        &self,
        id: &str,
        name: &str,
        expression: &serde_json::Value,
    ) -> Result<Option<Segment>, SegmentWriteError> {
        let updated = sqlx::query(
            "UPDATE segments SET name = $1, expression = $2, updated_at = $3 WHERE tenant_id = $4 AND id = $5",
        )
        .bind(name)
        .bind(expression.to_string())
        .bind(now_ms())
        .bind(self.tenant_id().as_str())
        .bind(id)
        .execute(self.storage().pool())
        .await
        .map_err(|error| unique_or(error, name, "updating a segment"))?
        .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        Ok(self.get_segment(id).await?)
    }

    /// One of this tenant's segments.
    pub async fn get_segment(&self, id: &str) -> Result<Option<Segment>, StorageError> {
        let row = sqlx::query(
            "SELECT id, name, expression, created_at, updated_at FROM segments WHERE tenant_id = $1 AND id = $2",
        )
        .bind(self.tenant_id().as_str())
        .bind(id)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a segment")?;
        row.as_ref()
            .map(segment_from_row)
            .transpose()
            .context("decoding a segment")
    }

    /// This tenant's segments, by name.
    pub async fn list_segments(&self) -> Result<Vec<Segment>, StorageError> {
        let rows = sqlx::query(
            "SELECT id, name, expression, created_at, updated_at FROM segments WHERE tenant_id = $1 ORDER BY name",
        )
        .bind(self.tenant_id().as_str())
        .fetch_all(self.storage().pool())
        .await
        .context("listing segments")?;
        rows.iter()
            .map(segment_from_row)
            .collect::<Result<_, _>>()
            .context("decoding segments")
    }

    /// Deletes a segment; whether it existed.
    pub async fn delete_segment(&self, id: &str) -> Result<bool, StorageError> {
        let deleted = sqlx::query("DELETE FROM segments WHERE tenant_id = $1 AND id = $2")
            .bind(self.tenant_id().as_str())
            .bind(id)
            .execute(self.storage().pool())
            .await
            .context("deleting a segment")?
            .rows_affected();
        Ok(deleted > 0)
    }
}
