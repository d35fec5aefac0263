//! Schema migrations of the graph: numbered Cypher files, applied in order, each once.
//!
//! The files under `migrations/` are compiled into the binary (`include_str!`), so a graph
//! writer or `bookworm migrate` needs nothing on disk. Each applied file is recorded as a
//! `(:Migration {version, name, applied_at})` node; a version already recorded is skipped.
//!
//! Several graph writers start at once in a deployment, so applying is guarded by a lease on a
//! `(:MigrationLock {name: "migrations"})` node (unique by constraint): the writer that takes
//! it applies what is missing, the others wait until nothing is missing or the lease of a
//! crashed holder expires. Every statement is idempotent (`IF NOT EXISTS`) as well, so even a
//! holder that dies half-way leaves nothing a rerun cannot finish.

use std::time::Duration;

use neo4rs::query;

use crate::graph::{GraphStore, WriteError};

/// One numbered migration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its number, from the file name; applied in increasing order.
    pub version: u32,
    /// The rest of the file name, without extension.
    pub name: &'static str,
    /// The file's text: statements separated by `;`, `//` comment lines allowed.
    pub cypher: &'static str,
}

/// Every migration, in order. A unit test checks this list against the `migrations/` folder,
/// so a new file cannot be forgotten here.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "constraints",
        cypher: include_str!("../../migrations/0001_constraints.cypher"),
    },
    Migration {
        version: 2,
        name: "tombstones",
        cypher: include_str!("../../migrations/0002_tombstones.cypher"),
    },
];

/// The lock node's name.
const LOCK_NAME: &str = "migrations";

/// Statements that make the bookkeeping itself safe under concurrency: without them two
/// writers could each MERGE their own lock node.
const BOOTSTRAP: [&str; 2] = [
    "CREATE CONSTRAINT migration_version IF NOT EXISTS FOR (m:Migration) REQUIRE m.version IS UNIQUE",
    "CREATE CONSTRAINT migration_lock_name IF NOT EXISTS FOR (l:MigrationLock) REQUIRE l.name IS UNIQUE",
];

/// Errors from migrating.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Neo4j is unreachable or answered with a transient error: retry later.
    #[error("Neo4j unavailable while migrating: {0}")]
    Unavailable(#[source] WriteError),
    /// A migration's statement was refused: the file is wrong; give up and fix it.
    #[error("migration {version} ({name}) failed: {error}")]
    Failed {
        /// The migration's number.
        version: u32,
        /// Its name.
        name: &'static str,
        /// Neo4j's answer.
        error: WriteError,
    },
    /// Another process held the lock for longer than this one would wait.
    #[error("migrations are locked by {holder} (waited {waited:?})")]
    Locked {
        /// Who holds the lock.
        holder: String,
        /// How long this process waited.
        waited: Duration,
    },
}

/// How to take part in a concurrent migration.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Who this process is, recorded on the lock (host, pid and a random part).
    pub owner: String,
    /// How long the lock holds without renewal: past it, a crashed holder's lock is taken
    /// over. Renewed after every migration, so it need only outlast the longest single one.
    pub lease: Duration,
    /// How long to wait for another holder before giving up.
    pub wait: Duration,
    /// Pause between checks while waiting.
    pub poll: Duration,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            owner: format!(
                "{}:{}:{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned()),
                std::process::id(),
                uuid::Uuid::now_v7()
            ),
            // A constraint on a large graph builds its index before it returns.
            lease: Duration::from_secs(600),
            // Long enough for another writer to apply the same migrations; a rolling start of
            // a new version waits here rather than writing before its schema exists.
            wait: Duration::from_secs(900),
            poll: Duration::from_millis(500),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Versions this process applied.
    pub applied: Vec<u32>,
    /// Versions found already recorded (by an earlier run or another process).
    pub already: Vec<u32>,
}

/// The statements of a migration file: `//` comment lines dropped, split at `;`.
pub fn statements(cypher: &str) -> Vec<String> {
    let text: String = cypher
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn unavailable(error: WriteError) -> MigrateError {
    MigrateError::Unavailable(error)
}

/// Runs `call` again while Neo4j answers with a transient error. Schema statements from
/// several processes at once deadlock on Neo4j's label locks; every statement here is
/// idempotent, so a retry is always safe. Ten tries with jittered backoff from 50 ms span a
/// few seconds, far longer than such a conflict lasts.
async fn retrying<T, F, Fut>(mut call: F) -> Result<T, WriteError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, WriteError>>,
{
    let mut pause = Duration::from_millis(50);
    let mut tries = 1;
    loop {
        match call().await {
            Err(WriteError::Transient(e)) if tries < 10 => {
                tracing::debug!(error = %e, tries, "retrying a migration step");
                tokio::time::sleep(pause.mul_f64(rand::random_range(0.5..1.5))).await;
                pause = pause.saturating_mul(2).min(Duration::from_secs(1));
                tries += 1;
            }
            other => return other,
        }
    }
}

/// Runs one statement in its own transaction, retried against transient errors.
async fn run(store: &GraphStore, statement: impl Fn() -> neo4rs::Query) -> Result<(), WriteError> {
    retrying(|| store.run_in_transaction(vec![statement()])).await
}

/// Creates the bookkeeping constraints. Two processes creating the same constraint at the same
/// moment can see "already exists" despite `IF NOT EXISTS`; that is success.
async fn bootstrap(store: &GraphStore) -> Result<(), MigrateError> {
    for statement in BOOTSTRAP {
        match run(store, || query(statement)).await {
            Ok(()) => {}
            Err(WriteError::Rejected(text)) if text.contains("AlreadyExists") => {}
            Err(e) => return Err(unavailable(e)),
        }
    }
    Ok(())
}

async fn recorded(store: &GraphStore) -> Result<Vec<u32>, MigrateError> {
    let rows = retrying(|| {
        store.fetch(query(
            "MATCH (m:Migration) RETURN m.version AS version ORDER BY version",
        ))
    })
    .await
    .map_err(unavailable)?;
    Ok(rows
        .iter()
        .filter_map(|row| row.get::<i64>("version").ok())
        .filter_map(|v| u32::try_from(v).ok())
        .collect())
}

/// Takes or renews the lease if it is free, expired or ours; returns the holder after the
/// attempt. The first `SET` write-locks the node before its holder is read, so two processes
/// cannot both see it free.
async fn try_lock(store: &GraphStore, options: &MigrateOptions) -> Result<String, MigrateError> {
    let rows = retrying(|| {
        store.fetch(
            query(
                "MERGE (l:MigrationLock {name: $name}) \
                 SET l.touched_at = datetime() \
                 WITH l, (l.holder IS NULL OR l.holder = $owner OR l.expires_at < datetime()) AS free \
                 SET l.holder = CASE WHEN free THEN $owner ELSE l.holder END, \
                     l.expires_at = CASE WHEN free \
                         THEN datetime() + duration({seconds: $lease}) ELSE l.expires_at END \
                 RETURN l.holder AS holder",
            )
            .param("name", LOCK_NAME)
            .param("owner", options.owner.as_str())
            .param("lease", options.lease.as_secs() as i64),
        )
    })
    .await
    .map_err(unavailable)?;
    Ok(rows
        .first()
        .and_then(|row| row.get::<String>("holder").ok())
        .unwrap_or_default())
}

async fn unlock(store: &GraphStore, options: &MigrateOptions) -> Result<(), MigrateError> {
    run(store, || {
        query(
            "MATCH (l:MigrationLock {name: $name}) WHERE l.holder = $owner \
             REMOVE l.holder, l.expires_at",
        )
        .param("name", LOCK_NAME)
        .param("owner", options.owner.as_str())
    })
    .await
    .map_err(unavailable)
}

async fn apply(store: &GraphStore, migration: &Migration) -> Result<(), MigrateError> {
    // Neo4j runs schema changes in transactions of their own.
    for statement in statements(migration.cypher) {
        run(store, || query(&statement))
            .await
            .map_err(|error| match error {
                WriteError::Rejected(_) => MigrateError::Failed {
                    version: migration.version,
                    name: migration.name,
                    error,
                },
                other => MigrateError::Unavailable(other),
            })?;
    }
    run(store, || {
        query(
            "MERGE (m:Migration {version: $version}) \
             ON CREATE SET m.name = $name, m.applied_at = datetime()",
        )
        .param("version", i64::from(migration.version))
        .param("name", migration.name)
    })
    .await
    .map_err(unavailable)
}

/// Applies `migrations` that are not yet recorded, in order, once across all processes.
pub async fn migrate(
    store: &GraphStore,
    migrations: &[Migration],
    options: &MigrateOptions,
) -> Result<MigrateReport, MigrateError> {
    bootstrap(store).await?;
    let started = std::time::Instant::now();
    loop {
        let done = recorded(store).await?;
        let pending: Vec<&Migration> = migrations
            .iter()
            .filter(|m| !done.contains(&m.version))
            .collect();
        let already: Vec<u32> = migrations
            .iter()
            .map(|m| m.version)
            .filter(|v| done.contains(v))
            .collect();
        if pending.is_empty() {
            return Ok(MigrateReport {
                applied: Vec::new(),
                already,
            });
        }
        let holder = try_lock(store, options).await?;
        if holder == options.owner {
            // Another holder may have finished between our check and our lock.
            let done = recorded(store).await?;
            let mut report = MigrateReport::default();
            let mut outcome = Ok(());
            for migration in migrations {
                if done.contains(&migration.version) {
                    report.already.push(migration.version);
                    continue;
                }
                if let Err(e) = apply(store, migration).await {
                    outcome = Err(e);
                    break;
                }
                tracing::info!(
                    version = migration.version,
                    name = migration.name,
                    "migration applied"
                );
                report.applied.push(migration.version);
                // Renew the lease for the next one.
                try_lock(store, options).await?;
            }
            unlock(store, options).await?;
            return outcome.map(|()| report);
        }
        if started.elapsed() >= options.wait {
            return Err(MigrateError::Locked {
                holder,
                waited: started.elapsed(),
            });
        }
        tracing::info!(%holder, "waiting for another process to finish migrations");
        tokio::time::sleep(options.poll).await;
    }
}

/// [`migrate`], waiting out a Neo4j that is not reachable yet (a graph writer starting before
/// Neo4j, or during its restart) with capped backoff, until `shutdown` fires. A refused
/// migration or a lock held too long is returned: those need an operator.
pub async fn migrate_when_reachable(
    store: &GraphStore,
    migrations: &[Migration],
    options: &MigrateOptions,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Option<MigrateReport>, MigrateError> {
    // From one second up to half a minute: quick when Neo4j is just starting, quiet when it
    // is down for long.
    let mut pause = Duration::from_secs(1);
    loop {
        match migrate(store, migrations, options).await {
            Err(MigrateError::Unavailable(e)) => {
                tracing::warn!(error = %e, retry_in = ?pause, "cannot migrate yet: Neo4j unavailable");
            }
            other => return other.map(Some),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_drop_comments_and_split_at_semicolons() {
        let parsed = statements("// a comment; with a semicolon\nCREATE A;\n\n  CREATE B ;\n");
        assert_eq!(parsed, vec!["CREATE A", "CREATE B"]);
    }

    #[test]
    fn the_migration_list_matches_the_migrations_folder_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".cypher"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.cypher", m.version, m.name))
            .collect();
        assert_eq!(listed, files);
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
    }

    #[test]
    fn the_first_migration_constrains_every_label_key() {
        let text = statements(MIGRATIONS[0].cypher).join("\n");
        for label in crate::message::Label::ALL {
            assert!(
                text.contains(&format!(
                    "FOR (n:{}) REQUIRE n.key IS UNIQUE",
                    label.as_str()
                )),
                "{label:?}"
            );
        }
    }
}
