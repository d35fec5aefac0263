//! The capacity report's plots (PNG, drawn with `plotters`): throughput of unlimited points,
//! the rate of rate-limited points against what their limits allow, time to done against
//! the expected time, and memory against concurrency. Each series has its own colour and the
//! legend sits beside the data, not on it.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::{BenchError, Binds, Limit, Row};

/// Colours of the first series (the "tab10" palette without its grey, which the reference
/// lines use); more series get hues spread evenly round the colour wheel, so no two series
/// of one plot ever share a colour.
const PALETTE: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// `n` distinct colours.
fn colours(n: usize) -> Vec<RGBAColor> {
    if n <= PALETTE.len() {
        return PALETTE[..n].iter().map(|c| c.to_rgba()).collect();
    }
    (0..n)
        .map(|i| HSLColor(i as f64 / n as f64, 0.7, 0.42).to_rgba())
        .collect()
}

/// The data area's size; the legend is drawn to its right, outside it.
const PLOT_SIZE: (u32, u32) = (760, 500);
/// Width of the legend column.
const LEGEND_WIDTH: u32 = 360;
/// Height of one legend entry.
const LEGEND_ROW: u32 = 22;

fn plot_error(path: &Path, e: impl std::fmt::Display) -> BenchError {
    BenchError::Output {
        path: path.display().to_string(),
        detail: format!("plotting: {e}"),
    }
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stroke {
    /// Measured points: a line with a marker on each.
    Measured,
    /// What a limit allows: a thin dashed line, no markers.
    Reference,
}

/// One line of a chart and its legend entry.
#[derive(Debug, Clone)]
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    colour: RGBAColor,
    stroke: Stroke,
}

/// The x axis: counts (workers, jobs) get whole-number ticks only; seconds are continuous.
#[derive(Debug, Clone, Copy, PartialEq)]
enum XAxis {
    Counts,
    Continuous,
}

/// Measured series, one colour each, in the map's order.
fn measured(series: BTreeMap<String, Vec<(f64, f64)>>) -> Vec<Series> {
    let palette = colours(series.len());
    series
        .into_iter()
        .zip(palette)
        .map(|((name, points), colour)| Series {
            name,
            points: sorted(points),
            colour,
            stroke: Stroke::Measured,
        })
        .collect()
}

/// Draws `series` in a data area with the legend in a column to its right.
fn line_chart(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    x_axis: XAxis,
    series: &[Series],
) -> Result<(), BenchError> {
    super::fonts::ensure().map_err(|e| plot_error(path, e))?;
    let (mut x_max, mut y_max) = (0.0f64, 0.0f64);
    for s in series {
        for (x, y) in &s.points {
            // A reference line spans the axis; the measured points decide where it ends.
            if s.stroke == Stroke::Measured || x_axis == XAxis::Continuous {
                x_max = x_max.max(*x);
            }
            y_max = y_max.max(*y);
        }
    }
    let x_max = match x_axis {
        // One step past the largest count, so its marker is not on the frame.
        XAxis::Counts => x_max.ceil() + 1.0,
        XAxis::Continuous if x_max > 0.0 => x_max * 1.1,
        XAxis::Continuous => 1.0,
    };
    let y_max = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
    let legend_height = 50 + LEGEND_ROW * series.len() as u32;
    let size = (PLOT_SIZE.0 + LEGEND_WIDTH, PLOT_SIZE.1.max(legend_height));
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| plot_error(path, e))?;
    let (data, legend) = root.split_horizontally(PLOT_SIZE.0);
    let mut chart = ChartBuilder::on(&data)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| plot_error(path, e))?;
    let whole = |x: &f64| {
        if (x - x.round()).abs() < 1e-9 {
            format!("{x:.0}")
        } else {
            String::new()
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_label)
        .y_desc(y_label)
        .y_max_light_lines(2)
        .label_style(("sans-serif", 14));
    if x_axis == XAxis::Counts {
        // Ticks at whole numbers only (plotters picks 1, 2, 5 × 10ⁿ steps), no minor lines
        // between them: there is no half a worker.
        let ticks = (x_max as usize + 1).min(12);
        mesh.x_labels(ticks)
            .x_label_formatter(&whole)
            .x_max_light_lines(1);
    }
    mesh.draw().map_err(|e| plot_error(path, e))?;
    for s in series {
        let colour = s.colour;
        match s.stroke {
            Stroke::Measured => {
                chart
                    .draw_series(LineSeries::new(
                        s.points.iter().copied(),
                        colour.stroke_width(2),
                    ))
                    .map_err(|e| plot_error(path, e))?;
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                    .map_err(|e| plot_error(path, e))?;
            }
            Stroke::Reference => {
                chart
                    .draw_series(DashedLineSeries::new(
                        s.points.iter().copied(),
                        8,
                        5,
                        colour.stroke_width(1),
                    ))
                    .map_err(|e| plot_error(path, e))?;
            }
        }
    }
    for (i, s) in series.iter().enumerate() {
        let y = 40 + (LEGEND_ROW * i as u32) as i32;
        let (x0, x1) = (8, 36);
        let colour = s.colour;
        match s.stroke {
            Stroke::Measured => {
                legend
                    .draw(&PathElement::new(
                        vec![(x0, y), (x1, y)],
                        colour.stroke_width(2),
                    ))
                    .map_err(|e| plot_error(path, e))?;
                legend
                    .draw(&Circle::new(((x0 + x1) / 2, y), 4, colour.filled()))
                    .map_err(|e| plot_error(path, e))?;
            }
            Stroke::Reference => {
                legend
                    .draw(&DashedPathElement::new(
                        vec![(x0, y), (x1, y)],
                        8,
                        5,
                        colour.stroke_width(1),
                    ))
                    .map_err(|e| plot_error(path, e))?;
            }
        }
        legend
            .draw(&Text::new(
                s.name.clone(),
                (x1 + 8, y - 8),
                ("sans-serif", 14).into_font(),
            ))
            .map_err(|e| plot_error(path, e))?;
    }
    root.present().map_err(|e| plot_error(path, e))
}

fn sorted(mut points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// Jobs per second of the unlimited points against worker processes, one line per
/// concurrency / proxies / latency. Rate-limited points have their own plot: at a few jobs
/// per second they would lie flat on this one's floor.
pub(super) fn throughput(path: &Path, rows: &[Row]) -> Result<(), BenchError> {
    line_chart(
        path,
        "Crawl throughput vs worker processes (unlimited)",
        ("worker processes", "jobs per second (to done)"),
        XAxis::Counts,
        &throughput_series(rows),
    )
}

fn throughput_series(rows: &[Row]) -> Vec<Series> {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.error.is_empty()) {
        let Some(p) = row.point.filter(|p| p.limit == Limit::None) else {
            continue;
        };
        series
            .entry(format!(
                "{:>2} jobs, {} proxies, {:>3} ms",
                p.concurrency,
                p.proxies,
                p.latency.as_millis(),
            ))
            .or_default()
            .push((f64::from(p.workers), row.jobs_per_second()));
    }
    measured(series)
}

/// Requests per minute of the rate-limited points against worker processes, per proxies ×
/// rate: the mean rate until done with the rate its limits allow (dashed, same colour), and
/// the User-Agent's busiest 60 s (what Open Library counts) against Open Library's own
/// per-User-Agent limit: adding workers must add no traffic.
pub(super) fn limited(path: &Path, rows: &[Row]) -> Result<(), BenchError> {
    line_chart(
        path,
        "Request rate vs worker processes (rate-limited)",
        ("worker processes", "requests per minute"),
        XAxis::Counts,
        &limited_series(rows),
    )
}

fn limited_series(rows: &[Row]) -> Vec<Series> {
    // Per proxies × rate: the mean rates, the busiest minutes, and the rate the limits allow
    // with the limit that binds.
    type Group = (Vec<(f64, f64)>, Vec<(f64, f64)>, (u32, String));
    let mut groups: BTreeMap<(u32, String), Group> = BTreeMap::new();
    let mut workers_max = 1.0f64;
    let mut sim_user_agent_limit = None;
    for row in rows.iter().filter(|r| r.error.is_empty()) {
        let (Some(p), Some(e)) = (row.point, row.expected) else {
            continue;
        };
        workers_max = workers_max.max(f64::from(p.workers));
        sim_user_agent_limit = Some(e.sim_user_agent_per_minute);
        let group = groups
            .entry((
                p.proxies,
                format!(
                    "{} proxies × {}, {} jobs",
                    p.proxies, p.limit, p.concurrency
                ),
            ))
            .or_default();
        let workers = f64::from(p.workers);
        group.0.push((workers, row.requests_per_minute()));
        group
            .1
            .push((workers, row.max_user_agent_requests_in_60s as f64));
        group.2 = (
            e.per_minute(),
            match e.binds() {
                Binds::UserAgent | Binds::Both => {
                    format!("User-Agent budget {}/min", e.user_agent_per_minute)
                }
                Binds::PerIp => format!("{} × {}/min", e.egresses, e.per_ip_per_minute),
            },
        );
    }
    // Two measured series per group, each its own colour; the allowed rate is drawn in the
    // mean's colour, since that is what it bounds.
    let palette = colours(2 * groups.len());
    let mut series = Vec::new();
    for (i, ((_, name), (means, busiest, (allowed, why)))) in groups.into_iter().rev().enumerate() {
        let allowed_f = f64::from(allowed);
        let colour = palette[2 * i];
        series.push(Series {
            name: format!("{name}: mean rate to done"),
            points: sorted(means),
            colour,
            stroke: Stroke::Measured,
        });
        series.push(Series {
            name: "  busiest 60 s of the User-Agent".to_owned(),
            points: sorted(busiest),
            colour: palette[2 * i + 1],
            stroke: Stroke::Measured,
        });
        series.push(Series {
            name: format!("  allowed {allowed}/min ({why})"),
            points: vec![(0.0, allowed_f), (workers_max + 1.0, allowed_f)],
            colour,
            stroke: Stroke::Reference,
        });
    }
    if let Some(limit) = sim_user_agent_limit {
        series.push(Series {
            name: format!("Open Library's limit per User-Agent: {limit}/min"),
            points: vec![
                (0.0, f64::from(limit)),
                (workers_max + 1.0, f64::from(limit)),
            ],
            colour: BLACK.to_rgba(),
            stroke: Stroke::Reference,
        });
    }
    series
}

/// Measured time to `done` against the expected time of each rate-limited point, with the
/// expected line and the 15% band.
pub(super) fn expected(path: &Path, rows: &[Row]) -> Result<(), BenchError> {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut top = 0.0f64;
    for row in rows.iter().filter(|r| r.error.is_empty()) {
        let (Some(p), Some(e)) = (row.point, row.expected) else {
            continue;
        };
        top = top.max(e.seconds).max(row.seconds_to_done);
        series
            .entry(format!("{} workers × {} jobs", p.workers, p.concurrency))
            .or_default()
            .push((e.seconds, row.seconds_to_done));
    }
    let mut series = measured(series);
    let top = if top > 0.0 { top } else { 1.0 };
    series.push(Series {
        name: "expected".to_owned(),
        points: vec![(0.0, 0.0), (top, top)],
        colour: BLACK.to_rgba(),
        stroke: Stroke::Reference,
    });
    series.push(Series {
        name: "expected + 15%".to_owned(),
        points: vec![(0.0, 0.0), (top, top * 1.15)],
        colour: RGBColor(127, 127, 127).to_rgba(),
        stroke: Stroke::Reference,
    });
    line_chart(
        path,
        "Time to done vs expected (rate-limited)",
        (
            "expected s: requests / min(proxies x rate, User-Agent budget)",
            "measured seconds to done",
        ),
        XAxis::Continuous,
        &series,
    )
}

/// Peak RSS of a worker process against `CONCURRENT_JOBS`, one line per worker count, and
/// the graph writer's.
pub(super) fn rss(path: &Path, rows: &[Row]) -> Result<(), BenchError> {
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
    line_chart(
        path,
        "Peak RSS vs CONCURRENT_JOBS (unlimited, 0 ms)",
        ("CONCURRENT_JOBS per worker", "peak RSS per process, MiB"),
        XAxis::Counts,
        &measured(series),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::rows;

    /// Past the palette, hues are spread so that no two series share a colour.
    #[test]
    fn every_series_gets_its_own_colour() {
        for n in [1, 5, 9, 10, 27, 60] {
            let list = colours(n);
            let distinct: std::collections::BTreeSet<(u8, u8, u8)> =
                list.iter().map(|c| (c.0, c.1, c.2)).collect();
            assert_eq!(distinct.len(), n, "{n} series");
        }
        let series = throughput_series(&rows());
        let distinct: std::collections::BTreeSet<(u8, u8, u8)> = series
            .iter()
            .map(|s| (s.colour.0, s.colour.1, s.colour.2))
            .collect();
        assert_eq!((series.len(), distinct.len()), (8, 8));
    }

    /// Unlimited points are on the throughput plot only, rate-limited ones on the rate plot
    /// only, each group there with the rate its limits allow.
    #[test]
    fn unlimited_and_rate_limited_points_are_plotted_apart() {
        let rows = rows();
        let throughput = throughput_series(&rows);
        assert!(throughput.iter().all(|s| s.points.len() == 4));
        assert!(
            throughput
                .iter()
                .flat_map(|s| &s.points)
                .all(|(_, jobs)| *jobs == 50.0)
        );
        let limited = limited_series(&rows);
        let names: Vec<&str> = limited.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "3 proxies × 150/min, 32 jobs: mean rate to done",
                "  busiest 60 s of the User-Agent",
                "  allowed 360/min (User-Agent budget 360/min)",
                "2 proxies × 150/min, 32 jobs: mean rate to done",
                "  busiest 60 s of the User-Agent",
                "  allowed 300/min (2 × 150/min)",
                "1 proxies × 150/min, 32 jobs: mean rate to done",
                "  busiest 60 s of the User-Agent",
                "  allowed 150/min (1 × 150/min)",
                "Open Library's limit per User-Agent: 400/min",
            ]
        );
        let workers: Vec<f64> = limited[0].points.iter().map(|p| p.0).collect();
        assert_eq!(workers, [1.0, 4.0, 8.0]);
        assert_eq!(
            limited[1].points.iter().map(|p| p.1).collect::<Vec<_>>(),
            [365.0; 3]
        );
        let colour = |i: usize| {
            let c: &RGBAColor = &limited[i].colour;
            (c.0, c.1, c.2)
        };
        assert_eq!(
            colour(2),
            colour(0),
            "the allowed rate wears its mean's colour"
        );
        let measured: std::collections::BTreeSet<_> = (0..limited.len())
            .filter(|i| limited[*i].stroke == Stroke::Measured)
            .map(colour)
            .collect();
        assert_eq!(measured.len(), 6, "one colour per measured series");
    }
}
