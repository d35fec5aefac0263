//! `bookworm follow` against the simulator's change feed, with real Kafka, Redis, Neo4j, a
//! worker and a graph writer: after a dump import, the simulator's change generator edits,
//! adds, merges and deletes records while the follower runs; once it caught up, the graph is
//! exactly the simulator's new catalogue (as an import of its new dump would give). Also
//! with the follower killed mid-way and started again (its cursor resumes, nothing is
//! missed), and an old dump imported afterwards changes nothing.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bookworm::sim::{RunningSim, SimArgs};
use serde_json::{Value, json};
use support::dump_graph::{
    Graph, graph_of_crawls, gunzip, sim_dump, truth_of, wait_written, written,
};
use support::{Process, TestTopics, eventually, free_port, fresh_id_base, unique};
use tokio_util::sync::CancellationToken;

const BOOKWORM: &str = env!("CARGO_BIN_EXE_bookworm");

/// The catalogue of a test: small enough that a crawl of every change takes seconds.
fn catalogue_flags(id_base: u64) -> Vec<String> {
    let flags = ["--works", "60", "--authors", "20", "--subjects", "12"];
    let mut all = vec!["--id-base".to_owned(), id_base.to_string()];
    all.extend(flags.iter().map(|s| s.to_string()));
    all
}

/// Everything a follow test runs: the simulator in this process (so its changed catalogue
/// can be read), and a graph writer, a worker and a follower as processes.
struct Follow {
    topics: TestTopics,
    id_base: u64,
    sim: RunningSim,
    stop_sim: CancellationToken,
    import_id: String,
    follow_name: String,
    follow_metrics: String,
    writer_metrics: String,
    base_env: Vec<(String, String)>,
    _writer: Process,
    _worker: Process,
    follower: Option<Process>,
    _dump_dir: tempfile::TempDir,
    old_dump: PathBuf,
    client: reqwest::Client,
}

impl Follow {
    /// Starts the simulator, imports its dump (and waits until the graph holds it), starts a
    /// worker and a follower reading the feed from yesterday.
    async fn start() -> Follow {
        let topics = TestTopics::create("follow", 2).await;
        let id_base = fresh_id_base();
        let mut flags = vec!["--addr".to_owned(), "127.0.0.1:0".to_owned()];
        flags.push("--no-limit".to_owned());
        flags.extend(catalogue_flags(id_base));
        let stop_sim = CancellationToken::new();
        let sim = bookworm::sim::spawn(
            SimArgs::from_flags(&flags).expect("sim flags"),
            stop_sim.clone(),
        )
        .await
        .expect("the simulator starts");

        let (dump_dir, old_dump, _) = sim_dump(&catalogue_flags(id_base));

        let mut base_env = topics.env();
        base_env.extend(
            [
                ("OPENLIBRARY_BASE_URL", sim.base_url()),
                ("EGRESS_RATE_PER_MINUTE", "6000".to_owned()),
                ("USER_AGENT_RATE_PER_MINUTE", "60000".to_owned()),
                ("EGRESS_BURST", "50".to_owned()),
                ("EGRESS_REDIS_PREFIX", unique("follow-egress")),
                ("COMMIT_INTERVAL", "200ms".to_owned()),
                ("SESSION_TIMEOUT", "6s".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let mut writer_env = base_env.clone();
        writer_env.push(("KAFKA_GROUP_ID".to_owned(), unique("follow-graph")));
        writer_env.push(("GRAPH_BATCH_SIZE".to_owned(), "500".to_owned()));
        let writer_port = free_port();
        writer_env.push((
            "METRICS_ADDR".to_owned(),
            format!("127.0.0.1:{writer_port}"),
        ));
        let writer = Process::start(
            "graph-writer",
            env!("CARGO_BIN_EXE_graph-writer"),
            &[],
            &writer_env,
        );

        let import_id = unique("import");
        let out = std::process::Command::new(BOOKWORM)
            .arg("import")
            .arg(&old_dump)
            .args(["--crawl-id", &import_id])
            .envs(topics.env())
            .output()
            .expect("import runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let truth = truth_of(gunzip(&old_dump).lines());
        let follow_name = unique("fresh").replace('.', "-");
        let follow = Follow {
            topics,
            id_base,
            sim,
            stop_sim,
            import_id,
            follow_name,
            follow_metrics: String::new(),
            writer_metrics: format!("http://127.0.0.1:{writer_port}/metrics"),
            _worker: Process::start("worker", env!("CARGO_BIN_EXE_worker"), &[], &{
                let mut env = base_env.clone();
                env.push(("KAFKA_GROUP_ID".to_owned(), unique("follow-workers")));
                env.push((
                    "METRICS_ADDR".to_owned(),
                    format!("127.0.0.1:{}", free_port()),
                ));
                env.push(("CONCURRENT_JOBS".to_owned(), "8".to_owned()));
                env
            }),
            base_env,
            _writer: writer,
            follower: None,
            _dump_dir: dump_dir,
            old_dump,
            client: reqwest::Client::new(),
        };
        follow.wait_for(&truth, "the import").await;
        follow
    }

    /// Starts (or starts again) the follower, from yesterday when it has no cursor yet.
    fn start_follower(&mut self) {
        let port = free_port();
        let yesterday = chrono::Utc::now().date_naive() - chrono::TimeDelta::days(1);
        let mut env = self.base_env.clone();
        env.extend(
            [
                ("FOLLOW_NAME", self.follow_name.clone()),
                ("FOLLOW_SINCE", yesterday.to_string()),
                ("FOLLOW_POLL_INTERVAL", "1s".to_owned()),
                ("FOLLOW_LEASE", "3s".to_owned()),
                ("FOLLOW_BATCH_KEYS", "5".to_owned()),
                ("METRICS_ADDR", format!("127.0.0.1:{port}")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
        );
        self.follow_metrics = format!("http://127.0.0.1:{port}/metrics");
        self.follower = Some(Process::start("follow", BOOKWORM, &["follow"], &env));
    }

    /// SIGKILLs the follower: no chance to release its lease or finish its round.
    fn kill_follower(&mut self) {
        if let Some(mut follower) = self.follower.take() {
            follower.signal("KILL");
            follower.wait_exit(Duration::from_secs(10));
        }
    }

    /// One of the follower's counters (`relentless_follow_…`), once it serves them.
    async fn follow_metric(&self, name: &str) -> Option<f64> {
        let text = self
            .client
            .get(&self.follow_metrics)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .reduce(|a, b| a + b)
    }

    /// Asks the simulator for changes, `per_second` apart, and waits until all are applied.
    async fn change(&self, plan: Value) -> u64 {
        let url = format!("{}/_sim/changes", self.sim.base_url());
        let answer = self
            .client
            .post(&url)
            .json(&plan)
            .send()
            .await
            .expect("sim answers");
        assert!(
            answer.status().is_success(),
            "changes refused: {}",
            answer.status()
        );
        eventually(
            "the change generator to finish",
            Duration::from_secs(60),
            || async {
                let state: Value = self.client.get(&url).send().await.ok()?.json().await.ok()?;
                (state["pending"].as_u64() == Some(0))
                    .then(|| state["applied"].as_u64())
                    .flatten()
            },
        )
        .await
    }

    /// The graph an import of the simulator's catalogue as it is now would give.
    fn new_truth(&self) -> Graph {
        let lines: Vec<String> = self
            .sim
            .state
            .catalogue()
            .dump_records()
            .map(|r| {
                format!(
                    "{}\t{}\t{}\t{}\t{}",
                    r.kind, r.key, r.revision, r.last_modified, r.json
                )
            })
            .collect();
        truth_of(lines.iter().map(String::as_str))
    }

    /// What the graph holds of the import and the follower's crawls.
    async fn graph(&self) -> Graph {
        let prefix = format!("follow:{}:", self.follow_name);
        graph_of_crawls(&self.import_id, Some(&prefix)).await
    }

    /// Waits until the graph is `truth`; on the deadline, fails showing the difference.
    async fn wait_for(&self, truth: &Graph, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let graph = self.graph().await;
            if graph == *truth {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: the graph is not the truth after 240 s (id base {}):\n{}",
                    self.id_base,
                    graph.difference(truth)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Imports the old dump again and waits until the writer has written every message of it.
    async fn reimport_old_dump(&self) {
        let (results, edges) = written(&self.writer_metrics)
            .await
            .expect("the writer's counters");
        let out = std::process::Command::new(BOOKWORM)
            .arg("import")
            .arg(&self.old_dump)
            .args(["--crawl-id", &self.import_id])
            .envs(self.topics.env())
            .output()
            .expect("import runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = serde_json::from_slice(&out.stdout).expect("import summary");
        let count = |field: &str| summary[field].as_u64().expect("a count");
        let (more_results, more_edges) = (count("nodes") + count("subjects"), count("edges"));
        wait_written(
            &self.writer_metrics,
            results + more_results,
            edges + more_edges,
        )
        .await;
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.stop_sim.cancel();
    }
}

/// A mix of every kind of change, two a second, so the follower reads the feed while it moves.
fn changes(seed: u64) -> Value {
    json!({"edits": 6, "adds": 3, "merges": 2, "deletes": 2, "covers": 2, "per_second": 2.0, "seed": seed})
}

/// Follow equals truth, and revision safety: after the follower caught up with a stream of
/// edits, additions, merges and deletes, the graph is exactly the simulator's new catalogue;
/// importing the old dump again changes nothing.
#[tokio::test]
async fn a_followed_graph_is_the_new_catalogue_and_an_old_dump_changes_nothing() {
    let mut follow = Follow::start().await;
    let before = follow.new_truth();
    follow.start_follower();
    let applied = follow.change(changes(1)).await;
    let truth = follow.new_truth();
    assert_ne!(truth, before, "the changes changed the catalogue");
    follow.wait_for(&truth, "after following").await;
    let seen = follow
        .follow_metric("relentless_follow_changes_seen_total")
        .await;
    assert_eq!(seen, Some(applied as f64), "every change read once");
    let enqueued = follow
        .follow_metric("relentless_follow_keys_enqueued_total")
        .await;
    assert!(
        enqueued.is_some_and(|n| n > 0.0),
        "keys enqueued: {enqueued:?}"
    );
    assert_eq!(
        follow.follow_metric("relentless_follow_leader").await,
        Some(1.0)
    );

    follow.reimport_old_dump().await;
    assert_eq!(
        follow.graph().await,
        truth,
        "the old dump changed the followed graph"
    );
}

/// A follower killed mid-way (SIGKILL, its lease left to expire) and started again resumes
/// from its cursor: the changes made before, during and after the kill all reach the graph.
#[tokio::test]
async fn a_follower_killed_mid_way_resumes_from_its_cursor_and_misses_nothing() {
    let mut follow = Follow::start().await;
    follow.start_follower();
    let url = format!("{}/_sim/changes", follow.sim.base_url());
    let answer = follow
        .client
        .post(&url)
        .json(&json!({"edits": 8, "adds": 3, "merges": 2, "deletes": 2, "covers": 3, "per_second": 1.0, "seed": 2}))
        .send()
        .await
        .expect("sim answers");
    assert!(answer.status().is_success());
    eventually(
        "the follower to enqueue some keys",
        Duration::from_secs(60),
        || async {
            let n = follow
                .follow_metric("relentless_follow_keys_enqueued_total")
                .await?;
            (n > 0.0).then_some(())
        },
    )
    .await;
    follow.kill_follower();
    // Changes made while no follower runs.
    follow
        .change(json!({"edits": 3, "deletes": 1, "seed": 3}))
        .await;
    follow.change(json!({"covers": 1, "seed": 4})).await;
    follow.start_follower();
    let truth = follow.new_truth();
    follow.wait_for(&truth, "after the restart").await;
    let seen = follow
        .follow_metric("relentless_follow_changes_seen_total")
        .await;
    assert!(
        seen.is_some_and(|n| n > 0.0),
        "the new follower read on from the cursor: {seen:?}"
    );
}
