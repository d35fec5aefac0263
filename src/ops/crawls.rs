//! `bookworm seed` and `bookworm status [--watch]`: a client of the HTTP API.
//!
//! The CLI goes through the API rather than Redis and Kafka directly, so seed validation, crawl
//! ids and the order "status first, then seeds enqueued" exist once, in [`crate::api`]. The
//! live view polls `GET /crawls/{id}` once a second and derives a rate over a sliding window
//! and an ETA from it; it needs nothing the API does not already show.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use url::Url;

use crate::crawl::store::{CrawlState, CrawlStatus};

/// Bound on one API call: the API answers from Redis in milliseconds, or not at all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the live view asks for the status (the contract's "refreshing every second").
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often the plain view (stdout not a terminal) prints a line: a log file wants far
/// fewer lines than a screen wants frames.
pub const PLAIN_LINE_INTERVAL: Duration = Duration::from_secs(5);
/// The window the rate is measured over: long enough to smooth out batching and rate-limit
/// pauses, short enough to follow a crawl that speeds up or slows down.
pub const RATE_WINDOW: Duration = Duration::from_secs(30);
/// Consecutive failed polls the watch tolerates (an API restart, a Redis blip) before
/// giving up: about half a minute at one poll a second.
const MAX_FAILED_POLLS: u32 = 30;

/// Errors of the API client, sorted by what the CLI does with them.
#[derive(Debug, thiserror::Error)]
pub enum CrawlsError {
    /// The API refused the request (400): the operator's input is wrong; exit 2.
    #[error("{}", rejected_message(.error, .seed.as_deref()))]
    Rejected {
        /// The API's error text.
        error: String,
        /// The seed it names, when a seed was at fault.
        seed: Option<String>,
    },
    /// No crawl has this id (404): exit 1.
    #[error("no crawl with id {0}")]
    NotFound(String),
    /// The API could not be reached or did not answer in time: retry later.
    #[error("API unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    /// The API answered something else (503 when Redis or Kafka is down, or a bug).
    #[error("API answered {status}: {body}")]
    Unexpected {
        /// The HTTP status.
        status: StatusCode,
        /// The body, for the operator.
        body: String,
    },
    /// The API refused the credentials (401: no or an unknown token; 403: a read token on a
    /// write route). Fix `API_TOKEN`.
    #[error("the API refused the request ({status}): {error}; check API_TOKEN")]
    Denied {
        /// 401 or 403.
        status: StatusCode,
        /// The API's error text.
        error: String,
    },
    /// The crawl is not in a state the request applies to (409): pausing a finished crawl,
    /// deleting one with work ahead without `--force`.
    #[error("{0}")]
    Conflict(String),
    /// The base URL cannot be joined with a path.
    #[error("invalid API URL: {0}")]
    Url(#[from] url::ParseError),
}

fn rejected_message(error: &str, seed: Option<&str>) -> String {
    match seed {
        Some(seed) => format!("seed {seed:?} refused: {error}"),
        None => format!("request refused: {error}"),
    }
}

/// The API's error body.
#[derive(Debug, Deserialize)]
pub(super) struct ErrorBody {
    pub(super) error: String,
    #[serde(default)]
    seed: Option<String>,
}

/// A client of one deployment's HTTP API.
#[derive(Clone, Debug)]
pub struct ApiClient {
    pub(super) base: Url,
    pub(super) http: reqwest::Client,
}

impl ApiClient {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:8080`) that sends no token (an
    /// API on a loopback address without `API_TOKENS_FILE`).
    pub fn new(base: Url) -> Result<Self, CrawlsError> {
        Self::with_token(base, None)
    }

    /// A client of the API at `base` that sends `token` as `Authorization: Bearer <token>`
    /// on every request; the header is marked sensitive, so no `Debug` output shows it.
    pub fn with_token(mut base: Url, token: Option<&str>) -> Result<Self, CrawlsError> {
        // A base with a path (`http://host/bookworm`) must end in `/` to be joined onto.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| CrawlsError::Denied {
                    status: StatusCode::UNAUTHORIZED,
                    error: "API_TOKEN is not a valid header value".to_owned(),
                })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .default_headers(headers)
            .build()?;
        Ok(Self { base, http })
    }

    /// Creates a crawl from `seeds`; `None` limits take the API's defaults.
    pub async fn create(
        &self,
        seeds: &[String],
        max_depth: Option<u32>,
        max_nodes: Option<usize>,
    ) -> Result<CrawlStatus, CrawlsError> {
        let mut body = json!({ "seeds": seeds });
        if let Some(depth) = max_depth {
            body["max_depth"] = json!(depth);
        }
        if let Some(nodes) = max_nodes {
            body["max_nodes"] = json!(nodes);
        }
        let response = self
            .http
            .post(self.base.join("crawls")?)
            .json(&body)
            .send()
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(response.json().await?),
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => {
                let status = response.status();
                let text = response.text().await?;
                match serde_json::from_str::<ErrorBody>(&text) {
                    Ok(e) => Err(CrawlsError::Rejected {
                        error: e.error,
                        seed: e.seed,
                    }),
                    Err(_) => Err(CrawlsError::Rejected {
                        error: format!("{status}: {text}"),
                        seed: None,
                    }),
                }
            }
            status => Err(unexpected(status, response).await),
        }
    }

    /// The crawl's status.
    pub async fn status(&self, crawl_id: &str) -> Result<CrawlStatus, CrawlsError> {
        let url = self.crawl_url(crawl_id, None)?;
        let response = self.http.get(url).send().await?;
        match response.status() {
            StatusCode::OK => Ok(response.json().await?),
            StatusCode::NOT_FOUND => Err(CrawlsError::NotFound(crawl_id.to_owned())),
            status => Err(unexpected(status, response).await),
        }
    }
}

impl ApiClient {
    /// `crawls/{id}` (and `/{action}`), the id escaped as one path segment.
    pub(super) fn crawl_url(
        &self,
        crawl_id: &str,
        action: Option<&str>,
    ) -> Result<Url, CrawlsError> {
        let mut url = self.base.join("crawls/")?;
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| url::ParseError::RelativeUrlWithCannotBeABaseBase)?;
            segments.pop_if_empty().push(crawl_id);
            if let Some(action) = action {
                segments.push(action);
            }
        }
        Ok(url)
    }
}

/// The error of an answer the call did not expect: a refused token, or anything else.
pub(super) async fn unexpected(status: StatusCode, response: reqwest::Response) -> CrawlsError {
    let body = response.text().await.unwrap_or_default();
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        let error = serde_json::from_str::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or(body);
        return CrawlsError::Denied { status, error };
    }
    CrawlsError::Unexpected { status, body }
}

/// The multi-line summary `bookworm status` prints.
pub fn render_status(status: &CrawlStatus) -> String {
    let c = &status.counters;
    let mut out = String::new();
    let counts = |map: &BTreeMap<String, u64>| {
        if map.is_empty() {
            "none".to_owned()
        } else {
            map.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let rows = [
        ("crawl", status.crawl_id.clone()),
        ("state", state_name(status.state).to_owned()),
        ("seeds", status.seeds.join(", ")),
        (
            "limits",
            format!("depth {}, nodes {}", status.max_depth, status.max_nodes),
        ),
        ("fetched", c.fetched.to_string()),
        ("nodes", counts(&c.nodes)),
        ("edges", c.edges.to_string()),
        ("in flight", c.in_flight.to_string()),
        ("failures", counts(&c.failed)),
        ("duplicates", c.duplicates.to_string()),
        ("skipped", c.skipped.to_string()),
        ("enqueued", c.enqueued.to_string()),
        ("created", status.created_at.to_rfc3339()),
        ("updated", status.updated_at.to_rfc3339()),
    ];
    for (name, value) in rows {
        let _ = writeln!(out, "{name:<11}{value}");
    }
    out
}

/// A state as the API spells it.
pub fn state_name(state: CrawlState) -> &'static str {
    state.as_str()
}

/// Fetched nodes per second over a sliding window of samples.
#[derive(Debug, Clone)]
pub struct RateWindow {
    window: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    /// A window of `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Records the fetched count seen at `at`; samples older than the window are dropped
    /// (one older sample is kept as the window's start, so the rate spans the whole window).
    pub fn record(&mut self, at: Instant, fetched: u64) {
        self.samples.push_back((at, fetched));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| at.duration_since(*t) >= self.window)
        {
            self.samples.pop_front();
        }
    }

    /// Fetched per second across the window, once two samples span some time.
    pub fn rate(&self) -> Option<f64> {
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let seconds = last.0.duration_since(first.0).as_secs_f64();
        (seconds > 0.0).then(|| last.1.saturating_sub(first.1) as f64 / seconds)
    }

    /// Time to work off `in_flight` keys at the current rate; `None` while the rate is zero
    /// or unknown. A guess: fetched keys discover new ones, so it grows while a crawl widens.
    pub fn eta(&self, in_flight: u64) -> Option<Duration> {
        let rate = self.rate().filter(|r| *r > 0.0)?;
        Some(Duration::from_secs_f64(in_flight as f64 / rate))
    }
}

/// One line of progress: what the live view shows and the plain view prints.
pub fn progress_line(status: &CrawlStatus, rate: Option<f64>, eta: Option<Duration>) -> String {
    let c = &status.counters;
    let nodes: u64 = c.nodes.values().sum();
    let failures: u64 = c.failed.values().sum();
    let rate = rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}/s"));
    let eta = eta.map_or_else(
        || "-".to_owned(),
        |d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string(),
    );
    format!(
        "{state}: fetched {fetched} | nodes {nodes} | edges {edges} | in flight {in_flight} | \
         failures {failures} | rate {rate} | ETA {eta}",
        state = state_name(status.state),
        fetched = c.fetched,
        edges = c.edges,
        in_flight = c.in_flight,
    )
}

/// How `--watch` shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchView {
    /// A redrawn progress line (stdout is a terminal).
    Live,
    /// One plain line per `every` on stdout (a pipe or a log file).
    Plain {
        /// Interval between lines.
        every: Duration,
    },
}

impl WatchView {
    /// The view that suits stdout: live on a terminal, plain lines otherwise.
    pub fn for_stdout() -> Self {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            WatchView::Live
        } else {
            WatchView::Plain {
                every: PLAIN_LINE_INTERVAL,
            }
        }
    }
}

/// Follows a crawl until it is `done` or `cancelled` and returns its last status. Fails at
/// once if the crawl is unknown, and after [`MAX_FAILED_POLLS`] consecutive failed polls.
pub async fn watch(
    client: &ApiClient,
    crawl_id: &str,
    view: WatchView,
    poll: Duration,
) -> Result<CrawlStatus, CrawlsError> {
    let mut rate = RateWindow::new(RATE_WINDOW);
    let bar = match view {
        WatchView::Live => {
            // `wide_msg` cuts the line at the terminal width: a wrapped line would leave
            // half-erased rows behind on every redraw.
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {wide_msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            Some(bar)
        }
        WatchView::Plain { .. } => None,
    };
    let mut last_line: Option<Instant> = None;
    let mut failed_polls = 0;
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let status = match client.status(crawl_id).await {
            Ok(status) => {
                failed_polls = 0;
                status
            }
            Err(e @ CrawlsError::NotFound(_)) => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                return Err(e);
            }
            Err(e) => {
                failed_polls += 1;
                if failed_polls >= MAX_FAILED_POLLS {
                    if let Some(bar) = &bar {
                        bar.finish_and_clear();
                    }
                    return Err(e);
                }
                eprintln!("status unavailable ({failed_polls}/{MAX_FAILED_POLLS}): {e}");
                continue;
            }
        };
        let now = Instant::now();
        rate.record(now, status.counters.fetched);
        let line = progress_line(&status, rate.rate(), rate.eta(status.counters.in_flight));
        let finished = matches!(status.state, CrawlState::Done | CrawlState::Cancelled);
        match (&bar, view) {
            (Some(bar), _) => bar.set_message(line),
            (None, WatchView::Plain { every }) => {
                if finished || last_line.is_none_or(|t| now.duration_since(t) >= every) {
                    let mut stdout = std::io::stdout().lock();
                    let _ = writeln!(stdout, "{line}");
                    let _ = stdout.flush();
                    last_line = Some(now);
                }
            }
            (None, WatchView::Live) => {}
        }
        if finished {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            return Ok(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_spans_the_window_and_forgets_older_samples() {
        let start = Instant::now();
        let mut window = RateWindow::new(Duration::from_secs(10));
        assert_eq!(window.rate(), None, "no rate from nothing");
        window.record(start, 0);
        assert_eq!(window.rate(), None, "no rate from one sample");
        // 100/s for the first 10 s, then 10/s.
        for s in 1..=10 {
            window.record(start + Duration::from_secs(s), s * 100);
        }
        assert_eq!(window.rate(), Some(100.0));
        for s in 11..=30 {
            window.record(start + Duration::from_secs(s), 1000 + (s - 10) * 10);
        }
        let rate = window.rate().expect("a rate");
        assert!((rate - 10.0).abs() < 1e-9, "old samples forgotten: {rate}");
        assert_eq!(window.eta(50), Some(Duration::from_secs(5)));
    }

    #[test]
    fn no_eta_while_nothing_is_fetched() {
        let start = Instant::now();
        let mut window = RateWindow::new(Duration::from_secs(10));
        window.record(start, 7);
        window.record(start + Duration::from_secs(3), 7);
        assert_eq!(window.rate(), Some(0.0));
        assert_eq!(window.eta(10), None);
    }
}
