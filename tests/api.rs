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
