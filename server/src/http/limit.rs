//! A token bucket per client IP: `burst` requests at once, then `rate_per_s` a second.
//! Bounded: past [`MAX_CLIENTS`] tracked addresses, the full (idle) buckets are dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Most client addresses tracked at once.
pub const MAX_CLIENTS: usize = 10_000;

/// Tokens are kept in thousandths so that integer arithmetic refills smoothly.
const MILLI: u64 = 1000;

/// The per-IP limiter. A `std::sync::Mutex`, not a Tokio one: the critical section is a
/// hash lookup and never awaits.
pub struct RateLimiter {
    /// Refill, thousandths of a token per millisecond (= requests per second).
    rate_per_s: u64,
    /// Bucket size, thousandths of a token.
    burst_milli: u64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    /// Thousandths of a token.
    tokens_milli: u64,
    /// When last refilled, milliseconds on the limiter's clock.
    at_ms: u64,
}

impl RateLimiter {
    /// `rate_per_s` requests a second on average, `burst` at once.
    pub fn new(rate_per_s: u32, burst: u32) -> Self {
        Self {
            rate_per_s: u64::from(rate_per_s),
            burst_milli: u64::from(burst) * MILLI,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` may make a request at `now_ms` (a monotonic millisecond clock); takes
    /// a token if so.
    pub fn allow(&self, ip: IpAddr, now_ms: u64) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            // A panic while holding the lock cannot leave a bucket half-written; stay open.
            return true;
        };
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&ip) {
            let (rate, burst) = (self.rate_per_s, self.burst_milli);
            buckets.retain(|_, b| refilled(*b, now_ms, rate, burst) < burst);
        }
        let b = buckets.entry(ip).or_insert(Bucket {
            tokens_milli: self.burst_milli,
            at_ms: now_ms,
        });
        let tokens = refilled(*b, now_ms, self.rate_per_s, self.burst_milli);
        *b = Bucket {
            tokens_milli: tokens.saturating_sub(MILLI),
            at_ms: now_ms.max(b.at_ms),
        };
        tokens >= MILLI
    }
}

fn refilled(b: Bucket, now_ms: u64, rate_per_s: u64, burst_milli: u64) -> u64 {
    let elapsed = now_ms.saturating_sub(b.at_ms);
    b.tokens_milli
        .saturating_add(elapsed.saturating_mul(rate_per_s))
        .min(burst_milli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_per_client() {
        let l = RateLimiter::new(10, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let allowed = (0..5).filter(|_| l.allow(a, 0)).count();
        assert_eq!(allowed, 3);
        assert!(l.allow(b, 0), "another client has its own bucket");
        assert!(!l.allow(a, 50), "half a token after 50 ms at 10/s");
        assert!(l.allow(a, 150), "one token after 100 ms more");
        assert!(!l.allow(a, 150));
        // Idle for long: back to the burst, not more.
        let allowed = (0..10).filter(|_| l.allow(a, 100_000)).count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn bounded_number_of_clients() {
        let l = RateLimiter::new(1000, 1);
        for i in 0..(u32::try_from(MAX_CLIENTS).unwrap() + 50) {
            l.allow(IpAddr::from(i.to_be_bytes()), u64::from(i));
        }
        assert!(l.buckets.lock().unwrap().len() <= MAX_CLIENTS);
    }
}
