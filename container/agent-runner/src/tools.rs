//! The agent's tools: their specs (what the model is told) and the container
//! tools themselves (shell, files, list, glob, grep).
//!
//! Container tools run right here, synchronously, against a [`ToolContext`]
//! (working directory and allowed roots), so tests point them at a temp dir;
//! the runner calls them on a thread of their own. The shell is spawned with
//! null stdin and its own pipes, never the runner's stdio (the protocol
//! stream), and registered with [`crate::pid1`] so the orphan reaper leaves
//! it to its own wait.
//! Host tools (messages, tasks, groups, web fetch) are only *translated* here
//! into a [`HostAction`]; the runner sends it to the host, which alone decides
//! what is allowed. Paths are confined to the container's mounts lexically:
//! the read-only root and the mounts are the real boundary, this check is
//! defence in depth and gives the model a clear error instead of EACCES.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::wire::{HostAction, ToolSpec};

/// Longest tool result handed back to the model, in bytes.
pub const MAX_OUTPUT_BYTES: usize = 30 * 1024;
/// Lines `read_file` returns when the model gives no limit.
const DEFAULT_READ_LINES: usize = 2000;
/// Entries `list` and `glob` return at most.
const MAX_ENTRIES: usize = 1000;
/// Matches `grep` returns at most.
const MAX_GREP_MATCHES: usize = 200;
/// Files larger than this are not searched by `grep`.
const MAX_GREP_FILE_BYTES: u64 = 10 * 1024 * 1024;
/// Directory depth `glob` and `grep` descend to, against symlink-free loops and huge trees.
const MAX_WALK_DEPTH: usize = 32;

/// Where container tools run and which paths they may touch.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolContext {
    /// Relative paths and `bash` commands start here.
    pub workdir: PathBuf,
    /// A path must lie under one of these after normalisation.
    pub allowed_roots: Vec<PathBuf>,
    /// `bash` timeout when the model names none.
    pub default_timeout: Duration,
    /// The longest `bash` timeout the model may ask for.
    pub max_timeout: Duration,
}

impl ToolContext {
    /// The real container: the group folder, the workspace mounts and /tmp.
    pub fn container() -> Self {
        ToolContext {
            workdir: PathBuf::from("/workspace/group"),
            allowed_roots: vec![PathBuf::from("/workspace"), PathBuf::from("/tmp")],
            default_timeout: Duration::from_secs(60),
            max_timeout: Duration::from_secs(600),
        }
    }
}

/// What a tool call returns to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
}

impl ToolOutput {
    fn ok(content: impl Into<String>) -> Self {
        ToolOutput {
            content: content.into(),
            is_error: false,
        }
    }
    fn error(content: impl Into<String>) -> Self {
        ToolOutput {
            content: content.into(),
            is_error: true,
        }
    }
}

/// How a tool call is carried out.
#[derive(Debug, Clone, PartialEq)]
pub enum Dispatch {
    /// Run in the container with [`run_local`].
    Local,
    /// Ask the host to do this.
    Host(HostAction),
    /// The call cannot run (unknown tool, bad input); this is its result.
    Refused(ToolOutput),
}

const LOCAL_TOOLS: [&str; 7] = [
    "bash",
    "read_file",
    "write_file",
    "edit_file",
    "list",
    "glob",
    "grep",
];

const HOST_TOOLS: [&str; 9] = [
    "send_message",
    "schedule_task",
    "list_tasks",
    "pause_task",
    "resume_task",
    "cancel_task",
    "update_task",
    "register_group",
    "web_fetch",
];

/// The host tools alone: what the Claude Code runtime offers over MCP (Claude
/// Code brings its own shell and file tools).
pub fn host_specs() -> Vec<ToolSpec> {
    specs()
        .into_iter()
        .filter(|spec| HOST_TOOLS.contains(&spec.name.as_str()))
        .collect()
}

/// Decides how a tool call runs. A host tool's name is its action's tag, so
/// its input maps onto [`HostAction`] by adding that tag.
pub fn dispatch(name: &str, input: &Value) -> Dispatch {
    if LOCAL_TOOLS.contains(&name) {
        return Dispatch::Local;
    }
    if !HOST_TOOLS.contains(&name) {
        return Dispatch::Refused(ToolOutput::error(format!("unknown tool `{name}`")));
    }
    let mut object = match input {
        Value::Object(map) => map.clone(),
        Value::Null => serde_json::Map::new(),
        _ => {
            return Dispatch::Refused(ToolOutput::error(format!(
                "the input of `{name}` must be an object"
            )))
        }
    };
    object.insert("action".into(), Value::String(name.into()));
    match serde_json::from_value::<HostAction>(Value::Object(object)) {
        Ok(action) => Dispatch::Host(action),
        Err(error) => Dispatch::Refused(ToolOutput::error(format!(
            "bad input for `{name}`: {error}"
        ))),
    }
}

fn spec(name: &str, description: &str, input_schema: Value) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        description: description.into(),
        input_schema,
    }
}

fn object_schema(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required})
}

/// Every tool the model may call, container tools first.
pub fn specs() -> Vec<ToolSpec> {
    let task_id = json!({"type": "string", "description": "The task's id (see list_tasks)."});
    vec![
        spec(
            "bash",
            "Run a shell command (/bin/sh -c, busybox) in /workspace/group. No network. \
             Output is capped at 30 KB; the command is killed at its timeout.",
            object_schema(
                json!({
                    "command": {"type": "string"},
                    "timeout_seconds": {"type": "number", "description": "Default 60, at most 600."}
                }),
                &["command"],
            ),
        ),
        spec(
            "read_file",
            "Read a text file, with line numbers. Relative paths start at /workspace/group.",
            object_schema(
                json!({
                    "path": {"type": "string"},
                    "offset": {"type": "integer", "description": "First line to read (1-based)."},
                    "limit": {"type": "integer", "description": "Lines to read (default 2000)."}
                }),
                &["path"],
            ),
        ),
        spec(
            "write_file",
            "Write a file (replacing it), creating parent directories.",
            object_schema(
                json!({"path": {"type": "string"}, "content": {"type": "string"}}),
                &["path", "content"],
            ),
        ),
        spec(
            "edit_file",
            "Replace an exact string in a file. Fails unless old_string occurs exactly once, \
             or replace_all is true.",
            object_schema(
                json!({
                    "path": {"type": "string"},
                    "old_string": {"type": "string"},
                    "new_string": {"type": "string"},
                    "replace_all": {"type": "boolean"}
                }),
                &["path", "old_string", "new_string"],
            ),
        ),
        spec(
            "list",
            "List a directory (directories end in /).",
            object_schema(json!({"path": {"type": "string"}}), &[]),
        ),
        spec(
            "glob",
            "Find files by pattern: * and ? within a name, ** across directories \
             (e.g. notes/**/*.md).",
            object_schema(
                json!({
                    "pattern": {"type": "string"},
                    "path": {"type": "string", "description": "Where to search (default .)."}
                }),
                &["pattern"],
            ),
        ),
        spec(
            "grep",
            "Search files for a literal string; prints path:line: text.",
            object_schema(
                json!({
                    "pattern": {"type": "string", "description": "A literal string, not a regex."},
                    "path": {"type": "string", "description": "File or directory (default .)."},
                    "ignore_case": {"type": "boolean"}
                }),
                &["pattern"],
            ),
        ),
        spec(
            "send_message",
            "Send a chat message now (before your reply ends). chat_id defaults to this chat.",
            object_schema(
                json!({"text": {"type": "string"}, "chat_id": {"type": "string"}}),
                &["text"],
            ),
        ),
        spec(
            "schedule_task",
            "Schedule a prompt to run later: schedule_type cron (5-field expression), \
             interval (milliseconds) or once (RFC 3339 time). context_mode group (this \
             chat's session) or isolated.",
            object_schema(
                json!({
                    "prompt": {"type": "string"},
                    "schedule_type": {"type": "string", "enum": ["cron", "interval", "once"]},
                    "schedule_value": {"type": "string"},
                    "context_mode": {"type": "string", "enum": ["group", "isolated"]},
                    "chat_id": {"type": "string"}
                }),
                &["prompt", "schedule_type", "schedule_value"],
            ),
        ),
        spec(
            "list_tasks",
            "List scheduled tasks.",
            object_schema(json!({}), &[]),
        ),
        spec(
            "pause_task",
            "Pause a scheduled task.",
            object_schema(json!({"task_id": task_id.clone()}), &["task_id"]),
        ),
        spec(
            "resume_task",
            "Resume a paused task.",
            object_schema(json!({"task_id": task_id.clone()}), &["task_id"]),
        ),
        spec(
            "cancel_task",
            "Cancel (delete) a scheduled task.",
            object_schema(json!({"task_id": task_id.clone()}), &["task_id"]),
        ),
        spec(
            "update_task",
            "Change a task's prompt or schedule.",
            object_schema(
                json!({
                    "task_id": task_id,
                    "prompt": {"type": "string"},
                    "schedule_type": {"type": "string", "enum": ["cron", "interval", "once"]},
                    "schedule_value": {"type": "string"}
                }),
                &["task_id"],
            ),
        ),
        spec(
            "register_group",
            "Register a chat as a group with its own folder (main group only).",
            object_schema(
                json!({
                    "chat_id": {"type": "string"},
                    "name": {"type": "string"},
                    "folder": {"type": "string"},
                    "requires_trigger": {"type": "boolean"},
                    "trigger": {"type": "string"}
                }),
                &["chat_id", "name", "folder"],
            ),
        ),
        spec(
            "web_fetch",
            "Fetch a URL (done by the host; size-capped, private addresses refused).",
            object_schema(
                json!({"url": {"type": "string"}, "max_bytes": {"type": "integer"}}),
                &["url"],
            ),
        ),
    ]
}

/// Runs a container tool. Never panics on the model's input: every problem
/// becomes an error result the model can act on.
pub fn run_local(ctx: &ToolContext, name: &str, input: &Value) -> ToolOutput {
    let result = match name {
        "bash" => bash(ctx, input),
        "read_file" => read_file(ctx, input),
        "write_file" => write_file(ctx, input),
        "edit_file" => edit_file(ctx, input),
        "list" => list(ctx, input),
        "glob" => glob(ctx, input),
        "grep" => grep(ctx, input),
        other => Err(format!("unknown tool `{other}`")),
    };
    result.unwrap_or_else(ToolOutput::error)
}

fn str_arg<'a>(input: &'a Value, key: &str) -> Result<&'a str, String> {
    input
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string `{key}`"))
}

fn opt_str<'a>(input: &'a Value, key: &str) -> Option<&'a str> {
    input.get(key).and_then(Value::as_str)
}

fn opt_bool(input: &Value, key: &str) -> bool {
    input.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn opt_usize(input: &Value, key: &str) -> Option<usize> {
    input
        .get(key)
        .and_then(Value::as_u64)
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// Resolves a model-given path: relative to the workdir, `.` and `..`
/// normalised lexically, and refused outside the allowed roots.
pub fn resolve_path(ctx: &ToolContext, raw: &str) -> Result<PathBuf, String> {
    if raw.is_empty() {
        return Err("empty path".into());
    }
    let joined = ctx.workdir.join(raw);
    let mut normal = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other.as_os_str()),
        }
    }
    if ctx
        .allowed_roots
        .iter()
        .any(|root| normal.starts_with(root))
    {
        Ok(normal)
    } else {
        let roots: Vec<String> = ctx
            .allowed_roots
            .iter()
            .map(|r| r.display().to_string())
            .collect();
        Err(format!(
            "{} is outside the paths this agent may use ({})",
            normal.display(),
            roots.join(", ")
        ))
    }
}

/// Cuts `text` to [`MAX_OUTPUT_BYTES`] on a char boundary, saying so.
fn cap_output(text: String) -> String {
    let total = text.len();
    cap_output_of(text, total)
}

/// Like [`cap_output`], for text that may already have lost bytes on the way
/// (a drained pipe): `total` is how long it really was.
fn cap_output_of(text: String, total: usize) -> String {
    if text.len() <= MAX_OUTPUT_BYTES && total <= text.len() {
        return text;
    }
    let mut end = text.len().min(MAX_OUTPUT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n[output cut: {total} bytes in all, showing the first {end}]",
        &text[..end]
    )
}

// --- bash -------------------------------------------------------------------

// Only `kill(2)` is needed from libc, and the runner takes no dependencies
// beyond serde: std already links libc, so declaring it is enough.
extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
}
const SIGKILL: i32 = 9;

/// Kills every process in the group led by `pid` (the shell started it).
fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe {
            kill(-pid, SIGKILL);
        }
    }
}

/// Reads a pipe to its end on a thread, keeping only the first bytes: a
/// chatty command must not stall on a full pipe, nor grow the runner.
/// Fails only when no thread can be started (the pids limit counts threads).
fn drain(mut pipe: impl Read + Send + 'static) -> io::Result<mpsc::Receiver<(Vec<u8>, usize)>> {
    let (sender, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("tool-pipe".into())
        .spawn(move || {
            let mut kept = Vec::new();
            let mut total = 0usize;
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        total += n;
                        let room = (MAX_OUTPUT_BYTES + 1).saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            }
            let _ = sender.send((kept, total));
        })?;
    Ok(receiver)
}

fn bash(ctx: &ToolContext, input: &Value) -> Result<ToolOutput, String> {
    use std::os::unix::process::CommandExt;

    let command = str_arg(input, "command")?;
    let timeout = match input.get("timeout_seconds").and_then(Value::as_f64) {
        Some(seconds) if seconds > 0.0 && seconds.is_finite() => {
            Duration::from_secs_f64(seconds).min(ctx.max_timeout)
        }
        _ => ctx.default_timeout,
    };
    let mut shell = Command::new("/bin/sh");
    shell
        .arg("-c")
        .arg(command)
        .current_dir(&ctx.workdir)
        // Never the runner's own stdio: fd 0 and 1 are the protocol stream.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills the command's children too.
        .process_group(0);
    // Registered until it is waited, so the PID-1 reaper leaves it to `child`.
    let (mut child, _registration) = crate::pid1::spawn_own(&mut shell)
        .map_err(|e| format!("could not start /bin/sh in {}: {e}", ctx.workdir.display()))?;
    let stdout = child.stdout.take().map(drain).transpose();
    let stderr = child.stderr.take().map(drain).transpose();
    let (stdout, stderr) = match (stdout, stderr) {
        (Ok(stdout), Ok(stderr)) => (stdout, stderr),
        (Err(e), _) | (_, Err(e)) => {
            // Unread, the command would stall on a full pipe: stop it now.
            kill_group(child.id());
            let _ = child.wait();
            return Err(format!("could not read the command's output: {e}"));
        }
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                kill_group(child.id());
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for the command failed: {e}")),
        }
    };
    // A process that left the group may keep a pipe open: do not wait forever.
    let collect = |receiver: Option<mpsc::Receiver<(Vec<u8>, usize)>>| {
        receiver
            .and_then(|r| r.recv_timeout(Duration::from_secs(2)).ok())
            .map(|(bytes, total)| {
                let dropped = total.saturating_sub(bytes.len());
                (String::from_utf8_lossy(&bytes).into_owned(), dropped)
            })
            .unwrap_or_default()
    };
    if status.is_some() {
        // The command ended; background children it left may still hold the
        // pipes, and no call outlives its turn. The group id cannot have been
        // reused while such members live; with none left the kill is a no-op.
        kill_group(child.id());
    }
    let (mut content, out_dropped) = collect(stdout);
    let (err, err_dropped) = collect(stderr);
    if !err.is_empty() {
        if !content.is_empty() && !content.ends_with('\n') {
            content.push('\n');
        }
        content.push_str("[stderr]\n");
        content.push_str(&err);
    }
    // The cap applies to what the command printed; the status line always shows.
    let total = content.len() + out_dropped + err_dropped;
    let content = cap_output_of(content, total);
    Ok(match status {
        None => ToolOutput::error(format!(
            "{content}\n[killed: the command did not finish within {:.1} s]",
            timeout.as_secs_f64()
        )),
        Some(status) if status.success() => ToolOutput::ok(content),
        Some(status) => {
            let code = status
                .code()
                .map_or_else(|| "killed by a signal".to_string(), |c| c.to_string());
            ToolOutput::error(format!("{content}\n[exit code: {code}]"))
        }
    })
}

// --- files ------------------------------------------------------------------

fn read_file(ctx: &ToolContext, input: &Value) -> Result<ToolOutput, String> {
    let path = resolve_path(ctx, str_arg(input, "path")?)?;
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let first = opt_usize(input, "offset").unwrap_or(1).max(1);
    let limit = opt_usize(input, "limit").unwrap_or(DEFAULT_READ_LINES);
    let mut numbered = String::new();
    for (index, line) in text.lines().enumerate().skip(first - 1).take(limit) {
        numbered.push_str(&format!("{:>6}\t{line}\n", index + 1));
    }
    if numbered.is_empty() {
        numbered = format!(
            "[no lines from line {first}: the file has {} lines]",
            text.lines().count()
        );
    }
    Ok(ToolOutput::ok(cap_output(numbered)))
}

fn write_file(ctx: &ToolContext, input: &Value) -> Result<ToolOutput, String> {
    let path = resolve_path(ctx, str_arg(input, "path")?)?;
    let content = str_arg(input, "content")?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(&path, content).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(ToolOutput::ok(format!(
        "wrote {} bytes to {}",
        content.len(),
        path.display()
    )))
}

fn edit_file(ctx: &ToolContext, input: &Value) -> Result<ToolOutput, String> {
    let path = resolve_path(ctx, str_arg(input, "path")?)?;
    let old = str_arg(input, "old_string")?;
    let new = str_arg(input, "new_string")?;
    if old.is_empty() {
        return Err("old_string is empty; use write_file to create a file".into());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let count = text.matches(old).count();
    let replace_all = opt_bool(input, "replace_all");
    match count {
        0 => return Err(format!("old_string not found in {}", path.display())),
        1 => {}
        n if !replace_all => {
            return Err(format!(
                "old_string occurs {n} times in {}; give more context or set replace_all",
                path.display()
            ))
        }
        _ => {}
    }
    let edited = text.replace(old, new);
    std::fs::write(&path, edited).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(ToolOutput::ok(format!(
        "replaced {count} occurrence(s) in {}",
        path.display()
    )))
}

fn list(ctx: &ToolContext, input: &Value) -> Result<ToolOutput, String> {
    let path = resolve_path(ctx, opt_str(input, "path").unwrap_or("."))?;
    let entries = std::fs::read_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                format!("{name}/")
            } else {
                name
            }
        })
        .collect();
    names.sort();
    Ok(ToolOutput::ok(listing(names, "(empty directory)")))
}

/// Joins names one a line, at most [`MAX_ENTRIES`], saying when some were left off.
fn listing(mut names: Vec<String>, empty: &str) -> String {
    if names.is_empty() {
        return empty.into();
    }
    let total = names.len();
    names.truncate(MAX_ENTRIES);
    let mut text = names.join("\n");
    if total > MAX_ENTRIES {
        text.push_str(&format!("\n[{} more not shown]", total - MAX_ENTRIES));
    }
    cap_output(text)
}

/// Every regular file under `root` (not following symlinks), as paths
/// relative to `root`, in sorted order.
fn walk_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() && depth < MAX_WALK_DEPTH {
                stack.push((path, depth + 1));
            } else if kind.is_file() {
                if let Ok(relative) = path.strip_prefix(root) {
                    found.push(relative.to_path_buf());
                }
            }
        }
    }
    found.sort();
    found
}

/// Does one name match one pattern segment (`*` any run, `?` one char)?
fn segment_matches(pattern: &[char], name: &[char]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some('*'), _) => {
            segment_matches(&pattern[1..], name)
                || (!name.is_empty() && segment_matches(pattern, &name[1..]))
        }
        (Some('?'), Some(_)) => segment_matches(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => segment_matches(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Does a relative path (as segments) match a glob (as segments, `**` = any
/// number of directories, including none)?
pub fn glob_matches(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.first() {
        None => path.is_empty(),
        Some(&"**") => {
            glob_matches(&pattern[1..], path)
                || (!path.is_empty() && glob_matches(pattern, &path[1..]))
        }
        Some(segment) => match path.first() {
            Some(name) => {
                let p: Vec<char> = segment.chars().collect();
                let n: Vec<char> = name.chars().collect();
                segment_matches(&p, &n) && glob_matches(&pattern[1..], &path[1..])
            }
            None => false,
        },
    }
}

fn glob(ctx: &ToolContext, input: &Value) -> Result<ToolOutput, String> {
    let pattern = str_arg(input, "pattern")?;
    let root = resolve_path(ctx, opt_str(input, "path").unwrap_or("."))?;
    let pattern_segments: Vec<&str> = pattern
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    let matches: Vec<String> = walk_files(&root)
        .into_iter()
        .filter_map(|relative| {
            let text = relative.to_string_lossy().into_owned();
            let segments: Vec<&str> = text.split('/').collect();
            glob_matches(&pattern_segments, &segments).then(|| text.clone())
        })
        .collect();
    Ok(ToolOutput::ok(listing(matches, "(no files match)")))
}

fn grep(ctx: &ToolContext, input: &Value) -> Result<ToolOutput, String> {
    let needle = str_arg(input, "pattern")?;
    if needle.is_empty() {
        return Err("empty pattern".into());
    }
    let ignore_case = opt_bool(input, "ignore_case");
    let needle = if ignore_case {
        needle.to_lowercase()
    } else {
        needle.to_string()
    };
    let root = resolve_path(ctx, opt_str(input, "path").unwrap_or("."))?;
    let files: Vec<PathBuf> = if root.is_file() {
        vec![root.clone()]
    } else {
        walk_files(&root)
            .into_iter()
            .map(|f| root.join(f))
            .collect()
    };
    let mut hits = Vec::new();
    let mut more = false;
    'files: for file in files {
        if std::fs::metadata(&file).map_or(true, |m| m.len() > MAX_GREP_FILE_BYTES) {
            continue;
        }
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        // Binary files are skipped: their "lines" mean nothing to the model.
        if bytes.iter().take(8192).any(|&b| b == 0) {
            continue;
        }
        let text = String::from_utf8_lossy(&bytes);
        let shown = file
            .strip_prefix(&ctx.workdir)
            .unwrap_or(&file)
            .display()
            .to_string();
        for (index, line) in text.lines().enumerate() {
            let found = if ignore_case {
                line.to_lowercase().contains(&needle)
            } else {
                line.contains(&needle)
            };
            if found {
                if hits.len() == MAX_GREP_MATCHES {
                    more = true;
                    break 'files;
                }
                hits.push(format!("{shown}:{}: {line}", index + 1));
            }
        }
    }
    if hits.is_empty() {
        return Ok(ToolOutput::ok("(no matches)"));
    }
    let mut text = hits.join("\n");
    if more {
        text.push_str(&format!("\n[stopped at {MAX_GREP_MATCHES} matches]"));
    }
    Ok(ToolOutput::ok(cap_output(text)))
}

#[cfg(test)]
pub mod test_support {
    //! A throwaway directory per test (the runner has no dev-dependencies).
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};

    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new() -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "talon-runner-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        /// A tool context rooted at this directory.
        pub fn context(&self) -> super::ToolContext {
            super::ToolContext {
                workdir: self.0.join("group"),
                allowed_roots: vec![self.0.clone()],
                default_timeout: std::time::Duration::from_secs(10),
                max_timeout: std::time::Duration::from_secs(20),
            }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::TempDir;
    use super::*;

    fn setup() -> (TempDir, ToolContext) {
        let dir = TempDir::new();
        let ctx = dir.context();
        std::fs::create_dir_all(&ctx.workdir).unwrap();
        (dir, ctx)
    }

    #[test]
    fn paths_resolve_relative_to_workdir_and_stay_inside_the_roots() {
        let ctx = ToolContext::container();
        assert_eq!(
            resolve_path(&ctx, "notes/a.md").unwrap(),
            PathBuf::from("/workspace/group/notes/a.md")
        );
        assert_eq!(
            resolve_path(&ctx, "../global/CLAUDE.md").unwrap(),
            PathBuf::from("/workspace/global/CLAUDE.md")
        );
        assert_eq!(
            resolve_path(&ctx, "/tmp/x").unwrap(),
            PathBuf::from("/tmp/x")
        );
        assert!(resolve_path(&ctx, "../../etc/passwd").is_err());
        assert!(resolve_path(&ctx, "/etc/passwd").is_err());
        assert!(resolve_path(&ctx, "/workspace/../etc").is_err());
        assert!(resolve_path(&ctx, "/tmpfoo").is_err());
        assert!(resolve_path(&ctx, "").is_err());
    }

    #[test]
    fn write_creates_parents_and_read_numbers_lines_with_offset_and_limit() {
        let (_dir, ctx) = setup();
        let wrote = run_local(
            &ctx,
            "write_file",
            &json!({"path": "a/b/c.txt", "content": "one\ntwo\nthree\n"}),
        );
        assert!(!wrote.is_error, "{wrote:?}");
        let read = run_local(&ctx, "read_file", &json!({"path": "a/b/c.txt"}));
        assert_eq!(read.content, "     1\tone\n     2\ttwo\n     3\tthree\n");
        let part = run_local(
            &ctx,
            "read_file",
            &json!({"path": "a/b/c.txt", "offset": 2, "limit": 1}),
        );
        assert_eq!(part.content, "     2\ttwo\n");
        let missing = run_local(&ctx, "read_file", &json!({"path": "nope"}));
        assert!(missing.is_error);
        let outside = run_local(
            &ctx,
            "write_file",
            &json!({"path": "/etc/x", "content": ""}),
        );
        assert!(outside.is_error && outside.content.contains("outside"));
    }

    #[test]
    fn edit_requires_a_unique_match_unless_replace_all() {
        let (_dir, ctx) = setup();
        let file = ctx.workdir.join("f.txt");
        std::fs::write(&file, "cat dog cat").unwrap();
        let none = run_local(
            &ctx,
            "edit_file",
            &json!({"path": "f.txt", "old_string": "cow", "new_string": "x"}),
        );
        assert!(none.is_error && none.content.contains("not found"));
        let twice = run_local(
            &ctx,
            "edit_file",
            &json!({"path": "f.txt", "old_string": "cat", "new_string": "x"}),
        );
        assert!(twice.is_error && twice.content.contains("2 times"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "cat dog cat");
        let once = run_local(
            &ctx,
            "edit_file",
            &json!({"path": "f.txt", "old_string": "dog", "new_string": "emu"}),
        );
        assert!(!once.is_error);
        let all = run_local(
            &ctx,
            "edit_file",
            &json!({"path": "f.txt", "old_string": "cat", "new_string": "owl", "replace_all": true}),
        );
        assert!(!all.is_error);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "owl emu owl");
    }

    #[test]
    fn list_marks_directories_and_sorts() {
        let (_dir, ctx) = setup();
        std::fs::create_dir_all(ctx.workdir.join("sub")).unwrap();
        std::fs::write(ctx.workdir.join("b.txt"), "").unwrap();
        std::fs::write(ctx.workdir.join("a.txt"), "").unwrap();
        let listed = run_local(&ctx, "list", &json!({}));
        assert_eq!(listed.content, "a.txt\nb.txt\nsub/");
    }

    #[test]
    fn glob_matcher_handles_stars_and_double_stars() {
        let m = |p: &str, path: &str| {
            let ps: Vec<&str> = p.split('/').collect();
            let xs: Vec<&str> = path.split('/').collect();
            glob_matches(&ps, &xs)
        };
        assert!(m("src/**/*.rs", "src/main.rs"));
        assert!(m("src/**/*.rs", "src/a/b/lib.rs"));
        assert!(!m("src/**/*.rs", "tests/a.rs"));
        assert!(!m("src/*.rs", "src/a/lib.rs"));
        assert!(m("**/*.md", "CLAUDE.md"));
        assert!(m("a?c.txt", "abc.txt"));
        assert!(!m("a?c.txt", "ac.txt"));
        assert!(!m("*.rs", "main.rsx"));
    }

    #[test]
    fn glob_and_grep_search_the_tree() {
        let (_dir, ctx) = setup();
        std::fs::create_dir_all(ctx.workdir.join("src/deep")).unwrap();
        std::fs::write(ctx.workdir.join("src/main.rs"), "fn main() {}\n").unwrap();
        std::fs::write(
            ctx.workdir.join("src/deep/lib.rs"),
            "// TODO one\nlet x;\n// todo two\n",
        )
        .unwrap();
        std::fs::write(ctx.workdir.join("notes.md"), "TODO three\n").unwrap();
        std::fs::write(ctx.workdir.join("blob.bin"), b"TODO\0binary").unwrap();
        let globbed = run_local(&ctx, "glob", &json!({"pattern": "src/**/*.rs"}));
        assert_eq!(globbed.content, "src/deep/lib.rs\nsrc/main.rs");
        let grepped = run_local(&ctx, "grep", &json!({"pattern": "TODO"}));
        assert_eq!(
            grepped.content,
            "notes.md:1: TODO three\nsrc/deep/lib.rs:1: // TODO one"
        );
        let folded = run_local(
            &ctx,
            "grep",
            &json!({"pattern": "todo", "path": "src", "ignore_case": true}),
        );
        assert_eq!(
            folded.content,
            "src/deep/lib.rs:1: // TODO one\nsrc/deep/lib.rs:3: // todo two"
        );
    }

    #[test]
    fn bash_runs_in_the_workdir_and_reports_exit_codes_and_stderr() {
        let (_dir, ctx) = setup();
        std::fs::write(ctx.workdir.join("here.txt"), "").unwrap();
        let ok = run_local(&ctx, "bash", &json!({"command": "ls; echo hi"}));
        assert_eq!(ok, ToolOutput::ok("here.txt\nhi\n"));
        let failed = run_local(&ctx, "bash", &json!({"command": "echo oops >&2; exit 3"}));
        assert!(failed.is_error);
        assert!(failed.content.contains("[stderr]\noops"), "{failed:?}");
        assert!(failed.content.contains("[exit code: 3]"));
    }

    #[test]
    fn bash_gets_null_stdin_and_its_own_pipes_never_the_runners_stdio() {
        let (_dir, ctx) = setup();
        let fds = run_local(
            &ctx,
            "bash",
            &json!({"command": "for fd in 0 1 2; do readlink /proc/self/fd/$fd; done"}),
        );
        let links: Vec<&str> = fds.content.lines().collect();
        assert_eq!(links.len(), 3, "{fds:?}");
        assert_eq!(links[0], "/dev/null");
        assert!(links[1].starts_with("pipe:") && links[2].starts_with("pipe:"));
        assert_ne!(links[1], links[2]);
        // Not the test process's own stdio either (the runner's, in the container).
        for fd in 0..=2 {
            if let Ok(ours) = std::fs::read_link(format!("/proc/self/fd/{fd}")) {
                let ours = ours.to_string_lossy();
                assert!(!links[1..].contains(&ours.as_ref()), "fd {fd}: {ours}");
            }
        }
    }

    #[test]
    fn bash_kills_a_hung_command_and_its_children_at_the_timeout() {
        let (_dir, ctx) = setup();
        let started = Instant::now();
        let hung = run_local(
            &ctx,
            "bash",
            &json!({"command": "echo started; sleep 30 & sleep 30; echo never", "timeout_seconds": 0.3}),
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(hung.is_error);
        assert!(hung.content.starts_with("started\n"), "{hung:?}");
        assert!(hung.content.contains("did not finish within 0.3 s"));
        assert!(!hung.content.contains("never"));
    }

    #[test]
    fn bash_output_is_capped_with_a_note() {
        let (_dir, ctx) = setup();
        let big = run_local(
            &ctx,
            "bash",
            &json!({"command": "i=0; while [ $i -lt 5000 ]; do echo 0123456789; i=$((i+1)); done"}),
        );
        assert!(big.content.len() < MAX_OUTPUT_BYTES + 200);
        // 5000 lines of 11 bytes: the note tells the real size.
        assert!(
            big.content.contains("55000 bytes in all"),
            "{}",
            &big.content[big.content.len() - 100..]
        );
        let failed = run_local(
            &ctx,
            "bash",
            &json!({"command": "i=0; while [ $i -lt 5000 ]; do echo 0123456789; i=$((i+1)); done; exit 4"}),
        );
        assert!(
            failed.content.ends_with("[exit code: 4]"),
            "the status survives the cut"
        );
        assert!(
            big.content.contains("[output cut:"),
            "{}",
            &big.content[big.content.len() - 100..]
        );
    }

    #[test]
    fn host_tools_map_onto_host_actions() {
        assert_eq!(
            dispatch("send_message", &json!({"text": "hi"})),
            Dispatch::Host(HostAction::SendMessage {
                chat_id: None,
                text: "hi".into()
            })
        );
        assert_eq!(
            dispatch("list_tasks", &json!({})),
            Dispatch::Host(HostAction::ListTasks)
        );
        assert_eq!(
            dispatch("cancel_task", &json!({"task_id": "t1"})),
            Dispatch::Host(HostAction::CancelTask {
                task_id: "t1".into()
            })
        );
        // The model cannot smuggle in a different action.
        assert_eq!(
            dispatch(
                "pause_task",
                &json!({"task_id": "t1", "action": "register_group"})
            ),
            Dispatch::Host(HostAction::PauseTask {
                task_id: "t1".into()
            })
        );
        assert!(matches!(dispatch("pause_task", &json!({})), Dispatch::Refused(o) if o.is_error));
        assert!(matches!(
            dispatch("rm_rf", &json!({})),
            Dispatch::Refused(_)
        ));
        assert_eq!(dispatch("bash", &json!({})), Dispatch::Local);
    }

    #[test]
    fn every_tool_has_a_spec_with_an_object_schema() {
        let specs = specs();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        for name in LOCAL_TOOLS.iter().chain(HOST_TOOLS.iter()) {
            assert!(names.contains(name), "{name} has no spec");
        }
        assert_eq!(specs.len(), LOCAL_TOOLS.len() + HOST_TOOLS.len());
        assert!(specs.iter().all(|s| s.input_schema["type"] == "object"));
    }
}
