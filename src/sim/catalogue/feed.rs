//! The catalogue's change feed, in Open Library's shape: every change the generator applies
//! is one entry, and `/recentchanges[/YYYY[/MM[/DD]]][/<kind>].json` lists them newest first.
//!
//! An entry reads like Open Library's: `{"id": "123", "kind": "edit-book", "timestamp":
//! "2026-12-02T18:40:00.123456", "author": {"key": "/people/…"}, "ip": null, "comment": …,
//! "changes": [{"key", "revision"}], "data": {…}}`, plus `bot` (whether a bot made it, what
//! the feed's `bot=` parameter filters on). Ids increase by one and timestamps never go
//! backwards, so "newest first" is the same order by either.

use chrono::{Datelike, NaiveDate, NaiveDateTime};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::{Catalogue, TIMESTAMP_FORMAT};

/// Entries per answer when `limit` is not given (Open Library's default).
pub const FEED_DEFAULT_LIMIT: usize = 100;
/// Most entries per answer: a larger `limit` is clamped to this (Open Library's cap).
pub const FEED_MAX_LIMIT: usize = 1000;
/// Largest `offset` honoured: a larger one is clamped to this (Open Library's cap), so at
/// most `FEED_MAX_OFFSET + FEED_MAX_LIMIT` entries of one query are reachable.
pub const FEED_MAX_OFFSET: usize = 10_000;

/// Who made a change: `{"key": "/people/<name>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeAuthor {
    /// The account's key.
    pub key: String,
}

/// One record a change wrote, at the revision it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedRecord {
    /// The record's key (`/works/OL1W`).
    pub key: String,
    /// The revision the change gave it: what the record endpoint serves until the next
    /// change of that record.
    pub revision: i64,
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEntry {
    /// Increasing with every change, from 1; served as a string, as Open Library does.
    #[serde(serialize_with = "id_as_text", deserialize_with = "id_of_text")]
    pub id: u64,
    /// `edit-book`, `add-book`, `merge-authors`, `update` (a delete) or `add-cover`.
    pub kind: String,
    /// When it was applied (UTC, wall clock, `2026-12-02T18:40:00.123456`).
    #[serde(
        serialize_with = "timestamp_as_text",
        deserialize_with = "timestamp_of_text"
    )]
    pub timestamp: NaiveDateTime,
    /// The account that made it.
    pub author: ChangeAuthor,
    /// Always `null`, as Open Library serves it to anonymous readers.
    pub ip: Option<String>,
    /// What the change did, in words.
    pub comment: String,
    /// Every record it wrote, each at its new revision.
    pub changes: Vec<ChangedRecord>,
    /// Kind-specific details (a merge names `master` and `duplicates`), `{}` otherwise.
    pub data: Value,
    /// Whether a bot made it (adds and merges, as Open Library's import and merge bots do).
    pub bot: bool,
}

fn id_as_text<S: Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_string())
}

fn id_of_text<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    text.parse()
        .map_err(|_| serde::de::Error::custom(format!("change id {text:?} is not a number")))
}

fn timestamp_as_text<S: Serializer>(at: &NaiveDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.format(TIMESTAMP_FORMAT).to_string())
}

fn timestamp_of_text<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveDateTime, D::Error> {
    let text = String::deserialize(d)?;
    NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f")
        .map_err(|_| serde::de::Error::custom(format!("timestamp {text:?}")))
}

/// The period of a dated feed path: `/recentchanges/YYYY`, `/YYYY/MM` or `/YYYY/MM/DD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedPeriod {
    /// A whole year.
    Year(i32),
    /// A month of a year.
    Month(i32, u32),
    /// One day (UTC).
    Day(NaiveDate),
}

impl FeedPeriod {
    /// Reads the date segments of a feed path (`["2021", "04", "01"]`): a four-digit year,
    /// then optionally a two-digit month and a two-digit day, naming a real date. `None` for
    /// anything else, which the feed answers 404 as Open Library does.
    pub fn parse(segments: &[&str]) -> Option<FeedPeriod> {
        let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        let year: i32 = match segments.first() {
            Some(y) if digits(y, 4) => y.parse().ok()?,
            _ => return None,
        };
        let month: Option<u32> = match segments.get(1) {
            Some(m) if digits(m, 2) => Some(m.parse().ok()?),
            Some(_) => return None,
            None => None,
        };
        let day: Option<u32> = match segments.get(2) {
            Some(d) if digits(d, 2) => Some(d.parse().ok()?),
            Some(_) => return None,
            None => None,
        };
        if segments.len() > 3 {
            return None;
        }
        match (month, day) {
            (None, _) => NaiveDate::from_ymd_opt(year, 1, 1).map(|_| FeedPeriod::Year(year)),
            (Some(m), None) => {
                NaiveDate::from_ymd_opt(year, m, 1).map(|_| FeedPeriod::Month(year, m))
            }
            (Some(m), Some(d)) => NaiveDate::from_ymd_opt(year, m, d).map(FeedPeriod::Day),
        }
    }

    /// Whether a change made at `at` (UTC) falls in the period.
    pub fn contains(&self, at: &NaiveDateTime) -> bool {
        match self {
            FeedPeriod::Year(y) => at.year() == *y,
            FeedPeriod::Month(y, m) => at.year() == *y && at.month() == *m,
            FeedPeriod::Day(d) => at.date() == *d,
        }
    }
}

/// One feed request: its filters (from the path and `bot=`) and its page (`limit`,
/// `offset`, already clamped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedQuery {
    /// Only changes in this period.
    pub period: Option<FeedPeriod>,
    /// Only changes of this kind.
    pub kind: Option<String>,
    /// Only bot changes (`true`) or only others (`false`).
    pub bot: Option<bool>,
    /// Entries to answer at most.
    pub limit: usize,
    /// Matching entries to skip, newest first.
    pub offset: usize,
}

impl Default for FeedQuery {
    fn default() -> Self {
        FeedQuery {
            period: None,
            kind: None,
            bot: None,
            limit: FEED_DEFAULT_LIMIT,
            offset: 0,
        }
    }
}

impl FeedQuery {
    /// The query of a feed path's `period` and `kind` with its query-string `pairs`, read as
    /// Open Library reads them: a `limit` or `offset` that is not a non-negative integer
    /// counts as absent (default 100 and 0), a larger one is clamped to 1,000 and 10,000;
    /// `bot` is `true` or `false` (any case), anything else means no filter.
    pub fn new(
        period: Option<FeedPeriod>,
        kind: Option<String>,
        pairs: &[(String, String)],
    ) -> FeedQuery {
        let value = |name: &str| pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.trim());
        let number = |name: &str, default: usize| {
            value(name)
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(default)
        };
        FeedQuery {
            period,
            kind,
            bot: match value("bot").map(str::to_ascii_lowercase).as_deref() {
                Some("true") => Some(true),
                Some("false") => Some(false),
                _ => None,
            },
            limit: number("limit", FEED_DEFAULT_LIMIT).min(FEED_MAX_LIMIT),
            offset: number("offset", 0).min(FEED_MAX_OFFSET),
        }
    }

    fn matches(&self, entry: &ChangeEntry) -> bool {
        self.period.is_none_or(|p| p.contains(&entry.timestamp))
            && self.kind.as_deref().is_none_or(|k| k == entry.kind)
            && self.bot.is_none_or(|b| b == entry.bot)
    }
}

impl Catalogue {
    /// Every change applied so far, oldest first.
    pub fn changes(&self) -> &[ChangeEntry] {
        &self.log
    }

    /// The id of the latest change, if any.
    pub fn last_change_id(&self) -> Option<u64> {
        self.log.last().map(|e| e.id)
    }

    /// The answer to a feed request: the matching entries, newest first, one page of them.
    pub fn recent_changes(&self, query: &FeedQuery) -> Vec<&ChangeEntry> {
        self.log
            .iter()
            .rev()
            .filter(|e| query.matches(e))
            .skip(query.offset)
            .take(query.limit)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn periods_are_real_dates_in_open_library_form() {
        let day = NaiveDate::from_ymd_opt(2021, 4, 1).unwrap();
        assert_eq!(
            FeedPeriod::parse(&["2021", "04", "01"]),
            Some(FeedPeriod::Day(day))
        );
        assert_eq!(
            FeedPeriod::parse(&["2021", "04"]),
            Some(FeedPeriod::Month(2021, 4))
        );
        assert_eq!(FeedPeriod::parse(&["2021"]), Some(FeedPeriod::Year(2021)));
        for bad in [
            &["2021", "02", "30"][..],
            &["2021", "13"],
            &["2021", "4", "1"],
            &["21"],
            &["2021", "04", "01", "02"],
            &[],
        ] {
            assert_eq!(FeedPeriod::parse(bad), None, "{bad:?}");
        }
        let at = day.and_hms_opt(23, 59, 59).unwrap();
        assert!(FeedPeriod::Day(day).contains(&at));
        assert!(FeedPeriod::Month(2021, 4).contains(&at));
        assert!(!FeedPeriod::Year(2020).contains(&at));
    }

    #[test]
    fn limit_and_offset_are_clamped_and_bad_values_are_defaults() {
        let q = FeedQuery::new(
            None,
            None,
            &pairs(&[("limit", "5000"), ("offset", "99999")]),
        );
        assert_eq!((q.limit, q.offset), (FEED_MAX_LIMIT, FEED_MAX_OFFSET));
        let q = FeedQuery::new(None, None, &pairs(&[("limit", "-3"), ("offset", "x")]));
        assert_eq!((q.limit, q.offset, q.bot), (FEED_DEFAULT_LIMIT, 0, None));
        let q = FeedQuery::new(None, None, &pairs(&[("bot", "TRUE")]));
        assert_eq!(q.bot, Some(true));
        let q = FeedQuery::new(None, None, &pairs(&[("bot", "maybe")]));
        assert_eq!(q.bot, None);
    }

    #[test]
    fn an_entry_serialises_as_open_library_writes_it() {
        let entry = ChangeEntry {
            id: 123,
            kind: "edit-book".to_owned(),
            timestamp: NaiveDate::from_ymd_opt(2026, 12, 2)
                .unwrap()
                .and_hms_micro_opt(18, 40, 0, 123_456)
                .unwrap(),
            author: ChangeAuthor {
                key: "/people/bookworm-sim".to_owned(),
            },
            ip: None,
            comment: "Edited the title".to_owned(),
            changes: vec![ChangedRecord {
                key: "/works/OL1W".to_owned(),
                revision: 4,
            }],
            data: serde_json::json!({}),
            bot: false,
        };
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["id"], "123");
        assert_eq!(json["timestamp"], "2026-12-02T18:40:00.123456");
        assert_eq!(json["ip"], Value::Null);
        assert_eq!(json["changes"][0]["revision"], 4);
        let back: ChangeEntry = serde_json::from_value(json).unwrap();
        assert_eq!(back, entry);
    }
}
