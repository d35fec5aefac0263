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
        let mut backoff = commit_backoff();
        loop {
            match consumer.commit(&list, CommitMode::Sync) {
                Ok(()) => {
                    self.metrics
                        .commit_latency
                        .observe(started.elapsed().as_secs_f64());
                    let mut state = self.lock();
                    for (partition, epoch, offset) in batch {
                        state.tracker.committed(partition, *epoch, *offset);
                    }
                    debug!(partitions = batch.len(), "offsets committed synchronously");
                    return true;
                }
                Err(e) => {
                    self.metrics.commit_errors.inc();
                    let delay = backoff.next().unwrap_or(Duration::from_secs(1));
                    if Instant::now() + delay >= deadline {
                        warn!(error = %e, partitions = batch.len(), "final commit failed; the uncommitted messages will be redelivered");
                        return false;
                    }
                    warn!(error = %e, retry_in = ?delay, "commit failed, retrying");
                    std::thread::sleep(delay);
                }
            }
        }
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
