//! Every setting, as a `clap` flag with an environment variable of the same name.
//!
//! The settings shared by several binaries (Kafka, Redis, Neo4j, logging, crawl limits) are
//! defined here once and flattened into each binary's command line, so a name and its default
//! can never drift between the worker, the graph writer and the operator tool. Parsing happens
//! in clap's value parsers: an invalid value stops the process at start-up with clap's usage
//! error (exit code 2) naming the variable, never a silent fallback to a default.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Parses a humantime duration (`90s`, `5m`, `100ms`) for clap.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("expected a duration like 90s or 5m: {e}"))
}

/// Parses a count that must be at least one: a zero limit would silently stop all work.
pub fn parse_positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("expected a whole number: {e}")),
    }
}

/// Kafka connection and topic names, shared by every binary.
#[derive(Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Bootstrap servers, comma-separated.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// Topic of crawl jobs, keyed by the Open Library key.
    #[arg(
        long,
        env = "KAFKA_FRONTIER_TOPIC",
        default_value = "relentless.crawl.frontier"
    )]
    pub kafka_frontier_topic: String,

    /// Topic of fetched nodes, keyed by the Open Library key.
    #[arg(
        long,
        env = "KAFKA_RESULTS_TOPIC",
        default_value = "relentless.crawl.results"
    )]
    pub kafka_results_topic: String,

    /// Topic of relationships, keyed by their `from` key.
    #[arg(
        long,
        env = "KAFKA_EDGES_TOPIC",
        default_value = "relentless.graph.edges"
    )]
    pub kafka_edges_topic: String,

    /// Topic of jobs that could not be crawled, with the reason.
    #[arg(long, env = "KAFKA_DLQ_TOPIC", default_value = "relentless.crawl.dlq")]
    pub kafka_dlq_topic: String,

    /// Topic of graph rows that Neo4j refused on their own, with the reason.
    #[arg(
        long,
        env = "KAFKA_GRAPH_DLQ_TOPIC",
        default_value = "relentless.graph.dlq"
    )]
    pub kafka_graph_dlq_topic: String,
}

impl KafkaArgs {
    /// All topics the system uses, in the order `bookworm topics create` makes them.
    pub fn all_topics(&self) -> [&str; 5] {
        [
            &self.kafka_frontier_topic,
            &self.kafka_results_topic,
            &self.kafka_edges_topic,
            &self.kafka_dlq_topic,
            &self.kafka_graph_dlq_topic,
        ]
    }
}

/// Redis, which holds per-crawl dedupe state, status counters and the cluster rate limit.
#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
    /// Redis connection URL.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
}

/// Neo4j, the graph store.
#[derive(Args, Clone)]
pub struct Neo4jArgs {
    /// Bolt URI of the graph store.
    #[arg(long, env = "NEO4J_URI", default_value = "bolt://127.0.0.1:7687")]
    pub neo4j_uri: String,

    /// Neo4j user.
    #[arg(long, env = "NEO4J_USER", default_value = "neo4j")]
    pub neo4j_user: String,

    /// Neo4j password; its value is never printed, not even by --help.
    #[arg(
        long,
        env = "NEO4J_PASSWORD",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub neo4j_password: String,

    /// Connections in the driver's pool: one per concurrent transaction is enough, more only
    /// adds lock contention inside Neo4j.
    #[arg(long, env = "NEO4J_MAX_CONNECTIONS", default_value = "8", value_parser = parse_positive)]
    pub neo4j_max_connections: usize,

    /// Bound on every call to Neo4j, so a half-open connection cannot hang the writer.
    #[arg(long, env = "NEO4J_QUERY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub neo4j_query_timeout: Duration,
}

/// Hand-written so the password can never reach a log line through `{:?}`.
impl std::fmt::Debug for Neo4jArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Neo4jArgs")
            .field("neo4j_uri", &self.neo4j_uri)
            .field("neo4j_user", &self.neo4j_user)
            .field("neo4j_password", &"<redacted>")
            .field("neo4j_max_connections", &self.neo4j_max_connections)
            .field("neo4j_query_timeout", &self.neo4j_query_timeout)
            .finish()
    }
}

/// How log lines are written.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging, shared by every binary. The level comes from `RUST_LOG` (default `info`).
#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Limits of a crawl. The API stamps them on every crawl it creates; a crawl may set its own
/// depth and node budget, the per-node fan-out limits are the worker's.
#[derive(Args, Debug, Clone)]
pub struct CrawlArgs {
    /// Default crawl depth (a crawl may set its own).
    #[arg(long, env = "MAX_DEPTH", default_value = "3")]
    pub max_depth: u32,

    /// Default per-crawl budget of fetched nodes.
    #[arg(long, env = "MAX_NODES", default_value = "100000", value_parser = parse_positive)]
    pub max_nodes: usize,

    /// Works enqueued from a free-text seed's search.
    #[arg(long, env = "MAX_SEARCH_RESULTS", default_value = "20")]
    pub max_search_results: usize,

    /// Subjects followed from one work or edition.
    #[arg(long, env = "MAX_SUBJECTS_PER_NODE", default_value = "10")]
    pub max_subjects_per_node: usize,

    /// Works followed from one author.
    #[arg(long, env = "MAX_WORKS_PER_AUTHOR", default_value = "50")]
    pub max_works_per_author: usize,

    /// Works followed from one subject.
    #[arg(long, env = "MAX_WORKS_PER_SUBJECT", default_value = "50")]
    pub max_works_per_subject: usize,

    /// Whether works expand to their editions.
    #[arg(long, env = "CRAWL_EDITIONS", default_value = "false", action = clap::ArgAction::Set)]
    pub crawl_editions: bool,

    /// Editions followed from one work when `CRAWL_EDITIONS` is on.
    #[arg(long, env = "MAX_EDITIONS_PER_WORK", default_value = "20")]
    pub max_editions_per_work: usize,
}

/// Where `/metrics`, `/healthz` and `/readyz` are served. The default differs per binary, so
/// each binary declares its own flag and passes the address here.
pub type MetricsAddr = SocketAddr;

/// Settings of the consumer loop that the worker and the graph writer share.
#[derive(Args, Debug, Clone)]
pub struct ConsumerArgs {
    /// Bound on publishing a job's outputs; past it the job is abandoned and dead-lettered
    /// (or redelivered), so one blocked publish can never freeze a partition.
    #[arg(long, env = "PUBLISH_TIMEOUT", default_value = "90s", value_parser = parse_duration)]
    pub publish_timeout: Duration,

    /// How often complete offsets are committed. Short enough that a restart redelivers
    /// little; long enough not to load the group coordinator.
    #[arg(long, env = "COMMIT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub commit_interval: Duration,

    /// How long in-flight jobs may finish on shutdown or partition revoke before they are
    /// dropped for redelivery. Keep it under the pod's termination grace period.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Kafka's `max.poll.interval.ms`; `/healthz` fails once the loop has not polled for half
    /// of it, so a wedged consumer is restarted before the group evicts it.
    #[arg(long, env = "MAX_POLL_INTERVAL", default_value = "300s", value_parser = parse_duration)]
    pub max_poll_interval: Duration,

    /// How long in-flight jobs of a revoked partition may finish before they are dropped for
    /// redelivery. Short: the whole group waits for the rebalance while this runs.
    #[arg(long, env = "REVOKE_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub revoke_drain_timeout: Duration,

    /// Jobs running at once in one partition, so one hot partition cannot take every slot of
    /// the process. Default: half of `CONCURRENT_JOBS`.
    #[arg(long, env = "PARTITION_CONCURRENCY", value_parser = parse_positive)]
    pub partition_concurrency: Option<usize>,

    /// Kafka's `session.timeout.ms`: how soon the group notices a dead consumer.
    #[arg(long, env = "SESSION_TIMEOUT", default_value = "45s", value_parser = parse_duration)]
    pub session_timeout: Duration,
}

/// Where the worker may fetch, how it identifies itself, and how politely it sends: the
/// egress pool, its rate limits, robots.txt, and the bounds on every request.
#[derive(Args, Debug, Clone)]
pub struct EgressArgs {
    /// The only origin the worker fetches from; jobs and redirects naming any other are refused.
    #[arg(long, env = "OPENLIBRARY_BASE_URL", default_value = "https://openlibrary.org",
          value_parser = crate::crawl::client::parse_origin)]
    pub openlibrary_base_url: url::Url,

    /// Sent on every request. Must name the application and a contact (an email or a URL):
    /// Open Library grants 3 req/s only to such clients and answers 403 to some others.
    #[arg(long, env = "USER_AGENT", default_value = crate::crawl::client::DEFAULT_USER_AGENT,
          value_parser = crate::crawl::client::parse_user_agent)]
    pub user_agent: String,

    /// Egress proxies, comma-separated `http://host:port` entries and/or the word `direct`;
    /// empty means direct. Each entry is one source IP with its own rate limit.
    #[arg(long, env = "PROXY_POOL", default_value = "",
          value_parser = crate::crawl::client::egress::parse_proxy_pool)]
    pub proxy_pool: crate::crawl::client::egress::ProxyPool,

    /// Requests per minute per egress. Open Library allows 180/min per IP; 150 leaves headroom
    /// for clock skew between its nginx and our limiter, so a paced pool sees no 429.
    #[arg(long, env = "EGRESS_RATE_PER_MINUTE", default_value = "150", value_parser = parse_positive_u32)]
    pub egress_rate_per_minute: u32,

    /// Requests an idle egress may send at once. Open Library's nginx passes 10 excess requests
    /// undelayed (burst 25, delay 10), so 10 never meets a delay or a 429.
    #[arg(long, env = "EGRESS_BURST", default_value = "10", value_parser = parse_positive_u32)]
    pub egress_burst: u32,

    /// `cluster`: each egress's limit is shared by every worker process through Redis, so
    /// adding workers never exceeds the per-IP budget; `local`: per process.
    #[arg(
        long,
        env = "EGRESS_LIMIT_SCOPE",
        value_enum,
        default_value = "cluster"
    )]
    pub egress_limit_scope: LimitScope,

    /// Prefix of the Redis keys holding the cluster limit's state; workers that share a
    /// prefix share the limit.
    #[arg(long, env = "EGRESS_REDIS_PREFIX", default_value = "relentless:egress")]
    pub egress_redis_prefix: String,

    /// Optional cap on all requests together, per minute, across every egress (and, with
    /// cluster scope, every process). Open Library also limits 400/min per User-Agent across
    /// IPs; set this below that when the pool is large. Off by default.
    #[arg(long, env = "USER_AGENT_RATE_PER_MINUTE", value_parser = parse_positive_u32)]
    pub user_agent_rate_per_minute: Option<u32>,

    /// Obey Open Library's robots.txt.
    #[arg(long, env = "RESPECT_ROBOTS_TXT", default_value = "true", action = clap::ArgAction::Set)]
    pub respect_robots_txt: bool,

    /// How long a fetched robots.txt is trusted before it is fetched again (RFC 9309 suggests
    /// not caching longer than 24 hours).
    #[arg(long, env = "ROBOTS_REFRESH", default_value = "24h", value_parser = parse_duration)]
    pub robots_refresh: Duration,

    /// Largest response body read; past it the fetch fails. The largest real Open Library
    /// pages (1000-entry lists) are a few MiB; a bigger answer is a fault, not data.
    #[arg(long, env = "MAX_BODY_BYTES", default_value = "8388608", value_parser = parse_positive)]
    pub max_body_bytes: usize,

    /// Bound on opening a TCP (and TLS) connection: a dead proxy shows within it and is
    /// marked down, instead of holding the request for the whole request timeout.
    #[arg(long, env = "CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Longest silence while reading an answer before the attempt counts as timed out.
    #[arg(long, env = "READ_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub read_timeout: Duration,

    /// Bound on one whole attempt (connect, send, read the body). Open Library answers in
    /// well under a second when healthy; 30 s tolerates its slow pages without letting a
    /// trickling answer hold a connection for long.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Retries of one request after a timeout, a connection error, a 5xx, or a 429 (which
    /// moves it to another egress). Each retry needs the retry budget too.
    #[arg(long, env = "FETCH_RETRIES", default_value = "3")]
    pub fetch_retries: u32,

    /// First backoff before a retry; it doubles per attempt, with full jitter.
    #[arg(long, env = "RETRY_BACKOFF_BASE", default_value = "500ms", value_parser = parse_duration)]
    pub retry_backoff_base: Duration,

    /// Largest backoff before a retry, so a job never sleeps past its JOB_TIMEOUT for nothing.
    #[arg(long, env = "RETRY_BACKOFF_MAX", default_value = "10s", value_parser = parse_duration)]
    pub retry_backoff_max: Duration,

    /// Retries may be at most this share of first attempts over the budget window (plus
    /// RETRY_BUDGET_MIN). Beyond it a retryable failure fails at once with its reason, so keys
    /// that always fail cannot take the rate budget from healthy ones.
    #[arg(long, env = "RETRY_BUDGET_RATIO", default_value = "0.2", value_parser = parse_ratio)]
    pub retry_budget_ratio: f64,

    /// Retries always allowed per budget window, so a quiet worker can still retry.
    #[arg(long, env = "RETRY_BUDGET_MIN", default_value = "10")]
    pub retry_budget_min: u32,

    /// The sliding window over which the retry budget is counted.
    #[arg(long, env = "RETRY_BUDGET_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub retry_budget_window: Duration,

    /// First block of an egress after a 429 (or a 503 with Retry-After) without Retry-After,
    /// and first wait before probing a proxy that failed to connect; doubles per repeat.
    /// nginx's bucket drains at 3 req/s, so a few seconds empties what we overfilled.
    #[arg(long, env = "EGRESS_BLOCK_BASE", default_value = "5s", value_parser = parse_duration)]
    pub egress_block_base: Duration,

    /// Longest block of an egress (Retry-After is honoured up to an hour regardless).
    #[arg(long, env = "EGRESS_BLOCK_MAX", default_value = "5m", value_parser = parse_duration)]
    pub egress_block_max: Duration,
}

/// Where the per-egress rate limit is kept.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// In Redis, shared by every worker process.
    Cluster,
    /// In this process only.
    Local,
}

/// Parses a count that must be at least one, as a `u32`.
pub fn parse_positive_u32(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("expected a whole number: {e}")),
    }
}

/// Parses a share between 0 and 1.
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        Ok(_) => Err("must be between 0 and 1".to_owned()),
        Err(e) => Err(format!("expected a number like 0.2: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        egress: EgressArgs,
    }

    /// Bad politeness settings stop the process at start-up with exit code 2, naming the flag.
    #[test]
    fn bad_egress_settings_exit_with_code_2() {
        for bad in [
            ["x", "--user-agent", "MyBot/1.0"],
            ["x", "--proxy-pool", "proxy-0:3128"],
            ["x", "--egress-rate-per-minute", "0"],
            [
                "x",
                "--openlibrary-base-url",
                "https://openlibrary.org/works",
            ],
            ["x", "--retry-budget-ratio", "1.5"],
        ] {
            let error = Cli::try_parse_from(bad).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad:?}");
            assert!(error.to_string().contains(bad[1]), "{error}");
        }
    }

    /// The defaults are the contract's: 150/min, burst 10, cluster scope, robots obeyed,
    /// and a User-Agent with a contact.
    #[test]
    fn defaults_follow_the_contract() {
        let cli = Cli::try_parse_from(["x", "--proxy-pool", ""]).unwrap();
        let e = cli.egress;
        assert_eq!(e.openlibrary_base_url.as_str(), "https://openlibrary.org/");
        assert_eq!((e.egress_rate_per_minute, e.egress_burst), (150, 10));
        assert_eq!(e.egress_limit_scope, LimitScope::Cluster);
        assert!(e.respect_robots_txt);
        assert!(e.user_agent.starts_with("RelentlessBookworm/"));
        assert_eq!(
            e.proxy_pool.0,
            vec![crate::crawl::client::egress::EgressSpec::Direct]
        );
        assert_eq!(e.user_agent_rate_per_minute, None);
    }
}

impl ConsumerArgs {
    /// The per-partition bound for a process running `concurrency` jobs in all.
    pub fn per_partition(&self, concurrency: usize) -> usize {
        self.partition_concurrency
            .unwrap_or((concurrency / 2).max(1))
    }
}

/// Everything the `worker` binary reads.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Consumer group of the workers: all replicas share the frontier's partitions.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "relentless-worker")]
    pub kafka_group_id: String,

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9101")]
    pub metrics_addr: SocketAddr,

    /// Jobs in flight per worker process. Politeness is enforced by the egress pool, not by
    /// this number: it only needs to cover the latency of the allowed request rate.
    #[arg(long, env = "CONCURRENT_JOBS", default_value = "32", value_parser = parse_positive)]
    pub concurrent_jobs: usize,

    /// Bound on fetching one job (all its requests, retries and rate-limit waits); past it
    /// the job is dead-lettered with reason `timeout`.
    #[arg(long, env = "JOB_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub job_timeout: Duration,

    /// This worker's name in DLQ records (defaults to the host name, the pod's name on
    /// Kubernetes).
    #[arg(long, env = "WORKER_NAME")]
    pub worker_name: Option<String>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub redis: RedisArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub crawl: CrawlArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub egress: EgressArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,
}

/// How the graph writer groups rows into Neo4j transactions.
#[derive(Args, Debug, Clone)]
pub struct GraphArgs {
    /// Rows per Neo4j transaction. One transaction per message managed about 69 edges/s in
    /// the Go predecessor; a few thousand rows amortise the commit (a disk flush) while a
    /// transaction stays small enough for Neo4j's memory and a quick retry.
    #[arg(long, env = "GRAPH_BATCH_SIZE", default_value = "2000", value_parser = parse_positive)]
    pub graph_batch_size: usize,

    /// How long a batch waits to fill before it is written anyway: the latency a lone message
    /// pays so that a busy stream gets full batches.
    #[arg(long, env = "GRAPH_BATCH_LINGER", default_value = "100ms", value_parser = parse_duration)]
    pub graph_batch_linger: Duration,
}

/// Everything the `graph-writer` binary reads.
#[derive(Args, Debug, Clone)]
pub struct GraphWriterArgs {
    /// Consumer group of the graph writers: all replicas share the results and edges topics.
    #[arg(
        long,
        env = "KAFKA_GROUP_ID",
        default_value = "relentless-graph-writer"
    )]
    pub kafka_group_id: String,

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9102")]
    pub metrics_addr: SocketAddr,

    /// Messages in flight. Rows wait in the batcher for their transaction, so this must
    /// exceed the batch size for batches to fill: twice `GRAPH_BATCH_SIZE` keeps one batch
    /// filling while the previous one is written.
    #[arg(long, env = "CONCURRENT_JOBS", value_parser = parse_positive)]
    pub concurrent_jobs: Option<usize>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub graph: GraphArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub neo4j: Neo4jArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,
}
