//! Open Library responses, parsed into typed results: records (work, author, edition,
//! redirect, delete, not found), the paged lists (`/authors/{id}/works.json`,
//! `/works/{id}/editions.json`), subjects (`/subjects/{name}.json`) and search
//! (`/search.json`).
//!
//! Owns the knowledge of Open Library's JSON shapes so the rest of the crawler sees only
//! node properties (the contract's graph table) and the keys a record links to. Real data
//! is messy: text fields come as a plain string or as `{"type": "/type/text", "value": …}`,
//! records carry dozens of fields we do not use (ignored), and a record that does not
//! parse is a [`ParseError`] (dead-lettered with reason `parse`), never a panic.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::message::{FailureReason, Label, Rel};

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

/// A text field: Open Library writes both forms, often within one dump.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Text {
    Plain(String),
    Typed { value: String },
}

impl Text {
    fn into_string(self) -> String {
        match self {
            Text::Plain(s) | Text::Typed { value: s } => s,
        }
    }
}

#[derive(Debug, Deserialize)]
struct KeyRef {
    key: String,
}

#[derive(Debug, Deserialize)]
struct AuthorRole {
    author: KeyRef,
}

/// The envelope every record shares: enough to tell its kind.
#[derive(Debug, Deserialize)]
struct Envelope {
    key: Option<String>,
    #[serde(rename = "type")]
    kind: Option<KeyRef>,
    error: Option<String>,
    location: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawWork {
    title: Option<String>,
    subtitle: Option<String>,
    first_publish_date: Option<String>,
    description: Option<Text>,
    covers: Option<Vec<i64>>,
    #[serde(default)]
    authors: Vec<AuthorRole>,
    #[serde(default)]
    subjects: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RawAuthor {
    name: Option<String>,
    personal_name: Option<String>,
    birth_date: Option<String>,
    death_date: Option<String>,
    bio: Option<Text>,
}

#[derive(Debug, Deserialize)]
struct RawEdition {
    title: Option<String>,
    publish_date: Option<String>,
    publishers: Option<Vec<String>>,
    isbn_10: Option<Vec<String>>,
    isbn_13: Option<Vec<String>>,
    number_of_pages: Option<i64>,
    #[serde(default)]
    authors: Vec<KeyRef>,
    #[serde(default)]
    works: Vec<KeyRef>,
    #[serde(default)]
    subjects: Vec<String>,
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
pub fn parse_record(body: &[u8]) -> Result<RecordAnswer, ParseError> {
    const WHAT: &str = "record";
    let value: Value = decode_bytes(WHAT, body)?;
    if !value.is_object() {
        return Err(ParseError::Shape {
            what: WHAT,
            detail: "not a JSON object".to_owned(),
        });
    }
    let envelope: Envelope = decode(WHAT, value.clone())?;
    if envelope.error.as_deref() == Some("notfound") {
        return Ok(RecordAnswer::NotFound { key: envelope.key });
    }
    let key = envelope.key.ok_or_else(|| ParseError::Shape {
        what: WHAT,
        detail: "no `key`".to_owned(),
    })?;
    let kind = envelope.kind.map(|k| k.key).unwrap_or_default();
    let (label, props, links) = match kind.as_str() {
        "/type/redirect" => {
            let location = envelope.location.ok_or_else(|| ParseError::Shape {
                what: WHAT,
                detail: format!("redirect {key} without `location`"),
            })?;
            return Ok(RecordAnswer::Redirect { key, location });
        }
        "/type/delete" => return Ok(RecordAnswer::Deleted { key }),
        "/type/work" => {
            let w: RawWork = decode(WHAT, value)?;
            let mut p = Props::default();
            p.put("title", w.title)
                .put("subtitle", w.subtitle)
                .put("first_publish_date", w.first_publish_date)
                .put("description", w.description.map(Text::into_string))
                .put("covers", w.covers);
            let links = Links {
                authors: w.authors.into_iter().map(|a| a.author.key).collect(),
                works: Vec::new(),
                subjects: w.subjects,
            };
            (Label::Work, p.0, links)
        }
        "/type/author" => {
            let a: RawAuthor = decode(WHAT, value)?;
            let mut p = Props::default();
            p.put("name", a.name)
                .put("personal_name", a.personal_name)
                .put("birth_date", a.birth_date)
                .put("death_date", a.death_date)
                .put("bio", a.bio.map(Text::into_string));
            (Label::Author, p.0, Links::default())
        }
        "/type/edition" => {
            let e: RawEdition = decode(WHAT, value)?;
            let mut p = Props::default();
            p.put("title", e.title)
                .put("publish_date", e.publish_date)
                .put("publishers", e.publishers)
                .put("isbn_10", e.isbn_10)
                .put("isbn_13", e.isbn_13)
                .put("number_of_pages", e.number_of_pages);
            let links = Links {
                authors: e.authors.into_iter().map(|a| a.key).collect(),
                works: e.works.into_iter().map(|w| w.key).collect(),
                subjects: e.subjects,
            };
            (Label::Edition, p.0, links)
        }
        other => {
            return Err(ParseError::Shape {
                what: WHAT,
                detail: format!("{key} has unknown type {other:?}"),
            });
        }
    };
    Ok(RecordAnswer::Entity(Entity {
        key,
        label,
        props,
        links,
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
    entries: Vec<RawEntry>,
}

/// Parses a page of `/authors/{id}/works.json` or `/works/{id}/editions.json`.
pub fn parse_page(body: &[u8]) -> Result<Page, ParseError> {
    let raw: RawPage = decode_bytes("page", body)?;
    let (self_link, next) = raw.links.map(|l| (l.self_link, l.next)).unwrap_or_default();
    Ok(Page {
        self_link,
        next,
        size: raw.size,
        entries: raw
            .entries
            .into_iter()
            .map(|e| PageEntry {
                key: e.key,
                title: e.title,
            })
            .collect(),
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
}

impl SubjectPage {
    /// The subject's node properties (graph table: `name`).
    pub fn props(&self) -> BTreeMap<String, Value> {
        BTreeMap::from([("name".to_owned(), Value::from(self.name.clone()))])
    }
}

/// A work as a subject page lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SubjectWork {
    /// `/works/OL…W`.
    pub key: String,
    /// Its title.
    #[serde(default)]
    pub title: Option<String>,
    /// Its authors as `{key, name}`.
    #[serde(default)]
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
    works: Vec<SubjectWork>,
}

/// Parses `/subjects/{name}.json`.
pub fn parse_subject(body: &[u8]) -> Result<SubjectPage, ParseError> {
    let raw: RawSubject = decode_bytes("subject", body)?;
    Ok(SubjectPage {
        key: raw.key,
        name: raw.name,
        work_count: raw.work_count,
        works: raw.works,
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
    docs: Vec<RawDoc>,
}

/// Parses `/search.json`.
pub fn parse_search(body: &[u8]) -> Result<SearchResults, ParseError> {
    let raw: RawSearch = decode_bytes("search", body)?;
    Ok(SearchResults {
        num_found: raw.num_found,
        start: raw.start,
        docs: raw
            .docs
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
