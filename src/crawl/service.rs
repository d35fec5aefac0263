//! The worker's start-up: the only file of the crawl pipeline that reads the command line.
//!
//! It builds the crawl store, the egress pool and the Open Library client, and runs the
//! consumer loop over the frontier with the [`CrawlHandler`].

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{LimitScope, WorkerArgs};
use crate::consumer::{ConsumerError, ConsumerLoop};
use crate::crawl::client::OpenLibraryClient;
use crate::crawl::client::egress::EgressError;
use crate::crawl::handler::{CrawlHandler, OutputTopics};
use crate::crawl::limits::CrawlLimits;
use crate::crawl::store::{CrawlStore, StoreError};
use crate::process::boot::{self, BootError};
use crate::process::metrics::WorkerMetrics;

/// Readiness condition: true while Redis answers; without it no job can start or finish.
pub const READINESS_REDIS: &str = "redis";

/// Errors that stop a worker at start-up.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Metrics or the health server could not start.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Redis is unreachable at start-up.
    #[error("crawl store: {0}")]
    Store(#[from] StoreError),
    /// Redis is unreachable for the rate limiter at start-up.
    #[error("rate limiter: {0}")]
    Redis(#[from] redis::RedisError),
    /// The egress pool could not be built from `PROXY_POOL`.
    #[error(transparent)]
    Egress(#[from] EgressError),
    /// The consumer loop failed.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
}

/// Runs a worker until `shutdown` is cancelled: health server, crawl store, egress pool and
/// the consumer loop over the frontier.
pub async fn run(args: WorkerArgs, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let (metrics, telemetry) = boot::start_consumer_service(
        "relentless_worker",
        args.metrics_addr,
        args.consumer.max_poll_interval,
        &[READINESS_REDIS],
        WorkerMetrics::register,
    )?;

    let store = CrawlStore::connect(&args.redis.redis_url).await?;
    let limiter_redis = match args.egress.egress_limit_scope {
        LimitScope::Cluster => Some(
            redis::aio::ConnectionManager::new(redis::Client::open(args.redis.redis_url.as_str())?)
                .await?,
        ),
        LimitScope::Local => None,
    };
    let client = OpenLibraryClient::from_args(&args.egress, limiter_redis, metrics.clone())?;
    let worker_name = args
        .worker_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let topics = OutputTopics {
        frontier: args.kafka.kafka_frontier_topic.clone(),
        results: args.kafka.kafka_results_topic.clone(),
        edges: args.kafka.kafka_edges_topic.clone(),
        dlq: args.kafka.kafka_dlq_topic.clone(),
    };
    let handler = CrawlHandler::new(
        client,
        store.clone(),
        CrawlLimits::from(&args.crawl),
        topics,
        metrics,
        worker_name,
    );
    boot::follow_readiness(
        telemetry.readiness.clone(),
        READINESS_REDIS,
        move || {
            let store = store.clone();
            async move { store.ping().await.is_ok() }
        },
        shutdown.clone(),
    );

    let settings = boot::loop_settings(
        &args.kafka,
        &args.consumer,
        args.kafka_group_id.clone(),
        vec![args.kafka.kafka_frontier_topic.clone()],
        args.concurrent_jobs,
        args.job_timeout,
    );
    ConsumerLoop::new(settings, Arc::new(handler), telemetry)
        .run(shutdown)
        .await?;
    Ok(())
}
