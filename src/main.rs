//! The `talon` binary: parses the command line and reports failures as one
//! clear line on stderr with a non-zero exit.

use clap::Parser;

fn main() -> std::process::ExitCode {
    talon::memory::tune_allocator();
    let cli = talon::cli::Cli::parse();
    raise_file_limit();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(talon::memory::worker_threads(cores))
        .max_blocking_threads(talon::memory::MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("talon: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(talon::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("talon: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Raises the soft open-files limit to the hard one (Go and many daemons do
/// the same): outside systemd the soft default is often 1024, which a busy
/// host with several containers should never meet.
fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
