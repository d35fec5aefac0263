//! The follower's start-up: the only file of [`super`] that reads the command line.
//!
//! It builds the same polite client the workers use (the shared egress pool, the one
//! User-Agent budget, robots.txt), without the record cache (a feed page is news, never a
//! copy), and the stores the rounds need, then runs [`Follower::run`].

use std::time::Duration;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use super::cursor::CursorStore;
use super::{FollowSettings, Follower};
use crate::config::LimitScope;
use crate::config::follow::FollowArgs;
use crate::crawl::client::OpenLibraryClient;
use crate::crawl::client::egress::{EgressError, EgressPool};
use crate::crawl::service::{fetch_settings, pool_settings};
use crate::crawl::store::{CrawlStore, StoreError};
use crate::graph::{ConnectError, GraphStore};
use crate::kafka::KafkaSetupError;
use crate::kafka::publish::Publisher;
use crate::process::health::{self, HealthError, HealthState, Liveness, Readiness};
use crate::process::metrics::{FollowMetrics, MetricsError, WorkerMetrics};

/// Why the follower could not start.
#[derive(Debug, thiserror::Error)]
pub enum FollowStartError {
    /// A metric could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] MetricsError),
    /// The health server could not start.
    #[error(transparent)]
    Health(#[from] HealthError),
    /// Redis is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The crawl store is unreachable.
    #[error("crawl store: {0}")]
    Store(#[from] StoreError),
    /// The egress pool could not be built.
    #[error(transparent)]
    Egress(#[from] EgressError),
    /// Neo4j is unreachable.
    #[error("neo4j: {0}")]
    Graph(#[from] ConnectError),
    /// The producer could not be built.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaSetupError),
}

/// Runs the follower until `shutdown`.
pub async fn run(args: FollowArgs, shutdown: CancellationToken) -> Result<(), FollowStartError> {
    let registry = Registry::new();
    let metrics = FollowMetrics::register(&registry)?;
    let fetch_metrics = WorkerMetrics::register(&registry)?;
    // A round takes a few feed pages; one that has not finished in many poll intervals is
    // wedged, and a restart resumes from the cursor.
    let liveness = Liveness::new(
        (args.follow_poll_interval * 5).max(Duration::from_secs(600)),
        None,
    );
    let bound = health::spawn_server(
        args.metrics_addr,
        HealthState {
            registry,
            liveness: liveness.clone(),
            readiness: Readiness::with_conditions(&[]),
        },
    )?;
    tracing::info!(addr = %bound, "metrics and health listening");

    let redis = crate::backend::redis_connection(&args.redis).await?;
    let store = CrawlStore::connect(&args.redis)
        .await?
        .with_retention(args.crawl_retention);
    let limiter_redis = match args.egress.egress_limit_scope {
        LimitScope::Cluster => Some(redis.clone()),
        LimitScope::Local => None,
    };
    let pool = EgressPool::new(
        pool_settings(&args.egress),
        limiter_redis,
        fetch_metrics.clone(),
    )?;
    let mut settings = fetch_settings(&args.egress);
    settings.refetch_after = Duration::ZERO;
    let client = OpenLibraryClient::new(pool, settings, fetch_metrics, Some(redis.clone()));
    let holder = format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "follow".to_owned()),
        uuid::Uuid::now_v7()
    );
    let follower = Follower {
        client,
        cursor: CursorStore::new(redis, &args.follow_name, holder, args.follow_lease),
        graph: GraphStore::connect(&args.neo4j).await?,
        store,
        publisher: Publisher::new(&args.kafka.brokers, args.publish_timeout)?,
        settings: FollowSettings {
            kinds: args.follow_kinds.clone(),
            since: args
                .follow_since
                .unwrap_or_else(|| chrono::Utc::now().date_naive()),
            depth: args.follow_depth,
            name: args.follow_name.clone(),
            poll_interval: args.follow_poll_interval,
            batch_keys: args.follow_batch_keys,
            day_grace: args.follow_day_grace,
            frontier: args.kafka.kafka_frontier_topic.clone(),
        },
        metrics,
        liveness,
    };
    tracing::info!(name = %args.follow_name, kinds = ?args.follow_kinds, depth = args.follow_depth, "following the change feed");
    follower.run(shutdown).await;
    Ok(())
}
