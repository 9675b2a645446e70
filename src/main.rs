//! The `talon` binary: parses the command line and reports failures as one
//! clear line on stderr with a non-zero exit.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = talon::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
