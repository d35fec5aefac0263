//! Slots and back-pressure: the jobs of each assigned partition, what the loop, the job
//! tasks and the rebalance callback share, and how messages are dispatched to free slots.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backon::ExponentialBackoff;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use tokio::task::AbortHandle;
use tracing::warn;

use super::job::{SlotRef, run_job};
use super::run::Turn;
use super::tracker::{CommitTracker, Epoch, TopicPartition};
use super::{Delivery, Handler};
use crate::process::health::Readiness;
use crate::process::metrics::ConsumerMetrics;

/// Messages waiting for a slot, over all partitions: each assigned partition may hold an equal
/// share (at most [`PARTITION_BACKLOG`]) before it is paused, and resumes at half its share.
/// The bound is on the process, not per partition: a graph writer running 10,000 jobs over 24
/// partitions once held 240,000 messages (80 MiB) because each partition's backlog grew with
/// the concurrency.
pub(super) const BACKLOG: usize = 4000;
/// The most one partition may hold waiting. Pausing makes librdkafka drop its prefetch and
/// fetch again on resume, so every cycle costs a fetch; with a no-op handler a backlog of 128
/// ran at 7k messages/s at concurrency 1, 1000 at 65k (benches/consumer_loop.rs).
pub(super) const PARTITION_BACKLOG: usize = 1000;

/// How many messages one of `assigned` partitions may hold waiting before it is paused.
pub(super) fn partition_backlog(assigned: usize) -> usize {
    (BACKLOG / assigned.max(1)).clamp(1, PARTITION_BACKLOG)
}

/// The jobs of one assigned partition.
pub(super) struct Slot {
    pub(super) epoch: Epoch,
    /// Running jobs by offset, so a revoke or shutdown can abort what did not drain.
    pub(super) running: HashMap<i64, (AbortHandle, Instant)>,
    /// Delivered messages waiting for a free slot, in offset order.
    pub(super) backlog: VecDeque<Delivery>,
    /// No new work starts: the partition is being revoked.
    pub(super) revoking: bool,
}

/// What the loop, the job tasks and the rebalance callback share.
pub(super) struct State {
    pub(super) tracker: CommitTracker<TopicPartition>,
    pub(super) slots: HashMap<TopicPartition, Slot>,
    pub(super) running: usize,
    pub(super) paused: HashSet<TopicPartition>,
    /// Shutdown began: nothing new starts.
    pub(super) stopping: bool,
    /// A periodic commit is running on a blocking thread.
    pub(super) committing: bool,
    pub(super) next_commit: Instant,
    pub(super) commit_retry: Option<ExponentialBackoff>,
    /// When the first failed attempt of the commit now being retried was made.
    pub(super) commit_first_failure: Option<Instant>,
    pub(super) commit_failures: u64,
}

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    /// Signalled whenever a job finishes, for the revoke drain (which blocks a thread).
    pub(super) finished: Condvar,
    /// Wakes the loop: a job finished, a commit was answered, a rebalance happened.
    pub(super) wake: tokio::sync::Notify,
    /// Held while a commit is computed and sent, and by a revoke while it commits and forgets
    /// its partitions: a periodic commit can never carry an offset of a partition that was
    /// already handed to another consumer.
    pub(super) commit_gate: Mutex<()>,
    pub(super) metrics: ConsumerMetrics,
    pub(super) readiness: Readiness,
    pub(super) revoke_drain: Duration,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the bookkeeping as it was at the last
        // completed step, which is still consistent; keep going rather than poison the loop.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by a job task when everything its message caused is durable.
    pub(super) fn finish(&self, partition: &TopicPartition, epoch: Epoch, offset: i64) {
        {
            let mut state = self.lock();
            let state = &mut *state;
            if let Some(slot) = state.slots.get_mut(partition)
                && slot.epoch == epoch
                && slot.running.remove(&offset).is_some()
            {
                state.running -= 1;
                state.tracker.completed(partition, epoch, offset);
            }
        }
        self.finished.notify_all();
        self.wake.notify_one();
    }
}

/// Aborts every running job of a slot; returns how many there were.
pub(super) fn abort_all(slot: &Slot) -> usize {
    for (handle, _) in slot.running.values() {
        handle.abort();
    }
    slot.running.len()
}

impl<H: Handler> Turn<'_, H> {
    /// Starts backlog messages while slots are free, then pauses partitions whose backlog is
    /// full and resumes those that drained.
    pub(super) fn dispatch(&self) {
        let mut state = self.shared.lock();
        let state = &mut *state;
        if state.stopping {
            return;
        }
        let high = partition_backlog(state.slots.len());
        let mut to_pause = TopicPartitionList::new();
        let mut to_resume = TopicPartitionList::new();
        for (partition, slot) in state.slots.iter_mut() {
            while state.running < self.concurrency
                && slot.running.len() < self.per_partition
                && !slot.revoking
            {
                let Some(delivery) = slot.backlog.pop_front() else {
                    break;
                };
                let offset = delivery.offset;
                let slot_ref = SlotRef {
                    shared: Arc::clone(self.shared),
                    partition: partition.clone(),
                    epoch: slot.epoch,
                };
                // Spawned under the lock: the task's `finish` waits for the lock, so its
                // handle is registered before it can be looked up.
                let task = tokio::spawn(run_job(Arc::clone(self.env), delivery, slot_ref));
                slot.running
                    .insert(offset, (task.abort_handle(), Instant::now()));
                state.running += 1;
            }
            let paused = state.paused.contains(partition);
            if !paused && slot.backlog.len() >= high {
                to_pause.add_partition(&partition.topic, partition.partition);
            } else if paused && slot.backlog.len() <= high / 2 {
                to_resume.add_partition(&partition.topic, partition.partition);
            }
        }
        self.env.metrics.in_flight.set(state.running as i64);
        if to_pause.count() > 0 {
            match self.consumer.pause(&to_pause) {
                Ok(()) => state.paused.extend(list_partitions(&to_pause)),
                Err(e) => warn!(error = %e, "cannot pause partitions"),
            }
        }
        if to_resume.count() > 0 {
            match self.consumer.resume(&to_resume) {
                Ok(()) => {
                    for partition in list_partitions(&to_resume) {
                        state.paused.remove(&partition);
                    }
                }
                Err(e) => warn!(error = %e, "cannot resume partitions"),
            }
        }
    }
}

pub(super) fn list_partitions(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn the_backlog_is_bounded_per_process_whatever_the_partitions() {
        assert_eq!(partition_backlog(0), PARTITION_BACKLOG);
        assert_eq!(partition_backlog(1), PARTITION_BACKLOG);
        assert_eq!(partition_backlog(4), PARTITION_BACKLOG);
        for assigned in [5, 24, 1000, 4000] {
            assert!(
                partition_backlog(assigned) * assigned <= BACKLOG,
                "{assigned}"
            );
        }
        // Past BACKLOG partitions each still holds one message: a partition is never paused
        // for good.
        assert_eq!(partition_backlog(10_000), 1);
    }
}
