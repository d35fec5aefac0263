//! `bookworm`: the operator tool. Parses the command line and runs one command of the
//! library ([`bookworm::ops::commands`], or a service); exit code 2 for bad input.

use std::process::ExitCode;

use anyhow::Context;
use bookworm::api::service::ServeError;
use bookworm::config::ops::{
    CrawlsCommand, DlqCommand, MigrateArgs, NeighbourhoodArgs, SeedArgs, StatusArgs, SummaryArgs,
    TopicsCommand, UnblockArgs,
};
use bookworm::config::{LogArgs, ServeArgs};
use bookworm::ops::commands::{self, UsageError};
use bookworm::ops::crawls::CrawlsError;
use bookworm::process::{runtime, shutdown, telemetry};
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
    Serve(Box<ServeArgs>),
    /// Manage the Kafka topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Print what a crawl left behind: its counters and the graph it built.
    Summary(SummaryArgs),
    /// Serve a simulated Open Library (tests, benchmarks, the offline demo); `sim dump`
    /// writes its catalogue as Open Library dump files instead.
    Sim(SimCli),
    /// Apply the graph's schema migrations that are not applied yet (safe to run while graph
    /// writers start: one process applies, the others wait).
    Migrate(MigrateArgs),
    /// Benchmark the whole system end to end over a grid of settings and write the CSV,
    /// plots and docs/performance.md (needs the stack: `eval "$(scripts/stack.sh env)"`).
    Bench(bookworm::bench::BenchArgs),
    /// Scale points: one crawl each of 10 k, 100 k and 1 M nodes, and what each component
    /// pays per node (Redis, Neo4j, Kafka bytes; CPU; peak memory); writes docs/perf/scale.*.
    BenchScale(bookworm::bench::scale::ScaleArgs),
    /// Start a crawl through the HTTP API; prints only the crawl id on stdout.
    Seed(SeedArgs),
    /// Show a crawl's status; with --watch, follow it until it is done or cancelled.
    Status(StatusArgs),
    /// List, pause, resume and delete crawls through the HTTP API.
    #[command(subcommand)]
    Crawls(CrawlsCommand),
    /// Look at and replay the crawl dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Print the neighbourhood of a node of the graph as Graphviz DOT or JSON.
    Graph(NeighbourhoodArgs),
    /// Load Open Library dump files into the graph: publish each record's node and
    /// relationships as a crawl would, for the graph writers to write (resumable, shardable).
    Import(bookworm::config::import::ImportArgs),
    /// Follow Open Library's change feed (a long-running service): every changed record whose
    /// revision is newer than the graph's is refreshed through a freshness crawl.
    Follow(Box<bookworm::config::follow::FollowArgs>),
    /// Lift Open Library's User-Agent block: every worker sends again (within a second), and
    /// blocked crawls go on where they stopped. Run it once the cause is fixed.
    Unblock(UnblockArgs),
}

/// `bookworm sim [dump]`: serve, unless a subcommand says otherwise.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct SimCli {
    #[command(subcommand)]
    command: Option<bookworm::sim::dump::SimCommand>,
    #[command(flatten)]
    args: bookworm::sim::SimArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match runtime::start() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        telemetry::init(cli.log.log_format);
        match run(cli.command).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                // A seed the API refused, or an API that may not serve as configured, is the
                // operator's input, like a bad flag: exit 2.
                let usage = e.downcast_ref::<UsageError>().is_some()
                    || matches!(e.downcast_ref(), Some(CrawlsError::Rejected { .. }))
                    || matches!(e.downcast_ref(), Some(ServeError::Auth(_)));
                if usage {
                    ExitCode::from(2)
                } else {
                    ExitCode::FAILURE
                }
            }
        }
    })
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            Ok(bookworm::api::service::run(*args, shutdown::on_signal()).await?)
        }
        Command::Topics(TopicsCommand::Create(args)) => commands::create_all_topics(args).await,
        Command::Summary(args) => commands::summary(args).await,
        Command::Sim(SimCli {
            command: Some(bookworm::sim::dump::SimCommand::Dump(args)),
            ..
        }) => {
            let summary = tokio::task::spawn_blocking(move || bookworm::sim::dump::run(&args))
                .await
                .context("the dump task")?
                .context("writing the dump")?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(())
        }
        Command::Sim(SimCli { args, .. }) => bookworm::sim::serve(args, shutdown::on_signal())
            .await
            .context("running the simulator"),
        Command::Migrate(args) => commands::migrate(args).await,
        Command::Bench(args) => commands::bench(args).await,
        Command::BenchScale(args) => commands::bench_scale(args).await,
        Command::Seed(args) => commands::seed(args).await,
        Command::Status(args) => commands::status(args).await,
        Command::Crawls(CrawlsCommand::List(args)) => commands::crawls_list(args).await,
        Command::Crawls(CrawlsCommand::Pause(args)) => {
            commands::crawls_pause_or_resume(args, false).await
        }
        Command::Crawls(CrawlsCommand::Resume(args)) => {
            commands::crawls_pause_or_resume(args, true).await
        }
        Command::Crawls(CrawlsCommand::Delete(args)) => commands::crawls_delete(args).await,
        Command::Dlq(DlqCommand::List(args)) => commands::dlq_list(args).await,
        Command::Dlq(DlqCommand::Replay(args)) => commands::dlq_replay(args).await,
        Command::Graph(args) => commands::graph(args).await,
        Command::Unblock(args) => commands::unblock(args).await,
        Command::Follow(args) => bookworm::follow::service::run(*args, shutdown::on_signal())
            .await
            .context("following the change feed"),
        Command::Import(args) => {
            let summary = bookworm::import::service::run(args, shutdown::on_signal()).await?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(())
        }
    }
}
