//! `bookworm follow`: keeps the graph fresh from Open Library's change feed, spending the API
//! budget only on what changed.
//!
//! ```text
//! /recentchanges/Y/M/D/<kind>.json ─▶ follow ─(revision newer than the graph's?)─▶ [frontier]
//!        (day by day, kind by kind)     │  cursor + lease in Redis                  │
//!                                       └── Neo4j: the graph's revision of each key  ▼
//!                                                                  worker ─▶ [results] ─▶ graph-writer
//! ```
//!
//! A round, run by the replica holding the lease ([`cursor`]):
//! 1. for the cursor's day, each kind of `FOLLOW_KINDS` is read down to the last id already
//!    seen ([`feed::read_since`]); the entries' keys of works, authors and editions are
//!    collected with the highest revision the feed names for each;
//! 2. each key's revision in the graph is looked up (a record's node, or the tombstone a
//!    delete or merge left); a key the graph holds at that revision or newer is skipped;
//! 3. the rest become freshness crawls of at most `FOLLOW_BATCH_KEYS` seeds, at depth
//!    `FOLLOW_DEPTH`, through the same crawl store and frontier as any crawl: the workers
//!    fetch them under the same politeness budget and egress pool, and each job carries the
//!    revision the feed named ([`crate::message::CrawlJob::min_revision`]) so a cached copy
//!    older than it is not used and a record now deleted or redirected is written as gone;
//! 4. only once every job is acknowledged by Kafka does the cursor move (per kind, to the
//!    highest id read). A crash before that re-reads the same entries next time: at least
//!    once, never lost;
//! 5. every round reads each open day, from the cursor's first to today: a day stays open
//!    (read again every `FOLLOW_POLL_INTERVAL` for late entries) until it ended more than
//!    `FOLLOW_DAY_GRACE` ago, and is closed by the first read after that.
//!
//! Each round's crawls are ordinary crawls (`follow:<name>:<uuid>`): visible in `GET /crawls`,
//! pausable, and expiring after `CRAWL_RETENTION` like any other, so the follower keeps no
//! per-key state of its own.

pub mod cursor;
pub mod feed;
pub mod service;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use self::cursor::{Cursor, CursorError, CursorStore};
use self::feed::{ChangeEntry, FeedError};
use crate::crawl::client::OpenLibraryClient;
use crate::crawl::store::{CrawlSpec, CrawlStore, StoreError};
use crate::graph::{GraphStore, WriteError};
use crate::kafka::publish::{PublishError, Publisher, Record};
use crate::message::{CrawlJob, Label, VERSION};
use crate::process::health::Liveness;
use crate::process::metrics::FollowMetrics;

/// Keys claimed per seed of a depth-1 freshness crawl at most: a record's neighbours (an
/// author's first 50 works, a work's authors and first 10 subjects) with room to spare.
const NEIGHBOURS_PER_KEY: usize = 64;

/// Why a round failed; the next round retries from the unchanged cursor.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The feed could not be read.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// The cursor could not be read or written.
    #[error("cursor: {0}")]
    Cursor(#[from] CursorError),
    /// The graph's revisions could not be read.
    #[error("graph revisions: {0}")]
    Graph(#[from] WriteError),
    /// A freshness crawl could not be recorded.
    #[error("crawl store: {0}")]
    Store(#[from] StoreError),
    /// A freshness crawl's jobs could not be published (the crawl was forgotten again).
    #[error("publishing jobs: {0}")]
    Publish(#[from] PublishError),
}

/// The follower's settings, read from `FollowArgs` by [`service`].
#[derive(Debug, Clone)]
pub struct FollowSettings {
    /// Change kinds read, in this order.
    pub kinds: Vec<String>,
    /// The day to start at when no cursor exists.
    pub since: NaiveDate,
    /// Depth of the freshness crawls (0 or 1).
    pub depth: u32,
    /// Names the crawls (`follow:<name>:…`).
    pub name: String,
    /// Pause between rounds once caught up.
    pub poll_interval: Duration,
    /// Most seeds per freshness crawl.
    pub batch_keys: usize,
    /// How long after its end a day is still read.
    pub day_grace: Duration,
    /// The frontier topic.
    pub frontier: String,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundReport {
    /// New entries read.
    pub changes: u64,
    /// Keys enqueued.
    pub enqueued: u64,
    /// Keys skipped because the graph is as new.
    pub not_newer: u64,
    /// Days finished and left behind.
    pub days_closed: u64,
    /// The round lost the lease before it could move the cursor.
    pub lost_lease: bool,
}

/// The change-feed follower.
pub struct Follower {
    /// Reads the feed politely.
    pub client: OpenLibraryClient,
    /// The cursor and lease.
    pub cursor: CursorStore,
    /// Where the graph's revisions are read.
    pub graph: GraphStore,
    /// Where freshness crawls are recorded.
    pub store: CrawlStore,
    /// Publishes their jobs.
    pub publisher: Publisher,
    /// Settings.
    pub settings: FollowSettings,
    /// Metrics.
    pub metrics: FollowMetrics,
    /// Told after every round, so a wedged follower fails its liveness probe.
    pub liveness: Liveness,
}

/// The label a changed key names, for the records a graph holds (works, authors, editions).
fn record_label(key: &str) -> Option<Label> {
    Label::of_key(key).filter(|l| *l != Label::Subject)
}

impl Follower {
    /// Runs rounds until `shutdown`: leads when it can take the lease, waits otherwise.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut newest: Option<NaiveDateTime> = None;
        loop {
            let pause = match self.cursor.lead().await {
                Ok(true) => {
                    self.metrics.leader.set(1);
                    match self.round(&mut newest).await {
                        Ok(report) => {
                            if report.changes > 0 || report.days_closed > 0 {
                                tracing::info!(?report, "follow round");
                            }
                            if report.lost_lease {
                                self.metrics.leader.set(0);
                            }
                            self.settings.poll_interval
                        }
                        Err(e) => {
                            self.metrics.round_errors.inc();
                            tracing::warn!(error = %e, "follow round failed; retrying");
                            self.settings.poll_interval.min(Duration::from_secs(10))
                        }
                    }
                }
                Ok(false) => {
                    self.metrics.leader.set(0);
                    self.settings.poll_interval.min(Duration::from_secs(5))
                }
                Err(e) => {
                    self.metrics.leader.set(0);
                    self.metrics.round_errors.inc();
                    tracing::warn!(error = %e, "cannot reach the follower's lease");
                    Duration::from_secs(5)
                }
            };
            self.liveness.polled();
            if let Some(at) = newest {
                let lag = Utc::now().naive_utc() - at;
                self.metrics
                    .cursor_lag_seconds
                    .set(lag.num_seconds().max(0));
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if let Err(e) = self.cursor.release().await {
            tracing::warn!(error = %e, "could not release the follower's lease");
        }
        self.metrics.leader.set(0);
    }

    /// One round: reads every open day from the cursor's to today, enqueues what changed,
    /// moves the cursor after each day, and closes the days that are over. `newest` keeps
    /// the newest change time read.
    pub async fn round(
        &self,
        newest: &mut Option<NaiveDateTime>,
    ) -> Result<RoundReport, FollowError> {
        let mut report = RoundReport::default();
        let mut cursor = match self.cursor.load().await? {
            Some(cursor) => cursor,
            None => Cursor::at(self.settings.since),
        };
        let grace = TimeDelta::from_std(self.settings.day_grace).unwrap_or(TimeDelta::hours(1));
        let mut day = cursor.day;
        loop {
            let now = Utc::now().naive_utc();
            if day > now.date() {
                return Ok(report);
            }
            // Decided before the read, so a day closed now had its last entries in this read.
            let over = now >= day.and_time(NaiveTime::MIN) + TimeDelta::days(1) + grace;
            let mut entries = Vec::new();
            let mut read_up_to = Vec::new();
            for kind in &self.settings.kinds {
                let read =
                    feed::read_since(&self.client, day, kind, cursor.seen(day, kind)).await?;
                if read.capped {
                    self.metrics.capped_reads.inc();
                    tracing::warn!(%day, %kind, "the feed's cap hides older changes of this day and kind");
                }
                if let Some(top) = read.entries.iter().map(|e| e.id).max() {
                    read_up_to.push((kind.clone(), top));
                }
                entries.extend(read.entries);
            }
            report.changes += entries.len() as u64;
            self.metrics.changes_seen.inc_by(entries.len() as u64);
            if let Some(at) = entries.iter().map(|e| e.timestamp).max() {
                *newest = Some(newest.map_or(at, |n| n.max(at)));
            }
            let (enqueued, not_newer) = self.enqueue(&entries).await?;
            report.enqueued += enqueued;
            report.not_newer += not_newer;
            let before = cursor.clone();
            for (kind, top) in read_up_to {
                cursor.advance(day, &kind, top);
            }
            if over && day == cursor.day {
                cursor.close_day();
                report.days_closed += 1;
            }
            if cursor != before && !self.cursor.save(&cursor).await? {
                report.lost_lease = true;
                return Ok(report);
            }
            match day.succ_opt() {
                Some(next) => day = next,
                None => return Ok(report),
            }
        }
    }

    /// Enqueues the keys of `entries` the graph does not hold at their revision: counts of
    /// (enqueued, skipped as not newer).
    async fn enqueue(&self, entries: &[ChangeEntry]) -> Result<(u64, u64), FollowError> {
        let mut wanted: BTreeMap<String, Option<i64>> = BTreeMap::new();
        for change in entries.iter().flat_map(|e| &e.changes) {
            if record_label(&change.key).is_none() {
                self.metrics
                    .keys_skipped
                    .with_label_values(&["other_record"])
                    .inc();
                continue;
            }
            let slot = wanted.entry(change.key.clone()).or_insert(change.revision);
            *slot = (*slot).max(change.revision);
        }
        if wanted.is_empty() {
            return Ok((0, 0));
        }
        let known = self.graph_revisions(wanted.keys()).await?;
        let mut fresh: Vec<(String, Option<i64>)> = Vec::new();
        let mut not_newer = 0;
        for (key, revision) in wanted {
            match (revision, known.get(&key)) {
                (Some(r), Some(&have)) if have >= r => not_newer += 1,
                _ => fresh.push((key, revision)),
            }
        }
        self.metrics
            .keys_skipped
            .with_label_values(&["not_newer"])
            .inc_by(not_newer);
        for batch in fresh.chunks(self.settings.batch_keys.max(1)) {
            self.start_crawl(batch).await?;
            self.metrics.keys_enqueued.inc_by(batch.len() as u64);
        }
        Ok((fresh.len() as u64, not_newer))
    }

    /// The graph's revision of each key that has one: its record's, or its tombstone's when
    /// a delete or a merge removed the record (whichever is higher).
    async fn graph_revisions<'a>(
        &self,
        keys: impl Iterator<Item = &'a String>,
    ) -> Result<HashMap<String, i64>, FollowError> {
        let mut by_label: BTreeMap<Label, Vec<String>> = BTreeMap::new();
        for key in keys {
            if let Some(label) = record_label(key) {
                by_label.entry(label).or_default().push(key.clone());
            }
        }
        let mut known = HashMap::new();
        for (label, keys) in by_label {
            let query = neo4rs::query(&format!(
                "UNWIND $keys AS k \
                 OPTIONAL MATCH (n:{label} {{key: k}}) \
                 OPTIONAL MATCH (t:Tombstone {{key: k}}) \
                 WITH k, [r IN [n.revision, t.revision] WHERE r IS NOT NULL] AS revisions \
                 WHERE size(revisions) > 0 \
                 RETURN k AS key, reduce(m = revisions[0], r IN revisions | \
                        CASE WHEN r > m THEN r ELSE m END) AS revision",
                label = label.as_str()
            ))
            .param("keys", keys);
            for row in self.graph.fetch(query).await? {
                if let (Ok(key), Ok(revision)) =
                    (row.get::<String>("key"), row.get::<i64>("revision"))
                {
                    known.insert(key, revision);
                }
            }
        }
        Ok(known)
    }

    /// Records a freshness crawl of `keys` and publishes its jobs; a crawl whose jobs cannot
    /// all be published is forgotten again, so no status waits for jobs nobody sent.
    async fn start_crawl(&self, keys: &[(String, Option<i64>)]) -> Result<(), FollowError> {
        let crawl_id = format!("follow:{}:{}", self.settings.name, uuid::Uuid::now_v7());
        let per_key = if self.settings.depth == 0 {
            1
        } else {
            NEIGHBOURS_PER_KEY
        };
        let spec = CrawlSpec {
            crawl_id: crawl_id.clone(),
            seeds: keys.iter().map(|(k, _)| k.clone()).collect(),
            max_depth: self.settings.depth,
            max_nodes: keys.len() * per_key,
        };
        self.store.create(&spec).await?;
        let now = Utc::now();
        let records: Vec<Record> = keys
            .iter()
            .map(|(key, revision)| {
                let job = CrawlJob {
                    v: VERSION,
                    crawl_id: crawl_id.clone(),
                    key: key.clone(),
                    depth: 0,
                    seed: key.clone(),
                    parent: None,
                    enqueued_at: now,
                    min_revision: *revision,
                };
                Record {
                    topic: self.settings.frontier.clone(),
                    key: key.clone(),
                    // A plain struct of strings and numbers always serialises.
                    payload: serde_json::to_vec(&job).unwrap_or_default(),
                }
            })
            .collect();
        if let Err(e) = self.publisher.publish(&records).await {
            if let Err(forget) = self.store.forget(&crawl_id).await {
                tracing::error!(%crawl_id, error = %forget, "could not remove a freshness crawl whose jobs failed to publish");
            }
            return Err(e.into());
        }
        tracing::debug!(%crawl_id, keys = keys.len(), "freshness crawl started");
        Ok(())
    }
}
