//! `bookworm dlq list|replay`: reading the crawl DLQ and putting its jobs back on the frontier
//! (the graph DLQ's replay, `--graph`, is [`super::graph_dlq`]).
//!
//! Reading: the DLQ is read by a consumer that joins no group and commits nothing: it assigns
//! every partition explicitly from its low watermark, reads up to the high watermark seen at
//! the start and stops, so listing or replaying never moves anyone's offsets and always sees
//! the whole retained DLQ.
//!
//! Replay is idempotent. Each DLQ record, named by `(partition, offset)`, is remembered in a
//! Redis hash per DLQ topic once its job was republished; a second replay skips what is
//! remembered. The order for each batch of records is:
//! 1. the key is made pending again in the crawl store ([`CrawlStore::requeue`]): its failure
//!    leaves the counters, a `done` crawl is `running` again, and the worker's BEGIN will run
//!    the job instead of dropping it as already crawled;
//! 2. the jobs are published to the frontier and acknowledged with `acks=all`;
//! 3. only then are the records marked replayed.
//!
//! A crash between 2 and 3 leaves the batch unmarked, so the next replay republishes it: a
//! job is then enqueued at most once more. That copy is absorbed by the worker's dedupe: while
//! the first copy is in flight the second runs against the same pending claim, and every
//! counter counts a key once (nodes, edges and failures are recorded per key), so the status
//! and the graph (MERGE) stay the same; at worst one extra fetch. A crash between 1 and 2
//! leaves the key pending with no job; the next replay finds it pending and publishes it.
//!
//! The mark stores a fingerprint of the record (crawl, key, failure time), so a DLQ topic that
//! was deleted and recreated (offsets restart at 0) is not mistaken for the old one.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use crate::config::{KafkaArgs, RedisArgs};
use crate::crawl::store::{CrawlStore, Requeue, StoreError};
use crate::kafka::publish::{PublishError, Publisher, Record};
use crate::kafka::{self, KafkaSetupError};
use crate::message::{self, CrawlJob, Failure, FailureReason, VERSION};

/// Bound on metadata and watermark requests: a healthy broker answers in milliseconds.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the reader waits without any message or end-of-partition before it gives up: a
/// broker that stops serving must not hang an operator's terminal.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Records republished per batch: one acknowledgement wait and one Redis write per batch.
pub(super) const REPLAY_BATCH: usize = 500;
/// Bound on publishing one batch of replayed jobs (the worker's `PUBLISH_TIMEOUT` default).
pub const REPLAY_PUBLISH_TIMEOUT: Duration = Duration::from_secs(90);

/// Errors of the DLQ commands.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// A Kafka client could not be built.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// Kafka failed a request (unreachable, timed out): retry later.
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The topic does not exist.
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    /// No message arrived for [`IDLE_TIMEOUT`] before the end of the topic was reached.
    #[error(
        "reading {topic} stalled: no message for {IDLE_TIMEOUT:?} with partitions {partitions:?} unfinished"
    )]
    Stalled {
        /// The topic.
        topic: String,
        /// Partitions not read to their end.
        partitions: Vec<i32>,
    },
    /// Redis failed (the replay marks): retry; nothing is marked that was not published.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The crawl store failed: retry.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Republishing failed: retry; the batch is not marked, so it is replayed next time.
    #[error("publishing replayed jobs: {0}")]
    Publish(#[from] PublishError),
    /// The reading thread died.
    #[error("DLQ reader failed: {0}")]
    Reader(String),
}

/// One DLQ record and where it sits.
#[derive(Debug, Clone, PartialEq)]
pub struct DlqRecord {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The failure it carries.
    pub failure: Failure,
}

impl DlqRecord {
    /// The job's key, when the failure carries a job (not a raw payload).
    pub fn key(&self) -> Option<&str> {
        self.failure.job.get("key").and_then(|k| k.as_str())
    }

    /// The original job, if the failure carries one that parses.
    pub fn job(&self) -> Option<CrawlJob> {
        serde_json::from_value(self.failure.job.clone()).ok()
    }
}

/// Which DLQ records a command works on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DlqFilter {
    /// Only this reason.
    pub reason: Option<FailureReason>,
    /// Only this crawl.
    pub crawl_id: Option<String>,
}

impl DlqFilter {
    /// Whether `failure` passes.
    pub fn matches(&self, failure: &Failure) -> bool {
        self.reason.is_none_or(|r| r == failure.reason)
            && self
                .crawl_id
                .as_deref()
                .is_none_or(|c| c == failure.crawl_id)
    }
}

/// What a read of the DLQ found.
#[derive(Debug, Clone, Default)]
pub struct DlqScan {
    /// Matching records in partition and offset order, up to the limit.
    pub records: Vec<DlqRecord>,
    /// Records read (matching or not).
    pub read: u64,
    /// Records that are not Failures of this format (reported, never replayed).
    pub undecodable: u64,
}

/// Reads `topic` from the beginning to the high watermark seen at the start and returns the
/// records `filter` passes, at most `limit` (then it stops early).
pub async fn scan(
    kafka: &KafkaArgs,
    topic: &str,
    filter: &DlqFilter,
    limit: Option<usize>,
) -> Result<DlqScan, DlqError> {
    let (kafka, topic, filter) = (kafka.clone(), topic.to_owned(), filter.clone());
    // librdkafka's consumer API is blocking; keep it off the async threads.
    tokio::task::spawn_blocking(move || scan_blocking(&kafka, &topic, &filter, limit))
        .await
        .map_err(|e| DlqError::Reader(e.to_string()))?
}

fn scan_blocking(
    kafka: &KafkaArgs,
    topic: &str,
    filter: &DlqFilter,
    limit: Option<usize>,
) -> Result<DlqScan, DlqError> {
    let mut result = DlqScan::default();
    result.read = read_blocking(
        kafka,
        topic,
        |partition, offset, payload| match message::decode::<Failure>(payload) {
            Ok(failure) if filter.matches(&failure) => {
                result.records.push(DlqRecord {
                    partition,
                    offset,
                    failure,
                });
                limit.is_some_and(|l| result.records.len() >= l)
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(partition, offset, error = %e, "undecodable DLQ record");
                result.undecodable += 1;
                false
            }
        },
    )?;
    result.records.sort_by_key(|r| (r.partition, r.offset));
    Ok(result)
}

/// Reads `topic` from its low to its high watermarks (as seen at the start), handing each
/// record to `take` until it answers `true` (enough); returns how many records were read.
pub(super) fn read_blocking(
    kafka: &KafkaArgs,
    topic: &str,
    mut take: impl FnMut(i32, i64, Option<&[u8]>) -> bool,
) -> Result<u64, DlqError> {
    let consumer: BaseConsumer = kafka::Cluster::client_config(&kafka.brokers)
        // librdkafka wants a group id, but partitions are assigned, never subscribed, so the
        // group is never joined, and nothing is ever committed to it.
        .set("group.id", "bookworm-dlq-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // End-of-partition events tell the reader a partition is done even when its last
        // offsets hold no message it can see (transaction markers).
        .set("enable.partition.eof", "true")
        .create()
        .map_err(KafkaSetupError::Client)?;
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(DlqError::UnknownTopic(topic.to_owned()));
    }
    let mut assignment = TopicPartitionList::new();
    let mut end: BTreeMap<i32, i64> = BTreeMap::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT)?;
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
            end.insert(partition, high);
        }
    }
    let mut read = 0;
    if end.is_empty() {
        return Ok(read);
    }
    consumer.assign(&assignment)?;
    let mut last_progress = Instant::now();
    while !end.is_empty() {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let (partition, offset) = (message.partition(), message.offset());
                let Some(&high) = end.get(&partition) else {
                    continue;
                };
                if offset >= high {
                    end.remove(&partition);
                    continue;
                }
                if offset + 1 >= high {
                    end.remove(&partition);
                }
                read += 1;
                if take(partition, offset, message.payload()) {
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                last_progress = Instant::now();
                end.remove(&partition);
            }
            Some(Err(e)) => return Err(DlqError::Kafka(e)),
            None => {
                if last_progress.elapsed() > IDLE_TIMEOUT {
                    return Err(DlqError::Stalled {
                        topic: topic.to_owned(),
                        partitions: end.keys().copied().collect(),
                    });
                }
            }
        }
    }
    Ok(read)
}

/// One line of `bookworm dlq list`: crawl, key, reason, attempts, detail (tab-separated, so
/// `cut` and `awk` can take it apart; tabs and newlines in the detail become spaces).
pub fn render_line(record: &DlqRecord) -> String {
    let f = &record.failure;
    let crawl = if f.crawl_id.is_empty() {
        "-"
    } else {
        f.crawl_id.as_str()
    };
    let detail: String = f
        .detail
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(
        "{crawl}\t{key}\t{reason}\t{attempts}\t{detail}",
        key = record.key().unwrap_or("-"),
        reason = f.reason.as_str(),
        attempts = f.attempts,
    )
}

/// Why a DLQ record was not replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NotReplayed {
    /// A previous replay already republished it.
    AlreadyReplayed,
    /// The failure holds a raw payload, not a job.
    NotAJob,
    /// The crawl was cancelled.
    Cancelled,
    /// The crawl is unknown (expired).
    UnknownCrawl,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayReport {
    /// Jobs published to the frontier.
    pub published: u64,
    /// DLQ records marked replayed by this run (several records of one job publish it once).
    pub marked: u64,
    /// Records left alone, by why.
    pub not_replayed: BTreeMap<NotReplayed, u64>,
}

/// Republishes dead-lettered jobs to the frontier, at most once per DLQ record.
pub struct Replayer {
    publisher: Publisher,
    store: CrawlStore,
    redis: ConnectionManager,
    frontier_topic: String,
    marks_key: String,
}

impl Replayer {
    /// A replayer for the DLQ topic of `kafka`, with the marks and crawl state in Redis.
    pub async fn new(
        kafka: &KafkaArgs,
        redis: &RedisArgs,
        publish_timeout: Duration,
    ) -> Result<Self, DlqError> {
        let target = redis;
        let redis = crate::backend::redis_connection(target).await?;
        Ok(Self {
            publisher: Publisher::new(&kafka.brokers, publish_timeout)?,
            store: CrawlStore::connect(target).await?,
            redis,
            frontier_topic: kafka.kafka_frontier_topic.clone(),
            marks_key: marks_key(&kafka.kafka_dlq_topic),
        })
    }

    /// Replays `records` (from [`scan`]); see the module doc for the order and guarantees.
    pub async fn replay(&self, records: &[DlqRecord]) -> Result<ReplayReport, DlqError> {
        let mut report = ReplayReport::default();
        let mut published: HashSet<(String, String)> = HashSet::new();
        for batch in records.chunks(REPLAY_BATCH) {
            let mut to_publish = Vec::new();
            let mut to_mark: Vec<(String, String)> = Vec::new();
            let mut conn = self.redis.clone();
            let fields: Vec<String> = batch.iter().map(mark_field).collect();
            let marks: Vec<Option<String>> = if fields.is_empty() {
                Vec::new()
            } else {
                redis::cmd("HMGET")
                    .arg(&self.marks_key)
                    .arg(&fields)
                    .query_async(&mut conn)
                    .await?
            };
            for ((record, field), mark) in batch.iter().zip(fields).zip(marks) {
                let print = fingerprint(&record.failure);
                if mark.as_deref() == Some(print.as_str()) {
                    *report
                        .not_replayed
                        .entry(NotReplayed::AlreadyReplayed)
                        .or_default() += 1;
                    continue;
                }
                let Some(job) = record.job() else {
                    *report.not_replayed.entry(NotReplayed::NotAJob).or_default() += 1;
                    continue;
                };
                let id = (job.crawl_id.clone(), job.key.clone());
                if !published.contains(&id) {
                    match self
                        .store
                        .requeue(&job.crawl_id, &job.key, job.depth)
                        .await?
                    {
                        Requeue::Requeued | Requeue::AlreadyPending => {}
                        Requeue::Cancelled => {
                            *report
                                .not_replayed
                                .entry(NotReplayed::Cancelled)
                                .or_default() += 1;
                            continue;
                        }
                        Requeue::UnknownCrawl => {
                            *report
                                .not_replayed
                                .entry(NotReplayed::UnknownCrawl)
                                .or_default() += 1;
                            continue;
                        }
                    }
                    let fresh = CrawlJob {
                        v: VERSION,
                        enqueued_at: Utc::now(),
                        ..job
                    };
                    let payload = serde_json::to_vec(&fresh)
                        .map_err(|e| DlqError::Reader(format!("serialising a job: {e}")))?;
                    to_publish.push(Record {
                        topic: self.frontier_topic.clone(),
                        key: fresh.key.clone(),
                        payload,
                    });
                    published.insert(id);
                }
                to_mark.push((field, print));
            }
            publish_then_mark(
                &self.publisher,
                &mut conn,
                &self.marks_key,
                &to_publish,
                &to_mark,
                &mut report,
            )
            .await?;
        }
        Ok(report)
    }
}

/// Publishes a batch of replayed records, acknowledged, and only then marks their DLQ
/// records replayed: a crash between the two republishes the batch next time (absorbed by
/// dedupe), never loses it.
pub(super) async fn publish_then_mark(
    publisher: &Publisher,
    conn: &mut ConnectionManager,
    marks_key: &str,
    to_publish: &[Record],
    to_mark: &[(String, String)],
    report: &mut ReplayReport,
) -> Result<(), DlqError> {
    publisher.publish(to_publish).await?;
    report.published += to_publish.len() as u64;
    if !to_mark.is_empty() {
        conn.hset_multiple::<_, _, _, ()>(marks_key, to_mark)
            .await?;
        report.marked += to_mark.len() as u64;
    }
    Ok(())
}

/// The Redis hash of replay marks of one DLQ topic.
pub fn marks_key(dlq_topic: &str) -> String {
    format!("bookworm:dlq-replayed:{dlq_topic}")
}

fn mark_field(record: &DlqRecord) -> String {
    format!("{}:{}", record.partition, record.offset)
}

/// What identifies a DLQ record besides its position.
fn fingerprint(failure: &Failure) -> String {
    let key = failure
        .job
        .get("key")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    format!(
        "{}|{}|{}",
        failure.crawl_id,
        key,
        failure.failed_at.to_rfc3339()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn failure(crawl: &str, reason: FailureReason, job: serde_json::Value) -> Failure {
        Failure {
            v: VERSION,
            crawl_id: crawl.to_owned(),
            job,
            reason,
            detail: "HTTP 503\tafter 3 tries\n".to_owned(),
            attempts: 3,
            failed_at: Utc::now(),
            worker: "w".to_owned(),
        }
    }

    #[test]
    fn the_filter_takes_reason_and_crawl_together() {
        let f = failure("c1", FailureReason::Http5xx, json!({}));
        assert!(DlqFilter::default().matches(&f));
        let by_reason = DlqFilter {
            reason: Some(FailureReason::Http5xx),
            crawl_id: None,
        };
        assert!(by_reason.matches(&f));
        let other_crawl = DlqFilter {
            crawl_id: Some("c2".to_owned()),
            ..by_reason.clone()
        };
        assert!(!other_crawl.matches(&f));
        let other_reason = DlqFilter {
            reason: Some(FailureReason::Timeout),
            crawl_id: Some("c1".to_owned()),
        };
        assert!(!other_reason.matches(&f));
    }

    #[test]
    fn a_line_keeps_one_record_on_one_line() {
        let record = DlqRecord {
            partition: 0,
            offset: 7,
            failure: failure(
                "c1",
                FailureReason::Http5xx,
                json!({"key": "/works/OL1W", "crawl_id": "c1"}),
            ),
        };
        assert_eq!(
            render_line(&record),
            "c1\t/works/OL1W\thttp_5xx\t3\tHTTP 503 after 3 tries "
        );
        let raw = DlqRecord {
            failure: failure("", FailureReason::InvalidJob, json!("{not json")),
            ..record
        };
        assert!(render_line(&raw).starts_with("-\t-\tinvalid_job\t"));
        assert_eq!(raw.job(), None, "a raw payload is not replayable");
    }
}
