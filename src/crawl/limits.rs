//! The per-crawl expansion limits of the contract's "Crawl rules", as one plain value.
//!
//! The crawl expansion (worker) and the simulator's truth computation
//! ([`crate::sim::Catalogue::reachable`]) both take this struct, so the graph a crawl builds
//! and the graph a test expects are computed under the same limits. It is built from the
//! command line (`CrawlArgs`, by the worker's start-up) or, in the simulator's `/_sim/reachable`, from a query string
//! whose missing fields take the contract's defaults.

use serde::{Deserialize, Serialize};

use crate::config::defaults;

/// How far and how wide a crawl expands from its seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CrawlLimits {
    /// Deepest depth at which keys are fetched (seeds are depth 0); children of nodes at
    /// this depth are written as edges (stubs) but not fetched. `MAX_DEPTH`, default 3.
    pub max_depth: u32,
    /// Works enqueued from a free-text seed's search. `MAX_SEARCH_RESULTS`, default 20.
    pub max_search_results: usize,
    /// Distinct subject keys followed from one work. `MAX_SUBJECTS_PER_NODE`, default 10.
    pub max_subjects_per_node: usize,
    /// Works followed from one author's `works.json`. `MAX_WORKS_PER_AUTHOR`, default 50.
    pub max_works_per_author: usize,
    /// Works followed from one subject's page. `MAX_WORKS_PER_SUBJECT`, default 50.
    pub max_works_per_subject: usize,
    /// Whether works expand to their editions. `CRAWL_EDITIONS`, default false.
    pub crawl_editions: bool,
    /// Editions followed from one work. `MAX_EDITIONS_PER_WORK`, default 20.
    pub max_editions_per_work: usize,
}

impl Default for CrawlLimits {
    /// The contract's defaults.
    fn default() -> Self {
        CrawlLimits {
            max_depth: defaults::MAX_DEPTH,
            max_search_results: defaults::MAX_SEARCH_RESULTS,
            max_subjects_per_node: defaults::MAX_SUBJECTS_PER_NODE,
            max_works_per_author: defaults::MAX_WORKS_PER_AUTHOR,
            max_works_per_subject: defaults::MAX_WORKS_PER_SUBJECT,
            crawl_editions: defaults::CRAWL_EDITIONS,
            max_editions_per_work: defaults::MAX_EDITIONS_PER_WORK,
        }
    }
}
