//! The crawl lifecycle routes: `GET /crawls` (a page of crawls, newest first),
//! `POST /crawls/{id}/pause`, `POST /crawls/{id}/resume`, and the purge form of
//! `DELETE /crawls/{id}` (`?purge=true`: delete a finished crawl's state at once; with
//! `&force=true` a crawl with work ahead is cancelled first). A plain `DELETE` still cancels,
//! as the contract says.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiState, Problem, STORE_UNAVAILABLE, cancel_crawl, get_crawl, publish_jobs};
use crate::crawl::client::block;
use crate::crawl::store::{CrawlState, ListQuery, Pause, Purge, Resume, parse_cursor};

/// Crawls per page when the client asks for no `limit`.
pub const DEFAULT_PAGE: usize = 50;
/// The most crawls one page may hold.
pub const MAX_PAGE: usize = 500;
/// Held jobs read and published per batch on resume.
const RESUME_BATCH: usize = 500;

/// The query's parameters, each at most once; anything else is a 400.
fn params(raw: Option<&str>, known: &[&str]) -> Result<Vec<(String, String)>, Problem> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    for (i, (name, _)) in pairs.iter().enumerate() {
        if !known.contains(&name.as_str()) {
            return Err(Problem::bad_request(format!(
                "unknown query parameter {name:?} (known: {})",
                known.join(", ")
            )));
        }
        if pairs[..i].iter().any(|(n, _)| n == name) {
            return Err(Problem::bad_request(format!("{name} given more than once")));
        }
    }
    Ok(pairs)
}

/// A `true`/`false` query flag.
fn flag(name: &str, value: &str) -> Result<bool, Problem> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Problem::bad_request(format!(
            "{name} must be true or false"
        ))),
    }
}

/// Whether the User-Agent block is in force: running crawls then show as blocked.
async fn blocked(state: &ApiState) -> Result<bool, Problem> {
    let mut redis = state.store.connection();
    block::current(&mut redis, &state.egress_prefix)
        .await
        .map(|b| b.is_some())
        .map_err(|e| Problem::unavailable(STORE_UNAVAILABLE, e))
}

/// `GET /crawls?state=&limit=&after=`: `{"crawls": [status…], "next": cursor|null}`.
pub(super) async fn list_crawls(
    State(state): State<Arc<ApiState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let mut query = ListQuery {
        limit: DEFAULT_PAGE,
        ..ListQuery::default()
    };
    for (name, value) in params(raw.as_deref(), &["state", "limit", "after"])? {
        match name.as_str() {
            "state" => {
                query.state = Some(CrawlState::parse(&value).ok_or_else(|| {
                    Problem::bad_request(
                        "state must be one of running, paused, blocked, done, cancelled",
                    )
                })?)
            }
            "limit" => {
                query.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        Problem::bad_request(format!(
                            "limit must be an integer from 1 to {MAX_PAGE}"
                        ))
                    })?
            }
            _ => {
                if parse_cursor(&value).is_none() {
                    return Err(Problem::bad_request(
                        "after must be the `next` of a previous page",
                    ));
                }
                query.after = Some(value);
            }
        }
    }
    let blocked = blocked(&state).await?;
    let page = state
        .store
        .list(&query, blocked)
        .await
        .map_err(|e| Problem::unavailable(STORE_UNAVAILABLE, e))?;
    Ok(axum::Json(page).into_response())
}

fn over(crawl_id: &str, state: CrawlState, what: &str) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        format!("crawl {crawl_id} is {}: {what}", state.as_str()),
    )
}

/// `POST /crawls/{id}/pause`: 200 with the status; 409 if the crawl is over.
pub(super) async fn pause_crawl(
    State(state): State<Arc<ApiState>>,
    Path(crawl_id): Path<String>,
) -> Result<Response, Problem> {
    match state.store.pause(&crawl_id).await {
        Ok(Pause::Paused) => {
            tracing::info!(%crawl_id, "crawl paused");
            get_crawl(State(state), Path(crawl_id)).await
        }
        Ok(Pause::Finished(s)) => Err(over(&crawl_id, s, "there is nothing to pause")),
        Ok(Pause::Unknown) => Err(Problem::not_found(&crawl_id)),
        Err(e) => Err(Problem::unavailable(STORE_UNAVAILABLE, e)),
    }
}

/// `POST /crawls/{id}/resume`: the crawl runs again and its held jobs are published anew;
/// 200 with the status. Resuming a running crawl publishes what a failed resume left held,
/// so a resume that answered 503 is simply repeated. 409 for a cancelled crawl.
pub(super) async fn resume_crawl(
    State(state): State<Arc<ApiState>>,
    Path(crawl_id): Path<String>,
) -> Result<Response, Problem> {
    match state.store.resume(&crawl_id).await {
        Ok(Resume::Running) => {
            let mut cursor = 0;
            let mut published = 0;
            loop {
                let (next, jobs) = state
                    .store
                    .held_jobs(&crawl_id, cursor, RESUME_BATCH)
                    .await
                    .map_err(|e| Problem::unavailable(STORE_UNAVAILABLE, e))?;
                published += jobs.len();
                publish_jobs(&state, jobs).await.map_err(|e| {
                    Problem::unavailable(
                        "could not publish the crawl's held jobs; resume it again",
                        e,
                    )
                })?;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            tracing::info!(%crawl_id, published, "crawl resumed");
            get_crawl(State(state), Path(crawl_id)).await
        }
        Ok(Resume::Done) => get_crawl(State(state), Path(crawl_id)).await,
        Ok(Resume::Cancelled) => Err(over(
            &crawl_id,
            CrawlState::Cancelled,
            "there is nothing to resume",
        )),
        Ok(Resume::Unknown) => Err(Problem::not_found(&crawl_id)),
        Err(e) => Err(Problem::unavailable(STORE_UNAVAILABLE, e)),
    }
}

/// `DELETE /crawls/{id}`: cancels; with `?purge=true` deletes a done or cancelled crawl's
/// state at once (200 `{"crawl_id", "deleted": true}`), refusing one with work ahead (409)
/// unless `&force=true`, which cancels it first.
pub(super) async fn cancel_or_purge(
    State(state): State<Arc<ApiState>>,
    Path(crawl_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let (mut purge, mut force) = (false, false);
    for (name, value) in params(raw.as_deref(), &["purge", "force"])? {
        match name.as_str() {
            "purge" => purge = flag("purge", &value)?,
            _ => force = flag("force", &value)?,
        }
    }
    if !purge {
        if force {
            return Err(Problem::bad_request("force only goes with purge=true"));
        }
        return cancel_crawl(State(state), Path(crawl_id)).await;
    }
    let store = &state.store;
    let unavailable = |e| Problem::unavailable(STORE_UNAVAILABLE, e);
    let mut outcome = store.purge(&crawl_id).await.map_err(unavailable)?;
    if let Purge::Active(active) = outcome {
        if !force {
            return Err(over(
                &crawl_id,
                active,
                "cancel it first, or delete with force=true",
            ));
        }
        store.cancel(&crawl_id).await.map_err(unavailable)?;
        tracing::info!(%crawl_id, "crawl cancelled to be deleted");
        outcome = store.purge(&crawl_id).await.map_err(unavailable)?;
    }
    match outcome {
        Purge::Purged => {
            tracing::info!(%crawl_id, "crawl deleted");
            Ok(axum::Json(json!({"crawl_id": crawl_id, "deleted": true})).into_response())
        }
        Purge::Unknown => Err(Problem::not_found(&crawl_id)),
        Purge::Active(active) => Err(over(&crawl_id, active, "it could not be cancelled")),
    }
}
