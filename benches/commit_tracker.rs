//! Completions per second through the commit tracker, with completions arriving out of order
//! the way concurrent jobs finish (a random order within windows of in-flight jobs).
//!
//! `cargo bench --bench commit_tracker`

use std::hint::black_box;
use std::time::Instant;

use bookworm::consumer::tracker::{CommitTracker, TopicPartition};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::seq::SliceRandom;

const MESSAGES: i64 = 100_000;

/// Offsets `0..MESSAGES` in the order they complete: shuffled within windows of `window`
/// (the jobs in flight at once), across 4 partitions.
fn completion_order(window: usize) -> Vec<(usize, i64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut order = Vec::with_capacity(MESSAGES as usize);
    let offsets: Vec<i64> = (0..MESSAGES).collect();
    for chunk in offsets.chunks(window) {
        let mut chunk = chunk.to_vec();
        chunk.shuffle(&mut rng);
        order.extend(chunk.into_iter().map(|o| ((o % 4) as usize, o)));
    }
    order
}

fn bench(c: &mut Criterion) {
    let partitions: Vec<TopicPartition> = (0..4)
        .map(|p| TopicPartition::new("relentless.crawl.frontier", p))
        .collect();
    let mut group = c.benchmark_group("commit_tracker");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    for window in [32usize, 256, 4096] {
        let order = completion_order(window);
        group.bench_function(
            format!("deliver_and_complete_out_of_order_window_{window}"),
            |b| {
                b.iter(|| {
                    let now = Instant::now();
                    let mut tracker = CommitTracker::new();
                    let epochs: Vec<_> = partitions
                        .iter()
                        .map(|p| tracker.assign(p.clone()))
                        .collect();
                    let mut completed = 0;
                    let mut delivered = 0i64;
                    for (partition, offset) in &order {
                        // Deliver ahead of completions, as the loop does (a window in flight).
                        while delivered <= *offset {
                            let p = (delivered % 4) as usize;
                            tracker.delivered(&partitions[p], epochs[p], delivered, now);
                            delivered += 1;
                        }
                        tracker.completed(&partitions[*partition], epochs[*partition], *offset);
                        completed += 1;
                        if completed % 1024 == 0 {
                            black_box(tracker.committable());
                        }
                    }
                    black_box(tracker.committable())
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
