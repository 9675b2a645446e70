//! How Claude Code is started: its arguments, its environment and the
//! system prompt talon appends. Pure, so the exact command is unit-tested.

use std::path::Path;

use crate::wire::StartRun;

/// What Claude Code is given instead of a key: the host replaces it.
pub const PLACEHOLDER_KEY: &str = "talon-placeholder-the-host-holds-the-credential";

/// Where the pieces are inside the container.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub claude: String,
    /// This runner's own binary (the MCP bridge).
    pub runner: String,
    pub workdir: String,
    /// Claude Code's `$HOME`: the group's session folder, so `~/.claude`
    /// (transcripts, settings) persists per group and nothing is shared.
    pub home: String,
    /// The global memory file, read into the appended prompt.
    pub global_memory: String,
}

impl Layout {
    /// The container's layout; `TALON_CLAUDE_PATH` and `TALON_WORKSPACE`
    /// move it for a run outside a container.
    pub fn from_env() -> Layout {
        let workspace = std::env::var("TALON_WORKSPACE").unwrap_or_else(|_| "/workspace".into());
        let runner = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "/usr/local/bin/agent-runner".into());
        Layout {
            claude: std::env::var("TALON_CLAUDE_PATH")
                .unwrap_or_else(|_| "/usr/local/bin/claude".into()),
            runner,
            workdir: format!("{workspace}/group"),
            home: format!("{workspace}/session"),
            global_memory: format!("{workspace}/global/CLAUDE.md"),
        }
    }
}

/// The MCP configuration naming talon's server (the bridge to `mcp_port`).
pub fn mcp_config(layout: &Layout, mcp_port: u16) -> String {
    serde_json::json!({
        "mcpServers": {
            super::mcp::SERVER_NAME: {
                "type": "stdio",
                "command": layout.runner,
                "args": ["mcp-bridge", mcp_port.to_string()],
            }
        }
    })
    .to_string()
}

/// Claude Code's arguments for this run.
pub fn args(start: &StartRun, layout: &Layout, mcp_port: u16, global_memory: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        // The container is the sandbox: no network, no credential, an
        // unprivileged user; there is nobody to answer a permission prompt.
        "--permission-mode",
        "bypassPermissions",
        "--strict-mcp-config",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("--mcp-config".into());
    args.push(mcp_config(layout, mcp_port));
    args.push("--append-system-prompt".into());
    args.push(appended_prompt(start, global_memory));
    if let Some(model) = start.model.as_deref().filter(|m| !m.trim().is_empty()) {
        args.push("--model".into());
        args.push(model.to_string());
    }
    if let Some(session) = start.session_id.as_deref() {
        args.push("--resume".into());
        args.push(session.to_string());
        // Anchored at the last reply the host recorded: a turn it never saw
        // finish is not carried on (seed known issue 1).
        if let Some(anchor) = start.resume_at.as_deref() {
            args.push("--resume-session-at".into());
            args.push(anchor.to_string());
        }
    }
    args
}

/// Claude Code's environment (added to the container's own).
pub fn env(layout: &Layout, api_port: u16) -> Vec<(String, String)> {
    [
        ("ANTHROPIC_BASE_URL", format!("http://127.0.0.1:{api_port}")),
        ("ANTHROPIC_API_KEY", PLACEHOLDER_KEY.to_string()),
        ("HOME", layout.home.clone()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
        ("DISABLE_AUTOUPDATER", "1".into()),
        ("DISABLE_TELEMETRY", "1".into()),
        ("SHELL", "/bin/bash".into()),
        ("TMPDIR", "/tmp".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Variables that would point Claude Code elsewhere or at another
/// credential; removed from the environment it inherits.
pub const REMOVED_ENV: &[&str] = &[
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CONFIG_DIR",
    "ANTHROPIC_CUSTOM_HEADERS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
];

/// What talon adds to Claude Code's system prompt: who it is, where its
/// replies go, the host tools, and the global memory (the group's own
/// `CLAUDE.md` is in its working directory, which Claude Code reads itself).
pub fn appended_prompt(start: &StartRun, global_memory: &str) -> String {
    let scope = if start.is_main {
        "This is the main group: the owner's private control chat."
    } else {
        "This is a regular group chat, not the owner's main control chat."
    };
    let mut prompt = format!(
        "You are {name}, a personal assistant, answering in a chat through talon.\n\
         Group folder: {folder} (your working directory). {scope}\n\
         Timezone: {tz}.\n\
         Your final answer is delivered as a chat message, so keep it concise. \
         Text wrapped in <internal>...</internal> is never shown to users.\n\
         The container has no network. The mcp__talon__ tools act through the host: \
         send_message sends a message before your answer ends; schedule_task, list_tasks, \
         pause_task, resume_task, cancel_task and update_task manage scheduled tasks; \
         web_fetch fetches a URL.{register}\n\
         Memory: CLAUDE.md in your working directory is this group's memory; edit it to \
         remember something.",
        name = start.assistant_name,
        folder = start.group_folder,
        tz = start.timezone,
        register = if start.is_main {
            " register_group registers a chat as a new group."
        } else {
            ""
        },
    );
    if !global_memory.trim().is_empty() {
        prompt.push_str(&format!(
            "\n\n<global_memory>\n{}\n</global_memory>",
            global_memory.trim_end()
        ));
    }
    prompt
}

/// Reads the global memory, capped like the talon runtime's.
pub fn read_global_memory(path: &Path) -> String {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(path) else {
        return String::new();
    };
    let mut bytes = Vec::new();
    let _ = file.take(64 * 1024).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{AgentRuntime, PROTOCOL_VERSION};

    fn layout() -> Layout {
        Layout {
            claude: "/usr/local/bin/claude".into(),
            runner: "/usr/local/bin/agent-runner".into(),
            workdir: "/workspace/group".into(),
            home: "/workspace/session".into(),
            global_memory: "/workspace/global/CLAUDE.md".into(),
        }
    }

    fn start() -> StartRun {
        StartRun {
            protocol: PROTOCOL_VERSION,
            group_folder: "family".into(),
            chat_id: "sock:family".into(),
            is_main: false,
            session_id: None,
            resume_at: None,
            prompt: "hi".into(),
            assistant_name: "Talon".into(),
            timezone: "Europe/Berlin".into(),
            heartbeat_ms: None,
            runtime: AgentRuntime::ClaudeCode,
            model: None,
        }
    }

    fn value_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        let at = args.iter().position(|a| a == flag)?;
        args.get(at + 1).map(String::as_str)
    }

    #[test]
    fn a_fresh_run_streams_json_with_talons_mcp_server_and_no_resume() {
        let args = args(&start(), &layout(), 4242, "");
        assert_eq!(args[0], "-p");
        assert_eq!(value_after(&args, "--input-format"), Some("stream-json"));
        assert_eq!(value_after(&args, "--output-format"), Some("stream-json"));
        assert!(args.contains(&"--verbose".to_string()));
        assert!(args.contains(&"--strict-mcp-config".to_string()));
        let config: serde_json::Value =
            serde_json::from_str(value_after(&args, "--mcp-config").unwrap()).unwrap();
        assert_eq!(
            config["mcpServers"]["talon"]["args"],
            serde_json::json!(["mcp-bridge", "4242"])
        );
        assert!(!args.contains(&"--resume".to_string()));
        assert!(!args.contains(&"--model".to_string()));
    }

    #[test]
    fn a_recorded_session_resumes_at_its_anchor_with_the_groups_model() {
        let mut s = start();
        s.session_id = Some("sess".into());
        s.resume_at = Some("uuid-9".into());
        s.model = Some("claude-haiku-4-5".into());
        let args = args(&s, &layout(), 1, "");
        assert_eq!(value_after(&args, "--resume"), Some("sess"));
        assert_eq!(value_after(&args, "--resume-session-at"), Some("uuid-9"));
        assert_eq!(value_after(&args, "--model"), Some("claude-haiku-4-5"));
    }

    #[test]
    fn the_environment_holds_a_placeholder_and_the_loopback_url() {
        let env = env(&layout(), 8080);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("ANTHROPIC_BASE_URL"), Some("http://127.0.0.1:8080"));
        assert_eq!(get("ANTHROPIC_API_KEY"), Some(PLACEHOLDER_KEY));
        assert_eq!(get("HOME"), Some("/workspace/session"));
        assert_eq!(get("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"), Some("1"));
        assert!(REMOVED_ENV.contains(&"ANTHROPIC_AUTH_TOKEN"));
    }

    #[test]
    fn the_appended_prompt_names_the_group_and_carries_global_memory() {
        let prompt = appended_prompt(&start(), "Owner likes tea.\n");
        assert!(prompt.contains("You are Talon"));
        assert!(prompt.contains("family"));
        assert!(prompt.contains("Europe/Berlin"));
        assert!(prompt.contains("<internal>"));
        assert!(prompt.contains("<global_memory>\nOwner likes tea.\n</global_memory>"));
        assert!(!prompt.contains("register_group"));
        assert!(!appended_prompt(&start(), "  ").contains("global_memory"));
    }
}
