//! Model providers: where the host turns a runner's [`ModelRequest`] into a
//! completion.
//!
//! The host, not the container, holds the credentials and calls the model
//! (spec §6, §7), so this is the one place that talks to a model API. A
//! provider answers with a [`ModelReply`] or a [`ModelFailure`] whose
//! [`ErrorKind`] decides, everywhere in the system, whether a retry can help.
//!
//! The retry decisions are pure functions here ([`classify_status`],
//! [`parse_retry_after`], [`retry_delay`]) so they are unit-tested without a
//! network; the HTTP clients ([`AnthropicProvider`], [`OpenAiProvider`])
//! only act on them, through the one retry loop in `http.rs`.
//!
//! The host holds two tiers (spec §7): HEAVY (the configured provider) and
//! an optional LIGHT one. [`route`] decides a batch's tier from pure rules;
//! [`Providers::for_batch`] applies it and logs every decision and model
//! call to `logs/routing-metrics.jsonl`.

mod anthropic;
pub mod circuit;
pub mod credential;
mod http;
mod openai;
pub mod proxy;
mod routed;
mod router;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;

pub use crate::messages::wire::{ErrorKind, ModelFailure, ModelReply, ModelRequest};
use crate::secret::Secret;

pub use anthropic::{AnthropicConfig, AnthropicProvider, ANTHROPIC_DEFAULT_BASE_URL};
pub use credential::{CredentialSource, SharedCredentials};
pub use openai::{OpenAiConfig, OpenAiProvider};
pub use proxy::{MessagesProxy, ProxyConfig, ProxyOutcome};
pub use routed::{Providers, RoutingDecision, RoutingLog};
pub use router::{batch_text_of_prompt, route, Tier, HEAVY_PREFIX, LIGHT_PREFIX};

/// How the host authenticates to Anthropic. Exactly one is ever used: an API
/// key silently overriding a subscription token burns prepaid credit (spec §9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A console API key, sent as `x-api-key`.
    ApiKey(Secret),
    /// A Claude OAuth access token, sent as `authorization: Bearer`.
    OAuthToken(Secret),
}

/// How often and how patiently a failed model call is retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; `0` means one attempt only.
    pub max_retries: u32,
    /// The delay before the first retry; doubled for each further one.
    pub base: Duration,
    /// No single wait is longer than this, whatever the server asks for.
    pub max_delay: Duration,
    /// A provider that cannot be reached at all is retried for at most this
    /// long; then its circuit opens and the chat is told.
    pub unreachable_after: Duration,
    /// How often an open circuit asks whether the provider is back.
    pub probe_interval: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            unreachable_after: Duration::from_secs(20),
            probe_interval: Duration::from_secs(10),
        }
    }
}

/// Something that answers model requests. Object-safe so the host can pick a
/// provider per group at run time.
pub trait Provider: Send + Sync + 'static {
    /// A short stable name for logs and routing metrics, e.g. `anthropic`.
    fn name(&self) -> &str;

    /// The model asked for, for routing metrics; empty when not known.
    fn model(&self) -> &str {
        ""
    }

    /// One completion, retries included: the result is final.
    fn complete(&self, request: ModelRequest) -> BoxFuture<'_, Result<ModelReply, ModelFailure>>;

    /// The same endpoint and credential asking for `model` instead, for a
    /// group that sets its own model; the copy shares this provider's
    /// connection pool. `None` when this provider cannot switch models.
    fn with_model(&self, model: &str) -> Option<Arc<dyn Provider>> {
        let _ = model;
        None
    }

    /// The provider's circuit, which a paused queue waits on; `None` for a
    /// provider without one.
    fn circuit(&self) -> Option<Arc<circuit::Circuit>> {
        None
    }
}

/// The failure class of a non-success HTTP status.
pub fn classify_status(status: u16) -> ErrorKind {
    match status {
        429 => ErrorKind::RateLimited,
        401 | 403 => ErrorKind::Auth,
        // 408 request timeout and 409 conflict are transient by definition;
        // 529 is Anthropic's "overloaded".
        408 | 409 | 500..=599 => ErrorKind::Temporary,
        // Any other 4xx (and anything odd) is the request's fault: a retry
        // would be refused the same way.
        _ => ErrorKind::Permanent,
    }
}

/// Reads a `Retry-After` header value: delta-seconds (`"30"`) or an HTTP-date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`, also the obsolete RFC 850 and asctime
/// forms). A date in the past means "now" (zero). `None` when unreadable.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64 is still "a very long time", not garbage.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let when = parse_http_date(value)?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

fn parse_http_date(value: &str) -> Option<SystemTime> {
    use chrono::{DateTime, NaiveDateTime};

    // IMF-fixdate is an RFC 2822 date with the zone spelled "GMT".
    if let Ok(date) = DateTime::parse_from_rfc2822(value) {
        return Some(date.into());
    }
    // RFC 850 ("Sunday, 06-Nov-94 08:49:37 GMT") and asctime
    // ("Sun Nov  6 08:49:37 1994"), which RFC 9110 says recipients must accept.
    let rfc850 = value
        .strip_suffix(" GMT")
        .and_then(|v| NaiveDateTime::parse_from_str(v, "%A, %d-%b-%y %H:%M:%S").ok());
    let naive =
        rfc850.or_else(|| NaiveDateTime::parse_from_str(value, "%a %b %e %H:%M:%S %Y").ok())?;
    Some(naive.and_utc().into())
}

/// The delay before retry number `attempt` (1-based): the server's
/// Retry-After when given (capped at `max_delay`), else
/// `base * 2^(attempt-1)` capped at `max_delay`.
pub fn retry_delay(policy: &RetryPolicy, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let wanted = match retry_after {
        Some(server_says) => server_says,
        None => {
            let doublings = attempt.saturating_sub(1);
            2u32.checked_pow(doublings)
                .and_then(|factor| policy.base.checked_mul(factor))
                .unwrap_or(policy.max_delay)
        }
    };
    wanted.min(policy.max_delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(base_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            base: Duration::from_millis(base_ms),
            max_delay: Duration::from_millis(max_ms),
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn statuses_fall_into_the_documented_classes() {
        assert_eq!(classify_status(429), ErrorKind::RateLimited);
        for status in [408, 409, 500, 502, 503, 504, 529, 599] {
            assert_eq!(classify_status(status), ErrorKind::Temporary, "{status}");
        }
        assert_eq!(classify_status(401), ErrorKind::Auth);
        assert_eq!(classify_status(403), ErrorKind::Auth);
        for status in [400, 404, 413, 422, 499] {
            assert_eq!(classify_status(status), ErrorKind::Permanent, "{status}");
        }
    }

    #[test]
    fn retry_after_reads_delta_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 30 ", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_reads_http_dates_relative_to_now() {
        // 1994-11-06T08:49:37Z, the RFC's own example.
        let then = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let now = then - Duration::from_secs(90);
        let ninety = Some(Duration::from_secs(90));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            ninety
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            ninety
        );
        assert_eq!(parse_retry_after("Sun Nov  6 08:49:37 1994", now), ninety);
    }

    #[test]
    fn retry_after_in_the_past_means_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777 + 10);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn unreadable_retry_after_is_none() {
        let now = SystemTime::now();
        for value in ["", "soon", "-5", "1.5", "Sun, 99 Nov 1994 08:49:37 GMT"] {
            assert_eq!(parse_retry_after(value, now), None, "{value:?}");
        }
    }

    #[test]
    fn backoff_doubles_from_base_up_to_the_cap() {
        let p = policy(100, 1_000);
        let delays: Vec<u64> = (1..=6)
            .map(|attempt| retry_delay(&p, attempt, None).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let p = policy(100, 1_000);
        assert_eq!(retry_delay(&p, 40, None), Duration::from_millis(1_000));
        assert_eq!(
            retry_delay(&p, u32::MAX, None),
            Duration::from_millis(1_000)
        );
        assert_eq!(retry_delay(&p, 0, None), Duration::from_millis(100));
    }

    #[test]
    fn server_retry_after_wins_but_is_capped() {
        let p = policy(100, 1_000);
        assert_eq!(retry_delay(&p, 3, Some(Duration::ZERO)), Duration::ZERO);
        assert_eq!(
            retry_delay(&p, 1, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        assert_eq!(
            retry_delay(&p, 1, Some(Duration::from_secs(3_600))),
            Duration::from_millis(1_000)
        );
    }

    #[test]
    fn credentials_never_show_in_debug() {
        let key = Credential::ApiKey(Secret::new("sk-ant-canary"));
        let token = Credential::OAuthToken(Secret::new("oauth-canary"));
        let shown = format!("{key:?} {token:?}");
        assert!(!shown.contains("canary"), "{shown}");
    }
}
