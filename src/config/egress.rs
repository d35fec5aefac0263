//! Where the worker may fetch, how it identifies itself, and how politely it sends.

use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use url::Url;

use super::parse::{
    parse_duration, parse_origin, parse_positive, parse_positive_u32, parse_ratio, parse_user_agent,
};

/// The default `USER_AGENT`: the product token, version, project URL and a contact.
pub const DEFAULT_USER_AGENT: &str = concat!(
    "RelentlessBookworm/",
    env!("CARGO_PKG_VERSION"),
    " (+https://github.com/relentless-bookworm/relentless-bookworm; crawler@relentless-bookworm.org)"
);

/// The Open Library origin, declared once for the worker and the API: the only origin the
/// worker fetches from (jobs and redirects naming any other are refused), and the one seeds
/// may name in URLs.
#[derive(Args, Debug, Clone)]
pub struct OriginArgs {
    /// The Open Library origin: the only one fetched from, and the one seed URLs may name.
    #[arg(
        long,
        env = "OPENLIBRARY_BASE_URL",
        default_value = "https://openlibrary.org",
        value_parser = parse_origin
    )]
    pub openlibrary_base_url: Url,
}

/// Where the egress pool's shared state lives in Redis: the per-egress limits, the User-Agent
/// budget and the User-Agent block. Declared once for the worker, the API (which shows a block
/// in the crawls' state) and `bookworm unblock`.
#[derive(Args, Debug, Clone)]
pub struct EgressStateArgs {
    /// Prefix of the Redis keys of the egress pool's shared state (per-egress limits,
    /// User-Agent budget and block); workers that share a prefix share all three.
    #[arg(long, env = "EGRESS_REDIS_PREFIX", default_value = "relentless:egress")]
    pub egress_redis_prefix: String,
}

/// Where the worker may fetch, how it identifies itself, and how politely it sends: the
/// egress pool, its rate limits, robots.txt, and the bounds on every request.
#[derive(Args, Debug, Clone)]
pub struct EgressArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub origin: OriginArgs,

    /// Sent on every request. Must name the application and a contact (an email or a URL):
    /// Open Library grants 3 req/s only to such clients and answers 403 to some others.
    #[arg(long, env = "USER_AGENT", default_value = DEFAULT_USER_AGENT,
          value_parser = parse_user_agent)]
    pub user_agent: String,

    /// Egress proxies, comma-separated `http://host:port` entries and/or the word `direct`;
    /// empty means direct. Each entry is one source IP with its own rate limit. Its value is
    /// not shown by --help (a proxy URL may carry a password).
    #[arg(long, env = "PROXY_POOL", default_value = "", hide_env_values = true,
          value_parser = ProxyPoolParser)]
    pub proxy_pool: ProxyPool,

    /// Requests per minute per egress. Open Library allows 180/min per IP; 150 leaves headroom
    /// for clock skew between its nginx and our limiter, so a paced pool sees no 429.
    #[arg(long, env = "EGRESS_RATE_PER_MINUTE", default_value = "150", value_parser = parse_positive_u32)]
    pub egress_rate_per_minute: u32,

    /// Requests an idle egress may send at once. Open Library's nginx passes 10 excess requests
    /// undelayed (burst 25, delay 10), so 10 never meets a delay or a 429.
    #[arg(long, env = "EGRESS_BURST", default_value = "10", value_parser = parse_positive_u32)]
    pub egress_burst: u32,

    /// `cluster`: each egress's limit is shared by every worker process through Redis, so
    /// adding workers never exceeds the per-IP budget; `local`: per process.
    #[arg(
        long,
        env = "EGRESS_LIMIT_SCOPE",
        value_enum,
        default_value = "cluster"
    )]
    pub egress_limit_scope: LimitScope,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: EgressStateArgs,

    /// One budget for every request under our User-Agent, per minute: all egresses and (with
    /// cluster scope) all worker replicas draw from it. Open Library limits 400/min per
    /// User-Agent across IPs; 360 leaves the same headroom as the per-egress rate.
    #[arg(long, env = "USER_AGENT_RATE_PER_MINUTE", default_value = "360", value_parser = parse_positive_u32)]
    pub user_agent_rate_per_minute: u32,

    /// A record fetched more recently than this, by any crawl, is taken from the shared record
    /// cache (Redis) instead of being fetched again, so a new crawl over known ground costs
    /// Open Library almost nothing. `0s` turns the cache off.
    #[arg(long, env = "REFETCH_AFTER", default_value = "7d", value_parser = parse_duration)]
    pub refetch_after: Duration,

    /// Ceiling on the record cache's bytes in Redis; past it the oldest records are evicted
    /// first, so the cache stays bounded however large the catalogue crawled.
    #[arg(long, env = "RECORD_CACHE_MAX_BYTES", default_value = "268435456", value_parser = parse_positive)]
    pub record_cache_max_bytes: usize,

    /// After Open Library refuses our User-Agent (403), every worker stops sending until an
    /// operator runs `bookworm unblock`, or until this long has passed, when one request probes
    /// whether the block was lifted.
    #[arg(long, env = "BLOCKED_PROBE_INTERVAL", default_value = "6h", value_parser = parse_duration)]
    pub blocked_probe_interval: Duration,

    /// Obey Open Library's robots.txt.
    #[arg(long, env = "RESPECT_ROBOTS_TXT", default_value = "true", action = clap::ArgAction::Set)]
    pub respect_robots_txt: bool,

    /// How long a fetched robots.txt is trusted before it is fetched again (RFC 9309 suggests
    /// not caching longer than 24 hours).
    #[arg(long, env = "ROBOTS_REFRESH", default_value = "24h", value_parser = parse_duration)]
    pub robots_refresh: Duration,

    /// Largest response body read; past it the fetch fails. The largest real Open Library
    /// pages (1000-entry lists) are a few MiB; a bigger answer is a fault, not data.
    #[arg(long, env = "MAX_BODY_BYTES", default_value = "8388608", value_parser = parse_positive)]
    pub max_body_bytes: usize,

    /// Bound on opening a TCP (and TLS) connection: a dead proxy shows within it and is
    /// marked down, instead of holding the request for the whole request timeout.
    #[arg(long, env = "CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Longest silence while reading an answer before the attempt counts as timed out.
    #[arg(long, env = "READ_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub read_timeout: Duration,

    /// Bound on one whole attempt (connect, send, read the body). Open Library answers in
    /// well under a second when healthy; 30 s tolerates its slow pages without letting a
    /// trickling answer hold a connection for long.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Retries of one request after a timeout, a connection error, a 5xx, or a 429 (which
    /// moves it to another egress). Each retry needs the retry budget too.
    #[arg(long, env = "FETCH_RETRIES", default_value = "3")]
    pub fetch_retries: u32,

    /// First backoff before a retry; it doubles per attempt, with full jitter.
    #[arg(long, env = "RETRY_BACKOFF_BASE", default_value = "500ms", value_parser = parse_duration)]
    pub retry_backoff_base: Duration,

    /// Largest backoff before a retry, so a job never sleeps past its JOB_TIMEOUT for nothing.
    #[arg(long, env = "RETRY_BACKOFF_MAX", default_value = "10s", value_parser = parse_duration)]
    pub retry_backoff_max: Duration,

    /// Retries may be at most this share of first attempts over the budget window (plus
    /// RETRY_BUDGET_MIN). Beyond it a retryable failure fails at once with its reason, so keys
    /// that always fail cannot take the rate budget from healthy ones.
    #[arg(long, env = "RETRY_BUDGET_RATIO", default_value = "0.2", value_parser = parse_ratio)]
    pub retry_budget_ratio: f64,

    /// Retries always allowed per budget window, so a quiet worker can still retry.
    #[arg(long, env = "RETRY_BUDGET_MIN", default_value = "10")]
    pub retry_budget_min: u32,

    /// The sliding window over which the retry budget is counted.
    #[arg(long, env = "RETRY_BUDGET_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub retry_budget_window: Duration,

    /// First block of an egress after a 429 (or a 503 with Retry-After) without Retry-After,
    /// and first wait before probing a proxy that failed to connect; doubles per repeat.
    /// nginx's bucket drains at 3 req/s, so a few seconds empties what we overfilled.
    #[arg(long, env = "EGRESS_BLOCK_BASE", default_value = "5s", value_parser = parse_duration)]
    pub egress_block_base: Duration,

    /// Longest block of an egress (Retry-After is honoured up to an hour regardless).
    #[arg(long, env = "EGRESS_BLOCK_MAX", default_value = "5m", value_parser = parse_duration)]
    pub egress_block_max: Duration,
}

/// Egress IPs Open Library allows one client to spread its requests over ("do not distribute
/// traffic across 5 or more IPs").
pub const MAX_OPENLIBRARY_EGRESSES: usize = 4;

/// Whether `origin` is Open Library itself, whose published rules then apply on top of the
/// rate limits (a mirror or the simulator is not bound by them).
pub fn is_openlibrary(origin: &Url) -> bool {
    origin
        .host_str()
        .is_some_and(|host| host == "openlibrary.org" || host.ends_with(".openlibrary.org"))
}

impl EgressArgs {
    /// Checks the rules Open Library publishes for its API that no single variable can check
    /// alone, when the origin is openlibrary.org: at most [`MAX_OPENLIBRARY_EGRESSES`] egresses
    /// and a User-Agent the operator chose (the built-in one names this project, not the
    /// person Open Library should contact). The message names the variable.
    pub fn check_openlibrary_rules(&self) -> Result<(), String> {
        if !is_openlibrary(&self.origin.openlibrary_base_url) {
            return Ok(());
        }
        let egresses = self.proxy_pool.0.len();
        if egresses > MAX_OPENLIBRARY_EGRESSES {
            return Err(format!(
                "PROXY_POOL has {egresses} egresses; Open Library asks clients not to spread \
                 over more than {MAX_OPENLIBRARY_EGRESSES} IPs (or point OPENLIBRARY_BASE_URL at \
                 a mirror)"
            ));
        }
        if self.user_agent == DEFAULT_USER_AGENT {
            return Err(
                "USER_AGENT must be set to your own application and contact before crawling \
                 openlibrary.org, e.g. \"MyCrawler/1.0 (ops@example.org)\": the built-in one \
                 names this project, not you"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// Where the per-egress rate limit is kept.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// In Redis, shared by every worker process.
    Cluster,
    /// In this process only.
    Local,
}

/// One way out: a forward proxy or the host's own address. `Debug` redacts a proxy URL's
/// userinfo.
#[derive(Clone, PartialEq, Eq)]
pub enum EgressSpec {
    /// Connect to Open Library from this host.
    Direct,
    /// Go through an HTTP proxy at this URL (`http://host:port`).
    Proxy(Url),
}

impl EgressSpec {
    /// The metrics label: the proxy's `host:port`, or `direct`.
    pub fn label(&self) -> String {
        match self {
            EgressSpec::Direct => "direct".to_owned(),
            EgressSpec::Proxy(url) => format!(
                "{}:{}",
                url.host_str().unwrap_or_default(),
                url.port_or_known_default().unwrap_or(80)
            ),
        }
    }
}

impl std::fmt::Debug for EgressSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EgressSpec::Direct => f.write_str("Direct"),
            EgressSpec::Proxy(url) => f
                .debug_tuple("Proxy")
                .field(&super::redact_url(url.as_str()))
                .finish(),
        }
    }
}

/// The parsed `PROXY_POOL`: never empty (empty text means one direct egress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPool(pub Vec<EgressSpec>);

impl FromStr for ProxyPool {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_proxy_pool(text)
    }
}

/// `PROXY_POOL`'s clap parser. Unlike a plain function parser, whose error clap prints with
/// the raw value (`invalid value 'http://user:password@…'`), its errors quote the value
/// redacted only.
#[derive(Clone, Copy, Debug)]
pub struct ProxyPoolParser;

impl clap::builder::TypedValueParser for ProxyPoolParser {
    type Value = ProxyPool;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<ProxyPool, clap::Error> {
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidUtf8,
                "invalid value for '--proxy-pool <PROXY_POOL>': not UTF-8\n",
            )
        })?;
        parse_proxy_pool(text).map_err(|why| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for '--proxy-pool <PROXY_POOL>': {why}\n"),
            )
        })
    }
}

/// Parses `PROXY_POOL` for clap: comma-separated `http://host:port` entries and/or `direct`.
pub fn parse_proxy_pool(text: &str) -> Result<ProxyPool, String> {
    let mut specs = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        // Errors quote the entry with any userinfo redacted.
        let shown = super::redact_url(entry);
        let spec = if entry.eq_ignore_ascii_case("direct") {
            EgressSpec::Direct
        } else {
            let url = Url::parse(entry).map_err(|e| format!("{shown:?}: {e}"))?;
            if url.scheme() != "http" {
                return Err(format!("{shown:?}: only http:// proxies are supported"));
            }
            if url.host_str().is_none() || url.port().is_none() {
                return Err(format!("{shown:?}: expected http://host:port"));
            }
            if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
                return Err(format!(
                    "{shown:?}: expected http://host:port and nothing else"
                ));
            }
            EgressSpec::Proxy(url)
        };
        if specs.contains(&spec) {
            return Err(format!("{shown:?} appears twice"));
        }
        specs.push(spec);
    }
    if specs.is_empty() {
        specs.push(EgressSpec::Direct);
    }
    Ok(ProxyPool(specs))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        egress: EgressArgs,
    }

    /// Bad politeness settings stop the process at start-up with exit code 2, naming the flag.
    #[test]
    fn bad_egress_settings_exit_with_code_2() {
        for bad in [
            ["x", "--user-agent", "MyBot/1.0"],
            ["x", "--proxy-pool", "proxy-0:3128"],
            ["x", "--egress-rate-per-minute", "0"],
            [
                "x",
                "--openlibrary-base-url",
                "https://openlibrary.org/works",
            ],
            ["x", "--retry-budget-ratio", "1.5"],
        ] {
            let error = Cli::try_parse_from(bad).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad:?}");
            assert!(error.to_string().contains(bad[1]), "{error}");
        }
    }

    /// With openlibrary.org as origin: five egresses or the built-in User-Agent are refused,
    /// each naming its variable; four egresses and an operator's User-Agent pass; another
    /// origin is not limited.
    #[test]
    fn openlibrary_rules_need_four_egresses_at_most_and_our_own_user_agent() {
        let five = "http://p:1,http://p:2,http://p:3,http://p:4,http://p:5";
        let four = "http://p:1,http://p:2,http://p:3,http://p:4";
        let mine = "MyCrawler/1.0 (ops@example.org)";
        let check = |flags: &[&str]| {
            let mut argv = vec!["x"];
            argv.extend_from_slice(flags);
            Cli::try_parse_from(argv)
                .unwrap()
                .egress
                .check_openlibrary_rules()
        };
        let refused = check(&["--proxy-pool", five, "--user-agent", mine]).unwrap_err();
        assert!(refused.starts_with("PROXY_POOL"), "{refused}");
        let refused = check(&["--proxy-pool", four]).unwrap_err();
        assert!(refused.starts_with("USER_AGENT"), "{refused}");
        assert_eq!(check(&["--proxy-pool", four, "--user-agent", mine]), Ok(()));
        let sim = [
            "--openlibrary-base-url",
            "http://127.0.0.1:8090",
            "--proxy-pool",
            five,
        ];
        assert_eq!(check(&sim), Ok(()));
    }

    /// The defaults are the contract's: 150/min, burst 10, cluster scope, robots obeyed,
    /// and a User-Agent with a contact.
    #[test]
    fn defaults_follow_the_contract() {
        let cli = Cli::try_parse_from(["x", "--proxy-pool", ""]).unwrap();
        let e = cli.egress;
        assert_eq!(
            e.origin.openlibrary_base_url.as_str(),
            "https://openlibrary.org/"
        );
        assert_eq!((e.egress_rate_per_minute, e.egress_burst), (150, 10));
        assert_eq!(e.egress_limit_scope, LimitScope::Cluster);
        assert!(e.respect_robots_txt);
        assert!(e.user_agent.starts_with("RelentlessBookworm/"));
        assert_eq!(e.proxy_pool.0, vec![EgressSpec::Direct]);
        assert_eq!(e.user_agent_rate_per_minute, 360);
        assert_eq!(e.refetch_after, Duration::from_secs(7 * 24 * 3600));
    }
}
