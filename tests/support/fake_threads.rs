//! A fake Threads Graph API token endpoint for tests, on 127.0.0.1, so no
//! test ever reaches graph.threads.net.
//!
//! It answers `GET /refresh_access_token?grant_type=th_refresh_token&
//! access_token=<token>` as the real API does: a token it knows is exchanged
//! for a new one (`{"access_token", "token_type": "bearer", "expires_in"}`,
//! the old one stays valid, as Meta's do until they expire), and anything
//! else gets Meta's error envelope `{"error": {"message", "type", "code",
//! "fbtrace_id"}}` with a 400: code 190 (`OAuthException`) for a token it
//! does not know, 104 for none, 100 for a wrong grant type, 2500 for an
//! unknown path. A scripted [`Reply`] can replace the next answer (an
//! outage, a malformed body). Every request is recorded.
//!
//! Included by many test crates, so it depends only on axum, tokio,
//! serde_json and std, and unused helpers are fine.
#![allow(dead_code)]

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// 60 days, what the real API grants a refreshed long-lived token.
pub const SIXTY_DAYS_SECS: i64 = 60 * 24 * 3600;

/// A scripted answer that replaces the next normal one.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Meta's error envelope with this status, type and code.
    Error {
        status: u16,
        error_type: String,
        code: i64,
        message: String,
    },
    /// Any status with this exact body (`application/json`).
    Raw { status: u16, body: String },
    /// Waits, then answers normally (or with the inner reply).
    Delay(Duration, Option<Box<Reply>>),
}

impl Reply {
    pub fn error(status: u16, error_type: &str, code: i64, message: &str) -> Reply {
        Reply::Error {
            status,
            error_type: error_type.into(),
            code,
            message: message.into(),
        }
    }

    /// A 500 as Meta sends in an outage.
    pub fn outage() -> Reply {
        Reply::error(
            500,
            "OAuthException",
            2,
            "An unexpected error has occurred. Please retry your request later.",
        )
    }

    /// A rate limit: 400 with code 4, not a token problem.
    pub fn rate_limited() -> Reply {
        Reply::error(
            400,
            "OAuthException",
            4,
            "Application request limit reached",
        )
    }
}

/// One request as the fake received it (the token is in `query`: test
/// code only).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
}

impl RecordedRequest {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

struct Shared {
    valid: Mutex<BTreeSet<String>>,
    issued: Mutex<Vec<String>>,
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<RecordedRequest>>,
    expires_in: Mutex<i64>,
}

/// A running fake server; stops when dropped.
pub struct FakeThreads {
    /// `http://127.0.0.1:<port>`, what `[auth] threads_url` would hold.
    pub base_url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeThreads {
    /// A server that accepts `valid_tokens` (and every token it issues).
    pub async fn start(valid_tokens: &[&str]) -> FakeThreads {
        let shared = Arc::new(Shared {
            valid: Mutex::new(valid_tokens.iter().map(|t| t.to_string()).collect()),
            issued: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            expires_in: Mutex::new(SIXTY_DAYS_SECS),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Threads server");
        let address = listener.local_addr().expect("fake server address");
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeThreads {
            base_url: format!("http://{address}"),
            shared,
            server,
        }
    }

    /// Replaces the next normal answer.
    pub fn push(&self, reply: Reply) {
        lock(&self.shared.script).push_back(reply);
    }

    /// The `expires_in` of later refreshes (default 60 days).
    pub fn set_expires_in(&self, secs: i64) {
        *lock(&self.shared.expires_in) = secs;
    }

    pub fn revoke(&self, token: &str) {
        lock(&self.shared.valid).remove(token);
    }

    /// The tokens handed out so far, oldest first.
    pub fn issued(&self) -> Vec<String> {
        lock(&self.shared.issued).clone()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }
}

impl Drop for FakeThreads {
    fn drop(&mut self) {
        // Abort: a scripted delay must not keep the port alive after the test.
        self.server.abort();
    }
}

/// A poisoned lock only means another test thread panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let request = RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        query,
    };
    lock(&shared.requests).push(request.clone());

    let mut scripted = lock(&shared.script).pop_front();
    while let Some(Reply::Delay(delay, then)) = scripted {
        tokio::time::sleep(delay).await;
        scripted = then.map(|reply| *reply);
    }
    match scripted {
        Some(Reply::Error {
            status,
            error_type,
            code,
            message,
        }) => error_response(status, &error_type, code, &message),
        Some(Reply::Raw { status, body }) => (
            status_code(status),
            [("content-type", "application/json")],
            body,
        )
            .into_response(),
        Some(Reply::Delay(..)) | None => answer(&shared, &request),
    }
}

/// What the real endpoint answers.
fn answer(shared: &Shared, request: &RecordedRequest) -> Response {
    if request.path != "/refresh_access_token" {
        let message = format!("Unknown path components: {}", request.path);
        return error_response(400, "OAuthException", 2500, &message);
    }
    if request.method != "GET" {
        return error_response(
            400,
            "GraphMethodException",
            100,
            "Unsupported post request.",
        );
    }
    let Some(token) = request.param("access_token").filter(|t| !t.is_empty()) else {
        return error_response(
            400,
            "OAuthException",
            104,
            "An access token is required to request this resource.",
        );
    };
    if request.param("grant_type") != Some("th_refresh_token") {
        return error_response(
            400,
            "OAuthException",
            100,
            "Invalid parameter: grant_type must be th_refresh_token",
        );
    }
    if !lock(&shared.valid).contains(token) {
        return error_response(
            400,
            "OAuthException",
            190,
            "Invalid OAuth access token - Cannot parse access token",
        );
    }
    let new_token = {
        let mut issued = lock(&shared.issued);
        let token = format!("THAAfakeRefreshed{:04}xyz", issued.len() + 1);
        issued.push(token.clone());
        token
    };
    lock(&shared.valid).insert(new_token.clone());
    let expires_in = *lock(&shared.expires_in);
    let body = json!({
        "access_token": new_token,
        "token_type": "bearer",
        "expires_in": expires_in,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn error_response(status: u16, error_type: &str, code: i64, message: &str) -> Response {
    let body = json!({"error": {
        "message": message,
        "type": error_type,
        "code": code,
        "fbtrace_id": "AfakeTraceId0000",
    }});
    (status_code(status), axum::Json(body)).into_response()
}
