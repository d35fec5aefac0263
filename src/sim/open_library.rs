//! The simulated Open Library itself: its routes (records, lists, subjects, search and the
//! change feed), answered from the catalogue in the real shapes, to clients that are not
//! blocked, under nginx-like per-IP and per-User-Agent limits and the injected faults.

use super::*;

/// Which Open Library endpoint a path names.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Route {
    Record(String),
    AuthorWorks(String),
    WorkEditions(String),
    Subject(String),
    Search,
    /// `/recentchanges[/YYYY[/MM[/DD]]][/<kind>].json`.
    Changes {
        period: Option<FeedPeriod>,
        kind: Option<String>,
    },
    Robots,
    Unknown,
}

/// Reads the segments after `/recentchanges` of a feed path: leading numeric segments are
/// the date (which must be a real one), then at most one kind. `None` answers 404.
fn feed_route(rest: &[&str]) -> Option<Route> {
    let dated = rest
        .iter()
        .take_while(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .count();
    let period = match dated {
        0 => None,
        n => Some(FeedPeriod::parse(&rest[..n])?),
    };
    let kind = match &rest[dated..] {
        [] => None,
        [kind] if is_kind(kind) => Some((*kind).to_owned()),
        _ => return None,
    };
    Some(Route::Changes { period, kind })
}

/// A change kind as it may appear in a path: lower-case letters, digits and `-`. A kind
/// the catalogue never logs answers an empty list, as Open Library's does.
fn is_kind(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Route {
    fn parse(path: &str) -> Route {
        if path == "/robots.txt" {
            return Route::Robots;
        }
        if path == "/search.json" {
            return Route::Search;
        }
        let Some(stem) = path.strip_suffix(".json") else {
            return Route::Unknown;
        };
        let parts: Vec<&str> = stem.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["works" | "authors" | "books", id] if !id.is_empty() => Route::Record(stem.to_owned()),
            ["authors", id, "works"] => Route::AuthorWorks(format!("/authors/{id}")),
            ["works", id, "editions"] => Route::WorkEditions(format!("/works/{id}")),
            ["subjects", name] if !name.is_empty() => Route::Subject(stem.to_owned()),
            ["recentchanges", rest @ ..] => feed_route(rest).unwrap_or(Route::Unknown),
            _ => Route::Unknown,
        }
    }

    /// The path kind for statistics.
    fn kind(&self) -> &'static str {
        match self {
            Route::Record(k) if k.starts_with("/works/") => "work",
            Route::Record(k) if k.starts_with("/authors/") => "author",
            Route::Record(_) => "edition",
            Route::AuthorWorks(_) => "author_works",
            Route::WorkEditions(_) => "work_editions",
            Route::Subject(_) => "subject",
            Route::Search => "search",
            Route::Changes { .. } => "recentchanges",
            Route::Robots => "robots",
            Route::Unknown => "other",
        }
    }

    /// The crawl key the request belongs to: faults that always fail a key fail all of its
    /// paths (the record and its list), since a crawl job fetches both.
    fn key(&self) -> Option<&str> {
        match self {
            Route::Record(k)
            | Route::AuthorWorks(k)
            | Route::WorkEditions(k)
            | Route::Subject(k) => Some(k),
            Route::Search | Route::Changes { .. } | Route::Robots | Route::Unknown => None,
        }
    }
}

/// Open Library's robots.txt, in the parts that matter to a crawler: `/search` and `/api`
/// are disallowed, everything else (records, lists, subjects, `/recentchanges`) allowed.
pub(super) const ROBOTS_TXT: &str = "User-agent: *\nDisallow: /search\nDisallow: /api\n\nSitemap: /static/sitemaps/sitemap_index.xml\n";

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

pub(super) fn not_found(key: &str) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": "notfound", "key": key}),
    )
}

pub(super) fn number(pairs: &[(String, String)], name: &str, default: usize) -> usize {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(default)
}

/// Open Library's most entries per page.
pub(super) const MAX_LIMIT: usize = 1000;

pub(super) async fn open_library(
    State(state): State<Arc<SimState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    // Keys are matched decoded (a subject may be non-ASCII); undecodable bytes stay as sent.
    let path = percent_encoding::percent_decode_str(uri.path())
        .decode_utf8()
        .map_or_else(|_| uri.path().to_owned(), |p| p.into_owned());
    let route = Route::parse(&path);
    let ip = peer.ip().to_string();
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    lock(&state.stats).arrived(&ip, route.kind(), &user_agent);

    // Before the limits, as nginx's rewrite phase runs before `limit_req`: a blocked
    // client's requests cost no budget, and robots.txt is refused too.
    if state.blocked_agents().blocks(&user_agent) {
        lock(&state.stats).blocked(&user_agent);
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({
                "error": "blocked",
                "detail": "requests with this User-Agent are blocked for breaking the \
                           API's usage rules; contact Open Library to be unblocked",
                "status": 403,
            }),
        );
    }

    if route == Route::Robots {
        return (
            [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
            ROBOTS_TXT,
        )
            .into_response();
    }

    let decision = {
        // Always IP before agent, so two requests never take the locks in opposite orders.
        let mut ip_zone = state.ip_limiter.as_ref().map(lock);
        let mut ua_zone = state.ua_limiter.as_ref().map(lock);
        let mut zones: Vec<(&mut Limiter, &str)> = Vec::with_capacity(2);
        if let Some(zone) = ip_zone.as_deref_mut() {
            zones.push((zone, &ip));
        }
        if let Some(zone) = ua_zone.as_deref_mut() {
            zones.push((zone, &user_agent));
        }
        check_all(&mut zones, Instant::now())
    };
    let hold = match decision {
        Decision::Pass => Duration::ZERO,
        Decision::Delay(d) => d,
        Decision::Reject => {
            lock(&state.stats).rate_limited(&ip, &user_agent);
            // Like Open Library's nginx: a JSON body and no Retry-After.
            return json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"error": "Too Many Requests", "status": 429}),
            );
        }
    };
    if !hold.is_zero() {
        lock(&state.stats).delayed(&ip);
        tokio::time::sleep(hold).await;
    }

    let attempt = {
        let mut attempts = lock(&state.attempts);
        let n = attempts.entry(path.clone()).or_default();
        *n += 1;
        *n - 1
    };
    let faults = state.faults();
    let (latency, spike) = faults.latency(&path, attempt);
    if spike {
        lock(&state.stats).spiked();
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(fault) = faults.decide(route.key(), &path, attempt) {
        let record = InjectedRecord {
            path: path.clone(),
            attempt,
            fault,
        };
        lock(&state.stats).injected(route.key().unwrap_or(&path), record);
        return injected_response(fault, &path);
    }

    let pairs = query_pairs(uri.query());
    let catalogue = state.catalogue();
    match route {
        Route::Record(key) => match catalogue.record(&key) {
            Some(body) => json_response(StatusCode::OK, &body),
            None => not_found(&key),
        },
        Route::AuthorWorks(key) => {
            let limit = number(&pairs, "limit", 50).min(MAX_LIMIT);
            match catalogue.author_works(&key, limit, number(&pairs, "offset", 0)) {
                Some(body) => json_response(StatusCode::OK, &body),
                None => not_found(&key),
            }
        }
        Route::WorkEditions(key) => {
            let limit = number(&pairs, "limit", 50).min(MAX_LIMIT);
            match catalogue.work_editions(&key, limit, number(&pairs, "offset", 0)) {
                Some(body) => json_response(StatusCode::OK, &body),
                None => not_found(&key),
            }
        }
        Route::Subject(key) => {
            if key.chars().any(char::is_uppercase) {
                // Open Library answers a capitalised subject with a redirect to its key.
                let mut location = format!("{}.json", key.to_lowercase());
                if let Some(q) = uri.query() {
                    location = format!("{location}?{q}");
                }
                return (
                    StatusCode::MOVED_PERMANENTLY,
                    [(header::LOCATION, location)],
                )
                    .into_response();
            }
            let limit = number(&pairs, "limit", 12).min(MAX_LIMIT);
            json_response(
                StatusCode::OK,
                &catalogue.subject(&key, limit, number(&pairs, "offset", 0)),
            )
        }
        Route::Search => {
            let q = pairs
                .iter()
                .find(|(n, _)| n == "q")
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default();
            if q.chars().count() < 3 {
                return json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({"error": "q must be at least 3 characters"}),
                );
            }
            let limit = number(&pairs, "limit", 100).min(MAX_LIMIT);
            json_response(
                StatusCode::OK,
                &catalogue.search(&q, limit, number(&pairs, "offset", 0)),
            )
        }
        Route::Changes { period, kind } => {
            let query = FeedQuery::new(period, kind, &pairs);
            let entries = catalogue.recent_changes(&query);
            json_response(StatusCode::OK, &json!(entries))
        }
        Route::Robots | Route::Unknown => not_found(&path),
    }
}

pub(super) fn injected_response(fault: Injected, path: &str) -> Response {
    match fault {
        Injected::Status { status, .. } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            json_response(
                status,
                &json!({"error": "injected", "status": status.as_u16()}),
            )
        }
        Injected::Malformed { .. } => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            format!("{{\"key\": \"{path}\", \"title\": \"Trunc"),
        )
            .into_response(),
        Injected::Reset => {
            // The head goes out, then the body stream fails: hyper cuts the connection and
            // the client sees it closed mid-answer.
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(b"{\"key\": ")),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected connection reset",
                )),
            ];
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
    }
}
