//! Bearer tokens and roles of the API.
//!
//! Tokens live in a file a Kubernetes Secret can mount (`API_TOKENS_FILE`), one a line:
//! `<token> <role>`, role `read` (the `GET` routes) or `write` (everything); `#` starts a
//! comment line, blank lines are ignored. The file is re-read when its modification time or
//! size changes (a Secret update swaps the mounted file) and on SIGHUP; a file that no longer
//! parses is refused with the line number and the tokens in force stay in force.
//!
//! A token is compared with every configured token in constant time (`subtle`), so the time
//! an answer takes says nothing about how much of a guess was right. No token value is ever
//! written to a log, an error or `Debug` output: errors name the line, never its text.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tokio_util::sync::CancellationToken;

/// The shortest token accepted: 16 characters of a random alphabet are beyond guessing at
/// any request rate the API can serve (`openssl rand -hex 32` gives 64).
pub const MIN_TOKEN_CHARS: usize = 16;

/// How often the tokens file's modification time is checked: a rotated token is in force
/// within seconds, and a `stat` every two seconds costs nothing.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The `GET` routes: watching crawls.
    Read,
    /// Everything: creating and cancelling crawls too.
    Write,
}

impl Role {
    fn code(self) -> u8 {
        match self {
            Role::Read => 1,
            Role::Write => 2,
        }
    }

    fn from_code(code: u8) -> Option<Role> {
        match code {
            1 => Some(Role::Read),
            2 => Some(Role::Write),
            _ => None,
        }
    }
}

/// Why the tokens file could not be used. The messages name `API_TOKENS_FILE` and a line
/// number, never a line's text (it holds a token).
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("API_TOKENS_FILE {path}: cannot read it: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `<token> <role>`.
    #[error("API_TOKENS_FILE {path}, line {line}: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it (never its text).
        why: String,
    },
}

struct Entry {
    token: Vec<u8>,
    role: Role,
}

/// The tokens of one version of the file. `Debug` shows only how many there are.
#[derive(Default)]
pub struct TokenSet {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("tokens", &self.entries.len())
            .finish()
    }
}

impl TokenSet {
    /// Parses the file's text; `path` is only for the error message.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TokensError> {
        let malformed = |line: usize, why: String| TokensError::Malformed {
            path: path.to_owned(),
            line,
            why,
        };
        let mut entries: Vec<Entry> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut fields = trimmed.split_whitespace();
            let (Some(token), Some(role), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(malformed(
                    line,
                    "expected `<token> <role>` (two fields)".to_owned(),
                ));
            };
            let role = match role {
                "read" => Role::Read,
                "write" => Role::Write,
                _ => {
                    return Err(malformed(
                        line,
                        "the role must be `read` or `write`".to_owned(),
                    ));
                }
            };
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(malformed(
                    line,
                    format!("a token must have at least {MIN_TOKEN_CHARS} characters"),
                ));
            }
            if let Some(first) = entries.iter().position(|e| e.token == token.as_bytes()) {
                return Err(malformed(
                    line,
                    format!("repeats the token of an earlier line (entry {})", first + 1),
                ));
            }
            entries.push(Entry {
                token: token.as_bytes().to_vec(),
                role,
            });
        }
        Ok(Self { entries })
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file holds no token (then every authenticated route answers 401).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The role of `presented`, or `None` if it is no configured token. Every configured
    /// token is compared, in constant time, whatever matches; only a length mismatch ends a
    /// comparison early, and the length is not the secret.
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let mut code = 0u8;
        for entry in &self.entries {
            let equal = entry.token.as_slice().ct_eq(presented);
            code = u8::conditional_select(&code, &entry.role.code(), equal);
        }
        Role::from_code(code)
    }
}

/// The tokens in force, re-read when the file changes.
pub struct TokenStore {
    path: PathBuf,
    current: RwLock<Arc<TokenSet>>,
    seen: RwLock<Option<(SystemTime, u64)>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.path)
            .field("tokens", &self.current().len())
            .finish()
    }
}

impl TokenStore {
    /// A store of `initial`, the tokens already read from `path` (at start-up, where a bad
    /// file must stop the process before it serves).
    pub fn new(path: PathBuf, initial: TokenSet) -> Self {
        let seen = file_stamp(&path);
        Self {
            path,
            current: RwLock::new(Arc::new(initial)),
            seen: RwLock::new(seen),
        }
    }

    /// The tokens in force now.
    pub fn current(&self) -> Arc<TokenSet> {
        match self.current.read() {
            Ok(set) => set.clone(),
            // A panic while swapping cannot leave a half-written Arc: the value is whole.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the file if its modification time or size changed since the last read (or
    /// always, with `force`). Returns whether a new set is in force; a file that does not
    /// parse leaves the old set in force and returns the error.
    pub fn reload(&self, force: bool) -> Result<bool, TokensError> {
        let stamp = file_stamp(&self.path);
        let unchanged = self.seen.read().map(|s| *s == stamp).unwrap_or(false);
        if unchanged && !force {
            return Ok(false);
        }
        if let Ok(mut seen) = self.seen.write() {
            // Recorded before parsing, so a broken file is reported once, not every poll.
            *seen = stamp;
        }
        let set = TokenSet::load(&self.path)?;
        let count = set.len();
        match self.current.write() {
            Ok(mut current) => *current = Arc::new(set),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
        }
        tracing::info!(path = %self.path.display(), tokens = count, "API tokens reloaded");
        Ok(true)
    }

    /// Keeps the store following its file until `shutdown`: a poll of the modification time
    /// every `interval`, and a forced re-read on SIGHUP.
    pub fn follow(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            if hangup.is_none() {
                tracing::warn!("no SIGHUP handler: API tokens reload on file change only");
            }
            loop {
                let force = tokio::select! {
                    _ = tokio::time::sleep(interval) => false,
                    Some(()) = async {
                        match hangup.as_mut() {
                            Some(signal) => signal.recv().await,
                            None => std::future::pending().await,
                        }
                    } => true,
                    _ = shutdown.cancelled() => break,
                };
                if let Err(e) = self.reload(force) {
                    tracing::error!(error = %e, "API tokens not reloaded; the previous tokens stay in force");
                }
            }
        });
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Who may call the API, as `bookworm serve` resolved it at start-up.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Anyone who can reach the address (a loopback address, or `API_AUTH=none`).
    Open,
    /// A bearer token of the store; `/metrics` too when `metrics` is set.
    Tokens {
        /// The tokens in force.
        store: Arc<TokenStore>,
        /// Whether `/metrics` needs a read token (`API_METRICS_AUTH`).
        metrics: bool,
    },
}

impl Auth {
    /// Whether requests need a token: the OpenAPI document declares the scheme only then.
    pub fn is_required(&self) -> bool {
        matches!(self, Auth::Tokens { .. })
    }
}

/// The role a request needs, or `None` for the routes that are always open: probes must
/// work without credentials, and the OpenAPI document is what a client reads to learn how
/// to authenticate.
fn needed_role(method: &Method, path: &str, metrics_auth: bool) -> Option<Role> {
    match path {
        "/healthz" | "/readyz" | "/openapi.json" => None,
        "/metrics" if !metrics_auth => None,
        _ if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) => Some(Role::Read),
        _ => Some(Role::Write),
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
fn bearer(request: &Request) -> Option<&[u8]> {
    let value = request.headers().get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
        .filter(|t| !t.is_empty())
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let mut response = (status, axum::Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"bookworm\""),
        );
    }
    response
}

/// The middleware: 401 without a valid token, 403 for a read token on a write route.
pub async fn authorize(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let Auth::Tokens { store, metrics } = &auth else {
        return next.run(request).await;
    };
    let Some(needed) = needed_role(request.method(), request.uri().path(), *metrics) else {
        return next.run(request).await;
    };
    let role = bearer(&request).and_then(|token| store.current().role_of(token));
    match role {
        None => refuse(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer <token>)",
        ),
        Some(role) if role < needed => refuse(
            StatusCode::FORBIDDEN,
            "this token may only read; creating or cancelling crawls needs a write token",
        ),
        Some(_) => {
            let caller = bearer(&request).map(CallerId::of_token);
            let mut request = request;
            if let Some(caller) = caller {
                request.extensions_mut().insert(caller);
            }
            next.run(request).await
        }
    }
}

/// Who a token is, for per-token quotas shared through Redis: the SHA-1 of the token in
/// hex, so the token itself is never stored, logged or sent anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerId(pub String);

impl CallerId {
    fn of_token(token: &[u8]) -> Self {
        Self(format!("token:{}", sha1_smol::Sha1::from(token).digest()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TokenSet, TokensError> {
        TokenSet::parse(text, Path::new("/secrets/tokens"))
    }

    #[test]
    fn tokens_map_to_their_roles() {
        let set =
            parse("# ops\n\nreader-0123456789abcdef read\n  writer-0123456789abcdef   write  \n")
                .expect("valid");
        assert_eq!(set.len(), 2);
        assert_eq!(set.role_of(b"reader-0123456789abcdef"), Some(Role::Read));
        assert_eq!(set.role_of(b"writer-0123456789abcdef"), Some(Role::Write));
        assert_eq!(set.role_of(b"writer-0123456789abcdeF"), None);
        assert_eq!(set.role_of(b"writer"), None);
        assert_eq!(set.role_of(b""), None);
    }

    #[test]
    fn a_malformed_line_is_named_by_number_never_by_text() {
        let secret = "hunter2-hunter2-hunter2";
        for (text, line) in [
            (format!("ok-0123456789abcdef read\n{secret}\n"), 2),
            (format!("# c\n{secret} admin\n"), 2),
            (format!("{secret} read extra\n"), 1),
            ("short read\n".to_owned(), 1),
            (format!("{secret} read\n{secret} write\n"), 2),
        ] {
            let error = parse(&text).expect_err("malformed").to_string();
            assert!(error.contains("API_TOKENS_FILE"), "{error}");
            assert!(error.contains(&format!("line {line}")), "{error}");
            assert!(!error.contains(secret), "{error}");
        }
    }

    #[test]
    fn debug_shows_no_token() {
        let set = parse("very-secret-token-value write\n").expect("valid");
        assert!(!format!("{set:?}").contains("very-secret"));
    }

    #[test]
    fn routes_need_the_roles_of_the_contract() {
        assert_eq!(needed_role(&Method::GET, "/healthz", true), None);
        assert_eq!(needed_role(&Method::GET, "/readyz", true), None);
        assert_eq!(needed_role(&Method::GET, "/metrics", false), None);
        assert_eq!(
            needed_role(&Method::GET, "/metrics", true),
            Some(Role::Read)
        );
        assert_eq!(
            needed_role(&Method::GET, "/crawls/x", false),
            Some(Role::Read)
        );
        assert_eq!(
            needed_role(&Method::POST, "/crawls", false),
            Some(Role::Write)
        );
        assert_eq!(
            needed_role(&Method::DELETE, "/crawls/x", false),
            Some(Role::Write)
        );
    }
}
