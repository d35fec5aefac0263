//! Helpers shared by the integration tests: unique names, the stack's addresses, and polling
//! with a deadline instead of sleeping.
#![allow(dead_code)]

pub mod chaos;
pub mod dump_graph;
pub mod egress;
pub mod graph;
pub mod relay;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A name no other test (in this run or an earlier one) uses: topics, groups, crawl ids.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default();
    format!("{prefix}-{}-{stamp}-{n}", std::process::id())
}

/// An environment variable set by `eval "$(scripts/stack.sh env)"`, or the stack's default.
pub fn stack_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        let tls = concat!(env!("CARGO_MANIFEST_DIR"), "/.stack/tls");
        match name {
            "STACK_CA_FILE" => return format!("{tls}/ca.pem"),
            "STACK_WRONG_CA_FILE" => return format!("{tls}/wrong-ca.pem"),
            "KAFKA_TLS_BOOTSTRAP" => "127.0.0.1:9094",
            "KAFKA_SCRAM_USER" => "bookworm",
            "KAFKA_SCRAM_PASSWORD" => "bookworm-scram-local",
            "REDIS_TLS_URL" => "rediss://127.0.0.1:6380",
            "NEO4J_TLS_URI" => "bolt+s://127.0.0.1:7687",
            "NEO4J_TLS_ONLY_URI" => "bolt+s://127.0.0.1:7688",
            "KAFKA_BROKERS" => "127.0.0.1:9092",
            "NEO4J_URI" => "bolt://127.0.0.1:7687",
            "NEO4J_USER" => "neo4j",
            "NEO4J_PASSWORD" => "bookworm-local",
            "REDIS_URL" => "redis://127.0.0.1:6379",
            "PROXY_POOL" => "http://127.0.0.1:3128,http://127.0.0.1:3129,http://127.0.0.1:3130",
            other => panic!("no stack default for {other}"),
        }
        .to_owned()
    })
}

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a topic with `partitions` partitions (the stack has auto-creation off).
pub async fn create_topic(name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack_env("KAFKA_BROKERS"))
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create topics request");
    for result in results {
        result.expect("topic created");
    }
}

/// Messages in a topic (sum of high watermarks), as the broker reports it.
pub fn message_count(topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack_env("KAFKA_BROKERS"))
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut total = 0;
    for t in metadata.topics() {
        for p in t.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            total += high - low;
        }
    }
    total
}

/// A free TCP port on loopback (bound and released; a race with another process is possible
/// but rare enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process that is killed when dropped, so a failing test leaves nothing running.
pub struct Process {
    /// The child.
    pub child: std::process::Child,
    /// What it is, for messages.
    pub name: String,
}

impl Process {
    /// Starts `program` with `args` and extra environment `env`; its output goes to a log
    /// file under the target directory, whose path is printed.
    pub fn start(name: &str, program: &str, args: &[&str], env: &[(String, String)]) -> Process {
        Process::start_logged(name, program, args, env).0
    }

    /// Starts a process like [`Process::start`], and returns its log's path too (for tests
    /// that read the log, such as counting lines at info level).
    pub fn start_logged(
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> (Process, std::path::PathBuf) {
        let log_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("logs");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let log_path = log_dir.join(format!("{}.log", unique(name)));
        let log = std::fs::File::create(&log_path).expect("log file");
        eprintln!("{name}: log {}", log_path.display());
        let child = std::process::Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let process = Process {
            child,
            name: name.to_owned(),
        };
        (process, log_path)
    }

    /// Sends a signal (`libc`-free: through `kill(1)`).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {} failed", self.name);
    }

    /// Waits for the process to exit, up to `deadline`; returns its exit code.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The five topics of one test, unique to it, created with `partitions` partitions each.
#[derive(Clone, Debug)]
pub struct TestTopics {
    /// Crawl jobs.
    pub frontier: String,
    /// Nodes.
    pub results: String,
    /// Relationships.
    pub edges: String,
    /// Crawl DLQ.
    pub dlq: String,
    /// Graph DLQ.
    pub graph_dlq: String,
}

impl TestTopics {
    /// Unique names, not created (for a test that creates them its own way).
    pub fn named(prefix: &str) -> TestTopics {
        let base = unique(prefix);
        TestTopics {
            frontier: format!("{base}.frontier"),
            results: format!("{base}.results"),
            edges: format!("{base}.edges"),
            dlq: format!("{base}.dlq"),
            graph_dlq: format!("{base}.graph-dlq"),
        }
    }

    /// Creates the topics.
    pub async fn create(prefix: &str, partitions: i32) -> TestTopics {
        TestTopics::create_with(prefix, partitions, None).await
    }

    /// Creates the topics, the frontier with `frontier_partitions` when given (the chaos
    /// suite assigns 1,000 frontier partitions to one worker).
    pub async fn create_with(
        prefix: &str,
        partitions: i32,
        frontier_partitions: Option<i32>,
    ) -> TestTopics {
        let topics = TestTopics::named(prefix);
        create_topic(&topics.frontier, frontier_partitions.unwrap_or(partitions)).await;
        for topic in [
            &topics.results,
            &topics.edges,
            &topics.dlq,
            &topics.graph_dlq,
        ] {
            create_topic(topic, partitions).await;
        }
        topics
    }

    /// The environment that points a binary at these topics and the stack.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("KAFKA_FRONTIER_TOPIC", &self.frontier),
            ("KAFKA_RESULTS_TOPIC", &self.results),
            ("KAFKA_EDGES_TOPIC", &self.edges),
            ("KAFKA_DLQ_TOPIC", &self.dlq),
            ("KAFKA_GRAPH_DLQ_TOPIC", &self.graph_dlq),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect();
        for name in [
            "KAFKA_BROKERS",
            "REDIS_URL",
            "NEO4J_URI",
            "NEO4J_USER",
            "NEO4J_PASSWORD",
        ] {
            env.push((name.to_owned(), stack_env(name)));
        }
        env
    }
}

/// A Neo4j connection to the stack.
pub async fn neo4j() -> neo4rs::Graph {
    neo4rs::Graph::new(
        stack_env("NEO4J_URI"),
        stack_env("NEO4J_USER"),
        stack_env("NEO4J_PASSWORD"),
    )
    .await
    .expect("neo4j reachable")
}

/// The crawl's nodes in the graph: key → (label, stub).
pub async fn graph_nodes(
    graph: &neo4rs::Graph,
    crawl_id: &str,
) -> std::collections::BTreeMap<String, (String, bool)> {
    let mut rows = graph
        .execute(
            neo4rs::query(
                "MATCH (n) WHERE $crawl IN n.crawls RETURN n.key AS key, labels(n)[0] AS label, coalesce(n.stub, false) AS stub",
            )
            .param("crawl", crawl_id),
        )
        .await
        .expect("query nodes");
    let mut nodes = std::collections::BTreeMap::new();
    while let Some(row) = rows.next().await.expect("row") {
        let key: String = row.get("key").expect("key");
        nodes.insert(
            key,
            (
                row.get("label").expect("label"),
                row.get("stub").expect("stub"),
            ),
        );
    }
    nodes
}

/// The crawl's relationships, as `from|REL|to`, with their multiplicity.
pub async fn graph_edges(
    graph: &neo4rs::Graph,
    crawl_id: &str,
) -> std::collections::BTreeMap<String, i64> {
    let mut rows = graph
        .execute(
            neo4rs::query(
                "MATCH (a)-[r]->(b) WHERE $crawl IN r.crawls \
                 RETURN a.key + '|' + type(r) + '|' + b.key AS edge, count(*) AS n",
            )
            .param("crawl", crawl_id),
        )
        .await
        .expect("query edges");
    let mut edges = std::collections::BTreeMap::new();
    while let Some(row) = rows.next().await.expect("row") {
        edges.insert(
            row.get::<String>("edge").expect("edge"),
            row.get::<i64>("n").expect("n"),
        );
    }
    edges
}

/// The crawl API in this process on a random port, enqueueing seeds on `frontier_topic`;
/// returns its base URL and the token that stops it.
pub async fn start_api(frontier_topic: &str) -> (String, tokio_util::sync::CancellationToken) {
    start_api_on(frontier_topic, &stack_env("REDIS_URL")).await
}

/// The crawl API like [`start_api`], on the Redis at `redis_url`.
pub async fn start_api_on(
    frontier_topic: &str,
    redis_url: &str,
) -> (String, tokio_util::sync::CancellationToken) {
    api_in_process(
        frontier_topic,
        redis_url,
        &["--openlibrary-base-url", "https://openlibrary.org"],
    )
    .await
}

/// `bookworm serve` in this process on a random loopback port, enqueueing seeds on
/// `frontier_topic`, on the Redis at `redis_url`, with `extra` flags; returns its base URL
/// and the token that stops it.
pub async fn api_in_process(
    frontier_topic: &str,
    redis_url: &str,
    extra: &[&str],
) -> (String, tokio_util::sync::CancellationToken) {
    use bookworm::api::service::Server;
    use bookworm::config::ServeArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        serve: ServeArgs,
    }

    let brokers = stack_env("KAFKA_BROKERS");
    let mut argv = vec![
        "test",
        "--api-addr",
        "127.0.0.1:0",
        "--kafka-brokers",
        &brokers,
        "--kafka-frontier-topic",
        frontier_topic,
        "--redis-url",
        redis_url,
    ];
    argv.extend_from_slice(extra);
    let args = Args::try_parse_from(argv).expect("valid flags");
    let server = Server::bind(&args.serve).await.expect("API starts");
    let base = format!("http://{}", server.local_addr().expect("addr"));
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(server.run(token.clone()));
    (base, token)
}

/// Creates a crawl through the API at `api_url` with the JSON `body`; its id.
pub async fn create_crawl(
    client: &reqwest::Client,
    api_url: &str,
    body: &serde_json::Value,
) -> String {
    let created: serde_json::Value = client
        .post(format!("{api_url}/crawls"))
        .json(body)
        .send()
        .await
        .expect("create crawl")
        .json()
        .await
        .expect("json");
    created["crawl_id"]
        .as_str()
        .unwrap_or_else(|| panic!("crawl id in {created}"))
        .to_owned()
}

/// Creates a crawl with `body` through the API at `api_url` and waits until it is `done`;
/// its id and final status.
pub async fn crawl_to_done(
    client: &reqwest::Client,
    api_url: &str,
    body: &serde_json::Value,
) -> (String, serde_json::Value) {
    let crawl_id = create_crawl(client, api_url, body).await;
    let url = format!("{api_url}/crawls/{crawl_id}");
    let status = eventually("the crawl to end done", Duration::from_secs(300), || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let status: serde_json::Value =
                client.get(&url).send().await.ok()?.json().await.ok()?;
            (status["state"] == "done").then_some(status)
        }
    })
    .await;
    (crawl_id, status)
}

/// The standard end-to-end crawl: the simulator's first work and a search for its title, to
/// depth 2, run to `done` through the API at `api_url`; asserts that the graph is exactly the
/// simulator's truth and that the counters say so. Its id, status and truth.
pub async fn first_works_crawl_is_exact(
    sim_url: &str,
    api_url: &str,
    id_base: u64,
) -> (String, serde_json::Value, Truth) {
    let (seed_work, search) = first_work_seeds(sim_url, id_base).await;
    let body = serde_json::json!({"seeds": [&seed_work, &search], "max_depth": 2});
    let (crawl_id, status) = crawl_to_done(&reqwest::Client::new(), api_url, &body).await;
    let truth = reachable_truth(sim_url, &[&seed_work, &format!("search:{search}")], 2).await;
    assert!(
        truth.nodes.len() > 20,
        "the crawl should reach a real graph: {}",
        truth.nodes.len()
    );
    assert_graph_is_exactly(&truth, &crawl_id).await;
    let counters = &status["counters"];
    assert_eq!(counters["fetched"], truth.nodes.len(), "{status}");
    assert_eq!(counters["edges"], truth.edges.len(), "{status}");
    assert_eq!(counters["in_flight"], 0, "{status}");
    (crawl_id, status, truth)
}

/// Polls `url` until it answers 2xx.
pub async fn wait_ok(url: &str, deadline: Duration) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    eventually(&format!("{url} answering"), deadline, || {
        let client = client.clone();
        let url = url.to_owned();
        async move {
            client
                .get(&url)
                .send()
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        }
    })
    .await;
}

/// The graph's nodes of a crawl (from [`graph_nodes`]) split into full nodes (key → label)
/// and stubs.
pub fn split_nodes(
    nodes: &std::collections::BTreeMap<String, (String, bool)>,
) -> (
    std::collections::BTreeMap<String, String>,
    std::collections::BTreeSet<String>,
) {
    let full = nodes
        .iter()
        .filter(|(_, (_, stub))| !stub)
        .map(|(k, (label, _))| (k.clone(), label.clone()))
        .collect();
    let stubs = nodes
        .iter()
        .filter(|(_, (_, stub))| *stub)
        .map(|(k, _)| k.clone())
        .collect();
    (full, stubs)
}

/// An id base no earlier run used, so this run's keys are its own in the shared Neo4j.
pub fn fresh_id_base() -> u64 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default();
    // Open Library ids are up to eight digits; ours sit far above them.
    1_000_000_000 + (micros % 1_000_000_000) * 1000
}

/// What a crawl must find, as the simulator computes it (`/_sim/reachable`): fetched nodes
/// (key → label), stubs, and relationships as `from|REL|to`.
pub struct Truth {
    pub nodes: std::collections::BTreeMap<String, String>,
    pub stubs: std::collections::BTreeSet<String>,
    pub edges: std::collections::BTreeSet<String>,
    /// Each key's outcome (`node`, `search`, or the failure it ends in).
    pub outcomes: serde_json::Value,
}

/// The truth of a crawl of `seeds` to `depth`, from the simulator at `sim_url`.
pub async fn reachable_truth(sim_url: &str, seeds: &[&str], depth: u32) -> Truth {
    let query: String = seeds
        .iter()
        .map(|seed| {
            let seed: String = url::form_urlencoded::byte_serialize(seed.as_bytes()).collect();
            format!("seed={seed}&")
        })
        .collect();
    let truth: serde_json::Value =
        reqwest::get(format!("{sim_url}/_sim/reachable?{query}depth={depth}"))
            .await
            .expect("truth")
            .json()
            .await
            .expect("json");
    let edges = truth["edges"]
        .as_array()
        .expect("truth edges")
        .iter()
        .map(|e| {
            format!(
                "{}|{}|{}",
                e["from"].as_str().unwrap_or(""),
                e["rel"].as_str().unwrap_or(""),
                e["to"].as_str().unwrap_or("")
            )
        })
        .collect();
    Truth {
        nodes: serde_json::from_value(truth["nodes"].clone()).expect("truth nodes"),
        stubs: serde_json::from_value(truth["stubs"].clone()).expect("truth stubs"),
        edges,
        outcomes: truth["outcomes"].clone(),
    }
}

/// Waits until the graph writer caught up with the crawl, then asserts that Neo4j holds
/// exactly `truth` for it: the fetched nodes with their labels, the stubs, and every
/// relationship once.
pub async fn assert_graph_is_exactly(truth: &Truth, crawl_id: &str) {
    use std::collections::BTreeSet;
    let graph = neo4j().await;
    let (want_edges, want_nodes) = (truth.edges.len(), truth.nodes.len());
    let edges = eventually(
        "the graph writer to catch up",
        Duration::from_secs(120),
        || {
            let graph = graph.clone();
            let crawl_id = crawl_id.to_owned();
            async move {
                let edges = graph_edges(&graph, &crawl_id).await;
                let nodes = graph_nodes(&graph, &crawl_id).await;
                let full = nodes.values().filter(|(_, stub)| !stub).count();
                (edges.len() >= want_edges && full >= want_nodes).then_some(edges)
            }
        },
    )
    .await;
    let nodes = graph_nodes(&graph, crawl_id).await;
    let (full, stubs) = split_nodes(&nodes);
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
    assert!(
        edges.values().all(|n| *n == 1),
        "a relationship was written twice"
    );
}

/// The seeds of the end-to-end crawls: the simulator's first work (`/works/OL<id_base+1>W`)
/// and a search for the first two words of its title, which finds it and its neighbours.
pub async fn first_work_seeds(sim_url: &str, id_base: u64) -> (String, String) {
    let seed_work = format!("/works/OL{}W", id_base + 1);
    let record: serde_json::Value = reqwest::get(format!("{sim_url}{seed_work}.json"))
        .await
        .expect("sim answers")
        .json()
        .await
        .expect("json");
    let title = record["title"].as_str().expect("a title");
    let search = title
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    (seed_work, search)
}
