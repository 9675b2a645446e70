//! End to end through the real binary, the real Docker engine and the real
//! agent image, with a fake Anthropic server on 127.0.0.1.

mod support;

use std::time::Duration;

use support::fake_anthropic::{FakeAnthropic, Reply};
use support::*;
use talon::actors::terminal::TERMINAL_CHAT;
use talon::messages::InboundMessage;
use talon::store::Store;

/// A fake model that answers `reply to: <what the user typed>`.
async fn replying_model() -> FakeAnthropic {
    FakeAnthropic::start_with(|body| {
        Reply::text(format!(
            "reply to: {}",
            last_message_text(&last_user_text(body))
        ))
    })
    .await
}

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn a_piped_chat_gets_the_agents_answer() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = replying_model().await;
    let home = Home::new();
    let env = host_env(home.path(), &model.base_url);
    let output = tokio::task::spawn_blocking(move || piped_chat(&env, b"hello there\n", LIMIT))
        .await
        .unwrap();
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    assert_eq!(stdout_of(&output), "reply to: hello there\n");
    // The host called the model with its own key; the container had none.
    let requests = model.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].header("x-api-key"), Some("sk-ant-test-key"));
    assert!(
        talon_containers(home.path()).is_empty(),
        "a container was left behind"
    );
    // The run left its log in the group's folder.
    let logs: Vec<_> = std::fs::read_dir(home.path().join("logs/containers/main"))
        .unwrap()
        .collect();
    assert_eq!(logs.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_piped_chat_answers_what_a_killed_run_left_unanswered() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = replying_model().await;
    let home = Home::new();
    // What a run killed right after storing a line leaves behind: the
    // message stored as the router stores it, the cursor still before it.
    let paths = home.paths();
    paths.ensure().unwrap();
    let store = Store::open(&paths.db()).unwrap();
    let seq = store
        .insert_message(&InboundMessage {
            chat_id: TERMINAL_CHAT.into(),
            platform_msg_id: "killed-run-1".into(),
            sender_id: "you".into(),
            sender_name: "you".into(),
            content: "are you still there?".into(),
            timestamp: talon::store::now_millis(),
            is_from_me: false,
            is_bot_message: false,
            reply_to: None,
            thread_id: None,
        })
        .unwrap()
        .expect("a new message");
    drop(store);
    let env = host_env(home.path(), &model.base_url);
    let output = tokio::task::spawn_blocking(move || piped_chat(&env, b"", LIMIT))
        .await
        .unwrap();
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    assert_eq!(stdout_of(&output), "reply to: are you still there?\n");
    assert_eq!(model.request_count(), 1);
    let store = Store::open(&paths.db()).unwrap();
    assert!(store.cursor(TERMINAL_CHAT).unwrap() >= seq);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_messages_get_two_answers_in_order() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = replying_model().await;
    let home = Home::new();
    let env = host_env(home.path(), &model.base_url);
    let output = tokio::task::spawn_blocking(move || piped_chat(&env, b"first\nsecond\n", LIMIT))
        .await
        .unwrap();
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    assert_eq!(stdout_of(&output), "reply to: first\nreply to: second\n");
    // The second message went to the same, still running container (warm
    // path), which carried the conversation: the model saw both turns.
    let requests = model.requests();
    assert_eq!(requests.len(), 2);
    let turns = requests[1].body["messages"].as_array().unwrap().len();
    assert_eq!(turns, 3, "the follow-up should carry the first exchange");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_line_and_a_one_megabyte_line_are_handled() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = FakeAnthropic::start_with(|body| {
        Reply::text(format!(
            "got {} bytes",
            last_message_text(&last_user_text(body)).len()
        ))
    })
    .await;
    let home = Home::new();
    let env = host_env(home.path(), &model.base_url);
    let mut input = b"\n".to_vec();
    input.extend(std::iter::repeat_n(b'a', 1 << 20));
    input.push(b'\n');
    let output = tokio::task::spawn_blocking(move || piped_chat(&env, &input, LIMIT))
        .await
        .unwrap();
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    assert_eq!(stdout_of(&output), format!("got {} bytes\n", 1 << 20));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_is_one_short_error_line_in_the_chat() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = FakeAnthropic::start_with(|_| {
        Reply::status(401, "authentication_error", "invalid x-api-key")
    })
    .await;
    let home = Home::new();
    let env = host_env(home.path(), &model.base_url);
    let output = tokio::task::spawn_blocking(move || piped_chat(&env, b"hi\n", LIMIT))
        .await
        .unwrap();
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    let stdout = stdout_of(&output);
    assert_eq!(stdout.lines().count(), 1, "stdout: {stdout}");
    assert!(stdout.contains("could not be processed"), "{stdout}");
    assert!(stdout.contains("401"), "{stdout}");
    assert!(!stdout.contains("sk-ant-test-key"));
    // Not retried: a bad key does not get better.
    assert_eq!(model.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_is_retried_and_then_answered() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = replying_model().await;
    model.push(Reply::rate_limited(Some("0")));
    let home = Home::new();
    let env = host_env(home.path(), &model.base_url);
    let output = tokio::task::spawn_blocking(move || piped_chat(&env, b"patience\n", LIMIT))
        .await
        .unwrap();
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    assert_eq!(stdout_of(&output), "reply to: patience\n");
    assert_eq!(model.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_500_that_persists_ends_in_an_error_line_after_retries() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = FakeAnthropic::start_with(|_| Reply::internal_error()).await;
    let home = Home::new();
    let mut env = host_env(home.path(), &model.base_url);
    env.push(("TALON_PROVIDER_MAX_RETRIES".into(), "2".into()));
    env.push(("TALON_QUEUE_MAX_RETRIES".into(), "1".into()));
    let output = tokio::task::spawn_blocking(move || piped_chat(&env, b"anyone?\n", LIMIT))
        .await
        .unwrap();
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    let stdout = stdout_of(&output);
    assert_eq!(stdout.lines().count(), 1, "stdout: {stdout}");
    assert!(stdout.contains("could not be processed"), "{stdout}");
    assert!(stdout.contains("500"), "{stdout}");
    // (1 try + 2 provider retries) for the first run and again for the one batch retry.
    assert_eq!(model.request_count(), 6);
    // The failed batch is kept and shown by `talon status`.
    let status = talon(&host_env(home.path(), &model.base_url))
        .arg("status")
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", stderr_of(&status));
    let text = stdout_of(&status);
    assert!(text.contains("talon is not running"), "{text}");
    assert!(text.contains("failed batches (newest first)"), "{text}");
    assert!(
        text.contains("after 2 attempts") && text.contains("500"),
        "{text}"
    );
    assert!(text.contains("undelivered replies: 0"), "{text}");
}

#[test]
fn no_credentials_is_one_clear_line() {
    let home = Home::new();
    let env = vec![("TALON_HOME".to_string(), home.path().display().to_string())];
    let output = talon(&env)
        .arg("chat")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert_eq!(stderr.trim().lines().count(), 1, "stderr: {stderr}");
    assert!(stderr.contains("ANTHROPIC_API_KEY"), "{stderr}");
    assert!(stderr.contains("ANTHROPIC_BASE_URL"), "{stderr}");
}

#[test]
fn an_unreachable_docker_engine_is_one_clear_line() {
    let home = Home::new();
    let mut env = host_env(home.path(), "http://127.0.0.1:9");
    env.push((
        "DOCKER_HOST".into(),
        "unix:///nonexistent/docker.sock".into(),
    ));
    let output = talon(&env)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .arg("chat")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert_eq!(stderr.trim().lines().count(), 1, "stderr: {stderr}");
    assert!(stderr.contains("Docker engine"), "{stderr}");
}

#[test]
fn a_base_url_with_an_empty_port_fails_at_once_naming_the_variable() {
    let home = Home::new();
    let env = host_env(home.path(), "http://127.0.0.1:");
    let started = std::time::Instant::now();
    // Bounded: the bug this guards against was a silent hang.
    let output = piped_chat(&env, b"hi\n", Duration::from_secs(20));
    let took = started.elapsed();
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(stderr.trim().lines().count(), 1, "stderr: {stderr}");
    assert!(
        stderr.contains("ANTHROPIC_BASE_URL") && stderr.contains("empty port"),
        "{stderr}"
    );
    assert_eq!(stdout_of(&output), "");
}
