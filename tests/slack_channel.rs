//! The Slack channel end to end: a fake Slack (Web API + Socket Mode, the
//! real wire formats) on 127.0.0.1, the real host, engine and agent image,
//! and the fake model.

mod support;

#[path = "support/fake_slack.rs"]
mod fake_slack;

use std::time::Duration;

use fake_slack::*;
use support::inproc::*;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// A host whose Slack channel talks to `slack`; `C1` is a registered
/// channel that needs the trigger.
async fn slack_host(
    slack: &FakeSlack,
    model: &support::fake_anthropic::FakeAnthropic,
    bot_token: &str,
) -> Option<TestHost> {
    let docker = docker_with_image().await?;
    let api_url = slack.api_url();
    let groups = [group("slack:C1", "team", false, true)];
    let overrides = [
        ("SLACK_BOT_TOKEN", bot_token),
        ("SLACK_APP_TOKEN", "xapp-test"),
        ("TALON_CHANNELS_SLACK_API_URL", api_url.as_str()),
        ("ASSISTANT_NAME", "Andy"),
    ];
    Some(start_host_with(docker, model, &groups, &overrides).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mention_is_answered_in_its_thread_once_and_after_a_refresh_too() {
    let _one = ONE_HOST.lock().await;
    let slack = FakeSlack::start(FakeSlackConfig::default()).await;
    // The agent tries to ping the whole channel; Slack must show it as text.
    let model = support::fake_anthropic::FakeAnthropic::start_with(|body| {
        support::fake_anthropic::Reply::text(format!(
            "<!channel> reply to: {}",
            last_message_text(&last_user_text(body))
        ))
    })
    .await;
    let Some(host) = slack_host(&slack, &model, "xoxb-test").await else {
        return;
    };
    assert!(
        slack.wait_connections(1, WAIT).await,
        "socket mode connected"
    );

    // A mention in a thread: acknowledged, answered in that thread.
    let mention = app_mention_event(
        "C1",
        "U0ALICE",
        "<@UBOT> what is up?",
        "1700000001.000100",
        Some("1700000000.000001"),
    );
    assert!(slack.send_events_api_with_id("env-1", "Ev1", mention.clone()));
    assert!(slack.wait_acked("env-1", WAIT).await);
    let posts = slack.wait_posts(1, WAIT).await;
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0].channel, "C1");
    assert_eq!(posts[0].thread_ts.as_deref(), Some("1700000000.000001"));
    assert_eq!(posts[0].text, "&lt;!channel> reply to: @Andy what is up?");
    // The sender's display name reached the agent.
    let prompt = last_user_text(&model.requests()[0].body);
    assert!(prompt.contains("sender=\"alice\""), "{prompt}");

    // Slack redelivers the same event in a new envelope, and the same
    // message also arrives as a plain `message` event: no second reply.
    assert!(slack.send_events_api_with_id("env-2", "Ev1", mention));
    let same_message = message_event(
        "C1",
        "U0ALICE",
        "<@UBOT> what is up?",
        "1700000001.000100",
        Some("1700000000.000001"),
    );
    assert!(slack.send_events_api_with_id("env-3", "Ev2", same_message));
    assert!(slack.wait_acked("env-2", WAIT).await);
    assert!(slack.wait_acked("env-3", WAIT).await);

    // Our own messages (as Slack echoes them) are ignored: never stored,
    // never answered.
    let own = own_message_event(
        "C1",
        "UBOT",
        "B0FAKE",
        "my own words @Andy",
        "1700000002.000100",
    );
    assert!(slack.send_events_api("env-4", own));
    let own_bot = bot_message_event("C1", "B0FAKE", "more of mine @Andy", "1700000002.000200");
    assert!(slack.send_events_api("env-6", own_bot));
    assert!(slack.wait_acked("env-4", WAIT).await);
    assert!(slack.wait_acked("env-6", WAIT).await);

    // Slack asks for a refresh: the adapter reconnects and keeps working.
    assert!(slack.disconnect_refresh());
    assert!(
        slack.wait_connections(2, WAIT).await,
        "reconnected after refresh_requested"
    );
    let again = message_event(
        "C1",
        "U0ALICE",
        "<@UBOT> still there?",
        "1700000003.000100",
        None,
    );
    assert!(slack.send_events_api("env-5", again));
    let posts = slack.wait_posts(2, WAIT).await;
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert_eq!(posts[1].text, "&lt;!channel> reply to: @Andy still there?");
    assert_eq!(posts[1].thread_ts, None);
    assert_eq!(
        model.request_count(),
        2,
        "one model call per distinct message"
    );
    assert_eq!(
        slack.users_info_calls("U0ALICE"),
        1,
        "the display name is cached"
    );
    let stored = host.store.messages_after("slack:C1", 0, 10).unwrap();
    let ids: Vec<&str> = stored.iter().map(|m| m.platform_msg_id.as_str()).collect();
    assert_eq!(ids, vec!["1700000001.000100", "1700000003.000100"]);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_reply_waits_for_retry_after_and_long_replies_are_split() {
    let _one = ONE_HOST.lock().await;
    let slack = FakeSlack::start(FakeSlackConfig::default()).await;
    // A reply longer than one Slack message.
    let long: String = (0..300)
        .map(|i| format!("Sentence number {i} is here. "))
        .collect();
    let reply = long.clone();
    let model = support::fake_anthropic::FakeAnthropic::start_with(move |_| {
        support::fake_anthropic::Reply::text(reply.clone())
    })
    .await;
    let Some(host) = slack_host(&slack, &model, "xoxb-test").await else {
        return;
    };
    assert!(slack.wait_connections(1, WAIT).await);
    slack.rate_limit_posts(1, 1);
    let mention = app_mention_event(
        "C1",
        "U0ALICE",
        "<@UBOT> write a lot",
        "1700000010.000100",
        None,
    );
    assert!(slack.send_events_api("env-1", mention));
    slack.wait_posts(1, WAIT).await;
    wait_for("the whole reply delivered", WAIT, || {
        host.store
            .unsent_outbox()
            .map(|rows| rows.is_empty())
            .unwrap_or(false)
    });
    let posts = slack.posts();
    assert!(posts.len() >= 3, "{} parts", posts.len());
    assert!(posts.iter().all(|p| p.text.chars().count() <= 3900));
    let joined: String = posts.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(joined.trim_end(), long.trim_end());
    // The first attempt got a 429 with Retry-After: 1; the retry waited.
    let attempts = slack.post_attempt_times();
    assert_eq!(attempts.len(), posts.len() + 1);
    let waited = attempts[1] - attempts[0];
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}"
    );
    wait_for("the reply marked sent", WAIT, || {
        host.store
            .unsent_outbox()
            .map(|rows| rows.is_empty())
            .unwrap_or(false)
    });
    host.stop().await;
}
