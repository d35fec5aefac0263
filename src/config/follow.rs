//! The settings of `bookworm follow`, the change-feed follower.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::NaiveDate;
use clap::Args;

use super::parse::{parse_duration, parse_positive};
use super::{EgressArgs, KafkaArgs, Neo4jArgs, RedisArgs};

/// The change kinds read by default: every kind Open Library uses for an edit of a work, an
/// author or an edition. Each kind costs one request per day read (more on a busy day), so
/// kinds that never touch a record (`new-account`, `lists`) are left out.
pub const DEFAULT_KINDS: &str = "add-book,edit-book,update,merge-authors,add-cover,revert";

/// Parses a day `YYYY-MM-DD`.
pub fn parse_day(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| format!("{text:?} is not a date YYYY-MM-DD"))
}

/// Parses a change kind: lower-case letters, digits and `-`, as Open Library names them and
/// as they appear in the feed's path (`/recentchanges/<kind>.json`).
pub fn parse_kind(text: &str) -> Result<String, String> {
    let kind = text.trim();
    let valid = !kind.is_empty()
        && kind.len() <= 40
        && kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(kind.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a change kind (lower-case letters, digits and '-', e.g. add-book)"
        ))
    }
}

/// Parses the follower's depth: 0 (refresh the changed record and its edges) or 1 (also
/// fetch its new neighbours). More would be a crawl, not a refresh.
pub fn parse_follow_depth(text: &str) -> Result<u32, String> {
    match text.trim() {
        "0" => Ok(0),
        "1" => Ok(1),
        _ => Err(format!("{text:?} is not a follow depth (0 or 1)")),
    }
}

/// Parses the follower's name: it names its cursor and its crawls, so it stays short and
/// plain.
pub fn parse_follow_name(text: &str) -> Result<String, String> {
    let name = text.trim();
    let valid = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a follower name (letters, digits, '-' and '_', at most 40)"
        ))
    }
}

/// `bookworm follow`.
#[derive(Args, Debug, Clone)]
pub struct FollowArgs {
    /// The first day of the feed to read when no cursor exists yet (`YYYY-MM-DD`): the date
    /// of the dump the graph was loaded from. Without it, and without a cursor, the follower
    /// starts today. Ignored once a cursor exists: a restart resumes where it stopped.
    #[arg(long, env = "FOLLOW_SINCE", value_parser = parse_day)]
    pub follow_since: Option<NaiveDate>,
    /// Change kinds read, each day kind by kind (the feed serves at most 11,000 entries per
    /// day and kind, so a busy day read as one list would lose entries).
    #[arg(long, env = "FOLLOW_KINDS", default_value = DEFAULT_KINDS, value_delimiter = ',', value_parser = parse_kind)]
    pub follow_kinds: Vec<String>,
    /// Depth of the freshness crawls: 0 refreshes each changed record and its edges; 1 also
    /// fetches the records it newly names.
    #[arg(long, env = "FOLLOW_DEPTH", default_value = "0", value_parser = parse_follow_depth)]
    pub follow_depth: u32,
    /// This follower's name: its cursor and lease in Redis, and its crawls' ids
    /// (`follow:<name>:…`). Replicas with one name share one cursor (one leads).
    #[arg(long, env = "FOLLOW_NAME", default_value = "freshness", value_parser = parse_follow_name)]
    pub follow_name: String,
    /// How often the feed is read again once caught up.
    #[arg(long, env = "FOLLOW_POLL_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub follow_poll_interval: Duration,
    /// Most keys per freshness crawl: a round with more changed keys starts several crawls.
    #[arg(long, env = "FOLLOW_BATCH_KEYS", default_value = "1000", value_parser = parse_positive)]
    pub follow_batch_keys: usize,
    /// How long the leader's lease on the cursor lasts without renewal: a replica whose
    /// leader died takes over after at most this long.
    #[arg(long, env = "FOLLOW_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub follow_lease: Duration,
    /// How long after a day's end the day is still read for late entries before the cursor
    /// moves to the next day for good.
    #[arg(long, env = "FOLLOW_DAY_GRACE", default_value = "1h", value_parser = parse_duration)]
    pub follow_day_grace: Duration,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9103")]
    pub metrics_addr: SocketAddr,
    /// How long a freshness crawl's working state is kept after it is done (its summary
    /// stays), as for every crawl.
    #[arg(long, env = "CRAWL_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub crawl_retention: Duration,
    /// Bound on publishing one round's jobs.
    #[arg(long, env = "PUBLISH_TIMEOUT", default_value = "90s", value_parser = parse_duration)]
    pub publish_timeout: Duration,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub redis: RedisArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub neo4j: Neo4jArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub egress: EgressArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_names_and_depths_are_checked() {
        assert_eq!(parse_kind("merge-authors"), Ok("merge-authors".to_owned()));
        for bad in ["", "Add-Book", "add book", "../x"] {
            assert!(parse_kind(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_follow_depth("1"), Ok(1));
        assert!(parse_follow_depth("2").is_err());
        assert!(parse_follow_name("a/b").is_err());
        assert_eq!(
            parse_day("2021-03-31"),
            Ok(NaiveDate::from_ymd_opt(2021, 3, 31).unwrap())
        );
        assert!(parse_day("2021-02-30").is_err());
    }
}
