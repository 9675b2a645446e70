//! The agent runner: the process that runs inside talon's container.
//!
//! It speaks the host ↔ container protocol (JSON lines on stdin/stdout) and
//! holds the conversation of one run. It never calls a model itself: it asks
//! the host with a `ModelRequest` and waits for the matching `ModelResponse`,
//! so no credential and no network is ever needed inside the container.
//!
//! Each turn is a tool loop in the Anthropic tool-use shape: the request
//! carries the tool specs; a reply with `tool_use` blocks has its tools run
//! (container tools here, see [`tools`]; host tools as a `HostRequest` answered
//! by a `HostResponse`) and their `tool_result`s go back to the model; a reply
//! without tool calls ends the turn. Text is output to the user as it comes.
//! Per-turn limits on tool calls, model calls and tokens end a runaway loop.
//!
//! The decisions live in [`Runner`], a state machine (message in, messages
//! out) whose only IO is running container tools against a configurable
//! [`ToolContext`], so every protocol rule is unit-tested without pipes;
//! `main` only moves lines between it and stdio. The binary is synchronous
//! and std-only on purpose: it is linked statically into a `FROM scratch` image.
//!
//! Sessions (see [`session`]): a start with a session id resumes that
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

// The wire types are shared with the host by compiling the very same file;
// the runner does not use every item the host does.
#[allow(dead_code)]
#[path = "../../../src/messages/wire.rs"]
mod wire;

mod session;
mod tools;

use std::collections::VecDeque;
use std::io::{self, BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use session::{SessionError, Transcript};

use tools::{Dispatch, ToolContext};
use wire::{
    ChatMessage, ContentBlock, ErrorKind, HostResult, HostToRunner, ModelFailure, ModelRequest,
    ModelResult, Role, RunResult, RunStatus, RunnerToHost, StartRun, MAX_LINE_BYTES,
    PROTOCOL_VERSION,
};

/// Tokens the runner asks for per completion.
const MAX_TOKENS: u32 = 4096;

/// Memory files (`CLAUDE.md`) are read into the system prompt up to this size,
/// so a runaway file cannot blow the context window.
const MAX_MEMORY_BYTES: u64 = 64 * 1024;

/// Where the group's and the global memory live inside the container.
const MEMORY_FILES: [(&str, &str); 2] = [
    ("group memory", "/workspace/group/CLAUDE.md"),
    ("global memory", "/workspace/global/CLAUDE.md"),
];

/// Where a session's transcript lives, where compaction archives the full
/// one, and when to compact: a context of its own so tests use a temp dir.
#[derive(Debug, Clone, PartialEq)]
struct SessionConfig {
    dir: PathBuf,
    archive_dir: PathBuf,
    /// Compact when the conversation's approximate size exceeds this.
    compact_above_tokens: usize,
    /// Messages kept verbatim after the summary.
    keep_last: usize,
}

impl SessionConfig {
    /// The real container's mounts.
    fn container() -> Self {
        SessionConfig {
            dir: PathBuf::from("/workspace/session"),
            archive_dir: PathBuf::from("/workspace/group/conversations"),
            compact_above_tokens: 100_000,
            keep_last: 6,
        }
    }
}

/// The system prompt of the request that summarises a conversation.
const SUMMARY_SYSTEM: &str = "Summarise this conversation for your future self: \
     who said what that still matters, decisions, facts learned, files touched, \
     open tasks and promises. Be complete but brief; reply with the summary only.";

/// Opens the summary kept in a compacted transcript.
const SUMMARY_HEADING: &str = "Summary of the earlier conversation:\n";

/// A rendered block is cut to this many chars in a summary request.
const SUMMARY_BLOCK_CHARS: usize = 4000;

/// Exit code for a start line this runner cannot serve (protocol mismatch).
const EXIT_INCOMPATIBLE: u8 = 2;
/// Exit code when the host went away mid-turn or stdout broke.
const EXIT_BROKEN: u8 = 1;

// ---------------------------------------------------------------------------
// Pure decisions
// ---------------------------------------------------------------------------

/// A memory file's label and content, already read by the caller.
#[derive(Debug, Clone, PartialEq)]
struct Memory {
    label: String,
    text: String,
}

/// The system prompt for a run: who the assistant is, where it runs, how its
/// replies reach people, and the group's memory.
fn build_system_prompt(start: &StartRun, memories: &[Memory]) -> String {
    let scope = if start.is_main {
        "This is the main group: the owner's private control chat."
    } else {
        "This is a regular group chat, not the owner's main control chat."
    };
    let mut prompt = format!(
        "You are {name}, a personal assistant.\n\
         Group folder: {folder} (your working directory is /workspace/group).\n\
         {scope}\n\
         Timezone: {tz}.\n\
         Your replies are delivered as messages in a chat, so keep them concise.\n\
         Text wrapped in <internal>...</internal> is never shown to users; use it for \
         notes to yourself.\n\
         \n\
         Tools: bash (busybox shell in /workspace/group, no network), read_file, \
         write_file, edit_file, list, glob and grep work on files under /workspace and \
         /tmp. send_message sends a message before your reply ends; schedule_task, \
         list_tasks, pause_task, resume_task, cancel_task and update_task manage \
         scheduled tasks; web_fetch fetches a URL.{register}\n\
         \n\
         Memory: /workspace/group/CLAUDE.md is this group's memory and is read into \
         this prompt at every start. To remember something, edit it (edit_file or \
         write_file). {global}",
        name = start.assistant_name,
        folder = start.group_folder,
        tz = start.timezone,
        register = if start.is_main {
            " register_group registers a chat as a new group."
        } else {
            ""
        },
        global = if start.is_main {
            "/workspace/global/CLAUDE.md is shared by every group; edit it for what \
             all groups should know."
        } else {
            "/workspace/global/CLAUDE.md is shared memory and read-only here."
        },
    );
    for memory in memories.iter().filter(|m| !m.text.trim().is_empty()) {
        prompt.push_str(&format!(
            "\n\n<{label}>\n{text}\n</{label}>",
            label = memory.label.replace(' ', "_"),
            text = memory.text.trim_end()
        ));
    }
    prompt
}

/// The text of a reply: its text blocks joined, in order.
fn reply_text(content: &[ContentBlock]) -> String {
    content
        .iter()
        .filter_map(|block| match block {
            ContentBlock::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("")
}

fn user_text(prompt: &str) -> ContentBlock {
    ContentBlock::Text {
        text: prompt.to_string(),
    }
}

/// The conversation of one run, kept in memory: user and assistant messages
/// strictly alternating, starting with the user, as the Messages API demands.
#[derive(Debug, Clone, Default, PartialEq)]
struct Conversation {
    messages: Vec<ChatMessage>,
}

impl Conversation {
    /// The messages to send for a turn: everything so far plus `prompt`. The
    /// conversation itself is only replaced once the turn succeeds, so a
    /// failed turn leaves no trace.
    fn with_prompt(&self, prompt: &str) -> Vec<ChatMessage> {
        let mut messages = self.messages.clone();
        push_user(&mut messages, vec![user_text(prompt)]);
        messages
    }
}

/// Appends user content as a message of its own. It may follow another user
/// message (after an empty reply, or a turn cut short after tool results);
/// [`request_messages`] joins them, so what is stored is what was said.
fn push_user(messages: &mut Vec<ChatMessage>, content: Vec<ContentBlock>) {
    messages.push(ChatMessage {
        role: Role::User,
        content,
    });
}

/// The messages as a model request carries them: consecutive messages of the
/// same role joined into one, so roles alternate as the Messages API demands.
fn request_messages(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let mut joined: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    for message in messages {
        match joined.last_mut() {
            Some(last) if last.role == message.role => {
                last.content.extend(message.content.iter().cloned())
            }
            _ => joined.push(message.clone()),
        }
    }
    joined
}

/// A conversation as plain text, for the summary request: tool calls and
/// results become text, so the request needs no tool specs, and every block
/// is capped so one huge tool output cannot crowd out the rest.
fn render_for_summary(messages: &[ChatMessage]) -> String {
    let cap = |text: &str| -> String {
        if text.chars().count() > SUMMARY_BLOCK_CHARS {
            let cut: String = text.chars().take(SUMMARY_BLOCK_CHARS).collect();
            format!("{cut} [...]")
        } else {
            text.to_string()
        }
    };
    let mut out = String::new();
    for message in messages {
        let who = match message.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        for block in &message.content {
            let line = match block {
                ContentBlock::Text { text } => format!("[{who}] {}", cap(text)),
                ContentBlock::ToolUse { name, input, .. } => {
                    format!("[{who} called {name}] {}", cap(&input.to_string()))
                }
                ContentBlock::ToolResult {
                    content, is_error, ..
                } => {
                    let kind = if *is_error {
                        "tool error"
                    } else {
                        "tool result"
                    };
                    format!("[{kind}] {}", cap(content))
                }
            };
            out.push_str(&line);
            out.push_str("\n\n");
        }
    }
    out
}

/// Appends a reply. Empty text blocks are dropped and an empty reply adds no
/// message at all: the API refuses both.
fn push_assistant(messages: &mut Vec<ChatMessage>, reply: &[ContentBlock]) {
    let content: Vec<ContentBlock> = reply
        .iter()
        .filter(|block| !matches!(block, ContentBlock::Text { text } if text.is_empty()))
        .cloned()
        .collect();
    if !content.is_empty() {
        messages.push(ChatMessage {
            role: Role::Assistant,
            content,
        });
    }
}

/// Per-turn bounds that stop a runaway tool loop.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Limits {
    /// Tool calls in one turn; the next one is not run.
    tool_calls: u32,
    /// Completions in one turn.
    model_calls: u32,
    /// Input plus output tokens over all completions of one turn.
    tokens: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tool_calls: 30,
            model_calls: 40,
            tokens: 2_000_000,
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

/// What the IO loop must do after one input.
#[derive(Debug, Default, PartialEq)]
struct Step {
    /// Protocol lines to write, in order.
    send: Vec<RunnerToHost>,
    /// A diagnostic for stderr.
    note: Option<String>,
    /// Exit with this code once `send` is written.
    exit: Option<u8>,
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
/// container tools, against its [`ToolContext`] (a temp dir in tests).
#[derive(Debug)]
struct Runner {
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
    queued: VecDeque<String>,
    close_requested: bool,
    next_request_id: u64,
    /// The transcript uuid of the conversation's last committed entry: the
    /// anchor the host resumes at.
    last_assistant_id: Option<String>,
}

impl Runner {
    fn new(
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

    /// Opens the session's transcript and loads the conversation at the
    /// host's anchor. Only an anchor the transcript does not hold (or a
    /// session id that cannot name a transcript) is the host's problem;
    /// storage trouble is logged and the run goes on without persistence.
    fn open_session(&mut self) {
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
    fn record(&mut self, message: ChatMessage) -> String {
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

    fn take_request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    fn on_message(&mut self, message: HostToRunner) -> Step {
        let mut step = self.handle(message);
        if !self.notes.is_empty() {
            let mut notes = std::mem::take(&mut self.notes);
            notes.extend(step.note.take());
            step.note = Some(notes.join("\nagent-runner: "));
        }
        step
    }

    fn handle(&mut self, message: HostToRunner) -> Step {
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
                    self.queued.push_back(prompt);
                    Step::default()
                }
            },
            HostToRunner::ModelResponse { request_id, result } => match waiting {
                Some(Waiting::Model {
                    request_id: pending,
                }) if pending == request_id => self.on_model_result(result),
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
                }) if pending == request_id => self.on_host_result(tool_use_id, result),
                _ => Step::note(format!(
                    "ignoring host response {request_id}: {}",
                    self.waiting_for()
                )),
            },
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
    fn on_eof(&mut self) -> Step {
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
        };
        self.ask_model(turn, step);
    }

    /// Asks the model to summarise the conversation, as text and without
    /// tools; the turn for `prompt` starts when the answer is in.
    fn ask_for_summary(&mut self, prompt: String, step: &mut Step) {
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
    fn on_summary(&mut self, prompt: String, result: ModelResult) -> Step {
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

    fn on_model_result(&mut self, result: ModelResult) -> Step {
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
        // Text reaches the user as it comes, also between tool calls.
        let text = reply_text(&reply.content);
        if !text.is_empty() {
            step.send.push(RunnerToHost::Output { text });
        }
        push_assistant(&mut turn.messages, &reply.content);
        turn.pending = reply
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
        if turn.pending.is_empty() {
            self.succeed(turn, &mut step);
        } else if turn.model_calls >= self.limits.model_calls {
            let why = format!("{} model calls", self.limits.model_calls);
            self.stop_at_limit(turn, &why, &mut step);
        } else if turn.tokens >= self.limits.tokens {
            let why = format!("{} tokens", self.limits.tokens);
            self.stop_at_limit(turn, &why, &mut step);
        } else {
            self.run_tools(turn, &mut step);
        }
        step
    }

    fn on_host_result(&mut self, tool_use_id: String, result: HostResult) -> Step {
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
        self.run_tools(turn, &mut step);
        step
    }

    /// Runs the pending tool calls in order until one needs the host (then
    /// waits for its answer) or none is left (then asks the model again).
    fn run_tools(&mut self, mut turn: Turn, step: &mut Step) {
        while let Some(call) = turn.pending.pop_front() {
            if turn.tool_calls >= self.limits.tool_calls {
                turn.pending.push_front(call);
                let why = format!("{} tool calls", self.limits.tool_calls);
                self.stop_at_limit(turn, &why, step);
                return;
            }
            turn.tool_calls += 1;
            let output = match tools::dispatch(&call.name, &call.input) {
                Dispatch::Local => tools::run_local(&self.tools, &call.name, &call.input),
                Dispatch::Refused(output) => output,
                Dispatch::Host(action) => {
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
        if let Some(next) = self.queued.pop_front() {
            self.begin_turn(next, step);
        } else if self.close_requested {
            step.exit = Some(0);
        }
    }

    fn fail(&mut self, failure: ModelFailure, step: &mut Step) {
        // The failed turn is not committed: the host retries its prompt as a batch.
        let anchor = self
            .last_assistant_id
            .clone()
            .or_else(|| self.start.as_ref().and_then(|s| s.resume_at.clone()));
        step.send.push(RunnerToHost::Result(RunResult {
            status: RunStatus::Error,
            session_id: Some(self.session_id()),
            last_assistant_id: anchor,
            error: Some(failure.message),
            error_kind: Some(failure.kind),
        }));
    }
}

// ---------------------------------------------------------------------------
// IO
// ---------------------------------------------------------------------------

/// One read from stdin.
#[derive(Debug, PartialEq)]
enum LineRead {
    /// A complete line (without its newline) is in the buffer.
    Line,
    /// A line longer than the limit was read and thrown away whole.
    TooLong {
        bytes: usize,
    },
    Eof,
}

/// Reads one line of at most `max` bytes into `buf`. A longer line is
/// consumed to its end but never buffered, so a hostile or broken peer cannot
/// make the runner grow without bound.
fn read_line_bounded(
    input: &mut impl BufRead,
    max: usize,
    buf: &mut Vec<u8>,
) -> io::Result<LineRead> {
    buf.clear();
    let mut discarded = 0usize;
    let mut saw_any = false;
    loop {
        let available = match input.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            // A last line without a newline still counts.
            return Ok(match (saw_any, discarded) {
                (false, _) => LineRead::Eof,
                (true, 0) => LineRead::Line,
                (true, bytes) => LineRead::TooLong { bytes },
            });
        }
        saw_any = true;
        let newline = available.iter().position(|&b| b == b'\n');
        let chunk = &available[..newline.unwrap_or(available.len())];
        if discarded == 0 && buf.len() + chunk.len() <= max {
            buf.extend_from_slice(chunk);
        } else {
            discarded += buf.len() + chunk.len();
            buf.clear();
        }
        let used = chunk.len() + usize::from(newline.is_some());
        input.consume(used);
        if newline.is_some() {
            return Ok(if discarded == 0 {
                LineRead::Line
            } else {
                LineRead::TooLong { bytes: discarded }
            });
        }
    }
}

/// Parses one protocol line; `None` for a blank line, which is skipped quietly.
fn parse_line(line: &[u8]) -> Option<Result<HostToRunner, String>> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return None;
    }
    Some(serde_json::from_slice(trimmed).map_err(|e| e.to_string()))
}

fn write_message(out: &mut impl Write, message: &RunnerToHost) -> io::Result<()> {
    let line = wire::encode_line(message).map_err(io::Error::other)?;
    out.write_all(&line)?;
    // The host acts on every line as it comes: never leave one in a buffer.
    out.flush()
}

/// Drives `runner` from `input` to `output` until it exits; returns the exit code.
fn run(
    runner: &mut Runner,
    input: &mut impl BufRead,
    output: &mut impl Write,
    diag: &mut impl Write,
) -> u8 {
    let mut buf = Vec::new();
    loop {
        let step = match read_line_bounded(input, MAX_LINE_BYTES, &mut buf) {
            Ok(LineRead::Eof) => runner.on_eof(),
            Ok(LineRead::TooLong { bytes }) => Step::note(format!(
                "discarded a {bytes}-byte line: longer than {MAX_LINE_BYTES} bytes"
            )),
            Ok(LineRead::Line) => match parse_line(&buf) {
                None => Step::default(),
                Some(Ok(message)) => runner.on_message(message),
                Some(Err(error)) => {
                    Step::note(format!("skipped a line that does not parse: {error}"))
                }
            },
            Err(error) => {
                let _ = writeln!(diag, "agent-runner: reading stdin failed: {error}");
                return EXIT_BROKEN;
            }
        };
        if let Some(note) = &step.note {
            let _ = writeln!(diag, "agent-runner: {note}");
        }
        for message in &step.send {
            if let Err(error) = write_message(output, message) {
                let _ = writeln!(diag, "agent-runner: writing stdout failed: {error}");
                return EXIT_BROKEN;
            }
        }
        if let Some(code) = step.exit {
            return code;
        }
    }
}

/// A new session id: 16 random bytes as hex, or time and pid when the
/// kernel's random source is not readable.
fn fresh_session_id() -> String {
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

/// Reads the memory files that exist, each capped at [`MAX_MEMORY_BYTES`].
fn read_memories() -> Vec<Memory> {
    MEMORY_FILES
        .iter()
        .filter_map(|(label, path)| {
            let file = std::fs::File::open(path).ok()?;
            let mut bytes = Vec::new();
            file.take(MAX_MEMORY_BYTES).read_to_end(&mut bytes).ok()?;
            Some(Memory {
                label: label.to_string(),
                text: String::from_utf8_lossy(&bytes).into_owned(),
            })
        })
        .collect()
}

fn main() -> ExitCode {
    let mut runner = Runner::new(
        fresh_session_id(),
        read_memories(),
        ToolContext::container(),
        Limits::default(),
        SessionConfig::container(),
    );
    let stdin = io::stdin();
    let stdout = io::stdout();
    let stderr = io::stderr();
    let code = run(
        &mut runner,
        &mut stdin.lock(),
        &mut stdout.lock(),
        &mut stderr.lock(),
    );
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tools::test_support::TempDir;
    use wire::ModelReply;

    fn start(prompt: &str) -> StartRun {
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
        }
    }

    fn ok(id: &str, text: &str) -> ModelResult {
        ModelResult::Ok(ModelReply {
            id: id.into(),
            content: vec![ContentBlock::Text { text: text.into() }],
            stop_reason: Some("end_turn".into()),
            input_tokens: 1,
            output_tokens: 1,
        })
    }

    fn response(request_id: u64, result: ModelResult) -> HostToRunner {
        HostToRunner::ModelResponse { request_id, result }
    }

    fn text(t: &str) -> ContentBlock {
        ContentBlock::Text { text: t.into() }
    }

    /// A runner whose session dir is a temp dir that lives as long as it.
    struct TestRunner {
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

    fn sessions_in(dir: &TempDir) -> SessionConfig {
        SessionConfig {
            dir: dir.0.join("session"),
            archive_dir: dir.0.join("group/conversations"),
            compact_above_tokens: 100_000,
            keep_last: 6,
        }
    }

    fn runner() -> TestRunner {
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

    fn is_transcript_uuid(id: Option<&str>) -> bool {
        id.is_some_and(|id| id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()))
    }

    fn request_of(message: &RunnerToHost) -> (u64, &ModelRequest) {
        match message {
            RunnerToHost::ModelRequest {
                request_id,
                request,
            } => (*request_id, request),
            other => panic!("expected a model request, got {other:?}"),
        }
    }

    fn result_of(message: &RunnerToHost) -> &RunResult {
        match message {
            RunnerToHost::Result(result) => result,
            other => panic!("expected a result, got {other:?}"),
        }
    }

    #[test]
    fn system_prompt_names_assistant_folder_scope_timezone_and_internal() {
        let mut s = start("hi");
        let prompt = build_system_prompt(&s, &[]);
        assert!(prompt.contains("You are Talon"));
        assert!(prompt.contains("family"));
        assert!(prompt.contains("Europe/Berlin"));
        assert!(prompt.contains("not the owner's main"));
        assert!(prompt.contains("concise"));
        assert!(prompt.contains("<internal>...</internal>"));
        s.is_main = true;
        assert!(build_system_prompt(&s, &[]).contains("This is the main group"));
    }

    #[test]
    fn system_prompt_includes_non_empty_memory_only() {
        let memories = vec![
            Memory {
                label: "group memory".into(),
                text: "Mum's birthday is 3 May.\n".into(),
            },
            Memory {
                label: "global memory".into(),
                text: "  \n".into(),
            },
        ];
        let prompt = build_system_prompt(&start("hi"), &memories);
        assert!(prompt.contains("<group_memory>\nMum's birthday is 3 May.\n</group_memory>"));
        assert!(!prompt.contains("global_memory"));
    }

    #[test]
    fn reply_text_joins_blocks_in_order() {
        assert_eq!(reply_text(&[text("a"), text(""), text("b")]), "ab");
        assert_eq!(reply_text(&[]), "");
    }

    #[test]
    fn requests_join_what_the_conversation_stores_apart_after_an_empty_reply() {
        let mut conversation = Conversation::default();
        conversation.messages = conversation.with_prompt("one");
        push_assistant(&mut conversation.messages, &[text("first")]);
        conversation.messages = conversation.with_prompt("two");
        push_assistant(&mut conversation.messages, &[text("")]);
        let messages = conversation.with_prompt("three");
        // Stored as said: two user messages in a row.
        let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            vec![Role::User, Role::Assistant, Role::User, Role::User]
        );
        // Sent joined, so roles alternate.
        let sent = request_messages(&messages);
        let roles: Vec<Role> = sent.iter().map(|m| m.role).collect();
        assert_eq!(roles, vec![Role::User, Role::Assistant, Role::User]);
        assert_eq!(sent[2].content, vec![text("two"), text("three")]);
        // Building a request does not change the conversation.
        assert_eq!(conversation.messages.len(), 3);
    }

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
    fn empty_reply_sends_no_output_but_a_result() {
        let mut r = runner();
        r.on_message(HostToRunner::Start(start("ping")));
        let step = r.on_message(response(1, ok("msg_1", "")));
        assert_eq!(step.send.len(), 1);
        assert_eq!(result_of(&step.send[0]).status, RunStatus::Success);
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

    #[test]
    fn bounded_reader_discards_long_lines_whole() {
        let data = b"short\nthis line is too long\nok\nlast-without-newline";
        // A tiny BufReader capacity forces the long line across several fills.
        let mut input = io::BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line_bounded(&mut input, 8, &mut buf).unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"short");
        assert_eq!(
            read_line_bounded(&mut input, 8, &mut buf).unwrap(),
            LineRead::TooLong { bytes: 21 }
        );
        assert_eq!(
            read_line_bounded(&mut input, 8, &mut buf).unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"ok");
        assert_eq!(
            read_line_bounded(&mut input, 8, &mut buf).unwrap(),
            LineRead::TooLong { bytes: 20 }
        );
        assert_eq!(
            read_line_bounded(&mut input, 8, &mut buf).unwrap(),
            LineRead::Eof
        );
    }

    #[test]
    fn bounded_reader_accepts_a_line_of_exactly_the_limit() {
        let mut input = io::BufReader::with_capacity(3, &b"12345678\n"[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line_bounded(&mut input, 8, &mut buf).unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"12345678");
    }

    fn line(message: &HostToRunner) -> String {
        String::from_utf8(wire::encode_line(message).unwrap()).unwrap()
    }

    fn decode(output: &[u8]) -> Vec<RunnerToHost> {
        output
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn run_skips_garbage_and_blank_lines_and_exits_on_close() {
        let input = format!(
            "not json\n\n{{\"type\":\"bogus\"}}\n{}{}{}",
            line(&HostToRunner::Start(start("ping"))),
            line(&response(1, ok("msg_1", "pong"))),
            line(&HostToRunner::Close),
        );
        let (mut out, mut diag) = (Vec::new(), Vec::new());
        let code = run(&mut runner(), &mut input.as_bytes(), &mut out, &mut diag);
        assert_eq!(code, 0);
        let sent = decode(&out);
        assert_eq!(sent.len(), 3);
        assert_eq!(request_of(&sent[0]).0, 1);
        assert_eq!(
            sent[1],
            RunnerToHost::Output {
                text: "pong".into()
            }
        );
        assert_eq!(result_of(&sent[2]).status, RunStatus::Success);
        let diag = String::from_utf8(diag).unwrap();
        assert_eq!(diag.matches("does not parse").count(), 2, "{diag}");
    }

    #[test]
    fn run_exits_0_on_eof_after_a_turn() {
        let input = format!(
            "{}{}",
            line(&HostToRunner::Start(start("ping"))),
            line(&response(1, ok("msg_1", "pong")))
        );
        let (mut out, mut diag) = (Vec::new(), Vec::new());
        assert_eq!(
            run(&mut runner(), &mut input.as_bytes(), &mut out, &mut diag),
            0
        );
        assert_eq!(decode(&out).len(), 3);
    }

    #[test]
    fn fresh_session_ids_are_hex_and_differ() {
        let a = fresh_session_id();
        let b = fresh_session_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    // --- the tool loop ---------------------------------------------------

    fn tool_runner(dir: &TempDir, limits: Limits) -> Runner {
        let ctx = dir.context();
        std::fs::create_dir_all(&ctx.workdir).unwrap();
        Runner::new("fresh".into(), Vec::new(), ctx, limits, sessions_in(dir))
    }

    fn tool_use(id: &str, name: &str, input: serde_json::Value) -> ContentBlock {
        ContentBlock::ToolUse {
            id: id.into(),
            name: name.into(),
            input,
        }
    }

    fn reply_with(id: &str, content: Vec<ContentBlock>) -> ModelResult {
        ModelResult::Ok(ModelReply {
            id: id.into(),
            content,
            stop_reason: Some("tool_use".into()),
            input_tokens: 10,
            output_tokens: 5,
        })
    }

    /// The tool results of the last user message of a model request.
    fn tool_results(request: &ModelRequest) -> Vec<(String, String, bool)> {
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

    // --- sessions ----------------------------------------------------------

    fn resume_start(prompt: &str, session_id: &str, resume_at: Option<&str>) -> StartRun {
        let mut s = start(prompt);
        s.session_id = Some(session_id.into());
        s.resume_at = resume_at.map(str::to_string);
        s
    }

    fn texts_of(messages: &[ChatMessage]) -> Vec<String> {
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
    fn turn(r: &mut Runner, first: Option<StartRun>, prompt: &str, answer: &str) -> String {
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
