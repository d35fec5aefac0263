//! The loop itself: poll, accept, dispatch, commit, until shutdown; then drain and leave.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Message};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::job::JobEnv;
use super::lag::spawn_lag_thread;
use super::lanes::{Running, Waiting};
use super::offsets::FINAL_COMMIT_TIMEOUT;
use super::partitions::{Rotation, Shared, State, abort_all};
use super::rebalance::{LoopConsumer, LoopContext};
use super::tracker::{CommitTracker, Delivered, TopicPartition};
use super::watermarks::{STATISTICS_INTERVAL, Watermarks};
use super::{ASSIGNMENT, ConsumerError, ConsumerLoop, Delivery, Handler};
use crate::kafka::consumer_config;
use crate::kafka::publish::Publisher;

/// How often the loop turns when nothing happens, so liveness shows a polling loop.
pub(super) const IDLE_TICK: Duration = Duration::from_secs(1);

impl<H: Handler> ConsumerLoop<H> {
    /// Consumes until `shutdown` is cancelled, then drains, commits, leaves the group and
    /// returns `Ok`. Errors when the clients cannot be set up, and after draining when a client
    /// had a fatal error ([`ConsumerError::Fatal`]; `/healthz` fails from then on).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        let publisher = Publisher::new(&self.settings.brokers, self.settings.publish_timeout)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                tracker: CommitTracker::new(),
                slots: HashMap::new(),
                rotation: Rotation::default(),
                running: Running::default(),
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
            metrics: self.telemetry.metrics.clone(),
            readiness: self.telemetry.readiness.clone(),
            revoke_drain: self.settings.revoke_drain_timeout,
        });
        self.telemetry.readiness.set(ASSIGNMENT, false);
        let consumer: Arc<LoopConsumer> = Arc::new(
            consumer_config(
                &self.settings.brokers,
                &self.settings.group_id,
                self.settings.session_timeout,
                self.settings.max_poll_interval,
            )
            .set(
                "statistics.interval.ms",
                STATISTICS_INTERVAL.as_millis().to_string(),
            )
            .create_with_context(LoopContext {
                shared: Arc::clone(&shared),
                watermarks: Watermarks::default(),
            })
            .map_err(ConsumerError::Create)?,
        );
        let topics: Vec<&str> = self.settings.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| ConsumerError::Subscribe {
                topics: self.settings.topics.clone(),
                source,
            })?;
        info!(group = %self.settings.group_id, topics = ?self.settings.topics, concurrency = self.settings.concurrency,
            per_partition = self.settings.per_partition, "consumer loop started");

        let lag_stop = CancellationToken::new();
        // Stops the lag thread (and so releases the consumer) even if this future is dropped
        // instead of being shut down through the token.
        let _lag_guard = lag_stop.clone().drop_guard();
        let lag_thread = spawn_lag_thread(
            Arc::clone(&consumer),
            Arc::clone(&shared),
            self.telemetry.metrics.clone(),
            lag_stop.clone(),
        );
        let env = Arc::new(JobEnv {
            handler: Arc::clone(&self.handler),
            publisher,
            metrics: self.telemetry.metrics.clone(),
            job_timeout: self.settings.job_timeout,
        });
        let turn = Turn {
            shared: &shared,
            consumer: &consumer,
            env: &env,
            concurrency: self.settings.concurrency.max(1),
            per_partition: self.settings.per_partition.max(1),
            commit_interval: self.settings.commit_interval,
        };

        let mut idle = tokio::time::interval(IDLE_TICK);
        let mut commit_tick = tokio::time::interval(self.settings.commit_interval);
        let mut pending_labels = HashSet::new();
        let mut fatal = None;
        loop {
            self.telemetry.liveness.polled();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                message = consumer.recv() => match message {
                    Ok(message) => turn.accept(&message),
                    Err(e) => warn!(error = %e, "consumer error"),
                },
                _ = shared.wake.notified() => {}
                _ = commit_tick.tick() => {}
                _ = idle.tick() => {
                    turn.refresh_gauges(&mut pending_labels);
                    if let Some(error) = fatal_client_error(&env.publisher, consumer.client()) {
                        error!(error = %error, "a Kafka client had a fatal error; stopping so the process is restarted");
                        self.telemetry.liveness.fail(error.clone());
                        fatal = Some(error);
                        break;
                    }
                }
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
        let deadline = tokio::time::Instant::now() + self.settings.drain_timeout;
        loop {
            self.telemetry.liveness.polled();
            if shared.lock().running.total() == 0 {
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
                abandoned += abort_all(slot, &mut state.running);
                slot.running.clear();
            }
            state.running.clear();
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
        self.telemetry.readiness.set(ASSIGNMENT, false);
        self.telemetry.metrics.in_flight.set(0);
        info!("consumer loop stopped");
        match fatal {
            Some(error) => Err(ConsumerError::Fatal(error)),
            None => Ok(()),
        }
    }
}

/// The fatal error of the loop's producer or consumer, if one had one. librdkafka then refuses
/// every publish for good while the loop would go on polling, so `/healthz` would stay green
/// over a process that can do nothing: the loop stops instead, and the process exits non-zero.
pub(super) fn fatal_client_error<C: rdkafka::ClientContext>(
    publisher: &Publisher,
    consumer: &rdkafka::client::Client<C>,
) -> Option<String> {
    publisher.fatal_error().or_else(|| {
        consumer
            .fatal_error()
            .map(|(code, reason)| format!("{code}: {reason}"))
    })
}

/// One turn of the loop: the borrowed pieces the steps need.
pub(super) struct Turn<'a, H> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) consumer: &'a Arc<LoopConsumer>,
    pub(super) env: &'a Arc<JobEnv<H>>,
    pub(super) concurrency: usize,
    pub(super) per_partition: usize,
    pub(super) commit_interval: Duration,
}

impl<H: Handler> Turn<'_, H> {
    /// Takes ownership of a polled message: tracked first (so no commit passes it), then
    /// queued for a slot.
    pub(super) fn accept(&self, message: &BorrowedMessage<'_>) {
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
            Delivered::Accepted => {
                let delivery = Delivery {
                    topic: partition.topic.clone(),
                    partition: partition.partition,
                    offset,
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    attempt: 1,
                };
                slot.backlog.push_back(Waiting {
                    lane: self.env.handler.lane(&delivery),
                    delivery,
                    since: Instant::now(),
                })
            }
            Delivered::Duplicate => {
                warn!(%partition, offset, "offset delivered again in one assignment; ignored")
            }
            Delivered::Stale => {}
        }
    }

    /// Everything after an event: commit answers, dispatch, pause/resume, periodic commit.
    pub(super) fn step(&self) {
        self.dispatch();
        self.commit_if_due();
    }
}
