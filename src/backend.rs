//! The one constructor every Redis client goes through (the worker's crawl store, record
//! cache and egress limiter, the API, the `bookworm` tools), so a `rediss://` URL and its CA
//! file apply to all of them. Kafka's counterpart is [`crate::kafka::Cluster`], Neo4j's
//! [`crate::graph::GraphStore::connect`].

use std::path::{Path, PathBuf};

use redis::aio::ConnectionManager;
use redis::{Client, ErrorKind, RedisError, TlsCertificates};

use crate::config::RedisArgs;

/// Where a Redis is and how to trust it. The services pass their [`RedisArgs`] (URL and
/// `REDIS_CA_FILE`); a bare `str` is a URL without a CA file of its own, for tests and
/// benchmarks (a `rediss://` one is then checked against the system's roots).
pub trait RedisTarget {
    /// The URL, password included: only for the client that connects with it.
    fn url(&self) -> &str;
    /// The CA file the server's certificate is checked against, if not the system's roots.
    fn ca_file(&self) -> Option<&Path>;
}

impl RedisTarget for RedisArgs {
    fn url(&self) -> &str {
        self.redis_url.as_str()
    }
    fn ca_file(&self) -> Option<&Path> {
        self.redis_ca_file.as_deref()
    }
}

impl RedisTarget for str {
    fn url(&self) -> &str {
        self
    }
    fn ca_file(&self) -> Option<&Path> {
        None
    }
}

impl RedisTarget for String {
    fn url(&self) -> &str {
        self
    }
    fn ca_file(&self) -> Option<&Path> {
        None
    }
}

/// A Redis URL with a CA file: what a test builds to reach a TLS port.
#[derive(Clone)]
pub struct TlsRedis {
    /// The `rediss://` URL.
    pub url: String,
    /// The CA's PEM file.
    pub ca_file: PathBuf,
}

impl RedisTarget for TlsRedis {
    fn url(&self) -> &str {
        &self.url
    }
    fn ca_file(&self) -> Option<&Path> {
        Some(&self.ca_file)
    }
}

/// A client of `target`: with a CA file, its certificate is the only root the server's
/// certificate is checked against. A CA file with a plaintext `redis://` URL is refused: the
/// operator meant TLS, and a silent plaintext connection would hide that it is off.
pub fn redis_client(target: &(impl RedisTarget + ?Sized)) -> Result<Client, RedisError> {
    let Some(ca_file) = target.ca_file() else {
        return Client::open(target.url());
    };
    if !target.url().starts_with("rediss://") {
        return Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "REDIS_CA_FILE is set but REDIS_URL is not a rediss:// URL",
        )));
    }
    let root_cert = std::fs::read(ca_file).map_err(|e| {
        RedisError::from((
            ErrorKind::InvalidClientConfig,
            "cannot read REDIS_CA_FILE",
            format!("{}: {e}", ca_file.display()),
        ))
    })?;
    Client::build_with_tls(
        target.url(),
        TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        },
    )
}

/// A connection manager (it reconnects by itself after Redis restarts) to `target`.
pub async fn redis_connection(
    target: &(impl RedisTarget + ?Sized),
) -> Result<ConnectionManager, RedisError> {
    ConnectionManager::new(redis_client(target)?).await
}
