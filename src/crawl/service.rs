//! The worker's start-up: the only file of the crawl pipeline that reads the command line.
//!
//! It builds the crawl store, the egress pool and the Open Library client, and runs the
//! consumer loop over the frontier with the [`CrawlHandler`].

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{CrawlArgs, EgressArgs, LimitScope, WorkerArgs};
use crate::consumer::{ConsumerError, ConsumerLoop};
use crate::crawl::client::egress::limiter::Rate;
use crate::crawl::client::egress::{ClientSettings, EgressError, EgressPool, PoolSettings};
use crate::crawl::client::{FetchSettings, OpenLibraryClient};
use crate::crawl::handler::{CrawlHandler, OutputTopics};
use crate::crawl::limits::CrawlLimits;
use crate::crawl::store::{CrawlStore, StoreError};
use crate::process::boot::{self, BootError};
use crate::process::metrics::WorkerMetrics;

/// Readiness condition: true while Redis answers; without it no job can start or finish.
pub const READINESS_REDIS: &str = "redis";

/// Readiness condition: true while some egress can send (its jobs park while none can).
pub const READINESS_EGRESS: &str = "egress";

/// Errors that stop a worker at start-up.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Metrics or the health server could not start.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Redis is unreachable at start-up.
    #[error("crawl store: {0}")]
    Store(#[from] StoreError),
    /// Redis is unreachable for the client's shared state at start-up.
    #[error("record cache, User-Agent block and rate limiter: {0}")]
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
        &[READINESS_REDIS, READINESS_EGRESS],
        WorkerMetrics::register,
    )?;

    let store = CrawlStore::connect(&args.redis)
        .await?
        .with_retention(args.crawl.crawl_retention);
    // One connection for the client's shared state: the record cache, the User-Agent block
    // and, with cluster scope, the egress limits.
    let shared = crate::backend::redis_connection(&args.redis).await?;
    let limiter_redis = match args.egress.egress_limit_scope {
        LimitScope::Cluster => Some(shared.clone()),
        LimitScope::Local => None,
    };
    let pool = EgressPool::new(pool_settings(&args.egress), limiter_redis, metrics.clone())?;
    boot::follow_readiness(
        telemetry.readiness.clone(),
        READINESS_EGRESS,
        {
            let pool = pool.clone();
            move || {
                let ready = !pool.is_out();
                async move { ready }
            }
        },
        shutdown.clone(),
    );
    let client = OpenLibraryClient::new(
        pool,
        fetch_settings(&args.egress),
        metrics.clone(),
        Some(shared),
    );
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
    store.watch_memory(metrics.redis_memory.clone(), shutdown.clone());
    let handler = CrawlHandler::new(
        client,
        store.clone(),
        crawl_limits(&args.crawl),
        topics,
        metrics,
        worker_name,
    )
    .with_fair_shares(args.concurrent_jobs, shutdown.clone());
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

/// The Open Library client's settings from `EgressArgs`.
pub fn fetch_settings(args: &EgressArgs) -> FetchSettings {
    FetchSettings {
        origin: args.origin.openlibrary_base_url.clone(),
        respect_robots: args.respect_robots_txt,
        robots_refresh: args.robots_refresh,
        max_body_bytes: args.max_body_bytes,
        retries: args.fetch_retries,
        backoff_base: args.retry_backoff_base,
        backoff_max: args.retry_backoff_max,
        budget_ratio: args.retry_budget_ratio,
        budget_min: args.retry_budget_min,
        budget_window: args.retry_budget_window,
        refetch_after: args.refetch_after,
        record_cache_max_bytes: args.record_cache_max_bytes,
        blocked_probe_interval: args.blocked_probe_interval,
    }
}

/// The egress pool's settings from `EgressArgs`.
pub fn pool_settings(args: &EgressArgs) -> PoolSettings {
    let origin = &args.origin.openlibrary_base_url;
    PoolSettings {
        egresses: args.proxy_pool.0.clone(),
        rate: Rate::per_minute(args.egress_rate_per_minute, args.egress_burst),
        overall: Some(Rate::per_minute(
            args.user_agent_rate_per_minute,
            args.egress_burst,
        )),
        scope: args.egress_limit_scope,
        redis_prefix: args.state.egress_redis_prefix.clone(),
        block_base: args.egress_block_base,
        block_max: args.egress_block_max,
        origin_addr: format!(
            "{}:{}",
            origin.host_str().unwrap_or_default(),
            origin.port_or_known_default().unwrap_or(443)
        ),
        client: ClientSettings {
            user_agent: args.user_agent.clone(),
            connect_timeout: args.connect_timeout,
            read_timeout: args.read_timeout,
            request_timeout: args.request_timeout,
        },
    }
}

/// The crawl limits from `CrawlArgs`.
fn crawl_limits(args: &CrawlArgs) -> CrawlLimits {
    CrawlLimits {
        max_depth: args.max_depth,
        max_search_results: args.max_search_results,
        max_subjects_per_node: args.max_subjects_per_node,
        max_works_per_author: args.max_works_per_author,
        max_works_per_subject: args.max_works_per_subject,
        crawl_editions: args.crawl_editions,
        max_editions_per_work: args.max_editions_per_work,
    }
}
