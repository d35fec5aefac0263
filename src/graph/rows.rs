//! Rows: a node or an edge message, checked and reduced to exactly what the graph stores.
//!
//! Everything that can be judged without Neo4j is judged here, so a bad message is
//! dead-lettered on its own before it can fail a transaction shared with good ones: the
//! label must match the key's prefix, the relationship type must be one of the fixed list and
//! join the endpoints it allows, properties must be scalars or lists of one scalar type.
//! Empty values (null, `""`, `[]`) are dropped here, which is how "an empty value never erases
//! a known one" holds: the writer only ever sets the properties a row carries. A node message
//! marked `gone` becomes a [`GoneRow`] instead (see [`super::tombstone`]).

use std::collections::BTreeMap;

use neo4rs::{BoltList, BoltMap, BoltType};
use serde_json::Value;

pub use super::tombstone::GoneRow;
use crate::message::{Edge, Label, Node, Rel};

/// Longest key accepted. Neo4j's range index refuses entries of roughly 8 KB and more, and
/// the error would arrive as a whole failed batch; real Open Library keys are under 200
/// bytes, so a quarter of that bound leaves room for long subject names.
pub const MAX_KEY_BYTES: usize = 2048;

/// Properties the writer owns: a message cannot set them (a `key` in `props` would otherwise
/// rename the node). They are dropped from `props` silently.
pub const RESERVED_PROPS: [&str; 5] = ["key", "stub", "crawls", "crawl_count", "updated_at"];

/// Why a message cannot become a row. Every variant means "dead-letter this message": no
/// retry can fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    /// The key is empty, too long, or its prefix names another label (or none).
    #[error("invalid key {key:?}: {why}")]
    InvalidKey {
        /// The key as received (truncated to a readable length).
        key: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The crawl id is empty, so the node could not record who touched it.
    #[error("empty crawl_id")]
    EmptyCrawlId,
    /// `rel` is not one of the fixed relationship types.
    #[error("unknown relationship type {0:?}")]
    UnknownRel(String),
    /// The relationship type does not join these two labels.
    #[error("{rel} cannot join {from} to {to}")]
    InvalidEdge {
        /// The relationship type.
        rel: &'static str,
        /// Label of the start key.
        from: &'static str,
        /// Label of the end key.
        to: &'static str,
    },
    /// A property is a map, a list of lists or maps, or a list mixing types.
    #[error("property {name:?} is not a scalar or a list of one scalar type: {why}")]
    InvalidProp {
        /// The property name.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A gone message the tombstone rules cannot order or file: no integer `revision`, a
    /// redirect to a key of another kind (or to itself), or a record row that says it is gone.
    #[error("invalid gone message for {key:?}: {why}")]
    InvalidGone {
        /// The key as received (truncated to a readable length).
        key: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl RowError {
    /// The graph DLQ's `reason` for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            RowError::InvalidKey { .. } => "invalid_key",
            RowError::EmptyCrawlId => "invalid_crawl_id",
            RowError::UnknownRel(_) => "unknown_rel",
            RowError::InvalidEdge { .. } => "invalid_edge",
            RowError::InvalidProp { .. } => "invalid_props",
            RowError::InvalidGone { .. } => "invalid_gone",
        }
    }
}

/// One scalar property value as Neo4j stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// Text.
    Str(String),
    /// A whole number that fits in 64 bits.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// True or false.
    Bool(bool),
}

/// A property value: a scalar or a non-empty list of scalars of one type (Neo4j refuses
/// mixed lists).
#[derive(Debug, Clone, PartialEq)]
pub enum PropValue {
    /// One value.
    Scalar(Scalar),
    /// Several values of one type.
    List(Vec<Scalar>),
}

/// A node record from the results topic, ready to write.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    /// Its label, which agrees with the key's prefix.
    pub label: Label,
    /// Its Open Library key.
    pub key: String,
    /// Non-empty, non-reserved properties.
    pub props: BTreeMap<String, PropValue>,
    /// The crawl that fetched it.
    pub crawl_id: String,
    /// The record's `revision` (its integer `revision` property), which orders the writes
    /// of one key: `None` for subjects and messages without one.
    pub revision: Option<i64>,
}

/// A relationship from the edges topic, ready to write, with both endpoint labels resolved
/// from the keys so a missing endpoint can be created as a stub of the right label.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeRow {
    /// The relationship type.
    pub rel: Rel,
    /// Label of the start node.
    pub from_label: Label,
    /// Key of the start node.
    pub from: String,
    /// Label of the end node.
    pub to_label: Label,
    /// Key of the end node.
    pub to: String,
    /// The crawl that found it.
    pub crawl_id: String,
    /// The revision of the start node's record that names it (see [`crate::message::Edge`]).
    pub revision: Option<i64>,
}

/// What the batch writer writes: a node, a record that is gone, or an edge.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// A node record.
    Node(NodeRow),
    /// A record that turned into a delete or a redirect: its tombstone.
    Gone(GoneRow),
    /// A relationship.
    Edge(EdgeRow),
}

impl Row {
    /// Whether this row came from the results topic (for the results/edges metrics): a
    /// record or a gone record.
    pub fn is_node(&self) -> bool {
        matches!(self, Row::Node(_) | Row::Gone(_))
    }

    /// The row a results message carries: a [`GoneRow`] when it is marked `gone`, else a
    /// [`NodeRow`]. The one entry point for results messages, so a gone message is never
    /// merged as a record.
    pub fn of_node(node: &Node) -> Result<Self, RowError> {
        if node.gone.is_some() {
            GoneRow::from_message(node).map(Row::Gone)
        } else {
            NodeRow::from_message(node).map(Row::Node)
        }
    }
}

/// The relationship types and the labels each may join, from the contract's table.
pub fn allowed(rel: Rel, from: Label, to: Label) -> bool {
    use Label::*;
    match rel {
        Rel::WRITTEN_BY => matches!(from, Work | Edition) && to == Author,
        Rel::EDITION_OF => from == Edition && to == Work,
        Rel::ABOUT => matches!(from, Work | Edition) && to == Subject,
    }
}

/// Parses a relationship type name against the fixed list.
pub fn parse_rel(text: &str) -> Option<Rel> {
    Rel::ALL.into_iter().find(|rel| rel.as_str() == text)
}

pub(super) fn truncated(key: &str) -> String {
    key.chars().take(120).collect()
}

pub(super) fn check_key(key: &str) -> Result<Label, RowError> {
    let invalid = |why| RowError::InvalidKey {
        key: truncated(key),
        why,
    };
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid("longer than the index allows"));
    }
    let label = Label::of_key(key).ok_or_else(|| invalid("prefix names no label"))?;
    // A bare prefix (`/works/`) names no entity.
    if key.rsplit('/').next().is_none_or(str::is_empty) {
        return Err(invalid("no id after the prefix"));
    }
    Ok(label)
}

pub(super) fn check_crawl(crawl_id: &str) -> Result<(), RowError> {
    if crawl_id.is_empty() {
        Err(RowError::EmptyCrawlId)
    } else {
        Ok(())
    }
}

/// A JSON scalar as a property scalar; `None` for null and empty text (nothing to store).
fn scalar(name: &str, value: &Value) -> Result<Option<Scalar>, RowError> {
    let invalid = |why| RowError::InvalidProp {
        name: name.to_owned(),
        why,
    };
    Ok(match value {
        Value::Null => None,
        Value::Bool(b) => Some(Scalar::Bool(*b)),
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => Scalar::Int(i),
            None => Scalar::Float(n.as_f64().ok_or_else(|| invalid("number out of range"))?),
        }),
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(Scalar::Str(s.clone())),
        Value::Array(_) => return Err(invalid("a list inside a list")),
        Value::Object(_) => return Err(invalid("a map")),
    })
}

/// A JSON value as a property; `None` when it is empty and must not overwrite anything.
fn prop(name: &str, value: &Value) -> Result<Option<PropValue>, RowError> {
    let Value::Array(items) = value else {
        return Ok(scalar(name, value)?.map(PropValue::Scalar));
    };
    let mut list = Vec::with_capacity(items.len());
    for item in items {
        if let Some(s) = scalar(name, item)? {
            list.push(s);
        }
    }
    let (ints, floats) = list.iter().fold((0, 0), |(i, f), s| match s {
        Scalar::Int(_) => (i + 1, f),
        Scalar::Float(_) => (i, f + 1),
        _ => (i, f),
    });
    if ints > 0 && floats > 0 && ints + floats == list.len() {
        // Numbers that happen to be whole next to ones that are not: store them all as
        // floats rather than refuse the list.
        for s in &mut list {
            if let Scalar::Int(i) = *s {
                *s = Scalar::Float(i as f64);
            }
        }
    }
    let same_type = list
        .windows(2)
        .all(|w| std::mem::discriminant(&w[0]) == std::mem::discriminant(&w[1]));
    if !same_type {
        return Err(RowError::InvalidProp {
            name: name.to_owned(),
            why: "a list mixing types",
        });
    }
    Ok((!list.is_empty()).then_some(PropValue::List(list)))
}

impl NodeRow {
    /// Checks a node message and keeps what the graph stores. A message marked `gone` is
    /// refused here: its row is a [`GoneRow`] ([`Row::of_node`] picks the right one).
    pub fn from_message(node: &Node) -> Result<Self, RowError> {
        if node.gone.is_some() {
            return Err(RowError::InvalidGone {
                key: truncated(&node.key),
                why: "a gone message is not a record",
            });
        }
        check_crawl(&node.crawl_id)?;
        let label = check_key(&node.key)?;
        if label != node.label {
            return Err(RowError::InvalidKey {
                key: truncated(&node.key),
                why: "prefix names another label than the message's",
            });
        }
        let mut props = BTreeMap::new();
        for (name, value) in &node.props {
            if name.is_empty() {
                return Err(RowError::InvalidProp {
                    name: String::new(),
                    why: "an empty name",
                });
            }
            if RESERVED_PROPS.contains(&name.as_str()) {
                continue;
            }
            if let Some(value) = prop(name, value)? {
                props.insert(name.clone(), value);
            }
        }
        let revision = match props.get("revision") {
            Some(PropValue::Scalar(Scalar::Int(r))) => Some(*r),
            _ => None,
        };
        Ok(Self {
            label,
            key: node.key.clone(),
            props,
            crawl_id: node.crawl_id.clone(),
            revision,
        })
    }
}

impl EdgeRow {
    /// Checks an edge message: a known type joining the labels it allows.
    pub fn from_message(edge: &Edge) -> Result<Self, RowError> {
        check_crawl(&edge.crawl_id)?;
        let rel = parse_rel(&edge.rel).ok_or_else(|| RowError::UnknownRel(edge.rel.clone()))?;
        let from_label = check_key(&edge.from)?;
        let to_label = check_key(&edge.to)?;
        if !allowed(rel, from_label, to_label) {
            return Err(RowError::InvalidEdge {
                rel: rel.as_str(),
                from: from_label.as_str(),
                to: to_label.as_str(),
            });
        }
        Ok(Self {
            rel,
            from_label,
            from: edge.from.clone(),
            to_label,
            to: edge.to.clone(),
            crawl_id: edge.crawl_id.clone(),
            revision: edge.revision,
        })
    }
}

impl From<&Scalar> for BoltType {
    fn from(value: &Scalar) -> Self {
        match value {
            Scalar::Str(s) => BoltType::from(s.as_str()),
            Scalar::Int(i) => BoltType::from(*i),
            Scalar::Float(f) => BoltType::from(*f),
            Scalar::Bool(b) => BoltType::from(*b),
        }
    }
}

impl From<&PropValue> for BoltType {
    fn from(value: &PropValue) -> Self {
        match value {
            PropValue::Scalar(s) => s.into(),
            PropValue::List(items) => BoltType::List(BoltList::from(
                items.iter().map(BoltType::from).collect::<Vec<_>>(),
            )),
        }
    }
}

impl NodeRow {
    /// The row as the node query's `row` parameter (see [`node_param`]).
    pub fn to_param(&self) -> BoltType {
        node_param(
            &self.key,
            self.props.iter().map(|(k, v)| (k.as_str(), v)),
            self.revision,
            [self.crawl_id.as_str()],
        )
    }
}

/// A node query's `row` parameter: `{key, crawls, props, revision}` (`revision` is left out
/// when there is none, which Cypher reads as null).
pub fn node_param<'a>(
    key: &str,
    props: impl IntoIterator<Item = (&'a str, &'a PropValue)>,
    revision: Option<i64>,
    crawls: impl IntoIterator<Item = &'a str>,
) -> BoltType {
    let map: BoltMap = props
        .into_iter()
        .map(|(name, value)| (name.into(), value.into()))
        .collect();
    let mut row = BoltMap::with_capacity(4);
    row.put("key".into(), key.into());
    row.put("crawls".into(), crawls_param(crawls));
    row.put("props".into(), BoltType::Map(map));
    if let Some(revision) = revision {
        row.put("revision".into(), revision.into());
    }
    BoltType::Map(row)
}

/// A list of crawl ids as a parameter.
pub fn crawls_param<'a>(crawls: impl IntoIterator<Item = &'a str>) -> BoltType {
    BoltType::List(BoltList::from(
        crawls.into_iter().map(BoltType::from).collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;

    /// An ordinary node message of crawl `c1`, for the row tests here and in `tombstone`.
    pub(crate) fn node(key: &str, label: Label, props: Value) -> Node {
        Node {
            v: 1,
            crawl_id: "c1".to_owned(),
            key: key.to_owned(),
            label,
            props: serde_json::from_value(props).unwrap(),
            fetched_at: Utc::now(),
            gone: None,
        }
    }

    fn edge(from: &str, to: &str, rel: &str) -> Edge {
        Edge {
            v: 1,
            crawl_id: "c1".to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            rel: rel.to_owned(),
            discovered_at: Utc::now(),
            revision: None,
        }
    }

    #[test]
    fn empty_values_and_reserved_names_are_dropped_so_they_never_overwrite() {
        let row = NodeRow::from_message(&node(
            "/works/OL1W",
            Label::Work,
            json!({"title": "T", "subtitle": "", "description": null, "covers": [],
                   "key": "/works/OL2W", "stub": true, "crawls": ["x"], "updated_at": 1}),
        ))
        .unwrap();
        assert_eq!(
            row.props.keys().collect::<Vec<_>>(),
            vec!["title"],
            "only the non-empty, non-reserved property is kept"
        );
    }

    #[test]
    fn lists_keep_one_type_and_whole_numbers_join_floats() {
        let row = NodeRow::from_message(&node(
            "/works/OL1W",
            Label::Work,
            json!({"covers": [1, 2.5, null], "isbn": ["a", ""]}),
        ))
        .unwrap();
        assert_eq!(
            row.props["covers"],
            PropValue::List(vec![Scalar::Float(1.0), Scalar::Float(2.5)])
        );
        assert_eq!(
            row.props["isbn"],
            PropValue::List(vec![Scalar::Str("a".into())])
        );
    }

    #[test]
    fn maps_nested_lists_and_mixed_lists_are_refused() {
        for props in [
            json!({"bio": {"type": "/type/text", "value": "x"}}),
            json!({"covers": [[1]]}),
            json!({"covers": [1, "a"]}),
        ] {
            let err = NodeRow::from_message(&node("/works/OL1W", Label::Work, props)).unwrap_err();
            assert_eq!(err.reason(), "invalid_props", "{err}");
        }
    }

    #[test]
    fn a_label_that_disagrees_with_the_key_prefix_is_refused() {
        let err =
            NodeRow::from_message(&node("/authors/OL1A", Label::Work, json!({}))).unwrap_err();
        assert_eq!(err.reason(), "invalid_key");
        let err = NodeRow::from_message(&node("/works/", Label::Work, json!({}))).unwrap_err();
        assert_eq!(err.reason(), "invalid_key");
        let long = format!("/works/OL{}W", "1".repeat(MAX_KEY_BYTES));
        let err = NodeRow::from_message(&node(&long, Label::Work, json!({}))).unwrap_err();
        assert_eq!(err.reason(), "invalid_key");
    }

    #[test]
    fn edges_must_use_a_known_type_between_the_labels_it_allows() {
        let ok =
            EdgeRow::from_message(&edge("/books/OL1M", "/authors/OL1A", "WRITTEN_BY")).unwrap();
        assert_eq!(
            (ok.from_label, ok.to_label),
            (Label::Edition, Label::Author)
        );
        let err =
            EdgeRow::from_message(&edge("/works/OL1W", "/authors/OL1A", "LIKES")).unwrap_err();
        assert_eq!(err.reason(), "unknown_rel");
        let err =
            EdgeRow::from_message(&edge("/works/OL1W", "/authors/OL1A", "written_by")).unwrap_err();
        assert_eq!(err.reason(), "unknown_rel", "types are matched exactly");
        let err =
            EdgeRow::from_message(&edge("/works/OL1W", "/books/OL1M", "EDITION_OF")).unwrap_err();
        assert_eq!(
            err.reason(),
            "invalid_edge",
            "EDITION_OF runs Edition → Work only"
        );
        let err = EdgeRow::from_message(&edge("/works/OL1W", "search:x", "ABOUT")).unwrap_err();
        assert_eq!(err.reason(), "invalid_key");
    }

    #[test]
    fn every_allowed_pair_matches_the_contract_table() {
        let pairs: Vec<_> = Rel::ALL
            .into_iter()
            .flat_map(|r| {
                Label::ALL.into_iter().flat_map(move |f| {
                    Label::ALL
                        .into_iter()
                        .filter(move |t| allowed(r, f, *t))
                        .map(move |t| (r.as_str(), f.as_str(), t.as_str()))
                })
            })
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("WRITTEN_BY", "Work", "Author"),
                ("WRITTEN_BY", "Edition", "Author"),
                ("EDITION_OF", "Edition", "Work"),
                ("ABOUT", "Work", "Subject"),
                ("ABOUT", "Edition", "Subject"),
            ]
        );
    }
}
