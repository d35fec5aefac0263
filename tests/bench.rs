//! `bookworm bench` end to end on one tiny grid point against the real stack: it runs the
//! real binaries, and leaves a CSV, a Markdown table, four PNG plots and a report that parse
//! and agree with each other. Speed is not asserted; only that the numbers are there. (The
//! rate-limited politeness grid takes minutes: `scripts/bench.sh --grid politeness`.)

mod support;

use std::path::Path;

use bookworm::bench::report::{self, CSV_HEADER, READING_MARKER};
use support::stack_env;

fn column<'a>(header: &[&str], row: &'a [&'a str], name: &str) -> &'a str {
    let index = header
        .iter()
        .position(|h| *h == name)
        .unwrap_or_else(|| panic!("no column {name}"));
    row[index]
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    // IHDR follows the signature: width and height as big-endian u32.
    let width = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let height = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    assert!(
        width >= 400 && height >= 300,
        "{}: {width}x{height}",
        path.display()
    );
}

/// One unlimited point with one worker and a five-seed crawl runs to the end; the CSV has the
/// documented header and one complete row, the report holds the table, the plots and the
/// reading marker, and a hand-written reading survives regeneration.
#[test]
fn a_tiny_grid_point_runs_end_to_end_and_writes_every_output() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("perf");
    let report_path = dir.path().join("performance.md");
    std::fs::write(
        &report_path,
        format!("old generated text\n{READING_MARKER}\n\nMy reading stays.\n"),
    )
    .expect("seed report");
    let stack_run = Path::new(env!("CARGO_MANIFEST_DIR")).join(".stack/run");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bookworm"))
        .args([
            "bench",
            "--workers",
            "1",
            "--concurrency",
            "8",
            "--proxies",
            "1",
        ])
        .args([
            "--seeds",
            "5",
            "--works",
            "60",
            "--authors",
            "20",
            "--subjects",
            "10",
        ])
        .args(["--graph-batch-size", "500", "--point-timeout", "4m"])
        .arg("--out-dir")
        .arg(&out)
        .arg("--report")
        .arg(&report_path)
        .arg("--stack-run-dir")
        .arg(&stack_run)
        .arg("--log-dir")
        .arg(dir.path().join("logs"))
        .envs(
            [
                "KAFKA_BROKERS",
                "REDIS_URL",
                "NEO4J_URI",
                "NEO4J_USER",
                "NEO4J_PASSWORD",
                "PROXY_POOL",
            ]
            .map(|name| (name, stack_env(name))),
        )
        .output()
        .expect("bookworm bench runs");
    assert!(
        output.status.success(),
        "bench failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(out.join(report::CSV)).unwrap_or_default()
    );

    let csv = std::fs::read_to_string(out.join(report::CSV)).expect("csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "header and one row: {csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(header, CSV_HEADER);
    let row: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(row.len(), header.len(), "{csv}");
    assert_eq!(column(&header, &row, "error"), "", "{csv}");
    for name in [
        "requests",
        "jobs",
        "fetched",
        "nodes_written",
        "edges_written",
    ] {
        let value: u64 = column(&header, &row, name).parse().expect(name);
        assert!(value > 0, "{name} is zero: {csv}");
    }
    let fetched: u64 = column(&header, &row, "fetched").parse().expect("fetched");
    let written: u64 = column(&header, &row, "nodes_written")
        .parse()
        .expect("written");
    assert!(written >= fetched, "every fetched node is written: {csv}");
    for name in [
        "seconds_to_done",
        "jobs_per_s",
        "worker_cpu_s",
        "worker_peak_rss_mib",
    ] {
        let value: f64 = column(&header, &row, name).parse().expect(name);
        assert!(value > 0.0, "{name} is not positive: {csv}");
    }
    let p50: f64 = column(&header, &row, "fetch_p50_ms").parse().expect("p50");
    let p99: f64 = column(&header, &row, "fetch_p99_ms").parse().expect("p99");
    assert!(p50 > 0.0 && p99 >= p50, "{csv}");
    assert_eq!(column(&header, &row, "rate_limited_429"), "0");
    assert_eq!(column(&header, &row, "blocked_403"), "0");
    // One proxy, one User-Agent: the simulator saw our agent from one IP.
    assert_eq!(column(&header, &row, "ips_per_user_agent"), "1", "{csv}");
    let busiest: u64 = column(&header, &row, "max_user_agent_requests_in_60s")
        .parse()
        .expect("busiest minute");
    assert!(busiest > 0, "{csv}");
    assert_eq!(
        column(&header, &row, "expected_seconds"),
        "",
        "unlimited: {csv}"
    );

    let table = std::fs::read_to_string(out.join(report::TABLE)).expect("table");
    assert_eq!(table.lines().filter(|l| l.starts_with('|')).count(), 3);
    for plot in [
        report::PLOT_THROUGHPUT,
        report::PLOT_LIMITED,
        report::PLOT_EXPECTED,
        report::PLOT_RSS,
    ] {
        assert_png(&out.join(plot));
    }
    let report = std::fs::read_to_string(&report_path).expect("report");
    assert!(report.starts_with("# Performance"), "{report}");
    assert!(!report.contains("old generated text"), "{report}");
    assert!(report.contains(&table), "the report holds the table");
    assert!(
        report.contains("## Politeness\n\nNo rate-limited point ran."),
        "{report}"
    );
    assert!(
        report.contains("bench --workers 1"),
        "the report quotes the command"
    );
    assert!(
        report.contains("perf/throughput-vs-workers.png"),
        "{report}"
    );
    assert!(
        report.ends_with(&format!("{READING_MARKER}\n\nMy reading stays.\n")),
        "the hand-written reading is kept: {report}"
    );
}
