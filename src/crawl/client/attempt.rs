//! One attempt of a request through one egress: send it, read the answer up to the body cap,
//! and say what went wrong in the terms the retry loop acts on (connect, timeout, transport,
//! too large).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::StatusCode;
use url::Url;

use crate::crawl::client::egress::EgressSlot;

/// One answer read in full (up to the cap).
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) retry_after: Option<Duration>,
    pub(super) location: Option<String>,
    pub(super) body: Bytes,
}

/// Why one attempt got no usable answer.
pub(super) enum AttemptError {
    /// Could not connect (the proxy, or for direct the origin): the egress is marked down.
    Connect(String),
    /// The connection broke mid-answer.
    Transport(String),
    /// Connected, but no (complete) answer within the read or request timeout.
    TimedOut(String),
    /// Body over the cap.
    TooLarge,
}

/// One attempt through `slot`: send, then read the body up to `limit` bytes.
pub(super) async fn attempt(
    slot: &EgressSlot,
    url: &Url,
    limit: usize,
) -> Result<Answer, AttemptError> {
    let mut response = slot
        .client()
        .get(url.clone())
        .send()
        .await
        .map_err(classify)?;
    let status = response.status();
    let headers = response.headers();
    let retry_after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let location = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(AttemptError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > limit {
            return Err(AttemptError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        retry_after,
        location,
        body: Bytes::from(body),
    })
}

fn classify(error: reqwest::Error) -> AttemptError {
    if error.is_connect() {
        AttemptError::Connect(error_chain(&error))
    } else if error.is_timeout() {
        AttemptError::TimedOut(error_chain(&error))
    } else {
        AttemptError::Transport(error_chain(&error))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Parses a Retry-After value: delay seconds, or an HTTP date (a past date means now).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retry-After in seconds and as an HTTP date.
    #[test]
    fn parses_retry_after() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
