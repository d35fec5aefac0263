//! Freshness jobs (`CrawlJob::min_revision`, published by `bookworm follow`) through the
//! worker's handler, against the real Redis (crawl store and record cache) and a small
//! stand-in for Open Library whose answers a test changes between jobs: a cached copy older
//! than the job's revision is fetched again, a delete becomes a gone node and the crawl still
//! reaches `done`, a redirect chain publishes each gone source beside the target's node, and
//! ordinary crawl jobs behave exactly as before.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use bookworm::config::{EgressSpec, LimitScope};
use bookworm::consumer::{Delivery, HandleError, Handler, Outcome};
use bookworm::crawl::client::OpenLibraryClient;
use bookworm::crawl::client::egress::EgressPool;
use bookworm::crawl::client::egress::limiter::Rate;
use bookworm::crawl::handler::{CrawlHandler, OutputTopics};
use bookworm::crawl::limits::CrawlLimits;
use bookworm::crawl::store::{CrawlSpec, CrawlState, CrawlStatus, CrawlStore};
use bookworm::graph::Row;
use bookworm::kafka::publish::Record;
use bookworm::message::{CrawlJob, Edge, Gone, Node, VERSION};
use chrono::Utc;
use serde_json::{Value, json};
use support::egress::{fetch_settings, metrics, pool_settings, redis};
use support::{stack_env, unique};
use url::Url;

const ROBOTS: &str = "User-agent: *\nDisallow: /search\n";

type Bodies = Arc<Mutex<HashMap<String, String>>>;
type Hits = Arc<Mutex<HashMap<String, usize>>>;

/// A stand-in for Open Library: serves the bodies a test sets (status 200), a 404
/// `notfound` record for anything else, and counts the requests per path.
struct Origin {
    url: Url,
    bodies: Bodies,
    hits: Hits,
}

impl Origin {
    async fn start() -> Self {
        let bodies: Bodies = Arc::default();
        let hits: Hits = Arc::default();
        let app = axum::Router::new()
            .fallback(
                |State((bodies, hits)): State<(Bodies, Hits)>, uri: Uri| async move {
                    let path = uri.path().to_owned();
                    if path == "/robots.txt" {
                        return (StatusCode::OK, ROBOTS.to_owned());
                    }
                    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
                    match bodies.lock().unwrap().get(&path) {
                        Some(body) => (StatusCode::OK, body.clone()),
                        None => (
                            StatusCode::NOT_FOUND,
                            json!({"error": "notfound", "key": path.trim_end_matches(".json")})
                                .to_string(),
                        ),
                    }
                },
            )
            .with_state((bodies.clone(), hits.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: Url::parse(&format!("http://{addr}")).expect("origin"),
            bodies,
            hits,
        }
    }

    /// Answers `key`'s record path with `body` from now on.
    fn set(&self, key: &str, body: Value) {
        self.bodies
            .lock()
            .unwrap()
            .insert(format!("{key}.json"), body.to_string());
    }

    /// Requests of `key`'s record path so far.
    fn hits(&self, key: &str) -> usize {
        let hits = self.hits.lock().unwrap();
        hits.get(&format!("{key}.json")).copied().unwrap_or(0)
    }
}

/// Keys no other test (nor an earlier run, whose cached records live an hour) uses: a work
/// or author key with a unique number.
fn key(kind: &str, n: u32) -> String {
    let id: String = unique("").chars().filter(char::is_ascii_digit).collect();
    match kind {
        "author" => format!("/authors/OL{id}{n}A"),
        _ => format!("/works/OL{id}{n}W"),
    }
}

/// A handler fetching from `origin` directly, with the record cache in Redis (an hour's
/// `REFETCH_AFTER`) under a prefix of its own.
async fn handler(origin: &Origin) -> CrawlHandler {
    let metrics = metrics();
    let settings = pool_settings(
        vec![EgressSpec::Direct],
        Rate::per_minute(6000, 50),
        LimitScope::Local,
        &unique("fresh"),
    );
    let pool = EgressPool::new(settings, None, metrics.clone()).expect("pool");
    let mut fetch = fetch_settings(origin.url.clone());
    fetch.refetch_after = Duration::from_secs(3600);
    let client = OpenLibraryClient::new(pool, fetch, metrics.clone(), Some(redis().await));
    CrawlHandler::new(
        client,
        store().await,
        CrawlLimits::default(),
        OutputTopics {
            frontier: "frontier".to_owned(),
            results: "results".to_owned(),
            edges: "edges".to_owned(),
            dlq: "dlq".to_owned(),
        },
        metrics,
        "test-worker".to_owned(),
    )
}

async fn store() -> CrawlStore {
    CrawlStore::connect(&stack_env("REDIS_URL"))
        .await
        .expect("redis reachable")
}

/// A new crawl of `seed` (a follower's crawl is one like any other) at depth 0.
async fn crawl(seed: &str) -> String {
    let crawl_id = unique("fresh");
    store()
        .await
        .create(&CrawlSpec {
            crawl_id: crawl_id.clone(),
            seeds: vec![seed.to_owned()],
            max_depth: 0,
            max_nodes: 100,
        })
        .await
        .expect("crawl created");
    crawl_id
}

fn delivery(crawl_id: &str, key: &str, min_revision: Option<i64>) -> Delivery {
    let job = CrawlJob {
        v: VERSION,
        crawl_id: crawl_id.to_owned(),
        key: key.to_owned(),
        depth: 0,
        seed: key.to_owned(),
        parent: None,
        enqueued_at: Utc::now(),
        min_revision,
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

/// Runs a job of a new crawl of `key` as the consumer loop does (handle, publish, finished)
/// and returns its records and the crawl's status afterwards.
async fn run(
    handler: &CrawlHandler,
    key: &str,
    min_revision: Option<i64>,
) -> (Vec<Record>, CrawlStatus) {
    let crawl_id = crawl(key).await;
    let job = delivery(&crawl_id, key, min_revision);
    let records = handler.handle(&job).await.expect("the job is crawled");
    handler
        .finished(&job, Outcome::Published(&records))
        .await
        .expect("outcome recorded");
    let status = store()
        .await
        .status(&crawl_id)
        .await
        .expect("status")
        .expect("known");
    (records, status)
}

fn work(key: &str, revision: i64, authors: &[&str]) -> Value {
    json!({
        "key": key,
        "type": {"key": "/type/work"},
        "title": format!("{key} at {revision}"),
        "authors": authors
            .iter()
            .map(|a| json!({"author": {"key": a}, "type": {"key": "/type/author_role"}}))
            .collect::<Vec<_>>(),
        "revision": revision,
        "last_modified": {"type": "/type/datetime", "value": "2026-01-01T00:00:00.000000"},
    })
}

fn deleted(key: &str, revision: i64) -> Value {
    json!({"key": key, "type": {"key": "/type/delete"}, "revision": revision,
           "last_modified": {"type": "/type/datetime", "value": "2026-02-01T00:00:00.000000"}})
}

fn redirect(key: &str, to: &str, revision: i64) -> Value {
    json!({"key": key, "type": {"key": "/type/redirect"}, "location": to, "revision": revision,
           "last_modified": {"type": "/type/datetime", "value": "2026-03-01T00:00:00.000000"}})
}

/// The node messages of a job's records, in order.
fn nodes(records: &[Record]) -> Vec<Node> {
    records
        .iter()
        .filter(|r| r.topic == "results")
        .map(|r| serde_json::from_slice(&r.payload).expect("node"))
        .collect()
}

fn topics(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.topic.as_str()).collect()
}

/// The revision of the one live node a job published.
fn live_revision(records: &[Record]) -> i64 {
    let live: Vec<Node> = nodes(records)
        .into_iter()
        .filter(|n| n.gone.is_none())
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    live[0].props["revision"].as_i64().expect("a revision")
}

/// The cache answers ordinary jobs with the copy it holds, however old; a freshness job whose
/// revision is above the cached copy's fetches the record again, the fresh answer replaces the
/// cached one (ordinary jobs get it from then on), and a cached copy at or above the job's
/// revision is used.
#[tokio::test]
async fn a_freshness_job_fetches_again_a_cached_copy_older_than_its_revision() {
    let origin = Origin::start().await;
    let handler = handler(&origin).await;
    let w = key("work", 1);
    origin.set(&w, work(&w, 3, &[]));
    let (first, _) = run(&handler, &w, None).await;
    assert_eq!(live_revision(&first), 3);
    assert_eq!(origin.hits(&w), 1);

    origin.set(&w, work(&w, 5, &[]));
    let (cached, _) = run(&handler, &w, None).await;
    assert_eq!(live_revision(&cached), 3, "an ordinary job takes the cache");
    assert_eq!(origin.hits(&w), 1);

    let (fresh, status) = run(&handler, &w, Some(5)).await;
    assert_eq!(live_revision(&fresh), 5, "the cached copy at 3 is too old");
    assert_eq!(origin.hits(&w), 2);
    assert_eq!(status.state, CrawlState::Done);
    assert_eq!(status.counters.nodes.get("Work"), Some(&1));

    for (min_revision, why) in [(Some(5), "at"), (Some(4), "above"), (None, "ordinary")] {
        let (again, _) = run(&handler, &w, min_revision).await;
        assert_eq!(live_revision(&again), 5, "{why}");
        assert_eq!(origin.hits(&w), 2, "a copy {why} the revision is used");
    }
}

/// A key deleted since it was cached: the freshness job fetches it again, publishes one gone
/// node (its label, the delete's revision and timestamp) and nothing else, and the crawl
/// counts no node and no failure and reaches `done`. The graph writer files the message as a
/// tombstone at that revision.
#[tokio::test]
async fn a_freshness_job_for_a_deleted_key_publishes_a_gone_node_and_its_crawl_is_done() {
    let origin = Origin::start().await;
    let handler = handler(&origin).await;
    let w = key("work", 1);
    origin.set(&w, work(&w, 3, &["/authors/OL1A"]));
    run(&handler, &w, None).await;
    origin.set(&w, deleted(&w, 7));

    let (records, status) = run(&handler, &w, Some(7)).await;
    assert_eq!(origin.hits(&w), 2, "fetched again");
    assert_eq!(
        topics(&records),
        ["results"],
        "no edge, no job, no DLQ record"
    );
    assert_eq!(records[0].key, w);
    let node = &nodes(&records)[0];
    assert_eq!(node.key, w);
    assert_eq!(node.label, bookworm::message::Label::Work);
    assert_eq!(node.gone, Some(Gone::Deleted));
    assert_eq!(
        serde_json::to_value(&node.props).expect("props"),
        json!({"revision": 7, "last_modified": "2026-02-01T00:00:00.000000"})
    );
    assert_eq!(status.state, CrawlState::Done, "{status:?}");
    assert_eq!(status.counters.in_flight, 0);
    assert!(status.counters.failed.is_empty(), "{status:?}");
    assert!(status.counters.nodes.is_empty(), "a gone node is no node");
    assert_eq!(status.counters.fetched, 0);

    // The message is what the graph writer expects of a gone record.
    let graph = support::graph::store().await;
    let Row::Gone(row) = Row::of_node(node).expect("a valid gone message") else {
        panic!("a gone row");
    };
    graph.write(&[&Row::Gone(row)]).await.expect("written");
    let stones = graph
        .fetch(
            neo4rs::query("MATCH (t:Tombstone {key: $k}) RETURN t.revision AS revision")
                .param("k", w.as_str()),
        )
        .await
        .expect("read");
    graph
        .run_in_transaction(vec![
            neo4rs::query("MATCH (t:Tombstone {key: $k}) DELETE t").param("k", w.as_str()),
        ])
        .await
        .expect("clean");
    assert_eq!(stones.len(), 1);
    assert_eq!(stones[0].get::<i64>("revision").expect("revision"), 7);
}

/// A freshness job for a key merged through a chain of two redirects publishes a gone node
/// for each redirect (its target, its revision) beside the final record's node and edges;
/// the crawl counts that node (not a gone one) and reaches `done`. The same key in an
/// ordinary job publishes the target alone, as before.
#[tokio::test]
async fn a_freshness_job_for_a_redirect_publishes_each_gone_source_and_the_target() {
    let origin = Origin::start().await;
    let handler = handler(&origin).await;
    let (w1, w2, w3) = (key("work", 1), key("work", 2), key("work", 3));
    let author = key("author", 1);
    origin.set(&w1, redirect(&w1, &w2, 4));
    origin.set(&w2, redirect(&w2, &w3, 2));
    origin.set(&w3, work(&w3, 9, &[&author]));

    let (records, status) = run(&handler, &w1, Some(4)).await;
    let published = nodes(&records);
    let gone: Vec<(String, Option<Gone>, Value)> = published
        .iter()
        .filter(|n| n.gone.is_some())
        .map(|n| (n.key.clone(), n.gone.clone(), n.props["revision"].clone()))
        .collect();
    let to = |k: &str| Some(Gone::Redirected { to: k.to_owned() });
    assert_eq!(
        gone,
        [
            (w1.clone(), to(&w2), json!(4)),
            (w2.clone(), to(&w3), json!(2))
        ]
    );
    assert_eq!(live_revision(&records), 9);
    let edges: Vec<Edge> = records
        .iter()
        .filter(|r| r.topic == "edges")
        .map(|r| serde_json::from_slice(&r.payload).expect("edge"))
        .collect();
    assert_eq!(edges.len(), 1);
    assert_eq!(
        (edges[0].from.as_str(), edges[0].to.as_str()),
        (w3.as_str(), author.as_str())
    );
    assert_eq!(status.state, CrawlState::Done, "{status:?}");
    assert_eq!(status.counters.nodes.get("Work"), Some(&1));
    assert_eq!(status.counters.fetched, 1);

    let (ordinary, _) = run(&handler, &w1, None).await;
    let published = nodes(&ordinary);
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(
        (published[0].key.as_str(), &published[0].gone),
        (w3.as_str(), &None)
    );
}

/// Outside freshness jobs a delete is still a dead letter (`http_4xx`), whether the answer
/// comes from Open Library or the cache; for a freshness job a 404 still is one, and so is a
/// delete whose body names another key than the one asked (never a tombstone for it).
#[tokio::test]
async fn an_ordinary_job_for_a_deleted_key_is_still_dead_lettered() {
    let origin = Origin::start().await;
    let handler = handler(&origin).await;
    let (w1, w2, w3) = (key("work", 1), key("work", 2), key("work", 3));
    origin.set(&w1, deleted(&w1, 2));
    origin.set(&w3, deleted(&w2, 2));
    let cases = [
        (&w1, None, "http_4xx"),
        (&w1, None, "http_4xx"), // from the cache this time
        (&w2, Some(1), "http_4xx"),
        (&w3, Some(1), "parse"),
    ];
    for (key, min_revision, expected) in cases {
        let crawl_id = crawl(key).await;
        let job = delivery(&crawl_id, key, min_revision);
        match handler.handle(&job).await {
            Err(HandleError::DeadLetter { reason, .. }) => {
                assert_eq!(reason, expected, "{key} {min_revision:?}")
            }
            other => panic!("{key} {min_revision:?}: expected a dead letter, got {other:?}"),
        }
        handler
            .finished(&job, Outcome::DeadLettered { reason: expected })
            .await
            .expect("outcome recorded");
        let status = store()
            .await
            .status(&crawl_id)
            .await
            .expect("status")
            .expect("known");
        assert_eq!(status.state, CrawlState::Done);
        assert_eq!(status.counters.failed.get(expected), Some(&1));
    }
    assert_eq!(
        origin.hits(&w1),
        1,
        "the second ordinary job was answered by the cache"
    );
}

/// A freshness job at its crawl's depth limit refreshes the record and what the record names,
/// as a dump line would: an author's works list (other records' relationships, stale keys
/// included) is not read. An ordinary job of the same author reads it.
#[tokio::test]
async fn a_freshness_job_at_depth_zero_reads_no_list_page() {
    let origin = Origin::start().await;
    let handler = handler(&origin).await;
    let a = key("author", 1);
    let w = key("work", 2);
    origin.set(
        &a,
        json!({"key": a, "type": {"key": "/type/author"}, "name": "A", "revision": 4}),
    );
    let list = format!("{a}/works");
    origin.set(
        &list,
        json!({"links": {}, "size": 1, "entries": [work(&w, 1, &[&a])]}),
    );
    let (fresh, _) = run(&handler, &a, Some(4)).await;
    assert_eq!(topics(&fresh), ["results"], "the author's node only");
    assert_eq!(origin.hits(&list), 0, "no works list read");

    let (ordinary, _) = run(&handler, &a, None).await;
    assert!(
        topics(&ordinary).contains(&"edges"),
        "an ordinary job reads the list: {:?}",
        topics(&ordinary)
    );
    assert_eq!(origin.hits(&list), 1);
}
