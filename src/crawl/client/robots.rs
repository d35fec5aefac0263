//! robots.txt: parsing, matching and the cached copy the client obeys.
//!
//! Follows RFC 9309 (and Google's reading of it): the group for our product token
//! (`RelentlessBookworm`), else the `*` group; within it the longest matching `Allow` or
//! `Disallow` pattern decides (`*` matches any run, `$` anchors the end; on a tie `Allow`
//! wins). `Crawl-delay`, which the RFC leaves out but many sites use, is kept so the client
//! can slow the pool. Fetching is the client's job ([`crate::crawl::client`]); this module decides what
//! a fetched answer means: 2xx → these rules, 4xx → allow all, 5xx or unreachable → disallow
//! all until a retry (keeping an earlier good copy if there is one).

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Our product token, matched case-insensitively against `User-agent` lines.
pub const PRODUCT_TOKEN: &str = "RelentlessBookworm";

/// The most robots.txt read (RFC 9309 asks crawlers to parse at least 500 KiB).
pub const MAX_ROBOTS_BYTES: usize = 512 * 1024;

/// How soon an unreachable robots.txt is asked again while everything stays disallowed.
pub const UNREACHABLE_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    allow: bool,
    pattern: String,
}

/// The rules of one robots.txt that apply to us.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Robots {
    rules: Vec<Rule>,
    disallow_all: bool,
    crawl_delay: Option<Duration>,
}

impl Robots {
    /// Everything allowed (no robots.txt, or a 4xx for it).
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// Everything disallowed (robots.txt unreachable or 5xx).
    pub fn disallow_all() -> Self {
        Self {
            disallow_all: true,
            ..Self::default()
        }
    }

    /// Parses `text` and keeps the groups that apply to `token` (else to `*`).
    pub fn parse(text: &str, token: &str) -> Self {
        let token = token.to_ascii_lowercase();
        // Groups: the agents named by consecutive User-agent lines, then their rules.
        let mut specific = Self::default();
        let mut star = Self::default();
        let (mut found_specific, mut found_star) = (false, false);
        let mut agents: Vec<String> = Vec::new();
        let mut in_rules = false;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default().trim();
            let Some((field, value)) = line.split_once(':') else {
                continue;
            };
            let field = field.trim().to_ascii_lowercase();
            let value = value.trim();
            if field == "user-agent" {
                if in_rules {
                    agents.clear();
                    in_rules = false;
                }
                agents.push(value.to_ascii_lowercase());
                continue;
            }
            if agents.is_empty() {
                continue;
            }
            in_rules = true;
            let mine = agents.iter().any(|a| a == &token);
            let all = agents.iter().any(|a| a == "*");
            if mine {
                found_specific = true;
            }
            if all {
                found_star = true;
            }
            for (applies, target) in [(mine, &mut specific), (all, &mut star)] {
                if !applies {
                    continue;
                }
                match field.as_str() {
                    "allow" | "disallow" if !value.is_empty() => target.rules.push(Rule {
                        allow: field == "allow",
                        pattern: value.to_owned(),
                    }),
                    "crawl-delay" => {
                        if let Ok(seconds) = value.parse::<f64>()
                            && seconds.is_finite()
                            && seconds > 0.0
                        {
                            target.crawl_delay = Some(Duration::from_secs_f64(seconds.min(3600.0)));
                        }
                    }
                    _ => {}
                }
            }
        }
        if found_specific {
            specific
        } else if found_star {
            star
        } else {
            Self::default()
        }
    }

    /// Whether `path` (path and query, as sent) may be fetched.
    pub fn is_allowed(&self, path: &str) -> bool {
        if self.disallow_all {
            return false;
        }
        if path == "/robots.txt" {
            return true;
        }
        let mut best: Option<(usize, bool)> = None;
        for rule in &self.rules {
            if matches(&rule.pattern, path) {
                let length = rule.pattern.len();
                best = match best {
                    Some((l, allow)) if l > length || (l == length && allow) => Some((l, allow)),
                    _ => Some((length, rule.allow)),
                };
            }
        }
        best.is_none_or(|(_, allow)| allow)
    }

    /// Whether these are the stand-in rules for an unreachable robots.txt (not real rules).
    pub fn is_unavailable(&self) -> bool {
        self.disallow_all
    }

    /// The Crawl-delay of our group, if it set one.
    pub fn crawl_delay(&self) -> Option<Duration> {
        self.crawl_delay
    }
}

/// Whether a robots pattern matches the start of `path` (`*` any run, trailing `$` = end).
fn matches(pattern: &str, path: &str) -> bool {
    let (pattern, anchored) = match pattern.strip_suffix('$') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let pattern = pattern.as_bytes();
    let path = path.as_bytes();
    // Positions in `path` the pattern prefix read so far can end at.
    let mut ends = vec![0usize];
    for &byte in pattern {
        if ends.is_empty() {
            return false;
        }
        if byte == b'*' {
            let first = ends[0];
            ends = (first..=path.len()).collect();
        } else {
            ends = ends
                .into_iter()
                .filter(|&i| i < path.len() && path[i] == byte)
                .map(|i| i + 1)
                .collect();
        }
    }
    if anchored {
        ends.contains(&path.len())
    } else {
        !ends.is_empty()
    }
}

/// What a fetch of robots.txt produced, as the cache sees it.
#[derive(Debug)]
pub enum RobotsAnswer {
    /// 2xx with this body.
    Body(String),
    /// 4xx: no usable robots.txt, so everything is allowed.
    Missing,
    /// 5xx, 429, or no answer: everything is disallowed until a retry.
    Unreachable,
}

/// The copy of robots.txt the client obeys, and when to fetch it again.
#[derive(Debug, Default)]
pub struct RobotsCache {
    current: Option<(Arc<Robots>, Instant)>,
    /// The last good copy, used while a refresh fails.
    last_good: Option<Arc<Robots>>,
}

impl RobotsCache {
    /// The rules to use now, or `None` when they must be fetched first.
    pub fn fresh(&self, now: Instant) -> Option<Arc<Robots>> {
        match &self.current {
            Some((robots, expires)) if *expires > now => Some(Arc::clone(robots)),
            _ => None,
        }
    }

    /// Stores an answer and returns the rules it implies. `refresh` is how long a good
    /// answer is trusted.
    pub fn store(&mut self, answer: RobotsAnswer, now: Instant, refresh: Duration) -> Arc<Robots> {
        let (robots, ttl) = match answer {
            RobotsAnswer::Body(text) => (Arc::new(Robots::parse(&text, PRODUCT_TOKEN)), refresh),
            RobotsAnswer::Missing => (Arc::new(Robots::allow_all()), refresh),
            RobotsAnswer::Unreachable => {
                let robots = self
                    .last_good
                    .clone()
                    .unwrap_or_else(|| Arc::new(Robots::disallow_all()));
                (robots, UNREACHABLE_RETRY.min(refresh))
            }
        };
        if !robots.disallow_all {
            self.last_good = Some(Arc::clone(&robots));
        }
        self.current = Some((Arc::clone(&robots), now + ttl));
        robots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_LIBRARY: &str = "\
User-agent: *
Disallow: /search
Disallow: /api
Allow: /search/inside$

User-agent: BadBot
Disallow: /
";

    /// Open Library's shape: search and api are off limits, records are not.
    #[test]
    fn open_library_rules_allow_records_and_refuse_search() {
        let robots = Robots::parse(OPEN_LIBRARY, PRODUCT_TOKEN);
        assert!(robots.is_allowed("/works/OL1W.json"));
        assert!(robots.is_allowed("/subjects/love.json?limit=50"));
        assert!(!robots.is_allowed("/search.json?q=dune"));
        assert!(!robots.is_allowed("/api/books?bibkeys=x"));
        assert!(robots.is_allowed("/search/inside"));
        assert!(!robots.is_allowed("/search/inside.json"));
        assert!(robots.is_allowed("/robots.txt"));
    }

    /// Our own group replaces the `*` group, found case-insensitively, merged across groups.
    #[test]
    fn own_group_wins_over_star() {
        let text = "User-agent: *\nDisallow: /\n\nuser-agent: relentlessbookworm\nDisallow: /private\nCrawl-delay: 2\n\nUser-agent: RelentlessBookworm\nDisallow: /secret\n";
        let robots = Robots::parse(text, PRODUCT_TOKEN);
        assert!(robots.is_allowed("/works/OL1W.json"));
        assert!(!robots.is_allowed("/private/x"));
        assert!(!robots.is_allowed("/secret"));
        assert_eq!(robots.crawl_delay(), Some(Duration::from_secs(2)));
    }

    /// Several User-agent lines share the rules that follow them.
    #[test]
    fn consecutive_agents_share_a_group() {
        let text = "User-agent: other\nUser-agent: RelentlessBookworm\nDisallow: /x\n";
        assert!(!Robots::parse(text, PRODUCT_TOKEN).is_allowed("/x/y"));
    }

    /// Longest match decides; on a tie Allow wins; wildcards and anchors work.
    #[test]
    fn longest_match_and_wildcards() {
        let text = "User-agent: *\nDisallow: /works/\nAllow: /works/*.json$\nDisallow: /a\nAllow: /a\nDisallow: /*?*offset=\n";
        let robots = Robots::parse(text, PRODUCT_TOKEN);
        assert!(robots.is_allowed("/works/OL1W.json"));
        assert!(!robots.is_allowed("/works/OL1W.json?x=1"));
        assert!(!robots.is_allowed("/works/OL1W"));
        assert!(robots.is_allowed("/a/b"));
        assert!(!robots.is_allowed("/authors/OL1A/works.json?offset=50"));
        assert!(robots.is_allowed("/authors/OL1A/works.json?limit=50"));
    }

    /// An empty Disallow allows everything; no group for us allows everything.
    #[test]
    fn empty_disallow_and_no_group_allow_all() {
        assert!(Robots::parse("User-agent: *\nDisallow:\n", PRODUCT_TOKEN).is_allowed("/x"));
        assert!(Robots::parse("User-agent: other\nDisallow: /\n", PRODUCT_TOKEN).is_allowed("/x"));
        assert!(Robots::parse("", PRODUCT_TOKEN).is_allowed("/x"));
    }

    /// A 4xx allows all; an unreachable robots.txt disallows all until retried, unless an
    /// earlier good copy exists.
    #[test]
    fn cache_turns_answers_into_rules() {
        let now = Instant::now();
        let day = Duration::from_secs(86_400);
        let mut cache = RobotsCache::default();
        assert!(cache.fresh(now).is_none());
        assert!(
            !cache
                .store(RobotsAnswer::Unreachable, now, day)
                .is_allowed("/works/x")
        );
        assert!(
            cache.fresh(now + UNREACHABLE_RETRY).is_none(),
            "retried after a minute"
        );
        assert!(
            cache
                .store(RobotsAnswer::Missing, now, day)
                .is_allowed("/works/x")
        );
        let good = cache.store(RobotsAnswer::Body(OPEN_LIBRARY.to_owned()), now, day);
        assert!(!good.is_allowed("/search.json"));
        assert!(cache.fresh(now + Duration::from_secs(3600)).is_some());
        let kept = cache.store(RobotsAnswer::Unreachable, now, day);
        assert_eq!(*kept, *good, "the last good copy is kept through an outage");
    }
}
