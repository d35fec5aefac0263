//! nginx's `limit_req` (leaky bucket with `burst` and `delay`), as Open Library runs it:
//! 180 requests per minute per client IP, `burst=25 delay=10`.
//!
//! Pure: the caller passes the time, so the algorithm is tested without sleeping. Mirrors
//! `ngx_http_limit_req_module`: a key's `excess` drains at the rate and grows by one per
//! accepted request; a new key starts at zero excess. An accepted request whose excess is
//! above `delay` is held by the server for `(excess - delay) / rate`; a request that would
//! push the excess above `burst` is rejected and does not change the state.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the limiter says about one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Serve it now.
    Pass,
    /// Serve it after holding it this long.
    Delay(Duration),
    /// Answer 429.
    Reject,
}

/// A `limit_req` zone: one bucket per key (client IP or User-Agent).
#[derive(Debug)]
pub struct Limiter {
    per_second: f64,
    burst: f64,
    delay: f64,
    buckets: HashMap<String, (f64, Instant)>,
}

impl Limiter {
    /// `rate_per_minute` requests per minute, `burst` excess requests allowed, the first
    /// `delay` of them served without delay (nginx's `delay=`).
    pub fn new(rate_per_minute: u32, burst: u32, delay: u32) -> Self {
        Limiter {
            per_second: f64::from(rate_per_minute.max(1)) / 60.0,
            burst: f64::from(burst),
            delay: f64::from(delay.min(burst)),
            buckets: HashMap::new(),
        }
    }

    /// Decides on a request for `key` arriving at `now`.
    pub fn check(&mut self, key: &str, now: Instant) -> Decision {
        let Some((excess, last)) = self.buckets.get(key).copied() else {
            self.buckets.insert(key.to_owned(), (0.0, now));
            return Decision::Pass;
        };
        let drained = now.saturating_duration_since(last).as_secs_f64() * self.per_second;
        let next = (excess - drained).max(0.0) + 1.0;
        if next > self.burst {
            return Decision::Reject;
        }
        self.buckets.insert(key.to_owned(), (next, now));
        if next > self.delay {
            Decision::Delay(Duration::from_secs_f64(
                (next - self.delay) / self.per_second,
            ))
        } else {
            Decision::Pass
        }
    }

    /// Forgets every bucket (between test phases).
    pub fn clear(&mut self) {
        self.buckets.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_burst_passes_ten_delays_fifteen_and_rejects_the_rest() {
        let mut limiter = Limiter::new(180, 25, 10);
        let now = Instant::now();
        let decisions: Vec<Decision> = (0..40).map(|_| limiter.check("ip", now)).collect();
        let pass = decisions.iter().filter(|d| **d == Decision::Pass).count();
        let delayed = decisions
            .iter()
            .filter(|d| matches!(d, Decision::Delay(_)))
            .count();
        let rejected = decisions.iter().filter(|d| **d == Decision::Reject).count();
        // The first request, then ten excess at once, then fifteen held back.
        assert_eq!((pass, delayed, rejected), (11, 15, 14));
        assert_eq!(
            decisions[11],
            Decision::Delay(Duration::from_secs_f64(1.0 / 3.0))
        );
        assert_eq!(limiter.check("other", now), Decision::Pass);
    }

    #[test]
    fn the_bucket_drains_at_the_rate() {
        let mut limiter = Limiter::new(180, 25, 10);
        let start = Instant::now();
        for _ in 0..26 {
            limiter.check("ip", start);
        }
        assert_eq!(limiter.check("ip", start), Decision::Reject);
        // One request drains every third of a second at 180/min.
        let later = start + Duration::from_millis(340);
        assert!(matches!(limiter.check("ip", later), Decision::Delay(_)));
        assert_eq!(limiter.check("ip", later), Decision::Reject);
    }
}
