//! `bookworm import FILE...`: Open Library's monthly dumps loaded into the graph through the
//! same messages and graph writers as a crawl.
//!
//! A dump line is `type \t key \t revision \t last_modified \t JSON`, the JSON being the
//! record exactly as the API answers it. Each line is read by the worker's own record parser
//! ([`crate::crawl::parse::parse_record`]: one parser, two sources) and becomes what a crawl
//! would publish for that record: its [`Node`] on the results topic and its outgoing
//! [`Edge`]s (work → authors and first `MAX_SUBJECTS_PER_NODE` subjects, edition → works and
//! authors), every one carrying the record's revision, so the graph writer's revision rules
//! (see `graph::cypher`) make an import, a crawl, and any replay of either commute. What a
//! crawl learns from pages a dump does not have:
//! - subjects: a crawl fetches `/subjects/<name>.json` for a subject's `name`; the import
//!   publishes a `Subject` node named by the record's own spelling of the subject (the first
//!   one that gives its key), once per subject per batch window ([`SubjectsSeen`]);
//! - an author's works and a work's editions lists: their relationships are the reverse of
//!   edges the work and edition records already name, so nothing is lost.
//!
//! Redirects and deletes apply as they do in a crawl: a crawl follows a redirect and crawls
//! its target in place of the source, and records a delete without a node; the dump holds
//! the target's own record, so both lines publish nothing and are counted. A line that
//! cannot be imported (not five columns, an unknown type, JSON the parser refuses, a key
//! column that is not the record's key) goes to the DLQ with reason `parse`, its file, line
//! number and the reason, and the import goes on.
//!
//! Imported nodes and relationships carry the crawl id `import:<date>`, the date being the
//! dump's (from the file name, `ol_dump_works_2021-04-30.txt.gz` → `import:2021-04-30`), so
//! `$id IN n.crawls` finds what a dump brought in; `--crawl-id` sets another.

pub mod checkpoint;
pub mod service;

use std::collections::HashSet;
use std::path::Path;

use chrono::Utc;
use serde_json::{Value, json};

use crate::crawl::parse::{ParseError, RecordAnswer, parse_record, subject_key};
use crate::kafka::publish::Record;
use crate::message::{Edge, Failure, FailureReason, Label, Node, PayloadExcerpt, VERSION};

/// The record types a dump line may carry; any other is an unknown type (dead-lettered).
pub const KNOWN_TYPES: [&str; 5] = [
    "/type/work",
    "/type/author",
    "/type/edition",
    "/type/redirect",
    "/type/delete",
];

/// The name the DLQ records of the importer give as their `worker`.
pub const IMPORTER_NAME: &str = "bookworm-import";

/// Why a dump line could not be imported: the DLQ record's `detail`.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// Fewer than five tab-separated columns (loaders in the wild drop these too).
    #[error("not five tab-separated columns ({0} found)")]
    Columns(usize),
    /// The line is not UTF-8.
    #[error("not UTF-8 text")]
    Encoding,
    /// The type column names a type the graph does not know.
    #[error("unknown type {0:?}")]
    UnknownType(String),
    /// The JSON column is not a record the parser accepts.
    #[error("{0}")]
    Parse(#[from] ParseError),
    /// The key column disagrees with the record's own key.
    #[error("key column {column} but the record's key is {record}")]
    KeyMismatch {
        /// The second column.
        column: String,
        /// The JSON's `key`.
        record: String,
    },
    /// The JSON is a `notfound` answer, not a record.
    #[error("a notfound answer, not a record")]
    NotFound,
}

/// The columns of one dump line.
#[derive(Debug, Clone, PartialEq)]
pub struct DumpLine<'a> {
    /// `/type/work`, …
    pub kind: &'a str,
    /// The record's key.
    pub key: &'a str,
    /// The revision column (the record's JSON is preferred when it has one).
    pub revision: Option<i64>,
    /// The record.
    pub json: &'a str,
}

/// Splits a dump line (without its line break) into its columns.
pub fn split_line(line: &[u8]) -> Result<DumpLine<'_>, LineError> {
    let text = std::str::from_utf8(line).map_err(|_| LineError::Encoding)?;
    let columns: Vec<&str> = text.splitn(5, '\t').collect();
    let [kind, key, revision, _modified, json] = columns[..] else {
        return Err(LineError::Columns(columns.len()));
    };
    if !KNOWN_TYPES.contains(&kind) {
        return Err(LineError::UnknownType(kind.chars().take(80).collect()));
    }
    Ok(DumpLine {
        kind,
        key,
        revision: revision.trim().parse().ok(),
        json,
    })
}

/// The key a line is sharded by: its key column, or the whole line when it has none.
pub fn shard_key(line: &[u8]) -> &[u8] {
    let mut columns = line.splitn(3, |b| *b == b'\t');
    match (columns.next(), columns.next()) {
        (Some(_), Some(key)) if !key.is_empty() => key,
        _ => line,
    }
}

/// What one line gives.
#[derive(Debug, Default)]
pub struct LineRecords {
    /// The records to publish.
    pub records: Vec<Record>,
    /// Of which record nodes (not subjects).
    pub nodes: u64,
    /// Of which subject nodes.
    pub subjects: u64,
    /// Of which relationships.
    pub edges: u64,
    /// The line was a redirect.
    pub redirect: bool,
    /// The line was a delete.
    pub delete: bool,
}

/// Subject keys whose node this importer published recently: a subject is named by up to
/// millions of works, and one node message per subject per window is enough (the writer
/// merges them anyway). Cleared when it reaches its bound, so memory stays bounded.
pub struct SubjectsSeen {
    keys: HashSet<String>,
    bound: usize,
}

impl SubjectsSeen {
    /// A set that forgets everything once it holds `bound` keys.
    pub fn new(bound: usize) -> Self {
        Self {
            keys: HashSet::new(),
            bound,
        }
    }

    /// Whether `key` is new (and remembers it).
    fn first(&mut self, key: &str) -> bool {
        if self.keys.contains(key) {
            return false;
        }
        if self.keys.len() >= self.bound {
            self.keys.clear();
        }
        self.keys.insert(key.to_owned());
        true
    }
}

/// Where the records of an import go, and what they carry.
#[derive(Debug, Clone)]
pub struct ImportTarget {
    /// Topic of nodes.
    pub results: String,
    /// Topic of relationships.
    pub edges: String,
    /// Topic of lines that could not be imported.
    pub dlq: String,
    /// The crawl id of every message.
    pub crawl_id: String,
    /// `MAX_SUBJECTS_PER_NODE`.
    pub max_subjects: usize,
}

fn record<T: serde::Serialize>(topic: &str, key: &str, message: &T) -> Record {
    Record {
        topic: topic.to_owned(),
        key: key.to_owned(),
        // Serialising these plain structs cannot fail.
        payload: serde_json::to_vec(message).unwrap_or_default(),
    }
}

impl ImportTarget {
    /// The records of one dump line, or why it has none.
    pub fn line_records(
        &self,
        line: &[u8],
        subjects: &mut SubjectsSeen,
    ) -> Result<LineRecords, LineError> {
        let columns = split_line(line)?;
        let mut out = LineRecords::default();
        let mut entity = match parse_record(columns.json.as_bytes())? {
            RecordAnswer::Entity(entity) => entity,
            RecordAnswer::Redirect { key, .. } | RecordAnswer::Deleted { key }
                if key != columns.key =>
            {
                return Err(LineError::KeyMismatch {
                    column: columns.key.to_owned(),
                    record: key,
                });
            }
            RecordAnswer::Redirect { .. } => {
                out.redirect = true;
                return Ok(out);
            }
            RecordAnswer::Deleted { .. } => {
                out.delete = true;
                return Ok(out);
            }
            RecordAnswer::NotFound { .. } => return Err(LineError::NotFound),
        };
        if entity.key != columns.key {
            return Err(LineError::KeyMismatch {
                column: columns.key.to_owned(),
                record: entity.key,
            });
        }
        if entity.revision.is_none() {
            entity.revision = columns.revision;
        }
        let now = Utc::now();
        let node = Node {
            v: VERSION,
            crawl_id: self.crawl_id.clone(),
            key: entity.key.clone(),
            label: entity.label,
            props: entity.node_props(),
            fetched_at: now,
            gone: None,
        };
        out.records.push(record(&self.results, &node.key, &node));
        out.nodes += 1;
        let outgoing = entity.outgoing(self.max_subjects);
        for (rel, to) in &outgoing {
            if to.starts_with("/subjects/") && subjects.first(to) {
                let name = entity
                    .links
                    .subjects
                    .iter()
                    .find(|s| subject_key(s).as_deref() == Some(to.as_str()));
                let subject = Node {
                    v: VERSION,
                    crawl_id: self.crawl_id.clone(),
                    key: to.clone(),
                    label: Label::Subject,
                    props: name
                        .map(|n| [("name".to_owned(), Value::from(n.trim()))].into())
                        .unwrap_or_default(),
                    fetched_at: now,
                    gone: None,
                };
                out.records.push(record(&self.results, to, &subject));
                out.subjects += 1;
            }
            let edge = Edge {
                v: VERSION,
                crawl_id: self.crawl_id.clone(),
                from: entity.key.clone(),
                to: to.clone(),
                rel: rel.as_str().to_owned(),
                discovered_at: now,
                revision: entity.revision,
            };
            out.records.push(record(&self.edges, &entity.key, &edge));
            out.edges += 1;
        }
        Ok(out)
    }

    /// The DLQ record of a line that could not be imported: the crawl DLQ's [`Failure`], its
    /// `job` naming the file, the line number, the key column and the line's first bytes.
    pub fn dead_letter(&self, file: &Path, line_no: u64, line: &[u8], error: &LineError) -> Record {
        let key = std::str::from_utf8(shard_key(line))
            .ok()
            .filter(|k| k.len() < 200 && !k.contains('\n'))
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}:{line_no}", file.display()));
        let failure = Failure {
            v: VERSION,
            crawl_id: self.crawl_id.clone(),
            job: json!({
                "file": file.display().to_string(),
                "line": line_no,
                "key": key,
                "text": PayloadExcerpt::of(line),
            }),
            reason: FailureReason::Parse,
            detail: error.to_string(),
            attempts: 1,
            failed_at: Utc::now(),
            worker: IMPORTER_NAME.to_owned(),
        };
        record(&self.dlq, &key, &failure)
    }
}

/// The default crawl id of an import of `file`: `import:<date>` with the date of the dump's
/// name (`ol_dump_works_2021-04-30.txt.gz`), else `import:<file name>`.
pub fn default_crawl_id(file: &Path) -> String {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.split('.').next().unwrap_or_default();
    let date = stem
        .rsplit('_')
        .next()
        .filter(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok());
    format!("import:{}", date.unwrap_or(stem))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> ImportTarget {
        ImportTarget {
            results: "r".into(),
            edges: "e".into(),
            dlq: "d".into(),
            crawl_id: "import:2021-03-31".into(),
            max_subjects: 10,
        }
    }

    #[test]
    fn the_crawl_id_names_the_dumps_date() {
        assert_eq!(
            default_crawl_id(Path::new("/x/ol_dump_works_2021-04-30.txt.gz")),
            "import:2021-04-30"
        );
        assert_eq!(
            default_crawl_id(Path::new("ol_dump_2021-04-30.txt")),
            "import:2021-04-30"
        );
        assert_eq!(default_crawl_id(Path::new("mine.txt")), "import:mine");
    }

    #[test]
    fn a_work_line_gives_its_node_subjects_and_edges_with_its_revision() {
        let line = "/type/work\t/works/OL1W\t3\t2021-03-01T09:00:00\t{\"key\":\"/works/OL1W\",\
            \"type\":{\"key\":\"/type/work\"},\"title\":\"T\",\"revision\":3,\
            \"authors\":[{\"author\":{\"key\":\"/authors/OL1A\"}},{\"type\":\"x\"}],\
            \"subjects\":[\"Sea Stories\",\"sea stories\"]}";
        let mut seen = SubjectsSeen::new(10);
        let out = target().line_records(line.as_bytes(), &mut seen).unwrap();
        assert_eq!((out.nodes, out.subjects, out.edges), (1, 1, 2));
        let node: Node = serde_json::from_slice(&out.records[0].payload).unwrap();
        assert_eq!(node.props["revision"], json!(3));
        let subject: Node = serde_json::from_slice(&out.records[2].payload).unwrap();
        assert_eq!(subject.key, "/subjects/sea_stories");
        assert_eq!(subject.props["name"], json!("Sea Stories"));
        let edge: Edge = serde_json::from_slice(&out.records[1].payload).unwrap();
        assert_eq!((edge.revision, edge.rel.as_str()), (Some(3), "WRITTEN_BY"));
        let again = target().line_records(line.as_bytes(), &mut seen).unwrap();
        assert_eq!(again.subjects, 0, "a subject once per window");
    }

    #[test]
    fn malformed_lines_say_why() {
        let mut seen = SubjectsSeen::new(10);
        let cases = [
            ("/type/work\t/works/OL1W\t3", "not five"),
            ("/type/language\t/languages/eng\t1\tx\t{}", "unknown type"),
            ("/type/work\t/works/OL1W\t3\tx\t{\"key\":", "invalid JSON"),
            (
                "/type/work\t/works/OL2W\t3\tx\t{\"key\":\"/works/OL1W\",\"type\":{\"key\":\"/type/work\"}}",
                "key column",
            ),
        ];
        for (line, why) in cases {
            let error = target()
                .line_records(line.as_bytes(), &mut seen)
                .expect_err(line);
            assert!(error.to_string().contains(why), "{line}: {error}");
        }
    }

    #[test]
    fn shards_split_by_the_key_column() {
        assert_eq!(shard_key(b"/type/work\t/works/OL1W\t1"), b"/works/OL1W");
        assert_eq!(shard_key(b"garbage"), b"garbage");
    }
}
