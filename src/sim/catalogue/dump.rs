//! The catalogue as dump records: every record Open Library's monthly dump would hold, in a
//! fixed order, each with the columns of a dump line.

use super::*;

/// One record of a dump: the first four tab-separated columns and the JSON (the record
/// exactly as `/works/{id}.json` and friends answer it).
#[derive(Debug, Clone, PartialEq)]
pub struct DumpRecord {
    /// `/type/work`, `/type/author`, `/type/edition`, `/type/redirect` or `/type/delete`.
    pub kind: &'static str,
    /// The record's key.
    pub key: String,
    /// Its `revision`.
    pub revision: i64,
    /// Its `last_modified` value (`2021-03-01T09:00:00.000000`).
    pub last_modified: String,
    /// The record.
    pub json: Value,
}

impl DumpRecord {
    fn of(kind: &'static str, key: &str, json: Value) -> Self {
        DumpRecord {
            kind,
            key: key.to_owned(),
            revision: json["revision"].as_i64().unwrap_or(1),
            last_modified: json["last_modified"]["value"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            json,
        }
    }
}

impl Catalogue {
    /// Every record of the catalogue as a dump of its current state holds it: the live
    /// authors, works and editions (added ones last), then the redirects and deletes in key
    /// order (records merged away or deleted by changes among them), each at its current
    /// revision. Each JSON is rendered when the iterator reaches it, so a writer holds one
    /// record at a time.
    pub fn dump_records(&self) -> impl Iterator<Item = DumpRecord> + '_ {
        let authors = self
            .live_authors()
            .map(|(_, a)| DumpRecord::of("/type/author", &a.key, self.author_json(a)));
        let works = self
            .live_works()
            .map(|(_, w)| DumpRecord::of("/type/work", &w.key, self.work_json(w)));
        let editions = self
            .live_editions()
            .map(|(_, e)| DumpRecord::of("/type/edition", &e.key, self.edition_json(e)));
        let mut stale: Vec<(&String, &Entry)> = self
            .records
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Redirect { .. } | Entry::Deleted(_)))
            .collect();
        stale.sort_by(|a, b| a.0.cmp(b.0));
        let stale = stale.into_iter().filter_map(|(key, entry)| {
            let kind = match entry {
                Entry::Redirect { .. } => "/type/redirect",
                _ => "/type/delete",
            };
            Some(DumpRecord::of(kind, key, Self::stub_json(key, entry)?))
        });
        authors.chain(works).chain(editions).chain(stale)
    }
}
