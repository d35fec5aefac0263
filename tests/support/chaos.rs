//! The chaos suite's deployment and invariant: the real binaries as separate processes
//! (simulator, workers, graph writer, API) that a scenario can kill, freeze, scale and
//! restart, and the check every scenario ends with — nothing reachable is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{
    Process, TestTopics, eventually, free_port, fresh_id_base, graph_edges, graph_nodes, neo4j,
    stack_env, unique, wait_ok,
};

/// Works, authors and subjects of the simulated catalogue (the e2e test's size: crawls of a
/// few hundred keys, so scenarios finish in tens of seconds on two shared cores).
const CATALOGUE: [u64; 3] = [400, 120, 40];

/// How long a crawl may take under faults before the scenario fails (a stuck crawl is the
/// failure this suite exists to catch, so the bound is generous but finite).
pub const CRAWL_DEADLINE: Duration = Duration::from_secs(300);

/// The seed of a scenario's random choices: `CHAOS_SEED` to replay a run, else the clock
/// (printed, so a failure can be replayed).
pub fn chaos_seed(scenario: &str) -> u64 {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default()
        });
    eprintln!("{scenario}: CHAOS_SEED={seed}");
    seed
}

/// The `stack.sh` that manages the running stack (`CHAOS_STACK_SH`, else this checkout's).
pub fn stack_sh() -> String {
    std::env::var("CHAOS_STACK_SH")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack.sh").to_owned())
}

/// Runs `stack.sh <cmd> <svc>` and panics if it fails.
pub fn stack(cmd: &str, svc: &str) {
    let status = std::process::Command::new("bash")
        .args([&stack_sh(), cmd, svc])
        .status()
        .expect("stack.sh runs");
    assert!(status.success(), "stack.sh {cmd} {svc} failed");
}

/// One worker process and where its `/metrics`, `/healthz` and `/readyz` answer.
pub struct Worker {
    /// The process.
    pub process: Process,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its log file.
    pub log: PathBuf,
}

/// How a scenario wants its deployment.
#[derive(Clone)]
pub struct Options {
    /// Partitions of every topic.
    pub partitions: i32,
    /// Partitions of the frontier topic, when it differs.
    pub frontier_partitions: Option<i32>,
    /// Workers started at deploy time.
    pub workers: usize,
    /// Extra environment for every worker.
    pub worker_env: Vec<(String, String)>,
    /// Extra environment for the graph writer.
    pub writer_env: Vec<(String, String)>,
    /// The simulator's latency per request: slows the crawl so faults land mid-crawl.
    pub sim_latency_ms: u64,
    /// `PROXY_POOL` for the workers (the stack's Squids by default).
    pub proxy_pool: String,
    /// Works, authors and subjects of the simulated catalogue.
    pub catalogue: [u64; 3],
}

impl Default for Options {
    fn default() -> Self {
        Options {
            partitions: 4,
            frontier_partitions: None,
            workers: 2,
            worker_env: Vec::new(),
            writer_env: Vec::new(),
            sim_latency_ms: 0,
            proxy_pool: stack_env("PROXY_POOL"),
            catalogue: CATALOGUE,
        }
    }
}

/// Everything a crawl needs, started for one scenario and stopped when dropped.
pub struct Deployment {
    /// The topics.
    pub topics: TestTopics,
    /// The simulator's id base.
    pub id_base: u64,
    /// The simulator.
    pub sim_url: String,
    /// The API.
    pub api_url: String,
    /// The workers' consumer group.
    pub worker_group: String,
    /// The graph writer's consumer group.
    pub writer_group: String,
    /// Worker slots (None: killed and not restarted).
    pub workers: Vec<Option<Worker>>,
    /// The graph writer (None while killed).
    pub writer: Option<Process>,
    worker_env: Vec<(String, String)>,
    writer_env: Vec<(String, String)>,
    _sim: Process,
    _api: Process,
    client: reqwest::Client,
}

impl Deployment {
    /// Creates topics and starts the simulator, workers, graph writer and API; returns once
    /// all answer and every worker has partitions.
    pub async fn start(options: Options) -> Deployment {
        let topics =
            TestTopics::create_with("chaos", options.partitions, options.frontier_partitions).await;
        let id_base = fresh_id_base();
        let sim_port = free_port();
        let api_port = free_port();
        let sim_url = format!("http://127.0.0.1:{sim_port}");
        let group = unique("chaos");
        let mut sim_args = vec![
            "sim".to_owned(),
            "--addr".to_owned(),
            format!("127.0.0.1:{sim_port}"),
            "--id-base".to_owned(),
            id_base.to_string(),
            "--no-limit".to_owned(),
            "--latency".to_owned(),
            format!("{}ms", options.sim_latency_ms),
        ];
        for (flag, value) in ["--works", "--authors", "--subjects"]
            .into_iter()
            .zip(options.catalogue)
        {
            sim_args.push(flag.to_owned());
            sim_args.push(value.to_string());
        }
        let sim_args: Vec<&str> = sim_args.iter().map(String::as_str).collect();
        let sim = Process::start("sim", env!("CARGO_BIN_EXE_bookworm"), &sim_args, &[]);
        let mut env = topics.env();
        env.extend(
            [
                ("OPENLIBRARY_BASE_URL", sim_url.clone()),
                ("EGRESS_RATE_PER_MINUTE", "6000".to_owned()),
                // Far above the stand-in's pace: these tests are about the pipeline, not politeness.
                ("USER_AGENT_RATE_PER_MINUTE", "60000".to_owned()),
                ("EGRESS_BURST", "50".to_owned()),
                ("EGRESS_REDIS_PREFIX", unique("chaos-egress")),
                ("COMMIT_INTERVAL", "200ms".to_owned()),
                // A killed consumer holds its partitions until the group notices: the
                // broker's minimum, so a kill costs seconds, not the 45 s default.
                ("SESSION_TIMEOUT", "6s".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let mut worker_env = env.clone();
        worker_env.push(("PROXY_POOL".to_owned(), options.proxy_pool.clone()));
        worker_env.push(("KAFKA_GROUP_ID".to_owned(), format!("{group}-workers")));
        worker_env.extend(options.worker_env.iter().cloned());
        let mut writer_env = env.clone();
        writer_env.push(("KAFKA_GROUP_ID".to_owned(), format!("{group}-graph")));
        writer_env.push(("GRAPH_BATCH_SIZE".to_owned(), "500".to_owned()));
        writer_env.extend(options.writer_env.iter().cloned());
        let mut api_env = env;
        api_env.push(("API_ADDR".to_owned(), format!("127.0.0.1:{api_port}")));
        let api = Process::start("api", env!("CARGO_BIN_EXE_bookworm"), &["serve"], &api_env);

        let mut deployment = Deployment {
            topics,
            id_base,
            sim_url,
            api_url: format!("http://127.0.0.1:{api_port}"),
            worker_group: format!("{group}-workers"),
            writer_group: format!("{group}-graph"),
            workers: Vec::new(),
            writer: None,
            worker_env,
            writer_env,
            _sim: sim,
            _api: api,
            client: reqwest::Client::new(),
        };
        deployment.start_writer();
        for _ in 0..options.workers {
            let i = deployment.workers.len();
            deployment.workers.push(None);
            deployment.start_worker(i);
        }
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
        for i in 0..options.workers {
            deployment.wait_worker_ready(i).await;
        }
        deployment
    }

    /// The value of a setting every worker is started with (e.g. `EGRESS_REDIS_PREFIX`).
    pub fn worker_setting(&self, name: &str) -> Option<String> {
        self.worker_env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    /// Starts (or restarts) the worker in slot `i` on a fresh metrics port.
    pub fn start_worker(&mut self, i: usize) {
        let port = free_port();
        let mut env = self.worker_env.clone();
        env.push(("METRICS_ADDR".to_owned(), format!("127.0.0.1:{port}")));
        env.push(("WORKER_NAME".to_owned(), format!("chaos-worker-{i}")));
        let (process, log) = Process::start_logged(
            &format!("worker-{i}"),
            env!("CARGO_BIN_EXE_worker"),
            &[],
            &env,
        );
        if i >= self.workers.len() {
            self.workers.resize_with(i + 1, || None);
        }
        self.workers[i] = Some(Worker {
            process,
            url: format!("http://127.0.0.1:{port}"),
            log,
        });
    }

    /// Waits until worker `i` is ready (partitions assigned).
    pub async fn wait_worker_ready(&self, i: usize) {
        let url = &self.workers[i].as_ref().expect("worker running").url;
        wait_ok(&format!("{url}/readyz"), Duration::from_secs(90)).await;
    }

    /// SIGKILLs worker `i` and waits until it is gone.
    pub fn kill_worker(&mut self, i: usize) {
        if let Some(mut worker) = self.workers[i].take() {
            worker.process.signal("KILL");
            worker.process.wait_exit(Duration::from_secs(10));
        }
    }

    /// Starts the graph writer.
    pub fn start_writer(&mut self) {
        let mut env = self.writer_env.clone();
        env.push((
            "METRICS_ADDR".to_owned(),
            format!("127.0.0.1:{}", free_port()),
        ));
        self.writer = Some(Process::start(
            "graph-writer",
            env!("CARGO_BIN_EXE_graph-writer"),
            &[],
            &env,
        ));
    }

    /// SIGKILLs the graph writer.
    pub fn kill_writer(&mut self) {
        if let Some(mut writer) = self.writer.take() {
            writer.signal("KILL");
            writer.wait_exit(Duration::from_secs(10));
        }
    }

    /// Sets the simulator's faults (`POST /_sim/faults`; missing fields are zero).
    pub async fn set_faults(&self, faults: Value) {
        let status = self
            .client
            .post(format!("{}/_sim/faults", self.sim_url))
            .json(&faults)
            .send()
            .await
            .expect("sim answers")
            .status();
        assert!(status.is_success(), "faults refused: {status}");
    }

    /// The simulator's stats.
    pub async fn sim_stats(&self) -> Value {
        self.client
            .get(format!("{}/_sim/stats", self.sim_url))
            .send()
            .await
            .expect("sim answers")
            .json()
            .await
            .expect("json")
    }

    /// Creates a crawl from the simulator's first work to `max_depth`.
    pub async fn create_crawl(&self, max_depth: u32) -> Crawl {
        self.create_crawl_of(1, max_depth, None).await
    }

    /// Creates a crawl from the simulator's `nth` work (1-based) to `max_depth`, with a node
    /// budget (the API's default when `None`).
    pub async fn create_crawl_of(&self, nth: u64, max_depth: u32, max_nodes: Option<u64>) -> Crawl {
        let seed = format!("/works/OL{}W", self.id_base + nth);
        let body = json!({"seeds": [seed], "max_depth": max_depth, "max_nodes": max_nodes});
        Crawl {
            id: super::create_crawl(&self.client, &self.api_url, &body).await,
            seed,
            max_depth,
            started: Instant::now(),
        }
    }

    /// The crawl's status document.
    pub async fn status(&self, crawl: &Crawl) -> Option<Value> {
        self.client
            .get(format!("{}/crawls/{}", self.api_url, crawl.id))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// Waits until the crawl has fetched at least `n` nodes (or is done).
    pub async fn wait_fetched(&self, crawl: &Crawl, n: u64) {
        eventually(&format!("{n} nodes fetched"), CRAWL_DEADLINE, || async {
            let status = self.status(crawl).await?;
            let fetched = status["counters"]["fetched"].as_u64()?;
            (fetched >= n || status["state"] == "done").then_some(())
        })
        .await;
    }

    /// Recovery after a fault ended: how long until the crawl fetches a node again (or is
    /// done). Printed as `CHAOS RECOVERY`, for docs/reliability.md.
    pub async fn crawl_recovery(&self, crawl: &Crawl, what: &str) -> Duration {
        let start = Instant::now();
        let fetched = |status: &Value| status["counters"]["fetched"].as_u64().unwrap_or(0);
        let before = fetched(&self.status(crawl).await.unwrap_or_default());
        eventually("the crawl to move again", CRAWL_DEADLINE, || async {
            let status = self.status(crawl).await?;
            (fetched(&status) > before || status["state"] == "done").then_some(())
        })
        .await;
        let took = start.elapsed();
        eprintln!("CHAOS RECOVERY {what}: {:.1} s", took.as_secs_f64());
        took
    }

    /// Recovery of the graph writer: how long until its group commits past where it was.
    pub async fn writer_recovery(&self, what: &str) -> Duration {
        let start = Instant::now();
        let (before, _) = committed_vs_high(&self.writer_group, &self.topics.results);
        eventually(
            "the graph writer to commit again",
            CRAWL_DEADLINE,
            || async {
                let (now, high) = committed_vs_high(&self.writer_group, &self.topics.results);
                (now > before || now == high).then_some(())
            },
        )
        .await;
        let took = start.elapsed();
        eprintln!("CHAOS RECOVERY {what}: {:.1} s", took.as_secs_f64());
        took
    }

    /// Waits for `done`; returns the status.
    pub async fn wait_done(&self, crawl: &Crawl) -> Value {
        eventually("the crawl to end done", CRAWL_DEADLINE, || async {
            let status = self.status(crawl).await?;
            (status["state"] == "done").then_some(status)
        })
        .await
    }

    /// The simulator's truth for the crawl, under the faults it has now (always-failing
    /// keys are part of the truth).
    pub async fn truth(&self, crawl: &Crawl) -> Truth {
        let truth: Value = self
            .client
            .get(format!(
                "{}/_sim/reachable?seed={}&depth={}",
                self.sim_url, crawl.seed, crawl.max_depth
            ))
            .send()
            .await
            .expect("truth")
            .json()
            .await
            .expect("json");
        Truth::from_json(&truth)
    }
}

/// A crawl a scenario started.
pub struct Crawl {
    /// Its id.
    pub id: String,
    /// Its one seed (a work key: the truth needs no search).
    pub seed: String,
    /// Its depth.
    pub max_depth: u32,
    /// When it was created.
    pub started: Instant,
}

/// What the simulator says the crawl must produce.
#[derive(Debug)]
pub struct Truth {
    /// Key → label of every node record.
    pub nodes: BTreeMap<String, String>,
    /// Keys that are stubs.
    pub stubs: BTreeSet<String>,
    /// `from|REL|to`.
    pub edges: BTreeSet<String>,
    /// Key → outcome (`node`, `search`, `deleted`, `not_found`, `failed`) and reason.
    pub outcomes: BTreeMap<String, (String, Option<String>)>,
}

impl Truth {
    fn from_json(truth: &Value) -> Truth {
        Truth {
            nodes: serde_json::from_value(truth["nodes"].clone()).expect("truth nodes"),
            stubs: serde_json::from_value(truth["stubs"].clone()).expect("truth stubs"),
            edges: truth["edges"]
                .as_array()
                .expect("truth edges")
                .iter()
                .map(|e| edge_name(&e["from"], &e["rel"], &e["to"]))
                .collect(),
            outcomes: truth["outcomes"]
                .as_object()
                .expect("outcomes")
                .iter()
                .map(|(k, o)| {
                    (
                        k.clone(),
                        (
                            o["outcome"].as_str().unwrap_or("").to_owned(),
                            o["reason"].as_str().map(str::to_owned),
                        ),
                    )
                })
                .collect(),
        }
    }
}

fn edge_name(from: &Value, rel: &Value, to: &Value) -> String {
    format!(
        "{}|{}|{}",
        from.as_str().unwrap_or(""),
        rel.as_str().unwrap_or(""),
        to.as_str().unwrap_or("")
    )
}

/// Every record of `topic`, read from the beginning to the high watermarks, as
/// (key, payload) — the suite's view of what Kafka holds.
pub fn read_topic(topic: &str) -> Vec<(String, Value)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack_env("KAFKA_BROKERS"))
        .set("group.id", unique("chaos-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut remaining = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            remaining.insert(p.id(), high);
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("partition");
        }
    }
    let mut records = Vec::new();
    if remaining.is_empty() {
        return records;
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.expect("message");
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let payload: Value =
            serde_json::from_slice(message.payload().unwrap_or_default()).unwrap_or(Value::Null);
        records.push((key, payload));
        if remaining.get(&message.partition()) == Some(&(message.offset() + 1)) {
            remaining.remove(&message.partition());
        }
    }
    records
}

/// Committed offsets of `group` on `topic` versus the high watermarks: (committed, high)
/// summed over partitions.
pub fn committed_vs_high(group: &str, topic: &str) -> (i64, i64) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack_env("KAFKA_BROKERS"))
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let mut high_sum = 0;
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition(topic, p.id());
        let (_, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .expect("watermarks");
        high_sum += high;
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    let committed_sum = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    (committed_sum, high_sum)
}

/// The DLQ reasons an injected fault justifies.
fn reasons_of(fault: &Value) -> Vec<&'static str> {
    match fault["fault"].as_str() {
        Some("status") => match fault["status"].as_u64().unwrap_or(0) {
            429 => vec!["rate_limited"],
            500..=599 => vec!["http_5xx"],
            _ => vec!["http_4xx"],
        },
        Some("malformed") => vec!["parse"],
        Some("reset") => vec!["http_5xx", "timeout"],
        _ => Vec::new(),
    }
}

/// What a scenario measured, for docs/reliability.md.
#[derive(Debug)]
pub struct Report {
    /// Nodes in the truth.
    pub truth_nodes: usize,
    /// Full nodes in the graph.
    pub graph_nodes: usize,
    /// Deliveries the store saw as already done (`duplicates` counter).
    pub duplicate_deliveries: u64,
    /// Node records published more than once on the results topic.
    pub duplicate_results: usize,
    /// DLQ records of the crawl by reason (distinct keys).
    pub dlq_by_reason: BTreeMap<String, usize>,
    /// DLQ records of keys that do not fail for good (the fault was transient), by reason.
    pub transient_by_reason: BTreeMap<String, usize>,
    /// Keys neither in the graph nor in the DLQ nor cut off by a DLQ'd key.
    pub lost: usize,
    /// From the crawl's creation to `done`.
    pub crawl_seconds: f64,
}

/// The invariant every scenario ends with. `transient` lists the DLQ reasons a fault of the
/// scenario may cause for keys the simulator did not make fail for good (for example
/// `timeout` when fetches are slower than `JOB_TIMEOUT`); a DLQ record with such a reason
/// must still be justified: by an injected fault of that key, or by `timeout_justified`
/// (a fault — latency spikes, a blackholed proxy — that the simulator cannot attribute to
/// a key).
///
/// Checks: the crawl is `done` with nothing in flight; every node in the graph is in the
/// truth with its label; no relationship the truth lacks, none written twice; every DLQ
/// record names a key the crawl reaches, with a reason the truth or an injected fault
/// explains; the counters equal the graph; both consumer groups committed everything. With
/// no transient DLQ record the graph must equal the truth exactly (nodes, stubs, edges);
/// with some, every truth node missing from the graph has a DLQ record or hangs only below
/// DLQ'd keys, and every relationship of a fetched node is present.
pub async fn check_invariant(
    deployment: &Deployment,
    crawl: &Crawl,
    truth: &Truth,
    status: &Value,
    timeout_justified: bool,
) -> Report {
    let crawl_seconds = crawl.started.elapsed().as_secs_f64();
    assert_eq!(status["state"], "done", "{status}");
    let counters = &status["counters"];
    assert_eq!(counters["in_flight"], 0, "{status}");

    // The graph writer lags the crawl: wait until it committed everything it was given.
    let polls = std::cell::Cell::new(0u32);
    eventually(
        "the graph writer to commit everything",
        Duration::from_secs(120),
        || async {
            let (c1, h1) = committed_vs_high(&deployment.writer_group, &deployment.topics.results);
            let (c2, h2) = committed_vs_high(&deployment.writer_group, &deployment.topics.edges);
            polls.set(polls.get() + 1);
            if polls.get() % 100 == 0 {
                eprintln!("graph writer committed results {c1}/{h1}, edges {c2}/{h2}");
            }
            (c1 == h1 && c2 == h2).then_some(())
        },
    )
    .await;
    // No offset committed past unfinished work, and none left behind: the workers' group
    // ends committed at the frontier's end (every job ran to an outcome, which `done`
    // already proves for claimed keys).
    eventually(
        "the workers to commit the whole frontier",
        Duration::from_secs(60),
        || async {
            let (c, h) = committed_vs_high(&deployment.worker_group, &deployment.topics.frontier);
            (c == h).then_some(())
        },
    )
    .await;

    let graph = neo4j().await;
    let nodes = graph_nodes(&graph, &crawl.id).await;
    let edges = graph_edges(&graph, &crawl.id).await;
    let (full, stubs) = super::split_nodes(&nodes);

    for (key, label) in &full {
        assert_eq!(
            truth.nodes.get(key),
            Some(label),
            "{key} is in the graph but not in the truth (or with another label)"
        );
    }
    for (edge, n) in &edges {
        assert!(truth.edges.contains(edge), "{edge} is not in the truth");
        assert_eq!(*n, 1, "{edge} was written {n} times");
    }

    // DLQ records of this crawl, by key.
    let stats = deployment.sim_stats().await;
    let mut dlq: BTreeMap<String, String> = BTreeMap::new();
    for (_, record) in read_topic(&deployment.topics.dlq) {
        if record["crawl_id"] != crawl.id.as_str() {
            continue;
        }
        let key = record["job"]["key"]
            .as_str()
            .expect("DLQ record with a job")
            .to_owned();
        let reason = record["reason"].as_str().expect("a reason").to_owned();
        dlq.insert(key, reason);
    }
    let mut transient = BTreeSet::new();
    for (key, reason) in &dlq {
        let (outcome, truth_reason) = truth
            .outcomes
            .get(key)
            .unwrap_or_else(|| panic!("DLQ record for {key}, which the crawl does not reach"));
        match outcome.as_str() {
            "failed" => assert_eq!(
                Some(reason),
                truth_reason.as_ref(),
                "{key} always fails with another reason"
            ),
            "deleted" | "not_found" => {}
            _ => {
                let injected = stats["injected"][key.as_str()]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let justified = injected
                    .iter()
                    .any(|fault| reasons_of(fault).contains(&reason.as_str()))
                    || (reason == "timeout" && timeout_justified);
                assert!(
                    justified,
                    "{key} dead-lettered as {reason} but the simulator injected {injected:?}"
                );
                transient.insert(key.clone());
            }
        }
    }
    eprintln!("DLQ of {}: {dlq:?}; transient: {transient:?}", crawl.id);
    // Keys of the truth that end without a node must be in the DLQ (unless a transient
    // DLQ record cut their path: then the excuse rule below applies to them too).
    let unrecorded: Vec<&String> = truth
        .outcomes
        .iter()
        .filter(|(key, (outcome, _))| {
            matches!(outcome.as_str(), "failed" | "deleted" | "not_found")
                && !dlq.contains_key(*key)
        })
        .map(|(key, _)| key)
        .collect();
    if transient.is_empty() {
        assert!(unrecorded.is_empty(), "{unrecorded:?} have no DLQ record");
    }

    let lost;
    if transient.is_empty() {
        assert_eq!(
            full, truth.nodes,
            "fetched nodes differ from the reachable set"
        );
        assert_eq!(stubs, truth.stubs, "stubs differ from the depth edge");
        assert_eq!(
            edges.keys().cloned().collect::<BTreeSet<_>>(),
            truth.edges,
            "relationships differ"
        );
        lost = 0;
    } else {
        // Keys below a transiently DLQ'd key may never be reached: a missing key without a
        // DLQ record is excused when one of its truth neighbours is itself DLQ'd or
        // missing (its path from the seed may be cut); the seed is never excused.
        let mut neighbours: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for edge in &truth.edges {
            let mut parts = edge.split('|');
            let from = parts.next().unwrap_or("");
            let to = parts.nth(1).unwrap_or("");
            neighbours.entry(from).or_default().insert(to);
            neighbours.entry(to).or_default().insert(from);
        }
        let mut missing = 0;
        for key in truth.nodes.keys().chain(unrecorded.iter().copied()) {
            if full.contains_key(key) || dlq.contains_key(key) {
                continue;
            }
            let near_dlq = *key != crawl.seed
                && neighbours.get(key.as_str()).is_some_and(|ns| {
                    ns.iter()
                        .any(|n| dlq.contains_key(*n) || !full.contains_key(*n))
                });
            if !near_dlq {
                missing += 1;
                eprintln!("lost: {key}");
            }
        }
        lost = missing;
        for edge in &truth.edges {
            let from = edge.split('|').next().unwrap_or("");
            if full.contains_key(from) {
                assert!(
                    edges.contains_key(edge),
                    "{edge} of fetched {from} is missing"
                );
            }
        }
    }
    assert_eq!(lost, 0, "keys lost");

    // The counters equal the graph.
    assert_eq!(counters["fetched"], full.len(), "{status}");
    assert_eq!(counters["edges"], edges.len(), "{status}");
    let mut by_label: BTreeMap<String, u64> = BTreeMap::new();
    for label in full.values() {
        *by_label.entry(label.clone()).or_default() += 1;
    }
    let counted: BTreeMap<String, u64> =
        serde_json::from_value(counters["nodes"].clone()).expect("nodes by label");
    assert_eq!(counted, by_label, "{status}");
    let failed: u64 = counters["failed"]
        .as_object()
        .expect("failed")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(
        failed as usize,
        dlq.len(),
        "failed counters vs DLQ: {status}"
    );

    let mut results_per_key: BTreeMap<String, usize> = BTreeMap::new();
    for (_, record) in read_topic(&deployment.topics.results) {
        if record["crawl_id"] == crawl.id.as_str()
            && let Some(key) = record["key"].as_str()
        {
            *results_per_key.entry(key.to_owned()).or_default() += 1;
        }
    }
    let duplicate_results = results_per_key.values().map(|n| n - 1).sum();
    let mut dlq_by_reason = BTreeMap::new();
    for reason in dlq.values() {
        *dlq_by_reason.entry(reason.clone()).or_default() += 1;
    }
    let mut transient_by_reason = BTreeMap::new();
    for key in &transient {
        *transient_by_reason.entry(dlq[key].clone()).or_default() += 1;
    }
    let report = Report {
        transient_by_reason,
        truth_nodes: truth.nodes.len(),
        graph_nodes: full.len(),
        duplicate_deliveries: counters["duplicates"].as_u64().unwrap_or(0),
        duplicate_results,
        dlq_by_reason,
        lost,
        crawl_seconds,
    };
    eprintln!(
        "CHAOS REPORT {}: {report:?}",
        std::thread::current().name().unwrap_or("?")
    );
    report
}
