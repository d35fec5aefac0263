//! Kafka clients configured the one way this system uses them, and topic creation.
//!
//! Every setting that matters for delivery is set here, with its reason, so the worker, the
//! graph writer and the operator tool cannot drift apart.

pub mod publish;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;

/// Errors from Kafka set-up and administration.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// A client could not be created (bad configuration).
    #[error("cannot create a Kafka client: {0}")]
    Client(#[source] KafkaError),
    /// A request to the cluster failed as a whole (unreachable, timed out).
    #[error("Kafka request failed: {0}")]
    Request(#[source] KafkaError),
    /// The cluster refused to create a topic.
    #[error("cannot create topic {topic}: {code}")]
    Topic {
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
}

/// How to reach a Kafka cluster: the one place a client's connection settings (bootstrap
/// servers, TLS, SASL) are made, so no client of any binary can be left on plaintext while
/// the others use TLS. The services pass their `BrokerArgs` (whose implementation, with the
/// TLS and SASL settings, is in [`crate::backend`]) or a [`KafkaCluster`] made from them; a
/// bare `str` is a plaintext cluster, for tests and benchmarks against the local stack.
pub trait Cluster {
    /// The base configuration of every client of this cluster.
    fn client_config(&self) -> ClientConfig;
}

impl Cluster for str {
    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self);
        config
    }
}

impl Cluster for String {
    fn client_config(&self) -> ClientConfig {
        self.as_str().client_config()
    }
}

/// A cluster's base client configuration as a plain value, for settings structs that must
/// not hold command-line structs (the consumer loop's): made from the services' `BrokerArgs`
/// (`From<&BrokerArgs>`, in [`crate::backend`]) or, plaintext, from bootstrap servers.
#[derive(Clone, Debug)]
pub struct KafkaCluster(ClientConfig);

impl KafkaCluster {
    /// The cluster whose clients start from `config`.
    pub fn new(config: ClientConfig) -> Self {
        Self(config)
    }
}

impl Cluster for KafkaCluster {
    fn client_config(&self) -> ClientConfig {
        self.0.clone()
    }
}

impl From<&str> for KafkaCluster {
    fn from(brokers: &str) -> Self {
        Self(brokers.client_config())
    }
}

impl From<String> for KafkaCluster {
    fn from(brokers: String) -> Self {
        Self::from(brokers.as_str())
    }
}

fn base(cluster: &(impl Cluster + ?Sized)) -> ClientConfig {
    cluster.client_config()
}

/// A producer that loses nothing it acknowledged.
///
/// `publish_timeout` bounds how long one record may wait for its acknowledgement inside
/// librdkafka; the publisher bounds the whole publish phase by the same value, so a record is
/// never still queued after its job was abandoned.
pub fn producer(
    brokers: &(impl Cluster + ?Sized),
    publish_timeout: Duration,
) -> Result<FutureProducer, KafkaSetupError> {
    base(brokers)
        // Every in-sync replica must have the record before it counts as published: acks=0
        // lost data in the Go predecessor.
        .set("acks", "all")
        // No duplicates or reordering from the producer's own retries.
        .set("enable.idempotence", "true")
        .set(
            "message.timeout.ms",
            publish_timeout.as_millis().max(1).to_string(),
        )
        // A few milliseconds of batching multiplies throughput at no visible latency cost.
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()
        .map_err(KafkaSetupError::Client)
}

/// The configuration of a consumer in `group_id` whose offsets the consumer loop commits.
/// `session_timeout` is how soon the group notices a dead consumer; `max_poll_interval` how
/// long a consumer may go without polling before the group evicts it.
pub fn consumer_config(
    brokers: &(impl Cluster + ?Sized),
    group_id: &str,
    session_timeout: Duration,
    max_poll_interval: Duration,
) -> ClientConfig {
    let mut config = base(brokers);
    config
        .set("group.id", group_id)
        // Offsets are committed by the commit tracker only after a message's outputs are
        // acknowledged; librdkafka must neither commit nor store offsets on its own.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Incremental rebalances: a worker joining or leaving moves only the partitions that
        // change owner, the others keep running.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // A new group starts at the beginning of the frontier: nothing enqueued is skipped.
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            session_timeout.as_millis().to_string(),
        )
        .set(
            "max.poll.interval.ms",
            max_poll_interval.as_millis().to_string(),
        )
        // The prefetch is memory the process holds beyond its jobs, so it is kept small:
        // librdkafka's defaults (100,000 messages per partition, 64 MiB, 1 MiB per partition
        // per fetch) cost the graph writer 50 MiB of fetched and decompressed batches over 24
        // partitions. A fetched message costs about 300 bytes of bookkeeping on top of its
        // payload, so the count per partition matters as much as the bytes. One fetch brings
        // at most 64 KiB per partition and 1 MiB in all.
        .set("queued.min.messages", "100")
        .set("queued.max.messages.kbytes", "1024")
        .set("fetch.message.max.bytes", "65536")
        .set("fetch.max.bytes", "1048576")
        // librdkafka postpones a partition's next fetch by this much when its queue is full
        // (default 1 s). A loop busy enough to fill that small queue is also the one that
        // pauses and resumes partitions, and each resume then stalled for the full second:
        // 4k messages/s instead of 65k in benches/consumer_loop.rs.
        .set("fetch.queue.backoff.ms", "50")
        // A subscribed topic that does not exist yet (a pod started before the topics job
        // finished, a 1,000-partition topic still being created) is looked up again on this
        // period; librdkafka's default, 5 minutes, left a graph writer without its edges topic
        // for that long in the chaos suite. A metadata request per 10 s is nothing to a broker.
        .set("topic.metadata.refresh.interval.ms", "10000")
        // Partition EOF events are noise for a service that runs forever.
        .set("enable.partition.eof", "false");
    config
}

/// Partitions and replication for `bookworm topics create`.
#[derive(Debug, Clone, Copy)]
pub struct TopicLayout {
    /// Partitions per topic: the ceiling on consumers that can share the work.
    pub partitions: i32,
    /// Copies of each partition.
    pub replication: i32,
}

/// Creates `topics`; topics that already exist are left as they are, so the
/// command can run on every deploy. Returns the topics it created.
pub async fn create_topics(
    brokers: &(impl Cluster + ?Sized),
    topics: &[&str],
    layout: TopicLayout,
) -> Result<Vec<String>, KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> =
        base(brokers).create().map_err(KafkaSetupError::Client)?;
    // With replication 3 a record must reach two replicas before acks=all succeeds; with one
    // replica (a laptop) there is nothing else to require.
    let min_isr = (layout.replication - 1).clamp(1, 2).to_string();
    let topics: Vec<NewTopic> = topics
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                layout.partitions,
                TopicReplication::Fixed(layout.replication),
            )
            .set("min.insync.replicas", &min_isr)
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(topics.iter(), &options)
        .await
        .map_err(KafkaSetupError::Request)?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(topic) => created.push(topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaSetupError::Topic { topic, code }),
        }
    }
    Ok(created)
}

/// Deletes `topics` from the cluster at `brokers`; topics that do not exist are not an error.
/// For tools that make short-lived topics (`bookworm bench`): a broker keeps open files for
/// every partition it holds, so topics left behind add up.
pub async fn delete_topics(
    brokers: &(impl Cluster + ?Sized),
    topics: &[&str],
) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> =
        base(brokers).create().map_err(KafkaSetupError::Client)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .delete_topics(topics, &options)
        .await
        .map_err(KafkaSetupError::Request)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => return Err(KafkaSetupError::Topic { topic, code }),
        }
    }
    Ok(())
}
