//! Message templates of a channel install: the structured model a tenant edits, the
//! provider's review state (`DRAFT` until submitted, then PENDING, APPROVED, REJECTED,
//! PAUSED, DISABLED…) and the provider's id.

use serde::Serialize;
use sqlx::Row;

use super::{QueryContext, StorageError, TenantDb, now_ms};
use crate::template_model::TemplateSpec;

/// A stored template.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateRecord {
    /// Its id.
    pub id: String,
    /// The channel install it belongs to.
    pub install_id: String,
    /// Its name.
    pub name: String,
    /// Its language.
    pub language: String,
    /// MARKETING, UTILITY or AUTHENTICATION.
    pub category: String,
    /// The structured model.
    pub spec: TemplateSpec,
    /// DRAFT, PENDING, APPROVED, REJECTED, PAUSED, DISABLED, …
    pub status: String,
    /// The provider's reason for the last status, if any.
    pub reason: Option<String>,
    /// The provider's id once submitted.
    pub provider_id: Option<String>,
    /// When it was submitted, Unix ms.
    pub submitted_at: Option<i64>,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Last changed, Unix ms.
    pub updated_at: i64,
}

const COLUMNS: &str = "id, install_id, name, language, category, spec, status, reason, provider_id, \
                       submitted_at, created_at, updated_at";

fn decode(row: &sqlx::any::AnyRow) -> Result<TemplateRecord, sqlx::Error> {
    let spec: String = row.try_get("spec")?;
    Ok(TemplateRecord {
        id: row.try_get("id")?,
        install_id: row.try_get("install_id")?,
        name: row.try_get("name")?,
        language: row.try_get("language")?,
        category: row.try_get("category")?,
        spec: serde_json::from_str(&spec).map_err(|error| sqlx::Error::Decode(Box::new(error)))?,
        status: row.try_get("status")?,
        reason: row.try_get("reason")?,
        provider_id: row.try_get("provider_id")?,
        submitted_at: row.try_get("submitted_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl TenantDb {
    /// Stores a new draft template; `None` if one with the same name and language exists
    /// on the install.
    pub async fn create_template(
        &self,
        install_id: &str,
        spec: &TemplateSpec,
    ) -> Result<Option<TemplateRecord>, StorageError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO message_templates (id, tenant_id, install_id, name, language, category, spec, status, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'DRAFT', $8, $8) \
             ON CONFLICT (tenant_id, install_id, name, language) DO NOTHING",
        )
        .bind(&id)
        .bind(self.tenant_id().as_str())
        .bind(install_id)
        .bind(&spec.name)
        .bind(&spec.language)
        .bind(spec.category.as_str())
        .bind(serde_json::to_string(spec).unwrap_or_default())
        .bind(now)
        .execute(self.storage().pool())
        .await
        .context("creating a template")?
        .rows_affected();
        if inserted == 0 {
            return Ok(None);
        }
        self.template(&id).await
    }

    /// Replaces a template's model (name and language stay); it becomes a draft again.
    pub async fn update_template_spec(
        &self,
        id: &str,
        spec: &TemplateSpec,
    ) -> Result<Option<TemplateRecord>, StorageError> {
        let updated = sqlx::query(
            "UPDATE message_templates SET spec = $1, category = $2, status = 'DRAFT', reason = NULL, \
             updated_at = $3 WHERE tenant_id = $4 AND id = $5",
        )
        .bind(serde_json::to_string(spec).unwrap_or_default())
        .bind(spec.category.as_str())
        .bind(now_ms())
        .bind(self.tenant_id().as_str())
        .bind(id)
        .execute(self.storage().pool())
        .await
        .context("updating a template")?
        .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        self.template(id).await
    }

    /// One template.
    pub async fn template(&self, id: &str) -> Result<Option<TemplateRecord>, StorageError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM message_templates WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(self.tenant_id().as_str())
        .bind(id)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a template")?;
        row.as_ref()
            .map(decode)
            .transpose()
            .context("decoding a template")
    }

    /// A template by install, name and language.
    pub async fn template_by_name(
        &self,
        install_id: &str,
        name: &str,
        language: &str,
    ) -> Result<Option<TemplateRecord>, StorageError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM message_templates \
             WHERE tenant_id = $1 AND install_id = $2 AND name = $3 AND language = $4"
        )))
        .bind(self.tenant_id().as_str())
        .bind(install_id)
        .bind(name)
        .bind(language)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a template")?;
        row.as_ref()
            .map(decode)
            .transpose()
            .context("decoding a template")
    }

    /// Templates, optionally of one install and/or status, by name.
    pub async fn templates(
        &self,
        install_id: Option<&str>,
        status: Option<&str>,
    ) -> Result<Vec<TemplateRecord>, StorageError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM message_templates WHERE tenant_id = $1 \
             AND ($2 IS NULL OR install_id = $2) AND ($3 IS NULL OR status = $3) ORDER BY name, language"
        )))
        .bind(self.tenant_id().as_str())
        .bind(install_id)
        .bind(status)
        .fetch_all(self.storage().pool())
        .await
        .context("listing templates")?;
        rows.iter()
            .map(decode)
            .collect::<Result<_, _>>()
            .context("decoding templates")
    }

    /// Names (`name (language)`) of an install's approved templates, at most ten.
    pub async fn approved_template_names(
        &self,
        install_id: &str,
    ) -> Result<Vec<String>, StorageError> {
        let rows = sqlx::query(
            "SELECT name, language FROM message_templates WHERE tenant_id = $1 AND install_id = $2 \
             AND status = 'APPROVED' ORDER BY name, language LIMIT 10",
        )
        .bind(self.tenant_id().as_str())
        .bind(install_id)
        .fetch_all(self.storage().pool())
        .await
        .context("listing approved templates")?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get("name")?;
                let language: String = row.try_get("language")?;
                Ok(format!("{name} ({language})"))
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding approved templates")
    }

    /// Deletes a template; whether it existed.
    pub async fn delete_template(&self, id: &str) -> Result<bool, StorageError> {
        sqlx::query("DELETE FROM message_templates WHERE tenant_id = $1 AND id = $2")
            .bind(self.tenant_id().as_str())
            .bind(id)
            .execute(self.storage().pool())
            .await
            .context("deleting a template")
            .map(|result| result.rows_affected() > 0)
    }

    /// Records a submission: the provider's id and first status.
    pub async fn template_submitted(
        &self,
        id: &str,
        provider_id: &str,
        status: &str,
    ) -> Result<Option<TemplateRecord>, StorageError> {
        let now = now_ms();
        sqlx::query(
            "UPDATE message_templates SET provider_id = $1, status = $2, reason = NULL, submitted_at = $3, \
             updated_at = $3 WHERE tenant_id = $4 AND id = $5",
        )
        .bind(provider_id)
        .bind(status.to_ascii_uppercase())
        .bind(now)
        .bind(self.tenant_id().as_str())
        .bind(id)
        .execute(self.storage().pool())
        .await
        .context("recording a template submission")?;
        self.template(id).await
    }

    /// Applies a review state reported by the provider (webhook or polling) to the
    /// template with this name and language; the template if its state changed.
    ///
    /// A report without a reason keeps the reason of an unchanged state: polling does
    /// not carry reasons, and must neither erase a rejection reason a webhook gave nor
    /// count as a change. `REINSTATED` (Meta's event for a paused template approved
    /// again) is `APPROVED`.
    pub async fn set_template_status(
        &self,
        install_id: &str,
        name: &str,
        language: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<Option<TemplateRecord>, StorageError> {
        let mut status = status.to_ascii_uppercase();
        if status == "REINSTATED" {
            status = "APPROVED".into();
        }
        let reason = reason.filter(|reason| !reason.is_empty() && *reason != "NONE");
        let updated = sqlx::query(
            "UPDATE message_templates SET status = $1, \
             reason = CASE WHEN status = $1 AND $2 IS NULL THEN reason ELSE $2 END, updated_at = $3 \
             WHERE tenant_id = $4 AND install_id = $5 AND name = $6 AND language = $7 \
             AND status <> 'DRAFT' AND (status <> $1 OR ($2 IS NOT NULL AND COALESCE(reason, '') <> $2))",
        )
        .bind(&status)
        .bind(reason)
        .bind(now_ms())
        .bind(self.tenant_id().as_str())
        .bind(install_id)
        .bind(name)
        .bind(language)
        .execute(self.storage().pool())
        .await
        .context("updating a template's status")?
        .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        self.template_by_name(install_id, name, language).await
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::testing;
    use crate::template_model::TemplateSpec;

    /// The review state as webhooks and polling report it: a poll (no reason) keeps a
    /// webhook's rejection reason and is no change; a new state without a reason
    /// clears it; `REINSTATED` is `APPROVED`.
    #[tokio::test]
    async fn review_states_keep_their_reason_and_reinstated_is_approved() -> anyhow::Result<()> {
        for backend in testing::all_backends().await? {
            let label = backend.label;
            let tenant = backend.storage.create_tenant("Templates", "pro").await?;
            let db = backend.storage.tenant(&tenant.id);
            let spec: TemplateSpec = serde_json::from_value(serde_json::json!({
                "name": "order_update", "language": "en_US", "category": "UTILITY",
                "body": {"text": "Your order is on its way."}
            }))?;
            let created = db.create_template("i1", &spec).await?.expect("created");
            db.template_submitted(&created.id, "tpl-1", "PENDING")
                .await?
                .expect("submitted");
            let set = |status: &'static str, reason: Option<&'static str>| {
                let db = db.clone();
                async move {
                    db.set_template_status("i1", "order_update", "en_US", status, reason)
                        .await
                }
            };
            let rejected = set("REJECTED", Some("INVALID_FORMAT"))
                .await?
                .expect("change");
            assert_eq!(
                rejected.reason.as_deref(),
                Some("INVALID_FORMAT"),
                "{label}"
            );
            assert!(
                set("REJECTED", None).await?.is_none(),
                "{label}: a poll is no change"
            );
            let kept = db.template(&created.id).await?.expect("template");
            assert_eq!(kept.reason.as_deref(), Some("INVALID_FORMAT"), "{label}");
            let approved = set("APPROVED", None).await?.expect("change");
            assert_eq!(
                approved.reason, None,
                "{label}: a new state clears the reason"
            );
            let paused = set("PAUSED", Some("low quality")).await?.expect("change");
            assert_eq!(paused.status, "PAUSED", "{label}");
            let reinstated = set("REINSTATED", None).await?.expect("change");
            assert_eq!(
                (reinstated.status.as_str(), reinstated.reason.as_deref()),
                ("APPROVED", None),
                "{label}"
            );
        }
        Ok(())
    }
}
