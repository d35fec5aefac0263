//! The settings of `bookworm serve`, the HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::egress::{EgressStateArgs, OriginArgs};
use super::parse::{parse_duration, parse_positive};
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

    #[command(flatten)]
    #[allow(missing_docs)]
    pub origin: OriginArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub egress_state: EgressStateArgs,
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
