//! File operations that never follow a path the agent controls.
//!
//! An agent can write its group folder, its session dir, the global folder
//! (main) and rw extra mounts, so anything in there — a symlink, a renamed
//! directory — is the attacker's (SPEC §8, containment). The host keeps its
//! own files (run logs, state) outside every mount; where it must touch an
//! agent-writable tree (pruning old transcripts), it works relative to a
//! directory handle opened with `O_NOFOLLOW`, looks at entries with
//! `AT_SYMLINK_NOFOLLOW` and unlinks with `unlinkat`, so a planted symlink is
//! at most removed itself, never followed, and a directory swapped for a
//! symlink between two steps is refused rather than entered.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// Creates `path` as a new file, mode 0600, refusing to follow a symlink at
/// its last component or to reuse an existing file (`O_EXCL`).
pub fn create_new_private(path: &Path) -> io::Result<File> {
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Replaces `path` with `bytes` so that a crash at any moment leaves the
/// old file or the new one, never a torn one: a temp file beside it
/// (`O_EXCL|O_NOFOLLOW`, `mode`), written and fsynced, renamed over the
/// target, then the directory fsynced so the rename itself survives.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("not a file path"))?;
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp = dir.join(temp_name);
    // A temp file left by a killed earlier attempt of this pid is ours.
    let _ = std::fs::remove_file(&temp);
    let written = (|| {
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// A regular file directly inside a directory, as seen without following
/// anything.
#[derive(Debug, Clone, PartialEq)]
pub struct FileEntry {
    pub name: OsString,
    pub modified: SystemTime,
}

/// A directory opened without following a symlink at its last component.
pub struct DirHandle {
    fd: OwnedFd,
}

impl DirHandle {
    /// Opens `path` as a directory; a symlink there is an error (`ELOOP`),
    /// not a way elsewhere.
    pub fn open(path: &Path) -> io::Result<DirHandle> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(DirHandle { fd })
    }

    /// The regular files directly inside (symlinks, directories, devices
    /// and sockets are left out), with their modification times.
    pub fn regular_files(&self) -> io::Result<Vec<FileEntry>> {
        let mut dir = rustix::fs::Dir::read_from(&self.fd)?;
        let mut files = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let Ok(stat) =
                rustix::fs::statat(&self.fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
            else {
                continue; // gone meanwhile
            };
            if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                continue;
            }
            let secs = u64::try_from(stat.st_mtime).unwrap_or(0);
            let nanos = u32::try_from(stat.st_mtime_nsec).unwrap_or(0);
            files.push(FileEntry {
                name: OsString::from_vec(name.to_vec()),
                modified: SystemTime::UNIX_EPOCH + Duration::new(secs, nanos),
            });
        }
        Ok(files)
    }

    /// Removes the entry `name` if it is (still) a regular file. Whatever
    /// it is, nothing it points to is touched: `unlinkat` removes a name.
    pub fn remove_file(&self, name: &std::ffi::OsStr) -> io::Result<()> {
        let stat = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(io::Error::other("not a regular file any more"));
        }
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_new_private_refuses_a_planted_symlink_and_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let planted = dir.path().join("container-1.log");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        assert!(create_new_private(&planted).is_err());
        assert!(create_new_private(&victim).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

        let fresh = dir.path().join("fresh.log");
        create_new_private(&fresh).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_atomic_write_replaces_the_file_whole_with_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "old").unwrap();
        write_atomically(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "a temp file was left behind");
    }

    #[test]
    fn a_symlinked_directory_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("logs");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(DirHandle::open(&link).is_err());
        assert!(DirHandle::open(&real).is_ok());
    }

    #[test]
    fn only_regular_files_are_listed_and_removing_a_link_spares_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("passwd");
        std::fs::write(&target, "root:x:0:0").unwrap();
        let tree = dir.path();
        std::fs::write(tree.join("a.jsonl"), "x").unwrap();
        std::fs::create_dir(tree.join("sub.jsonl")).unwrap();
        std::os::unix::fs::symlink(&target, tree.join("b.jsonl")).unwrap();

        let handle = DirHandle::open(tree).unwrap();
        let names: Vec<_> = handle
            .regular_files()
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, vec![OsString::from("a.jsonl")]);

        assert!(handle.remove_file("b.jsonl".as_ref()).is_err());
        assert!(handle.remove_file("sub.jsonl".as_ref()).is_err());
        handle.remove_file("a.jsonl".as_ref()).unwrap();
        assert!(!tree.join("a.jsonl").exists());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "root:x:0:0");
    }
}
