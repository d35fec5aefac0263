//! Why a crawl job could not be crawled, and what the consumer loop should do about it:
//! retry later (a dependency, not the key, is at fault) or dead-letter with a reason.

use crate::consumer::HandleError;
use crate::crawl::client::FetchError;
use crate::crawl::handler::MAX_RECORD_REDIRECTS;
use crate::crawl::parse::ParseError;
use crate::crawl::store::StoreError;
use crate::message::FailureReason;

/// Why a job could not be crawled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CrawlError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("{0}")]
    Gone(String),
    #[error("more than {MAX_RECORD_REDIRECTS} redirect records from {0}")]
    RedirectLoop(String),
    #[error("{key} redirects to {location}, which is not a key of the same kind")]
    BadRedirect { key: String, location: String },
    #[error("{asked} answered a record whose key is {answered}")]
    WrongRecord { asked: String, answered: String },
}

impl CrawlError {
    /// Whether trying again later may succeed without anything else changing: the shared
    /// rate limiter or robots.txt being unreachable, or Open Library refusing our User-Agent,
    /// says nothing about the key.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            CrawlError::Fetch(
                FetchError::Limiter(_)
                    | FetchError::RobotsUnavailable { .. }
                    | FetchError::UserAgentBlocked { .. }
            )
        )
    }

    /// Whether the answer was cut short (its JSON ends mid-value): a fault of the transfer,
    /// not of the record, so fetching it again may succeed. Any other parse error is the
    /// record's own and would fail the same way every time.
    pub(crate) fn is_truncated_answer(&self) -> bool {
        matches!(self, CrawlError::Parse(ParseError::Json { source, .. }) if source.is_eof())
    }

    pub(crate) fn reason(&self) -> FailureReason {
        match self {
            CrawlError::Fetch(e) => e.reason(),
            CrawlError::Parse(e) => e.reason(),
            CrawlError::WrongRecord { .. } => FailureReason::Parse,
            CrawlError::Gone(_) => FailureReason::Http4xx,
            CrawlError::RedirectLoop(_) | CrawlError::BadRedirect { .. } => {
                FailureReason::InvalidJob
            }
        }
    }
}

/// What the loop should do about a crawl-store error: wait for Redis to come back, unless
/// the crawl's own state is corrupt. Corruption does not heal by waiting, and a job retried
/// forever holds its partition's commits (and with them every other crawl's jobs there), so
/// such a job is dead-lettered as `invalid_job`, with a detail that says the state is corrupt.
pub(crate) fn store_error(error: StoreError) -> HandleError {
    match error {
        StoreError::Corrupt { .. } => dead_letter(FailureReason::InvalidJob, error.to_string()),
        StoreError::Redis(_) | StoreError::NearlyFull(_) => {
            HandleError::Retry(format!("crawl store: {error}"))
        }
    }
}

/// A dead letter with `reason` and `detail`.
pub(crate) fn dead_letter(reason: FailureReason, detail: impl Into<String>) -> HandleError {
    HandleError::DeadLetter {
        reason: reason.as_str().to_owned(),
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::CrawlError;
    use crate::crawl::parse::ParseError;

    fn json_error(body: &str) -> CrawlError {
        let source = serde_json::from_str::<serde_json::Value>(body).expect_err("invalid JSON");
        CrawlError::Parse(ParseError::Json {
            what: "record",
            source,
        })
    }

    /// An answer cut mid-body (the simulator's malformed JSON, a dropped transfer) is
    /// fetched again; the chaos suite saw each such answer cost a job and its whole subtree.
    #[test]
    fn a_truncated_answer_is_worth_another_try() {
        assert!(json_error(r#"{"key": "/works/OL1W", "title": "Trunc"#).is_truncated_answer());
    }

    /// JSON that is complete but wrong fails the same way every time: dead-lettered at once.
    #[test]
    fn a_complete_but_invalid_answer_is_not_retried() {
        assert!(!json_error(r#"{"key": 1,}"#).is_truncated_answer());
        let shape = CrawlError::Parse(ParseError::Shape {
            what: "record",
            detail: "unknown type".to_owned(),
        });
        assert!(!shape.is_truncated_answer());
    }
}
