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
//!   held does not grow with the partitions assigned or the concurrency. The loop never stops
//!   polling: Kafka evicts a consumer that does not poll within
//!   `max.poll.interval.ms`, and rebalance callbacks only run inside a poll.
//! - A handler is bounded by `JOB_TIMEOUT` and publishing its outputs by `PUBLISH_TIMEOUT`;
//!   past either the message is dead-lettered (`timeout`, `publish`; a handler that panics is
//!   dead-lettered with `panic`). A dependency that is
//!   down ([`HandleError::Retry`]) parks the message and retries it after backoff, forever,
//!   holding the partition's offset but not its polling. A DLQ record that cannot be
//!   acknowledged either parks the message the same way.
//! - On revoke (inside librdkafka's rebalance callback) dispatching for those partitions
//!   stops, in-flight jobs get a short drain, what is complete is committed synchronously and
//!   the rest is forgotten; each assignment has an epoch, so completions from the old one are
//!   discarded. On shutdown: stop consuming, drain within `DRAIN_TIMEOUT`, commit, leave the
//!   group.
//!
//! Run it on a multi-threaded tokio runtime: the revoke drain blocks the polling thread (it
//! runs inside librdkafka's callback) and needs other threads to finish the jobs. On a
//! current-thread runtime the revoke commits only what is already complete.

pub mod tracker;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::panic::AssertUnwindSafe;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{ConsumerArgs, KafkaArgs};
use crate::consumer::tracker::{CommitTracker, Delivered, Epoch, TopicPartition};
use crate::kafka::publish::{PublishError, Publisher, Record};
use crate::kafka::{KafkaSetupError, consumer_config};
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
    /// The DLQ record for a message abandoned for `reason` ("timeout", "publish", or a DeadLetter reason).
    fn dead_letter(&self, delivery: &Delivery, reason: &str, detail: &str) -> Record;
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
    /// Subscribing to the topics failed.
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        /// The topics asked for.
        topics: Vec<String>,
        /// Why.
        source: KafkaError,
    },
}

/// Everything the loop needs; build it with a struct literal and call [`ConsumerLoop::run`].
pub struct ConsumerLoop<H> {
    /// Brokers and topic names.
    pub kafka: KafkaArgs,
    /// Commit interval, drains, timeouts of the group protocol.
    pub consumer: ConsumerArgs,
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
    /// The service's work.
    pub handler: Arc<H>,
    /// The loop's metrics, in the service's namespace.
    pub metrics: ConsumerMetrics,
    /// Touched on every loop turn; read by `/healthz`.
    pub liveness: Liveness,
    /// The `assignment` condition is set here.
    pub readiness: Readiness,
}

/// Readiness condition: true while the consumer has partitions assigned.
pub const ASSIGNMENT: &str = "assignment";

/// How often the loop turns when nothing happens, so liveness shows a polling loop.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// How often lag and the oldest in-flight age are refreshed, off the loop.
const LAG_INTERVAL: Duration = Duration::from_secs(2);
/// Bound on one watermark query: the lag thread must not hang on a dead broker.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the synchronous commit at shutdown, after the drain.
const FINAL_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages waiting for a slot, over all partitions: each assigned partition may hold an equal
/// share (at most [`PARTITION_BACKLOG`]) before it is paused, and resumes at half its share.
/// The bound is on the process, not per partition: a graph writer running 10,000 jobs over 24
/// partitions once held 240,000 messages (80 MiB) because each partition's backlog grew with
/// the concurrency.
const BACKLOG: usize = 4000;
/// The most one partition may hold waiting. Pausing makes librdkafka drop its prefetch and
/// fetch again on resume, so every cycle costs a fetch; with a no-op handler a backlog of 128
/// ran at 7k messages/s at concurrency 1, 1000 at 65k (benches/consumer_loop.rs).
const PARTITION_BACKLOG: usize = 1000;

/// How many messages one of `assigned` partitions may hold waiting before it is paused.
fn partition_backlog(assigned: usize) -> usize {
    (BACKLOG / assigned.max(1)).clamp(1, PARTITION_BACKLOG)
}

/// Backoff of a retried commit: fast at first (a coordinator move), capped so a long outage
/// is retried every few seconds.
fn commit_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Backoff of a parked message (dependency down, DLQ unreachable): capped at a minute so a
/// recovered dependency is noticed soon.
fn job_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(60))
        .with_jitter()
        .without_max_times()
        .build()
}

/// The jobs of one assigned partition.
struct Slot {
    epoch: Epoch,
    /// Running jobs by offset, so a revoke or shutdown can abort what did not drain.
    running: HashMap<i64, (AbortHandle, Instant)>,
    /// Delivered messages waiting for a free slot, in offset order.
    backlog: VecDeque<Delivery>,
    /// No new work starts: the partition is being revoked.
    revoking: bool,
}

/// What the loop, the job tasks and the rebalance callback share.
struct State {
    tracker: CommitTracker<TopicPartition>,
    slots: HashMap<TopicPartition, Slot>,
    running: usize,
    paused: HashSet<TopicPartition>,
    /// Shutdown began: nothing new starts.
    stopping: bool,
    /// A periodic commit is running on a blocking thread.
    committing: bool,
    next_commit: Instant,
    commit_retry: Option<ExponentialBackoff>,
    /// When the first failed attempt of the commit now being retried was made.
    commit_first_failure: Option<Instant>,
    commit_failures: u64,
}

impl State {
    /// Age of the oldest running job. Messages waiting in a backlog are not counted: a
    /// saturated but healthy consumer must not look stuck.
    fn oldest_running(&self, now: Instant) -> Option<Duration> {
        self.slots
            .values()
            .flat_map(|slot| slot.running.values())
            .map(|(_, started)| now.saturating_duration_since(*started))
            .max()
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled whenever a job finishes, for the revoke drain (which blocks a thread).
    finished: Condvar,
    /// Wakes the loop: a job finished, a commit was answered, a rebalance happened.
    wake: tokio::sync::Notify,
    /// Held while a commit is computed and sent, and by a revoke while it commits and forgets
    /// its partitions: a periodic commit can never carry an offset of a partition that was
    /// already handed to another consumer.
    commit_gate: Mutex<()>,
    metrics: ConsumerMetrics,
    readiness: Readiness,
    revoke_drain: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the bookkeeping as it was at the last
        // completed step, which is still consistent; keep going rather than poison the loop.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by a job task when everything its message caused is durable.
    fn finish(&self, partition: &TopicPartition, epoch: Epoch, offset: i64) {
        {
            let mut state = self.lock();
            let state = &mut *state;
            if let Some(slot) = state.slots.get_mut(partition)
                && slot.epoch == epoch
                && slot.running.remove(&offset).is_some()
            {
                state.running -= 1;
                state.tracker.completed(partition, epoch, offset);
            }
        }
        self.finished.notify_all();
        self.wake.notify_one();
    }

    fn assign(&self, list: &TopicPartitionList) {
        let mut state = self.lock();
        let mut names = Vec::new();
        for element in list.elements() {
            let partition = TopicPartition::new(element.topic(), element.partition());
            let epoch = state.tracker.assign(partition.clone());
            if let Some(old) = state.slots.insert(
                partition.clone(),
                Slot {
                    epoch,
                    running: HashMap::new(),
                    backlog: VecDeque::new(),
                    revoking: false,
                },
            ) {
                let aborted = abort_all(&old);
                state.running -= aborted;
            }
            state.paused.remove(&partition);
            names.push(partition.to_string());
        }
        self.readiness.set(ASSIGNMENT, !state.slots.is_empty());
        // Cooperative rebalances call back with empty increments; only real changes are news.
        if !names.is_empty() {
            info!(partitions = ?names, assigned = state.slots.len(), "partitions assigned");
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Revoke: stop starting work, drain for a short deadline, commit what is complete
    /// (unless the assignment was lost, when a commit would be refused anyway), forget the rest.
    fn revoke<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        list: &TopicPartitionList,
        lost: bool,
    ) {
        let partitions: Vec<TopicPartition> = list
            .elements()
            .iter()
            .map(|e| TopicPartition::new(e.topic(), e.partition()))
            .collect();
        let deadline = Instant::now() + self.revoke_drain;
        {
            let mut state = self.lock();
            for partition in &partitions {
                if let Some(slot) = state.slots.get_mut(partition) {
                    slot.revoking = true;
                    slot.backlog.clear();
                }
            }
        }
        in_blocking_section(|| {
            if !lost && jobs_run_meanwhile() {
                self.drain(&partitions, deadline);
            }
            let _gate = self.acquire_gate(deadline + FINAL_COMMIT_TIMEOUT);
            if !lost {
                let batch: Vec<(TopicPartition, Epoch, i64)> = {
                    let state = self.lock();
                    partitions
                        .iter()
                        .filter_map(|p| {
                            state
                                .tracker
                                .committable_offset(p)
                                .map(|(epoch, offset)| (p.clone(), epoch, offset))
                        })
                        .collect()
                };
                if !batch.is_empty() {
                    self.commit_sync(consumer, &batch, deadline);
                }
            }
            self.forget(&partitions, lost);
        });
        self.wake.notify_one();
    }

    /// Drops revoked partitions: their unfinished jobs are aborted (they will be redelivered
    /// to the next owner) and their late completions will find no epoch to land in.
    fn forget(&self, partitions: &[TopicPartition], lost: bool) {
        let mut state = self.lock();
        let mut abandoned = 0;
        for partition in partitions {
            if let Some(slot) = state.slots.remove(partition) {
                abandoned += abort_all(&slot);
            }
            state.tracker.revoke(partition);
            state.paused.remove(partition);
        }
        state.running -= abandoned;
        self.readiness.set(ASSIGNMENT, !state.slots.is_empty());
        info!(
            partitions = ?partitions.iter().map(ToString::to_string).collect::<Vec<_>>(),
            lost,
            abandoned,
            assigned = state.slots.len(),
            "partitions revoked"
        );
    }

    /// The commit gate, waiting for a running periodic commit until `deadline`. Past it the
    /// revoke goes on without the gate: that commit was already handed to librdkafka, which
    /// sends it before anything the revoke sends.
    fn acquire_gate(&self, deadline: Instant) -> Option<MutexGuard<'_, ()>> {
        loop {
            match self.commit_gate.try_lock() {
                Ok(guard) => return Some(guard),
                Err(std::sync::TryLockError::Poisoned(e)) => return Some(e.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        warn!(
                            "a periodic commit is still running; revoking without waiting for it"
                        );
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    /// Waits until no job of `partitions` runs, or `deadline`.
    fn drain(&self, partitions: &[TopicPartition], deadline: Instant) {
        let busy = |state: &State| {
            partitions.iter().any(|p| {
                state
                    .slots
                    .get(p)
                    .is_some_and(|slot| !slot.running.is_empty())
            })
        };
        let mut state = self.lock();
        while busy(&state) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = match self.finished.wait_timeout(state, deadline - now) {
                Ok((state, _)) => state,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Commits `batch` synchronously, retrying with backoff until `deadline` (at least once).
    fn commit_sync<C: ConsumerContext, K: Consumer<C>>(
        &self,
        consumer: &K,
        batch: &[(TopicPartition, Epoch, i64)],
        deadline: Instant,
    ) -> bool {
        let list = offsets_list(batch);
        let started = Instant::now();
        let mut backoff = commit_backoff();
        loop {
            match consumer.commit(&list, CommitMode::Sync) {
                Ok(()) => {
                    self.metrics
                        .commit_latency
                        .observe(started.elapsed().as_secs_f64());
                    let mut state = self.lock();
                    for (partition, epoch, offset) in batch {
                        state.tracker.committed(partition, *epoch, *offset);
                    }
                    debug!(partitions = batch.len(), "offsets committed synchronously");
                    return true;
                }
                Err(e) => {
                    self.metrics.commit_errors.inc();
                    let delay = backoff.next().unwrap_or(Duration::from_secs(1));
                    if Instant::now() + delay >= deadline {
                        warn!(error = %e, partitions = batch.len(), "final commit failed; the uncommitted messages will be redelivered");
                        return false;
                    }
                    warn!(error = %e, retry_in = ?delay, "commit failed, retrying");
                    std::thread::sleep(delay);
                }
            }
        }
    }
}

impl Shared {
    /// One periodic commit: whatever is committable now, under the commit gate. A failure
    /// keeps everything in the tracker and schedules the next attempt after backoff.
    fn commit_periodic<C: ConsumerContext, K: Consumer<C>>(
        &self,
        consumer: &K,
        interval: Duration,
    ) {
        let _gate = self.commit_gate.lock().unwrap_or_else(|e| e.into_inner());
        let batch = self.lock().tracker.committable();
        if batch.is_empty() {
            return;
        }
        let sent = Instant::now();
        let result = consumer.commit(&offsets_list(&batch), CommitMode::Sync);
        let mut state = self.lock();
        match result {
            Ok(()) => {
                for (partition, epoch, offset) in &batch {
                    state.tracker.committed(partition, *epoch, *offset);
                }
                let first = state.commit_first_failure.take().unwrap_or(sent);
                self.metrics
                    .commit_latency
                    .observe(first.elapsed().as_secs_f64());
                if state.commit_failures > 0 {
                    info!(
                        failures = state.commit_failures,
                        "offset commits succeed again"
                    );
                }
                state.commit_failures = 0;
                state.commit_retry = None;
                state.next_commit = Instant::now() + interval;
                debug!(partitions = batch.len(), "offsets committed");
            }
            Err(error) => {
                state.commit_first_failure.get_or_insert(sent);
                self.metrics.commit_errors.inc();
                state.commit_failures += 1;
                let delay = state
                    .commit_retry
                    .get_or_insert_with(commit_backoff)
                    .next()
                    .unwrap_or(Duration::from_secs(10));
                state.next_commit = Instant::now() + delay;
                // Summarised: the first failure and then every tenth, not one line per retry.
                if state.commit_failures == 1 || state.commit_failures % 10 == 0 {
                    warn!(error = %error, failures = state.commit_failures, retry_in = ?delay,
                        "offset commit failed; retrying with backoff");
                }
            }
        }
    }
}

/// Whether job tasks can run while this thread blocks (not on a current-thread runtime).
fn jobs_run_meanwhile() -> bool {
    !matches!(
        tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()),
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread)
    )
}

/// Runs blocking work from inside the loop's task (librdkafka's rebalance callback runs in a
/// poll): on a multi-threaded runtime the thread's other tasks move elsewhere meanwhile.
fn in_blocking_section<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// Aborts every running job of a slot; returns how many there were.
fn abort_all(slot: &Slot) -> usize {
    for (handle, _) in slot.running.values() {
        handle.abort();
    }
    slot.running.len()
}

/// A list of explicit offsets to commit: each is the next message to consume (the tracker
/// already says so), and a list with explicit offsets is committed as given — unlike
/// `store_offset`, which adds one.
fn offsets_list(batch: &[(TopicPartition, Epoch, i64)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::with_capacity(batch.len());
    for (partition, _, offset) in batch {
        // Only fails for an invalid offset kind; `Offset::Offset` is always valid.
        let _ = list.add_partition_offset(
            &partition.topic,
            partition.partition,
            Offset::Offset(*offset),
        );
    }
    list
}

/// librdkafka callbacks: rebalances run the revoke/assign bookkeeping, commit answers are
/// queued for the loop.
struct LoopContext {
    shared: Arc<Shared>,
}

impl ClientContext for LoopContext {}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                self.shared
                    .revoke(consumer, list, consumer.assignment_lost());
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.shared.assign(list);
            // A partition paused under an earlier assignment must not come back paused: the
            // loop starts every assignment unpaused.
            if list.count() > 0
                && let Err(e) = consumer.resume(list)
            {
                warn!(error = %e, "cannot resume newly assigned partitions");
            }
        }
    }
}

type LoopConsumer = StreamConsumer<LoopContext>;

/// What a job needs, shared by every job's task.
struct JobEnv<H> {
    handler: Arc<H>,
    publisher: Publisher,
    metrics: ConsumerMetrics,
    job_timeout: Duration,
}

/// Runs one message until everything it caused is acknowledged: its outputs, or its DLQ
/// record. Parks and retries (with backoff) while a dependency or the DLQ is down.
///
/// A job's task lives as long as its message is in flight (a graph writer holds 10,000 of
/// them waiting for their batch), so it holds only this loop; each pass, and each phase of a
/// pass, is boxed and lives only while it runs. One flat state machine was 1,880 bytes a
/// task, rustc laying the phases out side by side; this loop is 280.
async fn run_job<H: Handler>(env: Arc<JobEnv<H>>, mut delivery: Delivery, slot: SlotRef) {
    let mut backoff: Option<Box<ExponentialBackoff>> = None;
    while let Err(Parked(why)) = Box::pin(run_pass(&env, &delivery)).await {
        let delay = backoff
            .get_or_insert_with(|| Box::new(job_backoff()))
            .next()
            .unwrap_or(Duration::from_secs(60));
        debug!(topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset,
            attempt = delivery.attempt, reason = %why, retry_in = ?delay, "message parked");
        Box::pin(tokio::time::sleep(delay)).await;
        delivery.attempt += 1;
    }
    slot.shared
        .finish(&slot.partition, slot.epoch, delivery.offset);
}

/// Where a job reports its completion: its partition's slot, in the assignment it started in.
struct SlotRef {
    shared: Arc<Shared>,
    partition: TopicPartition,
    epoch: Epoch,
}

/// A pass ended without an acknowledged outcome because a dependency is down: the message is
/// run again after backoff.
struct Parked(String);

/// One pass over a message: handle it, publish its outputs and record the outcome; or, when
/// it must be abandoned, publish its DLQ record instead.
async fn run_pass<H: Handler>(env: &JobEnv<H>, delivery: &Delivery) -> Result<(), Parked> {
    let attempt = Box::pin(
        AssertUnwindSafe(tokio::time::timeout(
            env.job_timeout,
            env.handler.handle(delivery),
        ))
        .catch_unwind(),
    )
    .await;
    let (reason, detail) = match attempt {
        // A panicking handler is a bug; dead-lettering keeps the partition moving and the
        // message replayable once the bug is fixed.
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".to_owned());
            error!(topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset,
                detail = %detail, "handler panicked");
            ("panic".to_owned(), detail)
        }
        Ok(Err(_)) => (
            "timeout".to_owned(),
            format!("handler ran past JOB_TIMEOUT ({:?})", env.job_timeout),
        ),
        Ok(Ok(Err(HandleError::DeadLetter { reason, detail }))) => (reason, detail),
        Ok(Ok(Err(HandleError::Retry(why)))) => return Err(Parked(why)),
        Ok(Ok(Ok(records))) => match Box::pin(publish_outputs(env, delivery, &records)).await {
            Ok(()) => return Ok(()),
            Err(Abandon::Parked(parked)) => return Err(parked),
            Err(Abandon::DeadLetter { reason, detail }) => (reason, detail),
        },
    };
    Box::pin(publish_dead_letter(env, delivery, &reason, &detail)).await
}

/// Why a message's outputs did not complete it.
enum Abandon {
    /// A dependency is down: run the message again later.
    Parked(Parked),
    /// The message cannot succeed: dead-letter it with this reason.
    DeadLetter { reason: String, detail: String },
}

/// Publishes a handled message's records, then lets the handler record the outcome.
async fn publish_outputs<H: Handler>(
    env: &JobEnv<H>,
    delivery: &Delivery,
    records: &[Record],
) -> Result<(), Abandon> {
    if let Err(e) = env.publisher.publish(records).await {
        if e.is_timeout() {
            env.metrics.publish_timeouts.inc();
        }
        return Err(Abandon::DeadLetter {
            reason: "publish".to_owned(),
            detail: e.to_string(),
        });
    }
    match env
        .handler
        .finished(delivery, Outcome::Published(records))
        .await
    {
        Ok(()) => {
            debug!(topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset, "message done");
            Ok(())
        }
        Err(HandleError::DeadLetter { reason, detail }) => {
            Err(Abandon::DeadLetter { reason, detail })
        }
        Err(HandleError::Retry(why)) => Err(Abandon::Parked(Parked(format!(
            "outcome not recorded: {why}"
        )))),
    }
}

/// Publishes a message's DLQ record, then lets the handler record that it was dead-lettered.
async fn publish_dead_letter<H: Handler>(
    env: &JobEnv<H>,
    delivery: &Delivery,
    reason: &str,
    detail: &str,
) -> Result<(), Parked> {
    let record = env.handler.dead_letter(delivery, reason, detail);
    match env.publisher.publish(std::slice::from_ref(&record)).await {
        Ok(()) => {
            debug!(topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset,
                reason = %reason, "message dead-lettered");
            record_dead_letter(env, delivery, reason).await;
            Ok(())
        }
        Err(e) => {
            if let PublishError::Timeout { .. } = e {
                env.metrics.publish_timeouts.inc();
            }
            warn!(topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset,
                reason = %reason, error = %e, "DLQ record not acknowledged; message parked");
            Err(Parked(format!("DLQ record not acknowledged: {e}")))
        }
    }
}

/// Tells the handler a message was dead-lettered, repeating while its dependency is down: the
/// DLQ record is already acknowledged, so only the bookkeeping is repeated, never the record.
async fn record_dead_letter<H: Handler>(env: &JobEnv<H>, delivery: &Delivery, reason: &str) {
    let mut backoff = job_backoff();
    loop {
        match env
            .handler
            .finished(delivery, Outcome::DeadLettered { reason })
            .await
        {
            Ok(()) | Err(HandleError::DeadLetter { .. }) => return,
            Err(HandleError::Retry(why)) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(60));
                debug!(topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset,
                    reason = %why, retry_in = ?delay, "dead letter not recorded yet");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

impl<H: Handler> ConsumerLoop<H> {
    /// Consumes until `shutdown` is cancelled, then drains, commits, leaves the group and
    /// returns `Ok`. Errors only when the clients cannot be set up.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        let publisher = Publisher::new(&self.kafka, self.consumer.publish_timeout)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                tracker: CommitTracker::new(),
                slots: HashMap::new(),
                running: 0,
                paused: HashSet::new(),
                stopping: false,
                committing: false,
                next_commit: Instant::now(),
                commit_retry: None,
                commit_first_failure: None,
                commit_failures: 0,
            }),
            finished: Condvar::new(),
            wake: tokio::sync::Notify::new(),
            commit_gate: Mutex::new(()),
            metrics: self.metrics.clone(),
            readiness: self.readiness.clone(),
            revoke_drain: self.consumer.revoke_drain_timeout,
        });
        self.readiness.set(ASSIGNMENT, false);
        let consumer: Arc<LoopConsumer> = Arc::new(
            consumer_config(&self.kafka, &self.consumer, &self.group_id)
                // librdkafka postpones a partition's next fetch by this much when its queue is
                // full (default 1 s). A loop busy enough to fill that queue is also the one
                // that pauses and resumes partitions, and each resume then stalled for the full
                // second: 4k messages/s instead of 65k in benches/consumer_loop.rs.
                .set("fetch.queue.backoff.ms", "50")
                .create_with_context(LoopContext {
                    shared: Arc::clone(&shared),
                })
                .map_err(ConsumerError::Create)?,
        );
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| ConsumerError::Subscribe {
                topics: self.topics.clone(),
                source,
            })?;
        info!(group = %self.group_id, topics = ?self.topics, concurrency = self.concurrency,
            per_partition = self.per_partition, "consumer loop started");

        let lag_stop = CancellationToken::new();
        // Stops the lag thread (and so releases the consumer) even if this future is dropped
        // instead of being shut down through the token.
        let _lag_guard = lag_stop.clone().drop_guard();
        let lag_thread = spawn_lag_thread(
            Arc::clone(&consumer),
            Arc::clone(&shared),
            self.metrics.clone(),
            lag_stop.clone(),
        );
        let env = Arc::new(JobEnv {
            handler: Arc::clone(&self.handler),
            publisher,
            metrics: self.metrics.clone(),
            job_timeout: self.job_timeout,
        });
        let turn = Turn {
            shared: &shared,
            consumer: &consumer,
            env: &env,
            concurrency: self.concurrency.max(1),
            per_partition: self.per_partition.max(1),
            commit_interval: self.consumer.commit_interval,
        };

        let mut idle = tokio::time::interval(IDLE_TICK);
        let mut commit_tick = tokio::time::interval(self.consumer.commit_interval);
        let mut pending_labels = HashSet::new();
        loop {
            self.liveness.polled();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                message = consumer.recv() => match message {
                    Ok(message) => turn.accept(&message),
                    Err(e) => warn!(error = %e, "consumer error"),
                },
                _ = shared.wake.notified() => {}
                _ = commit_tick.tick() => {}
                _ = idle.tick() => turn.refresh_gauges(&mut pending_labels),
            }
            turn.step();
        }

        // Shutdown: stop consuming, drain, commit, leave the group.
        info!("shutting down: draining in-flight jobs");
        {
            let mut state = shared.lock();
            state.stopping = true;
            for slot in state.slots.values_mut() {
                slot.backlog.clear();
            }
        }
        if let Ok(assignment) = consumer.assignment()
            && let Err(e) = consumer.pause(&assignment)
        {
            warn!(error = %e, "cannot pause partitions for shutdown");
        }
        let deadline = tokio::time::Instant::now() + self.consumer.drain_timeout;
        loop {
            self.liveness.polled();
            if shared.lock().running == 0 {
                break;
            }
            tokio::select! {
                // Still polled, so rebalances and commit answers are served; messages are
                // dropped untracked (they lie past every tracked offset).
                _ = consumer.recv() => {}
                _ = shared.wake.notified() => {}
                _ = idle.tick() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let abandoned = {
            let mut state = shared.lock();
            let state = &mut *state;
            let mut abandoned = 0;
            for slot in state.slots.values_mut() {
                abandoned += abort_all(slot);
                slot.running.clear();
            }
            state.running = 0;
            abandoned
        };
        if abandoned > 0 {
            warn!(
                abandoned,
                "drain deadline passed; unfinished jobs will be redelivered"
            );
        }
        let committer = Arc::clone(&consumer);
        let committing = Arc::clone(&shared);
        let _ = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + FINAL_COMMIT_TIMEOUT;
            let _gate = committing.acquire_gate(deadline);
            let batch = committing.lock().tracker.committable();
            if !batch.is_empty() {
                committing.commit_sync(committer.as_ref(), &batch, deadline);
            }
        })
        .await;
        lag_stop.cancel();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = lag_thread.join();
            // Dropping the last handle closes the consumer: it revokes (nothing left to
            // drain), leaves the group, and waits for librdkafka to finish.
            drop(consumer);
        })
        .await;
        self.readiness.set(ASSIGNMENT, false);
        self.metrics.in_flight.set(0);
        info!("consumer loop stopped");
        Ok(())
    }
}

/// One turn of the loop: the borrowed pieces the steps need.
struct Turn<'a, H> {
    shared: &'a Arc<Shared>,
    consumer: &'a Arc<LoopConsumer>,
    env: &'a Arc<JobEnv<H>>,
    concurrency: usize,
    per_partition: usize,
    commit_interval: Duration,
}

impl<H: Handler> Turn<'_, H> {
    /// Takes ownership of a polled message: tracked first (so no commit passes it), then
    /// queued for a slot.
    fn accept(&self, message: &BorrowedMessage<'_>) {
        let partition = TopicPartition::new(message.topic(), message.partition());
        let offset = message.offset();
        let mut state = self.shared.lock();
        let state = &mut *state;
        if state.stopping {
            return;
        }
        let Some(slot) = state.slots.get_mut(&partition) else {
            debug!(%partition, offset, "message for a partition not assigned; ignored");
            return;
        };
        if slot.revoking {
            return;
        }
        match state
            .tracker
            .delivered(&partition, slot.epoch, offset, Instant::now())
        {
            Delivered::Accepted => slot.backlog.push_back(Delivery {
                topic: partition.topic.clone(),
                partition: partition.partition,
                offset,
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                attempt: 1,
            }),
            Delivered::Duplicate => {
                warn!(%partition, offset, "offset delivered again in one assignment; ignored")
            }
            Delivered::Stale => {}
        }
    }

    /// Everything after an event: commit answers, dispatch, pause/resume, periodic commit.
    fn step(&self) {
        self.dispatch();
        self.commit_if_due();
    }

    /// Starts backlog messages while slots are free, then pauses partitions whose backlog is
    /// full and resumes those that drained.
    fn dispatch(&self) {
        let mut state = self.shared.lock();
        let state = &mut *state;
        if state.stopping {
            return;
        }
        let high = partition_backlog(state.slots.len());
        let mut to_pause = TopicPartitionList::new();
        let mut to_resume = TopicPartitionList::new();
        for (partition, slot) in state.slots.iter_mut() {
            while state.running < self.concurrency
                && slot.running.len() < self.per_partition
                && !slot.revoking
            {
                let Some(delivery) = slot.backlog.pop_front() else {
                    break;
                };
                let offset = delivery.offset;
                let slot_ref = SlotRef {
                    shared: Arc::clone(self.shared),
                    partition: partition.clone(),
                    epoch: slot.epoch,
                };
                // Spawned under the lock: the task's `finish` waits for the lock, so its
                // handle is registered before it can be looked up.
                let task = tokio::spawn(run_job(Arc::clone(self.env), delivery, slot_ref));
                slot.running
                    .insert(offset, (task.abort_handle(), Instant::now()));
                state.running += 1;
            }
            let paused = state.paused.contains(partition);
            if !paused && slot.backlog.len() >= high {
                to_pause.add_partition(&partition.topic, partition.partition);
            } else if paused && slot.backlog.len() <= high / 2 {
                to_resume.add_partition(&partition.topic, partition.partition);
            }
        }
        self.env.metrics.in_flight.set(state.running as i64);
        if to_pause.count() > 0 {
            match self.consumer.pause(&to_pause) {
                Ok(()) => state.paused.extend(list_partitions(&to_pause)),
                Err(e) => warn!(error = %e, "cannot pause partitions"),
            }
        }
        if to_resume.count() > 0 {
            match self.consumer.resume(&to_resume) {
                Ok(()) => {
                    for partition in list_partitions(&to_resume) {
                        state.paused.remove(&partition);
                    }
                }
                Err(e) => warn!(error = %e, "cannot resume partitions"),
            }
        }
    }

    /// Commits every offset that moved, on a blocking thread (librdkafka reports the result
    /// of an asynchronous commit only through a callback rust-rdkafka does not install), unless
    /// a commit is running or a failed one waits for its backoff.
    fn commit_if_due(&self) {
        {
            let mut state = self.shared.lock();
            if state.committing
                || Instant::now() < state.next_commit
                || state.tracker.committable().is_empty()
            {
                return;
            }
            state.committing = true;
        }
        let shared = Arc::clone(self.shared);
        let consumer = Arc::clone(self.consumer);
        let interval = self.commit_interval;
        tokio::task::spawn_blocking(move || {
            shared.commit_periodic(consumer.as_ref(), interval);
            shared.lock().committing = false;
            shared.wake.notify_one();
        });
    }

    /// Once a second: commit-pending per partition and the oldest in-flight age.
    fn refresh_gauges(&self, labels: &mut HashSet<i32>) {
        let state = self.shared.lock();
        // The contract labels pending completions by partition number only; the graph
        // writer's two topics are summed per number.
        let mut pending: HashMap<i32, i64> = HashMap::new();
        for partition in state.slots.keys() {
            *pending.entry(partition.partition).or_default() +=
                state.tracker.pending(partition) as i64;
        }
        let oldest = state.oldest_running(Instant::now());
        drop(state);
        let gauge = &self.env.metrics.commit_pending;
        for stale in labels.iter().filter(|p| !pending.contains_key(p)) {
            let _ = gauge.remove_label_values(&[&stale.to_string()]);
        }
        labels.clear();
        for (partition, count) in pending {
            gauge
                .with_label_values(&[&partition.to_string()])
                .set(count);
            labels.insert(partition);
        }
        self.env
            .metrics
            .oldest_in_flight_seconds
            .set(oldest.map_or(0, |age| age.as_secs() as i64));
    }
}

fn list_partitions(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

/// Refreshes `consumer_lag` and `oldest_in_flight_seconds` from a thread of its own, so both
/// keep moving when the loop (or the whole runtime) is stuck.
fn spawn_lag_thread(
    consumer: Arc<LoopConsumer>,
    shared: Arc<Shared>,
    metrics: ConsumerMetrics,
    stop: CancellationToken,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut labels: HashSet<(String, i32)> = HashSet::new();
        while !stop.is_cancelled() {
            let oldest = shared.lock().oldest_running(Instant::now());
            metrics
                .oldest_in_flight_seconds
                .set(oldest.map_or(0, |age| age.as_secs() as i64));
            let mut seen = labels.clone();
            if let Ok(positions) = consumer.position() {
                seen.clear();
                let mut unknown = TopicPartitionList::new();
                let mut lags = Vec::new();
                for element in positions.elements() {
                    match element.offset() {
                        Offset::Offset(position) => lags.push((
                            element.topic().to_owned(),
                            element.partition(),
                            Some(position),
                        )),
                        _ => {
                            unknown.add_partition(element.topic(), element.partition());
                            lags.push((element.topic().to_owned(), element.partition(), None));
                        }
                    }
                }
                // Before the first message of a partition the position is unknown: the
                // group's committed offset stands in for it.
                let committed = if unknown.count() > 0 {
                    consumer
                        .committed_offsets(unknown, WATERMARK_TIMEOUT)
                        .map(|list| list.to_topic_map())
                        .unwrap_or_default()
                } else {
                    HashMap::new()
                };
                for (topic, partition, position) in lags {
                    if stop.is_cancelled() {
                        return;
                    }
                    let Ok((low, high)) =
                        consumer.fetch_watermarks(&topic, partition, WATERMARK_TIMEOUT)
                    else {
                        // Keep the last value rather than hide the partition.
                        seen.insert((topic, partition));
                        continue;
                    };
                    let position = position
                        .or_else(|| match committed.get(&(topic.clone(), partition)) {
                            Some(Offset::Offset(o)) => Some(*o),
                            _ => None,
                        })
                        .unwrap_or(low);
                    metrics
                        .consumer_lag
                        .with_label_values(&[&topic, &partition.to_string()])
                        .set((high - position).max(0));
                    seen.insert((topic, partition));
                }
            }
            for (topic, partition) in labels.difference(&seen) {
                let _ = metrics
                    .consumer_lag
                    .remove_label_values(&[topic, &partition.to_string()]);
            }
            labels = seen;
            let until = Instant::now() + LAG_INTERVAL;
            while Instant::now() < until && !stop.is_cancelled() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_is_bounded_per_process_whatever_the_partitions() {
        assert_eq!(partition_backlog(0), PARTITION_BACKLOG);
        assert_eq!(partition_backlog(1), PARTITION_BACKLOG);
        assert_eq!(partition_backlog(4), PARTITION_BACKLOG);
        for assigned in [5, 24, 1000, 4000] {
            assert!(
                partition_backlog(assigned) * assigned <= BACKLOG,
                "{assigned}"
            );
        }
        // Past BACKLOG partitions each still holds one message: a partition is never paused
        // for good.
        assert_eq!(partition_backlog(10_000), 1);
    }
}
