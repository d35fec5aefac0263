//! `bookworm`: the operator tool.

use std::process::ExitCode;

use anyhow::Context;
use bookworm::api::{self, ApiArgs, ApiState};
use bookworm::config::{CrawlArgs, KafkaArgs, LogArgs, Neo4jArgs, RedisArgs};
use bookworm::health::{HealthState, Liveness, Readiness};
use bookworm::kafka::{TopicLayout, create_topics, producer};
use bookworm::metrics::ApiMetrics;
use bookworm::store::CrawlStore;
use bookworm::{shutdown, telemetry};
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
    /// Serve the HTTP API: create, watch and cancel crawls.
    Serve {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        crawl: CrawlArgs,
    },
    /// Manage the Kafka topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Serve a simulated Open Library (tests, benchmarks, the offline demo).
    Sim(bookworm::sim::SimArgs),
    /// Apply the graph's schema migrations that are not applied yet (safe to run while graph
    /// writers start: one process applies, the others wait).
    Migrate {
        #[command(flatten)]
        neo4j: Neo4jArgs,
    },
    /// Benchmark the whole system end to end over a grid of settings and write the CSV,
    /// plots and docs/performance.md (needs the stack: `eval "$(scripts/stack.sh env)"`).
    Bench(bookworm::bench::BenchArgs),
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
        Command::Serve {
            api,
            kafka,
            redis,
            crawl,
        } => serve(api, kafka, redis, crawl).await,
        Command::Sim(args) => bookworm::sim::serve(args, shutdown::on_signal())
            .await
            .context("running the simulator"),
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
        Command::Bench(args) => {
            // The report quotes the command that produced it.
            let command_line = std::iter::once("target/release/bookworm".to_owned())
                .chain(std::env::args().skip(1))
                .collect::<Vec<_>>()
                .join(" ");
            let rows = bookworm::bench::run(args, command_line)
                .await
                .context("running the benchmark")?;
            let failed = rows.iter().filter(|r| !r.error.is_empty()).count();
            anyhow::ensure!(failed == 0, "{failed} grid point(s) failed; see the report");
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

async fn serve(
    args: ApiArgs,
    kafka: KafkaArgs,
    redis: RedisArgs,
    crawl: CrawlArgs,
) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let metrics = ApiMetrics::register(&registry)?;
    let store = CrawlStore::connect(&redis.redis_url)
        .await
        .with_context(|| format!("connecting to Redis at {}", redis.redis_url))?;
    let producer = producer(&kafka, std::time::Duration::from_secs(30))
        .context("creating the Kafka producer")?;
    let readiness = Readiness::with_conditions(&["redis"]);
    let health = HealthState {
        registry,
        liveness: Liveness::always(),
        readiness: readiness.clone(),
    };
    let state = ApiState::new(
        store.clone(),
        producer,
        &kafka,
        crawl,
        args.openlibrary_base_url.clone(),
        metrics,
    );
    let listener = api::bind(args.api_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "API listening");
    let token = shutdown::on_signal();
    tokio::spawn(async move {
        // Readiness follows Redis: without it the API can neither create nor show crawls.
        loop {
            readiness.set("redis", store.ping().await.is_ok());
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                _ = token.cancelled() => break,
            }
        }
    });
    api::serve(listener, state, health, shutdown::on_signal()).await?;
    Ok(())
}
