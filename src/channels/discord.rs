//! Discord: gateway ingress with serenity, REST delivery over HTTP.
//!
//! serenity keeps the gateway session (identify with intents Guilds,
//! GuildMessages, MessageContent and DirectMessages; heartbeats; resume on
//! opcode 7; a fresh identify on opcode 9) and hands us each message, which
//! becomes an inbound message for `dc:<channel>` (DMs included) with a
//! `<@bot>` mention rewritten to the trigger. A refused token (HTTP 401, or
//! gateway close 4004) or intents the bot may not use is fatal for this
//! adapter.
//!
//! Replies go out through a small REST client of our own rather than
//! serenity's: it sees the 429's `Retry-After`, which serenity's error type
//! drops, so one classification ([`ErrorKind`]) decides every retry. Every
//! reply carries `allowed_mentions: {"parse": []}`, so agent output can
//! never ping @everyone, @here, a role or a user. "typing…" is shown while
//! the group's agent works.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION, RETRY_AFTER};
use serde_json::json;
use serenity::all::{
    Context, EventHandler, GatewayIntents, Message, MessageType, Ready, ResumedEvent,
};
use tokio::sync::watch;

use super::delivery::{Poster, SendFailure};
use super::split::{Limit, DISCORD_LIMIT};
use super::{submit_to_router, until_stopped, Platform, Reporter};
use crate::messages::channel::ConnectionEvent;
use crate::messages::wire::ErrorKind;
use crate::messages::InboundMessage;
use crate::provider::{classify_status, parse_retry_after};
use crate::secret::Secret;

/// The chat id prefix.
pub const PREFIX: &str = "dc";

/// Discord's origin; the REST API is under `/api/v10`.
pub const DISCORD_ORIGIN: &str = "https://discord.com";

/// Discord shows "typing…" for about 10 s after each trigger.
const TYPING_REFRESH: Duration = Duration::from_secs(8);

/// The intents talon asks for (MessageContent is privileged: it must be
/// switched on in the developer portal).
pub fn intents() -> GatewayIntents {
    GatewayIntents::GUILDS
        | GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
        | GatewayIntents::DIRECT_MESSAGES
}

/// What the Discord adapter needs.
#[derive(Clone)]
pub struct DiscordSettings {
    pub token: Secret,
    /// Discord's origin unless a proxy or a test double stands in.
    pub origin: Option<String>,
    pub assistant_name: String,
}

pub struct Discord {
    settings: DiscordSettings,
    poster: Arc<DiscordPoster>,
}

impl Discord {
    /// Checks the token with Discord and returns the bot's name (for
    /// `talon doctor`).
    pub async fn check_token(&self) -> Result<String, SendFailure> {
        self.poster.current_user().await
    }

    pub fn new(settings: DiscordSettings) -> Result<Discord, String> {
        let origin = settings
            .origin
            .clone()
            .unwrap_or_else(|| DISCORD_ORIGIN.to_string());
        let poster = Arc::new(DiscordPoster::new(&origin, &settings.token)?);
        Ok(Discord { settings, poster })
    }

    fn serenity_http(&self) -> serenity::http::Http {
        // Our client, so serenity's REST calls share the process's TLS
        // configuration instead of building their own.
        let builder = serenity::http::HttpBuilder::new(self.settings.token.expose())
            .client(self.poster.http.clone());
        match &self.settings.origin {
            // serenity's rate limiter ignores the proxy; a stand-in origin
            // is a test double or a local proxy that does its own limiting.
            Some(origin) => builder
                .proxy(origin.trim_end_matches('/'))
                .ratelimiter_disabled(true)
                .build(),
            None => builder.build(),
        }
    }
}

/// A Discord message, as much of it as talon uses.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscordIncoming {
    pub id: String,
    pub channel_id: String,
    pub guild_id: Option<String>,
    pub author_id: String,
    /// Server nickname, else global display name, else username.
    pub author_name: String,
    pub author_is_bot: bool,
    pub content: String,
    pub timestamp_ms: i64,
    pub reply_to: Option<String>,
    /// A user's message (not a join, pin or other system message).
    pub is_chat: bool,
}

impl DiscordIncoming {
    pub fn of(message: &Message) -> DiscordIncoming {
        let author = &message.author;
        let author_name = message
            .member
            .as_ref()
            .and_then(|m| m.nick.clone())
            .or_else(|| author.global_name.clone())
            .unwrap_or_else(|| author.name.clone());
        DiscordIncoming {
            id: message.id.to_string(),
            channel_id: message.channel_id.to_string(),
            guild_id: message.guild_id.map(|g| g.to_string()),
            author_id: author.id.to_string(),
            author_name,
            author_is_bot: author.bot,
            content: message.content.clone(),
            timestamp_ms: message.timestamp.unix_timestamp().saturating_mul(1000)
                + i64::from(message.timestamp.nanosecond() / 1_000_000),
            reply_to: message
                .message_reference
                .as_ref()
                .and_then(|r| r.message_id)
                .map(|id| id.to_string()),
            is_chat: matches!(
                message.kind,
                MessageType::Regular | MessageType::InlineReply
            ),
        }
    }
}

/// The inbound message for a Discord message, or `None` if talon ignores
/// it (its own messages, system messages).
pub fn to_inbound(
    message: &DiscordIncoming,
    bot_id: &str,
    assistant_name: &str,
) -> Option<InboundMessage> {
    if message.author_id == bot_id || !message.is_chat {
        return None;
    }
    Some(InboundMessage {
        chat_id: format!("{PREFIX}:{}", message.channel_id),
        platform_msg_id: message.id.clone(),
        sender_id: message.author_id.clone(),
        sender_name: message.author_name.clone(),
        content: crate::trigger::rewrite_mention(&message.content, bot_id, assistant_name),
        timestamp: message.timestamp_ms,
        is_from_me: false,
        is_bot_message: message.author_is_bot,
        reply_to: message.reply_to.clone(),
        thread_id: None,
    })
}

/// Whether an error from serenity's client means the credentials (or the
/// intents the bot may use) were refused, so a restart cannot help.
pub fn is_refusal(error: &serenity::Error) -> bool {
    use serenity::gateway::GatewayError;
    use serenity::http::HttpError;
    match error {
        serenity::Error::Gateway(
            GatewayError::InvalidAuthentication
            | GatewayError::NoAuthentication
            | GatewayError::InvalidGatewayIntents
            | GatewayError::DisallowedGatewayIntents,
        ) => true,
        serenity::Error::Http(HttpError::UnsuccessfulRequest(response)) => {
            matches!(response.status_code.as_u16(), 401 | 403)
        }
        _ => false,
    }
}

/// Why serenity stopped, in words an operator can act on.
fn refusal_reason(error: &serenity::Error) -> String {
    use serenity::gateway::GatewayError;
    match error {
        serenity::Error::Gateway(
            GatewayError::DisallowedGatewayIntents | GatewayError::InvalidGatewayIntents,
        ) => "DISCORD_BOT_TOKEN: the bot may not use the Message Content intent; switch it on \
              in the Discord developer portal (Bot → Privileged Gateway Intents)"
            .into(),
        other => format!("DISCORD_BOT_TOKEN: {other}"),
    }
}

/// serenity's event handler: turns gateway events into inbound messages.
struct Ingress {
    report: Reporter,
    assistant_name: String,
    bot_id: std::sync::OnceLock<String>,
}

#[serenity::async_trait]
impl EventHandler for Ingress {
    async fn ready(&self, _ctx: Context, ready: Ready) {
        let _ = self.bot_id.set(ready.user.id.to_string());
        tracing::info!(bot = %ready.user.name, guilds = ready.guilds.len(), "discord: identified");
        self.report.report(ConnectionEvent::Up);
    }

    async fn resume(&self, _ctx: Context, _event: ResumedEvent) {
        self.report.report(ConnectionEvent::Up);
    }

    async fn message(&self, _ctx: Context, message: Message) {
        let Some(bot_id) = self.bot_id.get() else {
            return; // not identified yet: cannot tell our own messages
        };
        let incoming = DiscordIncoming::of(&message);
        if let Some(inbound) = to_inbound(&incoming, bot_id, &self.assistant_name) {
            submit_to_router(inbound).await;
        }
    }
}

impl Platform for Discord {
    type Poster = DiscordPoster;

    fn name(&self) -> &'static str {
        "discord"
    }

    fn prefix(&self) -> &'static str {
        PREFIX
    }

    fn poster(&self) -> Arc<DiscordPoster> {
        self.poster.clone()
    }

    async fn serve(&self, report: Reporter, mut stop: watch::Receiver<bool>) {
        let handler = Ingress {
            report: report.clone(),
            assistant_name: self.settings.assistant_name.clone(),
            bot_id: Default::default(),
        };
        let built = serenity::all::ClientBuilder::new_with_http(self.serenity_http(), intents())
            .event_handler(handler)
            .await;
        let mut client = match built {
            Ok(client) => client,
            Err(e) => {
                report.report(ConnectionEvent::Lost(e.to_string()));
                return;
            }
        };
        let shards = client.shard_manager.clone();
        tokio::select! {
            result = client.start() => match result {
                Err(e) if is_refusal(&e) => report.report(ConnectionEvent::Rejected(refusal_reason(&e))),
                Err(e) => report.report(ConnectionEvent::Lost(e.to_string())),
                Ok(()) => report.report(ConnectionEvent::Lost("the gateway session ended".into())),
            },
            _ = until_stopped(&mut stop) => {
                shards.shutdown_all().await;
            }
        }
    }

    async fn typing(&self, chat: &str) -> Result<(), SendFailure> {
        self.poster.trigger_typing(chat).await
    }

    fn typing_refresh(&self) -> Option<Duration> {
        Some(TYPING_REFRESH)
    }
}

/// Posts replies and typing indicators over Discord's REST API.
pub struct DiscordPoster {
    http: reqwest::Client,
    api: String,
    auth: String,
}

impl DiscordPoster {
    fn new(origin: &str, token: &Secret) -> Result<DiscordPoster, String> {
        let http = crate::tls::http_client()
            .user_agent(concat!(
                "DiscordBot (talon, ",
                env!("CARGO_PKG_VERSION"),
                ")"
            ))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build the Discord HTTP client: {e}"))?;
        Ok(DiscordPoster {
            http,
            api: format!("{}/api/v10", origin.trim_end_matches('/')),
            auth: format!("Bot {}", token.expose()),
        })
    }

    async fn call(&self, path: &str, body: serde_json::Value) -> Result<(), SendFailure> {
        let response = self
            .http
            .post(format!("{}{path}", self.api))
            .header(AUTHORIZATION, &self.auth)
            .json(&body)
            .send()
            .await
            .map_err(|e| SendFailure::new(ErrorKind::Temporary, without_url(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        Err(failure_of(status.as_u16(), &headers, &text))
    }

    async fn current_user(&self) -> Result<String, SendFailure> {
        let response = self
            .http
            .get(format!("{}/users/@me", self.api))
            .header(AUTHORIZATION, &self.auth)
            .send()
            .await
            .map_err(|e| SendFailure::new(ErrorKind::Temporary, without_url(&e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(failure_of(status.as_u16(), &headers, &text));
        }
        let user: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| SendFailure::new(ErrorKind::Permanent, format!("unreadable user: {e}")))?;
        Ok(user["username"].as_str().unwrap_or("?").to_string())
    }

    async fn trigger_typing(&self, chat: &str) -> Result<(), SendFailure> {
        self.call(&format!("/channels/{chat}/typing"), json!({}))
            .await
    }
}

/// A reqwest error without its URL (which is harmless here, but keep logs
/// uniform with the rest of talon's HTTP).
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "<discord>");
    }
    text
}

/// The classification of a failed Discord REST call. A 429's wait comes
/// from the body's `retry_after` (seconds, fractional) or the header.
pub fn failure_of(status: u16, headers: &HeaderMap, body: &str) -> SendFailure {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_string();
    let retry_after = parsed
        .as_ref()
        .and_then(|v| v.get("retry_after"))
        .and_then(|r| r.as_f64())
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .map(Duration::from_secs_f64)
        .or_else(|| {
            headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
        });
    SendFailure {
        kind: classify_status(status),
        retry_after,
        detail: format!("HTTP {status} {message}").trim().to_string(),
    }
}

impl Poster for DiscordPoster {
    fn limit(&self) -> Limit {
        DISCORD_LIMIT
    }

    async fn post(&self, chat: &str, _thread: Option<&str>, text: &str) -> Result<(), SendFailure> {
        // A thread is its own channel on Discord, so `chat` already is it.
        self.call(
            &format!("/channels/{chat}/messages"),
            json!({ "content": text, "allowed_mentions": { "parse": [] } }),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(author: &str, content: &str) -> DiscordIncoming {
        DiscordIncoming {
            id: "500".into(),
            channel_id: "42".into(),
            guild_id: Some("7".into()),
            author_id: author.into(),
            author_name: "ann".into(),
            author_is_bot: false,
            content: content.into(),
            timestamp_ms: 1_700_000_000_000,
            reply_to: None,
            is_chat: true,
        }
    }

    #[test]
    fn a_mention_becomes_the_trigger_and_the_chat_is_the_channel() {
        let m = to_inbound(&incoming("9", "<@100> hello <@!100>"), "100", "Andy").unwrap();
        assert_eq!(m.chat_id, "dc:42");
        assert_eq!(m.content, "@Andy hello @Andy");
        assert_eq!(m.platform_msg_id, "500");
        assert_eq!(m.sender_name, "ann");
    }

    #[test]
    fn own_and_system_messages_are_ignored() {
        assert_eq!(to_inbound(&incoming("100", "me"), "100", "Andy"), None);
        let mut join = incoming("9", "");
        join.is_chat = false;
        assert_eq!(to_inbound(&join, "100", "Andy"), None);
        let mut other_bot = incoming("8", "beep");
        other_bot.author_is_bot = true;
        assert!(
            to_inbound(&other_bot, "100", "Andy")
                .unwrap()
                .is_bot_message
        );
    }

    #[test]
    fn a_429_waits_as_long_as_discord_says() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "2".parse().unwrap());
        let failure = failure_of(
            429,
            &headers,
            r#"{"message":"You are being rate limited.","retry_after":1.5,"global":false}"#,
        );
        assert_eq!(failure.kind, ErrorKind::RateLimited);
        assert_eq!(failure.retry_after, Some(Duration::from_millis(1500)));
        let header_only = failure_of(429, &headers, "");
        assert_eq!(header_only.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(
            failure_of(
                401,
                &HeaderMap::new(),
                r#"{"message":"401: Unauthorized","code":0}"#
            )
            .kind,
            ErrorKind::Auth
        );
        assert_eq!(
            failure_of(404, &HeaderMap::new(), "").kind,
            ErrorKind::Permanent
        );
        assert_eq!(
            failure_of(502, &HeaderMap::new(), "<html>").kind,
            ErrorKind::Temporary
        );
    }

    #[test]
    fn refused_tokens_and_intents_are_fatal_and_the_rest_is_not() {
        use serenity::gateway::GatewayError;
        let auth = serenity::Error::Gateway(GatewayError::InvalidAuthentication);
        assert!(is_refusal(&auth));
        let intents = serenity::Error::Gateway(GatewayError::DisallowedGatewayIntents);
        assert!(is_refusal(&intents));
        assert!(refusal_reason(&intents).contains("Message Content intent"));
        assert!(!is_refusal(&serenity::Error::Gateway(
            GatewayError::ReconnectFailure
        )));
        assert!(!is_refusal(&serenity::Error::Gateway(
            GatewayError::Closed(None)
        )));
    }

    #[test]
    fn the_intents_are_the_four_talon_needs() {
        let bits = intents().bits();
        assert_eq!(bits, (1 << 0) | (1 << 9) | (1 << 15) | (1 << 12));
    }
}
