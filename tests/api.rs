//! The HTTP API against real Redis and Kafka: crawls are created with their seeds
//! enqueued, and every malformed request is refused with a JSON error and enqueues nothing.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{create_topic, eventually, message_count, unique};
use tokio_util::sync::CancellationToken;

/// An API on a random port with its own frontier topic; returns its base URL and topic.
async fn start_api() -> (String, String, CancellationToken) {
    let topic = unique("api-frontier");
    create_topic(&topic, 3).await;
    let (base, token) = support::start_api(&topic).await;
    (base, topic, token)
}

/// A crawl from a work key, a URL and free text answers 201 with its status, and its three
/// seed jobs are in the frontier.
#[tokio::test]
async fn creating_a_crawl_enqueues_every_seed() {
    let (base, topic, _token) = start_api().await;
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{base}/crawls"))
        .json(&json!({"seeds": ["/works/OL45804W", "https://openlibrary.org/authors/OL34184A", "fantastic mr fox"], "max_depth": 2}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 201);
    let status: Value = response.json().await.expect("json");
    assert_eq!(status["state"], "running");
    assert_eq!(status["max_depth"], 2);
    assert_eq!(status["counters"]["enqueued"], 3);
    assert_eq!(status["counters"]["in_flight"], 3);
    assert_eq!(
        status["seeds"],
        json!([
            "/works/OL45804W",
            "/authors/OL34184A",
            "search:fantastic mr fox"
        ])
    );
    eventually(
        "three seed jobs in the frontier",
        Duration::from_secs(20),
        || {
            let topic = topic.clone();
            async move { (message_count(&topic) == 3).then_some(()) }
        },
    )
    .await;

    let id = status["crawl_id"].as_str().expect("crawl id").to_owned();
    let fetched: Value = client
        .get(format!("{base}/crawls/{id}"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(fetched["crawl_id"], id.as_str());
    let cancelled = client
        .delete(format!("{base}/crawls/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(cancelled.status(), 200);
    assert_eq!(
        cancelled.json::<Value>().await.expect("json")["state"],
        "cancelled"
    );
}

/// Every malformed request answers 4xx with a JSON error, and nothing reaches the frontier.
#[tokio::test]
async fn malformed_requests_are_refused_and_enqueue_nothing() {
    let (base, topic, _token) = start_api().await;
    let client = reqwest::Client::new();
    let too_many: Vec<String> = (1..=101).map(|i| format!("/works/OL{i}W")).collect();
    let bodies: Vec<(String, Option<&str>)> = vec![
        ("{not json".to_owned(), None),
        (json!({"seeds": "/works/OL1W"}).to_string(), None),
        (json!({"seeds": [42]}).to_string(), Some("42")),
        (
            json!({"seeds": ["/subjects/love"]}).to_string(),
            Some("/subjects/love"),
        ),
        (
            json!({"seeds": ["https://example.com/works/OL1W"]}).to_string(),
            Some("https://example.com/works/OL1W"),
        ),
        (
            json!({"seeds": ["/works/OL1W", "ab"]}).to_string(),
            Some("ab"),
        ),
        (json!({"seeds": []}).to_string(), None),
        (json!({"seeds": too_many}).to_string(), None),
        (
            json!({"seeds": ["/works/OL1W"], "max_depth": -1}).to_string(),
            None,
        ),
        (
            json!({"seeds": ["/works/OL1W"], "max_depth": "3"}).to_string(),
            None,
        ),
        (
            json!({"seeds": ["/works/OL1W"], "max_nodes": 0}).to_string(),
            None,
        ),
        (
            json!({"seeds": ["/works/OL1W"], "colour": "red"}).to_string(),
            None,
        ),
    ];
    for (body, bad_seed) in bodies {
        let response = client
            .post(format!("{base}/crawls"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.expect("a JSON error");
        assert!(error["error"].is_string(), "{body}: {error}");
        if let Some(seed) = bad_seed {
            assert_eq!(error["seed"], seed, "{body}");
        }
    }
    let oversized = client
        .post(format!("{base}/crawls"))
        .body(format!("{{\"seeds\": [\"{}\"]}}", "x".repeat(100_000)))
        .send()
        .await
        .expect("request");
    assert_eq!(oversized.status(), 413);

    let unknown = client
        .get(format!("{base}/crawls/no-such-crawl"))
        .send()
        .await
        .expect("request");
    assert_eq!(unknown.status(), 404);
    assert!(unknown.json::<Value>().await.expect("json")["error"].is_string());
    let unknown = client
        .delete(format!("{base}/crawls/no-such-crawl"))
        .send()
        .await
        .expect("request");
    assert_eq!(unknown.status(), 404);
    assert_eq!(message_count(&topic), 0);
}

/// The API serves its OpenAPI document and its metrics count requests by route.
#[tokio::test]
async fn openapi_and_metrics_are_served() {
    let (base, _topic, _token) = start_api().await;
    let client = reqwest::Client::new();
    let doc: Value = client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/crawls/{id}"]["get"].is_object());
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("relentless_api_requests_total{route=\"/openapi.json\",status=\"200\"} 1"),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------
// Authentication, limits and errors that do not leak.
// ---------------------------------------------------------------------------------------

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use support::{Process, free_port, stack_env, wait_ok};

/// A token no other test uses, long enough for the API's minimum.
fn token(role: &str) -> String {
    unique(&format!("tok-{role}")).replace('-', "_")
}

/// A tokens file of this test under the target directory.
fn tokens_file(lines: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tokens");
    std::fs::create_dir_all(&dir).expect("tokens dir");
    let path = dir.join(unique("tokens"));
    std::fs::write(&path, lines).expect("tokens written");
    path
}

/// An API in this process, on loopback, with extra flags; returns its base URL and topic.
async fn start_api_with(extra: &[&str]) -> (String, String, CancellationToken) {
    let topic = unique("api-frontier");
    create_topic(&topic, 1).await;
    let (base, shutdown) = support::api_in_process(&topic, &stack_env("REDIS_URL"), extra).await;
    (base, topic, shutdown)
}

/// `bookworm serve` as a process on a free loopback port with `env`, its log captured;
/// returns it once `/healthz` answers.
async fn serve_process(name: &str, env: &[(&str, String)]) -> (Process, PathBuf, String) {
    let port = free_port();
    let mut all: Vec<(String, String)> = vec![
        ("API_ADDR".to_owned(), format!("127.0.0.1:{port}")),
        ("KAFKA_BROKERS".to_owned(), stack_env("KAFKA_BROKERS")),
        ("REDIS_URL".to_owned(), stack_env("REDIS_URL")),
        ("KAFKA_FRONTIER_TOPIC".to_owned(), unique("api-frontier")),
    ];
    for (k, v) in env {
        all.retain(|(key, _)| key != k);
        all.push(((*k).to_owned(), v.clone()));
    }
    let (process, log) =
        Process::start_logged(name, env!("CARGO_BIN_EXE_bookworm"), &["serve"], &all);
    let base = format!("http://127.0.0.1:{port}");
    wait_ok(&format!("{base}/healthz"), Duration::from_secs(30)).await;
    (process, log, base)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Without a valid token every crawl route answers 401 with a JSON error and a
/// `WWW-Authenticate` challenge; the probes, the metrics and the OpenAPI document stay open.
#[tokio::test]
async fn a_request_without_a_valid_token_is_refused_with_401() {
    let write = token("write");
    let file = tokens_file(&format!("# ops\n{write} write\n"));
    let path = file.to_string_lossy().into_owned();
    let (base, topic, _stop) = start_api_with(&["--api-tokens-file", &path]).await;
    let client = reqwest::Client::new();
    let wrong = format!("{write}x");
    let attempts: [(&str, Option<String>); 4] = [
        ("no header", None),
        ("an unknown token", Some(bearer(&wrong))),
        ("another scheme", Some(format!("Basic {write}"))),
        ("an empty bearer", Some("Bearer ".to_owned())),
    ];
    for (what, header) in attempts {
        for request in [
            client.get(format!("{base}/crawls/some-id")),
            client.delete(format!("{base}/crawls/some-id")),
            client
                .post(format!("{base}/crawls"))
                .json(&json!({"seeds": ["/works/OL1W"]})),
            client.get(format!("{base}/no-such-route")),
        ] {
            let request = match &header {
                Some(value) => request.header("authorization", value),
                None => request,
            };
            let response = request.send().await.expect("request");
            assert_eq!(response.status(), 401, "{what}");
            assert_eq!(
                response.headers()["www-authenticate"],
                "Bearer realm=\"bookworm\""
            );
            let error: Value = response.json().await.expect("a JSON error");
            assert!(error["error"].is_string(), "{what}: {error}");
        }
    }
    for open in ["/healthz", "/metrics", "/openapi.json"] {
        let response = client
            .get(format!("{base}{open}"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{open} must stay open");
    }
    let readyz = format!("{base}/readyz");
    wait_ok(&readyz, Duration::from_secs(20)).await;
    assert_eq!(
        message_count(&topic),
        0,
        "a refused request enqueued something"
    );
}

/// A read token may watch crawls but not create or cancel them (403); a write token does
/// everything (201, 200, 200).
#[tokio::test]
async fn a_read_token_is_refused_on_write_routes_and_a_write_token_is_not() {
    let (read, write) = (token("read"), token("write"));
    let file = tokens_file(&format!("{read} read\n\n{write}   write\n"));
    let path = file.to_string_lossy().into_owned();
    let (base, topic, _stop) = start_api_with(&["--api-tokens-file", &path]).await;
    let client = reqwest::Client::new();
    let body = json!({"seeds": ["/works/OL45804W"], "max_depth": 1});

    let refused = client
        .post(format!("{base}/crawls"))
        .header("authorization", bearer(&read))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 403);
    assert!(refused.json::<Value>().await.expect("json")["error"].is_string());
    assert_eq!(message_count(&topic), 0);

    let created = client
        .post(format!("{base}/crawls"))
        .header("authorization", bearer(&write))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.expect("json")["crawl_id"]
        .as_str()
        .expect("id")
        .to_owned();

    let watched = client
        .get(format!("{base}/crawls/{id}"))
        .header("authorization", bearer(&read))
        .send()
        .await
        .expect("request");
    assert_eq!(watched.status(), 200);
    let cancel_with_read = client
        .delete(format!("{base}/crawls/{id}"))
        .header("authorization", bearer(&read))
        .send()
        .await
        .expect("request");
    assert_eq!(cancel_with_read.status(), 403);
    let cancelled = client
        .delete(format!("{base}/crawls/{id}"))
        .header("authorization", format!("bearer {write}"))
        .send()
        .await
        .expect("request");
    assert_eq!(cancelled.status(), 200, "the scheme is case-insensitive");
}

/// With `API_METRICS_AUTH=true`, `/metrics` needs a read token; the probes stay open.
#[tokio::test]
async fn metrics_need_a_read_token_when_configured() {
    let read = token("read");
    let file = tokens_file(&format!("{read} read\n"));
    let path = file.to_string_lossy().into_owned();
    let (base, _topic, _stop) =
        start_api_with(&["--api-tokens-file", &path, "--api-metrics-auth", "true"]).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/metrics");
    let anonymous = client.get(&url).send().await.expect("request");
    assert_eq!(anonymous.status(), 401);
    let scraped = client
        .get(&url)
        .header("authorization", bearer(&read))
        .send()
        .await
        .expect("request");
    assert_eq!(scraped.status(), 200);
    let healthz = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("request");
    assert_eq!(healthz.status(), 200);
}

/// The OpenAPI document of a server with tokens declares the bearer scheme on the crawl
/// routes, with their 401 and 403; an open server's document declares none.
#[tokio::test]
async fn the_openapi_document_declares_the_bearer_scheme_when_tokens_are_required() {
    let file = tokens_file(&format!("{} read\n", token("read")));
    let path = file.to_string_lossy().into_owned();
    let (secured, _t, _s) = start_api_with(&["--api-tokens-file", &path]).await;
    let (open, _t2, _s2) = start_api_with(&[]).await;
    let get = |base: String| async move {
        reqwest::get(format!("{base}/openapi.json"))
            .await
            .expect("request")
            .json::<Value>()
            .await
            .expect("json")
    };
    let doc = get(secured).await;
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"],
        json!({"type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"]})
    );
    for (path, method) in [
        ("/crawls", "post"),
        ("/crawls/{id}", "get"),
        ("/crawls/{id}", "delete"),
    ] {
        let operation = &doc["paths"][path][method];
        assert_eq!(operation["security"], json!([{"bearerAuth": []}]), "{path}");
        assert!(operation["responses"]["401"].is_object(), "{path}");
        assert!(operation["responses"]["403"].is_object(), "{path}");
    }
    assert!(doc["paths"]["/healthz"]["get"]["security"].is_null());
    let doc = get(open).await;
    assert!(doc["components"]["securitySchemes"].is_null());
    assert!(doc["paths"]["/crawls"]["post"]["security"].is_null());
}

/// A rewritten tokens file is in force within seconds, without a restart: the new token
/// works, the removed one gets 401.
#[tokio::test]
async fn a_changed_tokens_file_is_in_force_without_a_restart() {
    let (old, new) = (token("old"), token("new-and-longer"));
    let file = tokens_file(&format!("{old} read\n"));
    let path = file.to_string_lossy().into_owned();
    let (base, _topic, _stop) = start_api_with(&["--api-tokens-file", &path]).await;
    let client = reqwest::Client::new();
    let status_with = |token: String| {
        let client = client.clone();
        let url = format!("{base}/crawls/no-such-crawl");
        async move {
            client
                .get(url)
                .header("authorization", bearer(&token))
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        }
    };
    assert_eq!(status_with(old.clone()).await, 404, "the old token passes");
    assert_eq!(status_with(new.clone()).await, 401);
    std::fs::write(&file, format!("# rotated\n{new} read\n")).expect("rewrite");
    eventually("the new token in force", Duration::from_secs(15), || {
        let attempt = status_with(new.clone());
        async move { (attempt.await == 404).then_some(()) }
    })
    .await;
    assert_eq!(
        status_with(old).await,
        401,
        "the removed token still passes"
    );
}

/// `bookworm serve` with tokens, logging at debug: good and bad tokens are used, the file
/// is changed in a way its modification time and size do not show and SIGHUP reloads it;
/// no token value appears anywhere in the captured log.
#[tokio::test]
async fn sighup_reloads_the_tokens_and_no_token_reaches_the_log() {
    let (first, second, wrong) = (token("first"), token("secnd"), token("wrong"));
    assert_eq!(first.len(), second.len());
    let file = tokens_file(&format!("{first} write\n"));
    let (process, log, base) = serve_process(
        "api-sighup",
        &[
            ("API_TOKENS_FILE", file.to_string_lossy().into_owned()),
            ("RUST_LOG", "debug".to_owned()),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let status_with = |token: String| {
        let client = client.clone();
        let url = format!("{base}/crawls/no-such-crawl");
        async move {
            client
                .get(url)
                .header("authorization", bearer(&token))
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        }
    };
    assert_eq!(status_with(first.clone()).await, 404);
    assert_eq!(status_with(wrong.clone()).await, 401);
    // Same size, same modification time: only SIGHUP can tell the server.
    let modified = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .expect("mtime");
    std::fs::write(&file, format!("{second} write\n")).expect("rewrite");
    std::fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_modified(modified))
        .expect("mtime restored");
    assert_eq!(
        status_with(second.clone()).await,
        401,
        "reloaded without a signal"
    );
    process.signal("HUP");
    eventually("the SIGHUP reload", Duration::from_secs(10), || {
        let attempt = status_with(second.clone());
        async move { (attempt.await == 404).then_some(()) }
    })
    .await;
    assert_eq!(status_with(first.clone()).await, 401);
    drop(process);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("API tokens reloaded"), "{text}");
    for secret in [&first, &second, &wrong] {
        assert!(
            !text.contains(secret.as_str()),
            "a token reached the log: {text}"
        );
    }
}

/// Reads from `stream` until the server closes it; returns when that happened.
fn closed_at(mut stream: std::net::TcpStream, limit: Duration) -> Instant {
    stream.set_read_timeout(Some(limit)).expect("read timeout");
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Instant::now(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Instant::now(),
            Err(e) => panic!("the server did not close the connection within {limit:?}: {e}"),
        }
    }
}

fn connect(base: &str) -> std::net::TcpStream {
    std::net::TcpStream::connect(base.trim_start_matches("http://")).expect("connect")
}

/// A client that sends half a request's headers is closed once the header timeout passed,
/// not held for good.
#[tokio::test]
async fn a_half_sent_request_is_closed_within_the_header_timeout() {
    let (base, _topic, _stop) = start_api_with(&["--api-header-timeout", "1s"]).await;
    let closed = tokio::task::spawn_blocking(move || {
        let mut stream = connect(&base);
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: bookworm\r\nX-Half: ")
            .expect("half a request");
        let sent = Instant::now();
        closed_at(stream, Duration::from_secs(10)).duration_since(sent)
    })
    .await
    .expect("client");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(4),
        "closed after {closed:?}, expected about 1 s"
    );
}

/// A kept-alive connection that sends nothing after its answer is closed after the header
/// timeout: idle connections do not pile up.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let (base, _topic, _stop) = start_api_with(&["--api-header-timeout", "1s"]).await;
    let idle = tokio::task::spawn_blocking(move || {
        let mut stream = connect(&base);
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: bookworm\r\n\r\n")
            .expect("request");
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        while !String::from_utf8_lossy(&seen).contains("\"status\"") {
            let n = stream.read(&mut buf).expect("the answer");
            assert!(n > 0, "closed before answering");
            seen.extend_from_slice(&buf[..n]);
        }
        let answered = Instant::now();
        closed_at(stream, Duration::from_secs(10)).duration_since(answered)
    })
    .await
    .expect("client");
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(4),
        "idle connection closed after {idle:?}, expected about 1 s"
    );
}

/// A body that trickles in slower than the request timeout gets 408.
#[tokio::test]
async fn a_request_slower_than_the_request_timeout_gets_408() {
    let write = token("write");
    let file = tokens_file(&format!("{write} write\n"));
    let path = file.to_string_lossy().into_owned();
    let (base, topic, _stop) =
        start_api_with(&["--api-tokens-file", &path, "--api-request-timeout", "1s"]).await;
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = connect(&base);
        let head = format!(
            "POST /crawls HTTP/1.1\r\nHost: bookworm\r\nAuthorization: Bearer {write}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"seeds\": ["
        );
        stream.write_all(head.as_bytes()).expect("half a body");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).expect("an answer");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .expect("client");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(message_count(&topic), 0);
}

/// The shared server holds at most its connection cap: one more client waits in the backlog
/// until a connection is freed (the health servers and the simulator serve the same way).
#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_is_freed() {
    use bookworm::api::http::{ServerLimits, serve};
    let limits = ServerLimits {
        header_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(5),
        max_body_bytes: 1024,
        max_connections: 1,
        shutdown_timeout: Duration::from_secs(1),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(listener, app, limits, stop.clone()));
    let holder = connect(&base);
    // The holder has the only permit once the server answers nobody else: a second client's
    // request stays unanswered until the holder leaves.
    let second = {
        let base = base.clone();
        tokio::task::spawn_blocking(move || {
            let mut stream = connect(&base);
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .expect("request");
            let asked = Instant::now();
            let mut answer = String::new();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("read timeout");
            stream.read_to_string(&mut answer).expect("answer");
            (asked.elapsed(), answer)
        })
    };
    let held = Duration::from_millis(1500);
    tokio::time::sleep(held).await; // the duration held is the subject of this test
    drop(holder);
    let (waited, answer) = second.await.expect("client");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        waited >= held - Duration::from_millis(200),
        "answered after {waited:?} while the cap was taken"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops within its deadline")
        .expect("task")
        .expect("serve");
}

/// SIGTERM while a client holds half a request: `bookworm serve` still exits 0 within its
/// shutdown deadline instead of waiting for the client.
#[tokio::test]
async fn sigterm_with_a_half_open_client_exits_within_the_shutdown_deadline() {
    let (mut process, _log, base) = serve_process(
        "api-sigterm",
        &[
            ("API_HEADER_TIMEOUT", "120s".to_owned()),
            ("API_SHUTDOWN_TIMEOUT", "2s".to_owned()),
        ],
    )
    .await;
    let mut half = connect(&base);
    half.write_all(b"POST /crawls HTTP/1.1\r\nHost: bookworm\r\nContent-Le")
        .expect("half a request");
    // An answered request proves the server is serving with the half-open client connected.
    wait_ok(&format!("{base}/healthz"), Duration::from_secs(5)).await;
    let signalled = Instant::now();
    process.signal("TERM");
    let code = tokio::task::spawn_blocking(move || {
        let code = process.wait_exit(Duration::from_secs(8));
        (code, process)
    })
    .await
    .expect("waiter");
    let elapsed = signalled.elapsed();
    assert_eq!(code.0, Some(0), "did not exit 0 within 8 s ({elapsed:?})");
    assert!(
        elapsed < Duration::from_secs(5),
        "exited after {elapsed:?}; the shutdown deadline is 2 s"
    );
    drop(half);
}

/// When Redis fails, the 503 body says only what failed, with a request id; the cause (the
/// Redis error text) is in the log under the same id, not in the body.
#[tokio::test]
async fn a_5xx_carries_a_request_id_and_its_cause_goes_to_the_log() {
    let upstream = stack_env("REDIS_URL")
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let relay = support::relay::Relay::start(upstream).await;
    let (_process, log, base) = serve_process(
        "api-5xx",
        &[("REDIS_URL", format!("redis://{}", relay.addr))],
    )
    .await;
    relay.cut();
    let client = reqwest::Client::new();
    let (body, header) = eventually("a 503 while Redis is cut", Duration::from_secs(30), || {
        let request = client.get(format!("{base}/crawls/no-such-crawl")).send();
        async move {
            let response = request.await.ok()?;
            if response.status() != 503 {
                return None;
            }
            let header = response
                .headers()
                .get("x-request-id")?
                .to_str()
                .ok()?
                .to_owned();
            Some((response.json::<Value>().await.ok()?, header))
        }
    })
    .await;
    assert_eq!(body["error"], "crawl store unavailable", "{body}");
    let id = body["request_id"]
        .as_str()
        .expect("a request id")
        .to_owned();
    assert_eq!(id, header);
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(2),
        "the body carries more than the message and the id: {body}"
    );
    let line = eventually("the cause in the log", Duration::from_secs(10), || {
        let log = log.clone();
        let id = id.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .find(|l| l.contains(&id) && l.contains("request failed"))
                .map(str::to_owned)
        }
    })
    .await;
    assert!(line.contains("cause"), "{line}");
    assert!(
        !line.contains("cause=-"),
        "the log line has no cause: {line}"
    );
    relay.restore();
}
