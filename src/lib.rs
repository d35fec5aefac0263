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
//! Layout, in data-flow order:
//! - [`config`]: every setting as a flag and an environment variable.
//! - [`message`]: the JSON messages on the topics.
//! - [`openlibrary`]: Open Library's JSON shapes parsed into node properties and links.
//! - [`kafka`]: clients configured for at-least-once delivery; topic creation.
//! - [`store`]: per-crawl dedupe, progress counters and state in Redis.
//! - [`api`]: the HTTP API that creates, watches and cancels crawls.
//! - [`fetch`], [`egress`], [`robots`]: the polite Open Library client, its egress pool and
//!   rate limits, and robots.txt.
//! - [`crawl_limits`]: how far and wide a crawl expands (shared by crawl and simulator).
//! - [`graph`]: batched, idempotent writes of nodes and edges into Neo4j; [`migrate`]: its schema.
//! - [`consumer`]: the consumer loop shared by the worker and the graph writer, built on
//!   [`commit`] (in-order commit tracking) and [`publish`] (acknowledged, bounded publishing).
//! - [`metrics`], [`health`], [`telemetry`]: what an operator sees.
//! - [`sim`]: `bookworm sim`, the Open Library simulator for tests, benchmarks and demos.
//! - [`bench`]: `bookworm bench`, the end-to-end capacity benchmark behind `docs/performance.md`.

pub mod api;
pub mod bench;
pub mod commit;
pub mod config;
pub mod consumer;
pub mod crawl;
pub mod crawl_limits;
pub mod egress;
pub mod fetch;
pub mod graph;
pub mod graph_writer;
pub mod health;
pub mod kafka;
pub mod message;
pub mod metrics;
pub mod migrate;
pub mod openlibrary;
pub mod publish;
pub mod robots;
pub mod shutdown;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod worker;
