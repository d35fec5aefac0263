//! Reading Open Library JSON value by value: the leniency of [`super`]'s parsers.
//!
//! Real records carry single values of the wrong shape (a `null` among the covers, an
//! author role without `author`, a page entry without its key). These readers keep what has
//! the expected shape and name what they leave out, so one bad value costs that value, never
//! the record and the subtree the crawl would reach through it.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::message::Label;

/// Reads a record's fields one by one, keeping what has the expected shape and noting what
/// does not in `dropped` (as `field` or `field[index]`). One bad value (a `null` among the
/// covers, an author role without `author`) costs that value, never the record and its
/// subtree: real Open Library data has such records. An absent or `null` field is simply
/// absent, not dropped.
pub(super) struct Fields<'a> {
    record: &'a serde_json::Map<String, Value>,
    pub(super) dropped: Vec<String>,
}

impl<'a> Fields<'a> {
    pub(super) fn new(record: &'a serde_json::Map<String, Value>) -> Self {
        Self {
            record,
            dropped: Vec::new(),
        }
    }

    /// The field's value unless it is absent or `null`.
    fn present(&self, name: &str) -> Option<&'a Value> {
        self.record.get(name).filter(|v| !v.is_null())
    }

    /// A present field read by `read`; dropped when `read` refuses it.
    fn one<T>(&mut self, name: &str, read: impl Fn(&Value) -> Option<T>) -> Option<T> {
        let value = self.present(name)?;
        let read = read(value);
        if read.is_none() {
            self.dropped.push(name.to_owned());
        }
        read
    }

    pub(super) fn string(&mut self, name: &str) -> Option<String> {
        self.one(name, |v| v.as_str().map(str::to_owned))
    }

    /// A text field: Open Library writes both a plain string and
    /// `{"type": "/type/text", "value": …}`, often within one dump.
    pub(super) fn text(&mut self, name: &str) -> Option<String> {
        self.one(name, |v| {
            v.as_str()
                .or_else(|| v.get("value").and_then(Value::as_str))
                .map(str::to_owned)
        })
    }

    pub(super) fn integer(&mut self, name: &str) -> Option<i64> {
        self.one(name, Value::as_i64)
    }

    /// A list field: its items that `read` accepts, in order; each refused item is dropped
    /// on its own. A field that is not a list is dropped whole. `None` when the field is
    /// absent or every item was dropped (so a node never carries a list of nothing valid;
    /// a list that was empty to begin with stays an empty list).
    pub(super) fn list<T>(
        &mut self,
        name: &str,
        read: impl Fn(&Value) -> Option<T>,
    ) -> Option<Vec<T>> {
        let value = self.present(name)?;
        let Some(items) = value.as_array() else {
            self.dropped.push(name.to_owned());
            return None;
        };
        let mut kept = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match read(item) {
                Some(v) => kept.push(v),
                None => self.dropped.push(format!("{name}[{i}]")),
            }
        }
        if kept.is_empty() && !items.is_empty() {
            None
        } else {
            Some(kept)
        }
    }

    pub(super) fn strings(&mut self, name: &str) -> Option<Vec<String>> {
        self.list(name, |v| v.as_str().map(str::to_owned))
    }

    /// Keys of `label` found by `at` in each item of a list (`authors[].author.key`,
    /// `works[].key`): an item whose key is missing or names another kind is dropped, so a
    /// relationship never points at a key the graph would file under another label.
    pub(super) fn keys(&mut self, name: &str, label: Label, at: &[&str]) -> Vec<String> {
        self.list(name, |item| {
            at.iter()
                .try_fold(item, |v, field| v.get(field))
                .and_then(Value::as_str)
                .filter(|key| Label::of_key(key) == Some(label))
                .map(str::to_owned)
        })
        .unwrap_or_default()
    }
}

/// The items of a list that decode as `T`, in order, and the `name[index]` of those that do
/// not: one bad entry of a page costs that entry, not the page.
pub(super) fn each<T: DeserializeOwned>(name: &str, items: Vec<Value>) -> (Vec<T>, Vec<String>) {
    let mut kept = Vec::with_capacity(items.len());
    let mut dropped = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match serde_json::from_value(item) {
            Ok(v) => kept.push(v),
            Err(_) => dropped.push(format!("{name}[{i}]")),
        }
    }
    (kept, dropped)
}
