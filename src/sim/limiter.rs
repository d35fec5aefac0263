//! nginx's `limit_req` (leaky bucket with `burst` and `delay`), as Open Library runs it:
//! 180 requests per minute per client IP, `burst=25 delay=10`.
//!
//! Pure: the caller passes the time, so the algorithm is tested without sleeping. Mirrors
//! `ngx_http_limit_req_module`: a key's `excess` drains at the rate and grows by one per
//! accepted request; a new key starts at zero excess. An accepted request whose excess is
//! above `delay` is held by the server for `(excess - delay) / rate`; a request that would
//! push the excess above `burst` is rejected and does not change the state. Several zones on
//! one request ([`check_all`]: per IP and per User-Agent) behave like several `limit_req`
//! lines: a request rejected by any zone is charged to none.

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
        check_all(&mut [(self, key)], now)
    }

    /// The decision on a request for `key` at `now` and the bucket it would leave, without
    /// storing it: a rejected request leaves the bucket as it was.
    fn peek(&self, key: &str, now: Instant) -> (Decision, (f64, Instant)) {
        let Some((excess, last)) = self.buckets.get(key).copied() else {
            return (Decision::Pass, (0.0, now));
        };
        let drained = now.saturating_duration_since(last).as_secs_f64() * self.per_second;
        let next = (excess - drained).max(0.0) + 1.0;
        let decision = if next > self.burst {
            Decision::Reject
        } else if next > self.delay {
            Decision::Delay(Duration::from_secs_f64(
                (next - self.delay) / self.per_second,
            ))
        } else {
            Decision::Pass
        };
        (decision, (next, now))
    }

    /// Forgets every bucket (between test phases).
    pub fn clear(&mut self) {
        self.buckets.clear();
    }
}

/// Decides on one request under several zones, each with its own key (nginx with two
/// `limit_req` lines): rejected if any zone rejects, and then charged to none of them;
/// otherwise charged to all and held for the longest delay any of them asks.
pub fn check_all(zones: &mut [(&mut Limiter, &str)], now: Instant) -> Decision {
    let mut hold = Duration::ZERO;
    let mut next = Vec::with_capacity(zones.len());
    for (limiter, key) in zones.iter() {
        match limiter.peek(key, now) {
            (Decision::Reject, _) => return Decision::Reject,
            (Decision::Delay(d), state) => {
                hold = hold.max(d);
                next.push(state);
            }
            (Decision::Pass, state) => next.push(state),
        }
    }
    for ((limiter, key), state) in zones.iter_mut().zip(next) {
        limiter.buckets.insert((*key).to_owned(), state);
    }
    if hold.is_zero() {
        Decision::Pass
    } else {
        Decision::Delay(hold)
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

    /// A request the per-agent zone rejects is not charged to its IP's bucket, and the
    /// other way round: like nginx, a rejected request costs no zone anything.
    #[test]
    fn a_request_rejected_by_one_zone_is_charged_to_none() {
        let mut per_ip = Limiter::new(180, 25, 10);
        let mut per_agent = Limiter::new(400, 2, 2);
        let now = Instant::now();
        let mut decisions = Vec::new();
        for _ in 0..5 {
            decisions.push(check_all(
                &mut [(&mut per_ip, "ip"), (&mut per_agent, "ua")],
                now,
            ));
        }
        assert_eq!(
            decisions,
            [
                Decision::Pass,
                Decision::Pass,
                Decision::Pass,
                Decision::Reject,
                Decision::Reject
            ]
        );
        // The IP's bucket holds only the three it passed (excess 2), not five: eight more
        // pass undelayed before its excess goes past `delay` (10).
        let passed = (0..9)
            .filter(|_| per_ip.check("ip", now) == Decision::Pass)
            .count();
        assert_eq!(passed, 8);
        // The longest delay of the zones is the one served.
        let mut slow = Limiter::new(60, 5, 0);
        let mut fast = Limiter::new(6000, 5, 0);
        check_all(&mut [(&mut slow, "k"), (&mut fast, "k")], now);
        assert_eq!(
            check_all(&mut [(&mut slow, "k"), (&mut fast, "k")], now),
            Decision::Delay(Duration::from_secs(1))
        );
    }
}
