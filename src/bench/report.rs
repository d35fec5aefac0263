//! The benchmark's outputs: `bench.csv` (every measured column), a Markdown table, three PNG
//! plots drawn with `plotters`, and `docs/performance.md` generated around them. The report's
//! hand-written reading section sits below [`READING_MARKER`] and is carried over when the
//! report is regenerated, so rerunning the tool never erases the analysis.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::{BenchArgs, BenchError, Limit, Row};

/// Everything below this line in the report is hand-written and kept across runs.
pub const READING_MARKER: &str =
    "<!-- hand-written reading below: kept when bookworm bench regenerates this file -->";

/// File names inside the output directory.
pub const CSV: &str = "bench.csv";
/// The Markdown table alone.
pub const TABLE: &str = "bench.md";
/// Throughput against worker processes.
pub const PLOT_THROUGHPUT: &str = "throughput-vs-workers.png";
/// Time to `done` against the rate limit's ideal.
pub const PLOT_IDEAL: &str = "time-to-done-vs-ideal.png";
/// Worker peak RSS against `CONCURRENT_JOBS`.
pub const PLOT_RSS: &str = "rss-vs-concurrency.png";

/// Writes the CSV, the table, the plots and the report.
pub fn write_all(args: &BenchArgs, rows: &[Row], command_line: &str) -> Result<(), BenchError> {
    let out = &args.out_dir;
    std::fs::create_dir_all(out).map_err(|e| output_error(out, e))?;
    write(&out.join(CSV), &csv(rows))?;
    write(&out.join(TABLE), &markdown_table(rows))?;
    plot_throughput(&out.join(PLOT_THROUGHPUT), rows)?;
    plot_ideal(&out.join(PLOT_IDEAL), rows)?;
    plot_rss(&out.join(PLOT_RSS), rows)?;
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
    "seeds",
    "requests",
    "rate_limited_429",
    "jobs",
    "fetched",
    "edges",
    "nodes_written",
    "edges_written",
    "seconds_to_done",
    "seconds_to_written",
    "ideal_seconds",
    "over_ideal",
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
        let cells = [
            p.workers.to_string(),
            p.concurrency.to_string(),
            p.proxies.to_string(),
            p.latency.as_millis().to_string(),
            limit,
            row.seeds.to_string(),
            row.requests.to_string(),
            row.rate_limited.to_string(),
            row.jobs.to_string(),
            row.fetched.to_string(),
            row.edges.to_string(),
            row.nodes_written.to_string(),
            row.edges_written.to_string(),
            format!("{:.2}", row.seconds_to_done),
            format!("{:.2}", row.seconds_to_written),
            opt(row.ideal_seconds, 2),
            opt(row.over_ideal(), 3),
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
        "| workers | jobs | proxies | latency | limit | requests | 429s | to done s | ideal s | actual/ideal | to written s | jobs/s | nodes/s | edges/s | fetch p50/p90/p99 ms | worker CPU s (util) | worker RSS MiB | writer CPU s | writer RSS MiB | sim CPU s | Kafka CPU s | Neo4j CPU s | machine busy | error |\n\
         |---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for row in rows {
        let Some(p) = row.point else { continue };
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} ms | {} | {} | {} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {}/{}/{} | {:.1} ({:.0}%) | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |",
            p.workers,
            p.concurrency,
            p.proxies,
            p.latency.as_millis(),
            p.limit,
            row.requests,
            row.rate_limited,
            row.seconds_to_done,
            opt(row.ideal_seconds, 1),
            opt(row.over_ideal(), 2),
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
         share of all cores busy from seed to done (`/proc/stat`), whoever used them. The ideal of a \
         rate-limited point is requests ÷ (proxies × rate); every request the simulator saw \
         counts, robots.txt included. Full data: [{images}/{CSV}]({images}/{CSV}).\n\n",
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
    for row in done.iter().filter(|r| r.ideal_seconds.is_some()) {
        let Some(p) = row.point else { continue };
        let over = row.over_ideal().unwrap_or_default();
        let _ = writeln!(
            text,
            "- Rate limit {} × {} proxies, {} workers: {} requests done in {:.1} s against an ideal of {:.1} s \
             ({:+.1}%), {} 429s — {}.",
            p.limit,
            p.proxies,
            p.workers,
            row.requests,
            row.seconds_to_done,
            row.ideal_seconds.unwrap_or_default(),
            (over - 1.0) * 100.0,
            row.rate_limited,
            if (over - 1.0).abs() <= 0.15 && row.rate_limited == 0 {
                "within 15% with no 429s"
            } else {
                "**outside 15% or with 429s**"
            },
        );
    }
    for row in done
        .iter()
        .filter(|r| r.ideal_seconds.is_none() && r.point.is_some_and(|p| p.workers == 1))
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
    let _ = write!(
        text,
        "\n## Results\n\n{}\n## Plots\n\n\
         ![throughput vs workers]({images}/{PLOT_THROUGHPUT})\n\n\
         ![time to done vs ideal]({images}/{PLOT_IDEAL})\n\n\
         ![RSS vs concurrency]({images}/{PLOT_RSS})\n\n",
        markdown_table(rows)
    );
    text
}

/// Colours of the series, in order.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Plot size: readable on a page, small in the repository.
const SIZE: (u32, u32) = (800, 500);

fn plot_error(path: &Path, e: impl std::fmt::Display) -> BenchError {
    BenchError::Output {
        path: path.display().to_string(),
        detail: format!("plotting: {e}"),
    }
}

/// A reference line: its legend, its points, its colour.
type Reference = (String, Vec<(f64, f64)>, RGBColor);

/// Draws series of `(x, y)` points as lines with markers.
fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &BTreeMap<String, Vec<(f64, f64)>>,
    extra: &[Reference],
) -> Result<(), BenchError> {
    super::fonts::ensure().map_err(|e| plot_error(path, e))?;
    let all = series
        .values()
        .flatten()
        .chain(extra.iter().flat_map(|(_, points, _)| points.iter()));
    let (mut x_max, mut y_max) = (0.0f64, 0.0f64);
    for (x, y) in all {
        x_max = x_max.max(*x);
        y_max = y_max.max(*y);
    }
    let x_max = if x_max > 0.0 { x_max * 1.1 } else { 1.0 };
    let y_max = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(|e| plot_error(path, e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
            .map_err(|e| plot_error(path, e))?;
    }
    for (name, points, colour) in extra {
        let colour = *colour;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(1),
            ))
            .map_err(|e| plot_error(path, e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(1))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}

fn sorted(mut points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// Jobs per second against worker processes, one line per concurrency / latency / limit.
fn plot_throughput(path: &Path, rows: &[Row]) -> Result<(), BenchError> {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.error.is_empty()) {
        let Some(p) = row.point else { continue };
        series
            .entry(format!(
                "{} jobs, {} proxies, {} ms, limit {}",
                p.concurrency,
                p.proxies,
                p.latency.as_millis(),
                p.limit
            ))
            .or_default()
            .push((f64::from(p.workers), row.jobs_per_second()));
    }
    let series = series.into_iter().map(|(k, v)| (k, sorted(v))).collect();
    line_chart(
        path,
        "Crawl throughput vs worker processes",
        "worker processes",
        "jobs per second (to done)",
        &series,
        &[],
    )
}

/// Actual time to `done` against the ideal of each rate-limited point, with the ideal line
/// and the 15% band.
fn plot_ideal(path: &Path, rows: &[Row]) -> Result<(), BenchError> {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut top = 0.0f64;
    for row in rows.iter().filter(|r| r.error.is_empty()) {
        let (Some(p), Some(ideal)) = (row.point, row.ideal_seconds) else {
            continue;
        };
        top = top.max(ideal).max(row.seconds_to_done);
        series
            .entry(format!("{} workers, {} jobs", p.workers, p.concurrency))
            .or_default()
            .push((ideal, row.seconds_to_done));
    }
    let series = series.into_iter().map(|(k, v)| (k, sorted(v))).collect();
    let top = if top > 0.0 { top } else { 1.0 };
    line_chart(
        path,
        "Time to done vs ideal (requests / (proxies x rate))",
        "ideal seconds",
        "actual seconds to done",
        &series,
        &[
            ("ideal".to_owned(), vec![(0.0, 0.0), (top, top)], BLACK),
            (
                "ideal + 15%".to_owned(),
                vec![(0.0, 0.0), (top, top * 1.15)],
                RGBColor(150, 150, 150),
            ),
        ],
    )
}

/// Peak RSS of a worker process against `CONCURRENT_JOBS`, one line per worker count, and
/// the graph writer's.
fn plot_rss(path: &Path, rows: &[Row]) -> Result<(), BenchError> {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.error.is_empty()) {
        let Some(p) = row.point else { continue };
        if p.limit != Limit::None || !p.latency.is_zero() {
            continue;
        }
        series
            .entry(format!("worker ({} workers)", p.workers))
            .or_default()
            .push((f64::from(p.concurrency), row.workers.peak_rss_mib));
        series
            .entry(format!("graph writer ({} workers)", p.workers))
            .or_default()
            .push((f64::from(p.concurrency), row.writer.peak_rss_mib));
    }
    let series = series.into_iter().map(|(k, v)| (k, sorted(v))).collect();
    line_chart(
        path,
        "Peak RSS vs CONCURRENT_JOBS (unlimited, 0 ms)",
        "CONCURRENT_JOBS per worker",
        "peak RSS per process, MiB",
        &series,
        &[],
    )
}
