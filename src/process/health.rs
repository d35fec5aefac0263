//! `/metrics`, `/healthz` and `/readyz`, served on a thread of their own.
//!
//! The server runs on its own single-threaded runtime, not on the service's: when a handler
//! wedges the service's runtime, this server still answers, and answers that the process is
//! unhealthy. Liveness is computed at request time from the age of the consumer loop's last
//! poll, so it cannot go on reporting a healthy value the loop last wrote. Readiness is a set
//! of named flags that the service flips as its dependencies come and go.
//!
//! It serves within [`crate::api::http::ServerLimits::HEALTH`]: a scraper or prober that
//! stalls mid-request is cut off after seconds and cannot use up the server's connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, IntGauge, Registry, TextEncoder};
use serde_json::json;

/// Errors from starting the server.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The address could not be bound (in use, or not local).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The server thread could not be started.
    #[error("cannot start the health server thread: {0}")]
    Thread(std::io::Error),
}

/// How long ago the consumer loop last polled, and how old is too old.
///
/// The loop calls [`Liveness::polled`] on every turn; the health server reads the age. A loop
/// that stops turning (a handler blocking its thread, a deadlock) ages past `max_age` and
/// `/healthz` fails, so Kubernetes restarts the process instead of letting it sit on its
/// partitions.
#[derive(Clone)]
pub struct Liveness {
    started: Instant,
    last_poll_ms: Arc<AtomicU64>,
    max_age: Duration,
    age_gauge: Option<IntGauge>,
    /// Set once a client hit an error it cannot recover from: the process is dead for good,
    /// however recently the loop polled.
    fatal: Arc<OnceLock<String>>,
}

impl Liveness {
    /// A liveness that fails once the loop has not polled for `max_age`; `age_gauge` (the
    /// `*_last_poll_age_seconds` metric) is refreshed on every scrape.
    pub fn new(max_age: Duration, age_gauge: Option<IntGauge>) -> Self {
        Self {
            started: Instant::now(),
            last_poll_ms: Arc::new(AtomicU64::new(0)),
            max_age,
            age_gauge,
            fatal: Arc::new(OnceLock::new()),
        }
    }

    /// Marks the process dead for good: a Kafka client had a fatal error (every publish is
    /// refused from then on while the loop would go on polling). `/healthz` fails from now
    /// on, with `reason`, so the orchestrator restarts the process.
    pub fn fail(&self, reason: String) {
        let _ = self.fatal.set(reason);
    }

    /// The fatal error the process was marked with, if any.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.get().map(String::as_str)
    }

    /// A liveness that never fails: for processes without a consumer loop (the API).
    pub fn always() -> Self {
        Self::new(Duration::MAX, None)
    }

    /// Records that the loop polled just now.
    pub fn polled(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_poll_ms.store(now, Ordering::Relaxed);
    }

    /// Time since the last poll (since creation if the loop never polled).
    pub fn age(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_poll_ms.load(Ordering::Relaxed)))
    }

    /// Whether the loop polled recently enough.
    pub fn is_alive(&self) -> bool {
        self.fatal.get().is_none() && self.age() <= self.max_age
    }

    fn refresh_gauge(&self) {
        if let Some(gauge) = &self.age_gauge {
            gauge.set(self.age().as_secs() as i64);
        }
    }
}

/// Named readiness conditions (`kafka`, `neo4j`, `redis`, `assignment`…).
///
/// A condition that was never set counts as not ready, so a process is not sent traffic
/// before it has checked its dependencies once.
#[derive(Clone, Default)]
pub struct Readiness {
    conditions: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

impl Readiness {
    /// Declares conditions that start out not ready.
    pub fn with_conditions(names: &[&'static str]) -> Self {
        let readiness = Self::default();
        for name in names {
            readiness.set(name, false);
        }
        readiness
    }

    /// Sets one condition.
    pub fn set(&self, name: &'static str, ready: bool) {
        if let Ok(mut conditions) = self.conditions.lock() {
            conditions.insert(name, ready);
        }
    }

    /// The conditions that are not ready now.
    pub fn failing(&self) -> Vec<&'static str> {
        match self.conditions.lock() {
            Ok(conditions) => conditions
                .iter()
                .filter(|(_, ready)| !**ready)
                .map(|(name, _)| *name)
                .collect(),
            Err(_) => vec!["poisoned"],
        }
    }
}

/// What the three endpoints read.
#[derive(Clone)]
pub struct HealthState {
    /// Every metric of the process.
    pub registry: Registry,
    /// Consumer-loop liveness.
    pub liveness: Liveness,
    /// Dependency readiness.
    pub readiness: Readiness,
}

/// The three routes, for a server of its own or merged into the API's router.
pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<HealthState>) -> Response {
    state.liveness.refresh_gauge();
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    match encoder.encode(&state.registry.gather(), &mut body) {
        Ok(()) => (
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn healthz(State(state): State<HealthState>) -> Response {
    let age = state.liveness.age().as_secs_f64();
    if let Some(error) = state.liveness.fatal() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "fatal", "error": error, "last_poll_age_seconds": age})),
        )
            .into_response()
    } else if state.liveness.is_alive() {
        (
            StatusCode::OK,
            axum::Json(json!({"status": "ok", "last_poll_age_seconds": age})),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "wedged", "last_poll_age_seconds": age})),
        )
            .into_response()
    }
}

async fn readyz(State(state): State<HealthState>) -> Response {
    let failing = state.readiness.failing();
    if failing.is_empty() {
        (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not ready", "failing": failing})),
        )
            .into_response()
    }
}

/// Serves the three routes on `addr` from a dedicated thread and returns the bound address
/// (useful with port 0 in tests). The thread lives as long as the process.
pub fn spawn_server(addr: SocketAddr, state: HealthState) -> Result<SocketAddr, HealthError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| HealthError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| HealthError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| HealthError::Bind { addr, source })?;
    std::thread::Builder::new()
        .name("health-server".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "health server runtime failed to start");
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::error!(error = %e, "health server listener failed");
                        return;
                    }
                };
                // Never shut down: the server lives as long as the process, so the probes keep
                // answering while the service drains.
                let forever = tokio_util::sync::CancellationToken::new();
                let limits = crate::api::http::ServerLimits::HEALTH;
                if let Err(e) =
                    crate::api::http::serve(listener, router(state), limits, forever).await
                {
                    tracing::error!(error = %e, "health server stopped");
                }
            });
        })
        .map_err(HealthError::Thread)?;
    Ok(local)
}

/// Starts the health server of a consumer service (worker, graph writer): liveness fails once
/// the loop has not polled for half of `max_poll_interval`, so Kubernetes restarts a wedged
/// consumer before the group evicts it; readiness starts with `conditions` not ready.
/// Returns the handles the service flips.
pub fn spawn_consumer_server(
    addr: SocketAddr,
    registry: Registry,
    last_poll_age: IntGauge,
    max_poll_interval: Duration,
    conditions: &[&'static str],
) -> Result<(Liveness, Readiness), HealthError> {
    let liveness = Liveness::new(max_poll_interval / 2, Some(last_poll_age));
    let readiness = Readiness::with_conditions(conditions);
    let bound = spawn_server(
        addr,
        HealthState {
            registry,
            liveness: liveness.clone(),
            readiness: readiness.clone(),
        },
    )?;
    tracing::info!(addr = %bound, "metrics and health listening");
    Ok((liveness, readiness))
}
