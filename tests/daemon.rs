//! `talon run` as a process: the singleton guard, `talon dump` over SIGUSR1,
//! and a clean stop on SIGTERM.

mod support;

#[path = "support/fake_discord.rs"]
mod fake_discord;
#[path = "support/fake_slack.rs"]
mod fake_slack;

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

/// A fake Slack and a fake Discord with their default workspaces.
async fn platform_fakes() -> (fake_slack::FakeSlack, fake_discord::FakeDiscord) {
    (
        fake_slack::FakeSlack::start(fake_slack::FakeSlackConfig::default()).await,
        fake_discord::FakeDiscord::start(fake_discord::FakeDiscordConfig::default()).await,
    )
}

/// A fresh home whose NanoClaw-style `.env` holds `text`.
fn home_with_dotenv(text: &str) -> Home {
    let home = Home::new();
    std::fs::write(home.path().join(".env"), text).unwrap();
    home
}

#[tokio::test(flavor = "multi_thread")]
async fn talon_run_starts_the_channels_whose_tokens_are_in_dotenv_and_says_which() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let (slack, discord) = platform_fakes().await;
    let home = home_with_dotenv(
        "SLACK_BOT_TOKEN=xoxb-test\nSLACK_APP_TOKEN=xapp-test\nDISCORD_BOT_TOKEN=\"fake-discord-token\"\n",
    );
    // A crash loop left by an earlier host: counted, then cleared by a
    // clean stop.
    std::fs::create_dir_all(home.path().join("data")).unwrap();
    let ledger = home.path().join("data/channel-restarts.json");
    std::fs::write(&ledger, r#"{"slack": {"unclean_runs": 1}}"#).unwrap();
    let mut env = host_env(home.path(), "http://127.0.0.1:9");
    env.push(("TALON_CHANNELS_SLACK_API_URL".into(), slack.api_url()));
    env.push(("TALON_CHANNELS_DISCORD_API_URL".into(), discord.proxy_url()));
    let mut daemon = spawn_daemon(&env);
    let stderr = collect_stderr(&mut daemon);
    let said = || stderr.lock().unwrap().join("\n");

    assert!(
        slack.wait_connections(1, Duration::from_secs(30)).await,
        "slack connected"
    );
    assert!(
        discord.wait_readies(1, Duration::from_secs(30)).await,
        "discord identified"
    );
    let startup = said();
    assert!(
        startup.contains("talon: running; channels: slack, discord"),
        "{startup}"
    );
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ledger).unwrap()).unwrap();
    assert_eq!(counts["slack"]["unclean_runs"], 2);
    assert_eq!(counts["discord"]["unclean_runs"], 1);

    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ledger).unwrap()).unwrap();
    assert_eq!(counts["slack"]["unclean_runs"], 0, "{counts}");
    assert_eq!(counts["discord"]["unclean_runs"], 0, "{counts}");
    // The tokens appear in no output and no log.
    let log: String = std::fs::read_dir(home.path().join("logs"))
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .collect();
    assert!(log.contains("slack: tokens accepted"), "{log}");
    for secret in ["xoxb-test", "xapp-test", "fake-discord-token"] {
        assert!(!said().contains(secret), "{secret} in stderr");
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn under_systemd_it_says_ready_feeds_the_watchdog_and_says_stopping() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let home = Home::new();
    let socket_path = home.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut env = host_env(home.path(), "http://127.0.0.1:9");
    env.push(("NOTIFY_SOCKET".into(), socket_path.display().to_string()));
    env.push(("WATCHDOG_USEC".into(), "200000".into()));
    let mut daemon = spawn_daemon(&env);
    let next = || {
        let mut buffer = [0u8; 256];
        let n = socket.recv(&mut buffer).expect("a notification");
        String::from_utf8_lossy(&buffer[..n]).trim().to_string()
    };
    assert_eq!(next(), "READY=1");
    // Fed every 100 ms while the router answers.
    assert_eq!(next(), "WATCHDOG=1");
    assert_eq!(next(), "WATCHDOG=1");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let mut stopping = false;
    for _ in 0..20 {
        if next() == "STOPPING=1" {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 before exit");
    assert!(daemon.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_checks_everything_and_names_what_is_wrong() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let (slack, discord) = platform_fakes().await;
    // A revoked Slack bot token, a good Discord one, no model credentials.
    let home = home_with_dotenv(
        "SLACK_BOT_TOKEN=xoxb-revoked\nSLACK_APP_TOKEN=xapp-test\nDISCORD_BOT_TOKEN=fake-discord-token\n",
    );
    let env = vec![
        ("TALON_HOME".to_string(), home.path().display().to_string()),
        ("TALON_CONTAINER_IMAGE".to_string(), TEST_IMAGE.to_string()),
        ("TALON_CHANNELS_SLACK_API_URL".to_string(), slack.api_url()),
        (
            "TALON_CHANNELS_DISCORD_API_URL".to_string(),
            discord.proxy_url(),
        ),
    ];
    let out = tokio::task::spawn_blocking(move || talon(&env).arg("doctor").output().unwrap())
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{report}");
    for line in [
        "ok    docker       engine",
        "ok    image        talon-agent:test-image present",
        "FAIL  credentials  no model credentials",
        "FAIL  slack        token refused: SLACK_BOT_TOKEN: invalid_auth",
        "ok    discord      token accepted (talon)",
        "ok    host         not running",
        "ok    allowlist",
    ] {
        assert!(report.contains(line), "{line:?} missing from:\n{report}");
    }
    assert!(!report.contains("xoxb-revoked") && !report.contains("fake-discord-token"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_changed_configuration_and_survives_a_broken_one() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let home = Home::new();
    let config = home.path().join("talon.toml");
    std::fs::write(&config, "[channels]\nsocket = false\n").unwrap();
    let env = host_env(home.path(), "http://127.0.0.1:9");
    let mut daemon = spawn_daemon(&env);
    let stderr = collect_stderr(&mut daemon);
    let said = || stderr.lock().unwrap().join("\n");
    let limit = Duration::from_secs(30);
    wait_for("the host to start", limit, || {
        said().contains("talon: running")
    });
    let socket = home.path().join("data/talon.sock");
    assert!(!socket.exists());
    let hup = |pid: u32| {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    };

    // Switch the socket channel on: applied without a restart.
    std::fs::write(&config, "[channels]\nsocket = true\n").unwrap();
    hup(daemon.id());
    wait_for("the socket channel after the reload", limit, || {
        socket.exists()
    });
    // The line follows the restarted tree, which is up a moment later.
    wait_for("the reload to be reported", limit, || {
        said().contains("talon: configuration reloaded; channels: socket")
    });

    // A broken file: reported, and the running configuration kept.
    std::fs::write(&config, "[channels]\nsocket = \"yes\"\n").unwrap();
    hup(daemon.id());
    wait_for("the refusal", limit, || {
        said().contains("configuration not reloaded")
    });
    assert!(daemon.try_wait().unwrap().is_none(), "still running");
    assert!(socket.exists());
    assert!(
        said().contains("channels.socket"),
        "the error names the key: {}",
        said()
    );

    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
}

#[test]
fn prune_lists_then_removes_old_run_logs() {
    let home = Home::new();
    let env = vec![("TALON_HOME".to_string(), home.path().display().to_string())];
    let logs = home.path().join("logs/containers/main");
    std::fs::create_dir_all(&logs).unwrap();
    let old = logs.join("container-1.log");
    std::fs::write(&old, "old run").unwrap();
    let ten_days = Duration::from_secs(10 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - ten_days)
        .unwrap();
    std::fs::write(logs.join("container-2.log"), "today's run").unwrap();
    let dry = talon(&env).args(["prune", "--dry-run"]).output().unwrap();
    let said = String::from_utf8_lossy(&dry.stdout).to_string();
    assert!(dry.status.success(), "{}", stderr_of(&dry));
    assert!(
        said.contains("would remove") && said.contains("container-1.log"),
        "{said}"
    );
    assert!(old.exists());
    let real = talon(&env).arg("prune").output().unwrap();
    assert!(real.status.success(), "{}", stderr_of(&real));
    assert!(!old.exists());
    assert!(logs.join("container-2.log").exists());
}

#[test]
fn the_service_unit_is_written_for_this_home() {
    let home = Home::new();
    let config_home = home.path().join("xdg-config");
    let mut env = vec![("TALON_HOME".to_string(), home.path().display().to_string())];
    env.push(("XDG_CONFIG_HOME".into(), config_home.display().to_string()));
    let out = talon(&env).args(["service", "install"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let unit = std::fs::read_to_string(config_home.join("systemd/user/talon.service")).unwrap();
    assert!(unit.contains("Type=notify"), "{unit}");
    assert!(
        unit.contains(&format!("--home \"{}\" run", home.path().display())),
        "{unit}"
    );
    assert!(unit.contains(env!("CARGO_BIN_EXE_talon")), "{unit}");
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
