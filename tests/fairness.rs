//! Fair sharing between crawls (issue 18): a small crawl started while a large one runs gets
//! its share of the worker instead of waiting behind the large crawl's backlog at every level
//! of its descent.
//!
//! The figure the issue asks for (a 200-node crawl beside a 20,000-node one, within 1.5× its
//! time alone) is measured, not asserted: `FAIRNESS_BIG_NODES=20000 cargo test --test
//! fairness -- --nocapture` prints `FAIRNESS` lines (docs/performance.md quotes them). The
//! test asserts what does not depend on the machine's speed: while the small crawl runs, the
//! large one advances by a fraction of what the small one fetches (its one-slot share), not
//! by its backlog once per level of the small crawl; and the large crawl's jobs beyond its
//! share wait in the worker's backlog instead of being published again (deferred), which once
//! cost 1,100–1,600 frontier records per small crawl and most of its slowdown.

mod support;

use std::time::{Duration, Instant};

use support::chaos::{Crawl, Deployment, Options};

/// Nodes of the small crawl (its budget).
const SMALL: u64 = 200;

fn fetched(status: &serde_json::Value) -> u64 {
    status["counters"]["fetched"].as_u64().unwrap_or(0)
}

/// The sum of a counter over the deployment's workers.
async fn workers_counter(deployment: &Deployment, name: &str) -> f64 {
    let mut total = 0.0;
    for worker in deployment.workers.iter().flatten() {
        let body = reqwest::get(format!("{}/metrics", worker.url))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        total += body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    total
}

/// Runs the small crawl (the simulator's `nth` work) to done; its time.
async fn small_crawl(deployment: &Deployment, nth: u64) -> (Crawl, Duration) {
    let crawl = deployment.create_crawl_of(nth, 10, Some(SMALL)).await;
    let start = Instant::now();
    let status = deployment.wait_done(&crawl).await;
    // Its budget spent (every claimed key ended, a few in the DLQ: the catalogue's deletes).
    // `enqueued` also counts re-enqueues of a key reached later by a shorter path, so it can
    // pass the budget by those.
    let enqueued = status["counters"]["enqueued"].as_u64().unwrap_or(0);
    assert!(enqueued >= SMALL, "{status}");
    (crawl, start.elapsed())
}

#[tokio::test]
async fn a_small_crawl_beside_a_large_one_gets_its_share() {
    let big_nodes: u64 = std::env::var("FAIRNESS_BIG_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let works = (big_nodes * 2).max(2_000);
    let deployment = Deployment::start(Options {
        workers: 1,
        catalogue: [works, works / 4, 100],
        worker_env: vec![
            ("CONCURRENT_JOBS".to_owned(), "8".to_owned()),
            // Every crawl fetches its records itself: the small crawl beside the large one
            // must not be helped by records the large one just cached.
            ("REFETCH_AFTER".to_owned(), "1ms".to_owned()),
        ],
        ..Options::default()
    })
    .await;

    // The first crawl of a new deployment also pays its warm-up (connections, the
    // simulator's and Neo4j's first answers): timed, it made the ratio read below 1.
    let _ = small_crawl(&deployment, 2).await;
    let (_, alone) = small_crawl(&deployment, 2).await;

    let big = deployment.create_crawl_of(1, 10, Some(big_nodes)).await;
    // The large crawl has a backlog: far more keys claimed than fetched.
    support::eventually(
        "the large crawl builds a backlog",
        Duration::from_secs(300),
        || async {
            let status = deployment.status(&big).await?;
            let in_flight = status["counters"]["in_flight"].as_u64()?;
            (in_flight >= 4 * SMALL && fetched(&status) >= 100).then_some(())
        },
    )
    .await;
    let big_before = fetched(&deployment.status(&big).await.expect("status"));
    let deferred_before =
        workers_counter(&deployment, "relentless_worker_jobs_deferred_total").await;
    let (_, beside) = small_crawl(&deployment, 2).await;
    let big_status = deployment.status(&big).await.expect("status");
    let big_progress = fetched(&big_status) - big_before;
    let deferred = workers_counter(&deployment, "relentless_worker_jobs_deferred_total").await
        - deferred_before;
    eprintln!(
        "FAIRNESS small crawl of {SMALL} nodes: alone {:.2} s, beside a {big_nodes}-node crawl {:.2} s \
         (ratio {:.2}); the large crawl fetched {big_progress} meanwhile; {deferred} jobs deferred",
        alone.as_secs_f64(),
        beside.as_secs_f64(),
        beside.as_secs_f64() / alone.as_secs_f64(),
    );
    // Deferral is only for a partition whose backlog is full (1,000 messages here): the
    // large crawl's few thousand keys in flight fit, so its jobs wait instead.
    assert!(
        deferred < SMALL as f64,
        "{deferred} jobs deferred: the large crawl's jobs were published again instead of held"
    );
    // In order, the small crawl waits for the large one's backlog (here at least 4 × SMALL
    // keys) once per level; with shares weighted by backlog the large crawl keeps about one
    // slot of the eight meanwhile (equal shares would give it about the small one's size).
    assert!(
        big_progress < SMALL,
        "the large crawl fetched {big_progress} nodes while the small one fetched {SMALL}"
    );
    assert_eq!(big_status["state"], "running", "{big_status}");
}
