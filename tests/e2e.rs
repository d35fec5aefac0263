//! End to end: the real binaries as separate processes (the simulator, two workers, a graph
//! writer and the API) against the real Kafka, Redis, Neo4j and Squid proxies. A crawl ends
//! `done`, and the graph is exactly the simulator's truth.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::{
    Process, TestTopics, assert_graph_is_exactly, eventually, first_work_seeds, free_port,
    fresh_id_base, reachable_truth, stack_env, unique, wait_ok,
};

/// Everything a crawl needs, started for one test and stopped when dropped.
struct Deployment {
    sim_url: String,
    api_url: String,
    worker_metrics: Vec<String>,
    /// What every worker is started with (topics, group, origin, pool, shared prefix).
    worker_env: Vec<(String, String)>,
    workers: Vec<Process>,
    _processes: Vec<Process>,
}

impl Deployment {
    /// Stops the workers (SIGTERM: they commit and leave the group) and starts as many again
    /// with `extra` settings on top, sharing everything else, and waits until they are ready.
    async fn restart_workers(&mut self, extra: &[(&str, &str)]) {
        for worker in &mut self.workers {
            worker.signal("TERM");
            worker.wait_exit(Duration::from_secs(60));
        }
        let count = self.workers.len();
        self.workers.clear();
        self.worker_metrics.clear();
        let mut env = self.worker_env.clone();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let (workers, metrics) = start_workers(&env, count);
        self.workers = workers;
        self.worker_metrics = metrics;
        for url in &self.worker_metrics {
            wait_ok(&format!("{url}/readyz"), Duration::from_secs(90)).await;
        }
    }
}

/// Starts `count` workers with `env`; their processes and metrics URLs.
fn start_workers(env: &[(String, String)], count: usize) -> (Vec<Process>, Vec<String>) {
    let mut processes = Vec::new();
    let mut metrics = Vec::new();
    for i in 0..count {
        let port = free_port();
        metrics.push(format!("http://127.0.0.1:{port}"));
        let mut worker_env = env.to_vec();
        worker_env.push(("METRICS_ADDR".to_owned(), format!("127.0.0.1:{port}")));
        worker_env.push(("WORKER_NAME".to_owned(), format!("e2e-worker-{i}")));
        processes.push(Process::start(
            "worker",
            env!("CARGO_BIN_EXE_worker"),
            &[],
            &worker_env,
        ));
    }
    (processes, metrics)
}

async fn deploy(topics: &TestTopics, id_base: u64, workers: usize) -> Deployment {
    let sim_port = free_port();
    let api_port = free_port();
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    let group = unique("e2e");
    let mut processes = Vec::new();
    processes.push(Process::start(
        "sim",
        env!("CARGO_BIN_EXE_bookworm"),
        &[
            "sim",
            "--addr",
            &format!("127.0.0.1:{sim_port}"),
            "--id-base",
            &id_base.to_string(),
            "--works",
            "400",
            "--authors",
            "120",
            "--subjects",
            "40",
            "--no-limit",
        ],
        &[],
    ));
    let mut env = topics.env();
    env.extend(
        [
            ("OPENLIBRARY_BASE_URL", sim_url.clone()),
            ("PROXY_POOL", stack_env("PROXY_POOL")),
            ("EGRESS_RATE_PER_MINUTE", "6000".to_owned()),
            // Far above the stand-in's pace: these tests are about the pipeline, not politeness.
            ("USER_AGENT_RATE_PER_MINUTE", "60000".to_owned()),
            ("EGRESS_BURST", "50".to_owned()),
            ("EGRESS_REDIS_PREFIX", unique("e2e-egress")),
            ("COMMIT_INTERVAL", "200ms".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let mut worker_env = env.clone();
    worker_env.push(("KAFKA_GROUP_ID".to_owned(), format!("{group}-workers")));
    let (worker_processes, worker_metrics) = start_workers(&worker_env, workers);
    let mut writer_env = env.clone();
    writer_env.push(("KAFKA_GROUP_ID".to_owned(), format!("{group}-graph")));
    writer_env.push((
        "METRICS_ADDR".to_owned(),
        format!("127.0.0.1:{}", free_port()),
    ));
    writer_env.push(("GRAPH_BATCH_SIZE".to_owned(), "500".to_owned()));
    processes.push(Process::start(
        "graph-writer",
        env!("CARGO_BIN_EXE_graph-writer"),
        &[],
        &writer_env,
    ));
    let mut api_env = env;
    api_env.push(("API_ADDR".to_owned(), format!("127.0.0.1:{api_port}")));
    processes.push(Process::start(
        "api",
        env!("CARGO_BIN_EXE_bookworm"),
        &["serve"],
        &api_env,
    ));

    let deployment = Deployment {
        sim_url,
        api_url: format!("http://127.0.0.1:{api_port}"),
        worker_metrics,
        worker_env,
        workers: worker_processes,
        _processes: processes,
    };
    wait_ok(
        &format!("{}/_sim/stats", deployment.sim_url),
        Duration::from_secs(60),
    )
    .await;
    wait_ok(
        &format!("{}/readyz", deployment.api_url),
        Duration::from_secs(60),
    )
    .await;
    for url in &deployment.worker_metrics {
        wait_ok(&format!("{url}/readyz"), Duration::from_secs(90)).await;
    }
    deployment
}

/// A crawl from a work key and free text to depth 2 ends `done`, and Neo4j holds exactly
/// the simulator's reachable nodes and relationships, stubs exactly at the depth edge, with
/// the crawl's counters equal to the graph's counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crawl_to_depth_two_builds_exactly_the_reachable_graph() {
    let topics = TestTopics::create("e2e", 4).await;
    let id_base = fresh_id_base();
    let deployment = deploy(&topics, id_base, 2).await;

    // The simulator's first work title makes a search seed that finds something.
    let (_, status, truth) =
        support::first_works_crawl_is_exact(&deployment.sim_url, &deployment.api_url, id_base)
            .await;
    let counters = &status["counters"];
    let mut by_label: BTreeMap<String, u64> = BTreeMap::new();
    for label in truth.nodes.values() {
        *by_label.entry(label.clone()).or_default() += 1;
    }
    let counted: BTreeMap<String, u64> =
        serde_json::from_value(counters["nodes"].clone()).expect("nodes by label");
    assert_eq!(counted, by_label, "{status}");
    let failed_keys = truth
        .outcomes
        .as_object()
        .expect("outcomes")
        .values()
        .filter(|o| !matches!(o["outcome"].as_str(), Some("node" | "search")))
        .count() as u64;
    let failed: u64 = counters["failed"]
        .as_object()
        .expect("failed")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(
        failed, failed_keys,
        "every deleted, missing or failing key ends in the DLQ: {status}"
    );
}

/// Starts a crawl of `seeds` to `depth` through the API and waits until it is `done`; its id
/// and final status.
async fn crawl_to_done(deployment: &Deployment, seeds: &[&str], depth: u32) -> (String, Value) {
    let body = json!({"seeds": seeds, "max_depth": depth});
    support::crawl_to_done(&reqwest::Client::new(), &deployment.api_url, &body).await
}

/// Requests the simulator has received so far.
async fn sim_requests(deployment: &Deployment) -> u64 {
    let stats: Value = reqwest::get(format!("{}/_sim/stats", deployment.sim_url))
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    stats["requests"].as_u64().expect("requests")
}

/// The record cache: the same crawl run again within REFETCH_AFTER builds the same, exact
/// graph while sending at most 5% of the first run's requests; workers whose window has
/// passed (REFETCH_AFTER=1ms here) fetch everything again, and still build the exact graph.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crawl_over_known_ground_is_answered_from_the_record_cache() {
    let topics = TestTopics::create("e2e-cache", 4).await;
    let id_base = fresh_id_base();
    let mut deployment = deploy(&topics, id_base, 2).await;
    let (seed_work, _) = first_work_seeds(&deployment.sim_url, id_base).await;
    let truth = reachable_truth(&deployment.sim_url, &[&seed_work], 2).await;

    let (first, _) = crawl_to_done(&deployment, &[&seed_work], 2).await;
    assert_graph_is_exactly(&truth, &first).await;
    let first_requests = sim_requests(&deployment).await;
    assert!(first_requests > 50, "a real crawl: {first_requests}");

    let (second, status) = crawl_to_done(&deployment, &[&seed_work], 2).await;
    assert_graph_is_exactly(&truth, &second).await;
    assert_eq!(status["counters"]["fetched"], truth.nodes.len(), "{status}");
    let second_requests = sim_requests(&deployment).await - first_requests;
    assert!(
        second_requests * 20 <= first_requests,
        "the second crawl sent {second_requests} requests, the first {first_requests}"
    );

    deployment
        .restart_workers(&[("REFETCH_AFTER", "1ms")])
        .await;
    let before = sim_requests(&deployment).await;
    let (third, _) = crawl_to_done(&deployment, &[&seed_work], 2).await;
    assert_graph_is_exactly(&truth, &third).await;
    let third_requests = sim_requests(&deployment).await - before;
    assert!(
        third_requests + 4 >= first_requests,
        "past the window everything is fetched again: {third_requests} of {first_requests}"
    );
}

/// Pause and resume end to end: a crawl paused mid-way sends no request to Open Library
/// while paused (the simulator's count stands still once the jobs running at the pause end),
/// holds its remaining work (still in flight, never done), and after resume reaches `done`
/// with exactly the simulator's graph.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_crawl_sends_nothing_and_ends_exact_after_resume() {
    let topics = TestTopics::create("e2e-pause", 4).await;
    let id_base = fresh_id_base();
    let deployment = deploy(&topics, id_base, 2).await;
    let (seed_work, search) = first_work_seeds(&deployment.sim_url, id_base).await;
    let truth = reachable_truth(
        &deployment.sim_url,
        &[&seed_work, &format!("search:{search}")],
        2,
    )
    .await;
    let client = reqwest::Client::new();
    let api = &deployment.api_url;
    let body = json!({"seeds": [&seed_work, &search], "max_depth": 2});
    let crawl_id = support::create_crawl(&client, api, &body).await;
    let status_url = format!("{api}/crawls/{crawl_id}");
    // Mid-way: as soon as the first node is counted.
    eventually("the first node fetched", Duration::from_secs(60), || {
        let (client, url) = (client.clone(), status_url.clone());
        async move {
            let status: Value = client.get(&url).send().await.ok()?.json().await.ok()?;
            (status["counters"]["fetched"].as_u64()? >= 1).then_some(())
        }
    })
    .await;
    let paused = client
        .post(format!("{status_url}/pause"))
        .send()
        .await
        .expect("pause");
    assert_eq!(paused.status(), 200);

    // The jobs running at the pause end (polled once a second until the count holds);
    // then nothing is sent for a few seconds more.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = sim_requests(&deployment).await;
    let stopped_at = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sim_requests(&deployment).await;
        if now == last {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "requests never stopped after the pause"
        );
        last = now;
    };
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            sim_requests(&deployment).await,
            stopped_at,
            "a request was sent while the crawl was paused"
        );
    }
    let held: Value = client
        .get(&status_url)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(held["state"], "paused", "{held}");
    assert!(
        held["counters"]["in_flight"].as_u64().expect("in flight") > 0,
        "paused mid-way, with work held: {held}"
    );
    assert!(
        held["counters"]["fetched"].as_u64().expect("fetched") < truth.nodes.len() as u64,
        "{held}"
    );
    eprintln!(
        "paused at {} of {} nodes fetched, {} keys held in flight; the simulator's count stood at {stopped_at} requests for 4 s",
        held["counters"]["fetched"],
        truth.nodes.len(),
        held["counters"]["in_flight"]
    );

    let resumed = client
        .post(format!("{status_url}/resume"))
        .send()
        .await
        .expect("resume");
    assert_eq!(resumed.status(), 200);
    let status = eventually("the crawl to end done", Duration::from_secs(300), || {
        let (client, url) = (client.clone(), status_url.clone());
        async move {
            let status: Value = client.get(&url).send().await.ok()?.json().await.ok()?;
            (status["state"] == "done").then_some(status)
        }
    })
    .await;
    assert_graph_is_exactly(&truth, &crawl_id).await;
    assert_eq!(status["counters"]["fetched"], truth.nodes.len(), "{status}");
    assert_eq!(status["counters"]["edges"], truth.edges.len(), "{status}");
}
