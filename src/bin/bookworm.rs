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
