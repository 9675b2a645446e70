//! An OpenAI-compatible chat-completions provider
//! (`POST {base}/v1/chat/completions`): Ollama, vLLM, or a local copilot
//! proxy — the seeds' LIGHT tier.
//!
//! The wire protocol speaks Anthropic's shape, so this module translates:
//! the system prompt becomes a `system` message, `tool_use` blocks become an
//! assistant's `tool_calls` (arguments as a JSON string), `tool_result`
//! blocks become `role:"tool"` messages, and the reply's `finish_reason` is
//! mapped to Anthropic's `stop_reason` words so the runner's tool loop does
//! not care which provider answered. Retries and failure sentences are the
//! shared ones in `http.rs`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{self, CallContext};
use super::{ErrorKind, ModelFailure, ModelReply, ModelRequest, Provider, RetryPolicy};
use crate::messages::wire::{ChatMessage, ContentBlock, Role, ToolSpec};
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
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
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
            headers,
            config,
            auth_hint,
        })
    }

    async fn complete_with_retries(
        &self,
        request: ModelRequest,
    ) -> Result<ModelReply, ModelFailure> {
        let body = request_body(&self.config.model, &request);
        let context = CallContext {
            provider: "openai",
            model: &self.config.model,
            base_url: &self.config.base_url,
            request_timeout: self.config.request_timeout,
            auth_hint: &self.auth_hint,
            secret: self.config.api_key.as_ref().map_or("", Secret::expose),
        };
        http::complete_with_retries(&self.config.retry, &context, || {
            http::attempt(
                &self.client,
                &self.completions_url,
                &self.headers,
                &body,
                parse_reply,
            )
        })
        .await
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
            headers: self.headers.clone(),
            config: OpenAiConfig {
                model: model.to_string(),
                ..self.config.clone()
            },
            auth_hint: self.auth_hint.clone(),
        }))
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
                // Arguments the model sent as unparseable text were kept as a
                // JSON string; send that text back exactly.
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
    for call in choice.message.tool_calls {
        content.push(ContentBlock::ToolUse {
            id: call.id,
            name: call.function.name,
            input: tool_input(call.function.arguments),
        });
    }
    let usage = response.usage.unwrap_or_default();
    Ok(ModelReply {
        id: response.id,
        content,
        stop_reason: stop_reason(choice.finish_reason.as_deref(), called_tools),
        input_tokens: usage.prompt_tokens,
        output_tokens: usage.completion_tokens,
    })
}

/// Arguments arrive as a JSON string. Small local models sometimes send
/// broken JSON: keep the raw text (the tool will refuse it and the model can
/// try again) rather than failing the whole turn.
fn tool_input(arguments: String) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(&arguments).unwrap_or(Value::String(arguments))
}

/// Anthropic's stop-reason words for chat-completions finish reasons. Some
/// servers (older Ollama) say `stop` even when they called tools; the calls
/// decide.
fn stop_reason(finish_reason: Option<&str>, called_tools: bool) -> Option<String> {
    if called_tools {
        return Some("tool_use".into());
    }
    let mapped = match finish_reason? {
        "stop" => "end_turn",
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        other => other,
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
        assert_eq!(
            stop_reason(Some("stop"), false).as_deref(),
            Some("end_turn")
        );
        assert_eq!(
            stop_reason(Some("length"), false).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            stop_reason(Some("tool_calls"), false).as_deref(),
            Some("tool_use")
        );
        assert_eq!(stop_reason(Some("stop"), true).as_deref(), Some("tool_use"));
        assert_eq!(
            stop_reason(Some("content_filter"), false).as_deref(),
            Some("content_filter")
        );
        assert_eq!(stop_reason(None, false), None);
    }

    #[test]
    fn broken_arguments_are_kept_as_text_and_no_choices_is_malformed() {
        assert_eq!(tool_input("{oops".into()), Value::String("{oops".into()));
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
