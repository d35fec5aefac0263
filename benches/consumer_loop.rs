//! Messages per second through the consumer loop with a no-op handler, on the real broker, at
//! `CONCURRENT_JOBS` 1, 32 and 256. Prints a table; the time runs from the first message
//! handled to the last one handled (the group join is not counted); the final commit is
//! checked afterwards.
//!
//! `eval "$(bash scripts/stack.sh env)" && cargo bench --bench consumer_loop`
//! (`BENCH_MESSAGES` sets the message count, default 20000.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bookworm::consumer::{
    ConsumerLoop, Delivery, HandleError, Handler, LoopSettings, LoopTelemetry,
};
use bookworm::kafka::publish::Record;
use bookworm::process::health::{Liveness, Readiness};
use bookworm::process::metrics::ConsumerMetrics;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;

/// Counts messages and does nothing else.
struct NoOp {
    handled: AtomicUsize,
    first: std::sync::Mutex<Option<Instant>>,
}

impl Handler for NoOp {
    async fn handle(&self, _delivery: &Delivery) -> Result<Vec<Record>, HandleError> {
        if self.handled.fetch_add(1, Ordering::Relaxed) == 0 {
            *self.first.lock().unwrap() = Some(Instant::now());
        }
        Ok(Vec::new())
    }

    fn dead_letter(&self, delivery: &Delivery, reason: &str, _detail: &str) -> Record {
        Record {
            topic: "bench.dlq".to_owned(),
            key: delivery.offset.to_string(),
            payload: reason.as_bytes().to_vec(),
        }
    }
}

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn committed_total(group: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition(topic, p);
    }
    consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed")
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

fn main() {
    let messages: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or_default();
        let topic = format!("bench-loop-{stamp}");
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .expect("admin");
        admin
            .create_topics(
                [&NewTopic::new(
                    &topic,
                    PARTITIONS,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new(),
            )
            .await
            .expect("create topic");
        let producer =
            bookworm::kafka::producer(&brokers(), Duration::from_secs(60)).expect("producer");
        let payload = vec![b'x'; 200];
        let sends = (0..messages).map(|i| {
            let key = format!("k{i}");
            let producer = &producer;
            let payload = &payload;
            let topic = &topic;
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(payload),
                        Duration::from_secs(60),
                    )
                    .await
                    .expect("produced");
            }
        });
        futures::future::join_all(sends).await;

        println!("messages: {messages}, partitions: {PARTITIONS}, no-op handler");
        println!(
            "{:>12} {:>12} {:>14}",
            "concurrency", "seconds", "messages/s"
        );
        for concurrency in [1usize, 32, 256] {
            let group = format!("bench-group-{stamp}-{concurrency}");
            let handler = Arc::new(NoOp {
                handled: AtomicUsize::new(0),
                first: std::sync::Mutex::new(None),
            });
            let registry = prometheus::Registry::new();
            let metrics = ConsumerMetrics::register(&registry, "bench").expect("metrics");
            let token = CancellationToken::new();
            let settings = LoopSettings {
                brokers: brokers().into(),
                group_id: group.clone(),
                topics: vec![topic.clone()],
                concurrency,
                per_partition: concurrency,
                job_timeout: Duration::from_secs(30),
                publish_timeout: Duration::from_secs(30),
                commit_interval: Duration::from_secs(1),
                drain_timeout: Duration::from_secs(10),
                revoke_drain_timeout: Duration::from_secs(5),
                max_poll_interval: Duration::from_secs(300),
                session_timeout: Duration::from_secs(45),
            };
            let telemetry = LoopTelemetry {
                metrics,
                liveness: Liveness::always(),
                readiness: Readiness::default(),
            };
            let consumer_loop = ConsumerLoop::new(settings, Arc::clone(&handler), telemetry);
            let task = tokio::spawn(consumer_loop.run(token.clone()));
            while handler.handled.load(Ordering::Relaxed) < messages {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let handled_at = Instant::now();
            let first = handler.first.lock().unwrap().expect("first message");
            token.cancel();
            task.await.expect("task").expect("loop");
            let total = committed_total(&group, &topic);
            assert_eq!(total, messages as i64, "everything committed");
            let seconds = handled_at.duration_since(first).as_secs_f64();
            println!(
                "{concurrency:>12} {seconds:>12.3} {:>14.0}",
                messages as f64 / seconds
            );
        }
    });
}
