//! `bookworm bench-scale`: does a crawl's cost per node stay flat as it grows?
//!
//! Each scale point is one crawl of a given size (`max_nodes`) against the simulator, with no
//! rate limit and a catalogue bigger than the crawl, run by the grid's deployment (the real
//! binaries as separate processes). It reads what each component paid: Redis `used_memory`
//! before the crawl, at `done` and after the crawl's working state expired (`CRAWL_RETENTION`
//! set short for the point), the growth of Neo4j's store files (after a checkpoint), the bytes
//! of the point's Kafka log segments, CPU seconds and peak resident memory of every process.
//! Divided by the nodes fetched, the costs of a 10 k, a 100 k and a 1 M node crawl should be
//! the same; [`write_report`] prints the ratios of the largest point to the smallest.
//!
//! Run it against a stack of its own (`scripts/bench.sh scale` starts one beside the test
//! stack), so the Redis, Neo4j and Kafka deltas are the crawl's and nobody else's.

use clap::FromArgMatches;

mod report;

pub use self::report::write_report;

use super::*;
use crate::crawl::store::MemoryWatch;

/// Settings of `bookworm bench-scale`. Service addresses come from the environment
/// (`eval "$(STACK_DIR=… scripts/stack.sh env)"`); the children inherit it.
#[derive(Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Crawl sizes, in nodes: each point's crawl has this `max_nodes`.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub nodes: Vec<u64>,
    /// Worker processes.
    #[arg(long, default_value = "2")]
    pub workers: u32,
    /// `CONCURRENT_JOBS` of each worker.
    #[arg(long, default_value = "64")]
    pub concurrency: u32,
    /// Seed works of each point's crawl (the API takes at most 100).
    #[arg(long, default_value = "100")]
    pub seeds: usize,
    /// The crawl's depth: deep enough that `max_nodes`, not the depth, ends it.
    #[arg(long, default_value = "10")]
    pub depth: u32,
    /// `CRAWL_RETENTION` of the point's services: the point waits this long after `done`,
    /// and until Redis has expired the crawl's working state, before its last Redis reading.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// Partitions of each point's topics.
    #[arg(long, default_value = "12")]
    pub partitions: u32,
    /// The graph writer's `GRAPH_BATCH_SIZE`.
    #[arg(long, default_value = "5000")]
    pub graph_batch_size: u32,
    /// Bound on one point, from start to the last reading.
    #[arg(long, default_value = "4h", value_parser = humantime::parse_duration)]
    pub point_timeout: Duration,
    /// The proxies (all of them used by every point) and Kafka.
    #[command(flatten)]
    pub targets: BenchTargets,
    /// Redis, for `INFO memory` and the crawl's keys.
    #[command(flatten)]
    pub redis: crate::config::RedisArgs,
    /// The stack's directory (`STACK_DIR` of `scripts/stack.sh`): `run/<svc>.pid` for the
    /// services' `/proc`, `data/` for Kafka's and Neo4j's bytes on disk.
    #[arg(long, default_value = ".stack")]
    pub stack_dir: PathBuf,
    /// The stack's `STACK_PORT_OFFSET`, for restarting its Neo4j.
    #[arg(long, env = "STACK_PORT_OFFSET", default_value = "0")]
    pub stack_port_offset: u16,
    /// `scripts/stack.sh`, which stops Neo4j before each reading of its store (a clean
    /// shutdown is the checkpoint Community Edition offers) and starts it again.
    #[arg(long, default_value = "scripts/stack.sh")]
    pub stack_script: PathBuf,
    /// Where `scale.csv` and `scale.md` are written.
    #[arg(long, default_value = "docs/perf")]
    pub out_dir: PathBuf,
    /// Directory of the children's logs (default: a fresh one under the temp dir).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
}

/// The simulated catalogue of a point: about 1.7 records per node of the crawl, so the crawl
/// ends on its `max_nodes`, never on running out of records.
fn catalogue_for(nodes: u64) -> (u64, u64, u64) {
    let works = nodes * 2 / 5 + 100;
    let authors = nodes / 8 + 50;
    let subjects = (nodes / 500).clamp(300, 5000);
    (works, authors, subjects)
}

impl ScaleArgs {
    /// The grid's settings for a point of `nodes`: its defaults, this run's sizes and pool.
    fn grid_args(&self, nodes: u64) -> Result<BenchArgs, BenchError> {
        let (works, authors, subjects) = catalogue_for(nodes);
        let flags = [
            "bench".to_owned(),
            format!("--works={works}"),
            format!("--authors={authors}"),
            format!("--subjects={subjects}"),
            format!("--depth={}", self.depth),
            format!("--partitions={}", self.partitions),
            format!("--graph-batch-size={}", self.graph_batch_size),
        ];
        let matches = BenchArgs::augment_args(clap::Command::new("bench"))
            .try_get_matches_from(flags)
            .map_err(|e| BenchError::Args(e.to_string()))?;
        let mut args =
            BenchArgs::from_arg_matches(&matches).map_err(|e| BenchError::Args(e.to_string()))?;
        args.targets = self.targets.clone();
        Ok(args)
    }
}

/// What one scale point measured. Bytes are deltas over the point unless named otherwise.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScaleRow {
    /// The crawl's `max_nodes`.
    pub target_nodes: u64,
    /// Empty when the point ran to the end; otherwise why it did not.
    pub error: String,
    /// Nodes fetched (the crawl's counter): the divisor of every per-node cost.
    pub fetched: u64,
    /// Relationships found.
    pub edges: u64,
    /// Jobs the workers received.
    pub jobs: u64,
    /// Seconds from creating the crawl to `done`.
    pub seconds_to_done: f64,
    /// Seconds from creating the crawl to the graph writer's last write.
    pub seconds_to_written: f64,
    /// Redis `used_memory` before the crawl.
    pub redis_before: u64,
    /// At `done`: the crawl's working state and summary.
    pub redis_at_done: u64,
    /// After the working state expired: the summary only.
    pub redis_after_retention: u64,
    /// What the crawl's keys hold at `done` (working state and summary), by `MEMORY USAGE`:
    /// the part of `redis_at_done` that is the crawl's own.
    pub crawl_state_bytes: u64,
    /// What the crawl's remaining keys (its summary) hold, by `MEMORY USAGE`.
    pub summary_bytes: u64,
    /// Growth of Neo4j's store files, each reading taken after a checkpoint (until one, new
    /// records live in the page cache and the transaction log, whose files are preallocated).
    pub neo4j_store_bytes: i64,
    /// Bytes of the point's Kafka log segments (all five topics).
    pub kafka_log_bytes: u64,
    /// Per process: CPU seconds and peak RSS over the point.
    pub usage: Vec<(String, Usage)>,
}

impl ScaleRow {
    /// Redis bytes per fetched node while the crawl's state is held.
    pub fn redis_per_node(&self) -> f64 {
        ratio(
            self.redis_at_done as f64 - self.redis_before as f64,
            self.fetched as f64,
        )
    }
    /// Bytes of the crawl's own keys at `done` per fetched node.
    pub fn crawl_state_per_node(&self) -> f64 {
        ratio(self.crawl_state_bytes as f64, self.fetched as f64)
    }
    /// What the crawl left in Redis after its retention: its summary (and allocator slack).
    pub fn redis_left(&self) -> i64 {
        self.redis_after_retention as i64 - self.redis_before as i64
    }
    /// Neo4j store bytes per fetched node.
    pub fn neo4j_per_node(&self) -> f64 {
        ratio(self.neo4j_store_bytes as f64, self.fetched as f64)
    }
    /// Kafka log bytes per fetched node.
    pub fn kafka_per_node(&self) -> f64 {
        ratio(self.kafka_log_bytes as f64, self.fetched as f64)
    }
    /// CPU milliseconds per fetched node of the named process.
    pub fn cpu_ms_per_node(&self, process: &str) -> f64 {
        let seconds = self
            .usage
            .iter()
            .find(|(name, _)| name == process)
            .map_or(0.0, |(_, u)| u.cpu_seconds);
        ratio(seconds * 1000.0, self.fetched as f64)
    }
    /// Peak RSS in MiB of the named process.
    pub fn peak_rss_mib(&self, process: &str) -> f64 {
        self.usage
            .iter()
            .find(|(name, _)| name == process)
            .map_or(0.0, |(_, u)| u.peak_rss_mib)
    }
}

/// The processes a row reports, in its columns' order.
pub const PROCESSES: [&str; 7] = [
    "worker",
    "graph-writer",
    "api",
    "sim",
    "kafka",
    "neo4j",
    "redis",
];

/// Runs every scale point in turn, writing the report after each one.
pub async fn run(args: ScaleArgs, command_line: String) -> Result<Vec<ScaleRow>, BenchError> {
    if args.nodes.is_empty() {
        return Err(BenchError::Args("--nodes is empty".to_owned()));
    }
    let pool = pool_names(&args.targets.proxy_pool);
    let bin_dir = bin_dir()?;
    let log_dir = args
        .log_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("bookworm-scale-{}", stamp_micros())));
    std::fs::create_dir_all(&log_dir).map_err(|e| BenchError::Output {
        path: log_dir.display().to_string(),
        detail: e.to_string(),
    })?;
    // Works expand to their editions, so the crawl has all three record labels.
    let env = [
        (
            "CRAWL_RETENTION".to_owned(),
            humantime::format_duration(args.retention).to_string(),
        ),
        ("CRAWL_EDITIONS".to_owned(), "true".to_owned()),
    ];
    let mut rows = Vec::new();
    for (index, &nodes) in args.nodes.iter().enumerate() {
        tracing::info!(index, nodes, logs = %log_dir.display(), "scale point starting");
        let grid_args = args.grid_args(nodes)?;
        let ctx = PointContext {
            args: &grid_args,
            bin_dir: &bin_dir,
            log_dir: &log_dir,
            pool: &pool,
            index,
            env: &env,
        };
        let base = unique("scale", index);
        let topics = Topics::named(&base);
        let row = match tokio::time::timeout(
            args.point_timeout,
            scale_point(&ctx, &args, nodes, &base, &topics),
        )
        .await
        {
            Ok(Ok(row)) => row,
            Ok(Err(e)) => ScaleRow {
                target_nodes: nodes,
                error: e.to_string(),
                ..ScaleRow::default()
            },
            Err(_) => ScaleRow {
                target_nodes: nodes,
                error: format!("point timed out after {:?}", args.point_timeout),
                ..ScaleRow::default()
            },
        };
        if let Err(e) = crate::kafka::delete_topics(&args.targets.brokers, &topics.names()).await {
            tracing::warn!(index, error = %e, "cannot delete the point's topics");
        }
        tracing::info!(index, nodes, fetched = row.fetched, error = %row.error, "scale point over");
        rows.push(row);
        write_report(&args.out_dir, &rows, &command_line)?;
    }
    Ok(rows)
}

async fn scale_point(
    ctx: &PointContext<'_>,
    args: &ScaleArgs,
    nodes: u64,
    base: &str,
    topics: &Topics,
) -> Result<ScaleRow, BenchError> {
    let redis_error = |e: redis::RedisError| BenchError::Http {
        what: "redis".to_owned(),
        detail: e.to_string(),
    };
    let mut redis = crate::backend::redis_connection(&args.redis)
        .await
        .map_err(redis_error)?;
    let memory = MemoryWatch::default();
    create_topics(ctx, topics).await?;
    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .map_err(|e| http_error("client", e))?;
    let point = GridPoint {
        workers: args.workers,
        concurrency: args.concurrency,
        proxies: ctx.pool.len() as u32,
        latency: Duration::ZERO,
        limit: Limit::None,
    };
    // Before the deployment: reading the store restarts Neo4j.
    let neo4j_data = args.stack_dir.join("data/neo4j/home/data");
    let store_before = store_bytes(args, &neo4j_data).await?;
    let id_base = fresh_id_base();
    let mut deployment = deploy(ctx, point, topics, base, id_base)?;
    wait_ready(&http, &mut deployment).await?;

    let run_dir = args.stack_dir.join("run");
    let mut processes: Vec<(String, u32)> = deployment
        .workers
        .iter()
        .map(|w| ("worker".to_owned(), w.pid))
        .collect();
    processes.extend([
        ("graph-writer".to_owned(), deployment.writer.pid),
        ("api".to_owned(), deployment.api.pid),
        ("sim".to_owned(), deployment.sim.pid),
    ]);
    for service in ["kafka", "neo4j", "redis"] {
        processes.extend(read_pid(&run_dir, service).map(|pid| (service.to_owned(), pid)));
    }
    let mut peaks = Peaks::start(&processes)?;
    let redis_before = memory.refresh(&mut redis).await.map_err(redis_error)?.used;

    let seeds: Vec<String> = (1..=args.seeds as u64)
        .map(|i| format!("/works/OL{}W", id_base + i))
        .collect();
    let started = Instant::now();
    let body = json!({"seeds": seeds, "max_depth": args.depth, "max_nodes": nodes});
    let crawl_id = create_crawl(&http, &deployment.api_url, &body).await?;
    let ids = [crawl_id.clone()];
    let statuses = until_done(&http, &mut deployment, &ids, |d| {
        peaks.sample();
        d.check_alive()
    })
    .await?;
    let seconds_to_done = started.elapsed().as_secs_f64();
    let redis_at_done = memory.refresh(&mut redis).await.map_err(redis_error)?.used;
    let (_, crawl_state_bytes) = crawl_keys(&mut redis, &crawl_id)
        .await
        .map_err(redis_error)?;
    until_written(ctx.args, topics, &http, &mut deployment, |d| {
        peaks.sample();
        d.check_alive()
    })
    .await?;
    let seconds_to_written = started.elapsed().as_secs_f64();
    peaks.sample();
    let usage = peaks.finish();
    let mut jobs = 0.0;
    for url in &deployment.worker_urls {
        jobs += scrape(&http, url)
            .await?
            .sum("relentless_worker_jobs_received_total", &[]);
    }
    drop(deployment);

    let kafka_log_bytes = topics
        .names()
        .iter()
        .map(|topic| kafka_topic_bytes(&args.stack_dir.join("data/kafka/log"), topic))
        .sum();
    let neo4j_store_bytes = store_bytes(args, &neo4j_data).await? as i64 - store_before as i64;
    let summary_bytes = until_expired(&mut redis, &crawl_id, args.retention)
        .await
        .map_err(redis_error)?;
    let redis_after_retention = memory.refresh(&mut redis).await.map_err(redis_error)?.used;
    let status = statuses.first().cloned().unwrap_or_default();
    let counter = |name: &str| status["counters"][name].as_u64().unwrap_or_default();
    Ok(ScaleRow {
        target_nodes: nodes,
        error: String::new(),
        fetched: counter("fetched"),
        edges: counter("edges"),
        jobs: jobs as u64,
        seconds_to_done,
        seconds_to_written,
        redis_before,
        redis_at_done,
        redis_after_retention,
        crawl_state_bytes,
        summary_bytes,
        neo4j_store_bytes,
        kafka_log_bytes,
        usage,
    })
}

/// CPU at the start and the highest resident memory seen of each process of a point.
struct Peaks {
    processes: Vec<(String, u32, ProcSample, u64)>,
}

impl Peaks {
    fn start(processes: &[(String, u32)]) -> Result<Peaks, BenchError> {
        let processes = processes
            .iter()
            .map(|(name, pid)| Ok((name.clone(), *pid, probe::sample(*pid)?, 0)))
            .collect::<Result<_, BenchError>>()?;
        Ok(Peaks { processes })
    }

    /// Samples every process's resident memory (a process gone keeps its last peak).
    fn sample(&mut self) {
        for (_, pid, _, peak) in &mut self.processes {
            if let Ok(now) = probe::sample(*pid) {
                *peak = (*peak).max(now.rss_bytes);
            }
        }
    }

    /// CPU seconds since [`Peaks::start`] and peak RSS, one entry per process name: the
    /// workers' CPU summed, their peak the largest.
    fn finish(&self) -> Vec<(String, Usage)> {
        let mut usage: Vec<(String, Usage)> = Vec::new();
        for (name, pid, start, peak) in &self.processes {
            let end = probe::sample(*pid).unwrap_or(*start);
            let this = Usage {
                cpu_seconds: end.cpu_seconds - start.cpu_seconds,
                peak_rss_mib: mib((*peak).max(end.rss_bytes)),
            };
            match usage.iter_mut().find(|(n, _)| n == name) {
                Some((_, u)) => {
                    u.cpu_seconds += this.cpu_seconds;
                    u.peak_rss_mib = u.peak_rss_mib.max(this.peak_rss_mib);
                }
                None => usage.push((name.clone(), this)),
            }
        }
        usage
    }
}

/// The crawl's keys in Redis (they share the hash tag `{id}`): how many still carry an
/// expiry (its working state) and the bytes all of them hold (`MEMORY USAGE`).
async fn crawl_keys(
    redis: &mut redis::aio::ConnectionManager,
    crawl_id: &str,
) -> Result<(usize, u64), redis::RedisError> {
    let pattern = format!("*{{{crawl_id}}}*");
    let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(redis).await?;
    let (mut expiring, mut bytes) = (0, 0);
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(redis).await?;
        expiring += usize::from(ttl >= 0);
        let usage: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query_async(redis)
            .await?;
        bytes += usage.unwrap_or_default();
    }
    Ok((expiring, bytes))
}

/// Waits until no key of the crawl has an expiry left: the working state is gone and only
/// the summary, which never expires, stays. Bounded by the retention plus two minutes (Redis
/// expires keys lazily and in sampled rounds). Returns the bytes the summary holds.
async fn until_expired(
    redis: &mut redis::aio::ConnectionManager,
    crawl_id: &str,
    retention: Duration,
) -> Result<u64, redis::RedisError> {
    let deadline = Instant::now() + retention + Duration::from_secs(120);
    loop {
        let (expiring, bytes) = crawl_keys(redis, crawl_id).await?;
        if expiring == 0 {
            return Ok(bytes);
        }
        if Instant::now() > deadline {
            tracing::warn!(
                crawl_id,
                expiring,
                "working keys still expiring at the deadline"
            );
            return Ok(bytes);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Bytes of Neo4j's store files, read while Neo4j is stopped: until a checkpoint, new records
/// live in the page cache and the (preallocated) transaction log, a clean shutdown is a
/// checkpoint, and Community Edition has no procedure that asks for one.
async fn store_bytes(args: &ScaleArgs, data_dir: &Path) -> Result<u64, BenchError> {
    stack_neo4j(args, "stop").await?;
    let bytes = dir_bytes(&data_dir.join("databases/neo4j"));
    stack_neo4j(args, "start").await?;
    Ok(bytes)
}

/// `scripts/stack.sh stop|start neo4j` on the point's stack.
async fn stack_neo4j(args: &ScaleArgs, verb: &str) -> Result<(), BenchError> {
    let failed = |detail: String| BenchError::Spawn {
        what: format!("{} {verb} neo4j", args.stack_script.display()),
        detail,
    };
    let output = Command::new("bash")
        .arg(&args.stack_script)
        .args([verb, "neo4j"])
        .env("STACK_DIR", &args.stack_dir)
        .env("STACK_PORT_OFFSET", args.stack_port_offset.to_string())
        .output()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    Ok(())
}

/// Bytes of the files under `dir` (0 when it does not exist).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes of a topic's log segments (`*.log` in `<topic>-<partition>/`), without the index
/// files Kafka preallocates.
fn kafka_topic_bytes(log_dir: &Path, topic: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(log_dir) else {
        return 0;
    };
    let prefix = format!("{topic}-");
    entries
        .flatten()
        .filter(|e| {
            e.file_name().to_str().is_some_and(|name| {
                name.strip_prefix(&prefix)
                    .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
            })
        })
        .flat_map(|partition| {
            std::fs::read_dir(partition.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|f| f.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|f| f.metadata().ok().map(|m| m.len()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn row(fetched: u64, scale: f64) -> ScaleRow {
        ScaleRow {
            target_nodes: fetched,
            fetched,
            redis_before: 1_000_000,
            redis_at_done: 1_000_000 + (fetched as f64 * 80.0 * scale) as u64,
            redis_after_retention: 1_000_500,
            kafka_log_bytes: fetched * 2_000,
            usage: vec![(
                "worker".to_owned(),
                Usage {
                    cpu_seconds: fetched as f64 * 0.002,
                    peak_rss_mib: 40.0,
                },
            )],
            ..ScaleRow::default()
        }
    }

    #[test]
    fn per_node_costs_divide_by_the_nodes_fetched() {
        let r = row(10_000, 1.0);
        assert!((r.redis_per_node() - 80.0).abs() < 1e-9);
        assert_eq!(r.redis_left(), 500);
        assert!((r.kafka_per_node() - 2_000.0).abs() < 1e-9);
        assert!((r.cpu_ms_per_node("worker") - 2.0).abs() < 1e-9);
        assert_eq!(r.cpu_ms_per_node("redis"), 0.0);
    }

    #[test]
    fn the_catalogue_outgrows_the_crawl() {
        for nodes in [10_000, 100_000, 1_000_000] {
            let (works, authors, subjects) = catalogue_for(nodes);
            // Each work has three editions in the simulator.
            assert!(works * 4 + authors + subjects > nodes * 3 / 2, "{nodes}");
        }
    }
}
