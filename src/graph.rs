//! Writing the graph into Neo4j: rows, the statements that merge them, the store that runs
//! them in transactions, and the batcher that groups concurrent messages into those
//! transactions.
//!
//! - [`rows`]: a node or edge message checked and reduced to what the graph stores;
//! - [`cypher`]: one `UNWIND $rows … MERGE` statement per label and relationship type;
//! - [`GraphStore`] (here): the driver's pool, every call bounded by a timeout, and errors
//!   sorted by what the caller should do (split the batch, retry, wait for Neo4j);
//! - [`batcher`]: rows from many concurrent messages in, one transaction per batch out, and
//!   each message told the fate of its own row.

pub mod batcher;
pub mod cypher;
pub mod rows;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use neo4rs::{BoltList, BoltType, ConfigBuilder, Graph, Query};

pub use batcher::{Batcher, BatcherConfig, RowFailure};
pub use rows::{EdgeRow, NodeRow, Row, RowError};

use crate::config::Neo4jArgs;
use crate::message::{Label, Rel};

/// Errors from setting up the store: the configuration itself is wrong, retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URI, user or pool settings were refused by the driver.
    #[error("invalid Neo4j configuration: {0}")]
    Config(#[source] neo4rs::Error),
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
            E::Neo4j(e) => {
                let code = e.code();
                let text = format!("{code}: {}", e.message());
                if code.starts_with("Neo.ClientError.Statement.")
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
            // Our own parameters could not be encoded: a value of this batch is at fault.
            e @ (E::StringTooLong
            | E::MapTooBig
            | E::BytesTooBig
            | E::ListTooLong
            | E::ConversionError) => WriteError::Rejected(e.to_string()),
            other => WriteError::Unavailable(other.to_string()),
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
    pub async fn connect(args: &Neo4jArgs) -> Result<Self, StoreError> {
        let config = ConfigBuilder::default()
            .uri(&args.neo4j_uri)
            .user(&args.neo4j_user)
            .password(&args.neo4j_password)
            .max_connections(args.neo4j_max_connections)
            .build()
            .map_err(StoreError::Config)?;
        let graph = Graph::connect(config.clone())
            .await
            .map_err(StoreError::Config)?;
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

    /// Writes `rows` in one transaction: node records first (so an edge in the same batch
    /// finds its endpoints complete), then relationships, one statement per label or type.
    pub async fn write(&self, rows: &[&Row]) -> Result<(), WriteError> {
        self.run_in_transaction(statements(rows)).await
    }
}

/// Groups rows by statement shape, nodes before relationships, keeping each group's order
/// (a later record of the same node is applied after an earlier one).
pub fn statements(rows: &[&Row]) -> Vec<Query> {
    let mut nodes: BTreeMap<Label, Vec<BoltType>> = BTreeMap::new();
    let mut edges: BTreeMap<(Rel, Label, Label), Vec<BoltType>> = BTreeMap::new();
    for row in rows {
        match row {
            Row::Node(n) => nodes.entry(n.label).or_default().push(n.to_param()),
            Row::Edge(e) => edges
                .entry((e.rel, e.from_label, e.to_label))
                .or_default()
                .push(e.to_param()),
        }
    }
    let param = |rows: Vec<BoltType>| BoltType::List(BoltList::from(rows));
    let node_queries = nodes
        .into_iter()
        .map(|(label, rows)| neo4rs::query(&cypher::merge_nodes(label)).param("rows", param(rows)));
    let edge_queries = edges.into_iter().map(|((rel, from, to), rows)| {
        neo4rs::query(&cypher::merge_edges(rel, from, to)).param("rows", param(rows))
    });
    node_queries.chain(edge_queries).collect()
}
