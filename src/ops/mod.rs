//! The operator commands of `bookworm`: what a person runs against a deployment besides
//! serving it. The binary only parses flags and maps outcomes to exit codes; the logic lives
//! here so tests can drive it and the commands stay thin.
//!
//! - [`crawls`]: `bookworm seed` and `bookworm status [--watch]`, a client of the HTTP API
//!   (so validation, id generation and the create order stay in one place, the API);
//! - [`dlq`]: `bookworm dlq list|replay`, reading the crawl DLQ topic up to its end and
//!   putting dead-lettered jobs back on the frontier exactly once; [`graph_dlq`]: the same
//!   for the graph DLQ's rows (`bookworm dlq replay --graph`); [`dlq_reader`]: how both are
//!   read, whole or streamed;
//! - [`neighbourhood`]: `bookworm graph`, a bounded neighbourhood of one node in Neo4j as
//!   Graphviz DOT or JSON.

pub mod commands;
pub mod crawls;
pub mod dlq;
pub mod dlq_reader;
pub mod graph_dlq;
pub mod lifecycle;
pub mod neighbourhood;
pub mod summary;
