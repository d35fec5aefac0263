//! The follower's durable cursor, and the lease that makes one replica its only writer.
//!
//! The cursor is the first day not yet read for good and, per open day and kind, the highest
//! change id whose keys were enqueued. It lives in Redis (`bookworm:follow:<name>:cursor`, JSON), so a restart or
//! another replica resumes exactly there; it has no TTL. Several replicas may run: the one
//! holding the lease (`…:lease`, a token with a TTL of `FOLLOW_LEASE`) reads the feed and
//! moves the cursor, the others wait to take over. Every write of the cursor checks the
//! lease in the same script, so a leader that lost its lease (paused past the TTL, say)
//! cannot move a cursor another replica now owns: at worst both enqueued a round's keys,
//! which costs a few fetches and loses nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::NaiveDate;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

/// Takes the lease when free, or renews it when `ARGV[1]` holds it; 1 when held after.
const TAKE_LEASE: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Writes the cursor (KEYS[2]) only while `ARGV[1]` holds the lease (KEYS[1]); 1 if written.
const SAVE_IF_LEADER: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
"#;

/// Gives the lease up if `ARGV[1]` holds it, so a successor need not wait for the TTL.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Why the cursor could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    /// Redis failed: the round is retried.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The stored cursor is not a cursor (hand-edited?): the follower stops rather than
    /// start over and re-read months.
    #[error("the cursor at {key} does not parse: {detail}")]
    Corrupt {
        /// The Redis key.
        key: String,
        /// What did not parse.
        detail: String,
    },
}

/// Where the follower is in the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The first day not read for good: every day before it is.
    pub day: NaiveDate,
    /// Per open day (`day` and the days after it read so far, `YYYY-MM-DD`), per kind, the
    /// highest change id whose keys are enqueued. A day is dropped from here when it is
    /// closed, so this holds a day or two, not the history.
    #[serde(default)]
    pub seen: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Cursor {
    /// A cursor at the start of `day`.
    pub fn at(day: NaiveDate) -> Self {
        Cursor {
            day,
            seen: BTreeMap::new(),
        }
    }

    /// The highest id of `kind` already read on `day` (0: none).
    pub fn seen(&self, day: NaiveDate, kind: &str) -> u64 {
        self.seen
            .get(&day_name(day))
            .and_then(|kinds| kinds.get(kind))
            .copied()
            .unwrap_or(0)
    }

    /// Records that `kind`'s entries of `day` up to `id` are enqueued.
    pub fn advance(&mut self, day: NaiveDate, kind: &str, id: u64) {
        let slot = self
            .seen
            .entry(day_name(day))
            .or_default()
            .entry(kind.to_owned())
            .or_insert(0);
        *slot = (*slot).max(id);
    }

    /// Closes the cursor's first day for good: the next day becomes the first.
    pub fn close_day(&mut self) {
        self.seen.remove(&day_name(self.day));
        self.day = self.day.succ_opt().unwrap_or(self.day);
    }
}

fn day_name(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

/// The cursor and lease of one follower name.
#[derive(Clone)]
pub struct CursorStore {
    redis: ConnectionManager,
    cursor_key: String,
    lease_key: String,
    holder: String,
    lease: Duration,
}

impl CursorStore {
    /// The store of follower `name`, whose lease this process claims as `holder`.
    pub fn new(redis: ConnectionManager, name: &str, holder: String, lease: Duration) -> Self {
        Self {
            redis,
            cursor_key: format!("bookworm:follow:{name}:cursor"),
            lease_key: format!("bookworm:follow:{name}:lease"),
            holder,
            lease,
        }
    }

    /// Takes or renews the lease; whether this process leads now.
    pub async fn lead(&self) -> Result<bool, CursorError> {
        let held: i64 = redis::Script::new(TAKE_LEASE)
            .key(&self.lease_key)
            .arg(&self.holder)
            .arg(self.lease.as_millis().max(1) as u64)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(held == 1)
    }

    /// Gives the lease up (on shutdown), so another replica takes over at once.
    pub async fn release(&self) -> Result<(), CursorError> {
        let _: i64 = redis::Script::new(RELEASE)
            .key(&self.lease_key)
            .arg(&self.holder)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// The stored cursor, if there is one.
    pub async fn load(&self) -> Result<Option<Cursor>, CursorError> {
        let text: Option<String> = redis::cmd("GET")
            .arg(&self.cursor_key)
            .query_async(&mut self.redis.clone())
            .await?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| CursorError::Corrupt {
                key: self.cursor_key.clone(),
                detail: e.to_string(),
            })
        })
        .transpose()
    }

    /// Writes `cursor` if this process still holds the lease; whether it did.
    pub async fn save(&self, cursor: &Cursor) -> Result<bool, CursorError> {
        let text = serde_json::to_string(cursor).map_err(|e| CursorError::Corrupt {
            key: self.cursor_key.clone(),
            detail: e.to_string(),
        })?;
        let written: i64 = redis::Script::new(SAVE_IF_LEADER)
            .key(&self.lease_key)
            .key(&self.cursor_key)
            .arg(&self.holder)
            .arg(text)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(written == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2021, 4, d).unwrap()
    }

    #[test]
    fn a_cursor_keeps_open_days_only_and_never_goes_back() {
        let mut cursor = Cursor::at(day(1));
        cursor.advance(day(1), "add-book", 10);
        cursor.advance(day(1), "add-book", 7);
        cursor.advance(day(2), "add-book", 20);
        assert_eq!(cursor.seen(day(1), "add-book"), 10, "ids only grow");
        assert_eq!(cursor.seen(day(2), "update"), 0);
        cursor.close_day();
        assert_eq!(cursor.day, day(2));
        assert_eq!(cursor.seen.len(), 1, "the closed day is forgotten");
        assert_eq!(cursor.seen(day(2), "add-book"), 20);
        let text = serde_json::to_string(&cursor).unwrap();
        assert_eq!(serde_json::from_str::<Cursor>(&text).unwrap(), cursor);
    }
}
