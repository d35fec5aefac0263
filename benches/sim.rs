//! What the simulator and the parser cost: catalogue generation, the reachable-set truth,
//! parsing one record, and HTTP answers per second from one simulator with no limit.
//!
//! `cargo bench --bench sim`

use std::hint::black_box;

use bookworm::crawl::limits::CrawlLimits;
use bookworm::crawl::parse::parse_record;
use bookworm::sim::{Catalogue, CatalogueSpec, SimArgs, spawn};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::sync::CancellationToken;

fn catalogue(c: &mut Criterion) {
    let spec = CatalogueSpec::new(42, 1000, 300, 120);
    c.bench_function("generate 1000 works", |b| {
        b.iter(|| Catalogue::generate(black_box(&spec)))
    });
    let catalogue = Catalogue::generate(&spec);
    let seeds = ["/works/OL1W".to_owned()];
    for depth in [2, 3] {
        let limits = CrawlLimits {
            max_depth: depth,
            ..CrawlLimits::default()
        };
        c.bench_function(&format!("reachable depth {depth}"), |b| {
            b.iter(|| catalogue.reachable(black_box(&seeds), &limits, &|_| None))
        });
    }
    let body = catalogue
        .record("/works/OL1W")
        .map(|v| v.to_string())
        .unwrap_or_default();
    c.bench_function("parse a work", |b| {
        b.iter(|| parse_record(black_box(body.as_bytes())))
    });
}

fn http(c: &mut Criterion) {
    const BATCH: u64 = 256;
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        return;
    };
    let shutdown = CancellationToken::new();
    let Ok(args) = SimArgs::from_flags(["--addr", "127.0.0.1:0", "--no-limit"]) else {
        return;
    };
    let Ok(sim) = rt.block_on(spawn(args, shutdown.clone())) else {
        return;
    };
    let base = sim.base_url();
    let Ok(client) = reqwest::Client::builder().no_proxy().build() else {
        return;
    };
    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("256 concurrent work fetches", |b| {
        b.iter(|| {
            rt.block_on(futures::future::join_all((0..BATCH).map(|i| {
                let client = client.clone();
                let url = format!("{base}/works/OL{}W.json", i % 1000 + 1);
                async move {
                    if let Ok(r) = client.get(url).send().await {
                        let _ = r.bytes().await;
                    }
                }
            })))
        })
    });
    group.finish();
    shutdown.cancel();
}

criterion_group!(benches, catalogue, http);
criterion_main!(benches);
