//! The process a service runs in: its allocator and its tokio runtime.
//!
//! Every binary allocates through mimalloc. glibc's malloc was tried two ways and each cost
//! something a user of the graph writer feels:
//! - with its defaults, it gives each thread that allocates under contention an arena of its
//!   own (up to eight per core) and keeps each arena at its high-water mark: an 11 MiB arena
//!   for each tokio worker and librdkafka broker thread, one third of the writer's peak RSS
//!   (`docs/performance.md`);
//! - limited to one arena, every thread takes the same lock: during an import, 40 % of the
//!   writer's CPU went to glibc's free lists and their consolidation (`perf`, `_int_malloc`,
//!   `unlink_chunk`, `malloc_consolidate`), on the two cores Neo4j needs.
//!
//! mimalloc keeps a heap per thread, frees into the page an object came from (no global lock),
//! and returns emptied pages to the system within milliseconds: the writer's CPU for the same
//! import fell from 38–46 s to 24 s (`docs/import.md`).

/// The allocator of every binary that links the library.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Starts the multi-threaded tokio runtime a service runs on.
pub fn start() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
