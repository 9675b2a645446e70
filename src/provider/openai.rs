//! An OpenAI-compatible chat-completions provider
//! (`POST {base}/v1/chat/completions`): Ollama, vLLM, or a local copilot
//! proxy — the seeds' LIGHT tier.
//!
//! The wire protocol speaks Anthropic's shape, so this module translates:
//! the system prompt becomes a `system` message, `tool_use` blocks become an
//! assistant's `tool_calls` (arguments as a JSON string), `tool_result`
//! blocks become `role:"tool"` messages, and the reply's `finish_reason` is
//! mapped to Anthropic's `stop_reason` words so the runner's tool loop does
//! not care which provider answered. A call's arguments always become a JSON
//! object: arguments that are not one become the wire's invalid-input marker,
//! which the runner answers with an error (`tool_input`). Retries and
//! failure sentences are the shared ones in `http.rs`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde::Deserialize;
use serde_json::{json, Value};

use super::circuit::Circuit;
use super::http::{self, CallContext};
use super::{ErrorKind, ModelFailure, ModelReply, ModelRequest, Provider, RetryPolicy};
use crate::messages::wire::{ChatMessage, ContentBlock, Role, ToolSpec, INVALID_TOOL_INPUT_KEY};
use crate::secret::Secret;

/// Everything an [`OpenAiProvider`] needs. `Debug` is safe to log: the key
/// is a [`Secret`].
#[derive(Clone, Debug)]
pub struct OpenAiConfig {
    /// Scheme and host, e.g. `http://localhost:4141`; a trailing `/v1` is
    /// accepted too, since many tools document the base URL that way.
    pub base_url: String,
    /// Sent as `Authorization: Bearer`; `None` for endpoints without auth
    /// (a local Ollama).
    pub api_key: Option<Secret>,
    pub model: String,
    /// Limit for one attempt (connect, send, and read the whole reply).
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Where the key comes from, named in auth failures (e.g. `COPILOT_API_KEY`).
    pub api_key_env: String,
}

/// Calls an OpenAI-compatible chat-completions endpoint.
#[derive(Debug)]
pub struct OpenAiProvider {
    client: reqwest::Client,
    completions_url: reqwest::Url,
    /// The base URL itself, which an open circuit's probe asks.
    probe_url: reqwest::Url,
    /// Shared by every copy ([`Provider::with_model`]): one per endpoint.
    circuit: Arc<Circuit>,
    /// Content type and, when set, the bearer key (marked sensitive).
    headers: HeaderMap,
    config: OpenAiConfig,
    auth_hint: String,
}

impl OpenAiProvider {
    /// Validates the configuration up front, so a bad URL or an unsendable
    /// key is reported at start-up, not on the first message.
    pub fn new(config: OpenAiConfig) -> Result<Self, ModelFailure> {
        let trimmed = config.base_url.trim_end_matches('/');
        let base = trimmed.strip_suffix("/v1").unwrap_or(trimmed);
        let completions_url = http::endpoint("OpenAI-compatible", base, "/v1/chat/completions")?;
        let probe_url = http::endpoint("OpenAI-compatible", base, "/")?;
        let mut headers = HeaderMap::new();
        if let Some(key) = &config.api_key {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                    ModelFailure {
                        kind: ErrorKind::Auth,
                        message: format!(
                            "{} contains characters that cannot be sent in an HTTP header",
                            config.api_key_env
                        ),
                    }
                })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let auth_hint = match config.api_key {
            Some(_) => format!("check {}", config.api_key_env),
            None => format!("the endpoint wants a key; set {}", config.api_key_env),
        };
        Ok(OpenAiProvider {
            client: http::client(config.request_timeout)?,
            completions_url,
            probe_url,
            circuit: Circuit::new("openai", config.retry.probe_interval),
            headers,
            config,
            auth_hint,
        })
    }

    async fn complete_with_retries(
        &self,
        request: ModelRequest,
    ) -> Result<ModelReply, ModelFailure> {
        // Only the bytes are kept for the call and its retries.
        let body = http::json_body(&request_body(&self.config.model, &request))?;
        drop(request);
        let context = CallContext {
            provider: "openai",
            model: &self.config.model,
            base_url: &self.config.base_url,
            request_timeout: self.config.request_timeout,
            auth_hint: &self.auth_hint,
            secret: self.config.api_key.as_ref().map_or("", Secret::expose),
        };
        let call = http::complete_with_retries(&self.config.retry, &context, || {
            http::attempt(
                &self.client,
                &self.completions_url,
                &self.headers,
                &body,
                parse_reply,
            )
        });
        http::through_circuit(&self.circuit, &self.client, &self.probe_url, call).await
    }
}

impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        "openai"
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    fn complete(&self, request: ModelRequest) -> BoxFuture<'_, Result<ModelReply, ModelFailure>> {
        Box::pin(self.complete_with_retries(request))
    }

    fn with_model(&self, model: &str) -> Option<Arc<dyn Provider>> {
        // reqwest's client is a handle: the clone shares the pool.
        Some(Arc::new(OpenAiProvider {
            client: self.client.clone(),
            completions_url: self.completions_url.clone(),
            probe_url: self.probe_url.clone(),
            circuit: Arc::clone(&self.circuit),
            headers: self.headers.clone(),
            config: OpenAiConfig {
                model: model.to_string(),
                ..self.config.clone()
            },
            auth_hint: self.auth_hint.clone(),
        }))
    }

    fn circuit(&self) -> Option<Arc<Circuit>> {
        Some(Arc::clone(&self.circuit))
    }
}

/// The chat-completions request body for `request`.
fn request_body(model: &str, request: &ModelRequest) -> Value {
    let mut messages = Vec::new();
    if !request.system.is_empty() {
        messages.push(json!({"role": "system", "content": request.system}));
    }
    for message in &request.messages {
        match message.role {
            Role::User => push_user_messages(&mut messages, message),
            Role::Assistant => messages.push(assistant_message(message)),
        }
    }
    let mut body = json!({
        "model": model,
        "max_tokens": request.max_tokens,
        "messages": messages,
    });
    if !request.tools.is_empty() {
        body["tools"] = request.tools.iter().map(tool_definition).collect();
    }
    body
}

fn tool_definition(tool: &ToolSpec) -> Value {
    json!({
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.input_schema,
        },
    })
}

/// A user turn may carry tool results and text. Tool messages must directly
/// follow the assistant message that made the calls, so they come first.
fn push_user_messages(out: &mut Vec<Value>, message: &ChatMessage) {
    let mut text = Vec::new();
    for block in &message.content {
        match block {
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                // Chat completions has no error flag; say it in the content.
                let content = if *is_error {
                    format!("Error: {content}")
                } else {
                    content.clone()
                };
                out.push(json!({"role": "tool", "tool_call_id": tool_use_id, "content": content}));
            }
            ContentBlock::Text { text: part } => text.push(part.as_str()),
            // A user never calls tools; nothing sensible to send.
            ContentBlock::ToolUse { .. } => {}
        }
    }
    if !text.is_empty() {
        out.push(json!({"role": "user", "content": text.join("\n")}));
    }
}

fn assistant_message(message: &ChatMessage) -> Value {
    let mut text = Vec::new();
    let mut tool_calls = Vec::new();
    for block in &message.content {
        match block {
            ContentBlock::Text { text: part } => text.push(part.as_str()),
            ContentBlock::ToolUse { id, name, input } => {
                // Older transcripts kept unparseable arguments as a JSON
                // string; send that text back exactly.
                let arguments = match input {
                    Value::String(raw) => raw.clone(),
                    other => other.to_string(),
                };
                tool_calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }));
            }
            ContentBlock::ToolResult { .. } => {}
        }
    }
    let mut out = json!({"role": "assistant"});
    out["content"] = if text.is_empty() && !tool_calls.is_empty() {
        Value::Null
    } else {
        Value::String(text.join("\n"))
    };
    if !tool_calls.is_empty() {
        out["tool_calls"] = Value::Array(tool_calls);
    }
    out
}

#[derive(Deserialize)]
struct CompletionResponse {
    #[serde(default)]
    id: String,
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ResponseMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ResponseMessage {
    #[serde(default)]
    content: Option<String>,
    /// Set (to the model's explanation) when the model refused.
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCall>,
}

#[derive(Deserialize)]
struct ToolCall {
    id: String,
    function: FunctionCall,
}

#[derive(Deserialize)]
struct FunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize, Default)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

fn parse_reply(bytes: &[u8]) -> Result<ModelReply, serde_json::Error> {
    let response: CompletionResponse = serde_json::from_slice(bytes)?;
    let Some(choice) = response.choices.into_iter().next() else {
        return Err(serde::de::Error::custom("the reply has no choices"));
    };
    let mut content = Vec::new();
    if let Some(text) = choice.message.content.filter(|text| !text.is_empty()) {
        content.push(ContentBlock::Text { text });
    }
    let called_tools = !choice.message.tool_calls.is_empty();
    // The explanation is not shown: the runner's refusal notice says it, the
    // same way for every provider.
    let refused = choice
        .message
        .refusal
        .is_some_and(|text| !text.trim().is_empty());
    for call in choice.message.tool_calls {
        content.push(ContentBlock::ToolUse {
            id: call.id,
            name: call.function.name,
            input: tool_input(&call.function.arguments),
        });
    }
    let usage = response.usage.unwrap_or_default();
    Ok(ModelReply {
        id: response.id,
        content,
        stop_reason: stop_reason(choice.finish_reason.as_deref(), called_tools, refused),
        input_tokens: usage.prompt_tokens,
        output_tokens: usage.completion_tokens,
    })
}

/// How much of unreadable arguments the model is shown back.
const ARGUMENTS_EXCERPT_CHARS: usize = 200;

/// A call's input, always a JSON object: the Messages API refuses anything
/// else, and a group's transcript goes to either provider later. Arguments
/// arrive as a JSON string, and small local models sometimes send broken
/// JSON or a bare value; rather than failing the whole turn, such a call
/// gets `{INVALID_TOOL_INPUT_KEY: why}` and the runner answers it with that
/// error, so the model can try again. Empty or `null` arguments mean none.
fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    let why = match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(map)) => return Value::Object(map),
        Ok(Value::Null) => return json!({}),
        Ok(other) => format!(
            "the tool call's arguments were not a JSON object but {}",
            json_kind(&other)
        ),
        Err(error) => format!("the tool call's arguments were not valid JSON: {error}"),
    };
    let mut excerpt: String = arguments.chars().take(ARGUMENTS_EXCERPT_CHARS).collect();
    if excerpt.len() < arguments.len() {
        excerpt.push_str("...");
    }
    json!({ INVALID_TOOL_INPUT_KEY: format!("{why} (they were: {excerpt})") })
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Anthropic's stop-reason words for chat-completions finish reasons (the
/// runner decides what each means for the user). A refusal, a cut or a
/// filter stop wins over tool calls: a cut call is incomplete, and a refused
/// or filtered reply must not run anything. Otherwise tool calls decide, as
/// some servers (older Ollama) say `stop` even when they called tools.
fn stop_reason(finish_reason: Option<&str>, called_tools: bool, refused: bool) -> Option<String> {
    if refused {
        return Some("refusal".into());
    }
    let mapped = match finish_reason {
        Some("length") => "max_tokens",
        Some("content_filter") => "content_filter",
        Some("refusal") => "refusal",
        _ if called_tools => "tool_use",
        None => return None,
        Some("stop") => "end_turn",
        Some("tool_calls" | "function_call") => "tool_use",
        Some(other) => other,
    };
    Some(mapped.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(role: Role, text: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: vec![ContentBlock::Text { text: text.into() }],
        }
    }

    #[test]
    fn the_request_maps_system_messages_tools_and_tool_blocks() {
        let request = ModelRequest {
            system: "be brief".into(),
            messages: vec![
                text(Role::User, "list files"),
                ChatMessage {
                    role: Role::Assistant,
                    content: vec![
                        ContentBlock::Text {
                            text: "looking".into(),
                        },
                        ContentBlock::ToolUse {
                            id: "call_1".into(),
                            name: "bash".into(),
                            input: json!({"command": "ls"}),
                        },
                    ],
                },
                ChatMessage {
                    role: Role::User,
                    content: vec![
                        ContentBlock::ToolResult {
                            tool_use_id: "call_1".into(),
                            content: "denied".into(),
                            is_error: true,
                        },
                        ContentBlock::Text {
                            text: "and?".into(),
                        },
                    ],
                },
            ],
            max_tokens: 99,
            tools: vec![ToolSpec {
                name: "bash".into(),
                description: "run".into(),
                input_schema: json!({"type": "object"}),
            }],
        };
        let body = request_body("gpt-4o-mini", &request);
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o-mini",
                "max_tokens": 99,
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "list files"},
                    {"role": "assistant", "content": "looking", "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "bash", "arguments": "{\"command\":\"ls\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "Error: denied"},
                    {"role": "user", "content": "and?"},
                ],
                "tools": [{"type": "function", "function": {
                    "name": "bash", "description": "run", "parameters": {"type": "object"}}}],
            })
        );
    }

    #[test]
    fn no_system_and_no_tools_mean_no_such_fields() {
        let request = ModelRequest {
            system: String::new(),
            messages: vec![text(Role::User, "hi")],
            max_tokens: 5,
            tools: Vec::new(),
        };
        let body = request_body("m", &request);
        assert!(body.get("tools").is_none());
        assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
    }

    #[test]
    fn an_assistant_turn_of_only_tool_calls_has_null_content() {
        let message = ChatMessage {
            role: Role::Assistant,
            content: vec![ContentBlock::ToolUse {
                id: "c".into(),
                name: "n".into(),
                input: Value::String("{broken".into()),
            }],
        };
        let out = assistant_message(&message);
        assert_eq!(out["content"], Value::Null);
        assert_eq!(out["tool_calls"][0]["function"]["arguments"], "{broken");
    }

    #[test]
    fn replies_map_text_tool_calls_and_usage() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,
            "message":{"role":"assistant","content":null,"tool_calls":[
              {"id":"call_9","type":"function","function":{"name":"bash","arguments":"{\"command\":\"ls\"}"}},
              {"id":"call_10","type":"function","function":{"name":"noop","arguments":""}}]},
            "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":40,"completion_tokens":7,"total_tokens":47}}"#;
        let reply = parse_reply(body).unwrap();
        assert_eq!(reply.id, "chatcmpl-1");
        assert_eq!(
            reply.content,
            vec![
                ContentBlock::ToolUse {
                    id: "call_9".into(),
                    name: "bash".into(),
                    input: json!({"command": "ls"}),
                },
                ContentBlock::ToolUse {
                    id: "call_10".into(),
                    name: "noop".into(),
                    input: json!({}),
                },
            ]
        );
        assert_eq!(reply.stop_reason.as_deref(), Some("tool_use"));
        assert_eq!((reply.input_tokens, reply.output_tokens), (40, 7));
    }

    #[test]
    fn finish_reasons_use_anthropic_words() {
        // (finish_reason, called tools, refusal field set) -> stop_reason
        let cases = [
            (Some("stop"), false, false, Some("end_turn")),
            (Some("length"), false, false, Some("max_tokens")),
            (Some("tool_calls"), false, false, Some("tool_use")),
            (Some("function_call"), false, false, Some("tool_use")),
            (Some("stop"), true, false, Some("tool_use")),
            (None, true, false, Some("tool_use")),
            (Some("content_filter"), false, false, Some("content_filter")),
            (Some("refusal"), false, false, Some("refusal")),
            (Some("stop"), false, true, Some("refusal")),
            (None, false, true, Some("refusal")),
            // A cut call is incomplete; a filtered one must not run.
            (Some("length"), true, false, Some("max_tokens")),
            (Some("content_filter"), true, false, Some("content_filter")),
            (Some("tool_calls"), true, true, Some("refusal")),
            (Some("load"), false, false, Some("load")),
            (None, false, false, None),
        ];
        for (finish, tools, refused, expected) in cases {
            assert_eq!(
                stop_reason(finish, tools, refused).as_deref(),
                expected,
                "{finish:?} tools={tools} refused={refused}"
            );
        }
    }

    /// The reply to a chat-completions body whose only choice is `choice`.
    fn reply_to(choice: Value) -> ModelReply {
        let body = json!({"id": "chatcmpl-x", "choices": [choice]});
        parse_reply(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn refusals_filters_cuts_and_empty_answers_reach_the_runner_as_stop_reasons() {
        let refused = reply_to(json!({
            "message": {"role": "assistant", "content": null,
                        "refusal": "I'm sorry, I cannot help with that."},
            "finish_reason": "stop"}));
        assert_eq!(refused.stop_reason.as_deref(), Some("refusal"));
        assert!(refused.content.is_empty(), "{:?}", refused.content);
        // A null refusal (what most servers send) is no refusal.
        let plain = reply_to(json!({
            "message": {"role": "assistant", "content": "hi", "refusal": null},
            "finish_reason": "stop"}));
        assert_eq!(plain.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!(
            plain.content,
            vec![ContentBlock::Text { text: "hi".into() }]
        );
        let filtered = reply_to(json!({
            "message": {"role": "assistant", "content": ""},
            "finish_reason": "content_filter"}));
        assert_eq!(filtered.stop_reason.as_deref(), Some("content_filter"));
        assert!(filtered.content.is_empty());
        let empty = reply_to(json!({
            "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}));
        assert_eq!(empty.stop_reason.as_deref(), Some("end_turn"));
        assert!(empty.content.is_empty());
        let cut = reply_to(json!({
            "message": {"role": "assistant", "content": "The first half", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "bash", "arguments": "{\"command\": \"ls"}}]},
            "finish_reason": "length"}));
        assert_eq!(cut.stop_reason.as_deref(), Some("max_tokens"));
        assert_eq!(
            cut.content[0],
            ContentBlock::Text {
                text: "The first half".into()
            }
        );
    }

    /// The reason a call's input carries, if it was marked unreadable.
    fn invalid_reason(input: &Value) -> Option<&str> {
        input.get(INVALID_TOOL_INPUT_KEY).and_then(Value::as_str)
    }

    #[test]
    fn arguments_that_are_not_a_json_object_become_an_object_with_the_marker() {
        let broken = tool_input("{oops");
        assert!(broken.is_object(), "{broken}");
        let why = invalid_reason(&broken).unwrap_or_default();
        assert!(
            why.starts_with("the tool call's arguments were not valid JSON: "),
            "{why}"
        );
        assert!(why.contains("{oops"), "{why}");
        for (arguments, kind) in [
            (r#""ls -la""#, "a string"),
            ("[1, 2]", "an array"),
            ("42", "a number"),
            ("true", "a boolean"),
        ] {
            let input = tool_input(arguments);
            assert_eq!(input.as_object().map(|o| o.len()), Some(1), "{input}");
            let why = invalid_reason(&input).unwrap_or_default();
            assert!(
                why.starts_with(&format!(
                    "the tool call's arguments were not a JSON object but {kind}"
                )),
                "{why}"
            );
        }
        // Nothing to read means no arguments, not broken ones.
        assert_eq!(tool_input(""), json!({}));
        assert_eq!(tool_input("  "), json!({}));
        assert_eq!(tool_input("null"), json!({}));
        assert_eq!(tool_input(r#"{"a": 1}"#), json!({"a": 1}));
        // A huge broken blob is not echoed whole.
        let huge = format!("{{{}", "x".repeat(10_000));
        let why = invalid_reason(&tool_input(&huge))
            .unwrap_or_default()
            .to_string();
        assert!(
            why.len() < 600 && why.ends_with("...)"),
            "{} chars",
            why.len()
        );
    }

    #[test]
    fn a_parsed_reply_holds_an_object_input_for_every_bad_call_and_no_choices_is_malformed() {
        let reply = reply_to(json!({
            "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "bash", "arguments": "{oops"}},
                {"id": "c2", "type": "function", "function": {"name": "bash", "arguments": "\"ls\""}},
                {"id": "c3", "type": "function", "function": {"name": "list", "arguments": "[]"}}]},
            "finish_reason": "tool_calls"}));
        assert_eq!(reply.content.len(), 3);
        for block in &reply.content {
            match block {
                ContentBlock::ToolUse { input, .. } => {
                    assert!(
                        input.is_object() && invalid_reason(input).is_some(),
                        "{input}"
                    )
                }
                other => panic!("expected a tool call, got {other:?}"),
            }
        }
        assert!(parse_reply(br#"{"id":"x","choices":[]}"#).is_err());
        assert!(parse_reply(b"{").is_err());
        let bare = parse_reply(br#"{"choices":[{"message":{"content":"hi"}}]}"#).unwrap();
        assert_eq!(bare.content, vec![ContentBlock::Text { text: "hi".into() }]);
        assert_eq!((bare.input_tokens, bare.output_tokens), (0, 0));
    }

    #[test]
    fn a_trailing_v1_in_the_base_url_is_not_doubled() {
        for base in [
            "http://h:4141",
            "http://h:4141/",
            "http://h:4141/v1",
            "http://h:4141/v1/",
        ] {
            let provider = OpenAiProvider::new(OpenAiConfig {
                base_url: base.into(),
                api_key: None,
                model: "m".into(),
                request_timeout: Duration::from_secs(1),
                retry: RetryPolicy::default(),
                api_key_env: "COPILOT_API_KEY".into(),
            })
            .unwrap();
            assert_eq!(
                provider.completions_url.as_str(),
                "http://h:4141/v1/chat/completions",
                "{base}"
            );
            assert!(provider.headers.get(AUTHORIZATION).is_none());
        }
    }

    #[test]
    fn the_key_is_a_bearer_header_hidden_from_debug() {
        let provider = OpenAiProvider::new(OpenAiConfig {
            base_url: "http://h".into(),
            api_key: Some(Secret::new("key-canary")),
            model: "m".into(),
            request_timeout: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            api_key_env: "COPILOT_API_KEY".into(),
        })
        .unwrap();
        assert_eq!(provider.headers[AUTHORIZATION], "Bearer key-canary");
        let shown = format!("{provider:?}");
        assert!(!shown.contains("key-canary"), "{shown}");
    }

    #[test]
    fn a_copy_with_another_model_keeps_the_endpoint_and_key() {
        let provider = OpenAiProvider::new(OpenAiConfig {
            base_url: "http://h".into(),
            api_key: Some(Secret::new("key-canary")),
            model: "m".into(),
            request_timeout: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            api_key_env: "COPILOT_API_KEY".into(),
        })
        .unwrap();
        let copy = provider.with_model("special-model").unwrap();
        assert_eq!((copy.name(), copy.model()), ("openai", "special-model"));
        assert_eq!(provider.model(), "m");
        let body = request_body(
            copy.model(),
            &ModelRequest {
                system: String::new(),
                messages: Vec::new(),
                max_tokens: 5,
                tools: Vec::new(),
            },
        );
        assert_eq!(body["model"], "special-model");
    }
}
