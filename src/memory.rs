//! The process's memory: a runtime and an allocator sized for a small
//! server that runs for months.
//!
//! glibc gives every thread that allocates its own arena (up to 8 per
//! core), and freed memory in an arena stays in the process until the top
//! of its heap is free. A daemon whose tasks hop between worker threads
//! spreads its small allocations over every arena and keeps the high-water
//! mark of each. So: two arenas at most, two worker threads (the work is
//! waiting on sockets and containers), a few blocking threads, and the
//! free pages handed back to the kernel once start-up is done and then
//! every minute.

use std::time::Duration;

/// Worker threads of the async runtime: the machine's cores, at most two.
pub const MAX_WORKER_THREADS: usize = 2;
/// Threads for blocking work (file locks, image contexts, pruning).
pub const MAX_BLOCKING_THREADS: usize = 16;
/// How often free heap pages are handed back to the kernel.
pub const TRIM_EVERY: Duration = Duration::from_secs(60);

/// glibc arenas: one for the main thread, one shared by every other.
#[cfg(target_env = "gnu")]
const ARENA_MAX: libc::c_int = 2;

/// Worker threads for a machine with `cores` cores.
pub fn worker_threads(cores: usize) -> usize {
    cores.clamp(1, MAX_WORKER_THREADS)
}

/// Caps glibc's arenas. Call first thing in `main`, before any thread
/// exists (arenas are assigned as threads first allocate).
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}

/// Hands free heap pages back to the kernel (glibc's `malloc_trim`).
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns unused pages of the allocator's own
    // heaps; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Releases free memory now and every [`TRIM_EVERY`], for the daemon.
pub fn spawn_trimmer() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut every = tokio::time::interval(TRIM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // Off the workers: a trim walks every arena.
            let _ = tokio::task::spawn_blocking(release_free_memory).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_is_sized_for_a_small_server() {
        assert_eq!(worker_threads(0), 1);
        assert_eq!(worker_threads(1), 1);
        assert_eq!(worker_threads(2), 2);
        assert_eq!(worker_threads(64), MAX_WORKER_THREADS);
    }

    #[test]
    fn trimming_is_safe_to_call_any_time() {
        let big: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 64 * 1024]).collect();
        drop(big);
        release_free_memory();
        tune_allocator();
        release_free_memory();
    }
}
