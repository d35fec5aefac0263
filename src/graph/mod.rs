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
pub mod handler;
pub mod migrate;
pub mod rows;
pub mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use neo4rs::{BoltList, BoltType, ConfigBuilder, Graph, Query};

pub use batcher::{Batcher, BatcherConfig, RowFailure};
pub use rows::{EdgeRow, NodeRow, Row, RowError};

use crate::config::Neo4jArgs;
use crate::message::{Label, Rel};

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

    /// Writes `rows` in one transaction: node records first (so an edge in the same batch
    /// finds its endpoints complete), then relationships, one statement per label or type.
    pub async fn write(&self, rows: &[&Row]) -> Result<(), WriteError> {
        self.run_in_transaction(statements(rows)).await
    }
}

/// Bytes of rows per statement. The driver neither sets `TCP_NODELAY` nor sends a request
/// larger than its 8 KiB write buffer in one piece: such a request leaves in several writes,
/// and Nagle's algorithm holds the last one until the server's delayed ACK, 40 ms later (a
/// 1,000-row statement took ~300 ms this way). Splitting a batch's rows into statements of
/// under 7 KiB each, all in the one transaction, keeps every request in a single write at the
/// cost of one loopback round trip per statement. A single row over the budget still goes
/// alone and pays the 40 ms.
pub const STATEMENT_BYTES: usize = 7 * 1024;

/// Roughly how many bytes a value takes on the wire (PackStream): enough to keep a statement
/// under [`STATEMENT_BYTES`].
fn wire_size(value: &BoltType) -> usize {
    match value {
        BoltType::String(s) => s.value.len() + 3,
        BoltType::List(list) => 3 + list.value.iter().map(wire_size).sum::<usize>(),
        BoltType::Map(map) => {
            3 + map
                .value
                .iter()
                .map(|(k, v)| k.value.len() + 3 + wire_size(v))
                .sum::<usize>()
        }
        _ => 9,
    }
}

/// Splits a statement's rows into runs of at most [`STATEMENT_BYTES`] (with `overhead` for
/// the statement's text), in order; a row bigger than the budget gets a run of its own.
fn chunks(rows: Vec<BoltType>, overhead: usize) -> Vec<Vec<BoltType>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    let mut bytes = overhead;
    for row in rows {
        let size = wire_size(&row);
        if !run.is_empty() && bytes + size > STATEMENT_BYTES {
            runs.push(std::mem::take(&mut run));
            bytes = overhead;
        }
        bytes += size;
        run.push(row);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// One node's write within a batch: every row of the key reduced to the one that wins (see
/// [`NodeWrite::absorb`]), with the crawls of all of them.
struct NodeWrite<'a> {
    key: &'a str,
    revision: Option<i64>,
    props: BTreeMap<&'a str, &'a rows::PropValue>,
    crawls: Crawls<'a>,
}

impl<'a> NodeWrite<'a> {
    fn new(row: &'a NodeRow) -> Self {
        Self {
            key: &row.key,
            revision: row.revision,
            props: row.props.iter().map(|(k, v)| (k.as_str(), v)).collect(),
            crawls: Crawls::from([row.crawl_id.as_str()]),
        }
    }

    /// Folds a later row of the same key in, as writing the two one after the other would:
    /// the higher revision wins (the later on a tie); a row without a revision loses to one
    /// with; two rows without merge their properties, the later's values over the earlier's.
    /// One row per key in a statement keeps Cypher from reading a node's revision before an
    /// earlier row of the same statement changed it.
    fn absorb(&mut self, row: &'a NodeRow) {
        self.crawls.insert(&row.crawl_id);
        match (self.revision, row.revision) {
            (Some(kept), Some(new)) if new < kept => {}
            (Some(_), None) => {}
            (_, Some(_)) => {
                self.revision = row.revision;
                self.props = row.props.iter().map(|(k, v)| (k.as_str(), v)).collect();
            }
            (None, None) => self
                .props
                .extend(row.props.iter().map(|(k, v)| (k.as_str(), v))),
        }
    }
}

/// An edge's start and revision, as the end-node statement checks them.
type Start<'a> = (&'a str, Option<i64>);

/// One end node's write: the crawls of its edges and their starts.
type EndWrite<'a> = (Crawls<'a>, BTreeSet<Start<'a>>);

/// One relationship's write: its crawls and highest revision.
type EdgeWrite<'a> = (Crawls<'a>, Option<i64>);

/// Groups rows by statement shape: node records (one write per key, in first-arrival order,
/// see [`NodeWrite::absorb`]), then the distinct start nodes of the relationships, then their
/// distinct end nodes per start label (each with the starts and revisions of its edges, so an
/// end is only created for an edge that will be written), then the distinct relationships,
/// each with the union of their crawls and their highest revision. Endpoints and
/// relationships go in key order: two writers then lock shared nodes in the same order, which
/// keeps deadlocks between them rare.
pub fn statements(rows: &[&Row]) -> Vec<Query> {
    let mut nodes: BTreeMap<Label, Vec<NodeWrite>> = BTreeMap::new();
    let mut node_index: BTreeMap<(Label, &str), usize> = BTreeMap::new();
    let mut starts: BTreeMap<Label, BTreeMap<&str, Crawls>> = BTreeMap::new();
    let mut ends: BTreeMap<(Label, Label), BTreeMap<&str, EndWrite>> = BTreeMap::new();
    let mut edges: BTreeMap<EdgeShape, BTreeMap<(&str, &str), EdgeWrite>> = BTreeMap::new();
    for row in rows {
        match row {
            Row::Node(n) => {
                let writes = nodes.entry(n.label).or_default();
                match node_index.get(&(n.label, n.key.as_str())) {
                    Some(&i) => writes[i].absorb(n),
                    None => {
                        node_index.insert((n.label, &n.key), writes.len());
                        writes.push(NodeWrite::new(n));
                    }
                }
            }
            Row::Edge(e) => {
                starts
                    .entry(e.from_label)
                    .or_default()
                    .entry(&e.from)
                    .or_default()
                    .insert(&e.crawl_id);
                let end = ends
                    .entry((e.to_label, e.from_label))
                    .or_default()
                    .entry(&e.to)
                    .or_default();
                end.0.insert(&e.crawl_id);
                end.1.insert((&e.from, e.revision));
                let edge = edges
                    .entry((e.rel, e.from_label, e.to_label))
                    .or_default()
                    .entry((&e.from, &e.to))
                    .or_default();
                edge.0.insert(&e.crawl_id);
                edge.1 = edge.1.max(e.revision);
            }
        }
    }
    let mut queries = Vec::new();
    // One statement per run of rows, all in the one transaction (see STATEMENT_BYTES).
    // Node statements also take the writer's own property names (see `cypher::merge_nodes`).
    let mut push = |text: String, rows: Vec<BoltType>, reserved: bool| {
        for run in chunks(rows, text.len()) {
            let query = neo4rs::query(&text).param("rows", BoltType::List(BoltList::from(run)));
            queries.push(if reserved {
                query.param("reserved", rows::crawls_param(rows::RESERVED_PROPS))
            } else {
                query
            });
        }
    };
    let map = |fields: Vec<(&str, BoltType)>| {
        BoltType::Map(
            fields
                .into_iter()
                .map(|(k, v)| (k.into(), v))
                .collect::<neo4rs::BoltMap>(),
        )
    };
    let revision = |fields: &mut Vec<(&str, BoltType)>, revision: Option<i64>| {
        if let Some(r) = revision {
            fields.push(("revision", r.into()));
        }
    };
    for (label, writes) in nodes {
        let rows = writes
            .into_iter()
            .map(|w| rows::node_param(w.key, w.props, w.revision, w.crawls))
            .collect();
        push(cypher::merge_nodes(label), rows, true);
    }
    for (label, keys) in starts {
        let rows = keys
            .into_iter()
            .map(|(key, crawls)| {
                map(vec![
                    ("key", key.into()),
                    ("crawls", rows::crawls_param(crawls)),
                ])
            })
            .collect();
        push(cypher::merge_endpoints(label), rows, false);
    }
    for ((to, from), keys) in ends {
        let rows = keys
            .into_iter()
            .map(|(key, (crawls, froms))| {
                let froms = froms
                    .into_iter()
                    .map(|(from, rev)| {
                        let mut fields = vec![("key", from.into())];
                        revision(&mut fields, rev);
                        map(fields)
                    })
                    .collect::<Vec<_>>();
                map(vec![
                    ("key", key.into()),
                    ("crawls", rows::crawls_param(crawls)),
                    ("froms", BoltType::List(BoltList::from(froms))),
                ])
            })
            .collect();
        push(cypher::merge_ends(to, from), rows, false);
    }
    for ((rel, from, to), pairs) in edges {
        let rows = pairs
            .into_iter()
            .map(|((a, b), (crawls, rev))| {
                let mut fields = vec![
                    ("from", a.into()),
                    ("to", b.into()),
                    ("crawls", rows::crawls_param(crawls)),
                ];
                revision(&mut fields, rev);
                map(fields)
            })
            .collect();
        push(cypher::merge_edges(rel, from, to), rows, false);
    }
    queries
}

/// The crawl ids of one endpoint or relationship within a batch.
type Crawls<'a> = BTreeSet<&'a str>;

/// A relationship statement's shape: its type and the labels it joins.
type EdgeShape = (Rel, Label, Label);

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

    #[test]
    fn a_statement_stays_under_the_byte_budget_and_keeps_row_order() {
        let rows: Vec<BoltType> = (0..1000)
            .map(|i| BoltType::from(format!("/works/OL{i:0>60}W")))
            .collect();
        let runs = chunks(rows.clone(), 400);
        assert!(runs.len() > 1);
        assert!(
            runs.iter()
                .all(|run| 400 + run.iter().map(wire_size).sum::<usize>() <= STATEMENT_BYTES)
        );
        assert_eq!(runs.concat(), rows);

        let huge = BoltType::from("x".repeat(3 * STATEMENT_BYTES));
        let runs = chunks(vec![rows[0].clone(), huge.clone(), rows[1].clone()], 0);
        assert_eq!(runs.len(), 3, "a row over the budget goes alone");
    }
}
