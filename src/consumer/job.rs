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

/// Runs one message until everything it caused is acknowledged: its outputs, or its DLQ
/// record. Parks and retries (with backoff) while a dependency or the DLQ is down.
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
pub(super) struct SlotRef {
    pub(super) shared: Arc<Shared>,
    pub(super) partition: TopicPartition,
    pub(super) epoch: Epoch,
}

/// A pass ended without an acknowledged outcome because a dependency is down: the message is
/// run again after backoff.
pub(super) struct Parked(String);

/// One pass over a message: handle it, publish its outputs and record the outcome; or, when
/// it must be abandoned, publish its DLQ record instead.
pub(super) async fn run_pass<H: Handler>(
    env: &JobEnv<H>,
    delivery: &Delivery,
) -> Result<(), Parked> {
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
pub(super) async fn publish_dead_letter<H: Handler>(
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
