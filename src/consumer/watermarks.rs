//! Partition watermarks as librdkafka last saw them, from its statistics, so the lag of a
//! thousand partitions costs no broker round trip.
//!
//! Asking the broker for each partition's watermarks (`ListOffsets`) every lag period took a
//! few milliseconds per partition: at 1,000 partitions a pass outlasted its period. The
//! fetcher already learns each partition's high watermark from every fetch response, and
//! librdkafka reports it in its statistics (`statistics.interval.ms`). Those statistics only
//! arrive while the loop polls, so a reading older than [`STALE_AFTER`] is not trusted: the
//! lag thread then asks the broker for that partition, and a wedged consumer's lag keeps
//! growing instead of freezing at its last, healthy-looking value.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How often librdkafka reports its statistics: the lag period.
pub(super) const STATISTICS_INTERVAL: Duration = super::lag::LAG_INTERVAL;

/// Past this age a cached watermark is not used (three statistics periods missed).
pub(super) const STALE_AFTER: Duration = Duration::from_secs(6);

/// The part of librdkafka's statistics JSON the lag needs.
#[derive(Deserialize)]
struct Statistics {
    #[serde(default)]
    topics: HashMap<String, TopicStatistics>,
}

#[derive(Deserialize)]
struct TopicStatistics {
    #[serde(default)]
    partitions: HashMap<String, PartitionStatistics>,
}

#[derive(Deserialize)]
struct PartitionStatistics {
    partition: i32,
    lo_offset: i64,
    hi_offset: i64,
}

/// `(low, high)` per `(topic, partition)`.
type Marks = HashMap<(String, i32), (i64, i64)>;

/// The low and high watermark of each partition this consumer fetches, with when they were
/// reported. Replaced whole on each report, so it holds only current partitions.
#[derive(Default)]
pub(super) struct Watermarks {
    latest: Mutex<(Option<Instant>, Marks)>,
}

impl Watermarks {
    /// Takes in one statistics report (librdkafka's JSON). A report that does not parse is
    /// ignored: the lag falls back to asking the broker.
    pub(super) fn record(&self, statistics: &[u8]) {
        let Ok(report) = serde_json::from_slice::<Statistics>(statistics) else {
            return;
        };
        let mut marks = HashMap::new();
        for (topic, stats) in report.topics {
            for partition in stats.partitions.into_values() {
                // -1 is librdkafka's internal "unassigned" partition; a negative high
                // watermark means no fetch answered yet.
                if partition.partition >= 0 && partition.hi_offset >= 0 {
                    marks.insert(
                        (topic.clone(), partition.partition),
                        (partition.lo_offset.max(0), partition.hi_offset),
                    );
                }
            }
        }
        if let Ok(mut latest) = self.latest.lock() {
            *latest = (Some(Instant::now()), marks);
        }
    }

    /// The partition's `(low, high)` watermarks if reported within [`STALE_AFTER`].
    pub(super) fn fresh(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
        let latest = self.latest.lock().ok()?;
        let (Some(at), marks) = &*latest else {
            return None;
        };
        if at.elapsed() > STALE_AFTER {
            return None;
        }
        marks.get(&(topic.to_owned(), partition)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of librdkafka's report (trimmed): per topic, per partition, with the
    /// internal partition -1 and a partition not fetched yet.
    const REPORT: &str = r#"{"name": "c#consumer-1", "type": "consumer", "brokers": {},
        "topics": {"frontier": {"topic": "frontier", "partitions": {
            "0": {"partition": 0, "lo_offset": 3, "hi_offset": 120, "fetch_state": "active"},
            "1": {"partition": 1, "lo_offset": -1, "hi_offset": -1, "fetch_state": "none"},
            "-1": {"partition": -1, "lo_offset": -1, "hi_offset": -1}}}}}"#;

    #[test]
    fn a_report_gives_the_fetched_partitions_watermarks_until_it_goes_stale() {
        let marks = Watermarks::default();
        assert_eq!(marks.fresh("frontier", 0), None);
        marks.record(REPORT.as_bytes());
        assert_eq!(marks.fresh("frontier", 0), Some((3, 120)));
        assert_eq!(marks.fresh("frontier", 1), None);
        assert_eq!(marks.fresh("frontier", -1), None);
        assert_eq!(marks.fresh("other", 0), None);
        // A report that does not parse keeps the last one.
        marks.record(b"not json");
        assert_eq!(marks.fresh("frontier", 0), Some((3, 120)));
        // A report older than STALE_AFTER is not used.
        marks.latest.lock().unwrap().0 = Instant::now().checked_sub(STALE_AFTER * 2);
        assert_eq!(marks.fresh("frontier", 0), None);
    }
}
