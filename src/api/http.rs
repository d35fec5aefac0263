//! How every HTTP server of the project serves (the API, each health/metrics server, the
//! simulator): with a header-read timeout, a request timeout, a body-size cap, a connection
//! cap, and a graceful shutdown that ends within its deadline whatever the clients do.
//!
//! `axum::serve` has no timer, so hyper's header timeout is off there: a client that sends
//! half a request holds its socket (and a shutdown) for good. Here each connection is served
//! by hyper's HTTP/1.1 connection with a tokio timer, and the accept loop takes a permit of a
//! semaphore first, so a flood of connections waits in the kernel's backlog instead of taking
//! file descriptors and memory (mini-redis's `MAX_CONNECTIONS` pattern).
//!
//! Keep-alive idleness is bounded by the header timeout too: hyper starts the header timer as
//! soon as a kept-alive connection waits for its next request, so an idle connection is
//! closed after `header_timeout`.
//!
//! HTTP/1.1 only: every client we have (Prometheus, kubelet probes, the CLI, the workers)
//! speaks it, and one protocol is one set of timeouts to get right.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

/// How long accept waits after an error (too many open files, mostly) before trying again:
/// retrying at once would spin on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The bounds one server applies to its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Time a client has to send a request's headers, from the moment the connection waits
    /// for them (also the keep-alive idle timeout, see the module doc).
    pub header_timeout: Duration,
    /// Time from a request's headers to its response, body upload included; past it the
    /// client gets `408`.
    pub request_timeout: Duration,
    /// Largest request body accepted; a larger one gets `413` before it is read.
    pub max_body_bytes: usize,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// On shutdown, how long open connections may finish their requests before they are
    /// dropped.
    pub shutdown_timeout: Duration,
}

impl ServerLimits {
    /// The health/metrics servers: Prometheus and the kubelet send small GETs and expect an
    /// answer in well under their own 10 s timeouts; a handful of scrapers and probes share
    /// the server, so 64 connections is generous.
    pub const HEALTH: Self = Self {
        header_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(10),
        max_body_bytes: 16 * 1024,
        max_connections: 64,
        shutdown_timeout: Duration::from_secs(5),
    };
}

/// Serves `router` on `listener` within `limits` until `shutdown` is cancelled, then lets
/// open connections finish for at most `limits.shutdown_timeout`.
///
/// Each request carries [`ConnectInfo<SocketAddr>`] with the peer's address, as
/// `into_make_service_with_connect_info` would give it.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = router
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, router, limits, shutdown).await;
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.shutdown_timeout, connections.wait())
        .await
        .is_err()
    {
        // Unreachable in practice (each connection bounds itself), kept as the last word.
        tracing::warn!("connections still open at the shutdown deadline");
    }
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move { Ok::<_, Infallible>(router.call(request).await.unwrap_or_else(|e| match e {})) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            // Finish the request in progress (if any), then close; a client that holds the
            // connection past the deadline is dropped.
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.shutdown_timeout, connection).await {
                Ok(_) => {}
                Err(_) => tracing::debug!(%peer, "connection dropped at the shutdown deadline"),
            }
        }
    }
}
