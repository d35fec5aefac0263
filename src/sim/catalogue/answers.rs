//! The catalogue's answers, in Open Library's real JSON shapes: records, lists, subjects and
//! search results.

use super::*;

impl Catalogue {
    pub(super) fn work_json(&self, w: &Work) -> Value {
        let mut v = json!({
            "key": w.key,
            "title": w.title,
            "first_publish_date": w.first_publish_date,
            "authors": w.authors.iter().map(|a| json!({
                "type": {"key": "/type/author_role"},
                "author": {"key": a},
            })).collect::<Vec<_>>(),
            "subjects": w.subjects,
            "covers": w.covers,
            "type": {"key": "/type/work"},
            "revision": w.stamp.revision,
            "latest_revision": w.stamp.revision,
            "created": datetime(&w.created),
            "last_modified": datetime(&w.stamp.last_modified),
        });
        if let Some(s) = &w.subtitle {
            v["subtitle"] = json!(s);
        }
        if let Some(d) = &w.description {
            v["description"] = d.json();
        }
        v
    }

    pub(super) fn author_json(&self, a: &Author) -> Value {
        let mut v = json!({
            "key": a.key,
            "name": a.name,
            "personal_name": a.name,
            "birth_date": a.birth_date,
            "type": {"key": "/type/author"},
            "revision": a.stamp.revision,
            "latest_revision": a.stamp.revision,
            "last_modified": datetime(&a.stamp.last_modified),
        });
        if let Some(d) = &a.death_date {
            v["death_date"] = json!(d);
        }
        if let Some(b) = &a.bio {
            v["bio"] = b.json();
        }
        v
    }

    pub(super) fn edition_json(&self, e: &Edition) -> Value {
        json!({
            "key": e.key,
            "title": e.title,
            "publish_date": e.publish_date,
            "publishers": e.publishers,
            "isbn_10": [e.isbn_10],
            "isbn_13": [e.isbn_13],
            "number_of_pages": e.number_of_pages,
            "authors": e.authors.iter().map(|a| json!({"key": a})).collect::<Vec<_>>(),
            "works": [{"key": e.work}],
            "subjects": e.subjects,
            "languages": [{"key": "/languages/eng"}],
            "type": {"key": "/type/edition"},
            "revision": e.stamp.revision,
            "latest_revision": e.stamp.revision,
            "last_modified": datetime(&e.stamp.last_modified),
        })
    }

    /// A redirect or delete record, with its own revision and `last_modified`. `None` for a
    /// live entry (rendered from its data instead).
    pub(super) fn stub_json(key: &str, entry: &Entry) -> Option<Value> {
        Some(match entry {
            Entry::Redirect { location, stamp } => json!({
                "key": key, "location": location, "type": {"key": "/type/redirect"},
                "revision": stamp.revision, "last_modified": datetime(&stamp.last_modified),
            }),
            Entry::Deleted(stamp) => json!({
                "key": key, "type": {"key": "/type/delete"}, "revision": stamp.revision,
                "last_modified": datetime(&stamp.last_modified),
            }),
            Entry::Work(_) | Entry::Author(_) | Entry::Edition(_) => return None,
        })
    }

    fn entry_json(&self, key: &str) -> Option<Value> {
        Some(match self.records.get(key)? {
            Entry::Work(i) => self.work_json(&self.works[*i]),
            Entry::Author(i) => self.author_json(&self.authors[*i]),
            Entry::Edition(i) => self.edition_json(&self.editions[*i]),
            other => Self::stub_json(key, other)?,
        })
    }

    /// The body of `/works/{id}.json`, `/authors/{id}.json` or `/books/{id}.json` for `key`
    /// (`/works/OL1W`), or `None` for a 404.
    pub fn record(&self, key: &str) -> Option<Value> {
        self.entry_json(key)
    }

    /// `/authors/{id}/works.json?limit&offset`, or `None` when the author is unknown.
    pub fn author_works(&self, author: &str, limit: usize, offset: usize) -> Option<Value> {
        let Some(Entry::Author(a)) = self.records.get(author) else {
            return None;
        };
        let list = &self.authors[*a].works;
        let entries: Vec<Value> = list
            .iter()
            .skip(offset)
            .take(limit)
            .filter_map(|k| self.entry_json(k))
            .collect();
        let path = format!("{author}/works.json");
        Some(paged(
            json!({"author": author}),
            &path,
            list.len(),
            limit,
            offset,
            entries,
        ))
    }

    /// `/works/{id}/editions.json?limit&offset`, or `None` when the work is unknown.
    pub fn work_editions(&self, work: &str, limit: usize, offset: usize) -> Option<Value> {
        let Some(Entry::Work(w)) = self.records.get(work) else {
            return None;
        };
        let list = &self.works[*w].editions;
        let entries: Vec<Value> = list
            .iter()
            .skip(offset)
            .take(limit)
            .map(|&e| self.edition_json(&self.editions[e]))
            .collect();
        let path = format!("{work}/editions.json");
        Some(paged(
            json!({"work": work}),
            &path,
            list.len(),
            limit,
            offset,
            entries,
        ))
    }

    /// `/subjects/{name}.json?limit&offset` for `key` (`/subjects/<name>`). Like Open
    /// Library, an unknown subject answers 200 with no works.
    pub fn subject(&self, key: &str, limit: usize, offset: usize) -> Value {
        let name = key.trim_start_matches("/subjects/");
        let (display, list): (String, &[String]) = match self.subject_index.get(key) {
            Some(&i) => (self.subjects[i].name.clone(), &self.subjects[i].works),
            None => (name.replace('_', " "), &[]),
        };
        let works: Vec<Value> = list
            .iter()
            .skip(offset)
            .take(limit)
            .map(|k| match self.records.get(k) {
                Some(Entry::Work(w)) => {
                    let w = &self.works[*w];
                    json!({
                        "key": w.key,
                        "title": w.title,
                        "edition_count": w.editions.len(),
                        "authors": w.authors.iter().map(|a| json!({
                            "key": a,
                            "name": self.author_name(a),
                        })).collect::<Vec<_>>(),
                    })
                }
                _ => json!({"key": k, "title": "", "edition_count": 0, "authors": []}),
            })
            .collect();
        json!({
            "key": key,
            "name": display,
            "subject_type": "subject",
            "work_count": list.len(),
            "works": works,
        })
    }

    fn author_name(&self, key: &str) -> String {
        match self.records.get(key) {
            Some(Entry::Author(a)) => self.authors[*a].name.clone(),
            _ => String::new(),
        }
    }

    /// Live works matching `q`: every word of `q` (case-insensitive) occurs in the work's
    /// title or an author's name. Key order, so the same query gives the same docs.
    pub fn search_matches(&self, q: &str) -> Vec<usize> {
        let words: Vec<String> = q.split_whitespace().map(str::to_lowercase).collect();
        self.live_works()
            .filter(|(_, w)| {
                let text = std::iter::once(w.title.clone())
                    .chain(w.authors.iter().map(|a| self.author_name(a)))
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase();
                !words.is_empty() && words.iter().all(|word| text.contains(word.as_str()))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// `/search.json?q&limit&offset`.
    pub fn search(&self, q: &str, limit: usize, offset: usize) -> Value {
        let matches = self.search_matches(q);
        let docs: Vec<Value> = matches
            .iter()
            .skip(offset)
            .take(limit)
            .map(|&i| {
                let w = &self.works[i];
                json!({
                    "key": w.key,
                    "type": "work",
                    "title": w.title,
                    "author_key": w.authors.iter().map(|a| a.trim_start_matches("/authors/")).collect::<Vec<_>>(),
                    "author_name": w.authors.iter().map(|a| self.author_name(a)).collect::<Vec<_>>(),
                    "edition_count": w.editions.len(),
                    "edition_key": w.editions.iter().map(|&e| self.editions[e].key.trim_start_matches("/books/").to_owned()).collect::<Vec<_>>(),
                    "first_publish_year": w.first_publish_date.parse::<i64>().unwrap_or_default(),
                })
            })
            .collect();
        json!({
            "numFound": matches.len(),
            "start": offset,
            "numFoundExact": true,
            "docs": docs,
            "q": q,
            "offset": null,
        })
    }
}

/// Open Library's datetime value: `{"type": "/type/datetime", "value": …}`.
fn datetime(value: &str) -> Value {
    json!({"type": "/type/datetime", "value": value})
}

pub(super) fn paged(
    mut links: Value,
    path: &str,
    size: usize,
    limit: usize,
    offset: usize,
    entries: Vec<Value>,
) -> Value {
    links["self"] = json!(format!("{path}?limit={limit}&offset={offset}"));
    if offset + limit < size {
        links["next"] = json!(format!("{path}?limit={limit}&offset={}", offset + limit));
    }
    if offset > 0 {
        links["prev"] = json!(format!(
            "{path}?limit={limit}&offset={}",
            offset.saturating_sub(limit)
        ));
    }
    json!({"links": links, "size": size, "entries": entries})
}
