//! A tiny stand-in for Open Library used by the egress and fetch tests (the simulator will
//! replace it): it records every request with the client's peer IP, can enforce a per-IP
//! limit like Open Library's nginx (429 JSON, no Retry-After), and answers the faults the
//! client must handle: 429/503/5xx, redirects, oversized bodies.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, Uri, header};
use bookworm::config::LimitScope;
use bookworm::config::{DEFAULT_USER_AGENT, EgressSpec, ProxyPool, parse_proxy_pool};
use bookworm::crawl::client::egress::limiter::Rate;
use bookworm::crawl::client::egress::{ClientSettings, EgressPool, PoolSettings};
use bookworm::crawl::client::{FetchSettings, OpenLibraryClient};
use bookworm::process::metrics::WorkerMetrics;
use url::Url;

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The client's address as the server sees it (the proxy's outgoing address).
    pub ip: IpAddr,
    /// Path and query.
    pub path: String,
    /// When it arrived.
    pub at: Instant,
    /// The status answered.
    pub status: u16,
    /// The User-Agent sent.
    pub user_agent: String,
}

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// nginx-like limit per client IP: 429 beyond it.
    pub per_ip_limit: Option<Rate>,
    /// Requests from this IP always get 429 (with `retry_after` if set), except robots.txt.
    pub throttled_ip: Option<IpAddr>,
    /// Retry-After sent with the throttled IP's 429s.
    pub retry_after: Option<String>,
    /// Only the first this many requests of the throttled IP are throttled.
    pub throttle_first: Option<usize>,
    /// robots.txt body (`None`: answer 404; `Some("500")`: answer 500).
    pub robots: Option<String>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            per_ip_limit: None,
            throttled_ip: None,
            retry_after: None,
            throttle_first: None,
            robots: Some("User-agent: *\nDisallow: /search\nDisallow: /api\n".to_owned()),
        }
    }
}

#[derive(Default)]
struct Recorded {
    hits: Vec<Hit>,
    tat: HashMap<IpAddr, Instant>,
    per_path: HashMap<String, usize>,
    throttled: usize,
}

struct Shared {
    behaviour: Behaviour,
    recorded: Mutex<Recorded>,
}

/// A running test server.
#[derive(Clone)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl TestServer {
    /// Starts a server on 127.0.0.1 on a free port.
    pub async fn start(behaviour: Behaviour) -> Self {
        Self::start_on("127.0.0.1", behaviour).await
    }

    /// Starts a server on `host` on a free port.
    pub async fn start_on(host: &str, behaviour: Behaviour) -> Self {
        let shared = Arc::new(Shared {
            behaviour,
            recorded: Mutex::new(Recorded::default()),
        });
        let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        Self { addr, shared }
    }

    /// The origin URL (`http://127.0.0.1:port`).
    pub fn origin(&self) -> Url {
        Url::parse(&format!("http://{}", self.addr)).unwrap()
    }

    /// Every request seen so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.shared.recorded.lock().unwrap().hits.clone()
    }

    /// Requests seen for paths starting with `prefix`.
    pub fn hits_under(&self, prefix: &str) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| h.path.starts_with(prefix))
            .collect()
    }

    /// Requests per client IP (robots.txt excluded).
    pub fn counts_by_ip(&self) -> HashMap<IpAddr, usize> {
        let mut counts = HashMap::new();
        for hit in self.hits() {
            if hit.path != "/robots.txt" {
                *counts.entry(hit.ip).or_default() += 1;
            }
        }
        counts
    }

    /// 429s answered.
    pub fn count_429(&self) -> usize {
        self.hits().iter().filter(|h| h.status == 429).count()
    }

    /// The most requests one IP sent within any `window` (robots.txt included).
    pub fn max_per_ip_in_window(&self, window: Duration) -> HashMap<IpAddr, usize> {
        let mut by_ip: HashMap<IpAddr, Vec<Instant>> = HashMap::new();
        for hit in self.hits() {
            by_ip.entry(hit.ip).or_default().push(hit.at);
        }
        by_ip
            .into_iter()
            .map(|(ip, mut times)| {
                times.sort();
                let mut best = 0;
                let mut start = 0;
                for end in 0..times.len() {
                    while times[end] - times[start] >= window {
                        start += 1;
                    }
                    best = best.max(end - start + 1);
                }
                (ip, best)
            })
            .collect()
    }
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response<Body> {
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let ip = peer.ip();
    let now = Instant::now();
    let behaviour = &shared.behaviour;
    let response = {
        let mut recorded = shared.recorded.lock().unwrap();
        let seen = {
            let n = recorded.per_path.entry(path.clone()).or_default();
            *n += 1;
            *n
        };
        let throttle = behaviour.throttled_ip == Some(ip)
            && path != "/robots.txt"
            && behaviour
                .throttle_first
                .is_none_or(|first| recorded.throttled < first);
        let over_limit = behaviour.per_ip_limit.is_some_and(|rate| {
            let tat = recorded.tat.get(&ip).copied().unwrap_or(now).max(now);
            let tolerance = rate.interval * (rate.burst - 1);
            if tat.saturating_duration_since(now) > tolerance {
                true
            } else {
                recorded.tat.insert(ip, tat + rate.interval);
                false
            }
        });
        if throttle {
            recorded.throttled += 1;
            let mut response = json(
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"error":"throttled"}"#.to_owned(),
            );
            if let Some(after) = &behaviour.retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_str(after).unwrap());
            }
            response
        } else if over_limit {
            // Open Library's nginx: 429 with a JSON body and no Retry-After.
            json(
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"error":"rate limited"}"#.to_owned(),
            )
        } else {
            route(behaviour, &uri, &path, seen)
        }
    };
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    shared.recorded.lock().unwrap().hits.push(Hit {
        ip,
        path,
        at: now,
        status: response.status().as_u16(),
        user_agent,
    });
    response
}

fn route(behaviour: &Behaviour, uri: &Uri, path: &str, seen: usize) -> Response<Body> {
    let parts: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["robots.txt"] => match behaviour.robots.as_deref() {
            None => json(StatusCode::NOT_FOUND, "{}".to_owned()),
            Some("500") => json(StatusCode::INTERNAL_SERVER_ERROR, "{}".to_owned()),
            Some(text) => Response::new(Body::from(text.to_owned())),
        },
        // Always 503, without Retry-After: a key that can never succeed.
        ["fail", ..] => json(StatusCode::SERVICE_UNAVAILABLE, "{}".to_owned()),
        // 500 for the first n requests of this exact path, then 200.
        ["flaky", n, ..] if seen <= n.parse::<usize>().unwrap() => {
            json(StatusCode::INTERNAL_SERVER_ERROR, "{}".to_owned())
        }
        ["status", code] => json(
            StatusCode::from_u16(code.parse().unwrap()).unwrap(),
            "{}".to_owned(),
        ),
        ["redirect"] => {
            let to = uri
                .query()
                .and_then(|q| q.strip_prefix("to="))
                .unwrap_or("/");
            Response::builder()
                .status(StatusCode::FOUND)
                .header(header::LOCATION, to)
                .body(Body::empty())
                .unwrap()
        }
        ["loop", n] => {
            let n: u32 = n.parse().unwrap();
            Response::builder()
                .status(StatusCode::MOVED_PERMANENTLY)
                .header(header::LOCATION, format!("/loop/{}", n + 1))
                .body(Body::empty())
                .unwrap()
        }
        ["big", n] => Response::new(Body::from(vec![b'x'; n.parse().unwrap()])),
        ["bigchunked", n] => {
            let n: usize = n.parse().unwrap();
            let chunks = (0..n / 1000 + 1)
                .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 1000])));
            Response::new(Body::from_stream(futures::stream::iter(chunks)))
        }
        ["missing", ..] => json(
            StatusCode::NOT_FOUND,
            format!(r#"{{"error":"notfound","key":"{path}"}}"#),
        ),
        _ => json(StatusCode::OK, format!(r#"{{"key":"{path}"}}"#)),
    }
}

/// The three Squid proxies of the stack (`PROXY_POOL`), and the outgoing address of each.
pub fn stack_proxies() -> (ProxyPool, Vec<IpAddr>) {
    let text = std::env::var("PROXY_POOL").unwrap_or_else(|_| {
        "http://127.0.0.1:3128,http://127.0.0.1:3129,http://127.0.0.1:3130".to_owned()
    });
    let pool = parse_proxy_pool(&text).unwrap();
    let ips = pool
        .0
        .iter()
        .map(|spec| match spec {
            EgressSpec::Proxy(url) => {
                let n = url.port().unwrap() - 3128;
                format!("127.0.0.1{}", n + 1).parse().unwrap()
            }
            EgressSpec::Direct => "127.0.0.1".parse().unwrap(),
        })
        .collect();
    (pool, ips)
}

/// Pool settings for a test: fast blocks so tests stay short.
pub fn pool_settings(
    egresses: Vec<EgressSpec>,
    rate: Rate,
    scope: LimitScope,
    prefix: &str,
) -> PoolSettings {
    PoolSettings {
        egresses,
        rate,
        overall: None,
        scope,
        redis_prefix: prefix.to_owned(),
        block_base: Duration::from_secs(2),
        block_max: Duration::from_secs(10),
        origin_addr: "127.0.0.1:1".to_owned(),
        client: ClientSettings {
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        },
    }
}

/// Client settings for a test against `origin`: quick backoffs.
pub fn fetch_settings(origin: Url) -> FetchSettings {
    FetchSettings {
        origin,
        respect_robots: true,
        robots_refresh: Duration::from_secs(3600),
        max_body_bytes: 64 * 1024,
        retries: 3,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        budget_ratio: 0.2,
        budget_min: 10,
        budget_window: Duration::from_secs(60),
        refetch_after: Duration::ZERO,
        record_cache_max_bytes: 1 << 20,
        blocked_probe_interval: Duration::from_secs(3600),
    }
}

/// Fresh worker metrics in their own registry.
pub fn metrics() -> WorkerMetrics {
    WorkerMetrics::register(&prometheus::Registry::new()).unwrap()
}

/// A Redis connection to the stack's Redis.
pub async fn redis() -> redis::aio::ConnectionManager {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let client = redis::Client::open(url).unwrap();
    redis::aio::ConnectionManager::new(client).await.unwrap()
}

/// A client on `pool` against `server`.
pub fn client(
    server: &TestServer,
    settings: PoolSettings,
    redis: Option<redis::aio::ConnectionManager>,
) -> (OpenLibraryClient, WorkerMetrics) {
    let metrics = metrics();
    let pool = EgressPool::new(settings, redis.clone(), metrics.clone()).unwrap();
    let client = OpenLibraryClient::new(
        pool,
        fetch_settings(server.origin()),
        metrics.clone(),
        redis,
    );
    (client, metrics)
}
