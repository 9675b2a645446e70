//! Pruning stale artifacts (SPEC §12): session transcripts no session uses
//! any more (7 days after their last write) and container run logs (7
//! days). The host's own logs rotate daily with 7 kept by the appender.
//! The host prunes at start and every 24 hours; `talon prune --dry-run`
//! shows what would go.
//!
//! The decision is pure ([`stale`]); the current transcript of every group
//! is never a candidate, whatever its age, and archived conversations
//! (`groups/<folder>/conversations/`) are the user's and never pruned.
//!
//! Session dirs (and the run logs' old place inside group folders) are
//! agent-writable, so everything here goes through [`crate::safe_fs`]: only
//! regular files directly inside a directory opened without following
//! links are candidates, and removal unlinks the name, never a target. A
//! symlink planted for the pruner leads nowhere.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::paths::Paths;
use crate::safe_fs::DirHandle;
use crate::store::Store;

/// How long each kind of artifact is kept after its last change.
pub const TRANSCRIPTS_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);
pub const RUN_LOGS_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

/// A file that may be pruned: where, when it last changed, how long its
/// kind is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub path: PathBuf,
    pub modified: SystemTime,
    pub kept_for: Duration,
}

/// The candidates past their keeping time, except the protected ones.
pub fn stale(
    candidates: &[Candidate],
    now: SystemTime,
    protected: &HashSet<PathBuf>,
) -> Vec<PathBuf> {
    candidates
        .iter()
        .filter(|c| !protected.contains(&c.path))
        .filter(|c| {
            now.duration_since(c.modified)
                .is_ok_and(|age| age > c.kept_for)
        })
        .map(|c| c.path.clone())
        .collect()
}

/// Regular files in `dir` (not below, no link followed) whose name ends
/// with `suffix` and starts with `prefix`.
fn files(dir: &Path, prefix: &str, suffix: &str, kept_for: Duration) -> Vec<Candidate> {
    let Ok(handle) = DirHandle::open(dir) else {
        return Vec::new();
    };
    handle
        .regular_files()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| {
            let name = f.name.to_string_lossy();
            name.starts_with(prefix) && name.ends_with(suffix)
        })
        .map(|f| Candidate {
            path: dir.join(&f.name),
            modified: f.modified,
            kept_for,
        })
        .collect()
}

/// Real subdirectories of a host-owned directory (a symlink is not one).
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Everything under a talon home that may be pruned, and what must stay.
fn survey(paths: &Paths, store: &Store) -> (Vec<Candidate>, HashSet<PathBuf>) {
    let mut candidates = Vec::new();
    let mut protected = HashSet::new();
    for session_dir in subdirs(&paths.data().join("sessions")) {
        candidates.extend(files(&session_dir, "", ".jsonl", TRANSCRIPTS_KEPT));
        let folder = session_dir
            .file_name()
            .map(|f| f.to_string_lossy().to_string());
        if let Some(Ok(Some(session))) = folder.map(|f| store.session(&f)) {
            protected.insert(session_dir.join(format!("{}.jsonl", session.session_id)));
        }
    }
    for logs in subdirs(&paths.logs().join("containers")) {
        candidates.extend(files(&logs, "container-", ".log", RUN_LOGS_KEPT));
    }
    // Run logs from before they moved out of the group folders.
    for group_dir in subdirs(&paths.groups()) {
        candidates.extend(files(
            &group_dir.join("logs"),
            "container-",
            ".log",
            RUN_LOGS_KEPT,
        ));
    }
    (candidates, protected)
}

/// Unlinks `path`'s name inside its directory, opened without following
/// links; a name that is no longer a regular file is left alone.
fn remove_safely(path: &Path) -> std::io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other("not a file path"));
    };
    DirHandle::open(dir)?.remove_file(&OsString::from(name))
}

/// Removes (or, with `dry_run`, only lists) the stale artifacts under a
/// home. Returns the paths concerned.
pub fn prune(paths: &Paths, store: &Store, dry_run: bool) -> Vec<PathBuf> {
    let (candidates, protected) = survey(paths, store);
    let doomed = stale(&candidates, SystemTime::now(), &protected);
    if !dry_run {
        for path in &doomed {
            if let Err(e) = remove_safely(path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot prune");
            }
        }
        if !doomed.is_empty() {
            tracing::info!(
                files = doomed.len(),
                "pruned stale transcripts and run logs"
            );
        }
    }
    doomed
}

/// Prunes now and every 24 hours, for as long as the task lives.
pub fn spawn_daily(paths: Paths, store: Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every_day = tokio::time::interval(Duration::from_secs(24 * 3600));
        loop {
            every_day.tick().await;
            let (paths, store) = (paths.clone(), store.clone());
            let _ = tokio::task::spawn_blocking(move || prune(&paths, &store, false)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn only_old_unprotected_files_are_stale() {
        let now = SystemTime::UNIX_EPOCH + 100 * DAY;
        let candidate = |name: &str, age_days: u32| Candidate {
            path: PathBuf::from(name),
            modified: now - DAY * age_days,
            kept_for: 7 * DAY,
        };
        let candidates = vec![
            candidate("old.jsonl", 8),
            candidate("current.jsonl", 30),
            candidate("fresh.jsonl", 6),
            // A clock set back: not stale.
            Candidate {
                path: PathBuf::from("future.log"),
                modified: now + DAY,
                kept_for: 7 * DAY,
            },
        ];
        let protected = HashSet::from([PathBuf::from("current.jsonl")]);
        assert_eq!(
            stale(&candidates, now, &protected),
            vec![PathBuf::from("old.jsonl")]
        );
    }

    #[test]
    fn a_home_is_pruned_but_the_current_transcript_and_archives_stay() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            home: dir.path().to_path_buf(),
        };
        paths.ensure().unwrap();
        let store = Store::open_in_memory().unwrap();
        store.set_session("main", "current", None).unwrap();
        let sessions = paths.session_dir("main");
        let logs = paths.container_logs("main");
        let archive = paths.group_dir("main").join("conversations");
        for d in [&sessions, &logs, &archive] {
            std::fs::create_dir_all(d).unwrap();
        }
        let old = SystemTime::now() - 10 * DAY;
        let aged = |path: PathBuf| {
            std::fs::write(&path, "x").unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(old).unwrap();
            path
        };
        let current = aged(sessions.join("current.jsonl"));
        let stale_transcript = aged(sessions.join("gone.jsonl"));
        let stale_log = aged(logs.join("container-1.log"));
        let archived = aged(archive.join("gone-1.jsonl"));
        std::fs::write(logs.join("container-2.log"), "fresh").unwrap();

        let listed = prune(&paths, &store, true);
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(stale_transcript.exists(), "a dry run removes nothing");
        let removed = prune(&paths, &store, false);
        assert_eq!(removed.len(), 2);
        assert!(!stale_transcript.exists() && !stale_log.exists());
        assert!(current.exists() && archived.exists() && logs.join("container-2.log").exists());
    }

    #[test]
    fn planted_symlinks_and_a_symlinked_logs_dir_lead_the_pruner_nowhere() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::at(dir.path());
        paths.ensure().unwrap();
        let store = Store::open_in_memory().unwrap();
        // What the agent must never reach: files outside every mount.
        let outside = tempfile::tempdir().unwrap();
        let victim_log = outside.path().join("container-1.log");
        let victim_jsonl = outside.path().join("secret.jsonl");
        let old = SystemTime::now() - 10 * DAY;
        for victim in [&victim_log, &victim_jsonl] {
            std::fs::write(victim, "precious").unwrap();
            let file = std::fs::File::options().write(true).open(victim).unwrap();
            file.set_modified(old).unwrap();
        }
        // A symlinked legacy logs/ dir and a symlinked transcript name.
        let group = paths.group_dir("alpha");
        std::fs::create_dir_all(&group).unwrap();
        std::os::unix::fs::symlink(outside.path(), group.join("logs")).unwrap();
        let sessions = paths.session_dir("alpha");
        std::fs::create_dir_all(&sessions).unwrap();
        std::os::unix::fs::symlink(&victim_jsonl, sessions.join("gone.jsonl")).unwrap();

        let removed = prune(&paths, &store, false);
        assert!(removed.is_empty(), "{removed:?}");
        assert_eq!(std::fs::read_to_string(&victim_log).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&victim_jsonl).unwrap(), "precious");
    }
}
