//! The HTTP API of `bookworm serve`: create, watch and cancel crawls.
//!
//! A crawl is created in an order that never leaves a status without its seeds enqueued:
//! the status (with its seeds claimed and pending) is written to Redis first, then the seed
//! jobs are published with `acks=all`; if publishing fails, the status is removed again and
//! the client gets a 503 to retry. Every bad request answers 4xx with a JSON error, and
//! nothing is enqueued unless every seed is valid.
//!
//! Every request gets an id (`x-request-id` on the answer). A 5xx answer says only what
//! failed in a few words, with that id; the cause (a Redis or Kafka error text, which can
//! name hosts and internals) goes to the log with the same id, never to the client.

pub mod auth;
pub mod http;
mod lifecycle;
pub mod openapi;
mod quota;
mod seeds;
pub mod service;

pub use seeds::seed_key;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use url::Url;

use tower_http::catch_panic::CatchPanicLayer;

use crate::api::auth::Auth;
use crate::api::http::ServerLimits;
use crate::config::CrawlArgs;
use crate::config::QuotaArgs;
use crate::crawl::client::block;
use crate::crawl::store::{CrawlSpec, CrawlState, CrawlStore, StoreError};
use crate::message::{CrawlJob, VERSION};
use crate::process::health::{self, HealthState};
use crate::process::metrics::ApiMetrics;

/// The most seeds one crawl may start from.
pub const MAX_SEEDS: usize = 100;
/// The deepest crawl the API accepts: at Open Library's fan-out, depth 6 already reaches
/// most of the catalogue (an operator may set a lower ceiling, `API_MAX_DEPTH_LIMIT`).
pub const MAX_DEPTH_LIMIT: u32 = 10;
/// The largest node budget the API accepts (an operator may set a lower ceiling,
/// `API_MAX_NODES_LIMIT`).
pub const MAX_NODES_LIMIT: usize = 10_000_000;
/// Request bodies above this are refused before parsing (a hundred seeds fit easily).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// What a client reads when Redis fails; the error itself goes to the log.
const STORE_UNAVAILABLE: &str = "crawl store unavailable";

/// Errors from starting or running the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("API server failed: {0}")]
    Serve(std::io::Error),
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    store: CrawlStore,
    producer: FutureProducer,
    frontier_topic: String,
    defaults: CrawlArgs,
    origin: Url,
    egress_prefix: String,
    metrics: ApiMetrics,
    publish_timeout: Duration,
    quotas: quota::Quotas,
}

impl ApiState {
    /// Builds the state from its parts; `egress_prefix` is the workers' `EGRESS_REDIS_PREFIX`,
    /// under which a User-Agent block shows as the running crawls' state.
    pub fn new(
        store: CrawlStore,
        producer: FutureProducer,
        frontier_topic: String,
        defaults: CrawlArgs,
        origin: Url,
        egress_prefix: String,
        metrics: ApiMetrics,
    ) -> Self {
        Self {
            store,
            producer,
            frontier_topic,
            defaults,
            origin,
            egress_prefix,
            metrics,
            // A client waits for its 201; half a minute is the most it should wait for Kafka.
            publish_timeout: Duration::from_secs(30),
            quotas: quota::Quotas::default(),
        }
    }

    /// The same state with the operator's ceilings on crawls (`API_MAX_*`,
    /// `API_CRAWLS_PER_MINUTE`) instead of none beyond the API's own.
    pub fn with_quotas(mut self, quotas: &QuotaArgs) -> Self {
        self.quotas = quota::Quotas::from_args(quotas);
        self
    }
}

tokio::task_local! {
    /// The id of the request being answered, for the error that answers it.
    static REQUEST_ID: String;
}

/// The header that carries a request's id on every answer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A request error, answered as `{"error": …, "request_id": …}` (plus the bad seed when
/// there is one). `cause` is for the log only.
#[derive(Debug)]
struct Problem {
    status: StatusCode,
    message: String,
    seed: Option<String>,
    cause: Option<String>,
    /// The operator's ceiling that refused the request (`API_MAX_RUNNING_CRAWLS`…), as the
    /// body's `limit`.
    limit: Option<&'static str>,
    /// Seconds until a rate-limited client may try again (`Retry-After`).
    retry_after: Option<u64>,
}

impl Problem {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            seed: None,
            cause: None,
            limit: None,
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A ceiling of the operator's refused the request: the body names it in `limit`.
    fn over_limit(status: StatusCode, limit: &'static str, message: impl Into<String>) -> Self {
        Self {
            limit: Some(limit),
            ..Self::new(status, message)
        }
    }

    fn bad_seed(seed: &Value, message: impl Into<String>) -> Self {
        Self {
            seed: Some(match seed {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            ..Self::bad_request(message)
        }
    }

    fn not_found(crawl_id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("no crawl with id {crawl_id}"),
        )
    }

    /// A dependency failed: the client reads `message` (a few words, no internals), the log
    /// reads `cause`.
    fn unavailable(message: &str, cause: impl std::fmt::Display) -> Self {
        Self {
            cause: Some(cause.to_string()),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let request_id = REQUEST_ID.try_with(Clone::clone).ok();
        if self.status.is_server_error() {
            tracing::error!(
                request_id = request_id.as_deref().unwrap_or("-"),
                status = self.status.as_u16(),
                error = %self.message,
                cause = self.cause.as_deref().unwrap_or("-"),
                "request failed"
            );
        }
        let mut body = json!({ "error": self.message });
        if let Some(seed) = self.seed {
            body["seed"] = Value::String(seed);
        }
        if let Some(limit) = self.limit {
            body["limit"] = Value::String(limit.to_owned());
        }
        if let Some(id) = request_id {
            body["request_id"] = Value::String(id);
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// The JSON body of `POST /crawls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCrawl {
    seeds: Vec<Value>,
    #[serde(default)]
    max_depth: Option<Value>,
    #[serde(default)]
    max_nodes: Option<Value>,
}

fn validate(body: &[u8], state: &ApiState) -> Result<CrawlSpec, Problem> {
    let request: CreateCrawl = serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("invalid JSON body: {e}")))?;
    if request.seeds.is_empty() {
        return Err(Problem::bad_request("seeds must not be empty"));
    }
    if request.seeds.len() > MAX_SEEDS {
        return Err(Problem::bad_request(format!(
            "at most {MAX_SEEDS} seeds per crawl"
        )));
    }
    let mut keys = Vec::with_capacity(request.seeds.len());
    for seed in &request.seeds {
        let text = seed
            .as_str()
            .ok_or_else(|| Problem::bad_seed(seed, "a seed must be a string"))?;
        let key = seed_key(text, &state.origin).map_err(|why| Problem::bad_seed(seed, why))?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let max_depth = match request.max_depth {
        None | Some(Value::Null) => state.defaults.max_depth,
        Some(value) => value
            .as_u64()
            .filter(|d| *d <= u64::from(MAX_DEPTH_LIMIT))
            .ok_or_else(|| {
                Problem::bad_request(format!(
                    "max_depth must be an integer from 0 to {MAX_DEPTH_LIMIT}"
                ))
            })? as u32,
    };
    let max_nodes = match request.max_nodes {
        None | Some(Value::Null) => state.defaults.max_nodes,
        Some(value) => value
            .as_u64()
            .filter(|n| (1..=MAX_NODES_LIMIT as u64).contains(n))
            .ok_or_else(|| {
                Problem::bad_request(format!(
                    "max_nodes must be an integer from 1 to {MAX_NODES_LIMIT}"
                ))
            })? as usize,
    };
    state.quotas.check_limits(max_depth, max_nodes)?;
    Ok(CrawlSpec {
        crawl_id: uuid::Uuid::now_v7().to_string(),
        seeds: keys,
        max_depth,
        max_nodes,
    })
}

async fn create_crawl(
    State(state): State<Arc<ApiState>>,
    caller: quota::Caller,
    body: Bytes,
) -> Result<Response, Problem> {
    let spec = validate(&body, &state)?;
    let admission = quota::admit(&state, &caller, &spec.crawl_id).await?;
    if let Err(e) = state.store.create(&spec).await {
        admission.refund(&state).await;
        return Err(match e {
            StoreError::NearlyFull(_) => Problem::unavailable(
                "redis is nearly full: no new crawl until finished crawls expire or are deleted",
                e,
            ),
            e => Problem::unavailable(STORE_UNAVAILABLE, e),
        });
    }
    if let Err(e) = enqueue_seeds(&state, &spec).await {
        admission.refund(&state).await;
        // Never leave a status whose seeds are not in the frontier.
        if let Err(forget) = state.store.forget(&spec.crawl_id).await {
            tracing::error!(crawl_id = %spec.crawl_id, error = %forget, "could not remove the status of a crawl whose seeds failed to enqueue");
        }
        return Err(Problem::unavailable(
            "could not enqueue the seeds; nothing was enqueued",
            e,
        ));
    }
    state.metrics.crawls_created.inc();
    tracing::info!(crawl_id = %spec.crawl_id, seeds = spec.seeds.len(), max_depth = spec.max_depth, "crawl created");
    let status = state
        .store
        .status(&spec.crawl_id)
        .await
        .map_err(|e| Problem::unavailable(STORE_UNAVAILABLE, e))?
        .ok_or_else(|| {
            Problem::unavailable(
                STORE_UNAVAILABLE,
                "the status vanished right after its creation",
            )
        })?;
    Ok((StatusCode::CREATED, axum::Json(status)).into_response())
}

async fn enqueue_seeds(state: &ApiState, spec: &CrawlSpec) -> Result<(), String> {
    let now = Utc::now();
    let jobs = spec.seeds.iter().map(|seed| CrawlJob {
        v: VERSION,
        crawl_id: spec.crawl_id.clone(),
        key: seed.clone(),
        depth: 0,
        seed: seed.clone(),
        parent: None,
        enqueued_at: now,
        min_revision: None,
    });
    publish_jobs(state, jobs).await
}

/// Publishes `jobs` to the frontier and waits for every acknowledgement (`acks=all`).
async fn publish_jobs(
    state: &ApiState,
    jobs: impl IntoIterator<Item = CrawlJob>,
) -> Result<(), String> {
    let sends = jobs.into_iter().map(|job| {
        let producer = state.producer.clone();
        let topic = state.frontier_topic.clone();
        let timeout = state.publish_timeout;
        async move {
            let payload = serde_json::to_vec(&job).map_err(|e| e.to_string())?;
            producer
                .send(
                    FutureRecord::to(&topic).key(&job.key).payload(&payload),
                    timeout,
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e.to_string())
        }
    });
    futures::future::try_join_all(sends).await.map(|_| ())
}

async fn get_crawl(
    State(state): State<Arc<ApiState>>,
    Path(crawl_id): Path<String>,
) -> Result<Response, Problem> {
    match state.store.status(&crawl_id).await {
        Ok(Some(mut status)) => {
            if status.state == CrawlState::Running {
                let mut redis = state.store.connection();
                let blocked = block::current(&mut redis, &state.egress_prefix)
                    .await
                    .map_err(|e| Problem::unavailable(STORE_UNAVAILABLE, e))?;
                if blocked.is_some() {
                    status.state = CrawlState::Blocked;
                }
            }
            Ok(axum::Json(status).into_response())
        }
        Ok(None) => Err(Problem::not_found(&crawl_id)),
        Err(e) => Err(Problem::unavailable(STORE_UNAVAILABLE, e)),
    }
}

async fn cancel_crawl(
    State(state): State<Arc<ApiState>>,
    Path(crawl_id): Path<String>,
) -> Result<Response, Problem> {
    let found = state
        .store
        .cancel(&crawl_id)
        .await
        .map_err(|e| Problem::unavailable(STORE_UNAVAILABLE, e))?;
    if !found {
        return Err(Problem::not_found(&crawl_id));
    }
    tracing::info!(%crawl_id, "crawl cancelled");
    get_crawl(State(state), Path(crawl_id)).await
}

async fn fallback() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "no such route")
}

/// A handler panicked: the client gets a 500 with the request id, the log gets the panic.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let cause = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    Problem {
        cause: Some(format!("handler panicked: {cause}")),
        ..Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
    .into_response()
}

/// Gives the request an id: in the task-local an error reads, in a span around everything
/// the request logs, and in the `x-request-id` header of the answer.
async fn request_id(request: Request, next: Next) -> Response {
    use tracing::Instrument;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = REQUEST_ID
        .scope(id.clone(), next.run(request).instrument(span))
        .await;
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Counts every answer by route template (never by raw path, which would explode the label
/// set) and status.
async fn count_requests(
    State(metrics): State<ApiMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    tracing::debug!(%route, status = %response.status(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
    response
}

/// The API's routes, with the health routes merged in, behind `auth`.
///
/// Layers, outermost first: the request id (so even a 401 carries one), the request
/// counter (so refusals are counted), authentication, then panics turned into a 500.
pub fn router(state: ApiState, health: HealthState, auth: Auth) -> Router {
    let metrics = state.metrics.clone();
    let document = Arc::new(openapi::document(auth.is_required()));
    let api = Router::new()
        .route(
            "/crawls",
            axum::routing::post(create_crawl).get(lifecycle::list_crawls),
        )
        .route(
            "/crawls/{id}",
            get(get_crawl).delete(lifecycle::cancel_or_purge),
        )
        .route(
            "/crawls/{id}/pause",
            axum::routing::post(lifecycle::pause_crawl),
        )
        .route(
            "/crawls/{id}/resume",
            axum::routing::post(lifecycle::resume_crawl),
        )
        .with_state(Arc::new(state))
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { axum::Json(Value::clone(&document)) }
            }),
        );
    api.merge(health::router(health))
        .fallback(fallback)
        .layer(CatchPanicLayer::custom(panicked))
        .layer(middleware::from_fn_with_state(auth, auth::authorize))
        .layer(middleware::from_fn_with_state(metrics, count_requests))
        .layer(middleware::from_fn(request_id))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// Serves the API on `listener` within `limits` until `shutdown` is cancelled; open
/// connections then have `limits.shutdown_timeout` to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    http::serve(listener, app, limits, shutdown)
        .await
        .map_err(ApiError::Serve)
}

/// Binds the API's address.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ApiError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })
}
