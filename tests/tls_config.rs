//! The backend TLS and SASL settings at start-up: invalid combinations and unreadable CA
//! files exit 2 naming the variable, and `KAFKA_SASL_PASSWORD` never shows in `--help`, in a
//! start-up error or in a log line, for each binary that takes it.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Process, eventually, stack_env, unique};

const PASSWORD: &str = "s3cret-kafka-sasl-password";

/// Every binary and subcommand that reads the Kafka settings.
const KAFKA_BINARIES: [(&str, &[&str]); 6] = [
    (env!("CARGO_BIN_EXE_worker"), &[]),
    (env!("CARGO_BIN_EXE_graph-writer"), &[]),
    (env!("CARGO_BIN_EXE_bookworm"), &["serve"]),
    (env!("CARGO_BIN_EXE_bookworm"), &["topics", "create"]),
    (env!("CARGO_BIN_EXE_bookworm"), &["dlq", "list"]),
    (env!("CARGO_BIN_EXE_bookworm"), &["dlq", "replay"]),
];

fn run(binary: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(binary)
        .args(args)
        .env("KAFKA_SASL_PASSWORD", PASSWORD)
        .env("KAFKA_BROKERS", "127.0.0.1:1")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .output()
        .expect("binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

/// `--help` names every new variable and never shows the SASL password's value.
#[test]
fn help_documents_the_tls_variables_and_never_shows_the_sasl_password() {
    for (binary, args) in KAFKA_BINARIES {
        let mut help = args.to_vec();
        help.push("--help");
        let (code, text) = run(binary, &help, &[]);
        assert_eq!(code, Some(0), "{binary} {args:?}: {text}");
        for name in [
            "KAFKA_SECURITY_PROTOCOL",
            "KAFKA_SASL_MECHANISM",
            "KAFKA_SASL_USERNAME",
            "KAFKA_SASL_PASSWORD",
            "KAFKA_CA_FILE",
        ] {
            assert!(
                text.contains(&format!("[env: {name}")),
                "{binary} {args:?} --help lacks {name}"
            );
        }
        assert!(!text.contains("s3cret"), "{binary} {args:?}: {text}");
    }
    let (_, text) = run(env!("CARGO_BIN_EXE_worker"), &["--help"], &[]);
    assert!(text.contains("[env: REDIS_CA_FILE"), "{text}");
    let (_, text) = run(env!("CARGO_BIN_EXE_graph-writer"), &["--help"], &[]);
    assert!(text.contains("[env: NEO4J_CA_FILE"), "{text}");
}

/// `sasl_ssl` without a user or a password, an unknown protocol or mechanism, and CA files
/// that cannot be read or hold no certificate stop every binary with exit 2 naming the
/// variable, before it connects to anything, and the password is not in the message.
#[test]
fn invalid_tls_settings_exit_2_naming_the_variable_without_the_password() {
    let dir = tempfile::tempdir().expect("temp dir");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "no certificate here").expect("write");
    let not_pem = not_pem.to_string_lossy().into_owned();
    let missing = dir
        .path()
        .join("missing.pem")
        .to_string_lossy()
        .into_owned();
    // (the variables set, the variable the message must name)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")],
            "KAFKA_SASL_USERNAME",
        ),
        (
            vec![("KAFKA_SECURITY_PROTOCOL", "bogus")],
            "KAFKA_SECURITY_PROTOCOL",
        ),
        (
            vec![("KAFKA_SASL_MECHANISM", "GSSAPI")],
            "KAFKA_SASL_MECHANISM",
        ),
        (vec![("KAFKA_CA_FILE", &missing)], "KAFKA_CA_FILE"),
        (vec![("KAFKA_CA_FILE", &not_pem)], "KAFKA_CA_FILE"),
    ];
    for (binary, args) in KAFKA_BINARIES {
        for (env, named) in &cases {
            let (code, text) = run(binary, args, env);
            let what = format!("{binary} {args:?} {env:?}");
            assert_eq!(code, Some(2), "{what}: {text}");
            assert!(text.contains(named), "{what} does not name {named}: {text}");
            assert!(
                !text.contains("s3cret"),
                "{what} shows the password: {text}"
            );
        }
    }
    // sasl_ssl with a user but no password names the password variable, not a value.
    let (code, text) = Command::new(env!("CARGO_BIN_EXE_worker"))
        .env("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
        .env("KAFKA_SASL_USERNAME", "bookworm")
        .env_remove("KAFKA_SASL_PASSWORD")
        .output()
        .map(|o| {
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .expect("binary runs");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("KAFKA_SASL_PASSWORD"), "{text}");
    for (binary, args, name) in [
        (env!("CARGO_BIN_EXE_worker"), &[][..], "REDIS_CA_FILE"),
        (
            env!("CARGO_BIN_EXE_bookworm"),
            &["serve"][..],
            "REDIS_CA_FILE",
        ),
        (env!("CARGO_BIN_EXE_graph-writer"), &[][..], "NEO4J_CA_FILE"),
        (
            env!("CARGO_BIN_EXE_bookworm"),
            &["summary", "x"][..],
            "NEO4J_CA_FILE",
        ),
    ] {
        let (code, text) = run(binary, args, &[(name, &missing)]);
        assert_eq!(code, Some(2), "{binary} {args:?} {name}: {text}");
        assert!(text.contains(name), "{binary} {args:?}: {text}");
    }
}

/// The worker, the graph writer and the API with a wrong SASL password on the stack's TLS
/// listener: each logs Kafka's authentication failure, and its log never shows the
/// password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sasl_password_is_logged_without_the_password() {
    let api_port = support::free_port().to_string();
    let api_addr = format!("127.0.0.1:{api_port}");
    // (log name, binary, arguments, extra variables)
    type Case<'a> = (&'a str, &'a str, &'a [&'a str], Vec<(&'a str, String)>);
    let cases: [Case; 3] = [
        (
            "tls-secret-worker",
            env!("CARGO_BIN_EXE_worker"),
            &[],
            vec![
                ("OPENLIBRARY_BASE_URL", "http://127.0.0.1:1".to_owned()),
                ("PROXY_POOL", String::new()),
            ],
        ),
        (
            "tls-secret-graph-writer",
            env!("CARGO_BIN_EXE_graph-writer"),
            &[],
            vec![],
        ),
        (
            "tls-secret-api",
            env!("CARGO_BIN_EXE_bookworm"),
            &["serve"],
            vec![("API_ADDR", api_addr)],
        ),
    ];
    for (name, binary, args, extra) in cases {
        let topic = unique(name);
        let env: Vec<(String, String)> = [
            ("KAFKA_BROKERS", stack_env("KAFKA_TLS_BOOTSTRAP")),
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl".to_owned()),
            ("KAFKA_SASL_USERNAME", stack_env("KAFKA_SCRAM_USER")),
            ("KAFKA_SASL_PASSWORD", PASSWORD.to_owned()),
            ("KAFKA_CA_FILE", stack_env("STACK_CA_FILE")),
            ("KAFKA_FRONTIER_TOPIC", format!("{topic}.frontier")),
            ("KAFKA_RESULTS_TOPIC", format!("{topic}.results")),
            ("KAFKA_EDGES_TOPIC", format!("{topic}.edges")),
            ("KAFKA_GROUP_ID", topic.clone()),
            ("REDIS_URL", stack_env("REDIS_URL")),
            ("NEO4J_URI", stack_env("NEO4J_URI")),
            ("NEO4J_USER", stack_env("NEO4J_USER")),
            ("NEO4J_PASSWORD", stack_env("NEO4J_PASSWORD")),
            ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ]
        .into_iter()
        .chain(extra)
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let (process, log) = Process::start_logged(name, binary, args, &env);
        let text = eventually(
            &format!("{name} to log the authentication failure"),
            Duration::from_secs(90),
            || {
                let log = log.clone();
                async move {
                    let text = std::fs::read_to_string(&log).ok()?;
                    text.contains("Authentication failed").then_some(text)
                }
            },
        )
        .await;
        drop(process);
        assert!(
            !text.contains("s3cret"),
            "{name} logged the password:\n{text}"
        );
    }
}
