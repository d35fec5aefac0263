//! Slots and back-pressure: the jobs of each assigned partition, what the loop, the job
//! tasks and the rebalance callback share, and how messages are dispatched to free slots.
//!
//! Dispatch is fair: partitions with ready work take turns at the free slots, one job per
//! turn, in a fixed ring of the assigned partitions that resumes after the last partition
//! served ([`Rotation`]). Between a partition becoming ready (a message waiting, a slot of its
//! own free) and its next start, at most `assigned - 1` jobs of other partitions start. The
//! dispatcher once walked the slot map in its (hash) order on every pass, so with
//! `PARTITION_CONCURRENCY` at half the slots the first two partitions with backlog took every
//! slot until they were empty, and the others waited that long.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backon::ExponentialBackoff;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use tokio::task::AbortHandle;
use tracing::warn;

use super::Handler;
use super::job::{SlotRef, run_job};
use super::lanes::{Backlog, Running, Waiting};
use super::run::Turn;
use super::tracker::{CommitTracker, Epoch, TopicPartition};
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
    /// With when each started and its lane.
    pub(super) running: HashMap<i64, (AbortHandle, Instant, u64)>,
    /// Delivered messages waiting for a free slot, in offset order.
    pub(super) backlog: Backlog,
    /// No new work starts: the partition is being revoked.
    pub(super) revoking: bool,
}

impl Slot {
    /// Whether this partition can start a job now: a message waits, it is under its own cap,
    /// and it is not being revoked.
    pub(super) fn ready(&self, per_partition: usize) -> bool {
        !self.revoking && self.running.len() < per_partition && !self.backlog.is_empty()
    }
}

/// The order in which partitions take turns at free slots: a ring of the assigned partitions
/// and the turn, the place after the last partition served.
///
/// Bound: each start moves the turn just past the partition that started, and the scan for the
/// next start goes round the ring from the turn; so a partition that is ready is reached
/// before any other partition is served twice, i.e. within `len - 1` starts of other
/// partitions, whatever the hash order, the backlogs or the per-partition cap. A pure
/// structure, so the bound is tested on its own.
#[derive(Debug)]
pub(super) struct Rotation<P = TopicPartition> {
    ring: Vec<P>,
    turn: usize,
}

impl<P> Default for Rotation<P> {
    fn default() -> Self {
        Self {
            ring: Vec::new(),
            turn: 0,
        }
    }
}

impl<P: PartialEq + Clone> Rotation<P> {
    /// Adds a newly assigned partition, last in the ring (already there: no change).
    pub(super) fn insert(&mut self, partition: P) {
        if !self.ring.contains(&partition) {
            self.ring.push(partition);
        }
    }

    /// Drops a revoked partition; the others keep their order and the turn stays with the
    /// partition it was on.
    pub(super) fn remove(&mut self, partition: &P) {
        let Some(at) = self.ring.iter().position(|p| p == partition) else {
            return;
        };
        self.ring.remove(at);
        if at < self.turn {
            self.turn -= 1;
        }
        if self.turn >= self.ring.len() {
            self.turn = 0;
        }
    }

    /// The first partition from the turn on (round the ring once) that `ready` accepts, and
    /// moves the turn just past it; `None`, the turn unchanged, when none is ready.
    pub(super) fn next_ready(&mut self, mut ready: impl FnMut(&P) -> bool) -> Option<P> {
        let len = self.ring.len();
        (0..len)
            .map(|step| (self.turn + step) % len)
            .find(|&at| ready(&self.ring[at]))
            .map(|at| {
                self.turn = (at + 1) % len;
                self.ring[at].clone()
            })
    }

    /// How many partitions take turns.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.ring.len()
    }
}

/// What the loop, the job tasks and the rebalance callback share.
pub(super) struct State {
    pub(super) tracker: CommitTracker<TopicPartition>,
    pub(super) slots: HashMap<TopicPartition, Slot>,
    /// The assigned partitions (the keys of `slots`) in the order they take turns.
    pub(super) rotation: Rotation,
    /// Jobs running, in all and per lane.
    pub(super) running: Running,
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
                && let Some((.., lane)) = slot.running.remove(&offset)
            {
                state.running.remove(lane);
                state.tracker.completed(partition, epoch, offset);
            }
        }
        self.finished.notify_all();
        self.wake.notify_one();
    }
}

/// Aborts every running job of a slot and takes them off `running`; returns how many there
/// were.
pub(super) fn abort_all(slot: &Slot, running: &mut Running) -> usize {
    for (handle, _, lane) in slot.running.values() {
        handle.abort();
        running.remove(*lane);
    }
    slot.running.len()
}

impl<H: Handler> Turn<'_, H> {
    /// Starts backlog messages while slots are free, one per partition per turn
    /// ([`Rotation`]), then pauses partitions whose backlog is full and resumes those that
    /// drained.
    pub(super) fn dispatch(&self) {
        let mut state = self.shared.lock();
        let state = &mut *state;
        if state.stopping {
            return;
        }
        let per_partition = self.per_partition;
        let high = partition_backlog(state.slots.len());
        let handler = &self.env.handler;
        while state.running.total() < self.concurrency {
            let (slots, running, paused) = (&state.slots, &state.running, &state.paused);
            let mut lane = None;
            let Some(partition) = state.rotation.next_ready(|p| {
                let Some(slot) = slots.get(p).filter(|slot| slot.ready(per_partition)) else {
                    return false;
                };
                let full = paused.contains(p) || slot.backlog.len() >= high;
                lane = slot.backlog.next_lane(
                    running,
                    |lane| handler.lane_weight(lane),
                    |lane| handler.lane_limit(lane),
                    full,
                );
                lane.is_some()
            }) else {
                break;
            };
            let Some(slot) = state.slots.get_mut(&partition) else {
                break;
            };
            let Some(Waiting { delivery, lane, .. }) =
                lane.and_then(|lane| slot.backlog.take_first(lane))
            else {
                break;
            };
            let offset = delivery.offset;
            let slot_ref = SlotRef {
                shared: Arc::clone(self.shared),
                partition,
                epoch: slot.epoch,
            };
            // Spawned under the lock: the task's `finish` waits for the lock, so its
            // handle is registered before it can be looked up.
            let task = tokio::spawn(run_job(Arc::clone(self.env), delivery, slot_ref));
            slot.running
                .insert(offset, (task.abort_handle(), Instant::now(), lane));
            state.running.add(lane);
        }
        let mut to_pause = TopicPartitionList::new();
        let mut to_resume = TopicPartitionList::new();
        for (partition, slot) in &state.slots {
            let paused = state.paused.contains(partition);
            if !paused && slot.backlog.len() >= high {
                to_pause.add_partition(&partition.topic, partition.partition);
            } else if paused && slot.backlog.len() <= high / 2 {
                to_resume.add_partition(&partition.topic, partition.partition);
            }
        }
        self.env.metrics.in_flight.set(state.running.total() as i64);
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
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    /// Issue 18: partitions that all have work are served one each in turn, in the ring's
    /// order, however many starts a dispatch makes; the next dispatch resumes where the last
    /// one stopped instead of at the head of the ring.
    #[test]
    fn partitions_with_ready_work_take_turns() {
        let mut rotation = Rotation::default();
        for p in 0..4 {
            rotation.insert(p);
        }
        let served: Vec<i32> = (0..3)
            .filter_map(|_| rotation.next_ready(|_| true))
            .collect();
        assert_eq!(served, [0, 1, 2]);
        // A later dispatch goes on with partition 3, not 0 again.
        let served: Vec<i32> = (0..5)
            .filter_map(|_| rotation.next_ready(|_| true))
            .collect();
        assert_eq!(served, [3, 0, 1, 2, 3]);
        // Partitions without ready work are skipped, and nothing is served when none is ready.
        assert_eq!(rotation.next_ready(|p| *p == 2), Some(2));
        assert_eq!(rotation.next_ready(|p| *p == 2), Some(2));
        assert_eq!(rotation.next_ready(|_| false), None);
        assert_eq!(rotation.next_ready(|_| true), Some(3));
    }

    /// Revoking partitions keeps the others' order and the turn where it was; an empty ring
    /// serves nothing.
    #[test]
    fn a_revoked_partition_leaves_the_turn_where_it_was() {
        let mut rotation = Rotation::default();
        for p in 0..5 {
            rotation.insert(p);
        }
        rotation.insert(2);
        assert_eq!(rotation.len(), 5, "a partition is in the ring once");
        assert_eq!(rotation.next_ready(|_| true), Some(0));
        assert_eq!(rotation.next_ready(|_| true), Some(1));
        // Before the turn, on it, and the last of the ring.
        rotation.remove(&0);
        assert_eq!(rotation.next_ready(|_| true), Some(2));
        rotation.remove(&3);
        assert_eq!(rotation.next_ready(|_| true), Some(4));
        rotation.remove(&4);
        assert_eq!(rotation.next_ready(|_| true), Some(1));
        rotation.remove(&1);
        rotation.remove(&2);
        rotation.remove(&9);
        assert_eq!(rotation.len(), 0);
        assert_eq!(rotation.next_ready(|_| true), None);
    }

    /// The scenario on the dispatcher's own policy: 4 partitions with backlog, 4
    /// slots, a per-partition cap of 2 (half the slots, the default), jobs that finish in the
    /// order they started. Every partition starts in the first round and, from then on, no
    /// partition runs two jobs while another waits with nothing running: each gets a quarter.
    #[test]
    fn four_partitions_with_backlog_share_four_slots() {
        const SLOTS: usize = 4;
        const CAP: usize = 2;
        let mut rotation = Rotation::default();
        let mut backlog = [30usize; 4];
        let mut running = [0usize; 4];
        let mut started: Vec<usize> = Vec::new();
        let mut in_order: VecDeque<usize> = VecDeque::new();
        for p in 0..4 {
            rotation.insert(p);
        }
        loop {
            // dispatch()
            while in_order.len() < SLOTS {
                let Some(p) = rotation.next_ready(|p| backlog[*p] > 0 && running[*p] < CAP) else {
                    break;
                };
                backlog[p] -= 1;
                running[p] += 1;
                started.push(p);
                in_order.push_back(p);
            }
            assert!(
                running.iter().all(|n| *n <= 1) || backlog.iter().filter(|b| **b > 0).count() < 4,
                "a partition holds two slots while all four have backlog: {running:?}"
            );
            // The oldest job finishes.
            let Some(p) = in_order.pop_front() else {
                break;
            };
            running[p] -= 1;
        }
        let mut first_round = started[..4].to_vec();
        first_round.sort_unstable();
        assert_eq!(first_round, [0, 1, 2, 3]);
        assert_eq!(started.len(), 120);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The stated bound: whatever the other partitions do, a partition that stays ready
        /// is served before `len - 1` starts of other partitions have passed (and so before
        /// any other partition is served twice).
        #[test]
        fn a_ready_partition_waits_at_most_len_minus_one_starts(
            len in 1usize..12,
            watched in 0usize..12,
            warmup in proptest::collection::vec(0usize..12, 0..20),
            others in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 12), 1..40),
        ) {
            let watched = watched % len;
            let mut rotation = Rotation::default();
            for p in 0..len {
                rotation.insert(p);
            }
            // Any history of turns before the watched partition becomes ready.
            for p in warmup {
                let _ = rotation.next_ready(|q| *q == p % len);
            }
            let mut starts_of_others = 0;
            for ready in others {
                match rotation.next_ready(|q| *q == watched || ready[*q]) {
                    Some(p) if p == watched => break,
                    Some(_) => starts_of_others += 1,
                    None => prop_assert!(false, "a ready partition was not served"),
                }
                prop_assert!(starts_of_others < len, "{starts_of_others} starts of others");
            }
        }
    }

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
