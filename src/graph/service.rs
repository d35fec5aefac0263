//! The graph writer's start-up: the only file of the graph pipeline that reads the command
//! line.
//!
//! It connects to Neo4j, applies the migrations (waiting for Neo4j if it is not up yet),
//! starts the batcher and runs the consumer loop over the results and edges topics with the
//! [`GraphWriterHandler`].

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{GraphArgs, GraphWriterArgs, KafkaArgs, Neo4jArgs};
use crate::consumer::{ConsumerError, ConsumerLoop};
use crate::graph::batcher::READINESS_NEO4J;
use crate::graph::handler::{GraphTopics, GraphWriterHandler};
use crate::graph::migrate::{self, MigrateError, MigrateOptions};
use crate::graph::{Batcher, BatcherConfig, ConnectError, GraphStore};
use crate::process::boot::{self, BootError};
use crate::process::health::Readiness;
use crate::process::metrics::GraphWriterMetrics;

/// Errors from starting the graph writer's own parts.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Neo4j settings are wrong.
    #[error(transparent)]
    Store(#[from] ConnectError),
    /// Migrations could not be applied (refused, or locked for too long).
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// Shutdown was asked for before the schema was in place.
    #[error("shut down before migrations completed")]
    Cancelled,
}

/// Errors that stop a graph writer.
#[derive(Debug, thiserror::Error)]
pub enum GraphWriterError {
    /// Metrics or the health server could not start.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The store or its migrations failed at start-up.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The consumer loop failed.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
}

/// Runs a graph writer until `shutdown` is cancelled: health server, migrations, the batcher
/// and the consumer loop over the results and edges topics.
pub async fn run(
    args: GraphWriterArgs,
    shutdown: CancellationToken,
) -> Result<(), GraphWriterError> {
    let (metrics, telemetry) = boot::start_consumer_service(
        "relentless_graph_writer",
        args.metrics_addr,
        args.consumer.max_poll_interval,
        &[READINESS_NEO4J],
        GraphWriterMetrics::register,
    )?;
    let (handler, batcher_task) = start_handler(
        &args.neo4j,
        &args.graph,
        &args.kafka,
        metrics,
        telemetry.readiness.clone(),
        &shutdown,
    )
    .await?;
    // Rows wait in the batcher for their transaction: one batch filling while the others
    // are written.
    let concurrency = args
        .concurrent_jobs
        .unwrap_or(args.graph.graph_batch_size * (args.graph.graph_transactions + 1));
    // A row waits for the batch ahead of it, then its own, each bounded by the query
    // timeout; past three of them something is wrong beyond a slow Neo4j.
    let job_timeout = args.neo4j.neo4j_query_timeout * 3 + args.graph.graph_batch_linger;
    let settings = boot::loop_settings(
        &args.kafka,
        &args.consumer,
        args.kafka_group_id.clone(),
        vec![
            args.kafka.kafka_results_topic.clone(),
            args.kafka.kafka_edges_topic.clone(),
        ],
        concurrency,
        job_timeout,
    );
    ConsumerLoop::new(settings, Arc::new(handler), telemetry)
        .run(shutdown)
        .await?;
    batcher_task.abort();
    Ok(())
}

/// Everything the graph writer needs before its consumer loop starts: the store, the schema
/// migrated (waiting for Neo4j if it is not up yet), and the batcher task. Readiness `neo4j`
/// follows Neo4j from then on.
pub async fn start_handler(
    neo4j: &Neo4jArgs,
    graph: &GraphArgs,
    kafka: &KafkaArgs,
    metrics: GraphWriterMetrics,
    readiness: Readiness,
    shutdown: &CancellationToken,
) -> Result<(GraphWriterHandler, JoinHandle<()>), StartError> {
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
        BatcherConfig {
            transactions: graph.graph_transactions,
            ..BatcherConfig::new(graph.graph_batch_size, graph.graph_batch_linger)
        },
        metrics.clone(),
        readiness,
    );
    Ok((
        GraphWriterHandler::new(batcher, graph_topics(kafka), metrics),
        task,
    ))
}

/// The topics of the graph writer, from the shared Kafka flags.
pub fn graph_topics(kafka: &KafkaArgs) -> GraphTopics {
    GraphTopics {
        results: kafka.kafka_results_topic.clone(),
        edges: kafka.kafka_edges_topic.clone(),
        dlq: kafka.kafka_graph_dlq_topic.clone(),
    }
}
