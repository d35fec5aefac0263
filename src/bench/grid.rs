//! The benchmark's grid: which points a run measures (the reduced, full and politeness
//! presets, or any product of axes), and what each rate-limited point should take if only
//! Open Library's limits bound it ([`Expected`], [`Binds`]).

use std::time::Duration;

use super::{BenchArgs, GridPreset, ratio};

/// A per-proxy rate limit, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The simulator enforces nothing; the workers' limiters (per egress and per User-Agent)
    /// are set far above any rate.
    None,
    /// Requests per minute per proxy: the workers' `EGRESS_RATE_PER_MINUTE`.
    PerMinute(u32),
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::None => f.write_str("none"),
            Limit::PerMinute(n) => write!(f, "{n}/min"),
        }
    }
}

/// Parses `--limit`: `none` (or `off`), or requests per minute per proxy (`150`, `150/min`).
pub(super) fn parse_limit(text: &str) -> Result<Limit, String> {
    match text.trim() {
        "none" | "off" => Ok(Limit::None),
        n => n
            .trim_end_matches("/min")
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .map(Limit::PerMinute)
            .ok_or_else(|| format!("`{n}`: expected `none` or requests per minute")),
    }
}

/// One combination of the axes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridPoint {
    /// Worker processes.
    pub workers: u32,
    /// `CONCURRENT_JOBS` of each.
    pub concurrency: u32,
    /// Proxies in `PROXY_POOL`.
    pub proxies: u32,
    /// Latency the simulator adds to each answer.
    pub latency: Duration,
    /// Rate limit per proxy.
    pub limit: Limit,
}

/// The full grid's axes.
const FULL_CONCURRENCY: [u32; 3] = [8, 32, 64];
const FULL_WORKERS: [u32; 3] = [1, 2, 4];
const FULL_PROXIES: [u32; 3] = [1, 2, 3];
const FULL_LATENCY_MS: [u64; 3] = [0, 50, 300];
const FULL_LIMITS: [Limit; 2] = [Limit::None, Limit::PerMinute(150)];
/// The politeness grid's worker counts: one process, four, and eight (more processes than
/// egresses), all sharing one User-Agent budget and the three proxies' limits through Redis.
const POLITENESS_WORKERS: [u32; 3] = [1, 4, 8];

/// The points `args` asks for, in run order.
pub fn grid(args: &BenchArgs) -> Vec<GridPoint> {
    let explicit = !(args.concurrency.is_empty()
        && args.workers.is_empty()
        && args.proxies.is_empty()
        && args.latency.is_empty()
        && args.limit.is_empty());
    if explicit {
        let or = |given: &[u32], full: &[u32]| {
            if given.is_empty() {
                vec![full[0]]
            } else {
                given.to_vec()
            }
        };
        let latencies = if args.latency.is_empty() {
            vec![Duration::ZERO]
        } else {
            args.latency.clone()
        };
        let limits = if args.limit.is_empty() {
            vec![Limit::None]
        } else {
            args.limit.clone()
        };
        return product(
            &or(&args.concurrency, &FULL_CONCURRENCY),
            &or(&args.workers, &FULL_WORKERS),
            // One proxy by default would make an explicit limited point three times slower
            // than the reduced grid's; all three is the deployment's shape.
            &or(&args.proxies, &[3]),
            &latencies,
            &limits,
        );
    }
    match args.grid {
        GridPreset::Full => product(
            &FULL_CONCURRENCY,
            &FULL_WORKERS,
            &FULL_PROXIES,
            &FULL_LATENCY_MS.map(Duration::from_millis),
            &FULL_LIMITS,
        ),
        GridPreset::Politeness => POLITENESS_WORKERS
            .iter()
            .map(|&workers| politeness_point(workers, 3))
            .collect(),
        GridPreset::Reduced => {
            let point = |workers, concurrency, proxies, latency_ms, limit| GridPoint {
                workers,
                concurrency,
                proxies,
                latency: Duration::from_millis(latency_ms),
                limit,
            };
            let mut points = vec![
                // Unlimited, no latency: what the processes themselves can do.
                point(1, 8, 3, 0, Limit::None),
                point(1, 32, 3, 0, Limit::None),
                point(1, 64, 3, 0, Limit::None),
                point(2, 8, 3, 0, Limit::None),
                point(2, 64, 3, 0, Limit::None),
                point(4, 8, 3, 0, Limit::None),
                point(4, 64, 3, 0, Limit::None),
                // Unlimited with latency: where concurrency, not CPU, sets the pace.
                point(1, 64, 3, 50, Limit::None),
                point(1, 64, 3, 300, Limit::None),
            ];
            // Open Library's limits: with three proxies the User-Agent budget binds (360 <
            // 3 × 150), and adding workers must not change that; with two or one the
            // proxies' budget binds.
            points.extend(
                POLITENESS_WORKERS
                    .iter()
                    .map(|&workers| politeness_point(workers, 3)),
            );
            points.extend([politeness_point(2, 2), politeness_point(2, 1)]);
            points
        }
    }
}

/// A rate-limited point as the politeness grid runs it: 32 jobs per worker, 50 ms of
/// latency, 150/min per proxy (Open Library allows 180).
fn politeness_point(workers: u32, proxies: u32) -> GridPoint {
    GridPoint {
        workers,
        concurrency: 32,
        proxies,
        latency: Duration::from_millis(50),
        limit: Limit::PerMinute(150),
    }
}

/// Which limit sets a rate-limited point's pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binds {
    /// The egresses' budget: proxies × the per-egress rate is below the User-Agent budget.
    PerIp,
    /// The User-Agent budget is below the egresses' sum.
    UserAgent,
    /// Both are the same.
    Both,
}

impl std::fmt::Display for Binds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Binds::PerIp => "per-IP",
            Binds::UserAgent => "User-Agent",
            Binds::Both => "both",
        })
    }
}

/// What a rate-limited point should take, from its limits alone: requests ÷ min(egresses ×
/// per-egress rate, User-Agent budget). Every request the simulator saw counts, robots.txt
/// included; the start-up burst makes a point a few seconds faster than this.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expected {
    /// Egresses (proxies) the workers send through.
    pub egresses: u32,
    /// The workers' `EGRESS_RATE_PER_MINUTE`.
    pub per_ip_per_minute: u32,
    /// The workers' `USER_AGENT_RATE_PER_MINUTE`.
    pub user_agent_per_minute: u32,
    /// The simulator's per-IP limit (Open Library's 180), to judge the busiest minute by.
    pub sim_ip_per_minute: u32,
    /// The simulator's per-User-Agent limit (Open Library's 400).
    pub sim_user_agent_per_minute: u32,
    /// Requests ÷ the binding rate, in seconds.
    pub seconds: f64,
}

impl Expected {
    /// The expectation for `requests` through `egresses` at these rates.
    pub fn new(
        requests: u64,
        egresses: u32,
        per_ip_per_minute: u32,
        user_agent_per_minute: u32,
        sim: (u32, u32),
    ) -> Expected {
        let mut expected = Expected {
            egresses,
            per_ip_per_minute,
            user_agent_per_minute,
            sim_ip_per_minute: sim.0,
            sim_user_agent_per_minute: sim.1,
            seconds: 0.0,
        };
        expected.seconds = ratio(requests as f64, f64::from(expected.per_minute()) / 60.0);
        expected
    }

    /// The pace the limits allow, in requests per minute.
    pub fn per_minute(&self) -> u32 {
        self.egresses
            .saturating_mul(self.per_ip_per_minute)
            .min(self.user_agent_per_minute)
    }

    /// Which limit sets that pace.
    pub fn binds(&self) -> Binds {
        let egresses = self.egresses.saturating_mul(self.per_ip_per_minute);
        match egresses.cmp(&self.user_agent_per_minute) {
            std::cmp::Ordering::Less => Binds::PerIp,
            std::cmp::Ordering::Greater => Binds::UserAgent,
            std::cmp::Ordering::Equal => Binds::Both,
        }
    }
}

fn product(
    concurrency: &[u32],
    workers: &[u32],
    proxies: &[u32],
    latency: &[Duration],
    limits: &[Limit],
) -> Vec<GridPoint> {
    let mut points = Vec::new();
    for &limit in limits {
        for &latency in latency {
            for &proxies in proxies {
                for &workers in workers {
                    for &concurrency in concurrency {
                        points.push(GridPoint {
                            workers,
                            concurrency,
                            proxies,
                            latency,
                            limit,
                        });
                    }
                }
            }
        }
    }
    points
}
