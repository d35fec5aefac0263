//! The simulator's change feed over HTTP: `POST /_sim/changes` changes the served catalogue
//! (revisions per record, merges that rename every reference, deletes that take the editions
//! along), `/recentchanges…` serves what changed as Open Library does (newest first, by day
//! and by kind, paged), and the background generator counts down `pending` as it applies.

use std::collections::BTreeMap;

use bookworm::follow::feed::ChangeEntry;
use bookworm::sim::{RunningSim, SimArgs, spawn};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn start(seed: &str) -> (RunningSim, CancellationToken) {
    let flags = [
        "--addr",
        "127.0.0.1:0",
        "--seed",
        seed,
        "--works",
        "40",
        "--authors",
        "12",
        "--subjects",
        "8",
        "--no-limit",
    ];
    let args = SimArgs::from_flags(flags).expect("flags parse");
    let stop = CancellationToken::new();
    let sim = spawn(args, stop.clone()).await.expect("simulator starts");
    (sim, stop)
}

async fn get(sim: &RunningSim, path: &str) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", sim.base_url()))
        .send()
        .await
        .expect("answered");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post_changes(sim: &RunningSim, plan: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/_sim/changes", sim.base_url()))
        .json(&plan)
        .send()
        .await
        .expect("answered");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The served record at `key` (`/works/OL1W`).
async fn record(sim: &RunningSim, key: &str) -> Value {
    let (status, body) = get(sim, &format!("{key}.json")).await;
    assert_eq!(status, StatusCode::OK, "{key}");
    body
}

fn entries(feed: &Value) -> Vec<ChangeEntry> {
    serde_json::from_value(feed.clone()).expect("the follower's parser reads the feed")
}

fn type_of(record: &Value) -> &str {
    record["type"]["key"].as_str().unwrap_or_default()
}

fn author_keys(record: &Value) -> Vec<String> {
    let named = |a: &Value| {
        a["author"]["key"]
            .as_str()
            .or_else(|| a["key"].as_str())
            .map(str::to_owned)
    };
    record["authors"]
        .as_array()
        .map(|list| list.iter().filter_map(named).collect())
        .unwrap_or_default()
}

/// Every change raises the revision of each record it names by one, the served record carries
/// that revision and the change's time, and the feed names it at that revision.
#[tokio::test]
async fn a_change_raises_each_record_it_writes_by_one_revision() {
    let (sim, _stop) = start("7").await;
    let before: BTreeMap<String, i64> = sim
        .state
        .catalogue()
        .dump_records()
        .map(|r| (r.key.clone(), r.revision))
        .collect();
    let (status, answer) =
        post_changes(&sim, json!({"edits": 4, "adds": 2, "covers": 2, "seed": 1})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["applied"], 8);
    let logged = entries(&answer["entries"]);
    let mut revisions_seen: BTreeMap<String, i64> = BTreeMap::new();
    for entry in &logged {
        for changed in &entry.changes {
            let revision = changed.revision.expect("a revision");
            let previous = revisions_seen
                .get(&changed.key)
                .or(before.get(&changed.key))
                .copied()
                .unwrap_or(0);
            assert_eq!(
                revision,
                previous + 1,
                "{} in change {}",
                changed.key,
                entry.id
            );
            revisions_seen.insert(changed.key.clone(), revision);
        }
    }
    for (key, revision) in &revisions_seen {
        let served = record(&sim, key).await;
        assert_eq!(served["revision"].as_i64(), Some(*revision), "{key}");
    }
    let last = logged.last().expect("an entry");
    let served = record(&sim, &last.changes[0].key).await;
    let stamp = last.timestamp.format("%Y-%m-%dT%H:%M:%S%.6f").to_string();
    assert_eq!(
        served["last_modified"]["value"].as_str(),
        Some(stamp.as_str())
    );
    let unchanged = before
        .keys()
        .find(|k| k.starts_with("/works/") && !revisions_seen.contains_key(*k))
        .expect("an unchanged work");
    assert_eq!(
        record(&sim, unchanged).await["revision"].as_i64(),
        before.get(unchanged).copied(),
        "a record no change wrote keeps its revision"
    );
}

/// A merge makes the duplicate a redirect to the master and no live work or edition names the
/// duplicate any more; a delete takes the work's editions along.
#[tokio::test]
async fn merges_rename_every_reference_and_deletes_take_the_editions() {
    let (sim, _stop) = start("8").await;
    let (status, answer) = post_changes(&sim, json!({"merges": 1, "deletes": 1, "seed": 5})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let raw = answer["entries"].as_array().expect("entries");
    let merge = raw
        .iter()
        .find(|e| e["kind"] == "merge-authors")
        .expect("a merge");
    let master = merge["data"]["master"].as_str().expect("master");
    let duplicate = merge["data"]["duplicates"][0].as_str().expect("duplicate");
    let redirect = record(&sim, duplicate).await;
    assert_eq!(type_of(&redirect), "/type/redirect");
    assert_eq!(redirect["location"].as_str(), Some(master));
    let mut renamed = 0;
    for record in sim.state.catalogue().dump_records() {
        if record.kind == "/type/work" || record.kind == "/type/edition" {
            let names = author_keys(&record.json);
            assert!(
                !names.iter().any(|k| k == duplicate),
                "{} names {duplicate}",
                record.key
            );
            renamed += usize::from(names.iter().any(|k| k == master));
        }
    }
    assert!(renamed > 0, "some record names the master");

    let delete = raw
        .iter()
        .find(|e| e["kind"] == "update")
        .expect("a delete");
    let keys: Vec<&str> = delete["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["key"].as_str())
        .collect();
    assert!(keys[0].starts_with("/works/"), "{keys:?}");
    assert!(
        keys[1..].iter().all(|k| k.starts_with("/books/")) && keys.len() > 1,
        "{keys:?}"
    );
    for key in keys {
        assert_eq!(type_of(&record(&sim, key).await), "/type/delete", "{key}");
    }
}

/// The feed serves Open Library's paths: newest first, filtered by day and kind, paged by
/// `limit` and `offset`; a plan that does not parse is a 400 with the reason.
#[tokio::test]
async fn the_feed_is_served_newest_first_by_day_and_kind_and_paged() {
    let (sim, _stop) = start("9").await;
    let plan = json!({"edits": 5, "adds": 3, "covers": 2, "deletes": 1, "seed": 2});
    let (status, answer) = post_changes(&sim, plan).await;
    assert_eq!(status, StatusCode::OK);
    let logged = entries(&answer["entries"]);
    assert_eq!(logged.len(), 11);

    let (status, feed) = get(&sim, "/recentchanges.json").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<u64> = entries(&feed).iter().map(|e| e.id).collect();
    let mut newest_first: Vec<u64> = logged.iter().map(|e| e.id).collect();
    newest_first.reverse();
    assert_eq!(ids, newest_first);

    let day = logged[0].timestamp.date().format("%Y/%m/%d").to_string();
    let (_, edits) = get(&sim, &format!("/recentchanges/{day}/edit-book.json")).await;
    let edits = entries(&edits);
    assert_eq!(edits.len(), 5);
    assert!(edits.iter().all(|e| e.kind == "edit-book"));
    let (_, page) = get(
        &sim,
        &format!("/recentchanges/{day}/edit-book.json?limit=2&offset=2"),
    )
    .await;
    let page: Vec<u64> = entries(&page).iter().map(|e| e.id).collect();
    assert_eq!(page, vec![edits[2].id, edits[3].id]);
    let (_, other_day) = get(&sim, "/recentchanges/2001/01/01.json").await;
    assert_eq!(other_day, json!([]), "no change that day");
    let (status, _) = get(&sim, "/recentchanges/2001/02/30.json").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no such day");

    for bad in [
        json!({"edit": 1}),
        json!({"edits": -1}),
        json!({"edits": 1, "per_second": 0}),
    ] {
        let (status, body) = post_changes(&sim, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
}

/// A key a change wrote and the revision it wrote.
type KeyRevision = (String, Option<i64>);

/// Changes scheduled at a rate are applied in the background, `pending` counting down to 0;
/// the same plan and seed on the same catalogue make the same changes.
#[tokio::test]
async fn scheduled_changes_count_down_and_replay_the_same_way() {
    let plan = json!({"edits": 3, "adds": 2, "merges": 1, "per_second": 50.0, "seed": 11});
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (sim, _stop) = start("10").await;
        let (status, answer) = post_changes(&sim, plan.clone()).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(answer["scheduled"], 6);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (_, state) = get(&sim, "/_sim/changes").await;
            if state["pending"] == 0 {
                assert_eq!(state["applied"], 6);
                assert_eq!(state["last_id"], 6);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still pending: {state}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let (_, feed) = get(&sim, "/recentchanges.json").await;
        let written: Vec<(String, Vec<KeyRevision>)> = entries(&feed)
            .into_iter()
            .map(|e| {
                let keys = e.changes.into_iter().map(|c| (c.key, c.revision)).collect();
                (e.kind, keys)
            })
            .collect();
        runs.push(written);
    }
    assert_eq!(
        runs[0], runs[1],
        "same catalogue, plan and seed: same changes"
    );
}
