//! Host lines the runner cannot take: longer than [`MAX_LINE_BYTES`], or
//! not readable as a message.
//!
//! Such a line is answered when the host waits on it, or the host would
//! wait in silence until its idle timeout: a start or a follow-up gets an
//! error result naming the reason (a follow-up that came during a turn in
//! its place after that turn, as the host counts results in order), and the
//! answer a turn waits for becomes an error answer, so the turn ends or its
//! tool call fails instead of hanging. What a line was is told by the phase
//! and by its first bytes ([`Head`]); a line too long to read is surely a
//! real message, while an unreadable one that names nothing awaited is only
//! logged: answering noise would settle a batch the host still runs.

use super::{Emit, Phase, Queued, Runner, Step, Waiting};
use crate::wire::{
    ErrorKind, HostResult, HostToRunner, ModelFailure, ModelResult, RunResult, RunStatus,
    RunnerToHost, MAX_LINE_BYTES, PROTOCOL_VERSION,
};

/// What the first bytes of a host line say it was: its `type` tag and, right
/// after it, its `request_id` (the host writes both first, in this order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Head {
    pub tag: Option<String>,
    pub request_id: Option<u64>,
}

/// A host line the runner could not take.
#[derive(Debug, Clone, PartialEq)]
pub enum Unreadable {
    /// Longer than [`MAX_LINE_BYTES`]: certainly a real message, dropped
    /// whole; `head` is read from its first bytes.
    TooLong { bytes: usize, head: Head },
    /// Not a message this runner can read (not JSON, or not a known shape).
    Garbled { error: String, head: Head },
}

/// What an unreadable line was taken to be.
enum Lost {
    /// The start: the host waits for its result.
    Start,
    /// A follow-up: the host waits for its result.
    FollowUp,
    /// The answer to the request the turn waits for.
    Response(Waiting),
    /// Nothing the host waits on (noise, a stale answer): only logged.
    Nothing,
}

impl Runner {
    /// Answers a line that could not be read, if the host waits on it (see
    /// the module doc); it is logged in any case.
    pub fn on_unreadable(&mut self, line: Unreadable, out: &mut dyn Emit) -> Step {
        let step = self.unreadable(line, out);
        self.with_notes(step)
    }

    fn unreadable(&mut self, line: Unreadable, out: &mut dyn Emit) -> Step {
        let (head, note) = match &line {
            Unreadable::TooLong { bytes, head } => (
                head,
                format!("discarded a {bytes}-byte line: longer than {MAX_LINE_BYTES} bytes"),
            ),
            Unreadable::Garbled { error, head } => {
                (head, format!("skipped a line that does not parse: {error}"))
            }
        };
        let lost = self.lost(head, matches!(line, Unreadable::TooLong { .. }));
        self.notes.push(note);
        let mut step = Step::default();
        match lost {
            Lost::Nothing => {}
            Lost::Start => {
                // No session yet: the result names none, so the host keeps
                // what it has, and a later start still works.
                step.send.push(RunnerToHost::Result(RunResult {
                    status: RunStatus::Error,
                    session_id: None,
                    last_assistant_id: None,
                    error: Some(unreadable_reason(&line, "start message")),
                    error_kind: Some(ErrorKind::Permanent),
                }));
            }
            Lost::FollowUp => {
                let error = unreadable_reason(&line, "follow-up message");
                if matches!(self.phase, Phase::InTurn { .. }) {
                    self.queued.push_back(Queued::Refused(error));
                } else {
                    step.send
                        .push(self.error_result(error, ErrorKind::Permanent));
                }
            }
            Lost::Response(waiting) => {
                let answer = match waiting {
                    Waiting::Model { request_id } | Waiting::Summary { request_id, .. } => {
                        HostToRunner::ModelResponse {
                            request_id,
                            result: ModelResult::Error(ModelFailure {
                                kind: ErrorKind::Permanent,
                                message: unreadable_reason(&line, "model response"),
                            }),
                        }
                    }
                    Waiting::Host { request_id, .. } => HostToRunner::HostResponse {
                        request_id,
                        result: HostResult::Error {
                            message: unreadable_reason(&line, "answer to this tool call"),
                        },
                    },
                };
                return self.handle(answer, out);
            }
        }
        step
    }

    /// What an unreadable line was, as far as the runner can tell: the host
    /// writes the `type` tag first, and a line too long to read is a real
    /// message, so by the phase it is what the host sends now.
    fn lost(&self, head: &Head, too_long: bool) -> Lost {
        let tag = head.tag.as_deref();
        match &self.phase {
            // Before the start the host sends nothing else.
            Phase::AwaitingStart => match tag {
                Some("start") => Lost::Start,
                None if too_long => Lost::Start,
                _ => Lost::Nothing,
            },
            Phase::Idle => match tag {
                Some("follow_up") => Lost::FollowUp,
                None if too_long => Lost::FollowUp,
                _ => Lost::Nothing,
            },
            Phase::InTurn { waiting, .. } => {
                let (kind, pending) = match waiting {
                    Waiting::Model { request_id } | Waiting::Summary { request_id, .. } => {
                        ("model_response", *request_id)
                    }
                    Waiting::Host { request_id, .. } => ("host_response", *request_id),
                };
                match tag {
                    Some("follow_up") => Lost::FollowUp,
                    Some(tag) if tag == kind && head.request_id.is_none_or(|id| id == pending) => {
                        Lost::Response(waiting.clone())
                    }
                    None if too_long => Lost::FollowUp,
                    _ => Lost::Nothing,
                }
            }
        }
    }
}

/// Why an unreadable host line failed what it was, in words for the user.
/// It never quotes the parser: a field name such as `session_id` next to
/// "missing" would read to the host as a stale session.
fn unreadable_reason(line: &Unreadable, what: &str) -> String {
    match line {
        Unreadable::TooLong { bytes, .. } => format!(
            "the host's {what} was {bytes} bytes, more than the {MAX_LINE_BYTES} bytes \
             one protocol line may carry; the agent dropped it unread"
        ),
        Unreadable::Garbled { .. } => format!(
            "the agent could not read the host's {what}: it does not match this agent \
             runner's protocol (version {PROTOCOL_VERSION}); rebuild the agent image with \
             `talon image build`"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::test_support::*;
    use crate::runner::Limits;

    fn unreadable(r: &mut Runner, tag: &str, request_id: Option<u64>) -> Step {
        let mut early = Vec::new();
        let head = Head {
            tag: Some(tag.into()),
            request_id,
        };
        let error = "missing field `result`".to_string();
        let mut step = r.on_unreadable(Unreadable::Garbled { error, head }, &mut early);
        early.append(&mut step.send);
        step.send = early;
        step
    }

    #[test]
    fn an_unreadable_host_answer_fails_its_tool_call_and_the_loop_goes_on() {
        let dir = TempDir::new();
        let mut r = tool_runner(&dir, Limits::default());
        r.on_message(HostToRunner::Start(start("x")));
        r.on_message(response(
            1,
            reply_with(
                "msg_1",
                vec![
                    tool_use("t1", "list_tasks", serde_json::json!({})),
                    tool_use("t2", "list", serde_json::json!({})),
                ],
            ),
        ));
        // A stale answer, or another kind, is only logged.
        for (tag, id) in [("host_response", Some(9)), ("model_response", Some(2))] {
            let step = unreadable(&mut r, tag, id);
            assert!(step.send.is_empty(), "{step:?}");
            assert!(step.note.unwrap_or_default().contains("does not parse"));
        }
        let step = unreadable(&mut r, "host_response", Some(2));
        assert!(step.note.unwrap_or_default().contains("missing field"));
        let (id, request) = request_of(&step.send[0]);
        assert_eq!(id, 3);
        let results = tool_results(request);
        assert_eq!(results[0].0, "t1");
        assert!(
            results[0].2 && results[0].1.contains("could not read"),
            "{results:?}"
        );
        assert_eq!(results[1].0, "t2");
        assert!(!results[1].2);
    }

    #[test]
    fn an_unreadable_summary_answer_only_skips_the_compaction() {
        let dir = TempDir::new();
        let mut r = tool_runner(&dir, Limits::default());
        r.sessions.compact_above_tokens = 1;
        turn(&mut r, Some(start("one")), "", "first");
        let step = r.on_message(HostToRunner::FollowUp {
            prompt: "two".into(),
        });
        let (id, request) = request_of(&step.send[0]);
        assert!(request.tools.is_empty(), "a summary request");
        let step = unreadable(&mut r, "model_response", Some(id));
        assert!(step.note.unwrap_or_default().contains("compaction skipped"));
        let (_, request) = request_of(&step.send[0]);
        assert_eq!(texts_of(&request.messages), ["one", "first", "two"]);
    }
}
