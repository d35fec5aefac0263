//! The settings of `bookworm serve`, the HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::egress::{EgressStateArgs, OriginArgs};
use super::parse::{parse_duration, parse_positive, parse_positive_u32};
use super::{CrawlArgs, KafkaArgs, RedisArgs};
use clap::{Args, ValueEnum};

/// Whether the API may run without tokens on a non-loopback address.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSetting {
    /// Tokens are required, except on a loopback address when no `API_TOKENS_FILE` is set.
    Token,
    /// No authentication at all, on any address: only behind something that authenticates.
    None,
}

/// Where the API listens, who may call it, and how long clients may take.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Address of the HTTP API (also serves /metrics, /healthz, /readyz).
    #[arg(long, env = "API_ADDR", default_value = "0.0.0.0:8080")]
    pub api_addr: SocketAddr,

    /// File of bearer tokens, one a line: `<token> <role>` with role `read` (GET routes) or
    /// `write` (everything); `#` comments. Re-read when it changes and on SIGHUP. Without it
    /// the API serves only a loopback address (unless API_AUTH=none).
    #[arg(long, env = "API_TOKENS_FILE")]
    pub api_tokens_file: Option<PathBuf>,

    /// `token` (default), or `none` to serve without authentication on any address.
    #[arg(long, env = "API_AUTH", value_enum, default_value = "token")]
    pub api_auth: AuthSetting,

    /// Whether /metrics needs a read token too (it stays open by default, for Prometheus).
    #[arg(long, env = "API_METRICS_AUTH", default_value_t = false, action = clap::ArgAction::Set)]
    pub api_metrics_auth: bool,

    /// Time a client has to send a request's headers, and the most a kept-alive connection
    /// may sit idle: a client that sends half a request is closed after it.
    #[arg(long, env = "API_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub api_header_timeout: Duration,

    /// Time from a request's headers to its response (408 past it). Above the 30 s a crawl's
    /// seeds may wait for Kafka.
    #[arg(long, env = "API_REQUEST_TIMEOUT", default_value = "45s", value_parser = parse_duration)]
    pub api_request_timeout: Duration,

    /// Connections served at once; more wait in the listen backlog.
    #[arg(long, env = "API_MAX_CONNECTIONS", default_value = "1024", value_parser = parse_positive)]
    pub api_max_connections: usize,

    /// On SIGTERM, how long open requests may finish before their connections are dropped.
    /// Keep it under the pod's termination grace period.
    #[arg(long, env = "API_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub api_shutdown_timeout: Duration,

    /// Redis key of the crawl index (`GET /crawls`, the running-crawls count) and the
    /// per-caller rate windows: API replicas that share it share their lists and quotas.
    #[arg(long, env = "CRAWL_INDEX_PREFIX", default_value = "bookworm:crawls")]
    pub crawl_index_prefix: String,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub quotas: QuotaArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub origin: OriginArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub egress_state: EgressStateArgs,
}

/// The operator's ceilings on crawls; a request beyond one is refused with a 4xx whose
/// `limit` names the variable.
#[derive(Args, Debug, Clone)]
pub struct QuotaArgs {
    /// The deepest `max_depth` a crawl may ask for (at most 10, the API's own bound). 422
    /// beyond it.
    #[arg(long, env = "API_MAX_DEPTH_LIMIT", default_value = "10", value_parser = parse_depth_ceiling)]
    pub api_max_depth_limit: u32,

    /// The largest `max_nodes` a crawl may ask for (at most 10000000). 422 beyond it.
    #[arg(long, env = "API_MAX_NODES_LIMIT", default_value = "10000000", value_parser = parse_nodes_ceiling)]
    pub api_max_nodes_limit: usize,

    /// Crawls with work ahead (running, paused or blocked) at once; a creation beyond it is
    /// refused with 429. Unset: no ceiling.
    #[arg(long, env = "API_MAX_RUNNING_CRAWLS", value_parser = parse_positive)]
    pub api_max_running_crawls: Option<usize>,

    /// Crawls one caller (its token, or its client IP without tokens) may create over any
    /// 60 s, shared by every API replica through Redis; 429 with Retry-After beyond it.
    /// Unset: no ceiling.
    #[arg(long, env = "API_CRAWLS_PER_MINUTE", value_parser = parse_positive_u32)]
    pub api_crawls_per_minute: Option<u32>,
}

/// A depth ceiling: 0 to 10.
fn parse_depth_ceiling(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|d| *d <= 10)
        .ok_or_else(|| format!("{text:?} is not a depth from 0 to 10"))
}

/// A node-budget ceiling: 1 to 10000000.
fn parse_nodes_ceiling(text: &str) -> Result<usize, String> {
    let nodes = parse_positive(text)?;
    if nodes > 10_000_000 {
        return Err(format!("{text:?} is above 10000000"));
    }
    Ok(nodes)
}

/// Everything `bookworm serve` reads. Who may call the API is resolved from these at
/// start-up, before anything connects (`api::service`); a refusal exits 2 like a bad flag.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub api: ApiArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub redis: RedisArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub crawl: CrawlArgs,
}
