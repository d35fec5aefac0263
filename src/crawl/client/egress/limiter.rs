//! The rate limits of the egress pool: one GCRA per egress plus an optional overall cap,
//! kept in this process (`governor`) or in Redis for the whole cluster (one Lua script).
//!
//! Both backends answer the same question in one step: "of these egresses, which can send
//! now?" — `Go(i)` takes a cell of egress `i` (and of the overall cap), `Wait(d)` says how long
//! until the soonest of them could. Asking all egresses at once and taking the minimum is
//! what lets a request use whichever egress frees up first, and in Redis it keeps an
//! acquisition to ONE round trip whatever the pool size.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use redis::aio::ConnectionManager;

/// The answer of a limiter to one acquisition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The candidate at this index (into the slice asked about) may send now; its cell is taken.
    Go(usize),
    /// None may send yet; ask again after this long.
    Wait(Duration),
    /// None may send because every one is blocked (a 429 seen by another process, shared
    /// through Redis); the soonest block ends after this long.
    AllBlocked(Duration),
}

/// A GCRA rate: one cell every `interval`, up to `burst` cells at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Time between cells at the sustained rate.
    pub interval: Duration,
    /// Cells an idle limiter may hand out at once (at least 1).
    pub burst: u32,
}

impl Rate {
    /// `per_minute` cells per minute with a burst of `burst`.
    pub fn per_minute(per_minute: u32, burst: u32) -> Self {
        Self {
            interval: Duration::from_secs(60) / per_minute.max(1),
            burst: burst.max(1),
        }
    }

    /// How far ahead of now the theoretical arrival time may run (GCRA's tau).
    fn tolerance(&self) -> Duration {
        self.interval * (self.burst - 1)
    }
}

/// GCRA on one in-process theoretical arrival time: used for the overall cap in local scope,
/// where (unlike `governor`) the decision must be looked at before it is taken, so a cell of
/// the overall cap is never spent on an acquisition that finds no egress free.
#[derive(Debug)]
struct LocalGcra {
    rate: Rate,
    tat: Instant,
}

impl LocalGcra {
    /// How long until a cell is free (zero: free now).
    fn wait(&self, now: Instant) -> Duration {
        let tat = self.tat.max(now);
        (tat.saturating_duration_since(now)).saturating_sub(self.rate.tolerance())
    }

    /// Takes a cell; only after [`Self::wait`] said zero.
    fn take(&mut self, now: Instant) {
        self.tat = self.tat.max(now) + self.rate.interval;
    }
}

/// The per-process backend: a `governor` limiter per egress.
pub struct LocalLimiter {
    egresses: Vec<DefaultDirectRateLimiter>,
    overall: Mutex<Option<LocalGcra>>,
}

impl LocalLimiter {
    /// One limiter per egress at `rate`, and the overall cap if any.
    pub fn new(egresses: usize, rate: Rate, overall: Option<Rate>) -> Self {
        let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(rate.interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        Self {
            egresses: (0..egresses).map(|_| RateLimiter::direct(quota)).collect(),
            overall: Mutex::new(overall.map(|rate| LocalGcra {
                rate,
                tat: Instant::now(),
            })),
        }
    }

    fn set_overall(&self, rate: Option<Rate>) {
        let mut overall = self.overall.lock().unwrap_or_else(|e| e.into_inner());
        let tat = overall.as_ref().map_or_else(Instant::now, |g| g.tat);
        *overall = rate.map(|rate| LocalGcra { rate, tat });
    }

    fn acquire(&self, candidates: &[usize]) -> Decision {
        let now = Instant::now();
        // Held across the egress checks so the overall cell is taken together with the egress's.
        let mut overall = self.overall.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(wait) = overall.as_ref().map(|g| g.wait(now))
            && !wait.is_zero()
        {
            return Decision::Wait(wait);
        }
        let clock = DefaultClock::default();
        let mut soonest: Option<Duration> = None;
        for (position, &egress) in candidates.iter().enumerate() {
            let Some(limiter) = self.egresses.get(egress) else {
                continue;
            };
            match limiter.check() {
                Ok(()) => {
                    if let Some(g) = overall.as_mut() {
                        g.take(now);
                    }
                    return Decision::Go(position);
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(clock.now());
                    soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                }
            }
        }
        Decision::Wait(soonest.unwrap_or(Duration::from_millis(100)))
    }
}

/// GCRA over all candidate egresses (and the overall cap) in one atomic step, with Redis's own
/// clock so every worker agrees on "now".
///
/// KEYS: per candidate its TAT key then its block key; then the overall TAT key.
/// ARGV: interval µs, tolerance µs, candidate count, overall interval µs (0 = none),
/// overall tolerance µs.
/// Returns {i, 0, 0} when candidate i (1-based) may send now (its cell taken), else
/// {0, wait_ms, all_blocked} (all_blocked = 1 when every candidate is blocked).
const ACQUIRE_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local g_interval = tonumber(ARGV[4])
local g_tolerance = tonumber(ARGV[5])
local g_tat = now
local g_wait = 0
if g_interval > 0 then
  g_tat = math.max(tonumber(redis.call('GET', KEYS[2 * n + 1]) or '0'), now)
  g_wait = g_tat - g_tolerance - now
  if g_wait > 0 then
    return {0, math.ceil(g_wait / 1000), 0}
  end
end
local soonest = -1
local all_blocked = 1
for i = 1, n do
  local wait
  local blocked = redis.call('PTTL', KEYS[2 * i])
  if blocked > 0 then
    wait = blocked * 1000
  else
    all_blocked = 0
    local tat = math.max(tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0'), now)
    wait = tat - tolerance - now
    if wait <= 0 then
      local new_tat = tat + interval
      redis.call('SET', KEYS[2 * i - 1], string.format('%.0f', new_tat),
                 'PX', math.ceil((new_tat - now) / 1000) + 1000)
      if g_interval > 0 then
        local g_new = g_tat + g_interval
        redis.call('SET', KEYS[2 * n + 1], string.format('%.0f', g_new),
                   'PX', math.ceil((g_new - now) / 1000) + 1000)
      end
      return {i, 0, 0}
    end
  end
  if soonest < 0 or wait < soonest then
    soonest = wait
  end
end
if soonest < 0 then
  soonest = 100000
end
return {0, math.ceil(soonest / 1000), all_blocked}
"#;

/// The cluster backend: state in Redis under `prefix`, shared by every process using it.
pub struct RedisLimiter {
    redis: ConnectionManager,
    script: redis::Script,
    prefix: String,
    rate: Rate,
    overall: Mutex<Option<Rate>>,
}

impl RedisLimiter {
    /// A limiter whose keys start with `prefix`.
    pub fn new(redis: ConnectionManager, prefix: &str, rate: Rate, overall: Option<Rate>) -> Self {
        Self {
            redis,
            script: redis::Script::new(ACQUIRE_SCRIPT),
            prefix: prefix.to_owned(),
            rate,
            overall: Mutex::new(overall),
        }
    }

    fn tat_key(&self, label: &str) -> String {
        format!("{}:tat:{label}", self.prefix)
    }

    fn block_key(&self, label: &str) -> String {
        format!("{}:block:{label}", self.prefix)
    }

    async fn acquire(&self, labels: &[&str]) -> Result<Decision, redis::RedisError> {
        let overall = *self.overall.lock().unwrap_or_else(|e| e.into_inner());
        let mut invocation = self.script.prepare_invoke();
        for label in labels {
            invocation
                .key(self.tat_key(label))
                .key(self.block_key(label));
        }
        invocation.key(format!("{}:overall", self.prefix));
        invocation
            .arg(micros(self.rate.interval))
            .arg(micros(self.rate.tolerance()))
            .arg(labels.len())
            .arg(overall.map_or(0, |r| micros(r.interval)))
            .arg(overall.map_or(0, |r| micros(r.tolerance())));
        let mut redis = self.redis.clone();
        let (index, wait_ms, all_blocked): (i64, i64, i64) =
            invocation.invoke_async(&mut redis).await?;
        let wait = Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0));
        Ok(match usize::try_from(index) {
            Ok(i) if i >= 1 => Decision::Go(i - 1),
            _ if all_blocked == 1 => Decision::AllBlocked(wait),
            _ => Decision::Wait(wait),
        })
    }

    async fn block(&self, label: &str, duration: Duration) -> Result<(), redis::RedisError> {
        let millis = u64::try_from(duration.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut redis = self.redis.clone();
        redis::cmd("SET")
            .arg(self.block_key(label))
            .arg(1)
            .arg("PX")
            .arg(millis)
            .query_async::<()>(&mut redis)
            .await
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Either backend, chosen by `EGRESS_LIMIT_SCOPE`.
pub enum Limiter {
    /// Per process.
    Local(LocalLimiter),
    /// Shared through Redis.
    Redis(RedisLimiter),
}

impl Limiter {
    /// Asks for a cell of one of `candidates` (indexes into the pool, with their labels), in
    /// the order given: the first free one wins, so rotating the order spreads the load.
    pub async fn acquire(
        &self,
        candidates: &[usize],
        labels: &[&str],
    ) -> Result<Decision, redis::RedisError> {
        match self {
            Limiter::Local(local) => Ok(local.acquire(candidates)),
            Limiter::Redis(shared) => shared.acquire(labels).await,
        }
    }

    /// Changes the overall cap (robots.txt's Crawl-delay lowers it).
    pub fn set_overall(&self, rate: Option<Rate>) {
        match self {
            Limiter::Local(local) => local.set_overall(rate),
            Limiter::Redis(shared) => {
                *shared.overall.lock().unwrap_or_else(|e| e.into_inner()) = rate;
            }
        }
    }

    /// Shares a block of an egress with the other processes (cluster scope only; local blocks
    /// are kept by the pool itself).
    pub async fn block(&self, label: &str, duration: Duration) -> Result<(), redis::RedisError> {
        match self {
            Limiter::Local(_) => Ok(()),
            Limiter::Redis(shared) => shared.block(label, duration).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The local backend hands out exactly the burst at once, then asks to wait about one
    /// interval, and never wastes the overall cap's cell when no egress is free.
    #[test]
    fn local_limiter_gives_the_burst_then_waits() {
        let limiter = LocalLimiter::new(2, Rate::per_minute(60, 2), None);
        let mut goes = 0;
        for _ in 0..10 {
            if let Decision::Go(_) = limiter.acquire(&[0, 1]) {
                goes += 1;
            }
        }
        assert_eq!(goes, 4, "two egresses with burst 2");
        match limiter.acquire(&[0, 1]) {
            Decision::Wait(wait) => assert!(wait <= Duration::from_secs(1), "{wait:?}"),
            other => panic!("over the burst, or blocked: {other:?}"),
        }
    }

    /// The overall cap limits the sum over egresses.
    #[test]
    fn overall_cap_limits_all_egresses_together() {
        let limiter = LocalLimiter::new(3, Rate::per_minute(60, 5), Some(Rate::per_minute(60, 2)));
        let goes = (0..10)
            .filter(|_| matches!(limiter.acquire(&[0, 1, 2]), Decision::Go(_)))
            .count();
        assert_eq!(goes, 2);
    }

    /// The first free candidate in the order given wins, so the pool can rotate the order.
    #[test]
    fn first_free_candidate_wins() {
        let limiter = LocalLimiter::new(3, Rate::per_minute(60, 1), None);
        assert_eq!(limiter.acquire(&[2, 0, 1]), Decision::Go(0));
        assert_eq!(limiter.acquire(&[2, 0, 1]), Decision::Go(1));
        assert_eq!(limiter.acquire(&[2, 0, 1]), Decision::Go(2));
    }
}
