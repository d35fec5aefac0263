//! The API's start-up: the third service, started by `bookworm serve` and, in-process, by
//! the tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::auth::{self, Auth, TokenSet, TokenStore};
use super::http::ServerLimits;
use super::{ApiError, ApiState};
use crate::config::{ApiArgs, AuthSetting, ServeArgs};
use crate::crawl::store::{CrawlStore, StoreError};
use crate::kafka::{self, KafkaSetupError};
use crate::process::boot;
use crate::process::health::{HealthState, Liveness, Readiness};
use crate::process::metrics::{ApiMetrics, MetricsError, RedisMemoryMetrics};

/// Readiness condition: true while Redis answers; without it the API can neither create nor
/// show crawls.
pub const READINESS_REDIS: &str = "redis";

/// How long a created crawl's seeds may wait for Kafka's acknowledgement: a client waits for
/// its 201, half a minute is the most it should wait.
const SEED_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the API could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A metric could not be registered (a programming error).
    #[error("metrics: {0}")]
    Metrics(#[from] MetricsError),
    /// Redis is unreachable at start-up.
    #[error("connecting to Redis at {url}: {source}")]
    Redis {
        /// The `REDIS_URL` used, its password redacted.
        url: String,
        /// Why.
        source: StoreError,
    },
    /// The Kafka producer could not be created.
    #[error("creating the Kafka producer: {0}")]
    Kafka(#[from] KafkaSetupError),
    /// The address could not be bound, or the server failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Who may call the API cannot be decided from the settings (a bad tokens file, or no
    /// tokens on a public address), or the crawl defaults exceed the ceilings: a usage
    /// error, exit 2. The message names the variable.
    #[error("{0}")]
    Auth(String),
}

/// Who may call the API: the tokens of `API_TOKENS_FILE`, or anyone on a loopback address or
/// with `API_AUTH=none`. The error names the variable to fix.
pub fn resolve_auth(args: &ApiArgs) -> Result<Auth, ServeError> {
    match (&args.api_tokens_file, args.api_auth) {
        (Some(_), AuthSetting::None) => Err(ServeError::Auth(
            "API_AUTH=none conflicts with API_TOKENS_FILE: set one or the other".to_owned(),
        )),
        (Some(path), AuthSetting::Token) => {
            let set = TokenSet::load(path).map_err(|e| ServeError::Auth(e.to_string()))?;
            Ok(Auth::Tokens {
                store: Arc::new(TokenStore::new(path.clone(), set)),
                metrics: args.api_metrics_auth,
            })
        }
        (None, AuthSetting::None) => Ok(Auth::Open),
        (None, AuthSetting::Token) if args.api_addr.ip().is_loopback() => Ok(Auth::Open),
        (None, AuthSetting::Token) => Err(ServeError::Auth(format!(
            "API_ADDR {} is not a loopback address and no API_TOKENS_FILE is set: \
             set API_TOKENS_FILE (or API_AUTH=none to serve without authentication)",
            args.api_addr
        ))),
    }
}

/// The defaults a crawl gets when it asks for nothing must be within the operator's
/// ceilings, or every such crawl would be refused: a usage error naming both variables.
pub fn check_defaults(args: &ServeArgs) -> Result<(), ServeError> {
    let quotas = &args.api.quotas;
    if args.crawl.max_depth > quotas.api_max_depth_limit {
        return Err(ServeError::Auth(format!(
            "MAX_DEPTH {} is above API_MAX_DEPTH_LIMIT {}: lower MAX_DEPTH or raise the ceiling",
            args.crawl.max_depth, quotas.api_max_depth_limit
        )));
    }
    if args.crawl.max_nodes > quotas.api_max_nodes_limit {
        return Err(ServeError::Auth(format!(
            "MAX_NODES {} is above API_MAX_NODES_LIMIT {}: lower MAX_NODES or raise the ceiling",
            args.crawl.max_nodes, quotas.api_max_nodes_limit
        )));
    }
    Ok(())
}

/// The API server's bounds on its clients.
fn limits(args: &ApiArgs) -> ServerLimits {
    ServerLimits {
        header_timeout: args.api_header_timeout,
        request_timeout: args.api_request_timeout,
        max_body_bytes: super::MAX_BODY_BYTES,
        max_connections: args.api_max_connections,
        shutdown_timeout: args.api_shutdown_timeout,
    }
}

/// A bound API with its dependencies connected, ready to serve.
pub struct Server {
    listener: TcpListener,
    state: ApiState,
    health: HealthState,
    readiness: Readiness,
    store: CrawlStore,
    auth: Auth,
    limits: ServerLimits,
    redis_memory: RedisMemoryMetrics,
}

impl Server {
    /// Connects to Redis and Kafka and binds `API_ADDR`.
    pub async fn bind(args: &ServeArgs) -> Result<Self, ServeError> {
        let auth = resolve_auth(&args.api)?;
        check_defaults(args)?;
        let registry = prometheus::Registry::new();
        let metrics = ApiMetrics::register(&registry)?;
        let redis_memory = metrics.redis_memory.clone();
        let store = CrawlStore::connect(&args.redis)
            .await
            .map_err(|source| ServeError::Redis {
                url: args.redis.redis_url.redacted(),
                source,
            })?
            // A crawl cancelled here keeps its working state as long as the workers' do.
            .with_retention(args.crawl.crawl_retention)
            .with_index_prefix(&args.api.crawl_index_prefix);
        let producer = kafka::producer(&args.kafka.brokers, SEED_PUBLISH_TIMEOUT)?;
        let readiness = Readiness::with_conditions(&[READINESS_REDIS]);
        let health = HealthState {
            registry,
            liveness: Liveness::always(),
            readiness: readiness.clone(),
        };
        let state = ApiState::new(
            store.clone(),
            producer,
            args.kafka.kafka_frontier_topic.clone(),
            args.crawl.clone(),
            args.api.origin.openlibrary_base_url.clone(),
            args.api.egress_state.egress_redis_prefix.clone(),
            metrics,
        )
        .with_quotas(&args.api.quotas);
        let listener = super::bind(args.api.api_addr).await?;
        match &auth {
            Auth::Open => tracing::warn!(
                addr = %args.api.api_addr,
                "the API serves without authentication (loopback address or API_AUTH=none)"
            ),
            Auth::Tokens { store, metrics } => {
                let tokens = store.current().len();
                if tokens == 0 {
                    tracing::warn!(
                        "API_TOKENS_FILE holds no token: every authenticated route answers 401 until one is added"
                    );
                }
                tracing::info!(tokens, metrics_need_token = metrics, "API tokens loaded");
            }
        }
        Ok(Self {
            listener,
            state,
            health,
            readiness,
            store,
            auth,
            limits: limits(&args.api),
            redis_memory,
        })
    }

    /// The address the API listens on (the port chosen when `API_ADDR` asks for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled; readiness follows Redis meanwhile.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServeError> {
        let store = self.store;
        store.watch_memory(self.redis_memory, shutdown.clone());
        boot::follow_readiness(
            self.readiness,
            READINESS_REDIS,
            move || {
                let store = store.clone();
                async move { store.ping().await.is_ok() }
            },
            shutdown.clone(),
        );
        if let Auth::Tokens { store, .. } = &self.auth {
            store
                .clone()
                .follow(auth::RELOAD_INTERVAL, shutdown.clone());
        }
        let app = super::router(self.state, self.health, self.auth);
        super::serve(self.listener, app, self.limits, shutdown).await?;
        Ok(())
    }
}

/// Runs `bookworm serve` until `shutdown` is cancelled.
pub async fn run(args: ServeArgs, shutdown: CancellationToken) -> Result<(), ServeError> {
    let server = Server::bind(&args).await?;
    if let Ok(addr) = server.local_addr() {
        tracing::info!(%addr, "API listening");
    }
    server.run(shutdown).await
}
