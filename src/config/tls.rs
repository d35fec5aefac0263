//! How the services authenticate and encrypt their connections to the backends: Kafka's
//! security protocol, SASL mechanism and credentials, and the CA files that Kafka, Redis and
//! Neo4j server certificates are checked against.
//!
//! Production clusters run Kafka, Redis and Neo4j behind TLS (and Kafka behind SASL); the
//! defaults keep the local stack's plaintext ports working, and every combination that could
//! only fail later (SASL without credentials, a CA file that holds no certificate) exits 2 at
//! start-up naming the variable.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Kafka's `security.protocol`: how a client reaches the brokers. `sasl_plaintext` is left
/// out on purpose: it sends the SASL password over an unencrypted connection.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityProtocol {
    /// No TLS, no authentication (a laptop, the local stack's default port).
    #[default]
    Plaintext,
    /// TLS; the brokers' certificates are checked against `KAFKA_CA_FILE` (or the system's
    /// roots).
    Ssl,
    /// TLS and SASL authentication with `KAFKA_SASL_USERNAME` and `KAFKA_SASL_PASSWORD`.
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    /// The value librdkafka's `security.protocol` takes.
    pub fn librdkafka_name(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslSsl => "sasl_ssl",
        }
    }
}

/// Kafka's `sasl.mechanism` for `sasl_ssl`: SCRAM keeps the password off the wire, `PLAIN`
/// is there for managed clusters that only offer it (over TLS, it is as safe as the TLS).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaslMechanism {
    /// SCRAM with SHA-256.
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[default]
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
    /// The password itself, inside the TLS connection.
    #[value(name = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    /// The value librdkafka's `sasl.mechanism` takes.
    pub fn librdkafka_name(self) -> &'static str {
        match self {
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::Plain => "PLAIN",
        }
    }
}

/// Kafka's security settings, flattened into [`super::BrokerArgs`] so every Kafka client of
/// every binary gets them from the one place clients are configured (`kafka::Cluster`).
#[derive(Args, Clone, Default, PartialEq, Eq)]
pub struct KafkaSecurityArgs {
    /// `plaintext`, `ssl` (TLS) or `sasl_ssl` (TLS and SASL authentication).
    #[arg(
        long,
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        default_value = "plaintext"
    )]
    pub kafka_security_protocol: SecurityProtocol,

    /// SASL mechanism for `sasl_ssl`: `SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN`.
    #[arg(
        long,
        env = "KAFKA_SASL_MECHANISM",
        value_enum,
        ignore_case = true,
        default_value = "SCRAM-SHA-512"
    )]
    pub kafka_sasl_mechanism: SaslMechanism,

    /// SASL user; required with `KAFKA_SECURITY_PROTOCOL=sasl_ssl`.
    #[arg(
        long,
        env = "KAFKA_SASL_USERNAME",
        required_if_eq("kafka_security_protocol", "sasl_ssl")
    )]
    pub kafka_sasl_username: Option<String>,

    /// SASL password; required with `sasl_ssl`. Its value is never printed, not even by
    /// --help.
    #[arg(
        long,
        env = "KAFKA_SASL_PASSWORD",
        hide_env_values = true,
        required_if_eq("kafka_security_protocol", "sasl_ssl")
    )]
    pub kafka_sasl_password: Option<String>,

    /// PEM file of the CA that signed the brokers' certificates (default: the system's
    /// roots). Only read with `ssl` or `sasl_ssl`.
    #[arg(long, env = "KAFKA_CA_FILE", value_parser = parse_ca_file)]
    pub kafka_ca_file: Option<PathBuf>,
}

/// Hand-written so the SASL password can never reach a log line through `{:?}`.
impl std::fmt::Debug for KafkaSecurityArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSecurityArgs")
            .field("kafka_security_protocol", &self.kafka_security_protocol)
            .field("kafka_sasl_mechanism", &self.kafka_sasl_mechanism)
            .field("kafka_sasl_username", &self.kafka_sasl_username)
            .field(
                "kafka_sasl_password",
                &self.kafka_sasl_password.as_ref().map(|_| "<redacted>"),
            )
            .field("kafka_ca_file", &self.kafka_ca_file)
            .finish()
    }
}

/// Parses a CA file variable (`KAFKA_CA_FILE`, `REDIS_CA_FILE`, `NEO4J_CA_FILE`) for clap:
/// the file must be readable and hold at least one PEM certificate, so a wrong path exits 2
/// at start-up instead of failing every TLS handshake later with a vaguer error.
pub fn parse_ca_file(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    let pem = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {text:?}: {e}"))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{text:?} holds no PEM certificate"));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_redacted_in_debug() {
        let args = KafkaSecurityArgs {
            kafka_security_protocol: SecurityProtocol::SaslSsl,
            kafka_sasl_username: Some("bookworm".to_owned()),
            kafka_sasl_password: Some("s3cret".to_owned()),
            ..KafkaSecurityArgs::default()
        };
        let shown = format!("{args:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("bookworm"),
            "{shown}"
        );
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").expect("write");
        assert!(parse_ca_file(&empty.to_string_lossy()).is_err());
        assert!(parse_ca_file(&dir.path().join("missing").to_string_lossy()).is_err());
        let good = dir.path().join("ca.pem");
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        assert_eq!(parse_ca_file(&good.to_string_lossy()), Ok(good));
    }
}
