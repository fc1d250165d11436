//! Flows, their immutable published versions, runs and the steps runs took. A run's
//! progress is guarded by its `visit` counter: a step is recorded (and the run moved on)
//! only by the transaction that finds the run still at that visit, so a step job that
//! runs twice (after a crash inside its lease) changes nothing the second time.

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use super::is_unique_violation;
use super::jobs::insert_job;
use super::{NewJob, QueryContext, StorageError, TenantDb, now_ms};

/// A flow.
#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The editable draft graph.
    pub draft: Value,
    /// The newest published version, if any.
    pub published_version: Option<i64>,
    /// Whether triggers start runs.
    pub enabled: bool,
    /// The secret part of its webhook trigger's URL (`/hooks/flows/{token}`).
    pub webhook_token: String,
    /// The sealed HMAC secret webhook callers sign with, if one is set.
    #[serde(skip)]
    pub webhook_secret: Option<String>,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Last changed, Unix ms.
    pub updated_at: i64,
}

/// A published version.
#[derive(Debug, Clone, Serialize)]
pub struct FlowVersion {
    /// The flow.
    pub flow_id: String,
    /// The version number (1, 2, …).
    pub version: i64,
    /// The graph.
    pub graph: Value,
    /// Node id → the install it runs on.
    pub actions: Value,
    /// When, Unix ms.
    pub published_at: i64,
}

/// A run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Its id.
    pub id: String,
    /// The flow.
    pub flow_id: String,
    /// The version it runs.
    pub version: i64,
    /// The contact, if any.
    pub contact_id: Option<String>,
    /// running, waiting, completed, failed or cancelled.
    pub status: String,
    /// What started it.
    pub trigger: Value,
    /// Outputs of the steps so far, by node id.
    pub variables: Value,
    /// The node it is at (or waits in).
    pub current_node: Option<String>,
    /// Steps taken so far.
    pub visit: i64,
    /// `time` or `reply` while waiting.
    pub waiting_for: Option<String>,
    /// Until when it waits, Unix ms.
    pub wait_until: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Started, Unix ms.
    pub started_at: i64,
    /// Last changed, Unix ms.
    pub updated_at: i64,
    /// Finished, Unix ms.
    pub finished_at: Option<i64>,
}

/// One step of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// The node.
    pub node_id: String,
    /// Its position in the run (0, 1, …).
    pub visit: i64,
    /// ok or failed.
    pub status: String,
    /// What the action got.
    pub input: Value,
    /// What it returned as output.
    pub output: Option<Value>,
    /// Where the run went (`{"next": port}`, `{"wait": ms}`, …).
    pub outcome: Option<Value>,
    /// The effects and what applying each did.
    pub effects: Option<Value>,
    /// The error, if it failed.
    pub error: Option<String>,
    /// Started, Unix ms.
    pub started_at: i64,
    /// Finished, Unix ms.
    pub finished_at: i64,
}

/// A change to a contact's tags and custom fields, applied to their stored values.
pub type ContactEdit = std::sync::Arc<dyn Fn(&mut Vec<String>, &mut Value) + Send + Sync>;

/// How a recorded step moves its run.
#[derive(Debug, Clone)]
pub struct RunChange {
    /// The new status.
    pub status: String,
    /// The node it is at next (or waits in).
    pub current_node: Option<String>,
    /// The new variables.
    pub variables: Value,
    /// `time` / `reply` when waiting.
    pub waiting_for: Option<String>,
    /// Until when.
    pub wait_until: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
}

fn json(row: &sqlx::any::AnyRow, name: &str) -> Result<Value, sqlx::Error> {
    let text: String = row.try_get(name)?;
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn opt_json(row: &sqlx::any::AnyRow, name: &str) -> Result<Option<Value>, sqlx::Error> {
    let text: Option<String> = row.try_get(name)?;
    Ok(text.and_then(|text| serde_json::from_str(&text).ok()))
}

const FLOW_COLUMNS: &str = "id, name, draft, published_version, enabled, webhook_token, webhook_secret, \
     created_at, updated_at";

/// A flow row read directly ([`FLOW_COLUMNS`] order).
fn decode_flow_direct(row: &rusqlite::Row<'_>) -> rusqlite::Result<Flow> {
    let draft: String = row.get(2)?;
    let enabled: i64 = row.get(4)?;
    Ok(Flow {
        id: row.get(0)?,
        name: row.get(1)?,
        draft: serde_json::from_str(&draft).unwrap_or(Value::Null),
        published_version: row.get(3)?,
        enabled: enabled != 0,
        webhook_token: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
        webhook_secret: row.get(6)?,
        created_at: row.get(7)?,
        updated_at: row.get(8)?,
    })
}

fn decode_flow(row: &sqlx::any::AnyRow) -> Result<Flow, sqlx::Error> {
    let enabled: i64 = row.try_get("enabled")?;
    Ok(Flow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        draft: json(row, "draft")?,
        published_version: row.try_get("published_version")?,
        enabled: enabled != 0,
        webhook_token: row
            .try_get::<Option<String>, _>("webhook_token")?
            .unwrap_or_default(),
        webhook_secret: row.try_get("webhook_secret")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const RUN_COLUMNS: &str = "id, flow_id, version, contact_id, status, trigger, variables, current_node, visit, \
     waiting_for, wait_until, error, started_at, updated_at, finished_at";

/// A run row read through the direct SQLite path (columns in [`RUN_COLUMNS`] order).
fn decode_run_direct(row: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
    let parse = |text: String| serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Run {
        id: row.get(0)?,
        flow_id: row.get(1)?,
        version: row.get(2)?,
        contact_id: row.get(3)?,
        status: row.get(4)?,
        trigger: parse(row.get(5)?),
        variables: parse(row.get(6)?),
        current_node: row.get(7)?,
        visit: row.get(8)?,
        waiting_for: row.get(9)?,
        wait_until: row.get(10)?,
        error: row.get(11)?,
        started_at: row.get(12)?,
        updated_at: row.get(13)?,
        finished_at: row.get(14)?,
    })
}

const INSERT_RUN: &str = "INSERT INTO flow_runs (id, tenant_id, flow_id, version, contact_id, exclusive, status, trigger, \
     variables, current_node, visit, started_at, updated_at, trigger_key) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '{}', $9, 0, $10, $10, $11)";

const MOVE_RUN: &str = "UPDATE flow_runs SET status = $1, current_node = $2, variables = $3, waiting_for = $4, \
     wait_until = $5, error = $6, visit = visit + $12, updated_at = $7, \
     finished_at = CASE WHEN $8 = 1 THEN $7 ELSE finished_at END \
     WHERE tenant_id = $9 AND id = $10 AND visit = $11 AND status IN ('running', 'waiting')";

const INSERT_STEP: &str = "INSERT INTO flow_steps (id, tenant_id, run_id, node_id, visit, status, input, output, outcome, \
     effects, error, started_at, finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

fn decode_run(row: &sqlx::any::AnyRow) -> Result<Run, sqlx::Error> {
    Ok(Run {
        id: row.try_get("id")?,
        flow_id: row.try_get("flow_id")?,
        version: row.try_get("version")?,
        contact_id: row.try_get("contact_id")?,
        status: row.try_get("status")?,
        trigger: json(row, "trigger")?,
        variables: json(row, "variables")?,
        current_node: row.try_get("current_node")?,
        visit: row.try_get("visit")?,
        waiting_for: row.try_get("waiting_for")?,
        wait_until: row.try_get("wait_until")?,
        error: row.try_get("error")?,
        started_at: row.try_get("started_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

impl TenantDb {
    /// Creates a flow with a draft graph.
    pub async fn create_flow(&self, name: &str, draft: &Value) -> Result<Flow, StorageError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO flows (id, tenant_id, name, draft, enabled, webhook_token, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 1, $5, $6, $6)",
        )
        .bind(&id)
        .bind(self.tenant_id().as_str())
        .bind(name)
        .bind(draft.to_string())
        .bind(uuid::Uuid::new_v4().simple().to_string())
        .bind(now)
        .execute(self.storage().pool())
        .await
        .context("creating a flow")?;
        self.flow(&id).await?.ok_or(StorageError::Query {
            context: "reading a created flow",
            source: sqlx::Error::RowNotFound,
        })
    }

    /// One flow.
    pub async fn flow(&self, id: &str) -> Result<Option<Flow>, StorageError> {
        let tenant = self.tenant_id().as_str();
        if let Some(mut found) = self.storage().read_direct(|c| {
            super::sqlite_writer::query(
                c,
                &format!("SELECT {FLOW_COLUMNS} FROM flows WHERE tenant_id = $1 AND id = $2"),
                &[&tenant, &id],
                decode_flow_direct,
            )
        }) {
            return Ok(found.pop());
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FLOW_COLUMNS} FROM flows WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(self.tenant_id().as_str())
        .bind(id)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a flow")?;
        row.as_ref()
            .map(decode_flow)
            .transpose()
            .context("decoding a flow")
    }

    /// All flows.
    pub async fn flows(&self) -> Result<Vec<Flow>, StorageError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FLOW_COLUMNS} FROM flows WHERE tenant_id = $1 ORDER BY id"
        )))
        .bind(self.tenant_id().as_str())
        .fetch_all(self.storage().pool())
        .await
        .context("listing flows")?;
        rows.iter()
            .map(decode_flow)
            .collect::<Result<_, _>>()
            .context("decoding flows")
    }

    /// Changes a flow's name, draft or enabled flag (the draft never affects runs).
    pub async fn update_flow(
        &self,
        id: &str,
        name: Option<&str>,
        draft: Option<&Value>,
        enabled: Option<bool>,
    ) -> Result<Option<Flow>, StorageError> {
        let updated = sqlx::query(
            "UPDATE flows SET name = COALESCE($1, name), draft = COALESCE($2, draft), \
             enabled = COALESCE($3, enabled), updated_at = $4 WHERE tenant_id = $5 AND id = $6",
        )
        .bind(name)
        .bind(draft.map(Value::to_string))
        .bind(enabled.map(i64::from))
        .bind(now_ms())
        .bind(self.tenant_id().as_str())
        .bind(id)
        .execute(self.storage().pool())
        .await
        .context("updating a flow")?
        .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        self.flow(id).await
    }

    /// Sets (sealed) or clears the HMAC secret of the flow's webhook trigger; whether the
    /// flow exists.
    pub async fn set_flow_webhook_secret(
        &self,
        id: &str,
        sealed: Option<&str>,
    ) -> Result<bool, StorageError> {
        sqlx::query(
            "UPDATE flows SET webhook_secret = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4",
        )
        .bind(sealed)
        .bind(now_ms())
        .bind(self.tenant_id().as_str())
        .bind(id)
        .execute(self.storage().pool())
        .await
        .context("setting a flow's webhook secret")
        .map(|result| result.rows_affected() > 0)
    }

    /// The run of a flow a trigger started under `key`, if any.
    pub async fn run_by_trigger_key(
        &self,
        flow_id: &str,
        key: &str,
    ) -> Result<Option<Run>, StorageError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM flow_runs WHERE tenant_id = $1 AND flow_id = $2 AND trigger_key = $3"
        )))
        .bind(self.tenant_id().as_str())
        .bind(flow_id)
        .bind(key)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a run by trigger key")?;
        row.as_ref()
            .map(decode_run)
            .transpose()
            .context("decoding a run")
    }

    /// Deletes a flow (its versions and runs stay for history); whether it existed.
    pub async fn delete_flow(&self, id: &str) -> Result<bool, StorageError> {
        sqlx::query("DELETE FROM flows WHERE tenant_id = $1 AND id = $2")
            .bind(self.tenant_id().as_str())
            .bind(id)
            .execute(self.storage().pool())
            .await
            .context("deleting a flow")
            .map(|result| result.rows_affected() > 0)
    }

    /// Publishes `graph` as the flow's next version.
    pub async fn publish_flow(
        &self,
        flow_id: &str,
        graph: &Value,
        actions: &Value,
    ) -> Result<FlowVersion, StorageError> {
        let tenant = self.tenant_id().as_str();
        let now = now_ms();
        let outcome: Result<i64, sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            let row = sqlx::query(
                "SELECT COALESCE(MAX(version), 0) AS latest FROM flow_versions WHERE tenant_id = $1 AND flow_id = $2",
            )
            .bind(tenant)
            .bind(flow_id)
            .fetch_one(&mut *tx)
            .await?;
            let version: i64 = row.try_get::<i64, _>("latest")? + 1;
            sqlx::query(
                "INSERT INTO flow_versions (tenant_id, flow_id, version, graph, actions, published_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(tenant)
            .bind(flow_id)
            .bind(version)
            .bind(graph.to_string())
            .bind(actions.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE flows SET published_version = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4",
            )
            .bind(version)
            .bind(now)
            .bind(tenant)
            .bind(flow_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(version)
        }
        .await;
        let version = outcome.context("publishing a flow")?;
        Ok(FlowVersion {
            flow_id: flow_id.to_string(),
            version,
            graph: graph.clone(),
            actions: actions.clone(),
            published_at: now,
        })
    }

    /// One published version.
    pub async fn flow_version(
        &self,
        flow_id: &str,
        version: i64,
    ) -> Result<Option<FlowVersion>, StorageError> {
        let row = sqlx::query(
            "SELECT flow_id, version, graph, actions, published_at FROM flow_versions \
             WHERE tenant_id = $1 AND flow_id = $2 AND version = $3",
        )
        .bind(self.tenant_id().as_str())
        .bind(flow_id)
        .bind(version)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a flow version")?;
        row.map(|row| {
            Ok(FlowVersion {
                flow_id: row.try_get("flow_id")?,
                version: row.try_get("version")?,
                graph: json(&row, "graph")?,
                actions: json(&row, "actions")?,
                published_at: row.try_get("published_at")?,
            })
        })
        .transpose()
        .context("decoding a flow version")
    }

    /// Whether the tenant has any flow at all (runs can only exist if so).
    pub async fn has_flows(&self) -> Result<bool, StorageError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM (SELECT 1 FROM flows WHERE tenant_id = $1 LIMIT 1) AS f",
        )
        .bind(self.tenant_id().as_str())
        .fetch_one(self.storage().pool())
        .await
        .context("checking for flows")?;
        let count: i64 = row.try_get("n").context("decoding a count")?;
        Ok(count > 0)
    }

    /// The published version of every enabled flow (for matching triggers).
    pub async fn live_flows(&self) -> Result<Vec<FlowVersion>, StorageError> {
        let rows = sqlx::query(
            "SELECT v.flow_id, v.version, v.graph, v.actions, v.published_at FROM flows f \
             JOIN flow_versions v ON v.tenant_id = f.tenant_id AND v.flow_id = f.id AND v.version = f.published_version \
             WHERE f.tenant_id = $1 AND f.enabled = 1",
        )
        .bind(self.tenant_id().as_str())
        .fetch_all(self.storage().pool())
        .await
        .context("listing live flows")?;
        rows.iter()
            .map(|row| {
                Ok(FlowVersion {
                    flow_id: row.try_get("flow_id")?,
                    version: row.try_get("version")?,
                    graph: json(row, "graph")?,
                    actions: json(row, "actions")?,
                    published_at: row.try_get("published_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding live flows")
    }

    /// Starts a run and queues its first `jobs`, in one transaction. `None` when the
    /// contact already has an active run of this flow and the flow has no re-entry, or
    /// when the flow already has a run started under `trigger_key`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_run(
        &self,
        flow_id: &str,
        version: i64,
        contact_id: Option<&str>,
        exclusive: bool,
        trigger_key: Option<&str>,
        trigger: &Value,
        first_node: Option<&str>,
        make_jobs: impl FnOnce(&str) -> Vec<NewJob>,
    ) -> Result<Option<Run>, StorageError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let status = if first_node.is_some() {
            "running"
        } else {
            "completed"
        };
        let exclusive = i64::from(exclusive && contact_id.is_some());
        if let Some(writer) = self.storage().sqlite_writer() {
            let jobs = make_jobs(&id);
            let run = Run {
                id: id.clone(),
                flow_id: flow_id.to_string(),
                version,
                contact_id: contact_id.map(str::to_string),
                status: status.to_string(),
                trigger: trigger.clone(),
                variables: serde_json::json!({}),
                current_node: first_node.map(str::to_string),
                visit: 0,
                waiting_for: None,
                wait_until: None,
                error: None,
                started_at: now,
                updated_at: now,
                finished_at: None,
            };
            let tenant = self.tenant_id().as_str().to_string();
            let (trigger_text, trigger_key) =
                (trigger.to_string(), trigger_key.map(str::to_string));
            let started = writer
                .write(move |c| {
                    let inserted = super::sqlite_writer::exec(
                        c,
                        INSERT_RUN,
                        &[
                            &run.id,
                            &tenant,
                            &run.flow_id,
                            &run.version,
                            &run.contact_id,
                            &exclusive,
                            &run.status,
                            &trigger_text,
                            &run.current_node,
                            &now,
                            &trigger_key,
                        ],
                    );
                    match inserted {
                        Err(error) if super::sqlite_writer::is_unique_violation(&error) => {
                            return Ok(None);
                        }
                        other => other?,
                    };
                    for job in &jobs {
                        super::jobs::insert_job_direct(c, job)?;
                    }
                    Ok(Some(run.clone()))
                })
                .await
                .map_err(|message| StorageError::Direct {
                    context: "starting a run",
                    message,
                })?;
            return Ok(started);
        }
        let outcome: Result<(), sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            sqlx::query(INSERT_RUN)
                .bind(&id)
                .bind(self.tenant_id().as_str())
                .bind(flow_id)
                .bind(version)
                .bind(contact_id)
                .bind(exclusive)
                .bind(status)
                .bind(trigger.to_string())
                .bind(first_node)
                .bind(now)
                .bind(trigger_key)
                .execute(&mut *tx)
                .await?;
            for job in make_jobs(&id) {
                insert_job(&mut *tx, &job).await?;
            }
            tx.commit().await
        }
        .await;
        match outcome {
            Ok(()) => self.run(&id).await,
            Err(error) if is_unique_violation(&error) => Ok(None),
            Err(source) => Err(StorageError::Query {
                context: "starting a run",
                source,
            }),
        }
    }

    /// One run.
    pub async fn run(&self, id: &str) -> Result<Option<Run>, StorageError> {
        let tenant = self.tenant_id().as_str();
        if let Some(mut runs) = self.storage().read_direct(|c| {
            super::sqlite_writer::query(
                c,
                &format!("SELECT {RUN_COLUMNS} FROM flow_runs WHERE tenant_id = $1 AND id = $2"),
                &[&tenant, &id],
                decode_run_direct,
            )
        }) {
            return Ok(runs.pop());
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM flow_runs WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(self.tenant_id().as_str())
        .bind(id)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a run")?;
        row.as_ref()
            .map(decode_run)
            .transpose()
            .context("decoding a run")
    }

    /// A flow's runs, newest first, optionally of one status.
    pub async fn runs(
        &self,
        flow_id: &str,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Run>, StorageError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM flow_runs WHERE tenant_id = $1 AND flow_id = $2 \
             AND ($3 IS NULL OR status = $3) ORDER BY started_at DESC, id DESC LIMIT $4"
        )))
        .bind(self.tenant_id().as_str())
        .bind(flow_id)
        .bind(status)
        .bind(limit)
        .fetch_all(self.storage().pool())
        .await
        .context("listing runs")?;
        rows.iter()
            .map(decode_run)
            .collect::<Result<_, _>>()
            .context("decoding runs")
    }

    /// Runs of a contact waiting for a reply.
    pub async fn runs_waiting_for_reply(&self, contact_id: &str) -> Result<Vec<Run>, StorageError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM flow_runs WHERE tenant_id = $1 AND contact_id = $2 \
             AND waiting_for = 'reply' AND status = 'waiting'"
        )))
        .bind(self.tenant_id().as_str())
        .bind(contact_id)
        .fetch_all(self.storage().pool())
        .await
        .context("listing waiting runs")?;
        rows.iter()
            .map(decode_run)
            .collect::<Result<_, _>>()
            .context("decoding runs")
    }

    /// A run's steps in order.
    pub async fn steps(&self, run_id: &str) -> Result<Vec<Step>, StorageError> {
        let rows = sqlx::query(
            "SELECT node_id, visit, status, input, output, outcome, effects, error, started_at, finished_at \
             FROM flow_steps WHERE tenant_id = $1 AND run_id = $2 ORDER BY visit",
        )
        .bind(self.tenant_id().as_str())
        .bind(run_id)
        .fetch_all(self.storage().pool())
        .await
        .context("reading steps")?;
        rows.iter()
            .map(|row| {
                Ok(Step {
                    node_id: row.try_get("node_id")?,
                    visit: row.try_get("visit")?,
                    status: row.try_get("status")?,
                    input: json(row, "input")?,
                    output: opt_json(row, "output")?,
                    outcome: opt_json(row, "outcome")?,
                    effects: opt_json(row, "effects")?,
                    error: row.try_get("error")?,
                    started_at: row.try_get("started_at")?,
                    finished_at: row.try_get("finished_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decoding steps")
    }

    /// Records `step` (at the run's current visit) and moves the run, queueing `jobs`,
    /// in one transaction; `false` (nothing changed) when the run is no longer at that
    /// visit — the step was recorded by an earlier attempt.
    pub async fn record_step(
        &self,
        run_id: &str,
        step: &Step,
        change: &RunChange,
        jobs: &[NewJob],
    ) -> Result<bool, StorageError> {
        self.record_steps(run_id, std::slice::from_ref(step), None, change, jobs)
            .await
    }

    /// Records `steps` (consecutive visits from the run's current one), applies
    /// `contact`'s tag and field change (contact id, change), moves the run and queues
    /// `jobs` — all in one transaction, so a crash leaves either all of it or none.
    /// `false` (nothing changed) when the run is no longer at the first step's visit.
    pub async fn record_steps(
        &self,
        run_id: &str,
        steps: &[Step],
        contact: Option<(&str, &ContactEdit)>,
        change: &RunChange,
        jobs: &[NewJob],
    ) -> Result<bool, StorageError> {
        let Some(first) = steps.first() else {
            return Ok(false);
        };
        let tenant = self.tenant_id().as_str();
        let now = now_ms();
        let finished = matches!(change.status.as_str(), "completed" | "failed" | "cancelled");
        let taken = i64::try_from(steps.len()).unwrap_or(i64::MAX);
        if let Some(writer) = self.storage().sqlite_writer() {
            // The closure runs on the writer thread: it owns what it needs.
            let (tenant, run_id) = (tenant.to_string(), run_id.to_string());
            let (steps, change, jobs) = (steps.to_vec(), change.clone(), jobs.to_vec());
            let edit = contact.map(|(id, edit)| (id.to_string(), edit.clone()));
            let first_visit = first.visit;
            let recorded = writer
                .write(move |c| {
                    use super::sqlite_writer::exec;
                    let moved = exec(
                        c,
                        MOVE_RUN,
                        &[
                            &change.status,
                            &change.current_node,
                            &change.variables.to_string(),
                            &change.waiting_for,
                            &change.wait_until,
                            &change.error,
                            &now,
                            &i64::from(finished),
                            &tenant,
                            &run_id,
                            &first_visit,
                            &taken,
                        ],
                    )?;
                    if moved == 0 {
                        return Ok(None);
                    }
                    for step in &steps {
                        exec(
                            c,
                            INSERT_STEP,
                            &[
                                &uuid::Uuid::now_v7().to_string(),
                                &tenant,
                                &run_id,
                                &step.node_id,
                                &step.visit,
                                &step.status,
                                &step.input.to_string(),
                                &step.output.as_ref().map(Value::to_string),
                                &step.outcome.as_ref().map(Value::to_string),
                                &step.effects.as_ref().map(Value::to_string),
                                &step.error,
                                &step.started_at,
                                &step.finished_at,
                            ],
                        )?;
                    }
                    let mut changes = Vec::new();
                    if let Some((contact_id, edit)) = &edit {
                        changes = super::contacts::change_tags_and_fields_direct(
                            c,
                            &tenant,
                            contact_id,
                            |tags, fields| edit(tags, fields),
                        )?
                        .unwrap_or_default();
                    }
                    for job in &jobs {
                        super::jobs::insert_job_direct(c, job)?;
                    }
                    Ok(Some(changes))
                })
                .await
                .map_err(|message| StorageError::Direct {
                    context: "recording steps",
                    message,
                })?;
            let Some(changes) = recorded else {
                return Ok(false);
            };
            if let Some((contact_id, _)) = contact {
                self.storage().report_contact_changes(
                    self.tenant_id().as_str(),
                    contact_id,
                    changes,
                );
            }
            return Ok(true);
        }
        let outcome: Result<Option<Vec<super::ContactChange>>, sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            let moved = sqlx::query(MOVE_RUN)
                .bind(&change.status)
                .bind(change.current_node.as_deref())
                .bind(change.variables.to_string())
                .bind(change.waiting_for.as_deref())
                .bind(change.wait_until)
                .bind(change.error.as_deref())
                .bind(now)
                .bind(i64::from(finished))
                .bind(tenant)
                .bind(run_id)
                .bind(first.visit)
                .bind(taken)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if moved == 0 {
                return Ok(None);
            }
            for step in steps {
                sqlx::query(INSERT_STEP)
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(tenant)
                    .bind(run_id)
                    .bind(&step.node_id)
                    .bind(step.visit)
                    .bind(&step.status)
                    .bind(step.input.to_string())
                    .bind(step.output.as_ref().map(Value::to_string))
                    .bind(step.outcome.as_ref().map(Value::to_string))
                    .bind(step.effects.as_ref().map(Value::to_string))
                    .bind(step.error.as_deref())
                    .bind(step.started_at)
                    .bind(step.finished_at)
                    .execute(&mut *tx)
                    .await?;
            }
            let mut changes = Vec::new();
            if let Some((contact_id, apply)) = contact {
                changes = self
                    .change_tags_and_fields_in(&mut tx, contact_id, |tags, fields| {
                        apply(tags, fields)
                    })
                    .await?
                    .unwrap_or_default();
            }
            for job in jobs {
                insert_job(&mut *tx, job).await?;
            }
            tx.commit().await?;
            Ok(Some(changes))
        }
        .await;
        let Some(changes) = outcome.context("recording steps")? else {
            return Ok(false);
        };
        if let Some((contact_id, _)) = contact {
            self.storage()
                .report_contact_changes(tenant, contact_id, changes);
        }
        Ok(true)
    }

    /// Moves a run waiting at `visit` (for a reply or a timeout) on: sets its variables
    /// and status and queues `jobs`; `false` when it was no longer waiting there.
    pub async fn resume_run(
        &self,
        run_id: &str,
        visit: i64,
        variables: &Value,
        current_node: Option<&str>,
        jobs: &[NewJob],
    ) -> Result<bool, StorageError> {
        let outcome: Result<bool, sqlx::Error> = async {
            let mut tx = self.storage().begin_write().await?;
            let moved = sqlx::query(
                "UPDATE flow_runs SET status = $1, waiting_for = NULL, wait_until = NULL, variables = $2, \
                 current_node = $3, finished_at = CASE WHEN $3 IS NULL THEN $4 ELSE NULL END, updated_at = $4 \
                 WHERE tenant_id = $5 AND id = $6 AND visit = $7 AND status = 'waiting'",
            )
            .bind(if current_node.is_some() { "running" } else { "completed" })
            .bind(variables.to_string())
            .bind(current_node)
            .bind(now_ms())
            .bind(self.tenant_id().as_str())
            .bind(run_id)
            .bind(visit)
            .execute(&mut *tx)
            .await?
            .rows_affected();
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
        outcome.context("resuming a run")
    }

    /// Cancels an active run; whether it was active.
    pub async fn cancel_run(&self, flow_id: &str, run_id: &str) -> Result<bool, StorageError> {
        let now = now_ms();
        sqlx::query(
            "UPDATE flow_runs SET status = 'cancelled', waiting_for = NULL, finished_at = $1, updated_at = $1 \
             WHERE tenant_id = $2 AND flow_id = $3 AND id = $4 AND status IN ('running', 'waiting')",
        )
        .bind(now)
        .bind(self.tenant_id().as_str())
        .bind(flow_id)
        .bind(run_id)
        .execute(self.storage().pool())
        .await
        .context("cancelling a run")
        .map(|result| result.rows_affected() > 0)
    }
}

impl super::Storage {
    /// The tenant and flow a webhook-trigger URL token belongs to (the public
    /// `/hooks/flows/{token}` route knows nothing else).
    pub async fn flow_by_webhook_token(
        &self,
        token: &str,
    ) -> Result<Option<(String, Flow)>, StorageError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT tenant_id, {FLOW_COLUMNS} FROM flows WHERE webhook_token = $1"
        )))
        .bind(token)
        .fetch_optional(self.pool())
        .await
        .context("reading a flow by webhook token")?;
        row.map(|row| Ok((row.try_get("tenant_id")?, decode_flow(&row)?)))
            .transpose()
            .context("decoding a flow")
    }
}
