//! The importer's start-up and run: a reader thread turns dump lines into records, batch by
//! batch; the async side publishes a bounded number of batches at once through the project's
//! [`Publisher`] (`acks=all`, idempotent), checkpoints each batch once it and every batch
//! before it are acknowledged, and shows progress on stderr.
//!
//! Memory is bounded by `IMPORT_BATCH_LINES × (IMPORT_IN_FLIGHT + 2)` lines' records (the
//! batches publishing, one waiting in the channel, one being read), whatever the file size.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use flate2::read::MultiGzDecoder;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{Checkpoint, file_id};
use super::{ImportTarget, SubjectsSeen, default_crawl_id, shard_key};
use crate::config::import::{ImportArgs, Shard};
use crate::kafka::publish::{Publisher, Record};
use crate::message::fnv1a64;

/// Subject keys remembered between two subject nodes of the same subject (see
/// [`SubjectsSeen`]): a few megabytes.
const SUBJECTS_REMEMBERED: usize = 100_000;

/// Tries of one batch's publish before the import stops (its checkpoint stays at the batch
/// before): a broker that is away for three `PUBLISH_TIMEOUT`s is an operator's matter.
const PUBLISH_ATTEMPTS: u32 = 3;

/// What an import did, printed as JSON on stdout at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    /// Lines read, in all files.
    pub lines: u64,
    /// Lines skipped because the checkpoint had them.
    pub resumed: u64,
    /// Lines of another shard.
    pub other_shard: u64,
    /// Lines of this shard whose records (or DLQ record) were acknowledged.
    pub published_lines: u64,
    /// Record nodes published.
    pub nodes: u64,
    /// Subject nodes published.
    pub subjects: u64,
    /// Relationships published.
    pub edges: u64,
    /// Redirect lines (nothing to publish).
    pub redirects: u64,
    /// Delete lines (nothing to publish).
    pub deletes: u64,
    /// Lines dead-lettered.
    pub dlq: u64,
}

impl ImportSummary {
    fn add(&mut self, other: &ImportSummary) {
        self.lines += other.lines;
        self.resumed += other.resumed;
        self.other_shard += other.other_shard;
        self.published_lines += other.published_lines;
        self.nodes += other.nodes;
        self.subjects += other.subjects;
        self.edges += other.edges;
        self.redirects += other.redirects;
        self.deletes += other.deletes;
        self.dlq += other.dlq;
    }
}

/// One batch of lines of one file, turned into records.
struct Batch {
    file: usize,
    last_line: u64,
    records: Vec<Record>,
    counts: ImportSummary,
}

/// A reader that counts the (compressed) bytes taken from the file, for progress and ETA.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Opens a dump file, gunzipping it when it starts with gzip's magic bytes.
fn open(path: &Path, read: Arc<AtomicU64>) -> std::io::Result<Box<dyn BufRead + Send>> {
    let file = File::open(path)?;
    let mut raw = BufReader::with_capacity(1 << 16, Counting { inner: file, read });
    let gzipped = raw.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzipped {
        Box::new(BufReader::with_capacity(1 << 16, MultiGzDecoder::new(raw)))
    } else {
        Box::new(raw)
    })
}

struct Reader {
    files: Vec<PathBuf>,
    resume: Vec<u64>,
    target: ImportTarget,
    shard: Shard,
    batch_lines: usize,
    read: Arc<AtomicU64>,
    /// Lines past the checkpoint still to read (`--max-lines`).
    budget: AtomicU64,
}

impl Reader {
    /// Reads every file in order and sends its batches; stops early when the receiver is gone.
    fn run(self, tx: mpsc::Sender<anyhow::Result<Batch>>) {
        let mut subjects = SubjectsSeen::new(SUBJECTS_REMEMBERED);
        for (index, path) in self.files.iter().enumerate() {
            if let Err(e) = self.read_file(index, path, &mut subjects, &tx) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }

    fn read_file(
        &self,
        index: usize,
        path: &Path,
        subjects: &mut SubjectsSeen,
        tx: &mpsc::Sender<anyhow::Result<Batch>>,
    ) -> anyhow::Result<()> {
        let mut input =
            open(path, self.read.clone()).with_context(|| format!("opening {}", path.display()))?;
        let new_batch = || Batch {
            file: index,
            last_line: 0,
            records: Vec::new(),
            counts: ImportSummary::default(),
        };
        let mut batch = new_batch();
        let mut in_batch = 0;
        let mut line = Vec::with_capacity(1 << 14);
        let mut line_no = 0u64;
        loop {
            line.clear();
            let n = input
                .read_until(b'\n', &mut line)
                .with_context(|| format!("reading {} after line {line_no}", path.display()))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let resumed = line_no <= self.resume[index];
            if !resumed {
                if self.budget.load(Ordering::Relaxed) == 0 {
                    break;
                }
                self.budget.fetch_sub(1, Ordering::Relaxed);
            }
            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                line.pop();
            }
            batch.last_line = line_no;
            batch.counts.lines += 1;
            in_batch += 1;
            if resumed {
                batch.counts.resumed += 1;
            } else if fnv1a64(shard_key(&line)) % self.shard.count != self.shard.index {
                batch.counts.other_shard += 1;
            } else {
                batch.counts.published_lines += 1;
                match self.target.line_records(&line, subjects) {
                    Ok(out) => {
                        batch.counts.nodes += out.nodes;
                        batch.counts.subjects += out.subjects;
                        batch.counts.edges += out.edges;
                        batch.counts.redirects += u64::from(out.redirect);
                        batch.counts.deletes += u64::from(out.delete);
                        batch.records.extend(out.records);
                    }
                    Err(error) => {
                        tracing::debug!(file = %path.display(), line = line_no, %error, "line dead-lettered");
                        batch.counts.dlq += 1;
                        batch
                            .records
                            .push(self.target.dead_letter(path, line_no, &line, &error));
                    }
                }
            }
            if in_batch >= self.batch_lines {
                if tx
                    .blocking_send(Ok(std::mem::replace(&mut batch, new_batch())))
                    .is_err()
                {
                    return Ok(());
                }
                in_batch = 0;
            }
        }
        if in_batch > 0 {
            let _ = tx.blocking_send(Ok(batch));
        }
        Ok(())
    }
}

async fn publish(publisher: Arc<Publisher>, batch: Batch) -> anyhow::Result<Batch> {
    let mut pause = Duration::from_secs(1);
    let mut attempt = 1;
    loop {
        match publisher.publish(&batch.records).await {
            Ok(()) => return Ok(batch),
            Err(e) if attempt >= PUBLISH_ATTEMPTS || e.is_permanent() || e.is_fatal() => {
                return Err(e).context(format!(
                    "publishing up to line {} (the checkpoint stays before this batch)",
                    batch.last_line
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "publishing a batch failed; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
        }
    }
}

/// The progress display: a bar on a terminal, else a line every `interval`.
struct Progress {
    bar: Option<ProgressBar>,
    total_bytes: u64,
    read: Arc<AtomicU64>,
    started: Instant,
}

impl Progress {
    fn new(total_bytes: u64, read: Arc<AtomicU64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total_bytes);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Self {
            bar,
            total_bytes,
            read,
            started: Instant::now(),
        }
    }

    fn show(&self, done: &ImportSummary) {
        let read = self.read.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done.lines as f64 / secs;
        let message = format!(
            "lines {} ({rate:.0}/s) | nodes {} | edges {} | dlq {}",
            done.lines,
            done.nodes + done.subjects,
            done.edges,
            done.dlq
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(read);
                bar.set_message(message);
            }
            None => {
                let eta = if read > 0 && read < self.total_bytes {
                    let left = (self.total_bytes - read) as f64 * secs / read as f64;
                    format!("{left:.0}s")
                } else {
                    "-".to_owned()
                };
                let share = 100.0 * read as f64 / self.total_bytes.max(1) as f64;
                eprintln!("import: {message} | {share:.1}% of the bytes | ETA {eta}");
            }
        }
    }

    fn finish(&self, done: &ImportSummary) {
        self.show(done);
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// `bookworm import`: imports `args.files` until done or `shutdown` (then it stops taking
/// batches, waits for those in flight and checkpoints them).
pub async fn run(args: ImportArgs, shutdown: CancellationToken) -> anyhow::Result<ImportSummary> {
    let mut checkpoint =
        Checkpoint::open(args.checkpoint.as_deref()).context("reading the checkpoint")?;
    let ids: Vec<String> = args.files.iter().map(|f| file_id(f)).collect();
    let mut total_bytes = 0;
    for file in &args.files {
        total_bytes += std::fs::metadata(file)
            .with_context(|| format!("reading {}", file.display()))?
            .len();
    }
    let target = ImportTarget {
        results: args.kafka.kafka_results_topic.clone(),
        edges: args.kafka.kafka_edges_topic.clone(),
        dlq: args.kafka.kafka_dlq_topic.clone(),
        crawl_id: args
            .crawl_id
            .clone()
            .unwrap_or_else(|| default_crawl_id(&args.files[0])),
        max_subjects: args.max_subjects_per_node,
    };
    tracing::info!(crawl_id = %target.crawl_id, files = args.files.len(), shard = ?args.shard, "importing");
    let publisher = Arc::new(
        Publisher::new(&args.kafka.brokers.kafka_brokers, args.publish_timeout)
            .context("creating the Kafka producer")?,
    );
    let read = Arc::new(AtomicU64::new(0));
    let reader = Reader {
        files: args.files.clone(),
        resume: ids.iter().map(|id| checkpoint.line(id)).collect(),
        target,
        shard: args.shard,
        batch_lines: args.batch_lines,
        read: read.clone(),
        budget: AtomicU64::new(args.max_lines.unwrap_or(u64::MAX)),
    };
    let (tx, mut rx) = mpsc::channel(1);
    let reading = std::thread::spawn(move || reader.run(tx));

    let progress = Progress::new(total_bytes, read);
    let mut tick = tokio::time::interval(args.progress_interval);
    tick.tick().await;
    let mut summary = ImportSummary::default();
    let mut pending = FuturesOrdered::new();
    let (mut read_all, mut stopping) = (false, false);
    while !((read_all || stopping) && pending.is_empty()) {
        tokio::select! {
            biased;
            Some(done) = pending.next(), if !pending.is_empty() => {
                let batch: Batch = done?;
                checkpoint
                    .advance(&ids[batch.file], batch.last_line)
                    .context("saving the checkpoint")?;
                summary.add(&batch.counts);
            }
            _ = shutdown.cancelled(), if !stopping => {
                tracing::info!("stopping: waiting for the batches in flight");
                stopping = true;
            }
            next = rx.recv(), if !read_all && !stopping && pending.len() < args.in_flight => {
                match next {
                    Some(batch) => pending.push_back(publish(publisher.clone(), batch?)),
                    None => read_all = true,
                }
            }
            _ = tick.tick() => progress.show(&summary),
        }
    }
    drop(rx);
    // The reader ends once the channel is gone (at once when stopping).
    let _ = tokio::task::spawn_blocking(move || reading.join()).await;
    progress.finish(&summary);
    Ok(summary)
}
