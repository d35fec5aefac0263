//! Open Library's change feed as the follower reads it: one day and one kind at a time,
//! page by page, newest first, down to the last entry it already has.
//!
//! `/recentchanges/YYYY/MM/DD/<kind>.json?limit=1000&offset=N` lists a day's changes of one
//! kind, newest first; `limit` is clamped to 1,000 and `offset` to 10,000, so at most 11,000
//! entries of one (day, kind) are reachable. Reading stops at the first entry whose id is not
//! above the cursor's: ids grow with time, and entries that arrive while the pages are read
//! push older ones to later offsets, so an entry may be seen twice (deduplicated by id) but
//! never skipped. A (day, kind) with more than 11,000 new entries cannot be read whole; that
//! is reported, not hidden ([`DayKindRead::capped`]).

use std::collections::HashSet;

use chrono::{NaiveDate, NaiveDateTime};
use serde::{Deserialize, Deserializer};

use crate::crawl::client::{FetchError, OpenLibraryClient};

/// Entries per page: the feed's own maximum.
pub const PAGE_LIMIT: usize = 1000;

/// The largest offset the feed honours.
pub const MAX_OFFSET: usize = 10_000;

/// Why the feed could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The request failed (network, rate limits, robots.txt, a block): try again next round.
    #[error("reading {path}: {source}")]
    Fetch {
        /// The page.
        path: String,
        /// The client's error.
        source: FetchError,
    },
    /// The page is not a list of change entries.
    #[error("{path} is not a change list: {detail}")]
    Shape {
        /// The page.
        path: String,
        /// What did not parse.
        detail: String,
    },
    /// The feed answered with a status other than 200.
    #[error("{path} answered HTTP {status}")]
    Status {
        /// The page.
        path: String,
        /// The status.
        status: u16,
    },
}

/// One key a change touched, at the revision the change made.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChangedKey {
    /// The record's key (`/works/OL1W`; also `/people/…`, `/lists/…` for other records).
    pub key: String,
    /// The revision the change wrote (absent in some old entries).
    #[serde(default)]
    pub revision: Option<i64>,
}

/// One entry of the feed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChangeEntry {
    /// The change's id: increasing with time (Open Library sends it as a string).
    #[serde(deserialize_with = "id_of")]
    pub id: u64,
    /// `add-book`, `edit-book`, `merge-authors`, …
    #[serde(default)]
    pub kind: String,
    /// When it was made (UTC, `2021-04-01T09:00:00.123456`).
    #[serde(deserialize_with = "timestamp_of")]
    pub timestamp: NaiveDateTime,
    /// The keys it wrote.
    #[serde(default)]
    pub changes: Vec<ChangedKey>,
}

fn id_of<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Number(u64),
        Text(String),
    }
    match Id::deserialize(d)? {
        Id::Number(n) => Ok(n),
        Id::Text(t) => t
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("change id {t:?} is not a number"))),
    }
}

fn timestamp_of<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveDateTime, D::Error> {
    let text = String::deserialize(d)?;
    NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f")
        .map_err(|_| serde::de::Error::custom(format!("timestamp {text:?}")))
}

/// The path of one page of a day's changes of one kind.
pub fn page_path(day: NaiveDate, kind: &str, offset: usize) -> String {
    format!(
        "/recentchanges/{}/{kind}.json?limit={PAGE_LIMIT}&offset={offset}",
        day.format("%Y/%m/%d")
    )
}

/// What one (day, kind) read gave.
#[derive(Debug, Default)]
pub struct DayKindRead {
    /// Entries with an id above the cursor's, newest first, each once.
    pub entries: Vec<ChangeEntry>,
    /// The feed's caps hid older entries: the read stopped at offset [`MAX_OFFSET`] without
    /// reaching the cursor.
    pub capped: bool,
    /// Pages requested.
    pub pages: u32,
}

/// Reads the entries of `day` and `kind` whose id is above `after`, through the polite
/// client (robots.txt, the shared rate limits and the egress pool apply as to every request).
pub async fn read_since(
    client: &OpenLibraryClient,
    day: NaiveDate,
    kind: &str,
    after: u64,
) -> Result<DayKindRead, FeedError> {
    let mut read = DayKindRead::default();
    // Ids already taken: a page shifted by new entries repeats some, and a capped read holds
    // 11,000 entries, too many to search linearly for each.
    let mut seen = HashSet::new();
    let mut offset = 0;
    loop {
        let path = page_path(day, kind, offset);
        let fetched = client.get(&path).await.map_err(|source| FeedError::Fetch {
            path: path.clone(),
            source,
        })?;
        read.pages += 1;
        if fetched.status != 200 {
            return Err(FeedError::Status {
                path,
                status: fetched.status,
            });
        }
        let page: Vec<ChangeEntry> =
            serde_json::from_slice(&fetched.body).map_err(|e| FeedError::Shape {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        let full = page.len() >= PAGE_LIMIT;
        let mut reached = false;
        for entry in page {
            if entry.id <= after {
                reached = true;
                break;
            }
            if seen.insert(entry.id) {
                read.entries.push(entry);
            }
        }
        if reached || !full {
            return Ok(read);
        }
        offset += PAGE_LIMIT;
        if offset > MAX_OFFSET {
            read.capped = true;
            return Ok(read);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_as_open_library_writes_them() {
        let body = r#"[{"id": "123", "kind": "merge-authors", "timestamp": "2021-04-01T09:00:00.123456",
            "author": {"key": "/people/x"}, "comment": "merged", "ip": null,
            "changes": [{"key": "/authors/OL2A", "revision": 5}, {"key": "/works/OL1W", "revision": 7}],
            "data": {}}]"#;
        let entries: Vec<ChangeEntry> = serde_json::from_str(body).unwrap();
        assert_eq!(entries[0].id, 123);
        assert_eq!(entries[0].changes[1].revision, Some(7));
        assert_eq!(
            entries[0].timestamp.format("%H:%M").to_string(),
            "09:00",
            "UTC as written"
        );
        let numeric: Vec<ChangeEntry> =
            serde_json::from_str(r#"[{"id": 9, "timestamp": "2021-04-01T09:00:00"}]"#).unwrap();
        assert_eq!((numeric[0].id, numeric[0].changes.len()), (9, 0));
        assert!(
            serde_json::from_str::<Vec<ChangeEntry>>(
                r#"[{"id": "x", "timestamp": "2021-04-01T09:00:00"}]"#
            )
            .is_err()
        );
    }

    #[test]
    fn a_page_path_names_the_day_and_kind() {
        let day = NaiveDate::from_ymd_opt(2021, 4, 1).unwrap();
        assert_eq!(
            page_path(day, "add-book", 2000),
            "/recentchanges/2021/04/01/add-book.json?limit=1000&offset=2000"
        );
    }
}
