//! Records that are gone, against the real Neo4j: a gone node message (a delete or a merge
//! that `bookworm follow`'s freshness job found) leaves a tombstone, strips what the record's
//! older revisions wrote, and from then on refuses every record and edge of the key at or
//! below its revision, whatever order and batching the rows arrive in; a record above it
//! brings the key back.

mod support;

use bookworm::graph::{EdgeRow, GraphStore, Row};
use bookworm::message::{Gone, Label, Rel};
use neo4rs::query;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};
use support::graph::{Keys, Snapshot, node, store};

use Label::{Author, Edition, Subject, Work};

/// An edge row carrying the revision of its start record (`None`: read off a list page).
fn edge_at(
    keys: &Keys,
    rel: Rel,
    from: (Label, &str),
    to: (Label, &str),
    revision: Option<i64>,
) -> Row {
    let message = bookworm::message::Edge {
        v: 1,
        crawl_id: "c1".to_owned(),
        from: keys.key(from.0, from.1),
        to: keys.key(to.0, to.1),
        rel: rel.as_str().to_owned(),
        discovered_at: chrono::Utc::now(),
        revision,
    };
    Row::Edge(EdgeRow::from_message(&message).expect("valid edge"))
}

/// A gone row for the key at `revision`: deleted, or redirected to `to`.
fn gone(keys: &Keys, label: Label, id: &str, revision: i64, to: Option<&str>) -> Row {
    let message = bookworm::message::Node {
        v: 1,
        crawl_id: "c1".to_owned(),
        key: keys.key(label, id),
        label,
        props: serde_json::from_value(
            json!({"revision": revision, "last_modified": "2026-01-01T00:00:00"}),
        )
        .expect("props"),
        fetched_at: chrono::Utc::now(),
        gone: Some(match to {
            None => Gone::Deleted,
            Some(id) => Gone::Redirected {
                to: keys.key(label, id),
            },
        }),
    };
    Row::of_node(&message).expect("valid gone")
}

/// A work record at `revision`.
fn work(keys: &Keys, id: &str, revision: i64) -> Row {
    node(
        keys,
        Work,
        id,
        "c1",
        json!({"title": format!("W{id} r{revision}"), "subtitle": "s", "revision": revision}),
    )
}

async fn write_each(store: &GraphStore, rows: &[Row]) {
    for row in rows {
        store.write(&[row]).await.expect("write");
    }
}

async fn write_batch(store: &GraphStore, rows: &[Row]) {
    store
        .write(&rows.iter().collect::<Vec<_>>())
        .await
        .expect("write batch");
}

/// A tombstone as a test compares it: its revision and its redirect target (without tag).
type Stone = (i64, Option<String>);

/// The tombstone of a key, checking it carries no `crawls` and has an `updated_at`.
async fn tombstone(store: &GraphStore, keys: &Keys, key: &str) -> Option<Stone> {
    let rows = store
        .fetch(
            query(
                "MATCH (t:Tombstone {key: $k}) \
                 RETURN t.revision AS revision, t.redirect AS redirect, \
                        t.crawls IS NULL AND t.updated_at IS NOT NULL AS plain",
            )
            .param("k", key),
        )
        .await
        .expect("read tombstone");
    let row = rows.first()?;
    assert!(
        row.get::<bool>("plain").expect("plain"),
        "a tombstone has no crawls"
    );
    Some((
        row.get("revision").expect("revision"),
        row.get::<Option<String>>("redirect")
            .expect("redirect")
            .map(|k| keys.strip(&k)),
    ))
}

/// Removes the test's nodes and tombstones.
async fn clean(store: &GraphStore, keys: &Keys) {
    keys.clean(store).await;
    store
        .run_in_transaction(vec![
            query("MATCH (t:Tombstone) WHERE t.key CONTAINS $tag DELETE t")
                .param("tag", keys.tag.as_str()),
        ])
        .await
        .expect("clean tombstones");
}

fn rel(rel: &str, from: &str, to: &str) -> (String, String, String) {
    (rel.to_owned(), from.to_owned(), to.to_owned())
}

fn has_node(snapshot: &Snapshot, label: Label, key: &str) -> bool {
    snapshot.nodes.contains_key(&(label, key.to_owned()))
}

/// A work (revision 3) naming an author with a record (A1), one without (A3, a stub) and a
/// subject, then its delete at revision 5: no node, no relationship from it, the stub A3 it
/// alone held gone too, A1 and S kept. Replaying its records (3, and 5: a tie, the delete
/// wins) and its edges (at 3, 5 and off a list page) afterwards changes nothing and creates
/// nothing, not even a stub.
#[tokio::test]
async fn a_deleted_record_leaves_no_node_and_replays_change_nothing() {
    let store = store().await;
    let keys = Keys::new();
    let record = |revision| {
        vec![
            work(&keys, "1", revision),
            edge_at(
                &keys,
                Rel::WRITTEN_BY,
                (Work, "1"),
                (Author, "1"),
                Some(revision),
            ),
            edge_at(
                &keys,
                Rel::WRITTEN_BY,
                (Work, "1"),
                (Author, "3"),
                Some(revision),
            ),
            edge_at(
                &keys,
                Rel::ABOUT,
                (Work, "1"),
                (Subject, "s"),
                Some(revision),
            ),
        ]
    };
    write_each(
        &store,
        &[
            node(
                &keys,
                Author,
                "1",
                "c1",
                json!({"name": "A", "revision": 1}),
            ),
            node(&keys, Subject, "s", "c1", json!({"name": "S"})),
        ],
    )
    .await;
    write_each(&store, &record(3)).await;
    let before = keys.snapshot(&store).await;
    write_each(&store, &[gone(&keys, Work, "1", 5, None)]).await;
    let after = keys.snapshot(&store).await;
    let mut replay = record(3);
    replay.extend(record(5));
    replay.push(edge_at(
        &keys,
        Rel::WRITTEN_BY,
        (Work, "1"),
        (Author, "9"),
        None,
    ));
    write_each(&store, &replay).await;
    let replayed = keys.snapshot(&store).await;
    let stone = tombstone(&store, &keys, &keys.key(Work, "1")).await;
    clean(&store, &keys).await;

    assert!(has_node(&before, Work, "/works/OL1W"), "{before:?}");
    assert!(has_node(&before, Author, "/authors/OL3A"));
    assert!(!has_node(&after, Work, "/works/OL1W"), "{after:?}");
    assert!(
        !has_node(&after, Author, "/authors/OL3A"),
        "the stub only the deleted record named goes with it"
    );
    assert!(after.rels.is_empty(), "{:?}", after.rels);
    assert_eq!(
        after.nodes.len(),
        1,
        "A1 stays; the subject only the deleted record named goes (no record names it): {after:?}"
    );
    assert_eq!(replayed, after, "a replay brought something back");
    assert_eq!(stone, Some((5, None)));
}

/// A deleted author that a live work still names stays as a stub at the delete's revision,
/// without its properties, and the work's relationship to it stays; its older record
/// replayed changes nothing.
#[tokio::test]
async fn a_deleted_record_still_named_stays_a_stub() {
    let store = store().await;
    let keys = Keys::new();
    let author = node(
        &keys,
        Author,
        "1",
        "c1",
        json!({"name": "A", "bio": "b", "revision": 2}),
    );
    write_each(
        &store,
        &[
            author.clone(),
            work(&keys, "1", 1),
            edge_at(&keys, Rel::WRITTEN_BY, (Work, "1"), (Author, "1"), Some(1)),
            gone(&keys, Author, "1", 4, None),
        ],
    )
    .await;
    let after = keys.snapshot(&store).await;
    write_each(&store, &[author]).await;
    let replayed = keys.snapshot(&store).await;
    clean(&store, &keys).await;

    let stub = &after.nodes[&(Author, "/authors/OL1A".to_owned())];
    assert_eq!(stub["stub"], json!(true));
    assert_eq!(stub["revision"], json!(4));
    assert_eq!(stub.get("name"), None);
    assert_eq!(stub.get("bio"), None);
    assert!(
        after
            .rels
            .contains_key(&rel("WRITTEN_BY", "/works/OL1W", "/authors/OL1A"))
    );
    assert_eq!(replayed, after);
}

/// A delete older than the node's revision changes nothing in the graph but the tombstone,
/// which keeps the highest revision seen (a still older delete does not lower it).
#[tokio::test]
async fn a_gone_older_than_the_node_changes_nothing_but_the_tombstone() {
    let store = store().await;
    let keys = Keys::new();
    write_each(
        &store,
        &[
            work(&keys, "1", 7),
            edge_at(&keys, Rel::WRITTEN_BY, (Work, "1"), (Author, "1"), Some(7)),
            edge_at(&keys, Rel::WRITTEN_BY, (Work, "1"), (Author, "2"), None),
        ],
    )
    .await;
    let before = keys.snapshot(&store).await;
    write_each(&store, &[gone(&keys, Work, "1", 5, None)]).await;
    let after = keys.snapshot(&store).await;
    let first = tombstone(&store, &keys, &keys.key(Work, "1")).await;
    write_each(&store, &[gone(&keys, Work, "1", 3, Some("2"))]).await;
    let second = tombstone(&store, &keys, &keys.key(Work, "1")).await;
    clean(&store, &keys).await;

    assert_eq!(after, before);
    assert_eq!(first, Some((5, None)));
    assert_eq!(second, Some((5, None)), "the tombstone keeps the highest");
}

/// A record above the tombstone brings the key back exactly as if it had never been deleted
/// (its properties, its edges), written one row at a time or in one batch in either order;
/// a record at the tombstone's revision in one batch with it loses in either order.
#[tokio::test]
async fn a_record_newer_than_the_tombstone_brings_the_key_back() {
    let store = store().await;
    let back = |keys: &Keys| {
        vec![
            work(keys, "1", 6),
            edge_at(keys, Rel::WRITTEN_BY, (Work, "1"), (Author, "1"), Some(6)),
            edge_at(keys, Rel::WRITTEN_BY, (Work, "1"), (Author, "2"), None),
        ]
    };
    let reference = Keys::new();
    write_each(&store, &back(&reference)).await;
    let expected = reference.snapshot(&store).await;
    clean(&store, &reference).await;

    let sequential = Keys::new();
    let mut rows = vec![
        work(&sequential, "1", 3),
        gone(&sequential, Work, "1", 5, None),
    ];
    rows.extend(back(&sequential));
    write_each(&store, &rows).await;
    let one_by_one = sequential.snapshot(&store).await;
    let stone = tombstone(&store, &sequential, &sequential.key(Work, "1")).await;
    clean(&store, &sequential).await;
    assert_eq!(one_by_one, expected);
    assert_eq!(stone, Some((5, None)), "the tombstone stays");

    for gone_first in [true, false] {
        let keys = Keys::new();
        let mut rows = back(&keys);
        let tomb = gone(&keys, Work, "1", 5, None);
        if gone_first {
            rows.insert(0, tomb);
        } else {
            rows.push(tomb);
        }
        write_batch(&store, &rows).await;
        let batched = keys.snapshot(&store).await;
        clean(&store, &keys).await;
        assert_eq!(batched, expected, "gone first: {gone_first}");

        let keys = Keys::new();
        let mut rows = vec![work(&keys, "1", 5)];
        let tomb = gone(&keys, Work, "1", 5, None);
        if gone_first {
            rows.insert(0, tomb);
        } else {
            rows.push(tomb);
        }
        write_batch(&store, &rows).await;
        let tie = keys.snapshot(&store).await;
        clean(&store, &keys).await;
        assert!(tie.nodes.is_empty(), "a tie goes to the gone: {tie:?}");
    }
}

/// The rows of a work's life ending in a delete: an edition that names it, its revision 3
/// naming A1 (with a record) and A3 (a stub), its delete at 5, and a record and an edge at 5
/// (a tie: the delete wins). Whatever the order, one row at a time or all in one batch, the
/// graph ends the same: the work a stub at revision 5 (the edition still names it) with no
/// outgoing relationship, no A3.
#[tokio::test]
async fn a_gone_and_older_rows_end_the_same_in_any_order_and_batching() {
    let store = store().await;
    let life = |keys: &Keys| {
        vec![
            node(
                keys,
                Edition,
                "1",
                "c1",
                json!({"title": "E", "revision": 1}),
            ),
            edge_at(keys, Rel::EDITION_OF, (Edition, "1"), (Work, "1"), Some(1)),
            work(keys, "1", 3),
            edge_at(keys, Rel::WRITTEN_BY, (Work, "1"), (Author, "1"), Some(3)),
            edge_at(keys, Rel::WRITTEN_BY, (Work, "1"), (Author, "3"), Some(3)),
            node(keys, Author, "1", "c1", json!({"name": "A", "revision": 1})),
            gone(keys, Work, "1", 5, None),
            work(keys, "1", 5),
            edge_at(keys, Rel::ABOUT, (Work, "1"), (Subject, "s"), Some(5)),
        ]
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let n = life(&Keys::new()).len();
    let mut orders: Vec<Vec<usize>> = vec![
        (0..n).collect(),
        (0..n).rev().collect(),
        vec![6, 0, 1, 2, 3, 4, 5, 7, 8], // the delete first
    ];
    for _ in 0..12 {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        orders.push(order);
    }
    let mut expected: Option<(Snapshot, Option<Stone>)> = None;
    for (i, order) in orders.iter().enumerate() {
        for batched in [false, true] {
            let keys = Keys::new();
            let all = life(&keys);
            let rows: Vec<Row> = order.iter().map(|&i| all[i].clone()).collect();
            if batched {
                write_batch(&store, &rows).await;
            } else {
                write_each(&store, &rows).await;
            }
            let actual = (
                keys.snapshot(&store).await,
                tombstone(&store, &keys, &keys.key(Work, "1")).await,
            );
            clean(&store, &keys).await;
            match &expected {
                None => {
                    let (graph, _) = &actual;
                    let stub = &graph.nodes[&(Work, "/works/OL1W".to_owned())];
                    assert_eq!(stub["stub"], json!(true), "{graph:?}");
                    assert_eq!(stub["revision"], json!(5));
                    assert_eq!(stub.get("title"), None);
                    assert!(!has_node(graph, Author, "/authors/OL3A"), "{graph:?}");
                    assert!(!has_node(graph, Subject, "/subjects/_s"), "{graph:?}");
                    let rels: Vec<_> = graph.rels.keys().cloned().collect();
                    assert_eq!(rels, [rel("EDITION_OF", "/books/OL1M", "/works/OL1W")]);
                    expected = Some(actual);
                }
                Some(expected) => {
                    assert_eq!(&actual, expected, "order {i} {order:?}, batched: {batched}")
                }
            }
        }
    }
}

/// A merge's tombstone names the record it was merged into; a later delete of the same key
/// replaces it (no target), and the target itself is left alone.
#[tokio::test]
async fn a_redirect_tombstone_records_its_target() {
    let store = store().await;
    let keys = Keys::new();
    write_each(
        &store,
        &[
            work(&keys, "1", 2),
            work(&keys, "2", 4),
            gone(&keys, Work, "1", 3, Some("2")),
        ],
    )
    .await;
    let merged = tombstone(&store, &keys, &keys.key(Work, "1")).await;
    let graph = keys.snapshot(&store).await;
    write_each(&store, &[gone(&keys, Work, "1", 6, None)]).await;
    let deleted = tombstone(&store, &keys, &keys.key(Work, "1")).await;
    clean(&store, &keys).await;

    assert_eq!(merged, Some((3, Some("/works/OL2W".to_owned()))));
    assert!(!has_node(&graph, Work, "/works/OL1W"));
    let target = &graph.nodes[&(Work, "/works/OL2W".to_owned())];
    assert_eq!(target["revision"], json!(4));
    assert_eq!(target["title"], Value::from("W2 r4"));
    assert_eq!(deleted, Some((6, None)));
}
