//! The Discord channel end to end: a fake Discord (REST + gateway, the real
//! wire formats) on 127.0.0.1, the real host, engine and agent image, and
//! the fake model. Also: a refused token stops its adapter alone.

mod support;

#[path = "support/fake_discord.rs"]
mod fake_discord;
#[path = "support/fake_slack.rs"]
mod fake_slack;

use std::time::Duration;

use fake_discord::*;
use support::fake_anthropic::{FakeAnthropic, Reply};
use support::inproc::*;
use support::*;

const WAIT: Duration = Duration::from_secs(30);
const GUILD_CHANNEL: &str = "2000000000000000001";
const DM_CHANNEL: &str = "2000000000000000002";

fn from_user(channel: &str, guild: Option<&str>, content: &str) -> MessageSpec {
    MessageSpec {
        channel_id: channel.into(),
        guild_id: guild.map(str::to_string),
        author_id: "3000000000000000001".into(),
        author_name: "ann".into(),
        author_is_bot: false,
        content: content.into(),
        mentions: Vec::new(),
    }
}

fn discord_env(discord: &FakeDiscord, token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DISCORD_BOT_TOKEN", token.to_string()),
        ("TALON_CHANNELS_DISCORD_API_URL", discord.proxy_url()),
        ("ASSISTANT_NAME", "Andy".to_string()),
    ]
}

async fn discord_host(
    discord: &FakeDiscord,
    model: &FakeAnthropic,
    extra: &[(&str, String)],
) -> Option<TestHost> {
    let docker = docker_with_image().await?;
    let groups = [
        group(&format!("dc:{GUILD_CHANNEL}"), "guild", false, true),
        group(&format!("dc:{DM_CHANNEL}"), "dm", true, false),
    ];
    let mut env = discord_env(discord, "fake-discord-token");
    env.extend(extra.iter().cloned());
    let overrides: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Some(start_host_with(docker, model, &groups, &overrides).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mention_and_a_dm_are_answered_without_pings_and_sessions_survive_op7_and_op9() {
    let _one = ONE_HOST.lock().await;
    let discord = FakeDiscord::start(FakeDiscordConfig::default()).await;
    let bot = discord.config().bot_id.clone();
    // The agent tries to ping everyone; nobody may be pinged.
    let model = FakeAnthropic::start_with(|body| {
        Reply::text(format!(
            "@everyone @here <@&55> reply to: {}",
            last_message_text(&last_user_text(body))
        ))
    })
    .await;
    let Some(host) = discord_host(&discord, &model, &[]).await else {
        return;
    };
    assert!(discord.wait_readies(1, WAIT).await, "identified");
    let identify = &discord.identify_payloads()[0];
    assert_eq!(
        identify.intents,
        (1 << 0) | (1 << 9) | (1 << 12) | (1 << 15)
    );

    let mut spec = from_user(
        GUILD_CHANNEL,
        Some("4000000000000000001"),
        &format!("<@{bot}> hello"),
    );
    spec.mentions = vec![(bot.clone(), "talon".into())];
    discord.send_message_create(spec);
    let created = discord.wait_created(1, WAIT).await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0].channel_id, GUILD_CHANNEL);
    assert_eq!(
        created[0].content,
        "@everyone @here <@&55> reply to: @Andy hello"
    );
    assert_eq!(
        created[0].allowed_mentions,
        serde_json::json!({ "parse": [] })
    );
    // "typing…" was shown in that channel while the agent worked.
    let typing = discord.wait_typing(1, WAIT).await;
    assert_eq!(typing[0].channel_id, GUILD_CHANNEL);
    assert!(typing[0].at <= created[0].at);

    // A message without the trigger is context only; a DM (main) needs none.
    discord.send_message_create(from_user(
        GUILD_CHANNEL,
        Some("4000000000000000001"),
        "no trigger here",
    ));
    discord.send_message_create(from_user(DM_CHANNEL, None, "hi in private"));
    let created = discord.wait_created(2, WAIT).await;
    assert_eq!(created.len(), 2);
    assert_eq!(created[1].channel_id, DM_CHANNEL);
    assert!(
        created[1].content.ends_with("reply to: hi in private"),
        "{}",
        created[1].content
    );

    // Opcode 7: serenity resumes; the session keeps working.
    assert!(discord.send_reconnect());
    assert!(discord.wait_resumes(1, WAIT).await, "resumed after op 7");
    discord.send_message_create(from_user(DM_CHANNEL, None, "after the reconnect"));
    let created = discord.wait_created(3, WAIT).await;
    assert!(created[2].content.ends_with("after the reconnect"));

    // Opcode 9 (not resumable): a fresh identify, and it still works.
    assert!(discord.send_invalid_session(false));
    assert!(
        discord.wait_identifies(2, WAIT).await,
        "identified again after op 9"
    );
    assert!(discord.wait_readies(2, WAIT).await);
    discord.send_message_create(from_user(DM_CHANNEL, None, "after the new session"));
    let created = discord.wait_created(4, WAIT).await;
    assert!(created[3].content.ends_with("after the new session"));
    // Our own messages (the fake echoes nothing, so send one) are ignored.
    let mut own = from_user(DM_CHANNEL, None, "my own reply");
    own.author_id = bot.clone();
    own.author_is_bot = true;
    discord.send_message_create(own);
    discord.send_message_create(from_user(DM_CHANNEL, None, "last one"));
    let created = discord.wait_created(5, WAIT).await;
    assert!(created[4].content.ends_with("last one"));
    assert_eq!(created.len(), 5);
    let stored = host
        .store
        .messages_after(&format!("dc:{DM_CHANNEL}"), 0, 20)
        .unwrap();
    assert!(stored.iter().all(|m| m.content != "my own reply"));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_5000_character_reply_arrives_in_parts_after_a_429() {
    let _one = ONE_HOST.lock().await;
    let discord = FakeDiscord::start(FakeDiscordConfig::default()).await;
    let paragraph = format!("{}\n\n", "word ".repeat(201).trim_end());
    let long: String = paragraph.repeat(5);
    assert!(long.len() >= 5000);
    let reply = long.clone();
    let model = FakeAnthropic::start_with(move |_| Reply::text(reply.clone())).await;
    let Some(host) = discord_host(&discord, &model, &[]).await else {
        return;
    };
    assert!(discord.wait_readies(1, WAIT).await);
    discord.rate_limit_creates(1, 0.5);
    discord.send_message_create(from_user(DM_CHANNEL, None, "write a lot"));
    discord.wait_created(1, WAIT).await;
    wait_for("the whole reply delivered", WAIT, || {
        host.store
            .unsent_outbox()
            .map(|rows| rows.is_empty())
            .unwrap_or(false)
    });
    let created = discord.created();
    assert!(created.len() >= 3, "{} parts", created.len());
    for part in &created {
        assert!(part.content.encode_utf16().count() <= 2000);
        assert_eq!(part.allowed_mentions, serde_json::json!({ "parse": [] }));
    }
    let joined: String = created.iter().map(|c| c.content.as_str()).collect();
    assert_eq!(joined.trim_end(), long.trim_end());
    let attempts = discord.create_attempts();
    assert_eq!(discord.rate_limited_creates(), 1);
    assert!(attempts[1] - attempts[0] >= Duration::from_millis(480));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_stops_that_adapter_once_while_the_other_channel_serves() {
    let _one = ONE_HOST.lock().await;
    let discord = FakeDiscord::start(FakeDiscordConfig::default()).await;
    let slack = fake_slack::FakeSlack::start(fake_slack::FakeSlackConfig::default()).await;
    let model = replying_model().await;
    let mut env = discord_env(&discord, "not-the-token");
    env.extend([
        ("SLACK_BOT_TOKEN", "xoxb-test".to_string()),
        ("SLACK_APP_TOKEN", "xapp-test".to_string()),
        ("TALON_CHANNELS_SLACK_API_URL", slack.api_url()),
    ]);
    let Some(docker) = docker_with_image().await else {
        return;
    };
    let groups = [group("slack:C1", "team", false, false)];
    let overrides: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let host = start_host_with(docker, &model, &groups, &overrides).await;

    // Discord refuses the token: the adapter stops and stays stopped.
    let name = talon::messages::channel::channel_name("dc");
    tokio::time::timeout(WAIT, async {
        while ractor::registry::where_is(name.clone()).is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the discord adapter stops");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(ractor::registry::where_is(name).is_none(), "not restarted");
    // One identify, refused with close code 4004, and no second one.
    assert_eq!(discord.identifies(), 1, "one attempt, no restart loop");
    let gateway_calls = discord
        .rest_calls()
        .iter()
        .filter(|c| c.path.ends_with("/gateway"))
        .count();
    assert_eq!(gateway_calls, 1, "one attempt, no restart loop");

    // Slack keeps serving.
    assert!(slack.wait_connections(1, WAIT).await);
    let hello = fake_slack::message_event("C1", "U0ALICE", "anyone?", "1700000100.000100", None);
    assert!(slack.send_events_api("env-1", hello));
    let posts = slack.wait_posts(1, WAIT).await;
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].text, "reply to: anyone?");

    // The dump shows the channels supervisor never restarted anything, and
    // no token anywhere.
    let tree = host.host.as_ref().unwrap().dump().await;
    let text = serde_json::to_string(&tree).unwrap();
    assert!(!text.contains("xoxb-test") && !text.contains("not-the-token"));
    assert!(text.contains("channel:slack"), "{text}");
    assert!(!text.contains("channel:dc"), "{text}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_main_group_registers_a_discord_channel_which_is_then_served() {
    let _one = ONE_HOST.lock().await;
    let discord = FakeDiscord::start(FakeDiscordConfig::default()).await;
    const NEW_CHANNEL: &str = "2000000000000000099";
    // The first turn of the main DM asks to register a channel; every other
    // request is answered in text.
    let model = FakeAnthropic::start_with(|body| {
        let prompt = last_message_text(&last_user_text(body));
        let already_called = body["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m.to_string().contains("tool_result")));
        if prompt.contains("please add") && !already_called {
            Reply::tool_use(
                "tool-1",
                "register_group",
                serde_json::json!({
                    "chat_id": format!("dc:{NEW_CHANNEL}"),
                    "name": "Team",
                    "folder": "team",
                    "requires_trigger": false
                }),
            )
        } else {
            Reply::text(format!("reply to: {prompt}"))
        }
    })
    .await;
    let Some(host) = discord_host(&discord, &model, &[]).await else {
        return;
    };
    assert!(discord.wait_readies(1, WAIT).await);
    discord.send_message_create(from_user(DM_CHANNEL, None, "please add the team channel"));
    let created = discord.wait_created(1, WAIT).await;
    assert_eq!(created[0].channel_id, DM_CHANNEL);
    let group = host
        .store
        .group_by_chat(&format!("dc:{NEW_CHANNEL}"))
        .unwrap()
        .expect("registered by the agent");
    assert_eq!(group.folder, "team");
    // Served at once, without a restart.
    discord.send_message_create(from_user(
        NEW_CHANNEL,
        Some("4000000000000000001"),
        "hello team",
    ));
    let created = discord.wait_created(2, WAIT).await;
    assert_eq!(created.len(), 2, "{created:?}");
    assert_eq!(created[1].channel_id, NEW_CHANNEL);
    assert_eq!(created[1].content, "reply to: hello team");
    host.stop().await;
}
