//! The agent runner: the process that runs inside talon's container.
//!
//! It speaks the host ↔ container protocol (JSON lines on stdin/stdout) and
//! holds the conversation of one run. It never calls a model itself: it asks
//! the host with a `ModelRequest` and waits for the matching `ModelResponse`,
//! so no credential and no network is ever needed inside the container.
//!
//! The decisions live in [`runner::Runner`], a state machine (message in,
//! messages out); [`stdio`] only moves lines between it and the pipes. The
//! binary is synchronous and std-only on purpose: it is linked statically
//! into a `FROM scratch` image.
//!
//! Modules: [`runner`] (the turn and tool loop), [`conversation`] (messages
//! as the model sees them), [`prompt`] (the system prompt and memory files),
//! [`session`] (the transcript on disk), [`tools`] (the agent's tools),
//! [`stdio`] (the IO loop), [`pid1`] (not dumpable, reaping orphans).

// The wire types are shared with the host by compiling the very same file;
// the runner does not use every item the host does.
#[allow(dead_code)]
#[path = "../../../src/messages/wire.rs"]
mod wire;

mod claude;
mod conversation;
mod pid1;
mod prompt;
mod runner;
mod session;
mod stdio;
mod tools;

use std::io::{self, BufReader};
use std::process::ExitCode;

use runner::{fresh_session_id, Limits, Runner, SessionConfig};
use tools::ToolContext;

/// Exit code for a start line this runner cannot serve (protocol mismatch).
const EXIT_INCOMPATIBLE: u8 = 2;
/// Exit code when the host went away mid-turn or stdout broke.
const EXIT_BROKEN: u8 = 1;

fn main() -> ExitCode {
    // Claude Code starts talon's MCP server as `agent-runner mcp-bridge <port>`.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("mcp-bridge") {
        return ExitCode::from(claude::mcp::bridge(
            args.get(2).map(String::as_str).unwrap_or_default(),
        ));
    }
    // First, before anything is read or spawned: the tools run as our uid.
    if let Err(error) = pid1::forbid_dumping() {
        eprintln!("agent-runner: prctl(PR_SET_DUMPABLE, 0) failed, going on dumpable: {error}");
    }
    // Orphans are reparented to PID 1 only; elsewhere (tests, a debug run)
    // there is nothing to reap.
    if std::process::id() == 1 {
        if let Err(error) = pid1::start_reaper() {
            eprintln!("agent-runner: cannot start the orphan reaper: {error}");
        }
    }
    // The start line says which runtime serves this run.
    let mut input = BufReader::with_capacity(64 * 1024, io::stdin());
    let mut first = Vec::new();
    let read = stdio::read_line_bounded(&mut input, wire::MAX_LINE_BYTES, &mut first);
    if let Ok(stdio::LineRead::Line) = read {
        if let Some(Ok(wire::HostToRunner::Start(start))) = stdio::parse_line(&first) {
            if start.runtime == wire::AgentRuntime::ClaudeCode
                && start.protocol == wire::PROTOCOL_VERSION
            {
                return ExitCode::from(claude::run(
                    start,
                    Box::new(input),
                    Box::new(io::stdout()),
                    Box::new(io::stderr()),
                ));
            }
        }
    }
    let mut runner = Runner::new(
        fresh_session_id(),
        prompt::read_memories(),
        ToolContext::container(),
        Limits::default(),
        SessionConfig::container(),
    );
    let stdout = io::stdout();
    let stderr = io::stderr();
    let code = stdio::run_after(
        &mut runner,
        Some((read, first)),
        &mut input,
        &mut stdout.lock(),
        &mut stderr.lock(),
    );
    ExitCode::from(code)
}
