//! The crawl lifecycle and the API's quotas against real Redis and Kafka: `GET /crawls`
//! pages and filters, pause and resume hold and hand back a crawl's jobs, `bookworm crawls
//! delete` removes a finished crawl's state and refuses a running one, and each of the
//! operator's ceilings refuses with a 4xx naming it.
//!
//! Each API here has its own `CRAWL_INDEX_PREFIX`, so its list and its running count see
//! only this test's crawls.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use bookworm::crawl::store::{Begin, CrawlStore};
use serde_json::{Value, json};
use support::{create_topic, eventually, message_count, stack_env, unique};
use tokio_util::sync::CancellationToken;

/// An API in this process on loopback with its own frontier topic and crawl index, and
/// `extra` flags; its base URL, topic and index prefix.
async fn start_api(extra: &[&str]) -> (String, String, String, CancellationToken) {
    let topic = unique("life-frontier");
    create_topic(&topic, 1).await;
    let index = unique("life-index");
    let mut flags = vec!["--crawl-index-prefix", index.as_str()];
    flags.extend_from_slice(extra);
    let (base, shutdown) = support::api_in_process(&topic, &stack_env("REDIS_URL"), &flags).await;
    (base, topic, index, shutdown)
}

async fn create(client: &reqwest::Client, base: &str, body: Value) -> reqwest::Response {
    client
        .post(format!("{base}/crawls"))
        .json(&body)
        .send()
        .await
        .expect("create")
}

async fn create_id(client: &reqwest::Client, base: &str) -> String {
    let response = create(client, base, json!({"seeds": ["/works/OL45804W"]})).await;
    assert_eq!(response.status(), 201);
    let status: Value = response.json().await.expect("json");
    status["crawl_id"].as_str().expect("id").to_owned()
}

async fn post(client: &reqwest::Client, url: String) -> (u16, Value) {
    let response = client.post(url).send().await.expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    let response = client.get(url).send().await.expect("get");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

/// Five crawls page newest first two at a time, each once, with `next` chaining the pages
/// and null on the last; the state filter keeps only the cancelled or the paused ones; bad
/// query values are a 400 JSON error.
#[tokio::test]
async fn crawls_are_listed_newest_first_in_pages_and_filtered_by_state() {
    let (base, _, _, _shutdown) = start_api(&[]).await;
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(create_id(&client, &base).await);
        // Distinct creation milliseconds, so "newest first" has one answer.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    ids.reverse();
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &after {
            Some(cursor) => format!("{base}/crawls?limit=2&after={cursor}"),
            None => format!("{base}/crawls?limit=2"),
        };
        let (code, page) = get(&client, url).await;
        assert_eq!(code, 200, "{page}");
        let crawls = page["crawls"].as_array().expect("crawls");
        assert!(crawls.len() <= 2, "{page}");
        listed.extend(
            crawls
                .iter()
                .map(|c| c["crawl_id"].as_str().expect("id").to_owned()),
        );
        pages += 1;
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(listed, ids, "newest first, each once");
    assert_eq!(pages, 3);

    for id in &ids[1..3] {
        let cancelled = client
            .delete(format!("{base}/crawls/{id}"))
            .send()
            .await
            .expect("cancel");
        assert_eq!(cancelled.status(), 200);
    }
    let (code, _) = post(&client, format!("{base}/crawls/{}/pause", ids[4])).await;
    assert_eq!(code, 200);
    let states = |page: &Value| -> Vec<(String, String)> {
        page["crawls"]
            .as_array()
            .expect("crawls")
            .iter()
            .map(|c| {
                (
                    c["crawl_id"].as_str().expect("id").to_owned(),
                    c["state"].as_str().expect("state").to_owned(),
                )
            })
            .collect()
    };
    let (_, cancelled) = get(&client, format!("{base}/crawls?state=cancelled")).await;
    assert_eq!(
        states(&cancelled),
        vec![
            (ids[1].clone(), "cancelled".to_owned()),
            (ids[2].clone(), "cancelled".to_owned())
        ]
    );
    let (_, paused) = get(&client, format!("{base}/crawls?state=paused")).await;
    assert_eq!(states(&paused), vec![(ids[4].clone(), "paused".to_owned())]);
    let (_, running) = get(&client, format!("{base}/crawls?state=running&limit=500")).await;
    assert_eq!(running["crawls"].as_array().expect("crawls").len(), 2);

    for query in [
        "limit=0",
        "limit=501",
        "limit=two",
        "state=sleeping",
        "after=nonsense",
        "colour=blue",
        "limit=1&limit=2",
    ] {
        let (code, body) = get(&client, format!("{base}/crawls?{query}")).await;
        assert_eq!(code, 400, "{query}: {body}");
        assert!(body["error"].is_string(), "{query}: {body}");
    }
}

/// Pausing holds the jobs a worker begins (nothing fetched, key still pending), resume
/// publishes each held job again to the frontier and the crawl runs; pausing a cancelled
/// crawl is a 409, an unknown one a 404.
#[tokio::test]
async fn pause_holds_jobs_and_resume_publishes_them_again() {
    let (base, topic, index, _shutdown) = start_api(&[]).await;
    let client = reqwest::Client::new();
    let id = create_id(&client, &base).await;
    let (code, paused) = post(&client, format!("{base}/crawls/{id}/pause")).await;
    assert_eq!((code, paused["state"].as_str()), (200, Some("paused")));

    // A worker receiving the seed job now holds it.
    let store = CrawlStore::connect(&stack_env("REDIS_URL"))
        .await
        .expect("redis")
        .with_index_prefix(&index);
    assert_eq!(
        store.begin(&id, "/works/OL45804W", 0).await.expect("begin"),
        Begin::Held
    );
    let (_, status) = get(&client, format!("{base}/crawls/{id}")).await;
    assert_eq!(status["state"], "paused");
    assert_eq!(status["counters"]["in_flight"], 1, "{status}");
    eventually("the seed in the frontier", Duration::from_secs(20), || {
        let topic = topic.clone();
        async move { (message_count(&topic) == 1).then_some(()) }
    })
    .await;

    let (code, resumed) = post(&client, format!("{base}/crawls/{id}/resume")).await;
    assert_eq!(
        (code, resumed["state"].as_str()),
        (200, Some("running")),
        "{resumed}"
    );
    eventually(
        "the held job published again",
        Duration::from_secs(20),
        || {
            let topic = topic.clone();
            async move { (message_count(&topic) == 2).then_some(()) }
        },
    )
    .await;
    // The published copy runs, and is held no more.
    assert!(matches!(
        store.begin(&id, "/works/OL45804W", 0).await.expect("begin"),
        Begin::Run { .. }
    ));
    assert_eq!(store.held_count(&id).await.expect("held"), 0);

    let cancelled = client
        .delete(format!("{base}/crawls/{id}"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(cancelled.status(), 200);
    let (code, conflict) = post(&client, format!("{base}/crawls/{id}/pause")).await;
    assert_eq!(code, 409, "{conflict}");
    assert!(
        conflict["error"]
            .as_str()
            .expect("error")
            .contains("cancelled")
    );
    let (code, _) = post(&client, format!("{base}/crawls/{id}/resume")).await;
    assert_eq!(code, 409);
    let (code, _) = post(&client, format!("{base}/crawls/{}/pause", unique("none"))).await;
    assert_eq!(code, 404);
}

/// `bookworm crawls` against the API: `delete` refuses a running crawl (exit 1, saying
/// why), `delete --force` cancels and deletes it, after which the API knows it no more and
/// Redis holds none of its keys; `list`, `pause` and `resume` print what the API answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookworm_crawls_delete_removes_the_state_and_refuses_a_running_crawl() {
    let (base, _, _, _shutdown) = start_api(&[]).await;
    let client = reqwest::Client::new();
    let id = create_id(&client, &base).await;
    let bookworm = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_bookworm"))
            .args(["crawls"])
            .args(args)
            .env("BOOKWORM_API", &base)
            .env_remove("API_TOKEN")
            .output()
            .expect("bookworm runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, out, err) = bookworm(&["list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&id) && out.contains("running"), "{out}");
    let (code, out, _) = bookworm(&["pause", &id]);
    assert_eq!(code, Some(0));
    assert!(out.contains("paused"), "{out}");
    let (code, out, _) = bookworm(&["list", "--state", "paused"]);
    assert_eq!(code, Some(0));
    assert!(out.contains(&id), "{out}");
    let (code, out, _) = bookworm(&["resume", &id]);
    assert_eq!(code, Some(0));
    assert!(out.contains("running"), "{out}");

    let (code, _, err) = bookworm(&["delete", &id]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("running") && err.contains("--force"), "{err}");
    let (_, status) = get(&client, format!("{base}/crawls/{id}")).await;
    assert_eq!(
        status["state"], "running",
        "a refused delete changes nothing"
    );

    let (code, out, err) = bookworm(&["delete", "--force", &id]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&id), "{out}");
    let (code, _) = get(&client, format!("{base}/crawls/{id}")).await;
    assert_eq!(code, 404);
    let store = CrawlStore::connect(&stack_env("REDIS_URL"))
        .await
        .expect("redis");
    let mut redis = store.connection();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("bookworm:crawl:{{{id}}}:*"))
        .query_async(&mut redis)
        .await
        .expect("keys");
    assert!(left.is_empty(), "{left:?}");
    let (code, _, err) = bookworm(&["delete", &id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no crawl"), "{err}");
}

/// `max_depth` and `max_nodes` above the operator's ceilings are a 422 naming the field,
/// the ceiling and the variable; at the ceiling they pass.
#[tokio::test]
async fn depth_and_node_ceilings_refuse_bigger_crawls() {
    let (base, _, _, _shutdown) = start_api(&[
        "--api-max-depth-limit",
        "3",
        "--api-max-nodes-limit",
        "1000",
        "--max-nodes",
        "500",
    ])
    .await;
    let client = reqwest::Client::new();
    for (body, limit) in [
        (
            json!({"seeds": ["/works/OL1W"], "max_depth": 4}),
            "API_MAX_DEPTH_LIMIT",
        ),
        (
            json!({"seeds": ["/works/OL1W"], "max_nodes": 1001}),
            "API_MAX_NODES_LIMIT",
        ),
    ] {
        let response = create(&client, &base, body.clone()).await;
        assert_eq!(response.status(), 422, "{body}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["limit"], limit, "{error}");
        let text = error["error"].as_str().expect("error");
        assert!(
            text.contains(limit) && (text.contains('3') || text.contains("1000")),
            "{text}"
        );
    }
    let response = create(
        &client,
        &base,
        json!({"seeds": ["/works/OL1W"], "max_depth": 3, "max_nodes": 1000}),
    )
    .await;
    assert_eq!(response.status(), 201);
}

/// With `API_MAX_RUNNING_CRAWLS=2` a third crawl is a 429 naming the limit, paused crawls
/// count, and a place frees when one is cancelled.
#[tokio::test]
async fn the_running_crawls_ceiling_counts_running_and_paused_crawls() {
    let (base, _, _, _shutdown) = start_api(&["--api-max-running-crawls", "2"]).await;
    let client = reqwest::Client::new();
    let first = create_id(&client, &base).await;
    let _second = create_id(&client, &base).await;
    let (code, _) = post(&client, format!("{base}/crawls/{first}/pause")).await;
    assert_eq!(code, 200);
    let refused = create(&client, &base, json!({"seeds": ["/works/OL1W"]})).await;
    assert_eq!(refused.status(), 429);
    let error: Value = refused.json().await.expect("json");
    assert_eq!(error["limit"], "API_MAX_RUNNING_CRAWLS", "{error}");
    let (_, list) = get(&client, format!("{base}/crawls")).await;
    assert_eq!(
        list["crawls"].as_array().expect("crawls").len(),
        2,
        "a refused crawl leaves no trace"
    );
    client
        .delete(format!("{base}/crawls/{first}"))
        .send()
        .await
        .expect("cancel");
    let _third = create_id(&client, &base).await;
}

fn tokens_file(lines: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tokens");
    std::fs::create_dir_all(&dir).expect("tokens dir");
    let path = dir.join(unique("tokens"));
    std::fs::write(&path, lines).expect("tokens written");
    path
}

/// With `API_CRAWLS_PER_MINUTE=2` and tokens, a token's third crawl within the minute is a
/// 429 with Retry-After (at most the window) naming the limit, while another token still
/// creates; a refused creation enqueues nothing.
#[tokio::test]
async fn the_per_minute_ceiling_is_per_token_with_retry_after() {
    let (one, two) = (
        unique("tok-one").replace('-', "_"),
        unique("tok-two").replace('-', "_"),
    );
    let file = tokens_file(&format!("{one} write\n{two} write\n"));
    let path = file.to_str().expect("utf-8 path").to_owned();
    let (base, topic, _, _shutdown) =
        start_api(&["--api-tokens-file", &path, "--api-crawls-per-minute", "2"]).await;
    let client = reqwest::Client::new();
    let as_token = |token: &str| {
        client
            .post(format!("{base}/crawls"))
            .header("authorization", format!("Bearer {token}"))
            .json(&json!({"seeds": ["/works/OL1W"]}))
    };
    for _ in 0..2 {
        assert_eq!(as_token(&one).send().await.expect("create").status(), 201);
    }
    let refused = as_token(&one).send().await.expect("create");
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    let error: Value = refused.json().await.expect("json");
    assert_eq!(error["limit"], "API_CRAWLS_PER_MINUTE", "{error}");
    assert_eq!(as_token(&two).send().await.expect("create").status(), 201);
    eventually(
        "three seeds in the frontier",
        Duration::from_secs(20),
        || {
            let topic = topic.clone();
            async move { (message_count(&topic) == 3).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        message_count(&topic),
        3,
        "the refused crawl enqueued nothing"
    );
}
