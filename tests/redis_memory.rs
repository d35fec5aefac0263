//! A Redis near its `maxmemory` (issue 18): new crawls get a clear 503 and new jobs wait,
//! while work already running still finishes, instead of every write failing on Redis's
//! refusal. Each test runs its own small Redis (the stack's is shared and unlimited).

mod support;

use std::time::Duration;

use bookworm::crawl::store::{Begin, CrawlSpec, CrawlStore, Finish, MemoryWatch, StoreError};
use redis::aio::ConnectionManager;

use support::{Process, create_topic, eventually, free_port, unique};

/// A private Redis limited to `max_bytes`, noeviction like production; its URL and process.
async fn small_redis(max_bytes: u64) -> (String, Process, ConnectionManager) {
    let port = free_port();
    let process = Process::start(
        "redis-small",
        "redis-server",
        &[
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory",
            &max_bytes.to_string(),
            "--maxmemory-policy",
            "noeviction",
        ],
        &[],
    );
    let url = format!("redis://127.0.0.1:{port}");
    let conn = eventually("the small Redis answers", Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            let client = redis::Client::open(url).ok()?;
            let mut conn = ConnectionManager::new(client).await.ok()?;
            let _: String = redis::cmd("PING").query_async(&mut conn).await.ok()?;
            Some(conn)
        }
    })
    .await;
    (url, process, conn)
}

/// `used_memory` and `maxmemory` of `conn`'s Redis, read the way the store reads them.
async fn memory(conn: &mut ConnectionManager) -> (u64, u64) {
    let reading = MemoryWatch::default()
        .refresh(conn)
        .await
        .expect("INFO memory");
    (reading.used, reading.max)
}

/// Fills Redis with filler keys until it is above 92 % of its limit.
async fn fill(conn: &mut ConnectionManager) {
    let block = "x".repeat(64 * 1024);
    for i in 0.. {
        let (used, max) = memory(conn).await;
        if used as f64 > max as f64 * 0.92 {
            return;
        }
        let _: () = redis::cmd("SET")
            .arg(format!("filler:{i}"))
            .arg(&block)
            .query_async(conn)
            .await
            .unwrap();
    }
}

/// Frees the filler keys.
async fn unfill(conn: &mut ConnectionManager) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("filler:*")
        .query_async(conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(conn)
        .await
        .unwrap();
}

/// Past the high water a job's begin waits (the worker parks it as a retry) and no crawl is
/// created, while a job already running still finishes its crawl; once memory is freed the
/// same job runs.
#[tokio::test]
async fn a_nearly_full_redis_refuses_new_work_but_lets_running_work_finish() {
    let (url, _redis, mut conn) = small_redis(8 * 1024 * 1024).await;
    let store = CrawlStore::connect(&url).await.expect("store");
    let id = unique("full");
    let spec = CrawlSpec {
        crawl_id: id.clone(),
        seeds: vec!["/works/OL1W".to_owned(), "/works/OL2W".to_owned()],
        max_depth: 1,
        max_nodes: 10,
    };
    store.create(&spec).await.expect("created with room");
    assert!(matches!(
        store.begin(&id, "/works/OL1W", 0).await,
        Ok(Begin::Run { .. })
    ));

    fill(&mut conn).await;
    let reading = store.memory().refresh(&mut conn).await.expect("reading");
    assert!(reading.is_nearly_full(), "{reading:?}");
    let refused = store.begin(&id, "/works/OL2W", 0).await;
    assert!(
        matches!(refused, Err(StoreError::NearlyFull(_))),
        "{refused:?}"
    );
    let other = CrawlSpec {
        crawl_id: unique("full"),
        ..spec.clone()
    };
    assert!(matches!(
        store.create(&other).await,
        Err(StoreError::NearlyFull(_))
    ));
    assert_eq!(store.status(&other.crawl_id).await.unwrap(), None);
    // The running job's outcome is still recorded.
    let node = Finish::Node {
        key: "/works/OL1W".to_owned(),
        label: bookworm::message::Label::Work,
        edges: vec![],
    };
    store
        .finish(&id, "/works/OL1W", 0, &node)
        .await
        .expect("finishes");
    assert_eq!(
        store.status(&id).await.unwrap().unwrap().counters.fetched,
        1
    );

    unfill(&mut conn).await;
    store.memory().refresh(&mut conn).await.expect("reading");
    assert!(matches!(
        store.begin(&id, "/works/OL2W", 0).await,
        Ok(Begin::Run { .. })
    ));
}

/// The API reads Redis's memory by itself: near the limit `POST /crawls` answers 503 with a
/// JSON error that says why, the gauges show it, and once memory is freed crawls are created
/// again.
#[tokio::test]
async fn the_api_refuses_new_crawls_with_503_near_the_memory_limit() {
    let (url, _redis, mut conn) = small_redis(8 * 1024 * 1024).await;
    let topic = unique("full-frontier");
    create_topic(&topic, 1).await;
    let (base, shutdown) = support::start_api_on(&topic, &url).await;
    let http = reqwest::Client::new();
    let create = || {
        http.post(format!("{base}/crawls"))
            .json(&serde_json::json!({"seeds": ["/works/OL1W"], "max_depth": 0}))
            .send()
    };
    assert_eq!(create().await.unwrap().status(), 201);

    fill(&mut conn).await;
    let body = eventually(
        "POST /crawls answers 503",
        Duration::from_secs(30),
        || async {
            let response = create().await.ok()?;
            (response.status() == 503).then_some(())?;
            response.json::<serde_json::Value>().await.ok()
        },
    )
    .await;
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("redis is nearly full"), "{body}");
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "relentless_api_redis_memory_max_bytes {}",
            8 * 1024 * 1024
        )),
        "{metrics}"
    );

    unfill(&mut conn).await;
    eventually(
        "POST /crawls answers 201 again",
        Duration::from_secs(30),
        || async { (create().await.ok()?.status() == 201).then_some(()) },
    )
    .await;
    shutdown.cancel();
}
