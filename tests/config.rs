//! The binaries' configuration surface: every contract variable is documented in `--help`,
//! and an invalid value stops the process with exit code 2 naming the variable.

use std::process::Command;

fn help(binary: &str, args: &[&str]) -> String {
    let output = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .expect("binary runs");
    assert!(output.status.success(), "{binary} --help failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_documents(text: &str, names: &[&str]) {
    for name in names {
        assert!(
            text.contains(&format!("[env: {name}")),
            "--help does not document {name}:\n{text}"
        );
    }
}

const KAFKA: [&str; 6] = [
    "KAFKA_BROKERS",
    "KAFKA_FRONTIER_TOPIC",
    "KAFKA_RESULTS_TOPIC",
    "KAFKA_EDGES_TOPIC",
    "KAFKA_DLQ_TOPIC",
    "KAFKA_GROUP_ID",
];

/// `worker --help` lists every contract variable the worker reads.
#[test]
fn worker_help_lists_every_contract_variable() {
    let text = help(env!("CARGO_BIN_EXE_worker"), &[]);
    assert_documents(&text, &KAFKA);
    assert_documents(
        &text,
        &[
            "REDIS_URL",
            "OPENLIBRARY_BASE_URL",
            "USER_AGENT",
            "PROXY_POOL",
            "EGRESS_RATE_PER_MINUTE",
            "EGRESS_BURST",
            "EGRESS_LIMIT_SCOPE",
            "CONCURRENT_JOBS",
            "JOB_TIMEOUT",
            "PUBLISH_TIMEOUT",
            "MAX_DEPTH",
            "MAX_NODES",
            "RESPECT_ROBOTS_TXT",
            "METRICS_ADDR",
            "LOG_FORMAT",
        ],
    );
}

/// `graph-writer --help` lists every contract variable the graph writer reads, and never
/// prints the Neo4j password's value.
#[test]
fn graph_writer_help_lists_every_contract_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_graph-writer"))
        .arg("--help")
        .env("NEO4J_PASSWORD", "s3cret-value")
        .output()
        .expect("binary runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_documents(&text, &KAFKA);
    assert_documents(
        &text,
        &[
            "NEO4J_URI",
            "NEO4J_USER",
            "NEO4J_PASSWORD",
            "GRAPH_BATCH_SIZE",
            "GRAPH_BATCH_LINGER",
            "METRICS_ADDR",
            "LOG_FORMAT",
        ],
    );
    assert!(
        !text.contains("s3cret-value"),
        "the password leaked into --help"
    );
}

/// `bookworm serve --help` lists the API's variables.
#[test]
fn bookworm_help_lists_the_api_variables() {
    let text = help(env!("CARGO_BIN_EXE_bookworm"), &["serve"]);
    assert_documents(
        &text,
        &[
            "API_ADDR",
            "KAFKA_BROKERS",
            "KAFKA_FRONTIER_TOPIC",
            "REDIS_URL",
            "OPENLIBRARY_BASE_URL",
            "MAX_DEPTH",
            "MAX_NODES",
        ],
    );
}

/// An invalid value exits 2 with a message naming the variable, before anything connects.
#[test]
fn an_invalid_value_exits_2_naming_the_variable() {
    let worker = env!("CARGO_BIN_EXE_worker");
    let bookworm = env!("CARGO_BIN_EXE_bookworm");
    let cases: [(&str, &[&str], &str, &str); 7] = [
        (worker, &[], "MAX_DEPTH", "abc"),
        (worker, &[], "JOB_TIMEOUT", "soon"),
        (worker, &[], "PROXY_POOL", "ftp://proxy:21"),
        (
            env!("CARGO_BIN_EXE_graph-writer"),
            &[],
            "GRAPH_BATCH_SIZE",
            "0",
        ),
        (worker, &[], "EGRESS_LIMIT_SCOPE", "galaxy"),
        // The API parses the origin as the worker does: a path is not an origin.
        (
            worker,
            &[],
            "OPENLIBRARY_BASE_URL",
            "https://openlibrary.org/works",
        ),
        (
            bookworm,
            &["serve"],
            "OPENLIBRARY_BASE_URL",
            "https://openlibrary.org/works",
        ),
    ];
    for (binary, args, name, value) in cases {
        let output = Command::new(binary)
            .args(args)
            .env(name, value)
            .output()
            .expect("binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}={value}: {stderr}");
        assert!(stderr.contains(name), "{name}={value} not named: {stderr}");
    }
}

/// A DLQ reason outside the contract's list is refused like a bad flag: exit 2, naming the
/// flag and the reasons it accepts, before anything connects.
#[test]
fn an_unknown_dlq_reason_exits_2() {
    let output = Command::new(env!("CARGO_BIN_EXE_bookworm"))
        .args(["dlq", "list", "--reason", "bogus"])
        .env("KAFKA_BROKERS", "127.0.0.1:1")
        .output()
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--reason") && stderr.contains("http_4xx"),
        "{stderr}"
    );
}

/// Towards openlibrary.org itself the worker keeps Open Library's published rules before it
/// connects to anything: five egresses, the built-in User-Agent (it names this project, not
/// the operator), and a User-Agent without a contact each exit 2 naming the variable.
#[test]
fn the_worker_refuses_to_crawl_openlibrary_org_against_its_rules() {
    let five = "http://127.0.0.1:3128,http://127.0.0.1:3129,http://127.0.0.1:3130,\
                http://127.0.0.1:3131,http://127.0.0.1:3132";
    let mine = "MyCrawler/1.0 (ops@example.org)";
    // (the variables set, the variable named, why)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 3] = [
        (
            &[("PROXY_POOL", five), ("USER_AGENT", mine)],
            "PROXY_POOL",
            "more than 4",
        ),
        (&[("PROXY_POOL", "")], "USER_AGENT", "built-in"),
        (
            &[("PROXY_POOL", ""), ("USER_AGENT", "MyCrawler/1.0")],
            "USER_AGENT",
            "contact",
        ),
    ];
    for (env, name, why) in cases {
        let mut command = Command::new(env!("CARGO_BIN_EXE_worker"));
        command
            .env_remove("OPENLIBRARY_BASE_URL")
            .env_remove("USER_AGENT")
            .env("KAFKA_BROKERS", "127.0.0.1:1")
            .env("REDIS_URL", "redis://127.0.0.1:1");
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().expect("binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains(why),
            "{env:?}: {stderr}"
        );
    }
}
