//! `bookworm graph`: the neighbourhood of one node in Neo4j, as Graphviz DOT or JSON.
//!
//! The neighbourhood is read breadth-first, one query per hop and label, each starting from
//! the key index (`MATCH (a:Label) WHERE a.key IN $keys`), rather than as one
//! variable-length path pattern: paths multiply with every hop (a subject with fifty works
//! whose authors have fifty works is 2,500 paths for a few hundred relationships), while hops
//! read each relationship about once. The result is bounded at [`MAX_RELATIONSHIPS`]; a
//! neighbourhood cut there says so (`truncated`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use neo4rs::query;
use serde::Serialize;
use serde_json::Value;

use crate::graph::{GraphStore, WriteError};
use crate::message::Label;

/// The most relationships one neighbourhood shows: more is unreadable as a picture, and
/// bounds what a hub (a popular subject) can make Neo4j and the terminal do.
pub const MAX_RELATIONSHIPS: usize = 500;
/// The deepest neighbourhood asked for: at Open Library's fan-out even 3 hops hit the bound.
pub const MAX_DEPTH: u32 = 5;
/// Characters of a title or name shown in a DOT label.
const LABEL_TEXT_CHARS: usize = 60;

/// Errors of `bookworm graph`.
#[derive(Debug, thiserror::Error)]
pub enum NeighbourhoodError {
    /// The key names no kind of node the graph has.
    #[error("{0} is not a work, author, edition or subject key")]
    NotAKey(String),
    /// The graph has no node with this key.
    #[error("no node with key {0} in the graph")]
    NotFound(String),
    /// The depth is out of range.
    #[error("depth must be from 0 to {MAX_DEPTH}")]
    Depth,
    /// Neo4j failed: retry.
    #[error(transparent)]
    Neo4j(#[from] WriteError),
    /// Neo4j answered rows of an unexpected shape.
    #[error("unexpected answer from Neo4j: {0}")]
    Shape(String),
}

/// A node of the neighbourhood.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphNode {
    /// Its Open Library key.
    pub key: String,
    /// Its label.
    pub label: String,
    /// Whether only an edge created it (its own record never arrived).
    pub stub: bool,
    /// Its other properties (`crawls`, `updated_at`, title, name…).
    pub props: BTreeMap<String, Value>,
}

/// A relationship of the neighbourhood.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GraphRel {
    /// Start node's key.
    pub from: String,
    /// Relationship type.
    #[serde(rename = "type")]
    pub rel: String,
    /// End node's key.
    pub to: String,
}

/// The nodes and relationships within some hops of a start node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Neighbourhood {
    /// The start node's key.
    pub start: String,
    /// Nodes, in key order.
    pub nodes: Vec<GraphNode>,
    /// Relationships, in (from, type, to) order.
    pub relationships: Vec<GraphRel>,
    /// Whether [`MAX_RELATIONSHIPS`] cut the neighbourhood short.
    pub truncated: bool,
}

/// Node properties with `updated_at` as text (a temporal value has no JSON form).
const PROPS: &str = "{.*, updated_at: toString(n.updated_at)}";

/// Reads the neighbourhood of `key` up to `depth` hops (relationships in either direction).
pub async fn read(
    store: &GraphStore,
    key: &str,
    depth: u32,
) -> Result<Neighbourhood, NeighbourhoodError> {
    if depth > MAX_DEPTH {
        return Err(NeighbourhoodError::Depth);
    }
    let label = Label::of_key(key).ok_or_else(|| NeighbourhoodError::NotAKey(key.to_owned()))?;
    let rows = store
        .fetch(
            query(&format!(
                "MATCH (n:{label} {{key: $key}}) RETURN n {PROPS} AS props",
                label = label.as_str()
            ))
            .param("key", key),
        )
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| NeighbourhoodError::NotFound(key.to_owned()))?;
    let props: BTreeMap<String, Value> = row
        .get("props")
        .map_err(|e| NeighbourhoodError::Shape(e.to_string()))?;
    let mut nodes = BTreeMap::new();
    nodes.insert(key.to_owned(), node(key, label.as_str(), props));
    let mut relationships = BTreeSet::new();
    let mut truncated = false;
    let mut frontier = vec![key.to_owned()];
    for _ in 0..depth {
        if frontier.is_empty() || truncated {
            break;
        }
        let mut by_label: BTreeMap<Label, Vec<String>> = BTreeMap::new();
        for key in frontier.drain(..) {
            if let Some(label) = Label::of_key(&key) {
                by_label.entry(label).or_default().push(key);
            }
        }
        for (label, keys) in by_label {
            // Rows repeat relationships already seen (the way back to the previous hop), so
            // the query may return more than the bound; new ones stop at the bound.
            let limit = (2 * MAX_RELATIONSHIPS + 1) as i64;
            let rows = store
                .fetch(
                    query(&format!(
                        "MATCH (a:{label}) WHERE a.key IN $keys \
                         MATCH (a)-[r]-(n) \
                         RETURN type(r) AS rel, startNode(r).key AS from, endNode(r).key AS to, \
                                n.key AS key, labels(n) AS labels, n {PROPS} AS props \
                         LIMIT $limit",
                        label = label.as_str()
                    ))
                    .param("keys", keys)
                    .param("limit", limit),
                )
                .await?;
            for row in rows {
                let get = |name: &str| -> Result<String, NeighbourhoodError> {
                    row.get::<String>(name)
                        .map_err(|e| NeighbourhoodError::Shape(format!("{name}: {e}")))
                };
                let rel = GraphRel {
                    from: get("from")?,
                    rel: get("rel")?,
                    to: get("to")?,
                };
                if relationships.contains(&rel) {
                    continue;
                }
                if relationships.len() >= MAX_RELATIONSHIPS {
                    truncated = true;
                    break;
                }
                relationships.insert(rel);
                let other = get("key")?;
                if !nodes.contains_key(&other) {
                    let labels: Vec<String> = row
                        .get("labels")
                        .map_err(|e| NeighbourhoodError::Shape(format!("labels: {e}")))?;
                    let label = labels
                        .iter()
                        .find(|l| Label::ALL.iter().any(|known| known.as_str() == *l))
                        .cloned()
                        .unwrap_or_else(|| labels.join(":"));
                    let props: BTreeMap<String, Value> = row
                        .get("props")
                        .map_err(|e| NeighbourhoodError::Shape(format!("props: {e}")))?;
                    nodes.insert(other.clone(), node(&other, &label, props));
                    frontier.push(other);
                }
            }
        }
    }
    Ok(Neighbourhood {
        start: key.to_owned(),
        nodes: nodes.into_values().collect(),
        relationships: relationships.into_iter().collect(),
        truncated,
    })
}

fn node(key: &str, label: &str, mut props: BTreeMap<String, Value>) -> GraphNode {
    props.remove("key");
    let stub = props
        .remove("stub")
        .and_then(|s| s.as_bool())
        .unwrap_or(false);
    props.retain(|_, v| !v.is_null());
    GraphNode {
        key: key.to_owned(),
        label: label.to_owned(),
        stub,
        props,
    }
}

/// Text made safe inside a DOT double-quoted string: quotes and backslashes escaped, line
/// breaks and other control characters turned into spaces (a `\n` in the output is DOT's own
/// line break, never the text's).
fn dot_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The neighbourhood as a Graphviz digraph: nodes labelled `Label\nkey\ntitle-or-name`, stubs
/// dashed, the start node bold, relationships labelled with their type.
pub fn to_dot(n: &Neighbourhood) -> String {
    let mut out = String::from("digraph neighbourhood {\n");
    out.push_str("  graph [rankdir=LR];\n");
    out.push_str("  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n");
    out.push_str("  edge [fontname=\"Helvetica\", fontsize=10];\n");
    if n.truncated {
        let _ = writeln!(
            out,
            "  label=\"truncated at {MAX_RELATIONSHIPS} relationships\";"
        );
    }
    for node in &n.nodes {
        let mut lines = vec![dot_escape(&node.label), dot_escape(&node.key)];
        let text = ["title", "name"]
            .iter()
            .find_map(|p| node.props.get(*p).and_then(|v| v.as_str()));
        if let Some(text) = text {
            let short: String = text.chars().take(LABEL_TEXT_CHARS).collect();
            let ellipsis = if text.chars().count() > LABEL_TEXT_CHARS {
                "…"
            } else {
                ""
            };
            lines.push(format!("{}{ellipsis}", dot_escape(&short)));
        }
        let mut attributes = vec![format!("label=\"{}\"", lines.join("\\n"))];
        if node.stub {
            attributes.push("style=\"rounded,dashed\"".to_owned());
        }
        if node.key == n.start {
            attributes.push("penwidth=2".to_owned());
        }
        let _ = writeln!(
            out,
            "  \"{}\" [{}];",
            dot_escape(&node.key),
            attributes.join(", ")
        );
    }
    for rel in &n.relationships {
        let _ = writeln!(
            out,
            "  \"{}\" -> \"{}\" [label=\"{}\"];",
            dot_escape(&rel.from),
            dot_escape(&rel.to),
            dot_escape(&rel.rel)
        );
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Neighbourhood {
        let props =
            |v: Value| -> BTreeMap<String, Value> { serde_json::from_value(v).expect("a map") };
        Neighbourhood {
            start: "/works/OL1W".to_owned(),
            nodes: vec![
                node(
                    "/authors/OL1A",
                    "Author",
                    props(json!({"key": "/authors/OL1A", "stub": true})),
                ),
                node(
                    "/works/OL1W",
                    "Work",
                    props(json!({"key": "/works/OL1W", "stub": false,
                                 "title": "Say \"hi\"\nback\\slash", "subtitle": null})),
                ),
            ],
            relationships: vec![GraphRel {
                from: "/works/OL1W".to_owned(),
                rel: "WRITTEN_BY".to_owned(),
                to: "/authors/OL1A".to_owned(),
            }],
            truncated: false,
        }
    }

    #[test]
    fn dot_escapes_text_and_dashes_stubs() {
        let dot = to_dot(&sample());
        assert!(
            dot.contains(
                r#""/works/OL1W" [label="Work\n/works/OL1W\nSay \"hi\" back\\slash", penwidth=2];"#
            ),
            "{dot}"
        );
        assert!(
            dot.contains(
                r#""/authors/OL1A" [label="Author\n/authors/OL1A", style="rounded,dashed"];"#
            ),
            "{dot}"
        );
        assert!(dot.contains(r#""/works/OL1W" -> "/authors/OL1A" [label="WRITTEN_BY"];"#));
    }

    #[test]
    fn json_has_the_documented_shape() {
        let value = serde_json::to_value(sample()).expect("serialises");
        assert_eq!(
            value["relationships"][0],
            json!({"from": "/works/OL1W", "type": "WRITTEN_BY", "to": "/authors/OL1A"})
        );
        assert_eq!(value["nodes"][0]["stub"], json!(true));
        assert_eq!(
            value["nodes"][1]["props"],
            json!({"title": "Say \"hi\"\nback\\slash"}),
            "key and stub are fields of their own, nulls are dropped"
        );
    }
}
