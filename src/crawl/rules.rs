//! The crawl rules: what a job's key asks for, which Open Library paths answer it, and what
//! a fetched record expands into (a node, its relationships, and the keys to crawl next).
//!
//! Pure functions over parsed responses, so the rules can be tested without a network and
//! read in one place (the contract's "Crawl rules"): work → authors (`WRITTEN_BY`) and its first
//! subjects (`ABOUT`), and with `CRAWL_EDITIONS` its editions (`EDITION_OF`); author → its
//! works (`WRITTEN_BY`); subject → its works (`ABOUT`); edition → its works and authors;
//! free text → the works its search finds, at depth 0 only (robots.txt disallows
//! `/search`, so search is a user-initiated lookup, never an expansion step). A freshness job
//! (`CrawlJob::min_revision`) also reports the records it met that are gone
//! ([`GoneRecord`]): a delete, or each redirect of a chain.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::crawl::failure::CrawlError;
use crate::crawl::limits::CrawlLimits;
use crate::crawl::parse::{Entity, Page, SearchResults, SubjectPage, subject_key};
use crate::message::{Gone, Label, Rel};

/// The most entries Open Library returns in one page of a paged list.
pub const MAX_PAGE_LIMIT: usize = 1000;

/// What a job's key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/works/OL…W`.
    Work(String),
    /// `/authors/OL…A`.
    Author(String),
    /// `/books/OL…M`.
    Edition(String),
    /// `/subjects/<name>`.
    Subject(String),
    /// `search:<text>`.
    Search(String),
}

impl Target {
    /// Reads a job key; anything else is an invalid job (never fetched).
    pub fn parse(key: &str) -> Result<Self, String> {
        if let Some(text) = key.strip_prefix("search:") {
            let text = text.trim();
            return if text.chars().count() >= 3 {
                Ok(Target::Search(text.to_owned()))
            } else {
                Err(format!("search text {text:?} is shorter than 3 characters"))
            };
        }
        if let Some(name) = key.strip_prefix("/subjects/") {
            return match subject_key(name) {
                Some(normal) if normal == key => Ok(Target::Subject(key.to_owned())),
                _ => Err(format!("{key:?} is not a normalised subject key")),
            };
        }
        let id_of = |prefix: &str, suffix: char| {
            key.strip_prefix(prefix)
                .filter(|id| {
                    id.strip_prefix("OL")
                        .and_then(|rest| rest.strip_suffix(suffix))
                        .is_some_and(|digits| {
                            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                        })
                })
                .map(|_| key.to_owned())
        };
        if let Some(key) = id_of("/works/", 'W') {
            Ok(Target::Work(key))
        } else if let Some(key) = id_of("/authors/", 'A') {
            Ok(Target::Author(key))
        } else if let Some(key) = id_of("/books/", 'M') {
            Ok(Target::Edition(key))
        } else {
            Err(format!(
                "{key:?} is not an Open Library work, author, edition, subject or search key"
            ))
        }
    }

    /// The path of the record (or page) that answers this target.
    pub fn record_path(&self, limits: &CrawlLimits) -> String {
        match self {
            Target::Work(key) | Target::Author(key) | Target::Edition(key) => format!("{key}.json"),
            Target::Subject(key) => format!(
                "{key}.json?limit={}",
                limits.max_works_per_subject.min(MAX_PAGE_LIMIT)
            ),
            Target::Search(text) => format!(
                "/search.json?q={}&limit={}",
                url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>(),
                limits.max_search_results.min(MAX_PAGE_LIMIT)
            ),
        }
    }
}

/// The record key a URL that answered `asked` names (`/works/OL1W.json` → `/works/OL1W`).
/// An HTTP redirect to another key of the same kind puts that key in place of the one asked
/// for, like a redirect record; one to anything else is a bad redirect.
pub(crate) fn answering_key(asked: &str, final_url: &url::Url) -> Result<String, CrawlError> {
    let path = final_url.path();
    let Some(answering) = path.strip_suffix(".json") else {
        return Err(CrawlError::BadRedirect {
            key: asked.to_owned(),
            location: path.to_owned(),
        });
    };
    if answering == asked {
        return Ok(answering.to_owned());
    }
    match (Target::parse(asked), Target::parse(answering)) {
        (Ok(from), Ok(to)) if std::mem::discriminant(&from) == std::mem::discriminant(&to) => {
            Ok(answering.to_owned())
        }
        _ => Err(CrawlError::BadRedirect {
            key: asked.to_owned(),
            location: answering.to_owned(),
        }),
    }
}

/// The path of one page of a paged list (`/authors/{id}/works.json`,
/// `/works/{id}/editions.json`).
pub fn page_path(key: &str, list: &str, limit: usize, offset: usize) -> String {
    format!(
        "{key}/{list}.json?limit={}&offset={offset}",
        limit.min(MAX_PAGE_LIMIT)
    )
}

/// A relationship found by expansion, in the graph's direction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Link {
    /// Start node key.
    pub from: String,
    /// Relationship type.
    pub rel: Rel,
    /// End node key.
    pub to: String,
}

impl Link {
    /// `from|REL|to`, the form the crawl store counts distinct relationships by.
    pub fn id(&self) -> String {
        format!("{}|{}|{}", self.from, self.rel.as_str(), self.to)
    }
}

/// What one fetched job expands into.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expansion {
    /// The node to publish (`None` for a search).
    pub node: Option<(String, Label, BTreeMap<String, Value>)>,
    /// Relationships to publish, whether or not their far end will be crawled.
    pub links: Vec<Link>,
    /// Keys to crawl at the next depth, in Open Library's order, without duplicates.
    pub children: Vec<String>,
    /// The revision of the record the node came from (`None` for subjects and searches).
    pub revision: Option<i64>,
    /// Records met on the way that are gone (a freshness job's only; see [`GoneRecord`]), in
    /// the order they were met: each redirect of a chain, or the delete that ended it.
    pub gone: Vec<GoneRecord>,
}

/// A record that answered `/type/delete` or `/type/redirect` to a freshness job: published as
/// a node message with `gone`, so the graph writer removes what its older revisions wrote.
/// Its properties are the ones that order it against them: `revision` and `last_modified`.
#[derive(Debug, Clone, PartialEq)]
pub struct GoneRecord {
    /// The key that is gone (the one that answered, after HTTP redirects).
    pub key: String,
    /// Its label, from the key.
    pub label: Label,
    /// Deleted, or redirected to another key of its kind.
    pub gone: Gone,
    /// `revision` and `last_modified` of the delete or redirect record, when it has them.
    pub props: BTreeMap<String, Value>,
}

impl GoneRecord {
    /// The gone record of `key` from the body that answered it: its `revision` (an integer)
    /// and `last_modified` (plain or typed text), read here because the record parser keeps
    /// neither for a delete or a redirect. `None` when the key names no label.
    pub fn of(key: &str, gone: Gone, body: &[u8]) -> Option<Self> {
        let label = Label::of_key(key)?;
        let record: Value = serde_json::from_slice(body).unwrap_or_default();
        let mut props = BTreeMap::new();
        if let Some(revision) = record.get("revision").and_then(Value::as_i64) {
            props.insert("revision".to_owned(), Value::from(revision));
        }
        let modified = record.get("last_modified");
        if let Some(text) = modified.and_then(Value::as_str).or_else(|| {
            modified
                .and_then(|m| m.get("value"))
                .and_then(Value::as_str)
        }) {
            props.insert("last_modified".to_owned(), Value::from(text));
        }
        Some(Self {
            key: key.to_owned(),
            label,
            gone,
            props,
        })
    }
}

impl Expansion {
    /// The revision an edge carries: the record's, when the record itself names the edge
    /// (it starts at the node); `None` for edges read off a list page (an author's works, a
    /// work's editions, a subject's works), which no revision of their start node vouches
    /// for. The graph writer replaces a node's revisioned edges when its revision advances
    /// (see `graph::cypher`).
    pub fn edge_revision(&self, link: &Link) -> Option<i64> {
        match &self.node {
            Some((key, ..)) if *key == link.from => self.revision,
            _ => None,
        }
    }

    fn push_child(&mut self, key: &str) {
        if !self.children.iter().any(|c| c == key) {
            self.children.push(key.to_owned());
        }
    }

    fn link(&mut self, from: &str, rel: Rel, to: &str, child: &str) {
        let link = Link {
            from: from.to_owned(),
            rel,
            to: to.to_owned(),
        };
        if !self.links.contains(&link) {
            self.links.push(link);
        }
        self.push_child(child);
    }

    /// A work or edition record: the node and its outgoing relationships.
    pub fn of_entity(entity: &Entity, limits: &CrawlLimits) -> Self {
        let mut expansion = Expansion {
            node: Some((entity.key.clone(), entity.label, entity.node_props())),
            revision: entity.revision,
            ..Expansion::default()
        };
        for (rel, to) in entity.outgoing(limits.max_subjects_per_node) {
            expansion.link(&entity.key, rel, &to, &to);
        }
        expansion
    }

    /// A work's editions page (with `CRAWL_EDITIONS`): `EDITION_OF` from each edition.
    pub fn add_editions(&mut self, work_key: &str, editions: &Page, limits: &CrawlLimits) {
        for entry in editions.entries.iter().take(limits.max_editions_per_work) {
            self.link(&entry.key, Rel::EDITION_OF, work_key, &entry.key);
        }
    }

    /// An author's works page: `WRITTEN_BY` from each work.
    pub fn add_author_works(&mut self, author_key: &str, works: &Page, limits: &CrawlLimits) {
        for entry in works.entries.iter().take(limits.max_works_per_author) {
            self.link(&entry.key, Rel::WRITTEN_BY, author_key, &entry.key);
        }
    }

    /// A subject page: the subject's node and `ABOUT` from each of its first works.
    pub fn of_subject(subject_key: &str, page: &SubjectPage, limits: &CrawlLimits) -> Self {
        let mut expansion = Expansion {
            node: Some((subject_key.to_owned(), Label::Subject, page.props())),
            ..Expansion::default()
        };
        for work in page.works.iter().take(limits.max_works_per_subject) {
            expansion.link(&work.key, Rel::ABOUT, subject_key, &work.key);
        }
        expansion
    }

    /// A search: the first works it finds, no node and no relationship.
    pub fn of_search(results: &SearchResults, limits: &CrawlLimits) -> Self {
        let mut expansion = Expansion::default();
        for key in results.work_keys().iter().take(limits.max_search_results) {
            expansion.push_child(key);
        }
        expansion
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(path: &str) -> url::Url {
        url::Url::parse("http://ol.test")
            .and_then(|base| base.join(path))
            .expect("a URL")
    }

    /// The record that answers is the one its URL names: the key asked for, or the target of
    /// an HTTP redirect to a key of the same kind (crawled in place of the source).
    #[test]
    fn the_answering_url_names_the_record() {
        assert_eq!(
            answering_key("/works/OL1W", &url("/works/OL1W.json")).ok(),
            Some("/works/OL1W".to_owned())
        );
        assert_eq!(
            answering_key("/works/OL1W", &url("/works/OL2W.json")).ok(),
            Some("/works/OL2W".to_owned())
        );
    }

    /// An HTTP redirect to another kind of key, or off the record paths, is a bad redirect
    /// (`invalid_job`), like a redirect record of another kind.
    #[test]
    fn an_http_redirect_to_another_kind_is_a_bad_redirect() {
        for path in ["/authors/OL1A.json", "/works/OL2W", "/search.json"] {
            let error = answering_key("/works/OL1W", &url(path)).expect_err(path);
            assert!(
                matches!(error, CrawlError::BadRedirect { .. }),
                "{path}: {error}"
            );
        }
    }

    #[test]
    fn keys_name_their_targets() {
        assert_eq!(
            Target::parse("/works/OL1W"),
            Ok(Target::Work("/works/OL1W".into()))
        );
        assert_eq!(
            Target::parse("/authors/OL2A"),
            Ok(Target::Author("/authors/OL2A".into()))
        );
        assert_eq!(
            Target::parse("/books/OL3M"),
            Ok(Target::Edition("/books/OL3M".into()))
        );
        assert_eq!(
            Target::parse("/subjects/science_fiction"),
            Ok(Target::Subject("/subjects/science_fiction".into()))
        );
        assert_eq!(
            Target::parse("search:time war"),
            Ok(Target::Search("time war".into()))
        );
        for bad in [
            "https://evil.example/works/OL1W",
            "/works/OL1A",
            "/works/../admin",
            "search:ab",
            "/subjects/Big Cats",
            "",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} should be invalid");
        }
    }

    /// A delete or redirect record's revision and timestamp (typed or plain) are what its
    /// gone message carries; nothing else of the body.
    #[test]
    fn a_gone_record_carries_the_revision_and_timestamp_of_its_body() {
        let body = br#"{"key": "/works/OL1W", "type": {"key": "/type/delete"}, "revision": 9,
            "last_modified": {"type": "/type/datetime", "value": "2024-05-01T10:00:00.000000"},
            "title": "ignored"}"#;
        let gone = GoneRecord::of("/works/OL1W", Gone::Deleted, body).expect("a work key");
        assert_eq!(gone.label, Label::Work);
        assert_eq!(
            serde_json::to_value(&gone.props).expect("props"),
            serde_json::json!({"revision": 9, "last_modified": "2024-05-01T10:00:00.000000"})
        );
        let plain = br#"{"revision": 2, "last_modified": "2020-01-01T00:00:00"}"#;
        let gone = GoneRecord::of(
            "/authors/OL1A",
            Gone::Redirected {
                to: "/authors/OL2A".to_owned(),
            },
            plain,
        )
        .expect("an author key");
        assert_eq!(gone.props["last_modified"], "2020-01-01T00:00:00");
        assert!(GoneRecord::of("search:foxes", Gone::Deleted, plain).is_none());
    }

    #[test]
    fn paths_ask_for_the_first_n_in_order() {
        let limits = CrawlLimits::default();
        assert_eq!(
            Target::Work("/works/OL1W".into()).record_path(&limits),
            "/works/OL1W.json"
        );
        assert_eq!(
            Target::Subject("/subjects/cats".into()).record_path(&limits),
            "/subjects/cats.json?limit=50"
        );
        assert_eq!(
            Target::Search("time war".into()).record_path(&limits),
            "/search.json?q=time+war&limit=20"
        );
        assert_eq!(
            page_path("/authors/OL1A", "works", 50, 0),
            "/authors/OL1A/works.json?limit=50&offset=0"
        );
    }
}
