//! The credential proxy of the Claude Code runtime.
//!
//! Claude Code in the container has no network and a placeholder key; its
//! HTTP calls arrive here as [`ApiRequest`]s (carried over the stdio
//! protocol by the runner). Everything in them is the attacker's, so the
//! decisions are small pure functions: only the Messages endpoints pass
//! ([`check_endpoint`]), only an allowlist of headers is forwarded and the
//! real credential is put on ([`forwarded_headers`]: an API key or an OAuth
//! bearer with its beta, never both), the body must be JSON and its
//! `max_tokens` is clamped ([`prepare_body`]). The answer streams back as it
//! arrives, cut at a size cap; its usage is read from the stream
//! ([`UsageTally`]) for the run's token budget and the routing log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use super::{Credential, RoutingLog, SharedCredentials};
use crate::messages::wire::{ApiRequest, HostToRunner};

/// The Messages API version sent when Claude Code names none.
const API_VERSION: &str = "2023-06-01";
/// What an OAuth token needs beside its bearer.
const OAUTH_BETA: &str = "oauth-2025-04-20";

/// How the proxy reaches the API.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// e.g. `https://api.anthropic.com`, no trailing slash.
    pub base_url: String,
    /// How long the API may take to answer (and between two pieces).
    pub request_timeout: Duration,
    pub max_request_bytes: usize,
    pub max_response_bytes: u64,
}

/// How one proxied call went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyOutcome {
    pub status: u16,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub refused: Option<String>,
}

pub struct MessagesProxy {
    config: ProxyConfig,
    client: reqwest::Client,
    credentials: SharedCredentials,
    log: Option<Arc<RoutingLog>>,
}

/// The endpoint, if allowed: `POST /v1/messages` or
/// `/v1/messages/count_tokens`, with at most a plain query (`?beta=true`).
pub fn check_endpoint(method: &str, path: &str) -> Result<String, String> {
    if method != "POST" {
        return Err(format!(
            "{method} is not allowed; only POST to the Messages API"
        ));
    }
    let (route, query) = match path.split_once('?') {
        Some((route, query)) => (route, Some(query)),
        None => (path, None),
    };
    if route != "/v1/messages" && route != "/v1/messages/count_tokens" {
        return Err(format!("{route} is not a Messages API endpoint"));
    }
    match query {
        None => Ok(route.to_string()),
        Some(q)
            if q.len() <= 100
                && q.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"=&_-".contains(&b)) =>
        {
            Ok(format!("{route}?{q}"))
        }
        Some(_) => Err("the query string is not allowed".into()),
    }
}

fn allowed_header(name: &str) -> bool {
    matches!(
        name,
        "anthropic-version"
            | "anthropic-beta"
            | "content-type"
            | "accept"
            | "user-agent"
            | "x-app"
            | "x-claude-code-session-id"
            | "anthropic-dangerous-direct-browser-access"
    ) || name.starts_with("x-stainless-")
}

/// The headers sent upstream: the allowlisted ones the client sent, then
/// the real credential (whatever credential arrived is dropped).
pub fn forwarded_headers(
    incoming: &[(String, String)],
    credential: &Credential,
) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    let mut betas: Vec<String> = Vec::new();
    for (name, value) in incoming {
        let name = name.to_ascii_lowercase();
        if !allowed_header(&name) {
            continue;
        }
        if name == "anthropic-beta" {
            betas.extend(
                value
                    .split(',')
                    .map(|b| b.trim().to_string())
                    .filter(|b| !b.is_empty()),
            );
            continue;
        }
        let (Ok(header), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        headers.insert(header, value);
    }
    if !headers.contains_key("anthropic-version") {
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(API_VERSION),
        );
    }
    let unsendable = || "the credential cannot be sent in an HTTP header".to_string();
    let (name, mut value) = match credential {
        Credential::ApiKey(key) => (
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_str(key.expose()).map_err(|_| unsendable())?,
        ),
        Credential::OAuthToken(token) => {
            if !betas.iter().any(|b| b == OAUTH_BETA) {
                betas.push(OAUTH_BETA.into());
            }
            (
                reqwest::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| unsendable())?,
            )
        }
    };
    value.set_sensitive(true);
    headers.insert(name, value);
    let mut seen = Vec::new();
    betas.retain(|b| {
        let new = !seen.contains(b);
        seen.push(b.clone());
        new
    });
    if !betas.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&betas.join(",")) {
            headers.insert(HeaderName::from_static("anthropic-beta"), value);
        }
    }
    Ok(headers)
}

/// The body to send and its model: a JSON object, `max_tokens` clamped to
/// `cap` (a thinking budget then lowered to fit, or dropped).
pub fn prepare_body(body: &str, cap: u32) -> Result<(String, String), String> {
    let mut value: Value =
        serde_json::from_str(body).map_err(|e| format!("the body is not JSON ({e})"))?;
    let Some(object) = value.as_object_mut() else {
        return Err("the body is not a JSON object".into());
    };
    let model = object
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.trim().is_empty())
        .ok_or("the body names no model")?
        .to_string();
    // As a float too: `64000.0` or `1e12` must not slip past the cap.
    let asked = object.get("max_tokens").and_then(Value::as_f64);
    // A NaN-free JSON number above the cap, integer or float.
    let above = asked.is_some_and(|n| n > f64::from(cap));
    if !above {
        return Ok((body.to_string(), model));
    }
    object.insert("max_tokens".into(), json!(cap));
    let budget = object
        .get("thinking")
        .and_then(|t| t.get("budget_tokens"))
        .and_then(Value::as_u64);
    if let Some(budget) = budget.filter(|&b| b >= u64::from(cap)) {
        let lowered = u64::from(cap) / 2;
        if lowered < 1024 {
            object.remove("thinking");
        } else if let Some(thinking) = object.get_mut("thinking") {
            thinking["budget_tokens"] = json!(lowered.min(budget));
        }
    }
    Ok((value.to_string(), model))
}

/// Reads usage from a response as it streams (SSE), or from a JSON body.
#[derive(Debug, Default)]
pub struct UsageTally {
    pending: String,
    json: Option<String>,
    pub model: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl UsageTally {
    /// For a plain JSON answer (not SSE) the body is read once complete.
    pub fn for_json() -> UsageTally {
        UsageTally {
            json: Some(String::new()),
            ..Default::default()
        }
    }

    pub fn feed(&mut self, text: &str) {
        if let Some(body) = self.json.as_mut() {
            if body.len() < 1 << 20 {
                body.push_str(text);
            }
            return;
        }
        self.pending.push_str(text);
        while let Some(at) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=at).collect();
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                if let Ok(event) = serde_json::from_str::<Value>(data.trim()) {
                    self.on_event(&event);
                }
            }
        }
        // A line this long is no event of interest; never buffer it all.
        if self.pending.len() > 1 << 20 {
            self.pending.clear();
        }
    }

    fn on_usage(&mut self, usage: &Value) {
        let n = |key: &str| usage[key].as_u64();
        if let Some(input) = n("input_tokens") {
            self.input_tokens = input
                + n("cache_creation_input_tokens").unwrap_or(0)
                + n("cache_read_input_tokens").unwrap_or(0);
        }
        if let Some(output) = n("output_tokens") {
            self.output_tokens = output;
        }
    }

    fn on_event(&mut self, event: &Value) {
        match event["type"].as_str() {
            Some("message_start") => {
                let message = &event["message"];
                if let Some(model) = message["model"].as_str() {
                    self.model = Some(model.to_string());
                }
                self.on_usage(&message["usage"]);
            }
            Some("message_delta") => self.on_usage(&event["usage"]),
            _ => {}
        }
    }

    /// Ends the tally (reads a JSON body).
    pub fn finish(&mut self) {
        if let Some(body) = self.json.take() {
            if let Ok(value) = serde_json::from_str::<Value>(&body) {
                if let Some(model) = value["model"].as_str() {
                    self.model = Some(model.to_string());
                }
                self.on_usage(if value["usage"].is_object() {
                    &value["usage"]
                } else {
                    &value
                });
            }
        }
    }
}

/// Turns bytes arriving in any pieces into text without splitting a
/// character; invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Pieces {
    carry: Vec<u8>,
}

impl Utf8Pieces {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.carry.extend_from_slice(bytes);
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.carry) {
                Ok(valid) => {
                    text.push_str(valid);
                    self.carry.clear();
                    return text;
                }
                Err(error) => {
                    let good = error.valid_up_to();
                    text.push_str(&String::from_utf8_lossy(&self.carry[..good]));
                    match error.error_len() {
                        // An incomplete character at the end: wait for the rest.
                        None => {
                            self.carry.drain(..good);
                            return text;
                        }
                        Some(bad) => {
                            text.push('\u{FFFD}');
                            self.carry.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry.clear();
        rest
    }
}

/// The lines that answer a request the host will not forward: an error
/// status with an Anthropic-shaped body, so Claude Code shows the reason.
pub fn refusal_lines(request_id: u64, status: u16, message: &str) -> Vec<HostToRunner> {
    let kind = crate::messages::wire::api_error_type(status);
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    answer_lines(request_id, status, body.to_string())
}

/// A whole JSON answer as head, one chunk and the end.
fn answer_lines(request_id: u64, status: u16, body: String) -> Vec<HostToRunner> {
    vec![
        HostToRunner::ApiResponseHead {
            request_id,
            status,
            headers: vec![("content-type".into(), "application/json".into())],
        },
        HostToRunner::ApiResponseChunk {
            request_id,
            data: body,
        },
        HostToRunner::ApiResponseEnd {
            request_id,
            error: None,
        },
    ]
}

fn safe_response_header(name: &str) -> bool {
    matches!(
        name,
        "content-type" | "request-id" | "retry-after" | "x-should-retry"
    ) || name.starts_with("anthropic-ratelimit-")
}

impl MessagesProxy {
    pub fn new(
        config: ProxyConfig,
        credentials: SharedCredentials,
        log: Option<Arc<RoutingLog>>,
    ) -> Result<MessagesProxy, String> {
        // A stream may run for minutes: the timeout is per read, not total.
        // Never follow a redirect: reqwest would carry `x-api-key` along
        // to whatever host it names.
        let client = crate::tls::http_client()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10).min(config.request_timeout))
            .read_timeout(config.request_timeout)
            .build()
            .map_err(|e| format!("cannot set up the HTTP client ({e})"))?;
        Ok(MessagesProxy {
            config,
            client,
            credentials,
            log,
        })
    }

    fn metrics(&self, group: &str, path: &str, outcome: &ProxyOutcome, started: Instant) {
        let Some(log) = &self.log else { return };
        let mut line = json!({
            "event": "model_call",
            "runtime": "claude-code",
            "group": group,
            "provider": "anthropic",
            "model": outcome.model,
            "path": path,
            "status": outcome.status,
            "input_tokens": outcome.input_tokens,
            "output_tokens": outcome.output_tokens,
            "latency_ms": started.elapsed().as_millis() as u64,
        });
        if let Some(reason) = &outcome.refused {
            line["refused"] = json!(reason);
        }
        log.record_call(line);
    }

    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &self,
        group: &str,
        request_id: u64,
        path: &str,
        status: u16,
        reason: String,
        started: Instant,
        emit: &(dyn Fn(HostToRunner) + Send + Sync),
    ) -> ProxyOutcome {
        tracing::warn!(%group, %path, %reason, "Claude Code API request refused");
        for line in refusal_lines(request_id, status, &format!("refused by talon: {reason}")) {
            emit(line);
        }
        let outcome = ProxyOutcome {
            status,
            refused: Some(reason),
            ..Default::default()
        };
        self.metrics(group, path, &outcome, started);
        outcome
    }

    /// Forwards one request and streams its answer through `emit`: always
    /// one head, the body's pieces, then exactly one end.
    pub async fn forward(
        &self,
        group: &str,
        request_id: u64,
        mut request: ApiRequest,
        max_tokens_cap: u32,
        emit: &(dyn Fn(HostToRunner) + Send + Sync),
    ) -> ProxyOutcome {
        let started = Instant::now();
        let shown_path: String = request.path.chars().take(200).collect();
        let path = match check_endpoint(&request.method, &request.path) {
            Ok(path) => path,
            Err(reason) => {
                return self.refuse(group, request_id, &shown_path, 404, reason, started, emit)
            }
        };
        if request.body.len() > self.config.max_request_bytes {
            let reason = format!(
                "the request is {} bytes; the limit is {}",
                request.body.len(),
                self.config.max_request_bytes
            );
            return self.refuse(group, request_id, &path, 413, reason, started, emit);
        }
        let prepared = prepare_body(&request.body, max_tokens_cap);
        // Claude Code sends its whole transcript each call (up to the 6 MB
        // cap): only the prepared bytes are kept, and every attempt sends
        // them without a copy.
        request.body = String::new();
        let (body, model) = match prepared {
            Ok((body, model)) => (Bytes::from(body), model),
            Err(reason) => {
                return self.refuse(group, request_id, &path, 400, reason, started, emit)
            }
        };
        let Some(mut credential) = self.credentials.current().await else {
            let reason = "talon has no Anthropic credential: run `claude login` on the host or set ANTHROPIC_API_KEY".to_string();
            return self.refuse(group, request_id, &path, 401, reason, started, emit);
        };
        let url = format!("{}{}", self.config.base_url, path);
        let mut retried = false;
        let response = loop {
            let headers = match forwarded_headers(&request.headers, &credential) {
                Ok(headers) => headers,
                Err(reason) => {
                    return self.refuse(group, request_id, &path, 401, reason, started, emit)
                }
            };
            let sent = self
                .client
                .post(&url)
                .headers(headers)
                .body(body.clone())
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(error) => {
                    let reason = format!(
                        "talon could not reach the Anthropic API: {}",
                        error.without_url()
                    );
                    tracing::warn!(%group, %reason, "proxied API call failed");
                    for line in refusal_lines(request_id, 502, &reason) {
                        emit(line);
                    }
                    let outcome = ProxyOutcome {
                        status: 502,
                        model,
                        ..Default::default()
                    };
                    self.metrics(group, &path, &outcome, started);
                    return outcome;
                }
            };
            let status = response.status().as_u16();
            if retried || !(status == 401 || status == 429) {
                break response;
            }
            // A refused token is refreshed once; a spent subscription falls
            // back to the key, if there is one. Otherwise the answer stands.
            let better = if status == 401 {
                self.credentials.rejected(credential.clone()).await
            } else {
                let text = response.text().await.unwrap_or_default();
                if text.to_ascii_lowercase().contains("usage limit") {
                    self.credentials.exhausted(credential.clone()).await
                } else {
                    // An upstream error already read is passed on as it was.
                    for line in answer_lines(request_id, status, text) {
                        emit(line);
                    }
                    let outcome = ProxyOutcome {
                        status,
                        model,
                        ..Default::default()
                    };
                    self.metrics(group, &path, &outcome, started);
                    return outcome;
                }
            };
            match better {
                Some(next) => {
                    credential = next;
                    retried = true;
                }
                None => {
                    retried = true;
                    continue;
                }
            }
        };
        self.stream_back(group, request_id, &path, model, response, started, emit)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_back(
        &self,
        group: &str,
        request_id: u64,
        path: &str,
        model: String,
        response: reqwest::Response,
        started: Instant,
        emit: &(dyn Fn(HostToRunner) + Send + Sync),
    ) -> ProxyOutcome {
        let status = response.status().as_u16();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter(|(name, _)| safe_response_header(name.as_str()))
            .filter_map(|(name, value)| {
                Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
            })
            .collect();
        let is_json = headers
            .iter()
            .any(|(n, v)| n == "content-type" && v.contains("application/json"));
        emit(HostToRunner::ApiResponseHead {
            request_id,
            status,
            headers,
        });
        let mut tally = if is_json {
            UsageTally::for_json()
        } else {
            UsageTally::default()
        };
        let mut pieces = Utf8Pieces::default();
        let mut total: u64 = 0;
        let mut cut = None;
        let mut stream = response.bytes_stream();
        while let Some(piece) = stream.next().await {
            match piece {
                Ok(bytes) => {
                    total += bytes.len() as u64;
                    if total > self.config.max_response_bytes {
                        cut = Some(format!(
                            "the answer passed the {}-byte cap",
                            self.config.max_response_bytes
                        ));
                        break;
                    }
                    let text = pieces.push(&bytes);
                    if !text.is_empty() {
                        tally.feed(&text);
                        emit(HostToRunner::ApiResponseChunk {
                            request_id,
                            data: text,
                        });
                    }
                }
                Err(error) => {
                    cut = Some(format!("the answer broke off: {}", error.without_url()));
                    break;
                }
            }
        }
        let rest = pieces.finish();
        if !rest.is_empty() && cut.is_none() {
            tally.feed(&rest);
            emit(HostToRunner::ApiResponseChunk {
                request_id,
                data: rest,
            });
        }
        tally.finish();
        if let Some(reason) = &cut {
            tracing::warn!(%group, %reason, "a proxied answer was cut");
        }
        emit(HostToRunner::ApiResponseEnd {
            request_id,
            error: cut,
        });
        let outcome = ProxyOutcome {
            status,
            model: tally.model.clone().unwrap_or(model),
            input_tokens: tally.input_tokens,
            output_tokens: tally.output_tokens,
            refused: None,
        };
        self.metrics(group, path, &outcome, started);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn only_the_messages_endpoints_pass() {
        assert_eq!(
            check_endpoint("POST", "/v1/messages?beta=true").unwrap(),
            "/v1/messages?beta=true"
        );
        assert_eq!(
            check_endpoint("POST", "/v1/messages/count_tokens").unwrap(),
            "/v1/messages/count_tokens"
        );
        for (method, path) in [
            ("GET", "/v1/messages"),
            ("POST", "/v1/files"),
            ("POST", "/v1/messages/../files"),
            ("POST", "/v1/messages%2f..%2ffiles"),
            ("POST", "http://evil/v1/messages"),
            ("POST", "/v1/messages?x=%0d%0a"),
            ("POST", "/v1/complete"),
        ] {
            assert!(check_endpoint(method, path).is_err(), "{method} {path}");
        }
    }

    fn incoming() -> Vec<(String, String)> {
        [
            ("x-api-key", "placeholder"),
            ("authorization", "Bearer stolen"),
            ("cookie", "c"),
            ("anthropic-beta", "claude-code-20250219, oauth-2025-04-20"),
            ("x-stainless-os", "Linux"),
            ("accept-encoding", "gzip"),
            ("host", "127.0.0.1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn an_api_key_replaces_whatever_credential_arrived() {
        let headers =
            forwarded_headers(&incoming(), &Credential::ApiKey(Secret::new("real"))).unwrap();
        assert_eq!(headers["x-api-key"], "real");
        assert!(headers.get("authorization").is_none());
        assert!(headers.get("cookie").is_none());
        assert!(headers.get("accept-encoding").is_none());
        assert!(headers.get("host").is_none());
        assert_eq!(headers["x-stainless-os"], "Linux");
        assert_eq!(headers["anthropic-version"], API_VERSION);
        assert!(headers["x-api-key"].is_sensitive());
    }

    #[test]
    fn an_oauth_token_is_a_bearer_with_its_beta_once() {
        let headers =
            forwarded_headers(&incoming(), &Credential::OAuthToken(Secret::new("tok"))).unwrap();
        assert_eq!(headers["authorization"], "Bearer tok");
        assert!(headers.get("x-api-key").is_none());
        assert_eq!(
            headers["anthropic-beta"],
            "claude-code-20250219,oauth-2025-04-20"
        );
    }

    #[test]
    fn max_tokens_is_clamped_and_thinking_fits_under_it() {
        let (body, model) = prepare_body(
            r#"{"model":"m","max_tokens":32000,"thinking":{"type":"enabled","budget_tokens":31999}}"#,
            8000,
        )
        .unwrap();
        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(model, "m");
        assert_eq!(value["max_tokens"], 8000);
        assert_eq!(value["thinking"]["budget_tokens"], 4000);
        let (body, _) = prepare_body(
            r#"{"model":"m","max_tokens":9000,"thinking":{"budget_tokens":5000}}"#,
            1500,
        )
        .unwrap();
        assert!(serde_json::from_str::<Value>(&body).unwrap()["thinking"].is_null());
        let small = r#"{"model":"m","max_tokens":10}"#;
        assert_eq!(prepare_body(small, 8000).unwrap().0, small);
        assert!(prepare_body("[1]", 10).is_err());
        assert!(prepare_body(r#"{"max_tokens":1}"#, 10).is_err(), "no model");
        for sneaky in ["64000.0", "1e12"] {
            let body = format!(r#"{{"model":"m","max_tokens":{sneaky}}}"#);
            let (sent, _) = prepare_body(&body, 8000).unwrap();
            assert_eq!(
                serde_json::from_str::<Value>(&sent).unwrap()["max_tokens"],
                8000
            );
        }
        assert!(prepare_body("nope", 10).is_err());
    }

    #[test]
    fn usage_is_read_from_sse_split_anywhere() {
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n";
        for split in [1, 7, 50, stream.len()] {
            let mut tally = UsageTally::default();
            for piece in stream.as_bytes().chunks(split) {
                tally.feed(std::str::from_utf8(piece).unwrap());
            }
            tally.finish();
            assert_eq!(tally.model.as_deref(), Some("claude-x"));
            assert_eq!((tally.input_tokens, tally.output_tokens), (15, 42));
        }
        let mut json = UsageTally::for_json();
        json.feed("{\"input_tokens\":");
        json.feed("77}");
        json.finish();
        assert_eq!(json.input_tokens, 77);
    }

    #[test]
    fn utf8_pieces_never_split_a_character() {
        let text = "héllo — 日本 🎉";
        let bytes = text.as_bytes();
        let mut pieces = Utf8Pieces::default();
        let mut out = String::new();
        for byte in bytes {
            out.push_str(&pieces.push(std::slice::from_ref(byte)));
        }
        out.push_str(&pieces.finish());
        assert_eq!(out, text);
        let mut bad = Utf8Pieces::default();
        assert_eq!(bad.push(b"a\xffb"), "a\u{FFFD}b");
    }

    #[test]
    fn a_refusal_is_head_body_end_in_the_api_shape() {
        let lines = refusal_lines(9, 404, "refused by talon: no");
        assert_eq!(lines.len(), 3);
        let HostToRunner::ApiResponseChunk { data, .. } = &lines[1] else {
            panic!()
        };
        let body: Value = serde_json::from_str(data).unwrap();
        assert_eq!(body["error"]["type"], "not_found_error");
        assert!(matches!(
            lines[2],
            HostToRunner::ApiResponseEnd {
                request_id: 9,
                error: None
            }
        ));
    }
}
