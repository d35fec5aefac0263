//! The Cypher the writer runs: one statement shape per label and per relationship type.
//!
//! Labels and types are spliced in from the closed enums of [`crate::message`] (Cypher has no
//! parameters for them); everything that comes from a message is a parameter. Each shape's
//! text is the same on every call, so Neo4j plans it once and takes it from its query cache
//! afterwards.
//!
//! The merge rules the contract asks for live here:
//! - **revisions**: a node row carrying a `revision` (every record does; see
//!   `Entity::node_props` of the record parser) replaces the node's properties only when it
//!   is at least as new as the node's (a property the newer record dropped goes too); an
//!   older one changes nothing but `crawls` and `updated_at`, whatever order the messages
//!   arrive in. A row without a revision (a subject, a message from before revisions)
//!   sets its properties over the old ones (`+=` of a map that holds no empty values, see
//!   [`super::rows`]) only on a node that has no revision either, so a later record fills what
//!   a stub lacked and an empty value never erases a known one. Either way `stub = false`;
//! - **a record's outgoing edges**: a relationship named by a record carries that record's
//!   `revision` (the maximum of every edge row that wrote it). When a node row at revision `r`
//!   is applied, the node's outgoing relationships written at a revision below `r` are deleted:
//!   the new record's own edges (revision `r`, on the edges topic) either arrived already and
//!   are kept, or arrive later and are written then. An edge row older than its start node's
//!   current revision is ignored, its relationship not written and its end not created as a
//!   stub. So whichever of a node and its edges comes first, and however old revisions are
//!   replayed, the graph ends with exactly the newest record's edges. Relationships read off
//!   list pages (an author's works, a subject's works) carry no revision and are never pruned
//!   this way. A stub left with no relationship by such a deletion is deleted too (it stood
//!   only for the edge); a concurrent writer that links it meanwhile makes that delete fail
//!   at commit, which [`super::WriteError::classify_code`] files as transient, so the batch
//!   is retried and sees the new relationship;
//! - an edge's endpoints are MERGEd first (once per distinct key in the batch), a missing one
//!   created as `stub = true` with only its key; then the relationship is MERGEd between them;
//! - every node and relationship a row touches gets its crawl added to `crawls` and
//!   `updated_at` set to the transaction's clock. `crawls` keeps the [`MAX_CRAWLS_KEPT`] most
//!   recently added distinct ids (a set: an id already present is not added again), and
//!   `crawl_count` counts every id ever added, so a subject every crawl touches does not grow a
//!   list without bound. An id that fell out of the list and comes back counts again.

use crate::message::{Label, Rel};

/// How many crawl ids a node or relationship keeps in `crawls`: enough for every crawl of a
/// day of testing or a week of standing crawls to find what it touched (`$id IN n.crawls`),
/// small enough (32 × 36 bytes) that a hot subject's record stays a few kilobytes and its
/// update cheap. Older ids are counted in `crawl_count`.
pub const MAX_CRAWLS_KEPT: usize = 32;

/// Sets `var.crawls` to `seen` (its value before this row) with every id of `row.crawls` not
/// yet in it appended, keeping the last [`MAX_CRAWLS_KEPT`], and `var.crawl_count` to the
/// number of distinct ids ever added (`counted` before, `size(seen)` for data written before
/// the count existed).
fn crawls_union(var: &str) -> String {
    format!(
        "{var}.crawls = reduce(c = seen, x IN row.crawls | \
         CASE WHEN x IN c THEN c ELSE c + x END)[-{max}..], \
         {var}.crawl_count = coalesce(counted, size(seen)) + \
         size([x IN row.crawls WHERE NOT x IN seen])",
        max = MAX_CRAWLS_KEPT
    )
}

/// Writes a batch of node records of one label; `$rows` is a list of
/// `{key, crawls, props, revision?}` with one row per key (see [`super::statements`]), and
/// `$reserved` the writer's own property names ([`super::rows::RESERVED_PROPS`]), which a
/// newer record never removes. A newer record's properties are set with `+=` after the ones
/// it no longer has are removed one by one: `key` is never written, so a reader never sees a
/// node without it (a `SET n = …` would drop and re-add it, and Neo4j's read-committed readers
/// saw relationships whose ends had no key).
pub fn merge_nodes(label: Label) -> String {
    format!(
        "UNWIND $rows AS row \
         MERGE (n:{label} {{key: row.key}}) \
         WITH n, row, n.revision AS had, coalesce(n.crawls, []) AS seen, n.crawl_count AS counted \
         WITH n, row, seen, counted, \
              row.revision IS NOT NULL AND (had IS NULL OR row.revision >= had) AS newer, \
              row.revision IS NULL AND had IS NULL AS unversioned \
         FOREACH (k IN CASE WHEN newer THEN [k IN keys(n) WHERE NOT k IN keys(row.props) \
                  AND NOT k IN $reserved] ELSE [] END | REMOVE n[k]) \
         FOREACH (_ IN CASE WHEN newer OR unversioned THEN [1] ELSE [] END | SET n += row.props) \
         SET n.stub = false, n.updated_at = datetime(), {crawls} \
         WITH n, row, newer WHERE newer \
         OPTIONAL MATCH (n)-[old]->(m) WHERE old.revision < row.revision \
         DELETE old \
         WITH DISTINCT m WHERE m IS NOT NULL AND m.stub = true AND NOT EXISTS {{ (m)--() }} \
         DELETE m",
        label = label.as_str(),
        crawls = crawls_union("n"),
    )
}

/// Touches the start nodes of a batch's relationships, one row per distinct key: a missing
/// one is created as a stub with only its key; every one records the crawls of its edges.
/// `$rows` is a list of `{key, crawls}`.
pub fn merge_endpoints(label: Label) -> String {
    format!(
        "UNWIND $rows AS row \
         MERGE (n:{label} {{key: row.key}}) ON CREATE SET n.stub = true \
         WITH n, row, coalesce(n.crawls, []) AS seen, n.crawl_count AS counted \
         SET n.updated_at = datetime(), {crawls}",
        label = label.as_str(),
        crawls = crawls_union("n"),
    )
}

/// Touches the end nodes of a batch's relationships from one start label, one row per
/// distinct key, like [`merge_endpoints`], but only for a key at least one of whose edges will
/// be written: `$rows` is a list of `{key, crawls, froms: [{key, revision?}]}`, and an edge
/// whose start node already holds a newer revision is ignored, so it must not leave a stub.
pub fn merge_ends(to: Label, from: Label) -> String {
    format!(
        "UNWIND $rows AS row \
         WITH row WHERE any(f IN row.froms WHERE f.revision IS NULL OR \
              NOT EXISTS {{ MATCH (a:{from} {{key: f.key}}) WHERE a.revision > f.revision }}) \
         MERGE (n:{to} {{key: row.key}}) ON CREATE SET n.stub = true \
         WITH n, row, coalesce(n.crawls, []) AS seen, n.crawl_count AS counted \
         SET n.updated_at = datetime(), {crawls}",
        to = to.as_str(),
        from = from.as_str(),
        crawls = crawls_union("n"),
    )
}

/// Writes a batch of relationships of one type between one pair of labels, whose endpoints
/// the same transaction has already merged ([`merge_endpoints`], [`merge_ends`]), so they are
/// found through the key index; `$rows` is a list of `{from, to, crawls, revision?}`. A row
/// older than its start node's revision is skipped; the relationship keeps the highest
/// revision that wrote it.
pub fn merge_edges(rel: Rel, from: Label, to: Label) -> String {
    format!(
        "UNWIND $rows AS row \
         MATCH (a:{from} {{key: row.from}}) \
         WHERE row.revision IS NULL OR a.revision IS NULL OR row.revision >= a.revision \
         MATCH (b:{to} {{key: row.to}}) \
         MERGE (a)-[r:{rel}]->(b) \
         WITH r, row, coalesce(r.crawls, []) AS seen, r.crawl_count AS counted \
         SET r.updated_at = datetime(), {crawls}, \
             r.revision = CASE WHEN row.revision IS NULL OR r.revision >= row.revision \
                          THEN r.revision ELSE row.revision END",
        from = from.as_str(),
        to = to.as_str(),
        rel = rel.as_str(),
        crawls = crawls_union("r"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_take_every_value_from_parameters() {
        let text = merge_edges(Rel::ABOUT, Label::Work, Label::Subject);
        assert!(text.contains("MATCH (a:Work {key: row.from})"), "{text}");
        assert!(text.contains("MERGE (a)-[r:ABOUT]->(b)"), "{text}");
        assert_eq!(
            merge_nodes(Label::Author),
            merge_nodes(Label::Author),
            "one text per shape, so Neo4j's plan cache hits"
        );
        assert!(!merge_nodes(Label::Edition).contains('\''), "no literals");
    }
}
