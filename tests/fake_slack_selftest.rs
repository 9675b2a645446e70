//! Proves the fake Slack (tests/support/fake_slack.rs) speaks what the real
//! slack-morphism client sends and parses, by driving it with that client:
//! Web API calls, errors and rate limits, the exact frames of Socket Mode, and
//! slack-morphism's own Socket Mode listener (events, acks, reconnects).
//! A fake that only agrees with itself would let talon's Slack tests pass
//! against a protocol the real library drops silently.

#[path = "support/fake_slack.rs"]
mod fake_slack;

use std::sync::Arc;
use std::time::Duration;

use fake_slack::*;
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(5);

fn client_for(fake: &FakeSlack) -> Arc<SlackHyperClient> {
    // Two rustls crypto providers are compiled into talon, so none is the
    // default: name one.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .expect("native root certificates")
        .https_or_http()
        .enable_http1()
        .build();
    let connector =
        SlackClientHyperConnector::with_connector(https).with_slack_api_url(&fake.api_url());
    Arc::new(SlackClient::new(connector))
}

fn token(value: &str) -> SlackApiToken {
    SlackApiToken::new(SlackApiTokenValue::new(value.to_string()))
}

fn api_error_code(result: Result<impl std::fmt::Debug, SlackClientError>) -> String {
    match result {
        Err(SlackClientError::ApiError(error)) => error.code,
        other => panic!("expected a Slack API error, got {other:?}"),
    }
}

#[tokio::test]
async fn auth_test_accepts_the_bot_token_and_refuses_others() {
    let fake = FakeSlack::start(FakeSlackConfig::default()).await;
    let client = client_for(&fake);

    let bot_token = token("xoxb-test");
    let identity = client
        .open_session(&bot_token)
        .auth_test()
        .await
        .expect("auth.test with the bot token");
    assert_eq!(identity.user_id.0, "UBOT");
    assert_eq!(identity.team_id.0, "T0FAKE");
    assert_eq!(identity.bot_id.map(|id| id.0), Some("B0FAKE".to_string()));
    assert_eq!(identity.user.as_deref(), Some(BOT_USER_NAME));
    assert_eq!(identity.team, TEAM_NAME);

    let wrong_token = token("xoxb-wrong");
    let refused = client.open_session(&wrong_token).auth_test().await;
    assert_eq!(api_error_code(refused), "invalid_auth");

    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].method, "auth.test");
    assert_eq!(calls[0].http_method, "GET");
    assert_eq!(calls[0].token.as_deref(), Some("xoxb-test"));
    assert_eq!(calls[1].token.as_deref(), Some("xoxb-wrong"));
}

#[tokio::test]
async fn users_info_gives_the_display_name_and_counts_calls() {
    let fake = FakeSlack::start(FakeSlackConfig {
        users: vec![("U1".into(), "Ada".into()), ("U2".into(), "Grace".into())],
        ..FakeSlackConfig::default()
    })
    .await;
    let client = client_for(&fake);
    let bot_token = token("xoxb-test");
    let session = client.open_session(&bot_token);

    for _ in 0..2 {
        let info = session
            .users_info(&SlackApiUsersInfoRequest::new("U1".into()))
            .await
            .expect("users.info for a known user");
        let profile = info.user.profile.expect("a profile");
        assert_eq!(info.user.id.0, "U1");
        assert_eq!(profile.display_name.as_deref(), Some("Ada"));
        assert_eq!(profile.real_name.as_deref(), Some("Ada (real name)"));
        assert_eq!(info.user.real_name.as_deref(), Some("Ada (real name)"));
    }
    let missing = session
        .users_info(&SlackApiUsersInfoRequest::new("U404".into()))
        .await;
    assert_eq!(api_error_code(missing), "user_not_found");

    assert_eq!(fake.users_info_calls("U1"), 2);
    assert_eq!(fake.users_info_calls("U2"), 0);
    assert_eq!(fake.users_info_calls("U404"), 1);

    let app_token = token("xapp-test");
    let wrong_kind = client
        .open_session(&app_token)
        .users_info(&SlackApiUsersInfoRequest::new("U1".into()))
        .await;
    assert_eq!(api_error_code(wrong_kind), "not_allowed_token_type");
}

#[tokio::test]
async fn chat_post_message_is_recorded_with_its_thread() {
    let fake = FakeSlack::start(FakeSlackConfig::default()).await;
    let client = client_for(&fake);
    let bot_token = token("xoxb-test");
    let session = client.open_session(&bot_token);

    let top = session
        .chat_post_message(&SlackApiChatPostMessageRequest::new(
            "C1".into(),
            SlackMessageContent::new().with_text("hello".into()),
        ))
        .await
        .expect("a top-level post");
    let reply = session
        .chat_post_message(
            &SlackApiChatPostMessageRequest::new(
                "C1".into(),
                SlackMessageContent::new().with_text("in thread".into()),
            )
            .with_thread_ts(top.ts.clone()),
        )
        .await
        .expect("a thread reply");

    assert_ne!(top.ts, reply.ts, "every post gets a fresh ts");
    assert_eq!(reply.channel.0, "C1");
    assert_eq!(reply.message.origin.thread_ts.as_ref(), Some(&top.ts));
    assert_eq!(reply.message.content.text.as_deref(), Some("in thread"));
    assert_eq!(
        reply.message.sender.bot_id.as_ref().map(|id| id.0.as_str()),
        Some("B0FAKE")
    );

    let posts = fake.wait_posts(2, WAIT).await;
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[0].channel, "C1");
    assert_eq!(posts[0].text, "hello");
    assert_eq!(posts[0].thread_ts, None);
    assert_eq!(posts[0].ts, top.ts.0);
    assert_eq!(posts[1].text, "in thread");
    assert_eq!(posts[1].thread_ts.as_deref(), Some(top.ts.0.as_str()));
    assert_eq!(fake.post_attempt_times().len(), 2);
}

#[tokio::test]
async fn a_rate_limited_post_surfaces_retry_after() {
    let fake = FakeSlack::start(FakeSlackConfig::default()).await;
    let client = client_for(&fake);
    let bot_token = token("xoxb-test");
    let session = client.open_session(&bot_token);
    let request = SlackApiChatPostMessageRequest::new(
        "C1".into(),
        SlackMessageContent::new().with_text("hi".into()),
    );

    fake.rate_limit_posts(1, 7);
    match session.chat_post_message(&request).await {
        Err(SlackClientError::RateLimitError(error)) => {
            assert_eq!(error.retry_after, Some(Duration::from_secs(7)));
            assert_eq!(error.code.as_deref(), Some("ratelimited"));
        }
        other => panic!("expected a rate limit error, got {other:?}"),
    }
    assert!(fake.posts().is_empty(), "a refused post is not recorded");

    session
        .chat_post_message(&request)
        .await
        .expect("the limit covered one post only");
    let attempts = fake.post_attempt_times();
    assert_eq!(attempts.len(), 2);
    assert!(attempts[0] <= attempts[1]);
    assert_eq!(fake.posts().len(), 1);
}

#[tokio::test]
async fn unknown_methods_are_recorded_and_refused() {
    let fake = FakeSlack::start(FakeSlackConfig::default()).await;
    let client = client_for(&fake);
    let bot_token = token("xoxb-test");
    let refused = client
        .open_session(&bot_token)
        .team_info(&SlackApiTeamInfoRequest::new())
        .await;
    assert_eq!(api_error_code(refused), "unknown_method");
    assert_eq!(fake.unknown_methods(), vec!["team.info".to_string()]);
    assert_eq!(fake.methods_called(), vec!["team.info".to_string()]);
}

#[tokio::test]
async fn conversations_info_describes_the_channel() {
    let fake = FakeSlack::start(FakeSlackConfig::default()).await;
    let client = client_for(&fake);
    let bot_token = token("xoxb-test");
    let info = client
        .open_session(&bot_token)
        .conversations_info(&SlackApiConversationsInfoRequest::new("D42".into()))
        .await
        .expect("conversations.info");
    assert_eq!(info.channel.id.0, "D42");
    assert_eq!(info.channel.flags.is_im, Some(true));
}

#[tokio::test]
async fn apps_connections_open_hands_out_a_socket_url_for_the_app_token_only() {
    let fake = FakeSlack::start(FakeSlackConfig::default()).await;
    let client = client_for(&fake);
    let request = SlackApiAppsConnectionOpenRequest::new();

    let app_token = token("xapp-test");
    let opened = client
        .open_session(&app_token)
        .apps_connections_open(&request)
        .await
        .expect("apps.connections.open with the app token");
    let url = opened.url.0.to_string();
    assert!(
        url.starts_with(&format!("ws://{}/socket?ticket=", &fake.base_url[7..])),
        "{url}"
    );

    let wrong = token("xapp-wrong");
    let refused = client
        .open_session(&wrong)
        .apps_connections_open(&request)
        .await;
    assert_eq!(api_error_code(refused), "invalid_auth");
    let call = &fake.calls()[0];
    assert_eq!(call.http_method, "POST");
}

/// The listener deserializes every frame as slack-morphism's (crate-private,
/// so not nameable here) `SlackSocketModeEvent` and drops, after logging,
/// whatever does not parse; an `event` it does not model lands in
/// `SlackEventCallbackBody::Unknown`. So each payload must parse as
/// `SlackPushEventCallback` with the modelled variant, and the envelope must
/// carry the fields `SlackSocketModeEventsApiEvent` requires. The listener
/// tests below prove the whole frames end to end.
#[test]
fn the_builders_parse_as_slack_morphism_push_events() {
    let parse = |event| {
        let envelope = events_api_envelope("env-1", "Ev1", "T0FAKE", "A0FAKE", "UBOT", event);
        assert_eq!(envelope["type"], "events_api");
        assert_eq!(envelope["envelope_id"], "env-1");
        assert!(envelope["accepts_response_payload"].is_boolean());
        assert_eq!(envelope["payload"]["type"], "event_callback");
        serde_json::from_value::<SlackPushEventCallback>(envelope["payload"].clone())
            .expect("the payload parses as SlackPushEventCallback")
    };

    let thread_reply = parse(message_event(
        "C1",
        "U1",
        "hi there",
        "1700000000.000200",
        Some("1700000000.000100"),
    ));
    assert_eq!(thread_reply.team_id.0, "T0FAKE");
    assert_eq!(thread_reply.api_app_id.0, "A0FAKE");
    assert_eq!(thread_reply.event_id.0, "Ev1");
    let authorizations = thread_reply
        .authorizations
        .as_ref()
        .expect("authorizations");
    assert_eq!(authorizations[0].user_id.0, "UBOT");
    match &thread_reply.event {
        SlackEventCallbackBody::Message(message) => {
            assert_eq!(
                message.origin.channel.as_ref().map(|c| c.0.as_str()),
                Some("C1")
            );
            assert_eq!(
                message.origin.channel_type.as_ref().map(|t| t.0.as_str()),
                Some("channel")
            );
            assert_eq!(message.origin.ts.0, "1700000000.000200");
            assert_eq!(
                message.origin.thread_ts.as_ref().map(|t| t.0.as_str()),
                Some("1700000000.000100")
            );
            assert_eq!(
                message.sender.user.as_ref().map(|u| u.0.as_str()),
                Some("U1")
            );
            let content = message.content.as_ref().expect("content");
            assert_eq!(content.text.as_deref(), Some("hi there"));
            assert_eq!(content.blocks.as_ref().map(Vec::len), Some(1));
            assert_eq!(message.subtype, None);
        }
        other => panic!("message event: {other:?}"),
    }

    let dm = parse(im_message_event("D1", "U1", "psst", "1700000000.000300"));
    match &dm.event {
        SlackEventCallbackBody::Message(message) => {
            assert_eq!(
                message.origin.channel_type.as_ref().map(|t| t.0.as_str()),
                Some("im")
            );
        }
        other => panic!("im message event: {other:?}"),
    }

    let mention = parse(app_mention_event(
        "C1",
        "U1",
        "<@UBOT> help",
        "1700000000.000400",
        None,
    ));
    match &mention.event {
        SlackEventCallbackBody::AppMention(mention) => {
            assert_eq!(mention.user.0, "U1");
            assert_eq!(mention.channel.0, "C1");
            assert_eq!(mention.content.text.as_deref(), Some("<@UBOT> help"));
            assert_eq!(mention.origin.ts.0, "1700000000.000400");
            assert_eq!(mention.origin.thread_ts, None);
        }
        other => panic!("app_mention event: {other:?}"),
    }

    let bot = parse(bot_message_event(
        "C1",
        "B0OTHER",
        "beep",
        "1700000000.000500",
    ));
    match &bot.event {
        SlackEventCallbackBody::Message(message) => {
            assert_eq!(message.subtype, Some(SlackMessageEventType::BotMessage));
            assert_eq!(
                message.sender.bot_id.as_ref().map(|b| b.0.as_str()),
                Some("B0OTHER")
            );
            assert_eq!(message.sender.user, None);
        }
        other => panic!("bot_message event: {other:?}"),
    }

    let own = parse(own_message_event(
        "C1",
        "UBOT",
        "B0FAKE",
        "my reply",
        "1700000000.000600",
    ));
    match &own.event {
        SlackEventCallbackBody::Message(message) => {
            assert_eq!(message.subtype, None);
            assert_eq!(
                message.sender.user.as_ref().map(|u| u.0.as_str()),
                Some("UBOT")
            );
            assert_eq!(
                message.sender.bot_id.as_ref().map(|b| b.0.as_str()),
                Some("B0FAKE")
            );
        }
        other => panic!("own message event: {other:?}"),
    }

    // The fields slack-morphism's hello and disconnect models require.
    let hello = hello_frame("A0FAKE");
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["connection_info"]["app_id"], "A0FAKE");
    assert!(hello["num_connections"].is_u64());
    assert!(hello["debug_info"]["host"].is_string());
    let disconnect = disconnect_frame("refresh_requested");
    assert_eq!(disconnect["type"], "disconnect");
    assert_eq!(disconnect["reason"], "refresh_requested");
    assert!(disconnect["debug_info"]["host"].is_string());
}

/// Hands each error slack-morphism's listener reports to the test that owns
/// the listener (a frame that fails to parse would show up here).
fn record_listener_error(
    error: Box<dyn std::error::Error + Send + Sync>,
    _client: Arc<SlackHyperClient>,
    state: SlackClientEventsUserState,
) -> HttpStatusCode {
    // A plain `fn`, so the state is read without waiting; only the test's
    // own callbacks ever lock it, and only for reading.
    if let Ok(storage) = state.try_read() {
        if let Some(observed) = storage.get_user_state::<Observed>() {
            let _ = observed.errors.send(error.to_string());
        }
    }
    HttpStatusCode::OK
}

/// What the callbacks share with the test: slack-morphism takes callbacks as
/// plain `fn`s, so state travels through its user state.
struct Observed {
    events: UnboundedSender<SlackPushEventCallback>,
    hellos: UnboundedSender<String>,
    errors: UnboundedSender<String>,
    /// The push callback returns only after taking a permit, so the test
    /// controls when it finishes and can see whether the ack waits for it.
    finish: Arc<Semaphore>,
}

async fn on_push_event(
    event: SlackPushEventCallback,
    _client: Arc<SlackHyperClient>,
    state: SlackClientEventsUserState,
) -> UserCallbackResult<()> {
    let (events, finish) = {
        let storage = state.read().await;
        let observed = storage
            .get_user_state::<Observed>()
            .expect("the test sets the observed state");
        (observed.events.clone(), Arc::clone(&observed.finish))
    };
    events.send(event)?;
    finish.acquire().await?.forget();
    Ok(())
}

struct Listening {
    listener: SlackClientSocketModeListener<SlackClientHyperHttpsConnector>,
    events: UnboundedReceiver<SlackPushEventCallback>,
    /// The `app_id` of each `hello` the listener parsed.
    hellos: UnboundedReceiver<String>,
    errors: UnboundedReceiver<String>,
    finish: Arc<Semaphore>,
}

impl Listening {
    async fn next_event(&mut self) -> SlackPushEventCallback {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event reaches the callback in time")
            .expect("the event channel is open")
    }

    /// Errors the listener reported so far.
    fn errors(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        while let Ok(error) = self.errors.try_recv() {
            errors.push(error);
        }
        errors
    }
}

/// slack-morphism's listener with one connection (the default of 2 staggers
/// the second by 5 s), already listening for `app_token`.
async fn listen(fake: &FakeSlack, app_token: &str) -> Listening {
    let (events, events_received) = unbounded_channel();
    let (hellos, hellos_received) = unbounded_channel();
    let (errors, errors_received) = unbounded_channel();
    let finish = Arc::new(Semaphore::new(0));
    let environment = Arc::new(
        SlackClientEventsListenerEnvironment::new(client_for(fake))
            .with_error_handler(record_listener_error)
            .with_user_state(Observed {
                events,
                hellos,
                errors,
                finish: Arc::clone(&finish),
            }),
    );
    let callbacks = SlackSocketModeListenerCallbacks::new()
        .with_push_events(on_push_event)
        .with_hello_events(|hello, _client, state| async move {
            let storage = state.read().await;
            if let Some(observed) = storage.get_user_state::<Observed>() {
                let _ = observed.hellos.send(hello.connection_info.app_id.0.clone());
            }
        });
    let config = SlackClientSocketModeConfig::new()
        .with_max_connections_count(1)
        .with_reconnect_timeout_in_seconds(1);
    let listener = SlackClientSocketModeListener::new(&config, environment, callbacks);
    listener
        .listen_for(&token(app_token))
        .await
        .expect("listen_for only registers the token");
    listener.start().await;
    Listening {
        listener,
        events: events_received,
        hellos: hellos_received,
        errors: errors_received,
        finish,
    }
}

fn message_text(event: &SlackPushEventCallback) -> Option<String> {
    match &event.event {
        SlackEventCallbackBody::Message(message) => {
            message.content.as_ref().and_then(|c| c.text.clone())
        }
        _ => None,
    }
}

#[tokio::test]
async fn the_listener_gets_events_acks_after_the_callback_and_reconnects() {
    let fake = FakeSlack::start(FakeSlackConfig::default()).await;
    let mut listening = listen(&fake, "xapp-test").await;
    assert!(fake.wait_connections(1, WAIT).await, "first connection");
    let hello = tokio::time::timeout(WAIT, listening.hellos.recv()).await;
    assert_eq!(hello.ok().flatten().as_deref(), Some("A0FAKE"));

    let first = message_event("C1", "U1", "first", "1700000000.000100", None);
    assert!(fake.send_events_api("env-1", first));
    let event = listening.next_event().await;
    assert_eq!(message_text(&event).as_deref(), Some("first"));
    assert_eq!(event.event_id.0, "Ev0FAKE000001");
    // The callback is still running: no ack yet.
    assert!(!fake.wait_acked("env-1", Duration::from_millis(150)).await);
    listening.finish.add_permits(1);
    assert!(fake.wait_acked("env-1", WAIT).await, "acked after callback");
    assert_eq!(
        fake.client_frames().last(),
        Some(&serde_json::json!({"envelope_id": "env-1"}))
    );

    assert!(fake.disconnect_refresh());
    assert!(
        fake.wait_connections(2, WAIT).await,
        "the listener reconnects after disconnect"
    );
    assert_eq!(fake.call_count("apps.connections.open"), 2);

    listening.finish.add_permits(1);
    let second = message_event("C1", "U1", "second", "1700000000.000200", None);
    assert!(fake.send_events_api("env-2", second));
    let event = listening.next_event().await;
    assert_eq!(message_text(&event).as_deref(), Some("second"));
    assert!(fake.wait_acked("env-2", WAIT).await);

    // A close without a `disconnect` frame also leads to a reconnect.
    assert!(fake.close_connection());
    assert!(
        fake.wait_connections(3, WAIT).await,
        "the listener reconnects after a bare close"
    );
    assert_eq!(listening.errors(), Vec::<String>::new());

    // And so does a dropped TCP connection, which is also reported to the
    // error handler.
    assert!(fake.abort_connection());
    assert!(
        fake.wait_connections(4, WAIT).await,
        "the listener reconnects after a dropped connection"
    );
    let errors = listening.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("WSS error"), "{errors:?}");

    listening.listener.shutdown().await;
    assert_eq!(fake.acks(), vec!["env-1".to_string(), "env-2".to_string()]);
}

/// The `disconnect` frame alone (no close) makes slack-morphism open a new
/// connection, which proves it parsed the frame; events then flow there.
/// (Whether it also closes the old socket is racy in slack-morphism: when the
/// frame arrives before its writer task first runs, the writer exits on the
/// `destroyed` flag without sending a close, so the old socket stays open until
/// the server closes it, as Slack does shortly after the warning.)
#[tokio::test]
async fn a_disconnect_warning_alone_makes_the_listener_reconnect() {
    let fake = FakeSlack::start(FakeSlackConfig::default()).await;
    let mut listening = listen(&fake, "xapp-test").await;
    assert!(fake.wait_connections(1, WAIT).await);

    assert!(fake.disconnect_warning());
    assert!(fake.wait_connections(2, WAIT).await, "a new connection");
    listening.finish.add_permits(1);
    let after = message_event("C1", "U1", "after", "1700000000.000100", None);
    assert!(fake.send_events_api("env-after", after));
    let event = listening.next_event().await;
    assert_eq!(message_text(&event).as_deref(), Some("after"));
    assert!(fake.wait_acked("env-after", WAIT).await);

    listening.listener.shutdown().await;
    assert_eq!(listening.errors(), Vec::<String>::new());
}

/// Each builder, sent as a whole frame, reaches the callback as the variant
/// slack-morphism models for it, and is acked.
#[tokio::test]
async fn every_builder_reaches_the_listener_as_its_modelled_event() {
    let fake = FakeSlack::start(FakeSlackConfig::default()).await;
    let mut listening = listen(&fake, "xapp-test").await;
    assert!(fake.wait_connections(1, WAIT).await);
    listening.finish.add_permits(100);

    let events = [
        message_event("C1", "U1", "top", "1700000000.000100", None),
        message_event(
            "C1",
            "U1",
            "reply",
            "1700000000.000200",
            Some("1700000000.000100"),
        ),
        im_message_event("D1", "U1", "dm", "1700000000.000300"),
        app_mention_event("C1", "U1", "<@UBOT> hi", "1700000000.000400", None),
        bot_message_event("C1", "B0OTHER", "beep", "1700000000.000500"),
        own_message_event("C1", "UBOT", "B0FAKE", "mine", "1700000000.000600"),
    ];
    let mut kinds = Vec::new();
    for (index, event) in events.into_iter().enumerate() {
        let envelope_id = format!("env-{index}");
        assert!(fake.send_events_api(&envelope_id, event));
        let received = listening.next_event().await;
        assert!(fake.wait_acked(&envelope_id, WAIT).await, "{envelope_id}");
        kinds.push(match &received.event {
            SlackEventCallbackBody::Message(message) => format!(
                "message {} {:?} {:?}",
                message
                    .content
                    .as_ref()
                    .and_then(|c| c.text.clone())
                    .unwrap_or_default(),
                message.origin.thread_ts.as_ref().map(|t| t.0.clone()),
                message.subtype,
            ),
            SlackEventCallbackBody::AppMention(mention) => {
                format!(
                    "app_mention {}",
                    mention.content.text.clone().unwrap_or_default()
                )
            }
            other => format!("unexpected {other:?}"),
        });
    }
    assert_eq!(
        kinds,
        vec![
            "message top None None",
            "message reply Some(\"1700000000.000100\") None",
            "message dm None None",
            "app_mention <@UBOT> hi",
            "message beep None Some(BotMessage)",
            "message mine None None",
        ]
    );

    listening.listener.shutdown().await;
    assert_eq!(listening.errors(), Vec::<String>::new());
}

/// slack-morphism's `listen_for` only registers the token; a refused token
/// is logged and retried every `reconnect_timeout_in_seconds`, never
/// returned and never passed to the error handler.
#[tokio::test]
async fn an_invalid_app_token_is_only_logged_and_retried() {
    let fake = FakeSlack::start(FakeSlackConfig::default()).await;
    let mut listening = listen(&fake, "xapp-wrong").await;

    assert!(
        fake.wait_calls("apps.connections.open", 2, WAIT).await,
        "the refused token is retried after the reconnect timeout"
    );
    listening.listener.shutdown().await;
    assert_eq!(fake.connections(), 0);
    assert_eq!(listening.errors(), Vec::<String>::new());
    let tokens: Vec<_> = fake.calls().into_iter().map(|call| call.token).collect();
    assert!(tokens.iter().all(|t| t.as_deref() == Some("xapp-wrong")));
}
