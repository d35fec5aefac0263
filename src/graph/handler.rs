//! The graph writer's [`Handler`]: a message from the results or edges topic becomes a row,
//! the row goes into the next batch, and the consumer loop learns its fate.
//!
//! - a message that cannot become a row (malformed JSON, unknown label, a relationship type
//!   outside the fixed list, an edge joining labels it may not, properties that are not
//!   scalars or lists) is dead-lettered at once, before it can fail a shared transaction;
//! - a row Neo4j refuses on its own is dead-lettered; its batch-mates are written;
//! - a row not written because Neo4j is down or busy is [`HandleError::Retry`]: the loop keeps
//!   the offset and redelivers with backoff, so nothing is committed past unwritten rows.
//!
//! Dead letters go to `relentless.graph.dlq` as JSON: `v`, `topic`, `partition`, `offset`,
//! `key`, the raw `payload` (as JSON when it parses, else as text), `reason`, `detail`,
//! `failed_at`.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{GraphArgs, KafkaArgs, Neo4jArgs};
use crate::consumer::{Delivery, HandleError, Handler};
use crate::graph::batcher::READINESS_NEO4J;
use crate::graph::migrate::{self, MigrateError, MigrateOptions};
use crate::graph::{
    Batcher, BatcherConfig, EdgeRow, GraphStore, NodeRow, Row, RowFailure, StoreError,
};
use crate::kafka::publish::Record;
use crate::message::{self, Edge, Node};
use crate::process::health::Readiness;
use crate::process::metrics::GraphWriterMetrics;

/// The DLQ reason of a payload that is not a valid message.
pub const REASON_PARSE: &str = "parse";
/// The DLQ reason of a row Neo4j refused.
pub const REASON_NEO4J_REJECTED: &str = "neo4j_rejected";
/// The DLQ reason of a message from a topic the writer does not know.
pub const REASON_UNKNOWN_TOPIC: &str = "unknown_topic";

/// Errors from starting the graph writer.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Neo4j settings are wrong.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Migrations could not be applied (refused, or locked for too long).
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// Shutdown was asked for before the schema was in place.
    #[error("shut down before migrations completed")]
    Cancelled,
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
    /// A handler writing through `batcher`, reading topic names from `kafka`.
    pub fn new(batcher: Batcher, kafka: &KafkaArgs, metrics: GraphWriterMetrics) -> Self {
        Self {
            batcher,
            results_topic: kafka.kafka_results_topic.clone(),
            edges_topic: kafka.kafka_edges_topic.clone(),
            dlq_topic: kafka.kafka_graph_dlq_topic.clone(),
            metrics,
        }
    }

    /// Everything the graph writer needs before its consumer loop starts: the store, the
    /// schema migrated (waiting for Neo4j if it is not up yet), and the batcher task. Readiness
    /// `neo4j` follows Neo4j from then on.
    pub async fn start(
        neo4j: &Neo4jArgs,
        graph: &GraphArgs,
        kafka: &KafkaArgs,
        metrics: GraphWriterMetrics,
        readiness: Readiness,
        shutdown: &CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), StartError> {
        readiness.set(READINESS_NEO4J, false);
        let store = Arc::new(GraphStore::connect(neo4j).await?);
        migrate::migrate_when_reachable(
            &store,
            migrate::MIGRATIONS,
            &MigrateOptions::default(),
            shutdown,
        )
        .await?
        .ok_or(StartError::Cancelled)?;
        let (batcher, task) = Batcher::spawn(
            store,
            BatcherConfig::from_args(graph),
            metrics.clone(),
            readiness,
        );
        Ok((Self::new(batcher, kafka, metrics), task))
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
            NodeRow::from_message(&node)
                .map(Row::Node)
                .map_err(|e| dead(e.reason(), e.to_string()))
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

    fn dead_letter(&self, delivery: &Delivery, reason: &str, detail: &str) -> Record {
        if delivery.topic == self.results_topic {
            self.metrics.results_failed.inc();
        } else if delivery.topic == self.edges_topic {
            self.metrics.edges_failed.inc();
        }
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

/// Errors that stop a graph writer.
#[derive(Debug, thiserror::Error)]
pub enum GraphWriterError {
    /// A metric could not be registered (a programming error).
    #[error("metrics: {0}")]
    Metrics(#[from] crate::process::metrics::MetricsError),
    /// The health server could not start.
    #[error(transparent)]
    Health(#[from] crate::process::health::HealthError),
    /// The store or its migrations failed at start-up.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The consumer loop failed.
    #[error(transparent)]
    Consumer(#[from] crate::consumer::ConsumerError),
}

/// Runs a graph writer until `shutdown` is cancelled: health server, migrations, the batcher
/// and the consumer loop over the results and edges topics.
pub async fn run(
    args: crate::config::GraphWriterArgs,
    shutdown: CancellationToken,
) -> Result<(), GraphWriterError> {
    let registry = prometheus::Registry::new();
    let consumer_metrics =
        crate::process::metrics::ConsumerMetrics::register(&registry, "relentless_graph_writer")?;
    let metrics = GraphWriterMetrics::register(&registry)?;
    let (liveness, readiness) = crate::process::health::spawn_consumer_server(
        args.metrics_addr,
        registry,
        consumer_metrics.last_poll_age_seconds.clone(),
        args.consumer.max_poll_interval,
        &[crate::consumer::ASSIGNMENT, READINESS_NEO4J],
    )?;

    let (handler, batcher_task) = GraphWriterHandler::start(
        &args.neo4j,
        &args.graph,
        &args.kafka,
        metrics,
        readiness.clone(),
        &shutdown,
    )
    .await?;
    // Rows wait in the batcher for their transaction: two batches in flight keep one
    // filling while the other is written.
    let concurrency = args
        .concurrent_jobs
        .unwrap_or(args.graph.graph_batch_size * 2);
    // A row waits for the batch ahead of it, then its own, each bounded by the query
    // timeout; past three of them something is wrong beyond a slow Neo4j.
    let job_timeout = args.neo4j.neo4j_query_timeout * 3 + args.graph.graph_batch_linger;
    let per_partition = args.consumer.per_partition(concurrency);
    crate::consumer::ConsumerLoop {
        topics: vec![
            args.kafka.kafka_results_topic.clone(),
            args.kafka.kafka_edges_topic.clone(),
        ],
        kafka: args.kafka,
        group_id: args.kafka_group_id,
        concurrency,
        per_partition,
        job_timeout,
        handler: Arc::new(handler),
        metrics: consumer_metrics,
        liveness,
        readiness,
        consumer: args.consumer,
    }
    .run(shutdown)
    .await?;
    batcher_task.abort();
    Ok(())
}
