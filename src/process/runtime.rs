//! The process a service runs in: its allocator's settings and its tokio runtime.
//!
//! A container limit counts resident memory, not the bytes the program holds. glibc's malloc
//! gives each thread that allocates under contention an arena of its own (up to eight per
//! core) and keeps each arena at its high-water mark. Under load the graph writer's tokio
//! workers and librdkafka's broker threads each grew an arena of about 11 MiB: one third of
//! its peak RSS at `GRAPH_BATCH_SIZE` 5000 (62 MiB with the default, 48 MiB with one arena;
//! `docs/performance.md`). Small allocations are still served from per-thread caches without
//! taking the arena's lock.

/// Limits malloc to one arena, then starts the multi-threaded tokio runtime. Call first in
/// `main`: a thread keeps the arena it first allocated from, so the limit must be set before
/// any thread exists.
pub fn start() -> std::io::Result<tokio::runtime::Runtime> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes a tuning parameter of glibc's allocator, and no other
    // thread allocates yet. A refusal (return 0) leaves the default, which is still correct.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Other C libraries (musl) have one arena already, or no such setting.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
