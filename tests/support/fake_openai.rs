//! A fake OpenAI-compatible chat-completions server for tests, on
//! 127.0.0.1, standing in for Ollama or a copilot proxy (spec §7).
//!
//! It speaks the real wire format (`POST /v1/chat/completions`, the real
//! success and error bodies, `retry-after`) and, when started with a key,
//! refuses any request without `Authorization: Bearer <key>` as the real
//! services do. Each request is answered with the next scripted [`Reply`],
//! or, once the script is empty, with an echo of the last user message.
//! Every request is recorded for assertions.
//!
//! Included by several test crates, so it depends only on axum, tokio,
//! serde_json and std, and unused helpers are fine.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// 200 with assistant text and `finish_reason: "stop"`.
    Text(String),
    /// 200 with one tool call (`arguments` is sent as a JSON string) and
    /// `finish_reason: "tool_calls"`.
    ToolCall {
        id: String,
        name: String,
        arguments: Value,
    },
    /// An error status with the real error body, and `retry-after` if given.
    Status {
        code: u16,
        message: String,
        retry_after: Option<String>,
    },
    /// Waits, then answers.
    Delay(Duration, Box<Reply>),
    /// Any status with this exact JSON body.
    Raw { code: u16, body: Value },
}

impl Reply {
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Text(text.into())
    }

    pub fn tool_call(id: &str, name: &str, arguments: Value) -> Reply {
        Reply::ToolCall {
            id: id.into(),
            name: name.into(),
            arguments,
        }
    }

    pub fn status(code: u16, message: &str) -> Reply {
        Reply::Status {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn rate_limited(retry_after: Option<&str>) -> Reply {
        Reply::Status {
            code: 429,
            message: "Rate limit reached".into(),
            retry_after: retry_after.map(str::to_string),
        }
    }

    pub fn delayed(delay: Duration, reply: Reply) -> Reply {
        Reply::Delay(delay, Box::new(reply))
    }
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
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

struct Shared {
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<RecordedRequest>>,
    next_id: AtomicU64,
    /// When set, requests must carry exactly this bearer key.
    required_key: Option<String>,
}

/// A running fake server; stops accepting when dropped.
pub struct FakeOpenAi {
    /// `http://127.0.0.1:<port>`, what `COPILOT_API_URL` would hold.
    pub base_url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeOpenAi {
    /// A server without authentication (like a local Ollama).
    pub async fn start(script: Vec<Reply>) -> FakeOpenAi {
        FakeOpenAi::start_inner(script, None).await
    }

    /// A server that answers 401 unless `Authorization: Bearer <key>`.
    pub async fn start_with_key(script: Vec<Reply>, key: &str) -> FakeOpenAi {
        FakeOpenAi::start_inner(script, Some(key.to_string())).await
    }

    async fn start_inner(script: Vec<Reply>, required_key: Option<String>) -> FakeOpenAi {
        let shared = Arc::new(Shared {
            script: Mutex::new(script.into()),
            requests: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            required_key,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake OpenAI server");
        let address = listener.local_addr().expect("fake server address");
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeOpenAi {
            base_url: format!("http://{address}"),
            shared,
            server,
        }
    }

    pub fn push(&self, reply: Reply) {
        lock(&self.shared.script).push_back(reply);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    lock(&shared.requests).push(RecordedRequest {
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: json_body.clone(),
    });

    if uri.path() != "/v1/chat/completions" || method != Method::POST {
        return error_response(404, "Not found", None);
    }
    if let Some(key) = &shared.required_key {
        let sent = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        if sent != Some(format!("Bearer {key}").as_str()) {
            return error_response(401, "Incorrect API key provided", None);
        }
    }
    if json_body.get("model").is_none() || json_body.get("messages").is_none() {
        return error_response(400, "model and messages are required", None);
    }
    let scripted = lock(&shared.script).pop_front();
    let mut reply = scripted.unwrap_or_else(|| echo_last_user_message(&json_body));
    while let Reply::Delay(delay, then) = reply {
        tokio::time::sleep(delay).await;
        reply = *then;
    }
    render(&shared, &json_body, reply)
}

fn echo_last_user_message(body: &Value) -> Reply {
    let text = body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|message| message["content"].as_str())
        .unwrap_or_default();
    Reply::Text(format!("echo: {text}"))
}

fn render(shared: &Shared, request: &Value, reply: Reply) -> Response {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let prompt_tokens = rough_tokens(&request.to_string());
    let (message, finish_reason, completion_tokens) = match reply {
        Reply::Text(text) => {
            let tokens = rough_tokens(&text);
            (
                json!({"role": "assistant", "content": text}),
                "stop",
                tokens,
            )
        }
        Reply::ToolCall {
            id: call_id,
            name,
            arguments,
        } => {
            let arguments = arguments.to_string();
            let tokens = rough_tokens(&arguments);
            (
                json!({"role": "assistant", "content": null, "tool_calls": [{
                    "id": call_id, "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }]}),
                "tool_calls",
                tokens,
            )
        }
        Reply::Status {
            code,
            message,
            retry_after,
        } => return error_response(code, &message, retry_after.as_deref()),
        Reply::Delay(_, then) => return render(shared, request, *then),
        Reply::Raw { code, body } => return (status_code(code), axum::Json(body)).into_response(),
    };
    let body = json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": 0,
        "model": request["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn rough_tokens(text: &str) -> u64 {
    (text.chars().count() as u64 / 4).max(1)
}

fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The OpenAI error body: `{"error":{"message","type","param","code"}}`.
fn error_response(code: u16, message: &str, retry_after: Option<&str>) -> Response {
    let error_type = match code {
        401 => "invalid_request_error",
        429 => "rate_limit_exceeded",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    let body =
        json!({"error": {"message": message, "type": error_type, "param": null, "code": null}});
    let mut response = (status_code(code), axum::Json(body)).into_response();
    if let Some(value) = retry_after.and_then(|v| v.parse().ok()) {
        response.headers_mut().insert("retry-after", value);
    }
    response
}
