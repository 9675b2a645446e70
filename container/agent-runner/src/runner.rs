//! The run's state machine: one host message (or the end of stdin) in, the
//! lines to write and whether to exit out.
//!
//! Each turn is a tool loop in the Anthropic tool-use shape: the request
//! carries the tool specs; a reply with `tool_use` blocks has its tools run
//! (container tools here, see [`crate::tools`]; host tools as a `HostRequest`
//! answered by a `HostResponse`) and their `tool_result`s go back to the
//! model; a reply without tool calls ends the turn, and a paused one
//! (`pause_turn`) is sent back to carry on. Text is output to the user as it
//! comes; what a reply's stop reason means (refused, filtered, cut, empty:
//! a short notice each, never silence) is decided in [`reply`]. A call whose
//! arguments the host could not read gets an error result and is not run.
//! Per-turn limits on tool calls, model calls and tokens end a runaway loop.
//!
//! The only IO [`Runner`] does is running container tools against a
//! configurable [`ToolContext`], so every protocol rule is unit-tested
//! without pipes. Each container tool call runs on a thread of its own while
//! the runner sends a progress line every [`Limits::progress_every`], so a
//! long command never looks like a silent runner; those lines, and what was
//! decided before the call, go out through an [`Emit`] at once.
//!
//! A host line the runner cannot take (too long, or not readable) is
//! answered when the host waits on it: see [`Runner::on_unreadable`].
//!
//! Sessions (see [`crate::session`]): a start with a session id resumes that
//! transcript at the anchor the host recorded (`resume_at`), never at the
//! file's tip; an anchor the transcript does not hold fails the turn with a
//! "session … missing or unknown" error, which makes the host start fresh.
//! A turn's messages are appended to the transcript when the turn succeeds,
//! in order, so the transcript holds exactly the committed conversation, and
//! the `last_assistant_id` reported is the uuid of the last entry written.
//! Messages are stored as they came, consecutive user messages included;
//! they are joined only when a model request is built, the same way for a
//! live and a resumed conversation. A transcript over its token budget is
//! summarised by the model and compacted at the start of a turn. If the
//! session dir cannot be written the run goes on without persistence.

use std::collections::VecDeque;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::conversation::{push_assistant, push_user, reply_text, request_messages, Conversation};
use crate::prompt::{build_system_prompt, Memory};
use crate::session::Transcript;
use crate::tools::{self, Dispatch, ToolContext, ToolOutput};
use crate::wire::{
    ChatMessage, ContentBlock, ErrorKind, HostAction, HostResult, HostToRunner, ModelFailure,
    ModelRequest, ModelResult, RunResult, RunStatus, RunnerToHost, StartRun, PROTOCOL_VERSION,
};
use crate::{EXIT_BROKEN, EXIT_INCOMPATIBLE};
use reply::Ending;

mod persistence;
mod reply;
mod unreadable;

pub use persistence::{fresh_session_id, SessionConfig};
pub use unreadable::{Head, Unreadable};

/// Tokens the runner asks for per completion.
const MAX_TOKENS: u32 = 4096;

/// Per-turn bounds that stop a runaway tool loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Tool calls in one turn; the next one is not run.
    pub tool_calls: u32,
    /// Completions in one turn.
    pub model_calls: u32,
    /// Input plus output tokens over all completions of one turn.
    pub tokens: u64,
    /// While a container tool runs, a progress line goes out this often, so
    /// the host does not take a long command for a silent runner.
    pub progress_every: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tool_calls: 30,
            model_calls: 40,
            tokens: 2_000_000,
            progress_every: Duration::from_secs(30),
        }
    }
}

/// A tool call the model asked for and the runner has not run yet.
#[derive(Debug, Clone, PartialEq)]
struct ToolCall {
    id: String,
    name: String,
    input: serde_json::Value,
}

/// One turn in progress: the working copy of the conversation and the tool
/// loop's bookkeeping.
#[derive(Debug, Clone, PartialEq)]
struct Turn {
    /// The conversation so far plus everything this turn added.
    messages: Vec<ChatMessage>,
    /// Tool calls of the latest reply still to run, in order.
    pending: VecDeque<ToolCall>,
    /// Results of the latest reply's tool calls so far.
    results: Vec<ContentBlock>,
    /// How many of `messages` were already in the conversation (and the
    /// transcript) when the turn began; the rest are written on success.
    committed: usize,
    tool_calls: u32,
    model_calls: u32,
    tokens: u64,
    /// The user heard from this turn already (text, or a `send_message`):
    /// a final empty reply then needs no notice.
    spoke: bool,
}

/// What a turn is waiting for.
#[derive(Debug, Clone, PartialEq)]
enum Waiting {
    Model {
        request_id: u64,
    },
    /// A host tool's answer; it becomes the result of `tool_use_id`.
    Host {
        request_id: u64,
        tool_use_id: String,
    },
    /// The summary for a compaction; `prompt` starts the turn after it.
    Summary {
        request_id: u64,
        prompt: String,
    },
}

/// Where the run stands.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// No start line yet.
    AwaitingStart,
    /// Between turns: waiting for a follow-up or the close.
    Idle,
    /// A turn is running.
    InTurn { turn: Box<Turn>, waiting: Waiting },
}

/// A follow-up the host handed over while a turn was running.
#[derive(Debug, Clone, PartialEq)]
enum Queued {
    /// Runs as the next turn.
    Prompt(String),
    /// Could not be read: its turn is this error, answered in its place in
    /// the queue, as the host counts results in order.
    Refused(String),
}

/// Where a step's lines go before the step is over: a container tool can
/// run for minutes, and what was decided before it (the model's text) and
/// its progress lines must reach the host while it runs.
pub trait Emit {
    fn emit(&mut self, message: RunnerToHost);
}

/// Collecting: the tests' `Runner::on_message` hands the lines back in its step.
#[cfg(test)]
impl Emit for Vec<RunnerToHost> {
    fn emit(&mut self, message: RunnerToHost) {
        self.push(message);
    }
}

/// What the IO loop must do after one input.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// Protocol lines to write, in order.
    pub send: Vec<RunnerToHost>,
    /// A diagnostic for stderr.
    pub note: Option<String>,
    /// Exit with this code once `send` is written.
    pub exit: Option<u8>,
}

impl Step {
    fn note(text: impl Into<String>) -> Self {
        Step {
            note: Some(text.into()),
            ..Step::default()
        }
    }
    fn exit(code: u8) -> Self {
        Step {
            exit: Some(code),
            ..Step::default()
        }
    }
}

/// The run's state machine: one host message (or the end of stdin) in, the
/// lines to write and whether to exit out. The only IO it does is running
/// container tools, against its [`ToolContext`] (a temp dir in tests), and
/// the lines a step emits while one runs.
#[derive(Debug)]
pub struct Runner {
    phase: Phase,
    /// Used when the start line brings no session id.
    fresh_session_id: String,
    memories: Vec<Memory>,
    tools: ToolContext,
    limits: Limits,
    sessions: SessionConfig,
    /// The session's transcript; `None` runs without persistence (the session
    /// dir is not writable), never failing a turn for it.
    transcript: Option<Transcript>,
    /// Set when the host's resume anchor is not in the transcript: every turn
    /// fails with this error until the host closes and starts fresh.
    stale_session: Option<String>,
    /// Diagnostics gathered while handling one input, for stderr.
    notes: Vec<String>,
    start: Option<StartRun>,
    system: String,
    conversation: Conversation,
    /// Follow-ups that arrived while a turn was running.
    queued: VecDeque<Queued>,
    close_requested: bool,
    next_request_id: u64,
    /// The transcript uuid of the conversation's last committed entry: the
    /// anchor the host resumes at.
    last_assistant_id: Option<String>,
}

impl Runner {
    pub fn new(
        fresh_session_id: String,
        memories: Vec<Memory>,
        tools: ToolContext,
        limits: Limits,
        sessions: SessionConfig,
    ) -> Self {
        Runner {
            phase: Phase::AwaitingStart,
            fresh_session_id,
            memories,
            tools,
            limits,
            sessions,
            transcript: None,
            stale_session: None,
            notes: Vec::new(),
            start: None,
            system: String::new(),
            conversation: Conversation::default(),
            queued: VecDeque::new(),
            close_requested: false,
            next_request_id: 1,
            last_assistant_id: None,
        }
    }

    fn session_id(&self) -> String {
        self.start
            .as_ref()
            .and_then(|start| start.session_id.clone())
            .unwrap_or_else(|| self.fresh_session_id.clone())
    }

    fn take_request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    /// Handles one message with every line in the returned step, in order
    /// (the tests' view; the IO loop writes lines as they come instead).
    #[cfg(test)]
    pub fn on_message(&mut self, message: HostToRunner) -> Step {
        let mut early = Vec::new();
        let mut step = self.on_message_with(message, &mut early);
        early.append(&mut step.send);
        step.send = early;
        step
    }

    /// Handles one message. Lines decided before a container tool runs, and
    /// its progress lines, go to `out` at once; the rest are in the step.
    pub fn on_message_with(&mut self, message: HostToRunner, out: &mut dyn Emit) -> Step {
        let step = self.handle(message, out);
        self.with_notes(step)
    }

    fn with_notes(&mut self, mut step: Step) -> Step {
        if !self.notes.is_empty() {
            let mut notes = std::mem::take(&mut self.notes);
            notes.extend(step.note.take());
            step.note = Some(notes.join("\nagent-runner: "));
        }
        step
    }

    fn handle(&mut self, message: HostToRunner, out: &mut dyn Emit) -> Step {
        let waiting = match &self.phase {
            Phase::InTurn { waiting, .. } => Some(waiting.clone()),
            _ => None,
        };
        match message {
            HostToRunner::Start(start) => match self.phase {
                Phase::AwaitingStart => self.on_start(start),
                _ => Step::note("ignoring a second start line"),
            },
            HostToRunner::Close => match self.phase {
                Phase::AwaitingStart | Phase::Idle => Step::exit(0),
                Phase::InTurn { .. } => {
                    self.close_requested = true;
                    Step::default()
                }
            },
            HostToRunner::FollowUp { prompt } => match self.phase {
                Phase::AwaitingStart => Step::note("ignoring a follow-up before the start line"),
                Phase::Idle => {
                    let mut step = Step::default();
                    self.begin_turn(prompt, &mut step);
                    step
                }
                Phase::InTurn { .. } => {
                    self.queued.push_back(Queued::Prompt(prompt));
                    Step::default()
                }
            },
            HostToRunner::ModelResponse { request_id, result } => match waiting {
                Some(Waiting::Model {
                    request_id: pending,
                }) if pending == request_id => self.on_model_result(result, out),
                Some(Waiting::Summary {
                    request_id: pending,
                    prompt,
                }) if pending == request_id => self.on_summary(prompt, result),
                _ => Step::note(format!(
                    "ignoring model response {request_id}: {}",
                    self.waiting_for()
                )),
            },
            HostToRunner::HostResponse { request_id, result } => match waiting {
                Some(Waiting::Host {
                    request_id: pending,
                    tool_use_id,
                }) if pending == request_id => self.on_host_result(tool_use_id, result, out),
                _ => Step::note(format!(
                    "ignoring host response {request_id}: {}",
                    self.waiting_for()
                )),
            },
            // Only the Claude Code runtime makes API requests.
            HostToRunner::ApiResponseHead { request_id, .. }
            | HostToRunner::ApiResponseChunk { request_id, .. }
            | HostToRunner::ApiResponseEnd { request_id, .. } => Step::note(format!(
                "ignoring API response {request_id}: this runtime makes no API requests"
            )),
        }
    }

    fn waiting_for(&self) -> String {
        match &self.phase {
            Phase::InTurn {
                waiting: Waiting::Model { request_id },
                ..
            } => format!("waiting for model response {request_id}"),
            Phase::InTurn {
                waiting: Waiting::Host { request_id, .. },
                ..
            } => format!("waiting for host response {request_id}"),
            Phase::InTurn {
                waiting: Waiting::Summary { request_id, .. },
                ..
            } => format!("waiting for summary response {request_id}"),
            _ => "no request is pending".into(),
        }
    }

    /// Stdin closed: the host is done with this run.
    pub fn on_eof(&mut self) -> Step {
        match &self.phase {
            Phase::AwaitingStart | Phase::Idle => Step::exit(0),
            Phase::InTurn { .. } => Step {
                note: Some(format!(
                    "stdin closed while {}; giving up the turn",
                    self.waiting_for()
                )),
                exit: Some(EXIT_BROKEN),
                ..Step::default()
            },
        }
    }

    fn on_start(&mut self, start: StartRun) -> Step {
        if start.protocol != PROTOCOL_VERSION {
            let error = format!(
                "protocol mismatch: the host speaks version {}, this agent runner speaks {}; \
                 rebuild the agent image with `talon image build`",
                start.protocol, PROTOCOL_VERSION
            );
            return Step {
                send: vec![RunnerToHost::Result(RunResult {
                    status: RunStatus::Error,
                    session_id: start.session_id.clone(),
                    last_assistant_id: None,
                    error: Some(error.clone()),
                    error_kind: Some(ErrorKind::Permanent),
                })],
                note: Some(error),
                exit: Some(EXIT_INCOMPATIBLE),
            };
        }
        self.system = build_system_prompt(&start, &self.memories);
        if let Some(ms) = start.heartbeat_ms {
            // The host's hard timer counts silence: beat well inside it.
            self.limits.progress_every = Duration::from_millis(ms);
        }
        let prompt = start.prompt.clone();
        self.start = Some(start);
        self.open_session();
        let mut step = Step::default();
        self.begin_turn(prompt, &mut step);
        step
    }

    /// Starts a turn for `prompt`: fails it at once on a stale session, first
    /// compacts a transcript over its budget, else asks the model.
    fn begin_turn(&mut self, prompt: String, step: &mut Step) {
        if let Some(error) = self.stale_session.clone() {
            step.send.push(RunnerToHost::Result(RunResult {
                status: RunStatus::Error,
                session_id: Some(self.session_id()),
                last_assistant_id: None,
                error: Some(error),
                error_kind: Some(ErrorKind::Permanent),
            }));
            // Started and serving (also when this was the start's own turn).
            self.phase = Phase::Idle;
            self.after_turn(step);
            return;
        }
        let over_budget = self
            .transcript
            .as_ref()
            .is_some_and(|t| t.approx_tokens() > self.sessions.compact_above_tokens);
        if over_budget {
            self.ask_for_summary(prompt, step);
        } else {
            self.start_turn(prompt, step);
        }
    }

    fn start_turn(&mut self, prompt: String, step: &mut Step) {
        let turn = Turn {
            messages: self.conversation.with_prompt(&prompt),
            committed: self.conversation.messages.len(),
            pending: VecDeque::new(),
            results: Vec::new(),
            tool_calls: 0,
            model_calls: 0,
            tokens: 0,
            spoke: false,
        };
        self.ask_model(turn, step);
    }

    fn ask_model(&mut self, mut turn: Turn, step: &mut Step) {
        let request_id = self.take_request_id();
        turn.model_calls += 1;
        let request = ModelRequest {
            system: self.system.clone(),
            messages: request_messages(&turn.messages),
            max_tokens: MAX_TOKENS,
            tools: tools::specs(),
        };
        self.phase = Phase::InTurn {
            turn: Box::new(turn),
            waiting: Waiting::Model { request_id },
        };
        step.send.push(RunnerToHost::ModelRequest {
            request_id,
            request,
        });
    }

    /// Takes the running turn out of the phase (leaving `Idle`).
    fn take_turn(&mut self) -> Option<Turn> {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::InTurn { turn, .. } => Some(*turn),
            other => {
                self.phase = other;
                None
            }
        }
    }

    fn on_model_result(&mut self, result: ModelResult, out: &mut dyn Emit) -> Step {
        let mut step = Step::default();
        let Some(mut turn) = self.take_turn() else {
            return Step::note("a model result arrived outside a turn");
        };
        let reply = match result {
            ModelResult::Ok(reply) => reply,
            ModelResult::Error(failure) => {
                self.fail(failure, &mut step);
                self.after_turn(&mut step);
                return step;
            }
        };
        turn.tokens += reply.input_tokens + reply.output_tokens;
        let text = reply_text(&reply.content);
        let calls: VecDeque<ToolCall> = reply
            .content
            .iter()
            .filter_map(|block| match block {
                ContentBlock::ToolUse { id, name, input } => Some(ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    input: input.clone(),
                }),
                _ => None,
            })
            .collect();
        let ending = reply::ending(
            reply.stop_reason.as_deref(),
            !text.is_empty(),
            !calls.is_empty(),
            turn.spoke,
        );
        let notice = match ending {
            Ending::End { notice } => notice,
            Ending::RunTools | Ending::Continue => None,
        };
        // Text reaches the user as it comes, also between tool calls.
        if let Some(text) = reply::shown(&text, notice) {
            step.send.push(RunnerToHost::Output { text });
            turn.spoke = true;
        }
        if let Ending::End { .. } = ending {
            // Calls not run must not stay in the conversation: a tool_use
            // without its result makes every later request invalid.
            let kept: Vec<ContentBlock> = reply
                .content
                .into_iter()
                .filter(|block| !matches!(block, ContentBlock::ToolUse { .. }))
                .collect();
            push_assistant(&mut turn.messages, &kept);
            self.succeed(turn, &mut step);
            return step;
        }
        push_assistant(&mut turn.messages, &reply.content);
        turn.pending = calls;
        if turn.model_calls >= self.limits.model_calls {
            let why = format!("{} model calls", self.limits.model_calls);
            self.stop_at_limit(turn, &why, &mut step);
        } else if turn.tokens >= self.limits.tokens {
            let why = format!("{} tokens", self.limits.tokens);
            self.stop_at_limit(turn, &why, &mut step);
        } else if ending == Ending::Continue {
            // The conversation now ends with the paused reply: the model
            // carries on from it.
            self.ask_model(turn, &mut step);
        } else {
            self.run_tools(turn, &mut step, out);
        }
        step
    }

    fn on_host_result(
        &mut self,
        tool_use_id: String,
        result: HostResult,
        out: &mut dyn Emit,
    ) -> Step {
        let mut step = Step::default();
        let Some(mut turn) = self.take_turn() else {
            return Step::note("a host result arrived outside a turn");
        };
        let (content, is_error) = match result {
            HostResult::Ok { content } => (content, false),
            HostResult::Error { message } => (message, true),
        };
        turn.results.push(ContentBlock::ToolResult {
            tool_use_id,
            content,
            is_error,
        });
        self.run_tools(turn, &mut step, out);
        step
    }

    /// Runs the pending tool calls in order until one needs the host (then
    /// waits for its answer) or none is left (then asks the model again).
    fn run_tools(&mut self, mut turn: Turn, step: &mut Step, out: &mut dyn Emit) {
        while let Some(call) = turn.pending.pop_front() {
            if turn.tool_calls >= self.limits.tool_calls {
                turn.pending.push_front(call);
                let why = format!("{} tool calls", self.limits.tool_calls);
                self.stop_at_limit(turn, &why, step);
                return;
            }
            turn.tool_calls += 1;
            if let Some(error) = reply::invalid_arguments(&call.input) {
                turn.results.push(ContentBlock::ToolResult {
                    tool_use_id: call.id,
                    content: error,
                    is_error: true,
                });
                continue;
            }
            let output = match tools::dispatch(&call.name, &call.input) {
                Dispatch::Local => {
                    // What is decided so far goes out before a tool that may take minutes.
                    for message in step.send.drain(..) {
                        out.emit(message);
                    }
                    self.run_local(&call, out)
                }
                Dispatch::Refused(output) => output,
                Dispatch::Host(action) => {
                    if matches!(action, HostAction::SendMessage { .. }) {
                        turn.spoke = true;
                    }
                    let request_id = self.take_request_id();
                    step.send
                        .push(RunnerToHost::HostRequest { request_id, action });
                    self.phase = Phase::InTurn {
                        turn: Box::new(turn),
                        waiting: Waiting::Host {
                            request_id,
                            tool_use_id: call.id,
                        },
                    };
                    return;
                }
            };
            turn.results.push(ContentBlock::ToolResult {
                tool_use_id: call.id,
                content: output.content,
                is_error: output.is_error,
            });
        }
        let results = std::mem::take(&mut turn.results);
        push_user(&mut turn.messages, results);
        self.ask_model(turn, step);
    }

    /// Runs a container tool on a thread of its own and, while it runs, sends
    /// a progress line every [`Limits::progress_every`].
    fn run_local(&self, call: &ToolCall, out: &mut dyn Emit) -> ToolOutput {
        let (sender, receiver) = mpsc::channel();
        let (tools, name, input) = (self.tools.clone(), call.name.clone(), call.input.clone());
        let spawned = thread::Builder::new()
            .name(format!("tool {}", call.name))
            .spawn(move || {
                let _ = sender.send(tools::run_local(&tools, &name, &input));
            });
        if spawned.is_err() {
            // No thread to spare (the pids limit counts threads): run it
            // here, without progress, rather than not at all.
            return tools::run_local(&self.tools, &call.name, &call.input);
        }
        // A zero period would flood the host with progress lines.
        let period = self.limits.progress_every.max(Duration::from_millis(10));
        let started = Instant::now();
        loop {
            match receiver.recv_timeout(period) {
                Ok(output) => return output,
                Err(RecvTimeoutError::Timeout) => out.emit(RunnerToHost::Progress {
                    note: format!("running {} ({} s)", call.name, started.elapsed().as_secs()),
                }),
                // The tool panicked: its call fails, the run goes on.
                Err(RecvTimeoutError::Disconnected) => {
                    return ToolOutput {
                        content: format!("the {} tool failed without a result", call.name),
                        is_error: true,
                    }
                }
            }
        }
    }

    /// Ends a runaway turn as a success with a note to the user: what was done
    /// is kept (the conversation, files), and the user can say "continue".
    /// An error result would make the host retry the batch and repeat the
    /// tools' side effects. Calls not run get an error result, so the kept
    /// conversation stays valid for the next turn.
    fn stop_at_limit(&mut self, mut turn: Turn, limit: &str, step: &mut Step) {
        for call in std::mem::take(&mut turn.pending) {
            turn.results.push(ContentBlock::ToolResult {
                tool_use_id: call.id,
                content: format!("not run: this turn reached its limit of {limit}"),
                is_error: true,
            });
        }
        let results = std::mem::take(&mut turn.results);
        push_user(&mut turn.messages, results);
        step.send.push(RunnerToHost::Output {
            text: format!(
                "I stopped here: this request reached my limit of {limit} in one turn. \
                 Say \"continue\" if you want me to carry on."
            ),
        });
        self.succeed(turn, step);
    }

    /// Commits the turn: its messages join the conversation and are written
    /// to the transcript in order. The anchor reported is the uuid of the last
    /// one written: the final reply, or (after an empty reply or a stop at a
    /// limit) the user message after it, so a resume never ends on a
    /// `tool_use` without its results.
    fn succeed(&mut self, turn: Turn, step: &mut Step) {
        let new_messages = turn.messages[turn.committed.min(turn.messages.len())..].to_vec();
        for message in new_messages {
            let uuid = self.record(message);
            self.last_assistant_id = Some(uuid);
        }
        self.conversation.messages = turn.messages;
        step.send.push(RunnerToHost::Result(RunResult {
            status: RunStatus::Success,
            session_id: Some(self.session_id()),
            last_assistant_id: self.last_assistant_id.clone(),
            error: None,
            error_kind: None,
        }));
        self.after_turn(step);
    }

    /// Follow-ups the host already handed over are answered before a close
    /// is honoured: the host counts them as delivered to this container.
    fn after_turn(&mut self, step: &mut Step) {
        loop {
            match self.queued.pop_front() {
                Some(Queued::Prompt(next)) => return self.begin_turn(next, step),
                Some(Queued::Refused(error)) => step
                    .send
                    .push(self.error_result(error, ErrorKind::Permanent)),
                None => {
                    if self.close_requested {
                        step.exit = Some(0);
                    }
                    return;
                }
            }
        }
    }

    fn fail(&mut self, failure: ModelFailure, step: &mut Step) {
        // The failed turn is not committed: the host retries its prompt as a batch.
        step.send
            .push(self.error_result(failure.message, failure.kind));
    }

    /// An error result for a turn of this run; the anchor stays where the
    /// last committed turn left it.
    fn error_result(&self, error: String, kind: ErrorKind) -> RunnerToHost {
        let anchor = self
            .last_assistant_id
            .clone()
            .or_else(|| self.start.as_ref().and_then(|s| s.resume_at.clone()));
        RunnerToHost::Result(RunResult {
            status: RunStatus::Error,
            session_id: Some(self.session_id()),
            last_assistant_id: anchor,
            error: Some(error),
            error_kind: Some(kind),
        })
    }
}

/// Builders and probes shared by the runner's tests and the IO loop's.
#[cfg(test)]
pub mod test_support {
    use super::*;
    pub use crate::tools::test_support::TempDir;
    use crate::wire::{ModelReply, Role};

    pub fn start(prompt: &str) -> StartRun {
        StartRun {
            protocol: PROTOCOL_VERSION,
            group_folder: "family".into(),
            chat_id: "term:local".into(),
            is_main: false,
            session_id: None,
            resume_at: None,
            prompt: prompt.into(),
            assistant_name: "Talon".into(),
            timezone: "Europe/Berlin".into(),
            heartbeat_ms: None,
            runtime: Default::default(),
            model: None,
        }
    }

    pub fn ok(id: &str, text: &str) -> ModelResult {
        ModelResult::Ok(ModelReply {
            id: id.into(),
            content: vec![ContentBlock::Text { text: text.into() }],
            stop_reason: Some("end_turn".into()),
            input_tokens: 1,
            output_tokens: 1,
        })
    }

    pub fn response(request_id: u64, result: ModelResult) -> HostToRunner {
        HostToRunner::ModelResponse { request_id, result }
    }

    pub fn text(t: &str) -> ContentBlock {
        ContentBlock::Text { text: t.into() }
    }

    /// A runner whose session dir is a temp dir that lives as long as it.
    pub struct TestRunner {
        runner: Runner,
        _dir: TempDir,
    }

    impl std::ops::Deref for TestRunner {
        type Target = Runner;
        fn deref(&self) -> &Runner {
            &self.runner
        }
    }

    impl std::ops::DerefMut for TestRunner {
        fn deref_mut(&mut self) -> &mut Runner {
            &mut self.runner
        }
    }

    pub fn sessions_in(dir: &TempDir) -> SessionConfig {
        SessionConfig {
            dir: dir.0.join("session"),
            archive_dir: dir.0.join("group/conversations"),
            compact_above_tokens: 100_000,
            keep_last: 6,
        }
    }

    pub fn runner() -> TestRunner {
        let dir = TempDir::new();
        TestRunner {
            runner: Runner::new(
                "fresh".into(),
                Vec::new(),
                ToolContext::container(),
                Limits::default(),
                sessions_in(&dir),
            ),
            _dir: dir,
        }
    }

    pub fn is_transcript_uuid(id: Option<&str>) -> bool {
        id.is_some_and(|id| id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()))
    }

    pub fn request_of(message: &RunnerToHost) -> (u64, &ModelRequest) {
        match message {
            RunnerToHost::ModelRequest {
                request_id,
                request,
            } => (*request_id, request),
            other => panic!("expected a model request, got {other:?}"),
        }
    }

    pub fn result_of(message: &RunnerToHost) -> &RunResult {
        match message {
            RunnerToHost::Result(result) => result,
            other => panic!("expected a result, got {other:?}"),
        }
    }

    pub fn tool_runner(dir: &TempDir, limits: Limits) -> Runner {
        let ctx = dir.context();
        std::fs::create_dir_all(&ctx.workdir).unwrap();
        Runner::new("fresh".into(), Vec::new(), ctx, limits, sessions_in(dir))
    }

    pub fn tool_use(id: &str, name: &str, input: serde_json::Value) -> ContentBlock {
        ContentBlock::ToolUse {
            id: id.into(),
            name: name.into(),
            input,
        }
    }

    pub fn reply_with(id: &str, content: Vec<ContentBlock>) -> ModelResult {
        ModelResult::Ok(ModelReply {
            id: id.into(),
            content,
            stop_reason: Some("tool_use".into()),
            input_tokens: 10,
            output_tokens: 5,
        })
    }

    /// The tool results of the last user message of a model request.
    pub fn tool_results(request: &ModelRequest) -> Vec<(String, String, bool)> {
        let last = request.messages.last().unwrap();
        assert_eq!(last.role, Role::User);
        last.content
            .iter()
            .filter_map(|block| match block {
                ContentBlock::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                } => Some((tool_use_id.clone(), content.clone(), *is_error)),
                _ => None,
            })
            .collect()
    }

    pub fn resume_start(prompt: &str, session_id: &str, resume_at: Option<&str>) -> StartRun {
        let mut s = start(prompt);
        s.session_id = Some(session_id.into());
        s.resume_at = resume_at.map(str::to_string);
        s
    }

    pub fn texts_of(messages: &[ChatMessage]) -> Vec<String> {
        messages
            .iter()
            .flat_map(|m| m.content.iter())
            .map(|block| match block {
                ContentBlock::Text { text } => text.clone(),
                ContentBlock::ToolUse { name, .. } => format!("use:{name}"),
                ContentBlock::ToolResult { content, .. } => format!("result:{content}"),
            })
            .collect()
    }

    /// One turn on `r`: the prompt goes in (as the start or a follow-up), the
    /// model answers `answer`; returns the anchor of the result.
    pub fn turn(r: &mut Runner, first: Option<StartRun>, prompt: &str, answer: &str) -> String {
        let step = match first {
            Some(start) => r.on_message(HostToRunner::Start(start)),
            None => r.on_message(HostToRunner::FollowUp {
                prompt: prompt.into(),
            }),
        };
        let (id, _) = request_of(&step.send[0]);
        let step = r.on_message(response(id, ok("msg_x", answer)));
        let result = result_of(step.send.last().unwrap());
        assert_eq!(result.status, RunStatus::Success, "{result:?}");
        result.last_assistant_id.clone().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use crate::wire::{self, Role};

    #[test]
    fn start_sends_a_model_request_with_the_prompt() {
        let mut r = runner();
        let step = r.on_message(HostToRunner::Start(start("<messages/>")));
        assert_eq!(step.exit, None);
        assert_eq!(step.send.len(), 1);
        let (id, request) = request_of(&step.send[0]);
        assert_eq!(id, 1);
        assert_eq!(request.max_tokens, 4096);
        assert!(request.system.contains("You are Talon"));
        assert_eq!(
            request.messages,
            vec![ChatMessage {
                role: Role::User,
                content: vec![text("<messages/>")]
            }]
        );
    }

    #[test]
    fn ok_reply_sends_output_then_success_result() {
        let mut r = runner();
        r.on_message(HostToRunner::Start(start("ping")));
        let step = r.on_message(response(1, ok("msg_1", "pong")));
        assert_eq!(
            step.send[0],
            RunnerToHost::Output {
                text: "pong".into()
            }
        );
        let result = result_of(&step.send[1]);
        // The anchor is the transcript uuid of the reply, not the provider's id.
        assert!(
            is_transcript_uuid(result.last_assistant_id.as_deref()),
            "{result:?}"
        );
        assert_eq!(
            result,
            &RunResult {
                status: RunStatus::Success,
                session_id: Some("fresh".into()),
                last_assistant_id: result.last_assistant_id.clone(),
                error: None,
                error_kind: None,
            }
        );
        assert_eq!(
            r.transcript.as_ref().and_then(|t| t.tip()),
            result.last_assistant_id.as_deref()
        );
        assert_eq!(step.exit, None);
        assert_eq!(r.phase, Phase::Idle);
    }

    #[test]
    fn given_session_id_is_kept() {
        let mut r = runner();
        let mut s = start("ping");
        s.session_id = Some("sess-7".into());
        r.on_message(HostToRunner::Start(s));
        let step = r.on_message(response(1, ok("msg_1", "pong")));
        assert_eq!(
            result_of(&step.send[1]).session_id.as_deref(),
            Some("sess-7")
        );
    }

    #[test]
    fn an_empty_reply_is_a_notice_and_a_success() {
        let mut r = runner();
        r.on_message(HostToRunner::Start(start("ping")));
        let step = r.on_message(response(1, ok("msg_1", "")));
        assert_eq!(
            step.send[0],
            RunnerToHost::Output {
                text: "[the model returned an empty answer]".into()
            }
        );
        assert_eq!(step.send.len(), 2, "{step:?}");
        assert_eq!(result_of(&step.send[1]).status, RunStatus::Success);
        // The notice is the runner's, not the model's: not in the conversation.
        assert_eq!(texts_of(&r.conversation.messages), vec!["ping"]);
    }

    #[test]
    fn error_reply_sends_error_result_and_drops_the_prompt() {
        let mut r = runner();
        r.on_message(HostToRunner::Start(start("ping")));
        let failure = ModelFailure {
            kind: ErrorKind::RateLimited,
            message: "slow down".into(),
        };
        let step = r.on_message(response(1, ModelResult::Error(failure)));
        assert_eq!(step.send.len(), 1);
        let result = result_of(&step.send[0]);
        assert_eq!(result.status, RunStatus::Error);
        assert_eq!(result.error.as_deref(), Some("slow down"));
        assert_eq!(result.error_kind, Some(ErrorKind::RateLimited));
        assert!(r.conversation.messages.is_empty());
        // The next turn carries only its own prompt.
        let step = r.on_message(HostToRunner::FollowUp {
            prompt: "again".into(),
        });
        let (id, request) = request_of(&step.send[0]);
        assert_eq!(id, 2);
        assert_eq!(
            request.messages,
            vec![ChatMessage {
                role: Role::User,
                content: vec![text("again")]
            }]
        );
    }

    #[test]
    fn follow_up_carries_the_conversation_so_far() {
        let mut r = runner();
        r.on_message(HostToRunner::Start(start("one")));
        r.on_message(response(1, ok("msg_1", "first")));
        let step = r.on_message(HostToRunner::FollowUp {
            prompt: "two".into(),
        });
        let (id, request) = request_of(&step.send[0]);
        assert_eq!(id, 2);
        assert_eq!(
            request.messages,
            vec![
                ChatMessage {
                    role: Role::User,
                    content: vec![text("one")]
                },
                ChatMessage {
                    role: Role::Assistant,
                    content: vec![text("first")]
                },
                ChatMessage {
                    role: Role::User,
                    content: vec![text("two")]
                },
            ]
        );
    }

    #[test]
    fn follow_up_during_a_turn_is_queued_for_the_next_turn() {
        let mut r = runner();
        r.on_message(HostToRunner::Start(start("one")));
        assert_eq!(
            r.on_message(HostToRunner::FollowUp {
                prompt: "two".into()
            }),
            Step::default()
        );
        let step = r.on_message(response(1, ok("msg_1", "first")));
        assert_eq!(step.send.len(), 3, "output, result, next request: {step:?}");
        let (id, request) = request_of(&step.send[2]);
        assert_eq!(id, 2);
        assert_eq!(
            request.messages.last().map(|m| m.content.clone()),
            Some(vec![text("two")])
        );
    }

    #[test]
    fn close_during_a_turn_finishes_the_turn_then_exits() {
        let mut r = runner();
        r.on_message(HostToRunner::Start(start("one")));
        assert_eq!(r.on_message(HostToRunner::Close), Step::default());
        let step = r.on_message(response(1, ok("msg_1", "first")));
        assert_eq!(step.send.len(), 2);
        assert_eq!(step.exit, Some(0));
    }

    #[test]
    fn queued_follow_ups_are_answered_before_a_close() {
        let mut r = runner();
        r.on_message(HostToRunner::Start(start("one")));
        r.on_message(HostToRunner::FollowUp {
            prompt: "two".into(),
        });
        r.on_message(HostToRunner::Close);
        let step = r.on_message(response(1, ok("msg_1", "first")));
        assert_eq!(step.exit, None);
        let step = r.on_message(response(2, ok("msg_2", "second")));
        assert_eq!(step.exit, Some(0));
    }

    #[test]
    fn mismatched_response_id_is_ignored() {
        let mut r = runner();
        r.on_message(HostToRunner::Start(start("one")));
        let step = r.on_message(response(9, ok("msg_9", "stale")));
        assert!(step.send.is_empty());
        assert!(step.note.is_some());
        assert!(matches!(
            r.phase,
            Phase::InTurn {
                waiting: Waiting::Model { request_id: 1 },
                ..
            }
        ));
    }

    #[test]
    fn wrong_protocol_reports_and_exits_2() {
        let mut r = runner();
        let mut s = start("one");
        s.protocol = PROTOCOL_VERSION + 1;
        let step = r.on_message(HostToRunner::Start(s));
        assert_eq!(step.exit, Some(2));
        let result = result_of(&step.send[0]);
        assert_eq!(result.status, RunStatus::Error);
        assert_eq!(result.error_kind, Some(ErrorKind::Permanent));
        assert!(result
            .error
            .as_deref()
            .unwrap_or("")
            .contains("talon image build"));
    }

    #[test]
    fn before_start_only_close_and_start_matter() {
        let mut r = runner();
        let step = r.on_message(HostToRunner::FollowUp {
            prompt: "early".into(),
        });
        assert!(step.send.is_empty() && step.exit.is_none() && step.note.is_some());
        assert_eq!(r.on_message(HostToRunner::Close).exit, Some(0));
    }

    #[test]
    fn eof_exits_0_between_turns_and_1_mid_turn() {
        assert_eq!(runner().on_eof().exit, Some(0));
        let mut r = runner();
        r.on_message(HostToRunner::Start(start("one")));
        assert_eq!(r.on_eof().exit, Some(EXIT_BROKEN));
        r.on_message(response(1, ok("msg_1", "first")));
        assert_eq!(r.on_eof().exit, Some(0));
    }

    // --- the tool loop ---------------------------------------------------

    #[test]
    fn model_requests_carry_the_tool_specs_and_the_prompt_describes_memory() {
        let mut r = runner();
        let step = r.on_message(HostToRunner::Start(start("hi")));
        let (_, request) = request_of(&step.send[0]);
        let names: Vec<&str> = request.tools.iter().map(|t| t.name.as_str()).collect();
        assert!(names.contains(&"bash") && names.contains(&"send_message"));
        assert!(request.system.contains("/workspace/group/CLAUDE.md"));
        assert!(request.system.contains("read-only here"));
        assert!(!request.system.contains("register_group"));
        let mut main_start = start("hi");
        main_start.is_main = true;
        let main_prompt = build_system_prompt(&main_start, &[]);
        assert!(main_prompt.contains("register_group"));
        assert!(main_prompt.contains("shared by every group; edit it"));
        assert!(!main_prompt.contains("read-only here"));
    }

    #[test]
    fn write_then_read_tool_calls_loop_back_to_the_model_until_a_plain_reply() {
        let dir = TempDir::new();
        let mut r = tool_runner(&dir, Limits::default());
        r.on_message(HostToRunner::Start(start("note the milk")));
        let step = r.on_message(response(
            1,
            reply_with(
                "msg_1",
                vec![
                    text("Writing it down."),
                    tool_use(
                        "t1",
                        "write_file",
                        serde_json::json!({"path": "notes/list.md", "content": "milk\n"}),
                    ),
                ],
            ),
        ));
        assert_eq!(
            step.send[0],
            RunnerToHost::Output {
                text: "Writing it down.".into()
            }
        );
        assert_eq!(step.send.len(), 2, "{step:?}");
        let (id, request) = request_of(&step.send[1]);
        assert_eq!(id, 2);
        let results = tool_results(request);
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].0, "t1");
        assert!(!results[0].2, "{results:?}");
        assert_eq!(
            std::fs::read_to_string(dir.0.join("group/notes/list.md")).unwrap(),
            "milk\n"
        );
        // The assistant's tool_use message sits between the prompt and the results.
        let roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, vec![Role::User, Role::Assistant, Role::User]);

        let step = r.on_message(response(
            2,
            reply_with(
                "msg_2",
                vec![tool_use(
                    "t2",
                    "read_file",
                    serde_json::json!({"path": "notes/list.md"}),
                )],
            ),
        ));
        let (id, request) = request_of(&step.send[0]);
        assert_eq!(id, 3);
        assert_eq!(
            tool_results(request),
            vec![("t2".into(), "     1\tmilk\n".into(), false)]
        );

        let step = r.on_message(response(3, ok("msg_3", "Noted: milk.")));
        assert_eq!(
            step.send[0],
            RunnerToHost::Output {
                text: "Noted: milk.".into()
            }
        );
        let result = result_of(&step.send[1]);
        assert_eq!(result.status, RunStatus::Success);
        assert!(is_transcript_uuid(result.last_assistant_id.as_deref()));
        assert_eq!(r.phase, Phase::Idle);
        // The whole turn, tools included, is the conversation the next turn builds on.
        assert_eq!(r.conversation.messages.len(), 6);
    }

    #[test]
    fn a_hung_bash_call_is_cut_at_its_timeout_and_the_loop_goes_on() {
        let dir = TempDir::new();
        let mut r = tool_runner(&dir, Limits::default());
        r.on_message(HostToRunner::Start(start("run it")));
        let started = std::time::Instant::now();
        let step = r.on_message(response(
            1,
            reply_with(
                "msg_1",
                vec![tool_use(
                    "t1",
                    "bash",
                    serde_json::json!({"command": "sleep 30", "timeout_seconds": 0.2}),
                )],
            ),
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let (id, request) = request_of(&step.send[0]);
        assert_eq!(id, 2);
        let results = tool_results(request);
        assert!(results[0].2, "{results:?}");
        assert!(results[0].1.contains("did not finish within 0.2 s"));
        let step = r.on_message(response(2, ok("msg_2", "It hung.")));
        assert_eq!(result_of(&step.send[1]).status, RunStatus::Success);
    }

    #[test]
    fn host_tools_round_trip_through_the_host_and_queue_what_arrives_meanwhile() {
        let dir = TempDir::new();
        let mut r = tool_runner(&dir, Limits::default());
        r.on_message(HostToRunner::Start(start("tell them")));
        let step = r.on_message(response(
            1,
            reply_with(
                "msg_1",
                vec![
                    tool_use("t1", "send_message", serde_json::json!({"text": "hello"})),
                    tool_use("t2", "list", serde_json::json!({})),
                    tool_use("t3", "cancel_task", serde_json::json!({"task_id": "x"})),
                ],
            ),
        ));
        assert_eq!(
            step.send,
            vec![RunnerToHost::HostRequest {
                request_id: 2,
                action: wire::HostAction::SendMessage {
                    chat_id: None,
                    text: "hello".into()
                }
            }]
        );
        // While the host works: a follow-up is queued, a stale answer ignored.
        assert_eq!(
            r.on_message(HostToRunner::FollowUp {
                prompt: "later".into()
            }),
            Step::default()
        );
        let stale = r.on_message(response(2, ok("msg_x", "?")));
        assert!(stale.send.is_empty() && stale.note.is_some());
        // The answer runs the local tool, then asks the host again.
        let step = r.on_message(HostToRunner::HostResponse {
            request_id: 2,
            result: HostResult::Ok {
                content: "sent".into(),
            },
        });
        assert_eq!(
            step.send,
            vec![RunnerToHost::HostRequest {
                request_id: 3,
                action: wire::HostAction::CancelTask {
                    task_id: "x".into()
                }
            }]
        );
        let step = r.on_message(HostToRunner::HostResponse {
            request_id: 3,
            result: HostResult::Error {
                message: "no such task".into(),
            },
        });
        let (id, request) = request_of(&step.send[0]);
        assert_eq!(id, 4);
        let results = tool_results(request);
        assert_eq!(results[0], ("t1".into(), "sent".into(), false));
        assert_eq!(results[1].0, "t2");
        assert!(!results[1].2);
        assert_eq!(results[2], ("t3".into(), "no such task".into(), true));
        // The turn ends, then the queued follow-up starts the next one.
        let step = r.on_message(response(4, ok("msg_4", "Done.")));
        assert_eq!(step.send.len(), 3, "{step:?}");
        let (id, request) = request_of(&step.send[2]);
        assert_eq!(id, 5);
        assert_eq!(
            request.messages.last().unwrap().content,
            vec![text("later")]
        );
    }

    #[test]
    fn eof_while_waiting_for_the_host_exits_1() {
        let dir = TempDir::new();
        let mut r = tool_runner(&dir, Limits::default());
        r.on_message(HostToRunner::Start(start("x")));
        r.on_message(response(
            1,
            reply_with(
                "msg_1",
                vec![tool_use("t1", "list_tasks", serde_json::json!({}))],
            ),
        ));
        let step = r.on_eof();
        assert_eq!(step.exit, Some(EXIT_BROKEN));
        assert!(step.note.unwrap().contains("host response 2"));
    }

    #[test]
    fn the_tool_call_limit_ends_the_turn_with_a_note_and_a_valid_conversation() {
        let dir = TempDir::new();
        let limits = Limits {
            tool_calls: 2,
            ..Limits::default()
        };
        let mut r = tool_runner(&dir, limits);
        r.on_message(HostToRunner::Start(start("loop")));
        let touch = |n: u32| {
            tool_use(
                &format!("t{n}"),
                "write_file",
                serde_json::json!({"path": format!("f{n}"), "content": ""}),
            )
        };
        let step = r.on_message(response(1, reply_with("msg_1", vec![touch(1)])));
        request_of(&step.send[0]);
        let step = r.on_message(response(2, reply_with("msg_2", vec![touch(2), touch(3)])));
        assert_eq!(step.send.len(), 2, "{step:?}");
        match &step.send[0] {
            RunnerToHost::Output { text } => assert!(text.contains("limit of 2 tool calls")),
            other => panic!("expected the note, got {other:?}"),
        }
        let result = result_of(&step.send[1]);
        assert_eq!(result.status, RunStatus::Success);
        assert!(is_transcript_uuid(result.last_assistant_id.as_deref()));
        assert!(dir.0.join("group/f2").exists());
        assert!(!dir.0.join("group/f3").exists());
        // Every tool_use has its result, and the next prompt joins that message.
        let step = r.on_message(HostToRunner::FollowUp {
            prompt: "continue".into(),
        });
        let (_, request) = request_of(&step.send[0]);
        let results = tool_results(request);
        assert_eq!(results.len(), 2);
        assert!(results[1].2 && results[1].1.contains("not run"));
        assert_eq!(
            request.messages.last().unwrap().content.last(),
            Some(&text("continue"))
        );
    }

    #[test]
    fn the_model_call_limit_stops_a_turn_that_keeps_calling_tools() {
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
        assert!(
            matches!(&step.send[0], RunnerToHost::Output { text } if text.contains("1 model calls"))
        );
        assert_eq!(result_of(&step.send[1]).status, RunStatus::Success);
    }

    #[test]
    fn unknown_tools_get_an_error_result_not_a_crash() {
        let dir = TempDir::new();
        let mut r = tool_runner(&dir, Limits::default());
        r.on_message(HostToRunner::Start(start("x")));
        let step = r.on_message(response(
            1,
            reply_with(
                "msg_1",
                vec![tool_use("t1", "launch", serde_json::json!({}))],
            ),
        ));
        let (_, request) = request_of(&step.send[0]);
        let results = tool_results(request);
        assert!(results[0].2 && results[0].1.contains("unknown tool"));
    }

    #[test]
    fn a_long_local_tool_sends_progress_until_it_ends() {
        let dir = TempDir::new();
        let limits = Limits {
            progress_every: Duration::from_millis(50),
            ..Limits::default()
        };
        let mut r = tool_runner(&dir, limits);
        r.on_message(HostToRunner::Start(start("wait")));
        let step = r.on_message(response(
            1,
            reply_with(
                "msg_1",
                vec![tool_use(
                    "t1",
                    "bash",
                    serde_json::json!({"command": "sleep 0.4; echo slept"}),
                )],
            ),
        ));
        let (last, progress) = step.send.split_last().unwrap();
        assert!(progress.len() >= 2, "{:?}", step.send);
        assert!(progress.iter().all(
            |m| matches!(m, RunnerToHost::Progress { note } if note.starts_with("running bash ("))
        ));
        let (id, request) = request_of(last);
        assert_eq!(id, 2);
        assert_eq!(
            tool_results(request),
            vec![("t1".into(), "slept\n".into(), false)]
        );
        // A quick tool sends none.
        let step = r.on_message(response(
            2,
            reply_with("msg_2", vec![tool_use("t2", "list", serde_json::json!({}))]),
        ));
        assert_eq!(step.send.len(), 1, "{:?}", step.send);
    }

    // --- stop reasons: refused, filtered, cut, paused, empty --------------

    fn stopped(id: &str, content: Vec<ContentBlock>, stop_reason: &str) -> ModelResult {
        ModelResult::Ok(wire::ModelReply {
            id: id.into(),
            content,
            stop_reason: Some(stop_reason.into()),
            input_tokens: 10,
            output_tokens: 5,
        })
    }

    /// The turn's lines after a start with `prompt` and one reply `result`.
    fn one_reply(r: &mut Runner, prompt: &str, result: ModelResult) -> Step {
        r.on_message(HostToRunner::Start(start(prompt)));
        r.on_message(response(1, result))
    }

    #[test]
    fn a_refusal_is_one_notice_and_a_success_not_a_retry() {
        let mut r = runner();
        let step = one_reply(&mut r, "help me", stopped("msg_1", Vec::new(), "refusal"));
        assert_eq!(step.send.len(), 2, "{step:?}");
        assert_eq!(
            step.send[0],
            RunnerToHost::Output {
                text: "[the model declined to answer this]".into()
            }
        );
        let result = result_of(&step.send[1]);
        assert_eq!(result.status, RunStatus::Success);
        assert_eq!(result.error_kind, None);
        assert_eq!(r.phase, Phase::Idle);
        // Partial text before a refusal is kept and followed by the notice.
        let mut r = runner();
        let step = one_reply(
            &mut r,
            "help me",
            stopped("msg_1", vec![text("Let me")], "refusal"),
        );
        assert_eq!(
            step.send[0],
            RunnerToHost::Output {
                text: "Let me\n\n[the model declined to answer this]".into()
            }
        );
    }

    #[test]
    fn a_content_filter_stop_is_one_notice_and_runs_no_tool() {
        let dir = TempDir::new();
        let mut r = tool_runner(&dir, Limits::default());
        let write = tool_use(
            "t1",
            "write_file",
            serde_json::json!({"path": "filtered.txt", "content": "x"}),
        );
        let step = one_reply(&mut r, "x", stopped("msg_1", vec![write], "content_filter"));
        assert_eq!(step.send.len(), 2, "{step:?}");
        assert_eq!(
            step.send[0],
            RunnerToHost::Output {
                text: "[the provider's content filter stopped this reply]".into()
            }
        );
        assert_eq!(result_of(&step.send[1]).status, RunStatus::Success);
        assert!(!dir.0.join("group/filtered.txt").exists());
    }

    #[test]
    fn a_cut_reply_keeps_its_text_and_says_it_was_cut() {
        let mut r = runner();
        let step = one_reply(
            &mut r,
            "tell me a long story",
            stopped("msg_1", vec![text("Once upon a time")], "max_tokens"),
        );
        assert_eq!(
            step.send[0],
            RunnerToHost::Output {
                text: "Once upon a time\n\n[cut: the reply reached the length limit]".into()
            }
        );
        assert_eq!(result_of(&step.send[1]).status, RunStatus::Success);
        // The model's own text, without the note, is what the conversation keeps.
        assert_eq!(
            texts_of(&r.conversation.messages),
            vec!["tell me a long story", "Once upon a time"]
        );
    }

    #[test]
    fn a_cut_reply_never_runs_its_half_tool_call_and_the_conversation_stays_valid() {
        let dir = TempDir::new();
        let mut r = tool_runner(&dir, Limits::default());
        // The input of the last block was cut mid-way; the API sends what it has.
        let half = tool_use(
            "t1",
            "write_file",
            serde_json::json!({"path": "half.txt", "content": "the beginn"}),
        );
        let step = one_reply(
            &mut r,
            "write it",
            stopped("msg_1", vec![text("Writing."), half], "max_tokens"),
        );
        assert_eq!(step.send.len(), 2, "no further request: {step:?}");
        assert_eq!(
            step.send[0],
            RunnerToHost::Output {
                text: "Writing.\n\n[cut: the reply reached the length limit]".into()
            }
        );
        assert_eq!(result_of(&step.send[1]).status, RunStatus::Success);
        assert!(!dir.0.join("group/half.txt").exists());
        // No tool_use without a result is left behind for the next request.
        let step = r.on_message(HostToRunner::FollowUp {
            prompt: "go on".into(),
        });
        let (_, request) = request_of(&step.send[0]);
        assert_eq!(
            texts_of(&request.messages),
            vec!["write it", "Writing.", "go on"]
        );
        // Only a cut tool call: the note alone.
        let mut r = tool_runner(&dir, Limits::default());
        let half = tool_use("t1", "list", serde_json::json!({}));
        let step = one_reply(&mut r, "x", stopped("msg_1", vec![half], "max_tokens"));
        assert_eq!(
            step.send[0],
            RunnerToHost::Output {
                text: "[cut: the reply reached the length limit]".into()
            }
        );
        assert_eq!(result_of(&step.send[1]).status, RunStatus::Success);
    }

    #[test]
    fn a_paused_turn_is_sent_back_to_carry_on() {
        let mut r = runner();
        let step = one_reply(
            &mut r,
            "research this",
            stopped("msg_1", vec![text("Searching...")], "pause_turn"),
        );
        assert_eq!(
            step.send[0],
            RunnerToHost::Output {
                text: "Searching...".into()
            }
        );
        assert_eq!(step.send.len(), 2, "{step:?}");
        let (id, request) = request_of(&step.send[1]);
        assert_eq!(id, 2);
        // The request ends with the paused reply, as the API expects.
        let roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, vec![Role::User, Role::Assistant]);
        assert_eq!(request.messages[1].content, vec![text("Searching...")]);
        let step = r.on_message(response(2, ok("msg_2", " Found it.")));
        assert_eq!(
            step.send[0],
            RunnerToHost::Output {
                text: " Found it.".into()
            }
        );
        assert_eq!(result_of(&step.send[1]).status, RunStatus::Success);
        // Both parts are the one answer the next request carries.
        let step = r.on_message(HostToRunner::FollowUp {
            prompt: "thanks".into(),
        });
        let (_, request) = request_of(&step.send[0]);
        assert_eq!(request.messages.len(), 3);
        assert_eq!(
            request.messages[1].content,
            vec![text("Searching..."), text(" Found it.")]
        );
    }

    #[test]
    fn pauses_count_against_the_model_call_limit() {
        let dir = TempDir::new();
        let limits = Limits {
            model_calls: 2,
            ..Limits::default()
        };
        let mut r = tool_runner(&dir, limits);
        let step = one_reply(&mut r, "x", stopped("msg_1", Vec::new(), "pause_turn"));
        let (id, _) = request_of(&step.send[0]);
        let step = r.on_message(response(id, stopped("msg_2", Vec::new(), "pause_turn")));
        assert_eq!(step.send.len(), 2, "{step:?}");
        assert!(
            matches!(&step.send[0], RunnerToHost::Output { text } if text.contains("2 model calls")),
            "{step:?}"
        );
        assert_eq!(result_of(&step.send[1]).status, RunStatus::Success);
    }

    #[test]
    fn an_empty_final_reply_after_the_turn_spoke_needs_no_notice() {
        let dir = TempDir::new();
        // Text before the tool call, then an empty end_turn.
        let mut r = tool_runner(&dir, Limits::default());
        let list = tool_use("t1", "list", serde_json::json!({}));
        let step = one_reply(
            &mut r,
            "x",
            reply_with("msg_1", vec![text("Looking."), list]),
        );
        let (id, _) = request_of(step.send.last().unwrap());
        let step = r.on_message(response(id, ok("msg_2", "")));
        assert_eq!(step.send.len(), 1, "{step:?}");
        assert_eq!(result_of(&step.send[0]).status, RunStatus::Success);
        // A send_message, then an empty end_turn.
        let mut r = tool_runner(&dir, Limits::default());
        let send = tool_use("t1", "send_message", serde_json::json!({"text": "hi"}));
        r.on_message(HostToRunner::Start(start("x")));
        r.on_message(response(1, reply_with("msg_1", vec![send])));
        let step = r.on_message(HostToRunner::HostResponse {
            request_id: 2,
            result: HostResult::Ok {
                content: "sent".into(),
            },
        });
        let (id, _) = request_of(&step.send[0]);
        let step = r.on_message(response(id, ok("msg_2", "")));
        assert_eq!(step.send.len(), 1, "{step:?}");
        // A silent tool call, then an empty end_turn: still the notice.
        let mut r = tool_runner(&dir, Limits::default());
        let list = tool_use("t1", "list", serde_json::json!({}));
        let step = one_reply(&mut r, "x", reply_with("msg_1", vec![list]));
        let (id, _) = request_of(step.send.last().unwrap());
        let step = r.on_message(response(id, ok("msg_2", "")));
        assert_eq!(
            step.send[0],
            RunnerToHost::Output {
                text: "[the model returned an empty answer]".into()
            }
        );
    }

    // --- calls the host could not read -----------------------------------

    #[test]
    fn a_call_with_unreadable_arguments_gets_an_error_and_is_not_run() {
        let dir = TempDir::new();
        let mut r = tool_runner(&dir, Limits::default());
        // What openai.rs makes of `{"path": "bad.txt", "content": ` cut short.
        let bad = tool_use(
            "call_1",
            "write_file",
            serde_json::json!({
                wire::INVALID_TOOL_INPUT_KEY:
                    "the tool call's arguments were not valid JSON: EOF while parsing"
            }),
        );
        let good = tool_use(
            "call_2",
            "write_file",
            serde_json::json!({"path": "good.txt", "content": "ok"}),
        );
        let step = one_reply(&mut r, "write", reply_with("msg_1", vec![bad, good]));
        let (id, request) = request_of(step.send.last().unwrap());
        assert_eq!(id, 2);
        let results = tool_results(request);
        assert_eq!(results.len(), 2, "{results:?}");
        assert_eq!(results[0].0, "call_1");
        assert!(results[0].2, "{results:?}");
        assert!(
            results[0]
                .1
                .starts_with("the tool call's arguments were not valid JSON: EOF while parsing"),
            "{results:?}"
        );
        assert!(results[0].1.contains("not run"), "{results:?}");
        // Its neighbour still ran.
        assert_eq!(results[1].0, "call_2");
        assert!(!results[1].2, "{results:?}");
        assert!(dir.0.join("group/good.txt").exists());
        // The input is an object the model can be shown again (any provider).
        let call_input = request.messages[1].content.iter().find_map(|b| match b {
            ContentBlock::ToolUse { id, input, .. } if id == "call_1" => Some(input),
            _ => None,
        });
        assert!(call_input.is_some_and(|input| input.is_object()));
    }

    #[test]
    fn a_host_tool_with_unreadable_arguments_never_reaches_the_host() {
        let dir = TempDir::new();
        let mut r = tool_runner(&dir, Limits::default());
        let bad = tool_use(
            "call_1",
            "send_message",
            serde_json::json!({
                wire::INVALID_TOOL_INPUT_KEY: "the tool call's arguments were not a JSON object but a string"
            }),
        );
        let step = one_reply(&mut r, "say hi", reply_with("msg_1", vec![bad]));
        assert_eq!(step.send.len(), 1, "{step:?}");
        let (_, request) = request_of(&step.send[0]);
        let results = tool_results(request);
        assert!(
            results[0].2 && results[0].1.contains("not a JSON object"),
            "{results:?}"
        );
    }
}
