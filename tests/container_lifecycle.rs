//! The container lifecycle and sandbox (SPEC §5), against the real engine:
//! graceful close at idle, the hard kill, crashes, orphans, and the
//! hardening of a live container.

mod support;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::fake_anthropic::{FakeAnthropic, Reply};
use support::inproc::*;
use support::*;
use talon::actors::terminal::{TerminalOutput, TERMINAL_CHAT};

const LIMIT: Duration = Duration::from_secs(120);

fn docker_cli(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker cli")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_that_never_answers_is_killed_at_the_hard_timeout() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = FakeAnthropic::start_with(|_| {
        Reply::delayed(Duration::from_secs(600), Reply::text("too late"))
    })
    .await;
    let home = Home::new();
    let mut env = host_env(home.path(), &model.base_url);
    for (k, v) in [
        ("TALON_CONTAINER_IDLE_TIMEOUT", "300ms"),
        ("TALON_CONTAINER_CLOSE_GRACE", "700ms"),
        ("TALON_CONTAINER_TIMEOUT", "1s"),
        ("TALON_QUEUE_MAX_RETRIES", "0"),
        ("TALON_PROVIDER_REQUEST_TIMEOUT", "600s"),
    ] {
        env.push((k.into(), v.into()));
    }
    let output = tokio::task::spawn_blocking(move || piped_chat(&env, b"hello?\n", LIMIT))
        .await
        .unwrap();
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    let stdout = stdout_of(&output);
    assert!(stdout.contains("timed out"), "{stdout}");
    let logs = run_logs(home.path(), "main");
    assert_eq!(logs.len(), 1);
    assert_eq!(log_field(&logs[0], "exit_code"), Some("137"), "{}", logs[0]);
    assert_eq!(log_field(&logs[0], "hard_killed"), Some("true"));
    let ran_ms: u64 = log_field(&logs[0], "duration_ms").unwrap().parse().unwrap();
    // The graceful close at 300 ms could not end a turn that never ends; the
    // kill came 1 s after the runner's last sign of life (its model request),
    // not after the provider's 600 s (how long the start took under load
    // varies, so only the order of magnitude is asserted).
    assert!((1000..15_000).contains(&ran_ms), "ran {ran_ms} ms");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_working_agent_outlives_the_hard_timeout_because_it_is_not_silent() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    // One bash call that runs 10 s, then text quoting its result. The hard
    // timeout is 4 s of silence: the runner's heartbeat (every second while
    // the tool runs) keeps it alive, as model calls and output would.
    let model = FakeAnthropic::start_with(|body| {
        let ran = body["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
            .any(|b| b["type"] == "tool_result");
        if ran {
            Reply::text("slept well")
        } else {
            Reply::tool_use(
                "toolu_1",
                "bash",
                serde_json::json!({"command": "sleep 10; echo awake", "timeout_seconds": 60}),
            )
        }
    })
    .await;
    let home = Home::new();
    let mut env = host_env(home.path(), &model.base_url);
    for (k, v) in [
        ("TALON_CONTAINER_IDLE_TIMEOUT", "2s"),
        ("TALON_CONTAINER_CLOSE_GRACE", "2s"),
        ("TALON_CONTAINER_TIMEOUT", "4s"),
        ("TALON_QUEUE_MAX_RETRIES", "0"),
    ] {
        env.push((k.into(), v.into()));
    }
    let output = tokio::task::spawn_blocking(move || piped_chat(&env, b"take a nap\n", LIMIT))
        .await
        .unwrap();
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    assert_eq!(stdout_of(&output), "slept well\n");
    let logs = run_logs(home.path(), "main");
    assert_eq!(logs.len(), 1);
    assert_eq!(
        log_field(&logs[0], "hard_killed"),
        Some("false"),
        "{}",
        logs[0]
    );
    assert_eq!(log_field(&logs[0], "exit_code"), Some("0"), "{}", logs[0]);
    let ran_ms: u64 = log_field(&logs[0], "duration_ms").unwrap().parse().unwrap();
    assert!(ran_ms > 10_000, "ran {ran_ms} ms");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_runner_exits_zero_on_the_close_sentinel_long_before_the_hard_timeout() {
    let _one = ONE_HOST.lock().await;
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let model = replying_model().await;
    let overrides = [
        ("TALON_CONTAINER_IDLE_TIMEOUT", "300ms"),
        ("TALON_CONTAINER_TIMEOUT", "1h"),
    ];
    let mut host = start_host_with(
        docker,
        &model,
        &[group(TERMINAL_CHAT, "main", true, false)],
        &overrides,
    )
    .await;
    router()
        .cast(talon::actors::router::RouterMsg::Inbound(message(
            TERMINAL_CHAT,
            "m1",
            "hi",
        )))
        .unwrap();
    assert_eq!(
        host.next_reply().await,
        TerminalOutput::Reply("reply to: hi".into())
    );
    let home = host.home.path().to_path_buf();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !talon_containers(&home).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle container did not go away"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let logs = run_logs(&home, "main");
    assert_eq!(logs.len(), 1);
    assert_eq!(log_field(&logs[0], "exit_code"), Some("0"), "{}", logs[0]);
    assert_eq!(log_field(&logs[0], "hard_killed"), Some("false"));
    let ran_ms: u64 = log_field(&logs[0], "duration_ms").unwrap().parse().unwrap();
    assert!(ran_ms < 30_000, "ran {ran_ms} ms");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashing_runner_is_a_failure_the_user_hears_about() {
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let crashing = "talon-agent:test-crashing";
    derived_image(
        &docker,
        crashing,
        r#"ENTRYPOINT ["/bin/sh", "-c", "echo boom >&2; exit 3"]"#,
    )
    .await;
    let model = FakeAnthropic::start(vec![]).await;
    let home = Home::new();
    let mut env = host_env(home.path(), &model.base_url);
    env.push(("TALON_CONTAINER_IMAGE".into(), crashing.into()));
    env.push(("TALON_QUEUE_MAX_RETRIES".into(), "1".into()));
    let output = tokio::task::spawn_blocking(move || piped_chat(&env, b"hi\n", LIMIT))
        .await
        .unwrap();
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    let stdout = stdout_of(&output);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("could not be processed"), "{stdout}");
    assert!(stdout.contains("code 3"), "{stdout}");
    // Tried twice (one retry), each run logged with its stderr.
    let logs = run_logs(home.path(), "main");
    assert_eq!(logs.len(), 2);
    for log in &logs {
        assert_eq!(log_field(log, "exit_code"), Some("3"));
        assert!(log.contains("boom"), "{log}");
    }
    assert_eq!(model.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_orphan_left_by_a_killed_host_is_removed_at_the_next_start() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = replying_model().await;
    model.push(Reply::delayed(Duration::from_secs(60), Reply::text("late")));
    let home = Home::new();
    let env = host_env(home.path(), &model.base_url);
    let mut host = talon(&env)
        .arg("chat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = host.stdin.take().unwrap();
        stdin.write_all(b"hello\n").unwrap();
        std::mem::forget(stdin); // keep it open: the chat must not finish
    }
    let home_path = home.path().to_path_buf();
    let orphan = tokio::task::spawn_blocking(move || wait_for_container(&home_path, LIMIT))
        .await
        .unwrap();
    host.kill().unwrap();
    host.wait().unwrap();
    assert!(
        talon_containers(home.path()).contains(&orphan),
        "the orphan should outlive its host"
    );

    // The next host removes it first thing, then answers the message that was
    // never answered (recovery) and stops.
    let env = host_env(home.path(), &model.base_url);
    let output = tokio::task::spawn_blocking(move || piped_chat(&env, b"", LIMIT))
        .await
        .unwrap();
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    let left = talon_containers(home.path());
    assert!(!left.contains(&orphan), "orphan still there: {left:?}");
    assert!(left.is_empty(), "containers left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_container_is_hardened() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    // The model takes its time, so the container stays up for inspection.
    let model =
        FakeAnthropic::start_with(|_| Reply::delayed(Duration::from_secs(15), Reply::text("done")))
            .await;
    let home = Home::new();
    let mut env = host_env(home.path(), &model.base_url);
    env.push(("TALON_CONTAINER_PIDS_LIMIT".into(), "64".into()));
    env.push(("TALON_CONTAINER_MEMORY_MB".into(), "256".into()));
    env.push(("TALON_CONTAINER_CPUS".into(), "0.5".into()));
    env.push(("ANTHROPIC_API_KEY".into(), "sk-ant-canary-key".into()));
    env.push(("TALON_TEST_CANARY".into(), "canary-in-host-env".into()));
    let chat_env = env.clone();
    let chat = tokio::task::spawn_blocking(move || piped_chat(&chat_env, b"work\n", LIMIT));
    let home_path = home.path().to_path_buf();
    let info = tokio::task::spawn_blocking(move || inspect_running_container(&home_path, LIMIT))
        .await
        .unwrap();
    let name = info["Name"]
        .as_str()
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    let host_config = &info["HostConfig"];
    assert_eq!(host_config["NetworkMode"], "none");
    assert_eq!(host_config["CapDrop"], serde_json::json!(["ALL"]));
    assert!(host_config["SecurityOpt"]
        .to_string()
        .contains("no-new-privileges"));
    assert_eq!(host_config["ReadonlyRootfs"], true);
    assert!(host_config["Tmpfs"]["/tmp"].is_string());
    assert_eq!(host_config["PidsLimit"], 64);
    assert_eq!(host_config["Memory"], 256 * 1024 * 1024);
    assert_eq!(host_config["NanoCpus"], 500_000_000);
    let user = info["Config"]["User"].as_str().unwrap();
    assert!(!user.starts_with("0:") && user != "0", "runs as {user}");
    let env_list = info["Config"]["Env"].to_string();
    assert!(env_list.contains("TZ=UTC"));
    assert!(
        !env_list.contains("canary"),
        "a host secret entered the container: {env_list}"
    );

    // Inside: the environment holds no host secret.
    let inside_env = docker_cli(&["exec", &name, "env"]);
    let inside_env = String::from_utf8_lossy(&inside_env.stdout);
    assert!(!inside_env.contains("canary"), "{inside_env}");
    assert!(!inside_env.contains("ANTHROPIC"), "{inside_env}");

    // The root filesystem is read-only.
    let write_root = docker_cli(&["exec", &name, "sh", "-c", "echo x > /rootfile"]);
    assert!(!write_root.status.success());
    assert!(String::from_utf8_lossy(&write_root.stderr).contains("Read-only"));

    // A file written in the group folder belongs to the host user (or, for a
    // root host, to the unprivileged uid the container runs as).
    let write_group = docker_cli(&[
        "exec",
        &name,
        "sh",
        "-c",
        "echo hi > /workspace/group/owned.txt",
    ]);
    assert!(
        write_group.status.success(),
        "{}",
        String::from_utf8_lossy(&write_group.stderr)
    );
    let owner = std::fs::metadata(home.path().join("groups/main/owned.txt"))
        .unwrap()
        .uid();
    // SAFETY: getuid has no preconditions.
    let host_uid = unsafe { libc::getuid() };
    let expected = if host_uid == 0 { 1000 } else { host_uid };
    assert_eq!(owner, expected);

    // A fork bomb hits the pids limit instead of the host.
    let bomb = docker_cli(&[
        "exec",
        &name,
        "sh",
        "-c",
        "i=0; while [ $i -lt 200 ]; do sleep 2 & i=$((i+1)); done; wait",
    ]);
    let bomb_err = String::from_utf8_lossy(&bomb.stderr).to_lowercase();
    assert!(
        bomb_err.contains("fork") || bomb_err.contains("resource temporarily unavailable"),
        "the pids limit did not bite: {bomb_err}"
    );

    // And the agent still finishes its turn.
    let output = chat.await.unwrap();
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    assert_eq!(stdout_of(&output), "done\n");
    assert!(talon_containers(home.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn output_over_the_cap_is_cut_with_a_clear_note() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = FakeAnthropic::start_with(|_| Reply::text("x".repeat(500))).await;
    let home = Home::new();
    let mut env = host_env(home.path(), &model.base_url);
    env.push(("TALON_CONTAINER_MAX_OUTPUT_BYTES".into(), "100".into()));
    let output = tokio::task::spawn_blocking(move || piped_chat(&env, b"talk a lot\n", LIMIT))
        .await
        .unwrap();
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    let stdout = stdout_of(&output);
    assert!(!stdout.contains("xxxx"), "{stdout}");
    assert!(stdout.contains("cut at the output cap"), "{stdout}");
    let logs = run_logs(home.path(), "main");
    assert!(logs[0].contains("(cut at the output cap)"), "{}", logs[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_groups_container_config_applies_named_secrets_limits_and_allowed_mounts() {
    let _one = ONE_HOST.lock().await;
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let model =
        FakeAnthropic::start_with(|_| Reply::delayed(Duration::from_secs(8), Reply::text("done")))
            .await;
    // An allowlist with one root; inside it a shareable folder and a .ssh.
    let outside = tempfile::tempdir().unwrap();
    let root = outside.path().join("projects");
    std::fs::create_dir_all(root.join("shared")).unwrap();
    std::fs::create_dir_all(root.join(".ssh")).unwrap();
    let allowlist = outside.path().join("mount-allowlist.json");
    std::fs::write(
        &allowlist,
        serde_json::json!({ "allowedRoots": [{ "path": root, "allowReadWrite": true }] })
            .to_string(),
    )
    .unwrap();
    let mut main = group(TERMINAL_CHAT, "main", true, false);
    main.container_config = Some(
        serde_json::json!({
            "memory_mb": 128,
            "secrets": ["TALON_TEST_GROUP_SECRET"],
            "additional_mounts": [
                { "host_path": root.join("shared") },
                { "host_path": root.join(".ssh"), "container_path": "keys" },
            ],
        })
        .to_string(),
    );
    let allowlist_path = allowlist.display().to_string();
    let overrides = [("TALON_CONTAINER_MOUNT_ALLOWLIST", allowlist_path.as_str())];
    let mut host = start_host_with(docker, &model, &[main], &overrides).await;
    // The secret's value lives in the host's .env, as NanoClaw keeps it.
    std::fs::write(
        host.home.path().join(".env"),
        "TALON_TEST_GROUP_SECRET=group-secret-value\nOTHER_SECRET=must-not-pass\n",
    )
    .unwrap();

    router()
        .cast(talon::actors::router::RouterMsg::Inbound(message(
            TERMINAL_CHAT,
            "m1",
            "go",
        )))
        .unwrap();
    let home = host.home.path().to_path_buf();
    let info = tokio::task::spawn_blocking(move || inspect_running_container(&home, LIMIT))
        .await
        .unwrap();
    assert_eq!(info["HostConfig"]["Memory"], 128 * 1024 * 1024);
    let env = info["Config"]["Env"].to_string();
    assert!(
        env.contains("TALON_TEST_GROUP_SECRET=group-secret-value"),
        "{env}"
    );
    assert!(!env.contains("must-not-pass"), "{env}");
    let binds = info["HostConfig"]["Binds"].to_string();
    assert!(binds.contains("/workspace/extra/shared:ro"), "{binds}");
    assert!(
        !binds.contains(".ssh") && !binds.contains("keys"),
        "{binds}"
    );
    assert_eq!(
        host.next_reply().await,
        TerminalOutput::Reply("done".into())
    );
    host.stop().await;
}

/// A busy chat's warm container takes every follow-up into one run. Once
/// the run has spent half its model calls it is closed at the end of a
/// turn, so the chat never meets a run that refuses everything (the soak
/// found every message refused after a warm run's 200th call).
#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_spent_half_its_budget_is_replaced_at_the_end_of_a_turn() {
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let model = replying_model().await;
    let overrides = [
        ("TALON_LIMITS_MAX_MODEL_CALLS_PER_RUN", "4"),
        ("TALON_CONTAINER_IDLE_TIMEOUT", "60s"),
    ];
    let mut host = start_host_with(
        docker,
        &model,
        &[group(TERMINAL_CHAT, "main", true, false)],
        &overrides,
    )
    .await;
    for i in 1..=7 {
        say(TERMINAL_CHAT, &format!("m{i}"), &format!("question {i}"));
        assert_eq!(
            host.next_reply().await,
            TerminalOutput::Reply(format!("reply to: question {i}")),
            "message {i}"
        );
    }
    let home = host.stop_keeping_home().await;
    // Each run is closed at the end of its second turn (a third may slip in
    // while the close is on its way): at least three runs for seven turns.
    let logs = run_logs(home.path(), "main");
    assert!(logs.len() >= 3, "{} runs", logs.len());
    assert_eq!(model.request_count(), 7);
}
