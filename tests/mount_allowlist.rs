//! Black-box tests of the mount allowlist (SPEC §8): a real directory tree per
//! test, a real allowlist file, and the public API only.

use std::path::{Path, PathBuf};

use serde_json::json;
use talon::mount_security::{
    approve_mounts, check_mount, load_allowlist, parse_allowlist, AllowlistError, ApprovedMount,
    MountAllowlist, MountRefusal, RequestedMount, DEFAULT_BLOCKED_PATTERNS,
};

/// A temporary host tree:
///
/// ```text
/// base/
///   projects/            allowed root, read-write
///     app/  app/.ssh/  app/id_rsa  my-credentials-store/  password-vault/
///     link-out -> ../outside/notes
///     link-up  -> ..                 (points at base itself)
///   readonly/docs/       allowed root, read-only
///   projects-evil/x/     prefix trap, not allowed
///   outside/notes/       not allowed
///   link-in -> projects/app
/// ```
struct Tree {
    _dir: tempfile::TempDir,
    base: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        for sub in [
            "projects/app/.ssh",
            "projects/my-credentials-store",
            "projects/password-vault",
            "readonly/docs",
            "projects-evil/x",
            "outside/notes",
        ] {
            std::fs::create_dir_all(base.join(sub)).unwrap();
        }
        std::fs::write(base.join("projects/app/id_rsa"), "not a real key").unwrap();
        std::os::unix::fs::symlink(base.join("outside/notes"), base.join("projects/link-out"))
            .unwrap();
        std::os::unix::fs::symlink(&base, base.join("projects/link-up")).unwrap();
        std::os::unix::fs::symlink(base.join("projects/app"), base.join("link-in")).unwrap();
        Tree { _dir: dir, base }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }

    /// Writes an allowlist file (outside the allowed roots) and loads it.
    fn allowlist(&self, non_main_read_only: bool) -> MountAllowlist {
        let file = self.write_file(
            &json!({
                "allowedRoots": [
                    { "path": self.path("projects"), "allowReadWrite": true, "description": "code" },
                    { "path": self.path("readonly"), "allowReadWrite": false },
                ],
                "blockedPatterns": ["password"],
                "nonMainReadOnly": non_main_read_only,
            })
            .to_string(),
        );
        load_allowlist(&file).unwrap().expect("the file exists")
    }

    fn write_file(&self, text: &str) -> PathBuf {
        let config = self.path("config");
        std::fs::create_dir_all(&config).unwrap();
        let file = config.join("mount-allowlist.json");
        std::fs::write(&file, text).unwrap();
        file
    }
}

fn request(host_path: String, container_path: Option<&str>, read_write: bool) -> RequestedMount {
    RequestedMount {
        host_path,
        container_path: container_path.map(str::to_string),
        read_write,
    }
}

enum Expect {
    /// (canonical host relative to base, container path, read_only)
    Approved(&'static str, &'static str, bool),
    Refused(fn(&MountRefusal) -> bool),
}

struct Case {
    name: &'static str,
    /// Relative to the tree's base, or absolute/`~` if it starts with `/` or `~`.
    host: &'static str,
    container: Option<&'static str>,
    read_write: bool,
    is_main: bool,
    non_main_read_only: bool,
    expect: Expect,
}

const fn case(name: &'static str, host: &'static str, expect: Expect) -> Case {
    Case {
        name,
        host,
        container: None,
        read_write: false,
        is_main: true,
        non_main_read_only: true,
        expect,
    }
}

fn cases() -> Vec<Case> {
    use Expect::*;
    vec![
        case(
            "inside a root: read-only by default",
            "projects/app",
            Approved("projects/app", "/workspace/extra/app", true),
        ),
        Case {
            read_write: true,
            ..case(
                "inside a rw root, asked rw: read-write",
                "projects/app",
                Approved("projects/app", "/workspace/extra/app", false),
            )
        },
        Case {
            read_write: true,
            ..case(
                "inside a ro root, asked rw: read-only",
                "readonly/docs",
                Approved("readonly/docs", "/workspace/extra/docs", true),
            )
        },
        case(
            "the root itself",
            "projects",
            Approved("projects", "/workspace/extra/projects", true),
        ),
        Case {
            container: Some("code/main"),
            ..case(
                "explicit container path",
                "projects/app",
                Approved("projects/app", "/workspace/extra/code/main", true),
            )
        },
        Case {
            read_write: true,
            is_main: false,
            ..case(
                "non-main asking rw gets ro when nonMainReadOnly",
                "projects/app",
                Approved("projects/app", "/workspace/extra/app", true),
            )
        },
        Case {
            read_write: true,
            is_main: false,
            non_main_read_only: false,
            ..case(
                "non-main asking rw gets rw when not nonMainReadOnly",
                "projects/app",
                Approved("projects/app", "/workspace/extra/app", false),
            )
        },
        case(
            "symlink inside a root pointing outside",
            "projects/link-out",
            Refused(|r| matches!(r, MountRefusal::OutsideRoots { .. })),
        ),
        case(
            "symlink inside a root pointing above it",
            "projects/link-up/outside",
            Refused(|r| matches!(r, MountRefusal::OutsideRoots { .. })),
        ),
        // The default name comes from the path as written ("link-in"), the host from its target.
        case(
            "symlink from outside into a root",
            "link-in",
            Approved("projects/app", "/workspace/extra/link-in", true),
        ),
        Case {
            container: Some("notes"),
            ..case(
                "'..' escaping a root",
                "projects/app/../../outside/notes",
                Refused(|r| matches!(r, MountRefusal::OutsideRoots { .. })),
            )
        },
        Case {
            container: Some("app"),
            ..case(
                "'..' staying inside a root",
                "projects/app/../app",
                Approved("projects/app", "/workspace/extra/app", true),
            )
        },
        case(
            "default name '..' refused",
            "projects/app/..",
            Refused(|r| matches!(r, MountRefusal::InvalidContainerPath { .. })),
        ),
        case(
            "prefix trap",
            "projects-evil/x",
            Refused(|r| matches!(r, MountRefusal::OutsideRoots { .. })),
        ),
        case(
            "outside every root",
            "outside/notes",
            Refused(|r| matches!(r, MountRefusal::OutsideRoots { .. })),
        ),
        case(
            "missing host path",
            "projects/nope",
            Refused(|r| matches!(r, MountRefusal::HostPathMissing { .. })),
        ),
        case(
            "~user host path (not supported)",
            "~nobody/projects",
            Refused(|r| matches!(r, MountRefusal::InvalidHostPath { .. })),
        ),
        case(
            ".ssh directory",
            "projects/app/.ssh",
            Refused(|r| matches!(r, MountRefusal::Blocked { pattern, .. } if pattern == ".ssh")),
        ),
        case(
            "id_rsa file",
            "projects/app/id_rsa",
            Refused(|r| matches!(r, MountRefusal::Blocked { pattern, .. } if pattern == "id_rsa")),
        ),
        case(
            "credentials inside a component",
            "projects/my-credentials-store",
            Refused(
                |r| matches!(r, MountRefusal::Blocked { pattern, component, .. } if pattern == "credentials" && component == "my-credentials-store"),
            ),
        ),
        case(
            "pattern from the file",
            "projects/password-vault",
            Refused(
                |r| matches!(r, MountRefusal::Blocked { pattern, .. } if pattern == "password"),
            ),
        ),
        Case {
            container: Some("../x"),
            ..case(
                "container ../x",
                "projects/app",
                Refused(|r| matches!(r, MountRefusal::InvalidContainerPath { .. })),
            )
        },
        Case {
            container: Some("/abs"),
            ..case(
                "container /abs",
                "projects/app",
                Refused(|r| matches!(r, MountRefusal::InvalidContainerPath { .. })),
            )
        },
        Case {
            container: Some("a:b"),
            ..case(
                "container a:b",
                "projects/app",
                Refused(|r| matches!(r, MountRefusal::InvalidContainerPath { .. })),
            )
        },
        Case {
            container: Some("a/../b"),
            ..case(
                "container a/../b",
                "projects/app",
                Refused(|r| matches!(r, MountRefusal::InvalidContainerPath { .. })),
            )
        },
        Case {
            container: Some(""),
            ..case(
                "container empty",
                "projects/app",
                Refused(|r| matches!(r, MountRefusal::InvalidContainerPath { .. })),
            )
        },
        case(
            "config dir holding the allowlist",
            "config",
            Refused(|r| matches!(r, MountRefusal::Protected { .. })),
        ),
    ]
}

#[test]
fn check_mount_table() {
    for case in cases() {
        let tree = Tree::new();
        let allowlist = tree.allowlist(case.non_main_read_only);
        let host_path = if case.host.starts_with('/') || case.host.starts_with('~') {
            case.host.to_string()
        } else {
            tree.path(case.host).display().to_string()
        };
        let got = check_mount(
            Some(&allowlist),
            &request(host_path, case.container, case.read_write),
            case.is_main,
        );
        match (&case.expect, got) {
            (Expect::Approved(host, container, read_only), Ok(mount)) => assert_eq!(
                mount,
                ApprovedMount {
                    host: tree.path(host),
                    container: container.to_string(),
                    read_only: *read_only,
                },
                "{}",
                case.name
            ),
            (Expect::Refused(is_expected), Err(refusal)) => {
                assert!(
                    is_expected(&refusal),
                    "{}: unexpected refusal {refusal:?}",
                    case.name
                );
                assert!(!refusal.to_string().is_empty(), "{}", case.name);
            }
            (Expect::Approved(..), Err(refusal)) => panic!("{}: refused: {refusal}", case.name),
            (Expect::Refused(_), Ok(mount)) => panic!("{}: approved {mount:?}", case.name),
        }
    }
}

#[test]
fn refusal_messages_say_why() {
    let tree = Tree::new();
    let allowlist = tree.allowlist(true);
    let why = |rel: &str, container: Option<&str>| {
        check_mount(
            Some(&allowlist),
            &request(tree.path(rel).display().to_string(), container, false),
            true,
        )
        .unwrap_err()
        .to_string()
    };
    let blocked = why("projects/app/.ssh", None);
    assert!(
        blocked.contains("blocked") && blocked.contains(".ssh"),
        "{blocked}"
    );
    let outside = why("projects-evil/x", None);
    assert!(
        outside.contains("not under any allowed root") && outside.contains("projects-evil"),
        "{outside}"
    );
    let bad_container = why("projects/app", Some("a:b"));
    assert!(
        bad_container.contains("\"a:b\"") && bad_container.contains("':'"),
        "{bad_container}"
    );
}

#[test]
fn missing_allowlist_means_no_extra_mounts() {
    let tree = Tree::new();
    let loaded = load_allowlist(&tree.path("config/absent.json")).unwrap();
    assert!(loaded.is_none());
    let req = request(tree.path("projects/app").display().to_string(), None, false);
    assert_eq!(
        check_mount(None, &req, true),
        Err(MountRefusal::NoAllowlist)
    );
    assert!(approve_mounts(None, &[req], true, "main").is_empty());
}

#[test]
fn invalid_allowlists_fail_closed_naming_the_file_and_the_problem() {
    let tree = Tree::new();
    let projects = tree.path("projects");
    let missing = tree.path("no-such-root");
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "not JSON",
            "{ allowedRoots: ".into(),
            vec!["key must be a string".into()],
        ),
        (
            "unknown top-level key",
            json!({ "allowedRoots": [], "allowRoots": [] }).to_string(),
            vec!["unknown field `allowRoots`".into()],
        ),
        (
            "unknown root key",
            json!({ "allowedRoots": [ { "path": projects, "rw": true } ] }).to_string(),
            vec!["unknown field `rw`".into()],
        ),
        (
            "missing allowedRoots",
            json!({ "blockedPatterns": [] }).to_string(),
            vec!["missing field `allowedRoots`".into()],
        ),
        (
            "wrong type",
            json!({ "allowedRoots": [], "nonMainReadOnly": "yes" }).to_string(),
            vec!["invalid type".into()],
        ),
        (
            "missing root",
            json!({ "allowedRoots": [ { "path": projects }, { "path": missing } ] }).to_string(),
            vec![format!(
                "allowedRoots[1].path: {} does not exist",
                missing.display()
            )],
        ),
        (
            "root is a file",
            json!({ "allowedRoots": [ { "path": tree.path("projects/app/id_rsa") } ] }).to_string(),
            vec!["allowedRoots[0].path".into(), "not a directory".into()],
        ),
        (
            "relative root",
            json!({ "allowedRoots": [ { "path": "projects" } ] }).to_string(),
            vec!["allowedRoots[0].path".into(), "not absolute".into()],
        ),
        (
            "empty pattern",
            json!({ "allowedRoots": [], "blockedPatterns": [""] }).to_string(),
            vec!["blockedPatterns[0]".into()],
        ),
    ];
    for (name, text, needles) in cases {
        let file = tree.write_file(&text);
        let err = load_allowlist(&file).expect_err(name);
        let message = err.to_string();
        assert!(
            matches!(err, AllowlistError::Invalid { .. }),
            "{name}: {err:?}"
        );
        assert!(
            message.starts_with(&format!("invalid mount allowlist {}: ", file.display())),
            "{name}: {message}"
        );
        for needle in needles {
            assert!(
                message.contains(&needle),
                "{name}: {message:?} lacks {needle:?}"
            );
        }
    }
}

#[test]
fn unreadable_allowlist_is_an_error_naming_the_file() {
    let tree = Tree::new();
    // A directory where the file should be: it exists but cannot be read as one.
    let err = load_allowlist(&tree.path("projects")).unwrap_err();
    assert!(matches!(err, AllowlistError::Unreadable { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&tree.path("projects").display().to_string()),
        "{err}"
    );
}

#[test]
fn parse_defaults_and_pattern_merge() {
    let tree = Tree::new();
    let text = json!({ "allowedRoots": [ { "path": tree.path("link-in") } ], "blockedPatterns": ["password", ".ssh"] }).to_string();
    let allowlist = parse_allowlist(&text, "label.json").unwrap();
    assert!(
        allowlist.non_main_read_only,
        "nonMainReadOnly defaults to true"
    );
    assert_eq!(allowlist.roots.len(), 1);
    assert_eq!(
        allowlist.roots[0].path,
        tree.path("projects/app"),
        "roots are canonical"
    );
    assert!(
        !allowlist.roots[0].allow_read_write,
        "allowReadWrite defaults to false"
    );
    for default in DEFAULT_BLOCKED_PATTERNS {
        assert!(
            allowlist.blocked_patterns.iter().any(|p| p == default),
            "{default} kept"
        );
    }
    assert_eq!(
        allowlist.blocked_patterns.len(),
        DEFAULT_BLOCKED_PATTERNS.len() + 1
    );

    let empty = parse_allowlist(r#"{ "allowedRoots": [] }"#, "label.json").unwrap();
    assert!(empty.roots.is_empty());
    let req = request(tree.path("projects/app").display().to_string(), None, false);
    assert!(matches!(
        check_mount(Some(&empty), &req, true),
        Err(MountRefusal::OutsideRoots { .. })
    ));
}

#[test]
fn approve_mounts_keeps_good_ones_and_refuses_collisions() {
    let tree = Tree::new();
    let allowlist = tree.allowlist(true);
    let host = |rel: &str| tree.path(rel).display().to_string();
    let requests = vec![
        request(host("projects/app"), Some("code"), true),
        request(host("readonly/docs"), Some("code"), false), // same container path: refused
        request(host("projects/app/.ssh"), None, false),     // blocked
        request(host("readonly/docs"), Some("code/docs"), false), // nested in "code": refused
        request(host("readonly/docs"), None, false),
        request(host("projects/app"), Some("app-again"), false), // same host, new name: fine
    ];
    let approved = approve_mounts(Some(&allowlist), &requests, true, "main");
    assert_eq!(
        approved,
        vec![
            ApprovedMount {
                host: tree.path("projects/app"),
                container: "/workspace/extra/code".into(),
                read_only: false
            },
            ApprovedMount {
                host: tree.path("readonly/docs"),
                container: "/workspace/extra/docs".into(),
                read_only: true
            },
            ApprovedMount {
                host: tree.path("projects/app"),
                container: "/workspace/extra/app-again".into(),
                read_only: true
            },
        ]
    );
}

#[test]
fn protect_keeps_a_callers_directory_out() {
    let tree = Tree::new();
    let mut allowlist = tree.allowlist(true);
    allowlist.protect(Path::new(&tree.path("projects/app")));
    for rel in ["projects", "projects/app", "link-in"] {
        let req = request(tree.path(rel).display().to_string(), Some("x"), false);
        let got = check_mount(Some(&allowlist), &req, true);
        assert!(
            matches!(got, Err(MountRefusal::Protected { .. })),
            "{rel}: {got:?}"
        );
    }
    let sibling = request(
        tree.path("projects/my-credentials-store")
            .display()
            .to_string(),
        Some("x"),
        false,
    );
    assert!(matches!(
        check_mount(Some(&allowlist), &sibling, true),
        Err(MountRefusal::Blocked { .. })
    ));
}
