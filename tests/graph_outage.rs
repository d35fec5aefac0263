//! The graph writer riding out a Neo4j outage.
//!
//! The first two tests cut Neo4j off from this test alone, through a TCP relay the test owns,
//! so they run alongside other tests. The last one stops the stack's Neo4j for 30 s and is
//! `#[ignore]`d: run it alone (`cargo test --test graph_outage --
//! --ignored`), it disturbs every other user of the stack.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bookworm::graph::{Batcher, BatcherConfig, GraphStore, Row, RowFailure};
use bookworm::message::Label::{Author, Work};
use bookworm::message::Rel;
use bookworm::process::health::Readiness;
use bookworm::process::metrics::GraphWriterMetrics;
use support::eventually;
use support::graph::{Keys, edge, neo4j_args, store};
use support::relay::Relay;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn upstream() -> String {
    neo4j_args()
        .neo4j_uri
        .trim_start_matches("bolt://")
        .to_owned()
}

async fn store_at(addr: SocketAddr, timeout: Duration) -> Arc<GraphStore> {
    let mut args = neo4j_args();
    args.neo4j_uri = format!("bolt://{addr}");
    args.neo4j_query_timeout = timeout;
    Arc::new(GraphStore::connect(&args).await.unwrap())
}

fn spawn_batcher(store: Arc<GraphStore>) -> (Batcher, GraphWriterMetrics, Readiness) {
    let metrics = GraphWriterMetrics::register(&prometheus::Registry::new()).unwrap();
    let readiness = Readiness::with_conditions(&["neo4j"]);
    let mut config = BatcherConfig::new(50, Duration::from_millis(20));
    config.probe_interval = Duration::from_millis(200);
    let (batcher, _task) = Batcher::spawn(store, config, metrics.clone(), readiness.clone());
    (batcher, metrics, readiness)
}

/// Writes `row` the way the consumer loop does: on `Retry`, wait and try again, forever.
async fn write_until_done(batcher: &Batcher, row: Row) -> u32 {
    let mut retries = 0;
    loop {
        match batcher.write(row.clone()).await {
            Ok(()) => return retries,
            Err(RowFailure::Retry(_)) => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("a good row was refused: {e}"),
        }
    }
}

/// A stream of edges written while Neo4j becomes unreachable for a few seconds: rows written
/// during the cut are answered `Retry` (never dropped, never dead-lettered), Neo4j is reported
/// down and not ready, and once it is back the writer recovers by itself and every row is in
/// the graph exactly once.
#[tokio::test]
async fn rows_wait_out_an_unreachable_neo4j_and_nothing_is_lost() {
    store().await; // the schema
    let relay = Relay::start(upstream()).await;
    let (batcher, metrics, readiness) =
        spawn_batcher(store_at(relay.addr, Duration::from_secs(5)).await);
    let keys = Keys::new();
    let rows: Vec<Row> = (0..600)
        .map(|i| {
            edge(
                &keys,
                Rel::WRITTEN_BY,
                (Work, &i.to_string()),
                (Author, &(i % 7).to_string()),
                "c1",
            )
        })
        .collect();

    let writer = {
        let batcher = batcher.clone();
        tokio::spawn(async move {
            let mut retries = 0;
            for chunk in rows.chunks(20) {
                let writes = chunk
                    .iter()
                    .map(|row| write_until_done(&batcher, row.clone()));
                retries += futures::future::join_all(writes).await.iter().sum::<u32>();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            retries
        })
    };
    eventually("some rows written", Duration::from_secs(30), || {
        let n = metrics.edges_written.get();
        async move { (n >= 100).then_some(()) }
    })
    .await;
    relay.cut();
    eventually("Neo4j reported down", Duration::from_secs(30), || {
        let down = metrics.neo4j_up.get() == 0 && readiness.failing() == vec!["neo4j"];
        async move { down.then_some(()) }
    })
    .await;
    let written_at_cut = metrics.edges_written.get();
    let cut_at = Instant::now();
    while cut_at.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            metrics.edges_written.get(),
            written_at_cut,
            "nothing is written while cut off"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.restore();
    let retries = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the stream catches up")
        .unwrap();
    let snapshot = keys.snapshot(&*store().await).await;
    keys.clean(&*store().await).await;

    assert!(
        retries > 0,
        "rows written during the cut were answered Retry"
    );
    assert_eq!(metrics.neo4j_up.get(), 1);
    assert!(readiness.failing().is_empty());
    assert_eq!(snapshot.rels.len(), 600);
    assert!(snapshot.rels.values().all(|(count, _)| *count == 1));
}

/// A Neo4j that accepts connections but never answers (a half-open connection, a hung
/// server): every call is bounded by the query timeout, the row is answered `Retry`, and Neo4j
/// is reported down.
#[tokio::test]
async fn a_neo4j_that_never_answers_cannot_hang_the_writer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = CancellationToken::new();
    let hold = held.clone();
    tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((socket, _)) => open.push(socket),
                    Err(_) => return,
                },
                _ = hold.cancelled() => return,
            }
        }
    });
    let (batcher, metrics, readiness) =
        spawn_batcher(store_at(addr, Duration::from_millis(500)).await);
    let keys = Keys::new();
    let row = edge(
        &keys,
        Rel::ABOUT,
        (Work, "1"),
        (bookworm::message::Label::Subject, "x"),
        "c1",
    );

    let outcome = tokio::time::timeout(Duration::from_secs(20), batcher.write(row))
        .await
        .expect("the write is bounded");
    held.cancel();

    assert!(matches!(outcome, Err(RowFailure::Retry(_))), "{outcome:?}");
    assert_eq!(metrics.neo4j_up.get(), 0);
    assert_eq!(readiness.failing(), vec!["neo4j"]);
}

mod with_kafka {
    //! The outage of the stack's own Neo4j, with the whole graph writer (consumer loop,
    //! handler, batcher) on real Kafka.

    use std::collections::BTreeMap;

    use bookworm::config::{ConsumerArgs, KafkaArgs};
    use bookworm::consumer::{ConsumerLoop, LoopTelemetry};
    use bookworm::graph::handler::GraphWriterHandler;
    use bookworm::graph::service::graph_topics;
    use bookworm::kafka::publish::{Publisher, Record};
    use bookworm::kafka::{TopicLayout, create_topics};
    use bookworm::process::boot::loop_settings;
    use bookworm::process::health::Liveness;
    use bookworm::process::metrics::ConsumerMetrics;
    use clap::Parser;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    use serde_json::json;

    use super::*;
    use crate::support::{stack_env, unique};

    const PARTITIONS: i32 = 3;

    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        consumer: ConsumerArgs,
    }

    /// Restarts Neo4j however the test ends, so a failed assertion cannot leave it stopped.
    struct Restart;
    impl Drop for Restart {
        fn drop(&mut self) {
            stack("start");
        }
    }

    fn stack(action: &str) {
        let status = std::process::Command::new("bash")
            .args([
                concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack.sh"),
                action,
                "neo4j",
            ])
            .status()
            .expect("stack.sh");
        assert!(status.success(), "stack.sh {action} neo4j");
    }

    /// The group's committed offset per partition of `topic` (-1 when none).
    fn committed(kafka: &KafkaArgs, group: &str, topic: &str) -> BTreeMap<i32, i64> {
        let reader: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers.kafka_brokers)
            .set("group.id", group)
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            list.add_partition(topic, p);
        }
        let offsets = reader
            .committed_offsets(list, Duration::from_secs(10))
            .unwrap();
        offsets
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                };
                (e.partition(), offset)
            })
            .collect()
    }

    /// Neo4j stopped for 30 s while a stream of edges is being written: the writer never
    /// exits, reports Neo4j down and not ready, commits no offset while nothing can be written,
    /// and afterwards catches up: every edge is in the graph once and every offset committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "stops the stack's Neo4j for 30 s; run alone"]
    async fn the_graph_writer_rides_out_a_neo4j_outage_without_losing_or_committing_rows() {
        let t = unique("graph-outage");
        let kafka = KafkaArgs {
            brokers: stack_env("KAFKA_BROKERS").into(),
            kafka_frontier_topic: format!("{t}.frontier"),
            kafka_results_topic: format!("{t}.results"),
            kafka_edges_topic: format!("{t}.edges"),
            kafka_dlq_topic: format!("{t}.dlq"),
            kafka_graph_dlq_topic: format!("{t}.graph-dlq"),
        };
        create_topics(
            &kafka.brokers.kafka_brokers,
            &kafka.all_topics(),
            TopicLayout {
                partitions: PARTITIONS,
                replication: 1,
            },
        )
        .await
        .unwrap();
        let keys = Keys::new();
        let group = unique("graph-writer");
        let metrics = GraphWriterMetrics::register(&prometheus::Registry::new()).unwrap();
        let readiness = Readiness::with_conditions(&["neo4j"]);
        let mut config = BatcherConfig::new(200, Duration::from_millis(50));
        config.probe_interval = Duration::from_millis(500);
        let (batcher, _task) =
            Batcher::spawn(store().await, config, metrics.clone(), readiness.clone());
        let handler = Arc::new(GraphWriterHandler::new(
            batcher,
            graph_topics(&kafka),
            metrics.clone(),
        ));
        let shutdown = CancellationToken::new();
        let mut settings = loop_settings(
            &kafka,
            &Defaults::try_parse_from(["test"]).unwrap().consumer,
            group.clone(),
            vec![kafka.kafka_edges_topic.clone()],
            400,
            Duration::from_secs(120),
        );
        settings.per_partition = 200;
        let telemetry = LoopTelemetry {
            metrics: ConsumerMetrics::register(
                &prometheus::Registry::new(),
                "relentless_graph_writer",
            )
            .unwrap(),
            liveness: Liveness::new(Duration::from_secs(300), None),
            readiness: readiness.clone(),
        };
        let looped = ConsumerLoop::new(settings, handler, telemetry);
        let running = tokio::spawn(looped.run(shutdown.clone()));

        // A stream of 3,000 edges over about 60 s, keyed by their `from` key.
        const EDGES: usize = 3000;
        let producer = {
            let kafka = kafka.clone();
            let tag = keys.tag.clone();
            tokio::spawn(async move {
                let publisher =
                    Publisher::new(&kafka.brokers.kafka_brokers, Duration::from_secs(60)).unwrap();
                for chunk in (0..EDGES).collect::<Vec<_>>().chunks(50) {
                    let records: Vec<Record> = chunk
                        .iter()
                        .map(|i| {
                            let from = format!("/works/OL{tag}{i}W");
                            let body = json!({"v": 1, "crawl_id": "c1", "from": from,
                                "to": format!("/authors/OL{tag}{}A", i % 11), "rel": "WRITTEN_BY",
                                "discovered_at": "2026-01-01T00:00:00Z"});
                            Record {
                                topic: kafka.kafka_edges_topic.clone(),
                                key: from,
                                payload: body.to_string().into_bytes(),
                            }
                        })
                        .collect();
                    publisher.publish(&records).await.unwrap();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        };

        eventually(
            "part of the stream written",
            Duration::from_secs(60),
            || {
                let n = metrics.edges_written.get();
                async move { (n >= 500).then_some(()) }
            },
        )
        .await;
        let restart = Restart;
        stack("stop");
        let stopped = Instant::now();
        eventually("Neo4j reported down", Duration::from_secs(30), || {
            let down = metrics.neo4j_up.get() == 0 && readiness.failing().contains(&"neo4j");
            async move { down.then_some(()) }
        })
        .await;
        // Let commits of rows written before the stop land, then nothing may move.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = committed(&kafka, &group, &kafka.kafka_edges_topic);
        let written = metrics.edges_written.get();
        while stopped.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(!running.is_finished(), "the writer never exits");
        }
        let after = committed(&kafka, &group, &kafka.kafka_edges_topic);
        assert_eq!(after, before, "no offset committed while Neo4j was down");
        assert_eq!(metrics.edges_written.get(), written);
        assert!(written < EDGES as u64, "the stream was cut mid-way");
        drop(restart);

        producer.await.unwrap();
        eventually("the writer catches up", Duration::from_secs(180), || {
            let n = metrics.edges_written.get();
            async move { (n >= EDGES as u64).then_some(()) }
        })
        .await;
        let store = store().await;
        eventually("every offset committed", Duration::from_secs(60), || {
            let offsets = committed(&kafka, &group, &kafka.kafka_edges_topic);
            async move { (offsets.values().sum::<i64>() == EDGES as i64).then_some(()) }
        })
        .await;
        let snapshot = keys.snapshot(&store).await;
        keys.clean(&store).await;
        shutdown.cancel();
        running.await.unwrap().unwrap();

        assert_eq!(snapshot.rels.len(), EDGES, "nothing lost");
        assert!(snapshot.rels.values().all(|(count, _)| *count == 1));
        assert_eq!(metrics.neo4j_up.get(), 1);
        assert!(readiness.failing().iter().all(|c| *c != "neo4j"));
    }

    /// Issue 14, item 2: Neo4j hangs (accepts, never answers) while rows wait past the graph
    /// writer's JOB_TIMEOUT (here 1 s, shorter than the 3 s query bound, as when
    /// CONCURRENT_JOBS is far above GRAPH_BATCH_SIZE and rows queue behind slow batches): the
    /// rows are parked and retried, never dead-lettered as `timeout`, and no offset moves
    /// until Neo4j answers again; then every row is written and committed. Before the fix
    /// each row became a `timeout` record in the graph DLQ and its offset was committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_waiting_on_a_hung_neo4j_past_the_job_timeout_are_retried_not_dead_lettered() {
        let t = unique("graph-hung");
        let kafka = KafkaArgs {
            brokers: stack_env("KAFKA_BROKERS").into(),
            kafka_frontier_topic: format!("{t}.frontier"),
            kafka_results_topic: format!("{t}.results"),
            kafka_edges_topic: format!("{t}.edges"),
            kafka_dlq_topic: format!("{t}.dlq"),
            kafka_graph_dlq_topic: format!("{t}.graph-dlq"),
        };
        create_topics(
            &kafka.brokers.kafka_brokers,
            &kafka.all_topics(),
            TopicLayout {
                partitions: PARTITIONS,
                replication: 1,
            },
        )
        .await
        .unwrap();
        store().await; // the schema
        let relay = Relay::start(upstream()).await;
        relay.hang();
        let keys = Keys::new();
        let group = unique("graph-writer-hung");
        let metrics = GraphWriterMetrics::register(&prometheus::Registry::new()).unwrap();
        let readiness = Readiness::with_conditions(&["neo4j"]);
        let mut config = BatcherConfig::new(2, Duration::from_millis(20));
        config.probe_interval = Duration::from_millis(200);
        let (batcher, _task) = Batcher::spawn(
            store_at(relay.addr, Duration::from_secs(3)).await,
            config,
            metrics.clone(),
            readiness.clone(),
        );
        let handler = Arc::new(GraphWriterHandler::new(
            batcher,
            graph_topics(&kafka),
            metrics.clone(),
        ));
        let shutdown = CancellationToken::new();
        let mut settings = loop_settings(
            &kafka,
            &Defaults::try_parse_from(["test"]).unwrap().consumer,
            group.clone(),
            vec![kafka.kafka_edges_topic.clone()],
            16,
            Duration::from_secs(1),
        );
        settings.commit_interval = Duration::from_millis(200);
        let telemetry = LoopTelemetry {
            metrics: ConsumerMetrics::register(
                &prometheus::Registry::new(),
                "relentless_graph_writer",
            )
            .unwrap(),
            liveness: Liveness::new(Duration::from_secs(300), None),
            readiness: readiness.clone(),
        };
        let running =
            tokio::spawn(ConsumerLoop::new(settings, handler, telemetry).run(shutdown.clone()));

        const EDGES: usize = 12;
        let records: Vec<Record> = (0..EDGES)
            .map(|i| {
                let from = keys.key(Work, &i.to_string());
                let body = json!({"v": 1, "crawl_id": "c1", "from": from,
                    "to": keys.key(Author, "1"), "rel": "WRITTEN_BY",
                    "discovered_at": "2026-01-01T00:00:00Z"});
                Record {
                    topic: kafka.kafka_edges_topic.clone(),
                    key: from,
                    payload: body.to_string().into_bytes(),
                }
            })
            .collect();
        Publisher::new(&kafka.brokers.kafka_brokers, Duration::from_secs(30))
            .unwrap()
            .publish(&records)
            .await
            .unwrap();

        eventually("Neo4j reported down", Duration::from_secs(30), || {
            let down = metrics.neo4j_up.get() == 0;
            async move { down.then_some(()) }
        })
        .await;
        // Several job timeouts and query timeouts long: nothing may be dead-lettered or
        // committed meanwhile.
        let hung_at = Instant::now();
        while hung_at.elapsed() < Duration::from_secs(6) {
            assert_eq!(
                crate::support::message_count(&kafka.kafka_graph_dlq_topic),
                0,
                "a row waiting on a hung Neo4j was dead-lettered"
            );
            let offsets = committed(&kafka, &group, &kafka.kafka_edges_topic);
            assert!(
                offsets.values().all(|o| *o <= 0),
                "an offset moved while Neo4j hung: {offsets:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        relay.restore();
        eventually("every offset committed", Duration::from_secs(120), || {
            let offsets = committed(&kafka, &group, &kafka.kafka_edges_topic);
            async move { (offsets.values().sum::<i64>() == EDGES as i64).then_some(()) }
        })
        .await;
        let store = store().await;
        let snapshot = keys.snapshot(&store).await;
        keys.clean(&store).await;
        shutdown.cancel();
        running.await.unwrap().unwrap();

        assert_eq!(snapshot.rels.len(), EDGES, "every row written");
        assert_eq!(
            crate::support::message_count(&kafka.kafka_graph_dlq_topic),
            0,
            "nothing dead-lettered"
        );
        assert_eq!(metrics.edges_failed.get(), 0);
    }
}
