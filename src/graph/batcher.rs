//! The batcher: many concurrent messages in, one Neo4j transaction per batch out.
//!
//! Each message's handler hands its row to [`Batcher::write`] and waits. A single task
//! collects rows until it has `GRAPH_BATCH_SIZE` of them or the first has waited
//! `GRAPH_BATCH_LINGER`, writes them in one transaction (nodes before relationships), and
//! tells every waiting handler the fate of its own row through a oneshot channel. So an offset
//! is committed only after the transaction holding its row committed.
//!
//! Up to `GRAPH_TRANSACTIONS` batches are written at once. A transaction spends most of its
//! time waiting on Neo4j, so one at a time left Neo4j's cores idle: an import with four
//! writers of one transaction each ran 1.4 times faster than with two. Concurrent
//! transactions are safe for the graph because every write is a `MERGE` under the revision
//! rules (see [`super::cypher`]), which make the result independent of the order batches
//! commit in; two that lock the same nodes in opposite orders deadlock, Neo4j aborts one, and
//! it is retried like any transient error.
//!
//! Failures are sorted, never swallowed:
//! - a transient error (deadlock, leader switch) retries the batch a few times at once;
//! - Neo4j out of reach (refused, lost, timed out) marks it down (`neo4j_up` 0, readiness
//!   `neo4j` false) and answers [`RowFailure::Retry`] to every row, so the consumer loop keeps
//!   the offsets and redelivers with backoff; while down, a probe brings the flags back as
//!   soon as Neo4j answers, even with no traffic;
//! - Neo4j refusing the batch because of its data splits it in halves, recursively, until the
//!   offending rows stand alone: those answer [`RowFailure::Rejected`] (dead-letter), all
//!   the others are written;
//! - a batch too large for Neo4j (transaction memory or timeout) is split the same way; a row
//!   still too large alone is dead-lettered when rows beside it were written, else retried
//!   (Neo4j may be struggling with everything).

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{GraphStore, Row, WriteError};
use crate::process::health::Readiness;
use crate::process::metrics::GraphWriterMetrics;

/// A failure faster than this is a refused or reset connection, not a timeout.
const QUICK_FAILURE: Duration = Duration::from_secs(1);

/// The readiness condition the batcher keeps up to date.
pub const READINESS_NEO4J: &str = "neo4j";

/// How the batcher groups and retries.
#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// Rows per transaction at most.
    pub batch_size: usize,
    /// Transactions written at once.
    pub transactions: usize,
    /// How long the first row of a batch waits for others.
    pub linger: Duration,
    /// Tries of one transaction against transient errors (deadlocks): enough to ride out a
    /// lock conflict with another writer, few enough that a persistent failure goes back to
    /// the consumer loop, whose backoff keeps the offsets and does not spin.
    pub transient_attempts: u32,
    /// First pause between those tries; doubled each time, with jitter so two writers that
    /// deadlocked do not collide again.
    pub retry_backoff: Duration,
    /// How often Neo4j is probed while it is down. Short enough that readiness returns within
    /// a couple of seconds of Neo4j, long enough not to flood its log.
    pub probe_interval: Duration,
}

impl BatcherConfig {
    /// Batches of at most `batch_size` rows, each waiting at most `linger` to fill
    /// (`GRAPH_BATCH_SIZE`, `GRAPH_BATCH_LINGER`), one transaction at a time, with the retry
    /// settings' defaults.
    pub fn new(batch_size: usize, linger: Duration) -> Self {
        Self {
            batch_size,
            transactions: 1,
            linger,
            transient_attempts: 4,
            retry_backoff: Duration::from_millis(50),
            probe_interval: Duration::from_secs(2),
        }
    }
}

/// Why a row was not written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowFailure {
    /// Neo4j refused this row on its own (its batch-mates were written): dead-letter it.
    #[error("Neo4j refused the row: {0}")]
    Rejected(String),
    /// The row could not be written now (Neo4j down, errors outlasting the retries, the
    /// batcher stopping): redeliver it later.
    #[error("row not written, retry: {0}")]
    Retry(String),
}

struct Pending {
    row: Box<Row>,
    done: oneshot::Sender<Result<(), RowFailure>>,
}

/// A handle to the batcher task; clone it into every handler.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Starts the batcher task. It stops when every handle is dropped, after writing what it
    /// holds.
    pub fn spawn(
        store: Arc<GraphStore>,
        config: BatcherConfig,
        metrics: GraphWriterMetrics,
        readiness: Readiness,
    ) -> (Self, JoinHandle<()>) {
        // Room for two batches of rows not yet in a transaction (queued while every
        // transaction is busy); handlers beyond that wait to hand in their row, which is the
        // back-pressure the consumer loop feels.
        let (tx, rx) = mpsc::channel(config.batch_size.saturating_mul(2).max(1));
        let task = Task {
            writer: Arc::new(Writer {
                store,
                config,
                metrics,
                readiness,
                up: std::sync::Mutex::new(None),
            }),
        };
        (Self { tx }, tokio::spawn(task.run(rx)))
    }

    /// Writes one row with the next batch and waits until its transaction committed.
    ///
    /// The row is boxed before the future starts: a graph writer holds several batches of
    /// these futures (`GRAPH_TRANSACTIONS` + 1), and a row inline would sit in each of them
    /// twice (before and inside the send).
    pub fn write(&self, row: Row) -> impl Future<Output = Result<(), RowFailure>> + Send + '_ {
        let row = Box::new(row);
        async move {
            let (done, outcome) = oneshot::channel();
            self.tx
                .send(Pending { row, done })
                .await
                .map_err(|_| RowFailure::Retry("the batcher has stopped".to_owned()))?;
            outcome
                .await
                .unwrap_or_else(|_| Err(RowFailure::Retry("the batcher has stopped".to_owned())))
        }
    }
}

/// The collecting task: forms batches and hands each to a transaction of its own.
struct Task {
    writer: Arc<Writer>,
}

/// What every transaction of the batcher shares.
struct Writer {
    store: Arc<GraphStore>,
    config: BatcherConfig,
    metrics: GraphWriterMetrics,
    readiness: Readiness,
    /// Whether Neo4j answered the last call (`None` until first checked).
    up: std::sync::Mutex<Option<bool>>,
}

impl Task {
    async fn run(self, mut rx: mpsc::Receiver<Pending>) {
        let writer = self.writer;
        let transactions = writer.config.transactions.max(1);
        let permits = Arc::new(Semaphore::new(transactions));
        let mut next_probe = tokio::time::Instant::now();
        loop {
            // A free transaction first, so a batch starts filling (and its linger runs) only
            // when it can be written at once; meanwhile rows queue in the channel.
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break;
            };
            let first = tokio::select! {
                pending = rx.recv() => pending,
                _ = tokio::time::sleep_until(next_probe), if writer.up() != Some(true) => {
                    if let Err(e) = writer.store.ping().await {
                        writer.set_up(Err(&e));
                    } else {
                        writer.set_up(Ok(()));
                    }
                    next_probe = tokio::time::Instant::now() + writer.config.probe_interval;
                    continue;
                }
            };
            let Some(first) = first else { break };
            let mut batch = Vec::with_capacity(writer.config.batch_size);
            batch.push(first);
            let deadline = tokio::time::Instant::now() + writer.config.linger;
            while batch.len() < writer.config.batch_size {
                tokio::select! {
                    biased;
                    pending = rx.recv() => match pending {
                        Some(pending) => batch.push(pending),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            let batch_writer = Arc::clone(&writer);
            tokio::spawn(async move {
                batch_writer.write_batch(batch).await;
                drop(permit);
            });
            next_probe = tokio::time::Instant::now() + writer.config.probe_interval;
        }
        // Every handle is gone: wait for the transactions still running.
        let _ = permits.acquire_many(transactions as u32).await;
    }
}

impl Writer {
    fn up(&self) -> Option<bool> {
        *self.up.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_up(&self, outcome: Result<(), &WriteError>) {
        // Neo4j that answers with an error is still up.
        let up = !matches!(outcome, Err(WriteError::Unavailable(_)));
        let mut was = self.up.lock().unwrap_or_else(|e| e.into_inner());
        if *was != Some(up) {
            match outcome {
                Err(e) if !up => {
                    tracing::warn!(error = %e, "Neo4j is out of reach; holding offsets")
                }
                _ => tracing::info!("Neo4j is reachable"),
            }
        }
        *was = Some(up);
        drop(was);
        self.metrics.neo4j_up.set(i64::from(up));
        self.readiness.set(READINESS_NEO4J, up);
    }

    /// Writes a batch, isolating rows Neo4j refuses, and answers every row.
    async fn write_batch(&self, batch: Vec<Pending>) {
        let rows: Vec<&Row> = batch.iter().map(|p| p.row.as_ref()).collect();
        let mut outcomes: Vec<Option<Result<(), RowFailure>>> = vec![None; rows.len()];
        // A stack of ranges still to write, starting with the whole batch.
        let mut work: Vec<Range<usize>> = Vec::new();
        work.push(0..rows.len());
        // Rows of this batch written so far: a row too large alone is its own fault only when
        // rows beside it could be written.
        let mut written = 0;
        // Rows too large alone, decided once the rest of the batch is known.
        let mut too_large: Vec<(Range<usize>, String)> = Vec::new();
        while let Some(range) = work.pop() {
            match self.write_with_retries(&rows[range.clone()]).await {
                Ok(()) => {
                    written += range.len();
                    outcomes[range].fill(Some(Ok(())));
                }
                Err(WriteError::Rejected(e)) if range.len() == 1 => {
                    tracing::debug!(error = %e, "row refused by Neo4j");
                    outcomes[range].fill(Some(Err(RowFailure::Rejected(e))));
                }
                Err(WriteError::TooLarge(e)) if range.len() == 1 => too_large.push((range, e)),
                Err(WriteError::Rejected(_) | WriteError::TooLarge(_)) => {
                    // The first half is written first: work is a stack.
                    let mid = range.start + range.len() / 2;
                    work.push(mid..range.end);
                    work.push(range.start..mid);
                }
                Err(e) => {
                    // Neo4j is not taking writes now: everything not yet written goes back.
                    let failure = RowFailure::Retry(e.to_string());
                    for rest in std::iter::once(range).chain(work.drain(..)) {
                        outcomes[rest].fill(Some(Err(failure.clone())));
                    }
                }
            }
        }
        for (range, e) in too_large {
            let failure = if written > 0 {
                tracing::debug!(error = %e, "row too large for Neo4j on its own");
                RowFailure::Rejected(e)
            } else {
                RowFailure::Retry(e)
            };
            outcomes[range].fill(Some(Err(failure)));
        }
        for (pending, outcome) in batch.into_iter().zip(outcomes) {
            let outcome = outcome.unwrap_or_else(|| Err(RowFailure::Retry("not attempted".into())));
            // The handler may have given up waiting (job timeout): its message is redelivered.
            let _ = pending.done.send(outcome);
        }
    }

    /// One transaction for `rows`, retried against transient errors and one lost connection.
    async fn write_with_retries(&self, rows: &[&Row]) -> Result<(), WriteError> {
        let mut pause = self.config.retry_backoff;
        let mut unavailable_before = false;
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let result = self.store.write(rows).await;
            self.set_up(result.as_ref().map(drop));
            let error = match result {
                Ok(()) => {
                    self.record_written(rows, started.elapsed());
                    return Ok(());
                }
                Err(e) => e,
            };
            let retry = match &error {
                WriteError::Rejected(_) | WriteError::TooLarge(_) => false,
                WriteError::Transient(_) => attempt < self.config.transient_attempts,
                // A pooled connection may have died with a Neo4j restart; the pool has been
                // replaced, so one more try tells a dead connection from a dead Neo4j. Only
                // after a quick failure: after a timeout, another try would double the time
                // the batch's handlers wait on a Neo4j that does not answer.
                WriteError::Unavailable(_) => {
                    started.elapsed() < QUICK_FAILURE
                        && !std::mem::replace(&mut unavailable_before, true)
                }
            };
            if !retry {
                return Err(error);
            }
            tracing::debug!(error = %error, attempt, rows = rows.len(), "retrying a batch");
            let reason = match error {
                WriteError::Unavailable(_) => "unavailable",
                _ => "transient",
            };
            self.metrics
                .transaction_retries
                .with_label_values(&[reason])
                .inc();
            let jitter = rand::random_range(0.5..1.5);
            tokio::time::sleep(pause.mul_f64(jitter)).await;
            pause = pause.saturating_mul(2);
            attempt += 1;
        }
    }

    fn record_written(&self, rows: &[&Row], took: Duration) {
        let nodes = rows.iter().filter(|r| r.is_node()).count() as u64;
        self.metrics.results_written.inc_by(nodes);
        self.metrics.edges_written.inc_by(rows.len() as u64 - nodes);
        self.metrics.batch_rows.observe(rows.len() as f64);
        self.metrics.neo4j_write_seconds.observe(took.as_secs_f64());
    }
}
