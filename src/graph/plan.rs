//! A batch's rows grouped into the statements of its one transaction: one `UNWIND` statement
//! per shape (see [`super::cypher`]), in the order the revision and tombstone rules need, each
//! split into runs small enough to leave in one network write.
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

/// Bytes of rows per statement. The driver neither sets `TCP_NODELAY` nor sends a request
/// larger than its 8 KiB write buffer in one piece: such a request leaves in several writes,
/// and Nagle's algorithm holds the last one until the server's delayed ACK, 40 ms later (a
/// 1,000-row statement took ~300 ms this way). Splitting a batch's rows into statements of
/// under 7 KiB each, all in the one transaction, keeps every request in a single write at the
/// cost of one loopback round trip per statement. A single row over the budget still goes
/// alone and pays the 40 ms.
pub const STATEMENT_BYTES: usize = 7 * 1024;

/// Roughly how many bytes a value takes on the wire (PackStream): enough to keep a statement
/// under [`STATEMENT_BYTES`].
fn wire_size(value: &BoltType) -> usize {
    match value {
        BoltType::String(s) => s.value.len() + 3,
        BoltType::List(list) => 3 + list.value.iter().map(wire_size).sum::<usize>(),
        BoltType::Map(map) => {
            3 + map
                .value
                .iter()
                .map(|(k, v)| k.value.len() + 3 + wire_size(v))
                .sum::<usize>()
        }
        _ => 9,
    }
}

/// Splits a statement's rows into runs of at most [`STATEMENT_BYTES`] (with `overhead` for
/// the statement's text), in order; a row bigger than the budget gets a run of its own.
fn chunks(rows: Vec<BoltType>, overhead: usize) -> Vec<Vec<BoltType>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    let mut bytes = overhead;
    for row in rows {
        let size = wire_size(&row);
        if !run.is_empty() && bytes + size > STATEMENT_BYTES {
            runs.push(std::mem::take(&mut run));
            bytes = overhead;
        }
        bytes += size;
        run.push(row);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

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
    let map = |fields: Vec<(&str, BoltType)>| {
        BoltType::Map(
            fields
                .into_iter()
                .map(|(k, v)| (k.into(), v))
                .collect::<neo4rs::BoltMap>(),
        )
    };
    let revision = |fields: &mut Vec<(&str, BoltType)>, revision: Option<i64>| {
        if let Some(r) = revision {
            fields.push(("revision", r.into()));
        }
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
                let mut fields = vec![
                    ("key", key.into()),
                    ("crawls", rows::crawls_param(start.crawls)),
                    ("unversioned", start.unversioned.into()),
                ];
                revision(&mut fields, start.revision);
                map(fields)
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
                    .map(|(from, rev)| {
                        let mut fields = vec![("key", from.into())];
                        revision(&mut fields, rev);
                        map(fields)
                    })
                    .collect::<Vec<_>>();
                map(vec![
                    ("key", key.into()),
                    ("crawls", rows::crawls_param(crawls)),
                    ("froms", BoltType::List(BoltList::from(froms))),
                ])
            })
            .collect();
        push(cypher::merge_ends(to, from), rows, false);
    }
    for ((rel, from, to), pairs) in edges {
        let rows = pairs
            .into_iter()
            .map(|((a, b), (crawls, rev))| {
                let mut fields = vec![
                    ("from", a.into()),
                    ("to", b.into()),
                    ("crawls", rows::crawls_param(crawls)),
                ];
                revision(&mut fields, rev);
                map(fields)
            })
            .collect();
        push(cypher::merge_edges(rel, from, to), rows, false);
    }
    planned
}

/// One statement of a batch before it is split into runs: its text, its rows, and whether it
/// takes the writer's own property names as `$reserved` (see `cypher::merge_nodes`).
struct Planned {
    text: String,
    rows: Vec<BoltType>,
    reserved: bool,
}

/// The queries of a batch, in order (see [`plan`]): one per run of a statement's rows, all in
/// the one transaction (see [`STATEMENT_BYTES`]).
pub fn statements(rows: &[&Row]) -> Vec<Query> {
    let mut queries = Vec::new();
    for Planned {
        text,
        rows,
        reserved,
    } in plan(rows)
    {
        for run in chunks(rows, text.len()) {
            let query = neo4rs::query(&text).param("rows", BoltType::List(BoltList::from(run)));
            queries.push(if reserved {
                query.param("reserved", rows::crawls_param(rows::RESERVED_PROPS))
            } else {
                query
            });
        }
    }
    queries
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

    #[test]
    fn a_statement_stays_under_the_byte_budget_and_keeps_row_order() {
        let rows: Vec<BoltType> = (0..1000)
            .map(|i| BoltType::from(format!("/works/OL{i:0>60}W")))
            .collect();
        let runs = chunks(rows.clone(), 400);
        assert!(runs.len() > 1);
        assert!(
            runs.iter()
                .all(|run| 400 + run.iter().map(wire_size).sum::<usize>() <= STATEMENT_BYTES)
        );
        assert_eq!(runs.concat(), rows);

        let huge = BoltType::from("x".repeat(3 * STATEMENT_BYTES));
        let runs = chunks(vec![rows[0].clone(), huge.clone(), rows[1].clone()], 0);
        assert_eq!(runs.len(), 3, "a row over the budget goes alone");
    }
}
