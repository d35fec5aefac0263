//! Logging set-up shared by every binary.
//!
//! Levels come from `RUST_LOG` (default `info`). At `info` the services log lifecycle events
//! only (start, assignment changes, dependency up/down, shutdown); per-job outcomes are at
//! `debug`, and nothing is logged per loop tick, so a worker with thousands of partitions
//! stays quiet.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The filter when `RUST_LOG` is unset. The Neo4j driver logs every new connection at info,
/// which while Neo4j is down would be a line per probe.
const DEFAULT_FILTER: &str = "info,neo4rs=warn";

/// Installs the global subscriber. Safe to call twice (the second call does nothing), which
/// tests that start several services in one process rely on.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
