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
            "GRAPH_TRANSACTIONS",
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
            "API_TOKENS_FILE",
            "API_AUTH",
            "API_METRICS_AUTH",
            "API_HEADER_TIMEOUT",
            "API_REQUEST_TIMEOUT",
            "API_MAX_CONNECTIONS",
            "API_SHUTDOWN_TIMEOUT",
            "API_MAX_DEPTH_LIMIT",
            "API_MAX_NODES_LIMIT",
            "API_MAX_RUNNING_CRAWLS",
            "API_CRAWLS_PER_MINUTE",
            "CRAWL_INDEX_PREFIX",
        ],
    );
}

/// Each quota's invalid value, and crawl defaults above a ceiling, exit 2 naming the
/// variable before anything connects.
#[test]
fn an_invalid_quota_exits_2_naming_the_variable() {
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("API_MAX_DEPTH_LIMIT", "11")], "API_MAX_DEPTH_LIMIT"),
        (&[("API_MAX_NODES_LIMIT", "0")], "API_MAX_NODES_LIMIT"),
        (&[("API_MAX_RUNNING_CRAWLS", "0")], "API_MAX_RUNNING_CRAWLS"),
        (
            &[("API_CRAWLS_PER_MINUTE", "many")],
            "API_CRAWLS_PER_MINUTE",
        ),
        (&[("API_MAX_DEPTH_LIMIT", "2")], "API_MAX_DEPTH_LIMIT"),
        (
            &[("API_MAX_NODES_LIMIT", "10"), ("MAX_NODES", "11")],
            "API_MAX_NODES_LIMIT",
        ),
    ];
    for (env, name) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_bookworm"))
            .arg("serve")
            .env("API_ADDR", "127.0.0.1:0")
            // Nothing listens there: a start-up that got past the settings would fail
            // connecting, with exit 1.
            .env("REDIS_URL", "redis://127.0.0.1:1")
            .envs(env.iter().copied())
            .output()
            .expect("binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains(name), "{env:?}: {name} not named: {stderr}");
    }
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

// ---------------------------------------------------------------------------------------
// Secrets and the API's start-up refusals.
// ---------------------------------------------------------------------------------------

mod support;

use std::time::Duration;

/// Every secret-bearing variable, with a value whose secret part is easy to grep for.
const SECRETS: [(&str, &str); 5] = [
    ("REDIS_URL", "redis://:s3cret-redis@127.0.0.1:1"),
    ("NEO4J_URI", "bolt://neo4j:s3cret-uri@127.0.0.1:1"),
    ("NEO4J_PASSWORD", "s3cret-neo4j-password"),
    ("PROXY_POOL", "http://:s3cret-proxy@127.0.0.1:1"),
    ("API_TOKEN", "s3cret-api-token-0123456789"),
];

fn with_secrets(command: &mut Command) -> &mut Command {
    for (name, value) in SECRETS {
        command.env(name, value);
    }
    command
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.contains("s3cret"), "{what} shows a secret:\n{text}");
}

/// `--help` of every binary and subcommand that reads a secret-bearing variable shows the
/// variable's name but never its value.
#[test]
fn help_never_shows_a_secret_value() {
    let cases: [(&str, &[&str], &[&str]); 6] = [
        (
            env!("CARGO_BIN_EXE_worker"),
            &[],
            &["REDIS_URL", "PROXY_POOL"],
        ),
        (
            env!("CARGO_BIN_EXE_graph-writer"),
            &[],
            &["NEO4J_URI", "NEO4J_PASSWORD"],
        ),
        (env!("CARGO_BIN_EXE_bookworm"), &["serve"], &["REDIS_URL"]),
        (
            env!("CARGO_BIN_EXE_bookworm"),
            &["summary"],
            &["REDIS_URL", "NEO4J_URI", "NEO4J_PASSWORD"],
        ),
        (env!("CARGO_BIN_EXE_bookworm"), &["seed"], &["API_TOKEN"]),
        (env!("CARGO_BIN_EXE_bookworm"), &["status"], &["API_TOKEN"]),
    ];
    for (binary, args, names) in cases {
        let output = with_secrets(Command::new(binary).args(args).arg("--help"))
            .output()
            .expect("binary runs");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{binary} {args:?} --help failed");
        assert_documents(&text, names);
        assert_no_secret(&format!("{binary} {args:?} --help"), &text);
    }
}

/// A start-up that fails on an unreachable Redis, or on a refused proxy URL, names what
/// failed but never the password: worker, `bookworm serve`, `bookworm summary`.
#[test]
fn start_up_errors_never_show_a_password() {
    let worker = env!("CARGO_BIN_EXE_worker");
    let bookworm = env!("CARGO_BIN_EXE_bookworm");
    // (binary, args, extra env, exit code, what the message must name)
    type Case<'a> = (
        &'a str,
        &'a [&'a str],
        &'a [(&'a str, &'a str)],
        i32,
        &'a str,
    );
    let cases: [Case; 5] = [
        (
            worker,
            &[],
            &[
                ("PROXY_POOL", ""),
                ("OPENLIBRARY_BASE_URL", "http://127.0.0.1:1"),
            ],
            1,
            "redis",
        ),
        (
            worker,
            &[],
            &[("PROXY_POOL", "http://user:s3cret-proxy@127.0.0.1:3128")],
            2,
            "PROXY_POOL",
        ),
        (
            bookworm,
            &["serve"],
            &[("API_ADDR", "127.0.0.1:0")],
            1,
            "redis://***@127.0.0.1:1",
        ),
        (
            bookworm,
            &["summary", "some-crawl"],
            &[],
            1,
            "redis://***@127.0.0.1:1",
        ),
        (
            bookworm,
            &["seed", "/works/OL1W"],
            &[("BOOKWORM_API", "http://127.0.0.1:1")],
            1,
            "unreachable",
        ),
    ];
    for (binary, args, env, code, named) in cases {
        let mut command = Command::new(binary);
        with_secrets(command.args(args))
            .env("KAFKA_BROKERS", "127.0.0.1:1")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env_remove("API_TOKENS_FILE");
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().expect("binary runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let what = format!("{binary} {args:?} {env:?}");
        assert_eq!(output.status.code(), Some(code), "{what}: {text}");
        assert!(text.contains(named), "{what} does not name {named}: {text}");
        assert_no_secret(&what, &text);
    }
}

/// The graph writer and `bookworm summary` with a Neo4j URI that carries credentials and an
/// unreachable Neo4j: the log lines about it (the writer retries, logging each attempt)
/// never show the URI's password or NEO4J_PASSWORD.
#[tokio::test]
async fn neo4j_credentials_never_reach_a_log_line() {
    let (process, log) = support::Process::start_logged(
        "graph-writer-secrets",
        env!("CARGO_BIN_EXE_graph-writer"),
        &[],
        &SECRETS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain([
                ("KAFKA_BROKERS".to_owned(), "127.0.0.1:1".to_owned()),
                ("METRICS_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ])
            .collect::<Vec<_>>(),
    );
    let text = support::eventually(
        "the graph writer to log its Neo4j failure",
        Duration::from_secs(60),
        || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).ok()?;
                text.contains("cannot migrate yet").then_some(text)
            }
        },
    )
    .await;
    drop(process);
    assert_no_secret("the graph writer's log", &text);

    let output = with_secrets(Command::new(env!("CARGO_BIN_EXE_bookworm")).args(["summary", "x"]))
        .env("REDIS_URL", support::stack_env("REDIS_URL"))
        .output()
        .expect("binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{text}");
    assert_no_secret("bookworm summary", &text);
}

fn serve_output(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bookworm"));
    command
        .arg("serve")
        .env_remove("API_TOKENS_FILE")
        .env_remove("API_AUTH")
        .env("KAFKA_BROKERS", "127.0.0.1:1")
        .env("REDIS_URL", "redis://127.0.0.1:1");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `bookworm serve` refuses, with exit 2 naming API_TOKENS_FILE and before it connects to
/// anything: an open API on a non-loopback address, a tokens file with a malformed line
/// (named by number, its token never shown), an unreadable tokens file, and API_AUTH=none
/// together with a tokens file. API_AUTH=none on a public address passes this gate.
#[test]
fn bookworm_serve_refuses_an_unsafe_or_broken_authentication_with_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let malformed = dir.path().join("tokens");
    std::fs::write(
        &malformed,
        "# tokens\ngood-token-0123456789 read\nleaked-token-0123456789 admin\n",
    )
    .expect("tokens file");
    let malformed = malformed.to_string_lossy().into_owned();
    let missing = dir.path().join("missing").to_string_lossy().into_owned();
    // (the variables set, what the message must name)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 4] = [
        (
            &[("API_ADDR", "0.0.0.0:0")],
            &["API_TOKENS_FILE", "API_AUTH=none"],
        ),
        (
            &[("API_ADDR", "127.0.0.1:0"), ("API_TOKENS_FILE", &malformed)],
            &["API_TOKENS_FILE", "line 3", "role"],
        ),
        (
            &[("API_ADDR", "127.0.0.1:0"), ("API_TOKENS_FILE", &missing)],
            &["API_TOKENS_FILE", "cannot read"],
        ),
        (
            &[("API_TOKENS_FILE", &malformed), ("API_AUTH", "none")],
            &["API_TOKENS_FILE", "API_AUTH=none"],
        ),
    ];
    for (env, named) in cases {
        let (code, stderr) = serve_output(env);
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        for name in named {
            assert!(
                stderr.contains(name),
                "{env:?} does not name {name}: {stderr}"
            );
        }
        assert!(
            !stderr.contains("token-0123456789"),
            "a token leaked: {stderr}"
        );
    }
    let (code, stderr) = serve_output(&[("API_ADDR", "0.0.0.0:0"), ("API_AUTH", "none")]);
    assert_eq!(
        code,
        Some(1),
        "API_AUTH=none should pass the gate: {stderr}"
    );
    assert!(stderr.contains("connecting to Redis"), "{stderr}");
}
