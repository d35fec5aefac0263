//! `worker`: wired to the consumer core in a later change.

use clap::Parser;

/// Placeholder until the consumer core lands.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    log: bookworm::config::LogArgs,
}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!("worker: not implemented yet");
    std::process::ExitCode::FAILURE
}
