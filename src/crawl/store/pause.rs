//! Pausing, resuming and deleting a crawl.
//!
//! Why paused jobs are *held* rather than parked: a parked message (the way jobs wait out a
//! User-Agent block) keeps its slot and its offset uncommitted for as long as it waits, so a
//! crawl paused for a day would hold every partition its jobs reach, other crawls' jobs with
//! it (the committed offset cannot pass the parked one, and the partition's slots fill with
//! parked jobs). A held job instead is written whole into the crawl's `held` hash by the
//! begin script, atomically with the check that the crawl is paused; its key stays pending
//! (so the crawl is not `done`), no request is sent for it, nothing is counted, and its
//! delivery completes at once (the worker skips recording an outcome for it), so the
//! partition commits past it and moves on. Resume flips the state back to `running` and the
//! caller publishes the held jobs again ([`CrawlStore::held_jobs`]); each stays held until
//! its published copy begins, so a resume that fails half-way loses nothing and is simply
//! run again (a job published twice runs twice, which at-least-once allows; its counters
//! are idempotent).

use redis::AsyncCommands;

use super::{CrawlKeys, CrawlState, CrawlStore, StoreError, index};
use crate::message::CrawlJob;

/// See `pause.lua`.
pub(super) const PAUSE: &str = include_str!("pause.lua");
/// See `resume.lua`.
pub(super) const RESUME: &str = include_str!("resume.lua");
/// See `purge.lua`.
const PURGE: &str = include_str!("purge.lua");

/// What [`CrawlStore::pause`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// The crawl is paused (it was running, or already paused).
    Paused,
    /// The crawl is over (done or cancelled): there is nothing to pause.
    Finished(CrawlState),
    /// No such crawl.
    Unknown,
}

/// What [`CrawlStore::resume`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The crawl runs (again): publish its held jobs.
    Running,
    /// Nothing was left pending: the crawl is done.
    Done,
    /// The crawl was cancelled: nothing to resume.
    Cancelled,
    /// No such crawl.
    Unknown,
}

/// What [`CrawlStore::purge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purge {
    /// Every key of the crawl is gone, and it left the index.
    Purged,
    /// The crawl has work ahead (running or paused): cancel it first.
    Active(CrawlState),
    /// No such crawl.
    Unknown,
}

fn state_of(crawl_id: &str, reply: &str) -> Result<CrawlState, StoreError> {
    CrawlState::parse(reply).ok_or_else(|| StoreError::Corrupt {
        crawl_id: crawl_id.to_owned(),
        detail: format!("unexpected state {reply:?}"),
    })
}

impl CrawlStore {
    /// Pauses a running crawl: workers hold its jobs from now on (jobs already fetching end
    /// normally, and their children are claimed and held). Idempotent.
    pub async fn pause(&self, crawl_id: &str) -> Result<Pause, StoreError> {
        let keys = CrawlKeys::new(crawl_id);
        let mut conn = self.conn.clone();
        let reply: String = self
            .pause
            .key(&keys.meta)
            .arg(chrono::Utc::now().to_rfc3339())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreError::of_redis(crawl_id, e))?;
        match reply.as_str() {
            "unknown" => Ok(Pause::Unknown),
            "paused" | "running" => Ok(Pause::Paused),
            other => Ok(Pause::Finished(state_of(crawl_id, other)?)),
        }
    }

    /// Resumes a paused crawl (a running one is left as it is, so a resume that failed
    /// half-way can be repeated). Then publish [`CrawlStore::held_jobs`].
    pub async fn resume(&self, crawl_id: &str) -> Result<Resume, StoreError> {
        let keys = CrawlKeys::new(crawl_id);
        let mut conn = self.conn.clone();
        let mut invocation = self.resume.prepare_invoke();
        for k in keys.all() {
            invocation.key(k);
        }
        let reply: String = invocation
            .arg(self.retention_secs)
            .arg(chrono::Utc::now().to_rfc3339())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreError::of_redis(crawl_id, e))?;
        match reply.as_str() {
            "unknown" => Ok(Resume::Unknown),
            "running" | "paused" => Ok(Resume::Running),
            "done" => Ok(Resume::Done),
            "cancelled" => Ok(Resume::Cancelled),
            other => Err(StoreError::Corrupt {
                crawl_id: crawl_id.to_owned(),
                detail: format!("unexpected reply from the resume script: {other}"),
            }),
        }
    }

    /// One batch of the crawl's held jobs, from `cursor` (0 to start; the answer's cursor is
    /// 0 again after the last batch): a resume publishes them batch by batch, so a crawl
    /// with a million held jobs never sits in memory whole. A job stays held until its
    /// published copy begins.
    pub async fn held_jobs(
        &self,
        crawl_id: &str,
        cursor: u64,
        count: usize,
    ) -> Result<(u64, Vec<CrawlJob>), StoreError> {
        let keys = CrawlKeys::new(crawl_id);
        let mut conn = self.conn.clone();
        let (next, entries): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
            .arg(&keys.held)
            .arg(cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError::of_redis(crawl_id, e))?;
        let mut jobs = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let job = value
                .split_once('|')
                .and_then(|(_, json)| serde_json::from_str::<CrawlJob>(json).ok())
                .ok_or_else(|| StoreError::Corrupt {
                    crawl_id: crawl_id.to_owned(),
                    detail: format!("held job of {key} does not parse"),
                })?;
            jobs.push(job);
        }
        Ok((next, jobs))
    }

    /// How many jobs of the crawl are held (paused, or resumed and not begun yet).
    pub async fn held_count(&self, crawl_id: &str) -> Result<u64, StoreError> {
        let keys = CrawlKeys::new(crawl_id);
        let mut conn = self.conn.clone();
        conn.hlen(&keys.held)
            .await
            .map_err(|e| StoreError::of_redis(crawl_id, e))
    }

    /// Deletes a done or cancelled crawl's state at once, summary included, and takes it
    /// out of the index (`bookworm crawls delete`); a crawl with work ahead is refused. A
    /// late job of a deleted crawl is dropped as of an unknown crawl.
    pub async fn purge(&self, crawl_id: &str) -> Result<Purge, StoreError> {
        let keys = CrawlKeys::new(crawl_id);
        let mut conn = self.conn.clone();
        let script = redis::Script::new(PURGE);
        let mut invocation = script.prepare_invoke();
        for k in keys.all() {
            invocation.key(k);
        }
        let reply: String = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreError::of_redis(crawl_id, e))?;
        match reply.as_str() {
            "purged" => {
                let mut pipe = redis::pipe();
                index::remove(&mut pipe, &self.index, crawl_id);
                pipe.query_async::<()>(&mut conn).await?;
                Ok(Purge::Purged)
            }
            "unknown" => {
                // An index entry whose summary is gone drops out here too.
                let mut pipe = redis::pipe();
                index::remove(&mut pipe, &self.index, crawl_id);
                pipe.query_async::<()>(&mut conn).await?;
                Ok(Purge::Unknown)
            }
            other => Ok(Purge::Active(state_of(crawl_id, other)?)),
        }
    }
}
