//! Open Library's refusal of our User-Agent, shared by every worker: one switch in Redis.
//!
//! A 403 from Open Library is a verdict on the client, not on the record: it blocks
//! User-Agents that break its rules. Moving the request to another egress would spread the
//! offence, and dead-lettering the job would empty the frontier into the DLQ one key at a
//! time. So the first 403 sets the block ([`UserAgentBlock::block`]): at once in the process
//! that saw it, and in Redis ([`block_key`]) for every other, each of which reads the switch
//! at most once per [`REFRESH`] before it sends. While the block holds, fetches fail with
//! `FetchError::UserAgentBlocked` and the jobs wait, parked, instead of failing; crawls
//! show `blocked`. The block ends when an operator lifts it (`bookworm unblock`, [`unblock`])
//! or when its probe interval has passed (the key expires): the next request is the probe,
//! and a 403 sets the block again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus::IntGauge;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

/// The Redis key of the block under the egress pool's prefix (`EGRESS_REDIS_PREFIX`): the
/// workers sharing a User-Agent budget share its block.
pub fn block_key(egress_prefix: &str) -> String {
    format!("{egress_prefix}:user-agent-blocked")
}

/// How stale a process's view of the shared switch may be: at 360 requests a minute across
/// the cluster, about six requests go out between a block and the last worker noticing it.
pub const REFRESH: Duration = Duration::from_secs(1);

/// What the switch records, for the operator who lifts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    /// The User-Agent Open Library refused.
    pub user_agent: String,
    /// When the block was set.
    pub since: DateTime<Utc>,
    /// The answer that set it (status and URL).
    pub detail: String,
}

/// This process's view of the switch.
#[derive(Debug, Default)]
struct View {
    /// Blocked until then (the probe time), if blocked.
    blocked_until: Option<Instant>,
    /// When the shared switch was last read.
    read_at: Option<Instant>,
}

/// The switch as one worker process sees and sets it.
pub struct UserAgentBlock {
    redis: Option<ConnectionManager>,
    key: String,
    user_agent: String,
    probe_interval: Duration,
    view: Mutex<View>,
    gauge: IntGauge,
}

impl UserAgentBlock {
    /// A switch shared through `redis` under `egress_prefix` (or, without Redis, held by this
    /// process alone), set for `probe_interval` at a time; `gauge` reads 1 while it is set.
    pub fn new(
        redis: Option<ConnectionManager>,
        egress_prefix: &str,
        user_agent: String,
        probe_interval: Duration,
        gauge: IntGauge,
    ) -> Self {
        gauge.set(0);
        Self {
            redis,
            key: block_key(egress_prefix),
            user_agent,
            probe_interval,
            view: Mutex::new(View::default()),
            gauge,
        }
    }

    /// Whether sending is allowed now. Reads the shared switch when this process's view is
    /// older than [`REFRESH`]; if Redis cannot be read the last view stands.
    pub async fn is_blocked(&self) -> bool {
        let now = Instant::now();
        let read_needed = {
            let mut view = self.lock();
            let stale = view.read_at.is_none_or(|at| now - at >= REFRESH);
            if stale && self.redis.is_some() {
                // Claim the read so concurrent requests do not all ask Redis at once.
                view.read_at = Some(now);
            }
            stale
        };
        if read_needed && let Some(redis) = &self.redis {
            let mut redis = redis.clone();
            match redis.pttl::<_, i64>(&self.key).await {
                Ok(millis) => {
                    let until = u64::try_from(millis)
                        .ok()
                        .map(|ms| Instant::now() + Duration::from_millis(ms));
                    self.lock().blocked_until = until;
                }
                Err(error) => tracing::debug!(%error, "cannot read the User-Agent block"),
            }
        }
        let blocked = self.lock().blocked_until.is_some_and(|u| u > now);
        self.gauge.set(i64::from(blocked));
        blocked
    }

    /// Sets the block after the origin refused our User-Agent (`detail`: status and URL): in
    /// this process at once, and for every process through Redis, until the probe interval
    /// has passed or an operator lifts it.
    pub async fn block(&self, detail: String) {
        {
            let now = Instant::now();
            let mut view = self.lock();
            view.blocked_until = Some(now + self.probe_interval);
            // The shared switch is written below; reading it back before then would lift this.
            view.read_at = Some(now);
        }
        self.gauge.set(1);
        tracing::error!(user_agent = %self.user_agent, %detail,
            "Open Library refused our User-Agent; every worker stops sending until `bookworm unblock`");
        let Some(redis) = &self.redis else { return };
        let record = BlockRecord {
            user_agent: self.user_agent.clone(),
            since: Utc::now(),
            detail,
        };
        let Ok(value) = serde_json::to_string(&record) else {
            return;
        };
        let millis = u64::try_from(self.probe_interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut redis = redis.clone();
        // NX: the first refusal's record stands; later ones are its echoes.
        let set: Result<(), redis::RedisError> = redis::cmd("SET")
            .arg(&self.key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis)
            .query_async(&mut redis)
            .await;
        if let Err(error) = set {
            tracing::warn!(%error, "could not share the User-Agent block through Redis");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The block in force under `egress_prefix`, if any (for crawl status and `bookworm unblock`).
pub async fn current(
    redis: &mut ConnectionManager,
    egress_prefix: &str,
) -> Result<Option<BlockRecord>, redis::RedisError> {
    let value: Option<String> = redis.get(block_key(egress_prefix)).await?;
    Ok(value.map(|text| {
        serde_json::from_str(&text).unwrap_or_else(|_| BlockRecord {
            user_agent: String::new(),
            since: Utc::now(),
            detail: text,
        })
    }))
}

/// Lifts the block for every worker (each notices within [`REFRESH`]); the record it lifted,
/// if there was one.
pub async fn unblock(
    redis: &mut ConnectionManager,
    egress_prefix: &str,
) -> Result<Option<BlockRecord>, redis::RedisError> {
    let record = current(redis, egress_prefix).await?;
    let _: u64 = redis.del(block_key(egress_prefix)).await?;
    Ok(record)
}
