//! The operator commands (`bookworm seed`, `status`, `dlq list|replay`, `graph`) run as the
//! real binary against a real API (in-process, on a random port), Kafka, Redis and Neo4j.

mod support;

use std::process::Output;
use std::time::Duration;

use bookworm::crawl::store::{Begin, Child, CrawlSpec, CrawlState, CrawlStore, Finish};
use bookworm::message::{CrawlJob, Failure, FailureReason, Label, Rel, VERSION};
use chrono::Utc;
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};
use support::graph::{Keys, edge, node, store};
use support::{TestTopics, eventually, message_count, stack_env, start_api, unique};

/// Runs `bookworm args…` with `env` to completion (bounded) and returns its output.
async fn bookworm(args: &[&str], env: &[(String, String)]) -> Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bookworm"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("bookworm starts");
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("bookworm {args:?} did not finish"))
        .expect("bookworm output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn redis_url() -> String {
    stack_env("REDIS_URL")
}

/// `bookworm seed` creates a crawl through the API and prints its id and nothing else on
/// stdout; `bookworm status` then shows its state, seeds and counters.
#[tokio::test(flavor = "multi_thread")]
async fn seed_prints_only_the_crawl_id_and_status_shows_the_crawl() {
    let topics = TestTopics::create("ops-seed", 3).await;
    let (api, _token) = start_api(&topics.frontier).await;
    let out = bookworm(
        &[
            "seed",
            "/works/OL45804W",
            "fantastic mr fox",
            "--max-depth",
            "2",
            "--api",
            &api,
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "seed failed: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "only the id on stdout: {stdout:?}");
    let id = lines[0].to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "a crawl id: {id}");
    eventually("two seed jobs enqueued", Duration::from_secs(20), || {
        let topic = topics.frontier.clone();
        async move { (message_count(&topic) == 2).then_some(()) }
    })
    .await;

    // The API URL can also come from BOOKWORM_API.
    let out = bookworm(
        &["status", &id],
        &[("BOOKWORM_API".to_owned(), api.clone())],
    )
    .await;
    assert!(out.status.success(), "status failed: {}", text(&out.stderr));
    let status = text(&out.stdout);
    for expected in [
        format!("crawl      {id}"),
        "state      running".to_owned(),
        "seeds      /works/OL45804W, search:fantastic mr fox".to_owned(),
        "limits     depth 2,".to_owned(),
        "in flight  2".to_owned(),
        "failures   none".to_owned(),
        "duplicates 0".to_owned(),
    ] {
        assert!(status.contains(&expected), "{expected:?} in\n{status}");
    }
}

/// A seed the API refuses exits 2 with the API's error naming the seed, prints nothing on
/// stdout and enqueues nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_seed_exits_2_and_names_the_seed() {
    let topics = TestTopics::create("ops-bad-seed", 1).await;
    let (api, _token) = start_api(&topics.frontier).await;
    let out = bookworm(
        &[
            "seed",
            "/works/OL1W",
            "https://example.com/works/OL1W",
            "--api",
            &api,
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("https://example.com/works/OL1W") && stderr.contains("not on"),
        "{stderr}"
    );
    assert_eq!(message_count(&topics.frontier), 0);
}

/// The status of a crawl nobody created exits 1, with and without --watch.
#[tokio::test(flavor = "multi_thread")]
async fn status_of_an_unknown_crawl_exits_1() {
    let topics = TestTopics::create("ops-unknown", 1).await;
    let (api, _token) = start_api(&topics.frontier).await;
    let id = unique("no-such-crawl");
    for watch in [false, true] {
        let mut args = vec!["status", id.as_str(), "--api", api.as_str()];
        if watch {
            args.push("--watch");
        }
        let out = bookworm(&args, &[]).await;
        assert_eq!(out.status.code(), Some(1), "watch={watch}");
        assert!(
            text(&out.stderr).contains(&format!("no crawl with id {id}")),
            "{}",
            text(&out.stderr)
        );
    }
}

/// `status --watch` with stdout not a terminal prints plain progress lines while the crawl
/// runs, and when the crawl ends `done` it prints the final summary and exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn watch_follows_a_crawl_until_it_is_done() {
    let topics = TestTopics::create("ops-watch", 1).await;
    let (api, _token) = start_api(&topics.frontier).await;
    let created: Value = reqwest::Client::new()
        .post(format!("{api}/crawls"))
        .json(&json!({"seeds": ["/works/OL45804W"], "max_depth": 0}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let id = created["crawl_id"].as_str().expect("id").to_owned();
    let watcher = tokio::spawn({
        let (id, api) = (id.clone(), api.clone());
        async move { bookworm(&["status", &id, "--watch", "--api", &api], &[]).await }
    });

    // Play the worker: the seed is fetched and its node published.
    let store = CrawlStore::connect(&redis_url()).await.expect("redis");
    assert!(matches!(
        store.begin(&id, "/works/OL45804W", 0).await.expect("begin"),
        Begin::Run { .. }
    ));
    store
        .finish(
            &id,
            "/works/OL45804W",
            0,
            &Finish::Node {
                key: "/works/OL45804W".to_owned(),
                label: Label::Work,
                edges: vec![],
            },
        )
        .await
        .expect("finish");

    let out = watcher.await.expect("watcher task");
    assert!(out.status.success(), "watch failed: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("done: fetched 1 | nodes 1 | edges 0 | in flight 0 | failures 0"),
        "a last progress line: {stdout}"
    );
    assert!(stdout.contains("state      done"), "the summary: {stdout}");
    assert!(
        stdout.contains("nodes      Work 1"),
        "the summary: {stdout}"
    );
}

fn failure(crawl: &str, key: &str, depth: u32, reason: FailureReason) -> Failure {
    let job = CrawlJob {
        v: VERSION,
        crawl_id: crawl.to_owned(),
        key: key.to_owned(),
        depth,
        seed: "/works/OL1W".to_owned(),
        parent: (depth > 0).then(|| "/works/OL1W".to_owned()),
        enqueued_at: Utc::now(),
        min_revision: None,
    };
    Failure {
        v: VERSION,
        crawl_id: crawl.to_owned(),
        job: serde_json::to_value(job).expect("job json"),
        reason,
        detail: format!("{} on {key}", reason.as_str()),
        attempts: 3,
        failed_at: Utc::now(),
        worker: "test".to_owned(),
    }
}

/// Writes DLQ records (payload `None` for a record that is not JSON).
async fn dead_letter(topic: &str, records: &[(String, Option<Failure>)]) {
    let producer = bookworm::kafka::producer(&stack_env("KAFKA_BROKERS"), Duration::from_secs(30))
        .expect("producer");
    for (key, failure) in records {
        let payload = match failure {
            Some(f) => serde_json::to_vec(f).expect("json"),
            None => b"{not json".to_vec(),
        };
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .expect("dead-lettered");
    }
}

/// `dlq list` reads the whole DLQ and prints one line per failure, filtered by reason and
/// crawl together, at most `--limit` lines; undecodable records are skipped, not fatal.
#[tokio::test(flavor = "multi_thread")]
async fn dlq_list_filters_by_reason_and_crawl() {
    let topics = TestTopics::create("ops-dlq-list", 3).await;
    let (a, b) = (unique("crawl-a"), unique("crawl-b"));
    let records: Vec<(String, Option<Failure>)> = [
        (&a, "/works/OL2W", FailureReason::Http5xx),
        (&a, "/works/OL3W", FailureReason::Http5xx),
        (&a, "/authors/OL4A", FailureReason::Timeout),
        (&b, "/works/OL5W", FailureReason::Http5xx),
    ]
    .into_iter()
    .map(|(crawl, key, reason)| (key.to_owned(), Some(failure(crawl, key, 1, reason))))
    .chain([("garbage".to_owned(), None)])
    .collect();
    dead_letter(&topics.dlq, &records).await;
    let env = topics.env();

    let lines = |out: Output| -> Vec<String> {
        assert!(out.status.success(), "dlq list: {}", text(&out.stderr));
        let mut lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    let out = bookworm(
        &["dlq", "list", "--reason", "http_5xx", "--crawl", &a],
        &env,
    )
    .await;
    assert_eq!(
        lines(out),
        vec![
            format!("{a}\t/works/OL2W\thttp_5xx\t3\thttp_5xx on /works/OL2W"),
            format!("{a}\t/works/OL3W\thttp_5xx\t3\thttp_5xx on /works/OL3W"),
        ]
    );
    let out = bookworm(&["dlq", "list", "--crawl", &a], &env).await;
    assert_eq!(lines(out).len(), 3, "every reason of crawl a");
    let out = bookworm(&["dlq", "list", "--reason", "http_5xx"], &env).await;
    assert_eq!(lines(out).len(), 3, "http_5xx of both crawls");
    let out = bookworm(&["dlq", "list"], &env).await;
    let stderr = text(&out.stderr);
    assert_eq!(lines(out).len(), 4, "everything that decodes");
    assert!(stderr.contains("1 undecodable"), "{stderr}");
    let out = bookworm(&["dlq", "list", "--limit", "1"], &env).await;
    assert_eq!(lines(out).len(), 1);
    let out = bookworm(&["dlq", "list", "--reason", "nonsense"], &env).await;
    assert_eq!(out.status.code(), Some(2), "a bad reason is a usage error");
}

/// A crawl ends `done` with three keys dead-lettered (one of them twice). Replaying its DLQ
/// puts each job on the frontier once, makes the keys pending again (the crawl `running`,
/// the failures off the counters) so the worker runs them; replaying again enqueues nothing,
/// and another crawl's records are left alone.
#[tokio::test(flavor = "multi_thread")]
async fn dlq_replay_twice_enqueues_each_job_once() {
    let topics = TestTopics::create("ops-dlq-replay", 3).await;
    let crawl = unique("crawl-replay");
    let other = unique("crawl-other");
    let store = CrawlStore::connect(&redis_url()).await.expect("redis");
    for id in [&crawl, &other] {
        store
            .create(&CrawlSpec {
                crawl_id: id.clone(),
                seeds: vec!["/works/OL1W".to_owned()],
                max_depth: 2,
                max_nodes: 100,
            })
            .await
            .expect("create");
    }
    // The seed fails, after enqueuing two children that fail too.
    let children = ["/authors/OL2A", "/works/OL3W"].map(|key| Child {
        key: key.to_owned(),
        depth: 1,
    });
    assert_eq!(
        store
            .claim(&crawl, "0|/works/OL1W", 100, &children)
            .await
            .expect("claim"),
        vec![true, true]
    );
    for (key, depth) in [("/works/OL1W", 0), ("/authors/OL2A", 1), ("/works/OL3W", 1)] {
        assert!(matches!(
            store.begin(&crawl, key, depth).await.expect("begin"),
            Begin::Run { .. }
        ));
        store
            .finish(&crawl, key, depth, &Finish::Failed(FailureReason::Http5xx))
            .await
            .expect("finish");
    }
    let status = store.status(&crawl).await.expect("status").expect("known");
    assert_eq!(status.state, CrawlState::Done);
    assert_eq!(status.counters.failed.get("http_5xx"), Some(&3));

    let records: Vec<(String, Option<Failure>)> = [
        (&crawl, "/works/OL1W", 0),
        (&crawl, "/authors/OL2A", 1),
        (&crawl, "/works/OL3W", 1),
        // A redelivered job dead-lettered twice: still one job.
        (&crawl, "/works/OL3W", 1),
        (&other, "/works/OL1W", 0),
    ]
    .into_iter()
    .map(|(id, key, depth)| {
        (
            key.to_owned(),
            Some(failure(id, key, depth, FailureReason::Http5xx)),
        )
    })
    .collect();
    dead_letter(&topics.dlq, &records).await;
    let mut env = topics.env();
    env.push(("REDIS_URL".to_owned(), redis_url()));

    let out = bookworm(&["dlq", "replay", "--crawl", &crawl], &env).await;
    assert!(out.status.success(), "replay: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("replayed 3 job(s) from 4 matching"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(message_count(&topics.frontier), 3);
    let status = store.status(&crawl).await.expect("status").expect("known");
    assert_eq!(
        status.state,
        CrawlState::Running,
        "replayed jobs are in flight"
    );
    assert_eq!(status.counters.in_flight, 3);
    assert!(status.counters.failed.is_empty(), "{:?}", status.counters);
    // The worker runs a replayed job instead of dropping it as already crawled.
    assert!(matches!(
        store.begin(&crawl, "/works/OL3W", 1).await.expect("begin"),
        Begin::Run { .. }
    ));

    let out = bookworm(&["dlq", "replay", "--crawl", &crawl], &env).await;
    assert!(out.status.success(), "second replay: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("replayed 0 job(s)"), "{stdout}");
    assert!(stdout.contains("AlreadyReplayed): 4"), "{stdout}");
    assert_eq!(message_count(&topics.frontier), 3, "nothing enqueued twice");

    // The replayed jobs are the originals with a new enqueued_at.
    let jobs = read_topic(&topics.frontier, 3).await;
    let mut keys: Vec<(String, u32, Option<String>)> = jobs
        .iter()
        .map(|j| {
            assert_eq!(j.crawl_id, crawl);
            assert_eq!(j.seed, "/works/OL1W");
            (j.key.clone(), j.depth, j.parent.clone())
        })
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            (
                "/authors/OL2A".to_owned(),
                1,
                Some("/works/OL1W".to_owned())
            ),
            ("/works/OL1W".to_owned(), 0, None),
            ("/works/OL3W".to_owned(), 1, Some("/works/OL1W".to_owned())),
        ]
    );
    let other_status = store.status(&other).await.expect("status").expect("known");
    assert_eq!(
        other_status.counters.enqueued, 1,
        "the other crawl untouched"
    );
}

/// Issue 18: a replay streams the DLQ batch by batch (here three batches' worth of distinct
/// jobs, each published exactly once), and forgets the marks of records the DLQ's retention
/// deleted, so the marks hash is as bounded as the DLQ.
#[tokio::test]
async fn dlq_replay_streams_batches_and_forgets_deleted_records() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::{Offset, TopicPartitionList};
    use redis::AsyncCommands;

    const JOBS: usize = 1_100;
    let topics = TestTopics::create("ops-dlq-stream", 3).await;
    let crawl = unique("crawl-stream");
    let store = CrawlStore::connect(&redis_url()).await.expect("redis");
    store
        .create(&CrawlSpec {
            crawl_id: crawl.clone(),
            seeds: vec!["/works/OL1W".to_owned()],
            max_depth: 2,
            max_nodes: 10_000,
        })
        .await
        .expect("create");
    let producer = bookworm::kafka::producer(&stack_env("KAFKA_BROKERS"), Duration::from_secs(30))
        .expect("producer");
    let payloads: Vec<(String, Vec<u8>)> = (0..JOBS)
        .map(|i| {
            let key = format!("/works/OL{}W", 100 + i);
            let failure = failure(&crawl, &key, 1, FailureReason::Http5xx);
            (key, serde_json::to_vec(&failure).expect("json"))
        })
        .collect();
    let sends = payloads.iter().map(|(key, payload)| {
        producer.send(
            FutureRecord::to(&topics.dlq).key(key).payload(payload),
            Duration::from_secs(30),
        )
    });
    for sent in futures::future::join_all(sends).await {
        sent.expect("dead-lettered");
    }
    let mut env = topics.env();
    env.push(("REDIS_URL".to_owned(), redis_url()));

    let out = bookworm(&["dlq", "replay", "--crawl", &crawl], &env).await;
    assert!(out.status.success(), "replay: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("replayed {JOBS} job(s) from {JOBS} matching")),
        "{stdout}"
    );
    assert_eq!(message_count(&topics.frontier), JOBS as i64);
    let marks_key = bookworm::ops::dlq::marks_key(&topics.dlq);
    let mut redis = redis::Client::open(redis_url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let marks: u64 = redis.hlen(&marks_key).await.expect("hlen");
    assert_eq!(marks, JOBS as u64, "one mark per record");

    // Retention deletes every record: the next replay finds nothing and forgets every mark.
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack_env("KAFKA_BROKERS"))
        .create()
        .expect("admin client");
    let mut upto = TopicPartitionList::new();
    for partition in 0..3 {
        upto.add_partition_offset(&topics.dlq, partition, Offset::End)
            .expect("partition");
    }
    admin
        .delete_records(&upto, &AdminOptions::new())
        .await
        .expect("records deleted");
    let out = bookworm(&["dlq", "replay", "--crawl", &crawl], &env).await;
    assert!(out.status.success(), "replay: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("replayed 0 job(s) from 0 matching"),
        "{}",
        text(&out.stdout)
    );
    let marks: u64 = redis.hlen(&marks_key).await.expect("hlen");
    assert_eq!(marks, 0, "the marks of deleted records are forgotten");
    let _: () = redis.del(&marks_key).await.expect("del");
}

/// Issue 14, item 2: `dlq replay --graph` puts the graph DLQ's rows back on the results and
/// edges topics they came from, with their keys, once per record; records that carry no
/// message (an excerpt of a payload too large to quote, text that was never JSON) are left
/// alone, and a second replay publishes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn dlq_replay_graph_puts_rows_back_on_their_topics_once() {
    let topics = TestTopics::create("ops-graph-replay", 3).await;
    let crawl = unique("crawl-graph-replay");
    let node = json!({"v": 1, "crawl_id": crawl, "key": "/works/OL9W", "label": "Work",
        "props": {"title": "Dune"}, "fetched_at": "2026-01-01T00:00:00Z"});
    let edge = json!({"v": 1, "crawl_id": crawl, "from": "/works/OL9W", "to": "/authors/OL9A",
        "rel": "WRITTEN_BY", "discovered_at": "2026-01-01T00:00:00Z"});
    let letter = |topic: &str, key: &str, payload: Value, reason: &str| {
        json!({"v": 1, "topic": topic, "partition": 0, "offset": 7, "key": key,
            "payload": payload, "reason": reason, "detail": "x", "attempts": 1,
            "failed_at": Utc::now()})
    };
    let records = [
        letter(
            &topics.results,
            "/works/OL9W",
            node.clone(),
            "neo4j_rejected",
        ),
        letter(&topics.edges, "/works/OL9W", edge.clone(), "timeout"),
        letter(
            &topics.results,
            "/works/OL8W",
            json!({"prefix": "\u{1}", "bytes": 400000, "fnv1a64": "00"}),
            "parse",
        ),
        letter(
            &topics.results,
            "/works/OL7W",
            json!("\u{fffd}not json"),
            "parse",
        ),
    ];
    let producer = bookworm::kafka::producer(&stack_env("KAFKA_BROKERS"), Duration::from_secs(30))
        .expect("producer");
    for record in &records {
        let payload = record.to_string();
        producer
            .send(
                FutureRecord::to(&topics.graph_dlq)
                    .key("/works/OL9W")
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .expect("dead-lettered");
    }
    let mut env = topics.env();
    env.push(("REDIS_URL".to_owned(), redis_url()));

    let out = bookworm(&["dlq", "replay", "--graph"], &env).await;
    assert!(out.status.success(), "replay: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("replayed 2 row(s) from 4 matching"),
        "{stdout}"
    );
    assert!(stdout.contains("NotAJob): 2"), "{stdout}");
    assert_eq!(message_count(&topics.results), 1);
    assert_eq!(message_count(&topics.edges), 1);
    let replayed_node: Value = serde_json::from_str(&read_raw(&topics.results).await).unwrap();
    assert_eq!(replayed_node, node);

    let out = bookworm(&["dlq", "replay", "--graph"], &env).await;
    assert!(out.status.success(), "second replay: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("replayed 0 row(s)"), "{stdout}");
    assert!(stdout.contains("AlreadyReplayed): 2"), "{stdout}");
    assert_eq!(message_count(&topics.results), 1, "nothing published twice");
    assert_eq!(message_count(&topics.edges), 1);
}

/// The first message of `topic`, as text.
async fn read_raw(topic: &str) -> String {
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack_env("KAFKA_BROKERS"))
        .set("group.id", unique("raw-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a message within 30 s")
        .expect("message");
    text(message.payload().unwrap_or_default())
}

/// The first `n` messages of `topic` as crawl jobs.
async fn read_topic(topic: &str, n: usize) -> Vec<CrawlJob> {
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack_env("KAFKA_BROKERS"))
        .set("group.id", unique("ops-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut jobs = Vec::new();
    while jobs.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a message in time")
            .expect("a message");
        jobs.push(bookworm::message::decode(message.payload()).expect("a job"));
    }
    jobs
}

/// `bookworm graph` prints a node's neighbourhood: depth 1 has its direct relationships in
/// both directions (a stub dashed), depth 2 one hop more; the DOT is accepted by Graphviz
/// and the JSON has the documented shape.
#[tokio::test(flavor = "multi_thread")]
async fn graph_prints_a_neighbourhood_as_dot_and_json() {
    use Label::{Author, Edition, Subject, Work};
    let store = store().await;
    let keys = Keys::new();
    let rows = vec![
        node(
            &keys,
            Work,
            "1",
            "c1",
            json!({"title": "Dune \"the\" novel"}),
        ),
        node(&keys, Author, "1", "c1", json!({"name": "Frank Herbert"})),
        node(
            &keys,
            Subject,
            "sf",
            "c1",
            json!({"name": "Science fiction"}),
        ),
        node(&keys, Edition, "1", "c1", json!({"title": "Dune (1965)"})),
        node(&keys, Work, "2", "c1", json!({"title": "Dune Messiah"})),
        edge(&keys, Rel::WRITTEN_BY, (Work, "1"), (Author, "1"), "c1"),
        edge(&keys, Rel::ABOUT, (Work, "1"), (Subject, "sf"), "c1"),
        edge(&keys, Rel::EDITION_OF, (Edition, "1"), (Work, "1"), "c1"),
        edge(&keys, Rel::WRITTEN_BY, (Work, "1"), (Author, "2"), "c1"),
        edge(&keys, Rel::WRITTEN_BY, (Work, "2"), (Author, "1"), "c1"),
    ];
    store
        .write(&rows.iter().collect::<Vec<_>>())
        .await
        .expect("graph written");
    let env: Vec<(String, String)> = ["NEO4J_URI", "NEO4J_USER", "NEO4J_PASSWORD"]
        .into_iter()
        .map(|k| (k.to_owned(), stack_env(k)))
        .collect();
    let start = keys.key(Work, "1");

    let out = bookworm(&["graph", &start, "--format", "json"], &env).await;
    assert!(out.status.success(), "graph: {}", text(&out.stderr));
    let view: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mut nodes: Vec<(String, String, bool)> = view["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["label"].as_str().expect("label").to_owned(),
                keys.strip(n["key"].as_str().expect("key")),
                n["stub"].as_bool().expect("stub"),
            )
        })
        .collect();
    nodes.sort();
    let expected = |list: &[(&str, &str, bool)]| -> Vec<(String, String, bool)> {
        let mut v: Vec<_> = list
            .iter()
            .map(|(l, k, s)| (l.to_string(), k.to_string(), *s))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        nodes,
        expected(&[
            ("Work", "/works/OL1W", false),
            ("Author", "/authors/OL1A", false),
            ("Author", "/authors/OL2A", true),
            ("Subject", "/subjects/_sf", false),
            ("Edition", "/books/OL1M", false),
        ])
    );
    let rels: Vec<Value> = view["relationships"].as_array().expect("rels").clone();
    assert_eq!(rels.len(), 4, "{rels:?}");
    assert!(
        rels.contains(&json!({"from": keys.key(Edition, "1"), "type": "EDITION_OF", "to": start}))
    );
    let work = view["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["key"] == start.as_str())
        .expect("start node");
    assert_eq!(work["props"]["title"], "Dune \"the\" novel");

    let out = bookworm(&["graph", &start, "--depth", "2", "--format", "json"], &env).await;
    let view: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        view["nodes"].as_array().expect("nodes").len(),
        6,
        "Dune Messiah at 2 hops"
    );
    assert_eq!(view["relationships"].as_array().expect("rels").len(), 5);

    let out = bookworm(&["graph", &start, "--depth", "2"], &env).await;
    assert!(out.status.success(), "graph dot: {}", text(&out.stderr));
    let dot = text(&out.stdout);
    assert!(dot.starts_with("digraph neighbourhood {"), "{dot}");
    assert!(
        dot.contains(&format!(
            "\"{}\" [label=\"Author\\n{}\", style=\"rounded,dashed\"];",
            keys.key(Author, "2"),
            keys.key(Author, "2")
        )),
        "the stub is dashed: {dot}"
    );
    assert!(dot.contains("[label=\"WRITTEN_BY\"]"), "{dot}");
    assert!(dot.contains("Dune \\\"the\\\" novel"), "{dot}");
    if std::process::Command::new("dot").arg("-V").output().is_ok() {
        let mut graphviz = std::process::Command::new("dot")
            .arg("-Tsvg")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("dot runs");
        use std::io::Write;
        graphviz
            .stdin
            .take()
            .expect("stdin")
            .write_all(dot.as_bytes())
            .expect("dot input");
        let rendered = graphviz.wait_with_output().expect("dot output");
        assert!(
            rendered.status.success(),
            "Graphviz refused the DOT: {}\n{dot}",
            text(&rendered.stderr)
        );
        assert!(text(&rendered.stdout).contains("<svg"));
    } else {
        eprintln!("Graphviz not installed: DOT syntax not checked by dot");
    }

    let missing = keys.key(Work, "404");
    let out = bookworm(&["graph", &missing], &env).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no node with key"));
    keys.clean(&store).await;
}
