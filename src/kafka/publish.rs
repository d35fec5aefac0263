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
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
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

    /// Whether the producer itself is broken for good (a librdkafka fatal error, e.g. the
    /// idempotent producer lost its sequence): no record will ever be accepted again by this
    /// client, so it says nothing about the record; the process must restart.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Refused { source, .. }
            if source.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal))
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
    pub fn new(
        brokers: &(impl kafka::Cluster + ?Sized),
        timeout: Duration,
    ) -> Result<Self, KafkaSetupError> {
        Ok(Self {
            producer: kafka::producer(brokers, timeout)?,
            timeout,
        })
    }

    /// The bound on one batch.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The producer's fatal error, if it had one: after it (an idempotent producer that lost
    /// its sequence, for example) librdkafka refuses every record for good, so the owner must
    /// stop and let the process be restarted rather than park every job for ever.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code}: {reason}"))
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

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::{Publisher, Record};

    /// Raises a librdkafka fatal error on `publisher`'s producer, as a broker-side loss of the
    /// idempotent producer's sequence would (librdkafka's own test hook, on the real client).
    pub(crate) fn raise_fatal_error(publisher: &Publisher) {
        use rdkafka::producer::Producer;
        let reason = c"test: out-of-order sequence";
        // SAFETY: the client pointer is valid while `publisher` lives, and the hook only sets
        // the client's fatal error state.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                publisher.producer.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
    }

    /// Issue 14, item 4: after a fatal error the publisher says so, and a publish fails as
    /// fatal (not as a refusal of the record), so the loop can stop instead of dead-lettering.
    #[tokio::test]
    async fn a_fatal_producer_error_is_reported_and_every_publish_fails_as_fatal() {
        let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        let publisher = Publisher::new(&brokers, Duration::from_secs(5)).expect("publisher");
        assert_eq!(publisher.fatal_error(), None);
        raise_fatal_error(&publisher);
        let fatal = publisher.fatal_error().expect("fatal error reported");
        assert!(fatal.contains("out-of-order"), "{fatal}");
        let outcome = publisher
            .publish(&[Record {
                topic: "bookworm-never-created".to_owned(),
                key: "k".to_owned(),
                payload: b"x".to_vec(),
            }])
            .await;
        let error = outcome.expect_err("a fatal producer publishes nothing");
        assert!(error.is_fatal(), "{error:?}");
        assert!(!error.is_permanent());
    }
}
