//! The lifecycle of one message: handle it within `JOB_TIMEOUT`, publish its outputs within
//! `PUBLISH_TIMEOUT`, or dead-letter it; park and retry it while a dependency is down.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::FutureExt;
use tracing::{debug, error, warn};

use super::partitions::Shared;
use super::tracker::{Epoch, TopicPartition};
use super::{Delivery, HandleError, Handler, Outcome};
use crate::kafka::publish::{PublishError, Publisher, Record};
use crate::message::{EXCERPT_BYTES, PayloadExcerpt, fnv1a64};
use crate::process::metrics::ConsumerMetrics;

/// Backoff of a parked message (dependency down, DLQ unreachable): capped at a minute so a
/// recovered dependency is noticed soon.
pub(super) fn job_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(60))
        .with_jitter()
        .without_max_times()
        .build()
}

/// What a job needs, shared by every job's task.
pub(super) struct JobEnv<H> {
    pub(super) handler: Arc<H>,
    pub(super) publisher: Publisher,
    pub(super) metrics: ConsumerMetrics,
    pub(super) job_timeout: Duration,
}

/// DLQ records larger than this are rebuilt around an excerpt of the payload
/// ([`PayloadExcerpt`]). The broker refuses records over its `message.max.bytes` (1 MB by
/// default), and a DLQ record embeds the payload as escaped JSON: a 400 KB message of control
/// bytes becomes a 2.4 MB record. Half the broker's default leaves room for the record's other
/// fields and a broker configured lower than the default.
pub const DLQ_RECORD_MAX_BYTES: usize = 512 * 1024;

/// The longest detail a DLQ record carries (a handler's error text may quote data).
pub const DLQ_DETAIL_MAX_BYTES: usize = 4 * 1024;

/// The DLQ reason of a message whose handler panicked: a bug, but the contract's reasons
/// have no `panic`, so it is the closest of them, `invalid_job`, with a detail that starts
/// "handler panicked" — the same in the DLQ record, the crawl's counters and the metric.
pub const REASON_PANIC: &str = "invalid_job";
/// The DLQ reason of a message whose handler ran past `JOB_TIMEOUT`.
pub const REASON_TIMEOUT: &str = "timeout";
/// The DLQ reason of a message whose outputs could not be published.
pub const REASON_PUBLISH: &str = "publish";

/// Runs one message until everything it caused is acknowledged: its outputs, or its DLQ
/// record. Parks and retries (with backoff) while a dependency or the DLQ is down; when only
/// the DLQ record is missing, only the DLQ record is retried, never the work (a 404 key with
/// an unwritable DLQ was once fetched again from Open Library on every pass).
///
/// A job's task lives as long as its message is in flight (a graph writer holds 10,000 of
/// them waiting for their batch), so it holds only this loop; each pass, and each phase of a
/// pass, is boxed and lives only while it runs. One flat state machine was 1,880 bytes a
/// task, rustc laying the phases out side by side; this loop is 280.
pub(super) async fn run_job<H: Handler>(
    env: Arc<JobEnv<H>>,
    mut delivery: Delivery,
    slot: SlotRef,
) {
    let mut backoff: Option<Box<ExponentialBackoff>> = None;
    let mut unsent: Option<Box<DeadLetter>> = None;
    loop {
        let result = match unsent.take() {
            None => Box::pin(run_pass(&env, &delivery)).await,
            Some(letter) => Box::pin(send_dead_letter(&env, &delivery, letter)).await,
        };
        let (why, rerun) = match result {
            Ok(()) => break,
            Err(Unfinished::Parked(Parked(why))) => (why, true),
            Err(Unfinished::DeadLetterUnsent(letter, why)) => {
                unsent = Some(letter);
                (why, false)
            }
        };
        let delay = backoff
            .get_or_insert_with(|| Box::new(job_backoff()))
            .next()
            .unwrap_or(Duration::from_secs(60));
        debug!(topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset,
            attempt = delivery.attempt, reason = %why, retry_in = ?delay, "message parked");
        Box::pin(tokio::time::sleep(delay)).await;
        if rerun {
            delivery.attempt += 1;
        }
    }
    slot.shared
        .finish(&slot.partition, slot.epoch, delivery.offset);
}

/// Where a job reports its completion: its partition's slot, in the assignment it started in.
pub(super) struct SlotRef {
    pub(super) shared: Arc<Shared>,
    pub(super) partition: TopicPartition,
    pub(super) epoch: Epoch,
}

/// A pass ended without an acknowledged outcome because a dependency is down: the message is
/// run again after backoff.
pub(super) struct Parked(String);

/// A DLQ record built for a message and not yet acknowledged.
pub(super) struct DeadLetter {
    record: Record,
    reason: String,
}

/// Why a pass left its message unfinished.
pub(super) enum Unfinished {
    /// Run the whole message again after backoff.
    Parked(Parked),
    /// The message is dead-lettered but its record was not acknowledged: send this record
    /// again after backoff, without running the handler again.
    DeadLetterUnsent(Box<DeadLetter>, String),
}

impl From<Parked> for Unfinished {
    fn from(parked: Parked) -> Self {
        Self::Parked(parked)
    }
}

/// One pass over a message: handle it, publish its outputs and record the outcome; or, when
/// it must be abandoned, publish its DLQ record instead.
pub(super) async fn run_pass<H: Handler>(
    env: &JobEnv<H>,
    delivery: &Delivery,
) -> Result<(), Unfinished> {
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
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let detail = format!("handler panicked: {message}");
            error!(topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset,
                detail = %detail, "handler panicked");
            (REASON_PANIC.to_owned(), detail)
        }
        Ok(Err(_)) => match env.handler.timed_out(delivery, env.job_timeout) {
            HandleError::DeadLetter { reason, detail } => (reason, detail),
            HandleError::Retry(why) => return Err(Parked(why).into()),
        },
        Ok(Ok(Err(HandleError::DeadLetter { reason, detail }))) => (reason, detail),
        Ok(Ok(Err(HandleError::Retry(why)))) => return Err(Parked(why).into()),
        Ok(Ok(Ok(records))) => match Box::pin(publish_outputs(env, delivery, &records)).await {
            Ok(()) => return Ok(()),
            Err(Abandon::Parked(parked)) => return Err(parked.into()),
            Err(Abandon::DeadLetter { reason, detail }) => (reason, detail),
        },
    };
    let record = dead_letter_record(env, delivery, &reason, &detail);
    Box::pin(send_dead_letter(
        env,
        delivery,
        Box::new(DeadLetter { record, reason }),
    ))
    .await
}

/// Why a message's outputs did not complete it.
pub(super) enum Abandon {
    /// A dependency is down: run the message again later.
    Parked(Parked),
    /// The message cannot succeed: dead-letter it with this reason.
    DeadLetter { reason: String, detail: String },
}

/// Publishes a handled message's records, then lets the handler record the outcome.
pub(super) async fn publish_outputs<H: Handler>(
    env: &JobEnv<H>,
    delivery: &Delivery,
    records: &[Record],
) -> Result<(), Abandon> {
    if let Err(e) = env.publisher.publish(records).await {
        if e.is_fatal() {
            // The producer is broken, not the message: hold it until the process restarts.
            return Err(Abandon::Parked(Parked(format!(
                "producer failed for good: {e}"
            ))));
        }
        if e.is_timeout() {
            env.metrics.publish_timeouts.inc();
        }
        return Err(Abandon::DeadLetter {
            reason: REASON_PUBLISH.to_owned(),
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

/// The message's DLQ record, bounded: the detail is cut to [`DLQ_DETAIL_MAX_BYTES`], and a
/// record over [`DLQ_RECORD_MAX_BYTES`] is built again from an excerpt of the payload (its
/// first bytes, size and hash) in place of the payload, so any message, however large or
/// binary, has a DLQ record the broker accepts.
pub(super) fn dead_letter_record<H: Handler>(
    env: &JobEnv<H>,
    delivery: &Delivery,
    reason: &str,
    detail: &str,
) -> Record {
    let detail = cap_text(detail, DLQ_DETAIL_MAX_BYTES);
    let record = env.handler.dead_letter(delivery, reason, detail);
    if record.payload.len() <= DLQ_RECORD_MAX_BYTES {
        return record;
    }
    let payload = delivery.payload.as_deref().unwrap_or_default();
    let excerpt = PayloadExcerpt::of(payload);
    let detail = format!(
        "{detail} (payload of {} bytes, fnv1a64 {}, cut to its first {} bytes: the whole DLQ record would take {} bytes)",
        excerpt.bytes,
        excerpt.fnv1a64,
        EXCERPT_BYTES.min(excerpt.bytes),
        record.payload.len()
    );
    warn!(topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset,
        bytes = excerpt.bytes, fnv1a64 = %excerpt.fnv1a64, "DLQ record too large; it carries an excerpt of the payload");
    env.metrics.dlq_excerpted.inc();
    let cut = Delivery {
        payload: Some(serde_json::to_vec(&excerpt).unwrap_or_default()),
        key: delivery
            .key
            .as_deref()
            .map(|k| k[..k.len().min(EXCERPT_BYTES)].to_vec()),
        ..delivery.clone()
    };
    env.handler.dead_letter(&cut, reason, &detail)
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cap_text(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Publishes a message's DLQ record, then lets the handler record that it was dead-lettered.
/// A record Kafka can never accept ([`PublishError::is_permanent`]) ends the message without
/// a DLQ record, loudly (`*_dlq_refused_total`, an error log): parking it would hold its
/// partition for ever.
pub(super) async fn send_dead_letter<H: Handler>(
    env: &JobEnv<H>,
    delivery: &Delivery,
    letter: Box<DeadLetter>,
) -> Result<(), Unfinished> {
    let reason = letter.reason.as_str();
    match env
        .publisher
        .publish(std::slice::from_ref(&letter.record))
        .await
    {
        Ok(()) => {
            debug!(topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset,
                reason = %reason, "message dead-lettered");
            record_dead_letter(env, delivery, reason).await;
            Ok(())
        }
        Err(e) if e.is_permanent() => {
            env.metrics.dlq_refused.inc();
            let payload = delivery.payload.as_deref().unwrap_or_default();
            error!(topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset,
                reason = %reason, error = %e, bytes = payload.len(), fnv1a64 = %format!("{:016x}", fnv1a64(payload)),
                record_bytes = letter.record.payload.len(),
                "DLQ record refused for good; the message is given up without one");
            record_dead_letter(env, delivery, reason).await;
            Ok(())
        }
        Err(e) => {
            if let PublishError::Timeout { .. } = e {
                env.metrics.publish_timeouts.inc();
            }
            warn!(topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset,
                reason = %reason, error = %e, "DLQ record not acknowledged; retrying the record");
            let why = format!("DLQ record not acknowledged: {e}");
            Err(Unfinished::DeadLetterUnsent(letter, why))
        }
    }
}

/// Tells the handler a message was dead-lettered, repeating while its dependency is down: the
/// DLQ record is already acknowledged, so only the bookkeeping is repeated, never the record.
pub(super) async fn record_dead_letter<H: Handler>(
    env: &JobEnv<H>,
    delivery: &Delivery,
    reason: &str,
) {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    use crate::consumer::run::fatal_client_error;
    use crate::kafka::publish::Publisher;
    use crate::kafka::publish::tests::raise_fatal_error;
    use crate::process::health::Liveness;

    /// Issue 14, item 4: the loop sees its producer's fatal error (checked on every idle tick),
    /// and a liveness marked with it fails `/healthz` however recently the loop polled.
    #[tokio::test]
    async fn a_fatal_producer_error_makes_the_process_unhealthy() {
        let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        let publisher = Publisher::new(&brokers, Duration::from_secs(5)).expect("publisher");
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "bookworm-fatal-test")
            .create()
            .expect("consumer");
        assert_eq!(fatal_client_error(&publisher, consumer.client()), None);
        raise_fatal_error(&publisher);
        let error = fatal_client_error(&publisher, consumer.client()).expect("fatal error seen");
        let liveness = Liveness::new(Duration::from_secs(60), None);
        liveness.polled();
        assert!(liveness.is_alive());
        liveness.fail(error);
        assert!(
            !liveness.is_alive(),
            "a fatal error fails liveness for good"
        );
        liveness.polled();
        assert!(!liveness.is_alive());
    }
}
