//! `bookworm sim dump --out DIR`: the simulator's catalogue written as Open Library's monthly
//! dump files, so `bookworm import` can be tested and measured on data whose truth is known.
//!
//! The real format: gzipped text, one record a line, five tab-separated columns `type`, `key`,
//! `revision`, `last_modified`, JSON (the record exactly as the API returns it, the same
//! bytes the simulator serves). Four files, as Open Library publishes them:
//! `ol_dump_authors_<date>.txt.gz`, `ol_dump_works_<date>.txt.gz`,
//! `ol_dump_editions_<date>.txt.gz`, and the all-types `ol_dump_<date>.txt.gz`, which also
//! holds the redirects and deletes. Import either the all-types file or the three others.
//!
//! Records are rendered one at a time and streamed through the compressors, so the files
//! never sit in memory; the catalogue itself is generated in memory first (it is what makes
//! the data deterministic), about 1 KB per work with its editions.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;

use super::{Catalogue, SimArgs};

/// The subcommands of `bookworm sim` (without one, it serves).
#[derive(Subcommand, Debug, Clone)]
pub enum SimCommand {
    /// Write the catalogue as Open Library dump files (gzipped, tab-separated) and exit.
    Dump(DumpArgs),
}

/// `bookworm sim dump`.
#[derive(Args, Debug, Clone)]
pub struct DumpArgs {
    /// Directory to write the four files into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// The dump's date, in the file names (`YYYY-MM-DD`); later than every record's
    /// `last_modified`.
    #[arg(long, default_value = "2021-03-31", value_parser = parse_date)]
    pub date: String,
    /// The catalogue: the same flags as `bookworm sim` (its serving flags are ignored).
    #[command(flatten)]
    pub sim: SimArgs,
}

fn parse_date(text: &str) -> Result<String, String> {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|_| text.to_owned())
        .map_err(|_| format!("{text:?} is not a date YYYY-MM-DD"))
}

/// Why the dump could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Creating or writing a file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A record could not be rendered (never expected: the catalogue's JSON is built here).
    #[error("rendering a record: {0}")]
    Json(#[from] serde_json::Error),
}

/// What was written: the files and the records per type.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DumpSummary {
    /// The files, all-types file last.
    pub files: Vec<PathBuf>,
    /// Lines of the all-types file.
    pub records: u64,
    /// Author records.
    pub authors: u64,
    /// Work records.
    pub works: u64,
    /// Edition records.
    pub editions: u64,
    /// Redirect records (all-types file only).
    pub redirects: u64,
    /// Delete records (all-types file only).
    pub deletes: u64,
}

struct Out {
    path: PathBuf,
    writer: GzEncoder<BufWriter<File>>,
}

impl Out {
    fn create(path: PathBuf) -> Result<Self, DumpError> {
        let file = File::create(&path).map_err(|source| DumpError::Io {
            path: path.clone(),
            source,
        })?;
        // The fast level: a dump of millions of records is written in seconds, at a size
        // within a few percent of the default level's.
        let writer = GzEncoder::new(BufWriter::new(file), Compression::fast());
        Ok(Out { path, writer })
    }

    fn write(&mut self, line: &[u8]) -> Result<(), DumpError> {
        self.writer.write_all(line).map_err(|source| DumpError::Io {
            path: self.path.clone(),
            source,
        })
    }

    fn finish(self) -> Result<PathBuf, DumpError> {
        let io = |source| DumpError::Io {
            path: self.path.clone(),
            source,
        };
        let mut inner = self.writer.finish().map_err(io)?;
        inner.flush().map_err(io)?;
        Ok(self.path)
    }
}

/// Writes `catalogue` as dump files dated `date` into `dir`.
pub fn write_dump(catalogue: &Catalogue, dir: &Path, date: &str) -> Result<DumpSummary, DumpError> {
    std::fs::create_dir_all(dir).map_err(|source| DumpError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let name = |kind: &str| dir.join(format!("ol_dump_{kind}{date}.txt.gz"));
    let mut authors = Out::create(name("authors_"))?;
    let mut works = Out::create(name("works_"))?;
    let mut editions = Out::create(name("editions_"))?;
    let mut all = Out::create(name(""))?;
    let mut summary = DumpSummary::default();
    let mut line = Vec::with_capacity(4096);
    for record in catalogue.dump_records() {
        line.clear();
        write!(
            line,
            "{}\t{}\t{}\t{}\t",
            record.kind, record.key, record.revision, record.last_modified
        )
        .map_err(|source| DumpError::Io {
            path: all.path.clone(),
            source,
        })?;
        serde_json::to_writer(&mut line, &record.json)?;
        line.push(b'\n');
        let typed = match record.kind {
            "/type/author" => {
                summary.authors += 1;
                Some(&mut authors)
            }
            "/type/work" => {
                summary.works += 1;
                Some(&mut works)
            }
            "/type/edition" => {
                summary.editions += 1;
                Some(&mut editions)
            }
            "/type/redirect" => {
                summary.redirects += 1;
                None
            }
            _ => {
                summary.deletes += 1;
                None
            }
        };
        if let Some(out) = typed {
            out.write(&line)?;
        }
        all.write(&line)?;
        summary.records += 1;
    }
    for out in [authors, works, editions, all] {
        summary.files.push(out.finish()?);
    }
    Ok(summary)
}

/// `bookworm sim dump`: generates the catalogue and writes it; the summary for stdout.
pub fn run(args: &DumpArgs) -> Result<DumpSummary, DumpError> {
    let catalogue = Catalogue::generate(&args.sim.spec());
    write_dump(&catalogue, &args.out, &args.date)
}
