//! The host's singleton guard: at most one talon host per home directory.
//!
//! Two hosts on one database would both answer every message and fight over
//! containers. The guard is an exclusive `flock` on `data/host.pid`, which
//! also holds the holder's pid for humans and `talon doctor`. The kernel
//! drops the lock when the process dies, however it dies, so a crashed
//! host's leftover file never blocks the next start: only a live lock counts,
//! never the file's mere existence or the pid written in it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fs4::{FileExt, TryLockError};

/// Holds the locked pid file for the life of the host; dropping it releases
/// the lock.
#[derive(Debug)]
pub struct HostLock {
    file: File,
    path: PathBuf,
    pid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("talon is already running (pid {pid}); stop it first (`systemctl stop talon` if it runs as a service, else `kill {pid}`)")]
    AlreadyRunning { pid: u32 },
    #[error("cannot take the host lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HostLock {
    /// Takes the lock without waiting, then records our pid in the file.
    pub fn acquire(path: &Path) -> Result<HostLock, LockError> {
        let io_error = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_error)?;
        }
        // No truncate on open: until we hold the lock, the file's pid belongs
        // to whoever does. std opens with O_CLOEXEC, so containers and other
        // children never inherit (and keep alive) the lock.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_error)?;
        // Fully qualified: newer std has an inherent `File::try_lock` that
        // would shadow the trait method and raise the MSRV.
        match FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::AlreadyRunning {
                    pid: read_holder_pid(&mut file).unwrap_or(0),
                })
            }
            Err(TryLockError::Error(source)) => return Err(io_error(source)),
        }
        let pid = std::process::id();
        write_pid(&mut file, pid).map_err(io_error)?;
        Ok(HostLock {
            file,
            path: path.to_path_buf(),
            pid,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        // Best effort: an empty file says "cleanly stopped". The file itself
        // stays, because deleting it while others may have it open would let
        // two hosts lock two different inodes of the same path.
        let _ = self.file.set_len(0);
    }
}

/// Who holds the lock, without taking it: `Some(pid)` if a live process holds
/// it, `None` if it is free (a stale file left by a dead process reads as
/// `None`).
pub fn holder(path: &Path) -> Option<u32> {
    let mut file = File::open(path).ok()?;
    // A shared lock succeeds exactly when nobody holds the exclusive one.
    match FileExt::try_lock_shared(&file) {
        Ok(()) => {
            let _ = FileExt::unlock(&file);
            None
        }
        Err(TryLockError::WouldBlock) => read_holder_pid(&mut file),
        Err(TryLockError::Error(_)) => None,
    }
}

/// Reads the pid the lock holder wrote. A holder that has just taken the
/// lock may not have written it yet, so an empty file is re-read briefly.
fn read_holder_pid(file: &mut File) -> Option<u32> {
    for _ in 0..20 {
        let mut text = String::new();
        let read = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut text));
        if read.is_err() {
            return None;
        }
        if let Ok(pid) = text.trim().parse() {
            return Some(pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn write_pid(file: &mut File, pid: u32) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "{pid}")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("data").join("host.pid")
    }

    #[test]
    fn acquire_writes_our_pid_and_creates_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = pid_path(&dir);
        let lock = HostLock::acquire(&path).unwrap();
        assert_eq!(lock.pid(), std::process::id());
        assert_eq!(lock.path(), path);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        assert_eq!(holder(&path), Some(std::process::id()));
    }

    #[test]
    fn second_acquire_fails_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = pid_path(&dir);
        let _first = HostLock::acquire(&path).unwrap();
        // flock locks belong to the open file description, so a second open
        // in this same process conflicts like another process would.
        match HostLock::acquire(&path) {
            Err(LockError::AlreadyRunning { pid }) => assert_eq!(pid, std::process::id()),
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
        // The failed attempt must not have wiped the holder's pid.
        assert_eq!(holder(&path), Some(std::process::id()));
        let message = HostLock::acquire(&path).unwrap_err().to_string();
        assert!(
            message.contains(&format!("already running (pid {})", std::process::id())),
            "{message}"
        );
    }

    #[test]
    fn lock_is_reclaimed_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = pid_path(&dir);
        drop(HostLock::acquire(&path).unwrap());
        assert_eq!(holder(&path), None);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        let again = HostLock::acquire(&path).unwrap();
        assert_eq!(holder(&path), Some(again.pid()));
    }

    #[test]
    fn stale_pid_file_without_a_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = pid_path(&dir);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "4194303\nleftover junk from a longer pid\n").unwrap();
        assert_eq!(holder(&path), None, "an unlocked file is stale");
        let _lock = HostLock::acquire(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
    }

    #[test]
    fn holder_of_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(holder(&pid_path(&dir)), None);
    }

    #[test]
    fn unusable_path_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("data");
        std::fs::write(&blocker, "").unwrap();
        let err = HostLock::acquire(&blocker.join("host.pid")).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("host.pid"), "{err}");
    }
}
