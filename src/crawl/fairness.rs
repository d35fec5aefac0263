//! Fair shares of a worker's job slots between the crawls it sees.
//!
//! Every crawl's jobs share the frontier's partitions (they are keyed by Open Library key,
//! for locality), so a small crawl started beside a large one finds its jobs behind the
//! large one's backlog in every partition: in-order consumption alone would make it wait
//! for that backlog at every level of its breadth-first descent. Three things prevent it:
//! - the consumer loop starts, within a partition's backlog, the first job of the crawl
//!   furthest below its share ([`crate::consumer::Handler::lane`] and
//!   [`crate::consumer::Handler::lane_weight`]);
//! - a crawl holding its share while another crawl has room under its own starts no more
//!   jobs: they wait in their partitions' backlogs ([`crate::consumer::Handler::lane_limit`]),
//!   and the free slots stay for the other crawl's jobs as they arrive;
//! - only where a partition's backlog is full of such jobs does the loop start one anyway,
//!   and the job is then *deferred*: put back at the tail of its partition unchanged (the
//!   same key, so the same partition), without touching the crawl's state, so the consumer
//!   reaches what waits behind the full backlog.
//!
//! Deferral once was the only mechanism: every free slot took the large crawl's next job and
//! published it again, about 1,100–1,600 records while a 200-node crawl ran, and that cost
//! (CPU on a worker that shares its cores) was most of the small crawl's slowdown. Holding
//! the jobs costs nothing: their offsets are simply not committed yet.
//!
//! Shares are weighted by backlog, shortest remaining crawl first: a crawl's weight is
//! `1 / (1 + keys pending)`, its share the slots in proportion to its weight, and never less
//! than one slot, so no crawl starves. Equal shares would leave a small crawl beside a large
//! one near half its speed alone, whatever the large one's size; weighted, the small crawl
//! gets all but about one slot, and the large crawl, whose completion a few hundred jobs
//! barely moves, takes the slots back as soon as the small one is done.
//!
//! A crawl is active while it has jobs running here, had a job delivered within
//! [`ACTIVE_WINDOW`], or (once seen here) still has keys pending in the crawl store,
//! refreshed every [`LIVE_REFRESH`]: a small crawl whose next jobs sit behind the large
//! crawl's backlog is still competing while the consumer works its way to them. A lookup that
//! finds nothing pending ends it at once. Alone, a crawl's share is every slot, so nothing
//! waits and a single crawl runs as before.

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
    /// The crawl's lane in the consumer loop ([`lane_of`]).
    lane: u64,
    running: usize,
    last_seen: Instant,
    /// The crawl store's word, as of the last refresh: keys still pending (0 once the crawl
    /// is no longer running).
    backlog: u64,
    /// When the last refresh's lookup was sent.
    refreshed: Option<Instant>,
}

impl Activity {
    /// Running here, keys pending, or seen within the window, unless a lookup sent since it
    /// was last seen found nothing pending: the crawl is over (or paused), and holding the
    /// other crawls to their shares for the rest of the window would only idle their slots.
    fn is_active(&self, now: Instant) -> bool {
        let over = self.backlog == 0 && self.refreshed.is_some_and(|at| at >= self.last_seen);
        self.running > 0
            || self.backlog > 0
            || (!over && now.saturating_duration_since(self.last_seen) < ACTIVE_WINDOW)
    }

    /// Shortest remaining crawl first: a crawl not yet looked up (just started) weighs most.
    fn weight(&self) -> f64 {
        1.0 / (1.0 + self.backlog as f64)
    }
}

/// Each active crawl's share of `slots`, in proportion to its weight and at least one slot.
fn shares<'a>(slots: usize, active: impl Iterator<Item = &'a Activity> + Clone) -> Vec<usize> {
    let total: f64 = active.clone().map(Activity::weight).sum();
    active
        .map(|a| ((slots as f64 * a.weight() / total).floor() as usize).max(1))
        .collect()
}

/// How many of `slots` the crawl of `lane` may hold among `crawls`: its share while another
/// active crawl has room under its own share, else every slot (yield only to a crawl that can
/// use the slot: with every other crawl at its share, a free slot would otherwise stay idle).
fn limit<'a>(
    slots: usize,
    crawls: impl Iterator<Item = &'a Activity>,
    lane: u64,
    now: Instant,
) -> usize {
    let active: Vec<&Activity> = crawls.filter(|a| a.is_active(now)).collect();
    let Some(mine) = active.iter().position(|a| a.lane == lane) else {
        return usize::MAX;
    };
    let shares = shares(slots, active.iter().copied());
    let others_have_room = active
        .iter()
        .zip(&shares)
        .enumerate()
        .any(|(i, (a, share))| i != mine && a.running < *share);
    if others_have_room {
        shares[mine]
    } else {
        usize::MAX
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
        crawls
            .entry(crawl_id.to_owned())
            .or_insert_with(|| Activity {
                lane: lane_of_crawl(crawl_id),
                running: 0,
                last_seen: now,
                backlog: 0,
                refreshed: None,
            })
            .last_seen = now;
        let mine = lane_of_crawl(crawl_id);
        let running = crawls.get(crawl_id).map_or(0, |a| a.running);
        if running >= limit(self.slots, crawls.values(), mine, now) {
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

    /// The most jobs of `lane`'s crawl that should run here now: its share while another
    /// active crawl has room under its own, else no limit (a slot nobody else can use is
    /// not kept idle). The consumer loop holds the crawl's further jobs in their partitions'
    /// backlogs ([`crate::consumer::Handler::lane_limit`]); an unknown lane is a new crawl,
    /// not held.
    pub fn lane_limit(&self, lane: u64) -> usize {
        let Ok(crawls) = self.crawls.lock() else {
            return usize::MAX;
        };
        limit(self.slots, crawls.values(), lane, Instant::now())
    }

    /// The weight of `lane`'s crawl among the crawls active here, for the consumer loop's
    /// choice within a partition's read-ahead; an unknown lane weighs as a new crawl.
    pub fn lane_weight(&self, lane: u64) -> f64 {
        let Ok(crawls) = self.crawls.lock() else {
            return 1.0;
        };
        crawls
            .values()
            .find(|a| a.lane == lane)
            .map_or(1.0, Activity::weight)
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
                let sent = Instant::now();
                let Ok(backlogs) = store.backlogs(&ids).await else {
                    continue;
                };
                if let Ok(mut crawls) = crawls.lock() {
                    for (id, backlog) in ids.iter().zip(backlogs) {
                        if let Some(activity) = crawls.get_mut(id) {
                            activity.backlog = backlog;
                            activity.refreshed = Some(sent);
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
    crawl.map_or(0, |crawl| lane_of_crawl(&crawl.crawl_id))
}

fn lane_of_crawl(crawl_id: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(crawl_id)
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

    #[test]
    fn a_lookup_that_finds_nothing_pending_ends_a_crawl_at_once() {
        let shares = CrawlShares::new(4);
        let start = Instant::now();
        drop(shares.admit_at("small", start).expect("admitted"));
        let _big = shares.admit_at("big", start).expect("share");
        assert_eq!(shares.lane_limit(lane_of_crawl("big")), 2, "small has room");
        // A lookup sent before the small crawl's last job ended says nothing yet.
        set_refreshed(&shares, "small", start - Duration::from_millis(1));
        assert_eq!(shares.lane_limit(lane_of_crawl("big")), 2);
        set_refreshed(&shares, "small", Instant::now());
        assert_eq!(shares.lane_limit(lane_of_crawl("big")), usize::MAX, "alone");
        assert!(shares.admit_at("big", start).is_some());
    }

    #[test]
    fn the_loop_holds_a_crawl_at_its_share_and_an_unknown_lane_not_at_all() {
        let shares = CrawlShares::new(8);
        let now = Instant::now();
        drop((shares.admit_at("small", now), shares.admit_at("big", now)));
        set_backlog(&shares, "small", 50);
        set_backlog(&shares, "big", 4_000);
        assert_eq!(shares.lane_limit(lane_of_crawl("big")), 1);
        assert_eq!(shares.lane_limit(lane_of_crawl("small")), 7);
        assert_eq!(shares.lane_limit(lane_of_crawl("new")), usize::MAX);
        // With the small crawl at its share, the big one may take what is left.
        let _small = fill(&shares, "small", now, 7);
        assert_eq!(shares.lane_limit(lane_of_crawl("big")), usize::MAX);
    }

    fn set_refreshed(shares: &CrawlShares, crawl_id: &str, at: Instant) {
        let mut crawls = shares.crawls.lock().expect("lock");
        crawls.get_mut(crawl_id).expect("seen").refreshed = Some(at);
    }

    fn set_backlog(shares: &CrawlShares, crawl_id: &str, backlog: u64) {
        let mut crawls = shares.crawls.lock().expect("lock");
        crawls.get_mut(crawl_id).expect("seen").backlog = backlog;
    }

    /// Admits up to `free` jobs of `crawl_id` (the consumer dispatches only into free slots),
    /// stopping at the first deferred; the slots taken.
    fn fill(shares: &CrawlShares, crawl_id: &str, now: Instant, free: usize) -> Vec<ShareSlot> {
        std::iter::from_fn(|| shares.admit_at(crawl_id, now))
            .take(free)
            .collect()
    }

    #[test]
    fn the_smaller_backlog_gets_all_but_one_slot() {
        let shares = CrawlShares::new(8);
        let now = Instant::now();
        let small = shares.admit_at("small", now).expect("slot");
        let big = shares.admit_at("big", now).expect("slot");
        set_backlog(&shares, "small", 50);
        set_backlog(&shares, "big", 4_000);
        drop((small, big));
        let big_slots = fill(&shares, "big", now, 8);
        // The small crawl has room under its share: the big one is held to one slot.
        assert_eq!(big_slots.len(), 1);
        let mut small_slots = fill(&shares, "small", now, 7);
        assert_eq!(small_slots.len(), 7, "the small crawl takes the rest");
        // A slot the small crawl frees is still the small crawl's.
        small_slots.pop();
        assert!(shares.admit_at("big", now).is_none());
        assert!(
            shares.lane_weight(lane_of_crawl("small")) > shares.lane_weight(lane_of_crawl("big"))
        );
    }

    #[test]
    fn equal_backlogs_share_equally() {
        let shares = CrawlShares::new(8);
        let now = Instant::now();
        drop((shares.admit_at("a", now), shares.admit_at("b", now)));
        set_backlog(&shares, "a", 1_000);
        set_backlog(&shares, "b", 1_000);
        let a = fill(&shares, "a", now, 8);
        assert_eq!(a.len(), 4, "b has room under its share");
        let b = fill(&shares, "b", now, 4);
        assert_eq!(b.len(), 4);
        drop(b);
        // b, with keys pending, is below its share: a yields the slot to b's jobs behind it.
        assert!(shares.admit_at("a", now).is_none());
    }

    #[test]
    fn no_crawl_gets_less_than_one_slot() {
        let active: Vec<Activity> = [0, 10, 100_000, 1_000_000]
            .into_iter()
            .map(|backlog| Activity {
                lane: 0,
                running: 0,
                last_seen: Instant::now(),
                backlog,
                refreshed: None,
            })
            .collect();
        let shares = shares(4, active.iter());
        assert!(shares.iter().all(|&s| s >= 1), "{shares:?}");
        assert!(
            shares[0] >= shares[1] && shares[1] >= shares[2],
            "{shares:?}"
        );
    }
}
