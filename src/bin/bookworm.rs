//! `bookworm`: the operator tool.

use std::process::ExitCode;

use anyhow::Context;
use bookworm::config::{KafkaArgs, LogArgs, Neo4jArgs};
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
    /// Apply the graph's schema migrations that are not applied yet (safe to run while graph
    /// writers start: one process applies, the others wait).
    Migrate {
        #[command(flatten)]
        neo4j: Neo4jArgs,
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
        Command::Migrate { neo4j } => {
            let store = bookworm::graph::GraphStore::connect(&neo4j).await?;
            let report = bookworm::migrate::migrate(
                &store,
                bookworm::migrate::MIGRATIONS,
                &bookworm::migrate::MigrateOptions::default(),
            )
            .await
            .context("migrating the graph")?;
            for version in report.already {
                println!("{version:04}\talready applied");
            }
            for version in report.applied {
                println!("{version:04}\tapplied");
            }
            Ok(())
        }
    }
}
