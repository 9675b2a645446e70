//! Crash-loop backoff for platform adapters, persisted across host restarts
//! (SPEC §11).
//!
//! A Discord bot that reconnects in a tight loop exhausts its daily identify
//! budget and can get the host's IP banned; restarting the whole host (by
//! systemd) must not reset the count. So every adapter start is written to
//! `data/channel-restarts.json` *before* it connects, counted as unclean
//! until proven otherwise: a clean host shutdown resets the count to zero,
//! and an hour of stable running resets it to "just this run".
//!
//! The rules are pure ([`CrashRecord`]); [`CrashLedger`] is the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Delays before the 1st, 2nd, … restart after a crash; the last repeats.
pub const RESTART_DELAYS_SECS: [u64; 7] = [0, 0, 10, 30, 120, 300, 900];

/// How long an adapter must run without crashing for its count to reset.
pub const STABLE_AFTER: Duration = Duration::from_secs(3600);

/// What is remembered about one adapter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashRecord {
    /// Runs since the last reset that did not end cleanly (a run that is
    /// going on right now counts: it has not ended cleanly yet).
    pub unclean_runs: u32,
}

impl CrashRecord {
    /// How long a start must wait before connecting. The first start after
    /// a reset goes at once; after `n` crashes the `n`-th restart delay.
    pub fn delay_before_start(self) -> Duration {
        match self.unclean_runs {
            0 => Duration::ZERO,
            n => {
                let index = usize::try_from(n - 1)
                    .unwrap_or(usize::MAX)
                    .min(RESTART_DELAYS_SECS.len() - 1);
                Duration::from_secs(RESTART_DELAYS_SECS[index])
            }
        }
    }

    /// The record once this start is counted.
    pub fn started(self) -> CrashRecord {
        CrashRecord {
            unclean_runs: self.unclean_runs.saturating_add(1),
        }
    }

    /// The record after the current run proved stable: only this run is
    /// still open.
    pub fn stable() -> CrashRecord {
        CrashRecord { unclean_runs: 1 }
    }

    /// The record after a clean shutdown (or a fatal, non-crash stop).
    pub fn reset() -> CrashRecord {
        CrashRecord { unclean_runs: 0 }
    }
}

/// The crash records of every adapter, in one small JSON file.
#[derive(Debug, Clone)]
pub struct CrashLedger {
    path: PathBuf,
}

impl CrashLedger {
    /// The ledger in a talon home's `data/` directory.
    pub fn in_data_dir(data: &Path) -> CrashLedger {
        CrashLedger {
            path: data.join("channel-restarts.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record of `channel`; a missing or unreadable file counts as no
    /// crashes (an unreadable one is logged: losing the count must not stop
    /// the adapter).
    pub fn get(&self, channel: &str) -> CrashRecord {
        self.read().get(channel).copied().unwrap_or_default()
    }

    /// Counts a start of `channel` and returns how long it must wait.
    pub fn begin_start(&self, channel: &str) -> (CrashRecord, Duration) {
        let before = self.get(channel);
        self.set(channel, before.started());
        (before, before.delay_before_start())
    }

    pub fn set(&self, channel: &str, record: CrashRecord) {
        let mut all = self.read();
        all.insert(channel.to_string(), record);
        if let Err(e) = self.write(&all) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot save the channel crash count");
        }
    }

    /// A clean shutdown: every adapter starts at once next time.
    pub fn reset_all(&self) {
        let all = self.read();
        if all.values().all(|r| r.unclean_runs == 0) {
            return;
        }
        let cleared = all
            .into_keys()
            .map(|channel| (channel, CrashRecord::reset()))
            .collect();
        if let Err(e) = self.write(&cleared) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot reset the channel crash counts");
        }
    }

    fn read(&self) -> BTreeMap<String, CrashRecord> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                tracing::warn!(path = %self.path.display(), error = %e, "channel crash counts unreadable; starting from zero");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        }
    }

    fn write(&self, all: &BTreeMap<String, CrashRecord>) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(all).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delays_of_a_crash_loop(crashes: u32) -> Vec<u64> {
        let mut record = CrashRecord::default();
        let mut delays = Vec::new();
        for _ in 0..=crashes {
            delays.push(record.delay_before_start().as_secs());
            record = record.started();
        }
        delays
    }

    #[test]
    fn a_crash_loop_waits_longer_each_time_up_to_fifteen_minutes() {
        // The first start, then the restart after each crash.
        assert_eq!(
            delays_of_a_crash_loop(9),
            vec![0, 0, 0, 10, 30, 120, 300, 900, 900, 900]
        );
    }

    #[test]
    fn stable_running_and_clean_shutdown_reset_the_count() {
        let looping = CrashRecord { unclean_runs: 6 };
        assert_eq!(looping.delay_before_start(), Duration::from_secs(300));
        // Stable for an hour, then a crash: the next restart is immediate.
        assert_eq!(CrashRecord::stable().delay_before_start(), Duration::ZERO);
        assert_eq!(
            CrashRecord::stable().started().delay_before_start(),
            Duration::ZERO
        );
        assert_eq!(CrashRecord::reset().delay_before_start(), Duration::ZERO);
    }

    #[test]
    fn the_count_survives_a_host_restart_and_resets_on_clean_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = CrashLedger::in_data_dir(dir.path());
        for _ in 0..3 {
            ledger.begin_start("discord");
        }
        // A new host process reads the same file.
        let again = CrashLedger::in_data_dir(dir.path());
        let (before, delay) = again.begin_start("discord");
        assert_eq!(before.unclean_runs, 3);
        assert_eq!(delay, Duration::from_secs(10));
        assert_eq!(again.get("slack"), CrashRecord::default());
        again.reset_all();
        assert_eq!(again.get("discord").unclean_runs, 0);
        assert_eq!(again.begin_start("discord").1, Duration::ZERO);
    }

    #[test]
    fn an_unreadable_file_counts_as_no_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = CrashLedger::in_data_dir(dir.path());
        std::fs::write(ledger.path(), "{not json").unwrap();
        assert_eq!(ledger.get("slack"), CrashRecord::default());
        let (_, delay) = ledger.begin_start("slack");
        assert_eq!(delay, Duration::ZERO);
        assert_eq!(ledger.get("slack").unclean_runs, 1);
    }
}
