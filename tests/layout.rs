//! The shape of the source tree, checked: the dependency rules the README's architecture
//! section states, and the size limits that keep each file one concept.
//!
//! `cargo test --test layout` is the command that checks them.

use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

fn src(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(rel)
}

/// The lines of the files under `dir` that mention `needle` (`path:line: text`).
fn mentions(dir: &str, needle: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for file in sources(&src(dir)) {
        let text = fs::read_to_string(&file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            if needle(line) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

/// `config/` is a leaf: it uses nothing of the crate outside itself, so every other module
/// may depend on it and it can never be part of a cycle.
#[test]
fn config_imports_nothing_from_the_rest_of_the_crate() {
    let found = mentions("config", |line| {
        line.contains("crate::") && !line.contains("crate::config")
    });
    assert!(
        found.is_empty(),
        "config/ reaches out:\n{}",
        found.join("\n")
    );
}

/// The two pipelines share only the topic contract (`message`) and the core below it: the
/// crawl never uses the graph's code, nor the graph the crawl's.
#[test]
fn the_crawl_and_graph_pipelines_never_use_each_other() {
    let crawl = mentions("crawl", |line| line.contains("crate::graph"));
    assert!(
        crawl.is_empty(),
        "crawl/ uses graph/:\n{}",
        crawl.join("\n")
    );
    let graph = mentions("graph", |line| line.contains("crate::crawl"));
    assert!(
        graph.is_empty(),
        "graph/ uses crawl/:\n{}",
        graph.join("\n")
    );
}

/// A consumer loop is built only through `ConsumerLoop::new`, from plain settings.
#[test]
fn no_consumer_loop_literal_outside_the_consumer() {
    let mut found = Vec::new();
    for dir in [
        "api", "bench", "bin", "crawl", "graph", "kafka", "ops", "process", "sim",
    ] {
        found.extend(mentions(dir, |line| line.contains("ConsumerLoop {")));
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The service binaries stay thin: parse the command line, start the runtime, run the
/// library's service.
#[test]
fn the_service_binaries_stay_thin() {
    for binary in ["bin/worker.rs", "bin/graph-writer.rs"] {
        let lines = fs::read_to_string(src(binary))
            .expect("binary")
            .lines()
            .count();
        assert!(lines < 60, "{binary} has {lines} lines");
    }
}

/// No source file grows past ~600 lines: past that a file has usually taken on a second
/// concept, which belongs in a file of its own.
#[test]
fn no_source_file_is_too_long() {
    const LIMIT: usize = 620;
    let mut long = Vec::new();
    for file in sources(&src("")) {
        let lines = fs::read_to_string(&file).expect("readable").lines().count();
        let rel = file
            .strip_prefix(src(""))
            .expect("under src")
            .display()
            .to_string();
        if lines > LIMIT {
            long.push(format!("{rel}: {lines} lines"));
        }
    }
    assert!(long.is_empty(), "{}", long.join("\n"));
}

/// Below the services, components take plain settings, not command-line structs: only the
/// start-ups (`service.rs`) read `*Args`. The one exception is the Neo4j connection
/// (`Neo4jArgs`), which the graph store, the operator commands and the tests all open alike.
#[test]
fn only_the_service_start_ups_read_command_line_structs() {
    let mut found = Vec::new();
    for dir in ["consumer", "crawl", "graph", "kafka"] {
        found.extend(mentions(dir, |line| {
            line.contains("crate::config::") && line.contains("Args") && !line.contains("Neo4jArgs")
        }));
    }
    found.retain(|line| !line.contains("service.rs:"));
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// Every backend client is made in one place, so a TLS or SASL setting applies to all of
/// them: Kafka clients from `kafka::Cluster` (src/kafka/mod.rs), Redis clients from
/// `backend::redis_client` (src/backend.rs), Neo4j's configuration in `GraphStore::connect`
/// (src/graph/mod.rs). Unit tests (after `#[cfg(test)]`) may build their own.
#[test]
fn every_backend_client_is_made_in_one_place() {
    let rules: [(&str, &str); 4] = [
        ("ClientConfig::new", "kafka/mod.rs"),
        ("Client::open", "backend.rs"),
        ("Client::build_with_tls", "backend.rs"),
        ("ConfigBuilder", "graph/mod.rs"),
    ];
    let mut found = Vec::new();
    for file in sources(&src("")) {
        let text = fs::read_to_string(&file).expect("readable source");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (needle, home) in rules {
            if code.contains(needle) && file != src(home) {
                found.push(format!("{}: {needle} (only in src/{home})", file.display()));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}
