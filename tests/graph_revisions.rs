//! Revision-safe writes against the real Neo4j: a record's properties and its outgoing
//! relationships end as the newest revision's, whatever order node and edge rows arrive in
//! (the two are on separate topics), and replays of older revisions change nothing. Also the
//! bound on `crawls`.

mod support;

use bookworm::graph::Row;
use bookworm::graph::cypher::MAX_CRAWLS_KEPT;
use bookworm::graph::{EdgeRow, GraphStore};
use bookworm::message::{Label, Rel};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::json;
use support::graph::{Keys, node, store};

use Label::{Author, Subject, Work};

/// An edge row carrying the revision of its start record.
fn edge_at(keys: &Keys, rel: Rel, from: (Label, &str), to: (Label, &str), revision: i64) -> Row {
    let message = bookworm::message::Edge {
        v: 1,
        crawl_id: "c1".to_owned(),
        from: keys.key(from.0, from.1),
        to: keys.key(to.0, to.1),
        rel: rel.as_str().to_owned(),
        discovered_at: chrono::Utc::now(),
        revision: Some(revision),
    };
    Row::Edge(EdgeRow::from_message(&message).expect("valid edge"))
}

async fn write_each(store: &GraphStore, rows: &[Row]) {
    for row in rows {
        store.write(&[row]).await.expect("write");
    }
}

/// The rows of two revisions of one work: revision 1 names authors A1 and A3 (A3 has no
/// record: a stub) and has a subtitle; revision 2 names A1 and subject S and has no subtitle.
fn two_revisions(keys: &Keys) -> Vec<Row> {
    vec![
        node(
            keys,
            Work,
            "1",
            "c1",
            json!({"title": "Old", "subtitle": "gone in r2", "revision": 1}),
        ),
        edge_at(keys, Rel::WRITTEN_BY, (Work, "1"), (Author, "1"), 1),
        edge_at(keys, Rel::WRITTEN_BY, (Work, "1"), (Author, "3"), 1),
        node(
            keys,
            Work,
            "1",
            "c1",
            json!({"title": "New", "revision": 2}),
        ),
        edge_at(keys, Rel::WRITTEN_BY, (Work, "1"), (Author, "1"), 2),
        edge_at(keys, Rel::ABOUT, (Work, "1"), (Subject, "s"), 2),
    ]
}

/// The author and subject records, which never change.
fn others(keys: &Keys) -> Vec<Row> {
    vec![
        node(keys, Author, "1", "c1", json!({"name": "A", "revision": 1})),
        node(keys, Subject, "s", "c1", json!({"name": "S"})),
    ]
}

/// An older revision written after a newer one changes none of the node's properties, and a
/// newer one replaces them whole (a property it no longer has goes).
#[tokio::test]
async fn an_older_revision_after_a_newer_one_changes_nothing() {
    let store = store().await;
    let keys = Keys::new();
    let new = node(
        &keys,
        Work,
        "1",
        "c1",
        json!({"title": "New", "revision": 5}),
    );
    let old = node(
        &keys,
        Work,
        "1",
        "c1",
        json!({"title": "Old", "subtitle": "x", "revision": 3, "last_modified": "2019"}),
    );
    write_each(&store, std::slice::from_ref(&new)).await;
    let after_new = keys.snapshot(&store).await;
    write_each(&store, std::slice::from_ref(&old)).await;
    let after_old = keys.snapshot(&store).await;
    // The same two in one batch, old last: the batch keeps the newest too.
    let batch = Keys::new();
    let rows = [
        node(
            &batch,
            Work,
            "1",
            "c1",
            json!({"title": "New", "revision": 5}),
        ),
        node(
            &batch,
            Work,
            "1",
            "c1",
            json!({"title": "Old", "revision": 3}),
        ),
    ];
    store.write(&rows.iter().collect::<Vec<_>>()).await.unwrap();
    let batched = batch.snapshot(&store).await;
    // Old first, then new: the new one's properties, without the old one's subtitle.
    let forward = Keys::new();
    write_each(
        &store,
        &[
            node(
                &forward,
                Work,
                "1",
                "c1",
                json!({"title": "Old", "subtitle": "x", "revision": 3}),
            ),
            node(
                &forward,
                Work,
                "1",
                "c1",
                json!({"title": "New", "revision": 5}),
            ),
        ],
    )
    .await;
    let forwarded = forward.snapshot(&store).await;
    for k in [&keys, &batch, &forward] {
        k.clean(&store).await;
    }

    assert_eq!(after_old, after_new, "the older revision changed the node");
    let work = &after_new.nodes[&(Work, "/works/OL1W".to_owned())];
    assert_eq!(work["title"], json!("New"));
    assert_eq!(work["revision"], json!(5));
    assert_eq!(batched.nodes, after_new.nodes);
    let work = &forwarded.nodes[&(Work, "/works/OL1W".to_owned())];
    assert_eq!(work["title"], json!("New"));
    assert_eq!(work.get("subtitle"), None, "the newer record dropped it");
}

/// Node and edge rows of two revisions of a work, in many orders, each row in its own
/// transaction and then the old revision replayed: every order ends in the same graph, the
/// newest revision's — its properties, its relationships (WRITTEN_BY A1, ABOUT S), none of
/// the old one's (no WRITTEN_BY A3, and no stub A3 left behind).
#[tokio::test]
async fn edges_of_an_old_revision_never_come_back_in_any_order() {
    let store = store().await;
    let reference = Keys::new();
    let mut rows = others(&reference);
    rows.extend(two_revisions(&reference).into_iter().skip(3));
    write_each(&store, &rows).await;
    let expected = reference.snapshot(&store).await;
    reference.clean(&store).await;
    assert!(
        expected.rels.contains_key(&(
            "ABOUT".to_owned(),
            "/works/OL1W".to_owned(),
            "/subjects/_s".to_owned()
        )),
        "{:?}",
        expected.rels
    );
    assert_eq!(expected.rels.len(), 2);

    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let mut orders: Vec<Vec<usize>> = vec![
        (0..6).collect(),       // revision 1 complete, then revision 2: node first
        vec![0, 1, 2, 4, 5, 3], // revision 2's edges before its node
        vec![3, 4, 5, 0, 1, 2], // revision 2 first, revision 1 late
        vec![4, 5, 1, 2, 3, 0], // edges of both before either node
        vec![1, 2, 4, 5, 0, 3], // every edge on a stub
    ];
    for _ in 0..15 {
        let mut order: Vec<usize> = (0..6).collect();
        order.shuffle(&mut rng);
        orders.push(order);
    }
    for order in orders {
        let keys = Keys::new();
        let revisions = two_revisions(&keys);
        let mut rows = others(&keys);
        rows.extend(order.iter().map(|&i| revisions[i].clone()));
        // A replay of revision 1 after everything.
        rows.extend(revisions[..3].iter().cloned());
        write_each(&store, &rows).await;
        let actual = keys.snapshot(&store).await;
        keys.clean(&store).await;
        assert_eq!(actual, expected, "order {order:?}");
    }
}

/// `crawls` keeps the most recent MAX_CRAWLS_KEPT distinct ids; `crawl_count` counts them all.
#[tokio::test]
async fn a_hot_node_keeps_the_latest_crawls_and_counts_them_all() {
    let store = store().await;
    let keys = Keys::new();
    let total = MAX_CRAWLS_KEPT + 8;
    let rows: Vec<Row> = (0..total)
        .map(|i| {
            node(
                &keys,
                Subject,
                "hot",
                &format!("c{i:03}"),
                json!({"name": "Hot"}),
            )
        })
        .collect();
    write_each(&store, &rows).await;
    // Again: ids already kept are not added twice.
    write_each(&store, &rows[total - 4..]).await;
    let snapshot = keys.snapshot(&store).await;
    keys.clean(&store).await;
    let hot = &snapshot.nodes[&(Subject, "/subjects/_hot".to_owned())];
    let want: Vec<String> = (total - MAX_CRAWLS_KEPT..total)
        .map(|i| format!("c{i:03}"))
        .collect();
    assert_eq!(hot["crawls"], json!(want));
    assert_eq!(hot["crawl_count"], json!(total));
}
