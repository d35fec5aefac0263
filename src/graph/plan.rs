//! A batch's rows grouped into the statements of its one transaction: one `UNWIND` statement
//! per shape (see [`super::cypher`]), in the order the revision and tombstone rules need.
//!
//! A shape's rows go in one statement, however many: one round trip each. They were once
//! split into statements under 7 KiB, because the driver's socket lacked `TCP_NODELAY` and a
//! larger request waited 40 ms for a delayed ACK; the vendored driver (`vendor/neo4rs`) sets
//! it, and whole statements made an import 1.25 times faster (see `docs/import.md`).
//!
//! Order within the transaction: tombstones, then the stripping of gone records' nodes, then
//! node records, then relationships (start nodes, end nodes, relationships), so every row sees
//! what the rows before it in the batch wrote: a record or an edge sees the batch's tombstone,
//! an edge finds its endpoints complete.

use std::collections::{BTreeMap, BTreeSet};

use neo4rs::{BoltList, BoltType, Query};

use super::cypher;
use super::rows::{self, GoneRow, NodeRow, Row};
use crate::message::{Label, Rel};

/// One node's write within a batch: every row of the key reduced to the one that wins (see
/// [`NodeWrite::absorb`]), with the crawls of all of them.
struct NodeWrite<'a> {
    key: &'a str,
    revision: Option<i64>,
    props: BTreeMap<&'a str, &'a rows::PropValue>,
    crawls: Crawls<'a>,
}

impl<'a> NodeWrite<'a> {
    fn new(row: &'a NodeRow) -> Self {
        Self {
            key: &row.key,
            revision: row.revision,
            props: row.props.iter().map(|(k, v)| (k.as_str(), v)).collect(),
            crawls: Crawls::from([row.crawl_id.as_str()]),
        }
    }

    /// Folds a later row of the same key in, as writing the two one after the other would:
    /// the higher revision wins (the later on a tie); a row without a revision loses to one
    /// with; two rows without merge their properties, the later's values over the earlier's.
    /// One row per key in a statement keeps Cypher from reading a node's revision before an
    /// earlier row of the same statement changed it.
    fn absorb(&mut self, row: &'a NodeRow) {
        self.crawls.insert(&row.crawl_id);
        match (self.revision, row.revision) {
            (Some(kept), Some(new)) if new < kept => {}
            (Some(_), None) => {}
            (_, Some(_)) => {
                self.revision = row.revision;
                self.props = row.props.iter().map(|(k, v)| (k.as_str(), v)).collect();
            }
            (None, None) => self
                .props
                .extend(row.props.iter().map(|(k, v)| (k.as_str(), v))),
        }
    }
}

/// One start node's write: the crawls of its edges, their highest revision, and whether any
/// of them has none (the tombstone check treats the two kinds apart).
#[derive(Default)]
struct StartWrite<'a> {
    crawls: Crawls<'a>,
    revision: Option<i64>,
    unversioned: bool,
}

/// An edge's start and revision, as the end-node statement checks them.
type Start<'a> = (&'a str, Option<i64>);

/// One end node's write: the crawls of its edges and their starts.
type EndWrite<'a> = (Crawls<'a>, BTreeSet<Start<'a>>);

/// One relationship's write: its crawls and highest revision.
type EdgeWrite<'a> = (Crawls<'a>, Option<i64>);

/// Groups rows by statement shape: tombstones (one per key, the highest revision's; a tie goes
/// to the later row), the stripping of the nodes those gone records leave, node records (one
/// write per key, in first-arrival order, see [`NodeWrite::absorb`]), then the distinct start
/// nodes of the relationships, then their
/// distinct end nodes per start label (each with the starts and revisions of its edges, so an
/// end is only created for an edge that will be written), then the distinct relationships,
/// each with the union of their crawls and their highest revision. Endpoints and
/// relationships go in key order: two writers then lock shared nodes in the same order, which
/// keeps deadlocks between them rare.
///
/// A key with both a gone and a record in the batch is settled here, as writing them one
/// after the other would settle it: a record above the gone is written and the node is not
/// stripped (the tombstone is still recorded); otherwise (the gone at the same revision or
/// above, or a record without one) the record is dropped and the node stripped.
fn plan(rows: &[&Row]) -> Vec<Planned> {
    let mut nodes: BTreeMap<Label, Vec<NodeWrite>> = BTreeMap::new();
    let mut node_index: BTreeMap<(Label, &str), usize> = BTreeMap::new();
    let mut gones: BTreeMap<Label, BTreeMap<&str, &GoneRow>> = BTreeMap::new();
    let mut starts: BTreeMap<Label, BTreeMap<&str, StartWrite>> = BTreeMap::new();
    let mut ends: BTreeMap<(Label, Label), BTreeMap<&str, EndWrite>> = BTreeMap::new();
    let mut edges: BTreeMap<EdgeShape, BTreeMap<(&str, &str), EdgeWrite>> = BTreeMap::new();
    for row in rows {
        match row {
            Row::Node(n) => {
                let writes = nodes.entry(n.label).or_default();
                match node_index.get(&(n.label, n.key.as_str())) {
                    Some(&i) => writes[i].absorb(n),
                    None => {
                        node_index.insert((n.label, &n.key), writes.len());
                        writes.push(NodeWrite::new(n));
                    }
                }
            }
            Row::Gone(g) => {
                let kept = gones.entry(g.label).or_default().entry(&g.key).or_insert(g);
                if g.revision >= kept.revision {
                    *kept = g;
                }
            }
            Row::Edge(e) => {
                let start = starts
                    .entry(e.from_label)
                    .or_default()
                    .entry(&e.from)
                    .or_default();
                start.crawls.insert(&e.crawl_id);
                match e.revision {
                    Some(_) => start.revision = start.revision.max(e.revision),
                    None => start.unversioned = true,
                }
                let end = ends
                    .entry((e.to_label, e.from_label))
                    .or_default()
                    .entry(&e.to)
                    .or_default();
                end.0.insert(&e.crawl_id);
                end.1.insert((&e.from, e.revision));
                let edge = edges
                    .entry((e.rel, e.from_label, e.to_label))
                    .or_default()
                    .entry((&e.from, &e.to))
                    .or_default();
                edge.0.insert(&e.crawl_id);
                edge.1 = edge.1.max(e.revision);
            }
        }
    }
    // A key with a gone and a record: the record wins only above the gone's revision.
    let mut dropped: BTreeSet<(Label, &str)> = BTreeSet::new();
    let mut strips: BTreeMap<Label, Vec<&GoneRow>> = BTreeMap::new();
    for (label, keys) in &gones {
        for (key, gone) in keys {
            let record = node_index
                .get(&(*label, *key))
                .and_then(|&i| nodes.get(label).and_then(|w| w.get(i)));
            match record.map(|w| w.revision) {
                Some(Some(revision)) if revision > gone.revision => {}
                Some(_) => {
                    dropped.insert((*label, key));
                    strips.entry(*label).or_default().push(gone);
                }
                None => strips.entry(*label).or_default().push(gone),
            }
        }
    }
    let mut planned = Vec::new();
    let mut push = |text: String, rows: Vec<BoltType>, reserved: bool| {
        planned.push(Planned {
            text,
            rows,
            reserved,
        });
    };
    let tombstones: Vec<BoltType> = gones
        .values()
        .flat_map(|keys| keys.values().map(|g| g.tombstone_param()))
        .collect();
    if !tombstones.is_empty() {
        push(cypher::merge_tombstones(), tombstones, false);
    }
    for (label, gones) in strips {
        let rows = gones.into_iter().map(GoneRow::strip_param).collect();
        push(cypher::strip_gone(label), rows, true);
    }
    for (label, writes) in nodes {
        let rows: Vec<BoltType> = writes
            .into_iter()
            .filter(|w| !dropped.contains(&(label, w.key)))
            .map(|w| rows::node_param(w.key, w.props, w.revision, w.crawls))
            .collect();
        if !rows.is_empty() {
            push(cypher::merge_nodes(label), rows, true);
        }
    }
    for (label, keys) in starts {
        let rows = keys
            .into_iter()
            .map(|(key, start)| {
                bolt_map(
                    [
                        ("key", key.into()),
                        ("crawls", rows::crawls_param(start.crawls)),
                        ("unversioned", start.unversioned.into()),
                    ],
                    start.revision,
                )
            })
            .collect();
        push(cypher::merge_endpoints(label), rows, false);
    }
    for ((to, from), keys) in ends {
        let rows = keys
            .into_iter()
            .map(|(key, (crawls, froms))| {
                let froms = froms
                    .into_iter()
                    .map(|(from, rev)| bolt_map([("key", from.into())], rev))
                    .collect::<Vec<_>>();
                bolt_map(
                    [
                        ("key", key.into()),
                        ("crawls", rows::crawls_param(crawls)),
                        ("froms", BoltType::List(BoltList::from(froms))),
                    ],
                    None,
                )
            })
            .collect();
        push(cypher::merge_ends(to, from), rows, false);
    }
    for ((rel, from, to), pairs) in edges {
        let rows = pairs
            .into_iter()
            .map(|((a, b), (crawls, rev))| {
                bolt_map(
                    [
                        ("from", a.into()),
                        ("to", b.into()),
                        ("crawls", rows::crawls_param(crawls)),
                    ],
                    rev,
                )
            })
            .collect();
        push(cypher::merge_edges(rel, from, to), rows, false);
    }
    planned
}

/// One row of a statement: `fields`, and `revision` when the row has one. Sized up front: a
/// batch's statements carry thousands of these maps, and growing each from empty cost an
/// extra allocation and a rehash per row.
fn bolt_map<const N: usize>(fields: [(&str, BoltType); N], revision: Option<i64>) -> BoltType {
    let mut map = neo4rs::BoltMap::with_capacity(N + usize::from(revision.is_some()));
    for (name, value) in fields {
        map.put(name.into(), value);
    }
    if let Some(revision) = revision {
        map.put("revision".into(), revision.into());
    }
    BoltType::Map(map)
}

/// One statement of a batch: its text, its rows, and whether it takes the writer's own
/// property names as `$reserved` (see `cypher::merge_nodes`).
struct Planned {
    text: String,
    rows: Vec<BoltType>,
    reserved: bool,
}

/// The queries of a batch, in order (see [`plan`]), all for the one transaction.
pub fn statements(rows: &[&Row]) -> Vec<Query> {
    plan(rows)
        .into_iter()
        .map(
            |Planned {
                 text,
                 rows,
                 reserved,
             }| {
                let query =
                    neo4rs::query(&text).param("rows", BoltType::List(BoltList::from(rows)));
                if reserved {
                    query.param("reserved", rows::crawls_param(rows::RESERVED_PROPS))
                } else {
                    query
                }
            },
        )
        .collect()
}

/// The crawl ids of one endpoint or relationship within a batch.
type Crawls<'a> = BTreeSet<&'a str>;

/// A relationship statement's shape: its type and the labels it joins.
type EdgeShape = (Rel, Label, Label);

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::message::{Gone, Node};

    fn row(key: &str, props: serde_json::Value, gone: Option<Gone>) -> Row {
        Row::of_node(&Node {
            v: 1,
            crawl_id: "c1".to_owned(),
            key: key.to_owned(),
            label: Label::Work,
            props: serde_json::from_value(props).unwrap(),
            fetched_at: Utc::now(),
            gone,
        })
        .unwrap()
    }

    /// The statement texts of a batch, in order, with the number of rows each carries.
    fn shapes(rows: &[Row]) -> Vec<String> {
        let refs: Vec<&Row> = rows.iter().collect();
        plan(&refs)
            .iter()
            .map(|p| {
                ["MERGE (t:Tombstone", "MATCH (n:Work", "MERGE (n:Work"]
                    .into_iter()
                    .find(|s| p.text.contains(s))
                    .unwrap_or("other")
                    .to_owned()
            })
            .collect()
    }

    /// A gone and a record of one key in one batch: the gone wins at its own revision and
    /// above (the record is dropped, the node stripped); a newer record wins (written, not
    /// stripped), and the tombstone is recorded either way, before anything else.
    #[test]
    fn a_gone_and_a_record_of_one_key_in_one_batch_settle_by_revision() {
        let gone = |r: i64| row("/works/OL1W", json!({"revision": r}), Some(Gone::Deleted));
        let record = |r: i64| row("/works/OL1W", json!({"title": "T", "revision": r}), None);
        let tombstone_strip = ["MERGE (t:Tombstone", "MATCH (n:Work"];
        assert_eq!(shapes(&[record(5), gone(5)]), tombstone_strip);
        assert_eq!(shapes(&[gone(5), record(5)]), tombstone_strip);
        assert_eq!(shapes(&[gone(6), record(5), gone(4)]), tombstone_strip);
        let tombstone_record = ["MERGE (t:Tombstone", "MERGE (n:Work"];
        assert_eq!(shapes(&[gone(5), record(6)]), tombstone_record);
        assert_eq!(shapes(&[record(6), gone(5)]), tombstone_record);
    }
}
