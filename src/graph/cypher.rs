//! The Cypher the writer runs: one statement shape per label and per relationship type.
//!
//! Labels and types are spliced in from the closed enums of [`crate::message`] (Cypher has no
//! parameters for them); everything that comes from a message is a parameter. Each shape's
//! text is the same on every call, so Neo4j plans it once and takes it from its query cache
//! afterwards.
//!
//! The merge rules the contract asks for live here:
//! - a node record sets its properties over the old ones (`+=` of a map that holds no empty
//!   values, see [`super::rows`]), so a later record fills what a stub lacked and an empty
//!   value never erases a known one, and it sets `stub = false`;
//! - an edge's endpoints are MERGEd first (once per distinct key in the batch), a missing one
//!   created as `stub = true` with only its key; then the relationship is MERGEd between them;
//! - every node and relationship a row touches gets its crawl added to `crawls` (a set: the id
//!   is appended only when absent) and `updated_at` set to the transaction's clock.

use crate::message::{Label, Rel};

/// `var.crawls` with every id of `row.crawls` not yet in it appended (a set union that keeps
/// first-seen order).
fn crawls_union(var: &str) -> String {
    format!(
        "{var}.crawls = reduce(c = coalesce({var}.crawls, []), x IN row.crawls | \
         CASE WHEN x IN c THEN c ELSE c + x END)"
    )
}

/// Writes a batch of node records of one label; `$rows` is a list of `{key, crawls, props}`.
pub fn merge_nodes(label: Label) -> String {
    format!(
        "UNWIND $rows AS row \
         MERGE (n:{label} {{key: row.key}}) \
         SET n += row.props, n.stub = false, n.updated_at = datetime(), {crawls}",
        label = label.as_str(),
        crawls = crawls_union("n"),
    )
}

/// Touches the endpoints of a batch's relationships, one row per distinct key: a missing one
/// is created as a stub with only its key; every one records the crawls of its edges. `$rows`
/// is a list of `{key, crawls}`.
pub fn merge_endpoints(label: Label) -> String {
    format!(
        "UNWIND $rows AS row \
         MERGE (n:{label} {{key: row.key}}) ON CREATE SET n.stub = true \
         SET n.updated_at = datetime(), {crawls}",
        label = label.as_str(),
        crawls = crawls_union("n"),
    )
}

/// Writes a batch of relationships of one type between one pair of labels, whose endpoints
/// the same transaction has already merged ([`merge_endpoints`]), so they are found through
/// the key index; `$rows` is a list of `{from, to, crawls}`.
pub fn merge_edges(rel: Rel, from: Label, to: Label) -> String {
    format!(
        "UNWIND $rows AS row \
         MATCH (a:{from} {{key: row.from}}) \
         MATCH (b:{to} {{key: row.to}}) \
         MERGE (a)-[r:{rel}]->(b) \
         SET r.updated_at = datetime(), {crawls}",
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
