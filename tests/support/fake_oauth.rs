//! A fake Claude OAuth token endpoint on 127.0.0.1, as the real one
//! behaves for a refresh: `POST /v1/oauth/token` with a JSON body
//! `{grant_type: "refresh_token", refresh_token, client_id, scope}` answers
//! `{access_token, refresh_token, expires_in, scope, token_type}`. Refresh
//! tokens are single use: one spent (or unknown) is refused with
//! `400 {"error":"invalid_grant"}`. A form-encoded body gets a 404, as the
//! seeds found.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

struct Shared {
    live: Mutex<HashSet<String>>,
    issued: AtomicUsize,
    requests: AtomicUsize,
    failing: AtomicBool,
    delay: Mutex<Duration>,
    expires_in: i64,
}

pub struct FakeOAuth {
    pub token_url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeOAuth {
    /// `live` refresh tokens are accepted once each; every token issued
    /// lives `expires_in` seconds.
    pub async fn start(live: &[&str], expires_in: i64) -> FakeOAuth {
        let shared = Arc::new(Shared {
            live: Mutex::new(live.iter().map(|s| s.to_string()).collect()),
            issued: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            delay: Mutex::new(Duration::ZERO),
            expires_in,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/v1/oauth/token", axum::routing::post(token))
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeOAuth {
            token_url: format!("http://{address}/v1/oauth/token"),
            shared,
            server,
        }
    }

    /// Refresh requests seen (accepted or not).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Tokens issued.
    pub fn refreshes(&self) -> usize {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// While set, every refresh is a 503.
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// Each answer waits this long first.
    pub fn set_delay(&self, delay: Duration) {
        *self.shared.delay.lock().unwrap() = delay;
    }

    /// A refresh token the server will accept (as if issued elsewhere).
    pub fn accept(&self, refresh_token: &str) {
        self.shared
            .live
            .lock()
            .unwrap()
            .insert(refresh_token.to_string());
    }
}

impl Drop for FakeOAuth {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let delay = *shared.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let json_body = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    if shared.failing.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "temporarily_unavailable"})),
        )
            .into_response();
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_request"})),
        )
            .into_response();
    };
    let grant = request["grant_type"].as_str().unwrap_or_default();
    let refresh = request["refresh_token"].as_str().unwrap_or_default();
    if grant != "refresh_token" || request["client_id"].as_str().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_request"})),
        )
            .into_response();
    }
    // Single use: spending it removes it.
    if !shared.live.lock().unwrap().remove(refresh) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": "Refresh token not found or invalid"})),
        )
            .into_response();
    }
    let n = shared.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let new_refresh = format!("sk-ant-ort01-issued-{n}");
    shared.live.lock().unwrap().insert(new_refresh.clone());
    axum::Json(json!({
        "token_type": "Bearer",
        "access_token": format!("sk-ant-oat01-issued-{n}"),
        "refresh_token": new_refresh,
        "expires_in": shared.expires_in,
        "scope": request["scope"],
    }))
    .into_response()
}
