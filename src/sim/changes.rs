//! Changing the simulated catalogue while it is served: `POST /_sim/changes` applies a plan
//! of changes at once or in the background at a rate, `GET /_sim/changes` says how far the
//! background generators got, and `--changes-per-second` runs a continuous one for demos.
//!
//! `POST /_sim/changes` takes `{"edits": N, "adds": N, "merges": N, "deletes": N, "covers":
//! N, "per_second": f64?, "seed": u64?}` (every count optional, default 0; at most
//! [`MAX_PLANNED`] in all). Without `per_second` the changes are applied at once, interleaved
//! ([`ChangePlan::kinds`]), and the answer is `{"applied": n, "entries": [...]}` (the feed
//! entries logged; a change with nothing to act on is skipped). With `per_second` they are
//! applied in the background at that rate and the answer is 202 `{"scheduled": n}`. Without
//! `seed` the draws come from the catalogue's seed and the number of plans so far, so a
//! sequence of requests replays the same way. A body that does not parse, an unknown field,
//! a rate outside [`MIN_RATE`]..=[`MAX_RATE`] or too many changes answer 400 `{"error": …}`.
//!
//! `GET /_sim/changes` answers [`ChangesStatus`]: `{"applied": changes logged so far,
//! "pending": scheduled changes not yet applied, "last_id": the latest entry's id or null}`.
//! A test polls it until `pending` is 0: the count drops in the same step a change is
//! applied, so every change counted as done is already served.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Json, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ChangeEntry, ChangeKind, ChangePlan, SimState, lock};

/// Most changes one request may plan: a larger plan would hold the catalogue for long.
pub const MAX_PLANNED: usize = 100_000;
/// Slowest background rate accepted (changes per second).
pub const MIN_RATE: f64 = 0.001;
/// Fastest background rate accepted (changes per second).
pub const MAX_RATE: f64 = 100_000.0;

/// Parses `--changes-per-second`: `0` for none, else a rate within
/// [`MIN_RATE`]..=[`MAX_RATE`].
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of changes per second"))?;
    if rate == 0.0 || valid_rate(rate) {
        Ok(rate)
    } else {
        Err(format!(
            "{text:?} changes per second: give 0 (none) or a rate from {MIN_RATE} to {MAX_RATE}"
        ))
    }
}

fn valid_rate(rate: f64) -> bool {
    rate.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rate)
}

/// What the background generators have left to do.
#[derive(Debug, Default)]
pub(super) struct Generator {
    /// Scheduled changes not yet applied (continuous generators are not counted).
    pending: u64,
    /// Plans drawn so far: the default seed of the next one.
    plans: u64,
}

/// The answer of `GET /_sim/changes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesStatus {
    /// Changes logged in the feed so far (by every plan and generator).
    pub applied: u64,
    /// Changes scheduled with a rate and not yet applied.
    pub pending: u64,
    /// The id of the latest feed entry, `null` before the first change.
    pub last_id: Option<u64>,
}

/// The body of `POST /_sim/changes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesRequest {
    #[serde(default)]
    edits: usize,
    #[serde(default)]
    adds: usize,
    #[serde(default)]
    merges: usize,
    #[serde(default)]
    deletes: usize,
    #[serde(default)]
    covers: usize,
    per_second: Option<f64>,
    seed: Option<u64>,
}

impl ChangesRequest {
    fn plan(&self) -> ChangePlan {
        ChangePlan {
            edits: self.edits,
            adds: self.adds,
            merges: self.merges,
            deletes: self.deletes,
            covers: self.covers,
        }
    }
}

impl SimState {
    /// Applies `plan` now (interleaved, wall-clock timestamps) with draws seeded by `seed`
    /// (default: from the catalogue's seed and the plans so far); the entries it logged.
    pub fn apply_changes(&self, plan: &ChangePlan, seed: Option<u64>) -> Vec<ChangeEntry> {
        let mut rng = StdRng::seed_from_u64(self.plan_seed(seed));
        self.catalogue_mut().apply_changes(plan, &mut rng)
    }

    /// Applies `plan` in the background, `per_second` changes a second (the first at once),
    /// until done or the simulator stops; how many were scheduled. Must be called within a
    /// Tokio runtime. `per_second` outside [`MIN_RATE`]..=[`MAX_RATE`] is taken as the
    /// nearest bound.
    pub fn schedule_changes(
        self: &Arc<Self>,
        plan: &ChangePlan,
        per_second: f64,
        seed: Option<u64>,
    ) -> usize {
        let kinds = plan.kinds();
        let scheduled = kinds.len();
        let seed = self.plan_seed(seed);
        lock(&self.generator).pending += scheduled as u64;
        self.spawn_generator(Box::new(kinds.into_iter()), per_second, seed, true);
        scheduled
    }

    /// Runs [`ChangeKind::mix`] for ever at `per_second` (until the simulator stops): the
    /// `--changes-per-second` demo generator. Its changes are never pending.
    pub(super) fn run_continuous(self: &Arc<Self>, per_second: f64) {
        let seed = self.plan_seed(None);
        tracing::info!(per_second, "continuous change generator running");
        self.spawn_generator(Box::new(ChangeKind::mix()), per_second, seed, false);
    }

    /// How far the changes got.
    pub fn changes_status(&self) -> ChangesStatus {
        // Catalogue first, then the generator: the order the generators take them in.
        let catalogue = self.catalogue();
        let pending = lock(&self.generator).pending;
        ChangesStatus {
            applied: catalogue.changes().len() as u64,
            pending,
            last_id: catalogue.last_change_id(),
        }
    }

    /// The seed of the next plan: the given one, or one derived from the catalogue's seed and
    /// the number of plans drawn so far.
    fn plan_seed(&self, seed: Option<u64>) -> u64 {
        let base = self.catalogue().spec().seed;
        let mut generator = lock(&self.generator);
        generator.plans += 1;
        seed.unwrap_or_else(|| base ^ generator.plans.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn spawn_generator(
        self: &Arc<Self>,
        mut kinds: Box<dyn Iterator<Item = ChangeKind> + Send>,
        per_second: f64,
        seed: u64,
        counted: bool,
    ) {
        let state = Arc::clone(self);
        let period = Duration::from_secs_f64(1.0 / per_second.clamp(MIN_RATE, MAX_RATE));
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut ticks = tokio::time::interval(period);
            for kind in kinds.by_ref() {
                tokio::select! {
                    _ = state.stop.cancelled() => {
                        if counted {
                            // This one and the rest will never be applied.
                            let left = 1 + kinds.count() as u64;
                            let mut generator = lock(&state.generator);
                            generator.pending = generator.pending.saturating_sub(left);
                        }
                        return;
                    }
                    _ = ticks.tick() => {}
                }
                let mut catalogue = state.catalogue_mut();
                catalogue.apply_change(kind, &mut rng, Utc::now().naive_utc());
                if counted {
                    // Under the catalogue's lock: a reader that sees the count drop also
                    // sees the change.
                    let mut generator = lock(&state.generator);
                    generator.pending = generator.pending.saturating_sub(1);
                }
            }
        });
    }
}

fn bad_request(error: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into_response()
}

/// `POST /_sim/changes`.
pub(super) async fn post_changes(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let request: ChangesRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return bad_request(format!("body is not a change plan: {e}")),
    };
    let plan = request.plan();
    if plan.total() > MAX_PLANNED {
        return bad_request(format!(
            "{} changes planned; at most {MAX_PLANNED} per request",
            plan.total()
        ));
    }
    match request.per_second {
        Some(rate) if !valid_rate(rate) => bad_request(format!(
            "per_second {rate} is outside {MIN_RATE}..={MAX_RATE}"
        )),
        Some(rate) => {
            let scheduled = state.schedule_changes(&plan, rate, request.seed);
            tracing::info!(scheduled, per_second = rate, "changes scheduled");
            (StatusCode::ACCEPTED, Json(json!({"scheduled": scheduled}))).into_response()
        }
        None => {
            // A large plan takes a while: off the async threads.
            let seed = request.seed;
            let worker = Arc::clone(&state);
            match tokio::task::spawn_blocking(move || worker.apply_changes(&plan, seed)).await {
                Ok(entries) => {
                    tracing::info!(applied = entries.len(), "changes applied");
                    Json(json!({"applied": entries.len(), "entries": entries})).into_response()
                }
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"error": format!("applying the changes failed: {e}")})),
                )
                    .into_response(),
            }
        }
    }
}

/// `GET /_sim/changes`.
pub(super) async fn get_changes(State(state): State<Arc<SimState>>) -> Json<ChangesStatus> {
    Json(state.changes_status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_zero_or_within_bounds() {
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        for bad in ["-1", "NaN", "inf", "0.0000001", "1e9", "fast"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_request_names_only_known_fields() {
        let request: ChangesRequest =
            serde_json::from_str(r#"{"edits": 2, "covers": 1, "seed": 7}"#).unwrap();
        assert_eq!(request.plan().total(), 3);
        assert_eq!(request.seed, Some(7));
        assert!(serde_json::from_str::<ChangesRequest>(r#"{"edit": 2}"#).is_err());
        assert!(serde_json::from_str::<ChangesRequest>(r#"{"edits": -2}"#).is_err());
    }
}
