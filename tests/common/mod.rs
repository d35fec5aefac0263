//! Helpers shared by the integration tests: unique names, the stack's addresses, and polling
//! with a deadline instead of sleeping.
#![allow(dead_code)]

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
        match name {
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
