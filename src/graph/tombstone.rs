//! Gone messages: a record that Open Library now answers as `/type/delete` or `/type/redirect`
//! (`Node.gone`, published by the worker's freshness jobs), checked and reduced to the
//! tombstone the graph keeps.
//!
//! A gone message is ordered against the key's records and edges by its `revision` alone, so
//! one without an integer `revision` cannot be placed and is dead-lettered (`invalid_gone`),
//! like a redirect to a key of another kind or to itself: a merge moves an entity to another
//! key of its own kind. What the writer does with a valid one (the tombstone, the live node
//! stripped, later and older rows refused) is in [`super::cypher`]'s module doc.

use neo4rs::{BoltMap, BoltType};
use serde_json::Value;

use super::rows::{RowError, check_crawl, check_key, truncated};
use crate::message::{Gone, Label, Node};

/// A gone record from the results topic, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoneRow {
    /// The label of the key (agrees with its prefix): the live node it strips has it.
    pub label: Label,
    /// The Open Library key that is gone.
    pub key: String,
    /// The crawl whose job found it gone (kept off the graph: a tombstone has no `crawls`).
    pub crawl_id: String,
    /// The revision of the delete or redirect record: every record and edge of the key at or
    /// below it is refused from then on.
    pub revision: i64,
    /// The delete or redirect record's `last_modified`, when the message carries it as text.
    pub last_modified: Option<String>,
    /// For a redirect, the key it points to (same kind, another key); `None` for a delete.
    pub redirect: Option<String>,
}

impl GoneRow {
    /// Checks a node message marked `gone` and keeps what the tombstone stores.
    pub fn from_message(node: &Node) -> Result<Self, RowError> {
        let invalid = |why| RowError::InvalidGone {
            key: truncated(&node.key),
            why,
        };
        let gone = node
            .gone
            .as_ref()
            .ok_or_else(|| invalid("not marked gone"))?;
        check_crawl(&node.crawl_id)?;
        let label = check_key(&node.key)?;
        if label != node.label {
            return Err(RowError::InvalidKey {
                key: truncated(&node.key),
                why: "prefix names another label than the message's",
            });
        }
        let revision = node
            .props
            .get("revision")
            .and_then(Value::as_i64)
            .ok_or_else(|| invalid("no integer revision"))?;
        let last_modified = node
            .props
            .get("last_modified")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let redirect = match gone {
            Gone::Deleted => None,
            Gone::Redirected { to } => {
                let to_label = check_key(to).map_err(|_| invalid("redirect to an invalid key"))?;
                if to_label != label {
                    return Err(invalid("redirect to a key of another kind"));
                }
                if *to == node.key {
                    return Err(invalid("redirect to itself"));
                }
                Some(to.clone())
            }
        };
        Ok(Self {
            label,
            key: node.key.clone(),
            crawl_id: node.crawl_id.clone(),
            revision,
            last_modified,
            redirect,
        })
    }

    /// The tombstone statement's row: `{key, revision, redirect?, last_modified?}` (absent
    /// fields read as null, which removes them from a tombstone this row replaces).
    pub fn tombstone_param(&self) -> BoltType {
        let mut row = BoltMap::with_capacity(4);
        row.put("key".into(), self.key.as_str().into());
        row.put("revision".into(), self.revision.into());
        if let Some(to) = &self.redirect {
            row.put("redirect".into(), to.as_str().into());
        }
        if let Some(modified) = &self.last_modified {
            row.put("last_modified".into(), modified.as_str().into());
        }
        BoltType::Map(row)
    }

    /// The statement that strips the live node's row: `{key, revision}`.
    pub fn strip_param(&self) -> BoltType {
        let mut row = BoltMap::with_capacity(2);
        row.put("key".into(), self.key.as_str().into());
        row.put("revision".into(), self.revision.into());
        BoltType::Map(row)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::graph::{NodeRow, Row};

    fn gone(key: &str, label: Label, gone: Gone, props: Value) -> Node {
        Node {
            gone: Some(gone),
            ..crate::graph::rows::tests::node(key, label, props)
        }
    }

    #[test]
    fn a_gone_message_becomes_a_tombstone_row_with_its_revision() {
        let node = gone(
            "/works/OL1W",
            Label::Work,
            Gone::Redirected {
                to: "/works/OL2W".to_owned(),
            },
            json!({"revision": 7, "last_modified": "2024-01-01T00:00:00", "title": "ignored"}),
        );
        let Row::Gone(row) = Row::of_node(&node).unwrap() else {
            panic!("a gone message is a gone row");
        };
        assert_eq!(row.revision, 7);
        assert_eq!(row.redirect.as_deref(), Some("/works/OL2W"));
        assert_eq!(row.last_modified.as_deref(), Some("2024-01-01T00:00:00"));
        let err = NodeRow::from_message(&node).unwrap_err();
        assert_eq!(err.reason(), "invalid_gone", "never merged as a record");
    }

    #[test]
    fn a_gone_message_that_cannot_be_ordered_or_filed_is_refused() {
        let to = |to: &str| Gone::Redirected { to: to.to_owned() };
        let cases = [
            gone("/works/OL1W", Label::Work, Gone::Deleted, json!({})),
            gone(
                "/works/OL1W",
                Label::Work,
                Gone::Deleted,
                json!({"revision": "7"}),
            ),
            gone(
                "/works/OL1W",
                Label::Work,
                to("/authors/OL1A"),
                json!({"revision": 7}),
            ),
            gone(
                "/works/OL1W",
                Label::Work,
                to("/works/OL1W"),
                json!({"revision": 7}),
            ),
            gone(
                "/works/OL1W",
                Label::Work,
                to("search:x"),
                json!({"revision": 7}),
            ),
        ];
        for node in cases {
            let err = Row::of_node(&node).unwrap_err();
            assert_eq!(err.reason(), "invalid_gone", "{node:?}: {err}");
        }
        let err = Row::of_node(&gone(
            "/people/OL1P",
            Label::Work,
            Gone::Deleted,
            json!({"revision": 7}),
        ))
        .unwrap_err();
        assert_eq!(err.reason(), "invalid_key", "a key with no label");
        let err = Row::of_node(&gone(
            "/authors/OL1A",
            Label::Work,
            Gone::Deleted,
            json!({"revision": 7}),
        ))
        .unwrap_err();
        assert_eq!(err.reason(), "invalid_key");
    }
}
