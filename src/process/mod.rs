//! What every process of the system shares: how it starts, how it stops, and what an
//! operator sees of it.

pub mod boot;
pub mod health;
pub mod metrics;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
