//! The Open Library HTTP client: the one way the worker fetches anything.
//!
//! [`OpenLibraryClient::get`] enforces the politeness rules of the contract in one place:
//! only `OPENLIBRARY_BASE_URL`'s origin is fetched (redirects are followed by hand and each
//! hop is checked), robots.txt is obeyed before anything is sent, every attempt takes a cell
//! of an egress's rate limit, bodies are capped, and failures are retried with backoff —
//! but never at the expense of healthy requests: a request waiting to retry holds no
//! connection and no rate-limit cell, and a retry budget caps the share of traffic that
//! retries may take. Every final failure names its DLQ reason ([`FetchError::reason`]).
//!
//! Two pieces of shared state stand in front of the network: the record cache ([`cache`]):
//! a path fetched by any crawl within `REFETCH_AFTER` is answered from Redis (unless a
//! freshness job needs a newer revision than the copy's: [`OpenLibraryClient::get_at_least`]);
//! and the
//! User-Agent block ([`block`]): after a 403 nothing is sent by any worker until an operator
//! lifts it.

mod attempt;
pub mod block;
pub mod cache;
pub mod egress;
mod error;
mod retry_budget;
pub mod robots;

pub use attempt::parse_retry_after;
pub use error::FetchError;
pub use retry_budget::RetryBudget;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use reqwest::StatusCode;
use url::Url;

use crate::crawl::client::attempt::{Answer, AttemptError, attempt};
use crate::crawl::client::block::UserAgentBlock;
use crate::crawl::client::cache::{CachedRecord, RecordCache};
use crate::crawl::client::egress::limiter::Rate;
use crate::crawl::client::egress::{ALL_UNAVAILABLE_GRACE, EgressPool};
use crate::crawl::client::robots::{MAX_ROBOTS_BYTES, Robots, RobotsAnswer, RobotsCache};
use crate::process::metrics::WorkerMetrics;

/// Redirect hops followed before a fetch is refused (the contract's hop limit).
pub const MAX_REDIRECTS: u32 = 5;

/// Rate-limit answers (429, or 503 with Retry-After) one request takes before it gives up
/// with reason `rate_limited`. Each blocks its egress with doubling backoff, so this many
/// span many minutes: reaching it means the server refuses us whatever the pace.
pub const MAX_THROTTLED_ANSWERS: u32 = 20;

/// A successful fetch: the final answer after redirects, a 2xx or a 404.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// HTTP status of the final answer (2xx, or 404 for a missing record).
    pub status: u16,
    /// The body, at most `MAX_BODY_BYTES`.
    pub body: Bytes,
    /// The URL that answered, after redirects.
    pub final_url: Url,
    /// The egress that carried the final attempt.
    pub egress: String,
    /// Attempts made in all, over all hops (robots.txt not counted).
    pub attempts: u32,
}

/// The client's settings beyond the pool's.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// The only origin fetched.
    pub origin: Url,
    /// Obey robots.txt.
    pub respect_robots: bool,
    /// How long a robots.txt is trusted.
    pub robots_refresh: Duration,
    /// Body cap.
    pub max_body_bytes: usize,
    /// Retries per request (per redirect hop).
    pub retries: u32,
    /// First retry backoff; doubles per retry with full jitter.
    pub backoff_base: Duration,
    /// Largest retry backoff.
    pub backoff_max: Duration,
    /// Retry budget: share of first attempts.
    pub budget_ratio: f64,
    /// Retry budget: retries always allowed per window.
    pub budget_min: u32,
    /// Retry budget: the window.
    pub budget_window: Duration,
    /// A path fetched this recently is answered from the record cache; zero: no cache.
    pub refetch_after: Duration,
    /// Ceiling on the record cache's bytes.
    pub record_cache_max_bytes: usize,
    /// How long a User-Agent block holds before one request probes it.
    pub blocked_probe_interval: Duration,
}

struct Inner {
    pool: EgressPool,
    settings: FetchSettings,
    budget: RetryBudget,
    robots: tokio::sync::Mutex<RobotsCache>,
    cache: Option<RecordCache>,
    block: UserAgentBlock,
    metrics: WorkerMetrics,
}

/// The Open Library client. Cheap to clone; clones share the pool, robots.txt and budget.
#[derive(Clone)]
pub struct OpenLibraryClient {
    inner: Arc<Inner>,
}

impl OpenLibraryClient {
    /// Builds the client on a pool (the worker's start-up and the tests build both from
    /// their settings). With `redis`, the record cache and the User-Agent block are shared
    /// with every worker; without it there is no cache and a block holds in this process only.
    pub fn new(
        pool: EgressPool,
        settings: FetchSettings,
        metrics: WorkerMetrics,
        redis: Option<redis::aio::ConnectionManager>,
    ) -> Self {
        let budget = RetryBudget::new(
            settings.budget_ratio,
            settings.budget_min,
            settings.budget_window,
        );
        let cache = redis
            .clone()
            .filter(|_| !settings.refetch_after.is_zero())
            .map(|redis| {
                RecordCache::new(
                    redis,
                    pool.redis_prefix(),
                    &settings.origin,
                    settings.refetch_after,
                    settings.record_cache_max_bytes,
                )
            });
        let block = UserAgentBlock::new(
            redis,
            pool.redis_prefix(),
            pool.user_agent().to_owned(),
            settings.blocked_probe_interval,
            metrics.user_agent_blocked.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                pool,
                settings,
                budget,
                robots: tokio::sync::Mutex::new(RobotsCache::default()),
                cache,
                block,
                metrics,
            }),
        }
    }

    /// The egress pool (for labels and health).
    pub fn pool(&self) -> &EgressPool {
        &self.inner.pool
    }

    /// The retry budget (for tests and reports).
    pub fn retry_budget(&self) -> &RetryBudget {
        &self.inner.budget
    }

    /// Fetches `path_and_query` (`/works/OL1W.json`, or a full URL on the configured origin)
    /// politely: origin and robots checked per hop, redirects followed up to
    /// [`MAX_REDIRECTS`], retries within the budget. A 2xx or 404 is `Ok`.
    pub async fn get(&self, path_and_query: &str) -> Result<Fetched, FetchError> {
        self.get_at_least(path_and_query, None).await
    }

    /// [`OpenLibraryClient::get`] for a record that must be at `min_revision` or newer (a
    /// freshness job's: the change feed named that revision): a cached copy below it, or
    /// without a revision, is not used; the record is fetched and the answer replaces the
    /// cached copy. With `None`, exactly [`OpenLibraryClient::get`].
    pub async fn get_at_least(
        &self,
        path_and_query: &str,
        min_revision: Option<i64>,
    ) -> Result<Fetched, FetchError> {
        self.timed(
            path_and_query,
            self.inner.settings.respect_robots,
            min_revision,
        )
        .await
    }

    /// Fetches a user's own lookup, a free-text seed's one search at depth 0, like
    /// [`OpenLibraryClient::get`] but without consulting robots.txt: robots.txt governs what
    /// the crawler discovers by itself, and the crawl rules never expand through search
    /// (the contract's "Crawl rules"). Every other politeness rule applies.
    pub async fn lookup(&self, path_and_query: &str) -> Result<Fetched, FetchError> {
        self.timed(path_and_query, false, None).await
    }

    async fn timed(
        &self,
        path_and_query: &str,
        obey_robots: bool,
        min_revision: Option<i64>,
    ) -> Result<Fetched, FetchError> {
        let stale = match self.cached(path_and_query, obey_robots, min_revision).await {
            Cached::Hit(hit) => return Ok(hit),
            Cached::Stale => true,
            Cached::Miss => false,
        };
        let started = Instant::now();
        let result = self.get_inner(path_and_query, obey_robots).await;
        self.inner
            .metrics
            .fetch_latency
            .observe(started.elapsed().as_secs_f64());
        if let Ok(fetched) = &result {
            self.remember(path_and_query, fetched, stale).await;
        }
        result
    }

    /// The record cache's answer for `path`, if it has a fresh one that robots.txt still
    /// allows (a disallowed path is left to the network path, which refuses it with reason)
    /// and that is at `min_revision` or newer. A copy below `min_revision` is [`Cached::Stale`]
    /// (counted a miss: the network is asked).
    async fn cached(&self, path: &str, obey_robots: bool, min_revision: Option<i64>) -> Cached {
        let Some(cache) = self.inner.cache.as_ref() else {
            return Cached::Miss;
        };
        let lookups = &self.inner.metrics.record_cache_lookups;
        let record = match cache.get(path).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                lookups.with_label_values(&["miss"]).inc();
                return Cached::Miss;
            }
            Err(error) => {
                tracing::debug!(%error, path, "record cache unreadable; fetching");
                lookups.with_label_values(&["error"]).inc();
                return Cached::Miss;
            }
        };
        if let Some(wanted) = min_revision
            && let cached = record.revision()
            && cached.is_none_or(|cached| cached < wanted)
        {
            tracing::debug!(
                path,
                wanted,
                ?cached,
                "cached record older than the job needs; fetching"
            );
            lookups.with_label_values(&["miss"]).inc();
            return Cached::Stale;
        }
        if obey_robots && self.check_robots(&record.url).await.is_err() {
            lookups.with_label_values(&["miss"]).inc();
            return Cached::Miss;
        }
        lookups.with_label_values(&["hit"]).inc();
        Cached::Hit(Fetched {
            status: 200,
            body: record.body,
            final_url: record.url,
            egress: "cache".to_owned(),
            attempts: 0,
        })
    }

    /// Keeps a 200 answer in the record cache (a 404 or a failure is asked again next time).
    /// When the fetch replaced a `stale` copy and its answer is not kept, the copy is dropped:
    /// the next crawl must not be served what the freshness job knew to be old.
    async fn remember(&self, path: &str, fetched: &Fetched, stale: bool) {
        let Some(cache) = &self.inner.cache else {
            return;
        };
        let stored = if fetched.status == 200 {
            let record = CachedRecord {
                url: fetched.final_url.clone(),
                body: fetched.body.clone(),
            };
            cache.put(path, &record).await
        } else {
            Ok(None)
        };
        match stored {
            Ok(Some(bytes)) => self
                .inner
                .metrics
                .record_cache_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX)),
            Ok(None) if stale => {
                if let Err(error) = cache.forget(path).await {
                    tracing::debug!(%error, path, "record cache unwritable");
                }
            }
            Ok(None) => {}
            Err(error) => tracing::debug!(%error, path, "record cache unwritable"),
        }
    }

    async fn get_inner(&self, input: &str, obey_robots: bool) -> Result<Fetched, FetchError> {
        let origin = &self.inner.settings.origin;
        let mut url = origin.join(input).map_err(|e| FetchError::InvalidUrl {
            input: input.to_owned(),
            detail: e.to_string(),
        })?;
        if !same_origin(origin, &url) {
            return Err(FetchError::ForeignOrigin {
                url: url.to_string(),
            });
        }
        // Before robots.txt too: a robots.txt refused by the block would disallow everything.
        if self.inner.block.is_blocked().await {
            return Err(FetchError::UserAgentBlocked {
                url: url.to_string(),
            });
        }
        let mut attempts = 0;
        for _hop in 0..=MAX_REDIRECTS {
            url.set_fragment(None);
            if obey_robots {
                self.check_robots(&url).await?;
            }
            let (answer, egress) = self.fetch_with_retries(&url, &mut attempts).await?;
            let status = answer.status;
            if status.is_redirection() {
                let Some(location) = answer.location else {
                    return Err(FetchError::BadRedirect {
                        url: url.to_string(),
                        detail: format!("{status} without Location"),
                    });
                };
                let next = url.join(&location).map_err(|e| FetchError::BadRedirect {
                    url: url.to_string(),
                    detail: format!("Location {location:?}: {e}"),
                })?;
                if !same_origin(origin, &next) {
                    return Err(FetchError::ForeignRedirect {
                        from: url.to_string(),
                        to: next.to_string(),
                    });
                }
                url = next;
                continue;
            }
            if status.is_success() || status == StatusCode::NOT_FOUND {
                return Ok(Fetched {
                    status: status.as_u16(),
                    body: answer.body,
                    final_url: url,
                    egress,
                    attempts,
                });
            }
            return Err(FetchError::Client {
                status: status.as_u16(),
                url: url.to_string(),
            });
        }
        Err(FetchError::BadRedirect {
            url: url.to_string(),
            detail: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// Refuses `url` if robots.txt disallows it, fetching robots.txt first when the cached
    /// copy is missing or stale (one fetch at a time; others wait for its answer).
    async fn check_robots(&self, url: &Url) -> Result<(), FetchError> {
        let path = path_and_query(url);
        let robots = self.robots().await;
        if robots.is_allowed(&path) {
            Ok(())
        } else if robots.is_unavailable() {
            Err(FetchError::RobotsUnavailable { path })
        } else {
            Err(FetchError::Robots { path })
        }
    }

    /// The robots.txt rules in force now.
    pub async fn robots(&self) -> Arc<Robots> {
        let mut cache = self.inner.robots.lock().await;
        if let Some(robots) = cache.fresh(Instant::now()) {
            return robots;
        }
        let answer = self.fetch_robots().await;
        let robots = cache.store(answer, Instant::now(), self.inner.settings.robots_refresh);
        let pool = &self.inner.pool;
        let overall = match (robots.crawl_delay(), pool.configured_overall_rate()) {
            (None, configured) => configured,
            (Some(delay), configured) => {
                let by_delay = Rate {
                    interval: delay,
                    burst: 1,
                };
                Some(match configured {
                    Some(c) if c.interval >= delay => c,
                    _ => by_delay,
                })
            }
        };
        pool.set_overall_rate(overall);
        robots
    }

    async fn fetch_robots(&self) -> RobotsAnswer {
        let mut url = self.inner.settings.origin.clone();
        url.set_path("/robots.txt");
        let mut attempts = 0;
        for _hop in 0..=MAX_REDIRECTS {
            let answer = match self.fetch_with_retries(&url, &mut attempts).await {
                Ok((answer, _)) => answer,
                Err(error) => {
                    tracing::warn!(%error, "robots.txt unavailable; disallowing all for now");
                    return RobotsAnswer::Unreachable;
                }
            };
            let status = answer.status;
            if status.is_redirection()
                && let Some(next) = answer.location.and_then(|l| url.join(&l).ok())
                && same_origin(&self.inner.settings.origin, &next)
            {
                url = next;
                continue;
            }
            return if status.is_success() {
                let body = &answer.body[..answer.body.len().min(MAX_ROBOTS_BYTES)];
                RobotsAnswer::Body(String::from_utf8_lossy(body).into_owned())
            } else if status.is_client_error() || status.is_redirection() {
                RobotsAnswer::Missing
            } else {
                RobotsAnswer::Unreachable
            };
        }
        RobotsAnswer::Missing
    }

    /// Sends `url` until it gets an answer worth returning: retries timeouts, connection
    /// errors and 5xx with backoff, moves off an egress that answers 429. Sleeps hold
    /// nothing; each attempt takes a fresh rate-limit cell; each retry needs the budget.
    async fn fetch_with_retries(
        &self,
        url: &Url,
        attempts: &mut u32,
    ) -> Result<(Answer, String), FetchError> {
        let inner = &self.inner;
        let settings = &inner.settings;
        inner.budget.record_request();
        let mut retry = 0u32;
        let mut throttled_answers = 0u32;
        let pool_deadline = Instant::now() + ALL_UNAVAILABLE_GRACE;
        loop {
            // Before waiting for a cell, and again before sending: the wait may outlast the view.
            if inner.block.is_blocked().await {
                return Err(FetchError::UserAgentBlocked {
                    url: url.to_string(),
                });
            }
            // However often it is throttled, one request waits for a blocked or down pool
            // ALL_UNAVAILABLE_GRACE in all; then its job is parked, not failed.
            let slot = inner.pool.acquire_by(pool_deadline).await?;
            if inner.block.is_blocked().await {
                return Err(FetchError::UserAgentBlocked {
                    url: url.to_string(),
                });
            }
            *attempts += 1;
            let outcome = attempt(&slot, url, settings.max_body_bytes).await;
            let (error, backoff_needed) = match outcome {
                Ok(answer) => {
                    inner.pool.record_status(&slot, answer.status.as_u16());
                    let status = answer.status;
                    let throttled = status == StatusCode::TOO_MANY_REQUESTS
                        || (status == StatusCode::SERVICE_UNAVAILABLE
                            && answer.retry_after.is_some());
                    if status == StatusCode::FORBIDDEN {
                        // Open Library's verdict on our User-Agent, not on this record.
                        inner.block.block(format!("HTTP 403 from {url}")).await;
                        return Err(FetchError::UserAgentBlocked {
                            url: url.to_string(),
                        });
                    }
                    if throttled {
                        // This egress is over its limit at the server: block it, go elsewhere
                        // at once (the block itself is the wait).
                        inner.pool.block(&slot, answer.retry_after).await;
                        throttled_answers += 1;
                        if throttled_answers < MAX_THROTTLED_ANSWERS {
                            // A 429 says the egress is too fast, not that the request is
                            // wrong: it costs no retry and no budget, and `acquire` waits for
                            // an egress whose block has run out. JOB_TIMEOUT bounds the wait.
                            continue;
                        }
                        let error = FetchError::RateLimited {
                            status: status.as_u16(),
                            url: url.to_string(),
                            attempts: *attempts,
                        };
                        return Err(error);
                    } else if status.is_server_error() {
                        // A 503 without Retry-After is the answer for this request, not a
                        // verdict on the egress: keys that always fail must not block egresses.
                        let error = FetchError::Server {
                            status: status.as_u16(),
                            url: url.to_string(),
                            attempts: *attempts,
                        };
                        (error, true)
                    } else {
                        inner.pool.record_success(&slot);
                        return Ok((answer, slot.label().to_owned()));
                    }
                }
                Err(AttemptError::TooLarge) => {
                    inner.pool.record_status(&slot, 200);
                    return Err(FetchError::BodyTooLarge {
                        url: url.to_string(),
                        limit: settings.max_body_bytes,
                    });
                }
                Err(AttemptError::Connect(detail)) => {
                    inner.pool.record_error(&slot);
                    inner.pool.mark_down(&slot);
                    let error = FetchError::Timeout {
                        url: url.to_string(),
                        attempts: *attempts,
                        detail,
                    };
                    (error, false)
                }
                Err(AttemptError::TimedOut(detail)) => {
                    inner.pool.record_error(&slot);
                    // A proxy that accepts and never answers (blackholed, wedged) passes the
                    // TCP probe of `mark_down`, so it would keep its share of requests and
                    // each would wait out the timeout. Block it like a throttled egress
                    // instead (doubling per repeat, reset by a success) and retry elsewhere
                    // at once. Direct has no elsewhere: it only backs off.
                    if slot.is_proxy() {
                        inner.pool.block(&slot, None).await;
                    }
                    let error = FetchError::Timeout {
                        url: url.to_string(),
                        attempts: *attempts,
                        detail,
                    };
                    (error, !slot.is_proxy())
                }
                Err(AttemptError::Transport(detail)) => {
                    inner.pool.record_error(&slot);
                    let error = FetchError::Timeout {
                        url: url.to_string(),
                        attempts: *attempts,
                        detail,
                    };
                    (error, true)
                }
            };
            drop(slot);
            if retry >= settings.retries {
                return Err(error);
            }
            if !inner.budget.try_retry() {
                tracing::debug!(%url, "retry budget empty; failing at once");
                return Err(error);
            }
            if backoff_needed {
                let cap = crate::crawl::client::egress::backoff(
                    settings.backoff_base,
                    settings.backoff_max,
                    retry,
                );
                let jittered = cap.mul_f64(rand::rng().random_range(0.0..=1.0));
                tokio::time::sleep(jittered).await;
            }
            retry += 1;
        }
    }
}

/// What the record cache holds for a path, as a fetch sees it.
enum Cached {
    /// A copy fresh enough to answer with.
    Hit(Fetched),
    /// A copy within `REFETCH_AFTER` but older than the job's `min_revision`: fetch, and let
    /// the answer replace it.
    Stale,
    /// Nothing usable (absent, expired, unreadable, disallowed, or no cache).
    Miss,
}

/// Whether `url` has the same scheme, host and port as `origin`.
fn same_origin(origin: &Url, url: &Url) -> bool {
    url.origin() == origin.origin()
}

fn path_and_query(url: &Url) -> String {
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    }
}
