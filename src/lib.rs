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
//! - [`kafka`]: clients configured for at-least-once delivery; topic creation.
//! - [`graph`]: batched, idempotent writes of nodes and edges into Neo4j; [`migrate`]: its schema.
//! - [`metrics`], [`health`], [`telemetry`]: what an operator sees.

pub mod config;
pub mod graph;
// The graph writer's handler is written against the consumer core (src/consumer.rs,
// src/publish.rs); the gate goes when that core is merged next to it.
#[cfg(feature = "consumer-core")]
pub mod graph_writer;
pub mod health;
pub mod kafka;
pub mod message;
pub mod metrics;
pub mod migrate;
pub mod telemetry;
