//! `bookworm`: the operator tool.

use std::process::ExitCode;

use anyhow::Context;
use bookworm::config::{KafkaArgs, LogArgs};
use bookworm::kafka::{TopicLayout, create_topics};
use bookworm::telemetry;
use clap::{Parser, Subcommand};

/// Operate a Relentless Bookworm deployment.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage the Kafka topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Serve a simulated Open Library (tests, benchmarks, the offline demo).
    Sim(bookworm::sim::SimArgs),
}

#[derive(Subcommand, Debug)]
enum TopicsCommand {
    /// Create every topic the system uses; existing topics are left as they are.
    Create {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Partitions per topic: the most consumers of one group that can share the work.
        #[arg(long, env = "TOPIC_PARTITIONS", default_value = "12")]
        partitions: i32,
        /// Copies of each partition (3 in production).
        #[arg(long, env = "TOPIC_REPLICATION", default_value = "1")]
        replication: i32,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log.log_format);
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Sim(args) => {
            let shutdown = tokio_util::sync::CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                // Ctrl-C stops the simulator; if the handler cannot be installed it runs until killed.
                if tokio::signal::ctrl_c().await.is_ok() {
                    trigger.cancel();
                }
            });
            bookworm::sim::serve(args, shutdown)
                .await
                .context("running the simulator")
        }
        Command::Topics {
            command:
                TopicsCommand::Create {
                    kafka,
                    partitions,
                    replication,
                },
        } => {
            let created = create_topics(
                &kafka,
                TopicLayout {
                    partitions,
                    replication,
                },
            )
            .await
            .context("creating topics")?;
            for topic in kafka.all_topics() {
                let state = if created.iter().any(|c| c == topic) {
                    "created"
                } else {
                    "exists"
                };
                println!("{topic}\t{state}");
            }
            Ok(())
        }
    }
}
