//! One function per `bookworm` subcommand: what it does and what it prints. The binary
//! parses the flags and calls one of these; errors carry their context for the terminal.

use anyhow::Context;

use crate::config::ops::{
    CrawlIdArgs, CrawlsDeleteArgs, CrawlsListArgs, CreateTopicsArgs, DlqListArgs, DlqReplayArgs,
    DlqSelect, GraphFormat, MigrateArgs, NeighbourhoodArgs, SeedArgs, StateFilter, StatusArgs,
    SummaryArgs, UnblockArgs,
};
use crate::crawl::client::block;
use crate::crawl::store::{CrawlState, CrawlStore};
use crate::graph::GraphStore;
use crate::graph::migrate::{self, MigrateOptions};
use crate::kafka::{TopicLayout, create_topics};
use crate::message::FailureReason;
use crate::ops::crawls::{self, ApiClient, WatchView};
use crate::ops::dlq_reader::StreamEnd;
use crate::ops::{dlq, graph_dlq, lifecycle, neighbourhood, summary};

/// A command's input is wrong in a way its flags' parsers could not see: like a bad flag, it
/// exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `bookworm summary`: what a crawl left behind, once the graph has caught up (or `--wait`
/// passed).
pub async fn summary(args: SummaryArgs) -> anyhow::Result<()> {
    let store = CrawlStore::connect(&args.redis)
        .await
        .with_context(|| format!("connecting to Redis at {}", args.redis.redis_url))?;
    let graph = GraphStore::connect(&args.neo4j)
        .await
        .context("connecting to Neo4j")?;
    let summary = summary::wait_for_graph(&store, &graph, &args.crawl_id, args.wait).await?;
    println!("{summary}");
    if !summary.graph_caught_up() {
        anyhow::bail!("the graph has not caught up with the crawl's counters yet");
    }
    Ok(())
}

/// `bookworm topics create`: every topic, idempotently; prints each with `created` or `exists`.
pub async fn create_all_topics(args: CreateTopicsArgs) -> anyhow::Result<()> {
    let topics = args.kafka.all_topics();
    let created = create_topics(
        &args.kafka.brokers,
        &topics,
        TopicLayout {
            partitions: args.partitions,
            replication: args.replication,
        },
    )
    .await
    .context("creating topics")?;
    for topic in topics {
        let state = if created.iter().any(|c| c == topic) {
            "created"
        } else {
            "exists"
        };
        println!("{topic}\t{state}");
    }
    Ok(())
}

/// `bookworm migrate`: the graph's schema migrations not applied yet.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let store = GraphStore::connect(&args.neo4j).await?;
    let report = migrate::migrate(&store, migrate::MIGRATIONS, &MigrateOptions::default())
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

/// `bookworm seed`: starts a crawl through the API; prints only its id on stdout.
pub async fn seed(args: SeedArgs) -> anyhow::Result<()> {
    let status = ApiClient::with_token(args.api.url, args.api.token.as_deref())?
        .create(&args.seeds, args.max_depth, args.max_nodes)
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

/// `bookworm status [--watch]`.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = ApiClient::with_token(args.api.url, args.api.token.as_deref())?;
    let status = if args.watch {
        crawls::watch(
            &client,
            &args.crawl_id,
            WatchView::for_stdout(),
            crawls::POLL_INTERVAL,
        )
        .await?
    } else {
        client.status(&args.crawl_id).await?
    };
    print!("{}", crawls::render_status(&status));
    Ok(())
}

/// `bookworm dlq list`: the DLQ's failures, one a line.
pub async fn dlq_list(args: DlqListArgs) -> anyhow::Result<()> {
    let select = &args.select;
    let scan = dlq::scan(
        &select.kafka,
        &select.kafka.kafka_dlq_topic,
        &filter(select)?,
        args.limit,
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

/// `bookworm dlq replay`: the matching jobs back on the frontier, each record once; with
/// `--graph`, the graph DLQ's rows back on the results and edges topics.
pub async fn dlq_replay(args: DlqReplayArgs) -> anyhow::Result<()> {
    if args.graph {
        return graph_dlq_replay(args).await;
    }
    let select = &args.select;
    let filter = filter(select)?;
    let replayer =
        dlq::Replayer::new(&select.kafka, &args.redis, dlq::REPLAY_PUBLISH_TIMEOUT).await?;
    let stream = dlq::stream(&select.kafka, &select.kafka.kafka_dlq_topic, &filter);
    let (report, read) = replayer.replay(stream).await?;
    print_replay("job(s)", "DLQ", &report, &read);
    Ok(())
}

/// `bookworm dlq replay --graph`: rows the graph writer dead-lettered back on the topics they
/// came from (a row parked by a Neo4j outage before the writer retried them, or refused by a
/// bug since fixed), each record once.
async fn graph_dlq_replay(args: DlqReplayArgs) -> anyhow::Result<()> {
    let select = &args.select;
    let filter = graph_dlq::GraphDlqFilter {
        reason: select.reason.clone(),
        crawl_id: select.crawl_id.clone(),
    };
    let replayer =
        graph_dlq::GraphReplayer::new(&select.kafka, &args.redis, dlq::REPLAY_PUBLISH_TIMEOUT)
            .await?;
    let stream = graph_dlq::stream_graph(&select.kafka, &filter);
    let (report, read) = replayer.replay(stream).await?;
    print_replay("row(s)", "graph DLQ", &report, &read);
    Ok(())
}

/// What a replay did, for the terminal: what it republished of how many matching records,
/// and why the rest were not.
fn print_replay(what: &str, dlq: &str, report: &dlq::ReplayReport, read: &StreamEnd) {
    println!(
        "replayed {} {what} from {} matching {dlq} record(s){}",
        report.published,
        read.matching,
        undecodable_note(read.undecodable)
    );
    for (why, count) in &report.not_replayed {
        println!("not replayed ({why:?}): {count}");
    }
}

/// `bookworm graph`: the neighbourhood of one node as DOT or JSON.
pub async fn graph(args: NeighbourhoodArgs) -> anyhow::Result<()> {
    let store = GraphStore::connect(&args.neo4j).await?;
    let view = neighbourhood::read(&store, &args.key, args.depth).await?;
    match args.format {
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

/// The records `select` asks for; an unknown `--reason` is a usage error.
fn filter(select: &DlqSelect) -> Result<dlq::DlqFilter, UsageError> {
    let reason = match &select.reason {
        None => None,
        Some(text) => Some(FailureReason::parse(text).ok_or_else(|| {
            let all: Vec<_> = FailureReason::ALL.iter().map(|r| r.as_str()).collect();
            UsageError(format!(
                "invalid value '{text}' for '--reason': expected one of {}",
                all.join(", ")
            ))
        })?),
    };
    Ok(dlq::DlqFilter {
        reason,
        crawl_id: select.crawl_id.clone(),
    })
}

fn undecodable_note(undecodable: u64) -> String {
    if undecodable == 0 {
        String::new()
    } else {
        format!(" ({undecodable} undecodable record(s) skipped)")
    }
}

/// The command line a report quotes as the one that produced it.
fn command_line() -> String {
    std::iter::once("target/release/bookworm".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `bookworm bench`: the grid, its CSV, plots and report; fails if any point failed.
pub async fn bench(args: crate::bench::BenchArgs) -> anyhow::Result<()> {
    let rows = crate::bench::run(args, command_line())
        .await
        .context("running the benchmark")?;
    let failed = rows.iter().filter(|r| !r.error.is_empty()).count();
    anyhow::ensure!(failed == 0, "{failed} grid point(s) failed; see the report");
    Ok(())
}

/// `bookworm bench-scale`: the scale points and their report; fails if any point failed.
pub async fn bench_scale(args: crate::bench::scale::ScaleArgs) -> anyhow::Result<()> {
    let rows = crate::bench::scale::run(args, command_line())
        .await
        .context("running the scale points")?;
    let failed = rows.iter().filter(|r| !r.error.is_empty()).count();
    anyhow::ensure!(
        failed == 0,
        "{failed} scale point(s) failed; see docs/perf/scale.md"
    );
    Ok(())
}

/// `bookworm unblock`: lifts the User-Agent block for every worker sharing the prefix.
pub async fn unblock(args: UnblockArgs) -> anyhow::Result<()> {
    let store = CrawlStore::connect(&args.redis)
        .await
        .context("connecting to Redis")?;
    let mut redis = store.connection();
    let prefix = &args.egress_state.egress_redis_prefix;
    match block::unblock(&mut redis, prefix)
        .await
        .context("lifting the User-Agent block")?
    {
        Some(record) => println!(
            "lifted the block of {:?} set at {} ({}); workers send again within {:?}",
            record.user_agent,
            record.since.to_rfc3339(),
            record.detail,
            block::REFRESH
        ),
        None => println!("no User-Agent block is in force under {prefix}"),
    }
    Ok(())
}

/// `bookworm crawls list`: a page of crawls, one a line.
pub async fn crawls_list(args: CrawlsListArgs) -> anyhow::Result<()> {
    let client = ApiClient::with_token(args.api.url, args.api.token.as_deref())?;
    let state = args.state.map(|s| match s {
        StateFilter::Running => CrawlState::Running,
        StateFilter::Paused => CrawlState::Paused,
        StateFilter::Blocked => CrawlState::Blocked,
        StateFilter::Done => CrawlState::Done,
        StateFilter::Cancelled => CrawlState::Cancelled,
    });
    let page = client
        .list(state, args.limit, args.after.as_deref())
        .await?;
    print!("{}", lifecycle::render_list(&page));
    Ok(())
}

/// `bookworm crawls pause|resume`: the crawl's status afterwards.
pub async fn crawls_pause_or_resume(args: CrawlIdArgs, resume: bool) -> anyhow::Result<()> {
    let client = ApiClient::with_token(args.api.url, args.api.token.as_deref())?;
    let status = if resume {
        client.resume(&args.crawl_id).await?
    } else {
        client.pause(&args.crawl_id).await?
    };
    print!("{}", crawls::render_status(&status));
    Ok(())
}

/// `bookworm crawls delete [--force]`.
pub async fn crawls_delete(args: CrawlsDeleteArgs) -> anyhow::Result<()> {
    let client = ApiClient::with_token(args.api.url, args.api.token.as_deref())?;
    client.delete(&args.crawl_id, args.force).await?;
    println!("deleted crawl {}", args.crawl_id);
    Ok(())
}
