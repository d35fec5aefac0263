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
//! Layout: the folders are the data flow, and dependencies point one way (binaries →
//! services → pipeline → consumer → kafka → message; `tests/layout.rs` checks it):
//! - [`config`]: every setting, as a clap flag with an environment variable of the same name,
//!   and every value parser; a leaf that imports nothing else of the crate.
//! - [`message`]: the JSON messages on the topics, the only thing the two pipelines share.
//! - [`kafka`]: clients configured for at-least-once delivery, acknowledged publishing,
//!   topic admin.
//! - [`consumer`]: the consumer loop shared by the worker and the graph writer, split by role,
//!   with the pure in-order commit tracker.
//! - [`crawl`]: the crawl pipeline (the worker): start-up, handler, crawl rules, the Redis crawl
//!   state, the polite Open Library client and the response parsers.
//! - [`graph`]: the graph pipeline (the graph writer): start-up, handler, rows, Cypher, batcher,
//!   the Neo4j store and migrations. It never uses [`crawl`], nor [`crawl`] it.
//! - [`import`]: `bookworm import`, Open Library's dumps published as the same node and edge
//!   messages a crawl publishes, through the worker's parser.
//! - [`follow`]: `bookworm follow`, the change-feed follower that keeps the graph fresh by
//!   enqueueing what changed into freshness crawls.
//! - [`api`]: the HTTP API, the third service.
//! - [`backend`]: the one constructor of every Redis client (`rediss://` and its CA file).
//! - [`ops`]: the operator commands of `bookworm`.
//! - [`process`]: how a process starts and stops and what an operator sees of it.
//! - [`sim`]: `bookworm sim`, the Open Library simulator for tests, benchmarks and demos.
//! - [`bench`]: `bookworm bench`, the end-to-end capacity benchmark behind `docs/performance.md`.

pub mod api;
pub mod backend;
pub mod bench;
pub mod config;
pub mod consumer;
pub mod crawl;
pub mod follow;
pub mod graph;
pub mod import;
pub mod kafka;
pub mod message;
pub mod ops;
pub mod process;
pub mod sim;
