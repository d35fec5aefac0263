//! Per-crawl state in Redis: who claimed which key at what depth, what is still in flight,
//! and the status counters an operator watches.
//!
//! The rules (the contract's "Crawl rules") that this module makes true:
//! - A key is claimed once per crawl when it is first enqueued, with its depth. Reaching it
//!   again by a shorter path lowers the depth and re-enqueues it, so the set crawled is the
//!   keys whose shortest distance from a seed is within the max depth, however jobs
//!   interleave.
//! - Dedupe is not a gate before processing: a claimed key stays *pending* until its outcome
//!   (a published node, or a DLQ record) is acknowledged and [`CrawlStore::finish`] is
//!   called. A job that crashed or timed out is therefore redelivered and run again, never
//!   lost to its own claim (the Go predecessor's lesson).
//! - Every claimed key ends in exactly one outcome. A job's children are claimed before its
//!   outputs are published, so a job that is dead-lettered instead (its publish timed out or
//!   was refused, or `JOB_TIMEOUT` fired around the claim) releases, when its failure is
//!   recorded, every child it still holds whose job never began; a frontier record of such a
//!   child that was delivered after all claims the key anew when its job begins.
//! - A reply that says the crawl's stored state is broken is [`StoreError::Corrupt`], not a
//!   Redis outage: retrying it cannot help.
//! - Counters are idempotent: nodes, edges and failures are counted once per key (or edge)
//!   however often a job is redelivered, so the final counters equal the graph's counts.
//! - The crawl is `done` when nothing is pending. A paused crawl's jobs are held, not run
//!   ([`pause`]): their keys stay pending, so a paused crawl is never `done`.
//! - State is bounded in time: once a crawl is done or cancelled, its working state (claims,
//!   the per-key sets) expires after a retention (`CRAWL_RETENTION`, counted from its last
//!   outcome), while its summary (meta: state, seeds, limits, times; counters) stays
//!   readable. A replay that makes the crawl run again keeps its working state again.
//! - State is bounded in size while the crawl runs: it grows with the keys claimed (issue
//!   18: at most 100 bytes each), not with the edges found nor with a second entry per key
//!   in flight. Whether a key is pending is a mark in its claim, and the counters' `pending`
//!   field counts the marked claims (`claim_value.lua`), so a key in flight costs a byte
//!   more than a settled one, not a set member (~60 bytes) of its own. The counter outlives
//!   the claims (counters are summary), so it is read as 0 once they have expired: a
//!   cancelled crawl's late jobs never settle it. A crawl running across the upgrade keeps
//!   its old set of pending keys until its scripts have adopted every member into the marks.
//!
//! Every operation is one Lua script, so a decision and its bookkeeping are atomic across all
//! workers. All keys of a crawl share a hash tag (`{crawl id}`) so the scripts also work on a
//! Redis Cluster.

mod index;
mod keys;
mod memory;
mod pause;
mod read;
mod status;

use keys::{CrawlKeys, PENDING, SEED_CLAIM};

pub use index::{CrawlPage, DEFAULT_INDEX_PREFIX, ListQuery, MAX_SCANNED, parse_cursor};
pub use memory::{HIGH_WATER, MemoryReading, MemoryWatch};
pub use pause::{Pause, Purge, Resume};
pub use status::{Counters, CrawlSpec, CrawlState, CrawlStatus};

use std::time::Duration;

use chrono::Utc;
use redis::Script;
use redis::aio::ConnectionManager;

use crate::message::{CrawlJob, FailureReason, Label, VERSION};

/// Errors from the crawl store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis is unreachable or refused the command: retry later, the work is not lost.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis is above [`HIGH_WATER`] of its `maxmemory`: work that adds state waits until
    /// finished crawls expire or are deleted, instead of failing on Redis's refusal.
    #[error("redis is nearly full ({} of {} bytes used): new work waits until finished crawls expire or are deleted", .0.used, .0.max)]
    NearlyFull(MemoryReading),
    /// Stored state that this build cannot read (hand-edited, or from an incompatible build).
    #[error("corrupt crawl state for {crawl_id}: {detail}")]
    Corrupt {
        /// The crawl.
        crawl_id: String,
        /// What was wrong.
        detail: String,
    },
}

impl StoreError {
    /// Sorts a Redis error: Redis being unreachable or busy is worth retrying, but an answer
    /// that says the crawl's own state is broken is not, and retrying it forever would hold
    /// every partition its jobs touch. Corrupt are: a reply that does not parse as what the
    /// script returns, a crawl key holding another Redis type (`WRONGTYPE`), and a script's
    /// own `CORRUPT` error (a stored claim it cannot read).
    fn of_redis(crawl_id: &str, error: redis::RedisError) -> Self {
        let corrupt = error.kind() == redis::ErrorKind::UnexpectedReturnType
            || matches!(error.code(), Some("WRONGTYPE" | "CORRUPT"));
        if corrupt {
            StoreError::Corrupt {
                crawl_id: crawl_id.to_owned(),
                detail: error.to_string(),
            }
        } else {
            StoreError::Redis(error)
        }
    }
}

/// What a worker should do with a job it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Crawl it, within these limits.
    Run {
        /// The crawl's depth limit.
        max_depth: u32,
        /// The crawl's node budget.
        max_nodes: usize,
    },
    /// Drop it: the key was already crawled at this depth, or a shorter path claimed it.
    Duplicate,
    /// Drop it: the crawl was cancelled.
    Cancelled,
    /// Drop it: no such crawl (expired, or never created through the API).
    UnknownCrawl,
    /// The crawl is paused: the job is kept in Redis (its key stays pending) and published
    /// again on resume; the delivery itself is complete, so its partition moves on.
    Held,
}

/// How a job ended, once its outputs were acknowledged by Kafka.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// A node was published (for a redirect, the target's key), with its relationships.
    Node {
        /// The node's key.
        key: String,
        /// The node's label.
        label: Label,
        /// Its relationships as `from|REL|to`.
        edges: Vec<String>,
    },
    /// The job produced no node on purpose (a free-text search).
    NoNode,
    /// The job ended in the DLQ.
    Failed(FailureReason),
}

/// A child discovered by expansion, to be claimed before its job is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// The child's key.
    pub key: String,
    /// Its depth (parent's depth + 1).
    pub depth: u32,
}

/// How often a service reads Redis's memory: a filling Redis is noticed well before its last
/// 10 %, at no cost worth counting.
pub const MEMORY_INTERVAL: Duration = Duration::from_secs(2);

/// How long a finished crawl's working state is kept when the caller sets none: the default
/// of `CRAWL_RETENTION`, a week, long enough to replay its DLQ after a weekend.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How many distinct edges a crawl counts exactly before it estimates: the exact set costs
/// about 80 bytes an edge, the estimate (a HyperLogLog, standard error 0.81 %) 12 KB at most
/// however many edges there are. Ten thousand keeps every crawl of a few hundred nodes exact
/// and caps the set near 800 KB for crawls of millions.
pub const EXACT_EDGE_COUNT: u64 = 10_000;

/// The expiry helpers every state-changing script starts with (keys in [`CrawlKeys::all`]'s
/// order, the retention in seconds as the first argument).
const LIFECYCLE: &str = include_str!("lifecycle.lua");

/// How a claim's value is read and written, for every script that touches claims.
const CLAIM_VALUE: &str = include_str!("claim_value.lua");

/// A script with the claim helpers in front of it.
fn with_claim_value(body: &str) -> Script {
    Script::new(&format!("{CLAIM_VALUE}\n{body}"))
}

/// A script with the lifecycle and claim helpers in front of it.
fn with_lifecycle(body: &str) -> Script {
    Script::new(&format!("{LIFECYCLE}\n{CLAIM_VALUE}\n{body}"))
}

/// Claims are stored as `[+]depth|tag[*]` (`claim_value.lua`): the tag names the claimer
/// (the parent job), which may re-enqueue its own pending children when it is redelivered,
/// while siblings reaching the same pending key do not enqueue it again (that would fetch
/// one key once per sibling). The `+` marks the key pending and the `*` its node counted, so
/// neither needs a second per-key structure.
const BEGIN: &str = include_str!("begin.lua");

const CLAIM: &str = include_str!("claim.lua");

const FINISH: &str = include_str!("finish.lua");

const CANCEL: &str = include_str!("cancel.lua");

/// Puts a dead-lettered key back in flight for `bookworm dlq replay`: its failure is taken
/// off the counters, it is claimed at the job's depth and pending again, and a `done` crawl is
/// `running` again, so the replayed job passes BEGIN and the crawl is not `done` before it ends.
const REQUEUE: &str = include_str!("requeue.lua");

/// What [`CrawlStore::requeue`] did with a dead-lettered key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// The key is pending again: publish its job.
    Requeued,
    /// A job of the key is already in flight: publishing another would only duplicate it.
    AlreadyPending,
    /// The crawl was cancelled: its jobs are not run any more.
    Cancelled,
    /// No such crawl (expired): a job for it would be dropped.
    UnknownCrawl,
}

/// How a job names itself when it claims children: `depth|key`. [`CrawlStore::finish`]
/// finds the job's claims under the same name, so a handler must claim under this one.
pub fn claimer(key: &str, depth: u32) -> String {
    format!("{depth}|{key}")
}

/// The crawl state of every crawl, in Redis.
#[derive(Clone)]
pub struct CrawlStore {
    conn: ConnectionManager,
    begin: Script,
    claim: Script,
    finish: Script,
    cancel: Script,
    requeue: Script,
    pause: Script,
    resume: Script,
    /// The Redis key of the crawl index ([`index`]); the active crawls are under
    /// `<index>:active`.
    index: String,
    /// Seconds a done or cancelled crawl's working state is kept.
    retention_secs: u64,
    /// Distinct edges counted exactly before the count is estimated.
    exact_edges: u64,
    /// How full Redis is: new crawls and new jobs wait while it is nearly full.
    memory: MemoryWatch,
}

impl CrawlStore {
    /// Connects to Redis. The connection manager reconnects by itself after Redis restarts.
    /// `target` is the services' `RedisArgs` (URL and CA file) or, in tests, a bare URL.
    pub async fn connect(
        target: &(impl crate::backend::RedisTarget + ?Sized),
    ) -> Result<Self, StoreError> {
        let conn = crate::backend::redis_connection(target).await?;
        Ok(Self {
            conn,
            begin: with_lifecycle(BEGIN),
            claim: with_claim_value(CLAIM),
            finish: with_lifecycle(FINISH),
            cancel: with_lifecycle(CANCEL),
            requeue: with_lifecycle(REQUEUE),
            pause: Script::new(pause::PAUSE),
            resume: with_lifecycle(pause::RESUME),
            index: DEFAULT_INDEX_PREFIX.to_owned(),
            retention_secs: DEFAULT_RETENTION.as_secs(),
            exact_edges: EXACT_EDGE_COUNT,
            memory: MemoryWatch::default(),
        })
    }

    /// The same store, keeping a done or cancelled crawl's working state for `retention`
    /// (`CRAWL_RETENTION`; at least a second, Redis's smallest expiry) instead of
    /// [`DEFAULT_RETENTION`]. Every process that finishes or cancels crawls (the worker, the
    /// API) should set the same value: the last one to touch a crawl sets its expiry.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention_secs = retention.as_secs().max(1);
        self
    }

    /// The same store, counting a crawl's distinct edges exactly only up to `limit` instead of
    /// [`EXACT_EDGE_COUNT`] and estimating beyond: lets a test reach the estimate with a
    /// handful of edges.
    pub fn with_exact_edge_count(mut self, limit: u64) -> Self {
        self.exact_edges = limit;
        self
    }

    /// How long a done or cancelled crawl's working state is kept.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_secs)
    }

    /// Whether Redis answers, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Records a new crawl with its seeds claimed at depth 0 and pending. Call before the
    /// seed jobs are published, and [`CrawlStore::forget`] if publishing them fails, so a
    /// status never exists without its seeds in the frontier.
    pub async fn create(&self, spec: &CrawlSpec) -> Result<(), StoreError> {
        self.check_room()?;
        let keys = CrawlKeys::new(&spec.crawl_id);
        let created = Utc::now();
        let now = created.to_rfc3339();
        let seeds = serde_json::to_string(&spec.seeds).map_err(|e| StoreError::Corrupt {
            crawl_id: spec.crawl_id.clone(),
            detail: e.to_string(),
        })?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &keys.meta,
                &[
                    ("state", "running"),
                    ("seeds", seeds.as_str()),
                    ("max_depth", &spec.max_depth.to_string()),
                    ("max_nodes", &spec.max_nodes.to_string()),
                    ("created_at", &now),
                    ("updated_at", &now),
                ],
            )
            .ignore();
        // The pending counter counts claims, so a seed listed twice counts once.
        let distinct: std::collections::BTreeSet<&str> =
            spec.seeds.iter().map(String::as_str).collect();
        for seed in &distinct {
            pipe.hset(&keys.claims, *seed, SEED_CLAIM).ignore();
        }
        pipe.hincr(&keys.counters, "enqueued", spec.seeds.len())
            .ignore();
        pipe.hincr(&keys.counters, PENDING, distinct.len()).ignore();
        index::add(&mut pipe, &self.index, &spec.crawl_id, created);
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Removes every trace of a crawl (used when its seeds could not be enqueued).
    pub async fn forget(&self, crawl_id: &str) -> Result<(), StoreError> {
        let keys = CrawlKeys::new(crawl_id);
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic().del(&keys.all()[..]).ignore();
        index::remove(&mut pipe, &self.index, crawl_id);
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Decides whether a received job should run, for a job known only by its key and depth
    /// (a held job is kept as a job of that key and depth descending from itself). Workers
    /// call [`CrawlStore::begin_job`], which keeps the whole job.
    pub async fn begin(&self, crawl_id: &str, key: &str, depth: u32) -> Result<Begin, StoreError> {
        let job = CrawlJob {
            v: VERSION,
            crawl_id: crawl_id.to_owned(),
            key: key.to_owned(),
            depth,
            seed: key.to_owned(),
            parent: None,
            enqueued_at: Utc::now(),
            min_revision: None,
        };
        self.begin_job(&job).await
    }

    /// Decides whether a received job should run. While its crawl is paused the job is held
    /// (kept in Redis, whole, to be published again on resume: [`Begin::Held`]).
    pub async fn begin_job(&self, job: &CrawlJob) -> Result<Begin, StoreError> {
        let (crawl_id, key, depth) = (job.crawl_id.as_str(), job.key.as_str(), job.depth);
        let payload = serde_json::to_string(job).map_err(|e| StoreError::Corrupt {
            crawl_id: crawl_id.to_owned(),
            detail: e.to_string(),
        })?;
        self.check_room()?;
        let keys = CrawlKeys::new(crawl_id);
        let mut conn = self.conn.clone();
        let mut invocation = self.begin.prepare_invoke();
        for k in keys.all() {
            invocation.key(k);
        }
        let reply: Vec<Option<String>> = invocation
            .arg(self.retention_secs)
            .arg(key)
            .arg(depth)
            .arg(payload)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreError::of_redis(crawl_id, e))?;
        let corrupt = |detail: &str| StoreError::Corrupt {
            crawl_id: crawl_id.to_owned(),
            detail: detail.to_owned(),
        };
        match reply.first().and_then(|s| s.as_deref()) {
            Some("run") => {
                let number = |i: usize| -> Result<u64, StoreError> {
                    reply
                        .get(i)
                        .and_then(|v| v.as_deref())
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| corrupt("limits are not numbers"))
                };
                Ok(Begin::Run {
                    max_depth: number(1)? as u32,
                    max_nodes: number(2)? as usize,
                })
            }
            Some("duplicate") => Ok(Begin::Duplicate),
            Some("cancelled") => Ok(Begin::Cancelled),
            Some("unknown") => Ok(Begin::UnknownCrawl),
            Some("held") => Ok(Begin::Held),
            _ => Err(corrupt("unexpected reply from the begin script")),
        }
    }

    /// Claims children found by a job (`claimer` names that job: [`claimer`] of its key and
    /// depth) and returns, per child, whether its job must be published: new keys within the
    /// budget, keys reached by a shorter path, and this claimer's own still-pending children
    /// (its redelivery re-enqueues them, since the first run may have died before
    /// publishing). The claims won are remembered under the claimer until its
    /// [`CrawlStore::finish`]: if the job ends dead-lettered, the claims whose job never
    /// began are released, so no child waits forever for a job nobody published.
    pub async fn claim(
        &self,
        crawl_id: &str,
        claimer: &str,
        max_nodes: usize,
        children: &[Child],
    ) -> Result<Vec<bool>, StoreError> {
        if children.is_empty() {
            return Ok(Vec::new());
        }
        let keys = CrawlKeys::new(crawl_id);
        let mut invocation = self.claim.prepare_invoke();
        invocation
            .key(&keys.meta)
            .key(&keys.claims)
            .key(&keys.legacy_pending)
            .key(&keys.counters)
            .key(&keys.offspring)
            .arg(max_nodes)
            .arg(claimer);
        for child in children {
            invocation.arg(&child.key).arg(child.depth);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreError::of_redis(crawl_id, e))?;
        if reply.len() != children.len() {
            return Err(StoreError::Corrupt {
                crawl_id: crawl_id.to_owned(),
                detail: format!(
                    "the claim script answered {} decisions for {} children",
                    reply.len(),
                    children.len()
                ),
            });
        }
        Ok(reply.into_iter().map(|v| v == 1).collect())
    }

    /// Records a job's outcome once Kafka acknowledged its outputs; marks the crawl done
    /// when nothing is pending any more. Idempotent: a redelivered job counts nothing twice.
    pub async fn finish(
        &self,
        crawl_id: &str,
        key: &str,
        depth: u32,
        outcome: &Finish,
    ) -> Result<(), StoreError> {
        let keys = CrawlKeys::new(crawl_id);
        let mut invocation = self.finish.prepare_invoke();
        for k in keys.all() {
            invocation.key(k);
        }
        invocation
            .arg(self.retention_secs)
            .arg(self.exact_edges)
            .arg(key)
            .arg(depth);
        match outcome {
            Finish::Node { key, label, edges } => {
                invocation
                    .arg("node")
                    .arg(Utc::now().to_rfc3339())
                    .arg(key)
                    .arg(label.as_str());
                for edge in edges {
                    invocation.arg(edge);
                }
            }
            Finish::NoNode => {
                invocation.arg("none").arg(Utc::now().to_rfc3339());
            }
            Finish::Failed(reason) => {
                invocation
                    .arg("failed")
                    .arg(Utc::now().to_rfc3339())
                    .arg(reason.as_str());
            }
        }
        let mut conn = self.conn.clone();
        invocation
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(|e| StoreError::of_redis(crawl_id, e))?;
        Ok(())
    }

    /// Cancels a running crawl. Returns false if the crawl is unknown.
    pub async fn cancel(&self, crawl_id: &str) -> Result<bool, StoreError> {
        let keys = CrawlKeys::new(crawl_id);
        let mut conn = self.conn.clone();
        let mut invocation = self.cancel.prepare_invoke();
        for k in keys.all() {
            invocation.key(k);
        }
        let found: i64 = invocation
            .arg(self.retention_secs)
            .arg(Utc::now().to_rfc3339())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreError::of_redis(crawl_id, e))?;
        Ok(found == 1)
    }

    /// Makes a dead-lettered key of a crawl pending again at `depth`, before its job is
    /// published anew (`bookworm dlq replay`). Idempotent while the job is in flight.
    pub async fn requeue(
        &self,
        crawl_id: &str,
        key: &str,
        depth: u32,
    ) -> Result<Requeue, StoreError> {
        let keys = CrawlKeys::new(crawl_id);
        let mut conn = self.conn.clone();
        let mut invocation = self.requeue.prepare_invoke();
        for k in keys.all() {
            invocation.key(k);
        }
        let reply: String = invocation
            .arg(self.retention_secs)
            .arg(key)
            .arg(depth)
            .arg(Utc::now().to_rfc3339())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreError::of_redis(crawl_id, e))?;
        match reply.as_str() {
            "requeued" => {
                self.reactivate(crawl_id).await?;
                Ok(Requeue::Requeued)
            }
            "pending" => Ok(Requeue::AlreadyPending),
            "cancelled" => Ok(Requeue::Cancelled),
            "unknown" => Ok(Requeue::UnknownCrawl),
            other => Err(StoreError::Corrupt {
                crawl_id: crawl_id.to_owned(),
                detail: format!("unexpected reply from the requeue script: {other}"),
            }),
        }
    }

    /// The connection, for state kept beside the crawls (the User-Agent block).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store's default retention is `CRAWL_RETENTION`'s default, so a process that does
    /// not pass the setting in still keeps the documented week.
    #[test]
    fn the_default_retention_is_crawl_retentions_default() {
        assert_eq!(
            crate::config::parse_duration("7d").expect("7d parses"),
            DEFAULT_RETENTION
        );
    }
}
