//! The crawl pipeline: what a worker does with one crawl job.

pub mod client;
mod failure;
pub mod fairness;
pub mod handler;
pub mod limits;
pub mod parse;
pub mod rules;
pub mod service;
pub mod store;
