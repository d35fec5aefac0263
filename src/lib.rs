//! Relentless Bookworm: a distributed, polite crawler of the Open Library API that builds a
//! graph of works, authors, editions and subjects in Neo4j.
//!
//! ```text
//! client ─POST /crawls─▶ api ─▶ [frontier] ─▶ worker ×N ─▶ Open Library (through an egress pool)
//!                                   ▲             │
//!                                   └─new jobs────┤
//!                                   [results] ◀───┤
//!                                   [edges]   ◀───┤
//!                                   [dlq]     ◀───┘
//!                         [results]+[edges] ─▶ graph-writer ×M ─▶ Neo4j
//! ```
//!
//! Layout, in data-flow order (consume → crawl → publish → write):
//! - [`config`]: every setting, as a clap flag with an environment variable of the same name.
//! - [`message`]: the JSON messages on the topics.
//! - [`kafka`]: clients configured for at-least-once delivery; topic creation.
//! - [`consumer`]: the consumer loop shared by the worker and the graph writer, built on
//!   [`commit`] (in-order commit tracking, a pure state machine) and [`publish`]
//!   (acknowledged, bounded publishing).
//! - [`store`]: per-crawl dedupe by shortest path, progress counters and state in Redis.
//! - [`crawl`], [`crawl_limits`]: the crawl rules; [`openlibrary`]: Open Library's JSON
//!   shapes parsed into node properties and links.
//! - [`fetch`], [`egress`], [`robots`]: the polite Open Library client, its egress pool with
//!   per-IP rate limits, and robots.txt.
//! - [`worker`]: the worker's handler and start-up.
//! - [`graph`], [`migrate`], [`graph_writer`]: batched, idempotent Neo4j writes, the graph's
//!   schema, and the graph writer's handler and start-up.
//! - [`api`]: the HTTP API that creates, watches and cancels crawls; [`summary`]: what a
//!   crawl left behind.
//! - [`metrics`], [`health`], [`telemetry`], [`shutdown`], [`runtime`]: what an operator
//!   sees, how a process starts, and how it stops.
//! - [`sim`]: `bookworm sim`, the Open Library simulator for tests, benchmarks and demos.
//! - [`ops`]: the operator commands (`bookworm seed`, `status`, `dlq`, `graph`).
//! - [`bench`]: `bookworm bench`, the end-to-end capacity benchmark behind `docs/performance.md`.

pub mod api;
pub mod bench;
pub mod config;
pub mod consumer;
pub mod crawl;
pub mod graph;
pub mod kafka;
pub mod message;
pub mod ops;
pub mod process;
pub mod sim;
