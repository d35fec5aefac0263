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
    /// Paused by an operator: workers hold its jobs in Redis without fetching them
    /// (`POST /crawls/{id}/resume` publishes them again).
    Paused,
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
            Self::Paused => "paused",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
            Self::Blocked => "blocked",
        }
    }

    /// Reads a state as the API spells it (`blocked` is never stored, but a client may
    /// filter by it).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "running" => Some(Self::Running),
            "paused" => Some(Self::Paused),
            "blocked" => Some(Self::Blocked),
            "done" => Some(Self::Done),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

impl CrawlState {
    /// Whether the crawl is over (done or cancelled): nothing of it runs any more, and only
    /// its summary and, for a retention, its working state remain.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Done | Self::Cancelled)
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
    /// `running`, `paused`, `blocked`, `done` or `cancelled`.
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

/// What a crawl's count of pending keys is read from besides its counters' `pending` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PendingSources {
    /// Whether the crawl's claims still exist: the counter is a summary field and outlives
    /// them, but once they have expired nothing is in flight any more (a cancelled crawl's
    /// late jobs never settle it).
    pub(super) claims: bool,
    /// Members of a legacy pending set not adopted into the counter yet (`claim_value.lua`).
    pub(super) legacy: u64,
}

impl PendingSources {
    /// The keys in flight, given the counters' `pending` field.
    pub(super) fn in_flight(self, counter: u64) -> u64 {
        if self.claims {
            counter + self.legacy
        } else {
            self.legacy
        }
    }
}

/// Reads a crawl's status from its stored meta and counters hashes and the other sources of
/// its pending count; `None` when the meta is gone (an unknown, expired or deleted crawl).
pub(super) fn from_stored(
    crawl_id: &str,
    meta: &BTreeMap<String, String>,
    counters: BTreeMap<String, u64>,
    pending: PendingSources,
) -> Result<Option<CrawlStatus>, super::StoreError> {
    if meta.is_empty() {
        return Ok(None);
    }
    let corrupt = |detail: String| super::StoreError::Corrupt {
        crawl_id: crawl_id.to_owned(),
        detail,
    };
    let field = |name: &str| {
        meta.get(name)
            .ok_or_else(|| corrupt(format!("missing {name}")))
    };
    let time = |name: &str| -> Result<DateTime<Utc>, super::StoreError> {
        DateTime::parse_from_rfc3339(field(name)?)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| corrupt(format!("{name}: {e}")))
    };
    let state = CrawlState::parse(field("state")?)
        .filter(|s| *s != CrawlState::Blocked)
        .ok_or_else(|| corrupt("unknown state".to_owned()))?;
    let seeds: Vec<String> =
        serde_json::from_str(field("seeds")?).map_err(|e| corrupt(format!("seeds: {e}")))?;
    let mut status_counters = Counters {
        in_flight: pending.in_flight(counters.get(super::PENDING).copied().unwrap_or(0)),
        ..Counters::default()
    };
    for (name, value) in counters {
        match name.split_once(':') {
            Some(("nodes", label)) => {
                status_counters.nodes.insert(label.to_owned(), value);
            }
            Some(("failed", reason)) => {
                status_counters.failed.insert(reason.to_owned(), value);
            }
            _ => match name.as_str() {
                "enqueued" => status_counters.enqueued = value,
                "fetched" => status_counters.fetched = value,
                "duplicates" => status_counters.duplicates = value,
                "skipped" => status_counters.skipped = value,
                "edges" => status_counters.edges = value,
                "edges_estimated" => status_counters.edges_estimated = value > 0,
                _ => {}
            },
        }
    }
    Ok(Some(CrawlStatus {
        crawl_id: crawl_id.to_owned(),
        state,
        seeds,
        max_depth: field("max_depth")?
            .parse()
            .map_err(|e| corrupt(format!("max_depth: {e}")))?,
        max_nodes: field("max_nodes")?
            .parse()
            .map_err(|e| corrupt(format!("max_nodes: {e}")))?,
        counters: status_counters,
        created_at: time("created_at")?,
        updated_at: time("updated_at")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counter is read only while the claims it counts exist; a legacy set's members
    /// count either way, as they did before the mark.
    #[test]
    fn keys_in_flight_are_the_counter_with_its_claims_plus_a_legacy_set() {
        let live = PendingSources {
            claims: true,
            legacy: 3,
        };
        assert_eq!(live.in_flight(4), 7);
        let expired = PendingSources {
            claims: false,
            legacy: 0,
        };
        assert_eq!(expired.in_flight(4), 0);
    }
}
