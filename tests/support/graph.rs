//! Helpers for the graph tests: a store on the stack's Neo4j, keys unique to one test, a
//! normalised snapshot of the part of the graph a test wrote, and clean-up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bookworm::config::Neo4jArgs;
use bookworm::graph::migrate::{MIGRATIONS, MigrateOptions, migrate};
use bookworm::graph::{EdgeRow, GraphStore, NodeRow, Row};
use bookworm::message::{Label, Rel};
use neo4rs::query;
use serde_json::Value;

use super::{stack_env, unique};

/// Neo4j settings of the local stack.
pub fn neo4j_args() -> Neo4jArgs {
    Neo4jArgs {
        neo4j_uri: stack_env("NEO4J_URI"),
        neo4j_user: stack_env("NEO4J_USER"),
        neo4j_password: stack_env("NEO4J_PASSWORD"),
        neo4j_max_connections: 4,
        neo4j_query_timeout: Duration::from_secs(30),
        neo4j_ca_file: None,
    }
}

/// A store on the stack's Neo4j with the schema migrated.
pub async fn store() -> Arc<GraphStore> {
    let store = GraphStore::connect(&neo4j_args()).await.expect("store");
    migrate(&store, MIGRATIONS, &MigrateOptions::default())
        .await
        .expect("migrations");
    Arc::new(store)
}

/// Keys no other test uses: every key of one `Keys` carries the same unique tag, so the
/// snapshot and the clean-up find exactly this test's nodes through the key index.
pub struct Keys {
    pub tag: String,
}

impl Keys {
    pub fn new() -> Self {
        Self {
            tag: unique("t").replace('-', "x"),
        }
    }
    pub fn key(&self, label: Label, id: &str) -> String {
        match label {
            Label::Work => format!("/works/OL{}{id}W", self.tag),
            Label::Author => format!("/authors/OL{}{id}A", self.tag),
            Label::Edition => format!("/books/OL{}{id}M", self.tag),
            Label::Subject => format!("/subjects/{}_{id}", self.tag),
        }
    }
    fn prefix(&self, label: Label) -> String {
        match label {
            Label::Work => format!("/works/OL{}", self.tag),
            Label::Author => format!("/authors/OL{}", self.tag),
            Label::Edition => format!("/books/OL{}", self.tag),
            Label::Subject => format!("/subjects/{}_", self.tag),
        }
    }
    /// The key with this test's tag taken out, so two `Keys` can be compared.
    pub fn strip(&self, key: &str) -> String {
        key.replace(&self.tag, "")
    }

    /// Deletes every node (and its relationships) this test created.
    pub async fn clean(&self, store: &GraphStore) {
        for label in Label::ALL {
            store
                .run_in_transaction(vec![
                    query(&format!(
                        "MATCH (n:{}) WHERE n.key STARTS WITH $p DETACH DELETE n",
                        label.as_str()
                    ))
                    .param("p", self.prefix(label)),
                ])
                .await
                .expect("clean-up");
        }
    }

    /// Nodes (label, key without tag) → properties without `updated_at`, `crawls` sorted; and
    /// relationships (type, from, to) → (count, sorted crawls). Also asserts every node and
    /// relationship has an `updated_at`.
    pub async fn snapshot(&self, store: &GraphStore) -> Snapshot {
        let mut nodes = BTreeMap::new();
        let mut rels = BTreeMap::new();
        for label in Label::ALL {
            let rows = store
                .fetch(
                    query(&format!(
                        "MATCH (n:{l}) WHERE n.key STARTS WITH $p \
                         RETURN n.key AS key, n {{.*, updated_at: null}} AS props, \
                                n.updated_at IS NOT NULL AS stamped",
                        l = label.as_str()
                    ))
                    .param("p", self.prefix(label)),
                )
                .await
                .expect("read nodes");
            for row in rows {
                let key: String = row.get("key").expect("key");
                assert!(
                    row.get::<bool>("stamped").expect("stamped"),
                    "{key} has no updated_at"
                );
                let mut props: BTreeMap<String, Value> = row.get("props").expect("props");
                props.remove("updated_at");
                props.insert("key".into(), Value::String(self.strip(&key)));
                sort_crawls(&mut props);
                let previous = nodes.insert((label, self.strip(&key)), props);
                assert!(previous.is_none(), "two {label:?} nodes with key {key}");
            }
            let rows = store
                .fetch(
                    query(&format!(
                        "MATCH (a:{l})-[r]->(b) WHERE a.key STARTS WITH $p \
                         RETURN type(r) AS rel, a.key AS from, b.key AS to, r.crawls AS crawls, \
                                r.updated_at IS NOT NULL AS stamped",
                        l = label.as_str()
                    ))
                    .param("p", self.prefix(label)),
                )
                .await
                .expect("read relationships");
            for row in rows {
                assert!(
                    row.get::<bool>("stamped").expect("stamped"),
                    "relationship without updated_at"
                );
                let mut crawls: Vec<String> = row.get("crawls").expect("crawls");
                crawls.sort();
                let id = (
                    row.get::<String>("rel").expect("rel"),
                    self.strip(&row.get::<String>("from").expect("from")),
                    self.strip(&row.get::<String>("to").expect("to")),
                );
                let entry = rels.entry(id).or_insert((0, Vec::new()));
                entry.0 += 1;
                entry.1 = crawls;
            }
        }
        Snapshot { nodes, rels }
    }
}

fn sort_crawls(props: &mut BTreeMap<String, Value>) {
    if let Some(Value::Array(crawls)) = props.get_mut("crawls") {
        crawls.sort_by_key(|v| v.to_string());
    }
}

/// What a test wrote, normalised for comparison.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub nodes: BTreeMap<(Label, String), BTreeMap<String, Value>>,
    pub rels: BTreeMap<(String, String, String), (usize, Vec<String>)>,
}

/// A node row with the given JSON properties.
pub fn node(keys: &Keys, label: Label, id: &str, crawl: &str, props: Value) -> Row {
    let message = bookworm::message::Node {
        v: 1,
        crawl_id: crawl.to_owned(),
        key: keys.key(label, id),
        label,
        props: serde_json::from_value(props).expect("props map"),
        fetched_at: chrono::Utc::now(),
        gone: None,
    };
    Row::Node(NodeRow::from_message(&message).expect("valid node"))
}

/// An edge row.
pub fn edge(keys: &Keys, rel: Rel, from: (Label, &str), to: (Label, &str), crawl: &str) -> Row {
    let message = bookworm::message::Edge {
        v: 1,
        crawl_id: crawl.to_owned(),
        from: keys.key(from.0, from.1),
        to: keys.key(to.0, to.1),
        rel: rel.as_str().to_owned(),
        discovered_at: chrono::Utc::now(),
        revision: None,
    };
    Row::Edge(EdgeRow::from_message(&message).expect("valid edge"))
}
