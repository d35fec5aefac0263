//! The client's state shared through Redis, against a small recording stand-in for Open
//! Library: the User-Agent block (a 403 stops every client sharing the egress prefix until an
//! operator lifts it), the record cache (`REFETCH_AFTER`, bounded in bytes), and a pool whose
//! every egress is out failing fast so the job is parked instead of timing out.

mod support;

use std::time::Duration;

use bookworm::config::{EgressSpec, LimitScope};
use bookworm::crawl::client::block;
use bookworm::crawl::client::cache::{CachedRecord, RecordCache};
use bookworm::crawl::client::egress::limiter::Rate;
use bookworm::crawl::client::egress::{EgressError, EgressPool};
use bookworm::crawl::client::{FetchError, OpenLibraryClient};
use bookworm::process::metrics::WorkerMetrics;
use support::egress::{Behaviour, TestServer, fetch_settings, metrics, pool_settings, redis};
use support::{eventually, unique};

/// A direct client sharing `prefix` in Redis, with the record cache on for `refetch_after`
/// (zero: off).
async fn shared_client(
    server: &TestServer,
    prefix: &str,
    refetch_after: Duration,
) -> (OpenLibraryClient, WorkerMetrics) {
    let metrics = metrics();
    let settings = pool_settings(
        vec![EgressSpec::Direct],
        Rate::per_minute(6000, 50),
        LimitScope::Cluster,
        prefix,
    );
    let redis = redis().await;
    let pool = EgressPool::new(settings, Some(redis.clone()), metrics.clone()).unwrap();
    let mut fetch = fetch_settings(server.origin());
    fetch.refetch_after = refetch_after;
    let client = OpenLibraryClient::new(pool, fetch, metrics.clone(), Some(redis));
    (client, metrics)
}

/// One 403 stops every client sharing the prefix: the one that saw it and another that never
/// sent anything; neither sends again, and the gauge the alert reads is 1. Clients under
/// another prefix are untouched. `unblock` lifts it for all.
#[tokio::test]
async fn a_403_stops_every_client_sharing_the_prefix_until_unblocked() {
    let server = TestServer::start(Behaviour::default()).await;
    let prefix = unique("ua-block");
    let (first, first_metrics) = shared_client(&server, &prefix, Duration::ZERO).await;
    let (second, second_metrics) = shared_client(&server, &prefix, Duration::ZERO).await;
    let (elsewhere, _) = shared_client(&server, &unique("ua-other"), Duration::ZERO).await;

    let refused = first.get("/status/403").await.unwrap_err();
    assert!(
        matches!(refused, FetchError::UserAgentBlocked { .. }),
        "{refused}"
    );
    assert_eq!(first_metrics.user_agent_blocked.get(), 1);
    let sent = server.hits().len();
    for client in [&first, &second] {
        let error = client.get("/works/OL1W.json").await.unwrap_err();
        assert!(
            matches!(error, FetchError::UserAgentBlocked { .. }),
            "{error}"
        );
    }
    assert_eq!(server.hits().len(), sent, "a blocked client sent a request");
    assert_eq!(second_metrics.user_agent_blocked.get(), 1);
    assert_eq!(elsewhere.get("/works/OL2W.json").await.unwrap().status, 200);

    let mut redis = redis().await;
    let record = block::current(&mut redis, &prefix).await.unwrap().unwrap();
    assert!(record.detail.contains("403"), "{record:?}");
    let lifted = block::unblock(&mut redis, &prefix).await.unwrap();
    assert_eq!(lifted, Some(record));
    // Each client reads the switch at most once per block::REFRESH.
    eventually("the block to lift", Duration::from_secs(10), || async {
        second.get("/works/OL1W.json").await.ok()
    })
    .await;
    assert_eq!(second_metrics.user_agent_blocked.get(), 0);
}

/// A path fetched within REFETCH_AFTER is answered from the cache, by any client sharing the
/// prefix, without a request; a client with a shorter window fetches it again; a body that is
/// not well-formed JSON (cut short in transit) is never served from the cache.
#[tokio::test]
async fn the_record_cache_answers_within_refetch_after_and_only_with_whole_json() {
    let server = TestServer::start(Behaviour::default()).await;
    let prefix = unique("cache");
    let (first, first_metrics) = shared_client(&server, &prefix, Duration::from_secs(3600)).await;
    let (second, second_metrics) = shared_client(&server, &prefix, Duration::from_secs(3600)).await;
    let fetched = first.get("/works/OL7W.json").await.unwrap();
    let hits = server.hits_under("/works/OL7W.json").len();
    assert_eq!(hits, 1);
    let cached = second.get("/works/OL7W.json").await.unwrap();
    assert_eq!(cached.body, fetched.body);
    assert_eq!(cached.final_url, fetched.final_url);
    assert_eq!(cached.egress, "cache");
    assert_eq!(server.hits_under("/works/OL7W.json").len(), 1);
    let lookups =
        |m: &WorkerMetrics, result: &str| m.record_cache_lookups.with_label_values(&[result]).get();
    assert_eq!(lookups(&first_metrics, "miss"), 1);
    assert_eq!(lookups(&second_metrics, "hit"), 1);

    let (impatient, _) = shared_client(&server, &prefix, Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(5)).await; // the window itself is the subject
    impatient.get("/works/OL7W.json").await.unwrap();
    assert_eq!(server.hits_under("/works/OL7W.json").len(), 2);

    // Not JSON: asked again every time.
    for _ in 0..2 {
        first.get("/big/100").await.unwrap();
    }
    assert_eq!(server.hits_under("/big/100").len(), 2);
}

/// Whatever is stored, the cache's bytes stay under its cap: the oldest records go first.
#[tokio::test]
async fn the_record_cache_stays_under_its_byte_cap() {
    let cap = 20_000;
    let prefix = unique("cache-cap");
    let origin = url::Url::parse("http://127.0.0.1:9").unwrap();
    let cache = RecordCache::new(
        redis().await,
        &prefix,
        &origin,
        Duration::from_secs(600),
        cap,
    );
    let body = format!("{{\"text\":\"{}\"}}", "x".repeat(1000));
    let mut last_total = 0;
    for n in 0..100 {
        let record = CachedRecord {
            url: origin.join(&format!("/works/OL{n}W.json")).unwrap(),
            body: body.clone().into(),
        };
        last_total = cache
            .put(&format!("/works/OL{n}W.json"), &record)
            .await
            .unwrap()
            .unwrap();
        assert!(last_total <= cap as u64, "{last_total} bytes after {n}");
    }
    assert!(
        last_total > cap as u64 / 2,
        "evicted far too much: {last_total}"
    );
    assert!(cache.get("/works/OL0W.json").await.unwrap().is_none());
    assert!(cache.get("/works/OL99W.json").await.unwrap().is_some());
}

/// A pool whose only egress is down does not hold a request until JOB_TIMEOUT: after a short
/// grace the fetch fails with a transient error, so the job is parked and redelivered rather
/// than dead-lettered as `timeout` with its subtree.
#[tokio::test]
async fn a_pool_with_every_egress_down_fails_fast_and_transiently() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let proxy = url::Url::parse(&format!("http://{dead_addr}")).unwrap();
    let mut settings = pool_settings(
        vec![EgressSpec::Proxy(proxy)],
        Rate::per_minute(6000, 50),
        LimitScope::Local,
        "unused",
    );
    settings.block_base = Duration::from_secs(60);
    let pool = EgressPool::new(settings, None, metrics()).unwrap();
    let origin = url::Url::parse("http://127.0.0.1:9").unwrap();
    let mut fetch = fetch_settings(origin);
    fetch.respect_robots = false;
    let client = OpenLibraryClient::new(pool, fetch, metrics(), None);
    let outcome = tokio::time::timeout(Duration::from_secs(60), client.get("/works/OL1W.json"))
        .await
        .expect("the fetch waited for the dead pool instead of giving up");
    let error = outcome.unwrap_err();
    assert!(
        matches!(error, FetchError::Limiter(EgressError::Unavailable)),
        "{error}"
    );
    assert!(client.pool().is_out());
}
