//! Cost of one egress acquisition (the limiter step every request pays), local (`governor`)
//! against cluster (one Lua script round trip to the stack's Redis), with a rate so high that
//! nothing ever waits. Run: `eval "$(scripts/stack.sh env)"; cargo bench --bench egress`.

use std::time::Duration;

use bookworm::config::LimitScope;
use bookworm::config::parse_proxy_pool;
use bookworm::crawl::client::egress::limiter::Rate;
use bookworm::crawl::client::egress::{ClientSettings, EgressPool, PoolSettings};
use bookworm::process::metrics::WorkerMetrics;
use criterion::{Criterion, criterion_group, criterion_main};

fn settings(scope: LimitScope) -> PoolSettings {
    PoolSettings {
        egresses: parse_proxy_pool(
            "http://127.0.0.1:3128,http://127.0.0.1:3129,http://127.0.0.1:3130",
        )
        .map(|p| p.0)
        .unwrap_or_default(),
        rate: Rate {
            interval: Duration::from_nanos(1),
            burst: 1_000_000,
        },
        overall: None,
        scope,
        redis_prefix: format!("bench:{}", std::process::id()),
        block_base: Duration::from_secs(1),
        block_max: Duration::from_secs(1),
        origin_addr: "127.0.0.1:1".to_owned(),
        client: ClientSettings {
            user_agent: bookworm::config::DEFAULT_USER_AGENT.to_owned(),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
        },
    }
}

fn acquire(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let metrics = WorkerMetrics::register(&prometheus::Registry::new()).expect("metrics");
    let local = EgressPool::new(settings(LimitScope::Local), None, metrics.clone()).expect("pool");
    c.bench_function("acquire_local_3_egresses", |b| {
        b.iter(|| runtime.block_on(local.acquire()).expect("slot"))
    });
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let redis = runtime.block_on(async {
        let client = redis::Client::open(url).expect("redis url");
        redis::aio::ConnectionManager::new(client).await
    });
    let Ok(redis) = redis else {
        eprintln!("no Redis: skipping the cluster benchmark");
        return;
    };
    let cluster =
        EgressPool::new(settings(LimitScope::Cluster), Some(redis), metrics).expect("pool");
    c.bench_function("acquire_cluster_3_egresses", |b| {
        b.iter(|| runtime.block_on(cluster.acquire()).expect("slot"))
    });
}

criterion_group!(benches, acquire);
criterion_main!(benches);
