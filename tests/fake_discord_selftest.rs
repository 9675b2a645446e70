//! Drives the fake Discord (tests/support/fake_discord.rs) with the real
//! serenity client, so the tests that use the fake can trust it speaks what
//! serenity (and so Discord) speaks: REST through serenity's proxy setting,
//! and the gateway's identify, resume, reconnect and invalid-session paths.

#[path = "support/fake_discord.rs"]
mod fake_discord;

use std::time::{Duration, Instant};

use fake_discord::{FakeDiscord, FakeDiscordConfig, MessageSpec};
use serde_json::{json, Value};
use serenity::builder::{CreateAllowedMentions, CreateMessage};
use serenity::client::{ClientBuilder, Context, EventHandler};
use serenity::gateway::GatewayError;
use serenity::http::{Http, HttpBuilder, HttpError};
use serenity::model::channel::{Message, MessageType};
use serenity::model::event::ResumedEvent;
use serenity::model::gateway::{GatewayIntents, Ready};
use serenity::model::id::{ChannelId, GuildId, MessageId, UserId};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);
/// serenity waits 5 s inside `ShardManager::shutdown` before it re-identifies.
const REIDENTIFY_WAIT: Duration = Duration::from_secs(15);

const GUILD_CHANNEL: &str = "2000000000000000001";
const GUILD: &str = "3000000000000000001";
const DM_CHANNEL: &str = "2000000000000000002";
const USER: &str = "4000000000000000001";

/// What the event handler saw.
#[derive(Debug)]
enum Seen {
    Ready(Box<Ready>),
    Resumed,
    Message(Box<Message>),
}

struct Forward(mpsc::UnboundedSender<Seen>);

#[serenity::async_trait]
impl EventHandler for Forward {
    async fn ready(&self, _ctx: Context, ready: Ready) {
        let _ = self.0.send(Seen::Ready(Box::new(ready)));
    }

    async fn resume(&self, _ctx: Context, _event: ResumedEvent) {
        let _ = self.0.send(Seen::Resumed);
    }

    async fn message(&self, _ctx: Context, message: Message) {
        let _ = self.0.send(Seen::Message(Box::new(message)));
    }
}

fn intents() -> GatewayIntents {
    GatewayIntents::GUILDS
        | GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
        | GatewayIntents::DIRECT_MESSAGES
}

fn http_for(fake: &FakeDiscord, token: &str) -> Http {
    HttpBuilder::new(token)
        .proxy(fake.proxy_url())
        .ratelimiter_disabled(true)
        .build()
}

/// A serenity client running against the fake; stopped when dropped.
struct Running {
    events: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<serenity::Result<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Running {
    async fn start(fake: &FakeDiscord) -> Running {
        let (sender, events) = mpsc::unbounded_channel();
        let mut client =
            ClientBuilder::new_with_http(http_for(fake, &fake.config().token), intents())
                .event_handler(Forward(sender))
                .await
                .expect("build the serenity client");
        let task = tokio::spawn(async move { client.start().await });
        Running { events, task }
    }

    async fn next(&mut self) -> Seen {
        tokio::time::timeout(REIDENTIFY_WAIT, self.events.recv())
            .await
            .expect("an event within the time limit")
            .expect("the handler is alive")
    }

    async fn next_ready(&mut self) -> Ready {
        match self.next().await {
            Seen::Ready(ready) => *ready,
            other => panic!("expected READY, got {other:?}"),
        }
    }

    async fn next_message(&mut self) -> Message {
        match self.next().await {
            Seen::Message(message) => *message,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    async fn next_resumed(&mut self) {
        match self.next().await {
            Seen::Resumed => {}
            other => panic!("expected RESUMED, got {other:?}"),
        }
    }
}

fn guild_message(content: &str) -> MessageSpec {
    MessageSpec {
        channel_id: GUILD_CHANNEL.into(),
        guild_id: Some(GUILD.into()),
        author_id: USER.into(),
        author_name: "alice".into(),
        author_is_bot: false,
        content: content.into(),
        mentions: Vec::new(),
    }
}

fn dm_message(content: &str) -> MessageSpec {
    MessageSpec {
        channel_id: DM_CHANNEL.into(),
        guild_id: None,
        ..guild_message(content)
    }
}

/// Starts a client and waits for its READY.
async fn ready_client(fake: &FakeDiscord) -> (Running, Ready) {
    let mut running = Running::start(fake).await;
    let ready = running.next_ready().await;
    (running, ready)
}

#[tokio::test]
async fn identify_ready_and_messages_in_guilds_and_dms_reach_serenity() {
    let fake = FakeDiscord::start(FakeDiscordConfig::default()).await;
    let (mut running, ready) = ready_client(&fake).await;

    let identifies = fake.identify_payloads();
    assert_eq!(identifies.len(), 1);
    assert_eq!(identifies[0].token, "Bot fake-discord-token");
    assert_eq!(identifies[0].intents, intents().bits());
    assert_eq!(fake.gateway_queries(), vec!["v=10".to_string()]);
    assert_eq!(ready.user.id, UserId::new(1_000_000_000_000_000_001));
    assert_eq!(ready.user.name, "talon");
    assert!(ready.user.bot);
    assert_eq!(ready.version, 10);
    assert_eq!(ready.resume_gateway_url, fake.gateway_url());
    assert_eq!(ready.application.id.get(), 1_000_000_000_000_000_001);

    let mut spec = guild_message("hi <@1000000000000000001>");
    spec.mentions = vec![("1000000000000000001".into(), "talon".into())];
    let guild_id = fake.send_message_create(spec);
    let message = running.next_message().await;
    assert_eq!(message.id.to_string(), guild_id);
    assert_eq!(message.content, "hi <@1000000000000000001>");
    assert_eq!(
        message.channel_id,
        ChannelId::new(2_000_000_000_000_000_001)
    );
    assert_eq!(
        message.guild_id,
        Some(GuildId::new(3_000_000_000_000_000_001))
    );
    assert_eq!(message.author.id, UserId::new(4_000_000_000_000_000_001));
    assert_eq!(message.author.name, "alice");
    assert!(!message.author.bot);
    assert!(message.member.is_some(), "guild messages carry the member");
    assert!(message.mentions_user_id(UserId::new(1_000_000_000_000_000_001)));

    let dm_id = fake.send_message_create(dm_message("hello in private"));
    let message = running.next_message().await;
    assert_eq!(message.id.to_string(), dm_id);
    assert_eq!(message.guild_id, None);
    assert!(message.member.is_none());
    assert_eq!(message.content, "hello in private");

    let mut bot_spec = dm_message("from another bot");
    bot_spec.author_is_bot = true;
    fake.send_message_create(bot_spec);
    assert!(running.next_message().await.author.bot);
    assert_eq!(fake.connections(), 1);
}

#[tokio::test]
async fn reconnect_makes_serenity_resume_and_delivery_continues() {
    let fake = FakeDiscord::start(FakeDiscordConfig::default()).await;
    let (mut running, ready) = ready_client(&fake).await;
    fake.send_message_create(guild_message("before"));
    running.next_message().await;

    assert!(fake.send_reconnect());
    // Sent before the resume completes: held and delivered after RESUMED.
    let held_id = fake.send_message_create(guild_message("while reconnecting"));
    assert!(fake.wait_resumes(1, WAIT).await);
    running.next_resumed().await;
    assert_eq!(running.next_message().await.id.to_string(), held_id);

    let after = fake.send_message_create(guild_message("after"));
    assert_eq!(running.next_message().await.id.to_string(), after);
    let resume = &fake.resume_payloads()[0];
    assert_eq!(resume.session_id, ready.session_id);
    assert_eq!(resume.token, "Bot fake-discord-token");
    assert_eq!(resume.seq, 2, "READY was 1, the first message 2");
    assert_eq!(fake.identifies(), 1);
    assert_eq!(fake.connections(), 2);
}

#[tokio::test]
async fn resumable_invalid_session_and_a_4000_close_make_serenity_resume() {
    let fake = FakeDiscord::start(FakeDiscordConfig::default()).await;
    let (mut running, _ready) = ready_client(&fake).await;

    assert!(fake.send_invalid_session(true));
    assert!(fake.wait_resumes(1, WAIT).await);
    running.next_resumed().await;
    let first = fake.send_message_create(dm_message("one"));
    assert_eq!(running.next_message().await.id.to_string(), first);

    assert!(fake.close_connection(4000));
    assert!(fake.wait_resumes(2, WAIT).await);
    running.next_resumed().await;
    let second = fake.send_message_create(dm_message("two"));
    assert_eq!(running.next_message().await.id.to_string(), second);
    assert_eq!(fake.identifies(), 1);
    assert_eq!(fake.connections(), 3);
}

#[tokio::test]
async fn non_resumable_invalid_session_makes_serenity_identify_again() {
    let fake = FakeDiscord::start(FakeDiscordConfig::default()).await;
    let (mut running, first_ready) = ready_client(&fake).await;

    let started = Instant::now();
    assert!(fake.send_invalid_session(false));
    assert!(fake.wait_identifies(2, REIDENTIFY_WAIT).await);
    let second_ready = running.next_ready().await;
    eprintln!(
        "serenity identified again {:?} after op 9 (d: false)",
        started.elapsed()
    );
    assert_ne!(second_ready.session_id, first_ready.session_id);
    assert_eq!(fake.resumes(), 0);

    let id = fake.send_message_create(guild_message("after re-identify"));
    assert_eq!(running.next_message().await.id.to_string(), id);
}

#[tokio::test]
async fn heartbeats_are_acknowledged_so_serenity_keeps_the_connection() {
    let fake = FakeDiscord::start(FakeDiscordConfig {
        heartbeat_interval_ms: 50,
        ..FakeDiscordConfig::default()
    })
    .await;
    let (mut running, _ready) = ready_client(&fake).await;

    assert!(fake.wait_heartbeats(3, WAIT).await);
    let id = fake.send_message_create(dm_message("still here"));
    assert_eq!(running.next_message().await.id.to_string(), id);
    assert_eq!(
        fake.connections(),
        1,
        "acknowledged heartbeats, no reconnect"
    );
}

#[tokio::test]
async fn wrong_token_fails_at_identify_with_4004_and_at_gateway_bot_with_401() {
    let fake = FakeDiscord::start(FakeDiscordConfig::default()).await;
    let (sender, _events) = mpsc::unbounded_channel();
    let mut client = ClientBuilder::new_with_http(http_for(&fake, "wrong-token"), intents())
        .event_handler(Forward(sender))
        .await
        .expect("build the serenity client");

    let result = tokio::time::timeout(WAIT, client.start())
        .await
        .expect("start gives up within the time limit");
    assert!(
        matches!(
            result,
            Err(serenity::Error::Gateway(
                GatewayError::InvalidAuthentication
            ))
        ),
        "got {result:?}"
    );
    assert_eq!(fake.identify_payloads()[0].token, "Bot wrong-token");
    assert_eq!(fake.readies(), 0);
    // `GET /gateway` needs no token on Discord either.
    assert_eq!(fake.rest_calls()[0].path, "/api/v10/gateway");
    assert_eq!(fake.rest_calls()[0].status, 200);

    let result = tokio::time::timeout(WAIT, client.start_autosharded())
        .await
        .expect("start_autosharded gives up within the time limit");
    match result {
        Err(serenity::Error::Http(HttpError::UnsuccessfulRequest(response))) => {
            assert_eq!(response.status_code.as_u16(), 401);
            assert_eq!(response.error.message, "401: Unauthorized");
            assert_eq!(response.error.code, 0);
            assert!(response.url.ends_with("/api/v10/gateway/bot"));
        }
        other => panic!("expected a 401 from /gateway/bot, got {other:?}"),
    }
}

#[tokio::test]
async fn rest_records_messages_replies_and_typing_as_serenity_sends_them() {
    let fake = FakeDiscord::start(FakeDiscordConfig::default()).await;
    let http = http_for(&fake, "fake-discord-token");
    let channel = ChannelId::new(2_000_000_000_000_000_001);

    let sent = channel
        .send_message(
            &http,
            CreateMessage::new()
                .content("hello")
                .allowed_mentions(CreateAllowedMentions::new()),
        )
        .await
        .expect("send a message");
    assert_eq!(sent.content, "hello");
    assert_eq!(sent.channel_id, channel);
    assert_eq!(sent.author.id, UserId::new(1_000_000_000_000_000_001));
    assert!(sent.author.bot);

    let reply = channel
        .send_message(
            &http,
            CreateMessage::new()
                .content("a reply")
                .reference_message((channel, sent.id)),
        )
        .await
        .expect("send a reply");
    assert_eq!(reply.kind, MessageType::InlineReply);
    let reference = reply.message_reference.expect("the reply's reference");
    assert_eq!(reference.message_id, Some(sent.id));
    assert_eq!(
        reply.referenced_message.map(|m| m.id),
        Some(sent.id),
        "Discord includes the message replied to"
    );

    let created = fake.wait_created(2, WAIT).await;
    assert_eq!(created.len(), 2);
    eprintln!(
        "serenity sends CreateAllowedMentions::new() as {}",
        created[0].allowed_mentions
    );
    assert_eq!(
        created[0].allowed_mentions,
        json!({"parse": [], "users": [], "roles": []})
    );
    assert_eq!(created[0].message_reference, Value::Null);
    assert_eq!(created[0].message_id, sent.id.to_string());
    assert_eq!(created[0].channel_id, "2000000000000000001");
    assert_eq!(created[1].content, "a reply");
    assert_eq!(created[1].allowed_mentions, Value::Null);
    assert_eq!(
        created[1].message_reference["message_id"],
        json!(sent.id.to_string())
    );
    assert!(sent.id < reply.id, "snowflakes increase");

    channel.broadcast_typing(&http).await.expect("typing");
    let typing = fake.typing_calls();
    assert_eq!(typing.len(), 1);
    assert_eq!(typing[0].channel_id, "2000000000000000001");

    let user = http.get_current_user().await.expect("current user");
    assert_eq!(user.name, "talon");
    let application = http
        .get_current_application_info()
        .await
        .expect("application info");
    assert_eq!(application.id.get(), 1_000_000_000_000_000_001);
    let gateway = http.get_bot_gateway().await.expect("bot gateway");
    assert_eq!(gateway.url, fake.gateway_url());
    assert_eq!(gateway.shards, 1);
    assert_eq!(gateway.session_start_limit.remaining, 999);

    let paths: Vec<String> = fake
        .rest_calls()
        .iter()
        .map(|call| format!("{} {}", call.method, call.path))
        .collect();
    assert!(paths.contains(&"POST /api/v10/channels/2000000000000000001/typing".to_string()));
    assert!(paths.contains(&"GET /api/v10/users/@me".to_string()));
}

#[tokio::test]
async fn discord_refusals_reach_serenity_as_http_errors() {
    let fake = FakeDiscord::start(FakeDiscordConfig::default()).await;
    let http = http_for(&fake, "fake-discord-token");
    let channel = ChannelId::new(2_000_000_000_000_000_001);

    let status_and_code = |result: serenity::Result<Message>| match result {
        Err(serenity::Error::Http(HttpError::UnsuccessfulRequest(response))) => {
            (response.status_code.as_u16(), response.error.code)
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    };
    let empty = channel.send_message(&http, CreateMessage::new()).await;
    assert_eq!(status_and_code(empty), (400, 50006));
    let unknown_reply = channel
        .send_message(
            &http,
            CreateMessage::new()
                .content("re")
                .reference_message((channel, MessageId::new(42))),
        )
        .await;
    assert_eq!(status_and_code(unknown_reply), (400, 50035));
    assert!(fake.created().is_empty());

    fake.rate_limit_creates(1, 0.05);
    let limited = channel
        .send_message(&http, CreateMessage::new().content("first try"))
        .await;
    assert_eq!(status_and_code(limited).0, 429);
    channel
        .send_message(&http, CreateMessage::new().content("second try"))
        .await
        .expect("the rate limit is over");
    assert_eq!(fake.rate_limited_creates(), 1);
    assert_eq!(fake.create_attempts().len(), 4);
    assert_eq!(fake.created().len(), 1);
}

#[tokio::test]
async fn rate_limits_and_unknown_routes_look_like_discord_on_the_wire() {
    let fake = FakeDiscord::start(FakeDiscordConfig::default()).await;
    let client = reqwest::Client::new();
    fake.rate_limit_creates(1, 1.5);

    let limited = client
        .post(format!("{}/channels/1/messages", fake.api_base()))
        .header("authorization", "Bot fake-discord-token")
        .header("content-type", "application/json")
        .body(r#"{"content":"hi"}"#)
        .send()
        .await
        .expect("reach the fake");
    assert_eq!(limited.status().as_u16(), 429);
    let header = |name: &str| {
        limited
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(header("retry-after").as_deref(), Some("2"));
    assert_eq!(header("x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(header("x-ratelimit-reset-after").as_deref(), Some("1.500"));
    assert_eq!(header("x-ratelimit-scope").as_deref(), Some("user"));
    assert!(header("x-ratelimit-limit").is_some());
    assert!(header("x-ratelimit-bucket").is_some());
    let body: Value = limited.json().await.expect("a JSON body");
    assert_eq!(
        body,
        json!({"message": "You are being rate limited.", "retry_after": 1.5, "global": false})
    );

    let unknown = client
        .get(format!("{}/guilds/1/nope", fake.api_base()))
        .header("authorization", "Bot fake-discord-token")
        .send()
        .await
        .expect("reach the fake");
    assert_eq!(unknown.status().as_u16(), 404);
    let body: Value = unknown.json().await.expect("a JSON body");
    assert_eq!(body, json!({"message": "404: Not Found", "code": 0}));
    assert_eq!(fake.unknown_routes().len(), 1);
    assert_eq!(fake.unknown_routes()[0].path, "/api/v10/guilds/1/nope");

    let no_token = client
        .post(format!("{}/channels/1/typing", fake.api_base()))
        .send()
        .await
        .expect("reach the fake");
    assert_eq!(no_token.status().as_u16(), 401);
    assert!(fake.typing_calls().is_empty());
}
