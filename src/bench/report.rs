//! The benchmark's outputs: `bench.csv` (every measured column), a Markdown table, four PNG
//! plots drawn with `plotters` (unlimited and rate-limited points apart, the legend beside
//! the data, one colour per series), and `docs/performance.md` generated around them. The report's
//! hand-written reading section sits below [`READING_MARKER`] and is carried over when the
//! report is regenerated, so rerunning the tool never erases the analysis.

use std::fmt::Write as _;
use std::path::Path;

use super::plots;
use super::{BenchArgs, BenchError, Limit, Row};

/// Everything below this line in the report is hand-written and kept across runs.
pub const READING_MARKER: &str =
    "<!-- hand-written reading below: kept when bookworm bench regenerates this file -->";

/// File names inside the output directory.
pub const CSV: &str = "bench.csv";
/// The Markdown table alone.
pub const TABLE: &str = "bench.md";
/// Throughput of the unlimited points against worker processes.
pub const PLOT_THROUGHPUT: &str = "throughput-vs-workers.png";
/// Request rate of the rate-limited points against worker processes, with what the limits
/// allow.
pub const PLOT_LIMITED: &str = "rate-limited-vs-workers.png";
/// Time to `done` of the rate-limited points against the expected time.
pub const PLOT_EXPECTED: &str = "time-to-done-vs-expected.png";
/// Worker peak RSS against `CONCURRENT_JOBS`.
pub const PLOT_RSS: &str = "rss-vs-concurrency.png";

/// Writes the CSV, the table, the plots and the report.
pub fn write_all(args: &BenchArgs, rows: &[Row], command_line: &str) -> Result<(), BenchError> {
    let out = &args.out_dir;
    std::fs::create_dir_all(out).map_err(|e| output_error(out, e))?;
    write(&out.join(CSV), &csv(rows))?;
    write(&out.join(TABLE), &markdown_table(rows))?;
    plots::throughput(&out.join(PLOT_THROUGHPUT), rows)?;
    plots::limited(&out.join(PLOT_LIMITED), rows)?;
    plots::expected(&out.join(PLOT_EXPECTED), rows)?;
    plots::rss(&out.join(PLOT_RSS), rows)?;
    let kept = std::fs::read_to_string(&args.report)
        .ok()
        .and_then(|old| {
            old.split_once(READING_MARKER)
                .map(|(_, reading)| reading.to_owned())
        })
        .unwrap_or_else(|| "\n\n## Reading\n\n(To be written after a run.)\n".to_owned());
    let images = relative(&args.report, out);
    let report = format!(
        "{}{READING_MARKER}{kept}",
        generated_report(rows, command_line, &images, args.graph_batch_size)
    );
    if let Some(dir) = args.report.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| output_error(dir, e))?;
    }
    write(&args.report, &report)
}

fn output_error(path: &Path, e: impl std::fmt::Display) -> BenchError {
    BenchError::Output {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|e| output_error(path, e))
}

/// The output directory as the report links it: relative to the report's directory when it
/// lies below it, as given otherwise.
fn relative(report: &Path, out: &Path) -> String {
    let dir = report.parent().unwrap_or(Path::new(""));
    out.strip_prefix(dir).unwrap_or(out).display().to_string()
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map(|v| format!("{v:.decimals$}")).unwrap_or_default()
}

/// The CSV header; [`csv`] writes one line per row in this order.
pub const CSV_HEADER: &[&str] = &[
    "workers",
    "concurrent_jobs",
    "proxies",
    "latency_ms",
    "limit_per_minute",
    "user_agent_budget_per_minute",
    "seeds",
    "requests",
    "rate_limited_429",
    "blocked_403",
    "max_ip_requests_in_60s",
    "max_user_agent_requests_in_60s",
    "ips_per_user_agent",
    "jobs",
    "fetched",
    "edges",
    "nodes_written",
    "edges_written",
    "seconds_to_done",
    "seconds_to_written",
    "expected_seconds",
    "binds",
    "measured_over_expected",
    "requests_per_minute",
    "jobs_per_s",
    "nodes_per_s",
    "edges_per_s",
    "fetch_p50_ms",
    "fetch_p90_ms",
    "fetch_p99_ms",
    "worker_cpu_s",
    "worker_cpu_utilisation",
    "worker_peak_rss_mib",
    "machine_cpu_busy",
    "writer_cpu_s",
    "writer_peak_rss_mib",
    "api_cpu_s",
    "api_peak_rss_mib",
    "sim_cpu_s",
    "sim_peak_rss_mib",
    "kafka_cpu_s",
    "kafka_rss_mib",
    "neo4j_cpu_s",
    "neo4j_rss_mib",
    "error",
];

/// Every row as CSV, with [`CSV_HEADER`].
pub fn csv(rows: &[Row]) -> String {
    let mut text = CSV_HEADER.join(",");
    text.push('\n');
    for row in rows {
        let Some(p) = row.point else { continue };
        let limit = match p.limit {
            Limit::None => String::new(),
            Limit::PerMinute(n) => n.to_string(),
        };
        let expected = row.expected;
        let cells = [
            p.workers.to_string(),
            p.concurrency.to_string(),
            p.proxies.to_string(),
            p.latency.as_millis().to_string(),
            limit,
            expected
                .map(|e| e.user_agent_per_minute.to_string())
                .unwrap_or_default(),
            row.seeds.to_string(),
            row.requests.to_string(),
            row.rate_limited.to_string(),
            row.blocked.to_string(),
            row.max_ip_requests_in_60s.to_string(),
            row.max_user_agent_requests_in_60s.to_string(),
            row.ips_per_user_agent.to_string(),
            row.jobs.to_string(),
            row.fetched.to_string(),
            row.edges.to_string(),
            row.nodes_written.to_string(),
            row.edges_written.to_string(),
            format!("{:.2}", row.seconds_to_done),
            format!("{:.2}", row.seconds_to_written),
            opt(expected.map(|e| e.seconds), 2),
            expected.map(|e| e.binds().to_string()).unwrap_or_default(),
            opt(row.over_expected(), 3),
            format!("{:.1}", row.requests_per_minute()),
            format!("{:.1}", row.jobs_per_second()),
            format!("{:.1}", row.nodes_per_second()),
            format!("{:.1}", row.edges_per_second()),
            opt(row.fetch_p50_ms, 1),
            opt(row.fetch_p90_ms, 1),
            opt(row.fetch_p99_ms, 1),
            format!("{:.2}", row.workers.cpu_seconds),
            format!("{:.3}", row.worker_cpu_utilisation()),
            format!("{:.1}", row.workers.peak_rss_mib),
            opt(row.machine_cpu_busy, 3),
            format!("{:.2}", row.writer.cpu_seconds),
            format!("{:.1}", row.writer.peak_rss_mib),
            format!("{:.2}", row.api.cpu_seconds),
            format!("{:.1}", row.api.peak_rss_mib),
            format!("{:.2}", row.sim.cpu_seconds),
            format!("{:.1}", row.sim.peak_rss_mib),
            opt(row.kafka.map(|u| u.cpu_seconds), 2),
            opt(row.kafka.map(|u| u.peak_rss_mib), 0),
            opt(row.neo4j.map(|u| u.cpu_seconds), 2),
            opt(row.neo4j.map(|u| u.peak_rss_mib), 0),
            // Errors are free text: no commas or newlines in a CSV cell.
            row.error.replace([',', '\n'], ";"),
        ];
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    text
}

/// The main columns as a Markdown table.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut text = String::from(
        "| workers | jobs | proxies | latency | limit | requests | 429s | to done s | expected s | binds | measured/expected | to written s | jobs/s | nodes/s | edges/s | fetch p50/p90/p99 ms | worker CPU s (util) | worker RSS MiB | writer CPU s | writer RSS MiB | sim CPU s | Kafka CPU s | Neo4j CPU s | machine busy | error |\n\
         |---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for row in rows {
        let Some(p) = row.point else { continue };
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} ms | {} | {} | {} | {:.1} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {}/{}/{} | {:.1} ({:.0}%) | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |",
            p.workers,
            p.concurrency,
            p.proxies,
            p.latency.as_millis(),
            p.limit,
            row.requests,
            row.rate_limited,
            row.seconds_to_done,
            opt(row.expected.map(|e| e.seconds), 1),
            row.expected
                .map(|e| e.binds().to_string())
                .unwrap_or_default(),
            opt(row.over_expected(), 2),
            row.seconds_to_written,
            row.jobs_per_second(),
            row.nodes_per_second(),
            row.edges_per_second(),
            opt(row.fetch_p50_ms, 0),
            opt(row.fetch_p90_ms, 0),
            opt(row.fetch_p99_ms, 0),
            row.workers.cpu_seconds,
            row.worker_cpu_utilisation() * 100.0,
            row.workers.peak_rss_mib,
            row.writer.cpu_seconds,
            row.writer.peak_rss_mib,
            row.sim.cpu_seconds,
            opt(row.kafka.map(|u| u.cpu_seconds), 1),
            opt(row.neo4j.map(|u| u.cpu_seconds), 1),
            row.machine_cpu_busy
                .map(|b| format!("{:.0}%", b * 100.0))
                .unwrap_or_default(),
            row.error.replace(['|', '\n'], " "),
        );
    }
    text
}

/// Whether a rate-limited point behaved: no 429 or 403, neither limit of the simulator
/// (Open Library's) exceeded in any minute, and fewer than five IPs under our User-Agent.
pub fn polite(row: &Row) -> bool {
    row.expected.is_some_and(|e| {
        row.rate_limited == 0
            && row.blocked == 0
            && row.max_ip_requests_in_60s <= u64::from(e.sim_ip_per_minute)
            && row.max_user_agent_requests_in_60s <= u64::from(e.sim_user_agent_per_minute)
            && row.ips_per_user_agent < 5
    })
}

/// The rate-limited points as the politeness table: what the limits allow against what was
/// measured, and how the simulator (standing in for Open Library) saw the crawler.
pub fn politeness_table(rows: &[Row]) -> String {
    let mut text = String::from(
        "| workers | jobs | proxies | per-IP rate | User-Agent budget | requests | expected s | binds | measured s | measured/expected | busiest 60 s per IP | busiest 60 s per User-Agent | 429s | 403s | IPs per User-Agent | polite |\n\
         |---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for row in rows.iter().filter(|r| r.error.is_empty()) {
        let (Some(p), Some(e)) = (row.point, row.expected) else {
            continue;
        };
        let _ = writeln!(
            text,
            "| {} | {} | {} | {}/min | {}/min | {} | {:.1} | {} ({}/min) | {:.1} | {:.2} | {} (limit {}) | {} (limit {}) | {} | {} | {} | {} |",
            p.workers,
            p.concurrency,
            p.proxies,
            e.per_ip_per_minute,
            e.user_agent_per_minute,
            row.requests,
            e.seconds,
            e.binds(),
            e.per_minute(),
            row.seconds_to_done,
            row.over_expected().unwrap_or_default(),
            row.max_ip_requests_in_60s,
            e.sim_ip_per_minute,
            row.max_user_agent_requests_in_60s,
            e.sim_user_agent_per_minute,
            row.rate_limited,
            row.blocked,
            row.ips_per_user_agent,
            if polite(row) { "yes" } else { "**no**" },
        );
    }
    text
}

/// The generated part of `docs/performance.md`: how it was made, the checks issue 9 asks
/// for computed from the rows, the table and the plots.
pub fn generated_report(
    rows: &[Row],
    command_line: &str,
    images: &str,
    graph_batch_size: u32,
) -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut text = format!(
        "# Performance\n\n\
         <!-- generated by `bookworm bench`; edit only the reading section at the end -->\n\n\
         Generated by `bookworm bench` on {date} ({cores} cores, shared with the stack: Kafka, \
         Neo4j, Redis and Squid run on the same machine). Reproduce with:\n\n\
         ```sh\n{command_line}\n```\n\n\
         Every point runs the real binaries as separate processes (simulator, workers, graph \
         writer, API) against the real services, with fresh topics, consumer groups, limiter keys \
         and simulator `--id-base`. *To done* runs from creating the crawl to its `done` state; \
         *to written* until the graph writer has committed every message the workers published. \
         Throughput: jobs/s until done, nodes/s and edges/s into Neo4j until written. Fetch \
         latency is the workers' `relentless_worker_fetch_latency_seconds` (rate-limit waits \
         included). CPU is utime+stime from `/proc/<pid>/stat` over the crawl; RSS is `VmHWM` \
         (peak) for our processes, the highest sampled `VmRSS` for Kafka and Neo4j. Worker CPU \
         utilisation is worker CPU seconds ÷ (workers × seconds to done); *machine busy* is the \
         share of all cores busy from seed to done (`/proc/stat`), whoever used them. At a \
         rate-limited point the simulator enforces Open Library's limits (per client IP and per \
         User-Agent across IPs) and the workers get their per-egress rate and their User-Agent \
         budget (`USER_AGENT_RATE_PER_MINUTE`) explicitly; the *expected* time is requests ÷ \
         min(proxies × per-egress rate, User-Agent budget), and *binds* says which of the two is \
         the lower. Every request the simulator saw counts, robots.txt included. Workers run \
         with `REFETCH_AFTER=0`, so every point fetches what it crawls. Full data: \
         [{images}/{CSV}]({images}/{CSV}).\n\n",
        date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
    );
    text.push_str("## Checks\n\n");
    let ok = |rows: &[Row]| {
        rows.iter()
            .filter(|r| r.error.is_empty())
            .cloned()
            .collect::<Vec<_>>()
    };
    let done = ok(rows);
    for row in &done {
        let (Some(p), Some(e)) = (row.point, row.expected) else {
            continue;
        };
        let over = row.over_expected().unwrap_or_default();
        let _ = writeln!(
            text,
            "- Rate limit {} × {} proxies under a {}/min User-Agent budget, {} workers: {} requests \
             expected in {:.1} s ({} binds at {}/min), measured {:.1} s ({:.2}× expected); \
             busiest minute {} per IP (limit {}) and {} per User-Agent (limit {}), {} 429s, {} 403s, \
             {} IPs per User-Agent — {}.",
            p.limit,
            p.proxies,
            e.user_agent_per_minute,
            p.workers,
            row.requests,
            e.seconds,
            e.binds(),
            e.per_minute(),
            row.seconds_to_done,
            over,
            row.max_ip_requests_in_60s,
            e.sim_ip_per_minute,
            row.max_user_agent_requests_in_60s,
            e.sim_user_agent_per_minute,
            row.rate_limited,
            row.blocked,
            row.ips_per_user_agent,
            match ((over - 1.0).abs() <= 0.15, polite(row)) {
                (true, true) => "polite, within 15% of expected",
                (false, true) => "polite, **outside 15% of expected**",
                (_, false) => "**impolite**",
            },
        );
    }
    for row in done
        .iter()
        .filter(|r| r.expected.is_none() && r.point.is_some_and(|p| p.workers == 1))
    {
        let Some(p) = row.point else { continue };
        let _ = writeln!(
            text,
            "- Unlimited, 1 worker, {} jobs, {} ms latency: {:.1} jobs/s, worker CPU {:.0}% of a core, \
             simulator CPU {:.0}%, machine {} busy.",
            p.concurrency,
            p.latency.as_millis(),
            row.jobs_per_second(),
            row.worker_cpu_utilisation() * 100.0,
            100.0 * row.sim.cpu_seconds / row.seconds_to_done.max(f64::EPSILON),
            row.machine_cpu_busy
                .map(|b| format!("{:.0}%", b * 100.0))
                .unwrap_or_else(|| "?".to_owned()),
        );
    }
    let peak = |f: &dyn Fn(&Row) -> Option<f64>| {
        done.iter()
            .filter_map(f)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    if let Some(rss) = peak(&|r| {
        r.point
            .filter(|p| p.concurrency == 64)
            .map(|_| r.workers.peak_rss_mib)
    }) {
        let _ = writeln!(
            text,
            "- Worker peak RSS at `CONCURRENT_JOBS` 64: {rss:.1} MiB (highest of any point; \
             the predecessor's container limit was 64 MiB)."
        );
    }
    if let Some(rss) = peak(&|r| Some(r.writer.peak_rss_mib)) {
        let _ = writeln!(
            text,
            "- Graph-writer peak RSS at `GRAPH_BATCH_SIZE` {}: {rss:.1} MiB (highest of any point).",
            graph_batch_size,
        );
    }
    let failed = rows.len() - done.len();
    if failed > 0 {
        let _ = writeln!(text, "- {failed} point(s) failed; see the error column.");
    }
    text.push_str("\n## Politeness\n\n");
    if done.iter().any(|r| r.expected.is_some()) {
        text.push_str(
            "The rate-limited points as Open Library would see them: the busiest 60 s per client \
             IP and per User-Agent are sliding windows of the simulator's own log, so they hold \
             whatever burst the workers spent.\n\n",
        );
        text.push_str(&politeness_table(&done));
    } else {
        text.push_str("No rate-limited point ran.\n");
    }
    let _ = write!(
        text,
        "\n## Results\n\n{}\n## Plots\n\n\
         ![throughput vs workers, unlimited]({images}/{PLOT_THROUGHPUT})\n\n\
         ![request rate vs workers, rate-limited]({images}/{PLOT_LIMITED})\n\n\
         ![time to done vs expected]({images}/{PLOT_EXPECTED})\n\n\
         ![RSS vs concurrency]({images}/{PLOT_RSS})\n\n",
        markdown_table(rows)
    );
    text
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::bench::{Expected, GridPoint};
    use std::time::Duration;

    /// A row of a point with made-up measurements.
    pub(in crate::bench) fn row(workers: u32, concurrency: u32, proxies: u32, limit: Limit) -> Row {
        let point = GridPoint {
            workers,
            concurrency,
            proxies,
            latency: Duration::ZERO,
            limit,
        };
        let requests = 700;
        let expected = match limit {
            Limit::None => None,
            Limit::PerMinute(rate) => Some(Expected::new(requests, proxies, rate, 360, (180, 400))),
        };
        Row {
            point: Some(point),
            seeds: 120,
            requests,
            jobs: 500,
            seconds_to_done: expected.map_or(10.0, |e| e.seconds * 0.97),
            seconds_to_written: 12.0,
            max_ip_requests_in_60s: 130,
            max_user_agent_requests_in_60s: 365,
            ips_per_user_agent: u64::from(proxies),
            expected,
            ..Row::default()
        }
    }

    /// Rows of every kind of point the plots and the report draw.
    pub(in crate::bench) fn rows() -> Vec<Row> {
        let mut rows = Vec::new();
        for workers in [1, 2, 4, 8] {
            for concurrency in [8, 16, 32, 64] {
                for proxies in [1, 3] {
                    rows.push(row(workers, concurrency, proxies, Limit::None));
                }
            }
        }
        for workers in [1, 4, 8] {
            rows.push(row(workers, 32, 3, Limit::PerMinute(150)));
        }
        rows.push(row(2, 32, 2, Limit::PerMinute(150)));
        rows.push(row(2, 32, 1, Limit::PerMinute(150)));
        rows
    }

    /// The report states, for each rate-limited point, the expected time, which limit binds,
    /// the measured time and their ratio, and the simulator's view; every output is written.
    /// `BENCH_KEEP_PLOTS=<dir>` keeps the drawn plots there for a look.
    #[test]
    fn the_report_states_each_rate_limited_points_politeness() {
        let rows = rows();
        let text = generated_report(&rows, "bookworm bench", "perf", 5000);
        assert!(
            text.contains(
                "- Rate limit 150/min × 3 proxies under a 360/min User-Agent budget, 8 workers: \
                 700 requests expected in 116.7 s (User-Agent binds at 360/min), measured 113.2 s \
                 (0.97× expected); busiest minute 130 per IP (limit 180) and 365 per User-Agent \
                 (limit 400), 0 429s, 0 403s, 3 IPs per User-Agent — polite, within 15% of expected."
            ),
            "{text}"
        );
        assert!(text.contains("(per-IP binds at 150/min)"), "{text}");
        let table = politeness_table(&rows);
        assert_eq!(table.lines().count(), 2 + 5, "{table}");
        assert!(text.contains(&table));
        let mut rude = row(4, 32, 3, Limit::PerMinute(150));
        rude.max_user_agent_requests_in_60s = 401;
        assert!(!polite(&rude));
        assert!(politeness_table(&[rude]).contains("| **no** |"));

        let csv = csv(&rows);
        for line in csv.lines() {
            assert_eq!(line.split(',').count(), CSV_HEADER.len(), "{line}");
        }
        assert!(csv.contains(",116.67,User-Agent,0.970,"), "{csv}");

        let dir = tempfile::tempdir().expect("temp dir");
        let args = <crate::bench::tests::Cli as clap::Parser>::parse_from([
            "bench".into(),
            "--out-dir".into(),
            dir.path().join("perf").into_os_string(),
            "--report".into(),
            dir.path().join("performance.md").into_os_string(),
        ])
        .bench;
        write_all(&args, &rows, "bookworm bench").expect("outputs written");
        for plot in [PLOT_THROUGHPUT, PLOT_LIMITED, PLOT_EXPECTED, PLOT_RSS] {
            let bytes = std::fs::read(dir.path().join("perf").join(plot)).expect(plot);
            assert_eq!(&bytes[..4], b"\x89PNG", "{plot}");
        }
        if let Some(keep) = std::env::var_os("BENCH_KEEP_PLOTS") {
            for plot in [PLOT_THROUGHPUT, PLOT_LIMITED, PLOT_EXPECTED, PLOT_RSS] {
                let _ = std::fs::copy(
                    dir.path().join("perf").join(plot),
                    std::path::Path::new(&keep).join(plot),
                );
            }
        }
    }
}
