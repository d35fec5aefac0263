//! The change generator: the edits Open Library's catalogue sees every day, applied to the
//! simulated one so a follower of the change feed has something to follow.
//!
//! Each change raises the revision of every record it writes by one (a new record starts at
//! revision 1), stamps them with the change's time, keeps the works lists of authors and
//! subjects consistent with the records, and appends one entry to the feed naming every
//! record it wrote at its new revision. The same catalogue, plan and seed give the same
//! changes (only the timestamps are the wall clock's).
//!
//! | kind | what it does |
//! |---|---|
//! | `edit-book` | a live work's title changes; two in five times it also gains or loses an author or a subject |
//! | `add-book` | a new work with one new edition, by an existing author or (three in ten, or when none is left) a new one, all under fresh keys |
//! | `merge-authors` | author B becomes a redirect to author A; every live work and edition naming B names A instead, redirects to B now point to A, and A's works list gains B's |
//! | `update` | a live work and all its editions become `/type/delete`, and leave every works list |
//! | `add-cover` | a live work's `covers` gains a new cover id |
//!
//! A change with nothing to act on (no live work to edit, fewer than two live authors to
//! merge) is skipped: it writes nothing and logs nothing.

use chrono::{NaiveDateTime, Timelike, Utc};

use super::words::{self, FIRST, LAST, PUBLISHERS, isbn, pick, skewed};
use super::*;

/// The account every simulated change is made by.
pub const SIM_ACCOUNT: &str = "/people/bookworm-sim";

/// A kind of change, named as the feed names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub enum ChangeKind {
    /// `edit-book`: a work's title (and sometimes an author or subject) changes.
    #[serde(rename = "edit-book")]
    EditBook,
    /// `add-book`: a new work with an edition (and sometimes a new author).
    #[serde(rename = "add-book")]
    AddBook,
    /// `merge-authors`: one author merged into another.
    #[serde(rename = "merge-authors")]
    MergeAuthors,
    /// `update`, the kind Open Library logs a delete under: a work and its editions deleted.
    #[serde(rename = "update")]
    Delete,
    /// `add-cover`: a work gains a cover.
    #[serde(rename = "add-cover")]
    AddCover,
}

impl ChangeKind {
    /// Every kind, in the order a plan interleaves them.
    pub const ALL: [ChangeKind; 5] = [
        ChangeKind::EditBook,
        ChangeKind::AddBook,
        ChangeKind::MergeAuthors,
        ChangeKind::Delete,
        ChangeKind::AddCover,
    ];

    /// The feed's name of the kind (`edit-book`, …, `update` for a delete).
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::EditBook => "edit-book",
            ChangeKind::AddBook => "add-book",
            ChangeKind::MergeAuthors => "merge-authors",
            ChangeKind::Delete => "update",
            ChangeKind::AddCover => "add-cover",
        }
    }

    /// Whether a bot makes changes of this kind: on Open Library imports and author merges
    /// are mostly bots' work, edits, deletes and covers people's. `bot=` filters on it.
    pub fn is_bot(self) -> bool {
        matches!(self, ChangeKind::AddBook | ChangeKind::MergeAuthors)
    }

    /// An endless, fixed mix of every kind for a continuous generator: per ten changes four
    /// edits, two adds, two covers, one merge and one delete, so the catalogue keeps its
    /// size roughly while every kind keeps appearing.
    pub fn mix() -> impl Iterator<Item = ChangeKind> + Send + 'static {
        use ChangeKind::*;
        [
            EditBook,
            AddBook,
            AddCover,
            EditBook,
            MergeAuthors,
            AddBook,
            EditBook,
            Delete,
            AddCover,
            EditBook,
        ]
        .into_iter()
        .cycle()
    }
}

/// How many changes of each kind to apply (the body of `POST /_sim/changes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChangePlan {
    /// `edit-book` changes.
    #[serde(default)]
    pub edits: usize,
    /// `add-book` changes.
    #[serde(default)]
    pub adds: usize,
    /// `merge-authors` changes.
    #[serde(default)]
    pub merges: usize,
    /// Deletes (`update` changes).
    #[serde(default)]
    pub deletes: usize,
    /// `add-cover` changes.
    #[serde(default)]
    pub covers: usize,
}

impl ChangePlan {
    /// Changes in the plan.
    pub fn total(&self) -> usize {
        self.edits + self.adds + self.merges + self.deletes + self.covers
    }

    /// The plan's changes in the order they are applied: round-robin over the kinds in
    /// [`ChangeKind::ALL`]'s order while each has some left, so kinds interleave (an edit
    /// may hit a work added just before, a delete a work just edited) and the order is fixed.
    pub fn kinds(&self) -> Vec<ChangeKind> {
        let mut left = [
            self.edits,
            self.adds,
            self.merges,
            self.deletes,
            self.covers,
        ];
        let mut order = Vec::with_capacity(self.total());
        while left.iter().any(|n| *n > 0) {
            for (kind, n) in ChangeKind::ALL.iter().zip(left.iter_mut()) {
                if *n > 0 {
                    *n -= 1;
                    order.push(*kind);
                }
            }
        }
        order
    }
}

/// What one change wrote, before it becomes a feed entry.
struct Applied {
    comment: String,
    changes: Vec<ChangedRecord>,
    data: Value,
}

fn changed(key: &str, stamp: &Stamp) -> ChangedRecord {
    ChangedRecord {
        key: key.to_owned(),
        revision: stamp.revision,
    }
}

/// Removes `key` from a works list (every occurrence).
fn unlist(list: &mut Vec<String>, key: &str) {
    list.retain(|k| k != key);
}

impl Catalogue {
    /// Applies `plan` in [`ChangePlan::kinds`] order, each change at the wall clock's time
    /// (UTC), drawing from `rng`; the entries it logged (skipped changes log none).
    pub fn apply_changes<R: Rng + ?Sized>(
        &mut self,
        plan: &ChangePlan,
        rng: &mut R,
    ) -> Vec<ChangeEntry> {
        plan.kinds()
            .into_iter()
            .filter_map(|kind| self.apply_change(kind, rng, Utc::now().naive_utc()))
            .collect()
    }

    /// Applies one change of `kind` made at `at` (UTC; never earlier than the previous
    /// change, so ids and timestamps agree) and logs it: its entry, or `None` when there
    /// was nothing to act on.
    pub fn apply_change<R: Rng + ?Sized>(
        &mut self,
        kind: ChangeKind,
        rng: &mut R,
        at: NaiveDateTime,
    ) -> Option<ChangeEntry> {
        // Microseconds, as Open Library's datetimes: the entry and the records agree.
        let at = at
            .with_nanosecond(at.nanosecond() / 1000 * 1000)
            .unwrap_or(at);
        let at = match self.log.last() {
            Some(last) if last.timestamp > at => last.timestamp,
            _ => at,
        };
        let text = at.format(TIMESTAMP_FORMAT).to_string();
        let applied = match kind {
            ChangeKind::EditBook => self.edit_book(rng, &text),
            ChangeKind::AddBook => Some(self.add_book(rng, &text)),
            ChangeKind::MergeAuthors => self.merge_authors(rng, &text),
            ChangeKind::Delete => self.delete_work(rng, &text),
            ChangeKind::AddCover => self.add_cover(rng, &text),
        }?;
        let entry = ChangeEntry {
            id: self.last_change_id().unwrap_or(0) + 1,
            kind: kind.as_str().to_owned(),
            timestamp: at,
            author: ChangeAuthor {
                key: SIM_ACCOUNT.to_owned(),
            },
            ip: None,
            comment: applied.comment,
            changes: applied.changes,
            data: applied.data,
            bot: kind.is_bot(),
        };
        self.log.push(entry.clone());
        Some(entry)
    }

    fn live_work_indices(&self) -> Vec<usize> {
        self.live_works().map(|(i, _)| i).collect()
    }

    fn live_author_indices(&self) -> Vec<usize> {
        self.live_authors().map(|(i, _)| i).collect()
    }

    /// Subjects some live work names: only these can be given to a work, because a subject
    /// no live work names is, in the truth, a stub a graph would not have a name for.
    fn named_subject_indices(&self) -> Vec<usize> {
        (0..self.subjects.len())
            .filter(|s| !self.subjects[*s].works.is_empty())
            .collect()
    }

    fn random_live_work<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        let live = self.live_work_indices();
        (!live.is_empty()).then(|| live[rng.random_range(0..live.len())])
    }

    /// Raises work `w`'s revision, stamped `at`; the feed's record of it.
    fn bump_work(&mut self, w: usize, at: &str) -> ChangedRecord {
        let work = &mut self.works[w];
        work.stamp = work.stamp.bumped(at);
        changed(&work.key, &work.stamp)
    }

    fn bump_edition(&mut self, e: usize, at: &str) -> ChangedRecord {
        let edition = &mut self.editions[e];
        edition.stamp = edition.stamp.bumped(at);
        changed(&edition.key, &edition.stamp)
    }

    /// The works list of the author `key`, if it is a live author.
    fn author_list(&mut self, key: &str) -> Option<&mut Vec<String>> {
        match self.records.get(key) {
            Some(Entry::Author(a)) => Some(&mut self.authors[*a].works),
            _ => None,
        }
    }

    /// The works list of the subject `name` names, if it is one of the catalogue's.
    fn subject_list(&mut self, name: &str) -> Option<&mut Vec<String>> {
        let s = *self.subject_index.get(&subject_key(name)?)?;
        Some(&mut self.subjects[s].works)
    }

    fn edit_book<R: Rng + ?Sized>(&mut self, rng: &mut R, at: &str) -> Option<Applied> {
        let w = self.random_live_work(rng)?;
        let key = self.works[w].key.clone();
        let mut title = words::title(rng);
        if title == self.works[w].title {
            title = format!("{title}, Revised");
        }
        self.works[w].title = title;
        let mut what = "title";
        if rng.random_bool(0.4) {
            match rng.random_range(0..4) {
                0 => {
                    let live = self.live_author_indices();
                    if let Some(&a) = live.get(rng.random_range(0..live.len().max(1)))
                        && !self.works[w].authors.contains(&self.authors[a].key)
                    {
                        let author = self.authors[a].key.clone();
                        self.works[w].authors.push(author);
                        self.authors[a].works.push(key.clone());
                        what = "title and authors";
                    }
                }
                1 if self.works[w].authors.len() > 1 => {
                    let i = rng.random_range(0..self.works[w].authors.len());
                    let gone = self.works[w].authors.remove(i);
                    if let Some(list) = self.author_list(&gone) {
                        unlist(list, &key);
                    }
                    what = "title and authors";
                }
                2 if !self.named_subject_indices().is_empty() => {
                    let named = self.named_subject_indices();
                    let s = named[rng.random_range(0..named.len())];
                    let name = self.subjects[s].name.clone();
                    let named = subject_key(&name);
                    let has = self.works[w]
                        .subjects
                        .iter()
                        .any(|n| subject_key(n) == named);
                    if !has {
                        self.works[w].subjects.push(name);
                        self.subjects[s].works.push(key.clone());
                        what = "title and subjects";
                    }
                }
                3 => {
                    let distinct: BTreeSet<Option<String>> = self.works[w]
                        .subjects
                        .iter()
                        .map(|n| subject_key(n))
                        .collect();
                    if distinct.len() > 1 {
                        let i = rng.random_range(0..self.works[w].subjects.len());
                        let named = subject_key(&self.works[w].subjects[i]);
                        // Every spelling of the subject goes: it is one subject.
                        self.works[w].subjects.retain(|n| subject_key(n) != named);
                        if let Some(s) = named.and_then(|k| self.subject_index.get(&k).copied()) {
                            unlist(&mut self.subjects[s].works, &key);
                        }
                        what = "title and subjects";
                    }
                }
                _ => {}
            }
        }
        Some(Applied {
            comment: format!("Edited the {what}"),
            changes: vec![self.bump_work(w, at)],
            data: json!({}),
        })
    }

    fn add_book<R: Rng + ?Sized>(&mut self, rng: &mut R, at: &str) -> Applied {
        let mut changes = Vec::new();
        let live = self.live_author_indices();
        let author = if live.is_empty() || rng.random_bool(0.3) {
            let a = self.authors.len();
            let key = format!("/authors/OL{}A", self.next.author);
            self.next.author += 1;
            let stamp = Stamp::new(1, at);
            changes.push(changed(&key, &stamp));
            self.records.insert(key.clone(), Entry::Author(a));
            self.authors.push(Author {
                key,
                stamp,
                name: format!("{} {}", pick(rng, FIRST), pick(rng, LAST)),
                birth_date: (1900 + rng.random_range(0..100)).to_string(),
                death_date: None,
                bio: Some(Text {
                    value: "An author added to the simulated catalogue by a change.".to_owned(),
                    typed: true,
                }),
                works: Vec::new(),
            });
            a
        } else {
            live[skewed(rng, live.len())]
        };
        let author_key = self.authors[author].key.clone();

        let w = self.works.len();
        let key = format!("/works/OL{}W", self.next.work);
        self.next.work += 1;
        let mut subjects: Vec<String> = Vec::new();
        let named = self.named_subject_indices();
        let wanted = rng.random_range(1..=3).min(named.len());
        while subjects.len() < wanted {
            let name = self.subjects[named[skewed(rng, named.len())]].name.clone();
            if !subjects.contains(&name) {
                subjects.push(name);
            }
        }
        for name in &subjects {
            if let Some(list) = self.subject_list(name) {
                list.push(key.clone());
            }
        }
        self.authors[author].works.push(key.clone());
        let title = words::title(rng);
        let year = 1950 + rng.random_range(0..75);

        let e = self.editions.len();
        let edition_key = format!("/books/OL{}M", self.next.edition);
        self.next.edition += 1;
        let stamp = Stamp::new(1, at);
        changes.push(changed(&key, &stamp));
        changes.push(changed(&edition_key, &stamp));
        self.records.insert(edition_key.clone(), Entry::Edition(e));
        self.editions.push(Edition {
            key: edition_key,
            stamp: stamp.clone(),
            work: key.clone(),
            title: title.clone(),
            publish_date: year.to_string(),
            publishers: vec![pick(rng, PUBLISHERS).to_owned()],
            isbn_10: isbn(e, 10),
            isbn_13: isbn(e, 13),
            number_of_pages: rng.random_range(90..900),
            authors: vec![author_key.clone()],
            subjects: subjects.iter().take(1).cloned().collect(),
        });
        self.records.insert(key.clone(), Entry::Work(w));
        self.works.push(Work {
            key: key.clone(),
            stamp,
            created: at.to_owned(),
            title,
            subtitle: None,
            first_publish_date: year.to_string(),
            description: Some(Text {
                value: format!("A work added to the simulated catalogue as {key}."),
                typed: false,
            }),
            covers: Vec::new(),
            authors: vec![author_key],
            subjects,
            editions: vec![e],
        });
        Applied {
            comment: "Added a new book".to_owned(),
            changes,
            data: json!({}),
        }
    }

    fn merge_authors<R: Rng + ?Sized>(&mut self, rng: &mut R, at: &str) -> Option<Applied> {
        let live = self.live_author_indices();
        if live.len() < 2 {
            return None;
        }
        let i = rng.random_range(0..live.len());
        let mut j = rng.random_range(0..live.len() - 1);
        if j >= i {
            j += 1;
        }
        let (master, duplicate) = (live[i], live[j]);
        let master_key = self.authors[master].key.clone();
        let dup_key = self.authors[duplicate].key.clone();

        let mut changes = Vec::new();
        let stamp = self.authors[duplicate].stamp.bumped(at);
        self.authors[duplicate].stamp = stamp.clone();
        changes.push(changed(&dup_key, &stamp));
        self.records
            .insert(dup_key.clone(), Entry::redirect(master_key.clone(), stamp));
        // Redirects to the duplicate now point to the master: chains stay one hop long
        // however many merges follow.
        let mut pointing: Vec<String> = self
            .records
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Redirect { location, .. } if *location == dup_key))
            .map(|(k, _)| k.clone())
            .collect();
        pointing.sort();
        for key in pointing {
            if let Some(Entry::Redirect { location, stamp }) = self.records.get_mut(&key) {
                *location = master_key.clone();
                *stamp = stamp.bumped(at);
                changes.push(changed(&key, stamp));
            }
        }
        let rename = |names: &mut Vec<String>| -> bool {
            let Some(at) = names.iter().position(|k| *k == dup_key) else {
                return false;
            };
            if names.contains(&master_key) {
                names.remove(at);
            } else {
                names[at] = master_key.clone();
            }
            true
        };
        for w in self.live_work_indices() {
            if rename(&mut self.works[w].authors) {
                changes.push(self.bump_work(w, at));
            }
        }
        let editions: Vec<usize> = self.live_editions().map(|(e, _)| e).collect();
        for e in editions {
            if rename(&mut self.editions[e].authors) {
                changes.push(self.bump_edition(e, at));
            }
        }
        let moved = std::mem::take(&mut self.authors[duplicate].works);
        let list = &mut self.authors[master].works;
        for key in moved {
            if !list.contains(&key) {
                list.push(key);
            }
        }
        Some(Applied {
            comment: format!("Merged {dup_key} into {master_key}"),
            changes,
            data: json!({"master": master_key, "duplicates": [dup_key]}),
        })
    }

    fn delete_work<R: Rng + ?Sized>(&mut self, rng: &mut R, at: &str) -> Option<Applied> {
        let w = self.random_live_work(rng)?;
        let key = self.works[w].key.clone();
        let stamp = self.works[w].stamp.bumped(at);
        self.works[w].stamp = stamp.clone();
        let mut changes = vec![changed(&key, &stamp)];
        self.records.insert(key.clone(), Entry::Deleted(stamp));
        // Its editions go too: no live record is left naming a deleted work.
        for e in self.works[w].editions.clone() {
            if matches!(
                self.records.get(&self.editions[e].key),
                Some(Entry::Edition(_))
            ) {
                let record = self.bump_edition(e, at);
                let stamp = self.editions[e].stamp.clone();
                self.records
                    .insert(record.key.clone(), Entry::Deleted(stamp));
                changes.push(record);
            }
        }
        for author in &mut self.authors {
            unlist(&mut author.works, &key);
        }
        for subject in &mut self.subjects {
            unlist(&mut subject.works, &key);
        }
        Some(Applied {
            comment: format!("Deleted {key} and its editions"),
            changes,
            data: json!({}),
        })
    }

    fn add_cover<R: Rng + ?Sized>(&mut self, rng: &mut R, at: &str) -> Option<Applied> {
        let w = self.random_live_work(rng)?;
        let cover = self.next.cover;
        self.next.cover += 1;
        self.works[w].covers.push(cover);
        Some(Applied {
            comment: "Added a new cover".to_owned(),
            changes: vec![self.bump_work(w, at)],
            data: json!({"cover": cover}),
        })
    }
}
