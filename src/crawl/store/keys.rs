//! Where one crawl's state lives in Redis: its key names, in the order every script takes
//! them, and the two fixed values of the claim format the Rust side writes itself.

/// The Redis keys of one crawl. The `{id}` hash tag keeps them in one cluster slot.
pub(super) struct CrawlKeys {
    pub(super) meta: String,
    pub(super) claims: String,
    /// The set of pending keys a crawl from before the pending mark keeps until its scripts
    /// have adopted every member (`claim_value.lua`); no crawl created since has one.
    pub(super) legacy_pending: String,
    pub(super) counters: String,
    pub(super) nodes: String,
    pub(super) edges: String,
    pub(super) failures: String,
    pub(super) started: String,
    pub(super) offspring: String,
    pub(super) held: String,
    pub(super) edge_sketch: String,
}

impl CrawlKeys {
    pub(super) fn new(crawl_id: &str) -> Self {
        let base = format!("bookworm:crawl:{{{crawl_id}}}");
        Self {
            meta: format!("{base}:meta"),
            claims: format!("{base}:claims"),
            legacy_pending: format!("{base}:pending"),
            counters: format!("{base}:counters"),
            nodes: format!("{base}:nodes"),
            edges: format!("{base}:edges"),
            failures: format!("{base}:failures"),
            started: format!("{base}:started"),
            offspring: format!("{base}:offspring"),
            held: format!("{base}:held"),
            edge_sketch: format!("{base}:edge-sketch"),
        }
    }

    /// Every key of the crawl, in the order the state-changing scripts take them
    /// (`lifecycle.lua`).
    pub(super) fn all(&self) -> [&str; 11] {
        [
            &self.meta,
            &self.claims,
            &self.legacy_pending,
            &self.counters,
            &self.nodes,
            &self.edges,
            &self.failures,
            &self.started,
            &self.offspring,
            &self.held,
            &self.edge_sketch,
        ]
    }
}

/// The counters' field that counts the pending claims (`claim_value.lua`).
pub(super) const PENDING: &str = "pending";

/// A seed's claim: depth 0, claimed by the crawl itself, pending (`claim_value.lua`).
pub(super) const SEED_CLAIM: &str = "+0|seed";
