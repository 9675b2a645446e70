//! `talon groups` end to end: the real binary against a throwaway home, with
//! the store read back directly to check what was (and was not) written.

mod support;

use std::process::Output;
use std::time::Duration;

use support::{stderr_of, stdout_of, Home};
use talon::container_config::{GroupContainerConfig, Network};
use talon::mount_security::RequestedMount;
use talon::store::Store;

fn groups(home: &Home, args: &[&str]) -> Output {
    let env = vec![("TALON_HOME".to_string(), home.path().display().to_string())];
    support::talon(&env)
        .arg("groups")
        .args(args)
        .output()
        .expect("run talon groups")
}

fn ok(home: &Home, args: &[&str]) -> String {
    let output = groups(home, args);
    assert!(
        output.status.success(),
        "talon groups {args:?} failed: {}",
        stderr_of(&output)
    );
    stdout_of(&output)
}

/// The refusal's stderr, after checking the command failed.
fn refused(home: &Home, args: &[&str]) -> String {
    let output = groups(home, args);
    assert!(
        !output.status.success(),
        "talon groups {args:?} succeeded: {}",
        stdout_of(&output)
    );
    stderr_of(&output)
}

fn stored_config(home: &Home, chat_id: &str) -> Option<String> {
    let store = Store::open(&home.paths().db()).expect("open the store");
    store
        .group_by_chat(chat_id)
        .expect("read the group")
        .expect("the group is registered")
        .container_config
}

#[test]
fn add_then_set_then_show_round_trips() {
    let home = Home::new();
    let added = ok(
        &home,
        &[
            "add",
            "slack:C1",
            "--name",
            "Family",
            "--folder",
            "family",
            "--container-config",
            r#"{"memory_mb": 512}"#,
        ],
    );
    assert!(added.contains("registered slack:C1 as family"), "{added}");
    assert_eq!(
        stored_config(&home, "slack:C1").as_deref(),
        Some(r#"{"memory_mb":512}"#)
    );

    let set = ok(
        &home,
        &[
            "set",
            "slack:C1",
            "--timeout",
            "1h",
            "--memory-mb",
            "2048",
            "--cpus",
            "2",
            "--network",
            "bridge",
            "--secret",
            "THREADS_ACCESS_TOKEN",
            "--secret",
            "OTHER_TOKEN",
            "--mount",
            "~/docs:docs:rw",
            "--mount",
            "/srv/photos",
        ],
    );
    let expected = GroupContainerConfig {
        timeout: Some(Duration::from_secs(3600)),
        memory_mb: Some(2048),
        cpus: Some(2.0),
        network: Some(Network::Bridge),
        additional_mounts: vec![
            RequestedMount {
                host_path: "~/docs".into(),
                container_path: Some("docs".into()),
                read_write: true,
            },
            RequestedMount {
                host_path: "/srv/photos".into(),
                container_path: None,
                read_write: false,
            },
        ],
        secrets: vec!["THREADS_ACCESS_TOKEN".into(), "OTHER_TOKEN".into()],
        ..Default::default()
    };
    let stored = stored_config(&home, "slack:C1");
    assert_eq!(
        GroupContainerConfig::of_group(stored.as_deref()).unwrap(),
        expected
    );
    // What was printed is what was stored.
    let printed_json = &set[set.find('{').expect("JSON printed")..];
    assert_eq!(
        GroupContainerConfig::parse(printed_json).unwrap(),
        expected,
        "{set}"
    );

    // Quick flags edit the stored config; --secret and --mount add, once.
    ok(
        &home,
        &[
            "set",
            "slack:C1",
            "--memory-mb",
            "4096",
            "--secret",
            "THREADS_ACCESS_TOKEN",
        ],
    );
    let edited = GroupContainerConfig::of_group(stored_config(&home, "slack:C1").as_deref())
        .expect("valid stored config");
    assert_eq!(
        edited,
        GroupContainerConfig {
            memory_mb: Some(4096),
            ..expected.clone()
        }
    );

    let show = ok(&home, &["show", "slack:C1"]);
    for needle in [
        "chat id:    slack:C1",
        "name:       Family",
        "folder:     family",
        "\"timeout\": \"1h\"",
        "\"memory_mb\": 4096",
        "\"network\": \"bridge\"",
        "THREADS_ACCESS_TOKEN",
        "~/docs -> /workspace/extra/docs (rw requested",
    ] {
        assert!(show.contains(needle), "show lacks {needle:?}:\n{show}");
    }

    // Re-adding the chat (a rename) keeps its container settings.
    ok(
        &home,
        &["add", "slack:C1", "--name", "Fam", "--folder", "family"],
    );
    assert_eq!(
        GroupContainerConfig::of_group(stored_config(&home, "slack:C1").as_deref()).unwrap(),
        edited
    );

    // Both ways of resetting clear the stored value; show marks the defaults.
    ok(&home, &["set", "slack:C1", "--container-config", ""]);
    assert_eq!(stored_config(&home, "slack:C1"), None);
    ok(&home, &["set", "slack:C1", "--network", "bridge"]);
    assert!(stored_config(&home, "slack:C1").is_some());
    ok(&home, &["set", "slack:C1", "--clear-container-config"]);
    assert_eq!(stored_config(&home, "slack:C1"), None);
    let show = ok(&home, &["show", "slack:C1"]);
    assert!(show.contains("nothing set"), "{show}");
    assert!(show.contains("memory_mb  1024 (default)"), "{show}");
    assert!(show.contains("network    none (default)"), "{show}");

    let list = ok(&home, &["list"]);
    assert!(
        list.contains("slack:C1") && list.contains("family"),
        "{list}"
    );
}

#[test]
fn invalid_settings_are_refused_naming_the_field_and_nothing_is_stored() {
    let home = Home::new();
    ok(
        &home,
        &[
            "add",
            "dc:9",
            "--name",
            "Dev",
            "--folder",
            "dev",
            "--container-config",
            r#"{"memory_mb":512}"#,
        ],
    );
    let before = stored_config(&home, "dc:9");
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--container-config", "{memory_mb: 512"],
            &["container config", "invalid JSON"],
        ),
        (
            &["--container-config", r#"{"memory_mb":2}"#],
            &["memory_mb must be between 6 and 65536 (got 2)"],
        ),
        (
            &["--memory-mb", "100000"],
            &["memory_mb must be between", "100000"],
        ),
        (&["--cpus", "0"], &["cpus must be between"]),
        (&["--timeout", "2days"], &["timeout must be between"]),
        (
            &["--secret", "ANTHROPIC_API_KEY"],
            &["secrets", "ANTHROPIC_API_KEY", "credential the host keeps"],
        ),
        (
            &[
                "--container-config",
                r#"{"secrets":["CLAUDE_CODE_OAUTH_TOKEN"]}"#,
            ],
            &["secrets", "CLAUDE_CODE_OAUTH_TOKEN"],
        ),
        (&["--secret", "lower_case"], &["secrets", "lower_case"]),
        (
            &["--mount", "~/docs:../etc"],
            &["additional_mounts", "container_path", "\"../etc\""],
        ),
        (
            &[
                "--container-config",
                r#"{"additional_mounts":[{"host_path":"~/x","container_path":"/abs"}]}"#,
            ],
            &["container_path", "\"/abs\""],
        ),
        (
            &["--container-config", r#"{"memory":512}"#],
            &["unknown field", "\"memory\""],
        ),
        (&["--network", "host"], &["network", "host"]),
    ];
    for (args, needles) in cases {
        let mut full = vec!["set", "dc:9"];
        full.extend_from_slice(args);
        let stderr = refused(&home, &full);
        for needle in *needles {
            assert!(
                stderr.contains(needle),
                "{args:?}: stderr lacks {needle:?}: {stderr}"
            );
        }
        assert_eq!(
            stored_config(&home, "dc:9"),
            before,
            "{args:?} changed the store"
        );
    }

    // An invalid config on `add` registers nothing.
    let stderr = refused(
        &home,
        &[
            "add",
            "dc:10",
            "--name",
            "Other",
            "--folder",
            "other",
            "--container-config",
            r#"{"memory_mb":1}"#,
        ],
    );
    assert!(stderr.contains("memory_mb"), "{stderr}");
    let store = Store::open(&home.paths().db()).unwrap();
    assert!(store.group_by_chat("dc:10").unwrap().is_none());

    // `set` with nothing to set is an error, not a silent no-op.
    let stderr = refused(&home, &["set", "dc:9"]);
    assert!(stderr.contains("nothing to set"), "{stderr}");
}

#[test]
fn unknown_chats_are_a_clear_error() {
    let home = Home::new();
    for args in [
        &["show", "slack:NOPE"][..],
        &["set", "slack:NOPE", "--memory-mb", "2048"][..],
    ] {
        let stderr = refused(&home, args);
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("no registered group") && stderr.contains("slack:NOPE"),
            "{args:?}: {stderr}"
        );
    }
    let store = Store::open(&home.paths().db()).unwrap();
    assert!(store.groups().unwrap().is_empty());
}
