//! Publishing a job's outputs: every record acknowledged by Kafka, or a bounded failure.
//!
//! A job may only complete (and its offset become committable) once everything it caused is
//! durable, so [`Publisher::publish`] returns only when every record of the batch has been
//! acknowledged with `acks=all`, or fails as a whole. The whole call is bounded by the publish
//! timeout (`PUBLISH_TIMEOUT`), so a broker that stops answering can hold a job for that long
//! at most; the consumer loop then abandons the job to the DLQ.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::kafka::{self, KafkaSetupError};

/// One record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Destination topic.
    pub topic: String,
    /// Partitioning key (the contract fixes which key each topic uses).
    pub key: String,
    /// Serialised message.
    pub payload: Vec<u8>,
}

/// Why a publish failed. Either way some records may have been written: the caller treats the
/// batch as not published and its redelivery may duplicate them (at-least-once).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Not every record was acknowledged within the bound: abandon the job (DLQ reason
    /// `publish`) rather than hold its partition.
    #[error("{unacknowledged} of {total} records not acknowledged within {timeout:?}")]
    Timeout {
        /// The bound that passed.
        timeout: Duration,
        /// Records still without an acknowledgement.
        unacknowledged: usize,
        /// Records in the batch.
        total: usize,
    },
    /// Kafka refused a record for good (too large, unknown topic, not authorised): retrying
    /// the same record will not help, dead-letter the job.
    #[error("record to {topic} refused: {source}")]
    Refused {
        /// The record's topic.
        topic: String,
        /// Kafka's answer.
        source: KafkaError,
    },
}

impl PublishError {
    /// Whether the failure was the publish bound passing (counted as a publish timeout).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// Whether the same record can never be accepted, however often it is sent: it is too
    /// large or malformed for the broker. An unknown topic or a missing authorisation is not
    /// permanent: an operator can create the topic or grant the right, and the record then
    /// goes through.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Timeout { .. } => false,
            Self::Refused { source, .. } => matches!(
                source.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::MessageSizeTooLarge
                        | RDKafkaErrorCode::InvalidMessageSize
                        | RDKafkaErrorCode::MessageBatchTooLarge
                        | RDKafkaErrorCode::InvalidRecord
                        | RDKafkaErrorCode::InvalidMessage
                        | RDKafkaErrorCode::BadMessage
                )
            ),
        }
    }
}

/// A producer with `acks=all` and idempotence, bounded per batch.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    timeout: Duration,
}

impl Publisher {
    /// A publisher whose every batch is bounded by `timeout` (`PUBLISH_TIMEOUT`).
    pub fn new(brokers: &str, timeout: Duration) -> Result<Self, KafkaSetupError> {
        Ok(Self {
            producer: kafka::producer(brokers, timeout)?,
            timeout,
        })
    }

    /// The bound on one batch.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends every record and waits until each is acknowledged, within the publish bound.
    /// Records are enqueued in order, so records with one key keep their order.
    pub async fn publish(&self, records: &[Record]) -> Result<(), PublishError> {
        if records.is_empty() {
            return Ok(());
        }
        let total = records.len();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let sends = records.iter().map(|record| {
            let future = FutureRecord::to(&record.topic)
                .key(&record.key)
                .payload(&record.payload);
            // Waiting for room in librdkafka's queue counts against the same bound.
            let queue_timeout = Timeout::After(self.timeout);
            async move {
                self.producer
                    .send(future, queue_timeout)
                    .await
                    .map(|_| ())
                    .map_err(|(error, _)| (record.topic.clone(), error))
            }
        });
        match tokio::time::timeout_at(deadline, join_all(sends)).await {
            Err(_) => Err(PublishError::Timeout {
                timeout: self.timeout,
                unacknowledged: total,
                total,
            }),
            Ok(results) => {
                let mut unacknowledged = 0;
                let mut refused = None;
                for result in results {
                    match result {
                        Ok(()) => {}
                        Err((_, error)) if is_timeout(&error) => unacknowledged += 1,
                        Err((topic, error)) => {
                            refused.get_or_insert((topic, error));
                        }
                    }
                }
                if let Some((topic, source)) = refused {
                    Err(PublishError::Refused { topic, source })
                } else if unacknowledged > 0 {
                    Err(PublishError::Timeout {
                        timeout: self.timeout,
                        unacknowledged,
                        total,
                    })
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// Whether librdkafka gave up on a record because its time ran out (`message.timeout.ms`,
/// or no room in the queue in time): the same bound as ours, reached first inside librdkafka.
fn is_timeout(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::QueueFull)
    )
}
