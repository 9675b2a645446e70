//! Where talon keeps its files: one home directory holding the database,
//! group folders, session transcripts, logs and configuration.
//!
//! Every path the host touches is derived here, so the layout is written
//! down once and the rest of the code never joins path strings by hand.
//!
//! ```text
//! <home>/talon.toml            configuration
//! <home>/.env                  NanoClaw-style secrets and overrides
//! <home>/data/talon.db         SQLite store
//! <home>/data/host.pid         singleton lock
//! <home>/data/state-dump.json  SIGUSR1 actor dump
//! <home>/data/sessions/<f>/    agent transcripts per group
//! <home>/groups/<f>/           group folder (mounted into its container)
//! <home>/groups/global/        memory shared by every group
//! <home>/logs/                 host logs
//! <home>/logs/containers/<f>/  container run logs of each group
//! ```
//!
//! Group folders, the global folder and session dirs are mounted writable
//! into containers, so their contents belong to the agent: nothing the host
//! writes for itself lives there (run logs used to, in `groups/<f>/logs/`).

use std::path::{Path, PathBuf};

/// The folder name of the memory shared by all groups.
const GLOBAL_FOLDER: &str = "global";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub home: PathBuf,
}

impl Paths {
    /// `--home` flag, else env `TALON_HOME`, else
    /// `${XDG_DATA_HOME:-$HOME/.local/share}/talon`.
    pub fn resolve(flag: Option<PathBuf>) -> Paths {
        let var = |name: &str| std::env::var_os(name).map(PathBuf::from);
        let home = resolve_home(flag, var("TALON_HOME"), var("XDG_DATA_HOME"), var("HOME"));
        // Docker bind mounts need absolute paths, and a relative home would
        // silently move if the working directory changed.
        let home = std::path::absolute(&home).unwrap_or(home);
        Paths { home }
    }

    /// A layout rooted at `home` as given (tests and tools).
    pub fn at(home: impl Into<PathBuf>) -> Paths {
        Paths { home: home.into() }
    }

    pub fn data(&self) -> PathBuf {
        self.home.join("data")
    }

    pub fn db(&self) -> PathBuf {
        self.data().join("talon.db")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.data().join("host.pid")
    }

    pub fn state_dump(&self) -> PathBuf {
        self.data().join("state-dump.json")
    }

    pub fn groups(&self) -> PathBuf {
        self.home.join("groups")
    }

    /// The group's folder. `folder` must already be validated
    /// (`[a-z0-9-]+`, see the store); this only joins.
    pub fn group_dir(&self, folder: &str) -> PathBuf {
        self.groups().join(folder)
    }

    /// Where the host keeps a group's container run logs: outside every
    /// mount, so the agent can neither read nor plant anything there.
    pub fn container_logs(&self, folder: &str) -> PathBuf {
        self.logs().join("containers").join(folder)
    }

    /// Where run logs were kept before they moved out of the group folder
    /// (agent-writable: only ever pruned, symlink-safely).
    pub fn legacy_group_logs(&self, folder: &str) -> PathBuf {
        self.group_dir(folder).join("logs")
    }

    pub fn global_dir(&self) -> PathBuf {
        self.groups().join(GLOBAL_FOLDER)
    }

    pub fn session_dir(&self, folder: &str) -> PathBuf {
        self.data().join("sessions").join(folder)
    }

    pub fn logs(&self) -> PathBuf {
        self.home.join("logs")
    }

    pub fn config_file(&self) -> PathBuf {
        self.home.join("talon.toml")
    }

    pub fn env_file(&self) -> PathBuf {
        self.home.join(".env")
    }

    /// Creates `data/`, `groups/`, `groups/global` and `logs/`.
    pub fn ensure(&self) -> std::io::Result<()> {
        for dir in [self.data(), self.groups(), self.global_dir(), self.logs()] {
            std::fs::create_dir_all(&dir).map_err(|err| with_path(err, &dir))?;
        }
        Ok(())
    }
}

/// The pure core of [`Paths::resolve`]: empty variables count as unset, as a
/// shell user would expect from `TALON_HOME= talon ...`.
fn resolve_home(
    flag: Option<PathBuf>,
    talon_home: Option<PathBuf>,
    xdg_data_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> PathBuf {
    let set = |value: Option<PathBuf>| value.filter(|path| !path.as_os_str().is_empty());
    if let Some(explicit) = set(flag).or_else(|| set(talon_home)) {
        return explicit;
    }
    // The XDG spec says a relative XDG_DATA_HOME is invalid and must be ignored.
    let data_home = set(xdg_data_home)
        .filter(|path| path.is_absolute())
        .or_else(|| set(home).map(|home| home.join(".local").join("share")));
    match data_home {
        Some(data_home) => data_home.join("talon"),
        // No HOME at all (a bare service environment): keep everything
        // beside the working directory rather than guessing a system path.
        None => PathBuf::from(".talon"),
    }
}

/// `create_dir_all` errors do not say which directory failed.
fn with_path(err: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<PathBuf> {
        Some(PathBuf::from(s))
    }

    #[test]
    fn flag_wins_over_everything() {
        let home = resolve_home(p("/flag"), p("/env"), p("/xdg"), p("/home/u"));
        assert_eq!(home, PathBuf::from("/flag"));
    }

    #[test]
    fn talon_home_wins_over_xdg() {
        let home = resolve_home(None, p("/env"), p("/xdg"), p("/home/u"));
        assert_eq!(home, PathBuf::from("/env"));
    }

    #[test]
    fn xdg_data_home_then_home() {
        assert_eq!(
            resolve_home(None, None, p("/xdg"), p("/home/u")),
            PathBuf::from("/xdg/talon")
        );
        assert_eq!(
            resolve_home(None, None, None, p("/home/u")),
            PathBuf::from("/home/u/.local/share/talon")
        );
    }

    #[test]
    fn empty_and_relative_variables_are_ignored() {
        assert_eq!(
            resolve_home(p(""), p(""), p("relative"), p("/home/u")),
            PathBuf::from("/home/u/.local/share/talon")
        );
        assert_eq!(
            resolve_home(None, None, None, None),
            PathBuf::from(".talon")
        );
    }

    #[test]
    fn resolve_makes_a_relative_flag_absolute() {
        let paths = Paths::resolve(p("some/dir"));
        assert!(paths.home.is_absolute());
        assert!(paths.home.ends_with("some/dir"));
    }

    #[test]
    fn layout() {
        let paths = Paths::at("/h");
        assert_eq!(paths.data(), PathBuf::from("/h/data"));
        assert_eq!(paths.db(), PathBuf::from("/h/data/talon.db"));
        assert_eq!(paths.pid_file(), PathBuf::from("/h/data/host.pid"));
        assert_eq!(paths.state_dump(), PathBuf::from("/h/data/state-dump.json"));
        assert_eq!(paths.groups(), PathBuf::from("/h/groups"));
        assert_eq!(paths.group_dir("fam"), PathBuf::from("/h/groups/fam"));
        assert_eq!(
            paths.container_logs("fam"),
            PathBuf::from("/h/logs/containers/fam")
        );
        assert_eq!(paths.global_dir(), PathBuf::from("/h/groups/global"));
        assert_eq!(
            paths.session_dir("fam"),
            PathBuf::from("/h/data/sessions/fam")
        );
        assert_eq!(paths.logs(), PathBuf::from("/h/logs"));
        assert_eq!(paths.config_file(), PathBuf::from("/h/talon.toml"));
        assert_eq!(paths.env_file(), PathBuf::from("/h/.env"));
    }

    #[test]
    fn ensure_creates_the_directories_and_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::at(tmp.path().join("home"));
        paths.ensure().unwrap();
        paths.ensure().unwrap();
        for dir in [
            paths.data(),
            paths.groups(),
            paths.global_dir(),
            paths.logs(),
        ] {
            assert!(dir.is_dir(), "{} missing", dir.display());
        }
    }

    #[test]
    fn ensure_error_names_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        // A file where the home directory should be makes every mkdir fail.
        let blocker = tmp.path().join("home");
        std::fs::write(&blocker, "").unwrap();
        let err = Paths::at(&blocker).ensure().unwrap_err();
        assert!(err.to_string().contains("home/data"), "{err}");
    }
}
