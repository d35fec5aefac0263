//! Writing the graph into Neo4j: rows, the statements that merge them, the store that runs
//! them in transactions, and the batcher that groups concurrent messages into those
//! transactions.
//!
//! - [`rows`]: a node or edge message checked and reduced to what the graph stores
//!   ([`tombstone`]: a node message of a record that is gone);
//! - [`cypher`]: one `UNWIND $rows … MERGE` statement per label and relationship type, and the
//!   revision and tombstone rules they enforce;
//! - [`plan`]: a batch's rows grouped into those statements, in the order the rules need;
//! - [`GraphStore`] (here): the driver's pool, every call bounded by a timeout, and errors
//!   sorted by what the caller should do (split the batch, retry, wait for Neo4j);
//! - [`batcher`]: rows from many concurrent messages in, one transaction per batch out, and
//!   each message told the fate of its own row.

pub mod batcher;
pub mod cypher;
pub mod handler;
pub mod migrate;
pub mod plan;
pub mod rows;
pub mod service;
pub mod tombstone;

use std::sync::Mutex;
use std::time::Duration;

use neo4rs::{ConfigBuilder, Graph, Query};

pub use batcher::{Batcher, BatcherConfig, RowFailure};
pub use plan::statements;
pub use rows::{EdgeRow, GoneRow, NodeRow, Row, RowError};

use crate::config::Neo4jArgs;

/// Errors from setting up the store: the configuration itself is wrong, retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URI, user or pool settings were refused by the driver.
    #[error("invalid Neo4j configuration: {0}")]
    Config(#[source] neo4rs::Error),
    /// `NEO4J_CA_FILE` is set but `NEO4J_URI` does not ask for TLS: the operator meant TLS,
    /// and a silent plaintext connection would hide that it is off.
    #[error("NEO4J_CA_FILE is set but NEO4J_URI is not a bolt+s:// or neo4j+s:// URI")]
    CaWithoutTls,
}

/// Why a call to Neo4j failed, sorted by what the caller does next.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    /// Neo4j refused a statement because of the values in it (a type error, a value it cannot
    /// store or index). Retrying the same rows fails again: split the batch to find the row.
    #[error("Neo4j refused the rows: {0}")]
    Rejected(String),
    /// Neo4j answered with a transient error (deadlock, leader switch, lock timeout): the same
    /// rows will most likely succeed if retried shortly.
    #[error("transient Neo4j error: {0}")]
    Transient(String),
    /// Neo4j gave up on the transaction because of its size: it ran out of transaction memory
    /// or past the server's transaction timeout. The same rows fail the same way however often
    /// they are retried, so the batch is split (like [`WriteError::Rejected`]) until the parts
    /// fit; a row that still fails alone is the row's fault only if rows beside it were
    /// written, else Neo4j is struggling and the row is retried.
    #[error("transaction too large for Neo4j: {0}")]
    TooLarge(String),
    /// Neo4j did not answer (connection refused or lost, timeout, authentication): the store
    /// has dropped its connections; retry with backoff and report Neo4j down meanwhile.
    #[error("Neo4j unavailable: {0}")]
    Unavailable(String),
}

impl WriteError {
    /// Sorts a driver error. Statement and schema errors are the data's fault; a connection,
    /// protocol or I/O failure means Neo4j is out of reach; every other server error
    /// (transient, database) is retried rather than blamed on a row, so a server-side problem
    /// can never dead-letter good data.
    fn classify(error: neo4rs::Error) -> Self {
        use neo4rs::Error as E;
        match error {
            E::Neo4j(e) => Self::classify_code(e.code(), e.message()),
            // Our own parameters could not be encoded: a value of this batch is at fault.
            e @ (E::StringTooLong
            | E::MapTooBig
            | E::BytesTooBig
            | E::ListTooLong
            | E::ConversionError) => WriteError::Rejected(e.to_string()),
            other => WriteError::Unavailable(other.to_string()),
        }
    }

    /// Sorts a server error by its status code. Memory and transaction-timeout codes come
    /// first: Neo4j files some of them as transient, but retrying the same batch at the same
    /// size fails the same way for ever.
    pub fn classify_code(code: &str, message: &str) -> Self {
        let text = format!("{code}: {message}");
        // A stub deleted while another writer linked it, or a node or relationship another
        // writer deleted under this one (see `cypher`'s revision rules): concurrency, not the
        // data; the retried batch sees the other writer's result.
        if message.contains("still has relationships")
            || code == "Neo.ClientError.Statement.EntityNotFound"
        {
            return WriteError::Transient(text);
        }
        if code.contains("MemoryLimit")
            || code.contains("OutOfMemory")
            || code.contains("TransactionTimedOut")
        {
            WriteError::TooLarge(text)
        } else if code.starts_with("Neo.ClientError.Statement.")
            || code.starts_with("Neo.ClientError.Schema.")
            || code.starts_with("Neo.ClientError.Request.")
        {
            WriteError::Rejected(text)
        } else if code.starts_with("Neo.ClientError.Security.") {
            WriteError::Unavailable(text)
        } else {
            WriteError::Transient(text)
        }
    }
}

/// The Neo4j store: a connection pool and the bound on every call.
///
/// After a connection-level failure or a timeout the pool is replaced by a fresh one: a
/// connection abandoned mid-answer must never be handed out again (its next reader would
/// take the old answer for its own), and a fresh pool reconnects on first use, so the store
/// recovers by itself once Neo4j is back.
pub struct GraphStore {
    config: neo4rs::Config,
    graph: Mutex<Graph>,
    timeout: Duration,
}

impl GraphStore {
    /// Builds the store. Connections are opened lazily, so this succeeds while Neo4j is down;
    /// [`GraphStore::ping`] checks it is reachable.
    /// This is the one place a Neo4j connection is configured: with `NEO4J_CA_FILE` its CA
    /// is trusted (besides the system's roots) for a `bolt+s://` or `neo4j+s://` URI.
    pub async fn connect(args: &Neo4jArgs) -> Result<Self, ConnectError> {
        let mut builder = ConfigBuilder::default()
            .uri(&args.neo4j_uri)
            .user(&args.neo4j_user)
            .password(&args.neo4j_password)
            .max_connections(args.neo4j_max_connections);
        if let Some(ca) = &args.neo4j_ca_file {
            let scheme = args.neo4j_uri.split("://").next().unwrap_or_default();
            if !matches!(scheme, "bolt+s" | "neo4j+s") {
                return Err(ConnectError::CaWithoutTls);
            }
            // neo4rs names it a client certificate, but reads it as an extra root CA.
            builder = builder.with_client_certificate(ca);
        }
        let config = builder.build().map_err(ConnectError::Config)?;
        let graph = Graph::connect(config.clone())
            .await
            .map_err(ConnectError::Config)?;
        Ok(Self {
            config,
            graph: Mutex::new(graph),
            timeout: args.neo4j_query_timeout,
        })
    }

    fn current(&self) -> Result<Graph, WriteError> {
        self.graph
            .lock()
            .map(|graph| graph.clone())
            .map_err(|_| WriteError::Unavailable("connection pool lock poisoned".to_owned()))
    }

    /// Drops every pooled connection by replacing the pool (in-flight users keep the old one
    /// until they finish).
    async fn reconnect(&self) {
        match Graph::connect(self.config.clone()).await {
            Ok(fresh) => {
                if let Ok(mut graph) = self.graph.lock() {
                    *graph = fresh;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot rebuild the Neo4j pool"),
        }
    }

    /// Runs `work` under the call timeout and replaces the pool when Neo4j did not answer.
    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, neo4rs::Error>>,
    ) -> Result<T, WriteError> {
        let error = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => WriteError::classify(e),
            Err(_) => WriteError::Unavailable(format!("no answer within {:?}", self.timeout)),
        };
        if matches!(error, WriteError::Unavailable(_)) {
            self.reconnect().await;
        }
        Err(error)
    }

    /// Runs `queries` in one transaction, in order, and commits.
    pub async fn run_in_transaction(&self, queries: Vec<Query>) -> Result<(), WriteError> {
        let graph = self.current()?;
        self.bounded(async move {
            let mut txn = graph.start_txn().await?;
            for query in queries {
                txn.run(query).await?;
            }
            txn.commit().await
        })
        .await
    }

    /// Runs one read query and collects its rows (bounded like every call).
    pub async fn fetch(&self, query: Query) -> Result<Vec<neo4rs::Row>, WriteError> {
        let graph = self.current()?;
        self.bounded(async move {
            let mut stream = graph.execute(query).await?;
            let mut rows = Vec::new();
            while let Some(row) = stream.next().await? {
                rows.push(row);
            }
            Ok(rows)
        })
        .await
    }

    /// Checks that Neo4j answers a trivial query.
    pub async fn ping(&self) -> Result<(), WriteError> {
        self.fetch(neo4rs::query("RETURN 1 AS one")).await.map(drop)
    }

    /// Writes `rows` in one transaction: tombstones and node records first (so an edge in the
    /// same batch finds its endpoints complete and its start's tombstone), then relationships,
    /// one statement per label or type (see [`plan`]).
    pub async fn write(&self, rows: &[&Row]) -> Result<(), WriteError> {
        self.run_in_transaction(statements(rows)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14, item 9: a transaction Neo4j gives up on for its size (memory, transaction
    /// timeout) is `TooLarge`, which splits the batch; it was `Transient`, and the same batch
    /// was retried at the same size for ever.
    #[test]
    fn memory_and_transaction_timeout_errors_split_the_batch() {
        for code in [
            "Neo.TransientError.General.MemoryPoolOutOfMemoryError",
            "Neo.TransientError.General.TransactionMemoryLimit",
            "Neo.ClientError.General.TransactionOutOfMemoryError",
            "Neo.ClientError.Transaction.TransactionTimedOut",
            "Neo.ClientError.Transaction.TransactionTimedOutClientConfiguration",
        ] {
            assert!(
                matches!(
                    WriteError::classify_code(code, "m"),
                    WriteError::TooLarge(_)
                ),
                "{code}"
            );
        }
        assert!(matches!(
            WriteError::classify_code("Neo.TransientError.Transaction.DeadlockDetected", "m"),
            WriteError::Transient(_)
        ));
        assert!(matches!(
            WriteError::classify_code("Neo.ClientError.Statement.TypeError", "m"),
            WriteError::Rejected(_)
        ));
    }
}
