//! The simulator's synthetic catalogue: generated from a seed and sizes, rendered in Open
//! Library's real JSON shapes, changed over time by a deterministic change generator
//! ([`Catalogue::apply_changes`], logged as Open Library's change feed), and able to say
//! exactly what a crawl must find.
//!
//! The truth ([`Catalogue::reachable`]) is computed by crawling the catalogue's own rendered
//! responses through the project's parser ([`crate::crawl::parse`]) under the contract's crawl
//! rules, so what the simulator serves and what it calls the truth cannot drift apart.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};

use crate::crawl::limits::CrawlLimits;
use crate::crawl::parse::{
    RecordAnswer, parse_page, parse_record, parse_search, parse_subject, subject_key,
};
use crate::message::{FailureReason, Label, Rel};

mod answers;
mod changes;
mod dump;
mod feed;
mod reach;
mod words;

pub use changes::{ChangeKind, ChangePlan};
pub use dump::DumpRecord;
pub use feed::{
    ChangeAuthor, ChangeEntry, ChangedRecord, FEED_DEFAULT_LIMIT, FEED_MAX_LIMIT, FEED_MAX_OFFSET,
    FeedPeriod, FeedQuery,
};
pub use reach::{Outcome, ReachEdge, Reachable};
use words::{FIRST, LAST, PUBLISHERS, QUALIFIERS, TOPICS, isbn, pick, skewed};

/// The `last_modified` format of Open Library's records and change feed (UTC, microseconds).
pub const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6f";

/// How big a catalogue to generate, and from which seed. Same spec, same catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CatalogueSpec {
    /// Seed of the generator.
    pub seed: u64,
    /// Live works.
    pub works: usize,
    /// Live authors.
    pub authors: usize,
    /// Distinct subjects.
    pub subjects: usize,
    /// Most editions of one work (each work gets 1..=this; 0 for none).
    pub max_editions_per_work: usize,
    /// Work keys that answer `/type/redirect` (every fourth one chains through another
    /// redirect, a 2-hop chain).
    pub redirects: usize,
    /// Work keys that answer `/type/delete`.
    pub deletes: usize,
    /// Author keys named by works that answer 404.
    pub missing_authors: usize,
    /// Added to every numeric id (`OL{id_base + n}W`), and named in every subject, so runs
    /// with different bases share no key: tests that write one shared Neo4j stay apart.
    pub id_base: u64,
}

impl CatalogueSpec {
    /// A spec with the given sizes and the default shares of redirects (1 in 50 works),
    /// deletes (1 in 100) and missing authors (1 in 100 authors), at least one of each.
    pub fn new(seed: u64, works: usize, authors: usize, subjects: usize) -> Self {
        CatalogueSpec {
            seed,
            works,
            authors,
            subjects,
            max_editions_per_work: 3,
            redirects: (works / 50).max(1),
            deletes: (works / 100).max(1),
            missing_authors: (authors / 100).max(1),
            id_base: 0,
        }
    }
}

/// A text field and which of Open Library's two forms it is served in.
#[derive(Debug, Clone)]
struct Text {
    value: String,
    typed: bool,
}

impl Text {
    fn json(&self) -> Value {
        if self.typed {
            json!({"type": "/type/text", "value": self.value})
        } else {
            json!(self.value)
        }
    }
}

/// A record's revision and when it was written: every record carries its own, and every
/// change that touches a record raises its revision by one and stamps it with the change's
/// time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    revision: i64,
    last_modified: String,
}

impl Stamp {
    fn new(revision: i64, last_modified: &str) -> Stamp {
        Stamp {
            revision,
            last_modified: last_modified.to_owned(),
        }
    }

    /// The stamp of the next revision, written at `at`.
    fn bumped(&self, at: &str) -> Stamp {
        Stamp::new(self.revision + 1, at)
    }
}

/// The generated records' stamps: what the catalogue served before it could change.
const WORK_STAMP: (i64, &str) = (3, "2021-03-01T09:00:00.000000");
const WORK_CREATED: &str = "2009-10-15T11:34:21.437031";
const AUTHOR_STAMP: (i64, &str) = (2, "2020-09-27T03:49:53.803346");
const EDITION_STAMP: (i64, &str) = (4, "2017-10-08T21:20:07.665236");
const REDIRECT_STAMP: (i64, &str) = (2, "2019-01-01T00:00:00.000000");
const DELETE_STAMP: (i64, &str) = (3, "2019-01-01T00:00:00.000000");

fn stamp((revision, at): (i64, &str)) -> Stamp {
    Stamp::new(revision, at)
}

#[derive(Debug, Clone)]
struct Work {
    key: String,
    stamp: Stamp,
    created: String,
    title: String,
    subtitle: Option<String>,
    first_publish_date: String,
    description: Option<Text>,
    covers: Vec<i64>,
    authors: Vec<String>,
    subjects: Vec<String>,
    editions: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Author {
    key: String,
    stamp: Stamp,
    name: String,
    birth_date: String,
    death_date: Option<String>,
    bio: Option<Text>,
    /// Work keys in the order `works.json` lists them (including stale redirect/delete keys).
    works: Vec<String>,
}

#[derive(Debug, Clone)]
struct Edition {
    key: String,
    stamp: Stamp,
    work: String,
    title: String,
    publish_date: String,
    publishers: Vec<String>,
    isbn_10: String,
    isbn_13: String,
    number_of_pages: i64,
    authors: Vec<String>,
    subjects: Vec<String>,
}

#[derive(Debug, Clone)]
struct Subject {
    name: String,
    /// Work keys in the order the subject page lists them.
    works: Vec<String>,
}

/// What a key answers now. A work, author or edition that became a redirect or a delete
/// keeps its data in its vector (indices stay valid) but answers through this entry.
#[derive(Debug, Clone)]
enum Entry {
    Work(usize),
    Author(usize),
    Edition(usize),
    Redirect { location: String, stamp: Stamp },
    Deleted(Stamp),
}

impl Entry {
    fn redirect(location: String, stamp: Stamp) -> Entry {
        Entry::Redirect { location, stamp }
    }
}

/// The next fresh numeric ids: above every id the catalogue has ever used (live, redirect,
/// delete or missing), so an added record never takes an old key.
#[derive(Debug, Clone, Default)]
struct NextIds {
    work: u64,
    author: u64,
    edition: u64,
    cover: i64,
}

/// A deterministic synthetic Open Library.
#[derive(Debug, Clone)]
pub struct Catalogue {
    spec: CatalogueSpec,
    works: Vec<Work>,
    authors: Vec<Author>,
    editions: Vec<Edition>,
    subjects: Vec<Subject>,
    subject_index: HashMap<String, usize>,
    records: HashMap<String, Entry>,
    next: NextIds,
    /// The change feed, oldest first (ids increase by one from 1).
    log: Vec<ChangeEntry>,
}

impl Catalogue {
    /// Generates the catalogue for `spec`: same spec, same catalogue, byte for byte.
    pub fn generate(spec: &CatalogueSpec) -> Catalogue {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let mut records = HashMap::new();

        let mut authors: Vec<Author> = (0..spec.authors)
            .map(|i| {
                let key = format!("/authors/OL{}A", spec.id_base + i as u64 + 1);
                records.insert(key.clone(), Entry::Author(i));
                let born = 1800 + rng.random_range(0..200);
                Author {
                    key,
                    stamp: stamp(AUTHOR_STAMP),
                    name: format!("{} {}", pick(&mut rng, FIRST), pick(&mut rng, LAST)),
                    birth_date: born.to_string(),
                    death_date: rng
                        .random_bool(0.5)
                        .then(|| (born + rng.random_range(30..90)).to_string()),
                    bio: match rng.random_range(0..3) {
                        0 => None,
                        k => Some(Text {
                            value: format!("Author number {} of the simulated catalogue.", i + 1),
                            typed: k == 1,
                        }),
                    },
                    works: Vec::new(),
                }
            })
            .collect();

        let mut subjects = Vec::new();
        let mut subject_index = HashMap::new();
        let mut i = 0;
        while subjects.len() < spec.subjects {
            let topic = TOPICS[i % TOPICS.len()];
            let round = i / TOPICS.len();
            let mut name = match round {
                0 => topic.to_owned(),
                r if r <= QUALIFIERS.len() => format!("{topic} {}", QUALIFIERS[r - 1]),
                r => format!("{topic} {r}"),
            };
            if spec.id_base > 0 {
                name = format!("{name} n{}", spec.id_base);
            }
            i += 1;
            let Some(key) = subject_key(&name) else {
                continue;
            };
            if subject_index.contains_key(&key) {
                continue;
            }
            subject_index.insert(key, subjects.len());
            subjects.push(Subject {
                name,
                works: Vec::new(),
            });
        }

        let mut works = Vec::with_capacity(spec.works);
        let mut editions = Vec::new();
        for w in 0..spec.works {
            let key = format!("/works/OL{}W", spec.id_base + w as u64 + 1);
            records.insert(key.clone(), Entry::Work(w));
            let title = words::title(&mut rng);
            let n_authors = match rng.random_range(0..10) {
                0..6 => 1,
                6..9 => 2,
                _ => 3,
            }
            .min(spec.authors);
            let mut work_authors: Vec<String> = Vec::new();
            while work_authors.len() < n_authors {
                let a = skewed(&mut rng, spec.authors);
                let k = authors[a].key.clone();
                if !work_authors.contains(&k) {
                    work_authors.push(k);
                }
            }
            let n_subjects = rng.random_range(2..=6).min(subjects.len());
            let mut work_subjects: Vec<String> = Vec::new();
            while work_subjects.len() < n_subjects {
                let s = subjects[skewed(&mut rng, subjects.len())].name.clone();
                if !work_subjects.contains(&s) {
                    work_subjects.push(s);
                }
            }
            // Real records repeat a subject in another case now and then; it is one subject.
            if let Some(first) = work_subjects.first().cloned()
                && rng.random_bool(0.05)
            {
                work_subjects.push(first.to_lowercase());
            }
            for a in &work_authors {
                if let Some(Entry::Author(i)) = records.get(a) {
                    authors[*i].works.push(key.clone());
                }
            }
            let mut listed = BTreeSet::new();
            for s in &work_subjects {
                if let Some(k) = subject_key(s)
                    && listed.insert(k.clone())
                    && let Some(&i) = subject_index.get(&k)
                {
                    subjects[i].works.push(key.clone());
                }
            }
            let n_editions = if spec.max_editions_per_work == 0 {
                0
            } else {
                rng.random_range(1..=spec.max_editions_per_work)
            };
            let year = 1850 + rng.random_range(0..170);
            let mut work_editions = Vec::new();
            for e in 0..n_editions {
                let n = editions.len();
                let ekey = format!("/books/OL{}M", spec.id_base + n as u64 + 1);
                records.insert(ekey.clone(), Entry::Edition(n));
                editions.push(Edition {
                    key: ekey,
                    stamp: stamp(EDITION_STAMP),
                    work: key.clone(),
                    title: title.clone(),
                    publish_date: (year + e as i32 * 7).to_string(),
                    publishers: vec![pick(&mut rng, PUBLISHERS).to_owned()],
                    isbn_10: isbn(n, 10),
                    isbn_13: isbn(n, 13),
                    number_of_pages: rng.random_range(90..900),
                    authors: work_authors[..1].to_vec(),
                    subjects: work_subjects.iter().take(1).cloned().collect(),
                });
                work_editions.push(n);
            }
            works.push(Work {
                key,
                stamp: stamp(WORK_STAMP),
                created: WORK_CREATED.to_owned(),
                title,
                subtitle: rng.random_bool(0.2).then(|| "A Novel".to_owned()),
                first_publish_date: year.to_string(),
                description: match rng.random_range(0..5) {
                    0 => None,
                    1 | 2 => Some(Text {
                        value: format!("Simulated work {}.", w + 1),
                        typed: true,
                    }),
                    _ => Some(Text {
                        value: format!("Simulated work {}, plainly described.", w + 1),
                        typed: false,
                    }),
                },
                covers: (0..rng.random_range(0..3))
                    .map(|c| 1_000_000 + (w * 3 + c) as i64)
                    .collect(),
                authors: work_authors,
                subjects: work_subjects,
                editions: work_editions,
            });
        }

        let next = NextIds {
            work: spec.id_base + (spec.works + spec.redirects + spec.deletes) as u64 + 1,
            author: spec.id_base + (spec.authors + spec.missing_authors) as u64 + 1,
            edition: spec.id_base + editions.len() as u64 + 1,
            cover: 1_000_000 + spec.works as i64 * 3,
        };
        let mut catalogue = Catalogue {
            spec: spec.clone(),
            works,
            authors,
            editions,
            subjects,
            subject_index,
            records,
            next,
            log: Vec::new(),
        };
        if !catalogue.works.is_empty() {
            catalogue.add_redirects(&mut rng);
            catalogue.add_deletes(&mut rng);
            catalogue.add_missing_authors(&mut rng);
        }
        catalogue
    }

    /// Lists a stale key right after `live` in the works lists of `live`'s first author and
    /// first subject, where a crawl expanding them will meet it.
    fn list_beside(&mut self, live: usize, stale: &str) {
        let live_key = self.works[live].key.clone();
        let first_author = self.works[live].authors.first().cloned();
        if let Some(Entry::Author(a)) = first_author.and_then(|k| self.records.get(&k).cloned()) {
            let list = &mut self.authors[a].works;
            let at = list
                .iter()
                .position(|k| *k == live_key)
                .map_or(list.len(), |p| p + 1);
            list.insert(at, stale.to_owned());
        }
        let first_subject = self.works[live]
            .subjects
            .first()
            .and_then(|s| subject_key(s));
        if let Some(&s) = first_subject.and_then(|k| self.subject_index.get(&k)) {
            let list = &mut self.subjects[s].works;
            let at = list
                .iter()
                .position(|k| *k == live_key)
                .map_or(list.len(), |p| p + 1);
            list.insert(at, stale.to_owned());
        }
    }

    fn add_redirects(&mut self, rng: &mut StdRng) {
        let base = self.works.len();
        let mut targets: Vec<usize> = Vec::new();
        for i in 0..self.spec.redirects {
            let key = format!("/works/OL{}W", self.spec.id_base + (base + i) as u64 + 1);
            let (location, live) = if i % 4 == 3 {
                (
                    format!("/works/OL{}W", self.spec.id_base + (base + i) as u64),
                    targets[i - 1],
                )
            } else {
                let live = rng.random_range(0..self.works.len());
                (self.works[live].key.clone(), live)
            };
            targets.push(live);
            self.records.insert(
                key.clone(),
                Entry::redirect(location, stamp(REDIRECT_STAMP)),
            );
            self.list_beside(live, &key);
            // An edition of the merged work still names the old key, as real editions do.
            if i % 2 == 0
                && let Some(&e) = self.works[live].editions.first()
            {
                self.editions[e].work = key.clone();
            }
        }
    }

    fn add_deletes(&mut self, rng: &mut StdRng) {
        let base = self.works.len() + self.spec.redirects;
        for i in 0..self.spec.deletes {
            let key = format!("/works/OL{}W", self.spec.id_base + (base + i) as u64 + 1);
            self.records
                .insert(key.clone(), Entry::Deleted(stamp(DELETE_STAMP)));
            let live = rng.random_range(0..self.works.len());
            self.list_beside(live, &key);
        }
    }

    fn add_missing_authors(&mut self, rng: &mut StdRng) {
        for i in 0..self.spec.missing_authors {
            let key = format!(
                "/authors/OL{}A",
                self.spec.id_base + (self.authors.len() + i) as u64 + 1
            );
            let w = rng.random_range(0..self.works.len());
            self.works[w].authors.push(key);
        }
    }

    /// The spec it was generated from.
    pub fn spec(&self) -> &CatalogueSpec {
        &self.spec
    }

    /// Keys of all live works, in key order: handy seeds for tests.
    pub fn work_keys(&self) -> Vec<String> {
        self.live_works().map(|(_, w)| w.key.clone()).collect()
    }

    /// Keys of all live authors (merged-away ones answer a redirect instead).
    pub fn author_keys(&self) -> Vec<String> {
        self.live_authors().map(|(_, a)| a.key.clone()).collect()
    }

    /// Keys of all live editions (those of deleted works are deleted too).
    pub fn edition_keys(&self) -> Vec<String> {
        self.live_editions().map(|(_, e)| e.key.clone()).collect()
    }

    /// Keys of all subjects (`/subjects/<name>`).
    pub fn subject_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.subject_index.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Keys answering `/type/redirect`, with their `location`.
    pub fn redirects(&self) -> BTreeMap<String, String> {
        self.records
            .iter()
            .filter_map(|(k, e)| match e {
                Entry::Redirect { location, .. } => Some((k.clone(), location.clone())),
                _ => None,
            })
            .collect()
    }

    /// Keys answering `/type/delete`.
    pub fn deleted(&self) -> BTreeSet<String> {
        self.records
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Deleted(_)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The works whose key still answers the work (not deleted or merged away), in order.
    fn live_works(&self) -> impl Iterator<Item = (usize, &Work)> + '_ {
        self.works
            .iter()
            .enumerate()
            .filter(|(i, w)| matches!(self.records.get(&w.key), Some(Entry::Work(j)) if j == i))
    }

    /// The authors whose key still answers the author.
    fn live_authors(&self) -> impl Iterator<Item = (usize, &Author)> + '_ {
        self.authors
            .iter()
            .enumerate()
            .filter(|(i, a)| matches!(self.records.get(&a.key), Some(Entry::Author(j)) if j == i))
    }

    /// The editions whose key still answers the edition.
    fn live_editions(&self) -> impl Iterator<Item = (usize, &Edition)> + '_ {
        self.editions
            .iter()
            .enumerate()
            .filter(|(i, e)| matches!(self.records.get(&e.key), Some(Entry::Edition(j)) if j == i))
    }
}
