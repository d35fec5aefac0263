//! The truth of a crawl: what a crawl of the catalogue from given seeds must find, computed
//! by crawling the catalogue's own answers through the project's parser.

use super::*;

impl Catalogue {
    /// The exact outcome of a crawl from `seeds` under `limits` and the contract's crawl
    /// rules, with `fails(key)` naming keys whose every fetch fails (and why).
    ///
    /// Breadth-first from the seeds (depth 0), so each key is expanded at its shortest
    /// distance. A job for a key is one fetch of its record (following redirects, hop limit
    /// 5, the target crawled in place of the source) plus, for an author, subject or (with
    /// `crawl_editions`) work, its list. Edges are written from every fetched node, children
    /// are enqueued only below `max_depth`. `MAX_NODES` is not modelled (assume it is not hit).
    pub fn reachable(
        &self,
        seeds: &[String],
        limits: &CrawlLimits,
        fails: &dyn Fn(&str) -> Option<FailureReason>,
    ) -> Reachable {
        let mut out = Reachable::default();
        let mut queue: VecDeque<(String, u32)> = VecDeque::new();
        for seed in seeds {
            if !out.enqueued.contains_key(seed) {
                out.enqueued.insert(seed.clone(), 0);
                queue.push_back((seed.clone(), 0));
            }
        }
        while let Some((key, depth)) = queue.pop_front() {
            let (outcome, children) = self.crawl_one(&key, limits, fails);
            for child in &children {
                if let Some(edge) = &child.edge {
                    out.edges.insert(edge.clone());
                }
            }
            if let Outcome::Node { key: node, label } = &outcome {
                out.nodes.insert(node.clone(), *label);
            }
            out.outcomes.insert(key.clone(), outcome);
            if depth < limits.max_depth {
                for child in children {
                    if !out.enqueued.contains_key(&child.key) {
                        out.enqueued.insert(child.key.clone(), depth + 1);
                        queue.push_back((child.key, depth + 1));
                    }
                }
            }
        }
        for edge in &out.edges {
            for end in [&edge.from, &edge.to] {
                if !out.nodes.contains_key(end) {
                    out.stubs.insert(end.clone());
                }
            }
        }
        out
    }

    /// One job: its outcome and the children it yields (each with the edge it writes).
    fn crawl_one(
        &self,
        key: &str,
        limits: &CrawlLimits,
        fails: &dyn Fn(&str) -> Option<FailureReason>,
    ) -> (Outcome, Vec<Child>) {
        const MAX_HOPS: usize = 5;
        if let Some(text) = key.strip_prefix("search:") {
            let Ok(found) = parse_search(
                self.search(text, limits.max_search_results, 0)
                    .to_string()
                    .as_bytes(),
            ) else {
                return (
                    Outcome::Failed {
                        reason: FailureReason::Parse,
                    },
                    Vec::new(),
                );
            };
            let children: Vec<Child> = found
                .work_keys()
                .into_iter()
                .take(limits.max_search_results)
                .map(|k| Child { key: k, edge: None })
                .collect();
            return (
                Outcome::Search {
                    results: children.len(),
                },
                children,
            );
        }
        if key.starts_with("/subjects/") {
            if let Some(reason) = fails(key) {
                return (Outcome::Failed { reason }, Vec::new());
            }
            let body = self
                .subject(key, limits.max_works_per_subject, 0)
                .to_string();
            let Ok(page) = parse_subject(body.as_bytes()) else {
                return (
                    Outcome::Failed {
                        reason: FailureReason::Parse,
                    },
                    Vec::new(),
                );
            };
            let children = page
                .works
                .iter()
                .take(limits.max_works_per_subject)
                .map(|w| Child::with_edge(&w.key, &w.key, key, Rel::ABOUT))
                .collect();
            return (
                Outcome::Node {
                    key: key.to_owned(),
                    label: Label::Subject,
                },
                children,
            );
        }
        let mut current = key.to_owned();
        for _ in 0..=MAX_HOPS {
            if let Some(reason) = fails(&current) {
                return (Outcome::Failed { reason }, Vec::new());
            }
            let body = match self.record(&current) {
                Some(v) => v.to_string(),
                None => json!({"error": "notfound", "key": current}).to_string(),
            };
            let entity = match parse_record(body.as_bytes()) {
                Ok(RecordAnswer::Entity(e)) => e,
                Ok(RecordAnswer::Redirect { location, .. }) => {
                    current = location;
                    continue;
                }
                Ok(RecordAnswer::Deleted { .. }) => return (Outcome::Deleted, Vec::new()),
                Ok(RecordAnswer::NotFound { .. }) => return (Outcome::NotFound, Vec::new()),
                Err(_) => {
                    return (
                        Outcome::Failed {
                            reason: FailureReason::Parse,
                        },
                        Vec::new(),
                    );
                }
            };
            let mut children: Vec<Child> = entity
                .outgoing(limits.max_subjects_per_node)
                .into_iter()
                .map(|(rel, to)| Child::with_edge(&to, &entity.key, &to, rel))
                .collect();
            // A work's or author's list page, read with the worker's own parser: each entry
            // is a child with an edge from it to the entity.
            let page = match entity.label {
                Label::Author => Some((
                    self.author_works(&entity.key, limits.max_works_per_author, 0),
                    limits.max_works_per_author,
                    Rel::WRITTEN_BY,
                )),
                Label::Work if limits.crawl_editions => Some((
                    self.work_editions(&entity.key, limits.max_editions_per_work, 0),
                    limits.max_editions_per_work,
                    Rel::EDITION_OF,
                )),
                _ => None,
            };
            if let Some((body, limit, rel)) = page {
                let body = body.map(|v| v.to_string()).unwrap_or_default();
                let Ok(page) = parse_page(body.as_bytes()) else {
                    return (
                        Outcome::Failed {
                            reason: FailureReason::Parse,
                        },
                        Vec::new(),
                    );
                };
                children.extend(
                    page.entries
                        .iter()
                        .take(limit)
                        .map(|e| Child::with_edge(&e.key, &e.key, &entity.key, rel)),
                );
            }
            return (
                Outcome::Node {
                    key: entity.key,
                    label: entity.label,
                },
                children,
            );
        }
        (
            Outcome::Failed {
                reason: FailureReason::Http4xx,
            },
            Vec::new(),
        )
    }
}

struct Child {
    key: String,
    edge: Option<ReachEdge>,
}

impl Child {
    fn with_edge(key: &str, from: &str, to: &str, rel: Rel) -> Child {
        Child {
            key: key.to_owned(),
            edge: Some(ReachEdge {
                from: from.to_owned(),
                to: to.to_owned(),
                rel,
            }),
        }
    }
}

/// A relationship a crawl writes, in the graph table's direction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ReachEdge {
    /// Start key.
    pub from: String,
    /// End key.
    pub to: String,
    /// Relationship type.
    pub rel: Rel,
}

/// What one crawl job ends as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A node was published: `key` is the job's key, or the redirect target crawled in its place.
    Node {
        /// The node's key.
        key: String,
        /// The node's label.
        label: Label,
    },
    /// A `search:` seed: no node, `results` works enqueued.
    Search {
        /// Works it enqueued.
        results: usize,
    },
    /// The record is `/type/delete`: recorded, no node.
    Deleted,
    /// The record answered 404 `notfound`: recorded, no node.
    NotFound,
    /// Every fetch fails (an injected always-failing key): a DLQ record with `reason`.
    Failed {
        /// The DLQ reason.
        reason: FailureReason,
    },
}

/// The truth of a crawl: what the graph and the DLQ must hold afterwards.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Reachable {
    /// Keys that get a node record (label as published).
    pub nodes: BTreeMap<String, Label>,
    /// Edge endpoints with no node record: the graph shows them as `stub: true` (children
    /// past the max depth, redirect sources, deleted, missing and failed keys).
    pub stubs: BTreeSet<String>,
    /// Every relationship written.
    pub edges: BTreeSet<ReachEdge>,
    /// Every key claimed (enqueued) by the crawl, with its shortest depth.
    pub enqueued: BTreeMap<String, u32>,
    /// How each claimed key's job ends.
    pub outcomes: BTreeMap<String, Outcome>,
}
