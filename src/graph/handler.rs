//! The graph writer's [`Handler`]: a message from the results or edges topic becomes a row,
//! the row goes into the next batch, and the consumer loop learns its fate.
//!
//! - a message that cannot become a row (malformed JSON, unknown label, a relationship type
//!   outside the fixed list, an edge joining labels it may not, properties that are not
//!   scalars or lists, a gone message without an integer revision or redirecting to a key of
//!   another kind: `invalid_gone`) is dead-lettered at once, before it can fail a shared
//!   transaction;
//! - a row Neo4j refuses on its own is dead-lettered; its batch-mates are written;
//! - a row not written because Neo4j is down or busy is [`HandleError::Retry`]: the loop keeps
//!   the offset and redelivers with backoff, so nothing is committed past unwritten rows. That
//!   includes a row still waiting when `JOB_TIMEOUT` passes ([`Handler::timed_out`]): waiting
//!   for Neo4j is never the row's fault, so it is never a `timeout` dead letter.
//!
//! Dead letters go to `relentless.graph.dlq` as JSON: `v`, `topic`, `partition`, `offset`,
//! `key`, the raw `payload` (as JSON when it parses, else as text), `reason`, `detail`,
//! `failed_at`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::consumer::{Delivery, HandleError, Handler, Outcome};
use crate::graph::{Batcher, EdgeRow, Row, RowFailure};
use crate::kafka::publish::Record;
use crate::message::{self, Edge, Node};
use crate::process::metrics::GraphWriterMetrics;

/// The DLQ reason of a payload that is not a valid message.
pub const REASON_PARSE: &str = "parse";
/// The DLQ reason of a row Neo4j refused.
pub const REASON_NEO4J_REJECTED: &str = "neo4j_rejected";
/// The DLQ reason of a message from a topic the writer does not know.
pub const REASON_UNKNOWN_TOPIC: &str = "unknown_topic";

/// The topics a graph writer reads and dead-letters to.
#[derive(Debug, Clone)]
pub struct GraphTopics {
    /// Fetched nodes.
    pub results: String,
    /// Relationships.
    pub edges: String,
    /// Rows that could not be written on their own.
    pub dlq: String,
}

/// Turns results and edges messages into graph rows.
pub struct GraphWriterHandler {
    batcher: Batcher,
    results_topic: String,
    edges_topic: String,
    dlq_topic: String,
    metrics: GraphWriterMetrics,
}

impl GraphWriterHandler {
    /// A handler writing the rows of `topics` through `batcher`.
    pub fn new(batcher: Batcher, topics: GraphTopics, metrics: GraphWriterMetrics) -> Self {
        Self {
            batcher,
            results_topic: topics.results,
            edges_topic: topics.edges,
            dlq_topic: topics.dlq,
            metrics,
        }
    }

    /// The row a message carries, or why it has none.
    pub fn row(&self, delivery: &Delivery) -> Result<Row, HandleError> {
        let first_try = delivery.attempt <= 1;
        let payload = delivery.payload.as_deref();
        let dead = |reason: &str, detail: String| HandleError::DeadLetter {
            reason: reason.to_owned(),
            detail,
        };
        if delivery.topic == self.results_topic {
            if first_try {
                self.metrics.results_received.inc();
            }
            let node: Node =
                message::decode(payload).map_err(|e| dead(REASON_PARSE, e.to_string()))?;
            Row::of_node(&node).map_err(|e| dead(e.reason(), e.to_string()))
        } else if delivery.topic == self.edges_topic {
            if first_try {
                self.metrics.edges_received.inc();
            }
            let edge: Edge =
                message::decode(payload).map_err(|e| dead(REASON_PARSE, e.to_string()))?;
            EdgeRow::from_message(&edge)
                .map(Row::Edge)
                .map_err(|e| dead(e.reason(), e.to_string()))
        } else {
            Err(dead(
                REASON_UNKNOWN_TOPIC,
                format!("the graph writer does not read {}", delivery.topic),
            ))
        }
    }
}

impl Handler for GraphWriterHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<Vec<Record>, HandleError> {
        let row = self.row(delivery)?;
        match self.batcher.write(row).await {
            Ok(()) => Ok(Vec::new()),
            Err(RowFailure::Rejected(detail)) => Err(HandleError::DeadLetter {
                reason: REASON_NEO4J_REJECTED.to_owned(),
                detail,
            }),
            Err(RowFailure::Retry(detail)) => Err(HandleError::Retry(detail)),
        }
    }

    /// A row that waited past `JOB_TIMEOUT` waited for Neo4j (a slow or hung server, a queue
    /// of batches ahead of it): the row is not at fault, so it is retried, never dead-lettered.
    fn timed_out(&self, _delivery: &Delivery, job_timeout: Duration) -> HandleError {
        HandleError::Retry(format!(
            "row not written within {job_timeout:?}: Neo4j is slow or not answering"
        ))
    }

    /// Counts the row failed once its DLQ record is acknowledged: once per row, however often
    /// the record had to be built or sent.
    async fn finished(&self, delivery: &Delivery, outcome: Outcome<'_>) -> Result<(), HandleError> {
        if let Outcome::DeadLettered { .. } = outcome {
            if delivery.topic == self.results_topic {
                self.metrics.results_failed.inc();
            } else if delivery.topic == self.edges_topic {
                self.metrics.edges_failed.inc();
            }
        }
        Ok(())
    }

    fn dead_letter(&self, delivery: &Delivery, reason: &str, detail: &str) -> Record {
        let payload = delivery.payload.as_deref().map(|bytes| {
            serde_json::from_slice::<Value>(bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
        });
        let key = delivery
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        let record = json!({
            "v": message::VERSION,
            "topic": delivery.topic,
            "partition": delivery.partition,
            "offset": delivery.offset,
            "key": key,
            "payload": payload,
            "reason": reason,
            "detail": detail,
            "attempts": delivery.attempt,
            "failed_at": chrono::Utc::now(),
        });
        Record {
            topic: self.dlq_topic.clone(),
            // Keyed like the message it replaces, so a replay tool can put it back in order.
            key: key.unwrap_or_else(|| {
                format!(
                    "{}/{}/{}",
                    delivery.topic, delivery.partition, delivery.offset
                )
            }),
            payload: record.to_string().into_bytes(),
        }
    }
}
