//! The agent runner: the process that runs inside talon's container.
//!
//! It speaks the host ↔ container protocol (JSON lines on stdin/stdout) and
//! holds the conversation of one run. It never calls a model itself: it asks
//! the host with a `ModelRequest` and waits for the matching `ModelResponse`,
//! so no credential and no network is ever needed inside the container.
//!
//! The decisions live in [`Runner`], a sans-IO state machine (message in,
//! messages out), so every protocol rule is unit-tested without pipes; `main`
//! only moves lines between it and stdio. The binary is synchronous and
//! std-only on purpose: it is linked statically into a `FROM scratch` image.

// The wire types are shared with the host by compiling the very same file;
// the runner does not use every item the host does.
#[allow(dead_code)]
#[path = "../../../src/messages/wire.rs"]
mod wire;

use std::collections::VecDeque;
use std::io::{self, BufRead, Read, Write};
use std::process::ExitCode;

use wire::{
    ChatMessage, ContentBlock, ErrorKind, HostToRunner, ModelFailure, ModelReply, ModelRequest,
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
         notes to yourself.",
        name = start.assistant_name,
        folder = start.group_folder,
        tz = start.timezone,
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
        .map(|block| match block {
            ContentBlock::Text { text } => text.as_str(),
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
    /// conversation itself is only changed once the turn succeeds, so a failed
    /// turn leaves no trace.
    fn with_prompt(&self, prompt: &str) -> Vec<ChatMessage> {
        let mut messages = self.messages.clone();
        push_user(&mut messages, prompt);
        messages
    }

    /// Records a successful turn. A reply without text adds no assistant
    /// message (the API refuses empty ones); the next prompt then joins this
    /// user message, which keeps the alternation.
    fn commit(&mut self, prompt: &str, reply: &[ContentBlock]) {
        push_user(&mut self.messages, prompt);
        let content: Vec<ContentBlock> = reply
            .iter()
            .filter(|block| match block {
                ContentBlock::Text { text } => !text.is_empty(),
            })
            .cloned()
            .collect();
        if !content.is_empty() {
            self.messages.push(ChatMessage {
                role: Role::Assistant,
                content,
            });
        }
    }
}

fn push_user(messages: &mut Vec<ChatMessage>, prompt: &str) {
    match messages.last_mut() {
        Some(last) if last.role == Role::User => last.content.push(user_text(prompt)),
        _ => messages.push(ChatMessage {
            role: Role::User,
            content: vec![user_text(prompt)],
        }),
    }
}

/// Where the run stands.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// No start line yet.
    AwaitingStart,
    /// Between turns: waiting for a follow-up or the close.
    Idle,
    /// A turn is running: waiting for the model response with this id.
    AwaitingModel { request_id: u64, prompt: String },
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
/// lines to write and whether to exit out. No IO happens here.
#[derive(Debug)]
struct Runner {
    phase: Phase,
    /// Used when the start line brings no session id.
    fresh_session_id: String,
    memories: Vec<Memory>,
    start: Option<StartRun>,
    system: String,
    conversation: Conversation,
    /// Follow-ups that arrived while a turn was running.
    queued: VecDeque<String>,
    close_requested: bool,
    next_request_id: u64,
    last_assistant_id: Option<String>,
}

impl Runner {
    fn new(fresh_session_id: String, memories: Vec<Memory>) -> Self {
        Runner {
            phase: Phase::AwaitingStart,
            fresh_session_id,
            memories,
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

    fn on_message(&mut self, message: HostToRunner) -> Step {
        match (&self.phase, message) {
            (Phase::AwaitingStart, HostToRunner::Start(start)) => self.on_start(start),
            (Phase::AwaitingStart, HostToRunner::Close) => Step::exit(0),
            (Phase::AwaitingStart, other) => Step::note(format!(
                "ignoring {} before the start line",
                kind_of(&other)
            )),
            (_, HostToRunner::Start(_)) => Step::note("ignoring a second start line"),
            (Phase::Idle, HostToRunner::FollowUp { prompt }) => {
                let mut step = Step::default();
                step.send.push(self.begin_turn(prompt));
                step
            }
            (Phase::Idle, HostToRunner::Close) => Step::exit(0),
            (Phase::Idle, HostToRunner::ModelResponse { request_id, .. }) => Step::note(format!(
                "ignoring model response {request_id}: no request is pending"
            )),
            (Phase::AwaitingModel { .. }, HostToRunner::FollowUp { prompt }) => {
                self.queued.push_back(prompt);
                Step::default()
            }
            (Phase::AwaitingModel { .. }, HostToRunner::Close) => {
                self.close_requested = true;
                Step::default()
            }
            (
                Phase::AwaitingModel {
                    request_id: pending,
                    ..
                },
                HostToRunner::ModelResponse { request_id, result },
            ) => {
                if request_id == *pending {
                    self.finish_turn(result)
                } else {
                    Step::note(format!(
                        "ignoring model response {request_id}: waiting for {pending}"
                    ))
                }
            }
        }
    }

    /// Stdin closed: the host is done with this run.
    fn on_eof(&mut self) -> Step {
        match self.phase {
            Phase::AwaitingStart | Phase::Idle => Step::exit(0),
            Phase::AwaitingModel { request_id, .. } => Step {
                note: Some(format!(
                    "stdin closed while waiting for model response {request_id}; giving up the turn"
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
        let mut step = Step::default();
        step.send.push(self.begin_turn(prompt));
        step
    }

    fn begin_turn(&mut self, prompt: String) -> RunnerToHost {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let request = ModelRequest {
            system: self.system.clone(),
            messages: self.conversation.with_prompt(&prompt),
            max_tokens: MAX_TOKENS,
        };
        self.phase = Phase::AwaitingModel { request_id, prompt };
        RunnerToHost::ModelRequest {
            request_id,
            request,
        }
    }

    fn finish_turn(&mut self, result: ModelResult) -> Step {
        let prompt = match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::AwaitingModel { prompt, .. } => prompt,
            // Only called while awaiting a model response.
            _ => String::new(),
        };
        let mut step = Step::default();
        match result {
            ModelResult::Ok(reply) => self.succeed(&prompt, reply, &mut step),
            ModelResult::Error(failure) => self.fail(failure, &mut step),
        }
        // Follow-ups the host already handed over are answered before a close
        // is honoured: the host counts them as delivered to this container.
        if let Some(next) = self.queued.pop_front() {
            step.send.push(self.begin_turn(next));
        } else if self.close_requested {
            step.exit = Some(0);
        }
        step
    }

    fn succeed(&mut self, prompt: &str, reply: ModelReply, step: &mut Step) {
        let text = reply_text(&reply.content);
        if !text.is_empty() {
            step.send.push(RunnerToHost::Output { text });
        }
        self.conversation.commit(prompt, &reply.content);
        self.last_assistant_id = Some(reply.id.clone());
        step.send.push(RunnerToHost::Result(RunResult {
            status: RunStatus::Success,
            session_id: Some(self.session_id()),
            last_assistant_id: Some(reply.id),
            error: None,
            error_kind: None,
        }));
    }

    fn fail(&mut self, failure: ModelFailure, step: &mut Step) {
        // The failed prompt is not committed: the host retries it as a batch.
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

fn kind_of(message: &HostToRunner) -> &'static str {
    match message {
        HostToRunner::Start(_) => "a start line",
        HostToRunner::FollowUp { .. } => "a follow-up",
        HostToRunner::Close => "a close",
        HostToRunner::ModelResponse { .. } => "a model response",
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
    let mut runner = Runner::new(fresh_session_id(), read_memories());
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

    fn runner() -> Runner {
        Runner::new("fresh".into(), Vec::new())
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
    fn conversation_alternates_and_merges_after_an_empty_reply() {
        let mut conversation = Conversation::default();
        conversation.commit("one", &[text("first")]);
        conversation.commit("two", &[text("")]);
        let messages = conversation.with_prompt("three");
        let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, vec![Role::User, Role::Assistant, Role::User]);
        assert_eq!(messages[2].content, vec![text("two"), text("three")]);
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
        assert_eq!(
            result_of(&step.send[1]),
            &RunResult {
                status: RunStatus::Success,
                session_id: Some("fresh".into()),
                last_assistant_id: Some("msg_1".into()),
                error: None,
                error_kind: None,
            }
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
            Phase::AwaitingModel { request_id: 1, .. }
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
}
