//! `graph-writer`: consumes nodes and edges and writes them to Neo4j in batched,
//! idempotent transactions.

use std::process::ExitCode;

use bookworm::config::GraphWriterArgs;
use bookworm::graph::service as graph_writer;
use bookworm::process::{runtime, shutdown, telemetry};
use clap::Parser;

/// Write the crawled graph into Neo4j: one of many graph writers sharing the topics.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    args: GraphWriterArgs,
}

fn main() -> ExitCode {
    let Cli { args } = Cli::parse();
    let runtime = match runtime::start() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("graph-writer: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        telemetry::init(args.log.log_format);
        match graph_writer::run(args, shutdown::on_signal()).await {
            Ok(()) => {
                tracing::info!("graph writer stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "graph writer failed");
                eprintln!("graph-writer: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}
