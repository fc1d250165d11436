//! Campaigns: the campaign rows, their variants and one row per recipient the audience
//! reached (`campaign_recipients`, unique per campaign and contact). The fan-out writes
//! each batch of recipients, their send jobs and how far it got in one transaction, so a
//! crash at any point leaves either the whole batch or none of it, and a re-run adds no
//! duplicate (`ON CONFLICT DO NOTHING`, jobs by idempotency key). Statistics are computed
//! from the recipients joined with their messages (status, delivery times) and the
//! inbound messages of the same conversation (replies).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use super::filter_sql::{Bind, Sql};
use super::jobs::insert_job;
use super::{NewJob, QueryContext, StorageError, TenantDb, now_ms};
use crate::segments::Expr;

/// A campaign as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Campaign {
    /// The campaign's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The channel install it sends through.
    pub install_id: String,
    /// The install's channel (`whatsapp`, …): consent is checked for it.
    pub channel: String,
    /// `marketing` (the only purpose for now).
    pub purpose: String,
    /// `{"segments": [...], "tags": [...], "exclude": {"segments": [...], "tags": [...]}}`.
    pub audience: Value,
    /// When a scheduled campaign starts, Unix milliseconds (UTC).
    pub schedule_at: Option<i64>,
    /// Most sends per minute, if limited.
    pub throttle_per_minute: Option<i64>,
    /// `{"start": "HH:MM", "end": "HH:MM"}` in each recipient's time zone, if any.
    pub quiet_hours: Option<Value>,
    /// A reply within this long after a send counts for the campaign, milliseconds.
    pub reply_window_ms: i64,
    /// The A/B test: `{"test_percent", "metric", "duration_seconds"}`, if any.
    pub ab: Option<Value>,
    /// The A/B decision (winner, rule, numbers) once taken.
    pub ab_decision: Option<Value>,
    /// draft | scheduled | running | paused | completed | cancelled.
    pub status: String,
    /// Why the campaign paused itself, if it did.
    pub status_reason: Option<String>,
    /// The last contact id the fan-out materialised.
    #[serde(skip)]
    pub fanout_cursor: Option<String>,
    /// Whether every audience contact has a recipient row.
    pub fanout_done: bool,
    /// Grows on every resume (keys of the jobs a resume queues).
    #[serde(skip)]
    pub generation: i64,
    /// When it started running.
    pub started_at: Option<i64>,
    /// When it completed or was cancelled.
    pub finished_at: Option<i64>,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// What is sent, in order (`A`, `B`, …).
    pub variants: Vec<Variant>,
}

/// One variant: a template and the sources of its variables.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Variant {
    /// `A`, `B`, … (position order).
    pub name: String,
    /// The template's name.
    pub template_name: String,
    /// Its language.
    pub template_language: String,
    /// `{"body": [source, …], "header": source, "buttons": {"0": source}}`.
    pub variables: Value,
}

/// A recipient row to write.
#[derive(Debug, Clone)]
pub struct NewRecipient {
    /// The contact.
    pub contact_id: String,
    /// Its variant (`None` for the A/B remainder until the winner is known).
    pub variant: Option<String>,
    /// In the A/B test share.
    pub test_group: bool,
    /// held | queued | skipped.
    pub state: &'static str,
    /// Why skipped.
    pub skip_reason: Option<String>,
}

/// A recipient as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipient {
    /// The contact.
    pub contact_id: String,
    /// Its variant.
    pub variant: Option<String>,
    /// In the A/B test share.
    pub test_group: bool,
    /// held | queued | skipped | sent | failed | cancelled.
    pub state: String,
    /// Why skipped.
    pub skip_reason: Option<String>,
    /// The message handed to the outbox.
    pub message_id: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Counts of one group of recipients (a variant, a state, a skip reason) with what
/// became of their messages.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RecipientCounts {
    /// The variant (`None`: not assigned yet, or skipped before assignment).
    pub variant: Option<String>,
    /// The recipients' state.
    pub state: String,
    /// Their skip reason.
    pub skip_reason: Option<String>,
    /// In the A/B test share.
    pub test_group: bool,
    /// How many.
    pub recipients: i64,
    /// Messages the provider took (accepted or later, including later failures).
    pub accepted: i64,
    /// Messages still waiting in the outbox.
    pub pending: i64,
    /// Delivered (or read).
    pub delivered: i64,
    /// Read.
    pub read: i64,
    /// With an inbound message from the recipient within the reply window.
    pub replied: i64,
    /// Messages that failed.
    pub failed: i64,
}

/// One row of the per-recipient export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportRow {
    /// The recipient.
    pub recipient: Recipient,
    /// The contact's name.
    pub name: Option<String>,
    /// The contact's phone.
    pub phone: Option<String>,
    /// The message's status.
    pub message_status: Option<String>,
    /// The message's error (JSON text).
    pub message_error: Option<String>,
    /// (status, recorded at) in order.
    pub history: Vec<(String, i64)>,
}

const CAMPAIGN_COLUMNS: &str = "id, name, install_id, channel, purpose, audience, schedule_at, \
     throttle_per_minute, quiet_hours, reply_window_ms, ab, ab_decision, status, status_reason, \
     fanout_cursor, fanout_done, generation, started_at, finished_at, created_at, updated_at";

fn json_text(row: &sqlx::any::AnyRow, name: &str) -> Result<Option<Value>, sqlx::Error> {
    let text: Option<String> = row.try_get(name)?;
    Ok(text.and_then(|text| serde_json::from_str(&text).ok()))
}

fn decode_campaign(row: &sqlx::any::AnyRow) -> Result<Campaign, sqlx::Error> {
    let fanout_done: i64 = row.try_get("fanout_done")?;
    Ok(Campaign {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        install_id: row.try_get("install_id")?,
        channel: row.try_get("channel")?,
        purpose: row.try_get("purpose")?,
        audience: json_text(row, "audience")?.unwrap_or(Value::Null),
        schedule_at: row.try_get("schedule_at")?,
        throttle_per_minute: row.try_get("throttle_per_minute")?,
        quiet_hours: json_text(row, "quiet_hours")?,
        reply_window_ms: row.try_get("reply_window_ms")?,
        ab: json_text(row, "ab")?,
        ab_decision: json_text(row, "ab_decision")?,
        status: row.try_get("status")?,
        status_reason: row.try_get("status_reason")?,
        fanout_cursor: row.try_get("fanout_cursor")?,
        fanout_done: fanout_done != 0,
        generation: row.try_get("generation")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        variants: Vec::new(),
    })
}

fn decode_recipient(row: &sqlx::any::AnyRow) -> Result<Recipient, sqlx::Error> {
    let test_group: i64 = row.try_get("test_group")?;
    Ok(Recipient {
        contact_id: row.try_get("contact_id")?,
        variant: row.try_get("variant")?,
        test_group: test_group != 0,
        state: row.try_get("state")?,
        skip_reason: row.try_get("skip_reason")?,
        message_id: row.try_get("message_id")?,
        error: row.try_get("error")?,
    })
}

/// A `RECIPIENT_COLUMNS` row on the direct SQLite path.
fn decode_recipient_direct(row: &rusqlite::Row<'_>) -> rusqlite::Result<Recipient> {
    Ok(Recipient {
        contact_id: row.get(0)?,
        variant: row.get(1)?,
        test_group: row.get::<_, i64>(2)? != 0,
        state: row.get(3)?,
        skip_reason: row.get(4)?,
        message_id: row.get(5)?,
        error: row.get(6)?,
    })
}

const RECIPIENT_COLUMNS: &str =
    "r.contact_id, r.variant, r.test_group, r.state, r.skip_reason, r.message_id, r.error";

fn optional_json(value: Option<&Value>) -> Option<String> {
    value.map(Value::to_string)
}

impl TenantDb {
    /// Saves a new campaign with its variants.
    pub async fn create_campaign(&self, campaign: &Campaign) -> Result<(), StorageError> {
        let result: Result<(), sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            sqlx::query(
                "INSERT INTO campaigns (id, tenant_id, name, install_id, channel, purpose, audience, \
                 schedule_at, throttle_per_minute, quiet_hours, reply_window_ms, ab, status, \
                 created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)",
            )
            .bind(&campaign.id)
            .bind(self.tenant_id().as_str())
            .bind(&campaign.name)
            .bind(&campaign.install_id)
            .bind(&campaign.channel)
            .bind(&campaign.purpose)
            .bind(campaign.audience.to_string())
            .bind(campaign.schedule_at)
            .bind(campaign.throttle_per_minute)
            .bind(optional_json(campaign.quiet_hours.as_ref()))
            .bind(campaign.reply_window_ms)
            .bind(optional_json(campaign.ab.as_ref()))
            .bind(&campaign.status)
            .bind(campaign.created_at)
            .execute(&mut *tx)
            .await?;
            self.write_variants(&mut tx, &campaign.id, &campaign.variants)
                .await?;
            tx.commit().await
        }
        .await;
        result.context("creating a campaign")
    }

    async fn write_variants(
        &self,
        tx: &mut sqlx::AnyConnection,
        campaign_id: &str,
        variants: &[Variant],
    ) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM campaign_variants WHERE tenant_id = $1 AND campaign_id = $2")
            .bind(self.tenant_id().as_str())
            .bind(campaign_id)
            .execute(&mut *tx)
            .await?;
        for (position, variant) in variants.iter().enumerate() {
            sqlx::query(
                "INSERT INTO campaign_variants (tenant_id, campaign_id, position, name, template_name, \
                 template_language, variables) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(self.tenant_id().as_str())
            .bind(campaign_id)
            .bind(i64::try_from(position).unwrap_or(0))
            .bind(&variant.name)
            .bind(&variant.template_name)
            .bind(&variant.template_language)
            .bind(variant.variables.to_string())
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    /// Replaces a campaign's definition while it is a draft or scheduled; `false` when it
    /// is not (any more) in one of those states.
    pub async fn replace_campaign(&self, campaign: &Campaign) -> Result<bool, StorageError> {
        let result: Result<bool, sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            let updated = sqlx::query(
                "UPDATE campaigns SET name = $1, install_id = $2, channel = $3, audience = $4, \
                 throttle_per_minute = $5, quiet_hours = $6, reply_window_ms = $7, ab = $8, \
                 updated_at = $9 WHERE tenant_id = $10 AND id = $11 AND status IN ('draft', 'scheduled')",
            )
            .bind(&campaign.name)
            .bind(&campaign.install_id)
            .bind(&campaign.channel)
            .bind(campaign.audience.to_string())
            .bind(campaign.throttle_per_minute)
            .bind(optional_json(campaign.quiet_hours.as_ref()))
            .bind(campaign.reply_window_ms)
            .bind(optional_json(campaign.ab.as_ref()))
            .bind(now_ms())
            .bind(self.tenant_id().as_str())
            .bind(&campaign.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                return Ok(false);
            }
            self.write_variants(&mut tx, &campaign.id, &campaign.variants)
                .await?;
            tx.commit().await?;
            Ok(true)
        }
        .await;
        result.context("changing a campaign")
    }

    /// One of this tenant's campaigns with its variants.
    pub async fn campaign(&self, id: &str) -> Result<Option<Campaign>, StorageError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(self.tenant_id().as_str())
        .bind(id)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a campaign")?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut campaign = decode_campaign(&row).context("decoding a campaign")?;
        campaign.variants = self.campaign_variants(id).await?;
        Ok(Some(campaign))
    }

    async fn campaign_variants(&self, campaign_id: &str) -> Result<Vec<Variant>, StorageError> {
        let rows = sqlx::query(
            "SELECT name, template_name, template_language, variables FROM campaign_variants \
             WHERE tenant_id = $1 AND campaign_id = $2 ORDER BY position",
        )
        .bind(self.tenant_id().as_str())
        .bind(campaign_id)
        .fetch_all(self.storage().pool())
        .await
        .context("reading campaign variants")?;
        rows.iter()
            .map(|row| {
                Ok(Variant {
                    name: row.try_get("name")?,
                    template_name: row.try_get("template_name")?,
                    template_language: row.try_get("template_language")?,
                    variables: json_text(row, "variables")?.unwrap_or(Value::Null),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding campaign variants")
    }

    /// This tenant's campaigns, newest first.
    pub async fn campaigns(&self) -> Result<Vec<Campaign>, StorageError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC"
        )))
        .bind(self.tenant_id().as_str())
        .fetch_all(self.storage().pool())
        .await
        .context("listing campaigns")?;
        let mut campaigns = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut campaign = decode_campaign(row).context("decoding a campaign")?;
            campaign.variants = self.campaign_variants(&campaign.id).await?;
            campaigns.push(campaign);
        }
        Ok(campaigns)
    }

    /// Deletes a campaign that is not scheduled, running or paused (with its variants and
    /// recipients); whether it was deleted.
    pub async fn delete_campaign(&self, id: &str) -> Result<bool, StorageError> {
        let result: Result<bool, sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            let deleted = sqlx::query(
                "DELETE FROM campaigns WHERE tenant_id = $1 AND id = $2 \
                 AND status IN ('draft', 'completed', 'cancelled')",
            )
            .bind(self.tenant_id().as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if deleted > 0 {
                for table in ["campaign_variants", "campaign_recipients"] {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM {table} WHERE tenant_id = $1 AND campaign_id = $2"
                    )))
                    .bind(self.tenant_id().as_str())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
            Ok(deleted > 0)
        }
        .await;
        result.context("deleting a campaign")
    }

    /// Moves a campaign from one of `from` to `to` (with `reason`); whether it moved.
    /// Starting stamps `started_at` once; completing or cancelling stamps `finished_at`.
    pub async fn transition_campaign(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        reason: Option<&str>,
    ) -> Result<bool, StorageError> {
        self.transition_campaign_with_jobs(id, from, to, reason, None, &[])
            .await
    }

    /// As [`transition_campaign`](Self::transition_campaign), and in the same
    /// transaction queues `jobs` and, with `generation = Some(g)`, moves the campaign from
    /// generation `g` to `g + 1` (refusing if it is not at `g`): a status change and the
    /// jobs that carry it out are committed together or not at all.
    pub async fn transition_campaign_with_jobs(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        reason: Option<&str>,
        generation: Option<i64>,
        jobs: &[NewJob],
    ) -> Result<bool, StorageError> {
        let mut sql = Sql::new("UPDATE campaigns SET status = ");
        let to_param = sql.bind(Bind::Text(to.to_string()));
        sql.push(&to_param);
        let reason = sql.bind(Bind::Text(reason.unwrap_or_default().to_string()));
        let now = sql.bind(Bind::Int(now_ms()));
        sql.push(&format!(
            ", status_reason = NULLIF({reason}, ''), updated_at = {now}, \
             started_at = CASE WHEN {to_param} = 'running' AND started_at IS NULL THEN {now} ELSE started_at END, \
             finished_at = CASE WHEN {to_param} IN ('completed', 'cancelled') THEN {now} ELSE finished_at END \
             WHERE tenant_id = "
        ));
        let tenant = sql.bind(Bind::Text(self.tenant_id().as_str().to_string()));
        sql.push(&tenant);
        let id = sql.bind(Bind::Text(id.to_string()));
        sql.push(&format!(" AND id = {id} AND status IN ("));
        for (index, state) in from.iter().enumerate() {
            if index > 0 {
                sql.push(", ");
            }
            let state = sql.bind(Bind::Text((*state).to_string()));
            sql.push(&state);
        }
        sql.push(")");
        if let Some(generation) = generation {
            let current = sql.bind(Bind::Int(generation));
            sql.push(&format!(" AND generation = {current}"));
            sql.text = sql.text.replacen(
                "SET status = ",
                "SET generation = generation + 1, status = ",
                1,
            );
        }
        let result: Result<bool, sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            let moved = sql.into_query().execute(&mut *tx).await?.rows_affected();
            if moved == 0 {
                return Ok(false);
            }
            for job in jobs {
                insert_job(&mut *tx, job).await?;
            }
            tx.commit().await?;
            Ok(true)
        }
        .await;
        result.context("changing a campaign's status")
    }

    /// Schedules a draft or scheduled campaign at `at`; whether it was one.
    pub async fn schedule_campaign(&self, id: &str, at: i64) -> Result<bool, StorageError> {
        let updated = sqlx::query(
            "UPDATE campaigns SET status = 'scheduled', schedule_at = $1, updated_at = $2 \
             WHERE tenant_id = $3 AND id = $4 AND status IN ('draft', 'scheduled')",
        )
        .bind(at)
        .bind(now_ms())
        .bind(self.tenant_id().as_str())
        .bind(id)
        .execute(self.storage().pool())
        .await
        .context("scheduling a campaign")?
        .rows_affected();
        Ok(updated > 0)
    }

    /// Writes one fan-out batch in one transaction: the recipients (existing ones are
    /// kept as they are), the jobs (existing keys are kept), and how far the fan-out got
    /// — only while the campaign is `running`: `false` (nothing written) once it was
    /// paused or cancelled, so a cancel cannot leave recipients queued behind it. The
    /// campaign row is updated first: on PostgreSQL a concurrent pause or cancel waits
    /// for this batch or this batch sees it.
    pub async fn record_fanout_batch(
        &self,
        campaign_id: &str,
        recipients: &[NewRecipient],
        jobs: &[NewJob],
        cursor: Option<&str>,
        done: bool,
    ) -> Result<bool, StorageError> {
        const INSERT_RECIPIENT: &str = "INSERT INTO campaign_recipients (tenant_id, campaign_id, contact_id, variant, test_group, \
             state, skip_reason, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
             ON CONFLICT (campaign_id, contact_id) DO NOTHING";
        const MOVE_CURSOR: &str = "UPDATE campaigns SET fanout_cursor = COALESCE($1, fanout_cursor), fanout_done = $2, \
             updated_at = $3 WHERE tenant_id = $4 AND id = $5 AND status = 'running'";
        if let Some(writer) = self.storage().sqlite_writer() {
            // The SQLite file path: one closure on the group-commit writer (statements
            // prepared once) instead of a channel hop per row.
            let (tenant, campaign, recipients, jobs, cursor) = (
                self.tenant_id().as_str().to_string(),
                campaign_id.to_string(),
                recipients.to_vec(),
                jobs.to_vec(),
                cursor.map(str::to_string),
            );
            return writer
                .write(move |c| {
                    use super::sqlite_writer::exec;
                    let now = now_ms();
                    let running = exec(
                        c,
                        MOVE_CURSOR,
                        &[&cursor, &i64::from(done), &now, &tenant, &campaign],
                    )? == 1;
                    if !running {
                        return Ok(false);
                    }
                    for recipient in &recipients {
                        exec(
                            c,
                            INSERT_RECIPIENT,
                            &[
                                &tenant,
                                &campaign,
                                &recipient.contact_id,
                                &recipient.variant,
                                &i64::from(recipient.test_group),
                                &recipient.state,
                                &recipient.skip_reason,
                                &now,
                            ],
                        )?;
                    }
                    for job in &jobs {
                        super::jobs::insert_job_direct(c, job)?;
                    }
                    Ok(true)
                })
                .await
                .map_err(|message| StorageError::Direct {
                    context: "recording a campaign fan-out batch",
                    message,
                });
        }
        let result: Result<bool, sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            let now = now_ms();
            let running = sqlx::query(MOVE_CURSOR)
                .bind(cursor)
                .bind(i64::from(done))
                .bind(now)
                .bind(self.tenant_id().as_str())
                .bind(campaign_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if !running {
                return Ok(false);
            }
            for recipient in recipients {
                sqlx::query(INSERT_RECIPIENT)
                    .bind(self.tenant_id().as_str())
                    .bind(campaign_id)
                    .bind(&recipient.contact_id)
                    .bind(recipient.variant.as_deref())
                    .bind(i64::from(recipient.test_group))
                    .bind(recipient.state)
                    .bind(recipient.skip_reason.as_deref())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            for job in jobs {
                insert_job(&mut *tx, job).await?;
            }
            tx.commit().await?;
            Ok(true)
        }
        .await;
        result.context("recording a campaign fan-out batch")
    }

    /// How many of a campaign's recipients are in `state`.
    pub async fn campaign_recipient_count(
        &self,
        campaign_id: &str,
        state: &str,
    ) -> Result<u64, StorageError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM campaign_recipients WHERE tenant_id = $1 AND campaign_id = $2 AND state = $3",
        )
        .bind(self.tenant_id().as_str())
        .bind(campaign_id)
        .bind(state)
        .fetch_one(self.storage().pool())
        .await
        .context("counting campaign recipients")?;
        let count: i64 = row.try_get("n").context("counting campaign recipients")?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The recipients of a send batch, in the order of `contact_ids` (ids that are not
    /// recipients are left out), each with its contact when it is still queued (`None`:
    /// the contact was deleted). On the direct SQLite path it is one snapshot read.
    pub async fn campaign_send_batch(
        &self,
        campaign_id: &str,
        contact_ids: &[String],
    ) -> Result<Vec<(Recipient, Option<super::Contact>)>, StorageError> {
        let tenant = self.tenant_id().as_str();
        let sql = recipient_sql();
        if let Some(found) = self.storage().read_direct(|c| {
            let transaction = c.unchecked_transaction()?;
            let mut recipients = Vec::with_capacity(contact_ids.len());
            for contact_id in contact_ids {
                recipients.extend(
                    super::sqlite_writer::query(
                        &transaction,
                        &sql,
                        &[&tenant, &campaign_id, contact_id],
                        decode_recipient_direct,
                    )?
                    .pop(),
                );
            }
            // The contacts of the queued ones, in one read.
            let queued: Vec<&str> = recipients
                .iter()
                .filter(|recipient| recipient.state == "queued")
                .map(|recipient| recipient.contact_id.as_str())
                .collect();
            let mut contacts: HashMap<String, super::Contact> =
                super::contacts::read_contacts_in(&transaction, tenant, &queued)?
                    .into_iter()
                    .map(|contact| (contact.id.clone(), contact))
                    .collect();
            transaction.commit()?;
            Ok(recipients
                .into_iter()
                .map(|recipient| {
                    // Only queued recipients' contacts were read.
                    let contact = contacts.remove(&recipient.contact_id);
                    (recipient, contact)
                })
                .collect())
        }) {
            return Ok(found);
        }
        let mut batch = Vec::with_capacity(contact_ids.len());
        for contact_id in contact_ids {
            let Some(recipient) = self.campaign_recipient(campaign_id, contact_id).await? else {
                continue;
            };
            let contact = if recipient.state == "queued" {
                self.get_contact(contact_id).await?
            } else {
                None
            };
            batch.push((recipient, contact));
        }
        Ok(batch)
    }

    /// One recipient of a campaign.
    pub async fn campaign_recipient(
        &self,
        campaign_id: &str,
        contact_id: &str,
    ) -> Result<Option<Recipient>, StorageError> {
        let tenant = self.tenant_id().as_str();
        if let Some(mut found) = self.storage().read_direct(|c| {
            super::sqlite_writer::query(
                c,
                &recipient_sql(),
                &[&tenant, &campaign_id, &contact_id],
                decode_recipient_direct,
            )
        }) {
            return Ok(found.pop());
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(recipient_sql()))
            .bind(self.tenant_id().as_str())
            .bind(campaign_id)
            .bind(contact_id)
            .fetch_optional(self.storage().pool())
            .await
            .context("reading a campaign recipient")?;
        row.as_ref()
            .map(decode_recipient)
            .transpose()
            .context("decoding a campaign recipient")
    }

    /// Ends a queued recipient: `sent` (with its message), `skipped` (with a reason) or
    /// `failed` (with an error). Whether it was still queued.
    pub async fn finish_campaign_recipient(
        &self,
        campaign_id: &str,
        contact_id: &str,
        state: &str,
        skip_reason: Option<&str>,
        message_id: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool, StorageError> {
        // One of the hot writes: take this process's SQLite write turn (see `WriteTx`).
        let _turn = self.storage().write_turn().await;
        let updated = sqlx::query(
            "UPDATE campaign_recipients SET state = $1, skip_reason = $2, message_id = $3, error = $4, \
             updated_at = $5 WHERE tenant_id = $6 AND campaign_id = $7 AND contact_id = $8 AND state = 'queued'",
        )
        .bind(state)
        .bind(skip_reason)
        .bind(message_id)
        .bind(error)
        .bind(now_ms())
        .bind(self.tenant_id().as_str())
        .bind(campaign_id)
        .bind(contact_id)
        .execute(self.storage().pool())
        .await
        .context("recording a campaign recipient's outcome")?
        .rows_affected();
        Ok(updated > 0)
    }

    /// Marks every recipient still held or queued as cancelled; how many.
    pub async fn cancel_campaign_recipients(&self, campaign_id: &str) -> Result<u64, StorageError> {
        let updated = sqlx::query(
            "UPDATE campaign_recipients SET state = 'cancelled', updated_at = $1 \
             WHERE tenant_id = $2 AND campaign_id = $3 AND state IN ('queued', 'held')",
        )
        .bind(now_ms())
        .bind(self.tenant_id().as_str())
        .bind(campaign_id)
        .execute(self.storage().pool())
        .await
        .context("cancelling campaign recipients")?
        .rows_affected();
        Ok(updated)
    }

    /// Up to `limit` recipients in `state` with contact ids after `after`, in id order.
    pub async fn campaign_recipients_in(
        &self,
        campaign_id: &str,
        state: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Recipient>, StorageError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RECIPIENT_COLUMNS} FROM campaign_recipients r WHERE r.tenant_id = $1 \
             AND r.campaign_id = $2 AND r.state = $3 AND r.contact_id > $4 ORDER BY r.contact_id LIMIT $5"
        )))
        .bind(self.tenant_id().as_str())
        .bind(campaign_id)
        .bind(state)
        .bind(after)
        .bind(limit)
        .fetch_all(self.storage().pool())
        .await
        .context("listing campaign recipients")?;
        rows.iter()
            .map(decode_recipient)
            .collect::<Result<_, _>>()
            .context("decoding campaign recipients")
    }

    /// Queues held recipients with `variant` and their send jobs, in one transaction.
    pub async fn release_held_recipients(
        &self,
        campaign_id: &str,
        contact_ids: &[String],
        variant: &str,
        jobs: &[NewJob],
    ) -> Result<(), StorageError> {
        let result: Result<(), sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            let now = now_ms();
            for contact_id in contact_ids {
                sqlx::query(
                    "UPDATE campaign_recipients SET state = 'queued', variant = $1, updated_at = $2 \
                     WHERE tenant_id = $3 AND campaign_id = $4 AND contact_id = $5 AND state = 'held'",
                )
                .bind(variant)
                .bind(now)
                .bind(self.tenant_id().as_str())
                .bind(campaign_id)
                .bind(contact_id)
                .execute(&mut *tx)
                .await?;
            }
            for job in jobs {
                insert_job(&mut *tx, job).await?;
            }
            tx.commit().await
        }
        .await;
        result.context("releasing held campaign recipients")
    }

    /// Enqueues jobs in one transaction (existing keys are kept).
    pub async fn enqueue_campaign_jobs(&self, jobs: &[NewJob]) -> Result<(), StorageError> {
        let result: Result<(), sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            for job in jobs {
                insert_job(&mut *tx, job).await?;
            }
            tx.commit().await
        }
        .await;
        result.context("queueing campaign jobs")
    }

    /// Records the A/B decision once; whether this call recorded it.
    pub async fn record_ab_decision(
        &self,
        campaign_id: &str,
        decision: &Value,
    ) -> Result<bool, StorageError> {
        let updated = sqlx::query(
            "UPDATE campaigns SET ab_decision = $1, updated_at = $2 \
             WHERE tenant_id = $3 AND id = $4 AND ab_decision IS NULL",
        )
        .bind(decision.to_string())
        .bind(now_ms())
        .bind(self.tenant_id().as_str())
        .bind(campaign_id)
        .execute(self.storage().pool())
        .await
        .context("recording an A/B decision")?
        .rows_affected();
        Ok(updated > 0)
    }

    /// Recipients grouped by variant, test share, state and skip reason, with what their
    /// messages did; a reply is an inbound message in the same conversation within
    /// `reply_window_ms` after the message was queued.
    pub async fn campaign_counts(
        &self,
        campaign_id: &str,
        reply_window_ms: i64,
    ) -> Result<Vec<RecipientCounts>, StorageError> {
        let rows = sqlx::query(
            "SELECT r.variant, r.test_group, r.state, r.skip_reason, COUNT(*) AS n, \
             CAST(COALESCE(SUM(CASE WHEN m.status_rank BETWEEN 1 AND 4 OR (m.status_rank = 9 AND m.sent_at IS NOT NULL) THEN 1 ELSE 0 END), 0) AS BIGINT) AS accepted, \
             CAST(COALESCE(SUM(CASE WHEN m.status_rank = 0 THEN 1 ELSE 0 END), 0) AS BIGINT) AS pending, \
             CAST(COALESCE(SUM(CASE WHEN m.delivered_at IS NOT NULL OR m.read_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS delivered, \
             CAST(COALESCE(SUM(CASE WHEN m.read_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS read_count, \
             CAST(COALESCE(SUM(CASE WHEN m.status_rank = 9 THEN 1 ELSE 0 END), 0) AS BIGINT) AS failed, \
             CAST(COALESCE(SUM(CASE WHEN m.id IS NOT NULL AND EXISTS (SELECT 1 FROM messages i \
                 WHERE i.tenant_id = m.tenant_id AND i.conversation_id = m.conversation_id \
                 AND i.direction = 'inbound' AND i.created_at > m.created_at \
                 AND i.created_at <= m.created_at + $3) THEN 1 ELSE 0 END), 0) AS BIGINT) AS replied \
             FROM campaign_recipients r \
             LEFT JOIN messages m ON m.tenant_id = r.tenant_id AND m.id = r.message_id \
             WHERE r.tenant_id = $1 AND r.campaign_id = $2 \
             GROUP BY r.variant, r.test_group, r.state, r.skip_reason",
        )
        .bind(self.tenant_id().as_str())
        .bind(campaign_id)
        .bind(reply_window_ms)
        .fetch_all(self.storage().pool())
        .await
        .context("counting a campaign's recipients")?;
        rows.iter()
            .map(|row| {
                let test_group: i64 = row.try_get("test_group")?;
                Ok(RecipientCounts {
                    variant: row.try_get("variant")?,
                    state: row.try_get("state")?,
                    skip_reason: row.try_get("skip_reason")?,
                    test_group: test_group != 0,
                    recipients: row.try_get("n")?,
                    accepted: row.try_get("accepted")?,
                    pending: row.try_get("pending")?,
                    delivered: row.try_get("delivered")?,
                    read: row.try_get("read_count")?,
                    replied: row.try_get("replied")?,
                    failed: row.try_get("failed")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding campaign counts")
    }

    /// Failures by error code and variant: a failed message's provider code, or the
    /// recipient's own error (refused before the outbox).
    pub async fn campaign_failures(
        &self,
        campaign_id: &str,
    ) -> Result<BTreeMap<(String, String), i64>, StorageError> {
        let rows = sqlx::query(
            "SELECT r.variant, r.error AS recipient_error, m.error AS message_error \
             FROM campaign_recipients r LEFT JOIN messages m ON m.tenant_id = r.tenant_id AND m.id = r.message_id \
             WHERE r.tenant_id = $1 AND r.campaign_id = $2 AND (r.state = 'failed' OR m.status_rank = 9)",
        )
        .bind(self.tenant_id().as_str())
        .bind(campaign_id)
        .fetch_all(self.storage().pool())
        .await
        .context("reading a campaign's failures")?;
        let mut failures = BTreeMap::new();
        for row in &rows {
            let variant: Option<String> = row.try_get("variant").context("decoding failures")?;
            let recipient_error: Option<String> = row
                .try_get("recipient_error")
                .context("decoding failures")?;
            let message_error = json_text(row, "message_error").context("decoding failures")?;
            let code = match (message_error, recipient_error) {
                (Some(error), _) => match &error["code"] {
                    Value::Null => error["message"].as_str().unwrap_or("unknown").to_string(),
                    Value::String(code) => code.clone(),
                    code => code.to_string(),
                },
                (None, Some(error)) => error.split(':').next().unwrap_or("unknown").to_string(),
                (None, None) => "unknown".to_string(),
            };
            *failures
                .entry((variant.unwrap_or_default(), code))
                .or_insert(0) += 1;
        }
        Ok(failures)
    }

    /// A page of the per-recipient export (contact id order, after `after`), with each
    /// message's status history.
    pub async fn campaign_export_page(
        &self,
        campaign_id: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<ExportRow>, StorageError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RECIPIENT_COLUMNS}, c.name, c.phone, m.status AS message_status, m.error AS message_error \
             FROM campaign_recipients r \
             LEFT JOIN contacts c ON c.tenant_id = r.tenant_id AND c.id = r.contact_id \
             LEFT JOIN messages m ON m.tenant_id = r.tenant_id AND m.id = r.message_id \
             WHERE r.tenant_id = $1 AND r.campaign_id = $2 AND r.contact_id > $3 \
             ORDER BY r.contact_id LIMIT $4"
        )))
        .bind(self.tenant_id().as_str())
        .bind(campaign_id)
        .bind(after)
        .bind(limit)
        .fetch_all(self.storage().pool())
        .await
        .context("exporting campaign recipients")?;
        let mut page = rows
            .iter()
            .map(|row| {
                Ok(ExportRow {
                    recipient: decode_recipient(row)?,
                    name: row.try_get("name")?,
                    phone: row.try_get("phone")?,
                    message_status: row.try_get("message_status")?,
                    message_error: row.try_get("message_error")?,
                    history: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .context("decoding campaign recipients")?;
        let ids: Vec<String> = page
            .iter()
            .filter_map(|row| row.recipient.message_id.clone())
            .collect();
        if ids.is_empty() {
            return Ok(page);
        }
        let mut sql = Sql::new(
            "SELECT message_id, status, recorded_at FROM message_status_history WHERE tenant_id = ",
        );
        let tenant = sql.bind(Bind::Text(self.tenant_id().as_str().to_string()));
        sql.push(&tenant);
        sql.push(" AND message_id IN (");
        for (index, id) in ids.iter().enumerate() {
            if index > 0 {
                sql.push(", ");
            }
            let id = sql.bind(Bind::Text(id.clone()));
            sql.push(&id);
        }
        sql.push(") ORDER BY recorded_at, id");
        let history = sql
            .into_query()
            .fetch_all(self.storage().pool())
            .await
            .context("reading status histories")?;
        let mut by_message: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
        for row in &history {
            let id: String = row.try_get("message_id").context("decoding history")?;
            let status: String = row.try_get("status").context("decoding history")?;
            let at: i64 = row.try_get("recorded_at").context("decoding history")?;
            by_message.entry(id).or_default().push((status, at));
        }
        for row in &mut page {
            if let Some(id) = &row.recipient.message_id {
                row.history = by_message.remove(id).unwrap_or_default();
            }
        }
        Ok(page)
    }

    /// The ids of contacts matching `filter` with ids in `first..=last` (to test a page
    /// of contacts against an exclusion in one query).
    pub async fn contact_ids_matching_between(
        &self,
        filter: &Expr,
        first: &str,
        last: &str,
    ) -> Result<HashSet<String>, StorageError> {
        let mut sql = Sql::new("SELECT id FROM contacts WHERE tenant_id = ");
        let tenant = sql.bind(Bind::Text(self.tenant_id().as_str().to_string()));
        sql.push(&tenant);
        sql.and_expr(self.storage().backend(), filter, now_ms());
        let first = sql.bind(Bind::Text(first.to_string()));
        let last = sql.bind(Bind::Text(last.to_string()));
        sql.push(&format!(" AND id >= {first} AND id <= {last}"));
        let rows = sql
            .into_query()
            .fetch_all(self.storage().pool())
            .await
            .context("testing contacts against an exclusion")?;
        rows.iter()
            .map(|row| row.try_get::<String, _>("id"))
            .collect::<Result<_, _>>()
            .context("decoding contact ids")
    }
}

/// One recipient of a campaign by contact: `$1` tenant, `$2` campaign, `$3` contact.
fn recipient_sql() -> String {
    format!(
        "SELECT {RECIPIENT_COLUMNS} FROM campaign_recipients r \
         WHERE r.tenant_id = $1 AND r.campaign_id = $2 AND r.contact_id = $3"
    )
}
