//! The settings of the operator commands of `bookworm` (everything but `serve`, `sim` and
//! `bench`, which own theirs).

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use url::Url;

use super::egress::EgressStateArgs;
use super::parse::{parse_duration, parse_positive};
use super::{KafkaArgs, Neo4jArgs, RedisArgs};

/// `bookworm summary`.
#[derive(Args, Debug, Clone)]
pub struct SummaryArgs {
    /// The crawl's id.
    pub crawl_id: String,
    /// Wait up to this long for the graph writers to catch up with the crawl.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub wait: Duration,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub redis: RedisArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub neo4j: Neo4jArgs,
}

/// `bookworm unblock`.
#[derive(Args, Debug, Clone)]
pub struct UnblockArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub redis: RedisArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub egress_state: EgressStateArgs,
}

/// `bookworm topics`.
#[derive(Subcommand, Debug, Clone)]
pub enum TopicsCommand {
    /// Create every topic the system uses; existing topics are left as they are.
    Create(CreateTopicsArgs),
}

/// `bookworm topics create`.
#[derive(Args, Debug, Clone)]
pub struct CreateTopicsArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    /// Partitions per topic: the most consumers of one group that can share the work.
    #[arg(long, env = "TOPIC_PARTITIONS", default_value = "12")]
    pub partitions: i32,
    /// Copies of each partition (3 in production).
    #[arg(long, env = "TOPIC_REPLICATION", default_value = "1")]
    pub replication: i32,
}

/// `bookworm migrate`.
#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub neo4j: Neo4jArgs,
}

/// Where the HTTP API is, and the token to call it with, for the commands that are its
/// clients.
#[derive(Args, Clone)]
pub struct ApiUrl {
    /// Base URL of `bookworm serve`.
    #[arg(
        long = "api",
        env = "BOOKWORM_API",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: Url,

    /// Bearer token for the API (a token of its API_TOKENS_FILE): `write` for seed, `read`
    /// is enough for status. Prefer the environment: a flag's value shows in process lists.
    #[arg(long = "api-token", env = "API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Hand-written so the token never reaches a log line through `{:?}`.
impl std::fmt::Debug for ApiUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiUrl")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `bookworm seed`.
#[derive(Args, Debug, Clone)]
pub struct SeedArgs {
    /// Open Library keys or URLs of works, authors or editions, or free text.
    #[arg(required = true)]
    pub seeds: Vec<String>,
    /// Crawl depth (default: the API's MAX_DEPTH).
    #[arg(long)]
    pub max_depth: Option<u32>,
    /// Budget of fetched nodes (default: the API's MAX_NODES).
    #[arg(long, value_parser = parse_positive)]
    pub max_nodes: Option<usize>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub api: ApiUrl,
}

/// `bookworm status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The crawl id `bookworm seed` printed.
    pub crawl_id: String,
    /// Follow the crawl: live on a terminal, one line every 5 s otherwise.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub api: ApiUrl,
}

/// `bookworm dlq`.
#[derive(Subcommand, Debug, Clone)]
pub enum DlqCommand {
    /// Print the DLQ's failures, one a line: crawl, key, reason, attempts, detail.
    List(DlqListArgs),
    /// Put the matching dead-lettered jobs back on the frontier; a record is replayed once,
    /// however often this runs.
    Replay(DlqReplayArgs),
}

/// Which DLQ records a command takes.
#[derive(Args, Debug, Clone)]
pub struct DlqSelect {
    /// Only failures with this reason (http_4xx, http_5xx, timeout, rate_limited, parse,
    /// robots, invalid_job, publish); checked against the message contract's list.
    #[arg(long)]
    pub reason: Option<String>,
    /// Only failures of this crawl.
    #[arg(long = "crawl")]
    pub crawl_id: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
}

/// `bookworm dlq list`.
#[derive(Args, Debug, Clone)]
pub struct DlqListArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub select: DlqSelect,
    /// Print at most this many.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// `bookworm dlq replay`.
#[derive(Args, Debug, Clone)]
pub struct DlqReplayArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub select: DlqSelect,
    /// Replay the graph DLQ (KAFKA_GRAPH_DLQ_TOPIC) instead: each row goes back onto the
    /// results or edges topic it came from, once per record. `--reason` then takes the graph
    /// writer's reasons (neo4j_rejected, timeout, panic, parse, …).
    #[arg(long)]
    pub graph: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub redis: RedisArgs,
}

/// `bookworm graph`.
#[derive(Args, Debug, Clone)]
pub struct NeighbourhoodArgs {
    /// The node's Open Library key (`/works/OL…W`, `/authors/OL…A`, `/subjects/…`).
    pub key: String,
    /// Hops from the node, in either direction.
    #[arg(long, default_value = "1")]
    pub depth: u32,
    /// Output format.
    #[arg(long, value_enum, default_value = "dot")]
    pub format: GraphFormat,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub neo4j: Neo4jArgs,
}

/// How `bookworm graph` prints a neighbourhood.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum GraphFormat {
    /// Graphviz (`| dot -Tsvg > graph.svg`).
    Dot,
    /// `{nodes: [...], relationships: [...]}`.
    Json,
}

/// `bookworm crawls`: the crawl lifecycle, through the API.
#[derive(Subcommand, Debug, Clone)]
pub enum CrawlsCommand {
    /// List crawls, newest first, one a line (`GET /crawls`).
    List(CrawlsListArgs),
    /// Pause a crawl: workers hold its jobs without fetching them until it is resumed.
    Pause(CrawlIdArgs),
    /// Resume a paused crawl where it stopped (safe to repeat).
    Resume(CrawlIdArgs),
    /// Delete a done or cancelled crawl's state at once, summary included; a running or
    /// paused crawl is refused unless --force, which cancels it first.
    Delete(CrawlsDeleteArgs),
}

/// A crawl state to filter a listing by.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    /// Jobs are pending.
    Running,
    /// Paused by an operator.
    Paused,
    /// Running, but Open Library refuses our User-Agent.
    Blocked,
    /// Finished.
    Done,
    /// Cancelled.
    Cancelled,
}

/// `bookworm crawls list`.
#[derive(Args, Debug, Clone)]
pub struct CrawlsListArgs {
    /// Only crawls in this state.
    #[arg(long, value_enum)]
    pub state: Option<StateFilter>,
    /// Crawls per page (the API's default is 50, at most 500).
    #[arg(long, value_parser = parse_positive)]
    pub limit: Option<usize>,
    /// Start after this cursor (the `more: --after …` line of the previous page).
    #[arg(long)]
    pub after: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub api: ApiUrl,
}

/// `bookworm crawls pause|resume`.
#[derive(Args, Debug, Clone)]
pub struct CrawlIdArgs {
    /// The crawl's id.
    pub crawl_id: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub api: ApiUrl,
}

/// `bookworm crawls delete`.
#[derive(Args, Debug, Clone)]
pub struct CrawlsDeleteArgs {
    /// The crawl's id.
    pub crawl_id: String,
    /// Cancel a running or paused crawl first, then delete it.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub api: ApiUrl,
}
