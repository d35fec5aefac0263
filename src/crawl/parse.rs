//! Open Library responses, parsed into typed results: records (work, author, edition,
//! redirect, delete, not found), the paged lists (`/authors/{id}/works.json`,
//! `/works/{id}/editions.json`), subjects (`/subjects/{name}.json`) and search
//! (`/search.json`).
//!
//! Owns the knowledge of Open Library's JSON shapes so the rest of the crawler sees only
//! node properties (the contract's graph table) and the keys a record links to. Real data
//! is messy: text fields come as a plain string or as `{"type": "/type/text", "value": …}`,
//! records carry dozens of fields we do not use (ignored), single values come with the wrong
//! shape (a `null` among the covers, an author role without `author`). Fields are read one
//! by one: a bad value is left out and listed in [`Entity::dropped`], and only a body that
//! cannot be a record at all is a [`ParseError`] (dead-lettered with reason `parse`), never
//! a panic.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::message::{FailureReason, Label, Rel};

mod fields;

use fields::{Fields, each};

/// Why a response body could not be turned into a typed result. Every variant is a
/// `parse` failure for the DLQ: retrying the same body cannot help.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The body is not JSON, or a field has the wrong JSON type.
    #[error("invalid JSON for {what}: {source}")]
    Json {
        /// Which shape was expected (`record`, `page`, `subject`, `search`).
        what: &'static str,
        /// The decoder's complaint (line, column, field).
        source: serde_json::Error,
    },
    /// The body is JSON but not a shape this parser knows (e.g. an unknown `type`).
    #[error("unexpected {what}: {detail}")]
    Shape {
        /// Which shape was expected.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl ParseError {
    /// The DLQ reason for this error: always `parse`.
    pub fn reason(&self) -> FailureReason {
        FailureReason::Parse
    }
}

/// One answer of `/works/{id}.json`, `/authors/{id}.json` or `/books/{id}.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordAnswer {
    /// A live work, author or edition.
    Entity(Entity),
    /// A merged record (`/type/redirect`, HTTP 200): crawl `location` in place of `key`.
    Redirect {
        /// The key that was asked for.
        key: String,
        /// The key it was merged into.
        location: String,
    },
    /// A deleted record (`/type/delete`): recorded, never retried.
    Deleted {
        /// The deleted key.
        key: String,
    },
    /// Open Library's 404 body `{"error": "notfound", "key": …}`: recorded, never retried.
    NotFound {
        /// The key, when the body names it.
        key: Option<String>,
    },
}

/// A live work, author or edition: what becomes a node, and what it links to.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    /// Its Open Library key (`/works/OL…W`, `/authors/OL…A`, `/books/OL…M`).
    pub key: String,
    /// Its node label, from the record's `type`.
    pub label: Label,
    /// Node properties as the contract's graph table lists them; absent fields are absent.
    pub props: BTreeMap<String, Value>,
    /// The keys it names, for expansion.
    pub links: Links,
    /// The record's `revision` (Open Library counts every edit of a key from 1): the graph
    /// writer never lets a lower revision overwrite a higher one, whichever arrives last.
    pub revision: Option<i64>,
    /// The record's `last_modified` timestamp as Open Library writes it
    /// (`2021-03-01T09:00:00.000000`), typed or plain.
    pub last_modified: Option<String>,
    /// Values left out because they had the wrong shape, as `field` or `field[index]` (a
    /// `null` cover is `covers[2]`). A bad value costs itself, not the record: the handler
    /// logs these at debug so a source of bad data can be found.
    pub dropped: Vec<String>,
}

/// The keys a record names, in the order Open Library lists them (so "first N" is
/// deterministic). Authors link to nothing here: their works come from a paged list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Links {
    /// Author keys: a work's `authors[].author.key`, an edition's `authors[].key`.
    pub authors: Vec<String>,
    /// Work keys: an edition's `works[].key`.
    pub works: Vec<String>,
    /// Subject strings as written (`subjects`), before they become keys.
    pub subjects: Vec<String>,
}

impl Links {
    /// Subject keys (`/subjects/<name>`, see [`subject_key`]), in order, without duplicates
    /// ("Juvenile Fiction" and "Juvenile fiction" are one subject) and without strings that
    /// normalise to nothing. `MAX_SUBJECTS_PER_NODE` applies to this list.
    pub fn subject_keys(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        self.subjects
            .iter()
            .filter_map(|s| subject_key(s))
            .filter(|k| seen.insert(k.clone()))
            .collect()
    }
}

impl Entity {
    /// The node's properties: the graph table's, plus `revision` and `last_modified` (the
    /// contract's graph model: a node from a record carries them, so the writer can keep the
    /// newest). The worker and `bookworm import` both publish exactly this.
    pub fn node_props(&self) -> BTreeMap<String, Value> {
        let mut props = self.props.clone();
        if let Some(revision) = self.revision {
            props.insert("revision".to_owned(), Value::from(revision));
        }
        if let Some(modified) = &self.last_modified {
            props.insert("last_modified".to_owned(), Value::from(modified.clone()));
        }
        props
    }

    /// The relationships this record starts and the crawl follows, in the contract's
    /// direction (from this record): work → authors (`WRITTEN_BY`) and its first
    /// `max_subjects` subject keys (`ABOUT`); edition → works (`EDITION_OF`) and authors
    /// (`WRITTEN_BY`). An edition's subjects stay in [`Links::subjects`] but are not followed:
    /// the contract's crawl rules expand an edition to its works and authors only. Duplicate
    /// targets of one relationship are listed once.
    pub fn outgoing(&self, max_subjects: usize) -> Vec<(Rel, String)> {
        let mut out: Vec<(Rel, String)> = Vec::new();
        let mut push = |rel: Rel, to: &str| {
            if !out.iter().any(|(r, t)| *r == rel && t == to) {
                out.push((rel, to.to_owned()));
            }
        };
        match self.label {
            Label::Work => {
                for a in &self.links.authors {
                    push(Rel::WRITTEN_BY, a);
                }
                for s in self.links.subject_keys().into_iter().take(max_subjects) {
                    push(Rel::ABOUT, &s);
                }
            }
            Label::Edition => {
                for w in &self.links.works {
                    push(Rel::EDITION_OF, w);
                }
                for a in &self.links.authors {
                    push(Rel::WRITTEN_BY, a);
                }
            }
            Label::Author | Label::Subject => {}
        }
        out
    }
}

/// Turns a subject string into its key `/subjects/<name>`, as Open Library's `str_to_key`
/// does: lower-cased, each whitespace character becomes `_`, and the characters
/// `;/?:@&=+$,<>#%"{}|\^[]`, backquote, line breaks and other control characters are dropped (so a key is always one safe path segment and
/// never carries a query or fragment). Leading and trailing whitespace is trimmed first.
/// Other characters, including non-ASCII letters, are kept as they are; the HTTP client
/// percent-encodes them when it builds the URL. `None` when nothing is left.
pub fn subject_key(subject: &str) -> Option<String> {
    const DROPPED: &str = ";/?:@&=+$,<>#%\"{}|\\^[]`";
    let name: String = subject
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| !DROPPED.contains(*c) && *c != '\n' && *c != '\r')
        .filter(|c| !c.is_control() || c.is_whitespace())
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    if name.is_empty() {
        None
    } else {
        Some(format!("/subjects/{name}"))
    }
}

#[derive(Debug, Deserialize)]
struct KeyRef {
    key: String,
}

/// The envelope every record shares: enough to tell its kind. Only these fields can fail a
/// record as a whole; every other field is read on its own ([`Fields`]).
#[derive(Debug, Deserialize)]
struct Envelope {
    key: Option<String>,
    #[serde(rename = "type")]
    kind: Option<KeyRef>,
    error: Option<String>,
    location: Option<String>,
}

/// Collects the properties that are present, so a node never carries nulls.
#[derive(Default)]
struct Props(BTreeMap<String, Value>);

impl Props {
    fn put(&mut self, name: &str, value: Option<impl Into<Value>>) -> &mut Self {
        if let Some(v) = value {
            self.0.insert(name.to_owned(), v.into());
        }
        self
    }
}

fn decode<T: DeserializeOwned>(what: &'static str, value: Value) -> Result<T, ParseError> {
    serde_json::from_value(value).map_err(|source| ParseError::Json { what, source })
}

fn decode_bytes<T: DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T, ParseError> {
    serde_json::from_slice(body).map_err(|source| ParseError::Json { what, source })
}

/// Parses the body of `/works/{id}.json`, `/authors/{id}.json` or `/books/{id}.json`
/// (whatever the HTTP status: a 404's body is the `notfound` record).
///
/// What fails a record as a whole is only what makes it unusable: a body that is not a JSON
/// object, an envelope field of the wrong type, no `key`, an unknown `type`, a redirect
/// without `location`, or a `key` whose prefix names another kind than its `type` (a
/// `/works/…` key typed `/type/author` would be filed by the graph under neither, so it is
/// a `parse` failure rather than a node the graph writer rejects). Every other field is read
/// on its own: what has the wrong shape is left out and listed in [`Entity::dropped`].
pub fn parse_record(body: &[u8]) -> Result<RecordAnswer, ParseError> {
    const WHAT: &str = "record";
    let value: Value = decode_bytes(WHAT, body)?;
    let Some(record) = value.as_object() else {
        return Err(ParseError::Shape {
            what: WHAT,
            detail: "not a JSON object".to_owned(),
        });
    };
    let envelope: Envelope = decode(WHAT, value.clone())?;
    if envelope.error.as_deref() == Some("notfound") {
        return Ok(RecordAnswer::NotFound { key: envelope.key });
    }
    let key = envelope.key.ok_or_else(|| ParseError::Shape {
        what: WHAT,
        detail: "no `key`".to_owned(),
    })?;
    let kind = envelope.kind.map(|k| k.key).unwrap_or_default();
    let mut fields = Fields::new(record);
    let mut p = Props::default();
    // Every kind carries these; read first so a bad one is listed among `dropped`.
    let revision = fields.integer("revision");
    let last_modified = fields.text("last_modified");
    let (label, links) = match kind.as_str() {
        "/type/redirect" => {
            let location = envelope.location.ok_or_else(|| ParseError::Shape {
                what: WHAT,
                detail: format!("redirect {key} without `location`"),
            })?;
            return Ok(RecordAnswer::Redirect { key, location });
        }
        "/type/delete" => return Ok(RecordAnswer::Deleted { key }),
        "/type/work" => {
            p.put("title", fields.string("title"))
                .put("subtitle", fields.string("subtitle"))
                .put("first_publish_date", fields.string("first_publish_date"))
                .put("description", fields.text("description"))
                .put("covers", fields.list("covers", Value::as_i64));
            let links = Links {
                authors: fields.keys("authors", Label::Author, &["author", "key"]),
                works: Vec::new(),
                subjects: fields.strings("subjects").unwrap_or_default(),
            };
            (Label::Work, links)
        }
        "/type/author" => {
            p.put("name", fields.string("name"))
                .put("personal_name", fields.string("personal_name"))
                .put("birth_date", fields.string("birth_date"))
                .put("death_date", fields.string("death_date"))
                .put("bio", fields.text("bio"));
            (Label::Author, Links::default())
        }
        "/type/edition" => {
            p.put("title", fields.string("title"))
                .put("publish_date", fields.string("publish_date"))
                .put("publishers", fields.strings("publishers"))
                .put("isbn_10", fields.strings("isbn_10"))
                .put("isbn_13", fields.strings("isbn_13"))
                .put("number_of_pages", fields.integer("number_of_pages"));
            let links = Links {
                authors: fields.keys("authors", Label::Author, &["key"]),
                works: fields.keys("works", Label::Work, &["key"]),
                subjects: fields.strings("subjects").unwrap_or_default(),
            };
            (Label::Edition, links)
        }
        other => {
            return Err(ParseError::Shape {
                what: WHAT,
                detail: format!("{key} has unknown type {other:?}"),
            });
        }
    };
    if Label::of_key(&key) != Some(label) {
        return Err(ParseError::Shape {
            what: WHAT,
            detail: format!("{key} is typed {kind}, which is not a {}", label.as_str()),
        });
    }
    Ok(RecordAnswer::Entity(Entity {
        key,
        label,
        props: p.0,
        links,
        revision,
        last_modified,
        dropped: fields.dropped,
    }))
}

/// One page of `/authors/{id}/works.json` or `/works/{id}/editions.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    /// `links.self`: the path of this page.
    pub self_link: Option<String>,
    /// `links.next`: the path of the next page, absent on the last one.
    pub next: Option<String>,
    /// `size`: the total number of entries over all pages.
    pub size: Option<u64>,
    /// The entries of this page, in Open Library's order.
    pub entries: Vec<PageEntry>,
    /// Entries left out because they did not have the expected shape, as `entries[index]`.
    pub dropped: Vec<String>,
}

/// One entry of a paged list: the crawler only needs its key (it fetches the record itself).
#[derive(Debug, Clone, PartialEq)]
pub struct PageEntry {
    /// `/works/OL…W` or `/books/OL…M`.
    pub key: String,
    /// The title, when the entry carries one.
    pub title: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawPageLinks {
    #[serde(rename = "self")]
    self_link: Option<String>,
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawEntry {
    key: String,
    title: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawPage {
    links: Option<RawPageLinks>,
    size: Option<u64>,
    entries: Vec<Value>,
}

/// Parses a page of `/authors/{id}/works.json` or `/works/{id}/editions.json`.
pub fn parse_page(body: &[u8]) -> Result<Page, ParseError> {
    let raw: RawPage = decode_bytes("page", body)?;
    let (self_link, next) = raw.links.map(|l| (l.self_link, l.next)).unwrap_or_default();
    let (entries, dropped) = each::<RawEntry>("entries", raw.entries);
    Ok(Page {
        self_link,
        next,
        size: raw.size,
        entries: entries
            .into_iter()
            .map(|e| PageEntry {
                key: e.key,
                title: e.title,
            })
            .collect(),
        dropped,
    })
}

/// `/subjects/{name}.json`: the subject and the first works Open Library lists for it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectPage {
    /// `/subjects/<name>`.
    pub key: String,
    /// The subject's display name.
    pub name: String,
    /// How many works carry the subject in all.
    pub work_count: Option<u64>,
    /// The works on this page, in Open Library's order.
    pub works: Vec<SubjectWork>,
    /// Works (`works[i]`) and their authors (`works[i].authors[j]`) left out because they
    /// did not have the expected shape.
    pub dropped: Vec<String>,
}

impl SubjectPage {
    /// The subject's node properties (graph table: `name`).
    pub fn props(&self) -> BTreeMap<String, Value> {
        BTreeMap::from([("name".to_owned(), Value::from(self.name.clone()))])
    }
}

/// A work as a subject page lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectWork {
    /// `/works/OL…W`.
    pub key: String,
    /// Its title.
    pub title: Option<String>,
    /// Its authors as `{key, name}`.
    pub authors: Vec<NamedRef>,
}

/// A key with a display name, as subject pages list authors.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NamedRef {
    /// `/authors/OL…A`.
    pub key: String,
    /// The display name.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawSubject {
    key: String,
    name: String,
    work_count: Option<u64>,
    #[serde(default)]
    works: Vec<Value>,
}

/// Parses `/subjects/{name}.json`. A listed work without a key is left out, and so is an
/// author of a work that is not `{key, name}`; each is named in [`SubjectPage::dropped`],
/// and the rest is kept.
pub fn parse_subject(body: &[u8]) -> Result<SubjectPage, ParseError> {
    let raw: RawSubject = decode_bytes("subject", body)?;
    let mut works = Vec::with_capacity(raw.works.len());
    let mut dropped = Vec::new();
    for (i, work) in raw.works.iter().enumerate() {
        let Some(key) = work.get("key").and_then(Value::as_str) else {
            dropped.push(format!("works[{i}]"));
            continue;
        };
        let mut authors = Vec::new();
        for (j, author) in work
            .get("authors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            match serde_json::from_value::<NamedRef>(author.clone()) {
                Ok(author) => authors.push(author),
                Err(_) => dropped.push(format!("works[{i}].authors[{j}]")),
            }
        }
        works.push(SubjectWork {
            key: key.to_owned(),
            title: work.get("title").and_then(Value::as_str).map(str::to_owned),
            authors,
        });
    }
    Ok(SubjectPage {
        key: raw.key,
        name: raw.name,
        work_count: raw.work_count,
        works,
        dropped,
    })
}

/// `/search.json`: the works matching a free-text query.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResults {
    /// `numFound`: matches in all.
    pub num_found: u64,
    /// `start`: offset of the first doc.
    pub start: u64,
    /// The docs, in Open Library's (relevance) order.
    pub docs: Vec<SearchDoc>,
    /// Docs left out because they did not have the expected shape, as `docs[index]`.
    pub dropped: Vec<String>,
}

impl SearchResults {
    /// The work keys of the docs, in order: a search seed enqueues the first
    /// `MAX_SEARCH_RESULTS` of these. Docs that are not works are skipped.
    pub fn work_keys(&self) -> Vec<String> {
        self.docs
            .iter()
            .filter(|d| d.key.starts_with("/works/"))
            .map(|d| d.key.clone())
            .collect()
    }
}

/// One search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchDoc {
    /// `/works/OL…W`.
    pub key: String,
    /// Its title.
    pub title: Option<String>,
    /// Author keys, expanded from the bare ids of `author_key` to `/authors/OL…A`.
    pub author_keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RawDoc {
    key: String,
    title: Option<String>,
    #[serde(default)]
    author_key: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RawSearch {
    #[serde(rename = "numFound")]
    num_found: u64,
    #[serde(default)]
    start: u64,
    docs: Vec<Value>,
}

/// Parses `/search.json`. A doc that does not have the expected shape is left out (and
/// named in [`SearchResults::dropped`]); the others are kept.
pub fn parse_search(body: &[u8]) -> Result<SearchResults, ParseError> {
    let raw: RawSearch = decode_bytes("search", body)?;
    let (docs, dropped) = each::<RawDoc>("docs", raw.docs);
    Ok(SearchResults {
        num_found: raw.num_found,
        start: raw.start,
        dropped,
        docs: docs
            .into_iter()
            .map(|d| SearchDoc {
                key: d.key,
                title: d.title,
                author_keys: d
                    .author_key
                    .into_iter()
                    .map(|id| {
                        if id.starts_with("/authors/") {
                            id
                        } else {
                            format!("/authors/{id}")
                        }
                    })
                    .collect(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_keys_follow_open_librarys_url_form() {
        assert_eq!(
            subject_key("Science Fiction & Fantasy").as_deref(),
            Some("/subjects/science_fiction__fantasy")
        );
        assert_eq!(
            subject_key(" Fantasy. ").as_deref(),
            Some("/subjects/fantasy.")
        );
        assert_eq!(subject_key("a/b?c#d").as_deref(), Some("/subjects/abcd"));
        assert_eq!(
            subject_key("Ciencia-ficción").as_deref(),
            Some("/subjects/ciencia-ficción")
        );
        assert_eq!(subject_key("?#/"), None);
        assert_eq!(subject_key("   "), None);
    }
}
