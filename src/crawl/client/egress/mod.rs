//! The egress pool: the ways out to Open Library (each proxy of `PROXY_POOL`, or direct), one
//! `reqwest::Client` and one rate limit each.
//!
//! Open Library limits requests per client IP, so the unit of politeness is the egress, not
//! the worker. A request asks the pool for a slot ([`EgressPool::acquire`]) and gets the egress
//! that can send soonest; waiting happens here, before any connection is opened. After the
//! answer the caller reports back: a 429 (or a 503 with Retry-After) blocks that egress with
//! doubling backoff ([`EgressPool::block`]) so the retry goes elsewhere; a proxy that refuses
//! connections is marked down ([`EgressPool::mark_down`]) and probed back with TCP connects.
//!
//! The limits themselves live in [`limiter`]: `governor` per process, or one Lua GCRA script
//! in Redis when the limit must hold across all worker replicas.

pub mod limiter;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use crate::config::{EgressSpec, LimitScope};
use crate::process::metrics::WorkerMetrics;
use limiter::{Decision, Limiter, LocalLimiter, Rate, RedisLimiter};

/// The longest Retry-After honoured; a larger value is a server bug, not advice.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How often a request re-checks the pool while every egress is blocked or down: short enough
/// to notice a probe bringing a proxy back, cheap because it only reads local state.
const ALL_BLOCKED_POLL: Duration = Duration::from_millis(250);

/// How long a request waits for an egress to come back while every one is blocked or down.
/// When none will be back within it (blocked longer, or down: a probe decides when), the
/// request fails at once with [`EgressError::Unavailable`] and its job is parked and tried
/// again later: a pool outage is not the job's fault, and waiting on would hold the job's
/// slot until `JOB_TIMEOUT` dead-lettered it and skipped its subtree.
pub const ALL_UNAVAILABLE_GRACE: Duration = Duration::from_secs(5);

/// Errors from building or using the pool.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// `EGRESS_LIMIT_SCOPE=cluster` without a Redis connection: a configuration mistake.
    #[error("EGRESS_LIMIT_SCOPE=cluster needs a Redis connection")]
    NoRedis,
    /// A reqwest client could not be built (bad proxy URL or TLS setup): fix the configuration.
    #[error("cannot build the HTTP client for egress {egress}: {source}")]
    Client {
        /// The egress label.
        egress: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// The shared limit in Redis could not be asked; the request may be retried later.
    #[error("rate limiter unavailable: {0}")]
    Limiter(#[from] redis::RedisError),
    /// Every egress stayed blocked or down for [`ALL_UNAVAILABLE_GRACE`]; nothing was sent.
    #[error("every egress is blocked or down")]
    Unavailable,
}

/// What the HTTP clients of every egress share.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Sent as `User-Agent` on every request.
    pub user_agent: String,
    /// Bound on opening a connection.
    pub connect_timeout: Duration,
    /// Bound on silence while reading.
    pub read_timeout: Duration,
    /// Bound on a whole attempt.
    pub request_timeout: Duration,
}

/// The pool's settings, taken from [`EgressArgs`] or set by tests.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// The egresses.
    pub egresses: Vec<EgressSpec>,
    /// Per-egress rate.
    pub rate: Rate,
    /// Overall cap across egresses, if any.
    pub overall: Option<Rate>,
    /// Where the limits live.
    pub scope: LimitScope,
    /// Prefix of the Redis keys (cluster scope).
    pub redis_prefix: String,
    /// First block after a 429 and first probe delay; doubles per repeat.
    pub block_base: Duration,
    /// Longest block or probe delay.
    pub block_max: Duration,
    /// Where a direct egress is probed when it fails to connect (the origin's `host:port`).
    pub origin_addr: String,
    /// HTTP client settings.
    pub client: ClientSettings,
}

/// Mutable health of one egress.
#[derive(Debug, Default)]
struct Health {
    /// Blocked (after a 429) until then.
    blocked_until: Option<Instant>,
    /// Consecutive blocks without a success in between: the doubling exponent.
    strikes: u32,
    /// Failed to connect; a probe task brings it back.
    down: bool,
    /// Bumped on every change, so a stale unblock timer does nothing.
    generation: u64,
}

struct Egress {
    spec: EgressSpec,
    label: String,
    client: reqwest::Client,
    health: Mutex<Health>,
}

struct Inner {
    egresses: Vec<Egress>,
    limiter: Limiter,
    settings: PoolSettings,
    metrics: WorkerMetrics,
    /// Where the next acquisition starts looking, so equal egresses share the load evenly.
    next: AtomicUsize,
    /// One acquisition at a time per process: waiters queue here in FIFO order instead of all
    /// waking at the same instant and racing (and, in cluster scope, flooding Redis).
    acquiring: tokio::sync::Mutex<()>,
}

/// The egress pool. Cheap to clone; all clones share the egresses and their limits.
#[derive(Clone)]
pub struct EgressPool {
    inner: Arc<Inner>,
}

/// The right to send one request through one egress, just taken from its rate limit.
#[derive(Clone)]
pub struct EgressSlot {
    index: usize,
    label: String,
    proxied: bool,
    client: reqwest::Client,
}

impl EgressSlot {
    /// Whether this egress is a proxy (another one may be tried) rather than direct.
    pub fn is_proxy(&self) -> bool {
        self.proxied
    }

    /// The egress's label (`host:port` or `direct`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The HTTP client that sends through this egress.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

impl EgressPool {
    /// Builds the pool. `redis` is required with cluster scope and ignored with local scope.
    pub fn new(
        settings: PoolSettings,
        redis: Option<ConnectionManager>,
        metrics: WorkerMetrics,
    ) -> Result<Self, EgressError> {
        let limiter = match settings.scope {
            LimitScope::Local => Limiter::Local(LocalLimiter::new(
                settings.egresses.len(),
                settings.rate,
                settings.overall,
            )),
            LimitScope::Cluster => Limiter::Redis(RedisLimiter::new(
                redis.ok_or(EgressError::NoRedis)?,
                &settings.redis_prefix,
                settings.rate,
                settings.overall,
            )),
        };
        let egresses = settings
            .egresses
            .iter()
            .map(|spec| {
                let label = spec.label();
                let client =
                    build_client(spec, &settings.client).map_err(|source| EgressError::Client {
                        egress: label.clone(),
                        source,
                    })?;
                metrics.egress_blocked.with_label_values(&[&label]).set(0);
                Ok(Egress {
                    spec: spec.clone(),
                    label,
                    client,
                    health: Mutex::new(Health::default()),
                })
            })
            .collect::<Result<Vec<_>, EgressError>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                egresses,
                limiter,
                settings,
                metrics,
                next: AtomicUsize::new(0),
                acquiring: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The prefix of the pool's shared state in Redis (its User-Agent block lives there too).
    pub fn redis_prefix(&self) -> &str {
        &self.inner.settings.redis_prefix
    }

    /// The User-Agent every egress sends.
    pub fn user_agent(&self) -> &str {
        &self.inner.settings.client.user_agent
    }

    /// The labels of all egresses, in pool order.
    pub fn labels(&self) -> Vec<String> {
        self.inner
            .egresses
            .iter()
            .map(|e| e.label.clone())
            .collect()
    }

    /// Lowers (or lifts) the overall cap: robots.txt's Crawl-delay sets one cell per delay.
    pub fn set_overall_rate(&self, rate: Option<Rate>) {
        self.inner.limiter.set_overall(rate);
    }

    /// The overall cap configured at start-up (before any Crawl-delay).
    pub fn configured_overall_rate(&self) -> Option<Rate> {
        self.inner.settings.overall
    }

    /// Waits for the egress that can send soonest and takes a cell of its limit, waiting for
    /// a blocked or down pool at most [`ALL_UNAVAILABLE_GRACE`]; see [`EgressPool::acquire_by`].
    pub async fn acquire(&self) -> Result<EgressSlot, EgressError> {
        self.acquire_by(Instant::now() + ALL_UNAVAILABLE_GRACE)
            .await
    }

    /// Waits for the egress that can send soonest and takes a cell of its limit. Holds no
    /// connection while waiting. Waiting for a cell (pacing) is unbounded here (`JOB_TIMEOUT`
    /// bounds it); waiting for every egress to come back from a block or from being down
    /// ends at `deadline`: if none will be back by then, this fails at once with
    /// [`EgressError::Unavailable`]. Also fails when the shared limiter cannot be asked.
    pub async fn acquire_by(&self, deadline: Instant) -> Result<EgressSlot, EgressError> {
        let inner = &self.inner;
        let _turn = inner.acquiring.lock().await;
        loop {
            let now = Instant::now();
            let n = inner.egresses.len();
            let start = inner.next.load(Ordering::Relaxed);
            let mut candidates = Vec::with_capacity(n);
            let mut soonest_unblock: Option<Duration> = None;
            for offset in 0..n {
                let index = (start + offset) % n;
                match self.available_in(index, now) {
                    None => candidates.push(index),
                    Some(wait) => {
                        soonest_unblock = Some(soonest_unblock.map_or(wait, |s| s.min(wait)));
                    }
                }
            }
            let back_in_time =
                |wait: Duration| now.checked_add(wait).is_some_and(|t| t <= deadline);
            if candidates.is_empty() {
                let Some(wait) = soonest_unblock.filter(|w| back_in_time(*w)) else {
                    return Err(EgressError::Unavailable);
                };
                tokio::time::sleep(wait.min(ALL_BLOCKED_POLL)).await;
                continue;
            }
            let labels: Vec<&str> = candidates
                .iter()
                .map(|&i| inner.egresses[i].label.as_str())
                .collect();
            match inner.limiter.acquire(&candidates, &labels).await? {
                Decision::Go(position) => {
                    let index = candidates[position];
                    inner.next.store(index + 1, Ordering::Relaxed);
                    let egress = &inner.egresses[index];
                    return Ok(EgressSlot {
                        index,
                        label: egress.label.clone(),
                        proxied: matches!(egress.spec, EgressSpec::Proxy(_)),
                        client: egress.client.clone(),
                    });
                }
                Decision::Wait(wait) => {
                    // A local block may end before the limiter's soonest cell.
                    let wait = soonest_unblock.map_or(wait, |u| u.min(wait));
                    tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                }
                // Blocked by other processes' 429s: the same rule as a local block.
                Decision::AllBlocked(wait) if !back_in_time(wait) => {
                    return Err(EgressError::Unavailable);
                }
                Decision::AllBlocked(wait) => {
                    tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                }
            }
        }
    }

    /// `None` if egress `index` is usable now, else how long until it may be (`MAX` for a
    /// down egress: its probe decides when).
    fn available_in(&self, index: usize, now: Instant) -> Option<Duration> {
        let egress = &self.inner.egresses[index];
        let health = egress.health.lock().unwrap_or_else(|e| e.into_inner());
        if health.down {
            return Some(Duration::MAX);
        }
        match health.blocked_until {
            Some(until) if until > now => Some(until - now),
            _ => None,
        }
    }

    /// Records the status of an answer received through `slot`.
    pub fn record_status(&self, slot: &EgressSlot, status: u16) {
        let metrics = &self.inner.metrics;
        metrics
            .egress_requests
            .with_label_values(&[slot.label.as_str(), &status.to_string()])
            .inc();
        if status == 429 || status == 503 {
            metrics
                .rate_limit_hits
                .with_label_values(&[slot.label.as_str()])
                .inc();
        }
    }

    /// Records an attempt through `slot` that got no answer (connect error, timeout).
    pub fn record_error(&self, slot: &EgressSlot) {
        self.inner
            .metrics
            .egress_requests
            .with_label_values(&[slot.label.as_str(), "error"])
            .inc();
    }

    /// The egress answered normally: its backoff starts again from the base.
    pub fn record_success(&self, slot: &EgressSlot) {
        let egress = &self.inner.egresses[slot.index];
        let mut health = egress.health.lock().unwrap_or_else(|e| e.into_inner());
        health.strikes = 0;
    }

    /// Blocks the egress of `slot` after a 429 (or 503 with Retry-After): for `retry_after`
    /// when the server said so, else for the base block doubled per consecutive block. With
    /// cluster scope the block is shared with every process. Returns the block's length.
    pub async fn block(&self, slot: &EgressSlot, retry_after: Option<Duration>) -> Duration {
        let inner = &self.inner;
        let egress = &inner.egresses[slot.index];
        let (duration, generation) = {
            let mut health = egress.health.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            // Requests already in flight when the egress was blocked answer 429 too; they are
            // echoes of the strike that set the block, not new strikes. Counting each would
            // double a 5 s block to the maximum within a millisecond.
            let echo = health.blocked_until.filter(|u| *u > now);
            let duration = match (retry_after, echo) {
                (Some(r), _) => r.min(MAX_RETRY_AFTER),
                (None, Some(until)) => until - now,
                (None, None) => {
                    let doubled = backoff(
                        inner.settings.block_base,
                        inner.settings.block_max,
                        health.strikes,
                    );
                    health.strikes = health.strikes.saturating_add(1);
                    doubled
                }
            };
            let until = now + duration;
            // Never shorten a longer block another request already set.
            if health.blocked_until.is_none_or(|u| u < until) {
                health.blocked_until = Some(until);
            }
            health.generation += 1;
            (duration, health.generation)
        };
        inner
            .metrics
            .egress_blocked
            .with_label_values(&[slot.label.as_str()])
            .set(1);
        tracing::info!(egress = %slot.label, ?duration, "egress blocked after a rate-limit answer");
        if let Err(error) = inner.limiter.block(&slot.label, duration).await {
            tracing::warn!(egress = %slot.label, %error, "could not share the block through Redis");
        }
        let weak = Arc::downgrade(&self.inner);
        let index = slot.index;
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            clear_gauge_if_unchanged(&weak, index, generation);
        });
        duration
    }

    /// Marks the egress of `slot` down after it failed to connect, and starts probing it back
    /// with TCP connects (to the proxy, or for direct to the origin) at doubling intervals.
    pub fn mark_down(&self, slot: &EgressSlot) {
        let inner = &self.inner;
        let egress = &inner.egresses[slot.index];
        {
            let mut health = egress.health.lock().unwrap_or_else(|e| e.into_inner());
            if health.down {
                return;
            }
            health.down = true;
            health.generation += 1;
        }
        inner
            .metrics
            .egress_blocked
            .with_label_values(&[slot.label.as_str()])
            .set(1);
        tracing::warn!(egress = %slot.label, "egress failed to connect; marked down");
        let address = match &egress.spec {
            EgressSpec::Proxy(url) => format!(
                "{}:{}",
                url.host_str().unwrap_or_default(),
                url.port_or_known_default().unwrap_or(80)
            ),
            EgressSpec::Direct => inner.settings.origin_addr.clone(),
        };
        let weak = Arc::downgrade(&self.inner);
        let index = slot.index;
        let (base, max) = (inner.settings.block_base, inner.settings.block_max);
        let connect_timeout = inner.settings.client.connect_timeout;
        tokio::spawn(async move {
            for attempt in 0u32.. {
                tokio::time::sleep(backoff(base, max, attempt)).await;
                if weak.strong_count() == 0 {
                    return;
                }
                let probe = tokio::time::timeout(
                    connect_timeout,
                    tokio::net::TcpStream::connect(address.as_str()),
                )
                .await;
                if let Ok(Ok(_stream)) = probe {
                    mark_up(&weak, index);
                    return;
                }
            }
        });
    }

    /// Whether the pool is out: every egress down, or blocked beyond
    /// [`ALL_UNAVAILABLE_GRACE`], so requests fail at once and their jobs are parked
    /// (readiness reports it on `/readyz`).
    pub fn is_out(&self) -> bool {
        let now = Instant::now();
        (0..self.inner.egresses.len()).all(|index| {
            self.available_in(index, now)
                .is_some_and(|wait| wait > ALL_UNAVAILABLE_GRACE)
        })
    }

    /// Whether an egress is marked down now (for tests and readiness).
    pub fn is_down(&self, label: &str) -> bool {
        self.inner
            .egresses
            .iter()
            .any(|e| e.label == label && e.health.lock().unwrap_or_else(|p| p.into_inner()).down)
    }

    /// Whether an egress is blocked by backoff now (for tests).
    pub fn is_blocked(&self, label: &str) -> bool {
        let now = Instant::now();
        self.inner.egresses.iter().any(|e| {
            e.label == label
                && e.health
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .blocked_until
                    .is_some_and(|u| u > now)
        })
    }
}

fn clear_gauge_if_unchanged(weak: &Weak<Inner>, index: usize, generation: u64) {
    let Some(inner) = weak.upgrade() else { return };
    let egress = &inner.egresses[index];
    let health = egress.health.lock().unwrap_or_else(|e| e.into_inner());
    if health.generation == generation && !health.down {
        inner
            .metrics
            .egress_blocked
            .with_label_values(&[egress.label.as_str()])
            .set(0);
    }
}

fn mark_up(weak: &Weak<Inner>, index: usize) {
    let Some(inner) = weak.upgrade() else { return };
    let egress = &inner.egresses[index];
    let mut health = egress.health.lock().unwrap_or_else(|e| e.into_inner());
    health.down = false;
    health.generation += 1;
    let still_blocked = health.blocked_until.is_some_and(|u| u > Instant::now());
    if !still_blocked {
        inner
            .metrics
            .egress_blocked
            .with_label_values(&[egress.label.as_str()])
            .set(0);
    }
    tracing::info!(egress = %egress.label, "egress reachable again");
}

/// `base · 2^attempt`, capped at `max`.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt.min(20)))
        .min(max)
}

fn build_client(
    spec: &EgressSpec,
    settings: &ClientSettings,
) -> Result<reqwest::Client, reqwest::Error> {
    let builder = reqwest::Client::builder()
        .user_agent(settings.user_agent.clone())
        .connect_timeout(settings.connect_timeout)
        .read_timeout(settings.read_timeout)
        .timeout(settings.request_timeout)
        // Redirects are followed by hand, so each hop is checked against the origin and robots.
        .redirect(reqwest::redirect::Policy::none())
        // Idle connections beyond a handful per egress only hold sockets open on the server.
        .pool_max_idle_per_host(8)
        .pool_idle_timeout(Duration::from_secs(60));
    let builder = match spec {
        // no_proxy: an HTTP_PROXY in the environment must not silently reroute "direct".
        EgressSpec::Direct => builder.no_proxy(),
        EgressSpec::Proxy(url) => builder.proxy(reqwest::Proxy::all(url.as_str())?),
    };
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ProxyPool, parse_proxy_pool};

    /// Empty text means one direct egress; entries keep their order and labels.
    #[test]
    fn parses_proxy_pools() {
        assert_eq!(
            parse_proxy_pool(""),
            Ok(ProxyPool(vec![EgressSpec::Direct]))
        );
        let pool = parse_proxy_pool("http://127.0.0.1:3128, direct").unwrap();
        let labels: Vec<String> = pool.0.iter().map(EgressSpec::label).collect();
        assert_eq!(labels, ["127.0.0.1:3128", "direct"]);
    }

    /// Entries that are not plain http://host:port are refused, and so are duplicates.
    #[test]
    fn refuses_bad_proxy_entries() {
        for bad in [
            "proxy:3128",
            "https://p:3128",
            "http://p",
            "http://p:3128/x",
            "socks5://p:1080",
            "http://u:pw@p:3128",
            "direct,direct",
            "http://p:1,http://p:1",
        ] {
            assert!(parse_proxy_pool(bad).is_err(), "{bad} accepted");
        }
    }

    /// Backoff doubles from the base and stops at the cap.
    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (base, max) = (Duration::from_secs(5), Duration::from_secs(60));
        let got: Vec<u64> = (0..6).map(|a| backoff(base, max, a).as_secs()).collect();
        assert_eq!(got, [5, 10, 20, 40, 60, 60]);
    }
}
