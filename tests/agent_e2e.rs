//! The agent's tools end to end (issue 5): the real binary or in-process
//! host, the real Docker engine and agent image, and a fake Anthropic server
//! that plays a scripted tool-using model.
//!
//! The fake model decides from the conversation so far: it answers the n-th
//! request of a turn with the n-th scripted tool call (one per round trip,
//! counted by the `tool_result` blocks the runner has sent back), and, once
//! every call has its result, with text quoting the last result. So each test
//! checks both what the tool really did (files, store, logs, deliveries) and
//! what the runner told the model about it.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fake_anthropic::{FakeAnthropic, RecordedRequest, Reply};
use support::inproc::{self, ONE_HOST};
use support::*;
use talon::actors::router::RouterMsg;
use talon::actors::terminal::{TerminalOutput, TERMINAL_CHAT};
use talon::store::{ScheduleKind, Store};

const LIMIT: Duration = Duration::from_secs(120);

/// One `tool_result` block the runner sent to the model.
#[derive(Debug, Clone)]
struct ToolResult {
    tool_use_id: String,
    content: String,
    is_error: bool,
}

/// The text of a `tool_result`'s content: a string or text blocks.
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

/// Every `tool_result` block in a request's conversation, in order.
fn tool_results(body: &Value) -> Vec<ToolResult> {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    messages
        .iter()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_array().cloned())
        .flatten()
        .filter(|block| block["type"] == "tool_result")
        .map(|block| ToolResult {
            tool_use_id: block["tool_use_id"].as_str().unwrap_or_default().into(),
            content: content_text(&block["content"]),
            is_error: block["is_error"].as_bool().unwrap_or(false),
        })
        .collect()
}

/// A model that makes `calls` (tool name, input) one per round trip, then
/// answers `<final_prefix><last tool result's content>`.
async fn tool_calling_model(
    calls: Vec<(&'static str, Value)>,
    final_prefix: &'static str,
) -> FakeAnthropic {
    FakeAnthropic::start_with(move |body| {
        let results = tool_results(body);
        match calls.get(results.len()) {
            Some((name, input)) => {
                Reply::tool_use(&format!("toolu_{}", results.len() + 1), name, input.clone())
            }
            None => Reply::text(format!(
                "{final_prefix}{}",
                results.last().map(|r| r.content.as_str()).unwrap_or("")
            )),
        }
    })
    .await
}

/// The tool results of the last request the model saw.
fn last_results(model: &FakeAnthropic) -> Vec<ToolResult> {
    let requests: Vec<RecordedRequest> = model.requests();
    let last = requests.last().expect("the model was called");
    tool_results(&last.body)
}

/// Runs `talon chat` on `input` in `env`'s home, off the async runtime.
async fn chat(env: Vec<(String, String)>, input: &'static [u8]) -> std::process::Output {
    tokio::task::spawn_blocking(move || piped_chat(&env, input, LIMIT))
        .await
        .expect("the chat thread")
}

/// Runs a `talon` subcommand (e.g. `groups add`) and insists it succeeds.
fn talon_ok(env: &[(String, String)], args: &[&str]) {
    let output = talon(env).args(args).output().expect("run talon");
    assert!(
        output.status.success(),
        "talon {args:?} failed: {}",
        stderr_of(&output)
    );
}

/// A home where `sock:boss` is main and the terminal is the non-main group
/// `local` (no trigger needed), so the terminal's agent is an ordinary group.
fn home_with_terminal_not_main(env: &[(String, String)]) {
    talon_ok(
        env,
        &[
            "groups",
            "add",
            "sock:boss",
            "--name",
            "Boss",
            "--folder",
            "boss",
            "--main",
        ],
    );
    talon_ok(
        env,
        &[
            "groups",
            "add",
            TERMINAL_CHAT,
            "--name",
            "Local",
            "--folder",
            "local",
            "--no-trigger",
        ],
    );
}

/// Everything the host logged (every `talon*` file under `<home>/logs/`).
fn host_log(home: &Path) -> String {
    let mut paths: Vec<_> = std::fs::read_dir(home.join("logs"))
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.sort();
    paths
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("talon"))
        })
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_writes_a_file_in_its_folder_and_reads_it_back() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = tool_calling_model(
        vec![
            (
                "write_file",
                json!({"path": "notes/hello.txt", "content": "talon wrote this\n"}),
            ),
            ("read_file", json!({"path": "notes/hello.txt"})),
        ],
        "read back: ",
    )
    .await;
    let home = Home::new();
    let env = host_env(home.path(), &model.base_url);
    let output = chat(env, b"write me a note\n").await;
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));

    // The model was offered the tools, and got both results without errors.
    let requests = model.requests();
    assert_eq!(requests.len(), 3, "write, read, then the answer");
    let offered: Vec<&str> = requests[0].body["tools"]
        .as_array()
        .map(|tools| tools.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        offered.contains(&"write_file") && offered.contains(&"read_file"),
        "tools offered: {offered:?}"
    );
    let results = last_results(&model);
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[0].tool_use_id, "toolu_1");
    assert!(!results[0].is_error, "{results:?}");
    assert!(!results[1].is_error, "{results:?}");
    assert!(
        results[1].content.contains("talon wrote this"),
        "{results:?}"
    );

    // The file is really in the group's folder on the host, owned by the
    // container's user (the host user's own, or the fallback when root).
    let written = home.path().join("groups/main/notes/hello.txt");
    assert_eq!(
        std::fs::read_to_string(&written).expect("the note on the host"),
        "talon wrote this\n"
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&written).unwrap();
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    assert_eq!(
        (meta.uid(), meta.gid()),
        talon::docker::run_user(uid, gid, None)
    );

    // The reply quotes what read_file returned.
    let stdout = stdout_of(&output);
    assert!(stdout.starts_with("read back: "), "stdout: {stdout}");
    assert!(stdout.contains("talon wrote this"), "stdout: {stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_shell_command_is_cut_at_its_timeout_and_the_agent_goes_on() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = tool_calling_model(
        vec![(
            "bash",
            json!({"command": "echo started; sleep 600", "timeout_seconds": 1}),
        )],
        "after the timeout: ",
    )
    .await;
    let home = Home::new();
    let env = host_env(home.path(), &model.base_url);
    let began = Instant::now();
    let output = chat(env, b"run something slow\n").await;
    let took = began.elapsed();
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    // Far below the command's 600 s: it was cut after about a second.
    assert!(took < Duration::from_secs(60), "took {took:?}");

    let results = last_results(&model);
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(results[0].is_error, "{results:?}");
    assert!(results[0].content.contains("started"), "{results:?}");
    assert!(
        results[0].content.contains("did not finish within 1.0 s"),
        "{results:?}"
    );
    // The turn ended with the model's next text.
    assert_eq!(model.request_count(), 2);
    let stdout = stdout_of(&output);
    assert!(
        stdout.starts_with("after the timeout: "),
        "stdout: {stdout}"
    );
    assert!(stdout.contains("did not finish"), "stdout: {stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_main_group_may_not_message_other_chats_or_register_groups() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = tool_calling_model(
        vec![
            (
                "send_message",
                json!({"chat_id": "sock:boss", "text": "psst, boss"}),
            ),
            (
                "register_group",
                json!({"chat_id": "sock:intruder", "name": "Intruder", "folder": "intruder"}),
            ),
        ],
        "done: ",
    )
    .await;
    let home = Home::new();
    let env = host_env(home.path(), &model.base_url);
    home_with_terminal_not_main(&env);
    let output = chat(env, b"tell the boss and add a group\n").await;
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));

    // Both calls came back to the model as errors with a reason.
    let results = last_results(&model);
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results[0].is_error, "{results:?}");
    assert!(
        results[0].content.contains("only to its own chat"),
        "{results:?}"
    );
    assert!(results[1].is_error, "{results:?}");
    assert!(
        results[1]
            .content
            .contains("only the main group may register"),
        "{results:?}"
    );
    assert!(stdout_of(&output).starts_with("done: "));

    // Nothing happened: no message for the boss, no new group.
    let store = Store::open(&home.paths().db()).unwrap();
    assert!(
        store
            .unsent_outbox()
            .unwrap()
            .iter()
            .all(|row| row.chat_id != "sock:boss"),
        "a message to the boss was queued"
    );
    assert!(store.group_by_chat("sock:intruder").unwrap().is_none());

    // And the host's log names both refusals.
    let log = host_log(home.path());
    let refusals: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("host action refused"))
        .collect();
    assert!(
        refusals
            .iter()
            .any(|l| l.contains("send_message") && l.contains("local")),
        "log: {log}"
    );
    assert!(
        refusals
            .iter()
            .any(|l| l.contains("register_group") && l.contains("local")),
        "log: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn main_may_message_another_registered_chat() {
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    let model = tool_calling_model(
        vec![(
            "send_message",
            json!({"chat_id": TERMINAL_CHAT, "text": "hello from main"}),
        )],
        "main says: ",
    )
    .await;
    // Main is a socket chat; the terminal (whose deliveries the test reads)
    // is an ordinary group.
    let groups = [
        inproc::group("sock:boss", "boss", true, false),
        inproc::group(TERMINAL_CHAT, "local", false, false),
    ];
    let mut host = inproc::start_host(docker, &model, &groups).await;
    inproc::router()
        .cast(RouterMsg::Inbound(inproc::message(
            "sock:boss",
            "m1",
            "tell the terminal hello",
        )))
        .unwrap();
    let delivered = host.next_reply().await;
    assert!(
        matches!(&delivered, TerminalOutput::Reply(text) if text == "hello from main"),
        "{delivered:?}"
    );
    // The model was told it was sent.
    let deadline = Instant::now() + Duration::from_secs(30);
    while model.request_count() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let results = last_results(&model);
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(!results[0].is_error, "{results:?}");
    assert!(results[0].content.contains(TERMINAL_CHAT), "{results:?}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_task_is_stored_for_the_asking_group() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = tool_calling_model(
        vec![(
            "schedule_task",
            // Hourly, so it cannot come due while the test runs.
            json!({
                "prompt": "water the plants",
                "schedule_type": "interval",
                "schedule_value": "3600000",
            }),
        )],
        "scheduled: ",
    )
    .await;
    let home = Home::new();
    let env = host_env(home.path(), &model.base_url);
    home_with_terminal_not_main(&env);
    let output = chat(env, b"remind me hourly\n").await;
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));

    let results = last_results(&model);
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(!results[0].is_error, "{results:?}");

    let store = Store::open(&home.paths().db()).unwrap();
    let tasks = store.tasks(None).unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let task = &tasks[0];
    assert_eq!(task.group_folder, "local");
    assert_eq!(task.chat_id, TERMINAL_CHAT);
    assert_eq!(task.prompt, "water the plants");
    assert_eq!(task.schedule_kind, ScheduleKind::Interval);
    assert_eq!(task.schedule_value, "3600000");
    assert!(task.next_run.is_some_and(|t| t > task.created_at));
    assert!(store.tasks(Some("boss")).unwrap().is_empty());
    // The id the model was told is the stored one.
    assert!(results[0].content.contains(&task.id), "{results:?}");
}

/// A page on 127.0.0.1 that counts its visitors.
async fn local_page() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let app = axum::Router::new().route(
        "/page",
        axum::routing::get(move || {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                "the local page body"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/page", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, hits, server)
}

#[tokio::test(flavor = "multi_thread")]
async fn web_fetch_of_loopback_is_refused_unless_allowed() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let (url, hits, server) = local_page().await;
    let calls = vec![("web_fetch", json!({ "url": url }))];

    // By default the host refuses, and never connects.
    let model = tool_calling_model(calls.clone(), "fetched: ").await;
    let home = Home::new();
    let env = host_env(home.path(), &model.base_url);
    let output = chat(env, b"fetch the page\n").await;
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    let results = last_results(&model);
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(results[0].is_error, "{results:?}");
    assert!(results[0].content.contains("loopback"), "{results:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    // Opted in, the host fetches it and the agent gets the body.
    let model = tool_calling_model(calls, "fetched: ").await;
    let home = Home::new();
    let mut env = host_env(home.path(), &model.base_url);
    env.push(("TALON_WEB_ALLOW_LOOPBACK".into(), "true".into()));
    let output = chat(env, b"fetch the page\n").await;
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    let results = last_results(&model);
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(!results[0].is_error, "{results:?}");
    assert!(
        results[0].content.contains("the local page body"),
        "{results:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(stdout_of(&output).contains("the local page body"));
    server.abort();
}

/// A copy of the transcript line `line` as a new entry under `parent`, with
/// `from` replaced by `to` in its text: a branch the host never recorded.
fn stray_entry(line: &str, uuid: &str, parent: &str, from: &str, to: &str) -> String {
    let mut entry: Value = serde_json::from_str(&line.replace(from, to)).unwrap();
    entry["uuid"] = json!(uuid);
    entry["parent_uuid"] = json!(parent);
    entry.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_chat_run_resumes_the_session_at_the_recorded_anchor() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = inproc::replying_model().await;
    let home = Home::new();
    let env = host_env(home.path(), &model.base_url);
    let first = chat(env.clone(), b"my name is Ann\n").await;
    assert!(first.status.success(), "stderr: {}", stderr_of(&first));
    assert_eq!(stdout_of(&first), "reply to: my name is Ann\n");

    // The host recorded the session and the anchor: the assistant's reply.
    let store = Store::open(&home.paths().db()).unwrap();
    let session = store.session("main").unwrap().expect("a recorded session");
    let anchor = session.last_assistant_id.expect("a recorded anchor");
    let transcript = home
        .paths()
        .session_dir("main")
        .join(format!("{}.jsonl", session.session_id));
    let text = std::fs::read_to_string(&transcript).expect("the transcript");
    let lines: Vec<&str> = text.lines().collect();
    let anchored = lines
        .iter()
        .find(|l| l.contains(&format!("\"uuid\":\"{anchor}\"")))
        .expect("the anchor is in the transcript");
    let user_line = lines
        .iter()
        .find(|l| l.contains("\"role\":\"user\""))
        .expect("the user's message is in the transcript");
    // A run that crashed after writing but before the host recorded it left
    // a branch past the anchor; it is the file's tip now, and must be ignored.
    let stray_user = stray_entry(
        user_line,
        "stray-1",
        &anchor,
        "my name is Ann",
        "STRAY question",
    );
    let stray_reply = stray_entry(
        anchored,
        "stray-2",
        "stray-1",
        "my name is Ann",
        "STRAY answer",
    );
    std::fs::write(&transcript, format!("{text}{stray_user}\n{stray_reply}\n")).unwrap();

    let second = chat(env, b"what is my name?\n").await;
    assert!(second.status.success(), "stderr: {}", stderr_of(&second));
    assert_eq!(stdout_of(&second), "reply to: what is my name?\n");
    let requests = model.requests();
    assert_eq!(requests.len(), 2);
    let body = &requests[1].body;
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{body}");
    assert_eq!(messages[0]["role"], "user");
    assert!(messages[0].to_string().contains("my name is Ann"), "{body}");
    assert_eq!(messages[1]["role"], "assistant");
    assert!(
        messages[1].to_string().contains("reply to: my name is Ann"),
        "{body}"
    );
    assert_eq!(messages[2]["role"], "user");
    assert!(
        messages[2].to_string().contains("what is my name?"),
        "{body}"
    );
    assert!(!body.to_string().contains("STRAY"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_cut_and_paused_replies_reach_the_chat_with_their_notices() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let model = FakeAnthropic::start(vec![
        // What the real API sends when the model declines: no content at all.
        Reply::message(Vec::new(), "refusal"),
        Reply::message(
            vec![json!({"type": "text", "text": "The story begins"})],
            "max_tokens",
        ),
        Reply::message(
            vec![json!({"type": "text", "text": "Part one."})],
            "pause_turn",
        ),
        Reply::text("Part two."),
    ])
    .await;
    let home = Home::new();
    let env = host_env(home.path(), &model.base_url);

    // A refusal: the notice, a successful turn, and no retry.
    let refused = chat(env.clone(), b"do something awful\n").await;
    assert!(refused.status.success(), "stderr: {}", stderr_of(&refused));
    assert_eq!(
        stdout_of(&refused),
        "[the model declined to answer this]\n",
        "stderr: {}",
        stderr_of(&refused)
    );
    assert_eq!(model.request_count(), 1, "a refusal was retried");

    // A reply cut at max_tokens: its text, then the note.
    let cut = chat(env.clone(), b"tell me a long story\n").await;
    assert!(cut.status.success(), "stderr: {}", stderr_of(&cut));
    assert_eq!(
        stdout_of(&cut),
        "The story begins\n\n[cut: the reply reached the length limit]\n"
    );
    assert_eq!(model.request_count(), 2);

    // A paused turn is sent back and carries on in the same turn.
    let paused = chat(env, b"research it\n").await;
    assert!(paused.status.success(), "stderr: {}", stderr_of(&paused));
    let stdout = stdout_of(&paused);
    assert!(
        stdout.contains("Part one.") && stdout.contains("Part two."),
        "stdout: {stdout}"
    );
    let requests = model.requests();
    assert_eq!(requests.len(), 4, "the pause, then its continuation");
    let messages = requests[3].body["messages"].as_array().cloned();
    let last = messages.as_ref().and_then(|m| m.last());
    assert_eq!(
        last.map(|m| (m["role"].clone(), m.to_string().contains("Part one."))),
        Some((json!("assistant"), true)),
        "the continuation ends with the paused reply: {messages:?}"
    );
}
