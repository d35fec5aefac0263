//! The import's checkpoint: per dump file, the last line whose records Kafka acknowledged.
//!
//! A JSON file (`--checkpoint PATH`), `{"v": 1, "files": {"<absolute path>": <line>}}`,
//! rewritten after every acknowledged batch through a temporary file and a rename, so a
//! crash leaves the old checkpoint or the new one, never half of one. Batches are
//! acknowledged in line order, so every line up to the recorded one is in Kafka; an import
//! started again skips them and publishes nothing twice that was acknowledged (the batch in
//! flight at the crash is published again: at-least-once, and the graph writer's `MERGE`
//! makes the repeat harmless).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why the checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading, writing or renaming the file failed.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The checkpoint file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a checkpoint: refuse rather than start over silently.
    #[error("checkpoint {path} is not valid: {source}")]
    Invalid {
        /// The checkpoint file.
        path: PathBuf,
        /// The decoder's complaint.
        source: serde_json::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    v: u8,
    files: BTreeMap<String, u64>,
}

/// The checkpoint in memory, and where it is kept (nowhere without `--checkpoint`).
#[derive(Debug)]
pub struct Checkpoint {
    path: Option<PathBuf>,
    stored: Stored,
}

/// The name a file is recorded under: its absolute path, so a resume from another working
/// directory finds it.
pub fn file_id(file: &Path) -> String {
    std::fs::canonicalize(file)
        .unwrap_or_else(|_| file.to_owned())
        .display()
        .to_string()
}

impl Checkpoint {
    /// Reads the checkpoint at `path` (an absent file is an empty checkpoint).
    pub fn open(path: Option<&Path>) -> Result<Self, CheckpointError> {
        let stored = match path {
            None => Stored::default(),
            Some(path) => match std::fs::read(path) {
                Ok(bytes) => {
                    serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Invalid {
                        path: path.to_owned(),
                        source,
                    })?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
                Err(source) => {
                    return Err(CheckpointError::Io {
                        path: path.to_owned(),
                        source,
                    });
                }
            },
        };
        Ok(Self {
            path: path.map(Path::to_owned),
            stored,
        })
    }

    /// The last acknowledged line of `file` (0: none).
    pub fn line(&self, file: &str) -> u64 {
        self.stored.files.get(file).copied().unwrap_or(0)
    }

    /// Records that every line of `file` up to `line` is acknowledged, and saves.
    pub fn advance(&mut self, file: &str, line: u64) -> Result<(), CheckpointError> {
        let entry = self.stored.files.entry(file.to_owned()).or_default();
        *entry = (*entry).max(line);
        self.save()
    }

    fn save(&self) -> Result<(), CheckpointError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| CheckpointError::Io {
            path: path.clone(),
            source,
        };
        let stored = Stored {
            v: 1,
            files: self.stored.files.clone(),
        };
        let bytes =
            serde_json::to_vec_pretty(&stored).map_err(|source| CheckpointError::Invalid {
                path: path.clone(),
                source,
            })?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_survives_a_reopen_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let mut cp = Checkpoint::open(Some(&path)).unwrap();
        assert_eq!(cp.line("a"), 0);
        cp.advance("a", 10).unwrap();
        cp.advance("a", 4).unwrap();
        let again = Checkpoint::open(Some(&path)).unwrap();
        assert_eq!(again.line("a"), 10);
        std::fs::write(&path, b"nonsense").unwrap();
        assert!(Checkpoint::open(Some(&path)).is_err());
    }
}
