//! Logs: `logs/talon.log` (everything at the configured level) and
//! `logs/talon.error.log` (warnings and errors), always the current files;
//! at the first write after local midnight each is renamed to the day it
//! covers (`talon.2026-12-02.log`, `talon.error.2026-12-02.log`), 7 of those
//! kept ([`daily`]); plus stderr. `LOG_LEVEL` or `RUST_LOG` override the
//! configured level. Writes go through a background thread, so logging never
//! blocks the caller on the disk.

pub mod daily;

use anyhow::Context;
pub use daily::append_rotating;
use daily::{DailyFile, LogName};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::paths::Paths;

/// Lines a log's writer thread may have queued; past this a line is
/// dropped (and counted by tracing-appender) rather than block the caller.
const QUEUED_LINES: usize = 8192;

/// Keeps the background writers alive; drop it last.
pub struct LogGuards {
    _guards: Vec<WorkerGuard>,
}

/// `quiet_stderr`: only errors reach stderr (a piped chat's stdout and
/// stderr belong to the conversation).
pub fn init(paths: &Paths, level: &str, quiet_stderr: bool) -> anyhow::Result<LogGuards> {
    let level = std::env::var("LOG_LEVEL").unwrap_or_else(|_| level.to_string());
    let filter = || {
        EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(format!("warn,talon={level}")))
            .unwrap_or_else(|_| EnvFilter::new("warn,talon=info"))
    };
    // Not tracing-appender's own daily rolling: see `daily` for why.
    let daily = |stem: &str| {
        let log = LogName::new(stem, "log");
        let path = paths.logs().join(log.current());
        DailyFile::open(&paths.logs(), log, daily::KEEP)
            .with_context(|| format!("cannot open the log {}", path.display()))
    };
    // tracing-appender's default queue (128 000 lines) is a slot array of
    // 4 MB touched when it is made, per log; a few thousand lines is ample
    // ahead of a thread that only appends to a file.
    let writer = || {
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .buffered_lines_limit(QUEUED_LINES)
            .thread_name("talon-log")
    };
    let (all, all_guard) = writer().finish(daily("talon")?);
    let (errors, error_guard) = writer().finish(daily("talon.error")?);
    let stderr_level = if quiet_stderr {
        LevelFilter::ERROR
    } else {
        LevelFilter::INFO
    };
    let result = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(all)
                .with_filter(filter()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(errors)
                .with_filter(LevelFilter::WARN),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(stderr_level)
                .with_filter(filter()),
        )
        .try_init();
    if result.is_err() {
        // Already initialised (tests start several hosts in one process).
    }
    Ok(LogGuards {
        _guards: vec![all_guard, error_guard],
    })
}
