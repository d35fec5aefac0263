//! `bookworm dlq replay --graph`: putting the graph DLQ's rows (`relentless.graph.dlq`) back
//! on the results and edges topics, read and remembered the way the crawl DLQ's replay does
//! ([`super::dlq`]): no consumer group, streamed, and a Redis mark per record once it is
//! republished, so a second replay publishes nothing.

use std::time::Duration;

use redis::aio::ConnectionManager;
use serde_json::Value;

use super::dlq::*;
use super::dlq_reader::{Decoded, DlqStream, StreamEnd, prune_marks};
use crate::config::{KafkaArgs, RedisArgs};
use crate::kafka::publish::{Publisher, Record};
use crate::message;

/// One record of the graph DLQ (`relentless.graph.dlq`): a row the graph writer could not
/// write, with the message it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphDlqRecord {
    /// Its partition in the graph DLQ.
    pub partition: i32,
    /// Its offset in the graph DLQ.
    pub offset: i64,
    /// The topic the row came from (results or edges).
    pub topic: String,
    /// The original message's key.
    pub key: Option<String>,
    /// The original message, as JSON when it parsed (else its text, or an excerpt).
    pub payload: Value,
    /// Why it was dead-lettered (`neo4j_rejected`, `parse`, `unknown_rel`, `timeout`…).
    pub reason: String,
    /// When it was dead-lettered, as written.
    pub failed_at: String,
}

impl GraphDlqRecord {
    /// Reads one graph DLQ record; `None` when it is not one.
    fn decode(partition: i32, offset: i64, payload: Option<&[u8]>) -> Option<Self> {
        let body: Value = serde_json::from_slice(payload?).ok()?;
        Some(Self {
            partition,
            offset,
            topic: body.get("topic")?.as_str()?.to_owned(),
            key: body.get("key").and_then(Value::as_str).map(str::to_owned),
            payload: body.get("payload").cloned().unwrap_or(Value::Null),
            reason: body.get("reason")?.as_str()?.to_owned(),
            failed_at: body
                .get("failed_at")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        })
    }

    /// The crawl of the original message, when it carries one.
    pub fn crawl_id(&self) -> Option<&str> {
        self.payload.get("crawl_id").and_then(Value::as_str)
    }
}

/// Which graph DLQ records a replay takes: graph reasons are the writer's own words, not the
/// crawl DLQ's list, so the reason is matched as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphDlqFilter {
    /// Only this reason.
    pub reason: Option<String>,
    /// Only rows of this crawl.
    pub crawl_id: Option<String>,
}

impl GraphDlqFilter {
    /// Whether `record` passes.
    pub fn matches(&self, record: &GraphDlqRecord) -> bool {
        self.reason.as_deref().is_none_or(|r| r == record.reason)
            && self
                .crawl_id
                .as_deref()
                .is_none_or(|c| Some(c) == record.crawl_id())
    }
}

/// The records of the graph DLQ of `kafka` that `filter` passes, streamed for a replay.
pub fn stream_graph(kafka: &KafkaArgs, filter: &GraphDlqFilter) -> DlqStream<GraphDlqRecord> {
    let filter = filter.clone();
    DlqStream::start(
        kafka,
        &kafka.kafka_graph_dlq_topic,
        move |partition, offset, payload| match GraphDlqRecord::decode(partition, offset, payload) {
            Some(record) if filter.matches(&record) => Decoded::Take(record),
            Some(_) => Decoded::Skip,
            None => Decoded::Undecodable,
        },
    )
}

/// Puts rows of the graph DLQ back on the results and edges topics they came from, at most
/// once per DLQ record (marked in Redis like the crawl DLQ's replay). Writes are `MERGE`s, so
/// a row replayed twice (a crash between publishing and marking) changes nothing; a row that
/// fails again is dead-lettered again, as a new record.
pub struct GraphReplayer {
    publisher: Publisher,
    redis: ConnectionManager,
    results_topic: String,
    edges_topic: String,
    marks_key: String,
}

impl GraphReplayer {
    /// A replayer for the graph DLQ of `kafka`, with its marks in `redis`.
    pub async fn new(
        kafka: &KafkaArgs,
        redis: &RedisArgs,
        publish_timeout: Duration,
    ) -> Result<Self, DlqError> {
        let target = redis;
        let redis = crate::backend::redis_connection(target).await?;
        Ok(Self {
            publisher: Publisher::new(&kafka.brokers, publish_timeout)?,
            redis,
            results_topic: kafka.kafka_results_topic.clone(),
            edges_topic: kafka.kafka_edges_topic.clone(),
            marks_key: marks_key(&kafka.kafka_graph_dlq_topic),
        })
    }

    /// The message a record puts back, or `None` when it carries no message of a topic the
    /// graph writer reads (raw text, an excerpt of a payload too large to quote, another topic).
    fn message(&self, record: &GraphDlqRecord) -> Option<Record> {
        let key = if record.topic == self.results_topic {
            let node: message::Node = serde_json::from_value(record.payload.clone()).ok()?;
            node.key
        } else if record.topic == self.edges_topic {
            let edge: message::Edge = serde_json::from_value(record.payload.clone()).ok()?;
            edge.from
        } else {
            return None;
        };
        Some(Record {
            topic: record.topic.clone(),
            key: record.key.clone().unwrap_or(key),
            payload: serde_json::to_vec(&record.payload).ok()?,
        })
    }

    /// Replays the records of `stream` batch by batch as they are read (each batch published
    /// and acknowledged, then marked), then forgets the marks of records the graph DLQ no
    /// longer holds.
    pub async fn replay(
        &self,
        mut stream: DlqStream<GraphDlqRecord>,
    ) -> Result<(ReplayReport, StreamEnd), DlqError> {
        let mut report = ReplayReport::default();
        let mut conn = self.redis.clone();
        while let Some(batch) = stream.next_batch().await {
            let fields: Vec<String> = batch
                .iter()
                .map(|r| format!("{}:{}", r.partition, r.offset))
                .collect();
            let marks = marks_of(&mut conn, &self.marks_key, &fields).await?;
            let mut to_publish = Vec::new();
            let mut to_mark = Vec::new();
            for ((record, field), mark) in batch.iter().zip(fields).zip(marks) {
                let print = format!("{}|{}", record.topic, record.failed_at);
                if mark.as_deref() == Some(print.as_str()) {
                    report.skip(NotReplayed::AlreadyReplayed);
                    continue;
                }
                let Some(message) = self.message(record) else {
                    report.skip(NotReplayed::NotAJob);
                    continue;
                };
                to_publish.push(message);
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
        let end = stream.end().await?;
        prune_marks(&mut conn, &self.marks_key, &end.read.low_watermarks).await?;
        Ok((report, end))
    }
}
