//! The container image, built and run for real: `scripts/image.sh` packages the binaries
//! cargo built for this test onto a base made by mmdebstrap from Debian's packages, and
//! podman (runc, vfs) runs them with `--network host` and a read-only root file system as
//! uid 65532 against the local stack (`eval "$(bash scripts/stack.sh env)"`).
//!
//! Self-contained on purpose: its helpers are small copies of tests/common's, so the image
//! test depends on nothing but the binaries, the stack and podman.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{TestTopics, free_port, fresh_id_base, stack_env, unique, wait_ok};

mod support;

/// Where the three binaries are: cargo builds them next to each other for integration tests.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_bookworm"))
        .parent()
        .expect("the binaries' directory")
        .to_path_buf()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One image built for one test, and the containers run from it: all removed when dropped,
/// whether the test passed or not (with the containers' last log lines if it failed).
struct Image {
    tag: String,
    /// CONTAINERS_CONF and CONTAINERS_STORAGE_CONF, as `scripts/image.sh env` prints them.
    env: Vec<(String, String)>,
    containers: Mutex<Vec<String>>,
}

impl Image {
    /// Builds the image with `scripts/image.sh` from this test's binaries (debug, stripped
    /// by the script) under a tag of its own.
    fn build() -> Image {
        let script = repo().join("scripts/image.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("env")
            .output()
            .expect("scripts/image.sh env runs");
        assert!(out.status.success(), "image.sh env: {}", text(&out.stderr));
        let env = text(&out.stdout)
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<Vec<_>>();
        assert_eq!(env.len(), 2, "image.sh env: {}", text(&out.stdout));
        let tag = format!("localhost/relentless-bookworm:{}", unique("test"));
        let start = Instant::now();
        let status = Command::new("bash")
            .arg(&script)
            .arg("build")
            .env("IMAGE", &tag)
            .env("BOOKWORM_BIN_DIR", bin_dir())
            .stdout(Stdio::null())
            .status()
            .expect("scripts/image.sh runs");
        assert!(status.success(), "scripts/image.sh build failed");
        eprintln!("image {tag} built in {:?}", start.elapsed());
        Image {
            tag,
            env,
            containers: Mutex::new(Vec::new()),
        }
    }

    fn podman(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("podman {args:?}: {e}"))
    }

    fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// The options every container of the test runs with: the host's network (the stack
    /// listens on loopback), a read-only root file system, the image's own user.
    fn run_args<'a>(
        &'a self,
        entrypoint: Option<&'a str>,
        env: &'a [(String, String)],
    ) -> Vec<String> {
        let mut args: Vec<String> = ["--network", "host", "--read-only"]
            .map(str::to_owned)
            .to_vec();
        if let Some(entrypoint) = entrypoint {
            args.extend(["--entrypoint".to_owned(), entrypoint.to_owned()]);
        }
        for (k, v) in env {
            args.extend(["-e".to_owned(), format!("{k}={v}")]);
        }
        args
    }

    /// Runs a container to its end; returns its output.
    fn run(&self, entrypoint: Option<&str>, env: &[(String, String)], cmd: &[&str]) -> Output {
        let mut args = vec!["run".to_owned(), "--rm".to_owned()];
        args.extend(self.run_args(entrypoint, env));
        args.push(self.tag.clone());
        args.extend(cmd.iter().map(|s| (*s).to_owned()));
        self.podman(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Starts a container in the background, named after `what`; returns its name.
    fn start(
        &self,
        what: &str,
        entrypoint: Option<&str>,
        env: &[(String, String)],
        cmd: &[&str],
    ) -> String {
        let name = unique(&format!("bookworm-{what}"));
        self.containers
            .lock()
            .expect("containers")
            .push(name.clone());
        let mut args = vec!["run".to_owned(), "-d".to_owned(), "--name".to_owned()];
        args.push(name.clone());
        args.extend(self.run_args(entrypoint, env));
        args.push(self.tag.clone());
        args.extend(cmd.iter().map(|s| (*s).to_owned()));
        self.podman_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        eprintln!("{what}: container {name} (podman logs {name})");
        name
    }

    /// The image's configuration (`podman image inspect`).
    fn config(&self) -> Value {
        let out = self.podman_ok(&["image", "inspect", &self.tag]);
        let inspect: Value = serde_json::from_str(&out).expect("inspect json");
        inspect[0]["Config"].clone()
    }

    /// Every path in the image's file system, with `tar tv`'s mode column.
    fn files(&self) -> Vec<(String, String)> {
        let name = unique("bookworm-export");
        self.containers
            .lock()
            .expect("containers")
            .push(name.clone());
        self.podman_ok(&["create", "--name", &name, &self.tag]);
        let tar = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.tar"));
        self.podman_ok(&["export", "-o", &tar.to_string_lossy(), &name]);
        let out = Command::new("tar")
            .arg("-tvf")
            .arg(&tar)
            .output()
            .expect("tar runs");
        let _ = std::fs::remove_file(&tar);
        assert!(out.status.success(), "tar: {}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let path = fields.get(5)?.trim_start_matches("./").to_owned();
                Some((path, fields[0].to_owned()))
            })
            .collect()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let containers = self
            .containers
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        if std::thread::panicking() {
            for name in &containers {
                let out = self.podman(&["logs", "--tail", "30", name]);
                eprintln!(
                    "---- {name} (last lines) ----\n{}{}",
                    text(&out.stdout),
                    text(&out.stderr)
                );
            }
        }
        if !containers.is_empty() {
            let mut args = vec!["rm", "--force", "--time", "2"];
            args.extend(containers.iter().map(String::as_str));
            let _ = self.podman(&args);
        }
        let _ = self.podman(&["rmi", &self.tag]);
    }
}

/// The image as built: non-root user, the `bookworm` entrypoint and the OCI labels
/// (source, version, revision), Dockerfile-equal runtime settings; `--help` of each binary
/// and the exit-2 configuration error work inside it; and it holds no shell, no package
/// manager, no executable but the three binaries.
#[test]
fn the_image_is_non_root_labelled_and_has_no_shell_or_package_manager() {
    let image = Image::build();

    let config = image.config();
    let user = config["User"].as_str().expect("a user");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        !uid.is_empty() && uid != "0" && uid != "root",
        "non-root user: {config}"
    );
    assert_eq!(user, "65532:65532", "{config}");
    assert_eq!(
        config["Entrypoint"],
        json!(["/usr/local/bin/bookworm"]),
        "{config}"
    );
    let labels = &config["Labels"];
    for label in ["source", "version", "revision"] {
        let value = labels[format!("org.opencontainers.image.{label}")]
            .as_str()
            .unwrap_or_default();
        assert!(
            !value.is_empty() && value != "unknown",
            "label {label}: {labels}"
        );
    }
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    if let Ok(head) = Command::new("git")
        .args(["-C", &repo().to_string_lossy(), "rev-parse", "HEAD"])
        .output()
        && head.status.success()
    {
        assert_eq!(
            labels["org.opencontainers.image.revision"],
            text(&head.stdout).trim()
        );
    }

    // --help through the entrypoint, and each binary's own.
    let out = image.run(None, &[], &[]);
    assert!(out.status.success(), "bookworm --help: {out:?}");
    assert!(text(&out.stdout).contains("Usage: bookworm"), "{out:?}");
    for bin in ["worker", "graph-writer"] {
        let out = image.run(Some(&format!("/usr/local/bin/{bin}")), &[], &["--help"]);
        assert!(out.status.success(), "{bin} --help: {out:?}");
        assert!(
            text(&out.stdout).contains(&format!("Usage: {bin}")),
            "{out:?}"
        );
    }

    // A bad setting: exit 2 and a message naming it, as on the host.
    let bad = [("MAX_DEPTH".to_owned(), "abc".to_owned())];
    for entrypoint in [Some("/usr/local/bin/worker"), None] {
        let cmd: &[&str] = if entrypoint.is_none() {
            &["serve"]
        } else {
            &[]
        };
        let out = image.run(entrypoint, &bad, cmd);
        assert_eq!(out.status.code(), Some(2), "MAX_DEPTH=abc: {out:?}");
        assert!(text(&out.stderr).contains("MAX_DEPTH"), "{out:?}");
    }

    // No shell to enter.
    for shell in ["/bin/sh", "/bin/bash", "/usr/bin/env", "/usr/bin/dpkg"] {
        let out = image.run(Some(shell), &[], &["-c", "true"]);
        assert!(!out.status.success(), "{shell} runs in the image: {out:?}");
    }

    // Nothing in the file system that runs a command, installs a package or is a shell:
    // the only files in a bin directory are ours.
    let files = image.files();
    assert!(files.len() > 10, "{files:?}");
    let paths: BTreeSet<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    for needed in [
        "usr/local/bin/worker",
        "usr/local/bin/graph-writer",
        "usr/local/bin/bookworm",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "usr/lib/x86_64-linux-gnu/libz.so.1",
        "usr/lib/x86_64-linux-gnu/libssl.so.3",
    ] {
        assert!(paths.contains(needed), "{needed} missing: {paths:?}");
    }
    for (path, mode) in &files {
        let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        assert!(
            !matches!(
                name,
                "sh" | "bash" | "dash" | "busybox" | "dpkg" | "apt" | "apt-get" | "perl"
            ) && !path.starts_with("var/lib/dpkg")
                && !path.starts_with("var/lib/apt")
                && !path.starts_with("etc/apt"),
            "{path} is in the image"
        );
        let in_bin = ["bin/", "sbin/", "usr/bin/", "usr/sbin/", "usr/local/bin/"]
            .iter()
            .any(|dir| path.starts_with(dir) && path.len() > dir.len());
        if in_bin {
            assert!(
                [
                    "usr/local/bin/worker",
                    "usr/local/bin/graph-writer",
                    "usr/local/bin/bookworm"
                ]
                .contains(&path.as_str()),
                "{path} ({mode}) is an executable of the base"
            );
        }
    }

    // The Dockerfile (registry path) and Containerfile.runtime (host path) make the same
    // runtime: user, entrypoint, command, environment, ports and labels.
    assert_eq!(
        runtime_settings(&repo().join("Dockerfile")),
        runtime_settings(&repo().join("Containerfile.runtime")),
        "Dockerfile and Containerfile.runtime disagree"
    );
}

/// The runtime instructions of a Containerfile's last stage (continuation lines joined).
fn runtime_settings(path: &Path) -> BTreeSet<String> {
    let body = std::fs::read_to_string(path).expect("containerfile");
    let joined = body.replace("\\\n", " ");
    let last_stage = joined
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .expect("a FROM");
    last_stage
        .lines()
        .filter(|line| {
            ["USER ", "ENV ", "EXPOSE ", "ENTRYPOINT ", "CMD ", "LABEL "]
                .iter()
                .any(|i| line.starts_with(i))
        })
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// The simulator, the topics, a worker, the graph writer and `bookworm serve`, each a
/// container of the image (read-only root file system, uid 65532, the host's network),
/// against the local Kafka, Redis, Neo4j and Squid: a crawl to depth 2 ends `done` and
/// Neo4j holds exactly the simulator's reachable graph.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crawl_through_the_containers_builds_exactly_the_reachable_graph() {
    let image = Image::build();
    let id_base = fresh_id_base();
    let mut env = TestTopics::named("image").env();
    env.push(("RUST_LOG".to_owned(), "info".to_owned()));

    // The topics, by the image's `bookworm topics create`.
    let out = image.run(
        None,
        &env,
        &[
            "topics",
            "create",
            "--partitions",
            "4",
            "--replication",
            "1",
        ],
    );
    assert!(out.status.success(), "topics create: {out:?}");

    let (sim_port, api_port, worker_port, writer_port) =
        (free_port(), free_port(), free_port(), free_port());
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    let api_url = format!("http://127.0.0.1:{api_port}");
    let mut names = Vec::new();
    names.push(image.start(
        "sim",
        None,
        &[],
        &[
            "sim",
            "--addr",
            &format!("127.0.0.1:{sim_port}"),
            "--id-base",
            &id_base.to_string(),
            "--works",
            "400",
            "--authors",
            "120",
            "--subjects",
            "40",
            "--no-limit",
        ],
    ));
    let group = unique("image");
    let mut worker_env = env.clone();
    worker_env.extend(
        [
            ("OPENLIBRARY_BASE_URL", sim_url.clone()),
            ("PROXY_POOL", stack_env("PROXY_POOL")),
            ("EGRESS_RATE_PER_MINUTE", "6000".to_owned()),
            // Far above the stand-in's pace: these tests are about the pipeline, not politeness.
            ("USER_AGENT_RATE_PER_MINUTE", "60000".to_owned()),
            ("EGRESS_BURST", "50".to_owned()),
            ("EGRESS_REDIS_PREFIX", unique("image-egress")),
            ("COMMIT_INTERVAL", "200ms".to_owned()),
            ("KAFKA_GROUP_ID", format!("{group}-workers")),
            ("METRICS_ADDR", format!("127.0.0.1:{worker_port}")),
            ("WORKER_NAME", "image-worker-0".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    names.push(image.start("worker", Some("/usr/local/bin/worker"), &worker_env, &[]));
    let mut writer_env = env.clone();
    writer_env.extend(
        [
            ("KAFKA_GROUP_ID", format!("{group}-graph")),
            ("METRICS_ADDR", format!("127.0.0.1:{writer_port}")),
            ("GRAPH_BATCH_SIZE", "500".to_owned()),
            ("COMMIT_INTERVAL", "200ms".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    names.push(image.start(
        "graph-writer",
        Some("/usr/local/bin/graph-writer"),
        &writer_env,
        &[],
    ));
    let mut api_env = env.clone();
    api_env.push(("API_ADDR".to_owned(), format!("127.0.0.1:{api_port}")));
    names.push(image.start("api", None, &api_env, &["serve"]));

    wait_ok(&format!("{sim_url}/_sim/stats"), Duration::from_secs(60)).await;
    wait_ok(&format!("{api_url}/readyz"), Duration::from_secs(60)).await;
    for port in [worker_port, writer_port] {
        wait_ok(
            &format!("http://127.0.0.1:{port}/readyz"),
            Duration::from_secs(90),
        )
        .await;
    }
    // Each runs as the image's user on a read-only root file system.
    for name in &names {
        let top = image.podman_ok(&["top", name, "user", "huser"]);
        let row = top.lines().nth(1).unwrap_or_default().to_owned();
        assert!(
            row.split_whitespace().eq(["nonroot", "65532"]),
            "{name} runs as {top}"
        );
        let read_only = image.podman_ok(&[
            "inspect",
            "--format",
            "{{.HostConfig.ReadonlyRootfs}}",
            name,
        ]);
        assert_eq!(read_only.trim(), "true", "{name}");
    }

    support::first_works_crawl_is_exact(&sim_url, &api_url, id_base).await;
}
