//! The egress pool through the stack's three real Squid proxies (and its real Redis for the
//! cluster limit), against a small recording stand-in for Open Library.

mod support;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bookworm::config::LimitScope;
use bookworm::config::{EgressSpec, parse_proxy_pool};
use bookworm::crawl::client::OpenLibraryClient;
use bookworm::crawl::client::egress::limiter::Rate;
use futures::StreamExt;
use support::egress::{Behaviour, TestServer, client, pool_settings, redis, stack_proxies};

/// Fast limits so a test sends many requests in seconds: 600/min = 10/s per egress, burst 5.
fn test_rate() -> Rate {
    Rate::per_minute(600, 5)
}

/// Sends `paths` with `concurrency` requests in flight; returns the results in order.
async fn send_all(
    client: &OpenLibraryClient,
    paths: Vec<String>,
    concurrency: usize,
) -> Vec<Result<bookworm::crawl::client::Fetched, bookworm::crawl::client::FetchError>> {
    futures::stream::iter(paths)
        .map(|path| {
            let client = client.clone();
            async move { client.get(&path).await }
        })
        .buffered(concurrency)
        .collect()
        .await
}

/// Asserts that no IP sent more than the limit allows in any one-second window (burst plus
/// one second of cells, plus one for timing jitter between client and server).
fn assert_within_limit(server: &TestServer, rate: Rate) {
    let window = Duration::from_secs(1);
    let allowed =
        rate.burst as usize + (window.as_micros() / rate.interval.as_micros()) as usize + 1;
    for (ip, most) in server.max_per_ip_in_window(window) {
        assert!(
            most <= allowed,
            "{ip} sent {most} in one second, allowed {allowed}"
        );
    }
}

/// With three proxies and a pool-wide cluster limit, requests spread about evenly over the
/// three outgoing addresses, no address exceeds its limit, and the server never has to say 429.
#[tokio::test]
async fn spreads_requests_evenly_over_the_three_proxies_within_the_limit() {
    let rate = test_rate();
    let server = TestServer::start(Behaviour {
        per_ip_limit: Some(Rate {
            burst: rate.burst + 1,
            ..rate
        }),
        ..Behaviour::default()
    })
    .await;
    let (proxies, ips) = stack_proxies();
    let settings = pool_settings(
        proxies.0,
        rate,
        LimitScope::Cluster,
        &support::unique("egress"),
    );
    let (client, metrics) = client(&server, settings, Some(redis().await));

    let paths = (0..90).map(|i| format!("/works/OL{i}W.json")).collect();
    let results = send_all(&client, paths, 16).await;

    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|f| f.status == 200))
    );
    assert_eq!(server.count_429(), 0, "a paced pool never meets a 429");
    let counts = server.counts_by_ip();
    for ip in &ips {
        let n = counts.get(ip).copied().unwrap_or(0);
        assert!((25..=35).contains(&n), "{ip} carried {n} of 90: {counts:?}");
    }
    assert_within_limit(&server, rate);
    assert!(
        server
            .hits()
            .iter()
            .all(|h| h.user_agent.contains("RelentlessBookworm/"))
    );
    let sent: u64 = client
        .pool()
        .labels()
        .iter()
        .map(|l| metrics.egress_requests.with_label_values(&[l, "200"]).get())
        .sum();
    assert_eq!(sent, 91, "90 records and robots.txt, counted per egress");
}

/// Two pools (as two worker processes would) sharing Redis with cluster scope stay together
/// within one per-egress limit.
#[tokio::test]
async fn two_pools_sharing_redis_stay_within_one_limit_per_egress() {
    let rate = test_rate();
    let server = TestServer::start(Behaviour {
        per_ip_limit: Some(Rate {
            burst: rate.burst + 1,
            ..rate
        }),
        ..Behaviour::default()
    })
    .await;
    let (proxies, _) = stack_proxies();
    let prefix = support::unique("egress");
    let settings = pool_settings(proxies.0, rate, LimitScope::Cluster, &prefix);
    let (first, _) = client(&server, settings.clone(), Some(redis().await));
    let (second, _) = client(&server, settings, Some(redis().await));

    let paths = |worker: u32| {
        (0..60)
            .map(move |i| format!("/works/OL{worker}{i}W.json"))
            .collect()
    };
    let started = Instant::now();
    let (a, b) = tokio::join!(
        send_all(&first, paths(1), 16),
        send_all(&second, paths(2), 16)
    );
    let elapsed = started.elapsed();

    assert!(
        a.iter().chain(&b).all(|r| r.is_ok()),
        "every request succeeds"
    );
    assert_eq!(server.count_429(), 0);
    assert_within_limit(&server, rate);
    eprintln!("two pools: 122 requests in {elapsed:?} (ideal ≈ (122 − 15) / 30 per s ≈ 3.6 s)");
}

/// The same two pools with local scope would each take the full limit: the server's view
/// shows the difference (this guards the test above against passing by accident).
#[tokio::test]
async fn two_pools_with_local_scope_each_take_the_full_limit() {
    let rate = test_rate();
    let server = TestServer::start(Behaviour::default()).await;
    let (proxies, _) = stack_proxies();
    let settings = pool_settings(proxies.0, rate, LimitScope::Local, "unused");
    let (first, _) = client(&server, settings.clone(), None);
    let (second, _) = client(&server, settings, None);
    let paths = |worker: u32| {
        (0..30)
            .map(move |i| format!("/works/OL{worker}{i}W.json"))
            .collect()
    };
    let (a, b) = tokio::join!(
        send_all(&first, paths(1), 16),
        send_all(&second, paths(2), 16)
    );
    assert!(a.iter().chain(&b).all(|r| r.is_ok()));
    let most: usize = server
        .max_per_ip_in_window(Duration::from_millis(200))
        .values()
        .copied()
        .max()
        .unwrap_or(0);
    assert!(
        most > rate.burst as usize,
        "two local bursts land together: {most}"
    );
}

/// A 429 from one proxy's address blocks that egress (metrics show it) and the request
/// succeeds through another; while blocked, nothing more goes out through it.
#[tokio::test]
async fn a_429_blocks_that_egress_and_the_request_succeeds_via_another() {
    let (proxies, ips) = stack_proxies();
    let throttled = ips[0];
    let server = TestServer::start(Behaviour {
        throttled_ip: Some(throttled),
        ..Behaviour::default()
    })
    .await;
    let label = proxies.0[0].label();
    let mut settings = pool_settings(
        proxies.0,
        test_rate(),
        LimitScope::Cluster,
        &support::unique("egress"),
    );
    settings.block_base = Duration::from_secs(30);
    let (client, metrics) = client(&server, settings, Some(redis().await));

    let paths = (0..20).map(|i| format!("/works/OL{i}W.json")).collect();
    let results = send_all(&client, paths, 4).await;

    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|f| f.status == 200))
    );
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|f| f.egress != label))
    );
    let throttled_hits = server
        .hits()
        .iter()
        .filter(|h| h.ip == throttled && h.status == 429)
        .count();
    assert!(
        (1..=2).contains(&throttled_hits),
        "blocked after its 429: {throttled_hits}"
    );
    assert!(client.pool().is_blocked(&label));
    assert_eq!(metrics.egress_blocked.with_label_values(&[&label]).get(), 1);
    assert!(metrics.rate_limit_hits.with_label_values(&[&label]).get() >= 1);
}

/// A Retry-After on a 429 sets the block's length: with one egress, the retry goes out
/// through it only after the time the server asked for (not the 30 s base block).
#[tokio::test]
async fn retry_after_is_honoured() {
    let (proxies, ips) = stack_proxies();
    let server = TestServer::start(Behaviour {
        throttled_ip: Some(ips[0]),
        retry_after: Some("2".to_owned()),
        throttle_first: Some(1),
        ..Behaviour::default()
    })
    .await;
    let mut settings = pool_settings(
        vec![proxies.0[0].clone()],
        test_rate(),
        LimitScope::Local,
        "unused",
    );
    settings.block_base = Duration::from_secs(30);
    let (client, _) = client(&server, settings, None);

    let fetched = client.get("/works/OL1W.json").await.unwrap();

    assert_eq!(fetched.attempts, 2);
    let hits = server.hits_under("/works/");
    assert_eq!(hits.len(), 2);
    let gap = hits[1].at - hits[0].at;
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?}");
    assert!(
        gap < Duration::from_secs(10),
        "used Retry-After, not the base block: {gap:?}"
    );
}

/// A proxy that refuses connections is marked down; its share of traffic goes to the other
/// proxies and no request fails.
#[tokio::test]
async fn a_proxy_that_is_down_is_marked_down_and_no_request_fails() {
    let (proxies, ips) = stack_proxies();
    let server = TestServer::start(Behaviour::default()).await;
    let mut egresses = proxies.0;
    let dead = parse_proxy_pool("http://127.0.0.1:3199")
        .unwrap()
        .0
        .remove(0);
    egresses.insert(0, dead.clone());
    let settings = pool_settings(
        egresses,
        test_rate(),
        LimitScope::Cluster,
        &support::unique("egress"),
    );
    let (client, metrics) = client(&server, settings, Some(redis().await));

    let paths = (0..40).map(|i| format!("/works/OL{i}W.json")).collect();
    let results = send_all(&client, paths, 8).await;

    assert!(
        results.iter().all(|r| r.is_ok()),
        "no request fails: {results:?}"
    );
    assert!(client.pool().is_down(&dead.label()));
    assert_eq!(
        metrics
            .egress_blocked
            .with_label_values(&[&dead.label()])
            .get(),
        1
    );
    let counts: HashMap<IpAddr, usize> = server.counts_by_ip();
    assert_eq!(counts.values().sum::<usize>(), 40);
    for ip in &ips {
        assert!(counts.get(ip).copied().unwrap_or(0) >= 10, "{counts:?}");
    }
    assert!(matches!(dead, EgressSpec::Proxy(_)));
}

/// Requests in flight when an egress is blocked answer 429 too: those echoes of one strike
/// keep the block as it is instead of doubling it once per response (a burst of ten 429s
/// once turned a 2 s block into the 10 s maximum at once).
#[tokio::test]
async fn concurrent_429s_count_as_one_strike() {
    let (proxies, _) = stack_proxies();
    let settings = pool_settings(
        proxies.0,
        test_rate(),
        LimitScope::Local,
        &support::unique("echo"),
    );
    let pool = bookworm::crawl::client::egress::EgressPool::new(
        settings,
        None,
        support::egress::metrics(),
    )
    .unwrap();
    let slot = pool.acquire().await.unwrap();
    let first = pool.block(&slot, None).await;
    let mut echoes = Vec::new();
    for _ in 0..10 {
        echoes.push(pool.block(&slot, None).await);
    }
    assert_eq!(first, Duration::from_secs(2));
    assert!(
        echoes.iter().all(|d| *d <= first),
        "echoes escalated the block: {echoes:?}"
    );
}

/// A proxy that accepts connections and never answers (blackholed) passes a TCP connect, so
/// marking it down does not help: each timeout through it blocks it (doubling per repeat)
/// and the request moves on, so it takes only a few requests and none fails. (The chaos
/// suite found a blackholed proxy of three sending a third of a crawl to the DLQ.)
#[tokio::test]
async fn a_blackholed_proxy_is_blocked_after_a_timeout_and_no_request_fails() {
    let (proxies, _) = stack_proxies();
    let server = TestServer::start(Behaviour::default()).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            held.push(stream);
        }
    });
    let blackhole = parse_proxy_pool(&format!("http://{hole}"))
        .unwrap()
        .0
        .remove(0);
    let mut egresses = proxies.0;
    egresses.insert(0, blackhole);
    let mut settings = pool_settings(
        egresses,
        test_rate(),
        LimitScope::Local,
        &support::unique("egress"),
    );
    settings.client.read_timeout = Duration::from_secs(1);
    settings.client.request_timeout = Duration::from_secs(2);
    let (client, _) = client(&server, settings, None);

    let paths = (0..60).map(|i| format!("/works/OL{i}W.json")).collect();
    let results = send_all(&client, paths, 8).await;

    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(failed.is_empty(), "no request fails: {failed:?}");
    // Once per block at most: the first timeouts of the in-flight requests, then one per
    // block expiry (2 s, doubling).
    let tried = accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(tried <= 12, "the blackhole took {tried} of 60 requests");
}
