//! Proves the local stack: every real service the other tests stand on answers, and the
//! egress proxies leave from their own loopback addresses.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use bookworm::config::{ConsumerArgs, KafkaArgs};
use bookworm::kafka::{consumer_config, producer};
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use support::{eventually, stack_env, unique};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    consumer: ConsumerArgs,
}

/// A record produced with acks=all is consumed by a group member, whose commit the broker
/// then reports for the group.
#[tokio::test]
async fn kafka_round_trip_with_a_group_commit() {
    let args = Args::parse_from(["test", "--kafka-brokers", &stack_env("KAFKA_BROKERS")]);
    let topic = unique("stack-topic");
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &args.kafka.brokers.kafka_brokers)
        .create()
        .expect("admin client");
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topics request");
    assert!(created[0].is_ok(), "{created:?}");

    let producer =
        producer(&args.kafka.brokers.kafka_brokers, Duration::from_secs(30)).expect("producer");
    producer
        .send(
            FutureRecord::to(&topic).key("k").payload("hello"),
            Duration::from_secs(30),
        )
        .await
        .expect("acknowledged");

    let consumer: StreamConsumer = consumer_config(
        &args.kafka.brokers.kafka_brokers,
        &unique("stack-group"),
        args.consumer.session_timeout,
        args.consumer.max_poll_interval,
    )
    .create()
    .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("a message within a minute")
        .expect("no consumer error");
    assert_eq!(message.payload(), Some(&b"hello"[..]));
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&topic, 0, Offset::Offset(message.offset() + 1))
        .expect("offset");
    consumer.commit(&offsets, CommitMode::Sync).expect("commit");
    let committed = consumer
        .committed(Duration::from_secs(10))
        .expect("committed offsets");
    let committed = committed
        .find_partition(&topic, 0)
        .expect("partition")
        .offset();
    assert_eq!(committed, Offset::Offset(1));
    admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .expect("delete topic");
}

/// A Cypher write through neo4rs is read back.
#[tokio::test]
async fn neo4j_write_and_read() {
    let graph = neo4rs::Graph::new(
        stack_env("NEO4J_URI"),
        stack_env("NEO4J_USER"),
        stack_env("NEO4J_PASSWORD"),
    )
    .await
    .expect("neo4j reachable with the stack's password");
    let name = unique("stack-node");
    graph
        .run(neo4rs::query("CREATE (:StackProbe {name: $name})").param("name", name.clone()))
        .await
        .expect("write");
    let mut rows = graph
        .execute(
            neo4rs::query("MATCH (p:StackProbe {name: $name}) RETURN p.name AS name")
                .param("name", name.clone()),
        )
        .await
        .expect("read");
    let row = rows.next().await.expect("row stream").expect("one row");
    assert_eq!(row.get::<String>("name").expect("name column"), name);
    graph
        .run(neo4rs::query("MATCH (p:StackProbe {name: $name}) DELETE p").param("name", name))
        .await
        .expect("clean up");
}

/// A value set in Redis is read back.
#[tokio::test]
async fn redis_round_trip() {
    let client = redis::Client::open(stack_env("REDIS_URL")).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis reachable");
    let key = unique("stack-key");
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .expect("set");
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("get");
    assert_eq!(value, "v");
}

/// Each Squid proxy of the pool reaches a local server from its own loopback address, so a
/// server sees as many client IPs as there are proxies.
#[tokio::test]
async fn each_proxy_leaves_from_its_own_address() {
    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let recorder = seen.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
            let recorder = recorder.clone();
            async move {
                recorder.lock().expect("lock").insert(peer.ip().to_string());
                peer.ip().to_string()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    let mut answers = Vec::new();
    for proxy in stack_env("PROXY_POOL").split(',') {
        let client = reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(proxy).expect("proxy url"))
            .build()
            .expect("client");
        let answer = eventually(
            &format!("an answer through {proxy}"),
            Duration::from_secs(20),
            || {
                let client = client.clone();
                async move {
                    let response = client.get(format!("http://{addr}/")).send().await.ok()?;
                    response.status().is_success().then_some(())?;
                    response.text().await.ok()
                }
            },
        )
        .await;
        answers.push(answer);
    }
    assert_eq!(answers, vec!["127.0.0.11", "127.0.0.12", "127.0.0.13"]);
    assert_eq!(seen.lock().expect("lock").len(), 3);
}
