//! The settings of `bookworm serve`, the HTTP API.

use std::net::SocketAddr;

use clap::Args;
use url::Url;

use super::parse::parse_origin;
use super::{CrawlArgs, KafkaArgs, RedisArgs};

/// Where the API listens and which origin its seeds may name.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Address of the HTTP API (also serves /metrics, /healthz, /readyz).
    #[arg(long, env = "API_ADDR", default_value = "0.0.0.0:8080")]
    pub api_addr: SocketAddr,

    /// The Open Library origin seeds may name in URLs: the worker's, so parsed the same way.
    #[arg(
        long,
        env = "OPENLIBRARY_BASE_URL",
        default_value = "https://openlibrary.org",
        value_parser = parse_origin
    )]
    pub openlibrary_base_url: Url,
}

/// Everything `bookworm serve` reads.
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
