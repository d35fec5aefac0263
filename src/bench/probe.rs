//! What the benchmark reads from outside its processes: `/proc/<pid>` (CPU seconds and peak
//! memory, the kernel's own accounting, so no agent runs inside the measured process) and
//! Prometheus text from `/metrics` (the services' own counters and histograms, the same
//! numbers an operator's dashboards show).

use std::collections::BTreeMap;

use super::BenchError;

/// One reading of a process's resource use.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// User plus system CPU time since the process started, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory now, in bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// Peak resident memory since the process started, in bytes (`VmHWM`).
    pub peak_rss_bytes: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times. Linux has reported times in units of
/// 100 Hz (`USER_HZ`) on every architecture it runs on since 2.6, whatever the kernel's own
/// tick rate, so no `sysconf` call is needed.
const USER_HZ: f64 = 100.0;

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; fails when the process is gone.
pub fn sample(pid: u32) -> Result<ProcSample, BenchError> {
    let read = |file: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}")).map_err(|source| BenchError::Proc {
            pid,
            detail: format!("{file}: {source}"),
        })
    };
    let stat = read("stat")?;
    let status = read("status")?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| BenchError::Proc {
        pid,
        detail: "stat has no utime/stime".to_owned(),
    })?;
    Ok(ProcSample {
        cpu_seconds: ticks as f64 / USER_HZ,
        rss_bytes: parse_status_kib(&status, "VmRSS:").unwrap_or_default() * 1024,
        peak_rss_bytes: parse_status_kib(&status, "VmHWM:").unwrap_or_default() * 1024,
    })
}

/// Busy and total CPU ticks of the whole machine, all cores, from `/proc/stat`: what else
/// ran during a point (other tenants of a shared machine included) shows in the difference.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineTicks {
    /// Ticks not idle and not waiting for I/O.
    pub busy: u64,
    /// All ticks.
    pub total: u64,
}

impl MachineTicks {
    /// Reads `/proc/stat`; `None` where there is none.
    pub fn read() -> Option<MachineTicks> {
        parse_machine_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Share of all cores busy between `self` and a later reading (0..1).
    pub fn busy_share_until(self, later: MachineTicks) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        later.busy.saturating_sub(self.busy) as f64 / total as f64
    }
}

/// The `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq steal …
pub fn parse_machine_ticks(stat: &str) -> Option<MachineTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|n| n.parse().ok())
        .collect();
    if ticks.len() < 5 {
        return None;
    }
    let total: u64 = ticks.iter().sum();
    let idle = ticks[3] + ticks[4];
    Some(MachineTicks {
        busy: total - idle,
        total,
    })
}

/// `utime + stime` in clock ticks from the text of `/proc/<pid>/stat`. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, so utime (14) and stime (15) are the 12th and 13th.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The value in KiB of a `Name:   1234 kB` line of `/proc/<pid>/status`.
pub fn parse_status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// A series' labels.
type Labels = BTreeMap<String, String>;

/// Samples of Prometheus text exposition, by metric name, with their label sets.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    samples: BTreeMap<String, Vec<(Labels, f64)>>,
}

impl Metrics {
    /// Parses the text format (`name{label="v",…} value`); comments and malformed lines are
    /// skipped, since a partial scrape is still worth its numbers.
    pub fn parse(text: &str) -> Metrics {
        let mut metrics = Metrics::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some(pair) => pair,
                None => continue,
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            metrics
                .samples
                .entry(name.to_owned())
                .or_default()
                .push((labels, value));
        }
        metrics
    }

    /// Adds another scrape's samples (of another process), so sums and histograms cover all.
    pub fn merge(&mut self, other: Metrics) {
        for (name, samples) in other.samples {
            self.samples.entry(name).or_default().extend(samples);
        }
    }

    /// Sum of every series of `name` whose labels include all of `matching`.
    pub fn sum(&self, name: &str, matching: &[(&str, &str)]) -> f64 {
        self.samples
            .get(name)
            .map(|samples| {
                samples
                    .iter()
                    .filter(|(labels, _)| {
                        matching
                            .iter()
                            .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
                    })
                    .map(|(_, v)| v)
                    .sum()
            })
            .unwrap_or_default()
    }

    /// The `q` quantile (0..1) of histogram `name` summed over all processes, interpolated
    /// linearly inside the bucket as Prometheus's `histogram_quantile` does; `None` when the
    /// histogram is empty.
    pub fn quantile(&self, name: &str, q: f64) -> Option<f64> {
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for (labels, value) in self.samples.get(&format!("{name}_bucket"))? {
            let bound = match labels.get("le").map(String::as_str) {
                Some("+Inf") => f64::INFINITY,
                Some(le) => le.parse().ok()?,
                None => continue,
            };
            match buckets.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, count)) => *count += value,
                None => buckets.push((bound, *value)),
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        histogram_quantile(&buckets, q)
    }
}

/// `histogram_quantile` over cumulative `(upper bound, count)` buckets sorted by bound. In the
/// `+Inf` bucket the answer is the highest finite bound, as in Prometheus.
pub fn histogram_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let share = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * share);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    // Label values in our metrics hold no commas or escaped quotes (egress URLs, statuses,
    // reasons), so a split is enough.
    for pair in text.split(',') {
        if let Some((k, v)) = pair.split_once('=') {
            labels.insert(k.trim().to_owned(), v.trim().trim_matches('"').to_owned());
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_a_command_name_with_spaces() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn machine_ticks_count_idle_and_iowait_as_not_busy() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5\n";
        let ticks = parse_machine_ticks(stat).expect("cpu line");
        assert_eq!(
            ticks,
            MachineTicks {
                busy: 150,
                total: 1000
            }
        );
        let later = MachineTicks {
            busy: 250,
            total: 1200,
        };
        assert!((ticks.busy_share_until(later) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn status_lines_give_kib() {
        let status = "Name:\tworker\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn own_process_can_be_sampled() {
        let s = sample(std::process::id()).expect("own /proc");
        assert!(s.peak_rss_bytes >= s.rss_bytes && s.rss_bytes > 0);
    }

    #[test]
    fn counters_sum_over_processes_and_labels() {
        let mut m = Metrics::parse(
            "# HELP x\nreq_total{egress=\"a\",status=\"200\"} 3\nreq_total{egress=\"b\",status=\"429\"} 2\n",
        );
        m.merge(Metrics::parse("req_total{egress=\"a\",status=\"200\"} 4\n"));
        assert_eq!(m.sum("req_total", &[]), 9.0);
        assert_eq!(m.sum("req_total", &[("status", "200")]), 7.0);
        assert_eq!(m.sum("missing", &[]), 0.0);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_like_prometheus() {
        let m = Metrics::parse(
            "lat_bucket{le=\"0.1\"} 50\nlat_bucket{le=\"0.2\"} 100\nlat_bucket{le=\"+Inf\"} 100\nlat_count 100\n",
        );
        let p50 = m.quantile("lat", 0.5).expect("p50");
        assert!((p50 - 0.1).abs() < 1e-9, "{p50}");
        let p75 = m.quantile("lat", 0.75).expect("p75");
        assert!((p75 - 0.15).abs() < 1e-9, "{p75}");
        assert_eq!(Metrics::default().quantile("lat", 0.5), None);
    }

    #[test]
    fn a_quantile_in_the_infinite_bucket_is_the_highest_finite_bound() {
        assert_eq!(
            histogram_quantile(&[(1.0, 1.0), (f64::INFINITY, 10.0)], 0.99),
            Some(1.0)
        );
    }
}
