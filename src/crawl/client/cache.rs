//! The record cache: what any crawl fetched within `REFETCH_AFTER`, kept in Redis and shared by
//! every worker, so a new crawl over known ground costs Open Library almost nothing.
//!
//! Open Library asks clients to cache. The cache sits in front of the network, keyed by the
//! path asked for (the job's own URL, before redirects), and holds the final answer's body and
//! URL; a crawl that reads it parses the same bytes, so it gets the same node and children as
//! if it had fetched. Only 200 answers are kept: a 404 or a failure is retried as before.
//!
//! Memory stays bounded whatever the catalogue: each store is one Lua script that drops
//! expired entries and then the oldest until the total is under `RECORD_CACHE_MAX_BYTES`.
//! Keys live under the egress pool's prefix (`EGRESS_REDIS_PREFIX`: the workers that share a
//! User-Agent budget share its cache) and the origin, so a mirror's or a simulator's answers
//! never mix with openlibrary.org's. Only answers that are well-formed JSON are kept: a body
//! cut short in transit is fetched again, not served again. A cache that cannot be read or written is skipped, never an error: it
//! saves requests, it does not decide outcomes.
//!
//! A freshness job (`CrawlJob::min_revision`, from `bookworm follow`) knows the record changed
//! after it was cached: a copy whose `revision` ([`CachedRecord::revision`]) is below the one
//! the change feed named is not used, the record is fetched again, and the fresh answer takes
//! the entry's place ([`RecordCache::forget`] when the fresh answer is not one to keep).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::aio::ConnectionManager;
use url::Url;

/// Entries of expired records dropped per store at most, so one store's work is bounded.
const EXPIRED_PER_STORE: usize = 100;

/// Bytes counted per entry beyond its body and URL: the hash, the index and the size entry.
const ENTRY_OVERHEAD: usize = 200;

/// Drops the entry in KEYS[1] and anything expired, stores the new one and evicts the oldest
/// until the total is under the cap.
///
/// KEYS: entry, index (sorted set of entry keys by store time), sizes (hash entry → bytes),
/// total (bytes counted). ARGV: now ms, ttl ms, cap bytes, entry bytes, url, body, expired
/// per store. Entry keys are also read from the index (a single Redis, not a Cluster).
const STORE_SCRIPT: &str = r#"
local now, ttl, cap, size = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function forget(entry)
  local bytes = tonumber(redis.call('HGET', KEYS[3], entry) or '0')
  redis.call('HDEL', KEYS[3], entry)
  redis.call('ZREM', KEYS[2], entry)
  redis.call('DEL', entry)
  if bytes > 0 then redis.call('DECRBY', KEYS[4], bytes) end
end
forget(KEYS[1])
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - ttl, 'LIMIT', 0, tonumber(ARGV[7]))) do
  forget(entry)
end
redis.call('HSET', KEYS[1], 'at', ARGV[1], 'url', ARGV[5], 'body', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now, KEYS[1])
redis.call('HSET', KEYS[3], KEYS[1], size)
local total = redis.call('INCRBY', KEYS[4], size)
while total > cap do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #oldest == 0 then break end
  forget(oldest[1])
  total = tonumber(redis.call('GET', KEYS[4]) or '0')
end
return total
"#;

/// Drops the entry in KEYS[1] and its bytes from the total, like the store script does
/// before storing. KEYS: entry, index, sizes, total (as [`STORE_SCRIPT`]).
const FORGET_SCRIPT: &str = r#"
local bytes = tonumber(redis.call('HGET', KEYS[3], KEYS[1]) or '0')
redis.call('HDEL', KEYS[3], KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('DEL', KEYS[1])
if bytes > 0 then redis.call('DECRBY', KEYS[4], bytes) end
return bytes
"#;

/// A cached answer: the body and the URL that gave it.
#[derive(Debug, Clone)]
pub struct CachedRecord {
    /// The final URL after redirects.
    pub url: Url,
    /// The body as it was received.
    pub body: Bytes,
}

impl CachedRecord {
    /// The `revision` the cached record carries (`None` for a body without an integer one, a
    /// list page or a subject): what a freshness job compares with the revision it needs.
    pub fn revision(&self) -> Option<i64> {
        #[derive(serde::Deserialize)]
        struct Revision {
            revision: Option<serde_json::Value>,
        }
        serde_json::from_slice::<Revision>(&self.body)
            .ok()
            .and_then(|r| r.revision)
            .and_then(|v| v.as_i64())
    }
}

/// The record cache of one origin.
pub struct RecordCache {
    redis: ConnectionManager,
    prefix: String,
    refetch_after: Duration,
    max_bytes: usize,
    script: redis::Script,
    forget: redis::Script,
}

impl RecordCache {
    /// A cache of `origin`'s records younger than `refetch_after`, at most `max_bytes` in all,
    /// under `egress_prefix`.
    pub fn new(
        redis: ConnectionManager,
        egress_prefix: &str,
        origin: &Url,
        refetch_after: Duration,
        max_bytes: usize,
    ) -> Self {
        Self {
            redis,
            prefix: format!(
                "{egress_prefix}:cache:{}",
                origin.origin().ascii_serialization()
            ),
            refetch_after,
            max_bytes,
            script: redis::Script::new(STORE_SCRIPT),
            forget: redis::Script::new(FORGET_SCRIPT),
        }
    }

    fn entry_key(&self, path: &str) -> String {
        format!("{}:{path}", self.prefix)
    }

    /// The record stored for `path` within `REFETCH_AFTER`, if any. The window is this
    /// process's own, so a worker started with a shorter one refetches what others cached.
    pub async fn get(&self, path: &str) -> Result<Option<CachedRecord>, redis::RedisError> {
        let mut redis = self.redis.clone();
        let (at, url, body): (Option<u64>, Option<String>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(self.entry_key(path))
            .arg("at")
            .arg("url")
            .arg("body")
            .query_async(&mut redis)
            .await?;
        let (Some(at), Some(url), Some(body)) = (at, url, body) else {
            return Ok(None);
        };
        let age = now_millis().saturating_sub(at);
        if u128::from(age) >= self.refetch_after.as_millis() {
            return Ok(None);
        }
        let Ok(url) = Url::parse(&url) else {
            return Ok(None);
        };
        Ok(Some(CachedRecord {
            url,
            body: Bytes::from(body),
        }))
    }

    /// Stores the answer for `path` if its body is well-formed JSON. Returns the cache's total
    /// bytes after eviction (`None`: not stored).
    pub async fn put(
        &self,
        path: &str,
        record: &CachedRecord,
    ) -> Result<Option<u64>, redis::RedisError> {
        if serde_json::from_slice::<serde::de::IgnoredAny>(&record.body).is_err() {
            return Ok(None);
        }
        let entry = self.entry_key(path);
        let size = record.body.len() + record.url.as_str().len() + entry.len() + ENTRY_OVERHEAD;
        let ttl = u64::try_from(self.refetch_after.as_millis()).unwrap_or(u64::MAX);
        let mut redis = self.redis.clone();
        self.script
            .key(&entry)
            .key(format!("{}#index", self.prefix))
            .key(format!("{}#sizes", self.prefix))
            .key(format!("{}#bytes", self.prefix))
            .arg(now_millis())
            .arg(ttl.max(1))
            .arg(self.max_bytes)
            .arg(size)
            .arg(record.url.as_str())
            .arg(record.body.as_ref())
            .arg(EXPIRED_PER_STORE)
            .invoke_async(&mut redis)
            .await
            .map(Some)
    }

    /// Drops the entry of `path`, if any: a freshness job fetched it again and the answer is
    /// not one to keep (a 404, a body that is not JSON), so the older copy must not be served
    /// to the next crawl either.
    pub async fn forget(&self, path: &str) -> Result<(), redis::RedisError> {
        let mut redis = self.redis.clone();
        self.forget
            .key(self.entry_key(path))
            .key(format!("{}#index", self.prefix))
            .key(format!("{}#sizes", self.prefix))
            .key(format!("{}#bytes", self.prefix))
            .invoke_async::<i64>(&mut redis)
            .await
            .map(drop)
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(body: &str) -> CachedRecord {
        CachedRecord {
            url: Url::parse("http://ol.test/works/OL1W.json").unwrap(),
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn a_cached_record_names_its_revision_when_it_has_an_integer_one() {
        assert_eq!(
            record(r#"{"key": "/works/OL1W", "revision": 4}"#).revision(),
            Some(4)
        );
        assert_eq!(
            record(r#"{"key": "/works/OL1W", "revision": "4"}"#).revision(),
            None
        );
        assert_eq!(record(r#"{"key": "/works/OL1W"}"#).revision(), None);
        assert_eq!(record(r#"[1, 2]"#).revision(), None);
    }
}
