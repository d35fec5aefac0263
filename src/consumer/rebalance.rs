//! What happens on assign and revoke, inside librdkafka's rebalance callbacks.
//!
//! On revoke, dispatching for those partitions stops, in-flight jobs get a short drain, what is
//! complete is committed synchronously and the rest is forgotten; each assignment has an epoch,
//! so completions from the old one are discarded.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{ClientContext, TopicPartitionList};
use tracing::{info, warn};

use super::ASSIGNMENT;
use super::lanes::Backlog;
use super::offsets::{FINAL_COMMIT_TIMEOUT, revoke_commit_deadline};
use super::partitions::{Shared, Slot, State, abort_all};
use super::tracker::{Epoch, TopicPartition};
use super::watermarks::Watermarks;

impl Shared {
    pub(super) fn assign(&self, list: &TopicPartitionList) {
        let mut state = self.lock();
        let mut names = Vec::new();
        for element in list.elements() {
            let partition = TopicPartition::new(element.topic(), element.partition());
            let epoch = state.tracker.assign(partition.clone());
            if let Some(old) = state.slots.insert(
                partition.clone(),
                Slot {
                    epoch,
                    running: HashMap::new(),
                    backlog: Backlog::default(),
                    revoking: false,
                },
            ) {
                abort_all(&old, &mut state.running);
            }
            state.paused.remove(&partition);
            state.rotation.insert(partition.clone());
            names.push(partition.to_string());
        }
        self.readiness.set(ASSIGNMENT, !state.slots.is_empty());
        // Cooperative rebalances call back with empty increments; only real changes are news.
        if !names.is_empty() {
            info!(partitions = ?names, assigned = state.slots.len(), "partitions assigned");
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Revoke: stop starting work, drain for a short deadline, commit what is complete
    /// (unless the assignment was lost, when a commit would be refused anyway), forget the rest.
    pub(super) fn revoke<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        list: &TopicPartitionList,
        lost: bool,
    ) {
        let partitions: Vec<TopicPartition> = list
            .elements()
            .iter()
            .map(|e| TopicPartition::new(e.topic(), e.partition()))
            .collect();
        let deadline = Instant::now() + self.revoke_drain;
        {
            let mut state = self.lock();
            for partition in &partitions {
                if let Some(slot) = state.slots.get_mut(partition) {
                    slot.revoking = true;
                    slot.backlog.clear();
                }
            }
        }
        in_blocking_section(|| {
            if !lost && jobs_run_meanwhile() {
                self.drain(&partitions, deadline);
            }
            let _gate = self.acquire_gate(deadline + FINAL_COMMIT_TIMEOUT);
            if !lost {
                let batch: Vec<(TopicPartition, Epoch, i64)> = {
                    let state = self.lock();
                    partitions
                        .iter()
                        .filter_map(|p| {
                            state
                                .tracker
                                .committable_offset(p)
                                .map(|(epoch, offset)| (p.clone(), epoch, offset))
                        })
                        .collect()
                };
                if !batch.is_empty() {
                    // Its own short budget: the drain has usually used up `deadline`.
                    let commit_deadline = revoke_commit_deadline(deadline, Instant::now());
                    self.commit_sync(consumer, &batch, commit_deadline);
                }
            }
            self.forget(&partitions, lost);
        });
        self.wake.notify_one();
    }

    /// Drops revoked partitions: their unfinished jobs are aborted (they will be redelivered
    /// to the next owner) and their late completions will find no epoch to land in.
    pub(super) fn forget(&self, partitions: &[TopicPartition], lost: bool) {
        let mut state = self.lock();
        let mut abandoned = 0;
        for partition in partitions {
            if let Some(slot) = state.slots.remove(partition) {
                abandoned += abort_all(&slot, &mut state.running);
            }
            state.tracker.revoke(partition);
            state.paused.remove(partition);
            state.rotation.remove(partition);
        }
        self.readiness.set(ASSIGNMENT, !state.slots.is_empty());
        info!(
            partitions = ?partitions.iter().map(ToString::to_string).collect::<Vec<_>>(),
            lost,
            abandoned,
            assigned = state.slots.len(),
            "partitions revoked"
        );
    }

    /// The commit gate, waiting for a running periodic commit until `deadline`. Past it the
    /// revoke goes on without the gate: that commit was already handed to librdkafka, which
    /// sends it before anything the revoke sends.
    pub(super) fn acquire_gate(&self, deadline: Instant) -> Option<MutexGuard<'_, ()>> {
        loop {
            match self.commit_gate.try_lock() {
                Ok(guard) => return Some(guard),
                Err(std::sync::TryLockError::Poisoned(e)) => return Some(e.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        warn!(
                            "a periodic commit is still running; revoking without waiting for it"
                        );
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    /// Waits until no job of `partitions` runs, or `deadline`.
    pub(super) fn drain(&self, partitions: &[TopicPartition], deadline: Instant) {
        let busy = |state: &State| {
            partitions.iter().any(|p| {
                state
                    .slots
                    .get(p)
                    .is_some_and(|slot| !slot.running.is_empty())
            })
        };
        let mut state = self.lock();
        while busy(&state) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = match self.finished.wait_timeout(state, deadline - now) {
                Ok((state, _)) => state,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// Whether job tasks can run while this thread blocks (not on a current-thread runtime).
pub(super) fn jobs_run_meanwhile() -> bool {
    !matches!(
        tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()),
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread)
    )
}

/// Runs blocking work from inside the loop's task (librdkafka's rebalance callback runs in a
/// poll): on a multi-threaded runtime the thread's other tasks move elsewhere meanwhile.
pub(super) fn in_blocking_section<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// librdkafka callbacks: rebalances run the revoke/assign bookkeeping, commit answers are
/// queued for the loop.
pub(super) struct LoopContext {
    pub(super) shared: Arc<Shared>,
    /// Watermarks from librdkafka's statistics, for the lag thread.
    pub(super) watermarks: Watermarks,
}

impl ClientContext for LoopContext {
    fn stats_raw(&self, statistics: &[u8]) {
        self.watermarks.record(statistics);
    }
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                self.shared
                    .revoke(consumer, list, consumer.assignment_lost());
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.shared.assign(list);
            // A partition paused under an earlier assignment must not come back paused: the
            // loop starts every assignment unpaused.
            if list.count() > 0
                && let Err(e) = consumer.resume(list)
            {
                warn!(error = %e, "cannot resume newly assigned partitions");
            }
        }
    }
}

pub(super) type LoopConsumer = StreamConsumer<LoopContext>;
