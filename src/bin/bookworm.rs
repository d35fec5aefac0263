//! `bookworm`: the operator tool.

use std::process::ExitCode;

use anyhow::Context;
use bookworm::api::{self, ApiArgs, ApiState};
use bookworm::config::{CrawlArgs, KafkaArgs, LogArgs, Neo4jArgs, RedisArgs};
use bookworm::crawl::store::CrawlStore;
use bookworm::kafka::{TopicLayout, create_topics, producer};
use bookworm::message::FailureReason;
use bookworm::ops::crawls::{self, ApiClient, CrawlsError, WatchView};
use bookworm::ops::{dlq, neighbourhood};
use bookworm::process::health::{HealthState, Liveness, Readiness};
use bookworm::process::metrics::ApiMetrics;
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
    /// Print what a crawl left behind: its counters and the graph it built.
    Summary {
        /// The crawl's id.
        crawl_id: String,
        /// Wait up to this long for the graph writers to catch up with the crawl.
        #[arg(long, value_parser = bookworm::config::parse_duration, default_value = "0s")]
        wait: std::time::Duration,
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        neo4j: Neo4jArgs,
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
    /// Start a crawl through the HTTP API; prints only the crawl id on stdout.
    Seed {
        /// Open Library keys or URLs of works, authors or editions, or free text.
        #[arg(required = true)]
        seeds: Vec<String>,
        /// Crawl depth (default: the API's MAX_DEPTH).
        #[arg(long)]
        max_depth: Option<u32>,
        /// Budget of fetched nodes (default: the API's MAX_NODES).
        #[arg(long, value_parser = bookworm::config::parse_positive)]
        max_nodes: Option<usize>,
        #[command(flatten)]
        api: ApiUrl,
    },
    /// Show a crawl's status; with --watch, follow it until it is done or cancelled.
    Status {
        /// The crawl id `bookworm seed` printed.
        crawl_id: String,
        /// Follow the crawl: live on a terminal, one line every 5 s otherwise.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        api: ApiUrl,
    },
    /// Look at and replay the crawl dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Print the neighbourhood of a node of the graph as Graphviz DOT or JSON.
    Graph {
        /// The node's Open Library key (`/works/OL…W`, `/authors/OL…A`, `/subjects/…`).
        key: String,
        /// Hops from the node, in either direction.
        #[arg(long, default_value = "1")]
        depth: u32,
        /// Output format.
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
        #[command(flatten)]
        neo4j: Neo4jArgs,
    },
}

/// Where the HTTP API is.
#[derive(clap::Args, Debug)]
struct ApiUrl {
    /// Base URL of `bookworm serve`.
    #[arg(
        long = "api",
        env = "BOOKWORM_API",
        default_value = "http://127.0.0.1:8080"
    )]
    url: url::Url,
}

/// Which DLQ records a command takes.
#[derive(clap::Args, Debug)]
struct DlqSelect {
    /// Only failures with this reason (http_4xx, http_5xx, timeout, rate_limited, parse,
    /// robots, invalid_job, publish).
    #[arg(long, value_parser = parse_reason)]
    reason: Option<FailureReason>,
    /// Only failures of this crawl.
    #[arg(long = "crawl")]
    crawl_id: Option<String>,
    #[command(flatten)]
    kafka: KafkaArgs,
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// Print the DLQ's failures, one a line: crawl, key, reason, attempts, detail.
    List {
        #[command(flatten)]
        select: DlqSelect,
        /// Print at most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Put the matching dead-lettered jobs back on the frontier; a record is replayed once,
    /// however often this runs.
    Replay {
        #[command(flatten)]
        select: DlqSelect,
        #[command(flatten)]
        redis: RedisArgs,
    },
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum GraphFormat {
    /// Graphviz (`| dot -Tsvg > graph.svg`).
    Dot,
    /// `{nodes: [...], relationships: [...]}`.
    Json,
}

fn parse_reason(text: &str) -> Result<FailureReason, String> {
    FailureReason::parse(text).ok_or_else(|| {
        let all: Vec<_> = FailureReason::ALL.iter().map(|r| r.as_str()).collect();
        format!("expected one of {}", all.join(", "))
    })
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
                // A seed the API refused is the operator's input, like a bad flag: exit 2.
                match e.downcast_ref::<CrawlsError>() {
                    Some(CrawlsError::Rejected { .. }) => ExitCode::from(2),
                    _ => ExitCode::FAILURE,
                }
            }
        }
    })
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            api,
            kafka,
            redis,
            crawl,
        } => serve(api, kafka, redis, crawl).await,
        Command::Summary {
            crawl_id,
            wait,
            redis,
            neo4j,
        } => {
            let store = CrawlStore::connect(&redis.redis_url)
                .await
                .with_context(|| format!("connecting to Redis at {}", redis.redis_url))?;
            let graph = bookworm::graph::GraphStore::connect(&neo4j)
                .await
                .context("connecting to Neo4j")?;
            let summary =
                bookworm::ops::summary::wait_for_graph(&store, &graph, &crawl_id, wait).await?;
            println!("{summary}");
            if !summary.graph_caught_up() {
                anyhow::bail!("the graph has not caught up with the crawl's counters yet");
            }
            Ok(())
        }
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
            let report = bookworm::graph::migrate::migrate(
                &store,
                bookworm::graph::migrate::MIGRATIONS,
                &bookworm::graph::migrate::MigrateOptions::default(),
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
        Command::Seed {
            seeds,
            max_depth,
            max_nodes,
            api,
        } => {
            let status = ApiClient::new(api.url)?
                .create(&seeds, max_depth, max_nodes)
                .await?;
            eprintln!(
                "crawl created: {} seed(s), depth {}, budget {} nodes",
                status.seeds.len(),
                status.max_depth,
                status.max_nodes
            );
            println!("{}", status.crawl_id);
            Ok(())
        }
        Command::Status {
            crawl_id,
            watch,
            api,
        } => {
            let client = ApiClient::new(api.url)?;
            let status = if watch {
                crawls::watch(
                    &client,
                    &crawl_id,
                    WatchView::for_stdout(),
                    crawls::POLL_INTERVAL,
                )
                .await?
            } else {
                client.status(&crawl_id).await?
            };
            print!("{}", crawls::render_status(&status));
            Ok(())
        }
        Command::Dlq {
            command: DlqCommand::List { select, limit },
        } => {
            let scan = dlq::scan(
                &select.kafka,
                &select.kafka.kafka_dlq_topic,
                &select.filter(),
                limit,
            )
            .await?;
            for record in &scan.records {
                println!("{}", dlq::render_line(record));
            }
            eprintln!(
                "{} of {} DLQ record(s) shown{}",
                scan.records.len(),
                scan.read,
                undecodable_note(scan.undecodable)
            );
            Ok(())
        }
        Command::Dlq {
            command: DlqCommand::Replay { select, redis },
        } => {
            let scan = dlq::scan(
                &select.kafka,
                &select.kafka.kafka_dlq_topic,
                &select.filter(),
                None,
            )
            .await?;
            let replayer =
                dlq::Replayer::new(&select.kafka, &redis.redis_url, dlq::REPLAY_PUBLISH_TIMEOUT)
                    .await?;
            let report = replayer.replay(&scan.records).await?;
            println!(
                "replayed {} job(s) from {} matching DLQ record(s){}",
                report.published,
                scan.records.len(),
                undecodable_note(scan.undecodable)
            );
            for (why, count) in &report.not_replayed {
                println!("not replayed ({why:?}): {count}");
            }
            Ok(())
        }
        Command::Graph {
            key,
            depth,
            format,
            neo4j,
        } => {
            let store = bookworm::graph::GraphStore::connect(&neo4j).await?;
            let view = neighbourhood::read(&store, &key, depth).await?;
            match format {
                GraphFormat::Dot => print!("{}", neighbourhood::to_dot(&view)),
                GraphFormat::Json => println!("{}", serde_json::to_string_pretty(&view)?),
            }
            if view.truncated {
                eprintln!(
                    "truncated at {} relationships",
                    neighbourhood::MAX_RELATIONSHIPS
                );
            }
            Ok(())
        }
    }
}

impl DlqSelect {
    fn filter(&self) -> dlq::DlqFilter {
        dlq::DlqFilter {
            reason: self.reason,
            crawl_id: self.crawl_id.clone(),
        }
    }
}

fn undecodable_note(undecodable: u64) -> String {
    if undecodable == 0 {
        String::new()
    } else {
        format!(" ({undecodable} undecodable record(s) skipped)")
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
