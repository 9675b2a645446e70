//! The Claude Code runtime: the runner stays PID 1 (protocol, reaping, not
//! dumpable) and drives the real `claude` CLI over stream-json.
//!
//! Threads, each doing one thing: the host's lines (API and host answers go
//! straight to the connection waiting for them), Claude Code's stdout
//! (events for the [`driver::Driver`]), its stderr (kept for errors, copied
//! to ours for the run log), the loopback API listener ([`http`]), the MCP
//! listener ([`mcp`]) and a heartbeat while a turn runs. The main loop
//! applies the driver's actions. Every line to the host goes through one
//! lock in [`Shared::emit`], so lines never interleave.

pub mod driver;
pub mod http;
pub mod launch;
pub mod mcp;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::pid1;
use crate::stdio::{parse_line, read_line_bounded, LineRead};
use crate::wire::{
    self, HostResult, HostToRunner, RunResult, RunStatus, RunnerToHost, StartRun, MAX_LINE_BYTES,
};
use driver::{Action, Driver};

/// The heartbeat when the host asks for none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// How much of Claude Code's stderr is kept for the error of a failed turn.
const STDERR_KEEP: usize = 16 * 1024;
/// Heartbeats stop when Claude Code has neither written an event nor made
/// an API request for this long: a hung CLI then meets the host's hard
/// timeout instead of being kept alive forever.
const STALL_LIMIT: Duration = Duration::from_secs(15 * 60);

/// A piece of the host's answer to one API request.
#[derive(Debug)]
pub enum ApiPart {
    Head {
        status: u16,
        headers: Vec<(String, String)>,
    },
    Chunk(String),
    End(Option<String>),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the threads share: the one writer to the host and the requests
/// waiting for an answer.
pub struct Shared {
    out: Mutex<Box<dyn Write + Send>>,
    broken: AtomicBool,
    diag: Mutex<Box<dyn Write + Send>>,
    next_id: AtomicU64,
    api: Mutex<HashMap<u64, mpsc::Sender<ApiPart>>>,
    host: Mutex<HashMap<u64, mpsc::Sender<HostResult>>>,
    /// The last sign of life from Claude Code (an event or an API request).
    last_activity: Mutex<Instant>,
}

impl Shared {
    fn new(out: Box<dyn Write + Send>, diag: Box<dyn Write + Send>) -> Shared {
        Shared {
            out: Mutex::new(out),
            broken: AtomicBool::new(false),
            diag: Mutex::new(diag),
            next_id: AtomicU64::new(1),
            api: Mutex::new(HashMap::new()),
            host: Mutex::new(HashMap::new()),
            last_activity: Mutex::new(Instant::now()),
        }
    }

    pub fn touch(&self) {
        *lock(&self.last_activity) = Instant::now();
    }

    fn stalled(&self) -> bool {
        lock(&self.last_activity).elapsed() > STALL_LIMIT
    }

    /// Writes one protocol line; `false` once stdout is broken.
    pub fn emit(&self, message: &RunnerToHost) -> bool {
        if self.broken.load(Ordering::SeqCst) {
            return false;
        }
        let Ok(line) = wire::encode_line(message) else {
            return false;
        };
        let mut out = lock(&self.out);
        let written = out.write_all(&line).and_then(|()| out.flush());
        if written.is_err() {
            self.broken.store(true, Ordering::SeqCst);
        }
        written.is_ok()
    }

    pub fn note(&self, text: &str) {
        let _ = writeln!(lock(&self.diag), "agent-runner: {text}");
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    pub fn register_api(&self, tx: mpsc::Sender<ApiPart>) -> u64 {
        let id = self.id();
        lock(&self.api).insert(id, tx);
        id
    }

    pub fn forget_api(&self, id: u64) {
        lock(&self.api).remove(&id);
    }

    pub fn register_host(&self, tx: mpsc::Sender<HostResult>) -> u64 {
        let id = self.id();
        lock(&self.host).insert(id, tx);
        id
    }

    pub fn forget_host(&self, id: u64) {
        lock(&self.host).remove(&id);
    }

    /// Hands an answer to the connection waiting for it; `false` when none is.
    fn deliver(&self, message: HostToRunner) -> Result<bool, Box<HostToRunner>> {
        let (id, part) = match message {
            HostToRunner::ApiResponseHead {
                request_id,
                status,
                headers,
            } => (request_id, ApiPart::Head { status, headers }),
            HostToRunner::ApiResponseChunk { request_id, data } => {
                (request_id, ApiPart::Chunk(data))
            }
            HostToRunner::ApiResponseEnd { request_id, error } => (request_id, ApiPart::End(error)),
            HostToRunner::HostResponse { request_id, result } => {
                let waiting = lock(&self.host).get(&request_id).cloned();
                return Ok(waiting.is_some_and(|tx| tx.send(result).is_ok()));
            }
            other => return Err(Box::new(other)),
        };
        let waiting = lock(&self.api).get(&id).cloned();
        Ok(waiting.is_some_and(|tx| tx.send(part).is_ok()))
    }

    /// The host is gone: every waiting connection gives up.
    fn drop_waiting(&self) {
        lock(&self.api).clear();
        lock(&self.host).clear();
    }
}

/// What the main loop waits on.
enum Event {
    Host(HostToRunner),
    HostGone,
    Claude(Value),
    ClaudeDone,
}

fn failed_start(shared: &Shared, why: String) -> u8 {
    shared.note(&why);
    shared.emit(&RunnerToHost::Result(RunResult {
        status: RunStatus::Error,
        session_id: None,
        last_assistant_id: None,
        error: Some(why),
        error_kind: None,
    }));
    crate::EXIT_BROKEN
}

/// Runs the whole Claude Code run that `start` begins; returns the exit code.
pub fn run(
    start: StartRun,
    input: Box<dyn BufRead + Send>,
    output: Box<dyn Write + Send>,
    diag: Box<dyn Write + Send>,
) -> u8 {
    let shared = Arc::new(Shared::new(output, diag));
    let layout = launch::Layout::from_env();
    let listeners = TcpListener::bind(("127.0.0.1", 0))
        .and_then(|api| Ok((api, TcpListener::bind(("127.0.0.1", 0))?)));
    let (api, mcp_listener) = match listeners {
        Ok(pair) => pair,
        Err(error) => {
            return failed_start(
                &shared,
                format!("cannot open the loopback listener for Claude Code: {error}"),
            )
        }
    };
    let (Ok(api_port), Ok(mcp_port)) = (
        api.local_addr().map(|a| a.port()),
        mcp_listener.local_addr().map(|a| a.port()),
    ) else {
        return failed_start(&shared, "cannot read the loopback listeners' ports".into());
    };
    {
        let shared = shared.clone();
        let _ = std::thread::Builder::new()
            .name("api-listener".into())
            .spawn(move || http::serve(api, shared));
    }
    {
        let shared = shared.clone();
        let _ = std::thread::Builder::new()
            .name("mcp-listener".into())
            .spawn(move || mcp::serve(mcp_listener, shared));
    }

    let global_memory = launch::read_global_memory(std::path::Path::new(&layout.global_memory));
    let mut command = Command::new(&layout.claude);
    command
        .args(launch::args(&start, &layout, mcp_port, &global_memory))
        .current_dir(&layout.workdir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in launch::REMOVED_ENV {
        command.env_remove(name);
    }
    command.envs(launch::env(&layout, api_port));
    let (mut child, _own) = match pid1::spawn_own(&mut command) {
        Ok(spawned) => spawned,
        Err(error) => {
            return failed_start(
                &shared,
                format!("cannot start Claude Code ({}): {error}", layout.claude),
            )
        }
    };
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        return failed_start(&shared, "Claude Code's pipes were not set up".into());
    };

    let (events, inbox) = mpsc::channel();
    let stderr_tail = Arc::new(Mutex::new(String::new()));
    spawn_claude_readers(stdout, stderr, &events, &shared, &stderr_tail);
    spawn_host_reader(input, &events, &shared);
    let busy = Arc::new(AtomicBool::new(true));
    spawn_heartbeat(&start, &shared, &busy);

    let (mut driver, first) = Driver::start(&start);
    let mut stdin = Some(stdin);
    let mut pending = first;
    loop {
        for action in std::mem::take(&mut pending) {
            match action {
                Action::ToClaude(line) => write_to_claude(&mut stdin, &line, &shared),
                Action::CloseClaude => drop(stdin.take()),
                Action::Emit(message) => {
                    shared.emit(&message);
                }
                Action::Exit(code) => return code,
            }
        }
        busy.store(driver.busy(), Ordering::SeqCst);
        let Ok(event) = inbox.recv() else {
            return crate::EXIT_BROKEN;
        };
        pending = match event {
            Event::Host(HostToRunner::FollowUp { prompt }) => driver.on_follow_up(prompt),
            Event::Host(HostToRunner::Close) => driver.on_close(),
            Event::Host(other) => {
                shared.note(&format!("ignoring {}", tag_of(&other)));
                Vec::new()
            }
            Event::HostGone => {
                shared.drop_waiting();
                driver.on_host_gone()
            }
            Event::Claude(value) => driver.on_event(&value),
            Event::ClaudeDone => {
                drop(stdin.take());
                let code = child.wait().ok().and_then(|status| status.code());
                let tail = lock(&stderr_tail).clone();
                driver.on_exit(code, &tail)
            }
        };
    }
}

fn tag_of(message: &HostToRunner) -> &'static str {
    match message {
        HostToRunner::Start(_) => "a second start line",
        HostToRunner::ModelResponse { .. } => "a model response (this runtime asks for none)",
        _ => "an unexpected line",
    }
}

fn write_to_claude(stdin: &mut Option<ChildStdin>, line: &str, shared: &Shared) {
    let Some(pipe) = stdin.as_mut() else {
        shared.note("Claude Code's stdin is closed; a prompt was not passed on");
        return;
    };
    let written = pipe
        .write_all(line.as_bytes())
        .and_then(|()| pipe.write_all(b"\n"))
        .and_then(|()| pipe.flush());
    if let Err(error) = written {
        // Its exit (and the turn's failure) follows from the stdout reader.
        shared.note(&format!("writing to Claude Code failed: {error}"));
        stdin.take();
    }
}

fn spawn_claude_readers(
    stdout: impl Read + Send + 'static,
    stderr: impl Read + Send + 'static,
    events: &mpsc::Sender<Event>,
    shared: &Arc<Shared>,
    tail: &Arc<Mutex<String>>,
) {
    let tx = events.clone();
    let diag = shared.clone();
    let _ = std::thread::Builder::new()
        .name("claude-stdout".into())
        .spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                match read_line_bounded(&mut reader, MAX_LINE_BYTES, &mut buf) {
                    Ok(LineRead::Line) => match serde_json::from_slice::<Value>(&buf) {
                        Ok(value) => {
                            diag.touch();
                            if tx.send(Event::Claude(value)).is_err() {
                                return;
                            }
                        }
                        Err(_) if buf.trim_ascii().is_empty() => {}
                        Err(error) => diag.note(&format!(
                            "Claude Code wrote a line that is not JSON ({error})"
                        )),
                    },
                    Ok(LineRead::TooLong { bytes }) => {
                        diag.note(&format!("Claude Code wrote a {bytes}-byte line; skipped"))
                    }
                    Ok(LineRead::Eof) | Err(_) => break,
                }
            }
            let _ = tx.send(Event::ClaudeDone);
        });
    let diag = shared.clone();
    let tail = tail.clone();
    let _ = std::thread::Builder::new()
        .name("claude-stderr".into())
        .spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                let _ = write!(lock(&diag.diag), "claude: {line}");
                let mut kept = lock(&tail);
                kept.push_str(&line);
                if kept.len() > STDERR_KEEP {
                    let mut cut = kept.len() - STDERR_KEEP;
                    while !kept.is_char_boundary(cut) {
                        cut += 1;
                    }
                    kept.drain(..cut);
                }
                line.clear();
            }
        });
}

fn spawn_host_reader(
    mut input: Box<dyn BufRead + Send>,
    events: &mpsc::Sender<Event>,
    shared: &Arc<Shared>,
) {
    let tx = events.clone();
    let shared = shared.clone();
    let _ = std::thread::Builder::new()
        .name("host-reader".into())
        .spawn(move || {
            let mut buf = Vec::new();
            loop {
                match read_line_bounded(&mut input, MAX_LINE_BYTES, &mut buf) {
                    Ok(LineRead::Line) => match parse_line(&buf) {
                        None => {}
                        Some(Ok(message)) => match shared.deliver(message) {
                            Ok(true) => {}
                            Ok(false) => shared.note("an answer nobody waits for; dropped"),
                            Err(message) => {
                                if tx.send(Event::Host(*message)).is_err() {
                                    return;
                                }
                            }
                        },
                        Some(Err(error)) => {
                            shared.note(&format!("a host line does not parse: {error}"))
                        }
                    },
                    Ok(LineRead::TooLong { bytes }) => {
                        shared.note(&format!("a {bytes}-byte host line was too long; skipped"))
                    }
                    Ok(LineRead::Eof) | Err(_) => break,
                }
            }
            let _ = tx.send(Event::HostGone);
        });
}

fn spawn_heartbeat(start: &StartRun, shared: &Arc<Shared>, busy: &Arc<AtomicBool>) {
    let every = start
        .heartbeat_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_HEARTBEAT)
        .max(Duration::from_millis(100));
    let shared = shared.clone();
    let busy = busy.clone();
    let _ = std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            if busy.load(Ordering::SeqCst)
                && !shared.stalled()
                && !shared.emit(&RunnerToHost::Progress {
                    note: "Claude Code is working".into(),
                })
            {
                return;
            }
        });
}
