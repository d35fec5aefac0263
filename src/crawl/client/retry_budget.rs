//! The retry budget: retries may take only a share of the traffic, so keys that always fail
//! cannot take the rate budget from healthy ones.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Caps retries at `ratio` of first attempts plus `min`, over a sliding window (kept as ten
/// buckets), per process. When it is empty a retryable failure fails at once.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min: u32,
    bucket: Duration,
    /// (bucket number, first attempts, retries), oldest first.
    buckets: Mutex<VecDeque<(u64, u64, u64)>>,
    epoch: Instant,
}

impl RetryBudget {
    /// A budget of `ratio · requests + min` retries per `window`.
    pub fn new(ratio: f64, min: u32, window: Duration) -> Self {
        Self {
            ratio,
            min,
            bucket: (window / 10).max(Duration::from_millis(10)),
            buckets: Mutex::new(VecDeque::new()),
            epoch: Instant::now(),
        }
    }

    fn with_current<T>(&self, f: impl FnOnce(&mut VecDeque<(u64, u64, u64)>) -> T) -> T {
        let now = u64::try_from(self.epoch.elapsed().as_nanos() / self.bucket.as_nanos().max(1))
            .unwrap_or(u64::MAX);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        while buckets.front().is_some_and(|&(n, _, _)| n + 10 <= now) {
            buckets.pop_front();
        }
        if buckets.back().is_none_or(|&(n, _, _)| n != now) {
            buckets.push_back((now, 0, 0));
        }
        f(&mut buckets)
    }

    /// Counts a first attempt.
    pub fn record_request(&self) {
        self.with_current(|b| {
            if let Some(last) = b.back_mut() {
                last.1 += 1;
            }
        });
    }

    /// Takes one retry from the budget if it has one.
    pub fn try_retry(&self) -> bool {
        self.with_current(|b| {
            let (firsts, retries) = b
                .iter()
                .fold((0, 0), |(f, r), &(_, bf, br)| (f + bf, r + br));
            let allowed = self.ratio * firsts as f64 + f64::from(self.min);
            if (retries + 1) as f64 <= allowed {
                if let Some(last) = b.back_mut() {
                    last.2 += 1;
                }
                true
            } else {
                false
            }
        })
    }

    /// (first attempts, retries) in the current window, for tests and reports.
    pub fn counts(&self) -> (u64, u64) {
        self.with_current(|b| {
            b.iter()
                .fold((0, 0), |(f, r), &(_, bf, br)| (f + bf, r + br))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget allows `min` retries with no traffic, then `ratio` of first attempts.
    #[test]
    fn retry_budget_caps_retries_at_a_share_of_requests() {
        let budget = RetryBudget::new(0.2, 2, Duration::from_secs(60));
        assert!(budget.try_retry());
        assert!(budget.try_retry());
        assert!(!budget.try_retry(), "min spent");
        for _ in 0..10 {
            budget.record_request();
        }
        assert!(budget.try_retry());
        assert!(budget.try_retry());
        assert!(!budget.try_retry(), "2 + 20% of 10 spent");
    }
}
