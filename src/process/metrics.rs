//! Every Prometheus metric the binaries export, defined and registered in one place.
//!
//! The names are a contract (the Grafana dashboard and the alerts use them), so call sites
//! never build a name: they take a field of one of these structs. Each struct registers into
//! a [`Registry`] it is given, which lets tests build as many independent sets as they like.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Errors from defining metrics: only a duplicate or malformed name, i.e. a programming error.
pub type MetricsError = prometheus::Error;

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
    let metric = IntCounter::new(name, help)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
    let metric = IntGauge::new(name, help)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, MetricsError> {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn float_gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<GaugeVec, MetricsError> {
    let metric = GaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> Result<Histogram, MetricsError> {
    let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// Buckets for latencies from a millisecond (a local commit) to two minutes (a slow fetch
/// through a throttled proxy).
fn latency_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        120.0,
    ]
}

/// The consumer loop's metrics. The worker and the graph writer run the same loop, so the
/// names take the service's namespace (`relentless_worker`, `relentless_graph_writer`).
#[derive(Clone)]
pub struct ConsumerMetrics {
    /// Jobs running now, across all partitions.
    pub in_flight: IntGauge,
    /// Completions per partition that wait for a lower offset before they can be committed.
    pub commit_pending: IntGaugeVec,
    /// Commit attempts that failed (each is retried).
    pub commit_errors: IntCounter,
    /// Time one successful commit took, retries included.
    pub commit_latency: Histogram,
    /// Jobs abandoned because publishing their outputs ran past `PUBLISH_TIMEOUT`.
    pub publish_timeouts: IntCounter,
    /// Age of the oldest job in flight: a stuck partition shows here first.
    pub oldest_in_flight_seconds: IntGauge,
    /// Per partition, how long the oldest message fetched but not yet started has waited for a
    /// slot (0 when none waits). `oldest_in_flight_seconds` counts only running jobs, so a
    /// partition starved of slots looks healthy there; it shows here.
    pub oldest_waiting_seconds: GaugeVec,
    /// High watermark minus the consumer's position, refreshed off the loop so a wedged loop
    /// cannot freeze it at a healthy-looking value.
    pub consumer_lag: IntGaugeVec,
    /// Seconds since the loop last polled Kafka; set at scrape time by the health server.
    pub last_poll_age_seconds: IntGauge,
    /// Messages given up without a DLQ record because Kafka refused the record for good (too
    /// large, invalid): the partition moves on, so every one is a message lost and an alert.
    pub dlq_refused: IntCounter,
    /// DLQ records whose payload was replaced by an excerpt (prefix, size, hash) because the
    /// whole would not fit under the broker's record size limit.
    pub dlq_excerpted: IntCounter,
}

impl ConsumerMetrics {
    /// Registers the loop's metrics under `namespace` (for example `relentless_worker`).
    pub fn register(registry: &Registry, namespace: &str) -> Result<Self, MetricsError> {
        let name = |suffix: &str| format!("{namespace}_{suffix}");
        Ok(Self {
            in_flight: gauge(registry, &name("in_flight"), "Jobs running now.")?,
            commit_pending: gauge_vec(
                registry,
                &name("commit_pending_total"),
                "Completions waiting for a lower offset before they can be committed.",
                &["partition"],
            )?,
            commit_errors: counter(
                registry,
                &name("commit_errors_total"),
                "Offset commits that failed and were retried.",
            )?,
            commit_latency: histogram(
                registry,
                &name("commit_latency_seconds"),
                "Time one successful offset commit took, retries included.",
                latency_buckets(),
            )?,
            publish_timeouts: counter(
                registry,
                &name("publish_timeouts_total"),
                "Jobs abandoned because publishing their outputs ran past PUBLISH_TIMEOUT.",
            )?,
            oldest_in_flight_seconds: gauge(
                registry,
                &name("oldest_in_flight_seconds"),
                "Age of the oldest job in flight.",
            )?,
            oldest_waiting_seconds: float_gauge_vec(
                registry,
                &name("oldest_waiting_seconds"),
                "Per partition, how long the oldest fetched message not yet started has waited for a slot.",
                &["partition"],
            )?,
            consumer_lag: gauge_vec(
                registry,
                &name("consumer_lag"),
                "High watermark minus the consumer position.",
                &["topic", "partition"],
            )?,
            last_poll_age_seconds: gauge(
                registry,
                &name("last_poll_age_seconds"),
                "Seconds since the consumer loop last polled Kafka.",
            )?,
            dlq_refused: counter(
                registry,
                &name("dlq_refused_total"),
                "Messages given up because Kafka refused their DLQ record for good (lost: alert on any).",
            )?,
            dlq_excerpted: counter(
                registry,
                &name("dlq_excerpted_total"),
                "DLQ records that carry an excerpt of the payload instead of the whole.",
            )?,
        })
    }
}

/// How full Redis is, as the crawl store last read it (`INFO memory`): past 90 % of the
/// limit new crawls get 503 and workers park new jobs, so this is the gauge to alert on
/// before that.
#[derive(Clone)]
pub struct RedisMemoryMetrics {
    /// `used_memory`.
    pub used_bytes: IntGauge,
    /// `maxmemory` (0: no limit).
    pub max_bytes: IntGauge,
}

impl RedisMemoryMetrics {
    /// Registers `<namespace>_redis_memory_used_bytes` and `_max_bytes`.
    pub fn register(registry: &Registry, namespace: &str) -> Result<Self, MetricsError> {
        Ok(Self {
            used_bytes: gauge(
                registry,
                &format!("{namespace}_redis_memory_used_bytes"),
                "Redis used_memory, as last read.",
            )?,
            max_bytes: gauge(
                registry,
                &format!("{namespace}_redis_memory_max_bytes"),
                "Redis maxmemory (0: no limit), as last read.",
            )?,
        })
    }
}

/// What the worker counts about jobs and Open Library traffic.
#[derive(Clone)]
pub struct WorkerMetrics {
    /// Crawl jobs received from the frontier.
    pub jobs_received: IntCounter,
    /// Jobs whose node (or search expansion) was published.
    pub jobs_success: IntCounter,
    /// Jobs that ended in the DLQ, by reason.
    pub jobs_failed: IntCounterVec,
    /// Jobs dropped on purpose: already crawled at this depth, over budget, or cancelled.
    pub jobs_skipped: IntCounter,
    /// Jobs put back at the frontier's tail because their crawl held its fair share of this
    /// worker while another crawl waited.
    pub jobs_deferred: IntCounter,
    /// Time of one Open Library fetch, retries and rate-limit waits included.
    pub fetch_latency: Histogram,
    /// 429 and 503 answers, by egress.
    pub rate_limit_hits: IntCounterVec,
    /// Requests sent, by egress and HTTP status (`error` when no answer came).
    pub egress_requests: IntCounterVec,
    /// 1 while an egress is blocked by backoff or marked down.
    pub egress_blocked: IntGaugeVec,
    /// 1 while Open Library refuses our User-Agent and nothing is sent (the alert's signal).
    pub user_agent_blocked: IntGauge,
    /// Record cache lookups by result (`hit`, `miss`, `error`): the hit rate is what the
    /// cache saves Open Library.
    pub record_cache_lookups: IntCounterVec,
    /// Bytes the record cache holds in Redis, as of this process's last store.
    pub record_cache_bytes: IntGauge,
    /// How full Redis is.
    pub redis_memory: RedisMemoryMetrics,
}

impl WorkerMetrics {
    /// Registers the worker's metrics.
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        Ok(Self {
            jobs_received: counter(
                registry,
                "relentless_worker_jobs_received_total",
                "Crawl jobs received from the frontier.",
            )?,
            jobs_success: counter(
                registry,
                "relentless_worker_jobs_success_total",
                "Jobs whose outputs were published.",
            )?,
            jobs_failed: counter_vec(
                registry,
                "relentless_worker_jobs_failed_total",
                "Jobs sent to the DLQ, by reason.",
                &["reason"],
            )?,
            jobs_skipped: counter(
                registry,
                "relentless_worker_jobs_skipped_total",
                "Jobs dropped as duplicate, over budget or cancelled.",
            )?,
            jobs_deferred: counter(
                registry,
                "relentless_worker_jobs_deferred_total",
                "Jobs put back at the frontier's tail while their crawl held its fair share.",
            )?,
            fetch_latency: histogram(
                registry,
                "relentless_worker_fetch_latency_seconds",
                "Open Library fetch time, retries and rate-limit waits included.",
                latency_buckets(),
            )?,
            rate_limit_hits: counter_vec(
                registry,
                "relentless_worker_rate_limit_hits_total",
                "429 and 503 answers, by egress.",
                &["egress"],
            )?,
            egress_requests: counter_vec(
                registry,
                "relentless_worker_egress_requests_total",
                "Requests sent, by egress and HTTP status.",
                &["egress", "status"],
            )?,
            egress_blocked: gauge_vec(
                registry,
                "relentless_worker_egress_blocked",
                "1 while an egress is blocked by backoff or marked down.",
                &["egress"],
            )?,
            user_agent_blocked: gauge(
                registry,
                "relentless_worker_user_agent_blocked",
                "1 while Open Library refuses our User-Agent and no worker sends.",
            )?,
            record_cache_lookups: counter_vec(
                registry,
                "relentless_worker_record_cache_lookups_total",
                "Record cache lookups, by result (hit, miss, error).",
                &["result"],
            )?,
            record_cache_bytes: gauge(
                registry,
                "relentless_worker_record_cache_bytes",
                "Bytes the record cache holds in Redis, as of this process's last store.",
            )?,
            redis_memory: RedisMemoryMetrics::register(registry, "relentless_worker")?,
        })
    }
}

/// What the graph writer counts about rows and Neo4j.
#[derive(Clone)]
pub struct GraphWriterMetrics {
    /// Node messages received.
    pub results_received: IntCounter,
    /// Node rows committed in Neo4j.
    pub results_written: IntCounter,
    /// Node rows sent to the graph DLQ.
    pub results_failed: IntCounter,
    /// Edge messages received.
    pub edges_received: IntCounter,
    /// Relationship rows committed in Neo4j.
    pub edges_written: IntCounter,
    /// Relationship rows sent to the graph DLQ.
    pub edges_failed: IntCounter,
    /// Rows per Neo4j transaction.
    pub batch_rows: Histogram,
    /// Time of one batch transaction.
    pub neo4j_write_seconds: Histogram,
    /// Transactions tried again, by why (`transient`: a deadlock or lock timeout with another
    /// transaction; `unavailable`: a connection lost). Each one redoes a whole batch, so a
    /// rate here that grows with the writers is lock contention eating the throughput.
    pub transaction_retries: IntCounterVec,
    /// 1 while Neo4j answers, 0 while the writer waits for it.
    pub neo4j_up: IntGauge,
}

impl GraphWriterMetrics {
    /// Registers the graph writer's metrics.
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        Ok(Self {
            results_received: counter(
                registry,
                "relentless_graph_writer_results_received_total",
                "Node messages received.",
            )?,
            results_written: counter(
                registry,
                "relentless_graph_writer_results_written_total",
                "Node rows committed in Neo4j.",
            )?,
            results_failed: counter(
                registry,
                "relentless_graph_writer_results_failed_total",
                "Node rows sent to the graph DLQ.",
            )?,
            edges_received: counter(
                registry,
                "relentless_graph_writer_edges_received_total",
                "Edge messages received.",
            )?,
            edges_written: counter(
                registry,
                "relentless_graph_writer_edges_written_total",
                "Relationship rows committed in Neo4j.",
            )?,
            edges_failed: counter(
                registry,
                "relentless_graph_writer_edges_failed_total",
                "Relationship rows sent to the graph DLQ.",
            )?,
            batch_rows: histogram(
                registry,
                "relentless_graph_writer_batch_rows",
                "Rows per Neo4j transaction.",
                vec![
                    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
                ],
            )?,
            neo4j_write_seconds: histogram(
                registry,
                "relentless_graph_writer_neo4j_write_seconds",
                "Time of one batch transaction.",
                latency_buckets(),
            )?,
            transaction_retries: counter_vec(
                registry,
                "relentless_graph_writer_transaction_retries_total",
                "Batch transactions tried again, by reason (transient, unavailable).",
                &["reason"],
            )?,
            neo4j_up: gauge(
                registry,
                "relentless_graph_writer_neo4j_up",
                "1 while Neo4j answers, 0 while the writer waits for it.",
            )?,
        })
    }
}

/// What the HTTP API counts.
#[derive(Clone)]
pub struct ApiMetrics {
    /// Requests answered, by route template and status code.
    pub requests: IntCounterVec,
    /// Crawls created.
    pub crawls_created: IntCounter,
    /// How full Redis is.
    pub redis_memory: RedisMemoryMetrics,
}

impl ApiMetrics {
    /// Registers the API's metrics.
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        Ok(Self {
            requests: counter_vec(
                registry,
                "relentless_api_requests_total",
                "Requests answered, by route and status.",
                &["route", "status"],
            )?,
            crawls_created: counter(
                registry,
                "relentless_api_crawls_created_total",
                "Crawls created.",
            )?,
            redis_memory: RedisMemoryMetrics::register(registry, "relentless_api")?,
        })
    }
}

/// What `bookworm follow` counts: how far behind the change feed the graph is, and what the
/// feed cost and brought.
#[derive(Clone)]
pub struct FollowMetrics {
    /// Seconds from the newest change read to now: grows while the follower is behind (or
    /// the feed is quiet), drops as it catches up.
    pub cursor_lag_seconds: IntGauge,
    /// Change entries read from the feed (each once).
    pub changes_seen: IntCounter,
    /// Keys enqueued into freshness crawls.
    pub keys_enqueued: IntCounter,
    /// Keys not enqueued, by reason: `not_newer` (the graph holds that revision or a newer
    /// one), `other_record` (not a work, author or edition).
    pub keys_skipped: IntCounterVec,
    /// 1 while this replica holds the cursor's lease.
    pub leader: IntGauge,
    /// Rounds that failed (feed, Redis, Neo4j or Kafka), retried next round.
    pub round_errors: IntCounter,
    /// (Day, kind) reads that hit the feed's 11,000-entry cap: changes this follower could not
    /// see; a crawl or the next dump has to bring them.
    pub capped_reads: IntCounter,
}

impl FollowMetrics {
    /// Registers the follower's metrics.
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        Ok(Self {
            cursor_lag_seconds: gauge(
                registry,
                "relentless_follow_cursor_lag_seconds",
                "Seconds from the newest change read to now.",
            )?,
            changes_seen: counter(
                registry,
                "relentless_follow_changes_seen_total",
                "Change entries read from the feed.",
            )?,
            keys_enqueued: counter(
                registry,
                "relentless_follow_keys_enqueued_total",
                "Changed keys enqueued into freshness crawls.",
            )?,
            keys_skipped: counter_vec(
                registry,
                "relentless_follow_keys_skipped_total",
                "Changed keys not enqueued, by reason.",
                &["reason"],
            )?,
            leader: gauge(
                registry,
                "relentless_follow_leader",
                "1 while this replica holds the cursor's lease.",
            )?,
            round_errors: counter(
                registry,
                "relentless_follow_round_errors_total",
                "Follower rounds that failed and were retried.",
            )?,
            capped_reads: counter(
                registry,
                "relentless_follow_capped_reads_total",
                "Day and kind reads that hit the feed's entry cap.",
            )?,
        })
    }
}
