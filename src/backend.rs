//! Where the backend connection settings become clients: every Redis client (the worker's
//! crawl store, record cache and egress limiter, the API, the `bookworm` tools) goes through
//! [`redis_client`], so a `rediss://` URL and its CA file apply to all of them; every Kafka
//! client's TLS and SASL settings come from the [`Cluster`] implementation of `BrokerArgs`
//! here. Neo4j's counterpart is [`crate::graph::GraphStore::connect`].

use std::path::{Path, PathBuf};

use redis::aio::ConnectionManager;
use redis::{Client, ErrorKind, RedisError, TlsCertificates};

use rdkafka::ClientConfig;

use crate::config::{BrokerArgs, RedisArgs, SecurityProtocol};
use crate::kafka::{Cluster, KafkaCluster};

impl Cluster for BrokerArgs {
    fn client_config(&self) -> ClientConfig {
        let mut config = self.kafka_brokers.client_config();
        let security = &self.security;
        config.set(
            "security.protocol",
            security.kafka_security_protocol.librdkafka_name(),
        );
        if security.kafka_security_protocol != SecurityProtocol::Plaintext {
            if let Some(ca) = &security.kafka_ca_file {
                config.set("ssl.ca.location", ca.to_string_lossy());
            }
            // librdkafka checks the broker's name against its certificate by default
            // (since 2.0); set it anyway, so no older default can turn the check off.
            config.set("ssl.endpoint.identification.algorithm", "https");
        }
        if security.kafka_security_protocol == SecurityProtocol::SaslSsl {
            config.set(
                "sasl.mechanism",
                security.kafka_sasl_mechanism.librdkafka_name(),
            );
            // clap requires both with sasl_ssl; librdkafka refuses to connect without them.
            if let Some(user) = &security.kafka_sasl_username {
                config.set("sasl.username", user);
            }
            if let Some(password) = &security.kafka_sasl_password {
                config.set("sasl.password", password);
            }
        }
        config
    }
}

impl From<&BrokerArgs> for KafkaCluster {
    fn from(args: &BrokerArgs) -> Self {
        KafkaCluster::new(args.client_config())
    }
}

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
