//! Live events across PostgreSQL nodes (`LISTEN` / `NOTIFY`).
//!
//! The inbox's event stream (`GET /v1/events`) is fed by an in-process broadcast, and
//! what changes a conversation often happens on another node: Meta's webhook, a job, an
//! agent's reply through the load balancer. Every event published on a node is also
//! sent, in batches, as a notification on the channel [`CHANNEL`] (one connection of its
//! own); every node listens on it (another connection) and puts the events of the
//! other nodes into its own broadcast. So an inbox connected to any node sees every
//! change of its tenant.
//!
//! The same notifications carry the provider's holds: when Meta tells one node that a
//! number is over its throughput (130429 with a wait), every node holds that number's
//! lane until the same instant, instead of each learning it from a refusal of its own.
//!
//! A notification's payload must stay under 8,000 bytes: events are packed into batches
//! up to [`PAYLOAD_LIMIT`], and an event too large on its own (a long message text) is
//! relayed reduced to its short scalar fields with `"partial": true`, so a client knows
//! to read the rest through the API. Like the stream itself, the relay is live-only and
//! best effort: events published while the listening connection reconnects, or beyond
//! [`QUEUE`] waiting to be sent, are not seen on the other nodes (counted, logged).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{mpsc, watch};

use crate::messaging::{LiveEvent, Messaging};

/// The notification channel.
pub const CHANNEL: &str = "postdog_live";

/// The largest payload sent (PostgreSQL refuses 8,000 bytes and more).
pub const PAYLOAD_LIMIT: usize = 7_000;

/// Events waiting to be sent before new ones are dropped.
pub const QUEUE: usize = 16_384;

/// Events not relayed: the queue was full, or sending failed.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// What a node relays: a live event, or a provider's hold on a pacing lane.
#[derive(Debug, Clone)]
pub(crate) enum Outgoing {
    /// A live event.
    Event(Arc<LiveEvent>),
    /// Lane `lane` is held until `until_ms` (Unix ms).
    Hold {
        /// The lane (an install id).
        lane: String,
        /// The end of the hold.
        until_ms: i64,
    },
}

/// One notification: the node that sent it, its events and holds.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Batch {
    node: String,
    events: Vec<Relayed>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    holds: Vec<RelayedHold>,
}

/// A hold on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct RelayedHold {
    /// Lane.
    l: String,
    /// Until, Unix ms.
    u: i64,
}

/// An event on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Relayed {
    /// Tenant id.
    t: String,
    /// Kind.
    k: String,
    /// Data.
    d: Value,
}

/// Starts relaying `messaging`'s events through the PostgreSQL server at `url` until
/// `stopped` turns true. Errors only if the first connections fail.
pub(crate) async fn start(
    url: &str,
    messaging: &Messaging,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let node = format!("live-{}", uuid::Uuid::now_v7());
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    let sender = PgPoolOptions::new().max_connections(1).connect(url).await?;
    let (queue, outgoing) = mpsc::channel(QUEUE);
    messaging.relay_to(queue);
    let send = tokio::spawn(send_loop(sender, node.clone(), outgoing));
    let receive = tokio::spawn(receive_loop(listener, node, messaging.clone(), stopped));
    Ok(vec![send, receive])
}

async fn send_loop(pool: sqlx::PgPool, node: String, mut outgoing: mpsc::Receiver<Outgoing>) {
    let mut waiting = Vec::new();
    // Ends when every sender is gone (the server stopped).
    while outgoing.recv_many(&mut waiting, 1024).await > 0 {
        for payload in batches(&node, waiting.drain(..)) {
            let sent = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&payload.0)
                .execute(&pool)
                .await;
            if let Err(error) = sent {
                DROPPED.fetch_add(payload.1, Ordering::Relaxed);
                tracing::warn!(%error, events = payload.1, "relaying live events to the other nodes failed");
            }
        }
    }
    pool.close().await;
}

async fn receive_loop(
    mut listener: PgListener,
    node: String,
    messaging: Messaging,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let notification = tokio::select! {
            notification = listener.recv() => notification,
            changed = stopped.changed() => {
                if changed.is_err() || *stopped.borrow() {
                    return;
                }
                continue;
            }
        };
        match notification {
            Ok(notification) => match serde_json::from_str::<Batch>(notification.payload()) {
                Ok(batch) if batch.node == node => {} // our own
                Ok(batch) => {
                    for hold in batch.holds {
                        messaging.apply_relayed_hold(&hold.l, hold.u);
                    }
                    for event in batch.events {
                        messaging.publish_relayed(LiveEvent {
                            tenant_id: event.t,
                            kind: event.k,
                            data: event.d,
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, "a live-event notification that is not ours"),
            },
            Err(error) => {
                // `recv` reconnects by itself; a server that is away is retried calmly.
                tracing::warn!(%error, "listening for other nodes' live events failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Packs `outgoing` into payloads under [`PAYLOAD_LIMIT`] (with how many items each).
fn batches(node: &str, outgoing: impl Iterator<Item = Outgoing>) -> Vec<(String, u64)> {
    let encode = |events: &[Relayed], holds: &[RelayedHold]| {
        serde_json::to_string(&Batch {
            node: node.to_string(),
            events: events.to_vec(),
            holds: holds.to_vec(),
        })
        .unwrap_or_default()
    };
    // The envelope with an empty `holds` list, so that adding one never overflows.
    let envelope = encode(&[], &[]).len() + r#","holds":[]"#.len();
    let mut payloads = Vec::new();
    let (mut events, mut holds): (Vec<Relayed>, Vec<RelayedHold>) = (Vec::new(), Vec::new());
    let mut size = envelope;
    for item in outgoing {
        let (length, item) = match item {
            Outgoing::Hold { lane, until_ms } => {
                let hold = RelayedHold {
                    l: lane,
                    u: until_ms,
                };
                let length = serde_json::to_string(&hold).map_or(0, |text| text.len()) + 1;
                (length, Err(hold))
            }
            Outgoing::Event(event) => {
                let mut relayed = Relayed {
                    t: event.tenant_id.clone(),
                    k: event.kind.clone(),
                    d: event.data.clone(),
                };
                let mut length = serde_json::to_string(&relayed).map_or(0, |text| text.len()) + 1;
                if envelope + length > PAYLOAD_LIMIT {
                    relayed.d = reduced(&relayed.d);
                    length = serde_json::to_string(&relayed).map_or(0, |text| text.len()) + 1;
                }
                (length, Ok(relayed))
            }
        };
        if envelope + length > PAYLOAD_LIMIT {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            continue; // even its ids are too long: nothing sensible to relay
        }
        if size + length > PAYLOAD_LIMIT && !(events.is_empty() && holds.is_empty()) {
            payloads.push((encode(&events, &holds), (events.len() + holds.len()) as u64));
            events.clear();
            holds.clear();
            size = envelope;
        }
        size += length;
        match item {
            Ok(event) => events.push(event),
            Err(hold) => holds.push(hold),
        }
    }
    if !(events.is_empty() && holds.is_empty()) {
        payloads.push((encode(&events, &holds), (events.len() + holds.len()) as u64));
    }
    payloads
}

/// An event's data cut down to its short scalar fields (ids, statuses, times), marked
/// `partial`.
fn reduced(data: &Value) -> Value {
    let mut kept = Map::new();
    if let Some(fields) = data.as_object() {
        for (key, value) in fields {
            let short = match value {
                Value::String(text) => text.len() <= 256,
                Value::Number(_) | Value::Bool(_) | Value::Null => true,
                Value::Array(_) | Value::Object(_) => false,
            };
            if short {
                kept.insert(key.clone(), value.clone());
            }
        }
    }
    kept.insert("partial".into(), Value::Bool(true));
    Value::Object(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(n: usize, text: &str) -> Outgoing {
        Outgoing::Event(Arc::new(LiveEvent {
            tenant_id: "tenant".into(),
            kind: "message.received".into(),
            data: json!({"id": format!("m{n}"), "text": text}),
        }))
    }

    #[test]
    fn events_are_packed_under_the_payload_limit_and_big_ones_reduced() {
        let mut events: Vec<_> = (0..400).map(|n| event(n, "hello there")).collect();
        events.insert(
            7,
            Outgoing::Hold {
                lane: "install-1".into(),
                until_ms: 1_700_000_000_000,
            },
        );
        let payloads = batches("node-a", events.into_iter());
        assert!(payloads.len() > 1, "400 events do not fit one notification");
        let mut seen = Vec::new();
        let mut holds = Vec::new();
        for (payload, count) in &payloads {
            assert!(payload.len() <= PAYLOAD_LIMIT, "{}", payload.len());
            let batch: Batch = serde_json::from_str(payload).expect("a batch");
            assert_eq!(batch.node, "node-a");
            assert_eq!((batch.events.len() + batch.holds.len()) as u64, *count);
            seen.extend(batch.events.into_iter().map(|e| e.d["id"].clone()));
            holds.extend(batch.holds);
        }
        assert_eq!(
            holds,
            vec![RelayedHold {
                l: "install-1".into(),
                u: 1_700_000_000_000
            }],
            "the hold travels once"
        );
        let expected: Vec<Value> = (0..400).map(|n| json!(format!("m{n}"))).collect();
        assert_eq!(seen, expected, "every event once, in order");

        let long = "x".repeat(20_000);
        let payloads = batches("node-a", [event(1, &long), event(2, "short")].into_iter());
        assert_eq!(payloads.len(), 1);
        let batch: Batch = serde_json::from_str(&payloads[0].0).expect("a batch");
        assert_eq!(
            batch.events[0].d,
            json!({"id": "m1", "partial": true}),
            "the long text is left out"
        );
        assert_eq!(batch.events[1].d, json!({"id": "m2", "text": "short"}));
    }
}
