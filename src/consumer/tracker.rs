//! The commit tracker: which offset of each partition may be committed, given that the jobs of
//! one partition run concurrently and finish out of order.
//!
//! Kafka's consumer offset is a single number per partition: everything below it counts as
//! done. With concurrent jobs that number must be the lowest offset whose job has not finished
//! yet, or one past the last delivered offset when every job has finished. Offsets are not
//! contiguous (compaction and transaction markers leave gaps), so the tracker only ever reasons
//! about offsets it was told were delivered.
//!
//! Every assignment of a partition gets an [`Epoch`]. A job that outlives a revocation reports
//! its completion with the epoch it started under; the tracker discards it, so work from an old
//! assignment can never move the offset of a new one.
//!
//! This module is a pure, synchronous state machine with no I/O and no clock of its own (the
//! caller passes timestamps), so it is property-tested on its own and the consumer loop wraps it.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// One assignment of a partition. A partition revoked and assigned again gets a new epoch, so
/// completions from the earlier assignment are recognised and dropped.
pub type Epoch = u64;

/// A Kafka partition of a topic: the graph writer consumes two topics, so the partition number
/// alone is not a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

impl TopicPartition {
    /// A partition of `topic`.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// What the tracker did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Recorded: the offset now holds the partition's commit back until it completes.
    Accepted,
    /// The partition is not assigned under this epoch (revoked meanwhile): ignore the message.
    Stale,
    /// The offset is not above the last one delivered in this assignment: it is already
    /// tracked (or was), so the message must not run a second time.
    Duplicate,
}

/// One delivered offset, in delivery order.
#[derive(Debug)]
struct Entry {
    offset: i64,
    done: bool,
    at: Instant,
}

/// The state of one assigned partition.
#[derive(Debug)]
struct PartitionState {
    epoch: Epoch,
    /// Delivered offsets, ascending, from the lowest incomplete one on: complete entries at the
    /// front are popped as soon as they are, so the front is always incomplete.
    entries: VecDeque<Entry>,
    last_delivered: Option<i64>,
    last_committed: Option<i64>,
    /// Complete entries still in `entries` (waiting for a lower offset).
    pending: usize,
}

impl PartitionState {
    fn new(epoch: Epoch) -> Self {
        Self {
            epoch,
            entries: VecDeque::new(),
            last_delivered: None,
            last_committed: None,
            pending: 0,
        }
    }

    /// The offset of the next message to consume once everything complete is committed.
    fn next_offset(&self) -> Option<i64> {
        match self.entries.front() {
            Some(entry) => Some(entry.offset),
            None => self.last_delivered.map(|last| last + 1),
        }
    }
}

/// Per-partition in-order commit bookkeeping. See the module documentation.
#[derive(Debug)]
pub struct CommitTracker<P = TopicPartition> {
    partitions: HashMap<P, PartitionState>,
    next_epoch: Epoch,
}

impl<P> Default for CommitTracker<P> {
    fn default() -> Self {
        Self {
            partitions: HashMap::new(),
            next_epoch: 1,
        }
    }
}

impl<P: Eq + Hash + Clone> CommitTracker<P> {
    /// An empty tracker with no partition assigned.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a new assignment of `partition` and returns its epoch. Anything tracked under an
    /// earlier assignment is forgotten.
    pub fn assign(&mut self, partition: P) -> Epoch {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.partitions
            .insert(partition, PartitionState::new(epoch));
        epoch
    }

    /// Ends the assignment of `partition`: its incomplete offsets are forgotten (they will be
    /// redelivered to the next owner) and late completions for it are discarded. Returns the
    /// epoch that ended.
    pub fn revoke(&mut self, partition: &P) -> Option<Epoch> {
        self.partitions.remove(partition).map(|state| state.epoch)
    }

    /// The epoch of the current assignment of `partition`, if it is assigned.
    pub fn epoch(&self, partition: &P) -> Option<Epoch> {
        self.partitions.get(partition).map(|state| state.epoch)
    }

    /// The partitions assigned now.
    pub fn partitions(&self) -> impl Iterator<Item = &P> {
        self.partitions.keys()
    }

    /// Records that the message at `offset` was handed out, at time `at`: from now on the
    /// partition's commit cannot pass it until it completes.
    pub fn delivered(
        &mut self,
        partition: &P,
        epoch: Epoch,
        offset: i64,
        at: Instant,
    ) -> Delivered {
        let Some(state) = self.current(partition, epoch) else {
            return Delivered::Stale;
        };
        if state.last_delivered.is_some_and(|last| offset <= last) {
            return Delivered::Duplicate;
        }
        state.last_delivered = Some(offset);
        state.entries.push_back(Entry {
            offset,
            done: false,
            at,
        });
        Delivered::Accepted
    }

    /// Records that everything the message at `offset` caused is durable. Returns false (and
    /// changes nothing) when the completion belongs to another assignment or to an offset that
    /// is not outstanding.
    pub fn completed(&mut self, partition: &P, epoch: Epoch, offset: i64) -> bool {
        let Some(state) = self.current(partition, epoch) else {
            return false;
        };
        let Ok(index) = state
            .entries
            .binary_search_by_key(&offset, |entry| entry.offset)
        else {
            return false;
        };
        if index == 0 {
            state.entries.pop_front();
            while state.entries.front().is_some_and(|entry| entry.done) {
                state.entries.pop_front();
                state.pending -= 1;
            }
            true
        } else {
            let entry = &mut state.entries[index];
            if entry.done {
                return false;
            }
            entry.done = true;
            state.pending += 1;
            true
        }
    }

    /// The offset to commit for `partition` (the next message to consume, as Kafka expects),
    /// with its epoch, if it moved past the last committed one.
    pub fn committable_offset(&self, partition: &P) -> Option<(Epoch, i64)> {
        let state = self.partitions.get(partition)?;
        let next = state.next_offset()?;
        if state
            .last_committed
            .is_some_and(|committed| next <= committed)
        {
            return None;
        }
        Some((state.epoch, next))
    }

    /// Every partition whose committable offset moved past its last committed one.
    pub fn committable(&self) -> Vec<(P, Epoch, i64)> {
        self.partitions
            .keys()
            .filter_map(|partition| {
                self.committable_offset(partition)
                    .map(|(epoch, offset)| (partition.clone(), epoch, offset))
            })
            .collect()
    }

    /// Records a successful commit of `offset`. A failed commit is simply not reported: the
    /// offset stays committable and the next attempt carries it.
    pub fn committed(&mut self, partition: &P, epoch: Epoch, offset: i64) -> bool {
        let Some(state) = self.current(partition, epoch) else {
            return false;
        };
        state.last_committed = Some(state.last_committed.map_or(offset, |c| c.max(offset)));
        true
    }

    /// The last offset committed in the current assignment, if any.
    pub fn last_committed(&self, partition: &P) -> Option<i64> {
        self.partitions.get(partition)?.last_committed
    }

    /// Completions of `partition` waiting for a lower offset before they can be committed.
    pub fn pending(&self, partition: &P) -> usize {
        self.partitions.get(partition).map_or(0, |s| s.pending)
    }

    /// Offsets of `partition` delivered and not complete.
    pub fn in_flight(&self, partition: &P) -> usize {
        self.partitions
            .get(partition)
            .map_or(0, |s| s.entries.len() - s.pending)
    }

    /// Offsets delivered and not complete, over all partitions.
    pub fn total_in_flight(&self) -> usize {
        self.partitions
            .values()
            .map(|s| s.entries.len() - s.pending)
            .sum()
    }

    /// How long the oldest incomplete offset has been outstanding at `now`.
    pub fn oldest_in_flight(&self, now: Instant) -> Option<Duration> {
        self.partitions
            .values()
            .filter_map(|s| s.entries.front())
            .map(|entry| now.saturating_duration_since(entry.at))
            .max()
    }

    fn current(&mut self, partition: &P, epoch: Epoch) -> Option<&mut PartitionState> {
        self.partitions
            .get_mut(partition)
            .filter(|state| state.epoch == epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn commits_the_lowest_incomplete_offset_across_gaps() {
        let now = Instant::now();
        let mut tracker = CommitTracker::new();
        let epoch = tracker.assign(0u8);
        for offset in [10, 11, 15, 20] {
            assert_eq!(
                tracker.delivered(&0, epoch, offset, now),
                Delivered::Accepted
            );
        }
        assert!(tracker.completed(&0, epoch, 15));
        assert!(tracker.completed(&0, epoch, 20));
        assert_eq!(tracker.committable_offset(&0), Some((epoch, 10)));
        assert_eq!(tracker.pending(&0), 2);
        assert!(tracker.completed(&0, epoch, 10));
        assert_eq!(tracker.committable_offset(&0), Some((epoch, 11)));
        assert!(tracker.completed(&0, epoch, 11));
        assert_eq!(tracker.committable_offset(&0), Some((epoch, 21)));
        assert_eq!(tracker.pending(&0), 0);
        assert!(tracker.committed(&0, epoch, 21));
        assert_eq!(tracker.committable(), vec![]);
    }

    #[test]
    fn discards_completions_from_a_revoked_assignment() {
        let now = Instant::now();
        let mut tracker = CommitTracker::new();
        let old = tracker.assign(0u8);
        tracker.delivered(&0, old, 5, now);
        tracker.revoke(&0);
        let new = tracker.assign(0u8);
        tracker.delivered(&0, new, 5, now);
        assert!(!tracker.completed(&0, old, 5));
        assert_eq!(tracker.committable_offset(&0), Some((new, 5)));
        assert!(!tracker.committed(&0, old, 6));
        assert_eq!(tracker.last_committed(&0), None);
    }

    #[test]
    fn refuses_an_offset_delivered_twice() {
        let now = Instant::now();
        let mut tracker = CommitTracker::new();
        let epoch = tracker.assign(0u8);
        tracker.delivered(&0, epoch, 5, now);
        assert_eq!(tracker.delivered(&0, epoch, 5, now), Delivered::Duplicate);
        assert_eq!(tracker.delivered(&0, epoch, 4, now), Delivered::Duplicate);
        assert_eq!(tracker.delivered(&0, epoch + 1, 6, now), Delivered::Stale);
        assert!(tracker.completed(&0, epoch, 5));
        assert!(!tracker.completed(&0, epoch, 5));
    }

    #[test]
    fn reports_the_age_of_the_oldest_incomplete_offset() {
        let start = Instant::now();
        let mut tracker = CommitTracker::new();
        let epoch = tracker.assign(0u8);
        tracker.delivered(&0, epoch, 1, start);
        tracker.delivered(&0, epoch, 2, start + Duration::from_secs(5));
        let later = start + Duration::from_secs(10);
        assert_eq!(
            tracker.oldest_in_flight(later),
            Some(Duration::from_secs(10))
        );
        tracker.completed(&0, epoch, 1);
        assert_eq!(
            tracker.oldest_in_flight(later),
            Some(Duration::from_secs(5))
        );
        tracker.completed(&0, epoch, 2);
        assert_eq!(tracker.oldest_in_flight(later), None);
    }

    /// One step of a random history.
    #[derive(Debug, Clone)]
    enum Op {
        /// Deliver the next message of a partition, `gap` offsets after the previous one.
        Deliver { partition: u8, gap: i64 },
        /// Complete the `pick`-th outstanding offset of a partition (out of order).
        Complete { partition: u8, pick: usize },
        /// Complete an offset under an epoch that is no longer current.
        CompleteStale { partition: u8, pick: usize },
        /// Commit whatever is committable (`fail`: the commit fails and nothing is recorded).
        Commit { fail: bool },
        /// Revoke a partition.
        Revoke { partition: u8 },
        /// Assign a partition again (a new epoch, offsets restart from the last commit).
        Assign { partition: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..3, 1i64..4).prop_map(|(partition, gap)| Op::Deliver { partition, gap }),
            4 => (0u8..3, any::<usize>()).prop_map(|(partition, pick)| Op::Complete { partition, pick }),
            1 => (0u8..3, any::<usize>()).prop_map(|(partition, pick)| Op::CompleteStale { partition, pick }),
            2 => any::<bool>().prop_map(|fail| Op::Commit { fail }),
            1 => (0u8..3).prop_map(|partition| Op::Revoke { partition }),
            1 => (0u8..3).prop_map(|partition| Op::Assign { partition }),
        ]
    }

    /// The obvious model of one assigned partition.
    #[derive(Debug, Default, Clone)]
    struct Model {
        epoch: Epoch,
        incomplete: BTreeSet<i64>,
        complete: BTreeSet<i64>,
        last_delivered: Option<i64>,
    }

    impl Model {
        fn expected_next(&self) -> Option<i64> {
            self.incomplete
                .first()
                .copied()
                .or(self.last_delivered.map(|l| l + 1))
        }
        fn expected_pending(&self) -> usize {
            match self.incomplete.first() {
                Some(low) => self.complete.range(low..).count(),
                None => 0,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// For any history of deliveries with gaps, out-of-order and stale completions, failed
        /// commits, revokes and re-assignments, the tracker agrees with the model, never
        /// commits past an incomplete offset, and reaches the end once everything completes.
        #[test]
        fn never_commits_past_unfinished_work_and_reaches_the_end(ops in prop::collection::vec(op(), 1..200)) {
            let now = Instant::now();
            let mut tracker: CommitTracker<u8> = CommitTracker::new();
            let mut models: BTreeMap<u8, Model> = BTreeMap::new();
            // The durable committed offset per partition, as Kafka would hold it.
            let mut kafka: BTreeMap<u8, i64> = BTreeMap::new();
            let mut old_epochs: BTreeMap<u8, Vec<(Epoch, i64)>> = BTreeMap::new();
            for partition in 0..3u8 {
                let epoch = tracker.assign(partition);
                models.insert(partition, Model { epoch, ..Model::default() });
            }
            for op in ops {
                match op {
                    Op::Deliver { partition, gap } => {
                        if let Some(model) = models.get_mut(&partition) {
                            let start = kafka.get(&partition).copied().unwrap_or(0);
                            let offset = model.last_delivered.map_or(start + gap - 1, |l| l + gap);
                            prop_assert_eq!(tracker.delivered(&partition, model.epoch, offset, now), Delivered::Accepted);
                            model.incomplete.insert(offset);
                            model.last_delivered = Some(offset);
                        }
                    }
                    Op::Complete { partition, pick } => {
                        if let Some(model) = models.get_mut(&partition) {
                            if !model.incomplete.is_empty() {
                                let offset = *model.incomplete.iter().nth(pick % model.incomplete.len()).unwrap();
                                prop_assert!(tracker.completed(&partition, model.epoch, offset));
                                model.incomplete.remove(&offset);
                                model.complete.insert(offset);
                            }
                        }
                    }
                    Op::CompleteStale { partition, pick } => {
                        if let Some(old) = old_epochs.get(&partition).filter(|o| !o.is_empty()) {
                            let (epoch, offset) = old[pick % old.len()];
                            prop_assert!(!tracker.completed(&partition, epoch, offset));
                        }
                    }
                    Op::Commit { fail } => {
                        for (partition, epoch, offset) in tracker.committable() {
                            let model = &models[&partition];
                            prop_assert_eq!(epoch, model.epoch);
                            prop_assert_eq!(Some(offset), model.expected_next());
                            if let Some(low) = model.incomplete.first() {
                                prop_assert!(offset <= *low, "commit {} past incomplete {}", offset, low);
                            }
                            if !fail {
                                tracker.committed(&partition, epoch, offset);
                                kafka.insert(partition, offset);
                            }
                        }
                    }
                    Op::Revoke { partition } => {
                        if let Some(model) = models.remove(&partition) {
                            prop_assert_eq!(tracker.revoke(&partition), Some(model.epoch));
                            let stale = old_epochs.entry(partition).or_default();
                            stale.extend(model.incomplete.iter().map(|o| (model.epoch, *o)));
                        }
                    }
                    Op::Assign { partition } => {
                        if let std::collections::btree_map::Entry::Vacant(slot) = models.entry(partition) {
                            let epoch = tracker.assign(partition);
                            slot.insert(Model { epoch, ..Model::default() });
                        }
                    }
                }
                for (partition, model) in &models {
                    prop_assert_eq!(tracker.pending(partition), model.expected_pending());
                    prop_assert_eq!(tracker.in_flight(partition), model.incomplete.len());
                    if let (Some(committed), Some(low)) = (tracker.last_committed(partition), model.incomplete.first()) {
                        prop_assert!(committed <= *low);
                    }
                }
            }
            // Finish everything still outstanding, out of order: every partition reaches the end.
            for (partition, model) in &models {
                for offset in model.incomplete.iter().rev() {
                    prop_assert!(tracker.completed(partition, model.epoch, *offset));
                }
                prop_assert_eq!(tracker.pending(partition), 0);
                if let Some(last) = model.last_delivered {
                    let reached = tracker
                        .committable_offset(partition)
                        .map(|(_, offset)| offset)
                        .or(tracker.last_committed(partition));
                    prop_assert_eq!(reached, Some(last + 1));
                }
            }
        }
    }
}
