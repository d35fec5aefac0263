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
//!   only for the edge), and so is a subject: a subject is only a string records name (Open
//!   Library builds its page from them), so one that no record names any more is not in the
//!   catalogue, and an import of the newer dump would not have it; a concurrent writer that links it meanwhile makes that delete fail
//!   at commit, which [`super::WriteError::classify_code`] files as transient, so the batch
//!   is retried and sees the new relationship;
//! - an edge's endpoints are MERGEd first (once per distinct key in the batch), a missing one
//!   created as `stub = true` with only its key; then the relationship is MERGEd between them;
//! - every node and relationship a row touches gets its crawl added to `crawls` and
//!   `updated_at` set to the transaction's clock. `crawls` keeps the [`MAX_CRAWLS_KEPT`] most
//!   recently added distinct ids (a set: an id already present is not added again), and
//!   `crawl_count` counts every id ever added, so a subject every crawl touches does not grow a
//!   list without bound. An id that fell out of the list and comes back counts again.
//!
//! Records that are gone (a node message with `gone`, see [`super::tombstone`]) follow deletes
//! and merges with the same revision order:
//! - **tombstone**: a gone row at revision `r` for key `k` MERGEs `(:Tombstone {key: k})`
//!   (unique by migration `0002`), which keeps the highest revision seen, with that gone's
//!   `redirect` target (absent for a delete) and `last_modified`. It carries no `crawls`, so a
//!   crawl's snapshot (`$id IN n.crawls`) never sees it; it is never deleted;
//! - **the live node**: if the node of `k` has no revision or one `<= r`, every property but
//!   the writer's own ([`super::rows::RESERVED_PROPS`]) is removed, and so is every outgoing
//!   relationship written at a revision `<= r` or at none (a deleted or merged record names
//!   nothing; one written at a higher revision belongs to a newer record and stays). The node
//!   becomes a stub at `revision = r`; if nothing links to it any more it is deleted, and so is
//!   every stub at the far end of a removed relationship that is left with none. A node at a
//!   revision above `r` is left alone: the gone is older than what the graph holds;
//! - **later rows of the key**: a record row of `k` at a revision `<=` the tombstone's (or
//!   at none) is refused whole: no property, no `crawls`, no node and no stub created. An
//!   edge row from `k` at a revision `<=` the tombstone's writes nothing and creates no stub at
//!   either end; one without a revision (read off a list page) is refused unless `k`'s node
//!   holds a revision above the tombstone's (the key came back). A record above the tombstone
//!   is applied by the rules above, which is how a key comes back. A stub created for a
//!   tombstoned key (the end of another record's edge) starts at the tombstone's revision, so
//!   it reads the same whether the gone arrived before or after that edge;
//! - **one batch**: rows of one key are reduced as if written one after the other with the
//!   highest revision last; a record and a gone at the **same revision: the gone wins** (a
//!   delete or merge is the record's last word at that revision, and refusing the record
//!   keeps both orders equal). A batch whose record is above its gone writes the tombstone
//!   and the record and does not strip (as if the gone came first and the record after).
//!   Statements run tombstones first, then the stripping, then records, then edges, so a row
//!   of the same batch sees the tombstone.
//!
//! So whatever order a gone, older records and older edges of a key arrive in, the graph ends
//! the same. The one exception is relationships read off list pages (no revision) written
//! before a gone that a record above it later overrides: those went with the gone, and come
//! back with the next read of the list page.

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
/// saw relationships whose ends had no key). A row at or below the key's tombstone is
/// dropped before anything is merged.
pub fn merge_nodes(label: Label) -> String {
    format!(
        "UNWIND $rows AS row \
         WITH row WHERE NOT EXISTS {{ MATCH (g:Tombstone {{key: row.key}}) \
              WHERE row.revision IS NULL OR row.revision <= g.revision }} \
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
         WITH DISTINCT m WHERE m IS NOT NULL AND (m.stub = true OR m:Subject) \
              AND NOT EXISTS {{ (m)--() }} \
         DELETE m",
        label = label.as_str(),
        crawls = crawls_union("n"),
    )
}

/// Whether the tombstone of `key` refuses an edge from it at `revision` (Cypher expressions):
/// a revision at or below the tombstone's, or no revision while the start node (label
/// `from`) holds none above the tombstone's.
fn tombstone_refuses(key: &str, revision: &str, from: Label) -> String {
    format!(
        "EXISTS {{ MATCH (g:Tombstone {{key: {key}}}) \
         WHERE ({revision} IS NOT NULL AND {revision} <= g.revision) \
            OR ({revision} IS NULL AND NOT EXISTS {{ MATCH (s:{from} {{key: {key}}}) \
                WHERE s.revision > g.revision }}) }}",
        from = from.as_str(),
    )
}

/// Touches the start nodes of a batch's relationships, one row per distinct key: a missing
/// one is created as a stub with only its key (and the revision of its tombstone, if it has
/// one); every one records the crawls of its edges. `$rows` is a list of
/// `{key, crawls, revision?, unversioned}`: the highest revision of the key's edges and
/// whether any of them has none. A start whose tombstone refuses every one of its edges is
/// not touched.
pub fn merge_endpoints(label: Label) -> String {
    format!(
        "UNWIND $rows AS row \
         OPTIONAL MATCH (g:Tombstone {{key: row.key}}) \
         WITH row, g.revision AS gone \
         WHERE gone IS NULL OR row.revision > gone \
            OR (row.unversioned AND EXISTS {{ MATCH (s:{label} {{key: row.key}}) \
                WHERE s.revision > gone }}) \
         MERGE (n:{label} {{key: row.key}}) ON CREATE SET n.stub = true, n.revision = gone \
         WITH n, row, coalesce(n.crawls, []) AS seen, n.crawl_count AS counted \
         SET n.updated_at = datetime(), {crawls}",
        label = label.as_str(),
        crawls = crawls_union("n"),
    )
}

/// Touches the end nodes of a batch's relationships from one start label, one row per
/// distinct key, like [`merge_endpoints`], but only for a key at least one of whose edges will
/// be written: `$rows` is a list of `{key, crawls, froms: [{key, revision?}]}`, and an edge
/// whose start node already holds a newer revision, or whose start's tombstone refuses it, is
/// ignored, so it must not leave a stub.
pub fn merge_ends(to: Label, from: Label) -> String {
    format!(
        "UNWIND $rows AS row \
         WITH row WHERE any(f IN row.froms WHERE (f.revision IS NULL OR \
              NOT EXISTS {{ MATCH (a:{from} {{key: f.key}}) WHERE a.revision > f.revision }}) \
              AND NOT {refused}) \
         OPTIONAL MATCH (g:Tombstone {{key: row.key}}) \
         WITH row, g.revision AS gone \
         MERGE (n:{to} {{key: row.key}}) ON CREATE SET n.stub = true, n.revision = gone \
         WITH n, row, coalesce(n.crawls, []) AS seen, n.crawl_count AS counted \
         SET n.updated_at = datetime(), {crawls}",
        to = to.as_str(),
        from = from.as_str(),
        refused = tombstone_refuses("f.key", "f.revision", from),
        crawls = crawls_union("n"),
    )
}

/// Writes a batch of relationships of one type between one pair of labels, whose endpoints
/// the same transaction has already merged ([`merge_endpoints`], [`merge_ends`]), so they are
/// found through the key index; `$rows` is a list of `{from, to, crawls, revision?}`. A row
/// older than its start node's revision is skipped; the relationship keeps the highest
/// revision that wrote it. A row the start's tombstone refuses is skipped too.
pub fn merge_edges(rel: Rel, from: Label, to: Label) -> String {
    format!(
        "UNWIND $rows AS row \
         MATCH (a:{from} {{key: row.from}}) \
         WHERE (row.revision IS NULL OR a.revision IS NULL OR row.revision >= a.revision) \
           AND NOT {refused} \
         MATCH (b:{to} {{key: row.to}}) \
         MERGE (a)-[r:{rel}]->(b) \
         WITH r, row, coalesce(r.crawls, []) AS seen, r.crawl_count AS counted \
         SET r.updated_at = datetime(), {crawls}, \
             r.revision = CASE WHEN row.revision IS NULL OR r.revision >= row.revision \
                          THEN r.revision ELSE row.revision END",
        from = from.as_str(),
        to = to.as_str(),
        rel = rel.as_str(),
        refused = tombstone_refuses("row.from", "row.revision", from),
        crawls = crawls_union("r"),
    )
}

/// Records the tombstones of a batch's gone rows, one row per key:
/// `$rows` is a list of `{key, revision, redirect?, last_modified?}`. The tombstone keeps the
/// highest revision seen and that gone's target and `last_modified` (a tie: the later row's).
/// `updated_at` is the writer's clock, as on every node; there is no `crawls`.
pub fn merge_tombstones() -> String {
    "UNWIND $rows AS row \
     MERGE (t:Tombstone {key: row.key}) \
     WITH t, row, t.revision AS had \
     FOREACH (_ IN CASE WHEN had IS NULL OR row.revision >= had THEN [1] ELSE [] END | \
         SET t.revision = row.revision, t.redirect = row.redirect, \
             t.last_modified = row.last_modified) \
     SET t.updated_at = datetime()"
        .to_owned()
}

/// Strips the live nodes of one label whose records are gone: `$rows` is a list of
/// `{key, revision}`, one per key, and `$reserved` the writer's own property names. A node at
/// a revision above the row's is left alone. Otherwise its properties but the reserved ones
/// go, so do its outgoing relationships written at the row's revision or below (or at none),
/// and it becomes a stub at the row's revision; then every node this touched (the stripped
/// nodes, the far ends of removed relationships) that is a stub or a subject with no relationship left is
/// deleted, each once (the far ends have other labels than the stripped nodes, so one row
/// never deletes a node another row of the statement still reads).
pub fn strip_gone(label: Label) -> String {
    format!(
        "UNWIND $rows AS row \
         MATCH (n:{label} {{key: row.key}}) \
         WHERE n.revision IS NULL OR n.revision <= row.revision \
         FOREACH (k IN [k IN keys(n) WHERE NOT k IN $reserved] | REMOVE n[k]) \
         SET n.stub = true, n.revision = row.revision, n.updated_at = datetime() \
         WITH n, row \
         OPTIONAL MATCH (n)-[old]->(m) WHERE old.revision IS NULL OR old.revision <= row.revision \
         DELETE old \
         WITH collect(DISTINCT n) + collect(DISTINCT m) AS touched \
         UNWIND touched AS x \
         WITH DISTINCT x WHERE (x.stub = true OR x:Subject) AND NOT EXISTS {{ (x)--() }} \
         DELETE x",
        label = label.as_str(),
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
