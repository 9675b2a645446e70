//! Mount security (SPEC §8): decides which extra host paths a group's
//! container may see, and whether it may write to them.
//!
//! The allowlist lives outside the project (`~/.config/talon/mount-allowlist.json`)
//! and is never mounted, so an agent cannot widen its own access. Every
//! decision is made on canonical paths (symlinks and `..` resolved), because a
//! link inside an allowed root could otherwise smuggle in any path on the host.
//! Whatever is unclear is refused: a missing allowlist means no extra mounts,
//! and an invalid one is an error that the caller treats the same way.
//!
//! The decisions are small pure functions (container-path validation, blocked
//! patterns, root matching, the read-only rule); [`check_mount`] only adds the
//! filesystem lookups around them.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// An extra mount a group's container config asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedMount {
    /// Path on the host; `~` means the host user's home.
    pub host_path: String,
    /// Name under `/workspace/extra/`; defaults to the host path's last component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_path: Option<String>,
    /// Asks for read-write; granted only if the allowlist root allows it (and never for non-main groups when the allowlist says so).
    #[serde(default)]
    pub read_write: bool,
}

/// Default blocked patterns (SPEC §8).
pub const DEFAULT_BLOCKED_PATTERNS: &[&str] = &[
    ".ssh",
    ".gnupg",
    ".gpg",
    ".aws",
    ".azure",
    ".gcloud",
    ".kube",
    ".docker",
    "credentials",
    ".env",
    ".netrc",
    ".npmrc",
    ".pypirc",
    "id_rsa",
    "id_ed25519",
    "private_key",
    ".secret",
];

/// Every extra mount lands below this directory inside the container.
pub const EXTRA_MOUNT_DIR: &str = "/workspace/extra";

/// File name of the allowlist inside talon's config directory.
pub const ALLOWLIST_FILE_NAME: &str = "mount-allowlist.json";

/// `${XDG_CONFIG_HOME:-$HOME/.config}/talon/mount-allowlist.json` — outside the
/// project, never mounted.
pub fn default_allowlist_path() -> PathBuf {
    allowlist_path_from(env_path("XDG_CONFIG_HOME"), env_path("HOME"))
}

/// The pure core of [`default_allowlist_path`]. Empty or relative variables
/// count as unset (the XDG spec says relative ones must be ignored).
fn allowlist_path_from(xdg_config_home: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
    let config_home =
        usable_dir(xdg_config_home).or_else(|| usable_dir(home).map(|h| h.join(".config")));
    match config_home {
        Some(dir) => dir.join("talon").join(ALLOWLIST_FILE_NAME),
        // No HOME (a bare service environment): a root-owned system path,
        // never one relative to the working directory, which may be the project.
        None => Path::new("/etc/talon").join(ALLOWLIST_FILE_NAME),
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).map(PathBuf::from)
}

fn usable_dir(dir: Option<PathBuf>) -> Option<PathBuf> {
    dir.filter(|dir| !dir.as_os_str().is_empty() && dir.is_absolute())
}

/// The host user's home, used to expand `~`.
fn home_dir() -> Option<PathBuf> {
    usable_dir(env_path("HOME"))
}

/// A root under which mounts are permitted.
#[derive(Debug, Clone)]
pub struct AllowedRoot {
    /// Canonical (symlinks resolved at load).
    pub path: PathBuf,
    pub allow_read_write: bool,
    pub description: Option<String>,
}

/// The loaded allowlist.
#[derive(Debug, Clone)]
pub struct MountAllowlist {
    pub roots: Vec<AllowedRoot>,
    /// The defaults plus the file's own patterns.
    pub blocked_patterns: Vec<String>,
    /// Non-main groups get read-only mounts even where a root allows writing.
    pub non_main_read_only: bool,
    /// Paths no mount may contain or lie inside: the allowlist file itself
    /// (filled by [`load_allowlist`]) and whatever the caller adds with
    /// [`MountAllowlist::protect`] (talon's own data directory, say).
    pub protected_paths: Vec<PathBuf>,
}

impl MountAllowlist {
    /// Keeps `path` out of every container: no mount may be it, lie inside it,
    /// or contain it.
    pub fn protect(&mut self, path: &Path) {
        // A path that does not exist yet is kept as given; once created, its
        // canonical form is the same unless a parent is a symlink.
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if !self.protected_paths.contains(&path) {
            self.protected_paths.push(path);
        }
    }
}

/// Why an allowlist file could not be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    #[error("cannot read mount allowlist {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid mount allowlist {file}: {problem}")]
    Invalid { file: String, problem: String },
}

/// The file's JSON shape (NanoClaw's format, camelCase).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AllowlistFile {
    allowed_roots: Vec<RootEntry>,
    #[serde(default)]
    blocked_patterns: Vec<String>,
    #[serde(default = "default_non_main_read_only")]
    non_main_read_only: bool,
}

fn default_non_main_read_only() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RootEntry {
    path: String,
    #[serde(default)]
    allow_read_write: bool,
    #[serde(default)]
    description: Option<String>,
}

/// Missing file -> `Ok(None)`: no extra mounts at all. Unreadable or invalid
/// -> `Err`: the caller fails closed (no extra mounts, error logged).
pub fn load_allowlist(path: &Path) -> Result<Option<MountAllowlist>, AllowlistError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AllowlistError::Unreadable {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut allowlist = parse_allowlist(&text, &path.display().to_string())?;
    // The allowlist must never be reachable from a container, through the
    // path it was loaded from or through the file a symlink there points to.
    if let Some(as_named) = canonical_parent_join(path) {
        allowlist.protect(&as_named);
    }
    allowlist.protect(path);
    Ok(Some(allowlist))
}

/// `path` with its parent canonicalised but its last component kept, so a
/// symlinked allowlist is protected under its own name as well as its target.
fn canonical_parent_join(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::canonicalize(parent)
        .ok()
        .map(|parent| parent.join(name))
}

/// Parses and validates an allowlist; `file_label` names the file in errors.
/// Roots are canonicalised here, so a root that does not exist is an error.
pub fn parse_allowlist(text: &str, file_label: &str) -> Result<MountAllowlist, AllowlistError> {
    parse_allowlist_with_home(text, file_label, home_dir().as_deref())
}

fn parse_allowlist_with_home(
    text: &str,
    file_label: &str,
    home: Option<&Path>,
) -> Result<MountAllowlist, AllowlistError> {
    let invalid = |problem: String| AllowlistError::Invalid {
        file: file_label.to_string(),
        problem,
    };
    let file: AllowlistFile = serde_json::from_str(text).map_err(|err| invalid(err.to_string()))?;
    let roots = file
        .allowed_roots
        .into_iter()
        .enumerate()
        .map(|(index, entry)| resolve_root(index, entry, home))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let blocked_patterns = merge_blocked_patterns(file.blocked_patterns).map_err(invalid)?;
    Ok(MountAllowlist {
        roots,
        blocked_patterns,
        non_main_read_only: file.non_main_read_only,
        protected_paths: Vec::new(),
    })
}

/// Expands and canonicalises one `allowedRoots` entry; the error names it.
fn resolve_root(
    index: usize,
    entry: RootEntry,
    home: Option<&Path>,
) -> Result<AllowedRoot, String> {
    let field = format!("allowedRoots[{index}].path");
    let expanded = expand_home(&entry.path, home)
        .map_err(|problem| format!("{field}: {:?}: {problem}", entry.path))?;
    let path = std::fs::canonicalize(&expanded).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => format!("{field}: {} does not exist", expanded.display()),
        _ => format!("{field}: {}: {err}", expanded.display()),
    })?;
    if !path.is_dir() {
        return Err(format!("{field}: {} is not a directory", path.display()));
    }
    Ok(AllowedRoot {
        path,
        allow_read_write: entry.allow_read_write,
        description: entry.description,
    })
}

/// The defaults followed by the file's own patterns (the file adds, never
/// replaces). Patterns are compared per path component, so an empty one would
/// block everything by accident and one with `/` would never match anything.
fn merge_blocked_patterns(from_file: Vec<String>) -> Result<Vec<String>, String> {
    let mut patterns: Vec<String> = DEFAULT_BLOCKED_PATTERNS
        .iter()
        .map(|p| p.to_string())
        .collect();
    for (index, pattern) in from_file.into_iter().enumerate() {
        if pattern.trim().is_empty() {
            return Err(format!("blockedPatterns[{index}]: empty pattern"));
        }
        if pattern.contains('/') {
            return Err(format!(
                "blockedPatterns[{index}]: {pattern:?} contains '/', but patterns match single path components"
            ));
        }
        if !patterns
            .iter()
            .any(|known| known.eq_ignore_ascii_case(&pattern))
        {
            patterns.push(pattern);
        }
    }
    Ok(patterns)
}

/// Why a host path cannot even be looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostPathProblem {
    #[error("it is not absolute (use an absolute path or ~/...)")]
    NotAbsolute,
    #[error("it starts with ~ but HOME is not set")]
    NoHome,
}

/// Expands a leading `~` or `~/`; other `~user` forms are not supported and,
/// being relative, are refused like any relative path (a relative path would
/// depend on the working directory).
fn expand_home(raw: &str, home: Option<&Path>) -> Result<PathBuf, HostPathProblem> {
    let under_home = if raw == "~" {
        Some("")
    } else {
        raw.strip_prefix("~/")
    };
    let expanded = match under_home {
        // Leading slashes are trimmed: joining an absolute path would replace
        // the home instead of descending into it.
        Some(rest) => home
            .ok_or(HostPathProblem::NoHome)?
            .join(rest.trim_start_matches('/')),
        None => PathBuf::from(raw),
    };
    if expanded.is_absolute() {
        Ok(expanded)
    } else {
        Err(HostPathProblem::NotAbsolute)
    }
}

/// Why a container path (the name under `/workspace/extra/`) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ContainerPathProblem {
    #[error("it is empty")]
    Empty,
    #[error("it contains a NUL or control character")]
    ControlCharacter,
    #[error("it is absolute; give a name relative to /workspace/extra")]
    Absolute,
    #[error("it contains ':', which Docker reads as a separator")]
    Colon,
    #[error("it contains '..'")]
    DotDot,
    #[error("it has an empty or '.' component")]
    EmptyOrDotComponent,
}

/// Validates a name under `/workspace/extra/`. Deliberately strict, so that
/// equal mounts have equal strings and nothing can climb out of the directory.
fn check_container_path(name: &str) -> Result<(), ContainerPathProblem> {
    if name.is_empty() {
        Err(ContainerPathProblem::Empty)
    } else if name.chars().any(char::is_control) {
        Err(ContainerPathProblem::ControlCharacter)
    } else if name.starts_with('/') {
        Err(ContainerPathProblem::Absolute)
    } else if name.contains(':') {
        Err(ContainerPathProblem::Colon)
    } else if name.contains("..") {
        Err(ContainerPathProblem::DotDot)
    } else if name.split('/').any(|part| part.is_empty() || part == ".") {
        Err(ContainerPathProblem::EmptyOrDotComponent)
    } else {
        Ok(())
    }
}

/// The default container name: the last component of the (expanded) host
/// path as written. It may be `..` or empty, which the container-path check
/// then refuses.
fn default_container_name(expanded_host: &Path) -> String {
    let text = expanded_host.to_string_lossy();
    let trimmed = text.trim_end_matches('/');
    trimmed.rsplit('/').next().unwrap_or_default().to_string()
}

/// The first blocked pattern that a component of `host` equals or contains,
/// with that component. Case-insensitive, since some host filesystems are.
fn blocked_pattern_hit<'a>(host: &Path, patterns: &'a [String]) -> Option<(&'a str, String)> {
    host.components().find_map(|component| {
        let Component::Normal(name) = component else {
            return None;
        };
        let name = name.to_string_lossy();
        let lowered = name.to_lowercase();
        patterns
            .iter()
            .find(|pattern| lowered.contains(&pattern.to_lowercase()))
            .map(|pattern| (pattern.as_str(), name.into_owned()))
    })
}

/// The most specific root containing `host`, compared component-wise (so
/// `/a/projects-evil` is not under `/a/projects`). The most specific root
/// wins so that a read-only subtree can sit inside a read-write root.
fn matching_root<'a>(host: &Path, roots: &'a [AllowedRoot]) -> Option<&'a AllowedRoot> {
    roots
        .iter()
        .filter(|root| host.starts_with(&root.path))
        .max_by_key(|root| root.path.components().count())
}

/// A protected path that mounting `host` would expose (`host` is it, inside
/// it, or contains it).
fn protected_overlap<'a>(host: &Path, protected: &'a [PathBuf]) -> Option<&'a Path> {
    protected
        .iter()
        .find(|protected| host.starts_with(protected) || protected.starts_with(host))
        .map(PathBuf::as_path)
}

/// Writing needs all three: the request asks, the root allows, and the group
/// is main or the allowlist lets non-main groups write.
fn is_read_only(
    requested_rw: bool,
    root_allows_rw: bool,
    is_main: bool,
    non_main_read_only: bool,
) -> bool {
    let may_write = root_allows_rw && (is_main || !non_main_read_only);
    !(requested_rw && may_write)
}

/// An extra mount that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovedMount {
    /// Canonical host path.
    pub host: PathBuf,
    /// `/workspace/extra/<name>`.
    pub container: String,
    pub read_only: bool,
}

/// Why a requested mount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountRefusal {
    #[error("no mount allowlist is loaded, so no extra mounts are allowed")]
    NoAllowlist,
    #[error("container path {container_path:?} is refused: {problem}")]
    InvalidContainerPath {
        container_path: String,
        problem: ContainerPathProblem,
    },
    #[error("host path {host_path:?} is refused: {problem}")]
    InvalidHostPath {
        host_path: String,
        problem: HostPathProblem,
    },
    #[error("host path {host_path:?} cannot be resolved: {detail}")]
    HostPathMissing { host_path: String, detail: String },
    #[error("host path {} would expose {}, which talon keeps out of containers", host.display(), protected.display())]
    Protected { host: PathBuf, protected: PathBuf },
    #[error("host path {} is blocked: component {component:?} matches pattern {pattern:?}", host.display())]
    Blocked {
        host: PathBuf,
        pattern: String,
        component: String,
    },
    #[error("host path {} is not under any allowed root", host.display())]
    OutsideRoots { host: PathBuf },
    #[error("container path {container} overlaps {existing}, which an earlier mount of this group already uses")]
    ContainerPathTaken { container: String, existing: String },
}

/// Checks one request: canonicalise the host path (symlinks resolved, `~`
/// expanded) before checking; refuse a bad container path; refuse a path with
/// a blocked component, one that would expose a protected path, or one outside
/// every allowed root; read-only unless writing is asked for and allowed.
pub fn check_mount(
    allowlist: Option<&MountAllowlist>,
    request: &RequestedMount,
    is_main: bool,
) -> Result<ApprovedMount, MountRefusal> {
    check_mount_with_home(allowlist, request, is_main, home_dir().as_deref())
}

fn check_mount_with_home(
    allowlist: Option<&MountAllowlist>,
    request: &RequestedMount,
    is_main: bool,
    home: Option<&Path>,
) -> Result<ApprovedMount, MountRefusal> {
    let allowlist = allowlist.ok_or(MountRefusal::NoAllowlist)?;
    let expanded =
        expand_home(&request.host_path, home).map_err(|problem| MountRefusal::InvalidHostPath {
            host_path: request.host_path.clone(),
            problem,
        })?;
    let name = match &request.container_path {
        Some(name) => name.clone(),
        None => default_container_name(&expanded),
    };
    check_container_path(&name).map_err(|problem| MountRefusal::InvalidContainerPath {
        container_path: name.clone(),
        problem,
    })?;
    let host = std::fs::canonicalize(&expanded).map_err(|err| MountRefusal::HostPathMissing {
        host_path: request.host_path.clone(),
        detail: err.to_string(),
    })?;
    if let Some(protected) = protected_overlap(&host, &allowlist.protected_paths) {
        return Err(MountRefusal::Protected {
            protected: protected.to_path_buf(),
            host,
        });
    }
    if let Some((pattern, component)) = blocked_pattern_hit(&host, &allowlist.blocked_patterns) {
        return Err(MountRefusal::Blocked {
            pattern: pattern.to_string(),
            component,
            host,
        });
    }
    let Some(root) = matching_root(&host, &allowlist.roots) else {
        return Err(MountRefusal::OutsideRoots { host });
    };
    let read_only = is_read_only(
        request.read_write,
        root.allow_read_write,
        is_main,
        allowlist.non_main_read_only,
    );
    Ok(ApprovedMount {
        host,
        container: format!("{EXTRA_MOUNT_DIR}/{name}"),
        read_only,
    })
}

/// The container path of an already approved mount that `container` would
/// collide with: the same path, or one nested in the other (a nested mount
/// would make Docker create its mount point inside the outer host directory).
fn container_overlap<'a>(container: &str, approved: &'a [ApprovedMount]) -> Option<&'a str> {
    let candidate = Path::new(container);
    approved
        .iter()
        .map(|mount| mount.container.as_str())
        .find(|existing| {
            candidate.starts_with(existing) || Path::new(existing).starts_with(candidate)
        })
}

/// All of a group's requests: approved ones returned, every refusal logged.
/// A request whose container path collides with an earlier approved one is refused.
pub fn approve_mounts(
    allowlist: Option<&MountAllowlist>,
    requests: &[RequestedMount],
    is_main: bool,
    group: &str,
) -> Vec<ApprovedMount> {
    approve_mounts_with_home(allowlist, requests, is_main, group, home_dir().as_deref())
}

fn approve_mounts_with_home(
    allowlist: Option<&MountAllowlist>,
    requests: &[RequestedMount],
    is_main: bool,
    group: &str,
    home: Option<&Path>,
) -> Vec<ApprovedMount> {
    let mut approved: Vec<ApprovedMount> = Vec::new();
    for request in requests {
        let decision = check_mount_with_home(allowlist, request, is_main, home).and_then(|mount| {
            match container_overlap(&mount.container, &approved) {
                Some(existing) => Err(MountRefusal::ContainerPathTaken {
                    container: mount.container.clone(),
                    existing: existing.to_string(),
                }),
                None => Ok(mount),
            }
        });
        match decision {
            Ok(mount) => {
                tracing::debug!(
                    group,
                    host = %mount.host.display(),
                    container = %mount.container,
                    read_only = mount.read_only,
                    "extra mount approved"
                );
                approved.push(mount);
            }
            Err(reason) => {
                tracing::warn!(group, host_path = %request.host_path, %reason, "extra mount refused");
            }
        }
    }
    approved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(path: &Path, allow_read_write: bool) -> AllowedRoot {
        AllowedRoot {
            path: path.to_path_buf(),
            allow_read_write,
            description: None,
        }
    }

    #[test]
    fn allowlist_path_prefers_absolute_xdg_then_home() {
        let cases: &[(Option<&str>, Option<&str>, &str)] = &[
            (
                Some("/xdg"),
                Some("/home/a"),
                "/xdg/talon/mount-allowlist.json",
            ),
            (
                None,
                Some("/home/a"),
                "/home/a/.config/talon/mount-allowlist.json",
            ),
            (
                Some(""),
                Some("/home/a"),
                "/home/a/.config/talon/mount-allowlist.json",
            ),
            (
                Some("rel"),
                Some("/home/a"),
                "/home/a/.config/talon/mount-allowlist.json",
            ),
            (None, None, "/etc/talon/mount-allowlist.json"),
            (
                None,
                Some("relative-home"),
                "/etc/talon/mount-allowlist.json",
            ),
        ];
        for (xdg, home, expected) in cases {
            let got = allowlist_path_from(xdg.map(PathBuf::from), home.map(PathBuf::from));
            assert_eq!(got, PathBuf::from(expected), "xdg={xdg:?} home={home:?}");
        }
    }

    #[test]
    fn home_expansion() {
        let home = Some(Path::new("/home/a"));
        assert_eq!(expand_home("~", home), Ok(PathBuf::from("/home/a/")));
        assert_eq!(expand_home("~/p/x", home), Ok(PathBuf::from("/home/a/p/x")));
        // A doubled slash must not escape the home by joining an absolute path.
        assert_eq!(
            expand_home("~//etc", home),
            Ok(PathBuf::from("/home/a/etc"))
        );
        assert_eq!(expand_home("/abs/p", home), Ok(PathBuf::from("/abs/p")));
        assert_eq!(
            expand_home("~bob/p", home),
            Err(HostPathProblem::NotAbsolute)
        );
        assert_eq!(
            expand_home("rel/p", home),
            Err(HostPathProblem::NotAbsolute)
        );
        assert_eq!(expand_home("", home), Err(HostPathProblem::NotAbsolute));
        assert_eq!(expand_home("~/p", None), Err(HostPathProblem::NoHome));
    }

    #[test]
    fn container_path_rules() {
        use ContainerPathProblem::*;
        let cases: &[(&str, Result<(), ContainerPathProblem>)] = &[
            ("code", Ok(())),
            ("code/sub", Ok(())),
            ("my repo.v2", Ok(())),
            ("", Err(Empty)),
            ("/abs", Err(Absolute)),
            ("../x", Err(DotDot)),
            ("a/../b", Err(DotDot)),
            ("a..b", Err(DotDot)),
            ("..", Err(DotDot)),
            ("a:b", Err(Colon)),
            ("a\0b", Err(ControlCharacter)),
            ("a\nb", Err(ControlCharacter)),
            (".", Err(EmptyOrDotComponent)),
            ("a/./b", Err(EmptyOrDotComponent)),
            ("a//b", Err(EmptyOrDotComponent)),
            ("a/", Err(EmptyOrDotComponent)),
        ];
        for (name, expected) in cases {
            assert_eq!(check_container_path(name), *expected, "{name:?}");
        }
    }

    #[test]
    fn default_container_name_is_last_component_as_written() {
        assert_eq!(default_container_name(Path::new("/a/b/code")), "code");
        assert_eq!(default_container_name(Path::new("/a/b/code/")), "code");
        assert_eq!(default_container_name(Path::new("/a/b/..")), "..");
        assert_eq!(default_container_name(Path::new("/")), "");
    }

    #[test]
    fn blocked_patterns_match_components_case_insensitively() {
        let patterns: Vec<String> = DEFAULT_BLOCKED_PATTERNS
            .iter()
            .map(|p| p.to_string())
            .collect();
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("/home/a/projects/app", None),
            ("/home/a/.ssh", Some((".ssh", ".ssh"))),
            ("/home/a/.ssh/keys", Some((".ssh", ".ssh"))),
            (
                "/home/a/my-credentials-store/x",
                Some(("credentials", "my-credentials-store")),
            ),
            ("/home/a/keys/id_rsa", Some(("id_rsa", "id_rsa"))),
            ("/home/a/keys/id_rsa.pub", Some(("id_rsa", "id_rsa.pub"))),
            ("/home/a/.SSH", Some((".ssh", ".SSH"))),
            ("/home/a/app/.env.local", Some((".env", ".env.local"))),
            ("/home/a/app/.venv", None),
        ];
        for (path, expected) in cases {
            let got = blocked_pattern_hit(Path::new(path), &patterns);
            let got = got.as_ref().map(|(p, c)| (*p, c.as_str()));
            assert_eq!(got, *expected, "{path}");
        }
    }

    #[test]
    fn merged_patterns_keep_defaults_and_reject_useless_ones() {
        let merged = merge_blocked_patterns(vec!["password".into(), ".SSH".into()]).unwrap();
        assert_eq!(merged.len(), DEFAULT_BLOCKED_PATTERNS.len() + 1);
        assert!(DEFAULT_BLOCKED_PATTERNS
            .iter()
            .all(|d| merged.iter().any(|m| m == d)));
        assert_eq!(merged.last().map(String::as_str), Some("password"));
        assert!(merge_blocked_patterns(vec!["".into()])
            .unwrap_err()
            .contains("blockedPatterns[0]"));
        assert!(merge_blocked_patterns(vec!["ok".into(), "  ".into()])
            .unwrap_err()
            .contains("blockedPatterns[1]"));
        assert!(merge_blocked_patterns(vec!["a/b".into()])
            .unwrap_err()
            .contains("'/'"));
    }

    #[test]
    fn most_specific_root_wins_and_prefixes_are_component_wise() {
        let roots = vec![
            root(Path::new("/r"), true),
            root(Path::new("/r/projects"), false),
        ];
        let hit = |p: &str| matching_root(Path::new(p), &roots).map(|r| r.path.clone());
        assert_eq!(hit("/r/projects/app"), Some(PathBuf::from("/r/projects")));
        assert_eq!(hit("/r/projects"), Some(PathBuf::from("/r/projects")));
        assert_eq!(hit("/r/projects-evil/x"), Some(PathBuf::from("/r")));
        assert_eq!(hit("/rx"), None);
        let only_projects = vec![root(Path::new("/r/projects"), true)];
        assert!(matching_root(Path::new("/r/projects-evil"), &only_projects).is_none());
    }

    #[test]
    fn protected_paths_block_ancestors_and_descendants() {
        let protected = vec![PathBuf::from("/h/.config/talon/mount-allowlist.json")];
        let hit = |p: &str| protected_overlap(Path::new(p), &protected).is_some();
        assert!(hit("/h"));
        assert!(hit("/h/.config"));
        assert!(hit("/h/.config/talon/mount-allowlist.json"));
        assert!(!hit("/h/.config/other"));
        assert!(!hit("/h/.config/talon-x"));
    }

    #[test]
    fn read_only_rule_truth_table() {
        // (requested_rw, root_allows_rw, is_main, non_main_read_only) -> read_only
        let cases = [
            ((false, true, true, false), true),
            ((true, false, true, false), true),
            ((true, true, true, true), false),
            ((true, true, false, true), true),
            ((true, true, false, false), false),
            ((false, false, false, false), true),
        ];
        for ((rw, allows, main, nmro), expected) in cases {
            assert_eq!(
                is_read_only(rw, allows, main, nmro),
                expected,
                "{rw} {allows} {main} {nmro}"
            );
        }
    }

    #[test]
    fn container_overlap_is_component_wise() {
        let approved = vec![ApprovedMount {
            host: PathBuf::from("/r/a"),
            container: "/workspace/extra/code".into(),
            read_only: true,
        }];
        assert_eq!(
            container_overlap("/workspace/extra/code", &approved),
            Some("/workspace/extra/code")
        );
        assert_eq!(
            container_overlap("/workspace/extra/code/sub", &approved),
            Some("/workspace/extra/code")
        );
        assert_eq!(
            container_overlap("/workspace/extra/code-2", &approved),
            None
        );
        let nested = vec![ApprovedMount {
            container: "/workspace/extra/code/sub".into(),
            ..approved[0].clone()
        }];
        assert_eq!(
            container_overlap("/workspace/extra/code", &nested),
            Some("/workspace/extra/code/sub")
        );
    }

    #[test]
    fn tilde_roots_and_requests_expand_to_the_given_home() {
        let home = tempfile::tempdir().unwrap();
        let home_path = home.path().canonicalize().unwrap();
        std::fs::create_dir_all(home_path.join("projects/app")).unwrap();
        let text = r#"{ "allowedRoots": [ { "path": "~/projects", "allowReadWrite": true } ] }"#;
        let allowlist = parse_allowlist_with_home(text, "test.json", Some(&home_path)).unwrap();
        assert_eq!(allowlist.roots[0].path, home_path.join("projects"));
        assert!(allowlist.non_main_read_only);

        let request = RequestedMount {
            host_path: "~/projects/app".into(),
            container_path: None,
            read_write: true,
        };
        let mount =
            check_mount_with_home(Some(&allowlist), &request, true, Some(&home_path)).unwrap();
        assert_eq!(
            mount,
            ApprovedMount {
                host: home_path.join("projects/app"),
                container: "/workspace/extra/app".into(),
                read_only: false,
            }
        );
        let refused = check_mount_with_home(Some(&allowlist), &request, true, None).unwrap_err();
        assert!(matches!(
            refused,
            MountRefusal::InvalidHostPath {
                problem: HostPathProblem::NoHome,
                ..
            }
        ));

        let err = parse_allowlist_with_home(text, "test.json", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test.json")
                && err.contains("allowedRoots[0].path")
                && err.contains("HOME"),
            "{err}"
        );
    }

    #[test]
    fn load_protects_the_allowlist_file_itself() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let config = base.join("config/talon");
        std::fs::create_dir_all(&config).unwrap();
        let file = config.join(ALLOWLIST_FILE_NAME);
        let body =
            serde_json::json!({ "allowedRoots": [ { "path": base, "allowReadWrite": true } ] });
        std::fs::write(&file, body.to_string()).unwrap();
        let allowlist = load_allowlist(&file).unwrap().unwrap();
        assert!(allowlist.protected_paths.contains(&file));

        for host in [base.join("config"), config.clone(), file.clone()] {
            let request = RequestedMount {
                host_path: host.display().to_string(),
                container_path: Some("c".into()),
                read_write: false,
            };
            let refused = check_mount(Some(&allowlist), &request, true).unwrap_err();
            assert!(
                matches!(refused, MountRefusal::Protected { .. }),
                "{host:?}: {refused}"
            );
        }
    }

    /// Collects formatted tracing output so the refusal log can be asserted.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn refusals_are_logged_with_group_path_and_reason() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        let request = RequestedMount {
            host_path: "/nowhere/data".into(),
            container_path: None,
            read_write: false,
        };
        let approved = tracing::subscriber::with_default(subscriber, || {
            approve_mounts(None, std::slice::from_ref(&request), false, "family-chat")
        });
        assert!(approved.is_empty());
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("WARN"), "{log}");
        assert!(log.contains("group=\"family-chat\""), "{log}");
        assert!(log.contains("host_path=/nowhere/data"), "{log}");
        assert!(log.contains("no mount allowlist"), "{log}");
    }
}
