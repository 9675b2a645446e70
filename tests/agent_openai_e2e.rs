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
//! and that a group's own model reaches the wire and the routing log.

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
