//! A fake Anthropic Messages API for tests, on 127.0.0.1, so no test ever
//! reaches the internet (spec §7).
//!
//! It speaks the real wire format (`POST /v1/messages`, the real success and
//! error bodies, `retry-after`) and checks what the real API would refuse: a
//! missing `anthropic-version`, not exactly one of `x-api-key` /
//! `authorization`, and a `tool_use` input that is not an object. Each request is answered with the next scripted [`Reply`],
//! or, once the script is empty, by a fallback that echoes the last user
//! message. Every request is recorded for assertions.
//!
//! Use real time with millisecond durations: under tokio's paused clock the
//! runtime would skip ahead while waiting on the sockets and fire timeouts.
//!
//! Included by many test crates, so it depends only on axum, tokio,
//! serde_json and std, and unused helpers are fine.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// How the fake answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with one text block.
    Text(String),
    /// 200 with one `tool_use` block and `stop_reason: "tool_use"`.
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// An error status with the real error body, and `retry-after` if given.
    Status {
        code: u16,
        error_type: String,
        message: String,
        retry_after: Option<String>,
    },
    /// Waits, then answers.
    Delay(Duration, Box<Reply>),
    /// 200 with a truncated JSON body.
    MalformedBody,
    /// Any status with this exact JSON body (e.g. content blocks talon does
    /// not handle yet).
    Raw { code: u16, body: Value },
    /// 200 with these content blocks and this `stop_reason` (a refusal, a
    /// cut at `max_tokens`, a `pause_turn`), in the real message envelope.
    Message {
        content: Vec<Value>,
        stop_reason: String,
    },
}

impl Reply {
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Text(text.into())
    }

    pub fn tool_use(id: &str, name: &str, input: Value) -> Reply {
        Reply::ToolUse {
            id: id.into(),
            name: name.into(),
            input,
        }
    }

    pub fn status(code: u16, error_type: &str, message: &str) -> Reply {
        Reply::Status {
            code,
            error_type: error_type.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429 `rate_limit_error`, optionally with a `retry-after` value.
    pub fn rate_limited(retry_after: Option<&str>) -> Reply {
        Reply::Status {
            code: 429,
            error_type: "rate_limit_error".into(),
            message: "Number of request tokens has exceeded your per-minute rate limit".into(),
            retry_after: retry_after.map(str::to_string),
        }
    }

    /// 529 `overloaded_error`, as the real API sends under load.
    pub fn overloaded() -> Reply {
        Reply::status(529, "overloaded_error", "Overloaded")
    }

    pub fn internal_error() -> Reply {
        Reply::status(500, "api_error", "Internal server error")
    }

    pub fn delayed(delay: Duration, reply: Reply) -> Reply {
        Reply::Delay(delay, Box::new(reply))
    }

    /// 200 with `content` (raw content blocks) and `stop_reason`.
    pub fn message(content: Vec<Value>, stop_reason: &str) -> Reply {
        Reply::Message {
            content,
            stop_reason: stop_reason.into(),
        }
    }
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Lowercased names; the last value wins for repeated headers.
    pub headers: BTreeMap<String, String>,
    /// `Value::Null` when the body was not JSON.
    pub body: Value,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

type Responder = dyn Fn(&Value) -> Reply + Send + Sync;

struct Shared {
    script: Mutex<VecDeque<Reply>>,
    fallback: Box<Responder>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Off for a long soak: every request would be kept.
    recording: AtomicBool,
    next_message_id: AtomicU64,
}

/// A running fake server; stops accepting when dropped.
pub struct FakeAnthropic {
    /// `http://127.0.0.1:<port>`, what `ANTHROPIC_BASE_URL` would hold.
    pub base_url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeAnthropic {
    /// Answers each request with the next scripted reply; when the script is
    /// empty, with `Text("echo: <text of the last user message>")`.
    pub async fn start(script: Vec<Reply>) -> FakeAnthropic {
        let fake = FakeAnthropic::start_with(echo_last_user_message).await;
        for reply in script {
            fake.push(reply);
        }
        fake
    }

    /// Answers every request (after any pushed script) with `responder(body)`.
    pub async fn start_with(
        responder: impl Fn(&Value) -> Reply + Send + Sync + 'static,
    ) -> FakeAnthropic {
        FakeAnthropic::start_on("127.0.0.1:0", responder).await
    }

    /// Like [`FakeAnthropic::start_with`], on a given address (a provider
    /// that comes back where it was).
    pub async fn start_on(
        address: &str,
        responder: impl Fn(&Value) -> Reply + Send + Sync + 'static,
    ) -> FakeAnthropic {
        let shared = Arc::new(Shared {
            script: Mutex::new(VecDeque::new()),
            fallback: Box::new(responder),
            requests: Mutex::new(Vec::new()),
            recording: AtomicBool::new(true),
            next_message_id: AtomicU64::new(1),
        });
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .expect("bind the fake Anthropic server");
        let address = listener.local_addr().expect("fake server address");
        // The real Messages API takes requests up to 32 MB; axum's default
        // limit is 2 MB.
        let app = axum::Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::max(32 * 1024 * 1024))
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeAnthropic {
            base_url: format!("http://{address}"),
            shared,
            server,
        }
    }

    /// Appends a reply to the script.
    pub fn push(&self, reply: Reply) {
        lock(&self.shared.script).push_back(reply);
    }

    /// Stops keeping requests (a long soak's would fill the memory); the
    /// responder still sees each one.
    pub fn stop_recording(&self) {
        self.shared.recording.store(false, Ordering::Relaxed);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// Only the Messages API calls (not an outage probe's plain GET).
    pub fn message_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == "/v1/messages")
            .collect()
    }
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        // Abort rather than shut down gracefully: a scripted long delay must
        // not keep the server (and its port) alive after the test is done.
        self.server.abort();
    }
}

/// A poisoned lock only means another test thread panicked; the data is
/// still what was recorded.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn echo_last_user_message(body: &Value) -> Reply {
    let last_user_text = body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
        .map(|message| text_of(&message["content"]))
        .unwrap_or_default();
    Reply::Text(format!("echo: {last_user_text}"))
}

/// The text of a content field: a plain string or text blocks.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|block| block["type"] == "text")
            .filter_map(|block| block["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json_body: Option<Value> = serde_json::from_slice(&body).ok();
    let recorded_headers = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    if shared.recording.load(Ordering::Relaxed) {
        lock(&shared.requests).push(RecordedRequest {
            method: method.to_string(),
            path: uri.path().to_string(),
            headers: recorded_headers,
            body: json_body.clone().unwrap_or(Value::Null),
        });
    }

    if uri.path() == "/v1/messages/count_tokens" && method == Method::POST {
        let tokens = rough_tokens(&String::from_utf8_lossy(&body));
        return (StatusCode::OK, axum::Json(json!({"input_tokens": tokens}))).into_response();
    }
    if let Some(refusal) = refusal_for(&method, &uri, &headers, json_body.as_ref()) {
        return refusal;
    }
    let body = json_body.unwrap_or(Value::Null);
    let scripted = lock(&shared.script).pop_front();
    let mut reply = scripted.unwrap_or_else(|| (shared.fallback)(&body));
    while let Reply::Delay(delay, then) = reply {
        tokio::time::sleep(delay).await;
        reply = *then;
    }
    render(&shared, &body, reply)
}

/// What the real API would refuse before looking at the conversation.
fn refusal_for(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Option<&Value>,
) -> Option<Response> {
    if uri.path() != "/v1/messages" {
        return Some(error_response(404, "not_found_error", "Not found", None));
    }
    if method != Method::POST {
        return Some(error_response(
            405,
            "invalid_request_error",
            "Method not allowed",
            None,
        ));
    }
    if !headers.contains_key("anthropic-version") {
        return Some(error_response(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
            None,
        ));
    }
    let api_key = headers.contains_key("x-api-key");
    let bearer = headers.contains_key("authorization");
    if api_key == bearer {
        let message = if api_key {
            "send either x-api-key or authorization, not both"
        } else {
            "x-api-key header is required"
        };
        return Some(error_response(401, "authentication_error", message, None));
    }
    let Some(body) = body else {
        return Some(error_response(
            400,
            "invalid_request_error",
            "request body is not valid JSON",
            None,
        ));
    };
    for field in ["model", "max_tokens", "messages"] {
        if body.get(field).is_none() {
            return Some(error_response(
                400,
                "invalid_request_error",
                &format!("{field}: Field required"),
                None,
            ));
        }
    }
    if let Some(path) = non_object_tool_input(body) {
        return Some(error_response(
            400,
            "invalid_request_error",
            &format!("{path}: Input should be a valid dictionary"),
            None,
        ));
    }
    None
}

/// Where the first `tool_use` block whose input is not an object sits, in
/// the real API's words (`messages.1.content.0.tool_use.input`).
fn non_object_tool_input(body: &Value) -> Option<String> {
    let messages = body["messages"].as_array()?;
    messages.iter().enumerate().find_map(|(m, message)| {
        let blocks = message["content"].as_array()?;
        blocks.iter().enumerate().find_map(|(b, block)| {
            (block["type"] == "tool_use" && !block["input"].is_object())
                .then(|| format!("messages.{m}.content.{b}.tool_use.input"))
        })
    })
}

fn render(shared: &Shared, request: &Value, reply: Reply) -> Response {
    match reply {
        Reply::Text(text) => {
            let id = shared.next_message_id.fetch_add(1, Ordering::Relaxed);
            let body = json!({
                "id": format!("msg_{id}"),
                "type": "message",
                "role": "assistant",
                "model": request["model"],
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": {
                    "input_tokens": rough_tokens(&request.to_string()),
                    "output_tokens": rough_tokens(&text),
                },
            });
            respond(request, body)
        }
        Reply::ToolUse { id, name, input } => {
            let message_id = shared.next_message_id.fetch_add(1, Ordering::Relaxed);
            let body = json!({
                "id": format!("msg_{message_id}"),
                "type": "message",
                "role": "assistant",
                "model": request["model"],
                "content": [{"type": "tool_use", "id": id, "name": name, "input": input}],
                "stop_reason": "tool_use",
                "stop_sequence": null,
                "usage": {
                    "input_tokens": rough_tokens(&request.to_string()),
                    "output_tokens": rough_tokens(&input.to_string()),
                },
            });
            respond(request, body)
        }
        Reply::Status {
            code,
            error_type,
            message,
            retry_after,
        } => error_response(code, &error_type, &message, retry_after.as_deref()),
        // Unreachable after `handle` unwraps delays; answer at once if nested.
        Reply::Delay(_, then) => render(shared, request, *then),
        Reply::MalformedBody => (
            StatusCode::OK,
            [("content-type", "application/json")],
            r#"{"id":"msg_broken","type":"message","content":[{"type":"te"#,
        )
            .into_response(),
        Reply::Raw { code, body } => (status_code(code), axum::Json(body)).into_response(),
        Reply::Message {
            content,
            stop_reason,
        } => {
            let id = shared.next_message_id.fetch_add(1, Ordering::Relaxed);
            let output = Value::Array(content.clone()).to_string();
            let body = json!({
                "id": format!("msg_{id}"),
                "type": "message",
                "role": "assistant",
                "model": request["model"],
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": rough_tokens(&request.to_string()),
                    "output_tokens": rough_tokens(&output),
                },
            });
            respond(request, body)
        }
    }
}

/// A success body as the API sends it: JSON, or (for `"stream": true`)
/// the SSE events Claude Code reads.
fn respond(request: &Value, message: Value) -> Response {
    if request["stream"] != true {
        return (StatusCode::OK, axum::Json(message)).into_response();
    }
    let mut events = Vec::new();
    let mut start = message.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"]["output_tokens"] = json!(1);
    events.push((
        "message_start",
        json!({"type": "message_start", "message": start}),
    ));
    let blocks = message["content"].as_array().cloned().unwrap_or_default();
    for (index, block) in blocks.iter().enumerate() {
        let (opening, delta) = match block["type"].as_str() {
            Some("tool_use") => {
                let mut opening = block.clone();
                opening["input"] = json!({});
                let partial = block["input"].to_string();
                (
                    opening,
                    json!({"type": "input_json_delta", "partial_json": partial}),
                )
            }
            Some("text") => (
                json!({"type": "text", "text": ""}),
                json!({"type": "text_delta", "text": block["text"]}),
            ),
            _ => (block.clone(), Value::Null),
        };
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": opening}),
        ));
        if !delta.is_null() {
            events.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": delta}),
            ));
        }
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    events.push((
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": message["stop_reason"], "stop_sequence": null},
               "usage": {"output_tokens": message["usage"]["output_tokens"]}}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    let text: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    (
        StatusCode::OK,
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        text,
    )
        .into_response()
}

/// About four characters per token, never zero: realistic enough for usage.
fn rough_tokens(text: &str) -> u64 {
    (text.chars().count() as u64 / 4).max(1)
}

fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn error_response(
    code: u16,
    error_type: &str,
    message: &str,
    retry_after: Option<&str>,
) -> Response {
    let body = json!({"type": "error", "error": {"type": error_type, "message": message}});
    let mut response = (status_code(code), axum::Json(body)).into_response();
    if let Some(value) = retry_after.and_then(|v| v.parse().ok()) {
        response.headers_mut().insert("retry-after", value);
    }
    response
}
