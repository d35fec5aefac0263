//! `bookworm sim`: an Open Library stand-in for tests, benchmarks and the offline demo.
//!
//! Serves a deterministic synthetic [`Catalogue`] in Open Library's real shapes at the real
//! paths, and by default polices clients by Open Library's published rules: each client IP
//! limited the way its nginx does (180/min, burst 25), each User-Agent limited across all
//! IPs (400/min), and blocked User-Agents answered 403 ([`limiter`]). It injects faults on
//! request ([`faults`]), counts what it saw ([`stats`]) and answers with the exact graph a
//! crawl must build ([`Catalogue::reachable`]). Pointing `OPENLIBRARY_BASE_URL` at it
//! instead of openlibrary.org is the only change a worker needs.
//!
//! The catalogue changes while it is served, as Open Library's does: a change generator
//! ([`Catalogue::apply_changes`]) edits, adds, merges, deletes and covers records, raising
//! their revisions, and logs each change in Open Library's change feed, served at
//! `/recentchanges.json`, `/recentchanges/<kind>.json`, `/recentchanges/YYYY/MM/DD.json` and
//! `/recentchanges/YYYY/MM/DD/<kind>.json` (also `YYYY` and `YYYY/MM`) with `limit`
//! (default 100, clamped to 1,000), `offset` (clamped to 10,000) and `bot=true|false`,
//! newest first, like every Open Library path (limited, blocked, faulted and counted). A
//! `limit` or `offset` that is not a non-negative integer counts as absent, as Open Library
//! reads it; a date that is not one answers 404.
//!
//! Endpoints besides Open Library's, never limited, blocked nor counted:
//! - `GET /_sim/stats`, `POST /_sim/reset`: the counts, and forgetting them;
//! - `GET|POST /_sim/faults`, `GET|POST /_sim/blocked`: the faults and the blocked agents;
//! - `GET /_sim/reachable?seed=…&depth=…`: the truth of a crawl of the current catalogue;
//! - `GET /_sim/catalogue`: the current catalogue's sizes, subjects, redirects and deletes;
//! - `POST /_sim/changes` `{"edits", "adds", "merges", "deletes", "covers", "per_second"?,
//!   "seed"?}`: applies changes at once (`{"applied", "entries"}`) or, with `per_second`, in
//!   the background at that rate (202 `{"scheduled"}`); `GET /_sim/changes`: `{"applied",
//!   "pending", "last_id"}` ([`changes`]).

pub mod catalogue;
pub mod changes;
pub mod dump;
pub mod faults;
pub mod limiter;
mod open_library;
pub mod stats;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Json, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::catalogue::{
    Catalogue, CatalogueSpec, ChangeEntry, ChangeKind, ChangePlan, ChangedRecord, DumpRecord,
    FeedPeriod, FeedQuery, Outcome, ReachEdge, Reachable,
};
pub use self::changes::ChangesStatus;
use self::changes::Generator;
pub use self::faults::{Faults, Injected};
use self::limiter::{Decision, Limiter, check_all};
use self::open_library::open_library;
use self::stats::{InjectedRecord, Stats};
pub use crate::crawl::limits::CrawlLimits;

/// Settings of `bookworm sim`; every flag also reads an environment variable `SIM_…`.
#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long = "addr", env = "SIM_ADDR", default_value = "127.0.0.1:8090")]
    pub addr: SocketAddr,
    /// Seed of the catalogue: same seed and sizes, same catalogue.
    #[arg(long, env = "SIM_SEED", default_value = "42")]
    pub seed: u64,

    /// Added to every numeric id and named in every subject, so separate runs (tests sharing
    /// one Neo4j) never share a key.
    #[arg(long, env = "SIM_ID_BASE", default_value = "0")]
    pub id_base: u64,
    /// Live works in the catalogue.
    #[arg(long, env = "SIM_WORKS", default_value = "1000")]
    pub works: usize,
    /// Live authors.
    #[arg(long, env = "SIM_AUTHORS", default_value = "300")]
    pub authors: usize,
    /// Distinct subjects.
    #[arg(long, env = "SIM_SUBJECTS", default_value = "120")]
    pub subjects: usize,
    /// Most editions per work (each work gets 1 to this many).
    #[arg(long, env = "SIM_EDITIONS_PER_WORK", default_value = "3")]
    pub editions_per_work: usize,
    /// Work keys answering `/type/redirect` (default: one per 50 works).
    #[arg(long, env = "SIM_REDIRECTS")]
    pub redirects: Option<usize>,
    /// Work keys answering `/type/delete` (default: one per 100 works).
    #[arg(long, env = "SIM_DELETES")]
    pub deletes: Option<usize>,
    /// Author keys named by works that answer 404 (default: one per 100 authors).
    #[arg(long, env = "SIM_MISSING_AUTHORS")]
    pub missing_authors: Option<usize>,
    /// Requests per minute per client IP (Open Library: 180).
    #[arg(long, env = "SIM_RATE_PER_MINUTE", default_value = "180")]
    pub rate_per_minute: u32,
    /// Excess requests queued per client IP before 429 (Open Library: 25).
    #[arg(long, env = "SIM_BURST", default_value = "25")]
    pub burst: u32,
    /// Excess requests served without delay (nginx `delay=`; Open Library: 10).
    #[arg(long, env = "SIM_DELAY", default_value = "10")]
    pub delay: u32,
    /// Turn the per-IP and per-User-Agent limits off: for throughput benchmarks. Blocked
    /// User-Agents stay blocked.
    #[arg(long, env = "SIM_NO_LIMIT")]
    pub no_limit: bool,
    /// Requests per minute per User-Agent across all IPs (Open Library's second limit: 400);
    /// `0` turns this limit off and keeps the per-IP one.
    #[arg(long, env = "SIM_UA_RATE_PER_MINUTE", default_value = "400")]
    pub ua_rate_per_minute: u32,
    /// Excess requests per User-Agent before 429 (none are delayed).
    #[arg(long, env = "SIM_UA_BURST", default_value = "25")]
    pub ua_burst: u32,
    /// User-Agents answered 403 on every Open Library path, robots.txt included: a request
    /// is blocked when its User-Agent contains any of these (comma-separated, matched
    /// ignoring case), as Open Library blocks a client that broke its rules. Changeable at
    /// run time through `POST /_sim/blocked`.
    #[arg(long, env = "SIM_BLOCKED_USER_AGENTS", value_delimiter = ',', value_parser = parse_agent_pattern)]
    pub blocked_user_agents: Vec<String>,
    /// Changes per second applied by a continuous generator (a fixed mix of every kind:
    /// edits, adds, covers, merges, deletes), so a demo's change feed keeps moving; `0` (the
    /// default) runs none. Changes can always be made on request (`POST /_sim/changes`).
    #[arg(long, env = "SIM_CHANGES_PER_SECOND", default_value = "0", value_parser = changes::parse_rate)]
    pub changes_per_second: f64,
    /// Faults to inject from the start.
    #[command(flatten)]
    pub faults: Faults,
}

impl SimArgs {
    /// Parses flags as `bookworm sim` would (tests build settings this way:
    /// `SimArgs::from_flags(["--addr", "127.0.0.1:0", "--works", "50"])`).
    pub fn from_flags<I, S>(flags: I) -> Result<SimArgs, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: SimArgs,
        }
        let argv = std::iter::once(std::ffi::OsString::from("sim"))
            .chain(flags.into_iter().map(Into::into));
        <Wrapper as clap::Parser>::try_parse_from(argv).map(|w| w.args)
    }

    /// The catalogue these settings describe.
    pub fn spec(&self) -> CatalogueSpec {
        let mut spec = CatalogueSpec::new(self.seed, self.works, self.authors, self.subjects);
        spec.max_editions_per_work = self.editions_per_work;
        spec.id_base = self.id_base;
        spec.redirects = self.redirects.unwrap_or(spec.redirects);
        spec.deletes = self.deletes.unwrap_or(spec.deletes);
        spec.missing_authors = self.missing_authors.unwrap_or(spec.missing_authors);
        spec
    }
}

/// Parses one blocked User-Agent substring: an empty one would block every client, so it is
/// refused rather than read as "block all".
fn parse_agent_pattern(text: &str) -> Result<String, String> {
    let pattern = text.trim();
    if pattern.is_empty() {
        Err("an empty User-Agent substring would block every client".to_owned())
    } else {
        Ok(pattern.to_owned())
    }
}

/// The blocked User-Agents, as `GET /_sim/blocked` answers and `POST /_sim/blocked` takes
/// them: `{"user_agents": ["substring", …]}`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockedAgents {
    /// Substrings; a User-Agent containing any of them (ignoring case) is answered 403.
    pub user_agents: Vec<String>,
}

impl BlockedAgents {
    /// Whether `user_agent` contains a listed substring, ignoring case.
    pub fn blocks(&self, user_agent: &str) -> bool {
        let agent = user_agent.to_lowercase();
        self.user_agents
            .iter()
            .any(|pattern| agent.contains(&pattern.to_lowercase()))
    }
}

/// Why the simulator could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The address is taken or not ours: a configuration problem, give up.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("server failed: {0}")]
    Serve(#[from] std::io::Error),
    /// The server task panicked or was aborted.
    #[error("server task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The simulator's shared state: the catalogue (changing under its change generators), the
/// limiters, the faults and the counts.
pub struct SimState {
    catalogue: RwLock<Catalogue>,
    generator: Mutex<Generator>,
    /// Stops the background change generators with the server.
    stop: CancellationToken,
    faults: RwLock<Faults>,
    blocked: RwLock<BlockedAgents>,
    ip_limiter: Option<Mutex<Limiter>>,
    ua_limiter: Option<Mutex<Limiter>>,
    stats: Mutex<Stats>,
    attempts: Mutex<HashMap<String, u64>>,
}

impl SimState {
    /// Builds the state for `args` (generates the catalogue). Background change generators
    /// it starts run until they are done (a plan) or for ever (a continuous one).
    pub fn new(args: &SimArgs) -> SimState {
        SimState::stopped_by(args, CancellationToken::new())
    }

    /// [`SimState::new`] whose background change generators stop when `stop` is cancelled.
    pub fn stopped_by(args: &SimArgs, stop: CancellationToken) -> SimState {
        let limited = !args.no_limit;
        SimState {
            catalogue: RwLock::new(Catalogue::generate(&args.spec())),
            generator: Mutex::new(Generator::default()),
            stop,
            faults: RwLock::new(args.faults.clone()),
            blocked: RwLock::new(BlockedAgents {
                user_agents: args.blocked_user_agents.clone(),
            }),
            ip_limiter: limited
                .then(|| Mutex::new(Limiter::new(args.rate_per_minute, args.burst, args.delay))),
            // No delay: what Open Library does past its per-agent rate is not published, so
            // the simulator answers 429 past the burst and holds nothing back.
            ua_limiter: (limited && args.ua_rate_per_minute > 0).then(|| {
                Mutex::new(Limiter::new(
                    args.ua_rate_per_minute,
                    args.ua_burst,
                    args.ua_burst,
                ))
            }),
            stats: Mutex::new(Stats::default()),
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// The catalogue being served, read-locked: changes wait until the guard is dropped, so
    /// hold it briefly (never across a request to this simulator that changes it); a test
    /// that keeps it longer takes [`SimState::catalogue_snapshot`].
    pub fn catalogue(&self) -> RwLockReadGuard<'_, Catalogue> {
        self.catalogue
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the catalogue as it is now (with its change log): what a test compares a
    /// graph against while the simulator goes on changing.
    pub fn catalogue_snapshot(&self) -> Catalogue {
        self.catalogue().clone()
    }

    /// The catalogue, write-locked, carrying on after a panic elsewhere: a change is applied
    /// whole under one lock, so a panicking reader leaves nothing half-written.
    fn catalogue_mut(&self) -> RwLockWriteGuard<'_, Catalogue> {
        self.catalogue
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the faults in force (a chaos test starting a storm mid-run).
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.write().unwrap_or_else(PoisonError::into_inner) = faults;
    }

    /// The blocked User-Agents in force.
    pub fn blocked_agents(&self) -> BlockedAgents {
        self.blocked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the blocked User-Agents (a test blocking the crawler mid-crawl, or lifting
    /// the block).
    pub fn set_blocked_agents(&self, blocked: BlockedAgents) {
        *self.blocked.write().unwrap_or_else(PoisonError::into_inner) = blocked;
    }

    /// What was counted so far.
    pub fn stats(&self) -> Stats {
        lock(&self.stats).clone()
    }

    /// Forgets counts, attempt numbers and limiter buckets. The faults, the blocked
    /// User-Agents and the catalogue with its changes stay: they are the world, not counts,
    /// and a test that resets the counts between phases keeps the world it set up
    /// (`POST /_sim/blocked` with an empty list lifts a block).
    pub fn reset(&self) {
        *lock(&self.stats) = Stats::default();
        lock(&self.attempts).clear();
        for limiter in [&self.ip_limiter, &self.ua_limiter].into_iter().flatten() {
            lock(limiter).clear();
        }
    }

    /// The truth of a crawl from `seeds` under `limits`, with the keys that always fail
    /// under the faults in force counted as failed.
    pub fn reachable(&self, seeds: &[String], limits: &CrawlLimits) -> Reachable {
        let faults = self.faults();
        self.catalogue()
            .reachable(seeds, limits, &|key| faults.always_fails(key))
    }
}

/// Locks a mutex, carrying on after a panic elsewhere: counts are still useful.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A simulator running in this process.
pub struct RunningSim {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its state, for tests to read stats or change faults directly.
    pub state: Arc<SimState>,
    task: JoinHandle<Result<(), std::io::Error>>,
}

impl RunningSim {
    /// The base URL to give a client (`http://127.0.0.1:port`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits for the server to stop (after the shutdown token is cancelled).
    pub async fn wait(self) -> Result<(), SimError> {
        Ok(self.task.await??)
    }
}

/// Binds and starts the simulator in the background; it stops when `shutdown` is cancelled.
pub async fn spawn(args: SimArgs, shutdown: CancellationToken) -> Result<RunningSim, SimError> {
    let listener = TcpListener::bind(args.addr)
        .await
        .map_err(|source| SimError::Bind {
            addr: args.addr,
            source,
        })?;
    let addr = listener.local_addr()?;
    let state = Arc::new(SimState::stopped_by(&args, shutdown.child_token()));
    if args.changes_per_second > 0.0 {
        state.run_continuous(args.changes_per_second);
    }
    let app = router(state.clone());
    let limits = sim_limits(&args);
    let task = tokio::spawn(crate::api::http::serve(listener, app, limits, shutdown));
    tracing::info!(%addr, seed = args.seed, works = args.works, "simulator listening");
    Ok(RunningSim { addr, state, task })
}

/// The simulator's bounds on its clients. Its requests are small GETs (and small admin
/// POSTs); the request timeout leaves ample room for the latency it injects on purpose
/// (changeable at run time), the connection cap for every worker of a benchmark through
/// every proxy at once, and the header (idle) timeout outlasts the idle timeouts of its
/// clients' pools (reqwest 90 s, Squid 60 s), so a client never reuses a connection the
/// simulator is closing.
fn sim_limits(args: &SimArgs) -> crate::api::http::ServerLimits {
    use std::time::Duration;
    crate::api::http::ServerLimits {
        header_timeout: Duration::from_secs(120),
        request_timeout: Duration::from_secs(300) + args.faults.latency + args.faults.spike_latency,
        max_body_bytes: 1024 * 1024,
        max_connections: 4096,
        shutdown_timeout: Duration::from_secs(5),
    }
}

/// Runs the simulator until `shutdown` is cancelled: `bookworm sim`.
pub async fn serve(args: SimArgs, shutdown: CancellationToken) -> Result<(), SimError> {
    spawn(args, shutdown).await?.wait().await
}

/// The simulator's routes: the admin endpoints, and everything else as Open Library.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/_sim/stats", get(get_stats))
        .route("/_sim/faults", get(get_faults).post(post_faults))
        .route("/_sim/blocked", get(get_blocked).post(post_blocked))
        .route("/_sim/reachable", get(get_reachable))
        .route("/_sim/catalogue", get(get_catalogue))
        .route("/_sim/reset", post(post_reset))
        .route(
            "/_sim/changes",
            get(changes::get_changes).post(changes::post_changes),
        )
        .fallback(open_library)
        .with_state(state)
}

async fn get_stats(State(state): State<Arc<SimState>>) -> Json<Stats> {
    Json(state.stats())
}

async fn get_faults(State(state): State<Arc<SimState>>) -> Json<Faults> {
    Json(state.faults())
}

async fn post_faults(
    State(state): State<Arc<SimState>>,
    Json(faults): Json<Faults>,
) -> Json<Faults> {
    tracing::info!(?faults, "faults changed");
    state.set_faults(faults.clone());
    Json(faults)
}

async fn get_blocked(State(state): State<Arc<SimState>>) -> Json<BlockedAgents> {
    Json(state.blocked_agents())
}

/// Replaces the list; an empty substring is refused (it would block every client).
async fn post_blocked(
    State(state): State<Arc<SimState>>,
    Json(blocked): Json<BlockedAgents>,
) -> Response {
    let mut cleaned = Vec::with_capacity(blocked.user_agents.len());
    for pattern in &blocked.user_agents {
        match parse_agent_pattern(pattern) {
            Ok(p) => cleaned.push(p),
            Err(error) => {
                return (StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into_response();
            }
        }
    }
    let blocked = BlockedAgents {
        user_agents: cleaned,
    };
    tracing::info!(user_agents = ?blocked.user_agents, "blocked user agents changed");
    state.set_blocked_agents(blocked.clone());
    Json(blocked).into_response()
}

async fn post_reset(State(state): State<Arc<SimState>>) -> StatusCode {
    state.reset();
    StatusCode::NO_CONTENT
}

async fn get_catalogue(State(state): State<Arc<SimState>>) -> Json<Value> {
    let c = state.catalogue();
    Json(json!({
        "spec": c.spec(),
        "works": c.work_keys().len(),
        "authors": c.author_keys().len(),
        "editions": c.edition_keys().len(),
        "subjects": c.subject_keys(),
        "redirects": c.redirects(),
        "deleted": c.deleted(),
        "changes": c.changes().len(),
        "last_change_id": c.last_change_id(),
    }))
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// `?seed=<key or search:text>` (repeatable) `&depth=N` plus any [`CrawlLimits`] field.
async fn get_reachable(State(state): State<Arc<SimState>>, RawQuery(query): RawQuery) -> Response {
    let mut seeds = Vec::new();
    let mut limits = CrawlLimits::default();
    for (name, value) in query_pairs(query.as_deref()) {
        let bad = || {
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("bad value for {name}: {value:?}")})),
            )
                .into_response()
        };
        macro_rules! set {
            ($field:expr) => {
                match value.parse() {
                    Ok(v) => $field = v,
                    Err(_) => return bad(),
                }
            };
        }
        match name.as_str() {
            "seed" => seeds.push(value.clone()),
            "depth" | "max_depth" => set!(limits.max_depth),
            "max_search_results" => set!(limits.max_search_results),
            "max_subjects_per_node" => set!(limits.max_subjects_per_node),
            "max_works_per_author" => set!(limits.max_works_per_author),
            "max_works_per_subject" => set!(limits.max_works_per_subject),
            "crawl_editions" => set!(limits.crawl_editions),
            "max_editions_per_work" => set!(limits.max_editions_per_work),
            _ => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": format!("unknown parameter {name}")})),
                )
                    .into_response();
            }
        }
    }
    if seeds.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "at least one seed= is required"})),
        )
            .into_response();
    }
    Json(state.reachable(&seeds, &limits)).into_response()
}
