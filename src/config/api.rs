//! The settings of `bookworm serve`, the HTTP API.
//!
//! Who may call the API is decided while the command line is parsed, so a bad tokens file or
//! an open API on a public address is a usage error like any bad flag (clap's exit code 2),
//! before anything connects.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::egress::{EgressStateArgs, OriginArgs};
use super::parse::{parse_duration, parse_positive};
use super::{CrawlArgs, KafkaArgs, RedisArgs};
use crate::api::auth::{Auth, TokenSet, TokenStore};
use crate::api::http::ServerLimits;
use clap::{ArgMatches, Args, Command, FromArgMatches, ValueEnum};

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

impl ApiArgs {
    /// The API server's bounds on its clients.
    pub fn limits(&self) -> ServerLimits {
        ServerLimits {
            header_timeout: self.api_header_timeout,
            request_timeout: self.api_request_timeout,
            max_body_bytes: crate::api::MAX_BODY_BYTES,
            max_connections: self.api_max_connections,
            shutdown_timeout: self.api_shutdown_timeout,
        }
    }

    /// Who may call the API: the tokens of `API_TOKENS_FILE`, or nobody's business on a
    /// loopback address or with `API_AUTH=none`. The message of the error names the variable
    /// to fix.
    pub fn resolve_auth(&self) -> Result<Auth, String> {
        match (&self.api_tokens_file, self.api_auth) {
            (Some(_), AuthSetting::None) => {
                Err("API_AUTH=none conflicts with API_TOKENS_FILE: set one or the other".to_owned())
            }
            (Some(path), AuthSetting::Token) => {
                let set = TokenSet::load(path).map_err(|e| e.to_string())?;
                Ok(Auth::Tokens {
                    store: Arc::new(TokenStore::new(path.clone(), set)),
                    metrics: self.api_metrics_auth,
                })
            }
            (None, AuthSetting::None) => Ok(Auth::Open),
            (None, AuthSetting::Token) if self.api_addr.ip().is_loopback() => Ok(Auth::Open),
            (None, AuthSetting::Token) => Err(format!(
                "API_ADDR {} is not a loopback address and no API_TOKENS_FILE is set: \
                 set API_TOKENS_FILE (or API_AUTH=none to serve without authentication)",
                self.api_addr
            )),
        }
    }
}

/// The flags of `bookworm serve`, as clap derives them.
#[derive(Args, Debug, Clone)]
struct ServeFlags {
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    crawl: CrawlArgs,
}

/// Everything `bookworm serve` reads, with who may call it resolved from the flags.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    /// The API's own settings.
    pub api: ApiArgs,
    /// Kafka (the frontier the seeds go to).
    pub kafka: KafkaArgs,
    /// Redis (crawl status).
    pub redis: RedisArgs,
    /// The crawl defaults.
    pub crawl: CrawlArgs,
    /// Who may call the API, read from `API_TOKENS_FILE` at parse time.
    pub auth: Auth,
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let flags = ServeFlags::from_arg_matches(matches)?;
        let auth = flags.api.resolve_auth().map_err(|message| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, message)
        })?;
        Ok(Self {
            api: flags.api,
            kafka: flags.kafka,
            redis: flags.redis,
            crawl: flags.crawl,
            auth,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for ServeArgs {
    fn augment_args(command: Command) -> Command {
        ServeFlags::augment_args(command)
    }

    fn augment_args_for_update(command: Command) -> Command {
        ServeFlags::augment_args_for_update(command)
    }
}
