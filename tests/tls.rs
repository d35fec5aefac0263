//! TLS to every backend: a crawl end to end with every Kafka, Redis and Neo4j connection on
//! the stack's TLS listeners (Kafka with SASL/SCRAM-SHA-512 too), whose graph must equal the
//! simulator's truth exactly; and each TLS listener refusing a plaintext client and a client
//! that trusts the wrong CA (with a client that trusts the right one admitted, so a refusal
//! is the listener's doing and not a listener that is down).
//!
//! Neo4j embedded has one Bolt connector, with TLS optional so the other suites keep their
//! plaintext port: there is no TLS-only Neo4j port to refuse a plaintext client, so Neo4j is
//! checked for the wrong CA only.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bookworm::backend::{TlsRedis, redis_client};
use bookworm::config::{BrokerArgs, KafkaSecurityArgs, Neo4jArgs, SecurityProtocol};
use bookworm::graph::GraphStore;
use bookworm::kafka::Cluster;
use rdkafka::consumer::{BaseConsumer, Consumer};
use support::{Process, TestTopics, free_port, fresh_id_base, stack_env, unique, wait_ok};

/// The stack's CA file (`STACK_CA_FILE` from `scripts/stack.sh env`).
fn ca() -> String {
    stack_env("STACK_CA_FILE")
}

/// The environment that puts every backend connection of a binary on TLS.
fn tls_env() -> Vec<(String, String)> {
    [
        ("KAFKA_BROKERS", stack_env("KAFKA_TLS_BOOTSTRAP")),
        ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl".to_owned()),
        ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".to_owned()),
        ("KAFKA_SASL_USERNAME", stack_env("KAFKA_SCRAM_USER")),
        ("KAFKA_SASL_PASSWORD", stack_env("KAFKA_SCRAM_PASSWORD")),
        ("KAFKA_CA_FILE", ca()),
        ("REDIS_URL", stack_env("REDIS_TLS_URL")),
        ("REDIS_CA_FILE", ca()),
        ("NEO4J_URI", stack_env("NEO4J_TLS_URI")),
        ("NEO4J_CA_FILE", ca()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `topics`' names with `tls_env` on top of the stack's plaintext settings.
fn env_for(topics: &TestTopics) -> Vec<(String, String)> {
    let tls = tls_env();
    let mut env: Vec<(String, String)> = topics
        .env()
        .into_iter()
        .filter(|(k, _)| !tls.iter().any(|(name, _)| name == k))
        .collect();
    env.extend(tls);
    env
}

/// Runs `bookworm` with `env`; its exit code and stdout+stderr.
fn bookworm(args: &[&str], env: &[(String, String)]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_bookworm"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("bookworm runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

/// The topics are made by `bookworm topics create`, the simulator stands in for Open Library,
/// and two workers, a graph writer and the API run with every backend on TLS (Kafka's SASL_SSL
/// port is the only one they are given): a crawl to depth 2 ends `done` with exactly the
/// reachable graph, and `bookworm summary` reads it back over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crawl_with_every_backend_on_tls_builds_exactly_the_reachable_graph() {
    let topics = TestTopics::named("tls");
    let env = env_for(&topics);
    let (code, text) = bookworm(&["topics", "create", "--partitions", "4"], &env);
    assert_eq!(code, Some(0), "topics create over SASL_SSL: {text}");
    assert!(text.contains(&topics.frontier), "{text}");

    let id_base = fresh_id_base();
    let sim_port = free_port();
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    let mut processes = vec![Process::start(
        "tls-sim",
        env!("CARGO_BIN_EXE_bookworm"),
        &[
            "sim",
            "--addr",
            &format!("127.0.0.1:{sim_port}"),
            "--id-base",
            &id_base.to_string(),
            "--works",
            "300",
            "--authors",
            "90",
            "--subjects",
            "30",
            "--no-limit",
        ],
        &[],
    )];
    let group = unique("tls");
    let mut common = env.clone();
    common.extend(
        [
            ("OPENLIBRARY_BASE_URL", sim_url.clone()),
            ("PROXY_POOL", stack_env("PROXY_POOL")),
            ("EGRESS_RATE_PER_MINUTE", "6000".to_owned()),
            ("USER_AGENT_RATE_PER_MINUTE", "60000".to_owned()),
            ("EGRESS_BURST", "50".to_owned()),
            ("EGRESS_REDIS_PREFIX", unique("tls-egress")),
            ("COMMIT_INTERVAL", "200ms".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let mut ready = Vec::new();
    for i in 0..2 {
        let port = free_port();
        ready.push(format!("http://127.0.0.1:{port}/readyz"));
        let mut worker = common.clone();
        worker.extend([
            ("KAFKA_GROUP_ID".to_owned(), format!("{group}-workers")),
            ("METRICS_ADDR".to_owned(), format!("127.0.0.1:{port}")),
            ("WORKER_NAME".to_owned(), format!("tls-worker-{i}")),
        ]);
        processes.push(Process::start(
            "tls-worker",
            env!("CARGO_BIN_EXE_worker"),
            &[],
            &worker,
        ));
    }
    let port = free_port();
    ready.push(format!("http://127.0.0.1:{port}/readyz"));
    let mut writer = common.clone();
    writer.extend([
        ("KAFKA_GROUP_ID".to_owned(), format!("{group}-graph")),
        ("METRICS_ADDR".to_owned(), format!("127.0.0.1:{port}")),
        ("GRAPH_BATCH_SIZE".to_owned(), "500".to_owned()),
    ]);
    processes.push(Process::start(
        "tls-graph-writer",
        env!("CARGO_BIN_EXE_graph-writer"),
        &[],
        &writer,
    ));
    let api_url = format!("http://127.0.0.1:{}", free_port());
    let mut api = common;
    api.push((
        "API_ADDR".to_owned(),
        api_url.trim_start_matches("http://").to_owned(),
    ));
    processes.push(Process::start(
        "tls-api",
        env!("CARGO_BIN_EXE_bookworm"),
        &["serve"],
        &api,
    ));
    ready.push(format!("{api_url}/readyz"));
    wait_ok(&format!("{sim_url}/_sim/stats"), Duration::from_secs(60)).await;
    for url in &ready {
        wait_ok(url, Duration::from_secs(90)).await;
    }

    let (crawl_id, _, _) = support::first_works_crawl_is_exact(&sim_url, &api_url, id_base).await;

    let (code, text) = bookworm(&["summary", &crawl_id], &env);
    assert_eq!(code, Some(0), "summary over TLS: {text}");
    assert!(text.contains("done"), "{text}");
    drop(processes);
}

/// A Kafka client of the SASL_SSL listener with `security`; whether a metadata request
/// succeeds.
fn kafka_admits(brokers: &str, security: KafkaSecurityArgs) -> bool {
    let cluster = BrokerArgs {
        kafka_brokers: brokers.to_owned(),
        security,
    };
    let consumer: BaseConsumer = cluster
        .client_config()
        .set("group.id", unique("tls-probe"))
        .create()
        .expect("client");
    consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .is_ok()
}

/// The SASL/SCRAM settings of the stack with `ca` as the trusted CA and `password`.
fn scram(ca: &str, password: &str) -> KafkaSecurityArgs {
    KafkaSecurityArgs {
        kafka_security_protocol: SecurityProtocol::SaslSsl,
        kafka_sasl_username: Some(stack_env("KAFKA_SCRAM_USER")),
        kafka_sasl_password: Some(password.to_owned()),
        kafka_ca_file: Some(PathBuf::from(ca)),
        ..KafkaSecurityArgs::default()
    }
}

/// Kafka's SASL_SSL listener admits the stack's SCRAM user through the stack's CA, and
/// refuses a plaintext client, a client that trusts another CA, and a wrong password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_tls_listener_refuses_plaintext_a_wrong_ca_and_a_wrong_password() {
    let brokers = stack_env("KAFKA_TLS_BOOTSTRAP");
    let password = stack_env("KAFKA_SCRAM_PASSWORD");
    let wrong_ca = stack_env("STACK_WRONG_CA_FILE");
    let cases = [
        ("the right CA and password", scram(&ca(), &password), true),
        ("plaintext", KafkaSecurityArgs::default(), false),
        ("the wrong CA", scram(&wrong_ca, &password), false),
        ("a wrong password", scram(&ca(), "not-the-password"), false),
    ];
    for (what, security, admitted) in cases {
        let brokers = brokers.clone();
        let got = tokio::task::spawn_blocking(move || kafka_admits(&brokers, security))
            .await
            .expect("probe");
        assert_eq!(got, admitted, "Kafka with {what}");
    }
}

/// Whether Redis answers PING to a client of `client`.
async fn redis_admits(client: redis::Client) -> bool {
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(10), attempt).await,
        Ok(Ok(pong)) if pong == "PONG"
    )
}

/// Redis's TLS port answers a client that trusts the stack's CA, and refuses a plaintext
/// client and a client that trusts another CA; a CA file with a plaintext URL is refused
/// before connecting.
#[tokio::test]
async fn redis_tls_port_refuses_plaintext_and_a_wrong_ca() {
    let url = stack_env("REDIS_TLS_URL");
    let right = TlsRedis {
        url: url.clone(),
        ca_file: ca().into(),
    };
    let wrong = TlsRedis {
        url: url.clone(),
        ca_file: stack_env("STACK_WRONG_CA_FILE").into(),
    };
    assert!(redis_admits(redis_client(&right).expect("client")).await);
    assert!(!redis_admits(redis_client(&wrong).expect("client")).await);
    let plaintext = url.replacen("rediss://", "redis://", 1);
    assert!(!redis_admits(redis::Client::open(plaintext.as_str()).expect("client")).await);
    let mixed = TlsRedis {
        url: plaintext,
        ca_file: ca().into(),
    };
    assert!(redis_client(&mixed).is_err(), "a CA file needs rediss://");
}

/// Neo4j's Bolt TLS: a `bolt+s://` client that trusts the stack's CA is admitted, one that
/// trusts another CA is refused; a CA file with a plaintext `bolt://` URI is refused before
/// connecting.
#[tokio::test]
async fn neo4j_tls_refuses_a_wrong_ca() {
    let args = |uri: String, ca: String| Neo4jArgs {
        neo4j_uri: uri,
        neo4j_user: stack_env("NEO4J_USER"),
        neo4j_password: stack_env("NEO4J_PASSWORD"),
        neo4j_max_connections: 1,
        neo4j_query_timeout: Duration::from_secs(10),
        neo4j_ca_file: Some(ca.into()),
    };
    let uri = stack_env("NEO4J_TLS_URI");
    let right = GraphStore::connect(&args(uri.clone(), ca()))
        .await
        .expect("store");
    right.ping().await.expect("bolt+s with the stack's CA");
    let wrong = GraphStore::connect(&args(uri, stack_env("STACK_WRONG_CA_FILE")))
        .await
        .expect("store");
    assert!(wrong.ping().await.is_err(), "bolt+s with the wrong CA");
    assert!(
        GraphStore::connect(&args(stack_env("NEO4J_URI"), ca()))
            .await
            .is_err(),
        "a CA file needs bolt+s://"
    );
}

/// The stack's TLS-only Bolt port (`bolt-tls`, as production's Neo4j with
/// `server.bolt.tls_level=REQUIRED`): a `bolt+s://` client that trusts the stack's CA reads
/// the graph through it, a plaintext `bolt://` client is refused, and so is one that trusts
/// another CA.
#[tokio::test]
async fn the_tls_only_bolt_port_refuses_plaintext_and_a_wrong_ca() {
    let args = |uri: String, ca: Option<String>| Neo4jArgs {
        neo4j_uri: uri,
        neo4j_user: stack_env("NEO4J_USER"),
        neo4j_password: stack_env("NEO4J_PASSWORD"),
        neo4j_max_connections: 1,
        neo4j_query_timeout: Duration::from_secs(10),
        neo4j_ca_file: ca.map(Into::into),
    };
    let tls_only = stack_env("NEO4J_TLS_ONLY_URI");
    let right = GraphStore::connect(&args(tls_only.clone(), Some(ca())))
        .await
        .expect("store");
    right.ping().await.expect("bolt+s with the stack's CA");
    let plaintext = tls_only.replace("bolt+s://", "bolt://");
    let refused = match GraphStore::connect(&args(plaintext, None)).await {
        Ok(store) => store.ping().await.is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a plaintext Bolt client is refused by the TLS-only port"
    );
    let wrong = GraphStore::connect(&args(tls_only, Some(stack_env("STACK_WRONG_CA_FILE"))))
        .await
        .expect("store");
    assert!(wrong.ping().await.is_err(), "bolt+s with the wrong CA");
}
