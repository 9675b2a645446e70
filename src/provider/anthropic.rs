//! The Anthropic Messages API provider (`POST /v1/messages`).
//!
//! Authenticates with either an API key (`x-api-key`) or a Claude OAuth token
//! (`authorization: Bearer` plus the OAuth beta header), never both. Rate
//! limits and transient failures are retried with `backon`, but every delay
//! is decided by the pure [`retry_delay`], honouring the server's
//! `retry-after`. Failures come back as short sentences a chat user can act
//! on; the credential never appears in them or in any log line.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use backon::Retryable;
use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::{
    classify_status, parse_retry_after, retry_delay, Credential, ErrorKind, ModelFailure,
    ModelReply, ModelRequest, Provider, RetryPolicy,
};
use crate::messages::wire::{ChatMessage, ContentBlock};

/// Where the real API lives; `ANTHROPIC_BASE_URL` overrides it.
pub const ANTHROPIC_DEFAULT_BASE_URL: &str = "https://api.anthropic.com";

const API_VERSION: &str = "2023-06-01";
/// Required alongside an OAuth bearer token, or the API refuses it.
const OAUTH_BETA: &str = "oauth-2025-04-20";
/// Longest piece of a server's error message repeated to the user.
const MAX_SERVER_MESSAGE_CHARS: usize = 200;

/// Everything an [`AnthropicProvider`] needs. `Debug` is safe to log: the
/// credential is redacted.
#[derive(Clone, Debug)]
pub struct AnthropicConfig {
    /// Scheme and host, without `/v1`: [`ANTHROPIC_DEFAULT_BASE_URL`] or a proxy.
    pub base_url: String,
    pub credential: Credential,
    pub model: String,
    /// Limit for one attempt (connect, send, and read the whole reply).
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

/// Calls the Anthropic Messages API. Cheap to share: one connection pool.
#[derive(Debug)]
pub struct AnthropicProvider {
    client: reqwest::Client,
    messages_url: reqwest::Url,
    /// Version, content type and the credential (marked sensitive, so
    /// reqwest's own `Debug` hides it too).
    headers: HeaderMap,
    config: AnthropicConfig,
}

impl AnthropicProvider {
    /// Validates the configuration up front, so a bad URL or an unsendable
    /// credential is reported at start-up, not on the first message.
    pub fn new(config: AnthropicConfig) -> Result<Self, ModelFailure> {
        let base = config.base_url.trim_end_matches('/');
        let messages_url = reqwest::Url::parse(&format!("{base}/v1/messages")).map_err(|err| {
            permanent(format!(
                "the Anthropic base URL {:?} is not a valid URL ({err})",
                config.base_url
            ))
        })?;
        if !matches!(messages_url.scheme(), "http" | "https") {
            return Err(permanent(format!(
                "the Anthropic base URL {:?} must start with http:// or https://",
                config.base_url
            )));
        }
        let headers = request_headers(&config.credential)?;
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .user_agent(concat!("talon/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| permanent(format!("could not set up the HTTP client ({err})")))?;
        Ok(AnthropicProvider {
            client,
            messages_url,
            headers,
            config,
        })
    }

    async fn complete_with_retries(
        &self,
        request: ModelRequest,
    ) -> Result<ModelReply, ModelFailure> {
        let body = MessagesBody {
            model: &self.config.model,
            max_tokens: request.max_tokens,
            system: &request.system,
            messages: &request.messages,
        };
        let policy = &self.config.retry;
        let retries_done = AtomicU32::new(0);
        // The backoff iterator is only the retry budget; `adjust` replaces its
        // delays with the pure `retry_delay`, which knows about Retry-After.
        let budget = std::iter::repeat_n(Duration::ZERO, policy.max_retries as usize);
        let outcome = (|| self.attempt(&body))
            .retry(budget)
            .when(|failure: &AttemptFailure| failure.kind.is_retryable())
            .adjust(|failure: &AttemptFailure, budget_left: Option<Duration>| {
                budget_left?;
                let attempt = retries_done.fetch_add(1, Ordering::Relaxed) + 1;
                let delay = retry_delay(policy, attempt, failure.retry_after);
                tracing::warn!(
                                   provider = "anthropic",
                model = %self.config.model,
                                   status = failure.status_code(),
                                   kind = ?failure.kind,
                                   attempt,
                                   max_retries = policy.max_retries,
                                   delay_ms = delay.as_millis() as u64,
                                   cause = %failure.cause.log_text(&self.config.credential),
                                   "model call failed; retrying"
                               );
                Some(delay)
            })
            .await;
        outcome.map_err(|failure| {
            let retries = retries_done.load(Ordering::Relaxed);
            let model_failure = ModelFailure {
                kind: failure.kind,
                message: failure.user_message(retries, &self.config),
            };
            tracing::warn!(
                           provider = "anthropic",
            model = %self.config.model,
                           status = failure.status_code(),
                           kind = ?failure.kind,
                           retries,
                           cause = %failure.cause.log_text(&self.config.credential),
                           "model call failed: {}",
                           model_failure.message
                       );
            model_failure
        })
    }

    /// One HTTP round trip, classified.
    async fn attempt(&self, body: &MessagesBody<'_>) -> Result<ModelReply, AttemptFailure> {
        let response = self
            .client
            .post(self.messages_url.clone())
            .headers(self.headers.clone())
            .json(body)
            .send()
            .await
            .map_err(AttemptFailure::transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let bytes = response.bytes().await.map_err(AttemptFailure::transport)?;
        if status.is_success() {
            return parse_reply(&bytes).map_err(|err| AttemptFailure {
                kind: ErrorKind::Permanent,
                cause: Cause::Malformed(err.to_string()),
                retry_after: None,
            });
        }
        let error = serde_json::from_slice::<ErrorBody>(&bytes)
            .ok()
            .map(|body| body.error);
        Err(AttemptFailure {
            kind: classify_status(status.as_u16()),
            cause: Cause::Status {
                status,
                error_type: error.as_ref().map(|e| e.kind.clone()),
                message: error.map(|e| e.message),
            },
            retry_after,
        })
    }
}

impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        "anthropic"
    }

    fn complete(&self, request: ModelRequest) -> BoxFuture<'_, Result<ModelReply, ModelFailure>> {
        Box::pin(self.complete_with_retries(request))
    }
}

fn permanent(message: String) -> ModelFailure {
    ModelFailure {
        kind: ErrorKind::Permanent,
        message,
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
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
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

/// The request body of `POST /v1/messages`. The wire `ChatMessage` already
/// has the Messages API shape (`{role, content:[{type:"text",text}]}`).
#[derive(Serialize)]
struct MessagesBody<'a> {
    model: &'a str,
    max_tokens: u32,
    /// The API rejects an empty system prompt; an absent one is fine.
    #[serde(skip_serializing_if = "str::is_empty")]
    system: &'a str,
    messages: &'a [ChatMessage],
}

#[derive(Deserialize)]
struct MessagesResponse {
    id: String,
    content: Vec<ResponseBlock>,
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Usage,
}

/// Content blocks of a reply; kinds talon does not handle yet (thinking,
/// tool_use, …) are skipped rather than failing the whole reply.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseBlock {
    Text {
        text: String,
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

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
}

fn parse_reply(bytes: &[u8]) -> Result<ModelReply, serde_json::Error> {
    let response: MessagesResponse = serde_json::from_slice(bytes)?;
    let content = response
        .content
        .into_iter()
        .filter_map(|block| match block {
            ResponseBlock::Text { text } => Some(ContentBlock::Text { text }),
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

/// One failed attempt, with what the retry loop and the final message need.
#[derive(Debug)]
struct AttemptFailure {
    kind: ErrorKind,
    cause: Cause,
    retry_after: Option<Duration>,
}

#[derive(Debug)]
enum Cause {
    Status {
        status: StatusCode,
        error_type: Option<String>,
        message: Option<String>,
    },
    Timeout,
    Transport(String),
    Malformed(String),
}

impl AttemptFailure {
    /// A request that never produced a complete HTTP reply: always worth
    /// another try.
    fn transport(err: reqwest::Error) -> Self {
        let cause = if err.is_timeout() {
            Cause::Timeout
        } else {
            // The URL in reqwest's text is only the (non-secret) base URL.
            Cause::Transport(error_chain(&err))
        };
        AttemptFailure {
            kind: ErrorKind::Temporary,
            cause,
            retry_after: None,
        }
    }

    fn status_code(&self) -> Option<u16> {
        match &self.cause {
            Cause::Status { status, .. } => Some(status.as_u16()),
            _ => None,
        }
    }

    /// The final, user-facing sentence. Server text is shortened and
    /// scrubbed of the credential in case a proxy echoes it back.
    fn user_message(&self, retries: u32, config: &AnthropicConfig) -> String {
        let after = match retries {
            0 => String::new(),
            1 => " after 1 retry".to_string(),
            n => format!(" after {n} retries"),
        };
        match (&self.cause, self.kind) {
            (Cause::Status { status, .. }, ErrorKind::Auth) => {
                let hint = match config.credential {
                    Credential::ApiKey(_) => "check ANTHROPIC_API_KEY",
                    Credential::OAuthToken(_) => "the Claude login may have expired; sign in again",
                };
                format!(
                    "the model provider rejected the credentials ({}): {hint}",
                    status.as_u16()
                )
            }
            (Cause::Status { .. }, ErrorKind::RateLimited) => {
                "the model provider is rate limiting (429) and retries ran out".to_string()
            }
            (
                Cause::Status {
                    status, error_type, ..
                },
                ErrorKind::Temporary,
            ) => {
                let reason = status
                    .canonical_reason()
                    .or(match status.as_u16() {
                        529 => Some("Overloaded"),
                        _ => None,
                    })
                    .or(error_type.as_deref())
                    .unwrap_or("error");
                format!(
                    "the model provider failed ({} {reason}){after}",
                    status.as_u16()
                )
            }
            (
                Cause::Status {
                    status,
                    error_type,
                    message,
                },
                _,
            ) => {
                let mut detail = status.as_u16().to_string();
                if let Some(error_type) = error_type {
                    detail = format!("{detail} {error_type}");
                }
                if let Some(message) = message.as_deref().filter(|m| !m.is_empty()) {
                    let message = scrub(&shorten(message), &config.credential);
                    detail = format!("{detail}: {message}");
                }
                format!("the model provider refused the request ({detail})")
            }
            (Cause::Timeout, _) => format!(
                "the model provider did not answer within {}{after}",
                humantime::format_duration(config.request_timeout)
            ),
            (Cause::Transport(_), _) => {
                format!(
                    "could not reach the model provider at {}{after}",
                    config.base_url
                )
            }
            (Cause::Malformed(_), _) => {
                "the model provider sent a reply that could not be read".to_string()
            }
        }
    }
}

impl Cause {
    /// Detail for the log only; server text is scrubbed of the credential
    /// like the user message, in case a proxy echoes it back.
    fn log_text(&self, credential: &Credential) -> String {
        let text = match self {
            Cause::Status {
                status,
                error_type,
                message,
            } => format!(
                "{status} {} {}",
                error_type.as_deref().unwrap_or("-"),
                shorten(message.as_deref().unwrap_or(""))
            ),
            Cause::Timeout => "timed out".to_string(),
            Cause::Transport(text) => text.clone(),
            Cause::Malformed(text) => format!("unreadable reply: {text}"),
        };
        scrub(&text, credential)
    }
}

/// reqwest's top-level text ("error sending request") hides the useful part
/// ("connection refused"); join the sources.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn shorten(text: &str) -> String {
    let mut chars = text.chars();
    let short: String = chars.by_ref().take(MAX_SERVER_MESSAGE_CHARS).collect();
    if chars.next().is_some() {
        format!("{short}…")
    } else {
        short
    }
}

fn scrub(text: &str, credential: &Credential) -> String {
    let secret = match credential {
        Credential::ApiKey(secret) | Credential::OAuthToken(secret) => secret.expose(),
    };
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn config(credential: Credential) -> AnthropicConfig {
        AnthropicConfig {
            base_url: "http://127.0.0.1:1".into(),
            credential,
            model: "claude-test".into(),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
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
        }
    }

    #[test]
    fn replies_keep_text_blocks_and_skip_unknown_ones() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant",
            "content":[{"type":"thinking","thinking":"hm"},{"type":"text","text":"hi"},
                       {"type":"tool_use","id":"t","name":"x","input":{}},{"type":"text","text":"there"}],
            "stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3}}"#;
        let reply = parse_reply(body).unwrap();
        assert_eq!(reply.id, "msg_1");
        assert_eq!(
            reply.content,
            vec![
                ContentBlock::Text { text: "hi".into() },
                ContentBlock::Text {
                    text: "there".into()
                }
            ]
        );
        assert_eq!(reply.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!((reply.input_tokens, reply.output_tokens), (12, 3));
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
    fn user_messages_are_short_and_actionable() {
        let cfg = config(Credential::ApiKey(Secret::new("sk-ant-canary")));
        assert_eq!(
            status_failure(401, "invalid x-api-key").user_message(0, &cfg),
            "the model provider rejected the credentials (401): check ANTHROPIC_API_KEY"
        );
        assert_eq!(
            status_failure(429, "slow down").user_message(3, &cfg),
            "the model provider is rate limiting (429) and retries ran out"
        );
        assert_eq!(
            status_failure(500, "boom").user_message(3, &cfg),
            "the model provider failed (500 Internal Server Error) after 3 retries"
        );
        assert_eq!(
            status_failure(529, "overloaded").user_message(1, &cfg),
            "the model provider failed (529 Overloaded) after 1 retry"
        );
        assert_eq!(
            status_failure(400, "max_tokens: too large").user_message(0, &cfg),
            "the model provider refused the request (400 some_error: max_tokens: too large)"
        );
        let timeout = AttemptFailure {
            kind: ErrorKind::Temporary,
            cause: Cause::Timeout,
            retry_after: None,
        };
        assert_eq!(
            timeout.user_message(2, &cfg),
            "the model provider did not answer within 30s after 2 retries"
        );
    }

    #[test]
    fn server_text_is_scrubbed_and_shortened() {
        let cfg = config(Credential::ApiKey(Secret::new("sk-ant-canary")));
        let echoed = status_failure(400, "bad key sk-ant-canary").user_message(0, &cfg);
        assert!(!echoed.contains("sk-ant-canary"), "{echoed}");
        assert!(echoed.contains("[redacted]"), "{echoed}");
        let long = status_failure(400, &"x".repeat(5_000)).user_message(0, &cfg);
        assert!(long.chars().count() < 300, "{} chars", long.chars().count());
    }

    #[test]
    fn oauth_auth_failures_do_not_blame_the_api_key() {
        let cfg = config(Credential::OAuthToken(Secret::new("tok")));
        let message = status_failure(401, "expired").user_message(0, &cfg);
        assert!(message.contains("(401)"), "{message}");
        assert!(!message.contains("ANTHROPIC_API_KEY"), "{message}");
    }
}
