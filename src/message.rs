//! The messages on the topics: crawl jobs, nodes, edges and failures.
//!
//! JSON, UTF-8, every message with `"v": 1` so a later format can live beside this one.
//! Labels and relationship types are closed enums: the graph writer builds Cypher from them,
//! so they must never come from message text.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The message format version written into every message.
pub const VERSION: u8 = 1;

fn version() -> u8 {
    VERSION
}

/// Errors from reading a message off a topic.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The payload is not the expected JSON shape; the message goes to a DLQ with this text.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The payload is JSON of a version this build does not understand.
    #[error("unsupported message version {0}")]
    Version(u8),
    /// The message has no payload at all.
    #[error("empty message")]
    Empty,
}

/// Parses a payload and checks its version: the one way every consumer reads a message.
pub fn decode<T: for<'de> Deserialize<'de> + Versioned>(
    payload: Option<&[u8]>,
) -> Result<T, MessageError> {
    let payload = payload.ok_or(MessageError::Empty)?;
    let message: T = serde_json::from_slice(payload)?;
    match message.version() {
        VERSION => Ok(message),
        other => Err(MessageError::Version(other)),
    }
}

/// A message that carries the format version.
pub trait Versioned {
    /// The `v` field.
    fn version(&self) -> u8;
}

macro_rules! versioned {
    ($($t:ty),*) => {$(impl Versioned for $t { fn version(&self) -> u8 { self.v } })*};
}

/// One key to crawl, on the frontier topic (keyed by `key`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrawlJob {
    /// Format version.
    #[serde(default = "version")]
    pub v: u8,
    /// The crawl this job belongs to.
    pub crawl_id: String,
    /// `/works/OL…W`, `/authors/OL…A`, `/books/OL…M`, `/subjects/<name>` or `search:<text>`.
    pub key: String,
    /// Distance from the seed.
    pub depth: u32,
    /// The seed this job descends from.
    pub seed: String,
    /// The key whose expansion produced this job (`None` for a seed).
    pub parent: Option<String>,
    /// When the job was published.
    pub enqueued_at: DateTime<Utc>,
    /// The revision the change feed named for this key (`bookworm follow`'s freshness jobs):
    /// a cached copy older than this is not good enough, the record is fetched again, and a
    /// record that turned into a delete or a redirect is written to the graph as [`Gone`].
    /// Absent on every crawl job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_revision: Option<i64>,
}

/// Graph node labels: a fixed list, never taken from message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Label {
    /// A work (`/works/OL…W`).
    Work,
    /// An author (`/authors/OL…A`).
    Author,
    /// An edition (`/books/OL…M`).
    Edition,
    /// A subject (`/subjects/<name>`).
    Subject,
}

impl Label {
    /// All labels, in the order migrations and statistics list them.
    pub const ALL: [Label; 4] = [Label::Work, Label::Author, Label::Edition, Label::Subject];

    /// The label's name as Neo4j and the API show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Work => "Work",
            Label::Author => "Author",
            Label::Edition => "Edition",
            Label::Subject => "Subject",
        }
    }

    /// The label an Open Library key names, from its path prefix.
    pub fn of_key(key: &str) -> Option<Label> {
        if key.starts_with("/works/") {
            Some(Label::Work)
        } else if key.starts_with("/authors/") {
            Some(Label::Author)
        } else if key.starts_with("/books/") {
            Some(Label::Edition)
        } else if key.starts_with("/subjects/") {
            Some(Label::Subject)
        } else {
            None
        }
    }
}

/// Relationship types: a fixed list, never taken from message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum Rel {
    /// Work or Edition → Author.
    WRITTEN_BY,
    /// Edition → Work.
    EDITION_OF,
    /// Work or Edition → Subject.
    ABOUT,
}

impl Rel {
    /// All relationship types.
    pub const ALL: [Rel; 3] = [Rel::WRITTEN_BY, Rel::EDITION_OF, Rel::ABOUT];

    /// The type's name as Neo4j shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Rel::WRITTEN_BY => "WRITTEN_BY",
            Rel::EDITION_OF => "EDITION_OF",
            Rel::ABOUT => "ABOUT",
        }
    }
}

/// A fetched entity, on the results topic (keyed by `key`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Format version.
    #[serde(default = "version")]
    pub v: u8,
    /// The crawl that fetched it.
    pub crawl_id: String,
    /// Its Open Library key.
    pub key: String,
    /// Its label.
    pub label: Label,
    /// Flat map of scalar and list values (the contract's graph table lists which).
    pub props: BTreeMap<String, serde_json::Value>,
    /// When it was fetched.
    pub fetched_at: DateTime<Utc>,
    /// Set when the record is no longer an entity: Open Library now answers `/type/delete` or
    /// `/type/redirect` for `key`, at the revision in `props` (`revision`). The graph writer
    /// removes what the record's older revisions wrote (see `graph::cypher`) instead of
    /// merging `props`. Absent on every ordinary node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone: Option<Gone>,
}

/// How a record stopped being an entity: the `gone` of a [`Node`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Gone {
    /// The record is `/type/delete`.
    Deleted,
    /// The record is `/type/redirect` to `to` (a merge: the target holds the entity now).
    Redirected {
        /// The redirect's `location`.
        to: String,
    },
}

/// A relationship, on the edges topic (keyed by `from`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    /// Format version.
    #[serde(default = "version")]
    pub v: u8,
    /// The crawl that found it.
    pub crawl_id: String,
    /// Key of the start node.
    pub from: String,
    /// Key of the end node.
    pub to: String,
    /// Relationship type. Kept as text on the wire so the graph writer can dead-letter an
    /// unknown type instead of failing to parse the whole message.
    pub rel: String,
    /// When it was found.
    pub discovered_at: DateTime<Utc>,
    /// The `revision` of the `from` record that names this relationship, when it came from
    /// that record (absent for relationships read off list pages, and in messages written
    /// before revisions): the graph writer ignores an edge older than its start node and
    /// drops a node's older edges when its revision advances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

/// Why a job could not be crawled: the DLQ's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// Open Library answered 4xx (other than 429).
    // snake_case alone spells these `http4xx`; the contract (and `as_str`, the metrics and
    // the status counters) spell `http_4xx`. The alias reads records written before the fix.
    #[serde(rename = "http_4xx", alias = "http4xx")]
    Http4xx,
    /// Open Library kept answering 5xx.
    #[serde(rename = "http_5xx", alias = "http5xx")]
    Http5xx,
    /// The job ran past `JOB_TIMEOUT`.
    Timeout,
    /// Open Library kept answering 429.
    RateLimited,
    /// The answer did not parse.
    Parse,
    /// robots.txt disallows the path.
    Robots,
    /// The job itself is malformed or names another origin.
    InvalidJob,
    /// Publishing the job's outputs ran past `PUBLISH_TIMEOUT`.
    Publish,
}

impl FailureReason {
    /// All reasons, for metrics and status counters.
    pub const ALL: [FailureReason; 8] = [
        FailureReason::Http4xx,
        FailureReason::Http5xx,
        FailureReason::Timeout,
        FailureReason::RateLimited,
        FailureReason::Parse,
        FailureReason::Robots,
        FailureReason::InvalidJob,
        FailureReason::Publish,
    ];

    /// Reads a reason as [`FailureReason::as_str`] spells it.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// The reason as the DLQ, metrics and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Http4xx => "http_4xx",
            FailureReason::Http5xx => "http_5xx",
            FailureReason::Timeout => "timeout",
            FailureReason::RateLimited => "rate_limited",
            FailureReason::Parse => "parse",
            FailureReason::Robots => "robots",
            FailureReason::InvalidJob => "invalid_job",
            FailureReason::Publish => "publish",
        }
    }
}

/// A job that could not be crawled, on the DLQ topic (keyed by the job's key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Format version.
    #[serde(default = "version")]
    pub v: u8,
    /// The crawl of the job (empty when the payload did not parse).
    pub crawl_id: String,
    /// The original job, or the raw payload as a string if it did not parse.
    pub job: serde_json::Value,
    /// Why it failed.
    pub reason: FailureReason,
    /// Human-readable detail (status code, parse error…).
    pub detail: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// When it was dead-lettered.
    pub failed_at: DateTime<Utc>,
    /// The worker that gave up (host name).
    pub worker: String,
}

versioned!(CrawlJob, Node, Edge, Failure);

/// How many bytes of a payload a [`PayloadExcerpt`] quotes: enough to recognise the message
/// in a log or a DLQ listing, small enough that escaping it (up to 6× for control bytes)
/// stays a few KiB.
pub const EXCERPT_BYTES: usize = 1024;

/// What a DLQ record carries of a payload it cannot embed whole: its first bytes, its size and
/// a hash. A 400 KB message of control bytes is a valid Kafka message, but embedded in JSON it
/// grows past the broker's 1 MB limit, the DLQ refuses it, and its partition never moves on;
/// the excerpt is always small, and the size and hash still identify the original on its topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadExcerpt {
    /// The first [`EXCERPT_BYTES`] bytes, as text (invalid UTF-8 replaced).
    pub prefix: String,
    /// The payload's whole size in bytes.
    pub bytes: usize,
    /// FNV-1a (64-bit) of the whole payload, in hex: not cryptographic, only to tell two
    /// payloads apart.
    pub fnv1a64: String,
}

impl PayloadExcerpt {
    /// The excerpt of `payload`.
    pub fn of(payload: &[u8]) -> Self {
        let cut = payload.len().min(EXCERPT_BYTES);
        Self {
            prefix: String::from_utf8_lossy(&payload[..cut]).into_owned(),
            bytes: payload.len(),
            fnv1a64: format!("{:016x}", fnv1a64(payload)),
        }
    }
}

/// FNV-1a, 64-bit: a stable hash with no dependency, to name a payload in a DLQ record.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::{FailureReason, PayloadExcerpt, fnv1a64};

    /// The consumer loop dead-letters a panicking handler with a reason of the contract's
    /// list, so the DLQ record, the crawl store and the metric all read it the same (issue 14,
    /// item 12: they once said `invalid_job`, `invalid_job` and `panic`).
    #[test]
    fn a_panic_is_recorded_with_a_reason_of_the_contract() {
        let reason = crate::consumer::job::REASON_PANIC;
        assert_eq!(
            FailureReason::parse(reason),
            Some(FailureReason::InvalidJob)
        );
    }

    /// An excerpt of a payload full of control and invalid bytes stays small once in JSON.
    #[test]
    fn an_excerpt_of_a_poison_payload_is_small_and_names_the_payload() {
        let poison: Vec<u8> = (0..400_000u32)
            .map(|i| [0x01, 0xff, 0x1f][i as usize % 3])
            .collect();
        let excerpt = PayloadExcerpt::of(&poison);
        assert_eq!(excerpt.bytes, 400_000);
        assert_eq!(excerpt.fnv1a64, format!("{:016x}", fnv1a64(&poison)));
        let json = serde_json::to_vec(&excerpt).expect("serialize");
        assert!(json.len() < 8 * 1024, "{} bytes", json.len());
        // The known FNV-1a vector.
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    /// The DLQ's JSON spells every reason as the contract, the metrics and the status
    /// counters do (it once wrote `http4xx` while everything else said `http_4xx`).
    #[test]
    fn dlq_reasons_serialize_as_the_contract_spells_them() {
        for reason in FailureReason::ALL {
            let json = serde_json::to_value(reason).expect("serialize");
            assert_eq!(json, reason.as_str());
            let back: FailureReason = serde_json::from_value(json).expect("deserialize");
            assert_eq!(back, reason);
        }
    }

    /// Records written before the spelling was fixed still read.
    #[test]
    fn dlq_reasons_written_with_the_old_spelling_still_read() {
        let old: FailureReason = serde_json::from_str("\"http5xx\"").expect("old spelling");
        assert_eq!(old, FailureReason::Http5xx);
    }
}
