//! The operator's ceilings on crawls (issue 15's quotas), each refused with a 4xx JSON error
//! whose `limit` names the setting:
//! - `API_MAX_DEPTH_LIMIT`, `API_MAX_NODES_LIMIT`: the most a crawl may ask for (422);
//! - `API_MAX_RUNNING_CRAWLS`: crawls with work ahead (running, paused or blocked) at once,
//!   counted from the crawl index (429);
//! - `API_CRAWLS_PER_MINUTE`: crawls created per caller over any 60 s (429 with
//!   Retry-After). A caller is its token when tokens are configured, else its client IP. The
//!   window is a sorted set in Redis, so every API replica sharing the Redis (and the
//!   `CRAWL_INDEX_PREFIX`) shares the budget.
//!
//! A creation that is refused later (a full running ceiling, Redis or Kafka failing) gives
//! back what it took, so a client is only charged for crawls that exist.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use chrono::Utc;
use redis::Script;

use super::auth::CallerId;
use super::{ApiState, MAX_DEPTH_LIMIT, MAX_NODES_LIMIT, Problem, STORE_UNAVAILABLE};
use crate::config::QuotaArgs;

/// The window of `API_CRAWLS_PER_MINUTE`.
const WINDOW_MS: i64 = 60_000;

/// A sliding-window log: creations of the last minute, by time. Answers -1 when this one
/// fits (and records it), or the milliseconds until the oldest leaves the window.
const RATE: &str = r"
local key, now, window, limit, member =
  KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) >= limit then
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', key, now, member)
redis.call('PEXPIRE', key, window)
return -1
";

/// The ceilings in force.
#[derive(Debug, Clone)]
pub(super) struct Quotas {
    max_depth: u32,
    max_nodes: usize,
    max_running: Option<usize>,
    per_minute: Option<u32>,
}

impl Default for Quotas {
    /// The API's own bounds only.
    fn default() -> Self {
        Self {
            max_depth: MAX_DEPTH_LIMIT,
            max_nodes: MAX_NODES_LIMIT,
            max_running: None,
            per_minute: None,
        }
    }
}

impl Quotas {
    pub(super) fn from_args(args: &QuotaArgs) -> Self {
        Self {
            max_depth: args.api_max_depth_limit.min(MAX_DEPTH_LIMIT),
            max_nodes: args.api_max_nodes_limit.min(MAX_NODES_LIMIT),
            max_running: args.api_max_running_crawls,
            per_minute: args.api_crawls_per_minute,
        }
    }

    /// Refuses a crawl that asks for more than the ceilings allow.
    pub(super) fn check_limits(&self, max_depth: u32, max_nodes: usize) -> Result<(), Problem> {
        if max_depth > self.max_depth {
            return Err(Problem::over_limit(
                StatusCode::UNPROCESSABLE_ENTITY,
                "API_MAX_DEPTH_LIMIT",
                format!(
                    "max_depth {max_depth} is above this server's ceiling of {} (API_MAX_DEPTH_LIMIT)",
                    self.max_depth
                ),
            ));
        }
        if max_nodes > self.max_nodes {
            return Err(Problem::over_limit(
                StatusCode::UNPROCESSABLE_ENTITY,
                "API_MAX_NODES_LIMIT",
                format!(
                    "max_nodes {max_nodes} is above this server's ceiling of {} (API_MAX_NODES_LIMIT)",
                    self.max_nodes
                ),
            ));
        }
        Ok(())
    }
}

/// Who is creating a crawl: its token's id (inserted by the auth middleware), or else its
/// client IP.
pub(super) struct Caller(String);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(CallerId(id)) = parts.extensions.get::<CallerId>() {
            return Ok(Self(id.clone()));
        }
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string());
        Ok(Self(format!("client:{ip}")))
    }
}

/// What an admitted creation took, to give back if it does not happen after all.
pub(super) struct Admission {
    rate_key: Option<String>,
    reserved: bool,
    crawl_id: String,
}

impl Admission {
    /// Gives back the rate slot and the running reservation (best effort: a slot not given
    /// back leaves the window within a minute, a reservation is pruned within one).
    pub(super) async fn refund(&self, state: &ApiState) {
        let mut conn = state.store.connection();
        let mut pipe = redis::pipe();
        if let Some(key) = &self.rate_key {
            pipe.zrem(key, &self.crawl_id).ignore();
        }
        if self.reserved {
            pipe.zrem(
                format!("{}:active", state.store.index_prefix()),
                &self.crawl_id,
            )
            .ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(crawl_id = %self.crawl_id, error = %e, "could not give back a refused crawl's quota");
        }
    }
}

/// Takes a place for a new crawl under the rate and running ceilings, or says which one
/// refused it.
pub(super) async fn admit(
    state: &ApiState,
    caller: &Caller,
    crawl_id: &str,
) -> Result<Admission, Problem> {
    let mut admission = Admission {
        rate_key: None,
        reserved: false,
        crawl_id: crawl_id.to_owned(),
    };
    let now = Utc::now();
    if let Some(limit) = state.quotas.per_minute {
        let key = format!("{}:rate:{}", state.store.index_prefix(), caller.0);
        let mut conn = state.store.connection();
        let wait_ms: i64 = Script::new(RATE)
            .key(&key)
            .arg(now.timestamp_millis())
            .arg(WINDOW_MS)
            .arg(limit)
            .arg(crawl_id)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| Problem::unavailable(STORE_UNAVAILABLE, e))?;
        if wait_ms >= 0 {
            let seconds = (wait_ms as u64).div_ceil(1000).max(1);
            return Err(Problem {
                retry_after: Some(seconds),
                ..Problem::over_limit(
                    StatusCode::TOO_MANY_REQUESTS,
                    "API_CRAWLS_PER_MINUTE",
                    format!(
                        "at most {limit} crawls per minute may be created by one caller (API_CRAWLS_PER_MINUTE); retry in {seconds} s"
                    ),
                )
            });
        }
        admission.rate_key = Some(key);
    }
    if let Some(limit) = state.quotas.max_running {
        let fits = match state.store.reserve(crawl_id, now, limit).await {
            Ok(fits) => fits,
            Err(e) => {
                admission.refund(state).await;
                return Err(Problem::unavailable(STORE_UNAVAILABLE, e));
            }
        };
        if !fits {
            admission.refund(state).await;
            return Err(Problem::over_limit(
                StatusCode::TOO_MANY_REQUESTS,
                "API_MAX_RUNNING_CRAWLS",
                format!(
                    "{limit} crawls are running, paused or blocked, the most this server allows at once (API_MAX_RUNNING_CRAWLS); wait for one to end, or cancel one"
                ),
            ));
        }
        admission.reserved = true;
    }
    Ok(admission)
}
