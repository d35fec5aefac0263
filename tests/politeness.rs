//! Politeness end to end: two worker processes crawl the simulator, which enforces Open
//! Library's per-IP limit, through the three Squid proxies of the stack (each leaving from its
//! own loopback address, so the simulator sees three client IPs).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Process, TestTopics, eventually, free_port, stack_env, unique, wait_ok};

/// Starts the simulator (Open Library's limit on) and two workers at `rate` per minute per
/// egress; returns the simulator's URL, its id base and the processes.
async fn start(
    topics: &TestTopics,
    rate: u32,
    burst: u32,
    server_limit: &[&str],
) -> (String, u64, Vec<Process>) {
    let sim_port = free_port();
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    let id_base = 2_000_000_000
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default()
            % 1_000_000_000)
            * 1000;
    let mut sim_args = vec![
        "sim".to_owned(),
        "--addr".to_owned(),
        format!("127.0.0.1:{sim_port}"),
        "--id-base".to_owned(),
        id_base.to_string(),
        "--works".to_owned(),
        "150".to_owned(),
        "--authors".to_owned(),
        "50".to_owned(),
        "--subjects".to_owned(),
        "20".to_owned(),
    ];
    sim_args.extend(server_limit.iter().map(|s| s.to_string()));
    let sim_args: Vec<&str> = sim_args.iter().map(String::as_str).collect();
    let mut processes = vec![Process::start(
        "sim",
        env!("CARGO_BIN_EXE_bookworm"),
        &sim_args,
        &[],
    )];
    let mut env = topics.env();
    let group = unique("polite");
    let prefix = unique("polite-egress");
    for (name, value) in [
        ("OPENLIBRARY_BASE_URL", sim_url.clone()),
        ("PROXY_POOL", stack_env("PROXY_POOL")),
        ("EGRESS_RATE_PER_MINUTE", rate.to_string()),
        ("EGRESS_BURST", burst.to_string()),
        ("EGRESS_LIMIT_SCOPE", "cluster".to_owned()),
        ("EGRESS_REDIS_PREFIX", prefix),
        ("KAFKA_GROUP_ID", group),
    ] {
        env.push((name.to_owned(), value));
    }
    for i in 0..2 {
        let mut worker_env = env.clone();
        worker_env.push((
            "METRICS_ADDR".to_owned(),
            format!("127.0.0.1:{}", free_port()),
        ));
        worker_env.push(("WORKER_NAME".to_owned(), format!("polite-{i}")));
        processes.push(Process::start(
            "worker",
            env!("CARGO_BIN_EXE_worker"),
            &[],
            &worker_env,
        ));
    }
    wait_ok(&format!("{sim_url}/robots.txt"), Duration::from_secs(30)).await;
    (sim_url, id_base, processes)
}

/// Creates a crawl straight through the crawl store and the frontier (the API is tested
/// elsewhere), from the first `seeds` works of the catalogue, and waits until it is done.
async fn crawl(topics: &TestTopics, id_base: u64, seeds: u64, deadline: Duration) -> Value {
    let works: Vec<String> = (1..=seeds)
        .map(|i| format!("/works/OL{}W", id_base + i))
        .collect();
    let store = bookworm::crawl::store::CrawlStore::connect(&stack_env("REDIS_URL"))
        .await
        .expect("redis");
    let crawl_id = unique("polite-crawl");
    let spec = bookworm::crawl::store::CrawlSpec {
        crawl_id: crawl_id.clone(),
        seeds: works.clone(),
        max_depth: 1,
        max_nodes: 100_000,
    };
    store.create(&spec).await.expect("crawl created");
    let publisher = bookworm::kafka::publish::Publisher::new(
        &stack_env("KAFKA_BROKERS"),
        Duration::from_secs(30),
    )
    .expect("publisher");
    let jobs: Vec<bookworm::kafka::publish::Record> = works
        .iter()
        .map(|key| bookworm::kafka::publish::Record {
            topic: topics.frontier.clone(),
            key: key.clone(),
            payload: json!({"v": 1, "crawl_id": crawl_id, "key": key, "depth": 0, "seed": key,
                "parent": null, "enqueued_at": "2026-11-25T00:00:00Z"})
            .to_string()
            .into_bytes(),
        })
        .collect();
    publisher.publish(&jobs).await.expect("seeds enqueued");
    eventually("the crawl to end done", deadline, || {
        let store = store.clone();
        let crawl_id = crawl_id.clone();
        async move {
            let status = store.status(&crawl_id).await.ok()??;
            (status.state == bookworm::crawl::store::CrawlState::Done)
                .then(|| serde_json::to_value(status).ok())?
        }
    })
    .await
}

/// At 150 requests per minute per egress (Open Library allows 180), two workers sharing the
/// limit through Redis send no more than that through any proxy in any minute, nor more than
/// the User-Agent budget through all of them, trip no 429 (the simulator enforces both of
/// Open Library's limits), and spread the load about evenly over the three proxies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_share_the_load_within_the_limit_and_trip_no_429() {
    let topics = TestTopics::create("polite", 4).await;
    let (sim_url, id_base, _processes) = start(&topics, 150, 10, &[]).await;
    let status = crawl(&topics, id_base, 40, Duration::from_secs(300)).await;
    let stats: Value = reqwest::get(format!("{sim_url}/_sim/stats"))
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(
        stats["rate_limited"], 0,
        "no 429 at a limit below the server's: {stats}"
    );
    let per_ip = stats["per_ip"].as_object().expect("per ip");
    let proxies: Vec<(&String, &Value)> = per_ip
        .iter()
        .filter(|(ip, _)| ip.as_str() != "127.0.0.1")
        .collect();
    let ips: Vec<&str> = proxies.iter().map(|(ip, _)| ip.as_str()).collect();
    assert_eq!(
        ips,
        vec!["127.0.0.11", "127.0.0.12", "127.0.0.13"],
        "{stats}"
    );
    let requests: Vec<u64> = proxies
        .iter()
        .map(|(_, v)| v["requests"].as_u64().unwrap_or(0))
        .collect();
    let mean = requests.iter().sum::<u64>() as f64 / 3.0;
    for (ip, v) in &proxies {
        let n = v["requests"].as_u64().unwrap_or(0) as f64;
        assert!(
            (0.7 * mean..=1.3 * mean).contains(&n),
            "{ip} carried {n} of a mean {mean}: {stats}"
        );
        let worst = v["max_requests_in_any_60s"].as_u64().unwrap_or(u64::MAX);
        assert!(
            worst <= 150 + 10,
            "{ip} sent {worst} requests in one minute: {stats}"
        );
    }
    assert!(mean > 30.0, "the crawl should make real traffic: {stats}");
    // One User-Agent budget (360/min by default) across both workers and all three proxies,
    // under Open Library's 400/min per User-Agent: three proxies at 150/min would allow 450.
    let ours = stats["per_user_agent"]
        .as_object()
        .expect("per user agent")
        .iter()
        .find(|(agent, _)| agent.starts_with("RelentlessBookworm/"))
        .map(|(_, v)| v.clone())
        .expect("our User-Agent");
    let busiest = ours["max_requests_in_any_60s"].as_u64().expect("window");
    assert!(
        busiest <= 360 + 10,
        "{busiest} requests in one minute: {ours}"
    );
    assert_eq!(ours["distinct_ips"], 3, "{ours}");
    let failed: u64 = status["counters"]["failed"]
        .as_object()
        .expect("failed")
        .iter()
        .filter(|(reason, _)| reason.as_str() != "http_4xx")
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    assert_eq!(failed, 0, "only deleted or missing keys may fail: {status}");
}

/// Above the server's limit (here a strict 60 per minute) the simulator answers 429s; each blocks its egress and the
/// request moves on, and every job still succeeds in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_above_the_servers_trips_429s_and_every_job_still_succeeds() {
    let topics = TestTopics::create("impolite", 4).await;
    let (sim_url, id_base, _processes) = start(
        &topics,
        600,
        20,
        &["--rate-per-minute", "60", "--burst", "5"],
    )
    .await;
    let status = crawl(&topics, id_base, 40, Duration::from_secs(300)).await;
    let stats: Value = reqwest::get(format!("{sim_url}/_sim/stats"))
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert!(
        stats["rate_limited"].as_u64().unwrap_or(0) > 0,
        "expected 429s: {stats}"
    );
    let failed: u64 = status["counters"]["failed"]
        .as_object()
        .expect("failed")
        .iter()
        .filter(|(reason, _)| reason.as_str() != "http_4xx")
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    assert_eq!(
        failed, 0,
        "rate-limited requests must be retried until they succeed: {status}"
    );
}
