//! The graph an import of dump lines must give, and what the graph holds of some crawls, in
//! one comparable shape: the import and follow tests check one against the other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use bookworm::crawl::parse::{RecordAnswer, parse_record};
use serde_json::{Value, json};

use super::{eventually, neo4j};

/// Runs `bookworm sim dump` of the catalogue `flags` describe into a fresh directory: the
/// directory, its all-types file, and the command's JSON summary.
pub fn sim_dump(flags: &[String]) -> (tempfile::TempDir, std::path::PathBuf, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bookworm"))
        .args(["sim", "dump", "--out"])
        .arg(dir.path())
        .args(flags)
        .output()
        .expect("sim dump runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary");
    let all = dir.path().join("ol_dump_2021-03-31.txt.gz");
    (dir, all, summary)
}

/// A dump file's text, gunzipped.
pub fn gunzip(path: &Path) -> String {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path).expect("dump"))
        .read_to_string(&mut text)
        .expect("gunzip");
    text
}

/// A graph writer's `_written_total` counters (results, edges), read from its `/metrics`
/// at `metrics_url`.
pub async fn written(metrics_url: &str) -> Option<(u64, u64)> {
    let text = reqwest::get(metrics_url).await.ok()?.text().await.ok()?;
    let read = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
    };
    Some((
        read("relentless_graph_writer_results_written_total")?,
        read("relentless_graph_writer_edges_written_total")?,
    ))
}

/// Waits until the writer at `metrics_url` has written `results` node rows and `edges` edge
/// rows in all.
pub async fn wait_written(metrics_url: &str, results: u64, edges: u64) {
    eventually(
        "the graph writer to write the import",
        Duration::from_secs(120),
        || async move {
            let (r, e) = written(metrics_url).await?;
            (r >= results && e >= edges).then_some(())
        },
    )
    .await;
}

/// What the graph holds of one crawl id: nodes (key → (label, properties without the writer's
/// own), stubs, and relationships `from|REL|to` → how many.
#[derive(Debug, PartialEq)]
pub struct Graph {
    pub nodes: BTreeMap<String, (String, BTreeMap<String, Value>)>,
    pub stubs: BTreeSet<String>,
    pub rels: BTreeMap<String, i64>,
}

impl Graph {
    /// What tells this graph from `truth`, for a failure message: keys on one side only,
    /// nodes that differ, and the stubs of both.
    pub fn difference(&self, truth: &Graph) -> String {
        fn only_in<'a, V>(a: &'a BTreeMap<String, V>, b: &BTreeMap<String, V>) -> Vec<&'a String> {
            a.keys().filter(|k| !b.contains_key(*k)).collect()
        }
        let differ: Vec<_> = truth
            .nodes
            .iter()
            .filter(|(k, v)| self.nodes.get(*k).is_some_and(|g| g != *v))
            .map(|(k, _)| k)
            .collect();
        format!(
            "nodes only in the graph {:?}\nnodes only in the truth {:?}\nnodes that differ \
             {differ:?}\nrelationships only in the graph {:?}\nrelationships only in the truth \
             {:?}\nstubs graph {:?} truth {:?}",
            only_in(&self.nodes, &truth.nodes),
            only_in(&truth.nodes, &self.nodes),
            only_in(&self.rels, &truth.rels),
            only_in(&truth.rels, &self.rels),
            self.stubs,
            truth.stubs
        )
    }
}

pub async fn graph_of(crawl_id: &str) -> Graph {
    graph_of_crawls(crawl_id, None).await
}

/// What the graph holds of crawl `crawl_id` and of every crawl whose id starts with `prefix`
/// (the freshness crawls of a follower: `follow:<name>:`).
pub async fn graph_of_crawls(crawl_id: &str, prefix: Option<&str>) -> Graph {
    let graph = neo4j().await;
    let prefix = prefix.unwrap_or_default();
    let mut rows = graph
        .execute(
            neo4rs::query(
                "MATCH (n) WHERE any(c IN n.crawls WHERE c = $crawl OR ($prefix <> '' AND c STARTS WITH $prefix)) \
                 RETURN n.key AS key, labels(n)[0] AS label, coalesce(n.stub, false) AS stub, \
                        n {.*, updated_at: null, crawls: null, crawl_count: null, stub: null, key: null} AS props",
            )
            .param("crawl", crawl_id)
            .param("prefix", prefix),
        )
        .await
        .expect("nodes");
    let (mut nodes, mut stubs) = (BTreeMap::new(), BTreeSet::new());
    while let Some(row) = rows.next().await.expect("row") {
        let key: String = row.get("key").expect("key");
        if row.get::<bool>("stub").expect("stub") {
            stubs.insert(key);
            continue;
        }
        let props: BTreeMap<String, Value> = row.get("props").expect("props");
        let props = props.into_iter().filter(|(_, v)| !v.is_null()).collect();
        nodes.insert(key, (row.get("label").expect("label"), props));
    }
    let mut rows = graph
        .execute(
            neo4rs::query(
                "MATCH (a)-[r]->(b) WHERE any(c IN r.crawls WHERE c = $crawl OR ($prefix <> '' AND c STARTS WITH $prefix)) \
                 RETURN a.key AS from, type(r) AS rel, b.key AS to, r.revision AS revision",
            )
            .param("crawl", crawl_id)
            .param("prefix", prefix),
        )
        .await
        .expect("relationships");
    let mut rels = BTreeMap::new();
    while let Some(row) = rows.next().await.expect("row") {
        let ends = (row.get::<String>("from"), row.get::<String>("to"));
        let (Ok(from), Ok(to)) = ends else {
            panic!("a relationship without its ends' keys: {row:?}");
        };
        let rel: String = row.get("rel").expect("type");
        *rels.entry(format!("{from}|{rel}|{to}")).or_insert(0) += 1;
    }
    Graph { nodes, stubs, rels }
}

/// The graph an import of `lines` must give: every record's node with the parser's
/// properties, subjects named as the records spell them, the records' relationships, and stubs
/// for what they name that has no record. Computed from the dump lines themselves through the
/// worker's parser, as the simulator computes a crawl's truth.
pub fn truth_of<'a>(lines: impl Iterator<Item = &'a str>) -> Graph {
    let mut nodes = BTreeMap::new();
    let mut rels = BTreeMap::new();
    let mut subjects: BTreeMap<String, String> = BTreeMap::new();
    for line in lines {
        let json = line.splitn(5, '\t').nth(4).expect("five columns");
        let Ok(RecordAnswer::Entity(entity)) = parse_record(json.as_bytes()) else {
            continue;
        };
        for (rel, to) in entity.outgoing(10) {
            rels.insert(format!("{}|{}|{}", entity.key, rel.as_str(), to), 1);
            if to.starts_with("/subjects/") {
                let name = entity
                    .links
                    .subjects
                    .iter()
                    .find(|s| bookworm::crawl::parse::subject_key(s).as_deref() == Some(&to))
                    .expect("a subject's spelling");
                subjects.entry(to).or_insert_with(|| name.trim().to_owned());
            }
        }
        // As the writer stores them: empty values (`""`, `[]`) are not stored.
        let props = entity
            .node_props()
            .into_iter()
            .filter(|(_, v)| v.as_str() != Some("") && v.as_array().is_none_or(|a| !a.is_empty()))
            .collect();
        nodes.insert(
            entity.key.clone(),
            (entity.label.as_str().to_owned(), props),
        );
    }
    for (key, name) in subjects {
        nodes.insert(
            key,
            (
                "Subject".to_owned(),
                BTreeMap::from([("name".to_owned(), json!(name))]),
            ),
        );
    }
    let stubs = rels
        .keys()
        .flat_map(|r| {
            let mut parts = r.split('|');
            [parts.next(), parts.nth(1)]
        })
        .flatten()
        .filter(|k| !nodes.contains_key(*k))
        .map(str::to_owned)
        .collect();
    Graph { nodes, stubs, rels }
}
