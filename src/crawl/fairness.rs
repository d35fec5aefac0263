//! Fair shares of a worker's job slots between the crawls it sees.
//!
//! Every crawl's jobs share the frontier's partitions (they are keyed by Open Library key,
//! for locality), so a small crawl started beside a large one finds its jobs behind the
//! large one's backlog in every partition: in-order consumption alone would make it wait
//! for that backlog at every level of its breadth-first descent. Two things prevent it:
//! - the consumer loop starts, within a partition's read-ahead, the first job of the crawl
//!   with the fewest jobs running ([`crate::consumer::Handler::lane`]);
//! - beyond the read-ahead, each crawl may hold at most its share of the worker's slots (the
//!   slots divided among the crawls active here), and a job of a crawl at its share and
//!   busier than every other active crawl is *deferred*: put back at the tail of its
//!   partition unchanged (the same key, so the same partition), without touching the
//!   crawl's state. The consumer then moves past the large crawl's backlog to the small
//!   crawl's jobs, while the large crawl keeps its share running.
//!
//! A crawl is active while it has jobs running here, had a job delivered within
//! [`ACTIVE_WINDOW`], or (once seen here) still has keys pending in the crawl store,
//! refreshed every [`LIVE_REFRESH`]: a small crawl whose next jobs sit behind the large
//! crawl's backlog is still competing while the consumer works its way to them. Alone, a
//! crawl's share is every slot, so nothing is deferred and a single crawl runs as before.
//! Deferral costs one frontier record per deferred job, and only while crawls compete for
//! this worker: a job is dispatched only into a free slot, so with every slot taken by
//! crawls within their shares nothing circulates.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::consumer::Delivery;
use crate::crawl::store::CrawlStore;
use crate::kafka::publish::Record;

/// How long after its last delivered job a crawl with nothing running still counts as
/// active: the time a crawl between two levels of its descent takes to publish the next.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(5);

/// How often the crawls seen here are looked up in the crawl store.
pub const LIVE_REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Activity {
    running: usize,
    last_seen: Instant,
    /// The crawl store's word, as of the last refresh: keys still pending.
    live: bool,
}

impl Activity {
    fn is_active(&self, now: Instant) -> bool {
        self.running > 0
            || self.live
            || now.saturating_duration_since(self.last_seen) < ACTIVE_WINDOW
    }
}

/// The crawls this worker runs jobs of, and how many each runs now.
#[derive(Debug, Clone)]
pub struct CrawlShares {
    slots: usize,
    crawls: Arc<Mutex<HashMap<String, Activity>>>,
}

/// A slot held by a crawl's job; dropping it (the job ended, or was abandoned) frees it.
#[derive(Debug)]
pub struct ShareSlot {
    crawl_id: String,
    crawls: Arc<Mutex<HashMap<String, Activity>>>,
}

impl Drop for ShareSlot {
    fn drop(&mut self) {
        if let Ok(mut crawls) = self.crawls.lock()
            && let Some(activity) = crawls.get_mut(&self.crawl_id)
        {
            activity.running = activity.running.saturating_sub(1);
            activity.last_seen = Instant::now();
        }
    }
}

impl CrawlShares {
    /// Shares of `slots` job slots (`CONCURRENT_JOBS`).
    pub fn new(slots: usize) -> Self {
        Self {
            slots: slots.max(1),
            crawls: Arc::default(),
        }
    }

    /// A slot for a job of `crawl_id`, or `None` if the crawl already holds its share while
    /// another crawl is active here: the job should be deferred.
    pub fn admit(&self, crawl_id: &str) -> Option<ShareSlot> {
        self.admit_at(crawl_id, Instant::now())
    }

    fn admit_at(&self, crawl_id: &str, now: Instant) -> Option<ShareSlot> {
        let mut crawls = self.crawls.lock().ok()?;
        crawls.retain(|id, a| a.is_active(now) || id == crawl_id);
        let activity = crawls.entry(crawl_id.to_owned()).or_insert(Activity {
            running: 0,
            last_seen: now,
            live: false,
        });
        activity.last_seen = now;
        let running = activity.running;
        let active = crawls.len();
        let share = self.slots.div_ceil(active);
        // Only the crawl running the most jobs yields: a crawl at its share beside one just
        // as busy keeps its jobs in place (deferring them would send them behind the very
        // backlog they compete with).
        let busiest_other = crawls
            .iter()
            .filter(|(id, _)| id.as_str() != crawl_id)
            .map(|(_, a)| a.running)
            .max()
            .unwrap_or(0);
        if active > 1 && running >= share && running > busiest_other {
            return None;
        }
        if let Some(activity) = crawls.get_mut(crawl_id) {
            activity.running += 1;
        }
        Some(ShareSlot {
            crawl_id: crawl_id.to_owned(),
            crawls: Arc::clone(&self.crawls),
        })
    }
}

impl CrawlShares {
    /// Looks the crawls seen here up in `store` every [`LIVE_REFRESH`] until `shutdown`. A
    /// failed lookup keeps the last word: Redis being down stops the crawls anyway.
    pub fn follow(&self, store: CrawlStore, shutdown: CancellationToken) {
        let crawls = Arc::clone(&self.crawls);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LIVE_REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let ids: Vec<String> = match crawls.lock() {
                    Ok(crawls) => crawls.keys().cloned().collect(),
                    Err(_) => return,
                };
                if ids.is_empty() {
                    continue;
                }
                let Ok(live) = store.live(&ids).await else {
                    continue;
                };
                if let Ok(mut crawls) = crawls.lock() {
                    for (id, live) in ids.iter().zip(live) {
                        if let Some(activity) = crawls.get_mut(id) {
                            activity.live = live;
                        }
                    }
                }
            }
        });
    }
}

/// The job of `delivery` put back on the `frontier` as it came (same key, so the same
/// partition; same payload).
pub fn deferral(frontier: &str, delivery: &Delivery) -> Record {
    Record {
        topic: frontier.to_owned(),
        key: String::from_utf8_lossy(delivery.key.as_deref().unwrap_or_default()).into_owned(),
        payload: delivery.payload.clone().unwrap_or_default(),
    }
}

/// Whether `records` are the deferral of `delivery`'s job: a job never publishes itself as
/// its own child (a child is one level deeper), so this is unambiguous.
pub fn is_deferral(frontier: &str, delivery: &Delivery, records: &[Record]) -> bool {
    matches!(records, [record] if record.topic == frontier
        && Some(&record.payload) == delivery.payload.as_ref())
}

/// The lane of a crawl job for the consumer loop (see [`crate::consumer::Handler::lane`]): a
/// hash of its crawl id, read without decoding the rest of the job. Not a job: lane 0.
pub fn lane_of(delivery: &Delivery) -> u64 {
    #[derive(serde::Deserialize)]
    struct CrawlOf<'a> {
        #[serde(borrow)]
        crawl_id: std::borrow::Cow<'a, str>,
    }
    let crawl = delivery
        .payload
        .as_deref()
        .and_then(|payload| serde_json::from_slice::<CrawlOf<'_>>(payload).ok());
    crawl.map_or(0, |crawl| {
        BuildHasherDefault::<DefaultHasher>::default().hash_one(crawl.crawl_id.as_ref())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crawl_alone_takes_every_slot_and_beside_another_its_share() {
        let shares = CrawlShares::new(4);
        let big: Vec<ShareSlot> = (0..4)
            .map(|_| shares.admit("big").expect("alone"))
            .collect();
        assert_eq!(big.len(), 4);
        // A second crawl arrives: the first is over its share (2 of 4), the second is not.
        let small = shares.admit("small").expect("under its share");
        assert!(shares.admit("big").is_none());
        drop(big);
        let again: Vec<ShareSlot> = (0..2)
            .map(|_| shares.admit("big").expect("share"))
            .collect();
        assert!(
            shares.admit("big").is_none(),
            "the big crawl holds its share of 2"
        );
        drop((small, again));
    }

    #[test]
    fn a_crawl_idle_past_the_window_stops_counting() {
        let shares = CrawlShares::new(2);
        let start = Instant::now();
        drop(shares.admit_at("small", start).expect("admitted"));
        let _a = shares.admit_at("big", start).expect("share 1 of 2");
        assert!(shares.admit_at("big", start).is_none());
        let later = start + ACTIVE_WINDOW + Duration::from_secs(1);
        assert!(shares.admit_at("big", later).is_some(), "alone again");
    }
}
