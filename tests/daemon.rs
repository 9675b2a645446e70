//! `talon run` as a process: the singleton guard, `talon dump` over SIGUSR1,
//! and a clean stop on SIGTERM.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn one_host_per_home_dump_on_request_and_clean_stop() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let home = Home::new();
    let env = host_env(home.path(), "http://127.0.0.1:9");
    let mut daemon = spawn_daemon(&env);
    let pid_file = home.paths().pid_file();
    wait_for("the host to take its lock", Duration::from_secs(30), || {
        talon::singleton::holder(&pid_file) == Some(daemon.id())
    });

    // A second host on the same home is refused, naming the first.
    let second = talon(&env)
        .arg("run")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = stderr_of(&second);
    assert!(stderr.contains("already running"), "{stderr}");
    assert!(stderr.contains(&daemon.id().to_string()), "{stderr}");

    // `talon dump` makes the live host write its tree and prints it.
    let dump = talon(&env).arg("dump").output().unwrap();
    assert!(dump.status.success(), "{}", stderr_of(&dump));
    let document: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    assert_eq!(document["pid"], daemon.id());
    assert_eq!(document["tree"]["name"], "talon");
    assert!(home.path().join("data/state-dump.json").exists());

    // SIGTERM: a clean stop, and the lock is free again.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    assert!(status.success(), "exit: {status:?}");
    assert_eq!(talon::singleton::holder(&pid_file), None);
    let not_running = talon(&env).arg("dump").output().unwrap();
    assert!(!not_running.status.success());
    assert!(stderr_of(&not_running).contains("not running"));
}

#[test]
fn groups_can_be_added_and_listed_with_validation() {
    let home = Home::new();
    let env = vec![("TALON_HOME".to_string(), home.path().display().to_string())];
    let added = talon(&env)
        .args([
            "groups",
            "add",
            "slack:C0123",
            "--name",
            "Family",
            "--folder",
            "family",
        ])
        .output()
        .unwrap();
    assert!(added.status.success(), "{}", stderr_of(&added));
    let bad = talon(&env)
        .args([
            "groups", "add", "slack:C9", "--name", "X", "--folder", "../etc",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        stderr_of(&bad).contains("invalid group folder"),
        "{}",
        stderr_of(&bad)
    );
    let no_prefix = talon(&env)
        .args(["groups", "add", "C9", "--name", "X", "--folder", "x"])
        .output()
        .unwrap();
    assert!(!no_prefix.status.success());
    let list = talon(&env).args(["groups", "list"]).output().unwrap();
    let text = stdout_of(&list);
    assert!(
        text.contains("slack:C0123") && text.contains("family"),
        "{text}"
    );
    assert!(!text.contains("C9"), "{text}");
}
