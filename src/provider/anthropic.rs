//! The Anthropic Messages API provider (`POST /v1/messages`).
//!
//! Authenticates with either an API key (`x-api-key`) or a Claude OAuth token
//! (`authorization: Bearer` plus the OAuth beta header), never both. Tool
//! definitions and `tool_use` / `tool_result` blocks travel in the API's own
//! shape, which the wire [`ContentBlock`] already mirrors, except that a
//! `tool_use` input is always sent as an object (`object_inputs`). Retries
//! and failure sentences are the shared ones in `http.rs`; the credential
//! never appears in a message or a log line.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::circuit::Circuit;
use super::credential::SharedCredentials;
use super::http::{self, CallContext};
use super::{Credential, ErrorKind, ModelFailure, ModelReply, ModelRequest, Provider, RetryPolicy};
use crate::messages::wire::{ChatMessage, ContentBlock, ToolSpec};

/// Where the real API lives; `ANTHROPIC_BASE_URL` overrides it.
pub const ANTHROPIC_DEFAULT_BASE_URL: &str = "https://api.anthropic.com";

const API_VERSION: &str = "2023-06-01";
/// Required alongside an OAuth bearer token, or the API refuses it.
const OAUTH_BETA: &str = "oauth-2025-04-20";

/// Everything an [`AnthropicProvider`] needs. `Debug` is safe to log: the
/// credential is never shown.
#[derive(Clone)]
pub struct AnthropicConfig {
    /// Scheme and host, without `/v1`: [`ANTHROPIC_DEFAULT_BASE_URL`] or a proxy.
    pub base_url: String,
    /// Asked for the credential of every call (the token manager, or a
    /// fixed one).
    pub credential: SharedCredentials,
    pub model: String,
    /// Limit for one attempt (connect, send, and read the whole reply).
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for AnthropicConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Calls the Anthropic Messages API. Cheap to share: one connection pool.
#[derive(Debug)]
pub struct AnthropicProvider {
    client: reqwest::Client,
    messages_url: reqwest::Url,
    /// The base URL itself, which an open circuit's probe asks.
    probe_url: reqwest::Url,
    /// Shared by every copy ([`Provider::with_model`]): one per endpoint.
    circuit: Arc<Circuit>,
    config: AnthropicConfig,
}

impl AnthropicProvider {
    /// Validates the configuration up front, so a bad URL or an unsendable
    /// credential is reported at start-up, not on the first message.
    pub fn new(config: AnthropicConfig) -> Result<Self, ModelFailure> {
        let messages_url = http::endpoint("Anthropic", &config.base_url, "/v1/messages")?;
        let probe_url = http::endpoint("Anthropic", &config.base_url, "/")?;
        let client = http::client(config.request_timeout)?;
        let circuit = Circuit::new("anthropic", config.retry.probe_interval);
        Ok(AnthropicProvider {
            client,
            messages_url,
            probe_url,
            circuit,
            config,
        })
    }

    async fn complete_with_retries(
        &self,
        request: ModelRequest,
    ) -> Result<ModelReply, ModelFailure> {
        let body = {
            let messages = object_inputs(&request.messages);
            http::json_body(&MessagesBody {
                model: &self.config.model,
                max_tokens: request.max_tokens,
                system: &request.system,
                messages: &messages,
                tools: &request.tools,
            })?
        };
        // Only the bytes are kept for the call and its retries.
        drop(request);
        let source = &self.config.credential;
        let credential = source.current().await.ok_or_else(no_credential)?;
        let failure = match self.call(&body, &credential).await {
            Err(failure) => failure,
            done => return done,
        };
        if !matches!(credential, Credential::OAuthToken(_)) {
            return Err(failure);
        }
        // An OAuth token the API refuses gets one forced refresh and one
        // retry; a spent subscription, one retry on the fallback key.
        let next = if failure.kind == ErrorKind::Auth {
            source.rejected(credential).await
        } else if http::is_usage_limit(&failure) {
            source.exhausted(credential).await
        } else {
            None
        };
        match next {
            Some(next) => self.call(&body, &next).await,
            None => Err(failure),
        }
    }

    /// One call (with its retries) under one credential.
    async fn call(
        &self,
        body: &Bytes,
        credential: &Credential,
    ) -> Result<ModelReply, ModelFailure> {
        let headers = request_headers(credential)?;
        let context = call_context(&self.config, credential);
        let call = http::complete_with_retries(&self.config.retry, &context, || {
            http::attempt(
                &self.client,
                &self.messages_url,
                &headers,
                body,
                parse_reply,
            )
        });
        http::through_circuit(&self.circuit, &self.client, &self.probe_url, call).await
    }
}

impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        "anthropic"
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    fn complete(&self, request: ModelRequest) -> BoxFuture<'_, Result<ModelReply, ModelFailure>> {
        Box::pin(self.complete_with_retries(request))
    }

    fn with_model(&self, model: &str) -> Option<Arc<dyn Provider>> {
        // reqwest's client is a handle: the clone shares the pool.
        Some(Arc::new(AnthropicProvider {
            client: self.client.clone(),
            messages_url: self.messages_url.clone(),
            probe_url: self.probe_url.clone(),
            circuit: Arc::clone(&self.circuit),
            config: AnthropicConfig {
                model: model.to_string(),
                ..self.config.clone()
            },
        }))
    }

    fn circuit(&self) -> Option<Arc<Circuit>> {
        Some(Arc::clone(&self.circuit))
    }
}

/// No credential at all: what to set, in one line.
fn no_credential() -> ModelFailure {
    ModelFailure {
        kind: ErrorKind::Auth,
        message: "no model credential: sign in with `claude` (a Claude subscription) or set \
                  ANTHROPIC_API_KEY_FALLBACK / ANTHROPIC_API_KEY"
            .into(),
    }
}

fn call_context<'a>(config: &'a AnthropicConfig, credential: &'a Credential) -> CallContext<'a> {
    let (auth_hint, secret) = match credential {
        Credential::ApiKey(key) => ("check ANTHROPIC_API_KEY", key.expose()),
        Credential::OAuthToken(token) => (
            "the Claude login may have expired; sign in again",
            token.expose(),
        ),
    };
    CallContext {
        provider: "anthropic",
        model: &config.model,
        base_url: &config.base_url,
        request_timeout: config.request_timeout,
        auth_hint,
        secret,
    }
}

fn request_headers(credential: &Credential) -> Result<HeaderMap, ModelFailure> {
    let unsendable = || ModelFailure {
        kind: ErrorKind::Auth,
        message:
            "the Anthropic credential contains characters that cannot be sent in an HTTP header"
                .into(),
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static("anthropic-version"),
        HeaderValue::from_static(API_VERSION),
    );
    let (name, mut value) = match credential {
        Credential::ApiKey(key) => (
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_str(key.expose()).map_err(|_| unsendable())?,
        ),
        Credential::OAuthToken(token) => {
            headers.insert(
                HeaderName::from_static("anthropic-beta"),
                HeaderValue::from_static(OAUTH_BETA),
            );
            (
                reqwest::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| unsendable())?,
            )
        }
    };
    value.set_sensitive(true);
    headers.insert(name, value);
    Ok(headers)
}

/// The request body of `POST /v1/messages`. The wire `ChatMessage` and
/// `ToolSpec` already have the Messages API shape (`{role, content:[…]}`,
/// `{name, description, input_schema}`).
#[derive(Serialize)]
struct MessagesBody<'a> {
    model: &'a str,
    max_tokens: u32,
    /// The API rejects an empty system prompt; an absent one is fine.
    #[serde(skip_serializing_if = "str::is_empty")]
    system: &'a str,
    messages: &'a [ChatMessage],
    /// The API rejects an empty list; no tools means no field.
    #[serde(skip_serializing_if = "<[ToolSpec]>::is_empty")]
    tools: &'a [ToolSpec],
}

/// The messages with every `tool_use` input an object: the API refuses any
/// other input, and a transcript written before the LIGHT tier normalised
/// its calls may hold a string (unparseable arguments) or `null`. Those calls
/// already have their results, so `{}` loses nothing the model needs.
/// Borrowed when nothing needs fixing, which is every request in practice.
fn object_inputs(messages: &[ChatMessage]) -> Cow<'_, [ChatMessage]> {
    let not_object = |block: &ContentBlock| match block {
        ContentBlock::ToolUse { input, .. } => !input.is_object(),
        _ => false,
    };
    if !messages.iter().flat_map(|m| &m.content).any(not_object) {
        return Cow::Borrowed(messages);
    }
    let mut fixed = messages.to_vec();
    for block in fixed.iter_mut().flat_map(|m| &mut m.content) {
        if let ContentBlock::ToolUse { input, .. } = block {
            if !input.is_object() {
                *input = serde_json::Value::Object(serde_json::Map::new());
            }
        }
    }
    Cow::Owned(fixed)
}

#[derive(Deserialize)]
struct MessagesResponse {
    id: String,
    content: Vec<ResponseBlock>,
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Usage,
}

/// Content blocks of a reply; kinds talon does not handle (thinking, …) are
/// skipped rather than failing the whole reply.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: serde_json::Value,
    },
    #[serde(other)]
    Unhandled,
}

#[derive(Deserialize, Default)]
struct Usage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

fn parse_reply(bytes: &[u8]) -> Result<ModelReply, serde_json::Error> {
    let response: MessagesResponse = serde_json::from_slice(bytes)?;
    let content = response
        .content
        .into_iter()
        .filter_map(|block| match block {
            ResponseBlock::Text { text } => Some(ContentBlock::Text { text }),
            ResponseBlock::ToolUse { id, name, input } => {
                Some(ContentBlock::ToolUse { id, name, input })
            }
            ResponseBlock::Unhandled => None,
        })
        .collect();
    Ok(ModelReply {
        id: response.id,
        content,
        stop_reason: response.stop_reason,
        input_tokens: response.usage.input_tokens,
        output_tokens: response.usage.output_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::classify_status;
    use crate::provider::http::{AttemptFailure, Cause};
    use crate::secret::Secret;
    use reqwest::StatusCode;

    fn config(credential: Credential) -> AnthropicConfig {
        AnthropicConfig {
            base_url: "http://127.0.0.1:1".into(),
            credential: credential.into(),
            model: "claude-test".into(),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }

    fn key() -> Credential {
        Credential::ApiKey(Secret::new("sk-ant-canary"))
    }

    fn status_failure(code: u16, message: &str) -> AttemptFailure {
        AttemptFailure {
            kind: classify_status(code),
            cause: Cause::Status {
                status: StatusCode::from_u16(code).unwrap(),
                error_type: Some("some_error".into()),
                message: Some(message.into()),
            },
            retry_after: None,
            unreachable: false,
        }
    }

    #[test]
    fn replies_keep_text_and_tool_use_blocks_and_skip_unknown_ones() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant",
            "content":[{"type":"thinking","thinking":"hm"},{"type":"text","text":"hi"},
                       {"type":"tool_use","id":"toolu_1","name":"bash","input":{"command":"ls"}},
                       {"type":"text","text":"there"}],
            "stop_reason":"tool_use","usage":{"input_tokens":12,"output_tokens":3}}"#;
        let reply = parse_reply(body).unwrap();
        assert_eq!(reply.id, "msg_1");
        assert_eq!(
            reply.content,
            vec![
                ContentBlock::Text { text: "hi".into() },
                ContentBlock::ToolUse {
                    id: "toolu_1".into(),
                    name: "bash".into(),
                    input: serde_json::json!({"command": "ls"}),
                },
                ContentBlock::Text {
                    text: "there".into()
                }
            ]
        );
        assert_eq!(reply.stop_reason.as_deref(), Some("tool_use"));
        assert_eq!((reply.input_tokens, reply.output_tokens), (12, 3));
    }

    #[test]
    fn tools_and_tool_blocks_are_sent_in_the_messages_api_shape() {
        let messages = vec![
            ChatMessage {
                role: crate::messages::wire::Role::Assistant,
                content: vec![ContentBlock::ToolUse {
                    id: "toolu_1".into(),
                    name: "bash".into(),
                    input: serde_json::json!({"command": "ls"}),
                }],
            },
            ChatMessage {
                role: crate::messages::wire::Role::User,
                content: vec![ContentBlock::ToolResult {
                    tool_use_id: "toolu_1".into(),
                    content: "a.txt".into(),
                    is_error: false,
                }],
            },
        ];
        let tools = vec![ToolSpec {
            name: "bash".into(),
            description: "run a command".into(),
            input_schema: serde_json::json!({"type":"object","properties":{"command":{"type":"string"}}}),
        }];
        let body = MessagesBody {
            model: "m",
            max_tokens: 64,
            system: "",
            messages: &messages,
            tools: &tools,
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json["tools"],
            serde_json::json!([{"name":"bash","description":"run a command",
                "input_schema":{"type":"object","properties":{"command":{"type":"string"}}}}])
        );
        assert_eq!(
            json["messages"][0]["content"][0],
            serde_json::json!({"type":"tool_use","id":"toolu_1","name":"bash","input":{"command":"ls"}})
        );
        assert_eq!(
            json["messages"][1]["content"][0],
            serde_json::json!({"type":"tool_result","tool_use_id":"toolu_1","content":"a.txt","is_error":false})
        );
    }

    #[test]
    fn a_tool_use_input_is_always_sent_as_an_object() {
        use crate::messages::wire::Role;
        let call = |id: &str, input: serde_json::Value| ContentBlock::ToolUse {
            id: id.into(),
            name: "bash".into(),
            input,
        };
        let messages = vec![
            ChatMessage {
                role: Role::User,
                content: vec![ContentBlock::Text { text: "go".into() }],
            },
            ChatMessage {
                role: Role::Assistant,
                content: vec![
                    call("t1", serde_json::json!("{broken")),
                    call("t2", serde_json::Value::Null),
                    call("t3", serde_json::json!([1, 2])),
                    call("t4", serde_json::json!({"command": "ls"})),
                ],
            },
        ];
        let fixed = object_inputs(&messages);
        assert!(matches!(fixed, Cow::Owned(_)));
        let body = MessagesBody {
            model: "m",
            max_tokens: 64,
            system: "",
            messages: &fixed,
            tools: &[],
        };
        let json = serde_json::to_value(&body).unwrap();
        let inputs: Vec<&serde_json::Value> = json["messages"][1]["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|block| &block["input"])
            .collect();
        assert_eq!(
            inputs,
            [
                &serde_json::json!({}),
                &serde_json::json!({}),
                &serde_json::json!({}),
                &serde_json::json!({"command": "ls"}),
            ]
        );
        // The rest of the conversation is untouched.
        assert_eq!(json["messages"][0]["content"][0]["text"], "go");
        assert_eq!(json["messages"][1]["content"][0]["id"], "t1");
        // A conversation with nothing to fix is sent as it is, uncopied.
        let clean = &messages[..1];
        assert!(matches!(object_inputs(clean), Cow::Borrowed(_)));
    }

    #[test]
    fn a_reply_without_content_is_malformed() {
        assert!(parse_reply(br#"{"id":"msg_1","type":"message"}"#).is_err());
        assert!(parse_reply(b"{\"id\":").is_err());
    }

    #[test]
    fn body_has_the_messages_api_shape_and_omits_an_empty_system() {
        let messages = vec![ChatMessage {
            role: crate::messages::wire::Role::User,
            content: vec![ContentBlock::Text {
                text: "hello".into(),
            }],
        }];
        let body = MessagesBody {
            model: "m",
            max_tokens: 64,
            system: "",
            messages: &messages,
            tools: &[],
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"model":"m","max_tokens":64,
                "messages":[{"role":"user","content":[{"type":"text","text":"hello"}]}]})
        );
        let body = MessagesBody {
            system: "be brief",
            ..body
        };
        assert_eq!(serde_json::to_value(&body).unwrap()["system"], "be brief");
    }

    #[test]
    fn oauth_sends_bearer_and_beta_and_no_api_key() {
        let headers = request_headers(&Credential::OAuthToken(Secret::new("tok"))).unwrap();
        assert_eq!(headers["authorization"], "Bearer tok");
        assert_eq!(headers["anthropic-beta"], OAUTH_BETA);
        assert!(headers.get("x-api-key").is_none());
        let headers = request_headers(&Credential::ApiKey(Secret::new("key"))).unwrap();
        assert_eq!(headers["x-api-key"], "key");
        assert!(headers.get("authorization").is_none());
        assert!(headers.get("anthropic-beta").is_none());
        assert_eq!(headers["anthropic-version"], API_VERSION);
    }

    #[test]
    fn a_credential_with_a_newline_is_refused_without_echoing_it() {
        let failure = request_headers(&Credential::ApiKey(Secret::new("sk\nbad"))).unwrap_err();
        assert_eq!(failure.kind, ErrorKind::Auth);
        assert!(!failure.message.contains("sk"), "{}", failure.message);
    }

    #[test]
    fn bad_base_urls_are_refused_at_construction() {
        for url in ["not a url", "ftp://example.com"] {
            let mut cfg = config(Credential::ApiKey(Secret::new("k")));
            cfg.base_url = url.into();
            let failure = AnthropicProvider::new(cfg).unwrap_err();
            assert_eq!(failure.kind, ErrorKind::Permanent, "{url}");
        }
    }

    #[test]
    fn provider_debug_hides_the_credential() {
        let provider =
            AnthropicProvider::new(config(Credential::OAuthToken(Secret::new("oauth-canary"))))
                .unwrap();
        let shown = format!("{provider:?}");
        assert!(!shown.contains("oauth-canary"), "{shown}");
    }

    #[test]
    fn a_copy_with_another_model_keeps_the_endpoint_and_credential() {
        let provider =
            AnthropicProvider::new(config(Credential::ApiKey(Secret::new("key-canary")))).unwrap();
        let copy = provider.with_model("claude-special").unwrap();
        assert_eq!((copy.name(), copy.model()), ("anthropic", "claude-special"));
        assert_eq!(provider.model(), "claude-test");
        // The copy's call context names its own model and the same endpoint.
        let copied = AnthropicConfig {
            model: copy.model().to_string(),
            ..provider.config.clone()
        };
        let key = key();
        let context = call_context(&copied, &key);
        assert_eq!(
            (context.model, context.base_url),
            ("claude-special", "http://127.0.0.1:1")
        );
    }

    #[test]
    fn user_messages_are_short_and_actionable() {
        let cfg = config(Credential::ApiKey(Secret::new("sk-ant-canary")));
        assert_eq!(
            status_failure(401, "invalid x-api-key").user_message(0, &call_context(&cfg, &key())),
            "the model provider rejected the credentials (401): check ANTHROPIC_API_KEY"
        );
        assert_eq!(
            status_failure(429, "slow down").user_message(3, &call_context(&cfg, &key())),
            "the model provider is rate limiting (429) and retries ran out"
        );
        assert_eq!(
            status_failure(500, "boom").user_message(3, &call_context(&cfg, &key())),
            "the model provider failed (500 Internal Server Error) after 3 retries"
        );
        assert_eq!(
            status_failure(529, "overloaded").user_message(1, &call_context(&cfg, &key())),
            "the model provider failed (529 Overloaded) after 1 retry"
        );
        assert_eq!(
            status_failure(400, "max_tokens: too large")
                .user_message(0, &call_context(&cfg, &key())),
            "the model provider refused the request (400 some_error: max_tokens: too large)"
        );
        let timeout = AttemptFailure {
            kind: ErrorKind::Temporary,
            cause: Cause::Timeout,
            retry_after: None,
            unreachable: false,
        };
        assert_eq!(
            timeout.user_message(2, &call_context(&cfg, &key())),
            "the model provider did not answer within 30s after 2 retries"
        );
    }

    #[test]
    fn server_text_is_scrubbed_and_shortened() {
        let cfg = config(Credential::ApiKey(Secret::new("sk-ant-canary")));
        let echoed = status_failure(400, "bad key sk-ant-canary")
            .user_message(0, &call_context(&cfg, &key()));
        assert!(!echoed.contains("sk-ant-canary"), "{echoed}");
        assert!(echoed.contains("[redacted]"), "{echoed}");
        let long =
            status_failure(400, &"x".repeat(5_000)).user_message(0, &call_context(&cfg, &key()));
        assert!(long.chars().count() < 300, "{} chars", long.chars().count());
    }

    #[test]
    fn oauth_auth_failures_do_not_blame_the_api_key() {
        let cfg = config(Credential::OAuthToken(Secret::new("tok")));
        let token = Credential::OAuthToken(Secret::new("tok"));
        let message = status_failure(401, "expired").user_message(0, &call_context(&cfg, &token));
        assert!(message.contains("(401)"), "{message}");
        assert!(!message.contains("ANTHROPIC_API_KEY"), "{message}");
    }
}
