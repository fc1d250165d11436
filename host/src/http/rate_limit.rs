//! Per-tenant request rate limiting: a token bucket per tenant holding a minute's worth
//! of the plan's requests, refilled continuously. Limits are per process; with several
//! `postdog serve` nodes each enforces the limit on its share of the traffic (noted for
//! the multi-node milestone).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::ids::TenantId;

struct Bucket {
    capacity: f64,
    tokens: f64,
    updated: Instant,
}

/// The outcome of one request's check, with what the `RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests per minute for this tenant.
    pub limit: u32,
    /// Requests left right now.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_seconds: u64,
    /// Seconds to wait before retrying, when refused.
    pub retry_after_seconds: u64,
}

/// Buckets kept before idle ones are pruned.
const PRUNE_ABOVE: usize = 4_096;
/// A bucket untouched this long is full again, so it may be forgotten.
const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The limiter shared by all requests of one process.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<TenantId, Bucket>>,
}

impl RateLimiter {
    /// Takes one request from `tenant`'s bucket of `per_minute` requests.
    pub fn check(&self, tenant: &TenantId, per_minute: u32) -> Decision {
        self.check_at(tenant, per_minute, Instant::now())
    }

    fn check_at(&self, tenant: &TenantId, per_minute: u32, now: Instant) -> Decision {
        let capacity = f64::from(per_minute.max(1));
        let rate = capacity / 60.0;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if !buckets.contains_key(tenant) {
            // Before growing the map, drop buckets idle for a minute: a minute refills any
            // bucket, so a dropped bucket and a fresh full one decide the same way.
            if buckets.len() >= PRUNE_ABOVE {
                buckets.retain(|_, bucket| now.saturating_duration_since(bucket.updated) < IDLE);
            }
            buckets.insert(
                tenant.clone(),
                Bucket {
                    capacity,
                    tokens: capacity,
                    updated: now,
                },
            );
        }
        // Looked up before inserting so the common case does not clone the id.
        let bucket = buckets
            .get_mut(tenant)
            .expect("the bucket was inserted above");
        // A plan change takes effect at once: an upgrade adds the difference, a downgrade
        // removes it.
        if bucket.capacity != capacity {
            bucket.tokens = (bucket.tokens + capacity - bucket.capacity).clamp(0.0, capacity);
            bucket.capacity = capacity;
        }
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.updated = now;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        let remaining = bucket.tokens.floor().max(0.0) as u32;
        let reset_seconds = ((capacity - bucket.tokens) / rate).ceil().max(0.0) as u64;
        let retry_after_seconds = if allowed {
            0
        } else {
            ((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64
        };
        Decision {
            allowed,
            limit: per_minute,
            remaining,
            reset_seconds,
            retry_after_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_minute_of_requests_then_refill() {
        let limiter = RateLimiter::default();
        let tenant = TenantId::new("t");
        let start = Instant::now();
        for index in 0..100 {
            let decision = limiter.check_at(&tenant, 100, start);
            assert!(decision.allowed, "request {index}");
            assert_eq!(decision.remaining, 99 - index);
        }
        let refused = limiter.check_at(&tenant, 100, start);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_seconds, 1);
        assert_eq!(refused.reset_seconds, 60);
        // 0.6 s later one request has been refilled.
        assert!(
            limiter
                .check_at(&tenant, 100, start + Duration::from_millis(600))
                .allowed
        );
        // Another tenant has its own bucket.
        assert!(limiter.check_at(&TenantId::new("u"), 100, start).allowed);
        // An upgrade applies at once: the extra 1,900 requests are available immediately.
        let upgraded = limiter.check_at(&tenant, 2_000, start + Duration::from_millis(600));
        assert!(upgraded.allowed);
        assert_eq!(upgraded.remaining, 1_899);
    }

    #[test]
    fn idle_buckets_are_pruned_without_changing_decisions() {
        let limiter = RateLimiter::default();
        let start = Instant::now();
        let busy = TenantId::new("busy");
        for _ in 0..50 {
            limiter.check_at(&busy, 100, start);
        }
        for index in 0..PRUNE_ABOVE {
            limiter.check_at(&TenantId::new(format!("idle-{index}")), 100, start);
        }
        let later = start + IDLE + Duration::from_secs(1);
        // A new tenant after the idle period prunes the idle buckets…
        limiter.check_at(&TenantId::new("newcomer"), 100, later);
        let kept = limiter.buckets.lock().expect("lock").len();
        assert_eq!(kept, 1, "only the newcomer's bucket is left");
        // …and a pruned tenant decides as a refilled bucket would.
        let again = limiter.check_at(&busy, 100, later);
        assert!(again.allowed);
        assert_eq!(again.remaining, 99);
    }
}
