//! Send pacing: each channel install (one phone number) has a lane that admits sends at
//! its configured rate, and so does each throttled campaign (at its messages per
//! minute, so sends that all came due at once — after quiet hours, after the server was
//! down — still go at the campaign's pace), evenly spaced, by the generic cell rate
//! algorithm (GCRA: one "next" instant per lane instead of a token count and a refill
//! clock). A send may go at most [`EARLY`] before its even turn, which absorbs timer
//! and scheduling jitter; no second ever carries a burst on top of the rate (a token
//! bucket holding a second's worth let the first second carry twice the rate, which
//! Meta answers with 130429).
//!
//! A send is admitted only when its turn is near: within [`INLINE_WAIT`] for a
//! conversation (an agent's reply, a transactional message), within half of it for bulk
//! (campaigns, marketing sends), so bulk never fills the part of the window a
//! conversation may use — a reply on a number busy with a campaign waits a second at
//! most. The caller sleeps that little and sends. A send whose turn is further away
//! does not wait in its job's worker slot (a throttled number would otherwise hold
//! every job worker of the process and stall every other tenant): its job is deferred,
//! and [`Pacer::promise`] says when to come back. Bulk promises have their own clock,
//! one bulk window's worth of sends per deferred job, so deferred jobs come back one
//! after another, each finding its turn close enough to send, instead of all at once to
//! be deferred again.
//!
//! A provider's backoff (130429 and the like) holds the whole lane until the instant it
//! named, with no burst after it.
//!
//! Lanes live in memory, so each node (server process) on a shared database keeps
//! `rate / live nodes` ([`Pacer::set_nodes`], from the `cluster_nodes` heartbeat in
//! `server.rs`): together they keep the rate. Jobs a node defers are free to be taken by
//! another node, so the work spreads over the nodes' shares.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The longest a conversation's send waits for its turn inside its job (bulk: half);
/// beyond it, the job is deferred.
pub const INLINE_WAIT: Duration = Duration::from_secs(1);

/// What a send is, for the share of a lane's near turns it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Campaigns and marketing sends: turns up to half an [`INLINE_WAIT`] ahead.
    Bulk,
    /// Replies and transactional sends: turns up to an [`INLINE_WAIT`] ahead.
    Conversation,
}

impl Class {
    fn horizon(self) -> Duration {
        match self {
            Self::Bulk => INLINE_WAIT / 2,
            Self::Conversation => INLINE_WAIT,
        }
    }
}

/// How early before its even turn a send may go (GCRA's tolerance), for rates whose
/// spacing is wider.
const EARLY: Duration = Duration::from_millis(50);

/// Whether a send may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Its turn is reserved: go after this wait (at most its class's horizon).
    Go(Duration),
    /// Its turn is too far away; nothing was reserved. Defer the job ([`Pacer::promise`]).
    Later,
}

struct Lane {
    /// The rate last asked for (sends per second).
    rate: f64,
    /// GCRA's theoretical arrival time: admitted sends are paid for up to here.
    next: Instant,
    /// Deferred jobs were promised turns up to here.
    promised: Instant,
    /// The end of the latest provider hold: no turn before it, and sends admitted
    /// before it began check it before they go ([`Pacer::held`]).
    hold_end: Option<Instant>,
}

impl Lane {
    fn new(rate: f64, now: Instant) -> Self {
        Self {
            rate,
            next: now,
            promised: now,
            hold_end: None,
        }
    }

    /// The time between two sends.
    fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }

    /// How far ahead of `next` a send may go.
    fn tolerance(&self) -> Duration {
        EARLY.min(self.interval())
    }

    /// The earliest instant the lane admits a send (folding in a provider's hold, after
    /// which there is no burst).
    fn free_at(&mut self, now: Instant) -> Instant {
        if let Some(held) = self.hold_end {
            self.next = self.next.max(held + self.tolerance());
        }
        self.next
            .checked_sub(self.tolerance())
            .map_or(now, |at| at.max(now))
    }
}

/// The lanes of this process, by install id.
#[derive(Default)]
pub struct Pacer {
    lanes: Mutex<HashMap<String, Lane>>,
    /// The live nodes sharing the database (0 and 1 both mean this one alone): each
    /// keeps its share of every rate, so that together they keep the rate.
    nodes: AtomicUsize,
}

impl Pacer {
    /// Sets how many nodes share every lane's rate (this one included).
    pub fn set_nodes(&self, nodes: usize) {
        self.nodes.store(nodes.max(1), Ordering::Relaxed);
    }

    /// How many nodes share every lane's rate (this one included).
    pub fn nodes(&self) -> usize {
        self.nodes.load(Ordering::Relaxed).max(1)
    }

    /// Asks lane `key` (at `rate` sends a second, for all nodes together) for a turn at
    /// `now` for a send of `class`.
    pub fn admit(&self, key: &str, rate: f64, class: Class, now: Instant) -> Admit {
        // Precision loss is irrelevant: node counts are small.
        #[allow(clippy::cast_precision_loss)]
        let nodes = self.nodes.load(Ordering::Relaxed).max(1) as f64;
        let rate = (rate / nodes).max(f64::MIN_POSITIVE);
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if lanes.len() > 10_000 {
            // Lanes idle for a minute hold no turn and no promise: forget them.
            let idle = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
            lanes.retain(|_, lane| lane.next.max(lane.promised) > idle);
        }
        let lane = lanes
            .entry(key.to_string())
            .or_insert_with(|| Lane::new(rate, now));
        lane.rate = rate;
        let at = lane.free_at(now);
        let wait = at - now;
        if wait > class.horizon() {
            return Admit::Later;
        }
        lane.next = lane.next.max(now) + lane.interval();
        Admit::Go(wait)
    }

    /// A job deferred with `sends` sends of `class` to do through lane `key`: how long
    /// until it should come back. Bulk is promised one bulk window's worth at most (the
    /// rest it defers again), after the turns promised before it; a conversation comes
    /// back when its turn will be half a window away (it reserves nothing: few are ever
    /// deferred).
    pub fn promise(&self, key: &str, class: Class, sends: usize, now: Instant) -> Duration {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(lane) = lanes.get_mut(key) else {
            return Duration::ZERO; // no lane (never admitted here): nothing to wait for
        };
        let free = lane.free_at(now);
        if class == Class::Conversation {
            return (free - now).saturating_sub(INLINE_WAIT / 2);
        }
        let at = free.max(lane.promised);
        let sends = sends.clamp(1, bulk_window(lane.rate));
        lane.promised = at + lane.interval().mul_f64(sends as f64);
        at - now
    }

    /// The provider asked lane `key` to wait `wait` from `now` (at most an hour).
    pub fn hold(&self, key: &str, wait: Duration, now: Instant) {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let lane = lanes
            .entry(key.to_string())
            .or_insert_with(|| Lane::new(1.0, now));
        let until = now + wait.min(Duration::from_secs(3600));
        lane.hold_end = Some(lane.hold_end.map_or(until, |held| held.max(until)));
    }

    /// How long lane `key` is still held by a provider's hold at `now`, if it is: a send
    /// admitted before the hold began (and pausing for its turn) checks it before it
    /// goes, so that it does not go into the hold.
    pub fn held(&self, key: &str, now: Instant) -> Option<Duration> {
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let end = lanes.get(key)?.hold_end?;
        (end > now).then(|| end - now)
    }
}

/// Waits out the pause an [`Admit::Go`] gave, unless it is zero (the common case on a
/// number below its limit: a zero sleep still goes through the timer driver's lock,
/// once per send).
pub async fn sleep(pause: Duration) {
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
}

/// The sends one bulk window admits at `rate` (at least one).
fn bulk_window(rate: f64) -> usize {
    // Truncation intended: whole sends; rates are capped far below usize::MAX.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let sends = (rate * Class::Bulk.horizon().as_secs_f64()).floor() as usize;
    sends.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Admits `class` at `at` until the lane says later; the waits given.
    fn admit_all(pacer: &Pacer, rate: f64, class: Class, at: Instant) -> Vec<Duration> {
        let mut waits = Vec::new();
        while let Admit::Go(wait) = pacer.admit("n", rate, class, at) {
            waits.push(wait);
            assert!(waits.len() < 100_000, "the lane never says later");
        }
        waits
    }

    #[test]
    fn nodes_sharing_the_database_each_keep_their_share_of_the_rate() {
        let pacer = Pacer::default();
        pacer.set_nodes(2);
        let start = Instant::now();
        // 10 a second between two nodes: 5 a second here, one every 200 ms (50 ms early
        // at most), six within the conversation window of a second.
        let waits = admit_all(&pacer, 10.0, Class::Conversation, start);
        assert_eq!(waits.len(), 6, "{waits:?}");
        for (n, wait) in waits.iter().enumerate().skip(1) {
            let expected = MS * u32::try_from(n * 200 - 50).expect("small");
            assert!(wait.abs_diff(expected) < MS, "{n}: {wait:?}");
        }
        // Alone again: the whole rate, one every 100 ms after the turn already given.
        pacer.set_nodes(1);
        let later = start + MS * 1000;
        let waits = admit_all(&pacer, 10.0, Class::Conversation, later);
        assert!(waits.len() >= 8, "{waits:?}");
        for pair in waits[1..].windows(2) {
            assert!((pair[1] - pair[0]).abs_diff(MS * 100) < MS, "{waits:?}");
        }
    }

    #[test]
    fn a_lane_spaces_sends_evenly_and_keeps_half_its_window_for_conversations() {
        let pacer = Pacer::default();
        let start = Instant::now();
        // One at once, the next up to 50 ms early, then one every 100 ms: bulk up to
        // half a second ahead, conversations up to a second.
        let bulk = admit_all(&pacer, 10.0, Class::Bulk, start);
        let conversation = admit_all(&pacer, 10.0, Class::Conversation, start);
        assert_eq!(
            (bulk.len(), conversation.len()),
            (6, 5),
            "{bulk:?} {conversation:?}"
        );
        let waits: Vec<Duration> = bulk.into_iter().chain(conversation).collect();
        assert!(waits[0].is_zero(), "{waits:?}");
        for (n, wait) in waits.iter().enumerate().skip(1) {
            let expected = MS * u32::try_from(n * 100 - 50).expect("small");
            assert!(wait.abs_diff(expected) < MS, "{n}: {wait:?}");
        }
        // A refusal reserves nothing: half a second on, five more turns are free.
        let later = start + MS * 500;
        assert_eq!(admit_all(&pacer, 10.0, Class::Conversation, later).len(), 5);
    }

    #[test]
    fn a_steady_stream_goes_at_the_rate_and_conversations_always_find_a_near_turn() {
        let pacer = Pacer::default();
        let start = Instant::now();
        let mut sent = 0;
        // Bulk callers asking every millisecond for 100 s, sending when admitted; a
        // conversation every 100 ms.
        for tick in 0..100_000u32 {
            let now = start + MS * tick;
            if let Admit::Go(_) = pacer.admit("n", 50.0, Class::Bulk, now) {
                sent += 1;
            }
            if tick % 100 == 0 {
                let reply = pacer.admit("n", 50.0, Class::Conversation, now);
                assert!(
                    matches!(reply, Admit::Go(wait) if wait <= INLINE_WAIT),
                    "{tick}"
                );
                sent += 1;
            }
        }
        // 100 s at 50/s (the conversations take their share), plus the window
        // admitted ahead.
        assert!((5_000..=5_000 + 50 + 2).contains(&sent), "{sent}");
    }

    #[test]
    fn deferred_bulk_is_promised_turns_one_bulk_window_apart() {
        let pacer = Pacer::default();
        let start = Instant::now();
        admit_all(&pacer, 10.0, Class::Bulk, start);
        // The lane's next turn is 550 ms away (refused to bulk): the first deferred job
        // (25 sends) comes back then, promised one bulk window (5 sends, 500 ms); the
        // next 500 ms later; a job of 3 sends takes 300 ms.
        let promises: Vec<Duration> = [25, 25, 3, 1]
            .into_iter()
            .map(|sends| pacer.promise("n", Class::Bulk, sends, start))
            .collect();
        for (promised, expected) in promises.iter().zip([550, 1050, 1550, 1850]) {
            assert!(promised.abs_diff(MS * expected) < MS, "{promises:?}");
        }
        // Promises reserve no turn: a send never deferred (an agent's reply) queues
        // behind the window only, not behind 1.85 s of deferred jobs.
        let back = start + promises[0];
        assert_eq!(
            pacer.admit("n", 10.0, Class::Conversation, back),
            Admit::Go(Duration::ZERO)
        );
        // The first job comes back when promised and finds (almost) its window free.
        assert!(admit_all(&pacer, 10.0, Class::Bulk, back).len() >= 4);
        // Conversations fill the window (to 1.65 s); a deferred one comes back when
        // its turn is half a window away.
        admit_all(&pacer, 10.0, Class::Conversation, back);
        let retry = pacer.promise("n", Class::Conversation, 1, back);
        assert!(retry.abs_diff(MS * 600) < MS, "{retry:?}");
    }

    #[test]
    fn a_provider_hold_stops_the_lane_until_its_end_without_a_burst_after() {
        let pacer = Pacer::default();
        let start = Instant::now();
        let conversation = Class::Conversation;
        assert_eq!(
            pacer.admit("n", 100.0, conversation, start),
            Admit::Go(Duration::ZERO)
        );
        assert_eq!(pacer.held("n", start), None, "not held yet");
        pacer.hold("n", Duration::from_secs(5), start);
        assert_eq!(
            pacer.admit("n", 100.0, conversation, start + MS * 3999),
            Admit::Later
        );
        // A send admitted before the hold sees it (after another admit folded it in).
        assert_eq!(pacer.held("n", start + MS * 4000), Some(MS * 1000));
        assert_eq!(pacer.held("n", start + MS * 5000), None, "over");
        assert_eq!(pacer.held("m", start), None, "another lane");
        // Within a second of its end: admitted to go at the end, then 10 ms apart.
        for expected in [500, 510] {
            let Admit::Go(wait) = pacer.admit("n", 100.0, conversation, start + MS * 4500) else {
                panic!("admitted within the inline window");
            };
            assert!(wait.abs_diff(MS * expected) < MS, "{wait:?}");
        }
        // A deferred job is promised the end of the hold at the earliest.
        let promised = pacer.promise("n", Class::Bulk, 1, start + MS * 100);
        assert!(promised > MS * 4900, "{promised:?}");
        // Lanes are separate: another number is not held.
        assert_eq!(
            pacer.admit("m", 100.0, conversation, start),
            Admit::Go(Duration::ZERO)
        );
    }
}
