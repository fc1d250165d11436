//! Teams of agents: the pool a flow's assign step (or an integration) picks an agent
//! from, by round-robin (a turn counter advanced atomically in the database, so several
//! processes take turns correctly) or least-busy (fewest open conversations).

use serde::Serialize;
use sqlx::Row;

use super::filter_sql::{Bind, Sql};
use super::{QueryContext, StorageError, TenantDb, is_unique_violation, now_ms};

/// A team.
#[derive(Debug, Clone, Serialize)]
pub struct Team {
    /// Its id.
    pub id: String,
    /// Its name, unique per tenant.
    pub name: String,
    /// Agent ids, in turn order.
    pub members: Vec<String>,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Last changed, Unix ms.
    pub updated_at: i64,
}

/// Why a team write failed.
#[derive(Debug, thiserror::Error)]
pub enum TeamWriteError {
    /// Another team has the name.
    #[error("a team named `{0}` already exists")]
    NameTaken(String),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

const COLUMNS: &str = "id, name, members, created_at, updated_at";

fn decode(row: &sqlx::any::AnyRow) -> Result<Team, sqlx::Error> {
    let members: String = row.try_get("members")?;
    Ok(Team {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        members: serde_json::from_str(&members).unwrap_or_default(),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn members_json(members: &[String]) -> String {
    serde_json::Value::from(members.to_vec()).to_string()
}

impl TenantDb {
    /// Creates a team.
    pub async fn create_team(
        &self,
        name: &str,
        members: &[String],
    ) -> Result<Team, TeamWriteError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let result = sqlx::query(
            "INSERT INTO teams (id, tenant_id, name, members, next_member, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 0, $5, $5)",
        )
        .bind(&id)
        .bind(self.tenant_id().as_str())
        .bind(name)
        .bind(members_json(members))
        .bind(now)
        .execute(self.storage().pool())
        .await;
        match result {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => {
                return Err(TeamWriteError::NameTaken(name.to_string()));
            }
            Err(source) => {
                return Err(StorageError::Query {
                    context: "creating a team",
                    source,
                }
                .into());
            }
        }
        Ok(Team {
            id,
            name: name.to_string(),
            members: members.to_vec(),
            created_at: now,
            updated_at: now,
        })
    }

    /// One team.
    pub async fn team(&self, id: &str) -> Result<Option<Team>, StorageError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM teams WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(self.tenant_id().as_str())
        .bind(id)
        .fetch_optional(self.storage().pool())
        .await
        .context("reading a team")?;
        row.as_ref()
            .map(decode)
            .transpose()
            .context("decoding a team")
    }

    /// All teams, by name.
    pub async fn teams(&self) -> Result<Vec<Team>, StorageError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM teams WHERE tenant_id = $1 ORDER BY name"
        )))
        .bind(self.tenant_id().as_str())
        .fetch_all(self.storage().pool())
        .await
        .context("listing teams")?;
        rows.iter()
            .map(decode)
            .collect::<Result<_, _>>()
            .context("decoding teams")
    }

    /// Renames a team or replaces its members; `None` if there is no such team.
    pub async fn update_team(
        &self,
        id: &str,
        name: Option<&str>,
        members: Option<&[String]>,
    ) -> Result<Option<Team>, TeamWriteError> {
        let result = sqlx::query(
            "UPDATE teams SET name = COALESCE($1, name), members = COALESCE($2, members), \
             updated_at = $3 WHERE tenant_id = $4 AND id = $5",
        )
        .bind(name)
        .bind(members.map(members_json))
        .bind(now_ms())
        .bind(self.tenant_id().as_str())
        .bind(id)
        .execute(self.storage().pool())
        .await;
        match result {
            Ok(done) if done.rows_affected() == 0 => Ok(None),
            Ok(_) => Ok(self.team(id).await?),
            Err(error) if is_unique_violation(&error) => Err(TeamWriteError::NameTaken(
                name.unwrap_or_default().to_string(),
            )),
            Err(source) => Err(StorageError::Query {
                context: "updating a team",
                source,
            }
            .into()),
        }
    }

    /// Deletes a team; whether it existed.
    pub async fn delete_team(&self, id: &str) -> Result<bool, StorageError> {
        sqlx::query("DELETE FROM teams WHERE tenant_id = $1 AND id = $2")
            .bind(self.tenant_id().as_str())
            .bind(id)
            .execute(self.storage().pool())
            .await
            .context("deleting a team")
            .map(|done| done.rows_affected() > 0)
    }

    /// The member whose turn it is, advancing the turn (one atomic statement, so
    /// concurrent picks on any number of processes get consecutive turns). `None` if the
    /// team does not exist or has no members.
    pub async fn next_team_member(&self, id: &str) -> Result<Option<String>, StorageError> {
        let row = sqlx::query(
            "UPDATE teams SET next_member = next_member + 1 WHERE tenant_id = $1 AND id = $2 \
             RETURNING next_member, members",
        )
        .bind(self.tenant_id().as_str())
        .bind(id)
        .fetch_optional(self.storage().pool())
        .await
        .context("taking a team turn")?;
        let Some(row) = row else { return Ok(None) };
        let turn: i64 = row.try_get("next_member").context("decoding a team turn")?;
        let members: String = row.try_get("members").context("decoding team members")?;
        let members: Vec<String> = serde_json::from_str(&members).unwrap_or_default();
        if members.is_empty() {
            return Ok(None);
        }
        let index = usize::try_from((turn - 1).rem_euclid(members.len() as i64)).unwrap_or(0);
        Ok(members.get(index).cloned())
    }

    /// The member with the fewest open conversations assigned (the first in member order
    /// among equals); `None` if the team does not exist or has no members.
    pub async fn least_busy_team_member(&self, id: &str) -> Result<Option<String>, StorageError> {
        let Some(team) = self.team(id).await? else {
            return Ok(None);
        };
        if team.members.is_empty() {
            return Ok(None);
        }
        let mut sql = Sql::new(
            "SELECT assignee, COUNT(*) AS open FROM conversations WHERE status = 'open' AND tenant_id = ",
        );
        let tenant = sql.bind(Bind::Text(self.tenant_id().as_str().to_string()));
        sql.push(&tenant);
        sql.push(" AND assignee IN (");
        for (position, member) in team.members.iter().enumerate() {
            if position > 0 {
                sql.push(", ");
            }
            let placeholder = sql.bind(Bind::Text(member.clone()));
            sql.push(&placeholder);
        }
        sql.push(") GROUP BY assignee");
        let rows = sql
            .into_query()
            .fetch_all(self.storage().pool())
            .await
            .context("counting open conversations per agent")?;
        let mut load = std::collections::HashMap::new();
        for row in rows {
            let agent: String = row.try_get("assignee").context("decoding an assignee")?;
            let open: i64 = row.try_get("open").context("decoding a count")?;
            load.insert(agent, open);
        }
        Ok(team
            .members
            .iter()
            .min_by_key(|member| load.get(*member).copied().unwrap_or(0))
            .cloned())
    }
}
