//! The crawl rules: what a job's key asks for, which Open Library paths answer it, and what
//! a fetched record expands into (a node, its relationships, and the keys to crawl next).
//!
//! Pure functions over parsed responses, so the rules can be tested without a network and
//! read in one place (the contract's "Crawl rules"): work → authors (`WRITTEN_BY`) and its first
//! subjects (`ABOUT`), and with `CRAWL_EDITIONS` its editions (`EDITION_OF`); author → its
//! works (`WRITTEN_BY`); subject → its works (`ABOUT`); edition → its works and authors;
//! free text → the works its search finds, at depth 0 only (robots.txt disallows
//! `/search`, so search is a user-initiated lookup, never an expansion step).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::crawl::limits::CrawlLimits;
use crate::crawl::parse::{Entity, Page, SearchResults, SubjectPage, subject_key};
use crate::message::{Label, Rel};

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
