//! The start-up every service shares: one metrics registry, the health server, readiness
//! that follows each dependency, and the consumer loop's settings read from the command line.
//!
//! The worker and the graph writer start the same way and differ only in their handler and
//! their dependencies; writing the steps once keeps their `/metrics`, `/healthz` and
//! `/readyz` alike.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::{ConsumerArgs, KafkaArgs};
use crate::consumer::{ASSIGNMENT, LoopSettings, LoopTelemetry};
use crate::process::health::{self, HealthError, Readiness};
use crate::process::metrics::{ConsumerMetrics, MetricsError};

/// How often a dependency's readiness is checked: often enough that `/readyz` follows an
/// outage within seconds, rarely enough to cost nothing.
const READINESS_INTERVAL: Duration = Duration::from_secs(5);

/// Why a service could not start its shared parts.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A metric could not be registered (a programming error).
    #[error("metrics: {0}")]
    Metrics(#[from] MetricsError),
    /// The health server could not start.
    #[error(transparent)]
    Health(#[from] HealthError),
}

/// Starts what a consumer service needs before its own parts: the consumer loop's metrics
/// (in `namespace`) and the service's own (`register`) in one registry, and the health server
/// on `addr`, whose liveness fails once the loop has not polled for half of
/// `max_poll_interval` and whose readiness starts with [`ASSIGNMENT`] and `dependencies` not
/// ready.
pub fn start_consumer_service<M>(
    namespace: &str,
    addr: SocketAddr,
    max_poll_interval: Duration,
    dependencies: &[&'static str],
    register: impl FnOnce(&Registry) -> Result<M, MetricsError>,
) -> Result<(M, LoopTelemetry), BootError> {
    let registry = Registry::new();
    let metrics = ConsumerMetrics::register(&registry, namespace)?;
    let service_metrics = register(&registry)?;
    let conditions: Vec<&'static str> = std::iter::once(ASSIGNMENT)
        .chain(dependencies.iter().copied())
        .collect();
    let (liveness, readiness) = health::spawn_consumer_server(
        addr,
        registry,
        metrics.last_poll_age_seconds.clone(),
        max_poll_interval,
        &conditions,
    )?;
    Ok((
        service_metrics,
        LoopTelemetry {
            metrics,
            liveness,
            readiness,
        },
    ))
}

/// The consumer loop's settings from the flags every consumer service shares.
pub fn loop_settings(
    kafka: &KafkaArgs,
    consumer: &ConsumerArgs,
    group_id: String,
    topics: Vec<String>,
    concurrency: usize,
    job_timeout: Duration,
) -> LoopSettings {
    LoopSettings {
        brokers: (&kafka.brokers).into(),
        group_id,
        topics,
        concurrency,
        per_partition: consumer.per_partition(concurrency),
        job_timeout,
        publish_timeout: consumer.publish_timeout,
        commit_interval: consumer.commit_interval,
        drain_timeout: consumer.drain_timeout,
        revoke_drain_timeout: consumer.revoke_drain_timeout,
        max_poll_interval: consumer.max_poll_interval,
        session_timeout: consumer.session_timeout,
    }
}

/// Keeps readiness `condition` following `probe` (checked every few seconds) until
/// `shutdown`: a dependency without which the service can do nothing useful.
pub fn follow_readiness<P, F>(
    readiness: Readiness,
    condition: &'static str,
    probe: P,
    shutdown: CancellationToken,
) where
    P: Fn() -> F + Send + 'static,
    F: Future<Output = bool> + Send,
{
    tokio::spawn(async move {
        loop {
            readiness.set(condition, probe().await);
            tokio::select! {
                _ = tokio::time::sleep(READINESS_INTERVAL) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    });
}
