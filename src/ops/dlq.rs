//! `bookworm dlq list|replay`: reading the crawl DLQ and putting its jobs back on the frontier
//! (the graph DLQ's replay, `--graph`, is [`super::graph_dlq`]).
//!
//! Reading: see [`super::dlq_reader`] (no group, no commits, the whole retained DLQ; a
//! replay reads it batch by batch, never whole).
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
//! was deleted and recreated (offsets restart at 0) is not mistaken for the old one. Marks of
//! records the DLQ's retention deleted are forgotten at the end of each replay. Several
//! records of one job within a batch publish it once; two in different batches publish it
//! twice, and the second copy is absorbed like a crash's (above).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use rdkafka::error::KafkaError;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use super::dlq_reader::{Decoded, DlqStream, IDLE_TIMEOUT, StreamEnd, prune_marks, read_blocking};
use crate::config::{KafkaArgs, RedisArgs};
use crate::crawl::store::{CrawlStore, Requeue, StoreError};
use crate::kafka::KafkaSetupError;
use crate::kafka::publish::{PublishError, Publisher, Record};
use crate::message::{self, CrawlJob, Failure, FailureReason, VERSION};

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
    )?
    .records;
    result.records.sort_by_key(|r| (r.partition, r.offset));
    Ok(result)
}

/// The records of the DLQ `topic` that `filter` passes, streamed for a replay.
pub fn stream(kafka: &KafkaArgs, topic: &str, filter: &DlqFilter) -> DlqStream<DlqRecord> {
    let filter = filter.clone();
    DlqStream::start(
        kafka,
        topic,
        move |partition, offset, payload| match message::decode::<Failure>(payload) {
            Ok(failure) if filter.matches(&failure) => Decoded::Take(DlqRecord {
                partition,
                offset,
                failure,
            }),
            Ok(_) => Decoded::Skip,
            Err(_) => Decoded::Undecodable,
        },
    )
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

impl ReplayReport {
    /// Counts a record left alone.
    pub(super) fn skip(&mut self, why: NotReplayed) {
        *self.not_replayed.entry(why).or_default() += 1;
    }
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

    /// Replays the records of `stream` batch by batch as they are read, then forgets the
    /// marks of records the DLQ no longer holds; see the module doc for the order and
    /// guarantees.
    pub async fn replay(
        &self,
        mut stream: DlqStream<DlqRecord>,
    ) -> Result<(ReplayReport, StreamEnd), DlqError> {
        let mut report = ReplayReport::default();
        while let Some(batch) = stream.next_batch().await {
            self.replay_batch(&batch, &mut report).await?;
        }
        let end = stream.end().await?;
        let mut conn = self.redis.clone();
        prune_marks(&mut conn, &self.marks_key, &end.read.low_watermarks).await?;
        Ok((report, end))
    }

    async fn replay_batch(
        &self,
        batch: &[DlqRecord],
        report: &mut ReplayReport,
    ) -> Result<(), DlqError> {
        let mut published: HashSet<(String, String)> = HashSet::new();
        let mut to_publish = Vec::new();
        let mut to_mark: Vec<(String, String)> = Vec::new();
        let mut conn = self.redis.clone();
        let fields: Vec<String> = batch.iter().map(mark_field).collect();
        let marks = marks_of(&mut conn, &self.marks_key, &fields).await?;
        for ((record, field), mark) in batch.iter().zip(fields).zip(marks) {
            let print = fingerprint(&record.failure);
            if mark.as_deref() == Some(print.as_str()) {
                report.skip(NotReplayed::AlreadyReplayed);
                continue;
            }
            let Some(job) = record.job() else {
                report.skip(NotReplayed::NotAJob);
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
                        report.skip(NotReplayed::Cancelled);
                        continue;
                    }
                    Requeue::UnknownCrawl => {
                        report.skip(NotReplayed::UnknownCrawl);
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
            report,
        )
        .await
    }
}

/// The marks of `fields` in the hash `marks_key`, in order.
pub(super) async fn marks_of(
    conn: &mut ConnectionManager,
    marks_key: &str,
    fields: &[String],
) -> Result<Vec<Option<String>>, DlqError> {
    if fields.is_empty() {
        return Ok(Vec::new());
    }
    Ok(redis::cmd("HMGET")
        .arg(marks_key)
        .arg(fields)
        .query_async(conn)
        .await?)
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
