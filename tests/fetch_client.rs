//! The Open Library client's rules, against a small recording stand-in for Open Library:
//! origin, redirects, robots.txt, body cap, statuses, retries, and that keys which always
//! fail cannot starve healthy ones.

mod support;

use std::time::Instant;

use bookworm::config::EgressSpec;
use bookworm::config::LimitScope;
use bookworm::crawl::client::egress::EgressPool;
use bookworm::crawl::client::egress::limiter::Rate;
use bookworm::crawl::client::{FetchError, OpenLibraryClient};
use bookworm::message::FailureReason;
use futures::StreamExt;
use support::egress::{
    Behaviour, TestServer, client, fetch_settings, metrics, pool_settings, redis, stack_proxies,
};

/// A direct, locally limited client with a generous rate: these tests are about rules.
fn direct(server: &TestServer) -> OpenLibraryClient {
    let settings = pool_settings(
        vec![EgressSpec::Direct],
        Rate::per_minute(6000, 50),
        LimitScope::Local,
        "unused",
    );
    client(server, settings, None).0
}

/// A job naming another origin (absolute, or scheme-relative) is refused as `invalid_job`
/// and nothing at all is fetched, not even robots.txt.
#[tokio::test]
async fn refuses_a_job_on_another_origin_and_fetches_nothing() {
    let server = TestServer::start(Behaviour::default()).await;
    let other = TestServer::start(Behaviour::default()).await;
    let client = direct(&server);
    for job in [
        format!("http://{}/works/OL1W.json", other.addr),
        format!("//{}/works/OL1W.json", other.addr),
        "https://openlibrary.org/works/OL1W.json".to_owned(),
    ] {
        let error = client.get(&job).await.unwrap_err();
        assert!(
            matches!(error, FetchError::ForeignOrigin { .. }),
            "{job}: {error}"
        );
        assert_eq!(error.reason(), FailureReason::InvalidJob);
    }
    assert!(server.hits().is_empty());
    assert!(other.hits().is_empty());
}

/// A redirect off the origin is refused as `invalid_job` and its target is never fetched;
/// a redirect on the origin is followed.
#[tokio::test]
async fn refuses_a_redirect_off_the_origin_and_follows_one_on_it() {
    let server = TestServer::start(Behaviour::default()).await;
    let other = TestServer::start(Behaviour::default()).await;
    let client = direct(&server);

    let away = format!("/redirect?to=http://{}/works/OL1W.json", other.addr);
    let error = client.get(&away).await.unwrap_err();
    assert!(
        matches!(error, FetchError::ForeignRedirect { .. }),
        "{error}"
    );
    assert_eq!(error.reason(), FailureReason::InvalidJob);
    assert!(other.hits().is_empty());

    let fetched = client.get("/redirect?to=/works/OL2W.json").await.unwrap();
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.final_url.path(), "/works/OL2W.json");
    assert_eq!(fetched.attempts, 2);
}

/// A redirect chain past the hop limit is refused as `invalid_job` after five hops.
#[tokio::test]
async fn stops_after_five_redirect_hops() {
    let server = TestServer::start(Behaviour::default()).await;
    let error = direct(&server).get("/loop/0").await.unwrap_err();
    assert_eq!(error.reason(), FailureReason::InvalidJob, "{error}");
    assert_eq!(server.hits_under("/loop/").len(), 6);
}

/// A path robots.txt disallows is refused as `robots` and not fetched; robots.txt itself is
/// fetched once and cached.
#[tokio::test]
async fn refuses_a_robots_disallowed_path_without_fetching_it() {
    let server = TestServer::start(Behaviour::default()).await;
    let client = direct(&server);
    for path in ["/search.json?q=dune", "/api/books?bibkeys=ISBN:1"] {
        let error = client.get(path).await.unwrap_err();
        assert!(matches!(error, FetchError::Robots { .. }), "{error}");
        assert_eq!(error.reason(), FailureReason::Robots);
    }
    client.get("/works/OL1W.json").await.unwrap();
    assert!(server.hits_under("/search").is_empty());
    assert!(server.hits_under("/api").is_empty());
    assert_eq!(server.hits_under("/robots.txt").len(), 1);
}

/// With RESPECT_ROBOTS_TXT off nothing consults robots.txt.
#[tokio::test]
async fn ignores_robots_when_told_to() {
    let server = TestServer::start(Behaviour::default()).await;
    let pool = EgressPool::new(
        pool_settings(
            vec![EgressSpec::Direct],
            Rate::per_minute(6000, 50),
            LimitScope::Local,
            "unused",
        ),
        None,
        metrics(),
    )
    .unwrap();
    let mut settings = fetch_settings(server.origin());
    settings.respect_robots = false;
    let client = OpenLibraryClient::new(pool, settings, metrics(), None);
    assert_eq!(client.get("/search.json?q=dune").await.unwrap().status, 200);
    assert!(server.hits_under("/robots.txt").is_empty());
}

/// A missing robots.txt (404) allows everything; one answering 5xx disallows everything for
/// now, and such a refusal is not a robots verdict but a retryable `http_5xx`.
#[tokio::test]
async fn missing_robots_allows_all_and_failing_robots_disallows_all() {
    let missing = TestServer::start(Behaviour {
        robots: None,
        ..Behaviour::default()
    })
    .await;
    assert_eq!(
        direct(&missing)
            .get("/search.json?q=x")
            .await
            .unwrap()
            .status,
        200
    );

    let failing = TestServer::start(Behaviour {
        robots: Some("500".to_owned()),
        ..Behaviour::default()
    })
    .await;
    let error = direct(&failing).get("/works/OL1W.json").await.unwrap_err();
    assert!(
        matches!(error, FetchError::RobotsUnavailable { .. }),
        "{error}"
    );
    assert_eq!(error.reason(), FailureReason::Http5xx);
    assert!(failing.hits_under("/works/").is_empty());
}

/// Bodies over the cap fail (with or without Content-Length) instead of being read whole.
#[tokio::test]
async fn caps_the_body_size() {
    let server = TestServer::start(Behaviour::default()).await;
    let client = direct(&server);
    let cap = fetch_settings(server.origin()).max_body_bytes;
    assert_eq!(
        client.get(&format!("/big/{cap}")).await.unwrap().body.len(),
        cap
    );
    for path in [
        format!("/big/{}", cap + 1),
        format!("/bigchunked/{}", cap * 4),
    ] {
        let error = client.get(&path).await.unwrap_err();
        assert!(
            matches!(error, FetchError::BodyTooLarge { .. }),
            "{path}: {error}"
        );
        assert_eq!(error.reason(), FailureReason::Parse);
    }
}

/// 404 is an answer (the parser reads `notfound`); other 4xx (but 403, Open Library refusing
/// the client: tests/shared_client_state.rs) fail as `http_4xx` at once.
#[tokio::test]
async fn returns_404_and_does_not_retry_other_4xx() {
    let server = TestServer::start(Behaviour::default()).await;
    let client = direct(&server);
    let fetched = client.get("/missing/OL1W.json").await.unwrap();
    assert_eq!(fetched.status, 404);
    assert!(
        std::str::from_utf8(&fetched.body)
            .unwrap()
            .contains("notfound")
    );

    let error = client.get("/status/400").await.unwrap_err();
    assert_eq!(error.reason(), FailureReason::Http4xx);
    assert_eq!(server.hits_under("/status/400").len(), 1);
}

/// 5xx answers are retried with backoff until one succeeds; always-5xx fails as `http_5xx`
/// after the configured retries.
#[tokio::test]
async fn retries_5xx_then_gives_up_with_its_reason() {
    let server = TestServer::start(Behaviour::default()).await;
    let client = direct(&server);
    let fetched = client.get("/flaky/2/OL1W.json").await.unwrap();
    assert_eq!((fetched.status, fetched.attempts), (200, 3));

    let error = client.get("/fail/OL2W.json").await.unwrap_err();
    assert!(
        matches!(
            error,
            FetchError::Server {
                status: 503,
                attempts: 4,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(error.reason(), FailureReason::Http5xx);
}

/// A direct egress whose origin refuses connections fails as `timeout` (no answer) rather
/// than hanging, and is marked down.
#[tokio::test]
async fn an_unreachable_origin_fails_as_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut settings = pool_settings(
        vec![EgressSpec::Direct],
        Rate::per_minute(6000, 50),
        LimitScope::Local,
        "unused",
    );
    settings.origin_addr = addr.to_string();
    let pool = EgressPool::new(settings, None, metrics()).unwrap();
    let origin = url::Url::parse(&format!("http://{addr}")).unwrap();
    let mut fetch = fetch_settings(origin);
    fetch.respect_robots = false;
    fetch.retries = 0;
    let client = OpenLibraryClient::new(pool, fetch, metrics(), None);
    let error = client.get("/works/OL1W.json").await.unwrap_err();
    assert_eq!(error.reason(), FailureReason::Timeout, "{error}");
    assert!(client.pool().is_down("direct"));
}

/// Runs `paths` with `concurrency` in flight; returns (healthy ok, healthy failed, failing
/// ok, failing failed with http_5xx, seconds until the last healthy request finished).
async fn run_mix(
    client: &OpenLibraryClient,
    paths: Vec<String>,
    concurrency: usize,
) -> (usize, usize, usize, usize, f64) {
    let started = Instant::now();
    let results: Vec<(bool, Result<(), FailureReason>, f64)> = futures::stream::iter(paths)
        .map(|path| {
            let client = client.clone();
            async move {
                let result = client.get(&path).await.map(|_| ()).map_err(|e| e.reason());
                (
                    path.starts_with("/fail/"),
                    result,
                    started.elapsed().as_secs_f64(),
                )
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let healthy_ok = results.iter().filter(|(f, r, _)| !f && r.is_ok()).count();
    let healthy_failed = results.iter().filter(|(f, r, _)| !f && r.is_err()).count();
    let failing_ok = results.iter().filter(|(f, r, _)| *f && r.is_ok()).count();
    let failing_5xx = results
        .iter()
        .filter(|(f, r, _)| *f && *r == Err(FailureReason::Http5xx))
        .count();
    let last_healthy = results
        .iter()
        .filter(|(f, _, _)| !f)
        .map(|(_, _, t)| *t)
        .fold(0.0, f64::max);
    (
        healthy_ok,
        healthy_failed,
        failing_ok,
        failing_5xx,
        last_healthy,
    )
}

/// With 30% of keys always answering 503, the other 70% still all succeed through the three
/// proxies, and retries stay within the retry budget (they take at most ratio · requests + min).
/// The healthy rates with and without the failing keys are printed for the report, not
/// asserted.
#[tokio::test]
async fn keys_that_always_fail_do_not_starve_healthy_ones() {
    let rate = Rate::per_minute(600, 5);
    let server = TestServer::start(Behaviour {
        per_ip_limit: Some(Rate {
            burst: rate.burst + 1,
            ..rate
        }),
        ..Behaviour::default()
    })
    .await;
    let (proxies, _) = stack_proxies();
    let healthy_only: Vec<String> = (0..140).map(|i| format!("/works/OL{i}W.json")).collect();
    // One prefix for both phases: the same three IPs, so the same shared limit.
    let prefix = support::unique("egress");
    let settings = pool_settings(proxies.0.clone(), rate, LimitScope::Cluster, &prefix);
    let (baseline, _) = client(&server, settings, Some(redis().await));
    let (ok, failed, _, _, seconds) = run_mix(&baseline, healthy_only, 32).await;
    assert_eq!((ok, failed), (140, 0));
    let baseline_rate = 140.0 / seconds;
    let baseline_attempts = server.hits().len();

    let mixed: Vec<String> = (0..200)
        .map(|i| {
            if i % 10 < 3 {
                format!("/fail/OL{i}W.json")
            } else {
                format!("/works/OL{i}W.json")
            }
        })
        .collect();
    let settings = pool_settings(proxies.0, rate, LimitScope::Cluster, &prefix);
    let (client, metrics) = client(&server, settings, Some(redis().await));
    let (ok, failed, failing_ok, failing_5xx, seconds) = run_mix(&client, mixed, 32).await;

    assert_eq!((ok, failed), (140, 0), "every healthy request succeeds");
    assert_eq!(
        (failing_ok, failing_5xx),
        (0, 60),
        "every failing key fails as http_5xx"
    );
    let (firsts, retries) = client.retry_budget().counts();
    let settings = fetch_settings(server.origin());
    let allowed = settings.budget_ratio * firsts as f64 + f64::from(settings.budget_min);
    assert!(
        retries as f64 <= allowed,
        "{retries} retries for {firsts} requests"
    );
    assert_eq!(server.count_429(), 0);
    let blocked: i64 = client
        .pool()
        .labels()
        .iter()
        .map(|l| metrics.egress_blocked.with_label_values(&[l]).get())
        .sum();
    assert_eq!(blocked, 0, "503s without Retry-After never block an egress");
    let attempts = server.hits().len() - baseline_attempts;
    eprintln!(
        "healthy throughput: {baseline_rate:.1}/s alone, {:.1}/s beside 30% always-503 keys; \
         all attempts {:.1}/s ({retries} retries for {firsts} requests; allowed 30/s after a \
         burst of 15)",
        140.0 / seconds,
        attempts as f64 / seconds
    );
}
