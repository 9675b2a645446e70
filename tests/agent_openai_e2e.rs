//! The agent's tools through the OpenAI-compatible provider, end to end
//! (issue 5, spec §7): the real binary, Docker engine and agent image; the
//! terminal group pinned to the LIGHT tier by its own container config; a
//! fake chat-completions server (a copilot proxy, configured by the seeds'
//! COPILOT_* names) playing a model that calls write_file then read_file;
//! and a fake Anthropic server as the HEAVY tier, which must stay silent.
//!
//! The chat-completions wire differs from the Messages API exactly where tools
//! are concerned (arguments as a JSON string, results as `role: "tool"`
//! messages), so this checks the tool loop survives the translation both ways,
//! and that a group's own model reaches the wire and the routing log. And a
//! LIGHT call with broken arguments must not poison the group: it is answered
//! with an error, and the group's next HEAVY turn sends its input as an
//! object (the Messages API refuses anything else).

mod support;

#[path = "support/fake_openai.rs"]
mod fake_openai;

use std::time::Duration;

use fake_openai::{FakeOpenAi, RecordedRequest, Reply};
use serde_json::{json, Value};
use support::fake_anthropic::{self, FakeAnthropic};
use support::*;
use talon::actors::terminal::TERMINAL_CHAT;

const LIMIT: Duration = Duration::from_secs(120);
const LIGHT_MODEL: &str = "gpt-4o-mini";
const LIGHT_KEY: &str = "copilot-dummy";
const NOTE: &str = "talon wrote this via chat completions\n";
const FINAL_ANSWER: &str = "read back: talon wrote this via chat completions";

/// Runs a `talon` subcommand and insists it succeeds; returns its stdout.
fn talon_ok(env: &[(String, String)], args: &[&str]) -> String {
    let output = talon(env).args(args).output().expect("run talon");
    assert!(
        output.status.success(),
        "talon {args:?} failed: {}",
        stderr_of(&output)
    );
    stdout_of(&output)
}

/// What the scenario leaves behind for its assertions.
struct Outcome {
    home: Home,
    stdout: String,
    light_requests: Vec<RecordedRequest>,
    heavy_requests: usize,
}

/// The environment of a home whose HEAVY tier is `heavy` and LIGHT tier
/// `light`, with the terminal registered as the main group (folder `main`).
fn two_tier_home(home: &Home, heavy: &FakeAnthropic, light: &FakeOpenAi) -> Vec<(String, String)> {
    let mut env = host_env(home.path(), &heavy.base_url);
    // The router stays off: only the group's own setting can pick LIGHT.
    for (name, value) in [
        ("COPILOT_API_URL", light.base_url.as_str()),
        ("COPILOT_MODEL", LIGHT_MODEL),
        ("COPILOT_API_KEY", LIGHT_KEY),
    ] {
        env.push((name.to_string(), value.to_string()));
    }
    talon_ok(
        &env,
        &[
            "groups",
            "add",
            TERMINAL_CHAT,
            "--name",
            "Terminal",
            "--folder",
            "main",
            "--main",
        ],
    );
    env
}

/// Pins the terminal's group to `tier` by its own container config.
fn pin_tier(env: &[(String, String)], tier: &str) {
    let config = format!(r#"{{"provider":{{"tier":"{tier}"}}}}"#);
    talon_ok(
        env,
        &[
            "groups",
            "set",
            TERMINAL_CHAT,
            "--container-config",
            &config,
        ],
    );
}

/// Registers the terminal as the main group (folder `main`), applies
/// `configure` to it, then runs one `talon chat` turn in which the LIGHT fake
/// writes a note with write_file, reads it back with read_file, and answers.
async fn run_tool_scenario(configure: impl FnOnce(&[(String, String)])) -> Outcome {
    let heavy =
        FakeAnthropic::start(vec![fake_anthropic::Reply::text("heavy must not answer")]).await;
    let light = FakeOpenAi::start_with_key(
        vec![
            Reply::tool_call(
                "call_write",
                "write_file",
                json!({"path": "notes/hello.txt", "content": NOTE}),
            ),
            Reply::tool_call("call_read", "read_file", json!({"path": "notes/hello.txt"})),
            Reply::text(FINAL_ANSWER),
        ],
        LIGHT_KEY,
    )
    .await;
    let home = Home::new();
    let env = two_tier_home(&home, &heavy, &light);
    configure(&env);

    let run_env = env.clone();
    let output = tokio::task::spawn_blocking(move || {
        piped_chat(&run_env, b"write me a note and read it back\n", LIMIT)
    })
    .await
    .expect("the chat thread");
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    Outcome {
        stdout: stdout_of(&output),
        light_requests: light.requests(),
        heavy_requests: heavy.request_count(),
        home,
    }
}

/// The `role: "tool"` messages of a request, as (tool_call_id, content).
fn tool_messages(body: &Value) -> Vec<(String, String)> {
    body["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter(|m| m["role"] == "tool")
                .map(|m| {
                    (
                        m["tool_call_id"].as_str().unwrap_or_default().to_string(),
                        m["content"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The routing log's lines.
fn routing_log(home: &std::path::Path) -> (String, Vec<Value>) {
    let log =
        std::fs::read_to_string(home.join("logs/routing-metrics.jsonl")).expect("the routing log");
    let lines = log
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    (log, lines)
}

/// Everything both cases check: the tool loop went through the LIGHT fake
/// with `model` on the wire, the note is in the group folder, the reply is
/// delivered, HEAVY was never asked, and the log shows tier light with `model`.
fn assert_light_tool_run(outcome: &Outcome, model: &str) {
    let requests = &outcome.light_requests;
    assert_eq!(requests.len(), 3, "write, read, then the answer");
    for request in requests {
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!(request.body["model"], model);
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {LIGHT_KEY}").as_str())
        );
    }
    assert_eq!(outcome.heavy_requests, 0, "the HEAVY tier was called");

    // The tools were offered in the chat-completions shape.
    let offered: Vec<&str> = requests[0].body["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter(|t| t["type"] == "function")
                .filter_map(|t| t["function"]["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        offered.contains(&"write_file") && offered.contains(&"read_file"),
        "tools offered: {offered:?}"
    );

    // Each call went back as the assistant's tool_calls (arguments a JSON
    // string) and its result as a `tool` message with the call's id.
    let last = &requests[2].body;
    let calls: Vec<&Value> = last["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "assistant")
        .filter_map(|m| m["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 2, "{last}");
    let write_arguments: Value = serde_json::from_str(
        calls[0]["function"]["arguments"]
            .as_str()
            .expect("arguments are a JSON string"),
    )
    .expect("arguments parse");
    assert_eq!(write_arguments["path"], "notes/hello.txt");
    let results = tool_messages(last);
    assert_eq!(results.len(), 2, "{last}");
    assert_eq!(results[0].0, "call_write");
    assert_eq!(results[1].0, "call_read");
    assert!(!results[0].1.starts_with("Error"), "{results:?}");
    assert!(!results[1].1.starts_with("Error"), "{results:?}");
    // read_file really read what write_file wrote, inside the container.
    assert!(results[1].1.contains(NOTE.trim_end()), "{results:?}");

    // The file is in the group's folder on the host.
    let written = outcome.home.path().join("groups/main/notes/hello.txt");
    assert_eq!(
        std::fs::read_to_string(&written).expect("the note on the host"),
        NOTE
    );

    // The model's answer quoting the file is what the user saw.
    assert_eq!(outcome.stdout, format!("{FINAL_ANSWER}\n"));

    let (log, lines) = routing_log(outcome.home.path());
    let routes: Vec<_> = lines.iter().filter(|l| l["event"] == "route").collect();
    let calls: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "model_call")
        .collect();
    assert_eq!(routes.len(), 1, "{log}");
    assert_eq!(calls.len(), 3, "{log}");
    for line in routes.iter().chain(&calls) {
        assert_eq!(line["group"], "main", "{log}");
        assert_eq!(line["tier"], "light", "{log}");
        assert_eq!(line["reason"], "group setting", "{log}");
        assert_eq!(line["provider"], "openai", "{log}");
        assert_eq!(line["model"], model, "{log}");
    }
    for call in &calls {
        assert_eq!(call["ok"], true, "{log}");
    }
    assert!(!log.contains(LIGHT_KEY), "the key leaked: {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_light_pinned_group_runs_the_tool_loop_through_chat_completions() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let outcome = run_tool_scenario(|env| {
        talon_ok(
            env,
            &[
                "groups",
                "set",
                TERMINAL_CHAT,
                "--container-config",
                r#"{"provider":{"tier":"light"}}"#,
            ],
        );
    })
    .await;
    assert_light_tool_run(&outcome, LIGHT_MODEL);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_model_is_what_the_light_tier_asks_for() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let outcome = run_tool_scenario(|env| {
        talon_ok(
            env,
            &[
                "groups",
                "set",
                TERMINAL_CHAT,
                "--container-config",
                r#"{"provider":{"tier":"light"}}"#,
            ],
        );
        // The CLI flag edits the model and keeps the tier.
        let set = talon_ok(
            env,
            &["groups", "set", TERMINAL_CHAT, "--model", "special-model"],
        );
        assert!(set.contains(r#""model": "special-model""#), "{set}");
        assert!(set.contains(r#""tier": "light""#), "{set}");
        let shown = talon_ok(env, &["groups", "show", TERMINAL_CHAT]);
        assert!(shown.contains("model      special-model"), "{shown}");
        assert!(shown.contains("tier       light"), "{shown}");
    })
    .await;
    assert_light_tool_run(&outcome, "special-model");
}

/// A chat-completions reply calling `name` with `arguments` sent exactly as
/// given (the fake's `tool_call` always sends valid JSON).
fn raw_tool_call(id: &str, name: &str, arguments: &str) -> Reply {
    Reply::Raw {
        code: 200,
        body: json!({
            "id": "chatcmpl-raw",
            "object": "chat.completion",
            "created": 0,
            "model": LIGHT_MODEL,
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null, "tool_calls": [{
                    "id": id, "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }],
            }}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }),
    }
}

/// Runs `talon chat` on `input` and insists it succeeds; returns its stdout.
async fn chat_ok(env: &[(String, String)], input: &'static [u8]) -> String {
    let run_env = env.to_vec();
    let output = tokio::task::spawn_blocking(move || piped_chat(&run_env, input, LIMIT))
        .await
        .expect("the chat thread");
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    stdout_of(&output)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_light_tool_call_is_refused_and_the_heavy_tier_gets_an_object_input() {
    let Some(_docker) = docker_with_image().await else {
        return;
    };
    let heavy = FakeAnthropic::start(vec![fake_anthropic::Reply::text("heavy: all clear")]).await;
    let light = FakeOpenAi::start_with_key(
        vec![
            // Cut off mid-string: not JSON at all.
            raw_tool_call(
                "call_bad",
                "write_file",
                r#"{"path": "notes/bad.txt", "content": "half"#,
            ),
            Reply::text("that call was broken"),
        ],
        LIGHT_KEY,
    )
    .await;
    let home = Home::new();
    let env = two_tier_home(&home, &heavy, &light);
    pin_tier(&env, "light");
    let first = chat_ok(&env, b"write me a note\n").await;
    assert_eq!(first, "that call was broken\n");

    // The LIGHT model was told its arguments were unreadable; nothing ran.
    let light_requests = light.requests();
    assert_eq!(light_requests.len(), 2, "the call, then the answer");
    let results = tool_messages(&light_requests[1].body);
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].0, "call_bad");
    assert!(
        results[0]
            .1
            .starts_with("Error: the tool call's arguments were not valid JSON"),
        "{results:?}"
    );
    assert!(!home.path().join("groups/main/notes/bad.txt").exists());
    assert_eq!(heavy.request_count(), 0);

    // The same group's next turn goes to HEAVY with the whole session.
    pin_tier(&env, "heavy");
    let second = chat_ok(&env, b"what went wrong?\n").await;
    assert_eq!(second, "heavy: all clear\n");
    let heavy_requests = heavy.message_requests();
    assert_eq!(heavy_requests.len(), 1, "the fake refused nothing");
    let body = &heavy_requests[0].body;
    let blocks: Vec<&Value> = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .collect();
    let call = blocks
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap_or_else(|| panic!("the LIGHT call is in the session: {body}"));
    assert_eq!(call["id"], "call_bad", "{body}");
    assert_eq!(call["name"], "write_file", "{body}");
    assert!(call["input"].is_object(), "{body}");
    let result = blocks
        .iter()
        .find(|b| b["type"] == "tool_result")
        .unwrap_or_else(|| panic!("the call's result is in the session: {body}"));
    assert_eq!(result["tool_use_id"], "call_bad", "{body}");
    assert_eq!(result["is_error"], true, "{body}");
    assert_eq!(light.request_count(), 2, "LIGHT was asked again");
}
