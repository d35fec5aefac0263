//! Reading a crawl without changing it: its status for the API, and how much work it still
//! has to hand out, for the workers' fair shares.

use std::collections::BTreeMap;

use super::status::PendingSources;
use super::{CrawlKeys, CrawlStatus, CrawlStore, PENDING, StoreError, status};

impl CrawlStore {
    /// For each of `crawl_ids`, how many keys it still has to hand out: its keys pending while
    /// running (or blocked, which resumes by itself), else 0. Unknown crawls have none. Four
    /// O(1) reads a crawl (`claim_value.lua` says why the pending count has several sources),
    /// so the fair shares stay cheap however large the crawls are.
    pub async fn backlogs(&self, crawl_ids: &[String]) -> Result<Vec<u64>, StoreError> {
        let mut pipe = redis::pipe();
        for id in crawl_ids {
            let keys = CrawlKeys::new(id);
            pipe.hget(&keys.meta, "state")
                .hget(&keys.counters, PENDING)
                .exists(&keys.claims)
                .scard(&keys.legacy_pending);
        }
        let mut conn = self.conn.clone();
        let replies: Vec<(Option<String>, Option<u64>, bool, u64)> =
            pipe.query_async(&mut conn).await?;
        Ok(replies
            .into_iter()
            .map(|(state, counter, claims, legacy)| {
                if matches!(state.as_deref(), Some("running" | "blocked")) {
                    PendingSources { claims, legacy }.in_flight(counter.unwrap_or(0))
                } else {
                    0
                }
            })
            .collect())
    }

    /// The crawl's status, or `None` if it is unknown.
    pub async fn status(&self, crawl_id: &str) -> Result<Option<CrawlStatus>, StoreError> {
        let keys = CrawlKeys::new(crawl_id);
        let mut conn = self.conn.clone();
        type Reply = (BTreeMap<String, String>, BTreeMap<String, u64>, bool, u64);
        let (meta, counters, claims, legacy): Reply = redis::pipe()
            .hgetall(&keys.meta)
            .hgetall(&keys.counters)
            .exists(&keys.claims)
            .scard(&keys.legacy_pending)
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError::of_redis(crawl_id, e))?;
        status::from_stored(crawl_id, &meta, counters, PendingSources { claims, legacy })
    }
}
