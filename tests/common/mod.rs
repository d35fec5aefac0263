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
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
