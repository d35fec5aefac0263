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
//! - [`consumer`]: the consumer loop shared by the worker and the graph writer, built on
//!   [`commit`] (in-order commit tracking) and [`publish`] (acknowledged, bounded publishing).
//! - [`metrics`], [`health`], [`telemetry`]: what an operator sees.

pub mod commit;
pub mod config;
pub mod consumer;
pub mod health;
pub mod kafka;
pub mod message;
pub mod metrics;
pub mod publish;
pub mod telemetry;
