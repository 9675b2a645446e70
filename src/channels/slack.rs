//! Slack: Socket Mode ingress and Web API delivery, with slack-morphism.
//!
//! Start: `auth.test` with the bot token (who are we: the bot's user id, to
//! rewrite `<@BOT>` mentions and ignore our own messages) and
//! `apps.connections.open` with the app token; a refused token is fatal for
//! this adapter. Then slack-morphism's Socket Mode listener keeps the
//! websocket up (it reconnects by itself, also when Slack asks with a
//! `disconnect`). Our callback only queues the event, so the envelope is
//! acknowledged at once; a task takes events off the queue, drops repeats
//! (by event id; the store drops a repeated message ts), resolves the
//! sender's display name (cached) and hands the message to the router.
//! Replies are posted with `chat.postMessage`, in the thread when the
//! message came from one. Chat ids are `slack:<channel>`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use slack_morphism::errors::SlackClientError;
use slack_morphism::listener::HttpStatusCode;
use slack_morphism::prelude::*;
use tokio::sync::{mpsc, watch, Mutex};

use super::delivery::{Poster, SendFailure};
use super::split::{Limit, SLACK_LIMIT};
use super::{submit_to_router, until_stopped, Platform, RecentKeys, Reporter};
use crate::messages::channel::ConnectionEvent;
use crate::messages::wire::ErrorKind;
use crate::messages::InboundMessage;
use crate::provider::classify_status;
use crate::secret::Secret;

/// The chat id prefix.
pub const PREFIX: &str = "slack";

/// How often the bot token is checked while connected, so a token revoked
/// while running stops the adapter instead of reconnecting forever.
const TOKEN_CHECK_EVERY: Duration = Duration::from_secs(300);

type Connector = SlackClientHyperConnector<SlackHyperHttpsConnector>;
type Client = SlackClient<Connector>;

/// What the Slack adapter needs.
#[derive(Clone)]
pub struct SlackSettings {
    pub bot_token: Secret,
    pub app_token: Secret,
    /// The Web API root, `https://slack.com/api/` unless a proxy or a test
    /// double stands in.
    pub api_url: Option<String>,
    /// The assistant's name, which `<@BOT>` mentions become.
    pub assistant_name: String,
}

/// Who the bot is, from `auth.test`.
#[derive(Debug, Clone, PartialEq)]
pub struct SlackIdentity {
    pub user_id: String,
    pub bot_id: Option<String>,
}

pub struct Slack {
    settings: SlackSettings,
    client: Arc<Client>,
    poster: Arc<SlackPoster>,
}

impl Slack {
    /// Checks both tokens with Slack (for `talon doctor`).
    pub async fn check_tokens(&self) -> Result<SlackIdentity, SendFailure> {
        verify_tokens(&self.client, &self.settings).await
    }

    pub fn new(settings: SlackSettings) -> Result<Slack, String> {
        let client = Arc::new(build_client(settings.api_url.as_deref())?);
        let poster = Arc::new(SlackPoster {
            client: client.clone(),
            token: api_token(&settings.bot_token),
        });
        Ok(Slack {
            settings,
            client,
            poster,
        })
    }
}

fn build_client(api_url: Option<&str>) -> Result<Client, String> {
    // The websocket's TLS asks rustls for the process-wide provider.
    crate::tls::install_crypto_provider();
    let mut tls = rustls::ClientConfig::clone(&crate::tls::client_config());
    // hyper-rustls sets ALPN itself and refuses a configuration that has it.
    tls.alpn_protocols.clear();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        // http only for a test double or a local proxy named in the config.
        .https_or_http()
        .enable_http1()
        .build();
    let mut connector = SlackClientHyperConnector::with_connector(https);
    if let Some(url) = api_url {
        // slack-morphism joins `<root>/<method>`, like its own default
        // `https://slack.com/api`.
        connector = connector.with_slack_api_url(url.trim_end_matches('/'));
    }
    Ok(SlackClient::new(connector))
}

fn api_token(secret: &Secret) -> SlackApiToken {
    SlackApiToken::new(SlackApiTokenValue::new(secret.expose().to_string()))
}

/// Slack's error codes that mean the token itself is bad. (A missing scope
/// is not one: it concerns one method, and stopping the adapter for it
/// would also stop it listening.)
fn is_token_error(code: &str) -> bool {
    matches!(
        code,
        "invalid_auth"
            | "not_authed"
            | "token_revoked"
            | "token_expired"
            | "account_inactive"
            | "not_allowed_token_type"
    )
}

/// One classification of slack-morphism's errors.
pub fn classify(error: &SlackClientError) -> SendFailure {
    match error {
        SlackClientError::RateLimitError(e) => SendFailure {
            kind: ErrorKind::RateLimited,
            retry_after: e.retry_after,
            detail: "rate limited by Slack".into(),
        },
        SlackClientError::ApiError(e) if is_token_error(&e.code) => {
            SendFailure::new(ErrorKind::Auth, e.code.clone())
        }
        SlackClientError::ApiError(e) => {
            let kind = match e.code.as_str() {
                "ratelimited" => ErrorKind::RateLimited,
                "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout" => {
                    ErrorKind::Temporary
                }
                _ => ErrorKind::Permanent,
            };
            SendFailure::new(kind, e.code.clone())
        }
        SlackClientError::HttpError(e) => SendFailure::new(
            classify_status(e.status_code.as_u16()),
            format!("HTTP {}", e.status_code),
        ),
        SlackClientError::HttpProtocolError(_)
        | SlackClientError::EndOfStream(_)
        | SlackClientError::SystemError(_)
        | SlackClientError::SocketModeProtocolError(_) => {
            SendFailure::new(ErrorKind::Temporary, error.to_string())
        }
        SlackClientError::ProtocolError(_) => {
            SendFailure::new(ErrorKind::Permanent, error.to_string())
        }
    }
}

/// Checks both tokens and learns who the bot is.
async fn verify_tokens(
    client: &Client,
    settings: &SlackSettings,
) -> Result<SlackIdentity, SendFailure> {
    let bot_token = api_token(&settings.bot_token);
    let bot = client.open_session(&bot_token);
    let me = bot.auth_test().await.map_err(|e| {
        let mut failure = classify(&e);
        failure.detail = format!("SLACK_BOT_TOKEN: {}", failure.detail);
        failure
    })?;
    let app_token = api_token(&settings.app_token);
    let app = client.open_session(&app_token);
    app.apps_connections_open(&SlackApiAppsConnectionOpenRequest::new())
        .await
        .map_err(|e| {
            let mut failure = classify(&e);
            failure.detail = format!("SLACK_APP_TOKEN: {}", failure.detail);
            failure
        })?;
    Ok(SlackIdentity {
        user_id: me.user_id.to_string(),
        bot_id: me.bot_id.map(|id| id.to_string()),
    })
}

/// A Slack message event, as much of it as talon uses.
#[derive(Debug, Clone, PartialEq)]
pub struct SlackIncoming {
    pub event_id: String,
    pub channel: String,
    pub user: Option<String>,
    pub bot_id: Option<String>,
    pub text: String,
    pub ts: String,
    pub thread_ts: Option<String>,
}

/// The message in a push event, if it is one talon reads: a new message or
/// an app mention (edits, deletions, joins and the like are not messages).
pub fn incoming(event: &SlackPushEventCallback) -> Option<SlackIncoming> {
    let event_id = event.event_id.to_string();
    match &event.event {
        SlackEventCallbackBody::Message(m) => {
            let readable = match &m.subtype {
                None => true,
                Some(subtype) => matches!(
                    subtype,
                    SlackMessageEventType::BotMessage
                        | SlackMessageEventType::MeMessage
                        | SlackMessageEventType::FileShare
                        | SlackMessageEventType::ThreadBroadcast
                ),
            };
            if !readable || m.hidden == Some(true) {
                return None;
            }
            Some(SlackIncoming {
                event_id,
                channel: m.origin.channel.as_ref()?.to_string(),
                user: m.sender.user.as_ref().map(|u| u.to_string()),
                bot_id: m.sender.bot_id.as_ref().map(|b| b.to_string()),
                text: m.content.as_ref()?.text.clone().unwrap_or_default(),
                ts: m.origin.ts.to_string(),
                thread_ts: m.origin.thread_ts.as_ref().map(|t| t.to_string()),
            })
        }
        SlackEventCallbackBody::AppMention(m) => Some(SlackIncoming {
            event_id,
            channel: m.channel.to_string(),
            user: Some(m.user.to_string()),
            bot_id: None,
            text: m.content.text.clone().unwrap_or_default(),
            ts: m.origin.ts.to_string(),
            thread_ts: m.origin.thread_ts.as_ref().map(|t| t.to_string()),
        }),
        _ => None,
    }
}

/// Whether the bot itself sent this (never answered, never stored).
pub fn is_own(message: &SlackIncoming, me: &SlackIdentity) -> bool {
    message.user.as_deref() == Some(me.user_id.as_str())
        || (message.bot_id.is_some() && message.bot_id == me.bot_id)
}

/// Milliseconds of a Slack ts (`"1700000000.000100"`); 0 if unreadable.
pub fn ts_millis(ts: &str) -> i64 {
    let (secs, frac) = ts.split_once('.').unwrap_or((ts, ""));
    let secs: i64 = secs.parse().unwrap_or(0);
    let micros: i64 = format!("{frac:0<6}")
        .get(..6)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(micros / 1000)
}

/// The inbound message for a Slack message from someone else.
pub fn to_inbound(
    message: &SlackIncoming,
    me: &SlackIdentity,
    sender_name: &str,
    assistant_name: &str,
) -> InboundMessage {
    let sender_id = message
        .user
        .clone()
        .or_else(|| message.bot_id.clone())
        .unwrap_or_default();
    InboundMessage {
        chat_id: format!("{PREFIX}:{}", message.channel),
        // A channel's ts is unique; a message also delivered as an
        // app_mention has the same ts, so it is stored once.
        platform_msg_id: message.ts.clone(),
        sender_id,
        sender_name: sender_name.to_string(),
        content: crate::trigger::rewrite_mention(&message.text, &me.user_id, assistant_name),
        timestamp: ts_millis(&message.ts),
        is_from_me: false,
        is_bot_message: message.bot_id.is_some(),
        reply_to: None,
        thread_id: message.thread_ts.clone(),
    }
}

/// The name to show for a user: display name, else real name, else handle.
pub fn display_name(user: &SlackUser) -> Option<String> {
    let profile = user.profile.as_ref();
    [
        profile.and_then(|p| p.display_name.clone()),
        profile.and_then(|p| p.real_name.clone()),
        user.real_name.clone(),
        user.name.clone(),
    ]
    .into_iter()
    .flatten()
    .map(|name| name.trim().to_string())
    .find(|name| !name.is_empty())
}

/// Makes agent text unable to ping a channel: `<!here>`, `<!channel>`,
/// `<!everyone>` and user-group mentions (`<!subteam^…>`) are escaped so
/// Slack shows them as text.
pub fn neutralize_broadcasts(text: &str) -> String {
    text.replace("<!", "&lt;!")
}

/// Display names by user id, looked up once.
#[derive(Default)]
struct NameCache {
    names: HashMap<String, String>,
}

impl Platform for Slack {
    type Poster = SlackPoster;

    fn name(&self) -> &'static str {
        "slack"
    }

    fn prefix(&self) -> &'static str {
        PREFIX
    }

    fn poster(&self) -> Arc<SlackPoster> {
        self.poster.clone()
    }

    async fn serve(&self, report: Reporter, mut stop: watch::Receiver<bool>) {
        let me = match verify_tokens(&self.client, &self.settings).await {
            Ok(me) => me,
            Err(failure) if failure.kind == ErrorKind::Auth => {
                report.report(ConnectionEvent::Rejected(failure.detail));
                return;
            }
            Err(failure) => {
                report.report(ConnectionEvent::Lost(failure.detail));
                return;
            }
        };
        tracing::info!(bot_user = %me.user_id, "slack: tokens accepted");
        let (events_tx, mut events) = mpsc::unbounded_channel::<SlackPushEventCallback>();
        let mut callbacks = SlackSocketModeListenerCallbacks::<Connector>::new();
        // Queue and return: the listener acknowledges the envelope as soon
        // as this callback returns.
        callbacks.push_events_callback = Box::new(
            move |event: SlackPushEventCallback,
                  _client: Arc<Client>,
                  _state: SlackClientEventsUserState| {
                let queued = events_tx.send(event).is_ok();
                async move {
                    if queued {
                        Ok(())
                    } else {
                        Err("talon's slack channel is stopping".into())
                    }
                }
            },
        );
        callbacks.hello_callback = on_hello(report.clone());
        let environment = Arc::new(
            SlackClientEventsListenerEnvironment::new(self.client.clone())
                .with_error_handler(log_listener_error),
        );
        let config = SlackClientSocketModeConfig::new().with_max_connections_count(1);
        let listener = SlackClientSocketModeListener::new(&config, environment, callbacks);
        if let Err(e) = listener
            .listen_for(&api_token(&self.settings.app_token))
            .await
        {
            report.report(ConnectionEvent::Lost(e.to_string()));
            return;
        }
        listener.start().await;

        let names = Mutex::new(NameCache::default());
        let mut seen = RecentKeys::new(4096);
        let mut token_check = tokio::time::interval(TOKEN_CHECK_EVERY);
        token_check.tick().await;
        loop {
            tokio::select! {
                _ = until_stopped(&mut stop) => break,
                event = events.recv() => {
                    let Some(event) = event else { break };
                    let Some(message) = incoming(&event) else { continue };
                    if !seen.first_time(message.event_id.clone()) || is_own(&message, &me) {
                        continue;
                    }
                    let name = self.sender_name(&names, &message).await;
                    let inbound = to_inbound(&message, &me, &name, &self.settings.assistant_name);
                    submit_to_router(inbound).await;
                }
                _ = token_check.tick() => {
                    let token = api_token(&self.settings.bot_token);
                    if let Err(e) = self.client.open_session(&token).auth_test().await {
                        let failure = classify(&e);
                        if failure.kind == ErrorKind::Auth {
                            report.report(ConnectionEvent::Rejected(format!("SLACK_BOT_TOKEN: {}", failure.detail)));
                            break;
                        }
                    }
                }
            }
        }
        listener.shutdown().await;
    }
}

impl Slack {
    async fn sender_name(&self, names: &Mutex<NameCache>, message: &SlackIncoming) -> String {
        let Some(user) = message.user.clone() else {
            return message.bot_id.clone().unwrap_or_else(|| "bot".into());
        };
        if let Some(name) = names.lock().await.names.get(&user) {
            return name.clone();
        }
        let token = api_token(&self.settings.bot_token);
        let session = self.client.open_session(&token);
        match session
            .users_info(&SlackApiUsersInfoRequest::new(SlackUserId::new(
                user.clone(),
            )))
            .await
        {
            Ok(info) => {
                let name = display_name(&info.user).unwrap_or_else(|| user.clone());
                names.lock().await.names.insert(user, name.clone());
                name
            }
            Err(e) => {
                // Not cached: the next message tries again.
                tracing::warn!(%user, error = %e, "slack: cannot look up a user's name");
                user
            }
        }
    }
}

/// Reports every Socket Mode `hello` (a connection, or a reconnection) as
/// up. Generic because slack-morphism does not export the hello event's
/// type; the field being assigned names it.
fn on_hello<E: Send + Sync + 'static>(
    report: Reporter,
) -> Box<dyn SlackSocketModeListenerCallback<Connector, E, ()> + Send + Sync> {
    Box::new(
        move |_hello: E, _client: Arc<Client>, _state: SlackClientEventsUserState| {
            report.report(ConnectionEvent::Up);
            async {}
        },
    )
}

fn log_listener_error(
    error: Box<dyn std::error::Error + Send + Sync>,
    _client: Arc<Client>,
    _state: SlackClientEventsUserState,
) -> HttpStatusCode {
    tracing::warn!(%error, "slack: socket mode listener error");
    HttpStatusCode::OK
}

/// Posts replies with `chat.postMessage`.
pub struct SlackPoster {
    client: Arc<Client>,
    token: SlackApiToken,
}

impl Poster for SlackPoster {
    fn limit(&self) -> Limit {
        SLACK_LIMIT
    }

    fn render(&self, text: &str) -> String {
        neutralize_broadcasts(text)
    }

    async fn post(&self, chat: &str, thread: Option<&str>, text: &str) -> Result<(), SendFailure> {
        let session = self.client.open_session(&self.token);
        let content = SlackMessageContent::new().with_text(text.to_string());
        let request =
            SlackApiChatPostMessageRequest::new(SlackChannelId::new(chat.to_string()), content)
                .opt_thread_ts(thread.map(|t| SlackTs::new(t.to_string())));
        session
            .chat_post_message(&request)
            .await
            .map(|_| ())
            .map_err(|e| classify(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slack_morphism::errors::{SlackClientApiError, SlackRateLimitError};

    fn me() -> SlackIdentity {
        SlackIdentity {
            user_id: "UBOT".into(),
            bot_id: Some("BBOT".into()),
        }
    }

    fn event(body: serde_json::Value) -> SlackPushEventCallback {
        serde_json::from_value(serde_json::json!({
            "team_id": "T1",
            "api_app_id": "A1",
            "event": body,
            "type": "event_callback",
            "event_id": "Ev1",
            "event_time": 1700000000,
        }))
        .expect("a push event")
    }

    #[test]
    fn a_mention_in_a_thread_becomes_a_triggered_message_in_that_thread() {
        let e = event(serde_json::json!({
            "type": "app_mention", "user": "U1", "channel": "C1",
            "text": "<@UBOT> what is up?", "ts": "1700000001.000200",
            "thread_ts": "1700000000.000100",
        }));
        let m = incoming(&e).expect("a message");
        let inbound = to_inbound(&m, &me(), "Ann", "Andy");
        assert_eq!(inbound.chat_id, "slack:C1");
        assert_eq!(inbound.content, "@Andy what is up?");
        assert_eq!(inbound.platform_msg_id, "1700000001.000200");
        assert_eq!(inbound.thread_id.as_deref(), Some("1700000000.000100"));
        assert_eq!(inbound.timestamp, 1_700_000_001_000);
        assert_eq!(inbound.sender_name, "Ann");
        assert!(!inbound.is_bot_message);
    }

    #[test]
    fn own_messages_and_non_messages_are_ignored() {
        let own = event(serde_json::json!({
            "type": "message", "user": "UBOT", "channel": "C1", "text": "hi", "ts": "1.2",
        }));
        assert!(is_own(&incoming(&own).unwrap(), &me()));
        let own_bot = event(serde_json::json!({
            "type": "message", "subtype": "bot_message", "bot_id": "BBOT",
            "channel": "C1", "text": "hi", "ts": "1.3",
        }));
        assert!(is_own(&incoming(&own_bot).unwrap(), &me()));
        let other_bot = event(serde_json::json!({
            "type": "message", "subtype": "bot_message", "bot_id": "BOTHER",
            "channel": "C1", "text": "hi", "ts": "1.4",
        }));
        let m = incoming(&other_bot).unwrap();
        assert!(!is_own(&m, &me()));
        assert!(to_inbound(&m, &me(), "x", "Andy").is_bot_message);
        let joined = event(serde_json::json!({
            "type": "message", "subtype": "channel_join", "user": "U2",
            "channel": "C1", "text": "joined", "ts": "1.5",
        }));
        assert_eq!(incoming(&joined), None);
    }

    #[test]
    fn slack_timestamps_become_milliseconds() {
        assert_eq!(ts_millis("1700000000.123456"), 1_700_000_000_123);
        assert_eq!(ts_millis("1700000000.1"), 1_700_000_000_100);
        assert_eq!(ts_millis("1700000000"), 1_700_000_000_000);
        assert_eq!(ts_millis("garbage"), 0);
    }

    #[test]
    fn broadcast_mentions_cannot_ping() {
        assert_eq!(
            neutralize_broadcasts("hey <!here> and <!channel|channel> <@U1>"),
            "hey &lt;!here> and &lt;!channel|channel> <@U1>"
        );
    }

    #[test]
    fn errors_are_classified_once() {
        let api =
            |code: &str| SlackClientError::ApiError(SlackClientApiError::new(code.to_string()));
        assert_eq!(classify(&api("invalid_auth")).kind, ErrorKind::Auth);
        assert_eq!(classify(&api("token_revoked")).kind, ErrorKind::Auth);
        assert_eq!(classify(&api("missing_scope")).kind, ErrorKind::Permanent);
        assert_eq!(
            classify(&api("channel_not_found")).kind,
            ErrorKind::Permanent
        );
        assert_eq!(classify(&api("internal_error")).kind, ErrorKind::Temporary);
        let limited = SlackClientError::RateLimitError(
            SlackRateLimitError::new().with_retry_after(Duration::from_secs(3)),
        );
        let failure = classify(&limited);
        assert_eq!(failure.kind, ErrorKind::RateLimited);
        assert_eq!(failure.retry_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn the_display_name_falls_back_sensibly() {
        let user: SlackUser = serde_json::from_value(serde_json::json!({
            "id": "U1", "name": "ann", "profile": {"display_name": "", "real_name": "Ann Lee"},
        }))
        .unwrap();
        assert_eq!(display_name(&user).as_deref(), Some("Ann Lee"));
        let bare: SlackUser = serde_json::from_value(serde_json::json!({"id": "U2"})).unwrap();
        assert_eq!(display_name(&bare), None);
    }
}
