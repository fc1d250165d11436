//! Consent: an append-only history per contact and channel. The current state of a
//! channel is its latest entry; nothing is ever updated or deleted (except with the
//! contact itself), so the history is the proof.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use super::{QueryContext, StorageError, TenantDb, now_ms};

/// Channels consent is recorded for.
pub const CONSENT_CHANNELS: [&str; 4] = ["whatsapp", "email", "sms", "social"];

/// One consent change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsentEntry {
    /// The channel (`whatsapp`, `email`, `sms`, `social`).
    pub channel: String,
    /// `opted_in` or `opted_out`.
    pub status: String,
    /// Where it came from (`api`, `import`, `keyword`, `form`, …).
    pub source: String,
    /// What proves it, if given.
    pub proof: Option<String>,
    /// When, Unix milliseconds.
    pub recorded_at: i64,
}

impl TenantDb {
    /// Appends a consent change for one of this tenant's contacts; `false` if the tenant
    /// has no such contact.
    pub async fn record_consent(
        &self,
        contact_id: &str,
        entry: &ConsentEntry,
    ) -> Result<bool, StorageError> {
        let before = if self.storage().contact_changes_watched() {
            self.current_consent(contact_id)
                .await?
                .get(&entry.channel)
                .map(|current| current.status.clone())
        } else {
            None
        };
        let result = sqlx::query(
            "INSERT INTO contact_consent (id, tenant_id, contact_id, channel, status, source, proof, recorded_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8 FROM contacts WHERE tenant_id = $2 AND id = $3",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(self.tenant_id().as_str())
        .bind(contact_id)
        .bind(&entry.channel)
        .bind(&entry.status)
        .bind(&entry.source)
        .bind(entry.proof.as_deref())
        .bind(if entry.recorded_at == 0 { now_ms() } else { entry.recorded_at })
        .execute(self.storage().pool())
        .await
        .context("recording consent")?;
        let recorded = result.rows_affected() > 0;
        if recorded && before.as_deref() != Some(entry.status.as_str()) {
            self.storage().report_contact_changes(
                self.tenant_id().as_str(),
                contact_id,
                [super::ContactChange::Consent {
                    channel: entry.channel.clone(),
                    status: entry.status.clone(),
                }],
            );
        }
        Ok(recorded)
    }

    /// Whether the contact's history on `channel` has an entry with exactly `proof`
    /// (a keyword message's consent change, recorded once however often it is
    /// delivered).
    pub async fn consent_recorded_with_proof(
        &self,
        contact_id: &str,
        channel: &str,
        proof: &str,
    ) -> Result<bool, StorageError> {
        let row = sqlx::query(
            "SELECT 1 AS found FROM contact_consent \
             WHERE tenant_id = $1 AND contact_id = $2 AND channel = $3 AND proof = $4 LIMIT 1",
        )
        .bind(self.tenant_id().as_str())
        .bind(contact_id)
        .bind(channel)
        .bind(proof)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading consent")?;
        Ok(row.is_some())
    }

    /// A contact's consent history, oldest first.
    pub async fn consent_history(
        &self,
        contact_id: &str,
    ) -> Result<Vec<ConsentEntry>, StorageError> {
        let rows = sqlx::query(
            "SELECT channel, status, source, proof, recorded_at FROM contact_consent \
             WHERE tenant_id = $1 AND contact_id = $2 ORDER BY id",
        )
        .bind(self.tenant_id().as_str())
        .bind(contact_id)
        .fetch_all(self.storage().pool())
        .await
        .context("reading consent")?;
        rows.iter()
            .map(|row| {
                Ok(ConsentEntry {
                    channel: row.try_get("channel")?,
                    status: row.try_get("status")?,
                    source: row.try_get("source")?,
                    proof: row.try_get("proof")?,
                    recorded_at: row.try_get("recorded_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding consent")
    }

    /// The current state per channel (the latest entry of each), from the history.
    pub async fn current_consent(
        &self,
        contact_id: &str,
    ) -> Result<BTreeMap<String, ConsentEntry>, StorageError> {
        let mut current = BTreeMap::new();
        for entry in self.consent_history(contact_id).await? {
            current.insert(entry.channel.clone(), entry);
        }
        Ok(current)
    }
}
