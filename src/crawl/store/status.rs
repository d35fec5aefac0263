//! What a crawl is and how it stands, as the API and the operator commands show it: its
//! spec, its state and its counters.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The life of a crawl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrawlState {
    /// Jobs are pending.
    Running,
    /// Nothing is pending any more.
    Done,
    /// Cancelled by an operator; remaining jobs are dropped and counted as skipped.
    Cancelled,
    /// Running, but Open Library refuses our User-Agent: its jobs wait until an operator
    /// lifts the block. Never stored: the API shows it over `Running` while the block holds.
    Blocked,
}

impl CrawlState {
    /// The state as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
            Self::Blocked => "blocked",
        }
    }

    /// Reads a stored state (`blocked` is never stored).
    pub(super) fn parse(text: &str) -> Option<Self> {
        match text {
            "running" => Some(Self::Running),
            "done" => Some(Self::Done),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// What a crawl was asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrawlSpec {
    /// The crawl's id.
    pub crawl_id: String,
    /// Seed keys as jobs see them (`/works/…`, `search:<text>`…).
    pub seeds: Vec<String>,
    /// Depth limit.
    pub max_depth: u32,
    /// Budget of claimed keys.
    pub max_nodes: usize,
}

/// A crawl's status, as `GET /crawls/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrawlStatus {
    /// The crawl's id.
    pub crawl_id: String,
    /// `running`, `blocked`, `done` or `cancelled`.
    pub state: CrawlState,
    /// Seed keys.
    pub seeds: Vec<String>,
    /// Depth limit.
    pub max_depth: u32,
    /// Budget of claimed keys.
    pub max_nodes: usize,
    /// Progress counters.
    pub counters: Counters,
    /// When the crawl was created.
    pub created_at: DateTime<Utc>,
    /// When its state last changed.
    pub updated_at: DateTime<Utc>,
}

/// Progress counters of a crawl.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Jobs enqueued (seeds, children, and re-enqueues by a shorter path), less the claims a
    /// dead-lettered parent released, plus the jobs that claimed themselves when they began.
    pub enqueued: u64,
    /// Distinct keys whose node was published.
    pub fetched: u64,
    /// Claimed keys whose outcome is not recorded yet.
    pub in_flight: u64,
    /// Jobs dropped because their key was already crawled at the same or a shorter depth.
    pub duplicates: u64,
    /// Jobs dropped because the crawl was cancelled or its node budget was spent.
    pub skipped: u64,
    /// Distinct nodes published, by label.
    pub nodes: BTreeMap<String, u64>,
    /// Distinct relationships published: exact up to [`super::EXACT_EDGE_COUNT`], then an
    /// estimate (see `edges_estimated`).
    pub edges: u64,
    /// Whether `edges` is an estimate (standard error 0.81 %): a crawl with more distinct
    /// edges than are worth storing one by one.
    #[serde(default)]
    pub edges_estimated: bool,
    /// Keys that ended in the DLQ, by reason.
    pub failed: BTreeMap<String, u64>,
}
