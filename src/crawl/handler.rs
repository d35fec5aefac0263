//! The worker's handler: one crawl job in, a node, its relationships, new jobs (or a DLQ
//! record) out.
//!
//! The order of a job is what makes the crawl exact and loss-free:
//! 1. [`CrawlStore::begin`] decides whether the job runs (a duplicate, a stale deeper copy
//!    or a cancelled crawl's job is dropped and counted);
//! 2. the key is fetched politely and expanded by the crawl rules ([`crate::crawl`]);
//! 3. children within the depth limit are claimed, and only the claims that win become
//!    frontier jobs;
//! 4. the consumer loop publishes the node, the edges and the jobs and waits for Kafka;
//! 5. only then [`CrawlStore::finish`] records the outcome. A crash anywhere before step 5
//!    leaves the key pending, so the job is redelivered and run again. A job dead-lettered
//!    instead of published (its publish timed out, `JOB_TIMEOUT` fired after its claim)
//!    releases there the claims of step 3 whose jobs never began, so its children do not
//!    wait forever for jobs nobody published.
//!
//! A paused crawl's job is held at step 1 ([`Begin::Held`]; why: `crawl::store::pause`).
//!
//! A freshness job (`min_revision` set, published by `bookworm follow` for a key the change
//! feed says changed) differs in two ways, because it is the one job that knows the record
//! changed: its first fetch is not answered by a cached copy older than `min_revision`, and a
//! record that turned into a delete or a redirect is news for the graph, not a failure. So a
//! delete is published as a node with `gone: Deleted` (its revision and `last_modified`) and
//! the job ends normally without a live node (`Finish::NoNode`), and each redirect of a chain
//! as a node with `gone: Redirected` next to the target's node and edges. An ordinary crawl
//! job knows nothing of the sort: for it a delete is still a dead letter (`http_4xx`, as the
//! crawl rules record deletes), a redirect is still followed silently, and the cache answers
//! as before, so crawl counts and replays stay exactly what they were. A 404 is a dead letter
//! for both (nothing says what the key was). A freshness job at its crawl's depth limit (depth
//! 0 by default) reads no list page (an author's `works.json`, a work's `editions.json`): it
//! refreshes the record and the relationships the record itself names, exactly what an import
//! of the newer dump line would give.

use std::collections::HashSet;
use std::sync::Mutex;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::consumer::{Delivery, HandleError, Handler, Outcome};
use crate::crawl::client::OpenLibraryClient;
use crate::crawl::failure::{CrawlError, dead_letter, store_error};
use crate::crawl::fairness::{self, CrawlShares};
use crate::crawl::limits::CrawlLimits;
use crate::crawl::parse::{self, RecordAnswer};
use crate::crawl::rules::{Expansion, GoneRecord, Target, answering_key, page_path};
use crate::crawl::store::{self, Begin, Child, CrawlStore, Finish};
use crate::kafka::publish::Record;
use crate::message::{self, CrawlJob, Edge, Failure, FailureReason, Gone, Node, VERSION};
use crate::process::metrics::WorkerMetrics;

/// Hops of Open Library's own redirect records (`/type/redirect`) followed before giving up.
pub const MAX_RECORD_REDIRECTS: u32 = 5;

/// The topics a worker writes to.
#[derive(Debug, Clone)]
pub struct OutputTopics {
    /// New crawl jobs.
    pub frontier: String,
    /// Fetched nodes.
    pub results: String,
    /// Relationships.
    pub edges: String,
    /// Jobs that could not be crawled.
    pub dlq: String,
}

/// Tries of a job whose answer arrived cut short before it is dead-lettered as `parse`: a
/// truncated transfer (a proxy or load balancer dropping mid-body) usually does not repeat,
/// and without a retry the job's whole subtree would go unfetched. Three tries, with the
/// consumer loop's backoff between them, keep a key that is truncated every time from
/// costing more than three fetches.
const TRUNCATED_ANSWER_ATTEMPTS: u32 = 3;

/// The worker's [`Handler`].
pub struct CrawlHandler {
    shares: CrawlShares,
    client: OpenLibraryClient,
    store: CrawlStore,
    limits: CrawlLimits,
    topics: OutputTopics,
    metrics: WorkerMetrics,
    worker_name: String,
    /// Deliveries whose job was held: `finished` records no outcome for them.
    held: Mutex<HashSet<(String, i32, i64)>>,
}

/// Where a delivery is, as [`CrawlHandler`]'s held set names it.
fn place(d: &Delivery) -> (String, i32, i64) {
    (d.topic.clone(), d.partition, d.offset)
}

impl CrawlHandler {
    /// The same handler dividing `slots` (`CONCURRENT_JOBS`) fairly between the crawls it
    /// sees (see [`crate::crawl::fairness`]); without it one crawl may take every slot.
    pub fn with_fair_shares(mut self, slots: usize, shutdown: CancellationToken) -> Self {
        self.shares = CrawlShares::new(slots);
        self.shares.follow(self.store.clone(), shutdown);
        self
    }

    /// Builds the handler. `limits` gives the per-node fan-out; each crawl's depth and node
    /// budget come from its status in Redis.
    pub fn new(
        client: OpenLibraryClient,
        store: CrawlStore,
        limits: CrawlLimits,
        topics: OutputTopics,
        metrics: WorkerMetrics,
        worker_name: String,
    ) -> Self {
        Self {
            shares: CrawlShares::new(usize::MAX),
            client,
            store,
            limits,
            topics,
            metrics,
            worker_name,
            held: Mutex::new(HashSet::new()),
        }
    }

    /// Fetches a target and expands it. Open Library's redirect records are followed, and
    /// the target is crawled in place of the source. `min_revision` is a freshness job's (see
    /// the module doc); it concerns records only.
    async fn expand(
        &self,
        target: &Target,
        min_revision: Option<i64>,
        read_lists: bool,
    ) -> Result<Expansion, CrawlError> {
        match target {
            Target::Search(_) => {
                let fetched = self
                    .client
                    .lookup(&target.record_path(&self.limits))
                    .await?;
                Ok(Expansion::of_search(
                    &parse::parse_search(&fetched.body)?,
                    &self.limits,
                ))
            }
            Target::Subject(key) => {
                let fetched = self.client.get(&target.record_path(&self.limits)).await?;
                if fetched.status == 404 {
                    return Err(CrawlError::Gone(format!("{key}: not found")));
                }
                let page = parse::parse_subject(&fetched.body)?;
                if !page.dropped.is_empty() {
                    tracing::debug!(%key, dropped = ?page.dropped, "subject works of the wrong shape left out");
                }
                Ok(Expansion::of_subject(key, &page, &self.limits))
            }
            Target::Work(key) | Target::Author(key) | Target::Edition(key) => {
                self.expand_record(key, min_revision, read_lists).await
            }
        }
    }

    /// Fetches a record, following its redirect records, and expands it.
    ///
    /// The node is published under the key of the record that was asked for, never under one
    /// the body merely claims: the key of the URL that answered (after HTTP redirects, which
    /// like redirect records put their target in place of the source, and must stay within
    /// the same kind) must be the body's `key`. A body naming another key is not the record
    /// asked for and fails the job as `parse`: publishing it under its own key would mark the
    /// asked key done without its node, and under the asked key would file another record's
    /// data there. So the crawl store counts a node exactly when the graph gets one.
    ///
    /// A freshness job (`min_revision`) fetches the key asked for at that revision at least
    /// (only that fetch: a redirect's target is fetched like any record), and collects the
    /// gone records it meets (each redirect, a delete) into [`Expansion::gone`]; a gone
    /// record's body must name the key that answered, for the same reason as an entity's.
    async fn expand_record(
        &self,
        first_key: &str,
        min_revision: Option<i64>,
        read_lists: bool,
    ) -> Result<Expansion, CrawlError> {
        let mut key = first_key.to_owned();
        let mut gone = Vec::new();
        for hop in 0..=MAX_RECORD_REDIRECTS {
            let wanted = min_revision.filter(|_| hop == 0);
            let fetched = self
                .client
                .get_at_least(&format!("{key}.json"), wanted)
                .await?;
            let answering = answering_key(&key, &fetched.final_url)?;
            let mut met = |body_key: &str, what: Gone| {
                if body_key != answering {
                    return Err(CrawlError::WrongRecord {
                        asked: answering.clone(),
                        answered: body_key.to_owned(),
                    });
                }
                // A record key of a work, author or edition always names a label.
                gone.extend(GoneRecord::of(&answering, what, &fetched.body));
                Ok(())
            };
            match parse::parse_record(&fetched.body)? {
                RecordAnswer::Entity(entity) => {
                    if entity.key != answering {
                        return Err(CrawlError::WrongRecord {
                            asked: answering,
                            answered: entity.key,
                        });
                    }
                    if !entity.dropped.is_empty() {
                        tracing::debug!(key = %entity.key, dropped = ?entity.dropped, "record values of the wrong shape left out");
                    }
                    let mut expansion = Expansion::of_entity(&entity, &self.limits);
                    expansion.gone = gone;
                    match Target::parse(&entity.key) {
                        Ok(Target::Author(_)) if read_lists => {
                            let page = self
                                .page(&entity.key, "works", self.limits.max_works_per_author)
                                .await?;
                            expansion.add_author_works(&entity.key, &page, &self.limits);
                        }
                        Ok(Target::Work(_)) if read_lists && self.limits.crawl_editions => {
                            let page = self
                                .page(&entity.key, "editions", self.limits.max_editions_per_work)
                                .await?;
                            expansion.add_editions(&entity.key, &page, &self.limits);
                        }
                        _ => {}
                    }
                    return Ok(expansion);
                }
                RecordAnswer::Redirect {
                    key: body_key,
                    location,
                } => {
                    let same_kind = matches!(
                        (Target::parse(&key), Target::parse(&location)),
                        (Ok(from), Ok(to)) if std::mem::discriminant(&from) == std::mem::discriminant(&to)
                    );
                    if !same_kind {
                        return Err(CrawlError::BadRedirect { key, location });
                    }
                    if min_revision.is_some() {
                        met(
                            &body_key,
                            Gone::Redirected {
                                to: location.clone(),
                            },
                        )?;
                    }
                    key = location;
                }
                RecordAnswer::Deleted { key } if min_revision.is_some() => {
                    met(&key, Gone::Deleted)?;
                    return Ok(Expansion {
                        gone,
                        ..Expansion::default()
                    });
                }
                RecordAnswer::Deleted { key } => {
                    return Err(CrawlError::Gone(format!("{key}: deleted")));
                }
                RecordAnswer::NotFound { .. } => {
                    return Err(CrawlError::Gone(format!("{key}: not found")));
                }
            }
        }
        Err(CrawlError::RedirectLoop(first_key.to_owned()))
    }

    /// The first `wanted` entries of a paged list, page by page in Open Library's order.
    async fn page(&self, key: &str, list: &str, wanted: usize) -> Result<parse::Page, CrawlError> {
        let mut all = parse::Page::default();
        while all.entries.len() < wanted {
            let remaining = wanted - all.entries.len();
            let fetched = self
                .client
                .get(&page_path(key, list, remaining, all.entries.len()))
                .await?;
            if fetched.status == 404 {
                break;
            }
            let page = parse::parse_page(&fetched.body)?;
            if !page.dropped.is_empty() {
                tracing::debug!(%key, list, dropped = ?page.dropped, "page entries of the wrong shape left out");
            }
            let got = page.entries.len();
            all.entries.extend(page.entries);
            if got == 0 || page.next.is_none() {
                break;
            }
        }
        all.entries.truncate(wanted);
        Ok(all)
    }

    fn record<T: serde::Serialize>(
        &self,
        topic: &str,
        key: &str,
        message: &T,
    ) -> Result<Record, HandleError> {
        let payload = serde_json::to_vec(message)
            .map_err(|e| HandleError::Retry(format!("serialising: {e}")))?;
        Ok(Record {
            topic: topic.to_owned(),
            key: key.to_owned(),
            payload,
        })
    }

    /// The node, edge and job records of an expansion; the jobs only for `enqueue`d children.
    fn records(
        &self,
        job: &CrawlJob,
        expansion: &Expansion,
        enqueue: &[String],
    ) -> Result<Vec<Record>, HandleError> {
        let now = Utc::now();
        let mut records = Vec::with_capacity(1 + expansion.links.len() + enqueue.len());
        if let Some((key, label, props)) = &expansion.node {
            let node = Node {
                v: VERSION,
                crawl_id: job.crawl_id.clone(),
                key: key.clone(),
                label: *label,
                props: props.clone(),
                fetched_at: now,
                gone: None,
            };
            records.push(self.record(&self.topics.results, key, &node)?);
        }
        for gone in &expansion.gone {
            let node = Node {
                v: VERSION,
                crawl_id: job.crawl_id.clone(),
                key: gone.key.clone(),
                label: gone.label,
                props: gone.props.clone(),
                fetched_at: now,
                gone: Some(gone.gone.clone()),
            };
            records.push(self.record(&self.topics.results, &gone.key, &node)?);
        }
        for link in &expansion.links {
            let edge = Edge {
                v: VERSION,
                crawl_id: job.crawl_id.clone(),
                from: link.from.clone(),
                to: link.to.clone(),
                rel: link.rel.as_str().to_owned(),
                discovered_at: now,
                revision: expansion.edge_revision(link),
            };
            records.push(self.record(&self.topics.edges, &link.from, &edge)?);
        }
        let parent = expansion
            .node
            .as_ref()
            .map(|(key, ..)| key.clone())
            .unwrap_or_else(|| job.key.clone());
        for child in enqueue {
            let next = CrawlJob {
                v: VERSION,
                crawl_id: job.crawl_id.clone(),
                key: child.clone(),
                depth: job.depth + 1,
                seed: job.seed.clone(),
                parent: Some(parent.clone()),
                enqueued_at: now,
                min_revision: None,
            };
            records.push(self.record(&self.topics.frontier, child, &next)?);
        }
        Ok(records)
    }

    /// Runs `job` of `delivery`; `attempt` is the loop's try of this delivery (1 on the
    /// first).
    async fn crawl(&self, delivery: &Delivery, job: CrawlJob) -> Result<Vec<Record>, HandleError> {
        let attempt = delivery.attempt;
        let target =
            Target::parse(&job.key).map_err(|why| dead_letter(FailureReason::InvalidJob, why))?;
        if matches!(target, Target::Search(_)) && job.depth > 0 {
            // robots.txt disallows /search: it is a user's lookup, never an expansion step.
            return Err(dead_letter(
                FailureReason::InvalidJob,
                "search below depth 0",
            ));
        }
        let (max_depth, max_nodes) = match self.store.begin_job(&job).await.map_err(store_error)? {
            Begin::Run {
                max_depth,
                max_nodes,
            } => (max_depth, max_nodes),
            Begin::Held => {
                tracing::debug!(crawl_id = %job.crawl_id, key = %job.key, depth = job.depth, "job held: its crawl is paused");
                if let Ok(mut held) = self.held.lock() {
                    held.insert(place(delivery));
                }
                return Ok(Vec::new());
            }
            skipped => {
                tracing::debug!(crawl_id = %job.crawl_id, key = %job.key, depth = job.depth, ?skipped, "job skipped");
                self.metrics.jobs_skipped.inc();
                return Ok(Vec::new());
            }
        };
        // A freshness job that may not go deeper refreshes the record and what the record
        // names, as a dump line would: the lists (an author's works, a work's editions) are
        // other records' edges, read again when those records change.
        let read_lists = job.min_revision.is_none() || job.depth < max_depth;
        let expansion = match self.expand(&target, job.min_revision, read_lists).await {
            Ok(expansion) => expansion,
            Err(e) if e.is_transient() => return Err(HandleError::Retry(e.to_string())),
            Err(e) if e.is_truncated_answer() && attempt < TRUNCATED_ANSWER_ATTEMPTS => {
                return Err(HandleError::Retry(e.to_string()));
            }
            Err(e) => return Err(dead_letter(e.reason(), e.to_string())),
        };
        let enqueue = if job.depth < max_depth {
            let children: Vec<Child> = expansion
                .children
                .iter()
                .map(|key| Child {
                    key: key.clone(),
                    depth: job.depth + 1,
                })
                .collect();
            let claimer = store::claimer(&job.key, job.depth);
            let wins = self
                .store
                .claim(&job.crawl_id, &claimer, max_nodes, &children)
                .await
                .map_err(store_error)?;
            children
                .into_iter()
                .zip(wins)
                .filter_map(|(child, win)| win.then_some(child.key))
                .collect()
        } else {
            Vec::new()
        };
        self.records(&job, &expansion, &enqueue)
    }

    /// What the crawl store records for a job whose `records` Kafka acknowledged: its node
    /// and relationships, read back from the records themselves so nothing has to be carried
    /// from `handle` to `finished`. A gone node (a freshness job's delete or redirect) is not
    /// the job's node: a job with only gone nodes finishes as [`Finish::NoNode`], which clears
    /// its key like a search's, so its crawl still reaches `done`.
    fn finish_of(&self, records: &[Record]) -> Finish {
        let mut node = None;
        let mut edges = Vec::new();
        for record in records {
            if record.topic == self.topics.results {
                if let Ok(live) = message::decode::<Node>(Some(&record.payload))
                    && live.gone.is_none()
                {
                    node = Some(live);
                }
            } else if record.topic == self.topics.edges
                && let Ok(edge) = message::decode::<Edge>(Some(&record.payload))
            {
                edges.push(format!("{}|{}|{}", edge.from, edge.rel, edge.to));
            }
        }
        match node {
            Some(node) => Finish::Node {
                key: node.key,
                label: node.label,
                edges,
            },
            None => Finish::NoNode,
        }
    }
}

impl Handler for CrawlHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<Vec<Record>, HandleError> {
        self.metrics.jobs_received.inc();
        let job: CrawlJob = message::decode(delivery.payload.as_deref())
            .map_err(|e| dead_letter(FailureReason::InvalidJob, e.to_string()))?;
        let Some(_slot) = self.shares.admit(&job.crawl_id) else {
            // The crawl holds its share of this worker while another crawl waits: the job
            // goes back to its partition's tail unchanged, and no crawl state is touched.
            self.metrics.jobs_deferred.inc();
            return Ok(vec![fairness::deferral(&self.topics.frontier, delivery)]);
        };
        self.crawl(delivery, job).await
    }

    /// A job's lane is its crawl: the loop shares the slots between crawls.
    fn lane(&self, delivery: &Delivery) -> u64 {
        fairness::lane_of(delivery)
    }

    /// Shortest remaining crawl first (see [`crate::crawl::fairness`]).
    fn lane_weight(&self, lane: u64) -> f64 {
        self.shares.lane_weight(lane)
    }

    /// A crawl at its share waits in the backlog while another crawl has room.
    fn lane_limit(&self, lane: u64) -> usize {
        self.shares.lane_limit(lane)
    }

    fn dead_letter(&self, delivery: &Delivery, reason: &str, detail: &str) -> Record {
        let parsed: Option<CrawlJob> = message::decode(delivery.payload.as_deref()).ok();
        let (crawl_id, job, key) = match parsed {
            Some(job) => (
                job.crawl_id.clone(),
                serde_json::to_value(&job).unwrap_or_default(),
                job.key.clone(),
            ),
            None => {
                let raw = String::from_utf8_lossy(delivery.payload.as_deref().unwrap_or_default())
                    .into_owned();
                let key = String::from_utf8_lossy(delivery.key.as_deref().unwrap_or_default())
                    .into_owned();
                (String::new(), serde_json::Value::String(raw), key)
            }
        };
        let reason = FailureReason::parse(reason).unwrap_or(FailureReason::InvalidJob);
        let failure = Failure {
            v: VERSION,
            crawl_id,
            job,
            reason,
            detail: detail.to_owned(),
            attempts: delivery.attempt,
            failed_at: Utc::now(),
            worker: self.worker_name.clone(),
        };
        Record {
            topic: self.topics.dlq.clone(),
            key,
            payload: serde_json::to_vec(&failure).unwrap_or_default(),
        }
    }

    async fn finished(&self, delivery: &Delivery, outcome: Outcome<'_>) -> Result<(), HandleError> {
        let Ok(job) = message::decode::<CrawlJob>(delivery.payload.as_deref()) else {
            // A payload that is not a job was dead-lettered; there is no crawl to tell.
            return Ok(());
        };
        let was_held = self
            .held
            .lock()
            .map(|mut held| held.remove(&place(delivery)))
            .unwrap_or(false);
        if was_held && matches!(outcome, Outcome::Published(_)) {
            return Ok(()); // the key stays pending until its held copy runs
        }
        let finish = match outcome {
            Outcome::Published(records)
                if fairness::is_deferral(&self.topics.frontier, delivery, records) =>
            {
                return Ok(());
            }
            Outcome::Published(records) => self.finish_of(records),
            Outcome::DeadLettered { reason } => {
                self.metrics.jobs_failed.with_label_values(&[reason]).inc();
                Finish::Failed(FailureReason::parse(reason).unwrap_or(FailureReason::InvalidJob))
            }
        };
        // A skipped job (duplicate, stale, cancelled) finishes as `NoNode`, which changes
        // nothing the job did not own.
        self.store
            .finish(&job.crawl_id, &job.key, job.depth, &finish)
            .await
            .map_err(store_error)?;
        match &finish {
            Finish::Failed(reason) => {
                tracing::debug!(crawl_id = %job.crawl_id, key = %job.key, reason = reason.as_str(), "job dead-lettered")
            }
            _ => {
                self.metrics.jobs_success.inc();
                tracing::debug!(crawl_id = %job.crawl_id, key = %job.key, depth = job.depth, "job done");
            }
        }
        Ok(())
    }
}
