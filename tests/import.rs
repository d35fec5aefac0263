//! `bookworm sim dump` and `bookworm import` as processes, with a real graph writer, Kafka and
//! Neo4j: an import of the simulator's dump is exactly the catalogue's graph, replays and
//! older dumps change nothing, bad lines go to the DLQ with their line numbers, a resumed
//! import publishes nothing twice, and Open Library's own records import as they should.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bookworm::sim::{Catalogue, SimArgs};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{Value, json};
use support::dump_graph::{Graph, graph_of, gunzip, sim_dump, truth_of, wait_written};
use support::{Process, TestTopics, free_port, fresh_id_base, stack_env, unique};

const BOOKWORM: &str = env!("CARGO_BIN_EXE_bookworm");

/// The catalogue flags of a test's dump.
fn catalogue_flags(id_base: u64) -> Vec<String> {
    [
        "--id-base",
        &id_base.to_string(),
        "--works",
        "80",
        "--authors",
        "25",
        "--subjects",
        "15",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs `bookworm sim dump` into a fresh directory; the directory and the all-types file.
fn dump(id_base: u64) -> (tempfile::TempDir, PathBuf) {
    let (dir, all, summary) = sim_dump(&catalogue_flags(id_base));
    assert_eq!(summary["files"].as_array().map(Vec::len), Some(4));
    (dir, all)
}

/// Runs `bookworm import` to the end; its JSON summary.
fn import(topics: &TestTopics, files: &[&Path], extra: &[&str]) -> Value {
    let mut args = vec!["import".to_owned()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = std::process::Command::new(BOOKWORM)
        .args(&args)
        .envs(topics.env())
        .env("IMPORT_PROGRESS_INTERVAL", "1s")
        .output()
        .expect("import runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "import failed: {stderr}");
    assert!(
        stderr.contains("import: lines"),
        "a progress line: {stderr}"
    );
    serde_json::from_slice(&out.stdout).expect("import summary")
}

/// A graph writer on `topics`, with its metrics URL.
fn graph_writer(topics: &TestTopics) -> (Process, String) {
    let port = free_port();
    let mut env = topics.env();
    env.push(("KAFKA_GROUP_ID".to_owned(), unique("import-graph")));
    env.push(("METRICS_ADDR".to_owned(), format!("127.0.0.1:{port}")));
    let process = Process::start(
        "graph-writer",
        env!("CARGO_BIN_EXE_graph-writer"),
        &[],
        &env,
    );
    (process, format!("http://127.0.0.1:{port}/metrics"))
}

fn count(summary: &Value, field: &str) -> u64 {
    summary[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {summary}"))
}

/// Waits until the graph of `crawl_id` is `truth`, or the deadline passes; the graph as last
/// read either way, for the caller's assertions to show any difference. (Waiting only for the
/// counts read a graph whose last batch was still being written.)
async fn caught_up(crawl_id: &str, truth: &Graph) -> Graph {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let graph = graph_of(crawl_id).await;
        if graph == *truth || std::time::Instant::now() > deadline {
            return graph;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Import equals truth: the simulator's dump imported through Kafka and a graph writer is
/// exactly its catalogue (nodes, labels, properties, relationships once each; the only stubs
/// are the keys the records name without a record: missing authors and merged works an
/// edition still names). Importing the same dump again changes nothing.
#[tokio::test]
async fn an_imported_dump_is_exactly_the_catalogue_and_a_reimport_changes_nothing() {
    let topics = TestTopics::create("import-truth", 2).await;
    let id_base = fresh_id_base();
    let (_dir, all) = dump(id_base);
    let text = gunzip(&all);
    let truth = truth_of(text.lines());
    // The truth is the catalogue's: every live record, and the catalogue's own subjects.
    let catalogue = Catalogue::generate(
        &SimArgs::from_flags(catalogue_flags(id_base))
            .expect("flags")
            .spec(),
    );
    let live: BTreeSet<String> = catalogue
        .work_keys()
        .into_iter()
        .chain(catalogue.author_keys())
        .chain(catalogue.edition_keys())
        .chain(catalogue.subject_keys())
        .collect();
    assert_eq!(truth.nodes.keys().cloned().collect::<BTreeSet<_>>(), live);
    for key in catalogue.author_keys().iter().take(3) {
        let served = catalogue.record(key).expect("an author");
        assert_eq!(truth.nodes[key].1["name"], served["name"]);
        assert_eq!(truth.nodes[key].1["revision"], served["revision"]);
    }

    let crawl_id = unique("import");
    let (_writer, metrics) = graph_writer(&topics);
    let first = import(&topics, &[&all], &["--crawl-id", &crawl_id]);
    assert_eq!(count(&first, "dlq"), 0);
    assert_eq!(
        count(&first, "redirects"),
        catalogue.redirects().len() as u64
    );
    assert_eq!(count(&first, "deletes"), catalogue.deleted().len() as u64);
    let graph = caught_up(&crawl_id, &truth).await;
    assert_eq!(graph.nodes, truth.nodes, "nodes and their properties");
    assert_eq!(graph.rels, truth.rels, "relationships, each once");
    assert_eq!(graph.stubs, truth.stubs, "stubs");

    let again = import(&topics, &[&all], &["--crawl-id", &crawl_id]);
    assert_eq!(again, first, "the same lines give the same messages");
    let results = count(&first, "nodes") + count(&first, "subjects");
    wait_written(&metrics, 2 * results, 2 * count(&first, "edges")).await;
    assert_eq!(
        graph_of(&crawl_id).await,
        graph,
        "a re-import changed the graph"
    );
}

/// Revision safety: a newer dump (some works edited: a new title, their authors removed, one
/// revision up) imported first, then the old dump: the graph is the newer dump's, the old
/// revisions' properties and relationships do not come back.
#[tokio::test]
async fn an_older_dump_after_a_newer_one_changes_nothing() {
    let topics = TestTopics::create("import-older", 2).await;
    let (dir, all) = dump(fresh_id_base());
    let old_text = gunzip(&all);
    let mut edited = 0;
    let new_lines: Vec<String> = old_text
        .lines()
        .map(|line| {
            let cols: Vec<&str> = line.splitn(5, '\t').collect();
            if cols[0] != "/type/work" || edited >= 10 {
                return line.to_owned();
            }
            edited += 1;
            let mut record: Value = serde_json::from_str(cols[4]).expect("json");
            let revision = record["revision"].as_i64().expect("revision") + 1;
            record["revision"] = json!(revision);
            record["title"] = json!(format!(
                "{} (revised)",
                record["title"].as_str().unwrap_or("")
            ));
            record["authors"] = json!([]);
            record.as_object_mut().map(|r| r.remove("subtitle"));
            format!(
                "{}\t{}\t{revision}\t{}\t{record}",
                cols[0], cols[1], cols[3]
            )
        })
        .collect();
    let newer = dir.path().join("ol_dump_2021-04-30.txt");
    std::fs::write(&newer, new_lines.join("\n") + "\n").expect("newer dump");
    let truth = truth_of(new_lines.iter().map(String::as_str));
    assert!(truth.rels.len() < truth_of(old_text.lines()).rels.len());

    let crawl_id = unique("import");
    let (_writer, metrics) = graph_writer(&topics);
    let first = import(&topics, &[&newer], &["--crawl-id", &crawl_id]);
    let graph = caught_up(&crawl_id, &truth).await;
    assert_eq!(graph, truth);
    let old = import(&topics, &[&all], &["--crawl-id", &crawl_id]);
    wait_written(
        &metrics,
        count(&first, "nodes")
            + count(&first, "subjects")
            + count(&old, "nodes")
            + count(&old, "subjects"),
        count(&first, "edges") + count(&old, "edges"),
    )
    .await;
    assert_eq!(
        graph_of(&crawl_id).await,
        truth,
        "the old dump changed the graph"
    );
}

/// Reads `expected` records from the crawl DLQ topic.
async fn dead_letters(topic: &str, expected: usize) -> Vec<Value> {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack_env("KAFKA_BROKERS"))
        .set("group.id", unique("import-dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut records = Vec::new();
    while records.len() < expected {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a dead letter within 30 s")
            .expect("message");
        records.push(serde_json::from_slice(message.payload().expect("payload")).expect("json"));
    }
    records
}

/// Lines that cannot be imported (four columns, bad JSON, an unknown type, a key column
/// that is not the record's) go to the DLQ with their file, line number and reason, and
/// the lines around them are imported. The file is plain text: no gzip needed.
#[tokio::test]
async fn malformed_lines_go_to_the_dlq_with_their_line_numbers_and_the_import_goes_on() {
    let topics = TestTopics::create("import-dlq", 1).await;
    let base = fresh_id_base();
    let work = |n: u64| {
        format!(
            "/type/work\t/works/OL{n}W\t1\t2021-01-01T00:00:00\t{}",
            json!({"key": format!("/works/OL{n}W"), "type": {"key": "/type/work"}, "title": "T", "revision": 1})
        )
    };
    let lines = [
        work(base + 1),
        "/type/work\t/works/OL1W\t1\t{\"key\": \"/works/OL1W\"}".to_owned(),
        format!("/type/work\t/works/OL{}W\t1\tx\t{{\"key\": ", base + 2),
        "/type/language\t/languages/eng\t1\tx\t{\"key\": \"/languages/eng\"}".to_owned(),
        format!(
            "/type/work\t/works/OL{}W\t1\tx\t{}",
            base + 3,
            json!({"key": format!("/works/OL{}W", base + 4), "type": {"key": "/type/work"}})
        ),
        work(base + 5),
    ];
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("ol_dump_works_2021-01-01.txt");
    let mut out = std::fs::File::create(&file).expect("file");
    for line in &lines {
        writeln!(out, "{line}").expect("write");
    }
    drop(out);
    let summary = import(&topics, &[&file], &[]);
    assert_eq!(
        (count(&summary, "nodes"), count(&summary, "dlq")),
        (2, 4),
        "{summary}"
    );
    assert_eq!(support::message_count(&topics.results), 2);
    let mut dead = dead_letters(&topics.dlq, 4).await;
    dead.sort_by_key(|d| d["job"]["line"].as_u64());
    let got: Vec<(u64, &str)> = dead
        .iter()
        .map(|d| {
            (
                d["job"]["line"].as_u64().unwrap_or(0),
                d["detail"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [2, 3, 4, 5]);
    for (needle, (_, detail)) in ["five", "JSON", "unknown type", "key column"]
        .iter()
        .zip(&got)
    {
        assert!(detail.contains(needle), "{detail} should say {needle}");
    }
    for d in &dead {
        assert_eq!(d["reason"], "parse");
        assert_eq!(d["crawl_id"], "import:2021-01-01");
        assert_eq!(d["job"]["file"], file.display().to_string());
    }
}

/// Resume: an import stopped after some lines (`--max-lines`) and started again with the same
/// checkpoint publishes the rest only: together exactly one message per record node and per
/// relationship, as one uninterrupted import.
#[tokio::test]
async fn a_resumed_import_publishes_nothing_twice() {
    let topics = TestTopics::create("import-resume", 2).await;
    let (dir, all) = dump(fresh_id_base());
    let checkpoint = dir.path().join("checkpoint.json");
    let cp = checkpoint.display().to_string();
    let first = import(
        &topics,
        &[&all],
        &[
            "--checkpoint",
            &cp,
            "--max-lines",
            "137",
            "--batch-lines",
            "10",
        ],
    );
    assert_eq!(count(&first, "published_lines"), 137);
    let stored: Value =
        serde_json::from_slice(&std::fs::read(&checkpoint).expect("checkpoint")).expect("json");
    assert_eq!(
        stored["files"].as_object().and_then(|f| f.values().next()),
        Some(&json!(137))
    );
    let second = import(
        &topics,
        &[&all],
        &["--checkpoint", &cp, "--batch-lines", "10"],
    );
    assert_eq!(count(&second, "resumed"), 137);
    let text = gunzip(&all);
    let truth = truth_of(text.lines());
    let total_lines = text.lines().count() as u64;
    assert_eq!(
        count(&first, "published_lines") + count(&second, "published_lines"),
        total_lines
    );
    let record_nodes = truth.nodes.values().filter(|(l, _)| l != "Subject").count() as u64;
    assert_eq!(
        count(&first, "nodes") + count(&second, "nodes"),
        record_nodes
    );
    assert_eq!(
        support::message_count(&topics.edges) as u64,
        truth.rels.len() as u64,
        "every relationship published once"
    );
    assert_eq!(
        support::message_count(&topics.results) as u64,
        count(&first, "nodes")
            + count(&first, "subjects")
            + count(&second, "nodes")
            + count(&second, "subjects")
    );
    let third = import(&topics, &[&all], &["--checkpoint", &cp]);
    assert_eq!(count(&third, "published_lines"), 0, "all done: {third}");
}

/// Two shards of one file set split it without overlap: together one message per record.
#[tokio::test]
async fn two_shards_split_the_records_without_overlap() {
    let topics = TestTopics::create("import-shards", 2).await;
    let (_dir, all) = dump(fresh_id_base());
    let a = import(&topics, &[&all], &["--shard", "0/2"]);
    let b = import(&topics, &[&all], &["--shard", "1/2"]);
    let lines = count(&a, "lines");
    assert_eq!(
        count(&a, "published_lines") + count(&b, "published_lines"),
        lines
    );
    assert!(count(&a, "published_lines") > 0 && count(&b, "published_lines") > 0);
    let truth = truth_of(gunzip(&all).lines());
    assert_eq!(
        support::message_count(&topics.edges) as u64,
        truth.rels.len() as u64
    );
}

/// Open Library's own records (`../shared/openlibrary/samples/`), written as dump lines under
/// keys of this test alone, import into the right nodes and relationships.
#[tokio::test]
async fn real_records_import_into_the_right_nodes_and_edges() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/openlibrary/samples");
    let samples = if samples.exists() {
        samples
    } else {
        PathBuf::from("/work/shared/openlibrary/samples")
    };
    if !samples.exists() {
        eprintln!(
            "skipped: no shared Open Library samples at {}",
            samples.display()
        );
        return;
    }
    let tag = fresh_id_base().to_string();
    let rekey = |text: &str| {
        // `/works/OL123W` → `/works/OL<tag>123W`: this run's own keys, the records unchanged
        // otherwise.
        let mut out = text.to_owned();
        for prefix in ["/works/OL", "/authors/OL", "/books/OL"] {
            out = out.replace(prefix, &format!("{prefix}{tag}"));
        }
        out
    };
    let mut lines = Vec::new();
    for name in [
        "author_OL101176A.json",
        "author_OL1111490A.json",
        "edition_OL22951843M.json",
        "work_OL15832982W.json",
    ] {
        let raw = std::fs::read_to_string(samples.join(name)).expect("sample");
        let record: Value = serde_json::from_str(&rekey(&raw)).expect("sample JSON");
        lines.push(format!(
            "{}\t{}\t{}\t{}\t{}",
            record["type"]["key"].as_str().expect("type"),
            record["key"].as_str().expect("key"),
            record["revision"],
            record["last_modified"]["value"].as_str().unwrap_or(""),
            record
        ));
    }
    let topics = TestTopics::create("import-real", 1).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("ol_dump_2024-01-01.txt");
    std::fs::write(&file, lines.join("\n")).expect("file");
    let crawl_id = unique("import-real");
    let (_writer, _) = graph_writer(&topics);
    let summary = import(&topics, &[&file], &["--crawl-id", &crawl_id]);
    assert_eq!(
        (count(&summary, "nodes"), count(&summary, "dlq")),
        (4, 0),
        "{summary}"
    );
    let truth = truth_of(lines.iter().map(String::as_str));
    let graph = caught_up(&crawl_id, &truth).await;
    assert_eq!(graph.nodes, truth.nodes);
    assert_eq!(graph.rels, truth.rels);
    // Checked against the JSON itself, not only the parser.
    let work: Value = serde_json::from_str(&rekey(
        &std::fs::read_to_string(samples.join("work_OL15832982W.json")).expect("work"),
    ))
    .expect("json");
    let key = work["key"].as_str().expect("key");
    assert_eq!(graph.nodes[key].0, "Work");
    assert_eq!(graph.nodes[key].1["title"], work["title"]);
    assert_eq!(graph.nodes[key].1["revision"], work["revision"]);
    for author in work["authors"].as_array().into_iter().flatten() {
        if let Some(a) = author["author"]["key"].as_str() {
            assert!(
                graph.rels.contains_key(&format!("{key}|WRITTEN_BY|{a}")),
                "{a}"
            );
        }
    }
    let edition: Value = serde_json::from_str(&rekey(
        &std::fs::read_to_string(samples.join("edition_OL22951843M.json")).expect("edition"),
    ))
    .expect("json");
    let ekey = edition["key"].as_str().expect("key");
    for w in edition["works"].as_array().into_iter().flatten() {
        let w = w["key"].as_str().expect("work key");
        assert!(
            graph.rels.contains_key(&format!("{ekey}|EDITION_OF|{w}")),
            "{w}"
        );
    }
}
