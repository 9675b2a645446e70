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

mod conversation;
mod pid1;
mod prompt;
mod runner;
mod session;
mod stdio;
mod tools;

use std::io;
use std::process::ExitCode;

use runner::{fresh_session_id, Limits, Runner, SessionConfig};
use tools::ToolContext;

/// Exit code for a start line this runner cannot serve (protocol mismatch).
const EXIT_INCOMPATIBLE: u8 = 2;
/// Exit code when the host went away mid-turn or stdout broke.
const EXIT_BROKEN: u8 = 1;

fn main() -> ExitCode {
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
    let mut runner = Runner::new(
        fresh_session_id(),
        prompt::read_memories(),
        ToolContext::container(),
        Limits::default(),
        SessionConfig::container(),
    );
    let stdin = io::stdin();
    let stdout = io::stdout();
    let stderr = io::stderr();
    let code = stdio::run(
        &mut runner,
        &mut stdin.lock(),
        &mut stdout.lock(),
        &mut stderr.lock(),
    );
    ExitCode::from(code)
}
