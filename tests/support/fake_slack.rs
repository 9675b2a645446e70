//! A fake Slack for tests, on 127.0.0.1, so no test ever reaches slack.com.
//!
//! It speaks the real wire formats, so the slack-morphism client works against
//! it unmodified (a hyper-rustls connector built `.https_or_http()` plus
//! `.with_slack_api_url(fake.api_url())`):
//! - the Web API under `/api/<method>` (GET query or POST JSON / form body,
//!   `Authorization: Bearer <token>` or a `token` parameter), always HTTP 200
//!   with `{"ok":false,"error":..}` for API errors, as Slack does, except for
//!   scripted rate limits (HTTP 429 with `Retry-After`);
//! - Socket Mode at `/socket?ticket=<n>`: `hello` on connect, `events_api`
//!   envelopes pushed by the test, acks recorded, and `disconnect` frames.
//!
//! Slack's token rules are kept because they decide real failures: no token is
//! `not_authed`, the app token on a bot method (or the bot token on
//! `apps.connections.open`) is `not_allowed_token_type`, anything else unknown
//! is `invalid_auth`.
//!
//! Use real time with millisecond durations: under tokio's paused clock the
//! runtime would skip ahead while waiting on the sockets and fire timeouts.
//!
//! Included by many test crates, so it depends only on axum, tokio,
//! serde_json and std, and unused helpers are fine.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// The verification token Slack puts in every `event_callback` payload.
pub const VERIFICATION_TOKEN: &str = "fake-verification-token";
/// The team name `auth.test` reports.
pub const TEAM_NAME: &str = "Fake Team";
/// The bot user's name `auth.test` reports.
pub const BOT_USER_NAME: &str = "talon";

/// Who the fake workspace is.
#[derive(Clone, Debug)]
pub struct FakeSlackConfig {
    /// The `xoxb-` token the Web API accepts.
    pub bot_token: String,
    /// The `xapp-` token `apps.connections.open` accepts.
    pub app_token: String,
    pub bot_user_id: String,
    pub bot_id: String,
    pub team_id: String,
    pub app_id: String,
    /// `(user id, display name)` pairs `users.info` knows. The real name is
    /// `"<display name> (real name)"`, so a test can tell which one was used.
    pub users: Vec<(String, String)>,
}

impl Default for FakeSlackConfig {
    fn default() -> Self {
        FakeSlackConfig {
            bot_token: "xoxb-test".into(),
            app_token: "xapp-test".into(),
            bot_user_id: "UBOT".into(),
            bot_id: "B0FAKE".into(),
            team_id: "T0FAKE".into(),
            app_id: "A0FAKE".into(),
            users: vec![("U0ALICE".into(), "alice".into())],
        }
    }
}

/// One accepted `chat.postMessage`.
#[derive(Clone, Debug)]
pub struct Posted {
    pub channel: String,
    /// Empty when the message had only blocks.
    pub text: String,
    pub thread_ts: Option<String>,
    /// The `ts` the fake assigned and answered with.
    pub ts: String,
    /// Every parameter as received (JSON body, or form / query as strings).
    pub params: Value,
    pub at: Instant,
}

/// One Web API call as the fake received it.
#[derive(Clone, Debug)]
pub struct ApiCall {
    /// The Slack method, e.g. `chat.postMessage`.
    pub method: String,
    /// `GET` or `POST`.
    pub http_method: String,
    /// From `Authorization: Bearer` or the `token` parameter.
    pub token: Option<String>,
    pub params: Value,
    pub at: Instant,
}

/// What a test asks one open socket to do.
enum SocketCommand {
    Frame(String),
    /// A `disconnect` frame with this reason, then a close frame.
    Disconnect(String),
    /// A close frame without warning.
    Close,
    /// Drop the TCP connection without any frame.
    Abort,
}

struct OpenSocket {
    id: u64,
    commands: UnboundedSender<SocketCommand>,
}

#[derive(Default)]
struct Recorded {
    calls: Vec<ApiCall>,
    unknown_methods: Vec<String>,
    posts: Vec<Posted>,
    post_attempts: Vec<Instant>,
    rate_limited_posts_left: usize,
    retry_after_secs: u64,
    users_info_calls: HashMap<String, usize>,
    ts_counter: u64,
    next_ticket: u64,
    open_tickets: HashSet<String>,
    /// Open sockets that are not being closed, oldest first.
    sockets: Vec<OpenSocket>,
    next_socket_id: u64,
    /// Sockets that received `hello`.
    connections: usize,
    acks: Vec<String>,
    client_frames: Vec<Value>,
    sent_frames: Vec<Value>,
    next_event_id: u64,
}

struct Shared {
    config: FakeSlackConfig,
    address: SocketAddr,
    /// Unix seconds at start: the integer part of every `ts` the fake makes.
    started_secs: u64,
    recorded: Mutex<Recorded>,
}

/// A running fake Slack; stops accepting and drops its sockets when dropped.
pub struct FakeSlack {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeSlack {
    pub async fn start(config: FakeSlackConfig) -> FakeSlack {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Slack server");
        let address = listener.local_addr().expect("fake Slack address");
        let shared = Arc::new(Shared {
            config,
            address,
            started_secs: unix_secs(),
            recorded: Mutex::new(Recorded::default()),
        });
        let app = axum::Router::new()
            .route("/socket", axum::routing::get(socket_upgrade))
            .fallback(web_api)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeSlack {
            base_url: format!("http://{address}"),
            shared,
            server,
        }
    }

    pub fn config(&self) -> &FakeSlackConfig {
        &self.shared.config
    }

    /// `http://127.0.0.1:<port>/api/`, for `with_slack_api_url`.
    pub fn api_url(&self) -> String {
        format!("{}/api/", self.base_url)
    }

    // ---- Web API --------------------------------------------------------

    /// The next `n` `chat.postMessage` calls answer HTTP 429 with
    /// `Retry-After: retry_after_secs` and `{"ok":false,"error":"ratelimited"}`.
    pub fn rate_limit_posts(&self, n: usize, retry_after_secs: u64) {
        let mut recorded = lock(&self.shared.recorded);
        recorded.rate_limited_posts_left = n;
        recorded.retry_after_secs = retry_after_secs;
    }

    /// Accepted posts, in order.
    pub fn posts(&self) -> Vec<Posted> {
        lock(&self.shared.recorded).posts.clone()
    }

    /// When each `chat.postMessage` arrived, rate-limited ones included.
    pub fn post_attempt_times(&self) -> Vec<Instant> {
        lock(&self.shared.recorded).post_attempts.clone()
    }

    pub fn users_info_calls(&self, user_id: &str) -> usize {
        lock(&self.shared.recorded)
            .users_info_calls
            .get(user_id)
            .copied()
            .unwrap_or(0)
    }

    /// Every Web API method called, in order.
    pub fn methods_called(&self) -> Vec<String> {
        lock(&self.shared.recorded)
            .calls
            .iter()
            .map(|call| call.method.clone())
            .collect()
    }

    /// Methods the fake does not serve and answered `unknown_method`.
    pub fn unknown_methods(&self) -> Vec<String> {
        lock(&self.shared.recorded).unknown_methods.clone()
    }

    pub fn calls(&self) -> Vec<ApiCall> {
        lock(&self.shared.recorded).calls.clone()
    }

    pub fn call_count(&self, method: &str) -> usize {
        lock(&self.shared.recorded)
            .calls
            .iter()
            .filter(|call| call.method == method)
            .count()
    }

    // ---- Socket Mode ----------------------------------------------------

    /// Sockets that were sent `hello`, ever.
    pub fn connections(&self) -> usize {
        lock(&self.shared.recorded).connections
    }

    /// Sockets open now (not counting one being closed by the fake).
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.recorded).sockets.len()
    }

    /// Envelope ids the client acknowledged, in order.
    pub fn acks(&self) -> Vec<String> {
        lock(&self.shared.recorded).acks.clone()
    }

    /// Every text frame the client sent, parsed (`Null` if not JSON).
    pub fn client_frames(&self) -> Vec<Value> {
        lock(&self.shared.recorded).client_frames.clone()
    }

    /// Every frame the fake pushed with `send_*`, `hello` excluded.
    pub fn sent_frames(&self) -> Vec<Value> {
        lock(&self.shared.recorded).sent_frames.clone()
    }

    /// Pushes an `events_api` envelope, with a fresh `event_id`, to the newest
    /// open socket. False when no socket is open (the event is lost, as it
    /// would be for Slack until it retries).
    pub fn send_events_api(&self, envelope_id: &str, event: Value) -> bool {
        let event_id = {
            let mut recorded = lock(&self.shared.recorded);
            recorded.next_event_id += 1;
            format!("Ev0FAKE{:06}", recorded.next_event_id)
        };
        self.send_events_api_with_id(envelope_id, &event_id, event)
    }

    /// Like [`FakeSlack::send_events_api`] with a chosen `event_id`, e.g. to
    /// redeliver the same event under a new envelope as Slack's retries do.
    pub fn send_events_api_with_id(&self, envelope_id: &str, event_id: &str, event: Value) -> bool {
        let config = &self.shared.config;
        let frame = events_api_envelope(
            envelope_id,
            event_id,
            &config.team_id,
            &config.app_id,
            &config.bot_user_id,
            event,
        );
        self.send_frame(frame)
    }

    /// Pushes any frame to the newest open socket; false when none is open.
    pub fn send_frame(&self, frame: Value) -> bool {
        let mut recorded = lock(&self.shared.recorded);
        let Some(socket) = recorded.sockets.last() else {
            return false;
        };
        let sent = socket
            .commands
            .send(SocketCommand::Frame(frame.to_string()))
            .is_ok();
        if sent {
            recorded.sent_frames.push(frame);
        }
        sent
    }

    /// Sends `disconnect` (`refresh_requested`) on the newest open socket and
    /// then closes it, as Slack does before recycling a connection. The socket
    /// stops being a target for events at once. False when none is open.
    pub fn disconnect_refresh(&self) -> bool {
        self.close_newest(SocketCommand::Disconnect("refresh_requested".into()))
    }

    /// Sends only the `disconnect` (`warning`) frame on the newest open
    /// socket and leaves it open, as Slack does some seconds before it closes
    /// a connection; the client is expected to reconnect and close it itself.
    pub fn disconnect_warning(&self) -> bool {
        self.send_frame(disconnect_frame("warning"))
    }

    /// Closes the newest open socket with a close frame and no warning.
    pub fn close_connection(&self) -> bool {
        self.close_newest(SocketCommand::Close)
    }

    /// Drops the newest open socket's TCP connection without any frame.
    pub fn abort_connection(&self) -> bool {
        self.close_newest(SocketCommand::Abort)
    }

    fn close_newest(&self, command: SocketCommand) -> bool {
        let mut recorded = lock(&self.shared.recorded);
        match recorded.sockets.pop() {
            Some(socket) => socket.commands.send(command).is_ok(),
            None => false,
        }
    }

    // ---- Waiting ----------------------------------------------------------

    /// Waits until `n` sockets have been sent `hello`.
    pub async fn wait_connections(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.connections() >= n).await
    }

    /// Waits for `n` accepted posts; returns all posts so far either way.
    pub async fn wait_posts(&self, n: usize, timeout: Duration) -> Vec<Posted> {
        wait_until(timeout, || lock(&self.shared.recorded).posts.len() >= n).await;
        self.posts()
    }

    pub async fn wait_acked(&self, envelope_id: &str, timeout: Duration) -> bool {
        wait_until(timeout, || {
            lock(&self.shared.recorded)
                .acks
                .iter()
                .any(|ack| ack == envelope_id)
        })
        .await
    }

    /// Waits until `method` has been called `n` times.
    pub async fn wait_calls(&self, method: &str, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.call_count(method) >= n).await
    }
}

impl Drop for FakeSlack {
    fn drop(&mut self) {
        self.server.abort();
        // Upgraded sockets run in their own tasks; end them so a client sees
        // the fake go away instead of a silent but open connection.
        let sockets = std::mem::take(&mut lock(&self.shared.recorded).sockets);
        for socket in sockets {
            let _ = socket.commands.send(SocketCommand::Abort);
        }
    }
}

/// Polls `condition` every couple of milliseconds of real time.
async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A poisoned lock only means another test thread panicked; the data is
/// still what was recorded.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

// ---- Payload builders (pure) ------------------------------------------------

/// The `hello` frame Slack sends first on every Socket Mode connection.
pub fn hello_frame(app_id: &str) -> Value {
    json!({
        "type": "hello",
        "num_connections": 1,
        "debug_info": {
            "host": "fake",
            "build_number": 1,
            "approximate_connection_time": 18060
        },
        "connection_info": {"app_id": app_id}
    })
}

/// The `disconnect` frame Slack sends before closing a connection.
pub fn disconnect_frame(reason: &str) -> Value {
    json!({"type": "disconnect", "reason": reason, "debug_info": {"host": "fake"}})
}

/// An `events_api` envelope exactly as Slack sends it over Socket Mode: the
/// `event_callback` payload with `event` inside.
pub fn events_api_envelope(
    envelope_id: &str,
    event_id: &str,
    team_id: &str,
    api_app_id: &str,
    bot_user_id: &str,
    event: Value,
) -> Value {
    json!({
        "envelope_id": envelope_id,
        "payload": {
            "token": VERIFICATION_TOKEN,
            "team_id": team_id,
            "context_team_id": team_id,
            "context_enterprise_id": null,
            "api_app_id": api_app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id,
            "event_time": unix_secs(),
            "authorizations": [{
                "enterprise_id": null,
                "team_id": team_id,
                "user_id": bot_user_id,
                "is_bot": true,
                "is_enterprise_install": false
            }],
            "is_ext_shared_channel": false,
            "event_context": format!("4-fake-{event_id}")
        },
        "type": "events_api",
        "accepts_response_payload": false,
        "retry_attempt": 0,
        "retry_reason": ""
    })
}

/// The `rich_text` block Slack attaches to a typed message.
fn rich_text_blocks(text: &str, ts: &str) -> Value {
    json!([{
        "type": "rich_text",
        "block_id": format!("blk{}", ts.replace('.', "")),
        "elements": [{
            "type": "rich_text_section",
            "elements": [{"type": "text", "text": text}]
        }]
    }])
}

/// A person's message in a public channel (`message.channels`), as Slack
/// delivers it; with `thread_ts` it is a thread reply.
pub fn message_event(
    channel: &str,
    user: &str,
    text: &str,
    ts: &str,
    thread_ts: Option<&str>,
) -> Value {
    let mut event = json!({
        "client_msg_id": format!("00000000-0000-4000-8000-{:0>12}", ts.replace('.', "")),
        "type": "message",
        "text": text,
        "user": user,
        "ts": ts,
        "blocks": rich_text_blocks(text, ts),
        "team": "T0FAKE",
        "channel": channel,
        "event_ts": ts,
        "channel_type": "channel"
    });
    if let Some(thread_ts) = thread_ts {
        event["thread_ts"] = json!(thread_ts);
    }
    event
}

/// A direct message to the bot (`message.im`): channel type `im`.
pub fn im_message_event(channel: &str, user: &str, text: &str, ts: &str) -> Value {
    let mut event = message_event(channel, user, text, ts, None);
    event["channel_type"] = json!("im");
    event
}

/// An `app_mention` (the bot was @-mentioned), as Slack delivers it: no
/// `channel_type`, and `text` holds the raw `<@UBOT>` mention.
pub fn app_mention_event(
    channel: &str,
    user: &str,
    text: &str,
    ts: &str,
    thread_ts: Option<&str>,
) -> Value {
    let mut event = message_event(channel, user, text, ts, thread_ts);
    if let Some(fields) = event.as_object_mut() {
        fields.insert("type".into(), json!("app_mention"));
        fields.remove("channel_type");
    }
    event
}

/// A message from another (classic or webhook) bot: `subtype: bot_message`,
/// `bot_id`, and no `user`.
pub fn bot_message_event(channel: &str, bot_id: &str, text: &str, ts: &str) -> Value {
    json!({
        "type": "message",
        "subtype": "bot_message",
        "text": text,
        "ts": ts,
        "username": "other-bot",
        "bot_id": bot_id,
        "channel": channel,
        "event_ts": ts,
        "channel_type": "channel"
    })
}

/// The echo of an app's own `chat.postMessage`, as Slack delivers it: NO
/// subtype, `user` is the bot user and `bot_id` / `app_id` are set. A loop
/// filter that only looks at `subtype` misses these.
pub fn own_message_event(
    channel: &str,
    bot_user_id: &str,
    bot_id: &str,
    text: &str,
    ts: &str,
) -> Value {
    json!({
        "type": "message",
        "user": bot_user_id,
        "bot_id": bot_id,
        "app_id": "A0FAKE",
        "text": text,
        "ts": ts,
        "blocks": rich_text_blocks(text, ts),
        "team": "T0FAKE",
        "bot_profile": {
            "id": bot_id,
            "app_id": "A0FAKE",
            "name": BOT_USER_NAME,
            "deleted": false,
            "updated": 1700000000,
            "team_id": "T0FAKE"
        },
        "channel": channel,
        "event_ts": ts,
        "channel_type": "channel"
    })
}

// ---- Web API ------------------------------------------------------------------

async fn web_api(
    State(shared): State<Arc<Shared>>,
    http_method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // slack-morphism joins `<api url>/<method>`, so `/api//auth.test` is normal.
    let Some(method) = uri
        .path()
        .strip_prefix("/api/")
        .map(|rest| rest.trim_start_matches('/').to_string())
        .filter(|method| !method.is_empty() && !method.contains('/'))
    else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let params = request_params(&uri, &headers, &body);
    let token = bearer_token(&headers).or_else(|| param_str(&params, "token"));
    let now = Instant::now();
    lock(&shared.recorded).calls.push(ApiCall {
        method: method.clone(),
        http_method: http_method.to_string(),
        token: token.clone(),
        params: params.clone(),
        at: now,
    });

    let config = &shared.config;
    match method.as_str() {
        "auth.test" => with_bot_token(config, token.as_deref(), || {
            ok(json!({
                "url": "https://fake-team.slack.com/",
                "team": TEAM_NAME,
                "user": BOT_USER_NAME,
                "team_id": config.team_id,
                "user_id": config.bot_user_id,
                "bot_id": config.bot_id,
                "is_enterprise_install": false
            }))
        }),
        "apps.connections.open" => match token.as_deref() {
            None => slack_error("not_authed"),
            Some(token) if token == config.app_token => {
                let ticket = {
                    let mut recorded = lock(&shared.recorded);
                    recorded.next_ticket += 1;
                    let ticket = recorded.next_ticket.to_string();
                    recorded.open_tickets.insert(ticket.clone());
                    ticket
                };
                ok(json!({"url": format!("ws://{}/socket?ticket={ticket}", shared.address)}))
            }
            Some(token) if token == config.bot_token => slack_error("not_allowed_token_type"),
            Some(_) => slack_error("invalid_auth"),
        },
        "chat.postMessage" => {
            lock(&shared.recorded).post_attempts.push(now);
            with_bot_token(config, token.as_deref(), || {
                post_message(&shared, &params, now)
            })
        }
        "users.info" => with_bot_token(config, token.as_deref(), || users_info(&shared, &params)),
        "conversations.info" => {
            with_bot_token(config, token.as_deref(), || conversations_info(&params))
        }
        _ => {
            lock(&shared.recorded).unknown_methods.push(method);
            slack_error("unknown_method")
        }
    }
}

fn with_bot_token(
    config: &FakeSlackConfig,
    token: Option<&str>,
    answer: impl FnOnce() -> Response,
) -> Response {
    match token {
        None => slack_error("not_authed"),
        Some(token) if token == config.bot_token => answer(),
        Some(token) if token == config.app_token => slack_error("not_allowed_token_type"),
        Some(_) => slack_error("invalid_auth"),
    }
}

fn post_message(shared: &Shared, params: &Value, now: Instant) -> Response {
    let mut recorded = lock(&shared.recorded);
    if recorded.rate_limited_posts_left > 0 {
        recorded.rate_limited_posts_left -= 1;
        let retry_after = recorded.retry_after_secs.to_string();
        let body = json!({"ok": false, "error": "ratelimited"});
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after)],
            axum::Json(body),
        )
            .into_response();
    }
    let Some(channel) = param_str(params, "channel").filter(|c| !c.is_empty()) else {
        return slack_error("channel_not_found");
    };
    let text = param_str(params, "text").unwrap_or_default();
    let has_blocks = params.get("blocks").is_some_and(|blocks| !blocks.is_null());
    if text.is_empty() && !has_blocks {
        return slack_error("no_text");
    }
    let thread_ts = param_str(params, "thread_ts").filter(|ts| !ts.is_empty());
    recorded.ts_counter += 1;
    let ts = format!("{}.{:06}", shared.started_secs, recorded.ts_counter);
    recorded.posts.push(Posted {
        channel: channel.clone(),
        text: text.clone(),
        thread_ts: thread_ts.clone(),
        ts: ts.clone(),
        params: params.clone(),
        at: now,
    });
    drop(recorded);

    let config = &shared.config;
    let mut message = json!({
        "bot_id": config.bot_id,
        "type": "message",
        "text": text,
        "user": config.bot_user_id,
        "ts": ts,
        "app_id": config.app_id,
        "team": config.team_id,
        "bot_profile": {
            "id": config.bot_id,
            "app_id": config.app_id,
            "name": BOT_USER_NAME,
            "deleted": false,
            "updated": shared.started_secs,
            "team_id": config.team_id
        }
    });
    if let Some(thread_ts) = &thread_ts {
        message["thread_ts"] = json!(thread_ts);
    }
    ok(json!({"channel": channel, "ts": ts, "message": message}))
}

fn users_info(shared: &Shared, params: &Value) -> Response {
    let Some(user_id) = param_str(params, "user") else {
        return slack_error("user_not_found");
    };
    *lock(&shared.recorded)
        .users_info_calls
        .entry(user_id.clone())
        .or_insert(0) += 1;
    let Some((_, display_name)) = shared.config.users.iter().find(|(id, _)| *id == user_id) else {
        return slack_error("user_not_found");
    };
    let real_name = format!("{display_name} (real name)");
    ok(json!({
        "user": {
            "id": user_id,
            "team_id": shared.config.team_id,
            "name": display_name.to_lowercase().replace(' ', "."),
            "deleted": false,
            "real_name": real_name,
            "tz": "Europe/Amsterdam",
            "tz_label": "Central European Time",
            "tz_offset": 3600,
            "profile": {
                "display_name": display_name,
                "display_name_normalized": display_name,
                "real_name": real_name,
                "real_name_normalized": real_name,
                "team": shared.config.team_id
            },
            "is_admin": false,
            "is_owner": false,
            "is_bot": false,
            "is_app_user": false,
            "updated": shared.started_secs
        }
    }))
}

/// Answers from the id alone: `C…` public channel, `G…` private, `D…` DM.
fn conversations_info(params: &Value) -> Response {
    let Some(channel) = param_str(params, "channel").filter(|c| !c.is_empty()) else {
        return slack_error("channel_not_found");
    };
    let is_im = channel.starts_with('D');
    let is_private = channel.starts_with('G');
    ok(json!({
        "channel": {
            "id": channel,
            "created": 1700000000,
            "name": format!("chan-{}", channel.to_lowercase()),
            "is_channel": !is_im && !is_private,
            "is_group": is_private,
            "is_im": is_im,
            "is_mpim": false,
            "is_private": is_private || is_im,
            "is_archived": false,
            "is_member": true
        }
    }))
}

fn ok(fields: Value) -> Response {
    let mut body = Map::new();
    body.insert("ok".into(), Value::Bool(true));
    if let Value::Object(fields) = fields {
        body.extend(fields);
    }
    (StatusCode::OK, axum::Json(Value::Object(body))).into_response()
}

/// Slack reports API errors with HTTP 200.
fn slack_error(code: &str) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({"ok": false, "error": code})),
    )
        .into_response()
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(|token| token.trim().to_string())
}

/// Query parameters merged with the body: a JSON object as is, a form body
/// as strings.
fn request_params(uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Value {
    let mut params = Map::new();
    for (name, value) in parse_form(uri.query().unwrap_or("")) {
        params.insert(name, Value::String(value));
    }
    let content_type = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/x-www-form-urlencoded") {
        for (name, value) in parse_form(&String::from_utf8_lossy(body)) {
            params.insert(name, Value::String(value));
        }
    } else if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) {
        params.extend(fields);
    }
    Value::Object(params)
}

/// A string parameter; numbers and booleans as their text.
fn param_str(params: &Value, name: &str) -> Option<String> {
    match params.get(name)? {
        Value::String(text) => Some(text.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn parse_form(encoded: &str) -> BTreeMap<String, String> {
    encoded
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => decoded.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(index + 1..index + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        decoded.push(byte);
                        index += 2;
                    }
                    Err(_) => decoded.push(b'%'),
                }
            }
            byte => decoded.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

// ---- Socket Mode ----------------------------------------------------------------

async fn socket_upgrade(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Tickets come from apps.connections.open and work once, as Slack's do.
    let ticket = query.get("ticket").cloned().unwrap_or_default();
    if !lock(&shared.recorded).open_tickets.remove(&ticket) {
        return (StatusCode::UNAUTHORIZED, "invalid ticket").into_response();
    }
    upgrade.on_upgrade(move |socket| serve_socket(socket, shared))
}

async fn serve_socket(mut socket: WebSocket, shared: Arc<Shared>) {
    let (commands, mut pending) = unbounded_channel();
    let id = {
        let mut recorded = lock(&shared.recorded);
        recorded.next_socket_id += 1;
        let id = recorded.next_socket_id;
        recorded.sockets.push(OpenSocket { id, commands });
        id
    };
    let hello = hello_frame(&shared.config.app_id).to_string();
    if socket.send(Message::Text(hello.into())).await.is_ok() {
        lock(&shared.recorded).connections += 1;
        run_socket(&mut socket, &shared, &mut pending).await;
    }
    lock(&shared.recorded)
        .sockets
        .retain(|socket| socket.id != id);
}

async fn run_socket(
    socket: &mut WebSocket,
    shared: &Shared,
    pending: &mut UnboundedReceiver<SocketCommand>,
) {
    loop {
        tokio::select! {
            command = pending.recv() => match command {
                Some(SocketCommand::Frame(text)) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Some(SocketCommand::Disconnect(reason)) => {
                    let frame = disconnect_frame(&reason).to_string();
                    let _ = socket.send(Message::Text(frame.into())).await;
                    let _ = socket.send(close_frame()).await;
                    return;
                }
                Some(SocketCommand::Close) => {
                    let _ = socket.send(close_frame()).await;
                    return;
                }
                Some(SocketCommand::Abort) | None => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => record_client_frame(shared, text.as_str()),
                // axum answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
        }
    }
}

fn close_frame() -> Message {
    Message::Close(Some(CloseFrame {
        code: 1000,
        reason: "".into(),
    }))
}

fn record_client_frame(shared: &Shared, text: &str) {
    let frame = serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
    let mut recorded = lock(&shared.recorded);
    if let Some(envelope_id) = frame.get("envelope_id").and_then(Value::as_str) {
        recorded.acks.push(envelope_id.to_string());
    }
    recorded.client_frames.push(frame);
}
