//! The process's memory: a runtime and an allocator sized for a small
//! server that runs for months.
//!
//! glibc gives every thread that allocates its own arena (up to 8 per
//! core), and freed memory in an arena stays in the process until the top
//! of its heap is free. A daemon whose tasks hop between worker threads
//! spreads its small allocations over every arena and keeps the high-water
//! mark of each; and glibc moves large blocks into the heap once one has
//! been freed. So: two arenas at most, a fixed mmap threshold, two worker
//! threads (the work is waiting on sockets and containers), a few blocking
//! threads, the free pages handed back to the kernel once start-up is done
//! and then every minute, and the start-up code paged out once.

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

/// Allocations from this size up get their own mapping, unmapped when
/// freed. glibc's default moves this threshold up to the largest block
/// freed so far (up to 32 MB), so after the first large model request every
/// later one (a transcript is hundreds of KB) is carved out of the heap and
/// its pages stay with the process when it is freed. Fixed, a transcript's
/// buffers go back to the kernel as soon as the call is done.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Worker threads for a machine with `cores` cores.
pub fn worker_threads(cores: usize) -> usize {
    cores.clamp(1, MAX_WORKER_THREADS)
}

/// Caps glibc's arenas and fixes its mmap threshold. Call first thing in
/// `main`, before any thread exists (arenas are assigned as threads first
/// allocate).
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
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

/// The read-only mappings of `exe` in a `/proc/self/maps` listing, as
/// (start, length): the binary's code and constants.
pub fn own_read_only_mappings(maps: &str, exe: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            // address perms offset device inode path (which may hold spaces)
            let mut fields = [""; 5];
            let mut rest = line;
            for field in &mut fields {
                rest = rest.trim_start();
                let end = rest.find(char::is_whitespace)?;
                (*field, rest) = rest.split_at(end);
            }
            let [range, perms, ..] = fields;
            if rest.trim() != exe || perms.contains('w') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (end > start).then_some((start, end - start))
        })
        .collect()
}

/// Hands the binary's start-up code back to the kernel. Parsing the command
/// line and the configuration, migrating the store, checking the image and
/// connecting the channels fault in megabytes of code (and the kernel maps
/// the neighbouring pages of each fault too) that the running daemon does
/// not touch again; they are clean file pages, so reclaiming them costs
/// nothing, and what the daemon does run is faulted back from the file.
/// Pages that another process maps too are left alone by the kernel.
pub fn page_out_start_up_code() {
    #[cfg(target_os = "linux")]
    {
        let (Ok(maps), Ok(exe)) = (
            std::fs::read_to_string("/proc/self/maps"),
            std::fs::read_link("/proc/self/exe"),
        ) else {
            return;
        };
        let Some(exe) = exe.to_str() else { return };
        for (start, len) in own_read_only_mappings(&maps, exe) {
            // SAFETY: advice on our own mapped, read-only pages; MADV_PAGEOUT
            // never changes their contents (a later access faults them in).
            // An older kernel's EINVAL only means the advice is not known.
            unsafe {
                libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT);
            }
        }
    }
}

/// How many trims also page the start-up code out: the first, when the
/// daemon says it is running, and the next, by when a platform channel that
/// connects in the background has done so.
const START_UP_PAGE_OUTS: u32 = 2;

/// Releases free memory now and every [`TRIM_EVERY`], for the daemon; the
/// start-up code is paged out at the first [`START_UP_PAGE_OUTS`] ticks
/// (not later: under traffic it would only drop code in use).
pub fn spawn_trimmer() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut every = tokio::time::interval(TRIM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for tick in 0u32.. {
            every.tick().await;
            // Off the workers: a trim walks every arena.
            let _ = tokio::task::spawn_blocking(move || {
                release_free_memory();
                if tick < START_UP_PAGE_OUTS {
                    page_out_start_up_code();
                }
            })
            .await;
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
    fn only_the_binarys_read_only_mappings_are_paged_out() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 08:01 42 /usr/local/bin/talon
55d0c0100000-55d0c0900000 r-xp 00100000 08:01 42 /usr/local/bin/talon
55d0c0900000-55d0c0a00000 rw-p 00900000 08:01 42 /usr/local/bin/talon
55d0c0a00000-55d0c0a00000 r--p 00a00000 08:01 42 /usr/local/bin/talon
7f0000000000-7f0000100000 r-xp 00000000 08:01 7 /usr/lib/libc.so.6
7f0000100000-7f0000200000 rw-p 00000000 00:00 0
7f0000200000-7f0000300000 r--p 00000000 08:01 43 /usr/local/bin/talon (deleted)
not a mapping line
";
        assert_eq!(
            own_read_only_mappings(maps, "/usr/local/bin/talon"),
            vec![(0x55d0c0000000, 0x100000), (0x55d0c0100000, 0x800000)]
        );
        assert!(own_read_only_mappings(maps, "/bin/other").is_empty());
    }

    #[test]
    fn the_start_up_code_pages_back_in_when_run() {
        page_out_start_up_code();
        // Code on the pages just given back still runs.
        assert_eq!(worker_threads(3), 2);
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
