//! A fake Discord for tests, on 127.0.0.1, so no test ever reaches the
//! internet (spec §7).
//!
//! It speaks the real wire formats, so serenity 0.12 works against it
//! unmodified: REST API v10 under `/api/v10` (what serenity requests once its
//! `HttpBuilder` has `.proxy(fake.proxy_url())` and
//! `.ratelimiter_disabled(true)`), and Gateway v10 (JSON text frames, no
//! compression) at `/gateway`, the URL `GET /api/v10/gateway` hands out.
//!
//! The gateway sends Hello, acknowledges heartbeats, answers Identify with
//! READY (or closes with 4004 for a wrong token) and Resume with RESUMED (or
//! op 9 for an unknown session), and keeps the sequence number. Tests push
//! events (`send_message_create`) and connection trouble (`send_reconnect`,
//! `send_invalid_session`, `close_connection`). Dispatches pushed while no
//! session is live (after trouble, before the next READY/RESUMED) are held and
//! delivered once one is, as Discord replays missed events on resume, so a
//! test never loses an event to timing.
//!
//! REST validates like Discord where talon could get it wrong: the bot token,
//! empty or over-long messages, replies to unknown messages; and it can answer
//! create-message calls with 429s. Everything is recorded for assertions.
//!
//! Use real time with millisecond durations: under tokio's paused clock the
//! runtime would skip ahead while waiting on the sockets and fire timeouts.
//!
//! Included by many test crates, so it depends only on axum, tokio,
//! serde_json, futures and std, and unused helpers are fine.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

/// Milliseconds from the Unix epoch to the Discord epoch (2015-01-01).
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;
/// Discord's limit on message content, in Unicode code points.
const MAX_CONTENT_CHARS: usize = 2000;
/// The owner of the fake application, a human.
const OWNER_ID: &str = "1000000000000000099";
/// `GATEWAY_MESSAGE_CONTENT_LIMITED`: the message-content intent is enabled
/// for this (small) bot, as talon's bot needs.
const APPLICATION_FLAGS: u64 = 1 << 19;

#[derive(Clone, Debug)]
pub struct FakeDiscordConfig {
    /// The bot token, without the `Bot ` prefix.
    pub token: String,
    pub bot_id: String,
    pub bot_name: String,
    /// Sent in Hello; serenity heartbeats at this interval.
    pub heartbeat_interval_ms: u64,
}

impl Default for FakeDiscordConfig {
    fn default() -> Self {
        FakeDiscordConfig {
            token: "fake-discord-token".into(),
            bot_id: "1000000000000000001".into(),
            bot_name: "talon".into(),
            heartbeat_interval_ms: 45_000,
        }
    }
}

/// A message a user posts, to be delivered as MESSAGE_CREATE.
#[derive(Clone, Debug, Default)]
pub struct MessageSpec {
    pub channel_id: String,
    /// `None` for a DM.
    pub guild_id: Option<String>,
    pub author_id: String,
    pub author_name: String,
    pub author_is_bot: bool,
    pub content: String,
    /// Mentioned users as `(id, username)`; put `<@id>` in the content too.
    pub mentions: Vec<(String, String)>,
}

/// One successful `POST /channels/{id}/messages`.
#[derive(Clone, Debug)]
pub struct Created {
    /// The id the fake gave the new message.
    pub message_id: String,
    pub channel_id: String,
    pub content: String,
    /// The raw `allowed_mentions` value, `Value::Null` when absent.
    pub allowed_mentions: Value,
    /// The raw `message_reference` value, `Value::Null` when absent.
    pub message_reference: Value,
    /// The whole request body.
    pub body: Value,
    pub at: Instant,
}

/// One `POST /channels/{id}/typing`.
#[derive(Clone, Debug)]
pub struct TypingCall {
    pub channel_id: String,
    pub at: Instant,
}

/// One REST request and the status it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestCall {
    pub method: String,
    /// Path without the query, e.g. `/api/v10/channels/1/messages`.
    pub path: String,
    pub status: u16,
}

/// One Identify (op 2) as received.
#[derive(Clone, Debug)]
pub struct Identify {
    /// As sent; serenity sends `Bot <token>`.
    pub token: String,
    pub intents: u64,
    /// The whole `d` object.
    pub payload: Value,
}

/// One Resume (op 6) as received.
#[derive(Clone, Debug)]
pub struct Resume {
    pub token: String,
    pub session_id: String,
    pub seq: u64,
}

/// Something a test wants one websocket to send.
enum Outbound {
    /// An op 0 event; the connection stamps the sequence number when sending.
    Dispatch {
        event: String,
        data: Value,
    },
    /// Any other payload, sent as is.
    Frame(Value),
    Close {
        code: u16,
        reason: String,
    },
}

#[derive(Clone)]
struct Connection {
    id: u64,
    sender: mpsc::UnboundedSender<Outbound>,
}

#[derive(Default)]
struct Gateway {
    /// The newest open socket: where op 7, op 9 and closes go.
    latest: Option<Connection>,
    /// The socket whose session is established; dispatches go there.
    live: Option<Connection>,
    /// Dispatches waiting for a live session.
    held: VecDeque<(String, Value)>,
    /// Sessions that may be resumed.
    sessions: HashSet<String>,
    /// The last sequence number sent in the current session.
    seq: u64,
}

#[derive(Default)]
struct Records {
    created: Vec<Created>,
    create_attempts: Vec<Instant>,
    rate_limited_creates: usize,
    typing: Vec<TypingCall>,
    rest_calls: Vec<RestCall>,
    identifies: Vec<Identify>,
    resumes: Vec<Resume>,
    readies: usize,
    heartbeats: usize,
    /// The query string of each gateway connection, e.g. `v=10`.
    connections: Vec<String>,
}

struct RateLimitPlan {
    remaining: usize,
    retry_after_secs: f64,
}

struct Shared {
    config: FakeDiscordConfig,
    /// `127.0.0.1:<port>`.
    address: String,
    gateway: Mutex<Gateway>,
    records: Mutex<Records>,
    rate_limit: Mutex<Option<RateLimitPlan>>,
    /// Every message the fake knows by id (pushed or created), for replies.
    messages: Mutex<HashMap<String, Value>>,
    last_snowflake: AtomicU64,
    next_connection_id: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

/// A running fake Discord; stops when dropped.
pub struct FakeDiscord {
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
    shutdown: watch::Sender<bool>,
}

impl FakeDiscord {
    pub async fn start(config: FakeDiscordConfig) -> FakeDiscord {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Discord server");
        let address = listener.local_addr().expect("fake Discord address");
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            address: address.to_string(),
            gateway: Mutex::new(Gateway::default()),
            records: Mutex::new(Records::default()),
            rate_limit: Mutex::new(None),
            messages: Mutex::new(HashMap::new()),
            last_snowflake: AtomicU64::new(0),
            next_connection_id: AtomicU64::new(1),
            shutdown: shutdown_rx,
        });
        let app = axum::Router::new()
            .route("/gateway", axum::routing::get(gateway_upgrade))
            .fallback(handle_rest)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeDiscord {
            shared,
            server,
            shutdown,
        }
    }

    pub fn config(&self) -> &FakeDiscordConfig {
        &self.shared.config
    }

    /// `http://127.0.0.1:<port>`, for serenity's `HttpBuilder::proxy`.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.shared.address)
    }

    /// `http://127.0.0.1:<port>/api/v10`.
    pub fn api_base(&self) -> String {
        format!("http://{}/api/v10", self.shared.address)
    }

    /// `ws://127.0.0.1:<port>/gateway`, what `GET /gateway` answers.
    pub fn gateway_url(&self) -> String {
        self.shared.gateway_url()
    }

    // --- gateway controls ---

    /// Pushes MESSAGE_CREATE for a user's message; returns its new id.
    pub fn send_message_create(&self, spec: MessageSpec) -> String {
        let id = self.shared.next_snowflake();
        let author = user_json(&spec.author_id, &spec.author_name, spec.author_is_bot);
        let mentions: Vec<Value> = spec
            .mentions
            .iter()
            .map(|(id, name)| {
                let mut user = user_json(id, name, false);
                if spec.guild_id.is_some() {
                    user["member"] = partial_member_json();
                }
                user
            })
            .collect();
        let mut message = message_json(MessageFields {
            id: &id,
            channel_id: &spec.channel_id,
            author,
            content: &spec.content,
            mentions,
            message_reference: Value::Null,
            referenced_message: Value::Null,
        });
        // The gateway (unlike REST) says where the message is and who wrote
        // it in the guild.
        if let Some(guild_id) = &spec.guild_id {
            message["guild_id"] = json!(guild_id);
            message["member"] = partial_member_json();
        }
        lock(&self.shared.messages).insert(id.clone(), message.clone());
        self.send_dispatch("MESSAGE_CREATE", message);
        id
    }

    /// Pushes any op 0 event (held until a session is live).
    pub fn send_dispatch(&self, event: &str, data: Value) {
        let mut gateway = lock(&self.shared.gateway);
        let undelivered = match &gateway.live {
            Some(live) => live
                .sender
                .send(Outbound::Dispatch {
                    event: event.to_string(),
                    data,
                })
                .err()
                .and_then(|failed| match failed.0 {
                    Outbound::Dispatch { event, data } => Some((event, data)),
                    _ => None,
                }),
            None => Some((event.to_string(), data)),
        };
        if let Some(held) = undelivered {
            gateway.live = None;
            gateway.held.push_back(held);
        }
    }

    /// Sends op 7 Reconnect; serenity then opens a new socket and resumes.
    /// Returns whether a socket was open to receive it.
    pub fn send_reconnect(&self) -> bool {
        self.trouble(Outbound::Frame(frame(7, Value::Null)), false)
    }

    /// Sends op 9 Invalid Session; `resumable: false` also forgets the
    /// session, so serenity must identify again.
    pub fn send_invalid_session(&self, resumable: bool) -> bool {
        self.trouble(Outbound::Frame(frame(9, json!(resumable))), !resumable)
    }

    /// Closes the newest socket with `code` and Discord's reason for it.
    /// 4007 and 4009 also forget the session, as Discord does.
    pub fn close_connection(&self, code: u16) -> bool {
        let outbound = Outbound::Close {
            code,
            reason: close_reason(code).to_string(),
        };
        self.trouble(outbound, matches!(code, 4007 | 4009))
    }

    fn trouble(&self, outbound: Outbound, forget_sessions: bool) -> bool {
        let mut gateway = lock(&self.shared.gateway);
        gateway.live = None;
        if forget_sessions {
            gateway.sessions.clear();
        }
        match &gateway.latest {
            Some(latest) => latest.sender.send(outbound).is_ok(),
            None => false,
        }
    }

    // --- test controls for REST ---

    /// The next `n` create-message calls answer 429 with Discord's headers
    /// and body, saying to retry after `retry_after_secs`.
    pub fn rate_limit_creates(&self, n: usize, retry_after_secs: f64) {
        *lock(&self.shared.rate_limit) = Some(RateLimitPlan {
            remaining: n,
            retry_after_secs,
        });
    }

    // --- records ---

    pub fn identifies(&self) -> usize {
        lock(&self.shared.records).identifies.len()
    }

    pub fn identify_payloads(&self) -> Vec<Identify> {
        lock(&self.shared.records).identifies.clone()
    }

    pub fn resumes(&self) -> usize {
        lock(&self.shared.records).resumes.len()
    }

    pub fn resume_payloads(&self) -> Vec<Resume> {
        lock(&self.shared.records).resumes.clone()
    }

    /// READY events sent (successful identifies).
    pub fn readies(&self) -> usize {
        lock(&self.shared.records).readies
    }

    /// Gateway sockets opened so far.
    pub fn connections(&self) -> usize {
        lock(&self.shared.records).connections.len()
    }

    /// The query string of each gateway connection (serenity sends `v=10`).
    pub fn gateway_queries(&self) -> Vec<String> {
        lock(&self.shared.records).connections.clone()
    }

    /// Heartbeats (op 1) received and acknowledged.
    pub fn heartbeats(&self) -> usize {
        lock(&self.shared.records).heartbeats
    }

    /// Whether a session is live, i.e. dispatches go out at once.
    pub fn session_live(&self) -> bool {
        lock(&self.shared.gateway).live.is_some()
    }

    pub fn created(&self) -> Vec<Created> {
        lock(&self.shared.records).created.clone()
    }

    /// When each create-message call arrived, rate-limited or not.
    pub fn create_attempts(&self) -> Vec<Instant> {
        lock(&self.shared.records).create_attempts.clone()
    }

    /// Create-message calls answered with 429.
    pub fn rate_limited_creates(&self) -> usize {
        lock(&self.shared.records).rate_limited_creates
    }

    pub fn typing_calls(&self) -> Vec<TypingCall> {
        lock(&self.shared.records).typing.clone()
    }

    pub fn rest_calls(&self) -> Vec<RestCall> {
        lock(&self.shared.records).rest_calls.clone()
    }

    /// REST calls the fake answered with 404 (no such route).
    pub fn unknown_routes(&self) -> Vec<RestCall> {
        self.rest_calls()
            .into_iter()
            .filter(|call| call.status == 404)
            .collect()
    }

    // --- waiting ---

    pub async fn wait_identifies(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.identifies() >= n).await
    }

    pub async fn wait_resumes(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.resumes() >= n).await
    }

    pub async fn wait_readies(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.readies() >= n).await
    }

    pub async fn wait_connections(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.connections() >= n).await
    }

    pub async fn wait_heartbeats(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.heartbeats() >= n).await
    }

    /// The created messages once there are at least `n`, or whatever there
    /// is when `timeout` runs out.
    pub async fn wait_created(&self, n: usize, timeout: Duration) -> Vec<Created> {
        wait_until(timeout, || self.created().len() >= n).await;
        self.created()
    }

    pub async fn wait_typing(&self, n: usize, timeout: Duration) -> Vec<TypingCall> {
        wait_until(timeout, || self.typing_calls().len() >= n).await;
        self.typing_calls()
    }
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        // Abort rather than shut down gracefully, and end the open sockets
        // too: nothing may keep the port alive after the test.
        let _ = self.shutdown.send(true);
        self.server.abort();
    }
}

async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A poisoned lock only means another test thread panicked; the data is
/// still what was recorded.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn gateway_url(&self) -> String {
        format!("ws://{}/gateway", self.address)
    }

    /// A fresh, increasing snowflake for the current time.
    fn next_snowflake(&self) -> String {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(DISCORD_EPOCH_MS);
        let from_clock = now_ms.saturating_sub(DISCORD_EPOCH_MS) << 22;
        let previous = self
            .last_snowflake
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(from_clock.max(last + 1))
            })
            .unwrap_or_default();
        from_clock.max(previous + 1).to_string()
    }

    fn token_matches(&self, sent: &str) -> bool {
        let bare = sent.strip_prefix("Bot ").unwrap_or(sent);
        bare == self.config.token
    }

    fn bot_user(&self) -> Value {
        user_json(&self.config.bot_id, &self.config.bot_name, true)
    }
}

// --- JSON shapes, as Discord sends them ---

fn user_json(id: &str, name: &str, bot: bool) -> Value {
    let mut user = json!({
        "id": id,
        "username": name,
        "avatar": null,
        "discriminator": "0",
        "public_flags": 0,
        "flags": 0,
        "banner": null,
        "accent_color": null,
        "global_name": null,
        "avatar_decoration_data": null,
    });
    // Discord leaves `bot` out for humans.
    if bot {
        user["bot"] = json!(true);
    }
    user
}

fn partial_member_json() -> Value {
    json!({
        "roles": [],
        "premium_since": null,
        "pending": false,
        "nick": null,
        "mute": false,
        "joined_at": discord_timestamp(SystemTime::now()),
        "flags": 0,
        "deaf": false,
        "communication_disabled_until": null,
        "banner": null,
        "avatar": null,
    })
}

struct MessageFields<'a> {
    id: &'a str,
    channel_id: &'a str,
    author: Value,
    content: &'a str,
    mentions: Vec<Value>,
    message_reference: Value,
    referenced_message: Value,
}

fn message_json(fields: MessageFields<'_>) -> Value {
    let is_reply = !fields.message_reference.is_null();
    let mut message = json!({
        // 19 is a reply, 0 a plain message.
        "type": if is_reply { 19 } else { 0 },
        "content": fields.content,
        "mentions": fields.mentions,
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "timestamp": discord_timestamp(SystemTime::now()),
        "edited_timestamp": null,
        "flags": 0,
        "components": [],
        "id": fields.id,
        "channel_id": fields.channel_id,
        "author": fields.author,
        "pinned": false,
        "mention_everyone": false,
        "tts": false,
    });
    if is_reply {
        message["message_reference"] = fields.message_reference;
        message["referenced_message"] = fields.referenced_message;
    }
    message
}

/// `2025-01-02T03:04:05.678000+00:00`, Discord's timestamp format.
fn discord_timestamp(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let in_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60,
        since_epoch.subsec_micros(),
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A non-dispatch gateway payload.
fn frame(op: u8, data: Value) -> Value {
    json!({"t": null, "s": null, "op": op, "d": data})
}

fn close_reason(code: u16) -> &'static str {
    match code {
        4000 => "Unknown error.",
        4001 => "Unknown opcode.",
        4002 => "Error while decoding payload.",
        4003 => "Not authenticated.",
        4004 => "Authentication failed.",
        4005 => "Already authenticated.",
        4007 => "Invalid seq.",
        4008 => "Rate limited.",
        4009 => "Session timed out.",
        4010 => "Invalid shard.",
        4011 => "Sharding required.",
        4012 => "Invalid API version.",
        4013 => "Invalid intent(s).",
        4014 => "Disallowed intent(s).",
        _ => "",
    }
}

// --- gateway ---

async fn gateway_upgrade(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade.on_upgrade(move |socket| run_connection(shared, socket, query.unwrap_or_default()))
}

/// What one socket knows about itself.
struct ConnectionState {
    id: u64,
    sender: mpsc::UnboundedSender<Outbound>,
    /// Identified or resumed on this socket.
    authenticated: bool,
}

/// Why a socket stops.
enum Ending {
    Close(u16),
    Dropped,
}

async fn run_connection(shared: Arc<Shared>, mut socket: WebSocket, query: String) {
    let id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
    let (sender, mut outbound) = mpsc::unbounded_channel();
    lock(&shared.records).connections.push(query);
    lock(&shared.gateway).latest = Some(Connection {
        id,
        sender: sender.clone(),
    });
    let mut state = ConnectionState {
        id,
        sender,
        authenticated: false,
    };
    let mut shutdown = shared.shutdown.clone();

    let hello = frame(
        10,
        json!({
            "heartbeat_interval": shared.config.heartbeat_interval_ms,
            "_trace": ["[\"fake-gateway\",{\"micros\":0.0}]"],
        }),
    );
    let mut ending = if send_json(&mut socket, &hello).await {
        None
    } else {
        Some(Ending::Dropped)
    };

    while ending.is_none() {
        tokio::select! {
            incoming = socket.recv() => {
                ending = match incoming {
                    Some(Ok(WsMessage::Text(text))) => {
                        handle_payload(&shared, &mut state, &mut socket, text.as_str()).await
                    }
                    // No compression and no ETF: binary frames are a decode error.
                    Some(Ok(WsMessage::Binary(_))) => Some(Ending::Close(4002)),
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => None,
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => Some(Ending::Dropped),
                };
            }
            next = outbound.recv() => {
                ending = match next {
                    Some(Outbound::Dispatch { event, data }) => {
                        let payload = stamp_dispatch(&shared, &event, data);
                        (!send_json(&mut socket, &payload).await).then_some(Ending::Dropped)
                    }
                    Some(Outbound::Frame(payload)) => {
                        (!send_json(&mut socket, &payload).await).then_some(Ending::Dropped)
                    }
                    Some(Outbound::Close { code, reason }) => {
                        send_close(&mut socket, code, &reason).await;
                        Some(Ending::Dropped)
                    }
                    None => Some(Ending::Dropped),
                };
            }
            _ = shutdown.changed() => ending = Some(Ending::Dropped),
        }
    }

    if let Some(Ending::Close(code)) = ending {
        send_close(&mut socket, code, close_reason(code)).await;
    }
    let mut gateway = lock(&shared.gateway);
    if gateway.latest.as_ref().is_some_and(|c| c.id == state.id) {
        gateway.latest = None;
    }
    if gateway.live.as_ref().is_some_and(|c| c.id == state.id) {
        gateway.live = None;
    }
}

async fn send_json(socket: &mut WebSocket, payload: &Value) -> bool {
    socket
        .send(WsMessage::Text(payload.to_string().into()))
        .await
        .is_ok()
}

async fn send_close(socket: &mut WebSocket, code: u16, reason: &str) {
    let close = CloseFrame {
        code,
        reason: reason.to_string().into(),
    };
    let _ = socket.send(WsMessage::Close(Some(close))).await;
}

/// Assigns the next sequence number of the session.
fn stamp_dispatch(shared: &Shared, event: &str, data: Value) -> Value {
    let seq = {
        let mut gateway = lock(&shared.gateway);
        gateway.seq += 1;
        gateway.seq
    };
    json!({"t": event, "s": seq, "op": 0, "d": data})
}

/// Handles one payload from the client; `Some` ends the socket.
async fn handle_payload(
    shared: &Shared,
    state: &mut ConnectionState,
    socket: &mut WebSocket,
    text: &str,
) -> Option<Ending> {
    let Ok(payload) = serde_json::from_str::<Value>(text) else {
        return Some(Ending::Close(4002));
    };
    let data = &payload["d"];
    match payload["op"].as_u64() {
        Some(1) => {
            lock(&shared.records).heartbeats += 1;
            (!send_json(socket, &frame(11, Value::Null)).await).then_some(Ending::Dropped)
        }
        Some(2) => identify(shared, state, socket, data).await,
        Some(6) => resume(shared, state, socket, data).await,
        // Presence update, voice state, member and soundboard requests:
        // accepted and ignored, once authenticated.
        Some(3 | 4 | 8 | 31) if state.authenticated => None,
        Some(3 | 4 | 8 | 31) => Some(Ending::Close(4003)),
        _ => Some(Ending::Close(4001)),
    }
}

async fn identify(
    shared: &Shared,
    state: &mut ConnectionState,
    socket: &mut WebSocket,
    data: &Value,
) -> Option<Ending> {
    let token = data["token"].as_str().unwrap_or_default().to_string();
    lock(&shared.records).identifies.push(Identify {
        token: token.clone(),
        intents: data["intents"].as_u64().unwrap_or_default(),
        payload: data.clone(),
    });
    if state.authenticated {
        return Some(Ending::Close(4005));
    }
    if !shared.token_matches(&token) {
        return Some(Ending::Close(4004));
    }
    let session_id = format!(
        "{:016x}{:016x}",
        state.id,
        shared.next_snowflake().parse::<u64>().unwrap_or_default()
    );
    let shard = match &data["shard"] {
        Value::Null => json!([0, 1]),
        shard => shard.clone(),
    };
    let ready = json!({
        "v": 10,
        "user_settings": {},
        "user": {
            "verified": true,
            "username": shared.config.bot_name,
            "mfa_enabled": false,
            "id": shared.config.bot_id,
            "global_name": null,
            "flags": 0,
            "email": null,
            "discriminator": "0",
            "bot": true,
            "avatar": null,
        },
        "session_type": "normal",
        "session_id": session_id,
        "resume_gateway_url": shared.gateway_url(),
        "relationships": [],
        "private_channels": [],
        "presences": [],
        "guilds": [],
        "guild_join_requests": [],
        "geo_ordered_rtc_regions": [],
        "auth": {},
        "application": {"id": shared.config.bot_id, "flags": APPLICATION_FLAGS},
        "_trace": ["[\"fake-gateway\",{\"micros\":0.0}]"],
        "shard": shard,
    });
    let payload = {
        let mut gateway = lock(&shared.gateway);
        gateway.sessions.insert(session_id);
        gateway.seq = 1;
        json!({"t": "READY", "s": 1, "op": 0, "d": ready})
    };
    if !send_json(socket, &payload).await {
        return Some(Ending::Dropped);
    }
    state.authenticated = true;
    lock(&shared.records).readies += 1;
    go_live(shared, state);
    None
}

async fn resume(
    shared: &Shared,
    state: &mut ConnectionState,
    socket: &mut WebSocket,
    data: &Value,
) -> Option<Ending> {
    let token = data["token"].as_str().unwrap_or_default().to_string();
    let session_id = data["session_id"].as_str().unwrap_or_default().to_string();
    lock(&shared.records).resumes.push(Resume {
        token: token.clone(),
        session_id: session_id.clone(),
        seq: data["seq"].as_u64().unwrap_or_default(),
    });
    if !shared.token_matches(&token) {
        return Some(Ending::Close(4004));
    }
    let payload = {
        let mut gateway = lock(&shared.gateway);
        if gateway.sessions.contains(&session_id) {
            gateway.seq += 1;
            Some(json!({"t": "RESUMED", "s": gateway.seq, "op": 0, "d": {
                "_trace": ["[\"fake-gateway\",{\"micros\":0.0}]"],
            }}))
        } else {
            None
        }
    };
    let Some(payload) = payload else {
        // Discord's answer to resuming a session it does not know.
        return (!send_json(socket, &frame(9, json!(false))).await).then_some(Ending::Dropped);
    };
    if !send_json(socket, &payload).await {
        return Some(Ending::Dropped);
    }
    state.authenticated = true;
    go_live(shared, state);
    None
}

/// Makes this socket the one dispatches go to, and hands it what was held,
/// in order, under the same lock so nothing overtakes.
fn go_live(shared: &Shared, state: &ConnectionState) {
    let mut gateway = lock(&shared.gateway);
    while let Some((event, data)) = gateway.held.pop_front() {
        let _ = state.sender.send(Outbound::Dispatch { event, data });
    }
    gateway.live = Some(Connection {
        id: state.id,
        sender: state.sender.clone(),
    });
}

// --- REST ---

enum Route {
    Gateway,
    GatewayBot,
    CurrentUser,
    CurrentApplication,
    CreateMessage { channel_id: String },
    Typing { channel_id: String },
}

impl Route {
    fn parse(path: &str) -> Option<(Method, Route)> {
        let rest = path.strip_prefix("/api/v10/")?;
        let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let is_snowflake = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        Some(match segments.as_slice() {
            ["gateway"] => (Method::GET, Route::Gateway),
            ["gateway", "bot"] => (Method::GET, Route::GatewayBot),
            ["users", "@me"] => (Method::GET, Route::CurrentUser),
            ["oauth2", "applications", "@me"] => (Method::GET, Route::CurrentApplication),
            ["channels", id, "messages"] if is_snowflake(id) => (
                Method::POST,
                Route::CreateMessage {
                    channel_id: id.to_string(),
                },
            ),
            ["channels", id, "typing"] if is_snowflake(id) => (
                Method::POST,
                Route::Typing {
                    channel_id: id.to_string(),
                },
            ),
            _ => return None,
        })
    }
}

async fn handle_rest(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = answer_rest(&shared, &method, uri.path(), &headers, &body);
    lock(&shared.records).rest_calls.push(RestCall {
        method: method.to_string(),
        path: uri.path().to_string(),
        status: response.status().as_u16(),
    });
    response
}

fn answer_rest(
    shared: &Shared,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let Some((expected_method, route)) = Route::parse(path) else {
        return discord_error(404, 0, "404: Not Found");
    };
    if method != expected_method {
        return discord_error(405, 0, "405: Method Not Allowed");
    }
    // Only `GET /gateway` works without a token, as on Discord.
    let authorized = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value == format!("Bot {}", shared.config.token));
    if !authorized && !matches!(route, Route::Gateway) {
        return discord_error(401, 0, "401: Unauthorized");
    }
    match route {
        Route::Gateway => json_response(json!({"url": shared.gateway_url()})),
        Route::GatewayBot => json_response(json!({
            "url": shared.gateway_url(),
            "shards": 1,
            "session_start_limit": {
                "total": 1000,
                "remaining": 999,
                "reset_after": 14_400_000,
                "max_concurrency": 1,
            },
        })),
        Route::CurrentUser => {
            let mut user = shared.bot_user();
            user["verified"] = json!(true);
            user["mfa_enabled"] = json!(false);
            user["email"] = Value::Null;
            user["locale"] = json!("en-US");
            user["premium_type"] = json!(0);
            json_response(user)
        }
        Route::CurrentApplication => json_response(application_json(shared)),
        Route::CreateMessage { channel_id } => create_message(shared, &channel_id, body),
        Route::Typing { channel_id } => {
            lock(&shared.records).typing.push(TypingCall {
                channel_id,
                at: Instant::now(),
            });
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

fn application_json(shared: &Shared) -> Value {
    let bot = shared.bot_user();
    json!({
        "id": shared.config.bot_id,
        "name": shared.config.bot_name,
        "icon": null,
        "description": "",
        "summary": "",
        "type": null,
        "bot": bot,
        "is_monetized": false,
        "bot_public": true,
        "bot_require_code_grant": false,
        "verify_key": "0".repeat(64),
        "flags": APPLICATION_FLAGS,
        "hook": true,
        "redirect_uris": [],
        "interactions_endpoint_url": null,
        "role_connections_verification_url": null,
        "owner": user_json(OWNER_ID, "owner", false),
        "approximate_guild_count": 0,
        "team": null,
        "rpc_origins": [],
    })
}

fn create_message(shared: &Shared, channel_id: &str, body: &[u8]) -> Response {
    let now = Instant::now();
    lock(&shared.records).create_attempts.push(now);
    if let Some(retry_after) = take_rate_limit(shared) {
        lock(&shared.records).rate_limited_creates += 1;
        return rate_limited(retry_after);
    }
    let Some(request) = serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
    else {
        return discord_error(400, 50109, "The request body contains invalid JSON.");
    };
    let content = request["content"].as_str().unwrap_or_default();
    let non_empty = |field: &str| match &request[field] {
        Value::Array(items) => !items.is_empty(),
        Value::Null => false,
        _ => true,
    };
    let has_other_content = ["embeds", "sticker_ids", "attachments", "components", "poll"]
        .iter()
        .any(|field| non_empty(field));
    if content.is_empty() && !has_other_content {
        return discord_error(400, 50006, "Cannot send an empty message");
    }
    if content.chars().count() > MAX_CONTENT_CHARS {
        return invalid_form_body(
            "content",
            "BASE_TYPE_MAX_LENGTH",
            "Must be 2000 or fewer in length.",
        );
    }

    let (message_reference, referenced_message) = match &request["message_reference"] {
        Value::Null => (Value::Null, Value::Null),
        reference => {
            let referenced_id = reference["message_id"].as_str().unwrap_or_default();
            let referenced = lock(&shared.messages).get(referenced_id).cloned();
            let must_exist = reference["fail_if_not_exists"].as_bool().unwrap_or(true);
            if referenced.is_none() && must_exist {
                return invalid_form_body(
                    "message_reference",
                    "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                    "Unknown message",
                );
            }
            let mut echoed = json!({
                "type": reference["type"].as_u64().unwrap_or(0),
                "channel_id": reference["channel_id"].as_str().unwrap_or(channel_id),
                "message_id": referenced_id,
            });
            if let Some(guild_id) = reference["guild_id"].as_str() {
                echoed["guild_id"] = json!(guild_id);
            }
            (echoed, referenced.unwrap_or(Value::Null))
        }
    };

    let id = shared.next_snowflake();
    let message = message_json(MessageFields {
        id: &id,
        channel_id,
        author: shared.bot_user(),
        content,
        mentions: Vec::new(),
        message_reference,
        referenced_message,
    });
    lock(&shared.messages).insert(id.clone(), message.clone());
    lock(&shared.records).created.push(Created {
        message_id: id,
        channel_id: channel_id.to_string(),
        content: content.to_string(),
        allowed_mentions: request["allowed_mentions"].clone(),
        message_reference: request["message_reference"].clone(),
        body: request.clone(),
        at: now,
    });
    let mut response = json_response(message);
    add_rate_limit_headers(&mut response, 4, 5.0);
    response
}

/// `Some(retry_after)` if this call is to be rate limited.
fn take_rate_limit(shared: &Shared) -> Option<f64> {
    let mut plan = lock(&shared.rate_limit);
    let active = plan.as_mut().filter(|plan| plan.remaining > 0)?;
    active.remaining -= 1;
    Some(active.retry_after_secs)
}

fn rate_limited(retry_after_secs: f64) -> Response {
    let body = json!({
        "message": "You are being rate limited.",
        "retry_after": retry_after_secs,
        "global": false,
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    // Discord's Retry-After header is whole seconds; the body has the
    // precise value.
    set_header(
        &mut response,
        "retry-after",
        &(retry_after_secs.ceil() as u64).to_string(),
    );
    add_rate_limit_headers(&mut response, 0, retry_after_secs);
    set_header(&mut response, "x-ratelimit-scope", "user");
    response
}

fn add_rate_limit_headers(response: &mut Response, remaining: u32, reset_after_secs: f64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    set_header(response, "x-ratelimit-limit", "5");
    set_header(response, "x-ratelimit-remaining", &remaining.to_string());
    set_header(
        response,
        "x-ratelimit-reset",
        &format!("{:.3}", now + reset_after_secs),
    );
    set_header(
        response,
        "x-ratelimit-reset-after",
        &format!("{reset_after_secs:.3}"),
    );
    set_header(
        response,
        "x-ratelimit-bucket",
        "f4ke0000000000000000000000000000",
    );
}

fn set_header(response: &mut Response, name: &'static str, value: &str) {
    let value = HeaderValue::from_str(value).expect("header values here are ASCII");
    response
        .headers_mut()
        .insert(HeaderName::from_static(name), value);
}

fn json_response(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Discord's error body: `{"message": ..., "code": ...}`.
fn discord_error(status: u16, code: u32, message: &str) -> Response {
    let body = json!({"message": message, "code": code});
    (status_code(status), axum::Json(body)).into_response()
}

/// Discord's 400 for one bad field.
fn invalid_form_body(field: &str, error_code: &str, message: &str) -> Response {
    let body = json!({
        "message": "Invalid Form Body",
        "code": 50035,
        "errors": {field: {"_errors": [{"code": error_code, "message": message}]}},
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}
