//! Consumer lag (from cached watermarks, see `watermarks`), the oldest in-flight age and the
//! oldest waiting age per partition, refreshed on a thread of its own so they keep moving
//! when the loop (or the whole runtime) is stuck.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::Handler;
use super::partitions::{Shared, State};
use super::rebalance::LoopConsumer;
use super::run::Turn;
use crate::process::metrics::ConsumerMetrics;

/// How often lag and the oldest in-flight age are refreshed, off the loop.
pub(super) const LAG_INTERVAL: Duration = Duration::from_secs(2);
/// Bound on one watermark query: the lag thread must not hang on a dead broker.
pub(super) const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);

impl State {
    /// Age of the oldest running job. Messages waiting in a backlog are not counted: a
    /// saturated but healthy consumer must not look stuck.
    pub(super) fn oldest_running(&self, now: Instant) -> Option<Duration> {
        self.slots
            .values()
            .flat_map(|slot| slot.running.values())
            .map(|(_, started, _)| now.saturating_duration_since(*started))
            .max()
    }

    /// Per partition number, how long the oldest message waiting for a slot has waited (zero
    /// for an assigned partition with nothing waiting). The contract labels partitions by
    /// number only, so the graph writer's two topics take the larger of their two ages.
    pub(super) fn oldest_waiting(&self, now: Instant) -> HashMap<i32, Duration> {
        let mut ages: HashMap<i32, Duration> = HashMap::new();
        for (partition, slot) in &self.slots {
            // The backlog is in delivery order: its front waited longest.
            let age = slot
                .backlog
                .front()
                .map_or(Duration::ZERO, |w| now.saturating_duration_since(w.since));
            let entry = ages.entry(partition.partition).or_default();
            *entry = (*entry).max(age);
        }
        ages
    }
}

/// Sets the oldest in-flight age and the oldest waiting age of each assigned partition, and
/// drops the labels of partitions no longer assigned (`labels`: the ones set last time).
fn refresh_ages(shared: &Shared, metrics: &ConsumerMetrics, labels: &mut HashSet<i32>) {
    let now = Instant::now();
    let (oldest, waiting) = {
        let state = shared.lock();
        (state.oldest_running(now), state.oldest_waiting(now))
    };
    metrics
        .oldest_in_flight_seconds
        .set(oldest.map_or(0, |age| age.as_secs() as i64));
    let gauge = &metrics.oldest_waiting_seconds;
    for stale in labels.iter().filter(|p| !waiting.contains_key(p)) {
        let _ = gauge.remove_label_values(&[&stale.to_string()]);
    }
    labels.clear();
    for (partition, age) in waiting {
        gauge
            .with_label_values(&[&partition.to_string()])
            .set(age.as_secs_f64());
        labels.insert(partition);
    }
}

impl<H: Handler> Turn<'_, H> {
    /// Once a second: commit-pending per partition and the oldest in-flight age.
    pub(super) fn refresh_gauges(&self, labels: &mut HashSet<i32>) {
        let state = self.shared.lock();
        // The contract labels pending completions by partition number only; the graph
        // writer's two topics are summed per number.
        let mut pending: HashMap<i32, i64> = HashMap::new();
        for partition in state.slots.keys() {
            *pending.entry(partition.partition).or_default() +=
                state.tracker.pending(partition) as i64;
        }
        let oldest = state.oldest_running(Instant::now());
        drop(state);
        let gauge = &self.env.metrics.commit_pending;
        for stale in labels.iter().filter(|p| !pending.contains_key(p)) {
            let _ = gauge.remove_label_values(&[&stale.to_string()]);
        }
        labels.clear();
        for (partition, count) in pending {
            gauge
                .with_label_values(&[&partition.to_string()])
                .set(count);
            labels.insert(partition);
        }
        self.env
            .metrics
            .oldest_in_flight_seconds
            .set(oldest.map_or(0, |age| age.as_secs() as i64));
    }
}

/// Refreshes `consumer_lag`, `oldest_in_flight_seconds` and `oldest_waiting_seconds` from a
/// thread of its own, so they keep moving when the loop (or the whole runtime) is stuck.
pub(super) fn spawn_lag_thread(
    consumer: Arc<LoopConsumer>,
    shared: Arc<Shared>,
    metrics: ConsumerMetrics,
    stop: CancellationToken,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut labels: HashSet<(String, i32)> = HashSet::new();
        let mut waiting_labels: HashSet<i32> = HashSet::new();
        while !stop.is_cancelled() {
            refresh_ages(&shared, &metrics, &mut waiting_labels);
            let mut seen = labels.clone();
            if let Ok(positions) = consumer.position() {
                seen.clear();
                let mut unknown = TopicPartitionList::new();
                let mut lags = Vec::new();
                for element in positions.elements() {
                    match element.offset() {
                        Offset::Offset(position) => lags.push((
                            element.topic().to_owned(),
                            element.partition(),
                            Some(position),
                        )),
                        _ => {
                            unknown.add_partition(element.topic(), element.partition());
                            lags.push((element.topic().to_owned(), element.partition(), None));
                        }
                    }
                }
                // Before the first message of a partition the position is unknown: the
                // group's committed offset stands in for it.
                let committed = if unknown.count() > 0 {
                    consumer
                        .committed_offsets(unknown, WATERMARK_TIMEOUT)
                        .map(|list| list.to_topic_map())
                        .unwrap_or_default()
                } else {
                    HashMap::new()
                };
                for (topic, partition, position) in lags {
                    if stop.is_cancelled() {
                        return;
                    }
                    let cached = consumer.context().watermarks.fresh(&topic, partition);
                    let Some((low, high)) = cached.or_else(|| {
                        consumer
                            .fetch_watermarks(&topic, partition, WATERMARK_TIMEOUT)
                            .ok()
                    }) else {
                        // Keep the last value rather than hide the partition.
                        seen.insert((topic, partition));
                        continue;
                    };
                    let position = position
                        .or_else(|| match committed.get(&(topic.clone(), partition)) {
                            Some(Offset::Offset(o)) => Some(*o),
                            _ => None,
                        })
                        .unwrap_or(low);
                    metrics
                        .consumer_lag
                        .with_label_values(&[&topic, &partition.to_string()])
                        .set((high - position).max(0));
                    seen.insert((topic, partition));
                }
            }
            for (topic, partition) in labels.difference(&seen) {
                let _ = metrics
                    .consumer_lag
                    .remove_label_values(&[topic, &partition.to_string()]);
            }
            labels = seen;
            let until = Instant::now() + LAG_INTERVAL;
            while Instant::now() < until && !stop.is_cancelled() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
}
