//! Throughput of the batch writer alone against the stack's Neo4j.
//!
//! A synthetic crawl stream (works with their authors and subjects, each work's record
//! followed by its edges) goes through [`Batcher`] from `2 × batch size` concurrent writers,
//! as the consumer loop would hand it in, once per batch size. Prints nodes/s and
//! relationships/s per batch size, then deletes what it wrote.
//!
//! `eval "$(bash scripts/stack.sh env)"; cargo bench --bench graph_write`
//! Sizes: `BENCH_WORKS` (default 50,000 works → 4 edges each = 200,000 edges),
//! `BENCH_BATCH_SIZES` (default `100,1000,5000`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bookworm::config::Neo4jArgs;
use bookworm::graph::migrate::{MIGRATIONS, MigrateOptions, migrate};
use bookworm::graph::{Batcher, BatcherConfig, EdgeRow, GraphStore, NodeRow, Row};
use bookworm::message::{Edge, Label, Node, Rel};
use bookworm::process::health::Readiness;
use bookworm::process::metrics::GraphWriterMetrics;
use futures::StreamExt;
use serde_json::json;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn node(key: String, label: Label, props: serde_json::Value) -> Row {
    let message = Node {
        v: 1,
        crawl_id: "bench".into(),
        key,
        label,
        props: serde_json::from_value(props).expect("map"),
        fetched_at: chrono::Utc::now(),
        gone: None,
    };
    Row::Node(NodeRow::from_message(&message).expect("valid node"))
}

fn edge(from: &str, to: &str, rel: Rel) -> Row {
    let message = Edge {
        v: 1,
        crawl_id: "bench".into(),
        from: from.to_owned(),
        to: to.to_owned(),
        rel: rel.as_str().to_owned(),
        discovered_at: chrono::Utc::now(),
        revision: None,
    };
    Row::Edge(EdgeRow::from_message(&message).expect("valid edge"))
}

/// Works with two authors and two subjects each; authors and subjects are shared (one author
/// per 5 works, one subject per 25), and their records arrive along the stream.
fn stream(tag: &str, works: usize) -> (Vec<Row>, usize, usize) {
    let authors = (works / 5).max(1);
    let subjects = (works / 25).max(1);
    let mut rows = Vec::with_capacity(works * 6);
    let (mut nodes, mut edges) = (0, 0);
    for w in 0..works {
        let work = format!("/works/OL{tag}{w}W");
        rows.push(node(
            work.clone(),
            Label::Work,
            json!({"title": format!("Work {w}"), "first_publish_date": "1965", "covers": [w]}),
        ));
        nodes += 1;
        for a in [w % authors, (w * 7 + 3) % authors] {
            let author = format!("/authors/OL{tag}{a}A");
            rows.push(edge(&work, &author, Rel::WRITTEN_BY));
            edges += 1;
            if w < authors && a == w % authors {
                rows.push(node(
                    author,
                    Label::Author,
                    json!({"name": format!("Author {a}")}),
                ));
                nodes += 1;
            }
        }
        for s in [w % subjects, (w * 13 + 5) % subjects] {
            let subject = format!("/subjects/{tag}_{s}");
            rows.push(edge(&work, &subject, Rel::ABOUT));
            edges += 1;
            if w < subjects && s == w % subjects {
                rows.push(node(
                    subject,
                    Label::Subject,
                    json!({"name": format!("Subject {s}")}),
                ));
                nodes += 1;
            }
        }
    }
    (rows, nodes, edges)
}

async fn clean(store: &GraphStore, tag: &str) {
    for (label, prefix) in [
        ("Work", format!("/works/OL{tag}")),
        ("Author", format!("/authors/OL{tag}")),
        ("Subject", format!("/subjects/{tag}_")),
    ] {
        loop {
            let rows = store
                .fetch(
                    neo4rs::query(&format!(
                        "MATCH (n:{label}) WHERE n.key STARTS WITH $p WITH n LIMIT 5000 \
                         DETACH DELETE n RETURN count(*) AS deleted"
                    ))
                    .param("p", prefix.as_str()),
                )
                .await
                .expect("clean-up");
            let deleted: i64 = rows
                .first()
                .and_then(|r| r.get("deleted").ok())
                .unwrap_or(0);
            if deleted == 0 {
                break;
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Neo4jArgs {
        neo4j_uri: env("NEO4J_URI", "bolt://127.0.0.1:7687"),
        neo4j_user: env("NEO4J_USER", "neo4j"),
        neo4j_password: env("NEO4J_PASSWORD", "bookworm-local"),
        neo4j_max_connections: 8,
        neo4j_query_timeout: Duration::from_secs(120),
        neo4j_ca_file: None,
    };
    let works: usize = env("BENCH_WORKS", "50000").parse().expect("BENCH_WORKS");
    let sizes: Vec<usize> = env("BENCH_BATCH_SIZES", "100,1000,5000")
        .split(',')
        .map(|s| s.trim().parse().expect("BENCH_BATCH_SIZES"))
        .collect();
    let store = Arc::new(GraphStore::connect(&args).await.expect("store"));
    migrate(&store, MIGRATIONS, &MigrateOptions::default())
        .await
        .expect("migrations");

    println!(
        "| batch size | node rows | edge rows | seconds | nodes/s | relationships/s | transactions |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for batch_size in sizes {
        let tag = format!("bench{}x{batch_size}x", std::process::id());
        let (rows, nodes, edges) = stream(&tag, works);
        let metrics = GraphWriterMetrics::register(&prometheus::Registry::new()).expect("metrics");
        let config = BatcherConfig::new(batch_size, Duration::from_millis(100));
        let (batcher, _task) =
            Batcher::spawn(store.clone(), config, metrics.clone(), Readiness::default());
        let started = Instant::now();
        let failures = futures::stream::iter(rows)
            .map(|row| {
                let batcher = batcher.clone();
                async move { batcher.write(row).await }
            })
            .buffer_unordered(batch_size * 2)
            .filter(|outcome| std::future::ready(outcome.is_err()))
            .count()
            .await;
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(failures, 0, "rows not written");
        println!(
            "| {batch_size} | {nodes} | {edges} | {seconds:.1} | {:.0} | {:.0} | {} |",
            nodes as f64 / seconds,
            edges as f64 / seconds,
            metrics.batch_rows.get_sample_count()
        );
        clean(&store, &tag).await;
    }
}
