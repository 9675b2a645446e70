//! The host ↔ container wire protocol.
//!
//! One JSON object per line over the container's attached stdin/stdout: no
//! polling, no files, no network. This file is the single definition of the
//! protocol: the host uses it as `talon::messages::wire` and the agent runner
//! compiles the very same file into its binary (`#[path]` include), so the two
//! sides cannot drift apart. It depends on `serde` only, for that reason.
//!
//! The runner never holds a credential: when it needs a completion it sends a
//! [`RunnerToHost::ModelRequest`] and the host, which holds the keys, answers
//! with [`HostToRunner::ModelResponse`].
//!
//! Under the Claude Code runtime the CLI speaks HTTP to a listener the runner
//! opens on the container's loopback; each request crosses as a
//! [`RunnerToHost::ApiRequest`] and its response streams back as
//! [`HostToRunner::ApiResponseHead`], `ApiResponseChunk`s and one
//! `ApiResponseEnd`. The host checks the path, puts the real credential on
//! it and forwards it; the container only ever sees a placeholder key.

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change; the runner refuses a start it cannot read.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest line either side accepts. A longer line is discarded whole (and
/// reported), never buffered without bound.
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// What the host sends to the runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostToRunner {
    /// First line of every run.
    Start(StartRun),
    /// A new batch for the running agent (the warm path): handled as the next turn.
    FollowUp { prompt: String },
    /// The close sentinel: finish the current turn, then exit 0.
    Close,
    /// The answer to a [`RunnerToHost::ModelRequest`] with the same id.
    ModelResponse {
        request_id: u64,
        result: ModelResult,
    },
    /// The answer to a [`RunnerToHost::HostRequest`] with the same id.
    HostResponse { request_id: u64, result: HostResult },
    /// The status and headers of the answer to a [`RunnerToHost::ApiRequest`].
    ApiResponseHead {
        request_id: u64,
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// The next piece of that answer's body (SSE text, or JSON).
    ApiResponseChunk { request_id: u64, data: String },
    /// The answer is complete; `error` says why it was cut short.
    ApiResponseEnd {
        request_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// Which agent a group runs (`[agent] runtime`, or the group's own choice).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentRuntime {
    /// talon's own runner: the tool loop, model calls as `ModelRequest`s.
    #[default]
    Talon,
    /// The Claude Code CLI, driven by the runner over stream-json, its HTTP
    /// carried to the host's credential proxy as `ApiRequest`s.
    ClaudeCode,
}

impl AgentRuntime {
    pub fn is_talon(&self) -> bool {
        *self == AgentRuntime::Talon
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AgentRuntime::Talon => "talon",
            AgentRuntime::ClaudeCode => "claude-code",
        }
    }
}

impl std::str::FromStr for AgentRuntime {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim() {
            "talon" => Ok(AgentRuntime::Talon),
            "claude-code" => Ok(AgentRuntime::ClaudeCode),
            other => Err(format!(
                "unknown agent runtime {other:?}: use \"talon\" or \"claude-code\""
            )),
        }
    }
}

impl std::fmt::Display for AgentRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An HTTP request Claude Code made to the runner's loopback listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiRequest {
    pub method: String,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    /// As received, credentials included; the host drops what it does not allow.
    pub headers: Vec<(String, String)>,
    /// The body as text (the Messages API takes JSON).
    pub body: String,
}

/// Everything the runner needs to begin a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartRun {
    pub protocol: u32,
    pub group_folder: String,
    pub chat_id: String,
    pub is_main: bool,
    /// Agent session to continue, if the group has one.
    pub session_id: Option<String>,
    /// Last assistant message id the host recorded: a resume is anchored here.
    pub resume_at: Option<String>,
    pub prompt: String,
    pub assistant_name: String,
    pub timezone: String,
    /// How often the runner says it is alive while a long tool runs. The
    /// host kills a runner silent for its hard timeout, so it asks for a
    /// heartbeat well inside it. `None`: the runner's own default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
    /// Which agent runs this turn; old hosts send none (talon's own).
    #[serde(default, skip_serializing_if = "AgentRuntime::is_talon")]
    pub runtime: AgentRuntime,
    /// The model to ask for (Claude Code's `--model`); `None`: its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// What the runner sends to the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunnerToHost {
    /// Text for the user. Every output resets the host's idle timer.
    Output { text: String },
    /// Liveness while a long turn runs; shown nowhere.
    Progress { note: String },
    /// Ask the host for a model completion.
    ModelRequest {
        request_id: u64,
        request: ModelRequest,
    },
    /// Ask the host to act (message, tasks, groups, web fetch). The host
    /// decides what is allowed from the container's own identity, never from
    /// anything in the request.
    HostRequest { request_id: u64, action: HostAction },
    /// Claude Code's HTTP call, for the host's credential proxy.
    ApiRequest {
        request_id: u64,
        request: ApiRequest,
    },
    /// The end of one turn (a start or a follow-up).
    Result(RunResult),
}

/// How a turn ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub status: RunStatus,
    pub session_id: Option<String>,
    pub last_assistant_id: Option<String>,
    /// Why the turn failed, in words a user can read.
    pub error: Option<String>,
    /// The class of the failure; decides whether the host retries.
    pub error_kind: Option<ErrorKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Success,
    Error,
}

/// A provider-neutral completion request. The host picks the model and the
/// credentials; the runner only says what to ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRequest {
    pub system: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: u32,
    /// Tools the model may call (Anthropic tool-use shape).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the tool's input object.
    pub input_schema: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: Vec<ContentBlock>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
}

/// One block of a message, in the Anthropic Messages shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text {
        text: String,
    },
    /// The model calls a tool.
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Value,
    },
    /// What a tool call returned (sent back in a user message).
    ToolResult {
        tool_use_id: String,
        content: String,
        #[serde(default)]
        is_error: bool,
    },
}

/// The one key of a `tool_use` input the host writes when the model's call
/// could not be read (an OpenAI-compatible call whose arguments were not a
/// JSON object); its value says why, in words for the model. The input stays
/// an object, so every provider accepts the transcript later, and the runner
/// answers such a call with that error instead of running the tool.
pub const INVALID_TOOL_INPUT_KEY: &str = "talon_invalid_arguments";

/// The host's answer to a model request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ModelResult {
    Ok(ModelReply),
    Error(ModelFailure),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReply {
    pub id: String,
    pub content: Vec<ContentBlock>,
    /// Anthropic's words whichever provider answered: `end_turn`,
    /// `tool_use`, `max_tokens`, `pause_turn`, `refusal`, `stop_sequence`,
    /// plus `content_filter` for an OpenAI-compatible filter stop.
    pub stop_reason: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFailure {
    pub kind: ErrorKind,
    pub message: String,
}

/// One classification of failures for the whole system: it alone decides
/// whether something is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 429: retry after the server's delay.
    RateLimited,
    /// 5xx, timeouts, connection resets: retry with backoff.
    Temporary,
    /// Bad credentials (401/403): retrying cannot help; the user must act.
    Auth,
    /// Anything else a retry cannot fix (400, unknown model, malformed reply).
    Permanent,
    /// The provider cannot be reached at all: its circuit is open. The host
    /// pauses the batch (no retry spent) until a probe gets an answer.
    Unavailable,
}

/// Something the agent asks the host to do on its behalf.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum HostAction {
    /// Send a message to a chat now; `chat_id` defaults to the group's own.
    SendMessage {
        #[serde(default)]
        chat_id: Option<String>,
        text: String,
    },
    /// Schedule a task for the group (main may name another group's chat).
    ScheduleTask {
        prompt: String,
        /// `cron`, `interval` or `once`.
        schedule_type: String,
        /// A 5-field cron expression, milliseconds, or an RFC 3339 time.
        schedule_value: String,
        /// `group` (the group's session) or `isolated`.
        #[serde(default)]
        context_mode: Option<String>,
        #[serde(default)]
        chat_id: Option<String>,
    },
    ListTasks,
    PauseTask {
        task_id: String,
    },
    ResumeTask {
        task_id: String,
    },
    CancelTask {
        task_id: String,
    },
    UpdateTask {
        task_id: String,
        #[serde(default)]
        prompt: Option<String>,
        #[serde(default)]
        schedule_type: Option<String>,
        #[serde(default)]
        schedule_value: Option<String>,
    },
    /// Register a chat as a group (main only).
    RegisterGroup {
        chat_id: String,
        name: String,
        folder: String,
        #[serde(default)]
        requires_trigger: Option<bool>,
        #[serde(default)]
        trigger: Option<String>,
    },
    /// Fetch a URL (done by the host, with a size cap and private addresses refused).
    WebFetch {
        url: String,
        #[serde(default)]
        max_bytes: Option<u64>,
    },
}

/// The host's answer to a [`HostAction`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum HostResult {
    /// Done; `content` is what the tool call returns to the model.
    Ok { content: String },
    /// Refused or failed, in words the model can act on.
    Error { message: String },
}

impl ErrorKind {
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::RateLimited | ErrorKind::Temporary)
    }
}

/// The Messages API's error `type` for a status, for an error answer made
/// by talon itself (the runner's or the host's side of the proxy).
pub fn api_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// Serialises one message as a protocol line (with the trailing newline).
pub fn encode_line<T: Serialize>(message: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_line_round_trips() {
        let start = HostToRunner::Start(StartRun {
            protocol: PROTOCOL_VERSION,
            group_folder: "main".into(),
            chat_id: "term:local".into(),
            is_main: true,
            session_id: None,
            resume_at: None,
            prompt: "<messages/>".into(),
            assistant_name: "Talon".into(),
            timezone: "UTC".into(),
            heartbeat_ms: None,
            runtime: AgentRuntime::Talon,
            model: None,
        });
        let line = encode_line(&start).unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        let back: HostToRunner = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, start);
    }

    #[test]
    fn tags_are_stable_snake_case() {
        let line = serde_json::to_string(&RunnerToHost::Output { text: "hi".into() }).unwrap();
        assert_eq!(line, r#"{"type":"output","text":"hi"}"#);
        let close = serde_json::to_string(&HostToRunner::Close).unwrap();
        assert_eq!(close, r#"{"type":"close"}"#);
        let err = ModelResult::Error(ModelFailure {
            kind: ErrorKind::RateLimited,
            message: "slow down".into(),
        });
        let json = serde_json::to_string(&err).unwrap();
        assert_eq!(
            json,
            r#"{"status":"error","kind":"rate_limited","message":"slow down"}"#
        );
    }

    #[test]
    fn tool_blocks_and_host_actions_have_the_documented_shape() {
        let block = ContentBlock::ToolUse {
            id: "toolu_1".into(),
            name: "bash".into(),
            input: serde_json::json!({"command": "ls"}),
        };
        assert_eq!(
            serde_json::to_string(&block).unwrap(),
            r#"{"type":"tool_use","id":"toolu_1","name":"bash","input":{"command":"ls"}}"#
        );
        let request = RunnerToHost::HostRequest {
            request_id: 7,
            action: HostAction::SendMessage {
                chat_id: None,
                text: "hi".into(),
            },
        };
        let line = serde_json::to_string(&request).unwrap();
        assert_eq!(
            line,
            r#"{"type":"host_request","request_id":7,"action":{"action":"send_message","chat_id":null,"text":"hi"}}"#
        );
        assert_eq!(
            serde_json::from_str::<RunnerToHost>(&line).unwrap(),
            request
        );
        let result = HostToRunner::HostResponse {
            request_id: 7,
            result: HostResult::Error {
                message: "not allowed".into(),
            },
        };
        let back: HostToRunner =
            serde_json::from_str(&serde_json::to_string(&result).unwrap()).unwrap();
        assert_eq!(back, result);
    }

    #[test]
    fn runtime_defaults_to_talon_and_names_are_kebab_case() {
        let line = r#"{"type":"start","protocol":1,"group_folder":"g","chat_id":"c","is_main":false,"session_id":null,"resume_at":null,"prompt":"p","assistant_name":"A","timezone":"UTC"}"#;
        let HostToRunner::Start(start) = serde_json::from_str(line).unwrap() else {
            panic!("not a start line");
        };
        assert_eq!(start.runtime, AgentRuntime::Talon);
        assert_eq!(
            serde_json::to_string(&AgentRuntime::ClaudeCode).unwrap(),
            r#""claude-code""#
        );
        assert_eq!("claude-code".parse(), Ok(AgentRuntime::ClaudeCode));
        assert!("claude".parse::<AgentRuntime>().is_err());
    }

    #[test]
    fn api_lines_round_trip() {
        let request = RunnerToHost::ApiRequest {
            request_id: 3,
            request: ApiRequest {
                method: "POST".into(),
                path: "/v1/messages?beta=true".into(),
                headers: vec![("x-api-key".into(), "placeholder".into())],
                body: "{}".into(),
            },
        };
        let back: RunnerToHost =
            serde_json::from_str(&serde_json::to_string(&request).unwrap()).unwrap();
        assert_eq!(back, request);
        let end = HostToRunner::ApiResponseEnd {
            request_id: 3,
            error: None,
        };
        assert_eq!(
            serde_json::to_string(&end).unwrap(),
            r#"{"type":"api_response_end","request_id":3}"#
        );
    }

    #[test]
    fn unknown_type_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<RunnerToHost>(r#"{"type":"bogus"}"#).is_err());
        assert!(serde_json::from_str::<RunnerToHost>("not json").is_err());
        assert!(serde_json::from_str::<RunnerToHost>("").is_err());
    }
}
