//! The settings of `bookworm import`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::parse::{parse_duration, parse_positive};
use super::{KafkaArgs, defaults};

/// One importer's share of the records: `index` of `count` (`--shard 0/4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This importer's share, from 0.
    pub index: u64,
    /// How many importers share the files.
    pub count: u64,
}

/// Parses `I/N` with `0 <= I < N`.
pub fn parse_shard(text: &str) -> Result<Shard, String> {
    let bad = || format!("{text:?} is not a shard I/N with 0 <= I < N (e.g. 0/1)");
    let (index, count) = text.split_once('/').ok_or_else(bad)?;
    let index: u64 = index.trim().parse().map_err(|_| bad())?;
    let count: u64 = count.trim().parse().map_err(|_| bad())?;
    if count == 0 || index >= count {
        return Err(bad());
    }
    Ok(Shard { index, count })
}

/// `bookworm import FILE...`.
#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// Open Library dump files (`ol_dump_*.txt.gz`, gzipped or not), imported in order.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    /// Where to keep the checkpoint (per file, the last line whose records Kafka
    /// acknowledged); an import started again with the same file skips what it holds.
    /// Without it an import always starts at the first line.
    #[arg(long, env = "IMPORT_CHECKPOINT")]
    pub checkpoint: Option<PathBuf>,
    /// This importer's share of the records, `I/N`: a record belongs to the importer whose
    /// index is the hash of its key modulo N, so N importers on the same files split them
    /// without overlap.
    #[arg(long, env = "IMPORT_SHARD", default_value = "0/1", value_parser = parse_shard)]
    pub shard: Shard,
    /// The crawl id the imported nodes and relationships carry; default `import:<date>`,
    /// the date taken from the dump file's name (`ol_dump_works_2021-04-30.txt.gz`).
    #[arg(long, env = "IMPORT_CRAWL_ID")]
    pub crawl_id: Option<String>,
    /// Dump lines per publish: one batch of records is acknowledged (and checkpointed) at a
    /// time.
    #[arg(long, env = "IMPORT_BATCH_LINES", default_value = "2000", value_parser = parse_positive)]
    pub batch_lines: usize,
    /// Batches published at once: what bounds the importer's memory (batch × in flight
    /// lines) while keeping the brokers busy.
    #[arg(long, env = "IMPORT_IN_FLIGHT", default_value = "4", value_parser = parse_positive)]
    pub in_flight: usize,
    /// Bound on one batch's publish; a batch past it is sent again (twice more), then the
    /// import stops with its checkpoint at the last acknowledged batch.
    #[arg(long, env = "PUBLISH_TIMEOUT", default_value = "90s", value_parser = parse_duration)]
    pub publish_timeout: Duration,
    /// Subjects of one work turned into `ABOUT` relationships, as a crawl's
    /// `MAX_SUBJECTS_PER_NODE`.
    #[arg(long, env = "MAX_SUBJECTS_PER_NODE", default_value_t = defaults::MAX_SUBJECTS_PER_NODE)]
    pub max_subjects_per_node: usize,
    /// Stop after this many lines past the checkpoint (a trial run; the checkpoint then
    /// resumes the rest). Unlimited by default.
    #[arg(long, env = "IMPORT_MAX_LINES")]
    pub max_lines: Option<u64>,
    /// How often a progress line is printed to stderr when it is not a terminal (a terminal
    /// gets a progress bar).
    #[arg(long, env = "IMPORT_PROGRESS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub progress_interval: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_an_index_below_a_count() {
        assert_eq!(parse_shard("1/4"), Ok(Shard { index: 1, count: 4 }));
        for bad in ["4/4", "0/0", "1", "a/2", "-1/2"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }
}
