//! The crawl index: which crawls exist, newest first, so `GET /crawls` pages through them
//! and the API counts the crawls with work ahead without scanning Redis's keys.
//!
//! Two sorted sets, scored by creation time in milliseconds: `<index>` holds every crawl,
//! `<index>:active` the crawls not known to be over. The store adds a crawl to both when it
//! creates it and removes it when it forgets or deletes it. The crawl's own scripts do not
//! touch the index (every key a script touches shares the crawl's hash tag, for Redis
//! Cluster), so the index is pruned lazily by its readers instead: a listed crawl whose
//! summary is gone leaves `<index>`, and a crawl found done or cancelled leaves `<index>:active`
//! when the active crawls are counted. The active set is therefore the crawls with work
//! ahead plus those that ended since the last count, and a listing reads at most a bounded
//! number of entries per page ([`MAX_SCANNED`]), however many crawls there are.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;

use super::status::PendingSources;
use super::{CrawlKeys, CrawlState, CrawlStatus, CrawlStore, StoreError, status};

/// The index's Redis key when none is set (`CRAWL_INDEX_PREFIX`).
pub const DEFAULT_INDEX_PREFIX: &str = "bookworm:crawls";

/// Entries one listing reads at most beyond the page itself: a filter that matches few
/// crawls answers a short page with a `next` cursor rather than reading the whole index.
pub const MAX_SCANNED: usize = 2000;

/// A listed crawl's status: gone (`None`), or corrupt on its own.
type StatusOf = Result<Option<CrawlStatus>, StoreError>;

/// Replies per crawl in the status pipeline: meta, counters, whether the claims exist, and
/// the legacy pending set's size ([`status::PendingSources`]).
const STATUS_READS: usize = 4;

/// Entries read per round trip while listing.
const BATCH: usize = 100;

/// A crawl reserved by the running-crawls ceiling whose summary is not written yet counts
/// as active for this long, so a concurrent count does not prune it before it exists.
const RESERVATION_MS: i64 = 60_000;

/// Where a listing starts and what it keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only crawls in this state (`blocked` means running while the User-Agent is blocked).
    pub state: Option<CrawlState>,
    /// The most crawls in the page.
    pub limit: usize,
    /// The `next` of the previous page: crawls older than the last one it listed.
    pub after: Option<String>,
}

/// One page of crawls, newest first.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CrawlPage {
    /// The crawls' statuses.
    pub crawls: Vec<CrawlStatus>,
    /// The cursor of the next page (`?after=`), or `None` when the index is exhausted.
    pub next: Option<String>,
}

/// A cursor, `<created ms>:<crawl id>`: the place of the last entry read, which stays valid
/// when that crawl is deleted meanwhile.
fn cursor(score: i64, crawl_id: &str) -> String {
    format!("{score}:{crawl_id}")
}

/// Reads a cursor; `None` if it is not one.
pub fn parse_cursor(text: &str) -> Option<(i64, String)> {
    let (score, id) = text.split_once(':')?;
    let score = score.parse().ok()?;
    (!id.is_empty()).then(|| (score, id.to_owned()))
}

fn active(index: &str) -> String {
    format!("{index}:active")
}

/// Adds a crawl created at `created` to the index and to the active crawls.
pub(super) fn add(pipe: &mut redis::Pipeline, index: &str, crawl_id: &str, created: DateTime<Utc>) {
    let score = created.timestamp_millis();
    pipe.zadd(index, crawl_id, score).ignore();
    // NX: a reservation ([`CrawlStore::reserve`]) keeps its score, hence its place in line.
    pipe.cmd("ZADD")
        .arg(active(index))
        .arg("NX")
        .arg(score)
        .arg(crawl_id)
        .ignore();
}

/// Takes a crawl out of the index.
pub(super) fn remove(pipe: &mut redis::Pipeline, index: &str, crawl_id: &str) {
    pipe.zrem(index, crawl_id).ignore();
    pipe.zrem(active(index), crawl_id).ignore();
}

impl CrawlStore {
    /// The same store with its crawl index under `index` (`CRAWL_INDEX_PREFIX`) instead of
    /// [`DEFAULT_INDEX_PREFIX`]: API deployments that share a Redis but not their crawls
    /// (and tests) keep separate lists and running-crawl counts.
    pub fn with_index_prefix(mut self, index: &str) -> Self {
        index.clone_into(&mut self.index);
        self
    }

    /// The crawl index's Redis key, under which the API keeps its other shared quota state.
    pub fn index_prefix(&self) -> &str {
        &self.index
    }

    /// A page of crawls, newest first; `blocked` (the User-Agent block is in force) shows
    /// running crawls as blocked, and filters them so.
    pub async fn list(&self, query: &ListQuery, blocked: bool) -> Result<CrawlPage, StoreError> {
        let mut conn = self.conn.clone();
        let (max, skip_from) = match query.after.as_deref().and_then(parse_cursor) {
            Some((score, id)) => (score.to_string(), Some((score, id))),
            None => ("+inf".to_owned(), None),
        };
        let mut crawls = Vec::new();
        let mut scanned = 0;
        let mut offset = 0;
        loop {
            let entries: Vec<(String, i64)> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(&self.index)
                .arg(&max)
                .arg("-inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(offset)
                .arg(BATCH)
                .query_async(&mut conn)
                .await?;
            let exhausted = entries.len() < BATCH;
            offset += entries.len();
            // Entries with the cursor's score come in reverse id order: those at or above
            // the cursor's id were on earlier pages.
            let fresh: Vec<(String, i64)> = entries
                .into_iter()
                .filter(|(id, score)| match &skip_from {
                    Some((s, cursor_id)) => score < s || id < cursor_id,
                    None => true,
                })
                .collect();
            let statuses = self.statuses(&fresh).await?;
            for ((id, score), status) in fresh.into_iter().zip(statuses) {
                scanned += 1;
                let last = cursor(score, &id);
                let mut status = match status {
                    Ok(Some(status)) => status,
                    // The summary is gone (deleted, or expired): the entry drops out.
                    Ok(None) => {
                        let mut pipe = redis::pipe();
                        pipe.zrem(&self.index, &id).ignore();
                        pipe.query_async::<()>(&mut conn).await?;
                        offset = offset.saturating_sub(1);
                        continue;
                    }
                    // One crawl's broken state must not hide every other crawl: it is left
                    // out of the page, and stays in the index for an operator to see.
                    Err(e) => {
                        tracing::warn!(crawl_id = %id, error = %e, "a crawl left out of a listing: its stored state is corrupt");
                        continue;
                    }
                };
                if blocked && status.state == CrawlState::Running {
                    status.state = CrawlState::Blocked;
                }
                if query.state.is_none_or(|s| s == status.state) {
                    crawls.push(status);
                }
                if crawls.len() >= query.limit || scanned >= query.limit + MAX_SCANNED {
                    return Ok(CrawlPage {
                        crawls,
                        next: Some(last),
                    });
                }
            }
            if exhausted {
                return Ok(CrawlPage { crawls, next: None });
            }
        }
    }

    /// The statuses of the index entries `entries`, in one round trip; each is corrupt on
    /// its own (a key of another type answers an error for that crawl only).
    async fn statuses(&self, entries: &[(String, i64)]) -> Result<Vec<StatusOf>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (id, _) in entries {
            let keys = CrawlKeys::new(id);
            pipe.hgetall(&keys.meta)
                .hgetall(&keys.counters)
                .exists(&keys.claims)
                .scard(&keys.legacy_pending);
        }
        let mut conn = self.conn.clone();
        let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        let mut out = Vec::with_capacity(entries.len());
        for ((id, _), replies) in entries.iter().zip(replies.chunks(STATUS_READS)) {
            out.push(Self::status_of(id, replies));
        }
        Ok(out)
    }

    fn status_of(id: &str, replies: &[redis::Value]) -> StatusOf {
        let corrupt = |e: redis::ParsingError| StoreError::Corrupt {
            crawl_id: id.to_owned(),
            detail: e.to_string(),
        };
        let [meta, counters, claims, legacy] = replies else {
            return Err(StoreError::Corrupt {
                crawl_id: id.to_owned(),
                detail: "a short reply to the status pipeline".to_owned(),
            });
        };
        let meta: BTreeMap<String, String> = redis::from_redis_value_ref(meta).map_err(corrupt)?;
        let counters: BTreeMap<String, u64> =
            redis::from_redis_value_ref(counters).map_err(corrupt)?;
        let claims: bool = redis::from_redis_value_ref(claims).map_err(corrupt)?;
        let legacy: u64 = redis::from_redis_value_ref(legacy).map_err(corrupt)?;
        status::from_stored(id, &meta, counters, PendingSources { claims, legacy })
    }

    /// The active crawls (not done or cancelled) with their creation score, pruning those
    /// found over.
    async fn active_crawls(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut conn = self.conn.clone();
        let key = active(&self.index);
        let members: Vec<(String, i64)> = conn.zrange_withscores(&key, 0, -1).await?;
        if members.is_empty() {
            return Ok(members);
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (id, _) in &members {
            pipe.hget(CrawlKeys::new(id).meta, "state");
        }
        // A crawl whose meta is corrupt (a key of another type) cannot run: it counts as over.
        let states: Vec<Option<String>> = pipe
            .query_async::<Vec<redis::Value>>(&mut conn)
            .await?
            .iter()
            .map(|v| match v {
                redis::Value::Nil => None,
                v => Some(redis::from_redis_value_ref(v).unwrap_or_else(|_| "corrupt".to_owned())),
            })
            .collect();
        let young = Utc::now().timestamp_millis() - RESERVATION_MS;
        let mut live = Vec::with_capacity(members.len());
        let mut over = Vec::new();
        for ((id, score), state) in members.into_iter().zip(states) {
            let ended = match state.as_deref() {
                Some("done" | "cancelled" | "corrupt") => true,
                None => score < young,
                Some(_) => false,
            };
            if ended {
                over.push(id);
            } else {
                live.push((id, score));
            }
        }
        if !over.is_empty() {
            conn.zrem::<_, _, ()>(&key, over).await?;
        }
        Ok(live)
    }

    /// How many crawls have work ahead: running, paused or blocked.
    pub async fn active_count(&self) -> Result<usize, StoreError> {
        Ok(self.active_crawls().await?.len())
    }

    /// Reserves a place for a new crawl under a ceiling of `limit` crawls with work ahead,
    /// before it is created: true if it fits. Without a lock: the new crawl is added to the
    /// active set first, then it fits if fewer than `limit` active crawls came before it, so
    /// of two concurrent creations for the last place only the earlier gets it. A refused
    /// reservation is withdrawn; a granted one becomes the crawl's entry when it is created
    /// (and is pruned a minute later if it never is).
    pub async fn reserve(
        &self,
        crawl_id: &str,
        created: DateTime<Utc>,
        limit: usize,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let key = active(&self.index);
        let score = created.timestamp_millis();
        conn.zadd::<_, _, _, ()>(&key, crawl_id, score).await?;
        let before = self
            .active_crawls()
            .await?
            .into_iter()
            .filter(|(id, s)| id != crawl_id && (*s, id.as_str()) < (score, crawl_id))
            .count();
        if before < limit {
            return Ok(true);
        }
        conn.zrem::<_, _, ()>(&key, crawl_id).await?;
        Ok(false)
    }

    /// Puts a crawl back among the active ones (a replay made a done crawl run again).
    pub(super) async fn reactivate(&self, crawl_id: &str) -> Result<(), StoreError> {
        let keys = CrawlKeys::new(crawl_id);
        let mut conn = self.conn.clone();
        let created: Option<String> = conn.hget(&keys.meta, "created_at").await?;
        let score = created
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map_or_else(|| Utc::now().timestamp_millis(), |t| t.timestamp_millis());
        conn.zadd::<_, _, _, ()>(active(&self.index), crawl_id, score)
            .await?;
        Ok(())
    }
}
