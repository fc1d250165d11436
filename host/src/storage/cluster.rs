//! The nodes sharing the database (`cluster_nodes`): each server process says it is
//! alive every few seconds and reads how many are, so that rates it enforces in memory
//! (a phone number's sends, a throttled campaign's) can be divided between them.

use super::{QueryContext, Storage, StorageError};

impl Storage {
    /// Records that node `id` (started at `started_at`) is alive at `now`, forgets nodes
    /// not seen for ten times `ttl_ms`, and answers how many nodes were seen within
    /// `ttl_ms` (this one included).
    pub async fn node_heartbeat(
        &self,
        id: &str,
        started_at: i64,
        now: i64,
        ttl_ms: i64,
    ) -> Result<usize, StorageError> {
        let outcome: Result<i64, sqlx::Error> = async {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO cluster_nodes (id, started_at, seen_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
            )
            .bind(id)
            .bind(started_at)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM cluster_nodes WHERE seen_at < $1")
                .bind(now - ttl_ms.saturating_mul(10))
                .execute(&mut *tx)
                .await?;
            let live: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM cluster_nodes WHERE seen_at >= $1")
                    .bind(now - ttl_ms)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(live)
        }
        .await;
        let live = outcome.context("recording this node's heartbeat")?;
        Ok(usize::try_from(live).unwrap_or(1).max(1))
    }

    /// Node `id` stops (a graceful shutdown): the others stop counting it at once.
    pub async fn node_leave(&self, id: &str) -> Result<(), StorageError> {
        let _turn = self.write_turn().await;
        sqlx::query("DELETE FROM cluster_nodes WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await
            .context("removing this node")
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::testing;

    /// Nodes count while seen within the time to live, leave at once, and are forgotten
    /// once long gone.
    #[tokio::test]
    async fn live_nodes_are_those_seen_lately_on_every_backend() -> anyhow::Result<()> {
        for backend in testing::all_backends().await? {
            let label = backend.label;
            let storage = &backend.storage;
            let now = 1_000_000_000;
            assert_eq!(
                storage.node_heartbeat("a", now, now, 15_000).await?,
                1,
                "{label}"
            );
            assert_eq!(
                storage
                    .node_heartbeat("b", now, now + 1_000, 15_000)
                    .await?,
                2,
                "{label}"
            );
            // `a` again 14 s later: both still live.
            assert_eq!(
                storage
                    .node_heartbeat("a", now, now + 14_000, 15_000)
                    .await?,
                2,
                "{label}"
            );
            // `b` silent for 16 s: only `a`.
            assert_eq!(
                storage
                    .node_heartbeat("a", now, now + 17_000, 15_000)
                    .await?,
                1,
                "{label}"
            );
            // `b` comes back; then leaves.
            assert_eq!(
                storage
                    .node_heartbeat("b", now, now + 18_000, 15_000)
                    .await?,
                2,
                "{label}"
            );
            storage.node_leave("b").await?;
            assert_eq!(
                storage
                    .node_heartbeat("a", now, now + 19_000, 15_000)
                    .await?,
                1,
                "{label}"
            );
            // A node gone for ten times the time to live is forgotten.
            storage
                .node_heartbeat("c", now, now + 20_000, 15_000)
                .await?;
            storage
                .node_heartbeat("a", now, now + 400_000, 15_000)
                .await?;
            let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cluster_nodes")
                .fetch_one(storage.pool())
                .await?;
            assert_eq!(rows, 1, "{label}: only `a` is left");
        }
        Ok(())
    }
}
