//! `worker`: consumes crawl jobs from the frontier, fetches Open Library politely through
//! the egress pool, and publishes nodes, edges, new jobs and failures.

use std::process::ExitCode;

use bookworm::config::WorkerArgs;
use bookworm::crawl::service as worker;
use bookworm::process::{runtime, shutdown, telemetry};
use clap::{CommandFactory, Parser};

/// Crawl Open Library: one of many workers sharing the frontier topic.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    args: WorkerArgs,
}

fn main() -> ExitCode {
    let Cli { args } = Cli::parse();
    if let Err(rule) = args.egress.check_openlibrary_rules() {
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, rule)
            .exit();
    }
    let runtime = match runtime::start() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("worker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        telemetry::init(args.log.log_format);
        match worker::run(args, shutdown::on_signal()).await {
            Ok(()) => {
                tracing::info!("worker stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "worker failed");
                eprintln!("worker: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}
