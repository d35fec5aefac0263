//! What the simulator saw: requests and 429s per client IP per minute, per path kind, per
//! User-Agent (with its busiest minute and how many IPs it came from), 403s to blocked
//! agents, and which keys got which injected fault, so tests can check politeness (no more
//! than the limit per IP, nor per User-Agent, in any minute; no more than four IPs per
//! agent) and that every injected failure was reported with the right reason.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
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
    #[serde(skip)]
    window: SlidingMinute,
}

/// Counts of one User-Agent, over every client IP: Open Library's second limit is per agent
/// (400 per minute across IPs), and it asks one client not to spread over five or more IPs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UserAgentStats {
    /// Requests received (including those answered 429 or 403).
    pub requests: u64,
    /// Requests answered 429 (by the per-IP or the per-agent limit).
    pub rate_limited: u64,
    /// Requests answered 403 because the agent is blocked.
    pub blocked: u64,
    /// The most requests received in any sliding 60-second window, over all IPs.
    pub max_requests_in_any_60s: u64,
    /// How many distinct client IPs sent under this agent.
    pub distinct_ips: u64,
    /// Those IPs, in order: which egresses a crawl used.
    pub ips: BTreeSet<String>,
    #[serde(skip)]
    window: SlidingMinute,
}

/// Arrival times (milliseconds since the epoch) of the last 60 seconds and the most seen at
/// once: the sliding window behind `max_requests_in_any_60s`. Older arrivals are dropped as
/// new ones come, so memory stays bounded by one minute's traffic in long runs.
#[derive(Debug, Clone, Default)]
struct SlidingMinute {
    arrivals: VecDeque<u64>,
    max: u64,
}

impl SlidingMinute {
    /// Counts an arrival at `now` (milliseconds, never earlier than the previous one) and
    /// returns the most arrivals in any 60 seconds so far.
    fn arrive(&mut self, now: u64) -> u64 {
        while self
            .arrivals
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= 60_000)
        {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back(now);
        self.max = self.max.max(self.arrivals.len() as u64);
        self.max
    }
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
    /// Requests answered 403 because their User-Agent is blocked.
    pub blocked: u64,
    /// Per client IP.
    pub per_ip: BTreeMap<String, IpStats>,
    /// Per path kind (`work`, `author`, `edition`, `author_works`, `work_editions`,
    /// `subject`, `search`, `robots`, `other`).
    pub per_kind: BTreeMap<String, u64>,
    /// Per User-Agent (the header as sent; empty when there was none).
    pub per_user_agent: BTreeMap<String, UserAgentStats>,
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
        self.arrived_at(now_millis(), ip, kind, user_agent);
    }

    /// Counts a request that arrived at `now` (milliseconds since the epoch; arrivals come
    /// in time order): [`Stats::arrived`] with the clock passed in, so the sliding windows
    /// are tested without waiting a minute.
    pub fn arrived_at(&mut self, now: u64, ip: &str, kind: &str, user_agent: &str) {
        self.requests += 1;
        *self.per_kind.entry(kind.to_owned()).or_default() += 1;
        let agent = self.agent(user_agent);
        agent.requests += 1;
        agent.max_requests_in_any_60s = agent.window.arrive(now);
        if !agent.ips.contains(ip) {
            agent.ips.insert(ip.to_owned());
            agent.distinct_ips = agent.ips.len() as u64;
        }
        let per_ip = self.per_ip.entry(ip.to_owned()).or_default();
        per_ip.requests += 1;
        per_ip.max_requests_in_any_60s = per_ip.window.arrive(now);
        per_ip.minutes.entry(now / 60_000).or_default().requests += 1;
    }

    /// The entry of `user_agent`, created on first use.
    fn agent(&mut self, user_agent: &str) -> &mut UserAgentStats {
        self.per_user_agent
            .entry(user_agent.to_owned())
            .or_default()
    }

    /// Counts a 429 to `ip` under `user_agent`.
    pub fn rate_limited(&mut self, ip: &str, user_agent: &str) {
        self.rate_limited += 1;
        self.agent(user_agent).rate_limited += 1;
        let per_ip = self.per_ip.entry(ip.to_owned()).or_default();
        per_ip.rate_limited += 1;
        per_ip
            .minutes
            .entry(now_millis() / 60_000)
            .or_default()
            .rate_limited += 1;
    }

    /// Counts a 403 to a blocked `user_agent`.
    pub fn blocked(&mut self, user_agent: &str) {
        self.blocked += 1;
        self.agent(user_agent).blocked += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;

    /// 30 requests in the first second, 30 more 59.5 s later: all 60 share a window; the
    /// first 30 have left it when 30 more come at 61 s, so the busiest minute stays 60.
    #[test]
    fn the_user_agent_window_slides_over_all_ips() {
        let mut stats = Stats::default();
        let start = 1_000 * MINUTE;
        for i in 0..30 {
            let ip = ["10.0.0.1", "10.0.0.2", "10.0.0.3"][i % 3];
            stats.arrived_at(start + i as u64 * 10, ip, "work", "Bot/1");
        }
        for i in 0..30 {
            stats.arrived_at(start + 59_500 + i, "10.0.0.1", "work", "Bot/1");
        }
        let agent = &stats.per_user_agent["Bot/1"];
        assert_eq!((agent.requests, agent.max_requests_in_any_60s), (60, 60));
        for i in 0..30 {
            stats.arrived_at(start + 61_000 + i, "10.0.0.2", "work", "Bot/1");
        }
        let agent = &stats.per_user_agent["Bot/1"];
        assert_eq!((agent.requests, agent.max_requests_in_any_60s), (90, 60));
        // No single IP saw more than its own share.
        assert_eq!(stats.per_ip["10.0.0.1"].max_requests_in_any_60s, 40);
    }

    /// Requests spaced more than a minute apart never share a window, and the window keeps
    /// only the last minute's arrivals, however long the run.
    #[test]
    fn the_window_forgets_what_is_older_than_a_minute() {
        let mut stats = Stats::default();
        for i in 0..1_000u64 {
            stats.arrived_at(i * (MINUTE / 10), "10.0.0.1", "work", "Bot/1");
        }
        let agent = &stats.per_user_agent["Bot/1"];
        assert_eq!(agent.max_requests_in_any_60s, 10);
        assert_eq!(agent.window.arrivals.len(), 10);
        assert_eq!(stats.per_ip["10.0.0.1"].window.arrivals.len(), 10);
    }

    /// Each agent counts the distinct IPs it came from, its 429s and its 403s; other agents
    /// are counted apart.
    #[test]
    fn each_agent_counts_its_ips_429s_and_403s() {
        let mut stats = Stats::default();
        for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.3", "10.0.0.2"] {
            stats.arrived_at(MINUTE, ip, "work", "Bot/1");
        }
        stats.arrived_at(MINUTE, "10.0.0.9", "robots", "Other/2");
        stats.rate_limited("10.0.0.1", "Bot/1");
        stats.blocked("Other/2");
        let bot = &stats.per_user_agent["Bot/1"];
        assert_eq!(bot.distinct_ips, 3);
        assert_eq!(
            bot.ips.iter().map(String::as_str).collect::<Vec<_>>(),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );
        assert_eq!((bot.rate_limited, bot.blocked), (1, 0));
        let other = &stats.per_user_agent["Other/2"];
        assert_eq!(
            (other.distinct_ips, other.rate_limited, other.blocked),
            (1, 0, 1)
        );
        assert_eq!(
            (stats.requests, stats.rate_limited, stats.blocked),
            (6, 1, 1)
        );
        let json = serde_json::to_value(&stats).expect("stats serialise");
        assert_eq!(json["per_user_agent"]["Bot/1"]["distinct_ips"], 3);
        assert_eq!(
            json["per_user_agent"]["Bot/1"]["max_requests_in_any_60s"],
            5
        );
        assert_eq!(json["blocked"], 1);
        assert!(json["per_user_agent"]["Bot/1"].get("window").is_none());
    }
}
