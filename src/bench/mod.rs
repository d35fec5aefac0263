//! `bookworm bench`: the end-to-end capacity benchmark behind `docs/performance.md`.
//!
//! Each grid point starts the real binaries (the simulator, `worker`s, a `graph-writer` and
//! `bookworm serve`, found next to the running `bookworm`) as separate processes against the
//! real Kafka, Redis, Neo4j and Squid proxies, with its own topics, consumer groups, limiter
//! keys and simulator `--id-base`, so points never share state with each other or with tests
//! running on the same stack. It seeds one crawl, waits for `done` and then for the graph
//! writer to have written every message, and measures from outside: wall times, the
//! services' own Prometheus counters, the simulator's request log, and `/proc` for CPU and
//! memory. [`report`] turns the rows into the CSV, the Markdown table, the plots and the
//! generated report. Wall-clock numbers depend on the machine; the report says which.
//!
//! A rate-limited point is also a politeness check: the simulator enforces Open Library's
//! limits (per client IP and per User-Agent), the workers get the per-egress rate and the
//! User-Agent budget explicitly, and the report sets the measured time beside the time those
//! limits allow ([`Expected`]) and the simulator's view of how we behaved (busiest minute per
//! IP and per User-Agent, 429s, 403s, IPs per User-Agent).

mod deploy;
pub mod fonts;
mod grid;
mod plots;
mod point;
pub mod probe;
pub mod report;
pub mod scale;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use self::deploy::*;
use self::grid::parse_limit;
pub use self::grid::{Binds, Expected, GridPoint, Limit, grid};
use self::point::*;
use self::probe::{Metrics, ProcSample};

/// Why a benchmark run stopped; every variant ends the run (a benchmark has no one to retry
/// for it), and names what to look at.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A binary could not be found or started.
    #[error("cannot start {what}: {detail}")]
    Spawn {
        /// Which process.
        what: String,
        /// Why.
        detail: String,
    },
    /// A process or service did not reach the expected state in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it waited.
        after: Duration,
    },
    /// A child process exited while the point was running (see its log).
    #[error("{what} exited early ({status}); log: {log}")]
    Exited {
        /// Which process.
        what: String,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: String,
    },
    /// A service answered something unexpected.
    #[error("{what}: {detail}")]
    Http {
        /// Which request.
        what: String,
        /// What went wrong.
        detail: String,
    },
    /// `/proc/<pid>` could not be read.
    #[error("reading /proc/{pid}: {detail}")]
    Proc {
        /// The process.
        pid: u32,
        /// What failed.
        detail: String,
    },
    /// Kafka metadata could not be read.
    #[error("kafka: {0}")]
    Kafka(String),
    /// Writing the outputs failed.
    #[error("writing {path}: {detail}")]
    Output {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
    /// The flags describe no runnable grid.
    #[error("bad arguments: {0}")]
    Args(String),
}

/// Which grid to run when no axis flag narrows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GridPreset {
    /// A handful of points that answer the capacity questions in about 20 minutes on two
    /// cores: scaling with workers and concurrency unlimited, waiting-bound latencies, and
    /// the rate-limited crawl against its expected time (the politeness grid, and two and
    /// one proxies, where the proxies' budget binds instead of the User-Agent's).
    Reduced,
    /// Every combination of the axes' full values (162 points; hours).
    Full,
    /// Open Library's limits only: 1, 4 and 8 worker processes through three proxies at
    /// 150/min each under the User-Agent budget, to show that adding workers adds no
    /// traffic past the budget (about 7 minutes).
    Politeness,
}

/// Settings of `bookworm bench`. Service addresses come from the environment that
/// `eval "$(scripts/stack.sh env)"` sets; the children inherit it.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// The grid when no axis flag is given; any axis flag replaces it with the product of the
    /// given axes (an axis not given takes its first full-grid value).
    #[arg(long, value_enum, default_value = "reduced")]
    pub grid: GridPreset,
    /// `CONCURRENT_JOBS` values (full grid: 8,32,64).
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<u32>,
    /// Worker process counts (full grid: 1,2,4).
    #[arg(long, value_delimiter = ',')]
    pub workers: Vec<u32>,
    /// Proxy counts, taken from the front of `PROXY_POOL` (full grid: 1,2,3).
    #[arg(long, value_delimiter = ',')]
    pub proxies: Vec<u32>,
    /// Simulator latencies (full grid: 0ms,50ms,300ms).
    #[arg(long, value_delimiter = ',', value_parser = humantime::parse_duration)]
    pub latency: Vec<Duration>,
    /// Rate limits: `none`, or requests per minute per proxy (full grid: none,150).
    #[arg(long, value_delimiter = ',', value_parser = parse_limit)]
    pub limit: Vec<Limit>,
    /// Seed works of an unlimited point (the first N works of the catalogue, at `--depth`, in
    /// crawls of at most 100 seeds, the API's limit): many seeds keep the frontier wide from
    /// the first second.
    #[arg(long, default_value = "1500")]
    pub seeds: usize,
    /// Seed works of a rate-limited point's crawl: sized so three proxies at 150/min need
    /// one to two minutes.
    #[arg(long, default_value = "120")]
    pub limited_seeds: usize,
    /// Crawl depth. Depth 1 fetches the seeds and everything they name, stubs beyond: two
    /// levels, the second one wide.
    #[arg(long, default_value = "1")]
    pub depth: u32,
    /// Live works in the simulated catalogue.
    #[arg(long, default_value = "4000")]
    pub works: usize,
    /// Live authors in the simulated catalogue.
    #[arg(long, default_value = "1200")]
    pub authors: usize,
    /// Subjects in the simulated catalogue.
    #[arg(long, default_value = "300")]
    pub subjects: usize,
    /// The simulator's per-IP limit when a point is rate-limited (Open Library's: 180/min).
    #[arg(long, default_value = "180")]
    pub sim_rate_per_minute: u32,
    /// The simulator's burst when a point is rate-limited (Open Library's: 25).
    #[arg(long, default_value = "25")]
    pub sim_burst: u32,
    /// The simulator's per-User-Agent limit when a point is rate-limited (Open Library's:
    /// 400/min across all IPs).
    #[arg(long, default_value = "400")]
    pub sim_ua_rate_per_minute: u32,
    /// The workers' `USER_AGENT_RATE_PER_MINUTE` at a rate-limited point: one budget for
    /// every request under our User-Agent. Passed explicitly, so the expected time does not
    /// change with the worker's default (360: under Open Library's 400 with room for the
    /// burst).
    #[arg(long, default_value = "360", value_parser = crate::config::parse_positive_u32)]
    pub user_agent_rate_per_minute: u32,
    /// The graph writer's `GRAPH_BATCH_SIZE`.
    #[arg(long, default_value = "5000")]
    pub graph_batch_size: u32,
    /// Partitions of each point's topics: at least the most workers of any point.
    #[arg(long, default_value = "12")]
    pub partitions: u32,
    /// Bound on one point, from start to the graph writer's last write; a point past it is
    /// recorded as failed and the run goes on.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub point_timeout: Duration,
    /// The proxies and Kafka every point uses.
    #[command(flatten)]
    pub targets: BenchTargets,
    /// Where `scripts/stack.sh` keeps `kafka.pid` and `neo4j.pid`, to read their `/proc`.
    #[arg(long, default_value = ".stack/run")]
    pub stack_run_dir: PathBuf,
    /// Directory of the CSV and the plots.
    #[arg(long, default_value = "docs/perf")]
    pub out_dir: PathBuf,
    /// The generated report (its hand-written reading section, below the marker, is kept).
    #[arg(long, default_value = "docs/performance.md")]
    pub report: PathBuf,
    /// Directory of the children's logs (default: a fresh one under the temp dir).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
}

/// What the grid and the scale points run against: the egress proxies and Kafka.
#[derive(Args, Debug, Clone)]
pub struct BenchTargets {
    /// All proxies of the stack; a point with N proxies uses the first N (a scale point all
    /// of them). Parsed as the worker parses it; the default is the local stack's three Squids.
    #[arg(
        long,
        env = "PROXY_POOL",
        default_value = "http://127.0.0.1:3128,http://127.0.0.1:3129,http://127.0.0.1:3130",
        value_parser = crate::config::parse_proxy_pool
    )]
    pub proxy_pool: crate::config::ProxyPool,
    /// Kafka, for the points' topics and their message counts.
    #[command(flatten)]
    pub brokers: crate::config::BrokerArgs,
}

/// Resource use of one process over a point.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU seconds spent between the seed and the graph writer's last write.
    pub cpu_seconds: f64,
    /// Peak resident memory in MiB (`VmHWM` for our processes; the highest sampled `VmRSS`
    /// for Kafka and Neo4j, whose lifetime peak predates the point).
    pub peak_rss_mib: f64,
}

/// What one grid point measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    /// The point.
    pub point: Option<GridPoint>,
    /// Empty when the point ran to the end; otherwise why it did not.
    pub error: String,
    /// Seed works, over as many crawls as the API's per-crawl seed limit needs.
    pub seeds: usize,
    /// Requests the simulator received (Open Library paths, robots.txt included).
    pub requests: u64,
    /// Of which answered 429.
    pub rate_limited: u64,
    /// Of which answered 403 (a blocked User-Agent): never, unless something is wrong.
    pub blocked: u64,
    /// The most requests the simulator received from one client IP in any 60 s.
    pub max_ip_requests_in_60s: u64,
    /// The most requests it received under one User-Agent in any 60 s, all IPs together.
    pub max_user_agent_requests_in_60s: u64,
    /// The most distinct client IPs one User-Agent came from (Open Library asks for < 5).
    pub ips_per_user_agent: u64,
    /// Jobs the workers received.
    pub jobs: u64,
    /// Nodes fetched (the crawl's counter).
    pub fetched: u64,
    /// Relationships found (the crawl's counter).
    pub edges: u64,
    /// Node rows the graph writer committed.
    pub nodes_written: u64,
    /// Relationship rows the graph writer committed.
    pub edges_written: u64,
    /// Seconds from creating the crawl to `done`.
    pub seconds_to_done: f64,
    /// Seconds from creating the crawl to the graph writer's last write.
    pub seconds_to_written: f64,
    /// Share of the machine's cores busy from the seed to `done` (every process, ours,
    /// the stack's and any other tenant's): near 1.0 means the point was CPU-bound.
    pub machine_cpu_busy: Option<f64>,
    /// For a rate-limited point: the fastest its limits allow, and which one binds.
    pub expected: Option<Expected>,
    /// Fetch latency percentiles in milliseconds (rate-limit waits included).
    pub fetch_p50_ms: Option<f64>,
    /// 90th percentile.
    pub fetch_p90_ms: Option<f64>,
    /// 99th percentile.
    pub fetch_p99_ms: Option<f64>,
    /// All workers together.
    pub workers: Usage,
    /// The graph writer.
    pub writer: Usage,
    /// The API.
    pub api: Usage,
    /// The simulator.
    pub sim: Usage,
    /// The Kafka broker (shared with whatever else uses the stack).
    pub kafka: Option<Usage>,
    /// Neo4j (shared likewise).
    pub neo4j: Option<Usage>,
}

impl Row {
    /// Jobs per second until `done`.
    pub fn jobs_per_second(&self) -> f64 {
        ratio(self.jobs as f64, self.seconds_to_done)
    }
    /// Nodes per second into Neo4j, until the last write.
    pub fn nodes_per_second(&self) -> f64 {
        ratio(self.nodes_written as f64, self.seconds_to_written)
    }
    /// Relationships per second into Neo4j, until the last write.
    pub fn edges_per_second(&self) -> f64 {
        ratio(self.edges_written as f64, self.seconds_to_written)
    }
    /// Share of one core each worker process used until `done` (1.0 = a full core).
    pub fn worker_cpu_utilisation(&self) -> f64 {
        let workers = self.point.map(|p| p.workers).unwrap_or(1).max(1);
        ratio(
            self.workers.cpu_seconds,
            self.seconds_to_done * f64::from(workers),
        )
    }
    /// Measured time to `done` over the expected one, for a rate-limited point.
    pub fn over_expected(&self) -> Option<f64> {
        self.expected
            .map(|expected| ratio(self.seconds_to_done, expected.seconds))
    }

    /// Requests per minute until `done`, as the simulator received them.
    pub fn requests_per_minute(&self) -> f64 {
        ratio(self.requests as f64 * 60.0, self.seconds_to_done)
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// Runs every point of the grid in turn and writes the outputs after each one, so an
/// interrupted run still leaves the points it finished.
pub async fn run(args: BenchArgs, command_line: String) -> Result<Vec<Row>, BenchError> {
    let points = grid(&args);
    if points.is_empty() {
        return Err(BenchError::Args("the grid is empty".to_owned()));
    }
    let pool = pool_names(&args.targets.proxy_pool);
    if let Some(p) = points.iter().find(|p| p.proxies as usize > pool.len()) {
        return Err(BenchError::Args(format!(
            "a point needs {} proxies but PROXY_POOL has {}",
            p.proxies,
            pool.len()
        )));
    }
    let bin_dir = bin_dir()?;
    let log_dir = args
        .log_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("bookworm-bench-{}", stamp_micros())));
    std::fs::create_dir_all(&log_dir).map_err(|e| BenchError::Output {
        path: log_dir.display().to_string(),
        detail: e.to_string(),
    })?;
    tracing::info!(points = points.len(), logs = %log_dir.display(), "bench starting");
    let mut rows = Vec::new();
    for (index, point) in points.iter().enumerate() {
        tracing::info!(index, ?point, "grid point starting");
        let ctx = PointContext {
            args: &args,
            bin_dir: &bin_dir,
            log_dir: &log_dir,
            pool: &pool,
            index,
            env: &[],
        };
        let base = unique("bench", index);
        let topics = Topics::named(&base);
        let run = run_point(&ctx, *point, &base, &topics);
        let row = match tokio::time::timeout(args.point_timeout, run).await {
            Ok(Ok(row)) => row,
            Ok(Err(e)) => failed_row(*point, e.to_string()),
            Err(_) => failed_row(
                *point,
                format!("point timed out after {:?}", args.point_timeout),
            ),
        };
        // Every point makes five topics; a full grid left behind would hold a broker's
        // file descriptors (three per partition) past a common limit of 20,000.
        if let Err(e) = crate::kafka::delete_topics(&args.targets.brokers, &topics.names()).await {
            tracing::warn!(index, error = %e, "cannot delete the point's topics");
        }
        if row.error.is_empty() {
            tracing::info!(
                index,
                seconds_to_done = row.seconds_to_done,
                jobs_per_second = row.jobs_per_second(),
                requests = row.requests,
                rate_limited = row.rate_limited,
                "grid point done"
            );
        } else {
            tracing::warn!(index, error = %row.error, "grid point failed");
        }
        rows.push(row);
        report::write_all(&args, &rows, &command_line)?;
    }
    Ok(rows)
}

/// The proxies of `PROXY_POOL` as the workers are given them.
fn pool_names(pool: &crate::config::ProxyPool) -> Vec<String> {
    pool.0
        .iter()
        .map(|spec| match spec {
            crate::config::EgressSpec::Direct => "direct".to_owned(),
            crate::config::EgressSpec::Proxy(url) => url.as_str().trim_end_matches('/').to_owned(),
        })
        .collect()
}

/// The directory of the running `bookworm`, where the other binaries are.
fn bin_dir() -> Result<PathBuf, BenchError> {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .ok_or_else(|| BenchError::Spawn {
            what: "bench".to_owned(),
            detail: "cannot locate the running executable's directory".to_owned(),
        })
}

fn failed_row(point: GridPoint, error: String) -> Row {
    Row {
        point: Some(point),
        error,
        ..Row::default()
    }
}

fn stamp_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default()
}

/// Names no earlier point or run used: topics, groups, limiter keys.
fn unique(prefix: &str, index: usize) -> String {
    format!("{prefix}-{}-{}-{index}", std::process::id(), stamp_micros())
}

/// An id base no earlier run used, so a point's keys are its own in the shared Neo4j (Open
/// Library's ids are up to eight digits; these sit far above them).
fn fresh_id_base() -> u64 {
    1_000_000_000 + (stamp_micros() as u64 % 1_000_000_000) * 1000
}

fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::Spawn {
            what: "a free port".to_owned(),
            detail: e.to_string(),
        })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    pub(super) struct Cli {
        #[command(flatten)]
        pub(super) bench: BenchArgs,
    }

    fn args(flags: &[&str]) -> BenchArgs {
        Cli::parse_from(std::iter::once("bench").chain(flags.iter().copied())).bench
    }

    #[test]
    fn the_full_grid_is_every_combination() {
        assert_eq!(grid(&args(&["--grid", "full"])).len(), 162);
    }

    #[test]
    fn axis_flags_replace_the_preset_with_their_product() {
        let points = grid(&args(&["--workers", "1,2", "--limit", "none,150"]));
        assert_eq!(points.len(), 4);
        assert!(points.iter().all(|p| p.concurrency == 8 && p.proxies == 3));
        assert!(points.contains(&GridPoint {
            workers: 2,
            concurrency: 8,
            proxies: 3,
            latency: Duration::ZERO,
            limit: Limit::PerMinute(150),
        }));
    }

    #[test]
    fn the_reduced_grid_has_rate_limited_and_unlimited_points() {
        let points = grid(&args(&[]));
        assert!(points.iter().any(|p| p.limit == Limit::None));
        assert!(points.iter().any(|p| p.limit == Limit::PerMinute(150)));
        assert!(points.iter().any(|p| p.concurrency == 64));
    }

    #[test]
    fn the_politeness_grid_is_1_4_and_8_workers_through_three_proxies() {
        let points = grid(&args(&["--grid", "politeness"]));
        assert_eq!(
            points.iter().map(|p| p.workers).collect::<Vec<_>>(),
            [1, 4, 8]
        );
        assert!(
            points
                .iter()
                .all(|p| p.proxies == 3 && p.limit == Limit::PerMinute(150))
        );
        let reduced = grid(&args(&[]));
        assert!(points.iter().all(|p| reduced.contains(p)));
    }

    /// Three proxies at 150/min would send 450/min: the 360 budget binds. Two send 300:
    /// the proxies bind.
    #[test]
    fn the_expected_time_takes_the_lower_of_the_two_budgets() {
        let by_agent = Expected::new(720, 3, 150, 360, (180, 400));
        assert_eq!(
            (by_agent.per_minute(), by_agent.binds()),
            (360, Binds::UserAgent)
        );
        assert!((by_agent.seconds - 120.0).abs() < 1e-9);
        let by_ip = Expected::new(600, 2, 150, 360, (180, 400));
        assert_eq!((by_ip.per_minute(), by_ip.binds()), (300, Binds::PerIp));
        assert!((by_ip.seconds - 120.0).abs() < 1e-9);
        assert_eq!(
            Expected::new(1, 2, 180, 360, (180, 400)).binds(),
            Binds::Both
        );
        let row = Row {
            seconds_to_done: 132.0,
            expected: Some(by_agent),
            requests: 720,
            ..Row::default()
        };
        assert!((row.over_expected().unwrap_or_default() - 1.1).abs() < 1e-9);
        assert!((row.requests_per_minute() - 327.2727).abs() < 1e-3);
    }

    #[test]
    fn limits_parse_as_none_or_a_rate() {
        assert_eq!(parse_limit("none"), Ok(Limit::None));
        assert_eq!(parse_limit("150/min"), Ok(Limit::PerMinute(150)));
        assert!(parse_limit("0").is_err());
        assert!(parse_limit("fast").is_err());
    }
}
