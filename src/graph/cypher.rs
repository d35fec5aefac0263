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
//! - an edge MERGEs its endpoints, creating a missing one as `stub = true` with only its key;
//! - every node and relationship a row touches gets its crawl added to `crawls` (a set: the id
//!   is appended only when absent) and `updated_at` set to the transaction's clock.

use crate::message::{Label, Rel};

/// Appends `row.crawl` to `var.crawls` unless it is there already.
fn crawls_union(var: &str) -> String {
    format!(
        "{var}.crawls = CASE WHEN row.crawl IN coalesce({var}.crawls, []) \
         THEN {var}.crawls ELSE coalesce({var}.crawls, []) + row.crawl END"
    )
}

/// Writes a batch of node records of one label; `$rows` is a list of `{key, crawl, props}`.
pub fn merge_nodes(label: Label) -> String {
    format!(
        "UNWIND $rows AS row \
         MERGE (n:{label} {{key: row.key}}) \
         SET n += row.props, n.stub = false, n.updated_at = datetime(), {crawls}",
        label = label.as_str(),
        crawls = crawls_union("n"),
    )
}

/// Writes a batch of relationships of one type between one pair of labels, creating missing
/// endpoints as stubs; `$rows` is a list of `{from, to, crawl}`.
pub fn merge_edges(rel: Rel, from: Label, to: Label) -> String {
    format!(
        "UNWIND $rows AS row \
         MERGE (a:{from} {{key: row.from}}) ON CREATE SET a.stub = true \
         MERGE (b:{to} {{key: row.to}}) ON CREATE SET b.stub = true \
         MERGE (a)-[r:{rel}]->(b) \
         SET a.updated_at = datetime(), {a_crawls}, \
             b.updated_at = datetime(), {b_crawls}, \
             r.updated_at = datetime(), {r_crawls}",
        from = from.as_str(),
        to = to.as_str(),
        rel = rel.as_str(),
        a_crawls = crawls_union("a"),
        b_crawls = crawls_union("b"),
        r_crawls = crawls_union("r"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_take_every_value_from_parameters() {
        let text = merge_edges(Rel::ABOUT, Label::Work, Label::Subject);
        assert!(text.contains("MERGE (a:Work {key: row.from})"), "{text}");
        assert!(text.contains("MERGE (a)-[r:ABOUT]->(b)"), "{text}");
        assert_eq!(
            merge_nodes(Label::Author),
            merge_nodes(Label::Author),
            "one text per shape, so Neo4j's plan cache hits"
        );
        assert!(!merge_nodes(Label::Edition).contains('\''), "no literals");
    }
}
