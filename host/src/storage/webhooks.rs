//! Tenants' webhook endpoints, deliveries and attempts (Standard Webhooks, sent by
//! `crate::webhooks`). Secrets are stored sealed (the caller seals and opens them).

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use super::{QueryContext, StorageError, TenantDb, now_ms};

/// A webhook endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// Its id.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// A note for humans.
    pub description: String,
    /// Event types it receives (`*` for all).
    pub events: Vec<String>,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// Why it was disabled (automatically after persistent failure, or by the tenant).
    pub disabled_reason: Option<String>,
    /// Since when every delivery failed, Unix ms.
    pub failing_since: Option<i64>,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Last changed, Unix ms.
    pub updated_at: i64,
    /// The sealed current secret (never serialized).
    #[serde(skip)]
    pub sealed_secret: String,
    /// The sealed previous secret during a rotation.
    #[serde(skip)]
    pub sealed_previous: Option<String>,
    /// Until when the previous secret still signs, Unix ms.
    #[serde(skip)]
    pub previous_expires_at: Option<i64>,
}

impl Endpoint {
    /// Whether the endpoint receives `event_type`.
    pub fn wants(&self, event_type: &str) -> bool {
        self.enabled
            && self
                .events
                .iter()
                .any(|event| event == "*" || event == event_type)
    }
}

/// One event delivered (or being delivered) to one endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// Its id (the `webhook-id` header).
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event type.
    pub event_type: String,
    /// The body sent.
    pub payload: Value,
    /// pending, delivered or failed.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due, Unix ms.
    pub next_attempt_at: Option<i64>,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Last changed, Unix ms.
    pub updated_at: i64,
    /// Its attempts, oldest first (filled on request).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attempt_log: Vec<Attempt>,
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// When, Unix ms.
    pub attempted_at: i64,
    /// The HTTP status the endpoint answered, if it answered.
    pub status_code: Option<i64>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i64,
}

const ENDPOINT_COLUMNS: &str = "id, url, description, events, enabled, disabled_reason, failing_since, \
     created_at, updated_at, secret, previous_secret, previous_expires_at";

fn decode_endpoint(row: &sqlx::any::AnyRow) -> Result<Endpoint, sqlx::Error> {
    let events: String = row.try_get("events")?;
    let enabled: i64 = row.try_get("enabled")?;
    Ok(Endpoint {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        events: serde_json::from_str(&events).unwrap_or_default(),
        enabled: enabled != 0,
        disabled_reason: row.try_get("disabled_reason")?,
        failing_since: row.try_get("failing_since")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        sealed_secret: row.try_get("secret")?,
        sealed_previous: row.try_get("previous_secret")?,
        previous_expires_at: row.try_get("previous_expires_at")?,
    })
}

const DELIVERY_COLUMNS: &str = "id, endpoint_id, event_type, payload, state, attempts, next_attempt_at, created_at, updated_at";

fn decode_delivery(row: &sqlx::any::AnyRow) -> Result<Delivery, sqlx::Error> {
    let payload: String = row.try_get("payload")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        event_type: row.try_get("event_type")?,
        payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        attempt_log: Vec::new(),
    })
}

impl TenantDb {
    /// Creates an endpoint.
    pub async fn create_endpoint(
        &self,
        url: &str,
        description: &str,
        events: &[String],
        sealed_secret: &str,
    ) -> Result<Endpoint, StorageError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, tenant_id, url, description, events, secret, enabled, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7)",
        )
        .bind(&id)
        .bind(self.tenant_id().as_str())
        .bind(url)
        .bind(description)
        .bind(serde_json::to_string(events).unwrap_or_else(|_| "[]".into()))
        .bind(sealed_secret)
        .bind(now)
        .execute(self.storage().pool())
        .await
        .context("creating a webhook endpoint")?;
        self.endpoint(&id).await?.ok_or(StorageError::Query {
            context: "reading a created endpoint",
            source: sqlx::Error::RowNotFound,
        })
    }

    /// One endpoint.
    pub async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, StorageError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(self.tenant_id().as_str())
        .bind(id)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a webhook endpoint")?;
        row.as_ref()
            .map(decode_endpoint)
            .transpose()
            .context("decoding a webhook endpoint")
    }

    /// All endpoints.
    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, StorageError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 ORDER BY id"
        )))
        .bind(self.tenant_id().as_str())
        .fetch_all(self.storage().pool())
        .await
        .context("listing webhook endpoints")?;
        rows.iter()
            .map(decode_endpoint)
            .collect::<Result<_, _>>()
            .context("decoding webhook endpoints")
    }

    /// Changes an endpoint's url, description, events or enabled flag.
    pub async fn update_endpoint(
        &self,
        id: &str,
        url: Option<&str>,
        description: Option<&str>,
        events: Option<&[String]>,
        enabled: Option<bool>,
    ) -> Result<Option<Endpoint>, StorageError> {
        let updated = sqlx::query(
            "UPDATE webhook_endpoints SET url = COALESCE($1, url), description = COALESCE($2, description), \
             events = COALESCE($3, events), enabled = COALESCE($4, enabled), \
             disabled_reason = CASE WHEN $4 = 1 THEN NULL WHEN $4 = 0 THEN 'disabled by the tenant' ELSE disabled_reason END, \
             failing_since = CASE WHEN $4 = 1 THEN NULL ELSE failing_since END, updated_at = $5 \
             WHERE tenant_id = $6 AND id = $7",
        )
        .bind(url)
        .bind(description)
        .bind(events.map(|events| serde_json::to_string(events).unwrap_or_else(|_| "[]".into())))
        .bind(enabled.map(i64::from))
        .bind(now_ms())
        .bind(self.tenant_id().as_str())
        .bind(id)
        .execute(self.storage().pool())
        .await
        .context("updating a webhook endpoint")?
        .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        self.endpoint(id).await
    }

    /// Replaces an endpoint's secret; the old one keeps signing until `previous_until`.
    pub async fn rotate_endpoint_secret(
        &self,
        id: &str,
        sealed_secret: &str,
        previous_until: i64,
    ) -> Result<Option<Endpoint>, StorageError> {
        let updated = sqlx::query(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_expires_at = $1, secret = $2, \
             updated_at = $3 WHERE tenant_id = $4 AND id = $5",
        )
        .bind(previous_until)
        .bind(sealed_secret)
        .bind(now_ms())
        .bind(self.tenant_id().as_str())
        .bind(id)
        .execute(self.storage().pool())
        .await
        .context("rotating a webhook secret")?
        .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        self.endpoint(id).await
    }

    /// Deletes an endpoint and its deliveries; whether it existed.
    pub async fn delete_endpoint(&self, id: &str) -> Result<bool, StorageError> {
        let tenant = self.tenant_id().as_str();
        let deleted = sqlx::query("DELETE FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(self.storage().pool())
            .await
            .context("deleting a webhook endpoint")?
            .rows_affected();
        sqlx::query(
            "DELETE FROM webhook_attempts WHERE tenant_id = $1 AND delivery_id IN \
             (SELECT id FROM webhook_deliveries WHERE tenant_id = $1 AND endpoint_id = $2)",
        )
        .bind(tenant)
        .bind(id)
        .execute(self.storage().pool())
        .await
        .context("deleting webhook attempts")?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE tenant_id = $1 AND endpoint_id = $2")
            .bind(tenant)
            .bind(id)
            .execute(self.storage().pool())
            .await
            .context("deleting webhook deliveries")?;
        Ok(deleted > 0)
    }

    /// Records an endpoint's failure streak start (if not started) or its end.
    pub async fn set_endpoint_failing(&self, id: &str, failing: bool) -> Result<(), StorageError> {
        let sql = if failing {
            "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $1) WHERE tenant_id = $2 AND id = $3"
        } else {
            "UPDATE webhook_endpoints SET failing_since = NULL WHERE tenant_id = $2 AND id = $3 AND $1 = $1"
        };
        sqlx::query(sql)
            .bind(now_ms())
            .bind(self.tenant_id().as_str())
            .bind(id)
            .execute(self.storage().pool())
            .await
            .context("recording an endpoint's failures")
            .map(drop)
    }

    /// Disables an endpoint with a reason.
    pub async fn disable_endpoint(&self, id: &str, reason: &str) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = $1, updated_at = $2 \
             WHERE tenant_id = $3 AND id = $4",
        )
        .bind(reason)
        .bind(now_ms())
        .bind(self.tenant_id().as_str())
        .bind(id)
        .execute(self.storage().pool())
        .await
        .context("disabling a webhook endpoint")
        .map(drop)
    }

    /// Creates the delivery row if it is new; the delivery.
    pub async fn ensure_delivery(
        &self,
        id: &str,
        endpoint_id: &str,
        event_type: &str,
        payload: &Value,
    ) -> Result<Delivery, StorageError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, state, attempts, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(self.tenant_id().as_str())
        .bind(endpoint_id)
        .bind(event_type)
        .bind(payload.to_string())
        .bind(now)
        .execute(self.storage().pool())
        .await
        .context("recording a webhook delivery")?;
        self.delivery(id).await?.ok_or(StorageError::Query {
            context: "reading a webhook delivery",
            source: sqlx::Error::RowNotFound,
        })
    }

    /// One delivery with its attempts.
    pub async fn delivery(&self, id: &str) -> Result<Option<Delivery>, StorageError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(self.tenant_id().as_str())
        .bind(id)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a webhook delivery")?;
        let Some(mut delivery) = row
            .as_ref()
            .map(decode_delivery)
            .transpose()
            .context("decoding a webhook delivery")?
        else {
            return Ok(None);
        };
        delivery.attempt_log = self.attempts(id).await?;
        Ok(Some(delivery))
    }

    async fn attempts(&self, delivery_id: &str) -> Result<Vec<Attempt>, StorageError> {
        let rows = sqlx::query(
            "SELECT attempted_at, status_code, error, duration_ms FROM webhook_attempts \
             WHERE tenant_id = $1 AND delivery_id = $2 ORDER BY attempted_at, id",
        )
        .bind(self.tenant_id().as_str())
        .bind(delivery_id)
        .fetch_all(self.storage().pool())
        .await
        .context("reading webhook attempts")?;
        rows.iter()
            .map(|row| {
                Ok(Attempt {
                    attempted_at: row.try_get("attempted_at")?,
                    status_code: row.try_get("status_code")?,
                    error: row.try_get("error")?,
                    duration_ms: row.try_get("duration_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding webhook attempts")
    }

    /// An endpoint's deliveries, newest first, with their attempts.
    pub async fn deliveries(
        &self,
        endpoint_id: &str,
        limit: i64,
    ) -> Result<Vec<Delivery>, StorageError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE tenant_id = $1 AND endpoint_id = $2 \
             ORDER BY created_at DESC, id DESC LIMIT $3"
        )))
        .bind(self.tenant_id().as_str())
        .bind(endpoint_id)
        .bind(limit)
        .fetch_all(self.storage().pool())
        .await
        .context("listing webhook deliveries")?;
        let mut deliveries = rows
            .iter()
            .map(decode_delivery)
            .collect::<Result<Vec<_>, _>>()
            .context("decoding webhook deliveries")?;
        for delivery in &mut deliveries {
            delivery.attempt_log = self.attempts(&delivery.id).await?;
        }
        Ok(deliveries)
    }

    /// Records one attempt and the delivery's new state.
    pub async fn record_attempt(
        &self,
        delivery_id: &str,
        attempt: &Attempt,
        state: &str,
        next_attempt_at: Option<i64>,
    ) -> Result<(), StorageError> {
        let tenant = self.tenant_id().as_str();
        sqlx::query(
            "INSERT INTO webhook_attempts (id, tenant_id, delivery_id, attempted_at, status_code, error, duration_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(tenant)
        .bind(delivery_id)
        .bind(attempt.attempted_at)
        .bind(attempt.status_code)
        .bind(attempt.error.as_deref())
        .bind(attempt.duration_ms)
        .execute(self.storage().pool())
        .await
        .context("recording a webhook attempt")?;
        sqlx::query(
            "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, next_attempt_at = $2, updated_at = $3 \
             WHERE tenant_id = $4 AND id = $5",
        )
        .bind(state)
        .bind(next_attempt_at)
        .bind(now_ms())
        .bind(tenant)
        .bind(delivery_id)
        .execute(self.storage().pool())
        .await
        .context("updating a webhook delivery")
        .map(drop)
    }
}
