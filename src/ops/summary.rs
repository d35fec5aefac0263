//! What a finished crawl left behind, side by side: the crawl's own counters (Redis) and
//! the graph it built (Neo4j). `bookworm summary` prints it; the demo ends with it.
//!
//! The graph writer lags the workers, so [`wait_for_graph`] polls until the graph holds
//! every node and relationship the counters say were published.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use neo4rs::query;

use crate::crawl::store::{CrawlStatus, CrawlStore, StoreError};
use crate::graph::{GraphStore, WriteError};

/// Errors from building a summary.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    /// Redis could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Neo4j could not be read.
    #[error("reading the graph: {0}")]
    Graph(#[from] WriteError),
    /// No crawl has this id.
    #[error("no crawl with id {0}")]
    UnknownCrawl(String),
}

/// A crawl's counters and its graph.
#[derive(Debug, Clone)]
pub struct CrawlSummary {
    /// The crawl's status and counters.
    pub status: CrawlStatus,
    /// Full nodes the crawl touched, by label.
    pub nodes: BTreeMap<String, u64>,
    /// Nodes the crawl only reached by an edge (its frontier: depth limit, budget, failures).
    pub stubs: u64,
    /// Relationships the crawl wrote, by type.
    pub relationships: BTreeMap<String, u64>,
}

impl CrawlSummary {
    fn graph_nodes(&self) -> u64 {
        self.nodes.values().sum()
    }

    fn graph_relationships(&self) -> u64 {
        self.relationships.values().sum()
    }

    /// Whether the graph holds everything the counters say was published.
    pub fn graph_caught_up(&self) -> bool {
        self.graph_nodes() >= self.status.counters.fetched
            && self.graph_relationships() >= self.status.counters.edges
    }
}

/// Reads one crawl's summary.
pub async fn summarize(
    store: &CrawlStore,
    graph: &GraphStore,
    crawl_id: &str,
) -> Result<CrawlSummary, SummaryError> {
    let status = store
        .status(crawl_id)
        .await?
        .ok_or_else(|| SummaryError::UnknownCrawl(crawl_id.to_owned()))?;
    let mut nodes = BTreeMap::new();
    let mut stubs = 0;
    let rows = graph
        .fetch(
            query(
                "MATCH (n) WHERE $crawl IN n.crawls \
                 RETURN labels(n)[0] AS label, coalesce(n.stub, false) AS stub, count(*) AS n",
            )
            .param("crawl", crawl_id),
        )
        .await?;
    for row in rows {
        let count = row.get::<i64>("n").unwrap_or_default().max(0) as u64;
        if row.get::<bool>("stub").unwrap_or_default() {
            stubs += count;
        } else {
            let label: String = row.get("label").unwrap_or_default();
            *nodes.entry(label).or_default() += count;
        }
    }
    let mut relationships = BTreeMap::new();
    let rows = graph
        .fetch(
            query(
                "MATCH ()-[r]->() WHERE $crawl IN r.crawls RETURN type(r) AS type, count(*) AS n",
            )
            .param("crawl", crawl_id),
        )
        .await?;
    for row in rows {
        let kind: String = row.get("type").unwrap_or_default();
        relationships.insert(kind, row.get::<i64>("n").unwrap_or_default().max(0) as u64);
    }
    Ok(CrawlSummary {
        status,
        nodes,
        stubs,
        relationships,
    })
}

/// Polls the summary until the graph has caught up with the counters, or `timeout` passes
/// (then returns the last summary: the caller shows what is missing).
pub async fn wait_for_graph(
    store: &CrawlStore,
    graph: &GraphStore,
    crawl_id: &str,
    timeout: Duration,
) -> Result<CrawlSummary, SummaryError> {
    let deadline = Instant::now() + timeout;
    loop {
        let summary = summarize(store, graph, crawl_id).await?;
        if summary.graph_caught_up() || Instant::now() >= deadline {
            return Ok(summary);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for CrawlSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.status;
        let c = &s.counters;
        let seconds = (s.updated_at - s.created_at).num_milliseconds().max(1) as f64 / 1000.0;
        writeln!(
            f,
            "crawl {} is {} (depth {}, seeds: {})",
            s.crawl_id,
            s.state.as_str(),
            s.max_depth,
            s.seeds.join(", ")
        )?;
        writeln!(
            f,
            "  fetched    {} nodes in {seconds:.1} s ({:.1} nodes/s); {} jobs enqueued, {} duplicates dropped, {} skipped",
            c.fetched,
            c.fetched as f64 / seconds,
            c.enqueued,
            c.duplicates,
            c.skipped
        )?;
        writeln!(
            f,
            "  graph      nodes: {} ({} in all)",
            counts(&self.nodes),
            self.graph_nodes()
        )?;
        writeln!(
            f,
            "             relationships: {} ({} in all)",
            counts(&self.relationships),
            self.graph_relationships()
        )?;
        writeln!(
            f,
            "             stubs (the crawl's frontier): {}",
            self.stubs
        )?;
        writeln!(
            f,
            "  counters   nodes: {}; relationships: {}",
            counts(&c.nodes),
            c.edges
        )?;
        write!(f, "  DLQ        {}", counts(&c.failed))
    }
}
