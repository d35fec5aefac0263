//! What the simulator saw: requests and 429s per client IP per minute, per path kind, per
//! User-Agent, and which keys got which injected fault, so tests can check politeness
//! (no more than the limit per IP in any minute) and that every injected failure was
//! reported with the right reason.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::faults::Injected;

/// Counts of one minute (Unix minute, i.e. seconds since the epoch divided by 60).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MinuteStats {
    /// Requests received (including those answered 429).
    pub requests: u64,
    /// Requests answered 429.
    pub rate_limited: u64,
}

/// Counts of one client IP.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IpStats {
    /// Requests received.
    pub requests: u64,
    /// Requests answered 429.
    pub rate_limited: u64,
    /// Requests the limiter held back before serving (nginx `delay`).
    pub delayed: u64,
    /// The most requests received in any sliding 60-second window.
    pub max_requests_in_any_60s: u64,
    /// Per Unix minute.
    pub minutes: BTreeMap<u64, MinuteStats>,
    /// Arrival times (milliseconds since the epoch) of the last 60 seconds, for the
    /// sliding window; older ones are dropped so memory stays bounded in long runs.
    #[serde(skip)]
    window: std::collections::VecDeque<u64>,
}

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
pub struct InjectedRecord {
    /// The request path.
    pub path: String,
    /// The request's attempt number for that path (0-based).
    pub attempt: u64,
    /// What was injected.
    #[serde(flatten)]
    pub fault: Injected,
}

/// Everything the simulator counted since start (or the last reset).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Requests received on Open Library paths (the `/_sim/` endpoints are not counted).
    pub requests: u64,
    /// Requests answered 429.
    pub rate_limited: u64,
    /// Requests held back by the limiter.
    pub delayed: u64,
    /// Per client IP.
    pub per_ip: BTreeMap<String, IpStats>,
    /// Per path kind (`work`, `author`, `edition`, `author_works`, `work_editions`,
    /// `subject`, `search`, `robots`, `other`).
    pub per_kind: BTreeMap<String, u64>,
    /// Per User-Agent.
    pub per_user_agent: BTreeMap<String, u64>,
    /// Requests that got the latency spike.
    pub latency_spikes: u64,
    /// Injected faults by key (or by path for requests that name no key).
    pub injected: BTreeMap<String, Vec<InjectedRecord>>,
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

impl Stats {
    /// Counts a request as it arrives.
    pub fn arrived(&mut self, ip: &str, kind: &str, user_agent: &str) {
        let now = now_millis();
        self.requests += 1;
        *self.per_kind.entry(kind.to_owned()).or_default() += 1;
        *self
            .per_user_agent
            .entry(user_agent.to_owned())
            .or_default() += 1;
        let per_ip = self.per_ip.entry(ip.to_owned()).or_default();
        per_ip.requests += 1;
        while per_ip
            .window
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= 60_000)
        {
            per_ip.window.pop_front();
        }
        per_ip.window.push_back(now);
        per_ip.max_requests_in_any_60s = per_ip
            .max_requests_in_any_60s
            .max(per_ip.window.len() as u64);
        per_ip.minutes.entry(now / 60_000).or_default().requests += 1;
    }

    /// Counts a 429.
    pub fn rate_limited(&mut self, ip: &str) {
        self.rate_limited += 1;
        let per_ip = self.per_ip.entry(ip.to_owned()).or_default();
        per_ip.rate_limited += 1;
        per_ip
            .minutes
            .entry(now_millis() / 60_000)
            .or_default()
            .rate_limited += 1;
    }

    /// Counts a request held back by the limiter.
    pub fn delayed(&mut self, ip: &str) {
        self.delayed += 1;
        self.per_ip.entry(ip.to_owned()).or_default().delayed += 1;
    }

    /// Records an injected fault.
    pub fn injected(&mut self, key: &str, record: InjectedRecord) {
        self.injected
            .entry(key.to_owned())
            .or_default()
            .push(record);
    }

    /// Counts a latency spike.
    pub fn spiked(&mut self) {
        self.latency_spikes += 1;
    }
}
