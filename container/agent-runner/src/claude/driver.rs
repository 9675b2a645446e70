//! The turn logic of the Claude Code runtime, as a pure state machine: host
//! messages and Claude Code's stream-json events in, actions out.
//!
//! One host turn (the start, or a follow-up) is one Claude Code user
//! message and ends with its `result` event. A follow-up that arrives while
//! Claude Code is busy waits here until the turn's result, so every turn
//! the host starts gets exactly one [`RunResult`]. The close sentinel ends
//! Claude Code's stdin once it is idle; it then exits 0.

use std::collections::VecDeque;

use serde_json::{json, Value};

use crate::wire::{RunResult, RunStatus, RunnerToHost, StartRun};

/// What the driver asks its I/O loop to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// One stream-json line (without newline) for Claude Code's stdin.
    ToClaude(String),
    /// End Claude Code's stdin: it finishes and exits.
    CloseClaude,
    /// A protocol line for the host.
    Emit(RunnerToHost),
    /// The run is over; exit with this code.
    Exit(u8),
}

#[derive(Debug)]
pub struct Driver {
    session_id: Option<String>,
    last_assistant_id: Option<String>,
    /// A turn is in Claude Code's hands; its result has not come yet.
    busy: bool,
    queued: VecDeque<String>,
    close_requested: bool,
    stdin_closed: bool,
}

/// The stream-json user message carrying `prompt`.
pub fn user_line(prompt: &str) -> String {
    json!({
        "type": "user",
        "message": {"role": "user", "content": prompt},
        "parent_tool_use_id": null,
    })
    .to_string()
}

/// The most useful line of Claude Code's stderr for a user: the last
/// non-empty one, cut to a readable length.
pub fn last_error_line(stderr: &str) -> Option<String> {
    const MAX: usize = 500;
    let line = stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())?;
    let mut end = line.len().min(MAX);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    Some(line[..end].to_string())
}

impl Driver {
    /// The driver of a run, and its first actions (the start's prompt).
    pub fn start(start: &StartRun) -> (Driver, Vec<Action>) {
        let driver = Driver {
            session_id: start.session_id.clone(),
            last_assistant_id: start.resume_at.clone(),
            busy: true,
            queued: VecDeque::new(),
            close_requested: false,
            stdin_closed: false,
        };
        (driver, vec![Action::ToClaude(user_line(&start.prompt))])
    }

    /// Whether Claude Code is working on a turn (heartbeats are sent then).
    pub fn busy(&self) -> bool {
        self.busy
    }

    pub fn on_follow_up(&mut self, prompt: String) -> Vec<Action> {
        if self.close_requested || self.stdin_closed {
            // The host stops piping after the close sentinel; a late one is
            // not lost: its messages stay after the host's cursor.
            return Vec::new();
        }
        if self.busy {
            self.queued.push_back(prompt);
            return Vec::new();
        }
        self.busy = true;
        vec![Action::ToClaude(user_line(&prompt))]
    }

    pub fn on_close(&mut self) -> Vec<Action> {
        self.close_requested = true;
        self.close_if_idle()
    }

    fn close_if_idle(&mut self) -> Vec<Action> {
        if self.close_requested && !self.busy && self.queued.is_empty() && !self.stdin_closed {
            self.stdin_closed = true;
            return vec![Action::CloseClaude];
        }
        Vec::new()
    }

    /// One stream-json event from Claude Code's stdout.
    pub fn on_event(&mut self, event: &Value) -> Vec<Action> {
        match event["type"].as_str() {
            Some("system") if event["subtype"] == "init" => {
                if let Some(id) = event["session_id"].as_str() {
                    self.session_id = Some(id.to_string());
                }
                Vec::new()
            }
            // The anchor of a later resume: the main conversation's last
            // assistant message (a sub-agent's have a parent tool use).
            Some("assistant") if event["parent_tool_use_id"].is_null() => {
                if let Some(uuid) = event["uuid"].as_str() {
                    self.last_assistant_id = Some(uuid.to_string());
                }
                Vec::new()
            }
            Some("result") => self.on_result(event),
            _ => Vec::new(),
        }
    }

    fn on_result(&mut self, event: &Value) -> Vec<Action> {
        if !self.busy {
            return Vec::new();
        }
        self.busy = false;
        if let Some(id) = event["session_id"].as_str() {
            self.session_id = Some(id.to_string());
        }
        let text = event["result"].as_str().unwrap_or_default();
        let failed = event["is_error"].as_bool().unwrap_or(false)
            || event["subtype"].as_str().is_some_and(|s| s != "success");
        let mut actions = Vec::new();
        let result = if failed {
            let why = if !text.trim().is_empty() {
                text.trim().to_string()
            } else {
                let errors: Vec<&str> = event["errors"]
                    .as_array()
                    .map(|list| list.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if errors.is_empty() {
                    format!(
                        "Claude Code ended the turn with {}",
                        event["subtype"].as_str().unwrap_or("an error")
                    )
                } else {
                    errors.join("; ")
                }
            };
            self.result(RunStatus::Error, Some(why))
        } else {
            if !text.trim().is_empty() {
                actions.push(Action::Emit(RunnerToHost::Output {
                    text: text.to_string(),
                }));
            }
            self.result(RunStatus::Success, None)
        };
        actions.push(Action::Emit(RunnerToHost::Result(result)));
        if let Some(prompt) = self.queued.pop_front() {
            self.busy = true;
            actions.push(Action::ToClaude(user_line(&prompt)));
        } else {
            actions.extend(self.close_if_idle());
        }
        actions
    }

    fn result(&self, status: RunStatus, error: Option<String>) -> RunResult {
        RunResult {
            status,
            session_id: self.session_id.clone(),
            last_assistant_id: self.last_assistant_id.clone(),
            error,
            error_kind: None,
        }
    }

    /// Claude Code exited (`code` `None`: killed by a signal). A turn it
    /// left without a result fails with what it said on stderr, e.g. "No
    /// conversation found with session ID: …", which the host reads as a
    /// stale session and retries fresh.
    pub fn on_exit(&mut self, code: Option<i32>, stderr: &str) -> Vec<Action> {
        let mut actions = Vec::new();
        let clean = code == Some(0) && !self.busy;
        if self.busy {
            self.busy = false;
            let how = match code {
                Some(code) => format!("exit code {code}"),
                None => "a signal".to_string(),
            };
            let why = match last_error_line(stderr) {
                Some(line) => format!("Claude Code stopped ({how}): {line}"),
                None => format!("Claude Code stopped ({how}) before it answered"),
            };
            actions.push(Action::Emit(RunnerToHost::Result(
                self.result(RunStatus::Error, Some(why)),
            )));
        }
        actions.push(Action::Exit(if clean { 0 } else { 1 }));
        actions
    }

    /// The host went away without a close: nothing more can be delivered.
    pub fn on_host_gone(&mut self) -> Vec<Action> {
        self.close_requested = true;
        self.queued.clear();
        if self.stdin_closed {
            Vec::new()
        } else {
            self.stdin_closed = true;
            vec![Action::CloseClaude]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{AgentRuntime, PROTOCOL_VERSION};

    fn start(session: Option<&str>, resume_at: Option<&str>) -> StartRun {
        StartRun {
            protocol: PROTOCOL_VERSION,
            group_folder: "g".into(),
            chat_id: "c".into(),
            is_main: false,
            session_id: session.map(Into::into),
            resume_at: resume_at.map(Into::into),
            prompt: "first".into(),
            assistant_name: "Talon".into(),
            timezone: "UTC".into(),
            heartbeat_ms: None,
            runtime: AgentRuntime::ClaudeCode,
            model: None,
        }
    }

    fn result_event(text: &str, is_error: bool) -> Value {
        json!({"type": "result", "subtype": "success", "is_error": is_error,
               "result": text, "session_id": "s-1"})
    }

    fn emitted(actions: &[Action]) -> Vec<&RunnerToHost> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Emit(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_start_prompt_goes_out_as_a_user_message() {
        let (driver, actions) = Driver::start(&start(None, None));
        assert!(driver.busy());
        let [Action::ToClaude(line)] = actions.as_slice() else {
            panic!("{actions:?}");
        };
        let value: Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["type"], "user");
        assert_eq!(value["message"]["role"], "user");
        assert_eq!(value["message"]["content"], "first");
    }

    #[test]
    fn a_result_is_the_reply_and_the_turn_result_with_the_anchor() {
        let (mut d, _) = Driver::start(&start(None, None));
        d.on_event(&json!({"type": "system", "subtype": "init", "session_id": "s-1"}));
        d.on_event(&json!({"type": "assistant", "uuid": "u-1", "parent_tool_use_id": null}));
        // A sub-agent's message is not the main conversation's anchor.
        d.on_event(&json!({"type": "assistant", "uuid": "u-sub", "parent_tool_use_id": "toolu_1"}));
        let actions = d.on_event(&result_event("hello", false));
        let sent = emitted(&actions);
        assert_eq!(
            sent[0],
            &RunnerToHost::Output {
                text: "hello".into()
            }
        );
        let RunnerToHost::Result(result) = sent[1] else {
            panic!("{sent:?}");
        };
        assert_eq!(result.status, RunStatus::Success);
        assert_eq!(result.session_id.as_deref(), Some("s-1"));
        assert_eq!(result.last_assistant_id.as_deref(), Some("u-1"));
        assert!(!d.busy());
    }

    #[test]
    fn a_resumed_run_keeps_its_anchor_until_a_new_message() {
        let (mut d, _) = Driver::start(&start(Some("s-0"), Some("u-0")));
        let actions = d.on_event(&result_event("", false));
        let sent = emitted(&actions);
        assert_eq!(sent.len(), 1, "an empty reply is no output: {sent:?}");
        let RunnerToHost::Result(result) = sent[0] else {
            panic!()
        };
        assert_eq!(result.last_assistant_id.as_deref(), Some("u-0"));
    }

    #[test]
    fn a_follow_up_waits_for_the_running_turn() {
        let (mut d, _) = Driver::start(&start(None, None));
        assert!(d.on_follow_up("second".into()).is_empty());
        let actions = d.on_event(&result_event("one", false));
        let Some(Action::ToClaude(line)) = actions.last() else {
            panic!("{actions:?}");
        };
        assert!(line.contains("second"));
        assert!(d.busy());
        // Idle: the next one goes at once.
        d.on_event(&result_event("two", false));
        assert!(matches!(
            d.on_follow_up("third".into()).as_slice(),
            [Action::ToClaude(_)]
        ));
    }

    #[test]
    fn close_waits_for_the_turn_and_its_queue_then_ends_stdin() {
        let (mut d, _) = Driver::start(&start(None, None));
        d.on_follow_up("queued".into());
        assert!(d.on_close().is_empty());
        let actions = d.on_event(&result_event("one", false));
        assert!(matches!(actions.last(), Some(Action::ToClaude(_))));
        let actions = d.on_event(&result_event("two", false));
        assert_eq!(actions.last(), Some(&Action::CloseClaude));
        // Nothing is piped in after the close.
        assert!(d.on_follow_up("late".into()).is_empty());
        assert_eq!(d.on_exit(Some(0), ""), vec![Action::Exit(0)]);
    }

    #[test]
    fn an_error_result_fails_the_turn_with_its_words() {
        let (mut d, _) = Driver::start(&start(None, None));
        let actions = d.on_event(&result_event("API Error: 401 refused", true));
        let sent = emitted(&actions);
        assert_eq!(sent.len(), 1);
        let RunnerToHost::Result(result) = sent[0] else {
            panic!()
        };
        assert_eq!(result.status, RunStatus::Error);
        assert_eq!(result.error.as_deref(), Some("API Error: 401 refused"));
    }

    #[test]
    fn an_exit_mid_turn_fails_it_with_the_last_stderr_line() {
        let (mut d, _) = Driver::start(&start(Some("gone"), None));
        let actions = d.on_exit(
            Some(1),
            "some noise\nNo conversation found with session ID: gone\n\n",
        );
        let sent = emitted(&actions);
        let RunnerToHost::Result(result) = sent[0] else {
            panic!()
        };
        assert_eq!(result.status, RunStatus::Error);
        assert!(result
            .error
            .as_deref()
            .unwrap()
            .ends_with("No conversation found with session ID: gone"));
        assert_eq!(actions.last(), Some(&Action::Exit(1)));
    }

    #[test]
    fn stderr_lines_are_cut_on_a_char_boundary() {
        let long = "é".repeat(400);
        let line = last_error_line(&long).unwrap();
        assert!(line.len() <= 500);
        assert_eq!(last_error_line("\n  \n"), None);
    }
}
