//! The settings of `bookworm serve`, the HTTP API.

use std::net::SocketAddr;

use super::egress::{EgressStateArgs, OriginArgs};
use super::{CrawlArgs, KafkaArgs, RedisArgs};
use clap::Args;

/// Where the API listens and which origin its seeds may name.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Address of the HTTP API (also serves /metrics, /healthz, /readyz).
    #[arg(long, env = "API_ADDR", default_value = "0.0.0.0:8080")]
    pub api_addr: SocketAddr,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub origin: OriginArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub egress_state: EgressStateArgs,
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
