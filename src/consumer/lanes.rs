//! Lanes: how the loop shares its slots between the groups of messages a handler names
//! ([`super::Handler::lane`]: a crawl, for the worker; one lane for the graph writer).
//!
//! Within a partition's backlog the loop starts the first message of the lane with the fewest
//! jobs running per weight. Both counts it needs are kept up to date as messages arrive, start
//! and end ([`Running`], [`Backlog`]), so choosing costs what the number of lanes costs, not
//! the number of jobs running or waiting. They were once recounted on every start: at 4,000
//! jobs in flight that took more than half of a graph writer's CPU, with a single lane.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::Delivery;

/// A delivered message waiting for a slot, and since when (`oldest_waiting_seconds`).
pub(super) struct Waiting {
    pub(super) delivery: Delivery,
    pub(super) since: Instant,
    /// The handler's [`super::Handler::lane`] of the delivery.
    pub(super) lane: u64,
}

/// How many items (jobs running, messages waiting) each lane has, in all and per lane. A lane
/// at zero has no entry, so the map is bounded by the items counted.
#[derive(Debug, Default)]
pub(super) struct LaneCounts {
    total: usize,
    by_lane: HashMap<u64, usize>,
}

/// Jobs running now over all partitions.
pub(super) type Running = LaneCounts;

impl LaneCounts {
    /// Items in all.
    pub(super) fn total(&self) -> usize {
        self.total
    }

    /// Items of `lane`.
    pub(super) fn of(&self, lane: u64) -> usize {
        self.by_lane.get(&lane).copied().unwrap_or(0)
    }

    /// One more item of `lane` (a job started, a message queued).
    pub(super) fn add(&mut self, lane: u64) {
        self.total += 1;
        *self.by_lane.entry(lane).or_default() += 1;
    }

    /// One item of `lane` less (a job finished or was aborted, a message was taken).
    pub(super) fn remove(&mut self, lane: u64) {
        if let Some(count) = self.by_lane.get_mut(&lane) {
            self.total -= 1;
            *count -= 1;
            if *count == 0 {
                self.by_lane.remove(&lane);
            }
        }
    }

    /// The lanes with at least one item.
    fn lanes(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_lane.keys().copied()
    }

    /// Nothing is counted any more (shutdown, revoke).
    pub(super) fn clear(&mut self) {
        self.total = 0;
        self.by_lane.clear();
    }
}

/// A partition's messages waiting for a slot, in delivery order, and how many of each lane.
#[derive(Default)]
pub(super) struct Backlog {
    queue: VecDeque<Waiting>,
    lanes: LaneCounts,
}

impl Backlog {
    /// Queues a delivered message last.
    pub(super) fn push_back(&mut self, waiting: Waiting) {
        self.lanes.add(waiting.lane);
        self.queue.push_back(waiting);
    }

    /// The message that has waited longest.
    pub(super) fn front(&self) -> Option<&Waiting> {
        self.queue.front()
    }

    /// Messages waiting.
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Drops every waiting message (revoke, shutdown): their offsets are not committed, so
    /// they are delivered again.
    pub(super) fn clear(&mut self) {
        self.queue.clear();
        self.lanes.clear();
    }

    /// The lane whose first message should start next, if one may: the lane with the fewest
    /// jobs running per `weight`, so lanes share the slots whatever their share of the backlog;
    /// on a tie the front's lane wins, then the lowest lane id. With one lane this is the
    /// front's, in delivery order.
    ///
    /// A lane with as many jobs running as its `limit` allows waits here, and so does the
    /// partition, unless its backlog is `full`: then the lane starts anyway, so the handler can
    /// move the message out of the way (the worker puts a crawl's job back at the partition's
    /// tail) and what waits behind it is reached. Commits stay in order whatever starts: the
    /// tracker holds every delivered offset from acceptance on.
    pub(super) fn next_lane(
        &self,
        running: &Running,
        weight: impl Fn(u64) -> f64,
        limit: impl FnOnce(u64) -> usize,
        full: bool,
    ) -> Option<u64> {
        let front = self.queue.front()?.lane;
        let load = |lane: u64| running.of(lane) as f64 / weight(lane).max(f64::MIN_POSITIVE);
        let mut best = (load(front), front);
        if best.0 > 0.0 {
            for lane in self.lanes.lanes() {
                let candidate = (load(lane), lane);
                let tie_won = candidate.0 == best.0 && best.1 != front && lane < best.1;
                if candidate.0 < best.0 || tie_won {
                    best = candidate;
                }
            }
        }
        let lane = best.1;
        (full || running.of(lane) < limit(lane)).then_some(lane)
    }

    /// Takes the first waiting message of `lane`.
    pub(super) fn take_first(&mut self, lane: u64) -> Option<Waiting> {
        let at = self.queue.iter().position(|w| w.lane == lane)?;
        let taken = self.queue.remove(at)?;
        self.lanes.remove(taken.lane);
        Some(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(offset: i64, lane: u64) -> Waiting {
        Waiting {
            delivery: Delivery {
                topic: "t".to_owned(),
                partition: 0,
                offset,
                key: None,
                payload: None,
                attempt: 1,
            },
            since: Instant::now(),
            lane,
        }
    }

    fn backlog(lanes: &[u64]) -> Backlog {
        let mut backlog = Backlog::default();
        for (offset, lane) in lanes.iter().enumerate() {
            backlog.push_back(waiting(offset as i64, *lane));
        }
        backlog
    }

    /// Starts the next message as the dispatcher does: no lane has a limit here.
    fn take(queue: &mut Backlog, running: &Running, weight: impl Fn(u64) -> f64) -> Option<i64> {
        let lane = queue.next_lane(running, weight, |_| usize::MAX, false)?;
        queue.take_first(lane).map(|w| w.delivery.offset)
    }

    /// The lane with the fewest running per weight goes first, wherever its first message
    /// waits; with one lane, or a quiet front, the order is the delivery order.
    #[test]
    fn the_quietest_lane_goes_first_and_one_lane_keeps_delivery_order() {
        let mut running = Running::default();
        for _ in 0..3 {
            running.add(1);
        }
        let mut queue = backlog(&[1, 1, 1, 2, 1, 2]);
        assert_eq!(
            take(&mut queue, &running, |_| 1.0),
            Some(3),
            "lane 2 has nothing running"
        );
        running.add(2);
        // Lane 2 now runs 1 against lane 1's 3, unless lane 1 weighs four times as much.
        assert_eq!(take(&mut queue, &running, |_| 1.0), Some(5));
        assert_eq!(
            take(&mut queue, &running, |lane| if lane == 1 {
                4.0
            } else {
                1.0
            }),
            Some(0)
        );
        let mut one_lane = backlog(&[7, 7, 7]);
        let order: Vec<i64> =
            std::iter::from_fn(|| take(&mut one_lane, &running, |_| 1.0)).collect();
        assert_eq!(order, [0, 1, 2]);
        assert!(one_lane.is_empty() && one_lane.lanes.total() == 0);
    }

    /// A lane at its limit does not start, and holds its partition, until the limit rises
    /// or the backlog is full; below its limit it starts as before.
    #[test]
    fn a_lane_at_its_limit_waits_unless_the_backlog_is_full() {
        let mut running = Running::default();
        running.add(1);
        let queue = backlog(&[1, 1, 1]);
        let limit = |lane: u64| if lane == 1 { 1 } else { usize::MAX };
        assert_eq!(queue.next_lane(&running, |_| 1.0, limit, false), None);
        assert_eq!(
            queue.next_lane(&running, |_| 1.0, limit, true),
            Some(1),
            "a full backlog starts it anyway"
        );
        assert_eq!(queue.next_lane(&running, |_| 1.0, |_| 2, false), Some(1));
        // Another lane's message behind it is quieter and starts.
        let queue = backlog(&[1, 1, 2]);
        assert_eq!(queue.next_lane(&running, |_| 1.0, limit, false), Some(2));
    }

    /// The counts follow starts and ends and forget a lane with nothing running, so a stream
    /// of short-lived lanes (crawls) leaves nothing behind.
    #[test]
    fn running_counts_forget_a_lane_that_ended() {
        let mut running = Running::default();
        running.add(1);
        running.add(1);
        running.add(2);
        assert_eq!((running.total(), running.of(1), running.of(2)), (3, 2, 1));
        running.remove(1);
        running.remove(2);
        assert_eq!((running.total(), running.of(1), running.of(2)), (1, 1, 0));
        assert!(!running.by_lane.contains_key(&2));
        running.clear();
        assert_eq!((running.total(), running.of(1)), (0, 0));
    }
}
