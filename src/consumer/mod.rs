//! The consumer loop shared by the worker and the graph writer: they differ only in their
//! [`Handler`].
//!
//! Guarantee: at-least-once. A message's offset is committed only after everything it caused
//! (its outputs, or its DLQ record) is acknowledged by Kafka; a crash redelivers what was not
//! committed, so duplicates are possible and nothing is lost.
//!
//! How:
//! - Messages of one partition run concurrently as tasks; the [`CommitTracker`] turns their
//!   out-of-order completions into the lowest offset not yet complete, which is what is
//!   committed (explicit offsets, periodically and on revoke and shutdown). Failed commits are
//!   retried with exponential backoff and jitter; the tracker keeps the offset until a commit
//!   succeeds.
//! - Concurrency is bounded in total and per partition. Messages beyond the bound wait in a
//!   backlog and a partition is paused while its share of the backlog is full, so the memory
//!   held does not grow with the partitions assigned or the concurrency. Partitions with
//!   waiting messages take turns at free slots, so none waits more than `assigned - 1` starts
//!   of the others; how long each partition's oldest message has waited is a metric
//!   (`*_oldest_waiting_seconds{partition}`). The loop never stops
//!   polling: Kafka evicts a consumer that does not poll within
//!   `max.poll.interval.ms`, and rebalance callbacks only run inside a poll.
//! - A handler is bounded by `JOB_TIMEOUT` and publishing its outputs by `PUBLISH_TIMEOUT`;
//!   past either the message is dead-lettered (`timeout`, `publish`; a handler that panics is
//!   dead-lettered with `panic`), unless the handler says a timeout means a dependency is
//!   slow ([`Handler::timed_out`]). A dependency that is
//!   down ([`HandleError::Retry`]) parks the message and retries it after backoff, forever,
//!   holding the partition's offset but not its polling. A DLQ record that cannot be
//!   acknowledged is retried the same way, alone: the handler does not run again. A DLQ
//!   record is bounded in size (an excerpt of the payload replaces a payload too large to
//!   embed), and one Kafka refuses for good (too large, malformed) ends the message without a
//!   record, counted in `*_dlq_refused_total`, so a poison message cannot wedge its partition.
//! - On revoke (inside librdkafka's rebalance callback) dispatching for those partitions
//!   stops, in-flight jobs get a short drain, what is complete is committed synchronously and
//!   the rest is forgotten; each assignment has an epoch, so completions from the old one are
//!   discarded. On shutdown: stop consuming, drain within `DRAIN_TIMEOUT`, commit, leave the
//!   group.
//!
//! Run it on a multi-threaded tokio runtime: the revoke drain blocks the polling thread (it
//! runs inside librdkafka's callback) and needs other threads to finish the jobs. On a
//! current-thread runtime the revoke commits only what is already complete.

pub mod job;
mod lag;
mod lanes;
mod offsets;
mod partitions;
mod rebalance;
mod run;
pub mod tracker;
mod watermarks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;

use crate::kafka::KafkaSetupError;
use crate::kafka::publish::Record;
use crate::process::health::{Liveness, Readiness};
use crate::process::metrics::ConsumerMetrics;

/// One Kafka message as a handler sees it (owned, so it can outlive the poll).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Topic the message came from.
    pub topic: String,
    /// Partition the message came from.
    pub partition: i32,
    /// Offset of the message.
    pub offset: i64,
    /// Message key, if any.
    pub key: Option<Vec<u8>>,
    /// Message payload, if any.
    pub payload: Option<Vec<u8>>,
    /// 1 on the first try; incremented each time the loop retries the message itself.
    pub attempt: u32,
}

/// What a failed handle asks the loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandleError {
    /// Give up on this message: the loop publishes `Handler::dead_letter(…)` and moves on.
    DeadLetter {
        /// DLQ reason (one of the contract's reasons).
        reason: String,
        /// Human-readable detail.
        detail: String,
    },
    /// A dependency is down (Neo4j, Redis…): keep the offset, park the message, retry it after
    /// exponential backoff (capped, with jitter), forever; never dead-letter it.
    Retry(String),
}

/// How a message ended, told to [`Handler::finished`] once Kafka acknowledged it.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// Every record `handle` returned is acknowledged.
    Published(&'a [Record]),
    /// The message's DLQ record is acknowledged.
    DeadLettered {
        /// The reason it was dead-lettered with.
        reason: &'a str,
    },
}

/// The work of one service: what to do with one message, and how to dead-letter it.
pub trait Handler: Send + Sync + 'static {
    /// Do the work of one message and return the records it causes (may be empty).
    fn handle(
        &self,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<Vec<Record>, HandleError>> + Send;
    /// The DLQ record for a message abandoned for `reason` ("timeout", "publish", "panic", or
    /// a DeadLetter reason). It only builds the record: the loop may call it more than once for
    /// one message (a second time around an excerpt of the payload when the first record is
    /// too large for the broker), so count dead letters in [`Handler::finished`], not here.
    fn dead_letter(&self, delivery: &Delivery, reason: &str, detail: &str) -> Record;
    /// Which lane a message belongs to: the loop shares its slots fairly between lanes,
    /// starting, within a partition's backlog, the first message of the lane with the fewest
    /// jobs running per [`Handler::lane_weight`]. The crawl's lanes are its crawls, so a small crawl's jobs are not held
    /// behind a large crawl's backlog. Called once per message as it arrives; by default
    /// every message is in one lane (delivery order).
    fn lane(&self, delivery: &Delivery) -> u64 {
        let _ = delivery;
        0
    }
    /// How large a share of the slots `lane` deserves beside the others (any positive scale):
    /// within a partition's backlog the loop starts the first message of the lane with the
    /// fewest jobs running per weight. The crawl weighs a crawl by its remaining backlog,
    /// shortest first; by default every lane weighs the same.
    fn lane_weight(&self, lane: u64) -> f64 {
        let _ = lane;
        1.0
    }
    /// The most jobs of `lane` that may run at once now. A lane at its limit waits in its
    /// partitions' backlogs, and so does each such partition, while other lanes' messages
    /// start: a slot the lane may not have stays free for a lane that may. Only a partition
    /// whose backlog is full starts it anyway (see the loop's `Backlog::next_lane`), so that
    /// no partition stays stuck behind one lane. The crawl limits a crawl to its share of
    /// the worker while another crawl is below its own; by default there is no limit.
    fn lane_limit(&self, lane: u64) -> usize {
        let _ = lane;
        usize::MAX
    }
    /// What a handler call that ran past `JOB_TIMEOUT` means for its message. By default the
    /// message is at fault (a fetch that never ends) and is dead-lettered as `timeout`; a
    /// handler whose calls only wait for a dependency (the graph writer waiting on Neo4j)
    /// answers [`HandleError::Retry`] instead, so a slow or hung dependency parks the message
    /// rather than dead-letter good data.
    fn timed_out(&self, delivery: &Delivery, job_timeout: Duration) -> HandleError {
        let _ = delivery;
        HandleError::DeadLetter {
            reason: job::REASON_TIMEOUT.to_owned(),
            detail: format!("handler ran past JOB_TIMEOUT ({job_timeout:?})"),
        }
    }
    /// Called once the message's records (or its DLQ record) are acknowledged and before its
    /// offset completes: where a handler records the outcome outside Kafka (the worker marks
    /// the key done in its crawl store). Recording it earlier would let a crash between the
    /// two lose the outcome for good; here a crash only repeats the message. After published
    /// records, `Retry` runs the whole message again after backoff; after a DLQ record only
    /// this call is repeated.
    fn finished(
        &self,
        delivery: &Delivery,
        outcome: Outcome<'_>,
    ) -> impl Future<Output = Result<(), HandleError>> + Send {
        let _ = (delivery, outcome);
        async { Ok(()) }
    }
}

/// Why the loop could not run. Each is fatal for the process: exit non-zero and let the
/// orchestrator restart it.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The producer could not be built (bad configuration).
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// The consumer could not be built (bad configuration).
    #[error("cannot create the Kafka consumer: {0}")]
    Create(#[source] KafkaError),
    /// A Kafka client had a fatal error (an idempotent producer that lost its sequence, for
    /// example): it will refuse every record from now on, so the process must be restarted.
    #[error("a Kafka client had a fatal error, restart the process: {0}")]
    Fatal(String),
    /// Subscribing to the topics failed.
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        /// The topics asked for.
        topics: Vec<String>,
        /// Why.
        source: KafkaError,
    },
}

/// How a consumer loop runs. Plain values, so a test or a benchmark builds one without a
/// command line; the services fill it from their settings ([`crate::process::boot`]).
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// The cluster: bootstrap servers and its TLS and SASL settings (a plaintext cluster
    /// from a `String` of bootstrap servers, for tests).
    pub brokers: crate::kafka::KafkaCluster,
    /// Consumer group.
    pub group_id: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Jobs running at once, over all partitions (`CONCURRENT_JOBS`).
    pub concurrency: usize,
    /// Jobs running at once in one partition, so one hot partition cannot take every slot.
    pub per_partition: usize,
    /// Bound on one handler call (`JOB_TIMEOUT`).
    pub job_timeout: Duration,
    /// Bound on publishing one message's outputs (`PUBLISH_TIMEOUT`).
    pub publish_timeout: Duration,
    /// How often complete offsets are committed (`COMMIT_INTERVAL`).
    pub commit_interval: Duration,
    /// How long in-flight jobs may finish on shutdown (`DRAIN_TIMEOUT`).
    pub drain_timeout: Duration,
    /// How long in-flight jobs of a revoked partition may finish (`REVOKE_DRAIN_TIMEOUT`).
    pub revoke_drain_timeout: Duration,
    /// Kafka's `max.poll.interval.ms` (`MAX_POLL_INTERVAL`).
    pub max_poll_interval: Duration,
    /// Kafka's `session.timeout.ms` (`SESSION_TIMEOUT`).
    pub session_timeout: Duration,
}

/// What the loop reports through: its metrics, in the service's namespace, the liveness it
/// touches on every turn (read by `/healthz`), and the readiness it sets [`ASSIGNMENT`] in.
#[derive(Clone)]
pub struct LoopTelemetry {
    /// The loop's metrics.
    pub metrics: ConsumerMetrics,
    /// Touched on every loop turn.
    pub liveness: Liveness,
    /// The `assignment` condition is set here.
    pub readiness: Readiness,
}

/// The consumer loop of one service: build it with [`ConsumerLoop::new`] and call
/// [`ConsumerLoop::run`].
pub struct ConsumerLoop<H> {
    settings: LoopSettings,
    handler: Arc<H>,
    telemetry: LoopTelemetry,
}

impl<H: Handler> ConsumerLoop<H> {
    /// A loop that runs `handler` on every message of `settings.topics`.
    pub fn new(settings: LoopSettings, handler: Arc<H>, telemetry: LoopTelemetry) -> Self {
        Self {
            settings,
            handler,
            telemetry,
        }
    }
}

/// Readiness condition: true while the consumer has partitions assigned.
pub const ASSIGNMENT: &str = "assignment";
