//! The crawl store against the real Redis: dedupe by shortest path, redelivery-safe
//! counters, and the end of a crawl.

mod support;

use bookworm::crawl::store::{
    self, Begin, Child, CrawlSpec, CrawlState, CrawlStore, Finish, StoreError,
};
use bookworm::message::{FailureReason, Label};
use std::time::Duration;

use support::{eventually, stack_env, unique};

async fn store_with_crawl(seeds: &[&str], max_nodes: usize) -> (CrawlStore, String) {
    let store = CrawlStore::connect(&stack_env("REDIS_URL"))
        .await
        .expect("redis reachable");
    let crawl_id = unique("crawl");
    let spec = CrawlSpec {
        crawl_id: crawl_id.clone(),
        seeds: seeds.iter().map(|s| s.to_string()).collect(),
        max_depth: 2,
        max_nodes,
    };
    store.create(&spec).await.expect("crawl created");
    (store, crawl_id)
}

fn child(key: &str, depth: u32) -> Child {
    Child {
        key: key.to_owned(),
        depth,
    }
}

fn node(key: &str, label: Label, edges: &[&str]) -> Finish {
    Finish::Node {
        key: key.to_owned(),
        label,
        edges: edges.iter().map(|e| e.to_string()).collect(),
    }
}

/// A seed runs, its children are claimed once, and the crawl is done exactly when the
/// last pending key finishes.
#[tokio::test]
async fn a_crawl_is_done_when_its_last_pending_key_finishes() {
    let (store, id) = store_with_crawl(&["/works/OL1W"], 100).await;
    assert_eq!(
        store.begin(&id, "/works/OL1W", 0).await.unwrap(),
        Begin::Run {
            max_depth: 2,
            max_nodes: 100
        }
    );
    let enqueue = store
        .claim(
            &id,
            "0|/works/OL1W",
            100,
            &[child("/authors/OL1A", 1), child("/subjects/x", 1)],
        )
        .await
        .unwrap();
    assert_eq!(enqueue, vec![true, true]);
    let edges = [
        "/works/OL1W|WRITTEN_BY|/authors/OL1A",
        "/works/OL1W|ABOUT|/subjects/x",
    ];
    store
        .finish(
            &id,
            "/works/OL1W",
            0,
            &node("/works/OL1W", Label::Work, &edges),
        )
        .await
        .unwrap();

    let status = store.status(&id).await.unwrap().expect("status exists");
    assert_eq!(status.state, CrawlState::Running);
    assert_eq!(status.counters.in_flight, 2);
    assert_eq!(status.counters.enqueued, 3);

    store
        .finish(
            &id,
            "/authors/OL1A",
            1,
            &node("/authors/OL1A", Label::Author, &[]),
        )
        .await
        .unwrap();
    store
        .finish(
            &id,
            "/subjects/x",
            1,
            &Finish::Failed(FailureReason::Http5xx),
        )
        .await
        .unwrap();
    let status = store.status(&id).await.unwrap().expect("status exists");
    assert_eq!(status.state, CrawlState::Done);
    assert_eq!(status.counters.in_flight, 0);
    assert_eq!(status.counters.fetched, 2);
    assert_eq!(status.counters.edges, 2);
    assert_eq!(status.counters.nodes.get("Work"), Some(&1));
    assert_eq!(status.counters.failed.get("http_5xx"), Some(&1));
}

/// A key reached again by a shorter path is re-enqueued at the shorter depth, and the
/// deeper job that arrives later is dropped as a duplicate.
#[tokio::test]
async fn a_shorter_path_reclaims_a_key_and_the_deeper_job_is_dropped() {
    let (store, id) = store_with_crawl(&["/works/OL1W", "/works/OL2W"], 100).await;
    assert_eq!(
        store
            .claim(&id, "1|/authors/OL9A", 100, &[child("/works/OL5W", 2)])
            .await
            .unwrap(),
        vec![true]
    );
    assert_eq!(
        store
            .claim(&id, "0|/works/OL2W", 100, &[child("/works/OL5W", 1)])
            .await
            .unwrap(),
        vec![true]
    );
    assert_eq!(
        store.begin(&id, "/works/OL5W", 2).await.unwrap(),
        Begin::Duplicate
    );
    assert!(matches!(
        store.begin(&id, "/works/OL5W", 1).await.unwrap(),
        Begin::Run { .. }
    ));
    assert_eq!(
        store
            .claim(&id, "0|/works/OL1W", 100, &[child("/works/OL5W", 3)])
            .await
            .unwrap(),
        vec![false]
    );
}

/// Issue 18: distinct nodes are counted by a mark on their claim (no second per-key hash):
/// a key fetched, then reached by a shorter path and fetched again, counts once; a node
/// reached through a redirect counts once whichever of its two jobs ends first; and the
/// only per-node hash left holds the redirect targets alone.
#[tokio::test]
async fn a_node_counts_once_through_shorter_paths_and_redirects() {
    let (store, id) = store_with_crawl(&["/works/OL1W"], 100).await;
    // Runs the job of `key` at `depth` to its outcome: the node `answer`.
    let fetch = |key: &'static str, depth: u32, answer: &'static str| {
        let store = store.clone();
        let id = id.clone();
        async move {
            assert!(
                matches!(
                    store.begin(&id, key, depth).await.unwrap(),
                    Begin::Run { .. }
                ),
                "{key} at {depth} runs"
            );
            store
                .finish(&id, key, depth, &node(answer, Label::Work, &[]))
                .await
                .unwrap();
        }
    };
    let children = [
        child("/works/OL5W", 2),
        child("/works/OL6W", 1),
        child("/works/OL7W", 1),
    ];
    store
        .claim(&id, "0|/works/OL1W", 100, &children)
        .await
        .unwrap();
    fetch("/works/OL1W", 0, "/works/OL1W").await;
    // OL5W fetched at depth 2, then reached at depth 1 and fetched again.
    fetch("/works/OL5W", 2, "/works/OL5W").await;
    assert_eq!(
        store
            .claim(&id, "1|/works/OL6W", 100, &[child("/works/OL5W", 1)])
            .await
            .unwrap(),
        vec![true]
    );
    fetch("/works/OL5W", 1, "/works/OL5W").await;
    // OL6W answers as OL7W (a redirect the body names), then OL7W's own job ends.
    fetch("/works/OL6W", 1, "/works/OL7W").await;
    fetch("/works/OL7W", 1, "/works/OL7W").await;
    let status = store.status(&id).await.unwrap().expect("status");
    assert_eq!(status.state, CrawlState::Done);
    // OL1W, OL5W, OL7W.
    assert_eq!(status.counters.fetched, 3, "{:?}", status.counters);
    assert_eq!(status.counters.nodes.get("Work"), Some(&3));
    let mut redis = support::egress::redis().await;
    let nodes: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("bookworm:crawl:{{{id}}}:nodes"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        nodes,
        vec!["/works/OL7W".to_owned()],
        "only the redirect target"
    );

    // The other order: the redirect target's own job first, then the redirected one.
    let (store, id) = store_with_crawl(&["/works/OL1W", "/works/OL2W"], 100).await;
    for (key, answer) in [
        ("/works/OL2W", "/works/OL2W"),
        ("/works/OL1W", "/works/OL2W"),
    ] {
        assert!(matches!(
            store.begin(&id, key, 0).await.unwrap(),
            Begin::Run { .. }
        ));
        store
            .finish(&id, key, 0, &node(answer, Label::Work, &[]))
            .await
            .unwrap();
    }
    let status = store.status(&id).await.unwrap().expect("status");
    assert_eq!(status.counters.fetched, 1, "{:?}", status.counters);
}

/// A claim written before claimer tags (`depth|depth|parent key`, a crawl running across the
/// upgrade) keeps its claimer's rights: the redelivered claimer re-enqueues it, a sibling
/// does not, and the claimer's dead-lettering releases it.
#[tokio::test]
async fn a_claim_from_before_tags_still_belongs_to_its_claimer() {
    let (store, id) = store_with_crawl(&["/works/OL1W", "/works/OL2W"], 100).await;
    let mut redis = support::egress::redis().await;
    let claims = format!("bookworm:crawl:{{{id}}}:claims");
    redis::pipe()
        .hset(&claims, "/authors/OL1A", "1|0|/works/OL1W")
        .sadd(format!("bookworm:crawl:{{{id}}}:pending"), "/authors/OL1A")
        .hset(
            format!("bookworm:crawl:{{{id}}}:offspring"),
            "0|/works/OL1W",
            "/authors/OL1A",
        )
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let author = [child("/authors/OL1A", 1)];
    assert_eq!(
        store
            .claim(&id, "0|/works/OL2W", 100, &author)
            .await
            .unwrap(),
        vec![false],
        "a sibling does not re-enqueue it"
    );
    assert_eq!(
        store
            .claim(&id, "0|/works/OL1W", 100, &author)
            .await
            .unwrap(),
        vec![true],
        "its claimer does"
    );
    // Written the old way again (as adopting the legacy pending set leaves it: marked
    // pending), then its claimer is dead-lettered before the child's job began: the claim is
    // released.
    redis::cmd("HSET")
        .arg(&claims)
        .arg("/authors/OL1A")
        .arg("+1|0|/works/OL1W")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    assert!(matches!(
        store.begin(&id, "/works/OL1W", 0).await.unwrap(),
        Begin::Run { .. }
    ));
    store
        .finish(
            &id,
            "/works/OL1W",
            0,
            &Finish::Failed(FailureReason::Http5xx),
        )
        .await
        .unwrap();
    let claim: Option<String> = redis::cmd("HGET")
        .arg(&claims)
        .arg("/authors/OL1A")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(claim, None, "released");
}

/// Siblings reaching a pending key do not enqueue it again, but its own claimer does when it
/// is redelivered (its first run may have died before publishing the child's job).
#[tokio::test]
async fn only_the_claimer_reenqueues_a_pending_child() {
    let (store, id) = store_with_crawl(&["/works/OL1W", "/works/OL2W"], 100).await;
    let author = [child("/authors/OL1A", 1)];
    assert_eq!(
        store
            .claim(&id, "0|/works/OL1W", 100, &author)
            .await
            .unwrap(),
        vec![true]
    );
    assert_eq!(
        store
            .claim(&id, "0|/works/OL2W", 100, &author)
            .await
            .unwrap(),
        vec![false]
    );
    assert_eq!(
        store
            .claim(&id, "0|/works/OL1W", 100, &author)
            .await
            .unwrap(),
        vec![true]
    );
    store
        .finish(
            &id,
            "/authors/OL1A",
            1,
            &node("/authors/OL1A", Label::Author, &[]),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .claim(&id, "0|/works/OL1W", 100, &author)
            .await
            .unwrap(),
        vec![false]
    );
    assert_eq!(
        store.begin(&id, "/authors/OL1A", 1).await.unwrap(),
        Begin::Duplicate
    );
}

/// A redelivered job finishing twice counts its node, edges and failure once.
#[tokio::test]
async fn redelivered_outcomes_are_counted_once() {
    let (store, id) = store_with_crawl(&["/works/OL1W", "/works/OL2W"], 100).await;
    let outcome = node(
        "/works/OL1W",
        Label::Work,
        &["/works/OL1W|ABOUT|/subjects/a"],
    );
    for _ in 0..3 {
        store.finish(&id, "/works/OL1W", 0, &outcome).await.unwrap();
        store
            .finish(&id, "/works/OL2W", 0, &Finish::Failed(FailureReason::Parse))
            .await
            .unwrap();
    }
    let counters = store.status(&id).await.unwrap().expect("status").counters;
    assert_eq!((counters.fetched, counters.edges), (1, 1));
    assert_eq!(counters.failed.get("parse"), Some(&1));
}

/// The node budget stops new claims; a cancelled crawl drops its jobs as skipped.
#[tokio::test]
async fn budget_and_cancel_stop_new_work() {
    let (store, id) = store_with_crawl(&["/works/OL1W"], 2).await;
    let children = [child("/authors/OL1A", 1), child("/authors/OL2A", 1)];
    assert_eq!(
        store
            .claim(&id, "0|/works/OL1W", 2, &children)
            .await
            .unwrap(),
        vec![true, false]
    );
    assert!(store.cancel(&id).await.unwrap());
    assert_eq!(
        store.begin(&id, "/authors/OL1A", 1).await.unwrap(),
        Begin::Cancelled
    );
    let status = store.status(&id).await.unwrap().expect("status");
    assert_eq!(status.state, CrawlState::Cancelled);
    assert_eq!(status.counters.skipped, 2);
    assert!(!store.cancel("no-such-crawl").await.unwrap());
    assert_eq!(
        store
            .begin("no-such-crawl", "/works/OL1W", 0)
            .await
            .unwrap(),
        Begin::UnknownCrawl
    );
}

/// A job dead-lettered after claiming its children (its publish timed out) releases every
/// child whose job never began, so the crawl is done with the job in the DLQ instead of
/// waiting forever on children nobody published; a child whose job began is left to finish.
#[tokio::test]
async fn a_dead_lettered_job_releases_the_children_whose_job_never_began() {
    let (store, id) = store_with_crawl(&["/works/OL1W"], 100).await;
    assert!(matches!(
        store.begin(&id, "/works/OL1W", 0).await.unwrap(),
        Begin::Run { .. }
    ));
    let children = [child("/authors/OL1A", 1), child("/subjects/x", 1)];
    let claimer = store::claimer("/works/OL1W", 0);
    assert_eq!(
        store.claim(&id, &claimer, 100, &children).await.unwrap(),
        vec![true, true]
    );
    // The author's frontier record got out before the publish timed out, and its job began.
    assert!(matches!(
        store.begin(&id, "/authors/OL1A", 1).await.unwrap(),
        Begin::Run { .. }
    ));
    store
        .finish(
            &id,
            "/works/OL1W",
            0,
            &Finish::Failed(FailureReason::Publish),
        )
        .await
        .unwrap();
    let status = store.status(&id).await.unwrap().expect("status");
    assert_eq!(status.state, CrawlState::Running, "{status:?}");
    assert_eq!(status.counters.in_flight, 1, "only the author is in flight");
    assert_eq!(status.counters.enqueued, 2, "the seed and the author");

    store
        .finish(
            &id,
            "/authors/OL1A",
            1,
            &node("/authors/OL1A", Label::Author, &[]),
        )
        .await
        .unwrap();
    let status = store.status(&id).await.unwrap().expect("status");
    assert_eq!(status.state, CrawlState::Done, "{status:?}");
    assert_eq!(status.counters.failed.get("publish"), Some(&1));
}

/// A job that published its outputs keeps its children's claims, and a release never touches
/// a child that another job claimed meanwhile by a shorter path.
#[tokio::test]
async fn only_a_failed_claimers_own_unstarted_claims_are_released() {
    let (store, id) = store_with_crawl(&["/works/OL1W", "/works/OL2W"], 100).await;
    let one = store::claimer("/works/OL1W", 0);
    let two = store::claimer("/authors/OL9A", 1);
    assert_eq!(
        store
            .claim(&id, &two, 100, &[child("/works/OL5W", 2)])
            .await
            .unwrap(),
        vec![true]
    );
    assert_eq!(
        store
            .claim(
                &id,
                &one,
                100,
                &[child("/works/OL5W", 1), child("/works/OL6W", 1)]
            )
            .await
            .unwrap(),
        vec![true, true]
    );
    // The deeper claimer fails: OL5W is now OL1W's, so it stays.
    store
        .finish(
            &id,
            "/authors/OL9A",
            1,
            &Finish::Failed(FailureReason::Publish),
        )
        .await
        .unwrap();
    // OL1W published: its children's jobs exist, nothing is released later.
    store
        .finish(
            &id,
            "/works/OL1W",
            0,
            &node("/works/OL1W", Label::Work, &[]),
        )
        .await
        .unwrap();
    store
        .finish(
            &id,
            "/works/OL1W",
            0,
            &Finish::Failed(FailureReason::Publish),
        )
        .await
        .unwrap();
    let status = store.status(&id).await.unwrap().expect("status");
    assert_eq!(
        status.counters.in_flight, 3,
        "OL2W, OL5W and OL6W: {status:?}"
    );
}

/// A claim that does not read as `depth|claimer` is corrupt crawl state, reported as such
/// and not as a Redis outage (which the worker would retry forever); nothing is half-claimed.
#[tokio::test]
async fn a_claim_that_does_not_parse_is_corrupt_state() {
    let (store, id) = store_with_crawl(&["/works/OL1W"], 100).await;
    let mut redis = support::egress::redis().await;
    redis::cmd("HSET")
        .arg(format!("bookworm:crawl:{{{id}}}:claims"))
        .arg("/authors/OL1A")
        .arg("garbage")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let err = store
        .claim(
            &id,
            "0|/works/OL1W",
            100,
            &[child("/subjects/x", 1), child("/authors/OL1A", 1)],
        )
        .await
        .expect_err("a corrupt claim");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let err = store
        .begin(&id, "/authors/OL1A", 1)
        .await
        .expect_err("a corrupt claim");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let err = store
        .finish(&id, "/authors/OL1A", 1, &Finish::NoNode)
        .await
        .expect_err("a corrupt claim");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let status = store.status(&id).await.unwrap().expect("status");
    assert_eq!(
        status.counters.enqueued, 1,
        "nothing half-claimed: {status:?}"
    );
}

/// A crawl key holding another Redis type (hand-edited, or another program's key) is corrupt
/// crawl state too.
#[tokio::test]
async fn a_crawl_key_of_another_type_is_corrupt_state() {
    let (store, id) = store_with_crawl(&["/works/OL1W"], 100).await;
    let mut redis = support::egress::redis().await;
    let meta = format!("bookworm:crawl:{{{id}}}:meta");
    redis::cmd("DEL")
        .arg(&meta)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    redis::cmd("SET")
        .arg(&meta)
        .arg("not a hash")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let err = store
        .begin(&id, "/works/OL1W", 0)
        .await
        .expect_err("meta is not a hash");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Retention (issue 18)

/// The working keys of a crawl (everything but its summary: meta and counters).
const WORKING: [&str; 8] = [
    "claims",
    "pending",
    "nodes",
    "edges",
    "failures",
    "started",
    "offspring",
    "edge-sketch",
];

/// `TTL` of each existing working key of `id` (keys that do not exist are left out), and of
/// its meta and counters.
async fn ttls(id: &str) -> (Vec<(String, i64)>, i64, i64) {
    let redis = support::egress::redis().await;
    let ttl = |name: String| {
        let mut redis = redis.clone();
        async move {
            redis::cmd("TTL")
                .arg(format!("bookworm:crawl:{{{id}}}:{name}"))
                .query_async::<i64>(&mut redis)
                .await
                .unwrap()
        }
    };
    let mut working = Vec::new();
    for name in WORKING {
        let t = ttl(name.to_owned()).await;
        if t != -2 {
            working.push((name.to_owned(), t));
        }
    }
    let meta = ttl("meta".to_owned()).await;
    let counters = ttl("counters".to_owned()).await;
    (working, meta, counters)
}

/// A small crawl run to `done`: a work seed with an author (fetched, two edges) and a subject
/// (dead-lettered).
async fn run_to_done(store: &CrawlStore, id: &str) {
    store
        .claim(
            id,
            "0|/works/OL1W",
            100,
            &[child("/authors/OL1A", 1), child("/subjects/x", 1)],
        )
        .await
        .unwrap();
    assert!(matches!(
        store.begin(id, "/authors/OL1A", 1).await.unwrap(),
        Begin::Run { .. }
    ));
    let edges = [
        "/works/OL1W|WRITTEN_BY|/authors/OL1A",
        "/works/OL1W|ABOUT|/subjects/x",
    ];
    store
        .finish(
            id,
            "/works/OL1W",
            0,
            &node("/works/OL1W", Label::Work, &edges),
        )
        .await
        .unwrap();
    store
        .finish(
            id,
            "/authors/OL1A",
            1,
            &node("/authors/OL1A", Label::Author, &[]),
        )
        .await
        .unwrap();
    store
        .finish(
            id,
            "/subjects/x",
            1,
            &Finish::Failed(FailureReason::Http5xx),
        )
        .await
        .unwrap();
}

/// Issue 18: once a crawl is done its working keys carry a TTL of at most CRAWL_RETENTION
/// while its summary (meta, counters) does not; once the TTL passes the working state is
/// gone and the status is still served, counters and all. Before the fix every key of every
/// crawl had `TTL = -1` for the life of the deployment.
#[tokio::test]
async fn a_done_crawls_working_state_expires_and_its_summary_stays() {
    let (store, id) = store_with_crawl(&["/works/OL1W"], 100).await;
    let store = store.with_retention(Duration::from_secs(60));
    let (working, _, _) = ttls(&id).await;
    assert!(
        working.iter().all(|(_, t)| *t == -1),
        "a running crawl's state does not expire: {working:?}"
    );
    run_to_done(&store, &id).await;
    let done = store.status(&id).await.unwrap().expect("status");
    assert_eq!(done.state, CrawlState::Done);

    let (working, meta, counters) = ttls(&id).await;
    assert!(
        working.iter().any(|(name, _)| name == "claims"),
        "{working:?}"
    );
    for (name, ttl) in &working {
        assert!(
            (1..=60).contains(ttl),
            "{name} carries TTL {ttl}, not within CRAWL_RETENTION (60 s)"
        );
    }
    assert_eq!((meta, counters), (-1, -1), "the summary never expires");

    // A short retention plays the expiry out: the working state goes, the status stays.
    let short = store.clone().with_retention(Duration::from_secs(1));
    short
        .finish(
            &id,
            "/subjects/x",
            1,
            &Finish::Failed(FailureReason::Http5xx),
        )
        .await
        .unwrap();
    eventually("the working state expires", Duration::from_secs(10), || {
        let id = id.clone();
        async move {
            let (working, _, _) = ttls(&id).await;
            working.is_empty().then_some(())
        }
    })
    .await;
    let after = store
        .status(&id)
        .await
        .unwrap()
        .expect("status still served");
    assert_eq!(after.state, CrawlState::Done);
    assert_eq!(after.seeds, done.seeds);
    assert_eq!(after.created_at, done.created_at);
    assert_eq!(after.counters, done.counters, "counters survive retention");
    // A late redelivery of a finished job leaves no trace.
    store
        .finish(
            &id,
            "/authors/OL1A",
            1,
            &node("/authors/OL1A", Label::Author, &[]),
        )
        .await
        .unwrap();
    assert_eq!(
        store.status(&id).await.unwrap().expect("status").counters,
        done.counters
    );
    let (working, _, _) = ttls(&id).await;
    assert!(working.is_empty(), "{working:?}");
}

/// Issue 18: a cancelled crawl's working state carries the retention too; a DLQ replay that
/// makes a done crawl run again keeps its working state again (no TTL) until it is done.
#[tokio::test]
async fn cancelled_crawls_expire_and_a_replay_keeps_the_state_while_it_runs() {
    let (store, id) = store_with_crawl(&["/works/OL1W", "/works/OL2W"], 100).await;
    let store = store.with_retention(Duration::from_secs(60));
    assert!(store.cancel(&id).await.unwrap());
    let (working, meta, _) = ttls(&id).await;
    assert!(!working.is_empty());
    assert!(
        working.iter().all(|(_, t)| (1..=60).contains(t)),
        "{working:?}"
    );
    assert_eq!(meta, -1);
    assert_eq!(
        store.status(&id).await.unwrap().expect("status").state,
        CrawlState::Cancelled
    );

    let (store, id) = store_with_crawl(&["/works/OL1W"], 100).await;
    let store = store.with_retention(Duration::from_secs(60));
    run_to_done(&store, &id).await;
    assert_eq!(
        store.requeue(&id, "/subjects/x", 1).await.unwrap(),
        store::Requeue::Requeued
    );
    let (working, _, _) = ttls(&id).await;
    assert!(
        working.iter().all(|(_, t)| *t == -1),
        "a running crawl's state does not expire: {working:?}"
    );
    store
        .finish(
            &id,
            "/subjects/x",
            1,
            &node("/subjects/x", Label::Subject, &[]),
        )
        .await
        .unwrap();
    let (working, _, _) = ttls(&id).await;
    assert!(
        working.iter().all(|(_, t)| (1..=60).contains(t)),
        "{working:?}"
    );
}

/// A cancelled crawl's keys in flight are in flight until its working state expires, and
/// none afterwards: the pending count is a summary field, but it is not read without the
/// claims it counts (their late jobs, which would have settled them, are dropped unseen).
#[tokio::test]
async fn a_cancelled_crawl_has_nothing_in_flight_once_its_claims_expire() {
    let (store, id) = store_with_crawl(&["/works/OL1W", "/works/OL2W"], 100).await;
    let store = store.with_retention(Duration::from_secs(1));
    assert!(store.cancel(&id).await.unwrap());
    let status = store.status(&id).await.unwrap().expect("status");
    assert_eq!(status.counters.in_flight, 2, "{status:?}");
    eventually("the claims to expire", Duration::from_secs(10), || async {
        let status = store.status(&id).await.unwrap().expect("the summary stays");
        (status.counters.in_flight == 0).then_some(())
    })
    .await;
    let status = store.status(&id).await.unwrap().expect("the summary stays");
    assert_eq!(status.state, CrawlState::Cancelled);
    assert_eq!(
        store.backlogs(std::slice::from_ref(&id)).await.unwrap(),
        vec![0]
    );
}

/// Issue 18 (why `edges` still dedupes per relationship): one relationship is published by
/// both of its ends, the work from its record and the author from its works page, and the
/// graph holds it once. Counting each node's edges with its outcome would count it twice, so
/// the counter must equal the graph's distinct relationships, not the edges published.
#[tokio::test]
async fn an_edge_published_by_both_its_ends_is_counted_once() {
    let (store, id) = store_with_crawl(&["/works/OL1W"], 100).await;
    store
        .claim(&id, "0|/works/OL1W", 100, &[child("/authors/OL1A", 1)])
        .await
        .unwrap();
    let edge = "/works/OL1W|WRITTEN_BY|/authors/OL1A";
    store
        .finish(
            &id,
            "/works/OL1W",
            0,
            &node("/works/OL1W", Label::Work, &[edge]),
        )
        .await
        .unwrap();
    store
        .finish(
            &id,
            "/authors/OL1A",
            1,
            &node(
                "/authors/OL1A",
                Label::Author,
                &[edge, "/works/OL2W|WRITTEN_BY|/authors/OL1A"],
            ),
        )
        .await
        .unwrap();
    let counters = store.status(&id).await.unwrap().expect("status").counters;
    assert_eq!((counters.fetched, counters.edges), (2, 2));
}

/// A paused crawl's job is held, not run: its key stays pending (the crawl is not done when
/// every other key finishes), nothing is counted, and on resume it is handed back whole and
/// runs; its run takes it out of the held set, and then the crawl ends done.
#[tokio::test]
async fn a_paused_crawls_jobs_are_held_and_run_after_resume() {
    let (store, id) = store_with_crawl(&["/works/OL1W", "/works/OL2W"], 100).await;
    assert!(matches!(
        store.begin(&id, "/works/OL1W", 0).await.unwrap(),
        Begin::Run { .. }
    ));
    assert_eq!(store.pause(&id).await.unwrap(), store::Pause::Paused);
    assert_eq!(store.pause(&id).await.unwrap(), store::Pause::Paused);
    // A job running when the crawl paused still claims its children: they are held later.
    let claimed = store
        .claim(&id, "0|/works/OL1W", 100, &[child("/authors/OL1A", 1)])
        .await
        .unwrap();
    assert_eq!(claimed, vec![true]);
    store
        .finish(
            &id,
            "/works/OL1W",
            0,
            &node("/works/OL1W", Label::Work, &[]),
        )
        .await
        .unwrap();
    assert_eq!(
        store.begin(&id, "/works/OL2W", 0).await.unwrap(),
        Begin::Held
    );
    assert_eq!(
        store.begin(&id, "/authors/OL1A", 1).await.unwrap(),
        Begin::Held
    );
    let paused = store.status(&id).await.unwrap().expect("status");
    assert_eq!(paused.state, CrawlState::Paused);
    assert_eq!(paused.counters.in_flight, 2, "{paused:?}");
    assert_eq!(paused.counters.duplicates, 0);
    assert_eq!(store.held_count(&id).await.unwrap(), 2);

    assert_eq!(store.resume(&id).await.unwrap(), store::Resume::Running);
    let (cursor, mut held) = store.held_jobs(&id, 0, 100).await.unwrap();
    assert_eq!(cursor, 0);
    held.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<(&str, u32)> = held.iter().map(|j| (j.key.as_str(), j.depth)).collect();
    assert_eq!(keys, vec![("/authors/OL1A", 1), ("/works/OL2W", 0)]);
    for job in &held {
        assert!(matches!(
            store.begin_job(job).await.unwrap(),
            Begin::Run { .. }
        ));
    }
    assert_eq!(store.held_count(&id).await.unwrap(), 0);
    store
        .finish(
            &id,
            "/works/OL2W",
            0,
            &node("/works/OL2W", Label::Work, &[]),
        )
        .await
        .unwrap();
    store
        .finish(
            &id,
            "/authors/OL1A",
            1,
            &node("/authors/OL1A", Label::Author, &[]),
        )
        .await
        .unwrap();
    let done = store.status(&id).await.unwrap().expect("status");
    assert_eq!(done.state, CrawlState::Done, "{done:?}");
    assert_eq!(done.counters.fetched, 3);
    assert!(matches!(
        store.pause(&id).await.unwrap(),
        store::Pause::Finished(CrawlState::Done)
    ));
}

/// A crawl whose last pending key finished while it was paused is done on resume; a paused
/// crawl cancelled skips its held jobs, and cannot be resumed.
#[tokio::test]
async fn resume_ends_an_empty_paused_crawl_and_cancel_skips_held_jobs() {
    let (store, id) = store_with_crawl(&["/works/OL1W"], 100).await;
    assert!(matches!(
        store.begin(&id, "/works/OL1W", 0).await.unwrap(),
        Begin::Run { .. }
    ));
    store.pause(&id).await.unwrap();
    store
        .finish(
            &id,
            "/works/OL1W",
            0,
            &node("/works/OL1W", Label::Work, &[]),
        )
        .await
        .unwrap();
    let paused = store.status(&id).await.unwrap().expect("status");
    assert_eq!(paused.state, CrawlState::Paused, "never done while paused");
    assert_eq!(store.resume(&id).await.unwrap(), store::Resume::Done);

    let (store, other) = store_with_crawl(&["/works/OL1W"], 100).await;
    store.pause(&other).await.unwrap();
    assert_eq!(
        store.begin(&other, "/works/OL1W", 0).await.unwrap(),
        Begin::Held
    );
    assert!(store.cancel(&other).await.unwrap());
    let cancelled = store.status(&other).await.unwrap().expect("status");
    assert_eq!(cancelled.state, CrawlState::Cancelled);
    assert_eq!(cancelled.counters.in_flight, 0, "{cancelled:?}");
    assert_eq!(cancelled.counters.skipped, 1, "{cancelled:?}");
    assert_eq!(store.held_count(&other).await.unwrap(), 0);
    assert_eq!(
        store.resume(&other).await.unwrap(),
        store::Resume::Cancelled
    );
}

/// Purging refuses a crawl with work ahead, deletes a finished one's every key and takes it
/// out of the index; an unknown crawl is unknown.
#[tokio::test]
async fn a_purge_deletes_only_a_finished_crawl() {
    let prefix = unique("index");
    let store = CrawlStore::connect(&stack_env("REDIS_URL"))
        .await
        .expect("redis reachable")
        .with_index_prefix(&prefix);
    let id = unique("crawl");
    store
        .create(&CrawlSpec {
            crawl_id: id.clone(),
            seeds: vec!["/works/OL1W".to_owned()],
            max_depth: 1,
            max_nodes: 10,
        })
        .await
        .unwrap();
    assert_eq!(
        store.purge(&id).await.unwrap(),
        store::Purge::Active(CrawlState::Running)
    );
    assert_eq!(store.active_count().await.unwrap(), 1);
    store.cancel(&id).await.unwrap();
    assert_eq!(
        store.active_count().await.unwrap(),
        0,
        "a cancelled crawl is pruned"
    );
    assert_eq!(store.purge(&id).await.unwrap(), store::Purge::Purged);
    assert_eq!(store.status(&id).await.unwrap(), None);
    let mut redis = store.connection();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("bookworm:crawl:{{{id}}}:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    let page = store
        .list(
            &store::ListQuery {
                limit: 10,
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    assert!(page.crawls.is_empty(), "{page:?}");
    assert_eq!(store.purge(&id).await.unwrap(), store::Purge::Unknown);
}

/// The running-crawls reservation admits exactly `limit` crawls with work ahead, and a
/// place frees when one ends.
#[tokio::test]
async fn reservations_admit_at_most_the_limit_of_active_crawls() {
    let store = CrawlStore::connect(&stack_env("REDIS_URL"))
        .await
        .expect("redis reachable")
        .with_index_prefix(&unique("index"));
    let mut admitted = Vec::new();
    for _ in 0..3 {
        let id = unique("crawl");
        if store.reserve(&id, chrono::Utc::now(), 2).await.unwrap() {
            store
                .create(&CrawlSpec {
                    crawl_id: id.clone(),
                    seeds: vec!["/works/OL1W".to_owned()],
                    max_depth: 1,
                    max_nodes: 10,
                })
                .await
                .unwrap();
            admitted.push(id);
        }
    }
    assert_eq!(admitted.len(), 2);
    store.pause(&admitted[0]).await.unwrap();
    assert_eq!(store.active_count().await.unwrap(), 2, "paused counts");
    assert!(
        !store
            .reserve(&unique("crawl"), chrono::Utc::now(), 2)
            .await
            .unwrap()
    );
    store.cancel(&admitted[0]).await.unwrap();
    assert!(
        store
            .reserve(&unique("crawl"), chrono::Utc::now(), 2)
            .await
            .unwrap()
    );
}

/// A crawl whose stored state is corrupt (its meta a key of another type) is left out of a
/// listing and of the running count; the other crawls are still listed.
#[tokio::test]
async fn a_corrupt_crawl_does_not_break_the_listing() {
    let store = CrawlStore::connect(&stack_env("REDIS_URL"))
        .await
        .expect("redis reachable")
        .with_index_prefix(&unique("index"));
    let (good, bad) = (unique("crawl"), unique("crawl"));
    for id in [&good, &bad] {
        store
            .create(&CrawlSpec {
                crawl_id: id.clone(),
                seeds: vec!["/works/OL1W".to_owned()],
                max_depth: 1,
                max_nodes: 10,
            })
            .await
            .unwrap();
    }
    let mut redis = store.connection();
    let meta = format!("bookworm:crawl:{{{bad}}}:meta");
    redis::pipe()
        .del(&meta)
        .set(&meta, "not a hash")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let page = store
        .list(
            &store::ListQuery {
                limit: 10,
                ..Default::default()
            },
            false,
        )
        .await
        .expect("the listing survives a corrupt crawl");
    let ids: Vec<&str> = page.crawls.iter().map(|c| c.crawl_id.as_str()).collect();
    assert_eq!(ids, vec![good.as_str()]);
    assert_eq!(store.active_count().await.unwrap(), 1);
    redis::cmd("DEL")
        .arg(&meta)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// A crawl running across the upgrade to the pending mark (issue 18)

/// Writes a running crawl `id` in the layout from before the pending mark: claims without
/// it, a `pending` set of the keys in flight, and no pending counter. Its seed `/works/OL1W`
/// has run (its node counted) and claimed `children` at depth 1, all in flight, under its
/// whole claimer name (as claims from before tags read).
async fn write_legacy_crawl(id: &str, children: &[String]) {
    let mut redis = support::egress::redis().await;
    let base = format!("bookworm:crawl:{{{id}}}");
    let now = chrono::Utc::now().to_rfc3339();
    let mut pipe = redis::pipe();
    pipe.atomic()
        .hset_multiple(
            format!("{base}:meta"),
            &[
                ("state", "running"),
                ("seeds", r#"["/works/OL1W"]"#),
                ("max_depth", "2"),
                ("max_nodes", "1000"),
                ("created_at", now.as_str()),
                ("updated_at", now.as_str()),
            ],
        )
        .ignore()
        .hset(format!("{base}:claims"), "/works/OL1W", "0|seed*")
        .ignore();
    for key in children {
        pipe.hset(format!("{base}:claims"), key, "1|0|/works/OL1W")
            .ignore()
            .sadd(format!("{base}:pending"), key)
            .ignore();
    }
    pipe.hset_multiple(
        format!("{base}:counters"),
        &[
            ("enqueued", 1 + children.len() as u64),
            ("fetched", 1),
            ("nodes:Work", 1),
        ],
    )
    .ignore();
    pipe.query_async::<()>(&mut redis).await.unwrap();
}

/// The legacy pending set's size, the pending counter, and the claims that carry the
/// pending mark, read raw.
async fn pending_layout(id: &str) -> (u64, Option<u64>, u64) {
    let mut redis = support::egress::redis().await;
    let base = format!("bookworm:crawl:{{{id}}}");
    let (legacy, counter, claims): (u64, Option<u64>, Vec<String>) = redis::pipe()
        .scard(format!("{base}:pending"))
        .hget(format!("{base}:counters"), "pending")
        .hvals(format!("{base}:claims"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let marked = claims.iter().filter(|c| c.starts_with('+')).count() as u64;
    (legacy, counter, marked)
}

/// A crawl that was running when the pending set gave way to the pending mark reads the same
/// throughout: its set counts as pending until its members are adopted (the key a script
/// touches at once, the others a batch per script), nothing is counted twice however jobs
/// are redelivered, the set disappears, and the crawl is done when its last key finishes.
#[tokio::test]
async fn a_crawl_running_across_the_upgrade_adopts_its_pending_set_and_ends_done() {
    let store = CrawlStore::connect(&stack_env("REDIS_URL"))
        .await
        .expect("redis reachable");
    let id = unique("legacy");
    let children: Vec<String> = (0..250).map(|i| format!("/authors/OL{i}A")).collect();
    write_legacy_crawl(&id, &children).await;

    let status = store.status(&id).await.unwrap().expect("status");
    assert_eq!(status.state, CrawlState::Running);
    assert_eq!(status.counters.in_flight, 250, "{status:?}");
    assert_eq!(
        store.backlogs(std::slice::from_ref(&id)).await.unwrap(),
        vec![250]
    );

    // The first job to begin adopts its own key and a batch of the others.
    assert!(matches!(
        store.begin(&id, &children[0], 1).await.unwrap(),
        Begin::Run { .. }
    ));
    let (legacy, counter, marked) = pending_layout(&id).await;
    assert!(legacy < 249, "a batch was adopted: {legacy} left");
    assert_eq!(legacy + counter.unwrap_or(0), 250);
    assert_eq!(counter, Some(marked));
    let status = store.status(&id).await.unwrap().expect("status");
    assert_eq!(status.counters.in_flight, 250, "{status:?}");

    // It claims a grandchild and finishes, twice (redelivered).
    assert_eq!(
        store
            .claim(&id, "1|/authors/OL0A", 1000, &[child("/works/OL9W", 2)])
            .await
            .unwrap(),
        vec![true]
    );
    for _ in 0..2 {
        store
            .finish(
                &id,
                &children[0],
                1,
                &node(&children[0], Label::Author, &[]),
            )
            .await
            .unwrap();
    }
    // The seed's job, redelivered, re-enqueues its own pending child (a legacy claim under
    // its whole claimer name), without counting it pending twice.
    assert_eq!(
        store
            .claim(&id, "0|/works/OL1W", 1000, &[child(&children[1], 1)])
            .await
            .unwrap(),
        vec![true]
    );
    // One child is dead-lettered, the others are fetched (each outcome recorded twice).
    for (i, key) in children.iter().enumerate().skip(1) {
        assert!(matches!(
            store.begin(&id, key, 1).await.unwrap(),
            Begin::Run { .. }
        ));
        let outcome = if i == 2 {
            Finish::Failed(FailureReason::Http5xx)
        } else {
            node(key, Label::Author, &[])
        };
        for _ in 0..2 {
            store.finish(&id, key, 1, &outcome).await.unwrap();
        }
    }
    let status = store.status(&id).await.unwrap().expect("status");
    assert_eq!(status.state, CrawlState::Running, "{status:?}");
    assert_eq!(status.counters.in_flight, 1, "the grandchild: {status:?}");
    assert_eq!(pending_layout(&id).await, (0, Some(1), 1));

    assert!(matches!(
        store.begin(&id, "/works/OL9W", 2).await.unwrap(),
        Begin::Run { .. }
    ));
    store
        .finish(
            &id,
            "/works/OL9W",
            2,
            &node("/works/OL9W", Label::Work, &[]),
        )
        .await
        .unwrap();
    let status = store.status(&id).await.unwrap().expect("status");
    assert_eq!(status.state, CrawlState::Done, "{status:?}");
    assert_eq!(status.counters.in_flight, 0);
    // The seed, 249 authors and the grandchild; the seed's 250 children, the grandchild and
    // the re-enqueue.
    assert_eq!(status.counters.fetched, 251);
    assert_eq!(status.counters.nodes.get("Author"), Some(&249));
    assert_eq!(status.counters.nodes.get("Work"), Some(&2));
    assert_eq!(status.counters.failed.get("http_5xx"), Some(&1));
    assert_eq!(status.counters.enqueued, 253);
    assert_eq!(pending_layout(&id).await, (0, Some(0), 0));
    let mut redis = support::egress::redis().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!("bookworm:crawl:{{{id}}}:pending"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!exists, "the legacy set is gone");
}

/// A crawl from before the pending mark that is paused and cancelled skips each key in
/// flight once: its held job at the cancel, the others when their (redelivered) jobs begin.
#[tokio::test]
async fn a_cancelled_crawl_from_before_the_upgrade_skips_each_key_once() {
    let store = CrawlStore::connect(&stack_env("REDIS_URL"))
        .await
        .expect("redis reachable");
    let id = unique("legacy");
    let children: Vec<String> = (0..3).map(|i| format!("/authors/OL{i}A")).collect();
    write_legacy_crawl(&id, &children).await;
    assert_eq!(store.pause(&id).await.unwrap(), store::Pause::Paused);
    assert_eq!(
        store.begin(&id, &children[0], 1).await.unwrap(),
        Begin::Held
    );
    assert!(store.cancel(&id).await.unwrap());
    let status = store.status(&id).await.unwrap().expect("status");
    assert_eq!(status.state, CrawlState::Cancelled);
    assert_eq!(
        (status.counters.skipped, status.counters.in_flight),
        (1, 2),
        "{status:?}"
    );
    for key in &children {
        for _ in 0..2 {
            assert_eq!(store.begin(&id, key, 1).await.unwrap(), Begin::Cancelled);
        }
    }
    let status = store.status(&id).await.unwrap().expect("status");
    assert_eq!(
        (status.counters.skipped, status.counters.in_flight),
        (3, 0),
        "{status:?}"
    );
    assert_eq!(pending_layout(&id).await, (0, Some(0), 0));
}
