//! Every setting, as a `clap` flag with an environment variable of the same name.
//!
//! The settings shared by several binaries (Kafka, Redis, Neo4j, logging, crawl limits) are
//! defined here once and flattened into each binary's command line, so a name and its default
//! can never drift between the worker, the graph writer and the operator tool. Parsing happens
//! in clap's value parsers: an invalid value stops the process at start-up with clap's usage
//! error (exit code 2) naming the variable, never a silent fallback to a default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

mod api;
mod egress;
pub mod follow;
pub mod import;
pub mod ops;
mod parse;
mod tls;

pub use api::{ApiArgs, AuthSetting, QuotaArgs, ServeArgs};
pub use egress::{
    DEFAULT_USER_AGENT, EgressArgs, EgressSpec, EgressStateArgs, LimitScope,
    MAX_OPENLIBRARY_EGRESSES, OriginArgs, ProxyPool, is_openlibrary, parse_proxy_pool,
};
pub use parse::{
    parse_duration, parse_origin, parse_positive, parse_positive_u32, parse_ratio, parse_user_agent,
};
pub use tls::{KafkaSecurityArgs, SaslMechanism, SecurityProtocol, parse_ca_file};

/// Where the Kafka cluster is: every binary and tool that talks to Kafka flattens this one
/// declaration.
#[derive(Args, Debug, Clone)]
pub struct BrokerArgs {
    /// Bootstrap servers, comma-separated.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub security: KafkaSecurityArgs,
}

/// A plaintext cluster at these bootstrap servers: for tests and benchmarks that build their
/// settings without a command line.
impl From<&str> for BrokerArgs {
    fn from(brokers: &str) -> Self {
        Self {
            kafka_brokers: brokers.to_owned(),
            security: KafkaSecurityArgs::default(),
        }
    }
}

impl From<String> for BrokerArgs {
    fn from(brokers: String) -> Self {
        Self::from(brokers.as_str())
    }
}

/// Kafka connection and topic names, shared by every binary.
#[derive(Args, Debug, Clone)]
pub struct KafkaArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub brokers: BrokerArgs,

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

/// `scheme://user:password@host/…` → `scheme://***@host/…`: the form of a URL that may be
/// printed. Everything up to the last `@` of the URL is hidden, so a password with an
/// unencoded `/` or `@` (not a valid URL, but what an operator may type) is hidden too.
pub fn redact_url(raw: &str) -> String {
    let Some(start) = raw.find("://").map(|i| i + 3) else {
        return match raw.rfind('@') {
            Some(at) => format!("***{}", &raw[at..]),
            None => raw.to_owned(),
        };
    };
    match raw[start..].rfind('@') {
        Some(at) => format!("{}***{}", &raw[..start], &raw[start + at..]),
        None => raw.to_owned(),
    }
}

/// A URL that may carry a password (`redis://:password@host`): `Display` and `Debug` show
/// it redacted ([`redact_url`]), so it cannot reach a log line or an error message by
/// accident; code that connects reads it through `Deref<Target = str>` or [`Self::as_str`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL itself, password included: only for the client that connects with it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL with its userinfo replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl std::ops::Deref for SecretUrl {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// Redis, which holds per-crawl dedupe state, status counters and the cluster rate limit.
#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
    /// Redis connection URL (`redis://:password@host:port/db`); its value is not shown by
    /// --help, and its password never in logs or errors.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: SecretUrl,

    /// PEM file of the CA that signed Redis's certificate, for a `rediss://` URL (default:
    /// the system's roots).
    #[arg(long, env = "REDIS_CA_FILE", value_parser = parse_ca_file)]
    pub redis_ca_file: Option<PathBuf>,
}

/// Neo4j, the graph store.
#[derive(Args, Clone)]
pub struct Neo4jArgs {
    /// Bolt URI of the graph store (`bolt+s://` or `neo4j+s://` for TLS); its value is not shown by --help (a URI may carry
    /// userinfo), and it is redacted in `Debug`.
    #[arg(
        long,
        env = "NEO4J_URI",
        default_value = "bolt://127.0.0.1:7687",
        hide_env_values = true
    )]
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

    /// PEM file of the CA that signed Neo4j's certificate, for a `bolt+s://` or
    /// `neo4j+s://` URI (trusted in addition to the system's roots).
    #[arg(long, env = "NEO4J_CA_FILE", value_parser = parse_ca_file)]
    pub neo4j_ca_file: Option<PathBuf>,
}

/// Hand-written so the password (and any userinfo of the URI) can never reach a log line
/// through `{:?}`.
impl std::fmt::Debug for Neo4jArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Neo4jArgs")
            .field("neo4j_uri", &redact_url(&self.neo4j_uri))
            .field("neo4j_user", &self.neo4j_user)
            .field("neo4j_password", &"<redacted>")
            .field("neo4j_max_connections", &self.neo4j_max_connections)
            .field("neo4j_query_timeout", &self.neo4j_query_timeout)
            .field("neo4j_ca_file", &self.neo4j_ca_file)
            .finish()
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn userinfo_is_redacted_and_nothing_else() {
        for (raw, shown) in [
            (
                "redis://:s3cret@127.0.0.1:6379/0",
                "redis://***@127.0.0.1:6379/0",
            ),
            ("redis://user:s3cret@host", "redis://***@host"),
            ("rediss://u:p%40ss@host:6380", "rediss://***@host:6380"),
            ("redis://:pa/ss@host", "redis://***@host"),
            ("bolt://127.0.0.1:7687", "bolt://127.0.0.1:7687"),
            (":s3cret@host", "***@host"),
        ] {
            assert_eq!(redact_url(raw), shown, "{raw}");
        }
        let url = SecretUrl::from("redis://:s3cret@h:1");
        assert!(!format!("{url} {url:?}").contains("s3cret"));
        assert_eq!(&*url, "redis://:s3cret@h:1");
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

/// The contract's crawl limits, written once: the flags' defaults below and
/// `CrawlLimits::default` (the simulator's truth) both read them.
pub mod defaults {
    /// `MAX_DEPTH`.
    pub const MAX_DEPTH: u32 = 3;
    /// `MAX_NODES`.
    pub const MAX_NODES: usize = 100_000;
    /// `MAX_SEARCH_RESULTS`.
    pub const MAX_SEARCH_RESULTS: usize = 20;
    /// `MAX_SUBJECTS_PER_NODE`.
    pub const MAX_SUBJECTS_PER_NODE: usize = 10;
    /// `MAX_WORKS_PER_AUTHOR`.
    pub const MAX_WORKS_PER_AUTHOR: usize = 50;
    /// `MAX_WORKS_PER_SUBJECT`.
    pub const MAX_WORKS_PER_SUBJECT: usize = 50;
    /// `CRAWL_EDITIONS`.
    pub const CRAWL_EDITIONS: bool = false;
    /// `MAX_EDITIONS_PER_WORK`.
    pub const MAX_EDITIONS_PER_WORK: usize = 20;
}

/// Limits of a crawl. The API stamps them on every crawl it creates; a crawl may set its own
/// depth and node budget, the per-node fan-out limits are the worker's.
#[derive(Args, Debug, Clone)]
pub struct CrawlArgs {
    /// Default crawl depth (a crawl may set its own).
    #[arg(long, env = "MAX_DEPTH", default_value_t = defaults::MAX_DEPTH)]
    pub max_depth: u32,

    /// Default per-crawl budget of fetched nodes.
    #[arg(long, env = "MAX_NODES", default_value_t = defaults::MAX_NODES, value_parser = parse_positive)]
    pub max_nodes: usize,

    /// Works enqueued from a free-text seed's search.
    #[arg(long, env = "MAX_SEARCH_RESULTS", default_value_t = defaults::MAX_SEARCH_RESULTS)]
    pub max_search_results: usize,

    /// Subjects followed from one work or edition.
    #[arg(long, env = "MAX_SUBJECTS_PER_NODE", default_value_t = defaults::MAX_SUBJECTS_PER_NODE)]
    pub max_subjects_per_node: usize,

    /// Works followed from one author.
    #[arg(long, env = "MAX_WORKS_PER_AUTHOR", default_value_t = defaults::MAX_WORKS_PER_AUTHOR)]
    pub max_works_per_author: usize,

    /// Works followed from one subject.
    #[arg(long, env = "MAX_WORKS_PER_SUBJECT", default_value_t = defaults::MAX_WORKS_PER_SUBJECT)]
    pub max_works_per_subject: usize,

    /// Whether works expand to their editions.
    #[arg(long, env = "CRAWL_EDITIONS", default_value_t = defaults::CRAWL_EDITIONS, action = clap::ArgAction::Set)]
    pub crawl_editions: bool,

    /// Editions followed from one work when `CRAWL_EDITIONS` is on.
    #[arg(long, env = "MAX_EDITIONS_PER_WORK", default_value_t = defaults::MAX_EDITIONS_PER_WORK)]
    pub max_editions_per_work: usize,

    /// How long a done or cancelled crawl's working state (claims, per-key hashes and
    /// sets) is kept in Redis; its summary (state, seeds, times, counters) stays. Without it
    /// Redis grows with every crawl ever run until it refuses writes.
    #[arg(long, env = "CRAWL_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub crawl_retention: Duration,
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

    /// Transactions one graph writer has in flight. A transaction mostly waits on Neo4j, so
    /// one at a time leaves Neo4j's cores idle; a few keep it busy, and more than its cores
    /// only add lock waits. Each takes a connection of `NEO4J_MAX_CONNECTIONS`.
    #[arg(long, env = "GRAPH_TRANSACTIONS", default_value = "4", value_parser = parse_positive)]
    pub graph_transactions: usize,
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
    /// exceed the batch size for batches to fill: `GRAPH_BATCH_SIZE` × (`GRAPH_TRANSACTIONS`
    /// + 1) keeps one batch filling while the others are written.
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
