//! The worker's crawl handler, one job at a time, against the real Redis and a small
//! stand-in for Open Library that answers fixed bodies: what a job publishes, what it
//! dead-letters, and what the crawl store records when the consumer loop reports the job's
//! outcome (`Handler::finished`). Kafka is not involved: these tests call the handler's hooks
//! in the order the consumer loop does.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use bookworm::config::{EgressSpec, LimitScope};
use bookworm::consumer::{Delivery, HandleError, Handler, Outcome};
use bookworm::crawl::client::OpenLibraryClient;
use bookworm::crawl::client::egress::EgressPool;
use bookworm::crawl::client::egress::limiter::Rate;
use bookworm::crawl::handler::{CrawlHandler, OutputTopics};
use bookworm::crawl::limits::CrawlLimits;
use bookworm::crawl::store::{CrawlSpec, CrawlState, CrawlStore};
use bookworm::kafka::publish::Record;
use bookworm::message::{CrawlJob, Node, VERSION};
use chrono::Utc;
use serde_json::{Value, json};
use support::egress::{fetch_settings, metrics, pool_settings};
use support::{stack_env, unique};
use url::Url;

const ROBOTS: &str = "User-agent: *\nDisallow: /search\nDisallow: /api\n";

/// Serves `bodies` (path → JSON body, status 200), robots.txt, and a 404 `notfound` record
/// for anything else.
async fn open_library(bodies: Vec<(&str, Value)>) -> Url {
    let bodies: Arc<HashMap<String, String>> = Arc::new(
        bodies
            .into_iter()
            .map(|(path, body)| (path.to_owned(), body.to_string()))
            .collect(),
    );
    let app = axum::Router::new()
        .fallback(
            |State(bodies): State<Arc<HashMap<String, String>>>, uri: Uri| async move {
                let path = uri.path().to_owned();
                if path == "/robots.txt" {
                    return (StatusCode::OK, ROBOTS.to_owned());
                }
                match bodies.get(&path) {
                    Some(body) => (StatusCode::OK, body.clone()),
                    None => (
                        StatusCode::NOT_FOUND,
                        json!({"error": "notfound", "key": path.trim_end_matches(".json")})
                            .to_string(),
                    ),
                }
            },
        )
        .with_state(bodies);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Url::parse(&format!("http://{addr}")).expect("origin")
}

fn topics() -> OutputTopics {
    OutputTopics {
        frontier: "frontier".to_owned(),
        results: "results".to_owned(),
        edges: "edges".to_owned(),
        dlq: "dlq".to_owned(),
    }
}

/// A handler fetching from `origin` directly, with a crawl of `seeds` created in Redis.
async fn handler_with_crawl(origin: Url, seeds: &[&str], max_depth: u32) -> (CrawlHandler, String) {
    let metrics = metrics();
    let settings = pool_settings(
        vec![EgressSpec::Direct],
        Rate::per_minute(6000, 50),
        LimitScope::Local,
        "unused",
    );
    let pool = EgressPool::new(settings, None, metrics.clone()).expect("pool");
    let client = OpenLibraryClient::new(pool, fetch_settings(origin), metrics.clone(), None);
    let store = CrawlStore::connect(&stack_env("REDIS_URL"))
        .await
        .expect("redis reachable");
    let crawl_id = unique("handler");
    store
        .create(&CrawlSpec {
            crawl_id: crawl_id.clone(),
            seeds: seeds.iter().map(|s| s.to_string()).collect(),
            max_depth,
            max_nodes: 1000,
        })
        .await
        .expect("crawl created");
    let handler = CrawlHandler::new(
        client,
        store,
        CrawlLimits::default(),
        topics(),
        metrics,
        "test-worker".to_owned(),
    );
    (handler, crawl_id)
}

async fn store() -> CrawlStore {
    CrawlStore::connect(&stack_env("REDIS_URL"))
        .await
        .expect("redis reachable")
}

fn delivery(crawl_id: &str, key: &str, depth: u32) -> Delivery {
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
    Delivery {
        topic: "frontier".to_owned(),
        partition: 0,
        offset: 0,
        key: Some(key.as_bytes().to_vec()),
        payload: Some(serde_json::to_vec(&job).expect("job")),
        attempt: 1,
    }
}

fn work(key: &str, authors: &[&str], subjects: &[&str]) -> Value {
    json!({
        "key": key,
        "type": {"key": "/type/work"},
        "title": format!("Title of {key}"),
        "authors": authors
            .iter()
            .map(|a| json!({"author": {"key": a}, "type": {"key": "/type/author_role"}}))
            .collect::<Vec<_>>(),
        "subjects": subjects,
        "revision": 1,
    })
}

fn frontier_keys(records: &[Record]) -> Vec<String> {
    let mut keys: Vec<String> = records
        .iter()
        .filter(|r| r.topic == "frontier")
        .map(|r| r.key.clone())
        .collect();
    keys.sort();
    keys
}

/// A record whose body names another key than the one asked for is not that record: the
/// job is dead-lettered as `parse`, and nothing is published under either key (before, the
/// node went out under the body's key and the asked key was counted fetched without one).
#[tokio::test]
async fn a_record_naming_another_key_is_dead_lettered_as_parse() {
    let origin = open_library(vec![(
        "/works/OL1W.json",
        work("/works/OL2W", &["/authors/OL1A"], &[]),
    )])
    .await;
    let (handler, crawl) = handler_with_crawl(origin, &["/works/OL1W"], 2).await;
    let outcome = handler.handle(&delivery(&crawl, "/works/OL1W", 0)).await;
    match outcome {
        Err(HandleError::DeadLetter { reason, detail }) => {
            assert_eq!(reason, "parse");
            assert!(detail.contains("/works/OL2W"), "{detail}");
        }
        other => panic!("expected a parse dead letter, got {other:?}"),
    }
}

/// A record whose body names the key asked for is published under it, with the values of the
/// wrong shape left out rather than the record lost: a `null` cover, a `null` subject and an
/// author role without `author` cost themselves only.
#[tokio::test]
async fn a_record_with_one_bad_value_is_published_without_it() {
    let mut body = work("/works/OL1W", &["/authors/OL1A"], &["Foxes"]);
    body["covers"] = json!([7, null, 8]);
    body["subjects"] = json!(["Foxes", null]);
    body["authors"]
        .as_array_mut()
        .expect("authors")
        .push(json!({"type": {"key": "/type/author_role"}}));
    let origin = open_library(vec![("/works/OL1W.json", body)]).await;
    let (handler, crawl) = handler_with_crawl(origin, &["/works/OL1W"], 2).await;
    let records = handler
        .handle(&delivery(&crawl, "/works/OL1W", 0))
        .await
        .expect("the record is crawled");
    let node: Node = records
        .iter()
        .find(|r| r.topic == "results")
        .map(|r| serde_json::from_slice(&r.payload).expect("node"))
        .expect("a node");
    assert_eq!(node.key, "/works/OL1W");
    assert_eq!(node.props["covers"], json!([7, 8]));
    assert_eq!(
        frontier_keys(&records),
        ["/authors/OL1A", "/subjects/foxes"]
    );
}

/// A crawl whose stored state cannot be read (a `max_depth` that is not a number) is not a
/// Redis outage: the job is dead-lettered as `invalid_job` saying the state is corrupt,
/// instead of being retried forever while its partition's commits wait.
#[tokio::test]
async fn a_job_of_a_crawl_with_corrupt_state_is_dead_lettered() {
    let origin = open_library(vec![(
        "/works/OL1W.json",
        work("/works/OL1W", &["/authors/OL1A"], &[]),
    )])
    .await;
    let (handler, crawl) = handler_with_crawl(origin, &["/works/OL1W"], 2).await;
    let mut redis = support::egress::redis().await;
    redis::cmd("HSET")
        .arg(format!("bookworm:crawl:{{{crawl}}}:meta"))
        .arg("max_depth")
        .arg("deep")
        .query_async::<()>(&mut redis)
        .await
        .expect("meta broken");
    match handler.handle(&delivery(&crawl, "/works/OL1W", 0)).await {
        Err(HandleError::DeadLetter { reason, detail }) => {
            assert_eq!(reason, "invalid_job");
            assert!(detail.contains("corrupt crawl state"), "{detail}");
        }
        other => panic!("expected an invalid_job dead letter, got {other:?}"),
    }
}

/// A job whose children were claimed but whose outputs were then dead-lettered (the
/// frontier did not acknowledge in time) releases those claims when the loop records its
/// DLQ outcome: the crawl ends `done` with the parent in the DLQ, instead of waiting forever
/// on children no job was published for.
#[tokio::test]
async fn a_dead_lettered_job_leaves_no_child_pending() {
    let origin = open_library(vec![(
        "/works/OL1W.json",
        work(
            "/works/OL1W",
            &["/authors/OL1A", "/authors/OL2A"],
            &["Foxes"],
        ),
    )])
    .await;
    let (handler, crawl) = handler_with_crawl(origin, &["/works/OL1W"], 2).await;
    let job = delivery(&crawl, "/works/OL1W", 0);
    let records = handler.handle(&job).await.expect("the work is crawled");
    assert_eq!(
        frontier_keys(&records),
        ["/authors/OL1A", "/authors/OL2A", "/subjects/foxes"]
    );
    // The loop could not publish `records` within PUBLISH_TIMEOUT; it published the DLQ
    // record instead and reports that.
    handler
        .finished(&job, Outcome::DeadLettered { reason: "publish" })
        .await
        .expect("outcome recorded");
    let status = store()
        .await
        .status(&crawl)
        .await
        .expect("status")
        .expect("known");
    assert_eq!(status.counters.in_flight, 0, "{status:?}");
    assert_eq!(status.state, CrawlState::Done, "{status:?}");
    assert_eq!(status.counters.failed.get("publish"), Some(&1));
    assert_eq!(status.counters.enqueued, 1, "only the seed's job exists");
}

/// A child whose frontier record was delivered after all (a publish that timed out may still
/// deliver part of its records) runs when it arrives, after its parent released its claim:
/// it claims itself anew, and the crawl is done again once it finishes.
#[tokio::test]
async fn a_released_child_whose_job_arrives_late_still_runs() {
    let origin = open_library(vec![
        ("/works/OL1W.json", work("/works/OL1W", &[], &["Foxes"])),
        (
            "/subjects/foxes.json",
            json!({"key": "/subjects/foxes", "name": "Foxes", "work_count": 0, "works": []}),
        ),
    ])
    .await;
    let (handler, crawl) = handler_with_crawl(origin, &["/works/OL1W"], 2).await;
    let parent = delivery(&crawl, "/works/OL1W", 0);
    handler.handle(&parent).await.expect("the work is crawled");
    handler
        .finished(&parent, Outcome::DeadLettered { reason: "publish" })
        .await
        .expect("outcome recorded");

    let child = delivery(&crawl, "/subjects/foxes", 1);
    let records = handler
        .handle(&child)
        .await
        .expect("the subject is crawled");
    assert!(records.iter().any(|r| r.topic == "results"), "{records:?}");
    let running = store()
        .await
        .status(&crawl)
        .await
        .expect("status")
        .expect("known");
    assert_eq!(running.state, CrawlState::Running);
    assert_eq!(running.counters.in_flight, 1);
    handler
        .finished(&child, Outcome::Published(&records))
        .await
        .expect("outcome recorded");
    let done = store()
        .await
        .status(&crawl)
        .await
        .expect("status")
        .expect("known");
    assert_eq!(done.state, CrawlState::Done, "{done:?}");
    assert_eq!(done.counters.nodes.get("Subject"), Some(&1));
}
