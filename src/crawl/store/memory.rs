//! How full Redis is, so the crawl pipeline slows down before Redis refuses writes.
//!
//! Production runs Redis with `maxmemory` and `noeviction`: past the limit every write fails,
//! and a crawl whose claims cannot be written would make every worker retry every job.
//! Instead, once Redis is above [`HIGH_WATER`] of its limit, the store refuses to start
//! work that adds state — a new crawl (the API answers 503) or a job's begin (the worker
//! parks the job and retries it later) — while work already running still finishes, which
//! is what frees memory (finished crawls expire after `CRAWL_RETENTION`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use super::{CrawlStore, MEMORY_INTERVAL, StoreError};
use crate::process::metrics::RedisMemoryMetrics;

/// The share of `maxmemory` above which new work is refused: room for the jobs already
/// running to finish, and for the summaries of the crawls they finish.
pub const HIGH_WATER: f64 = 0.9;

/// One reading of Redis's `INFO memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryReading {
    /// `used_memory`, in bytes.
    pub used: u64,
    /// `maxmemory`, in bytes; 0 when Redis has no limit.
    pub max: u64,
}

impl MemoryReading {
    /// Whether Redis is above [`HIGH_WATER`] of its limit (never, without a limit).
    pub fn is_nearly_full(&self) -> bool {
        self.max > 0 && self.used as f64 >= self.max as f64 * HIGH_WATER
    }

    /// Reads `used_memory` and `maxmemory` from the text of `INFO memory`.
    fn parse(info: &str) -> Option<Self> {
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().parse().ok())
        };
        Some(Self {
            used: field("used_memory")?,
            max: field("maxmemory")?,
        })
    }
}

/// The latest [`MemoryReading`], shared by every clone of a store and refreshed in the
/// background by [`MemoryWatch::follow`]. Before its first reading it says "not full":
/// a store that cannot read Redis's memory fails on Redis itself, not on this guard.
#[derive(Debug, Clone, Default)]
pub struct MemoryWatch {
    used: Arc<AtomicU64>,
    max: Arc<AtomicU64>,
}

impl MemoryWatch {
    /// The latest reading.
    pub fn reading(&self) -> MemoryReading {
        MemoryReading {
            used: self.used.load(Ordering::Relaxed),
            max: self.max.load(Ordering::Relaxed),
        }
    }

    /// Reads Redis's memory now and keeps the reading.
    pub async fn refresh(
        &self,
        conn: &mut ConnectionManager,
    ) -> Result<MemoryReading, redis::RedisError> {
        let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
        let reading = MemoryReading::parse(&info).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "INFO memory without used_memory or maxmemory",
            ))
        })?;
        self.used.store(reading.used, Ordering::Relaxed);
        self.max.store(reading.max, Ordering::Relaxed);
        Ok(reading)
    }

    /// Refreshes the reading every `every` until `shutdown`, handing each to `report` (the
    /// process's gauges). A failed reading keeps the last one: Redis being down is the
    /// readiness check's business.
    pub fn follow(
        self,
        mut conn: ConnectionManager,
        every: Duration,
        shutdown: CancellationToken,
        report: impl Fn(MemoryReading) + Send + 'static,
    ) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match self.refresh(&mut conn).await {
                    Ok(reading) => report(reading),
                    Err(e) => tracing::debug!(error = %e, "reading Redis's memory failed"),
                }
            }
        });
    }
}

impl CrawlStore {
    /// How full Redis is, shared by every clone of this store: refresh it with
    /// [`MemoryWatch::follow`] (the services do, and export it as a gauge).
    pub fn memory(&self) -> &MemoryWatch {
        &self.memory
    }

    /// Reads how full Redis is every [`MEMORY_INTERVAL`] until `shutdown`, for this store's
    /// guard and for `gauges`. Each service that creates crawls or begins jobs starts it once.
    pub fn watch_memory(&self, gauges: RedisMemoryMetrics, shutdown: CancellationToken) {
        self.memory.clone().follow(
            self.conn.clone(),
            MEMORY_INTERVAL,
            shutdown,
            move |reading| {
                gauges.used_bytes.set(reading.used as i64);
                gauges.max_bytes.set(reading.max as i64);
            },
        );
    }

    /// Refuses work that adds state while Redis is nearly full.
    pub(super) fn check_room(&self) -> Result<(), StoreError> {
        let reading = self.memory.reading();
        if reading.is_nearly_full() {
            return Err(StoreError::NearlyFull(reading));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_nearly_full_above_the_high_water_of_a_limit_only() {
        let info = "# Memory\r\nused_memory:950\r\nused_memory_human:950B\r\nmaxmemory:1000\r\n";
        let reading = MemoryReading::parse(info).expect("parses");
        assert_eq!(
            reading,
            MemoryReading {
                used: 950,
                max: 1000
            }
        );
        assert!(reading.is_nearly_full());
        assert!(
            !MemoryReading {
                used: 899,
                max: 1000
            }
            .is_nearly_full()
        );
        assert!(
            !MemoryReading {
                used: 1 << 40,
                max: 0
            }
            .is_nearly_full()
        );
        assert_eq!(MemoryReading::parse("used_memory:1\r\n"), None);
    }
}
