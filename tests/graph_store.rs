//! The batch writer against the real Neo4j: merge semantics, idempotence, isolation of a row
//! Neo4j refuses, and migrations run by several processes at once.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bookworm::graph::migrate::{MigrateOptions, Migration, migrate};
use bookworm::graph::rows::{PropValue, Scalar};
use bookworm::graph::{Batcher, BatcherConfig, NodeRow, Row, RowFailure};
use bookworm::message::{Label, Rel};
use bookworm::process::health::Readiness;
use bookworm::process::metrics::GraphWriterMetrics;
use futures::future::join_all;
use neo4rs::query;
use serde_json::json;
use support::graph::{Keys, edge, node, store};

use Label::{Author, Edition, Subject, Work};

/// A small catalogue: a work with an author and a subject, an edition of it, and an edge to
/// an author whose record never arrives (a stub), touched by two crawls.
fn catalogue(keys: &Keys) -> Vec<Row> {
    vec![
        node(
            keys,
            Work,
            "1",
            "c1",
            json!({"title": "Dune", "covers": [1, 2]}),
        ),
        node(keys, Author, "1", "c1", json!({"name": "Frank Herbert"})),
        node(
            keys,
            Subject,
            "sf",
            "c2",
            json!({"name": "Science fiction"}),
        ),
        node(
            keys,
            Edition,
            "1",
            "c2",
            json!({"title": "Dune", "isbn_13": ["9780441013593"], "number_of_pages": 412}),
        ),
        edge(keys, Rel::WRITTEN_BY, (Work, "1"), (Author, "1"), "c1"),
        edge(keys, Rel::WRITTEN_BY, (Work, "1"), (Author, "1"), "c2"),
        edge(keys, Rel::ABOUT, (Work, "1"), (Subject, "sf"), "c1"),
        edge(keys, Rel::EDITION_OF, (Edition, "1"), (Work, "1"), "c2"),
        edge(keys, Rel::WRITTEN_BY, (Edition, "1"), (Author, "1"), "c2"),
        edge(keys, Rel::WRITTEN_BY, (Work, "1"), (Author, "2"), "c1"),
    ]
}

fn batcher(
    store: std::sync::Arc<bookworm::graph::GraphStore>,
    config: BatcherConfig,
) -> (Batcher, GraphWriterMetrics, Readiness) {
    let metrics = GraphWriterMetrics::register(&prometheus::Registry::new()).unwrap();
    let readiness = Readiness::with_conditions(&["neo4j"]);
    let (batcher, _task) = Batcher::spawn(store, config, metrics.clone(), readiness.clone());
    (batcher, metrics, readiness)
}

/// The same messages in a different order: edges before their nodes, every row in its own
/// transaction, each row twice, plus records with empty values. The final graph is the one
/// the messages give when written nodes-first in a single batch.
#[tokio::test]
async fn any_order_of_nodes_and_edges_gives_the_same_graph() {
    let store = store().await;
    let (canonical, shuffled) = (Keys::new(), Keys::new());

    let rows = catalogue(&canonical);
    store.write(&rows.iter().collect::<Vec<_>>()).await.unwrap();

    let mut rows = catalogue(&shuffled);
    rows.reverse();
    rows.extend(catalogue(&shuffled));
    rows.push(node(
        &shuffled,
        Work,
        "1",
        "c1",
        json!({"title": "", "covers": null}),
    ));
    rows.insert(0, node(&shuffled, Author, "1", "c1", json!({"name": null})));
    for row in &rows {
        store.write(&[row]).await.unwrap();
    }

    let expected = canonical.snapshot(&store).await;
    let actual = shuffled.snapshot(&store).await;
    canonical.clean(&store).await;
    shuffled.clean(&store).await;
    assert_eq!(actual, expected);

    let work = &expected.nodes[&(Work, "/works/OL1W".to_owned())];
    assert_eq!(work["stub"], json!(false));
    assert_eq!(work["title"], json!("Dune"));
    assert_eq!(work["covers"], json!([1, 2]));
    assert_eq!(
        work["crawls"],
        json!(["c1", "c2"]),
        "crawls of its edges count too"
    );
    let stub = &expected.nodes[&(Author, "/authors/OL2A".to_owned())];
    assert_eq!(
        stub,
        &BTreeMap::from([
            ("key".to_owned(), json!("/authors/OL2A")),
            ("stub".to_owned(), json!(true)),
            ("crawls".to_owned(), json!(["c1"])),
            ("crawl_count".to_owned(), json!(1)),
        ]),
        "a node only an edge named is a stub carrying nothing but its key"
    );
    let written_by = &expected.rels[&(
        "WRITTEN_BY".to_owned(),
        "/works/OL1W".to_owned(),
        "/authors/OL1A".to_owned(),
    )];
    assert_eq!(written_by, &(1, vec!["c1".to_owned(), "c2".to_owned()]));
    assert_eq!(expected.rels.len(), 5);
}

/// A stub created by an edge becomes a full node when its record arrives, and a later record
/// with some values empty keeps the known ones.
#[tokio::test]
async fn a_record_fills_its_stub_and_empty_values_never_erase_known_ones() {
    let store = store().await;
    let keys = Keys::new();
    let steps = [
        edge(&keys, Rel::EDITION_OF, (Edition, "1"), (Work, "1"), "c1"),
        node(
            &keys,
            Work,
            "1",
            "c2",
            json!({"title": "Emma", "subtitle": "A novel"}),
        ),
        node(
            &keys,
            Work,
            "1",
            "c2",
            json!({"title": "Emma (revised)", "subtitle": "", "covers": []}),
        ),
    ];
    let mut seen = Vec::new();
    for row in &steps {
        store.write(&[row]).await.unwrap();
        seen.push(keys.snapshot(&store).await.nodes[&(Work, "/works/OL1W".to_owned())].clone());
    }
    keys.clean(&store).await;

    assert_eq!(seen[0]["stub"], json!(true));
    assert_eq!(seen[0].get("title"), None);
    assert_eq!(seen[1]["stub"], json!(false));
    assert_eq!(seen[1]["subtitle"], json!("A novel"));
    assert_eq!(
        seen[2]["title"],
        json!("Emma (revised)"),
        "a newer value replaces an old one"
    );
    assert_eq!(
        seen[2]["subtitle"],
        json!("A novel"),
        "an empty value does not erase"
    );
    assert_eq!(seen[2]["crawls"], json!(["c1", "c2"]));
}

/// Replaying a topic: the same rows written again, in batches, leave one node per key and one
/// relationship per pair, with the same properties.
#[tokio::test]
async fn writing_the_same_rows_twice_creates_no_duplicates() {
    let store = store().await;
    let keys = Keys::new();
    let rows = catalogue(&keys);
    let refs: Vec<&Row> = rows.iter().collect();
    store.write(&refs).await.unwrap();
    let first = keys.snapshot(&store).await;
    for chunk in refs.chunks(3) {
        store.write(chunk).await.unwrap();
    }
    store.write(&refs).await.unwrap();
    let again = keys.snapshot(&store).await;
    keys.clean(&store).await;

    assert_eq!(again, first);
    assert!(again.rels.values().all(|(count, _)| *count == 1));
    assert_eq!(first.nodes.len(), 5);
}

/// One row Neo4j refuses (a list mixing types, which only the database checks when the row
/// bypasses validation) among forty good ones sent concurrently: that row alone is rejected,
/// every other row is written and reported written.
#[tokio::test]
async fn a_row_neo4j_refuses_is_rejected_while_its_batch_mates_are_written() {
    let store = store().await;
    let keys = Keys::new();
    let (batcher, metrics, _) = batcher(
        store.clone(),
        BatcherConfig::new(64, Duration::from_millis(500)),
    );
    let mut rows: Vec<Row> = (0..40)
        .map(|i| {
            node(
                &keys,
                Work,
                &i.to_string(),
                "c1",
                json!({"title": format!("W{i}")}),
            )
        })
        .collect();
    let bad = Row::Node(NodeRow {
        label: Work,
        key: keys.key(Work, "bad"),
        props: BTreeMap::from([(
            "covers".to_owned(),
            PropValue::List(vec![Scalar::Int(1), Scalar::Str("x".into())]),
        )]),
        crawl_id: "c1".to_owned(),
        revision: None,
    });
    rows.insert(17, bad);

    let outcomes = join_all(rows.into_iter().map(|row| batcher.write(row))).await;
    let snapshot = keys.snapshot(&store).await;
    keys.clean(&store).await;

    for (i, outcome) in outcomes.iter().enumerate() {
        if i == 17 {
            assert!(
                matches!(outcome, Err(RowFailure::Rejected(e)) if e.contains("TypeError")),
                "{outcome:?}"
            );
        } else {
            assert_eq!(outcome, &Ok(()), "row {i}");
        }
    }
    assert_eq!(snapshot.nodes.len(), 40);
    assert!(
        !snapshot
            .nodes
            .contains_key(&(Work, "/works/OLbadW".to_owned()))
    );
    assert_eq!(metrics.results_written.get(), 40);
}

/// Rows handed in concurrently are grouped into a few transactions, each row answered once
/// its transaction committed; Neo4j is then reported up.
#[tokio::test]
async fn concurrent_rows_are_grouped_into_batches_and_neo4j_is_reported_up() {
    let store = store().await;
    let keys = Keys::new();
    let (batcher, metrics, readiness) = batcher(
        store.clone(),
        BatcherConfig::new(100, Duration::from_secs(2)),
    );
    let rows: Vec<Row> = (0..300)
        .map(|i| {
            edge(
                &keys,
                Rel::ABOUT,
                (Work, &i.to_string()),
                (Subject, "x"),
                "c1",
            )
        })
        .collect();
    let outcomes = join_all(rows.into_iter().map(|row| batcher.write(row))).await;
    let snapshot = keys.snapshot(&store).await;
    keys.clean(&store).await;

    assert!(outcomes.iter().all(Result::is_ok));
    assert_eq!(snapshot.rels.len(), 300);
    assert_eq!(
        snapshot.nodes.len(),
        301,
        "300 work stubs and one subject stub"
    );
    assert_eq!(metrics.edges_written.get(), 300);
    assert_eq!(metrics.batch_rows.get_sample_sum(), 300.0);
    assert!(
        metrics.batch_rows.get_sample_count() <= 6,
        "{} transactions for 300 rows",
        metrics.batch_rows.get_sample_count()
    );
    assert_eq!(metrics.neo4j_up.get(), 1);
    assert!(readiness.failing().is_empty());
}

/// Four transactions at once (`GRAPH_TRANSACTIONS`), every one of them linking the same few
/// subjects and authors while records of the works arrive beside the edges: the batches lock
/// the shared nodes against each other, a deadlock is retried, and every row is written and
/// answered once, with the graph the rows give.
#[tokio::test]
async fn concurrent_transactions_over_shared_nodes_write_every_row() {
    let store = store().await;
    let keys = Keys::new();
    let config = BatcherConfig {
        transactions: 4,
        ..BatcherConfig::new(40, Duration::from_millis(20))
    };
    let (batcher, metrics, _) = batcher(store.clone(), config);
    let mut rows = Vec::new();
    for i in 0..100 {
        let work = i.to_string();
        rows.push(node(
            &keys,
            Work,
            &work,
            "c1",
            json!({"title": format!("W{i}")}),
        ));
        for subject in ["a", "b", "c"] {
            rows.push(edge(
                &keys,
                Rel::ABOUT,
                (Work, &work),
                (Subject, subject),
                "c1",
            ));
        }
        let author = (i % 2).to_string();
        rows.push(edge(
            &keys,
            Rel::WRITTEN_BY,
            (Work, &work),
            (Author, &author),
            "c1",
        ));
    }
    let outcomes = join_all(rows.into_iter().map(|row| batcher.write(row))).await;
    let snapshot = keys.snapshot(&store).await;
    keys.clean(&store).await;

    let failed: Vec<_> = outcomes.iter().filter(|o| o.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} rows failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(snapshot.rels.len(), 400);
    assert_eq!(
        snapshot.nodes.len(),
        105,
        "100 works, 3 subjects, 2 authors"
    );
    let titled = snapshot
        .nodes
        .iter()
        .filter(|((label, _), props)| *label == Work && props["stub"] == json!(false))
        .count();
    assert_eq!(titled, 100, "every work's record won over its edges' stubs");
    assert_eq!(metrics.edges_written.get(), 400);
    assert_eq!(metrics.results_written.get(), 100);
    assert!(
        metrics.batch_rows.get_sample_count() >= 13,
        "batches of at most 40 rows"
    );
}

/// A batch whose transaction Neo4j ends under it (as it ends a deadlock's victim) is tried
/// again at once and counted in `transaction_retries{reason="transient"}`, the figure that
/// shows lock contention eating a writer's throughput; its row is written, not failed.
#[tokio::test]
async fn a_transaction_ended_by_neo4j_is_retried_and_counted() {
    let store = store().await;
    let graph = support::neo4j().await;
    let keys = Keys::new();
    let key = keys.key(Work, "held");
    let (batcher, metrics, _) = batcher(
        store.clone(),
        BatcherConfig::new(1, Duration::from_millis(1)),
    );

    // Another client holds the node's lock, so the batch's transaction waits on it.
    let mut holder = graph.start_txn().await.unwrap();
    holder
        .run(query("MERGE (n:Work {key: $key}) SET n.stub = true").param("key", key.clone()))
        .await
        .unwrap();
    let write = tokio::spawn(async move {
        batcher
            .write(node(&keys, Work, "held", "c1", json!({"title": "Held"})))
            .await
    });
    // Blocked by the holder, on a statement of the batcher (whose parameters name the key).
    let blocked = support::eventually("the batch blocked on the held node", Duration::from_secs(30), || {
        let (graph, key) = (graph.clone(), key.clone());
        async move {
            let mut rows = graph
                .execute(
                    query(
                        "SHOW TRANSACTIONS YIELD transactionId, status, currentQuery, parameters \
                         WHERE status STARTS WITH 'Blocked' AND currentQuery STARTS WITH 'UNWIND $rows' \
                           AND any(row IN parameters.rows WHERE row.key = $key) \
                         RETURN transactionId",
                    )
                    .param("key", key),
                )
                .await
                .ok()?;
            let row = rows.next().await.ok()??;
            row.get::<String>("transactionId").ok()
        }
    })
    .await;
    let mut terminated = graph
        .execute(query("TERMINATE TRANSACTION $id YIELD message").param("id", blocked.clone()))
        .await
        .unwrap();
    let message: String = terminated
        .next()
        .await
        .unwrap()
        .unwrap()
        .get("message")
        .unwrap();
    assert_eq!(message, "Transaction terminated.", "terminating {blocked}");
    holder.rollback().await.unwrap();

    assert_eq!(write.await.unwrap(), Ok(()));
    let retries = |reason: &str| {
        metrics
            .transaction_retries
            .with_label_values(&[reason])
            .get()
    };
    assert_eq!(
        (retries("transient"), retries("unavailable")),
        (1, 0),
        "retries (transient, unavailable)"
    );
    let mut rows = graph
        .execute(
            query("MATCH (n:Work {key: $key}) RETURN n.title AS title").param("key", key.clone()),
        )
        .await
        .unwrap();
    let title: String = rows.next().await.unwrap().unwrap().get("title").unwrap();
    assert_eq!(title, "Held");
    graph
        .run(query("MATCH (n:Work {key: $key}) DETACH DELETE n").param("key", key))
        .await
        .unwrap();
}

/// Three processes migrating at once: each migration is applied by exactly one of them and
/// recorded once; the others find it done. The real migration leaves a uniqueness constraint
/// on every label's key.
#[tokio::test]
async fn concurrent_migrations_apply_each_version_once() {
    let store = store().await;
    let keys = Keys::new();
    let version = 100_000 + (std::process::id() % 50_000) * 10 + (keys.tag.len() as u32 % 10);
    let index = format!("test_{}", keys.tag);
    let cypher: &'static str = Box::leak(
        format!(
            "// test\nCREATE INDEX {index} IF NOT EXISTS FOR (n:Work) ON (n.test_{});",
            keys.tag
        )
        .into_boxed_str(),
    );
    let migrations = [Migration {
        version,
        name: "test_index",
        cypher,
    }];
    let runs = (0..3).map(|i| {
        let store = store.clone();
        let options = MigrateOptions {
            owner: format!("{}-{i}", keys.tag),
            poll: Duration::from_millis(50),
            ..MigrateOptions::default()
        };
        async move { migrate(&store, &migrations, &options).await }
    });
    let reports: Vec<_> = join_all(runs)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let recorded = store
        .fetch(
            query("MATCH (m:Migration {version: $v}) RETURN m.name AS name")
                .param("v", i64::from(version)),
        )
        .await
        .unwrap();
    let indexes = store
        .fetch(
            query("SHOW INDEXES YIELD name WHERE name = $n RETURN name").param("n", index.as_str()),
        )
        .await
        .unwrap();
    let constraints = store
        .fetch(query(
            "SHOW CONSTRAINTS YIELD labelsOrTypes, properties, type \
             WHERE type = 'UNIQUENESS' AND properties = ['key'] RETURN labelsOrTypes[0] AS label",
        ))
        .await
        .unwrap();
    store
        .run_in_transaction(vec![query(&format!("DROP INDEX {index} IF EXISTS"))])
        .await
        .unwrap();
    store
        .run_in_transaction(vec![
            query("MATCH (m:Migration {version: $v}) DELETE m").param("v", i64::from(version)),
        ])
        .await
        .unwrap();

    let applied: Vec<_> = reports
        .iter()
        .filter(|r| r.applied == vec![version])
        .collect();
    assert_eq!(applied.len(), 1, "{reports:?}");
    assert_eq!(
        reports
            .iter()
            .filter(|r| r.already == vec![version])
            .count(),
        2
    );
    assert_eq!(recorded.len(), 1);
    assert_eq!(indexes.len(), 1);
    let mut labels: Vec<String> = constraints
        .iter()
        .map(|r| r.get("label").unwrap())
        .collect();
    labels.sort();
    // Every label's key, and the tombstones' (migration 0002).
    assert_eq!(
        labels,
        vec!["Author", "Edition", "Subject", "Tombstone", "Work"]
    );
}
