//! The HTTP plumbing every model provider shares: one classified round trip
//! ([`attempt`]), the retry loop around it ([`complete_with_retries`]), and
//! the user-facing failure sentences.
//!
//! Providers differ only in the request body, the headers and how a success
//! body is read, so those are the parameters; retry decisions stay in the
//! pure functions of the parent module and are made identically for every
//! provider.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use backon::Retryable;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::{
    classify_status, parse_retry_after, retry_delay, ErrorKind, ModelFailure, ModelReply,
    RetryPolicy,
};

/// Longest piece of a server's error message repeated to the user.
const MAX_SERVER_MESSAGE_CHARS: usize = 200;

/// What a provider tells the shared code about itself, for log lines and
/// failure sentences. The secret is only used to scrub echoed text.
pub(super) struct CallContext<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    pub base_url: &'a str,
    pub request_timeout: Duration,
    /// What the user should do about a 401/403, e.g. "check ANTHROPIC_API_KEY".
    pub auth_hint: &'a str,
    /// The credential's text, or "" when there is none.
    pub secret: &'a str,
}

/// How long connecting may take: a provider that does not accept a
/// connection within this is unreachable, whatever the request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the HTTP client every provider uses: one timeout per attempt.
pub(super) fn client(request_timeout: Duration) -> Result<reqwest::Client, ModelFailure> {
    crate::tls::http_client()
        .timeout(request_timeout)
        .connect_timeout(CONNECT_TIMEOUT.min(request_timeout))
        .user_agent(concat!("talon/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| permanent(format!("could not set up the HTTP client ({err})")))
}

/// Parses `{base}{path}` and insists on http(s), so a bad base URL is
/// reported at start-up.
pub(super) fn endpoint(
    label: &str,
    base_url: &str,
    path: &str,
) -> Result<reqwest::Url, ModelFailure> {
    let base = base_url.trim_end_matches('/');
    let url = reqwest::Url::parse(&format!("{base}{path}")).map_err(|err| {
        permanent(format!(
            "the {label} base URL {base_url:?} is not a valid URL ({err})"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(permanent(format!(
            "the {label} base URL {base_url:?} must start with http:// or https://"
        )));
    }
    Ok(url)
}

pub(super) fn permanent(message: String) -> ModelFailure {
    ModelFailure {
        kind: ErrorKind::Permanent,
        message,
    }
}

/// Runs `attempt` until it succeeds, fails in a way a retry cannot help, or
/// the policy's budget is spent. Every delay comes from [`retry_delay`], so
/// the server's Retry-After is honoured.
pub(super) async fn complete_with_retries<F, Fut>(
    policy: &RetryPolicy,
    context: &CallContext<'_>,
    attempt: F,
) -> Result<ModelReply, ModelFailure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<ModelReply, AttemptFailure>>,
{
    let retries_done = AtomicU32::new(0);
    let started = std::time::Instant::now();
    // The backoff iterator is only the retry budget; `adjust` replaces its
    // delays with the pure `retry_delay`, which knows about Retry-After.
    let budget = std::iter::repeat_n(Duration::ZERO, policy.max_retries as usize);
    let outcome = attempt
        .retry(budget)
        // A spent subscription does not come back within a retry's wait.
        .when(|failure: &AttemptFailure| failure.kind.is_retryable() && !failure.usage_limit())
        .adjust(|failure: &AttemptFailure, budget_left: Option<Duration>| {
            budget_left?;
            let attempt = retries_done.load(Ordering::Relaxed) + 1;
            let delay = retry_delay(policy, attempt, failure.retry_after);
            // An unreachable provider is not retried past `unreachable_after`:
            // its circuit opens and the chat is told instead.
            if failure.unreachable && started.elapsed() + delay > policy.unreachable_after {
                return None;
            }
            retries_done.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                provider = context.provider,
                model = %context.model,
                status = failure.status_code(),
                kind = ?failure.kind,
                attempt,
                max_retries = policy.max_retries,
                delay_ms = delay.as_millis() as u64,
                cause = %failure.cause.log_text(context.secret),
                "model call failed; retrying"
            );
            Some(delay)
        })
        .await;
    outcome.map_err(|failure| {
        let retries = retries_done.load(Ordering::Relaxed);
        let model_failure = ModelFailure {
            kind: if failure.unreachable {
                ErrorKind::Unavailable
            } else {
                failure.kind
            },
            message: failure.user_message(retries, context),
        };
        tracing::warn!(
            provider = context.provider,
            model = %context.model,
            status = failure.status_code(),
            kind = ?failure.kind,
            retries,
            cause = %failure.cause.log_text(context.secret),
            "model call failed: {}",
            model_failure.message
        );
        model_failure
    })
}

/// A request body serialised once. A call carries its group's whole
/// transcript (hundreds of KB), so the typed request is dropped once this
/// exists and every retry sends the same bytes (a `Bytes` clone is a count).
pub(super) fn json_body<B: Serialize + ?Sized>(body: &B) -> Result<Bytes, ModelFailure> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| ModelFailure {
            kind: ErrorKind::Permanent,
            message: format!("the model request could not be encoded: {e}"),
        })
}

/// One HTTP round trip, classified. `parse` reads a success body.
pub(super) async fn attempt(
    client: &reqwest::Client,
    url: &reqwest::Url,
    headers: &HeaderMap,
    body: &Bytes,
    parse: fn(&[u8]) -> Result<ModelReply, serde_json::Error>,
) -> Result<ModelReply, AttemptFailure> {
    // The body is always `json_body`'s, so its type is set here, once.
    let response = client
        .post(url.clone())
        .headers(headers.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(body.clone())
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
        return parse(&bytes).map_err(|err| AttemptFailure {
            kind: ErrorKind::Permanent,
            cause: Cause::Malformed(err.to_string()),
            retry_after: None,
            unreachable: false,
        });
    }
    let error = serde_json::from_slice::<ErrorBody>(&bytes)
        .ok()
        .map(|body| body.error);
    Err(AttemptFailure {
        kind: classify_status(status.as_u16()),
        cause: Cause::Status {
            status,
            error_type: error.as_ref().and_then(|e| e.kind.clone()),
            message: error.map(|e| e.message),
        },
        retry_after,
        unreachable: false,
    })
}

/// What a spent Claude subscription is called, everywhere.
pub(super) const USAGE_LIMIT_MESSAGE: &str =
    "the Claude subscription's usage limit is reached (429)";

/// The API's words for a spent subscription ("Claude AI usage limit
/// reached|<reset>"), as opposed to a plain rate limit.
fn says_usage_limit(message: &str) -> bool {
    message.to_ascii_lowercase().contains("usage limit")
}

/// Whether a call's final failure is the subscription's usage limit.
pub(super) fn is_usage_limit(failure: &ModelFailure) -> bool {
    failure.kind == ErrorKind::RateLimited && failure.message == USAGE_LIMIT_MESSAGE
}

/// Runs one call through the provider's circuit: refused at once while it
/// is open; a call that finds the provider unreachable trips it (and starts
/// the probe of `probe_url`); any success closes it.
pub(super) async fn through_circuit(
    circuit: &std::sync::Arc<super::circuit::Circuit>,
    client: &reqwest::Client,
    probe_url: &reqwest::Url,
    call: impl Future<Output = Result<ModelReply, ModelFailure>>,
) -> Result<ModelReply, ModelFailure> {
    if let Some(refused) = circuit.refusal() {
        return Err(refused);
    }
    let result = call.await;
    match &result {
        Ok(_) => circuit.close(),
        Err(failure) if failure.kind == ErrorKind::Unavailable => {
            circuit.trip(
                failure.message.clone(),
                probe(client.clone(), probe_url.clone()),
            );
        }
        Err(_) => {}
    }
    result
}

/// Whether the provider answers at all: one plain GET of `url`, no
/// credential. Any HTTP status counts (a 404 or 401 is an answer); only a
/// failure to connect, or a server error, means it is still down.
pub(super) fn probe(client: reqwest::Client, url: reqwest::Url) -> super::circuit::Probe {
    std::sync::Arc::new(move || {
        let (client, url) = (client.clone(), url.clone());
        Box::pin(async move {
            match client.get(url).send().await {
                Ok(response) => !response.status().is_server_error(),
                Err(_) => false,
            }
        })
    })
}

/// `{"error":{"type":…,"message":…}}`: Anthropic's error body, and (with
/// extra fields ignored) OpenAI's too.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: String,
}

/// One failed attempt, with what the retry loop and the final message need.
#[derive(Debug)]
pub(super) struct AttemptFailure {
    pub kind: ErrorKind,
    pub cause: Cause,
    pub retry_after: Option<Duration>,
    /// No connection could be made at all (refused, no route, DNS, connect
    /// timeout): the provider is down, not just this request.
    pub unreachable: bool,
}

#[derive(Debug)]
pub(super) enum Cause {
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
        let unreachable = err.is_connect();
        let cause = if err.is_timeout() && !unreachable {
            Cause::Timeout
        } else {
            // The URL in reqwest's text is only the (non-secret) base URL.
            Cause::Transport(error_chain(&err))
        };
        AttemptFailure {
            kind: ErrorKind::Temporary,
            cause,
            retry_after: None,
            unreachable,
        }
    }

    /// A 429 that is the subscription's usage limit, not a rate limit.
    fn usage_limit(&self) -> bool {
        match &self.cause {
            Cause::Status {
                status, message, ..
            } => status.as_u16() == 429 && message.as_deref().is_some_and(says_usage_limit),
            _ => false,
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
    pub fn user_message(&self, retries: u32, context: &CallContext<'_>) -> String {
        let after = match retries {
            0 => String::new(),
            1 => " after 1 retry".to_string(),
            n => format!(" after {n} retries"),
        };
        match (&self.cause, self.kind) {
            (Cause::Status { status, .. }, ErrorKind::Auth) => format!(
                "the model provider rejected the credentials ({}): {}",
                status.as_u16(),
                context.auth_hint
            ),
            (Cause::Status { .. }, ErrorKind::RateLimited) if self.usage_limit() => {
                USAGE_LIMIT_MESSAGE.to_string()
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
                    let message = scrub(&shorten(message), context.secret);
                    detail = format!("{detail}: {message}");
                }
                format!("the model provider refused the request ({detail})")
            }
            (Cause::Timeout, _) => format!(
                "the model provider did not answer within {}{after}",
                humantime::format_duration(context.request_timeout)
            ),
            (Cause::Transport(text), _) => format!(
                "could not reach the model provider at {} ({}){after}",
                context.base_url,
                innermost_cause(text)
            ),
            (Cause::Malformed(_), _) => {
                "the model provider sent a reply that could not be read".to_string()
            }
        }
    }
}

impl Cause {
    /// Detail for the log only; server text is scrubbed of the credential
    /// like the user message, in case a proxy echoes it back.
    fn log_text(&self, secret: &str) -> String {
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
        scrub(&text, secret)
    }
}

/// The last, most specific part of an error chain: "Connection refused
/// (os error 111)" rather than reqwest's outer layers.
fn innermost_cause(chain: &str) -> &str {
    chain.rsplit(": ").next().unwrap_or(chain).trim()
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

fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_error_bodies_are_read_like_anthropic_ones() {
        let body: ErrorBody = serde_json::from_str(
            r#"{"error":{"message":"Incorrect API key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
        )
        .unwrap();
        assert_eq!(body.error.kind.as_deref(), Some("invalid_request_error"));
        assert_eq!(body.error.message, "Incorrect API key");
        let bare: ErrorBody = serde_json::from_str(r#"{"error":{"message":"x"}}"#).unwrap();
        assert_eq!(bare.error.kind, None);
    }

    #[test]
    fn scrub_leaves_text_alone_without_a_secret() {
        assert_eq!(scrub("a b", ""), "a b");
        assert_eq!(scrub("key k1 here", "k1"), "key [redacted] here");
    }

    #[test]
    fn bad_endpoints_are_refused() {
        assert!(endpoint("x", "not a url", "/v1").is_err());
        assert!(endpoint("x", "ftp://h", "/v1").is_err());
        assert_eq!(
            endpoint("x", "http://h:1/", "/v1/chat/completions")
                .unwrap()
                .as_str(),
            "http://h:1/v1/chat/completions"
        );
    }
}
