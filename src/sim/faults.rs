//! Fault injection: what can go wrong with a request, decided deterministically from the
//! fault seed, the request's key and its attempt number, so a chaos run can be replayed and
//! its failures explained.
//!
//! Two kinds: per-request faults drawn at a rate (latency spikes, 5xx, malformed JSON,
//! connection resets), which a retrying client eventually gets past; and keys that ALWAYS
//! fail (a share of keys chosen by key hash), which must end in the DLQ.

use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::config::{parse_duration, parse_ratio};
use crate::message::FailureReason;

/// The faults the simulator injects. Changeable at run time through `POST /_sim/faults`
/// (a JSON body with any of these fields; missing fields are zero/default).
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Latency added to every answer.
    #[arg(long = "latency", env = "SIM_LATENCY", default_value = "0ms", value_parser = parse_duration)]
    #[serde(with = "millis")]
    pub latency: Duration,
    /// Extra latency of a spike.
    #[arg(long = "spike-latency", env = "SIM_SPIKE_LATENCY", default_value = "0ms", value_parser = parse_duration)]
    #[serde(with = "millis")]
    pub spike_latency: Duration,
    /// Share of requests (0..1) that get the spike.
    #[arg(long, env = "SIM_SPIKE_RATE", default_value = "0", value_parser = parse_ratio)]
    pub spike_rate: f64,
    /// Share of requests (0..1) answered with `error_status`.
    #[arg(long, env = "SIM_ERROR_RATE", default_value = "0", value_parser = parse_ratio)]
    pub error_rate: f64,
    /// Status of injected errors (Open Library's load balancers answer 503).
    #[arg(long, env = "SIM_ERROR_STATUS", default_value = "503")]
    pub error_status: u16,
    /// Share of requests (0..1) answered 200 with a truncated JSON body.
    #[arg(long, env = "SIM_MALFORMED_RATE", default_value = "0", value_parser = parse_ratio)]
    pub malformed_rate: f64,
    /// Share of requests (0..1) whose connection is cut before the body completes.
    #[arg(long, env = "SIM_RESET_RATE", default_value = "0", value_parser = parse_ratio)]
    pub reset_rate: f64,
    /// Share of keys (0..1, by key hash) that always answer `always_fail_status`.
    #[arg(long, env = "SIM_ALWAYS_FAIL_SHARE", default_value = "0", value_parser = parse_ratio)]
    pub always_fail_share: f64,
    /// Status of always-failing keys.
    #[arg(long, env = "SIM_ALWAYS_FAIL_STATUS", default_value = "503")]
    pub always_fail_status: u16,
    /// Share of keys (0..1, by key hash, disjoint from the failing ones) that always answer
    /// malformed JSON.
    #[arg(long, env = "SIM_ALWAYS_MALFORMED_SHARE", default_value = "0", value_parser = parse_ratio)]
    pub always_malformed_share: f64,
    /// Seed of the fault draws: same seed, same faults for the same (key, attempt).
    #[arg(long, env = "SIM_FAULT_SEED", default_value = "7")]
    pub fault_seed: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency: Duration::ZERO,
            spike_latency: Duration::ZERO,
            spike_rate: 0.0,
            error_rate: 0.0,
            error_status: 503,
            malformed_rate: 0.0,
            reset_rate: 0.0,
            always_fail_share: 0.0,
            always_fail_status: 503,
            always_malformed_share: 0.0,
            fault_seed: 7,
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Injected {
    /// Answer with this status (an always-failing key, or a drawn error).
    Status {
        /// The HTTP status.
        status: u16,
        /// Whether the key always fails.
        always: bool,
    },
    /// Answer 200 with a truncated body.
    Malformed {
        /// Whether the key always fails.
        always: bool,
    },
    /// Cut the connection mid-answer.
    Reset,
}

/// FNV-1a then a SplitMix64 finaliser: a hash that is stable across Rust versions and runs
/// (std's `DefaultHasher` promises neither).
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A uniform draw in `[0, 1)` from the parts.
fn draw(parts: &[&[u8]]) -> f64 {
    (stable_hash(parts) >> 11) as f64 / (1u64 << 53) as f64
}

impl Faults {
    /// Why every fetch of `key` fails, if it is one of the always-failing keys: the DLQ
    /// reason a crawler must record for it.
    pub fn always_fails(&self, key: &str) -> Option<FailureReason> {
        match self.always(key)? {
            Injected::Status { status, .. } => Some(reason_of(status)),
            Injected::Malformed { .. } => Some(FailureReason::Parse),
            Injected::Reset => None,
        }
    }

    fn always(&self, key: &str) -> Option<Injected> {
        let seed = self.fault_seed.to_le_bytes();
        let u = draw(&[&seed, b"always", key.as_bytes()]);
        if u < self.always_fail_share {
            Some(Injected::Status {
                status: self.always_fail_status,
                always: true,
            })
        } else if u < self.always_fail_share + self.always_malformed_share {
            Some(Injected::Malformed { always: true })
        } else {
            None
        }
    }

    /// The fault for the `attempt`-th request (0-based) of `key`, if any. `key` is `None`
    /// for paths that name no key (search), which only get drawn faults.
    pub fn decide(&self, key: Option<&str>, path: &str, attempt: u64) -> Option<Injected> {
        if let Some(always) = key.and_then(|k| self.always(k)) {
            return Some(always);
        }
        let seed = self.fault_seed.to_le_bytes();
        let n = attempt.to_le_bytes();
        let u = draw(&[&seed, b"draw", path.as_bytes(), &n]);
        let mut edge = self.error_rate;
        if u < edge {
            return Some(Injected::Status {
                status: self.error_status,
                always: false,
            });
        }
        edge += self.malformed_rate;
        if u < edge {
            return Some(Injected::Malformed { always: false });
        }
        edge += self.reset_rate;
        (u < edge).then_some(Injected::Reset)
    }

    /// The latency to add to the `attempt`-th request of `path`, and whether it is a spike.
    pub fn latency(&self, path: &str, attempt: u64) -> (Duration, bool) {
        let seed = self.fault_seed.to_le_bytes();
        let n = attempt.to_le_bytes();
        if self.spike_rate > 0.0 && draw(&[&seed, b"spike", path.as_bytes(), &n]) < self.spike_rate
        {
            (self.latency + self.spike_latency, true)
        } else {
            (self.latency, false)
        }
    }
}

/// The DLQ reason a crawler records for a status that never goes away.
pub fn reason_of(status: u16) -> FailureReason {
    match status {
        429 => FailureReason::RateLimited,
        500..=599 => FailureReason::Http5xx,
        _ => FailureReason::Http4xx,
    }
}
