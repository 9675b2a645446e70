//! Claude Code as the agent (issue 13), end to end: the real `claude` CLI
//! (from the pinned wheel `.ci/run` fetches) in the real hardened image on
//! the real engine, an in-process host, and a fake Messages API that
//! streams SSE as the real one does.
//!
//! The fake model decides from the conversation: the n-th request of a turn
//! gets the n-th scripted tool call (counted by the `tool_result` blocks
//! Claude Code sent back), then text. Each test checks both what happened
//! (files, store, chats) and what crossed the credential proxy.
//!
//! Under `CI=true` a missing binary or engine fails these tests.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fake_anthropic::{FakeAnthropic, RecordedRequest, Reply};
use support::inproc::{self, say, ONE_HOST};
use support::*;
use talon::actors::terminal::{TerminalOutput, TERMINAL_CHAT};

const API_KEY: &str = "sk-ant-test-key";
const PLACEHOLDER: &str = "talon-placeholder-the-host-holds-the-credential";

/// The text of a content field: a string or text blocks.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The `tool_result` contents of the last user message (this round's).
fn tool_results(body: &Value) -> Vec<String> {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let Some(last_user) = messages.iter().rev().find(|m| m["role"] == "user") else {
        return Vec::new();
    };
    last_user["content"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|b| b["type"] == "tool_result")
        .map(|b| content_text(&b["content"]))
        .collect()
}

/// Every text the user said in the conversation, in order.
fn user_texts(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| content_text(&m["content"]))
        .collect()
}

/// Claude Code's own requests for the main conversation (not a side call
/// such as a title): those that offer tools.
fn turn_requests(model: &FakeAnthropic) -> Vec<RecordedRequest> {
    model
        .message_requests()
        .into_iter()
        .filter(|r| r.body["tools"].as_array().is_some_and(|t| !t.is_empty()))
        .collect()
}

/// A model that answers a user message with `calls` (one per round trip,
/// while the last user message carries tool results), then with
/// `<prefix><the last tool result>`; a plain message gets `reply to: <text>`.
async fn scripted_model(calls: Vec<(&'static str, Value)>, prefix: &'static str) -> FakeAnthropic {
    FakeAnthropic::start_with(move |body| {
        let rounds = count_rounds(body);
        match calls.get(rounds) {
            Some((name, input)) if !calls.is_empty() => {
                Reply::tool_use(&format!("toolu_{rounds}"), name, input.clone())
            }
            _ => {
                let results = tool_results(body);
                match results.last() {
                    Some(last) => Reply::text(format!("{prefix}{last}")),
                    None => Reply::text(format!(
                        "reply to: {}",
                        last_message_text(&user_texts(body).last().cloned().unwrap_or_default())
                    )),
                }
            }
        }
    })
    .await
}

/// How many tool round trips the current turn has had: tool-result user
/// messages after the last plain user message.
fn count_rounds(body: &Value) -> usize {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    messages
        .iter()
        .rev()
        .take_while(|m| {
            m["role"] != "user"
                || m["content"]
                    .as_array()
                    .is_some_and(|b| b.iter().any(|b| b["type"] == "tool_result"))
        })
        .filter(|m| m["role"] == "user")
        .count()
}

async fn reply_text(host: &mut inproc::TestHost) -> String {
    match host.next_reply().await {
        TerminalOutput::Reply(text) | TerminalOutput::Notice(text) => text,
    }
}

/// The overrides of a host whose every group runs Claude Code.
fn claude_overrides() -> Vec<(&'static str, &'static str)> {
    vec![
        ("TALON_AGENT_RUNTIME", "claude-code"),
        ("TALON_AGENT_CLAUDE_IMAGE", CLAUDE_TEST_IMAGE),
    ]
}

fn terminal_group() -> talon::messages::RegisteredGroup {
    inproc::group(TERMINAL_CHAT, "local", true, false)
}

/// Runs a command inside the group's running container, as its user.
async fn exec_in(docker: &bollard::Docker, container: &str, script: &str) -> String {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    use futures::StreamExt;
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(vec!["/bin/sh", "-c", script]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("create exec");
    let mut text = String::new();
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&exec.id, None).await.expect("start exec")
    {
        while let Some(Ok(chunk)) = output.next().await {
            text.push_str(&chunk.to_string());
        }
    }
    text
}

/// The group's session once its anchor is no longer `old` (bounded wait).
async fn session_after(host: &inproc::TestHost, old: Option<&str>) -> talon::store::SessionRow {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(row) = host.store.session("local").unwrap() {
            if row.last_assistant_id.is_some() && row.last_assistant_id.as_deref() != old {
                return row;
            }
        }
        assert!(Instant::now() < deadline, "no new session was recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn until_no_container(home: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !talon_containers(home).is_empty() {
        assert!(Instant::now() < deadline, "the container did not go away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_comes_through_the_real_cli_and_only_the_host_holds_the_key() {
    let Some(docker) = docker_with_claude_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    let model = scripted_model(vec![], "").await;
    let mut host = inproc::start_host_with(
        docker.clone(),
        &model,
        &[terminal_group()],
        &claude_overrides(),
    )
    .await;
    say(TERMINAL_CHAT, "m1", "hello claude");
    assert_eq!(reply_text(&mut host).await, "reply to: hello claude");

    // It was Claude Code, asking through the proxy with the real key.
    let requests = turn_requests(&model);
    assert!(!requests.is_empty());
    let first = &requests[0];
    assert!(
        first
            .header("user-agent")
            .unwrap_or_default()
            .starts_with("claude-cli/"),
        "{:?}",
        first.headers
    );
    assert_eq!(first.header("x-api-key"), Some(API_KEY));
    assert!(first.header("authorization").is_none());
    assert_eq!(first.body["stream"], true);
    // The group's model, and the talon context in the system prompt.
    assert_eq!(first.body["model"], "claude-sonnet-4-5");
    assert!(first.body["system"]
        .to_string()
        .contains("answering in a chat through talon"));

    // The container is hardened and holds only the placeholder.
    let container = wait_for_container(host.home.path(), Duration::from_secs(30));
    let inspect = docker.inspect_container(&container, None).await.unwrap();
    let config = inspect.config.unwrap();
    let env = config.env.unwrap_or_default().join("\n");
    assert!(
        !env.contains(API_KEY),
        "docker inspect shows the key: {env}"
    );
    let host_config = inspect.host_config.unwrap();
    assert_eq!(host_config.network_mode.as_deref(), Some("none"));
    assert_eq!(host_config.readonly_rootfs, Some(true));
    assert_eq!(host_config.cap_drop, Some(vec!["ALL".to_string()]));
    assert_ne!(config.user.as_deref(), Some("0:0"));
    let environ = exec_in(
        &docker,
        &container,
        "for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f 2>/dev/null; done",
    )
    .await;
    assert!(
        environ.contains(PLACEHOLDER),
        "claude's environment: {environ}"
    );
    assert!(
        !environ.contains(API_KEY),
        "a process in the container holds the key"
    );

    // Every proxied call is a metrics line with model and tokens.
    let metrics =
        std::fs::read_to_string(host.home.path().join("logs/routing-metrics.jsonl")).unwrap();
    let call: Value = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["runtime"] == "claude-code")
        .expect("a claude-code model_call line");
    assert_eq!(call["model"], "claude-sonnet-4-5");
    assert!(call["input_tokens"].as_u64().unwrap() > 0, "{call}");
    assert!(call["output_tokens"].as_u64().unwrap() > 0, "{call}");
    assert!(call["latency_ms"].is_u64(), "{call}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bash_tool_writes_a_file_in_the_group_folder_as_the_run_user() {
    let Some(docker) = docker_with_claude_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    let model = scripted_model(
        vec![(
            "Bash",
            json!({"command": "echo made-by-bash > bash.txt && id -u", "description": "write a file"}),
        )],
        "bash said: ",
    )
    .await;
    // Chosen by the group itself, not the default runtime.
    let mut group = terminal_group();
    group.container_config = Some(r#"{"runtime":"claude-code"}"#.into());
    let mut host = inproc::start_host_with(
        docker,
        &model,
        &[group],
        &[("TALON_AGENT_CLAUDE_IMAGE", CLAUDE_TEST_IMAGE)],
    )
    .await;
    say(TERMINAL_CHAT, "m1", "write a file");
    let reply = reply_text(&mut host).await;
    let file = host.home.path().join("groups/local/bash.txt");
    let written = std::fs::read_to_string(&file).expect("the Bash tool wrote the file");
    assert_eq!(written, "made-by-bash\n");
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(&file).unwrap().uid();
    // Claude Code may append its own reminders after the command's output.
    let uid = reply
        .trim_start_matches("bash said: ")
        .lines()
        .next()
        .unwrap_or_default()
        .trim();
    assert!(reply.starts_with("bash said: "), "{reply}");
    assert_eq!(uid, owner.to_string(), "the file is the run user's");
    assert_ne!(owner, 0, "the agent never runs as root");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follow_up_is_piped_into_the_running_cli() {
    let Some(docker) = docker_with_claude_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    // The first answer takes a while, so the second message arrives mid-run.
    let model = FakeAnthropic::start_with(|body| {
        let text = last_message_text(&user_texts(body).last().cloned().unwrap_or_default());
        let reply = Reply::text(format!("reply to: {text}"));
        if text == "first" {
            Reply::delayed(Duration::from_secs(3), reply)
        } else {
            reply
        }
    })
    .await;
    let mut host =
        inproc::start_host_with(docker, &model, &[terminal_group()], &claude_overrides()).await;
    say(TERMINAL_CHAT, "m1", "first");
    let deadline = Instant::now() + Duration::from_secs(60);
    while turn_requests(&model).is_empty() {
        assert!(
            Instant::now() < deadline,
            "Claude Code never called the model"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    say(TERMINAL_CHAT, "m2", "second");
    assert_eq!(reply_text(&mut host).await, "reply to: first");
    assert_eq!(reply_text(&mut host).await, "reply to: second");
    // One container, one conversation: the second turn saw the first.
    let logs = run_logs(host.home.path(), "local");
    assert!(logs.len() <= 1, "a second container was started: {logs:?}");
    let last = turn_requests(&model).pop().unwrap();
    let said = user_texts(&last.body).join("\n");
    assert!(said.contains("first") && said.contains("second"), "{said}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resume_is_anchored_at_the_recorded_reply_and_a_stale_session_starts_fresh() {
    let Some(docker) = docker_with_claude_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    let model = scripted_model(vec![], "").await;
    let mut host = inproc::start_host_with(
        docker,
        &model,
        &[terminal_group()],
        &[
            ("TALON_AGENT_RUNTIME", "claude-code"),
            ("TALON_AGENT_CLAUDE_IMAGE", CLAUDE_TEST_IMAGE),
            ("TALON_CONTAINER_IDLE_TIMEOUT", "1s"),
        ],
    )
    .await;
    say(TERMINAL_CHAT, "m1", "one");
    assert_eq!(reply_text(&mut host).await, "reply to: one");
    // The turn's result (and so the session) follows its reply.
    let anchor = session_after(&host, None).await;
    say(TERMINAL_CHAT, "m2", "two");
    assert_eq!(reply_text(&mut host).await, "reply to: two");
    let after_two = session_after(&host, anchor.last_assistant_id.as_deref()).await;
    assert_eq!(after_two.session_id, anchor.session_id);
    assert_ne!(after_two.last_assistant_id, anchor.last_assistant_id);
    until_no_container(host.home.path()).await;

    // As if the host never saw turn two finish: it is not carried on.
    host.store
        .set_session(
            "local",
            &anchor.session_id,
            anchor.last_assistant_id.as_deref(),
        )
        .unwrap();
    say(TERMINAL_CHAT, "m3", "three");
    assert_eq!(reply_text(&mut host).await, "reply to: three");
    let last = turn_requests(&model).pop().unwrap();
    let said = user_texts(&last.body).join("\n");
    assert!(
        said.contains("one"),
        "the history before the anchor: {said}"
    );
    assert!(said.contains("three"), "{said}");
    assert!(!said.contains("two"), "cut at the anchor, yet: {said}");
    until_no_container(host.home.path()).await;

    // A session Claude Code does not know: cleared, and the turn runs fresh.
    host.store
        .set_session("local", "00000000-0000-4000-8000-000000000000", None)
        .unwrap();
    say(TERMINAL_CHAT, "m4", "four");
    assert_eq!(reply_text(&mut host).await, "reply to: four");
    let fresh = session_after(&host, anchor.last_assistant_id.as_deref()).await;
    assert_ne!(fresh.session_id, "00000000-0000-4000-8000-000000000000");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_send_message_and_schedule_task_act_through_the_host() {
    let Some(docker) = docker_with_claude_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    let when = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let model = scripted_model(
        vec![
            ("mcp__talon__send_message", json!({"text": "sent over mcp"})),
            (
                "mcp__talon__schedule_task",
                json!({"prompt": "water the plants", "schedule_type": "once", "schedule_value": when}),
            ),
        ],
        "scheduled: ",
    )
    .await;
    let mut host =
        inproc::start_host_with(docker, &model, &[terminal_group()], &claude_overrides()).await;
    say(TERMINAL_CHAT, "m1", "remind me");
    assert_eq!(reply_text(&mut host).await, "sent over mcp");
    let final_reply = reply_text(&mut host).await;
    assert!(final_reply.starts_with("scheduled: "), "{final_reply}");
    let tasks = host.store.tasks(Some("local")).unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0].prompt, "water the plants");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oauth_credential_from_the_token_manager_arrives_as_a_bearer() {
    let Some(docker) = docker_with_claude_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    let model = scripted_model(vec![], "").await;
    let mut overrides = claude_overrides();
    overrides.push(("ANTHROPIC_API_KEY", ""));
    overrides.push(("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-test-oauth"));
    let mut host = inproc::start_host_with(docker, &model, &[terminal_group()], &overrides).await;
    say(TERMINAL_CHAT, "m1", "hi");
    assert_eq!(reply_text(&mut host).await, "reply to: hi");
    let request = turn_requests(&model).pop().unwrap();
    assert_eq!(
        request.header("authorization"),
        Some("Bearer sk-ant-oat01-test-oauth")
    );
    assert!(request.header("x-api-key").is_none(), "never both");
    let beta = request.header("anthropic-beta").unwrap_or_default();
    assert!(
        beta.split(',').any(|b| b.trim() == "oauth-2025-04-20"),
        "{beta}"
    );
    // Claude Code's own betas are kept.
    assert!(beta.contains("claude-code-"), "{beta}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_messages_path_from_inside_the_container_is_refused() {
    let Some(docker) = docker_with_claude_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    // The attack: the agent's shell talks to the loopback listener itself.
    let script = r#"port=${ANTHROPIC_BASE_URL##*:}; exec 3<>/dev/tcp/127.0.0.1/$port; printf 'POST /v1/files HTTP/1.1\r\nHost: x\r\nx-api-key: stolen?\r\nContent-Length: 2\r\n\r\n{}' >&3; head -c 400 <&3 | tr '\r\n' '  '"#;
    let model = scripted_model(
        vec![("Bash", json!({"command": script, "description": "probe"}))],
        "probe: ",
    )
    .await;
    let mut host =
        inproc::start_host_with(docker, &model, &[terminal_group()], &claude_overrides()).await;
    say(TERMINAL_CHAT, "m1", "probe the proxy");
    let reply = reply_text(&mut host).await;
    assert!(reply.starts_with("probe: HTTP/1.1 4"), "{reply}");
    assert!(reply.contains("refused by talon"), "{reply}");
    assert!(
        model
            .requests()
            .iter()
            .all(|r| r.path.starts_with("/v1/messages")),
        "a refused path reached the API: {:?}",
        model.requests().iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    let log = std::fs::read_to_string(host.home.path().join("logs/routing-metrics.jsonl"))
        .unwrap_or_default();
    assert!(log.contains("/v1/files"), "the refusal is on record: {log}");
    host.stop().await;
}
