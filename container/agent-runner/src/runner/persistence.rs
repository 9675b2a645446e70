//! How a run keeps its conversation (see [`crate::session`]): the session
//! opened at the host's anchor, every committed message written, and a
//! transcript over its budget compacted into the model's summary. Storage
//! trouble never fails a turn: the run goes on without persistence.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::path::PathBuf;

use super::{Phase, Runner, Step, Turn, Waiting, MAX_TOKENS};
use crate::conversation::{
    render_for_summary, reply_text, user_text, SUMMARY_HEADING, SUMMARY_SYSTEM,
};
use crate::session::{SessionError, Transcript};
use crate::wire::{ChatMessage, ModelRequest, ModelResult, Role, RunnerToHost};

/// Where a session's transcript lives, where compaction archives the full
/// one, and when to compact: a context of its own so tests use a temp dir.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    pub dir: PathBuf,
    pub archive_dir: PathBuf,
    /// Compact when the conversation's approximate size exceeds this.
    pub compact_above_tokens: usize,
    /// Messages kept verbatim after the summary.
    pub keep_last: usize,
}

impl SessionConfig {
    /// The real container's mounts.
    pub fn container() -> Self {
        SessionConfig {
            dir: PathBuf::from("/workspace/session"),
            archive_dir: PathBuf::from("/workspace/group/conversations"),
            compact_above_tokens: 100_000,
            keep_last: 6,
        }
    }
}

impl Runner {
    /// Opens the session's transcript and loads the conversation at the
    /// host's anchor. Only an anchor the transcript does not hold (or a
    /// session id that cannot name a transcript) is the host's problem;
    /// storage trouble is logged and the run goes on without persistence.
    pub(super) fn open_session(&mut self) {
        let session_id = self.session_id();
        let resume_at = self.start.as_ref().and_then(|s| s.resume_at.clone());
        let resuming = self.start.as_ref().is_some_and(|s| s.session_id.is_some());
        let mut transcript = match Transcript::open(&self.sessions.dir, &session_id) {
            Ok(transcript) => transcript,
            Err(error) if resuming && error.kind() == io::ErrorKind::InvalidInput => {
                self.stale_session = Some(format!(
                    "session {session_id:?} missing or unknown: {error}"
                ));
                return;
            }
            Err(error) => {
                self.notes.push(format!(
                    "session {session_id}: cannot open the transcript ({error}); \
                     running without persistence"
                ));
                return;
            }
        };
        if !resuming {
            // A new session: nothing to resume, whatever a file might hold.
            self.transcript = Some(transcript);
            return;
        }
        match transcript.resume(resume_at.as_deref()) {
            Ok(messages) => {
                self.conversation.messages = messages;
                self.last_assistant_id = transcript.tip().map(str::to_string);
                self.transcript = Some(transcript);
            }
            Err(error @ SessionError::UnknownAnchor(_)) => {
                self.stale_session = Some(error.to_string());
            }
            Err(SessionError::Io(error)) => {
                self.notes.push(format!(
                    "session {session_id}: cannot read the transcript ({error}); \
                     running without persistence"
                ));
            }
        }
    }

    /// Writes `message` to the transcript and returns its uuid. A failed
    /// write turns persistence off for the rest of the run (logged), and the
    /// uuid is then made up here: the host still gets a well-formed anchor,
    /// which a later resume reports as unknown, so the host starts fresh.
    pub(super) fn record(&mut self, message: ChatMessage) -> String {
        if let Some(transcript) = self.transcript.as_mut() {
            match transcript.append(message) {
                Ok(uuid) => return uuid,
                Err(error) => {
                    self.notes.push(format!(
                        "session {}: cannot write the transcript ({error}); \
                         running without persistence",
                        self.session_id()
                    ));
                    self.transcript = None;
                }
            }
        }
        fresh_session_id()
    }

    /// Asks the model to summarise the conversation, as text and without
    /// tools; the turn for `prompt` starts when the answer is in.
    pub(super) fn ask_for_summary(&mut self, prompt: String, step: &mut Step) {
        let request_id = self.take_request_id();
        let request = ModelRequest {
            system: SUMMARY_SYSTEM.to_string(),
            messages: vec![ChatMessage {
                role: Role::User,
                content: vec![user_text(&format!(
                    "<conversation>\n{}</conversation>\n\nSummarise the conversation above.",
                    render_for_summary(&self.conversation.messages)
                ))],
            }],
            max_tokens: MAX_TOKENS,
            tools: Vec::new(),
        };
        let placeholder = Turn {
            messages: Vec::new(),
            committed: 0,
            pending: VecDeque::new(),
            results: Vec::new(),
            tool_calls: 0,
            model_calls: 0,
            tokens: 0,
            spoke: false,
        };
        self.phase = Phase::InTurn {
            turn: Box::new(placeholder),
            waiting: Waiting::Summary { request_id, prompt },
        };
        step.send.push(RunnerToHost::ModelRequest {
            request_id,
            request,
        });
    }

    /// Compacts the transcript with the model's summary, then starts the
    /// turn. A failed summary or compaction only costs the compaction: the
    /// user's turn runs on the full conversation and it is tried next turn.
    pub(super) fn on_summary(&mut self, prompt: String, result: ModelResult) -> Step {
        let mut step = Step::default();
        let _ = self.take_turn();
        let summary = match result {
            ModelResult::Ok(reply) => reply_text(&reply.content),
            ModelResult::Error(failure) => {
                self.notes.push(format!(
                    "compaction skipped: summary failed: {}",
                    failure.message
                ));
                String::new()
            }
        };
        if !summary.trim().is_empty() {
            self.compact(&format!("{SUMMARY_HEADING}{summary}"));
        }
        self.start_turn(prompt, &mut step);
        step
    }

    fn compact(&mut self, summary: &str) {
        let Some(transcript) = self.transcript.as_mut() else {
            return;
        };
        let compacted = transcript
            .compact(summary, self.sessions.keep_last, &self.sessions.archive_dir)
            .and_then(|tip| {
                let messages = transcript
                    .resume(Some(&tip))
                    .map_err(|error| io::Error::other(error.to_string()))?;
                Ok((tip, messages))
            });
        match compacted {
            Ok((tip, messages)) => {
                self.conversation.messages = messages;
                // The old anchor may have been compacted away.
                self.last_assistant_id = Some(tip);
            }
            Err(error) => self.notes.push(format!(
                "compaction failed, keeping the full transcript: {error}"
            )),
        }
    }
}

/// A new session id: 16 random bytes as hex, or time and pid when the
/// kernel's random source is not readable.
pub fn fresh_session_id() -> String {
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    match random {
        Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{nanos:x}{:08x}", std::process::id())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::test_support::*;
    use crate::runner::Limits;
    use crate::wire::{ErrorKind, HostToRunner, ModelFailure, RunStatus};

    #[test]
    fn fresh_session_ids_are_hex_and_differ() {
        let a = fresh_session_id();
        let b = fresh_session_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_second_start_with_the_recorded_anchor_resumes_the_conversation() {
        let dir = TempDir::new();
        let mut first = tool_runner(&dir, Limits::default());
        let anchor = turn(&mut first, Some(start("one")), "one", "first");
        let session_id = first.session_id();
        assert_eq!(session_id, "fresh");
        drop(first);

        let mut second = tool_runner(&dir, Limits::default());
        let step = second.on_message(HostToRunner::Start(resume_start(
            "two",
            &session_id,
            Some(&anchor),
        )));
        let (_, request) = request_of(&step.send[0]);
        assert_eq!(texts_of(&request.messages), ["one", "first", "two"]);
        let roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, vec![Role::User, Role::Assistant, Role::User]);
        let step = second.on_message(response(1, ok("msg_y", "second")));
        let result = result_of(&step.send[1]);
        assert_eq!(result.session_id.as_deref(), Some("fresh"));
        let next_anchor = result.last_assistant_id.clone().unwrap();
        assert_ne!(next_anchor, anchor);

        // The new anchor resumes all four messages, from disk.
        let mut third = tool_runner(&dir, Limits::default());
        let step = third.on_message(HostToRunner::Start(resume_start(
            "three",
            &session_id,
            Some(&next_anchor),
        )));
        let (_, request) = request_of(&step.send[0]);
        assert_eq!(
            texts_of(&request.messages),
            ["one", "first", "two", "second", "three"]
        );
    }

    #[test]
    fn a_stale_branch_after_the_anchor_is_left_out_of_the_resume() {
        let dir = TempDir::new();
        let mut first = tool_runner(&dir, Limits::default());
        let anchor = turn(&mut first, Some(start("one")), "one", "first");
        // A turn whose result the host never recorded: its messages are in
        // the file, after the anchor, as the file's tip.
        let stale = turn(&mut first, None, "stale question", "stale answer");
        assert_ne!(stale, anchor);
        drop(first);

        let mut second = tool_runner(&dir, Limits::default());
        let step = second.on_message(HostToRunner::Start(resume_start(
            "two",
            "fresh",
            Some(&anchor),
        )));
        let (_, request) = request_of(&step.send[0]);
        assert_eq!(texts_of(&request.messages), ["one", "first", "two"]);
        // The new turn continues from the anchor, not from the stale tip.
        let step = second.on_message(response(1, ok("msg_y", "second")));
        let anchor_two = result_of(&step.send[1]).last_assistant_id.clone().unwrap();
        let mut third = tool_runner(&dir, Limits::default());
        let step = third.on_message(HostToRunner::Start(resume_start(
            "three",
            "fresh",
            Some(&anchor_two),
        )));
        let (_, request) = request_of(&step.send[0]);
        assert_eq!(
            texts_of(&request.messages),
            ["one", "first", "two", "second", "three"]
        );
    }

    #[test]
    fn an_unknown_anchor_fails_every_turn_with_a_stale_session_error() {
        let dir = TempDir::new();
        let mut first = tool_runner(&dir, Limits::default());
        turn(&mut first, Some(start("one")), "one", "first");
        drop(first);

        for (session_id, anchor) in [("fresh", "0123456789abcdef"), ("never-written", "abc")] {
            let mut r = tool_runner(&dir, Limits::default());
            let step = r.on_message(HostToRunner::Start(resume_start(
                "two",
                session_id,
                Some(anchor),
            )));
            assert_eq!(step.send.len(), 1, "no model request: {step:?}");
            let result = result_of(&step.send[0]);
            assert_eq!(result.status, RunStatus::Error);
            assert_eq!(result.error_kind, Some(ErrorKind::Permanent));
            assert_eq!(result.session_id.as_deref(), Some(session_id));
            let error = result.error.clone().unwrap();
            assert!(error.contains("session") && error.contains("missing or unknown"));
            assert!(error.contains(anchor), "{error}");
            assert_eq!(step.exit, None);
            assert_eq!(r.phase, Phase::Idle);
            // It keeps serving, with the same answer, until the host closes.
            let step = r.on_message(HostToRunner::FollowUp {
                prompt: "three".into(),
            });
            assert_eq!(
                result_of(&step.send[0]).error.as_deref(),
                Some(error.as_str())
            );
            assert_eq!(r.on_message(HostToRunner::Close).exit, Some(0));
        }
        // Nothing was written for the failed resumes.
        assert!(!dir.0.join("session/never-written.jsonl").exists());
    }

    #[test]
    fn an_unwritable_session_dir_runs_the_turn_without_persistence() {
        let dir = TempDir::new();
        let mut r = tool_runner(&dir, Limits::default());
        // A file where the session dir should be: nothing can be written under it.
        std::fs::write(dir.0.join("session"), b"not a dir").unwrap();
        let step = r.on_message(HostToRunner::Start(start("one")));
        assert!(step
            .note
            .unwrap_or_default()
            .contains("without persistence"));
        request_of(&step.send[0]);
        let step = r.on_message(response(1, ok("msg_1", "first")));
        let result = result_of(&step.send[1]);
        assert_eq!(result.status, RunStatus::Success);
        assert!(is_transcript_uuid(result.last_assistant_id.as_deref()));
        assert!(r.transcript.is_none());
        // The conversation still goes on in memory.
        let step = r.on_message(HostToRunner::FollowUp {
            prompt: "two".into(),
        });
        let (_, request) = request_of(&step.send[0]);
        assert_eq!(texts_of(&request.messages), ["one", "first", "two"]);
    }

    #[test]
    fn a_failing_transcript_write_turns_persistence_off_not_the_turn() {
        let dir = TempDir::new();
        let mut r = tool_runner(&dir, Limits::default());
        r.on_message(HostToRunner::Start(start("one")));
        assert!(r.transcript.is_some());
        // The session dir becomes unwritable mid-turn (as a read-only mount is).
        std::fs::write(dir.0.join("session"), b"not a dir").unwrap();
        let step = r.on_message(response(1, ok("msg_1", "first")));
        assert!(step
            .note
            .unwrap_or_default()
            .contains("cannot write the transcript"));
        let result = result_of(&step.send[1]);
        assert_eq!(result.status, RunStatus::Success);
        assert!(is_transcript_uuid(result.last_assistant_id.as_deref()));
        assert!(r.transcript.is_none());
    }

    #[test]
    fn a_turn_stopped_at_a_limit_resumes_with_its_tool_results() {
        let dir = TempDir::new();
        let limits = Limits {
            model_calls: 1,
            ..Limits::default()
        };
        let mut r = tool_runner(&dir, limits);
        r.on_message(HostToRunner::Start(start("loop")));
        let step = r.on_message(response(
            1,
            reply_with("msg_1", vec![tool_use("t1", "list", serde_json::json!({}))]),
        ));
        let anchor = result_of(&step.send[1]).last_assistant_id.clone().unwrap();
        let mut next = tool_runner(&dir, Limits::default());
        let step = next.on_message(HostToRunner::Start(resume_start(
            "continue",
            "fresh",
            Some(&anchor),
        )));
        let (_, request) = request_of(&step.send[0]);
        // The tool_use is followed by its (not run) result, joined with the prompt.
        let results = tool_results(request);
        assert_eq!(results.len(), 1);
        assert!(results[0].2 && results[0].1.contains("not run"));
        assert_eq!(
            request.messages.last().unwrap().content.last(),
            Some(&text("continue"))
        );
    }

    #[test]
    fn over_budget_the_transcript_is_summarised_archived_and_the_turn_goes_on() {
        let dir = TempDir::new();
        let mut r = tool_runner(&dir, Limits::default());
        r.sessions.compact_above_tokens = 1;
        r.sessions.keep_last = 1;
        let anchor = turn(
            &mut r,
            Some(start("one, a long question")),
            "",
            "first answer",
        );

        // Over the tiny budget: the next turn first asks for a summary.
        let step = r.on_message(HostToRunner::FollowUp {
            prompt: "two".into(),
        });
        assert_eq!(step.send.len(), 1);
        let (id, request) = request_of(&step.send[0]);
        assert!(request.tools.is_empty());
        assert!(request.system.starts_with("Summarise this conversation"));
        let asked = texts_of(&request.messages).join("");
        assert!(asked.contains("[user] one, a long question"), "{asked}");
        assert!(asked.contains("[assistant] first answer"), "{asked}");
        // A follow-up meanwhile waits for the turn, as in any turn.
        r.on_message(HostToRunner::FollowUp {
            prompt: "three".into(),
        });

        let step = r.on_message(response(id, ok("msg_s", "they asked one")));
        let archived: Vec<_> = std::fs::read_dir(dir.0.join("group/conversations"))
            .unwrap()
            .collect();
        assert_eq!(archived.len(), 1);
        let (id, request) = request_of(&step.send[0]);
        assert_eq!(
            texts_of(&request.messages),
            [
                "Summary of the earlier conversation:\nthey asked one",
                "first answer",
                "two"
            ]
        );
        assert_eq!(request.system, r.system);
        assert!(!request.tools.is_empty());
        // The kept reply keeps its uuid, so the old anchor is still good.
        assert_eq!(r.last_assistant_id.as_deref(), Some(anchor.as_str()));

        let step = r.on_message(response(id, ok("msg_2", "second")));
        let anchor_two = result_of(&step.send[1]).last_assistant_id.clone().unwrap();
        // The queued follow-up compacts again (still over budget) and goes on.
        let (id, request) = request_of(&step.send[2]);
        assert!(request.tools.is_empty());
        let step = r.on_message(response(
            id,
            ModelResult::Error(ModelFailure {
                kind: ErrorKind::Temporary,
                message: "overloaded".into(),
            }),
        ));
        // A failed summary only skips the compaction.
        assert!(step.note.unwrap_or_default().contains("compaction skipped"));
        let (_, request) = request_of(&step.send[0]);
        assert_eq!(
            texts_of(&request.messages),
            [
                "Summary of the earlier conversation:\nthey asked one",
                "first answer",
                "two",
                "second",
                "three"
            ]
        );

        // A new container resumes the compacted transcript at the host's anchor.
        let mut next = tool_runner(&dir, Limits::default());
        let step = next.on_message(HostToRunner::Start(resume_start(
            "four",
            "fresh",
            Some(&anchor_two),
        )));
        let (_, request) = request_of(&step.send[0]);
        assert_eq!(
            texts_of(&request.messages),
            [
                "Summary of the earlier conversation:\nthey asked one",
                "first answer",
                "two",
                "second",
                "four"
            ]
        );
    }
}
