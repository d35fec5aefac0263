//! Reading a DLQ topic: by a consumer that joins no group and commits nothing, so reading
//! never moves anyone's offsets. It assigns every partition explicitly from its low
//! watermark and reads up to the high watermark seen at the start, so it sees the whole
//! retained DLQ and then stops.
//!
//! `dlq list` takes the records whole ([`read_blocking`]); a replay takes them as a
//! [`DlqStream`], a batch at a time while the reader goes on, so a replay holds one batch
//! and a channel's worth of records however large the DLQ is. The low watermarks it saw let
//! the replay forget the marks of records the DLQ's retention has since deleted
//! ([`prune_marks`]), so the marks stay as bounded as the DLQ itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::dlq::{DlqError, REPLAY_BATCH};
use crate::config::KafkaArgs;
use crate::kafka::{self, KafkaSetupError};

/// Bound on metadata and watermark requests: a healthy broker answers in milliseconds.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the reader waits without any message or end-of-partition before it gives up: a
/// broker that stops serving must not hang an operator's terminal.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Batches read ahead of the replay: enough to keep the reader busy while a batch publishes.
const BATCHES_AHEAD: usize = 2;

/// What a read of a DLQ topic saw.
#[derive(Debug, Clone, Default)]
pub struct Read {
    /// Records read (matching or not).
    pub records: u64,
    /// Each partition's low watermark at the start: records below it are gone.
    pub low_watermarks: BTreeMap<i32, i64>,
}

/// What the reader makes of one record.
pub(super) enum Decoded<T> {
    /// A record the replay takes.
    Take(T),
    /// A record of this DLQ that the filter leaves out.
    Skip,
    /// Not a record of this DLQ's format (reported, never replayed).
    Undecodable,
}

/// What a streamed read saw once it ended.
#[derive(Debug, Clone, Default)]
pub struct StreamEnd {
    /// The read.
    pub read: Read,
    /// Records handed to the replay.
    pub matching: u64,
    /// Records that were not of this DLQ's format.
    pub undecodable: u64,
}

/// The matching records of a DLQ, in batches of up to [`REPLAY_BATCH`] as they are read
/// (in offset order within each partition).
pub struct DlqStream<T> {
    batches: mpsc::Receiver<Vec<T>>,
    reader: JoinHandle<Result<StreamEnd, DlqError>>,
}

impl<T: Send + 'static> DlqStream<T> {
    /// Starts reading `topic` on a blocking thread (librdkafka's consumer API blocks).
    pub(super) fn start(
        kafka: &KafkaArgs,
        topic: &str,
        mut decode: impl FnMut(i32, i64, Option<&[u8]>) -> Decoded<T> + Send + 'static,
    ) -> Self {
        let (sender, batches) = mpsc::channel(BATCHES_AHEAD);
        let (kafka, topic) = (kafka.clone(), topic.to_owned());
        let reader = tokio::task::spawn_blocking(move || {
            let mut end = StreamEnd::default();
            let mut batch = Vec::with_capacity(REPLAY_BATCH);
            let mut replay_gone = false;
            end.read = read_blocking(&kafka, &topic, |partition, offset, payload| {
                match decode(partition, offset, payload) {
                    Decoded::Take(record) => {
                        end.matching += 1;
                        batch.push(record);
                    }
                    Decoded::Skip => {}
                    Decoded::Undecodable => {
                        tracing::warn!(partition, offset, %topic, "undecodable DLQ record");
                        end.undecodable += 1;
                    }
                }
                if batch.len() >= REPLAY_BATCH {
                    // The replay stopped (it failed): stop reading too.
                    replay_gone = sender.blocking_send(std::mem::take(&mut batch)).is_err();
                }
                replay_gone
            })?;
            if !batch.is_empty() {
                let _ = sender.blocking_send(batch);
            }
            Ok(end)
        });
        Self { batches, reader }
    }

    /// The next batch, or `None` once the read ended (then see [`DlqStream::end`]).
    pub async fn next_batch(&mut self) -> Option<Vec<T>> {
        self.batches.recv().await
    }

    /// How the read ended: what it saw, or why it failed.
    pub async fn end(self) -> Result<StreamEnd, DlqError> {
        drop(self.batches);
        self.reader
            .await
            .map_err(|e| DlqError::Reader(e.to_string()))?
    }
}

/// Deletes from the marks hash `marks_key` the marks (`partition:offset` fields) of records
/// below their partition's low watermark: the DLQ's retention deleted them, so no replay
/// can meet them again. Returns how many were deleted.
pub(super) async fn prune_marks(
    conn: &mut ConnectionManager,
    marks_key: &str,
    low_watermarks: &BTreeMap<i32, i64>,
) -> Result<u64, DlqError> {
    let gone = |field: &str| {
        let (partition, offset) = field.split_once(':')?;
        let low = low_watermarks.get(&partition.parse::<i32>().ok()?)?;
        (offset.parse::<i64>().ok()? < *low).then_some(())
    };
    let mut scan = conn.clone();
    let mut fields = scan.hscan::<_, (String, String)>(marks_key).await?;
    let mut stale: Vec<String> = Vec::new();
    let mut deleted = 0;
    while let Some(item) = fields.next_item().await {
        let (field, _) = item?;
        if gone(&field).is_some() {
            stale.push(field);
        }
        if stale.len() >= REPLAY_BATCH {
            deleted += conn.hdel::<_, _, u64>(marks_key, &stale).await?;
            stale.clear();
        }
    }
    if !stale.is_empty() {
        deleted += conn.hdel::<_, _, u64>(marks_key, &stale).await?;
    }
    Ok(deleted)
}

/// Reads `topic` from its low to its high watermarks (as seen at the start), handing each
/// record to `take` until it answers `true` (enough).
pub(super) fn read_blocking(
    kafka: &KafkaArgs,
    topic: &str,
    mut take: impl FnMut(i32, i64, Option<&[u8]>) -> bool,
) -> Result<Read, DlqError> {
    let consumer: BaseConsumer = kafka::Cluster::client_config(&kafka.brokers)
        // librdkafka wants a group id, but partitions are assigned, never subscribed, so the
        // group is never joined, and nothing is ever committed to it.
        .set("group.id", "bookworm-dlq-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // End-of-partition events tell the reader a partition is done even when its last
        // offsets hold no message it can see (transaction markers).
        .set("enable.partition.eof", "true")
        .create()
        .map_err(KafkaSetupError::Client)?;
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(DlqError::UnknownTopic(topic.to_owned()));
    }
    let mut assignment = TopicPartitionList::new();
    let mut end: BTreeMap<i32, i64> = BTreeMap::new();
    let mut read = Read::default();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT)?;
        read.low_watermarks.insert(partition, low);
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
            end.insert(partition, high);
        }
    }
    if end.is_empty() {
        return Ok(read);
    }
    consumer.assign(&assignment)?;
    let mut last_progress = Instant::now();
    while !end.is_empty() {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let (partition, offset) = (message.partition(), message.offset());
                let Some(&high) = end.get(&partition) else {
                    continue;
                };
                if offset >= high {
                    end.remove(&partition);
                    continue;
                }
                if offset + 1 >= high {
                    end.remove(&partition);
                }
                read.records += 1;
                if take(partition, offset, message.payload()) {
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                last_progress = Instant::now();
                end.remove(&partition);
            }
            Some(Err(e)) => return Err(DlqError::Kafka(e)),
            None => {
                if last_progress.elapsed() > IDLE_TIMEOUT {
                    return Err(DlqError::Stalled {
                        topic: topic.to_owned(),
                        partitions: end.keys().copied().collect(),
                    });
                }
            }
        }
    }
    Ok(read)
}
