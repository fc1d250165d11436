//! This node among the nodes (server processes) sharing the database.
//!
//! Every [`HEARTBEAT`] the node records that it is alive (`cluster_nodes`) and reads how
//! many nodes were seen within [`TTL`]; the send pacer divides every lane's rate by that
//! number, so N nodes together keep a phone number's configured rate instead of sending
//! N times it. A node registers before its job workers start and removes itself on a
//! graceful shutdown; one that crashed stops counting after [`TTL`] (until then the
//! others keep a smaller share: slower, never over the rate). A node that joins is
//! counted by the others at their next heartbeat, so for up to [`HEARTBEAT`] the nodes
//! together may go up to 1 + 1/N times the rate. A node restarted after a crash counts
//! its own predecessor until that one's [`TTL`] runs out (half rates at worst, for
//! seconds). Only PostgreSQL nodes take part: a SQLite file belongs to one process.

use std::time::Duration;

use tokio::sync::watch;

use crate::messaging::Messaging;
use crate::storage::{Storage, now_ms};

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long a node counts after its last heartbeat.
pub const TTL: Duration = Duration::from_secs(15);

/// This node's membership.
pub(crate) struct Node {
    id: String,
    started_at: i64,
}

impl Node {
    /// Registers a new node and gives the pacer its share.
    pub(crate) async fn join(storage: &Storage, messaging: &Messaging) -> Self {
        let node = Self {
            id: format!("node-{}", uuid::Uuid::now_v7()),
            started_at: now_ms(),
        };
        node.beat(storage, messaging).await;
        node
    }

    async fn beat(&self, storage: &Storage, messaging: &Messaging) {
        let ttl = i64::try_from(TTL.as_millis()).unwrap_or(15_000);
        match storage
            .node_heartbeat(&self.id, self.started_at, now_ms(), ttl)
            .await
        {
            Ok(nodes) => messaging.pacer().set_nodes(nodes),
            // The last count stays: a node that cannot reach the database sends little.
            Err(error) => tracing::warn!(%error, node = %self.id, "node heartbeat failed"),
        }
    }

    /// Beats until `stopped` turns true, then leaves.
    pub(crate) async fn run(
        self,
        storage: Storage,
        messaging: Messaging,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate; `join` just beat
        loop {
            tokio::select! {
                _ = ticks.tick() => self.beat(&storage, &messaging).await,
                changed = stopped.changed() => {
                    if changed.is_err() || *stopped.borrow() {
                        break;
                    }
                }
            }
        }
        if let Err(error) = storage.node_leave(&self.id).await {
            tracing::warn!(%error, node = %self.id, "leaving the cluster failed");
        }
    }
}
