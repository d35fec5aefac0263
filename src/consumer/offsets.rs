//! Committing offsets: periodic commits off the loop with retry and backoff, and the
//! synchronous commits of a revoke and of shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::Handler;
use super::partitions::Shared;
use super::run::Turn;
use super::tracker::{Epoch, TopicPartition};

/// Bound on the synchronous commit at shutdown, after the drain.
pub(super) const FINAL_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Backoff of a retried commit: fast at first (a coordinator move), capped so a long outage
/// is retried every few seconds.
pub(super) fn commit_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

/// How long a revoke's commit may keep retrying, on its own budget: the drain before it has
/// usually used up its deadline, and a commit given only what is left was tried once, so one
/// `REBALANCE_IN_PROGRESS` or coordinator move redelivered completed work to the next owner.
/// Short, because the rebalance waits for this callback: a few tries of the commit backoff
/// (100 ms, 200 ms, 400 ms, 800 ms…).
pub(super) const REVOKE_COMMIT_BUDGET: Duration = Duration::from_secs(2);

/// The deadline of a revoke's commit: its own budget from now, or the drain's deadline if that
/// is later.
pub(super) fn revoke_commit_deadline(drain_deadline: Instant, now: Instant) -> Instant {
    drain_deadline.max(now + REVOKE_COMMIT_BUDGET)
}

/// Runs `attempt` until it succeeds or the next try would start past `deadline` (at least
/// once), sleeping the commit backoff between tries; `failed` sees each error. Returns whether
/// an attempt succeeded.
pub(super) fn retry_until<E: std::fmt::Display>(
    deadline: Instant,
    mut attempt: impl FnMut() -> Result<(), E>,
    mut failed: impl FnMut(&E),
) -> bool {
    let mut backoff = commit_backoff();
    loop {
        match attempt() {
            Ok(()) => return true,
            Err(e) => {
                failed(&e);
                let delay = backoff.next().unwrap_or(Duration::from_secs(1));
                if Instant::now() + delay >= deadline {
                    warn!(error = %e, "final commit failed; the uncommitted messages will be redelivered");
                    return false;
                }
                warn!(error = %e, retry_in = ?delay, "commit failed, retrying");
                std::thread::sleep(delay);
            }
        }
    }
}

impl Shared {
    /// Commits `batch` synchronously, retrying with backoff until `deadline` (at least once).
    pub(super) fn commit_sync<C: ConsumerContext, K: Consumer<C>>(
        &self,
        consumer: &K,
        batch: &[(TopicPartition, Epoch, i64)],
        deadline: Instant,
    ) -> bool {
        let list = offsets_list(batch);
        let started = Instant::now();
        let committed = retry_until(
            deadline,
            || consumer.commit(&list, CommitMode::Sync),
            |_| self.metrics.commit_errors.inc(),
        );
        if committed {
            self.metrics
                .commit_latency
                .observe(started.elapsed().as_secs_f64());
            let mut state = self.lock();
            for (partition, epoch, offset) in batch {
                state.tracker.committed(partition, *epoch, *offset);
            }
            debug!(partitions = batch.len(), "offsets committed synchronously");
        }
        committed
    }
}

impl Shared {
    /// One periodic commit: whatever is committable now, under the commit gate. A failure
    /// keeps everything in the tracker and schedules the next attempt after backoff.
    pub(super) fn commit_periodic<C: ConsumerContext, K: Consumer<C>>(
        &self,
        consumer: &K,
        interval: Duration,
    ) {
        let _gate = self.commit_gate.lock().unwrap_or_else(|e| e.into_inner());
        let batch = self.lock().tracker.committable();
        if batch.is_empty() {
            return;
        }
        let sent = Instant::now();
        let result = consumer.commit(&offsets_list(&batch), CommitMode::Sync);
        let mut state = self.lock();
        match result {
            Ok(()) => {
                for (partition, epoch, offset) in &batch {
                    state.tracker.committed(partition, *epoch, *offset);
                }
                let first = state.commit_first_failure.take().unwrap_or(sent);
                self.metrics
                    .commit_latency
                    .observe(first.elapsed().as_secs_f64());
                if state.commit_failures > 0 {
                    info!(
                        failures = state.commit_failures,
                        "offset commits succeed again"
                    );
                }
                state.commit_failures = 0;
                state.commit_retry = None;
                state.next_commit = Instant::now() + interval;
                debug!(partitions = batch.len(), "offsets committed");
            }
            Err(error) => {
                state.commit_first_failure.get_or_insert(sent);
                self.metrics.commit_errors.inc();
                state.commit_failures += 1;
                let delay = state
                    .commit_retry
                    .get_or_insert_with(commit_backoff)
                    .next()
                    .unwrap_or(Duration::from_secs(10));
                state.next_commit = Instant::now() + delay;
                // Summarised: the first failure and then every tenth, not one line per retry.
                if state.commit_failures == 1 || state.commit_failures % 10 == 0 {
                    warn!(error = %error, failures = state.commit_failures, retry_in = ?delay,
                        "offset commit failed; retrying with backoff");
                }
            }
        }
    }
}

/// A list of explicit offsets to commit: each is the next message to consume (the tracker
/// already says so), and a list with explicit offsets is committed as given — unlike
/// `store_offset`, which adds one.
pub(super) fn offsets_list(batch: &[(TopicPartition, Epoch, i64)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::with_capacity(batch.len());
    for (partition, _, offset) in batch {
        // Only fails for an invalid offset kind; `Offset::Offset` is always valid.
        let _ = list.add_partition_offset(
            &partition.topic,
            partition.partition,
            Offset::Offset(*offset),
        );
    }
    list
}

impl<H: Handler> Turn<'_, H> {
    /// Commits every offset that moved, on a blocking thread (librdkafka reports the result
    /// of an asynchronous commit only through a callback rust-rdkafka does not install), unless
    /// a commit is running or a failed one waits for its backoff.
    pub(super) fn commit_if_due(&self) {
        {
            let mut state = self.shared.lock();
            if state.committing
                || Instant::now() < state.next_commit
                || state.tracker.committable().is_empty()
            {
                return;
            }
            state.committing = true;
        }
        let shared = Arc::clone(self.shared);
        let consumer = Arc::clone(self.consumer);
        let interval = self.commit_interval;
        tokio::task::spawn_blocking(move || {
            shared.commit_periodic(consumer.as_ref(), interval);
            shared.lock().committing = false;
            shared.wake.notify_one();
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{REVOKE_COMMIT_BUDGET, retry_until, revoke_commit_deadline};

    /// Issue 14, item 11: a revoke whose drain used up its deadline still retries a failed
    /// commit (a `REBALANCE_IN_PROGRESS` once) within its own budget. With the drain's
    /// deadline, which the revoke used to pass, the commit was tried once and given up.
    #[test]
    fn a_revoke_commit_after_a_full_drain_still_gets_retries() {
        let drain_deadline = Instant::now() - Duration::from_millis(1);
        let flaky = || {
            let mut calls = 0;
            move || {
                calls += 1;
                if calls == 1 {
                    Err("Broker: Group rebalance in progress")
                } else {
                    Ok(())
                }
            }
        };
        let mut errors = 0;
        assert!(
            !retry_until(drain_deadline, flaky(), |_| errors += 1),
            "the drain's deadline leaves one try"
        );
        assert_eq!(errors, 1);

        let now = Instant::now();
        let deadline = revoke_commit_deadline(drain_deadline, now);
        assert!(deadline >= now + REVOKE_COMMIT_BUDGET);
        assert!(
            retry_until(deadline, flaky(), |_| {}),
            "retried within the budget"
        );
        // A drain deadline still ahead is kept when it is later than the budget.
        let later = now + REVOKE_COMMIT_BUDGET * 3;
        assert_eq!(revoke_commit_deadline(later, now), later);
    }
}
