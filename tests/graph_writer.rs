//! The graph writer's handler: messages to rows, dead letters, and a stream drained from real
//! Kafka into the real Neo4j through the consumer loop, replayed with no duplicates.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bookworm::config::{ConsumerArgs, KafkaArgs};
use bookworm::consumer::{ConsumerLoop, Delivery, HandleError, Handler, LoopTelemetry, Outcome};
use bookworm::graph::handler::GraphWriterHandler;
use bookworm::graph::service::graph_topics;
use bookworm::graph::{Batcher, BatcherConfig};
use bookworm::kafka::publish::{Publisher, Record};
use bookworm::kafka::{TopicLayout, create_topics};
use bookworm::message::Label::{Author, Subject, Work};
use bookworm::process::boot::loop_settings;
use bookworm::process::health::{Liveness, Readiness};
use bookworm::process::metrics::{ConsumerMetrics, GraphWriterMetrics};
use clap::Parser;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{Value, json};
use support::graph::{Keys, store};
use support::{eventually, stack_env, unique};
use tokio_util::sync::CancellationToken;

/// Topic names no other test uses.
fn kafka_args() -> KafkaArgs {
    let t = unique("graph");
    KafkaArgs {
        brokers: stack_env("KAFKA_BROKERS").into(),
        kafka_frontier_topic: format!("{t}.frontier"),
        kafka_results_topic: format!("{t}.results"),
        kafka_edges_topic: format!("{t}.edges"),
        kafka_dlq_topic: format!("{t}.dlq"),
        kafka_graph_dlq_topic: format!("{t}.graph-dlq"),
    }
}

#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    consumer: ConsumerArgs,
}

async fn handler(kafka: &KafkaArgs) -> (Arc<GraphWriterHandler>, GraphWriterMetrics) {
    let metrics = GraphWriterMetrics::register(&prometheus::Registry::new()).unwrap();
    let config = BatcherConfig::new(100, Duration::from_millis(50));
    let (batcher, _task) =
        Batcher::spawn(store().await, config, metrics.clone(), Readiness::default());
    (
        Arc::new(GraphWriterHandler::new(
            batcher,
            graph_topics(kafka),
            metrics.clone(),
        )),
        metrics,
    )
}

fn delivery(topic: &str, payload: &[u8]) -> Delivery {
    Delivery {
        topic: topic.to_owned(),
        partition: 3,
        offset: 42,
        key: Some(b"/works/OL1W".to_vec()),
        payload: Some(payload.to_vec()),
        attempt: 1,
    }
}

fn node_json(
    keys: &Keys,
    label: bookworm::message::Label,
    id: &str,
    crawl: &str,
    props: Value,
) -> Value {
    json!({"v": 1, "crawl_id": crawl, "key": keys.key(label, id), "label": label.as_str(),
           "props": props, "fetched_at": "2026-01-01T00:00:00Z"})
}

/// A gone node message (`gone` as `kind`) for the work W1 of `keys`.
fn gone_json(keys: &Keys, label: bookworm::message::Label, gone: Value, props: Value) -> Value {
    let mut node = node_json(keys, label, "1", "c1", props);
    node["gone"] = gone;
    node
}

fn edge_json(
    keys: &Keys,
    from: (bookworm::message::Label, &str),
    to: (bookworm::message::Label, &str),
    rel: &str,
) -> Value {
    json!({"v": 1, "crawl_id": "c1", "from": keys.key(from.0, from.1), "to": keys.key(to.0, to.1),
           "rel": rel, "discovered_at": "2026-01-01T00:00:00Z"})
}

fn reason(outcome: Result<Vec<Record>, HandleError>) -> String {
    match outcome {
        Err(HandleError::DeadLetter { reason, .. }) => reason,
        other => panic!("expected a dead letter, got {other:?}"),
    }
}

/// Messages that cannot become rows are dead-lettered with a reason naming the fault, before
/// they reach Neo4j.
#[tokio::test]
async fn messages_that_cannot_become_rows_are_dead_lettered_with_their_reason() {
    let kafka = kafka_args();
    let (handler, metrics) = handler(&kafka).await;
    let keys = Keys::new();
    let (results, edges) = (&kafka.kafka_results_topic, &kafka.kafka_edges_topic);
    let cases = [
        (delivery(results, b"not json"), "parse"),
        (delivery(results, br#"{"v": 1, "crawl_id": "c", "key": "/works/OL1W", "label": "Film", "props": {}, "fetched_at": "2026-01-01T00:00:00Z"}"#), "parse"),
        (delivery(results, node_json(&keys, Work, "1", "c1", json!({"bio": {"value": "x"}})).to_string().as_bytes()), "invalid_props"),
        (delivery(results, node_json(&keys, Work, "1", "", json!({})).to_string().as_bytes()), "invalid_crawl_id"),
        (delivery(edges, edge_json(&keys, (Work, "1"), (Author, "1"), "LIKES").to_string().as_bytes()), "unknown_rel"),
        (delivery(edges, edge_json(&keys, (Work, "1"), (Work, "2"), "EDITION_OF").to_string().as_bytes()), "invalid_edge"),
        (delivery(edges, edge_json(&keys, (Work, "1"), (Author, "1"), "WRITTEN_BY").to_string().replace("/authors/", "/people/").as_bytes()), "invalid_key"),
        (delivery("elsewhere", b"{}"), "unknown_topic"),
        // Gone messages (a freshness job's delete or merge) the tombstone rules cannot use.
        (delivery(results, gone_json(&keys, Work, json!({"kind": "deleted"}), json!({})).to_string().as_bytes()), "invalid_gone"),
        (delivery(results, gone_json(&keys, Work, json!({"kind": "redirected", "to": keys.key(Author, "1")}), json!({"revision": 3})).to_string().as_bytes()), "invalid_gone"),
        (delivery(results, gone_json(&keys, Work, json!({"kind": "redirected", "to": "/works/"}), json!({"revision": 3})).to_string().as_bytes()), "invalid_gone"),
        (delivery(results, gone_json(&keys, Work, json!({"kind": "deleted"}), json!({"revision": 3})).to_string().replace("/works/", "/people/").as_bytes()), "invalid_key"),
        (delivery(results, gone_json(&keys, Work, json!({"kind": "vanished"}), json!({"revision": 3})).to_string().as_bytes()), "parse"),
    ];
    for (delivery, expected) in cases {
        assert_eq!(
            reason(handler.handle(&delivery).await),
            expected,
            "{delivery:?}"
        );
    }
    assert_eq!(metrics.results_received.get(), 9);
    assert_eq!(metrics.edges_received.get(), 3);
    let store = store().await;
    assert!(
        keys.snapshot(&store).await.nodes.is_empty(),
        "nothing was written"
    );
    let tombstones = store
        .fetch(
            neo4rs::query("MATCH (t:Tombstone) WHERE t.key CONTAINS $tag RETURN t.key AS key")
                .param("tag", keys.tag.as_str()),
        )
        .await
        .unwrap();
    assert!(tombstones.is_empty(), "no tombstone was written");
}

/// The dead letter names where the message came from, why it failed, and carries the raw
/// payload (as JSON when it parses, as text otherwise).
#[tokio::test]
async fn the_dead_letter_carries_the_raw_payload_and_where_it_came_from() {
    let kafka = kafka_args();
    let (handler, metrics) = handler(&kafka).await;
    let record = handler.dead_letter(
        &delivery(&kafka.kafka_edges_topic, br#"{"rel": "LIKES"}"#),
        "unknown_rel",
        "LIKES",
    );
    assert_eq!(record.topic, kafka.kafka_graph_dlq_topic);
    assert_eq!(record.key, "/works/OL1W");
    let body: Value = serde_json::from_slice(&record.payload).unwrap();
    assert_eq!(body["v"], 1);
    assert_eq!(body["topic"], json!(kafka.kafka_edges_topic));
    assert_eq!(
        (body["partition"].clone(), body["offset"].clone()),
        (json!(3), json!(42))
    );
    assert_eq!(body["payload"], json!({"rel": "LIKES"}));
    assert_eq!(
        (body["reason"].as_str(), body["detail"].as_str()),
        (Some("unknown_rel"), Some("LIKES"))
    );
    assert!(body["failed_at"].is_string());
    assert_eq!(
        metrics.edges_failed.get(),
        0,
        "counted once acknowledged, not when built"
    );

    let record = handler.dead_letter(
        &delivery(&kafka.kafka_results_topic, b"\xffnot json"),
        "parse",
        "x",
    );
    let body: Value = serde_json::from_slice(&record.payload).unwrap();
    assert_eq!(body["payload"], json!("\u{fffd}not json"));
}

/// Issue 14, item 12: a failed row counts once, when its DLQ record is acknowledged; building
/// the record (which the loop may do twice, or again after a failed send) counts nothing.
/// Before the fix `*_failed_total` went up on every build, once per DLQ attempt.
#[tokio::test]
async fn a_failed_row_counts_once_however_often_its_dead_letter_is_built() {
    let kafka = kafka_args();
    let (handler, metrics) = handler(&kafka).await;
    let results = delivery(&kafka.kafka_results_topic, b"not json");
    let edges = delivery(&kafka.kafka_edges_topic, b"not json");
    for _ in 0..3 {
        handler.dead_letter(&results, "parse", "x");
        handler.dead_letter(&edges, "parse", "x");
    }
    assert_eq!(
        (metrics.results_failed.get(), metrics.edges_failed.get()),
        (0, 0)
    );
    let dead = Outcome::DeadLettered { reason: "parse" };
    handler.finished(&results, dead).await.unwrap();
    handler.finished(&edges, dead).await.unwrap();
    assert_eq!(
        (metrics.results_failed.get(), metrics.edges_failed.get()),
        (1, 1)
    );
}

/// Runs a consumer loop with a graph-writer handler until `done` says so, then shuts it down.
async fn drain(kafka: &KafkaArgs, group: &str, done: impl Fn(&GraphWriterMetrics) -> bool) {
    let (handler, metrics) = handler(kafka).await;
    let shutdown = CancellationToken::new();
    let mut settings = loop_settings(
        kafka,
        &Defaults::try_parse_from(["test"]).unwrap().consumer,
        group.to_owned(),
        vec![
            kafka.kafka_results_topic.clone(),
            kafka.kafka_edges_topic.clone(),
        ],
        200,
        Duration::from_secs(60),
    );
    settings.per_partition = 100;
    let telemetry = LoopTelemetry {
        metrics: ConsumerMetrics::register(&prometheus::Registry::new(), "relentless_graph_writer")
            .unwrap(),
        liveness: Liveness::new(Duration::from_secs(300), None),
        readiness: Readiness::default(),
    };
    let looped = ConsumerLoop::new(settings, handler, telemetry);
    let running = tokio::spawn(looped.run(shutdown.clone()));
    eventually("the stream to be written", Duration::from_secs(60), || {
        let ready = done(&metrics);
        async move { ready.then_some(()) }
    })
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// Reads the dead letters on the graph DLQ topic (waits until `expected` arrived).
async fn dead_letters(kafka: &KafkaArgs, expected: usize) -> Vec<Value> {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers.kafka_brokers)
        .set("group.id", unique("graph-dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&kafka.kafka_graph_dlq_topic]).unwrap();
    let mut records = Vec::new();
    while records.len() < expected {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("dead letter within 30 s")
            .unwrap();
        records.push(serde_json::from_slice(message.payload().unwrap()).unwrap());
    }
    records
}

/// A stream on Kafka (edges published before the nodes they join, one node twice, a stub, an
/// unknown relationship type and a malformed edge) drained by the consumer loop: the graph
/// holds the nodes and relationships, the two bad messages are in the graph DLQ. Replaying both
/// topics from the start with a new group leaves the same graph.
#[tokio::test]
async fn a_stream_on_kafka_lands_in_the_graph_and_replays_without_duplicates() {
    let kafka = kafka_args();
    create_topics(
        &kafka.brokers.kafka_brokers,
        &kafka.all_topics(),
        TopicLayout {
            partitions: 3,
            replication: 1,
        },
    )
    .await
    .unwrap();
    let keys = Keys::new();
    let record = |topic: &str, key: String, body: Value| Record {
        topic: topic.to_owned(),
        key,
        payload: body.to_string().into_bytes(),
    };
    let (results, edges) = (&kafka.kafka_results_topic, &kafka.kafka_edges_topic);
    let w1 = keys.key(Work, "1");
    let publisher = Publisher::new(&kafka.brokers.kafka_brokers, Duration::from_secs(30)).unwrap();
    publisher
        .publish(&[
            record(
                edges,
                w1.clone(),
                edge_json(&keys, (Work, "1"), (Author, "1"), "WRITTEN_BY"),
            ),
            record(
                edges,
                w1.clone(),
                edge_json(&keys, (Work, "1"), (Subject, "sf"), "ABOUT"),
            ),
            record(
                edges,
                w1.clone(),
                edge_json(&keys, (Work, "1"), (Author, "2"), "WRITTEN_BY"),
            ),
            record(
                edges,
                w1.clone(),
                edge_json(&keys, (Work, "1"), (Author, "1"), "LIKES"),
            ),
            Record {
                topic: edges.clone(),
                key: w1.clone(),
                payload: b"{\"v\": 1, \"from\"".to_vec(),
            },
        ])
        .await
        .unwrap();
    publisher
        .publish(&[
            record(
                results,
                w1.clone(),
                node_json(&keys, Work, "1", "c1", json!({"title": "Dune"})),
            ),
            record(
                results,
                keys.key(Author, "1"),
                node_json(&keys, Author, "1", "c1", json!({"name": "Frank Herbert"})),
            ),
            record(
                results,
                keys.key(Subject, "sf"),
                node_json(&keys, Subject, "sf", "c1", json!({"name": "sf"})),
            ),
            record(
                results,
                w1.clone(),
                node_json(
                    &keys,
                    Work,
                    "1",
                    "c2",
                    json!({"title": "Dune", "subtitle": ""}),
                ),
            ),
        ])
        .await
        .unwrap();
    let finished = |m: &GraphWriterMetrics| {
        m.results_written.get() == 4 && m.edges_written.get() == 3 && m.edges_failed.get() == 2
    };

    drain(&kafka, &unique("graph-writer"), finished).await;
    let store = store().await;
    let first = keys.snapshot(&store).await;
    drain(&kafka, &unique("graph-writer-replay"), finished).await;
    let replayed = keys.snapshot(&store).await;
    keys.clean(&store).await;

    assert_eq!(replayed, first);
    assert_eq!(first.nodes.len(), 4, "{first:?}");
    assert_eq!(first.rels.len(), 3);
    assert_eq!(
        first.nodes[&(Work, "/works/OL1W".to_owned())]["crawls"],
        json!(["c1", "c2"])
    );
    assert_eq!(
        first.nodes[&(Author, "/authors/OL2A".to_owned())]["stub"],
        json!(true)
    );
    let mut reasons: Vec<String> = dead_letters(&kafka, 4)
        .await
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_owned())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec!["parse", "parse", "unknown_rel", "unknown_rel"]
    );
}
