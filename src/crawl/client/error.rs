//! Why a fetch failed, and the DLQ reason each failure is recorded with.

use crate::crawl::client::egress::EgressError;
use crate::message::FailureReason;

/// Why a fetch failed. Each variant says what the caller does: all are final for this job
/// (dead-letter with [`FetchError::reason`]), except that [`FetchError::Limiter`],
/// [`FetchError::RobotsUnavailable`] and [`FetchError::UserAgentBlocked`] may succeed on a
/// later redelivery.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The job names a URL that cannot be parsed.
    #[error("invalid URL {input:?}: {detail}")]
    InvalidUrl {
        /// What the job gave.
        input: String,
        /// Why it does not parse.
        detail: String,
    },
    /// The job names another origin than `OPENLIBRARY_BASE_URL`'s; nothing was fetched.
    #[error("refused {url}: not on the configured origin")]
    ForeignOrigin {
        /// The refused URL.
        url: String,
    },
    /// Open Library redirected off its origin; the target was not fetched.
    #[error("refused redirect from {from} to {to}: not on the configured origin")]
    ForeignRedirect {
        /// The URL that redirected.
        from: String,
        /// Where it pointed.
        to: String,
    },
    /// More than [`MAX_REDIRECTS`] hops, or a redirect without a usable Location.
    #[error("bad redirect at {url}: {detail}")]
    BadRedirect {
        /// The URL that redirected.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// robots.txt disallows the path; nothing was fetched.
    #[error("robots.txt disallows {path}")]
    Robots {
        /// The disallowed path.
        path: String,
    },
    /// robots.txt could not be fetched (5xx or unreachable), so everything is disallowed for
    /// now; nothing was fetched. Worth trying again later.
    #[error("robots.txt unavailable; disallowing {path} for now")]
    RobotsUnavailable {
        /// The path not fetched.
        path: String,
    },
    /// A 4xx other than 404 and 429: the request itself is wrong; not retried.
    #[error("HTTP {status} from {url}")]
    Client {
        /// The status.
        status: u16,
        /// The URL.
        url: String,
    },
    /// 5xx on every attempt (or the retry budget was empty).
    #[error("HTTP {status} from {url} after {attempts} attempts")]
    Server {
        /// The last status.
        status: u16,
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
    },
    /// 429 (or 503 with Retry-After) on every attempt, across egresses.
    #[error("rate limited ({status}) at {url} after {attempts} attempts")]
    RateLimited {
        /// The last status.
        status: u16,
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
    },
    /// No answer in time (or no connection) on every attempt.
    #[error("no answer from {url} after {attempts} attempts: {detail}")]
    Timeout {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last transport error.
        detail: String,
    },
    /// The body exceeded `MAX_BODY_BYTES`; reading stopped there.
    #[error("body of {url} exceeds {limit} bytes")]
    BodyTooLarge {
        /// The URL.
        url: String,
        /// The cap.
        limit: usize,
    },
    /// Open Library refused our User-Agent (403), now or earlier and still in force: nothing is
    /// sent by any worker until the block is lifted, so the job waits rather than fails.
    #[error("Open Library refuses our User-Agent; {url} not sent until the block is lifted")]
    UserAgentBlocked {
        /// The URL not sent (or refused).
        url: String,
    },
    /// The shared rate limiter (Redis) could not be asked; nothing was sent.
    #[error(transparent)]
    Limiter(#[from] EgressError),
}

impl FetchError {
    /// The DLQ reason for this failure.
    pub fn reason(&self) -> FailureReason {
        match self {
            FetchError::InvalidUrl { .. }
            | FetchError::ForeignOrigin { .. }
            | FetchError::ForeignRedirect { .. }
            | FetchError::BadRedirect { .. } => FailureReason::InvalidJob,
            FetchError::Robots { .. } => FailureReason::Robots,
            FetchError::RobotsUnavailable { .. } | FetchError::Server { .. } => {
                FailureReason::Http5xx
            }
            FetchError::Client { .. } => FailureReason::Http4xx,
            FetchError::RateLimited { .. } | FetchError::UserAgentBlocked { .. } => {
                FailureReason::RateLimited
            }
            FetchError::Timeout { .. } | FetchError::Limiter(_) => FailureReason::Timeout,
            // The answer cannot be used as a record: the closest DLQ reason.
            FetchError::BodyTooLarge { .. } => FailureReason::Parse,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each failure names its DLQ reason.
    #[test]
    fn errors_map_to_dlq_reasons() {
        let url = "http://x/".to_owned();
        assert_eq!(
            FetchError::ForeignOrigin { url: url.clone() }.reason(),
            FailureReason::InvalidJob
        );
        assert_eq!(
            FetchError::Robots { path: url.clone() }.reason(),
            FailureReason::Robots
        );
        assert_eq!(
            FetchError::RateLimited {
                status: 429,
                url: url.clone(),
                attempts: 4
            }
            .reason(),
            FailureReason::RateLimited
        );
        assert_eq!(
            FetchError::Server {
                status: 503,
                url: url.clone(),
                attempts: 4
            }
            .reason(),
            FailureReason::Http5xx
        );
        assert_eq!(
            FetchError::Client { status: 403, url }.reason(),
            FailureReason::Http4xx
        );
    }
}
