//! An in-process host for tests: the real actor tree, store, engine and
//! image, with the terminal channel's output on a channel the test reads.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use talon::actors::router::{RouterMsg, ROUTER};
use talon::actors::terminal::{TerminalArgs, TerminalOutput, TERMINAL_CHAT};
use talon::config::Config;
use talon::host::{self, Host, HostContext};
use talon::messages::{InboundMessage, RegisteredGroup};
use talon::store::Store;
use tokio::sync::{mpsc, Semaphore};

use super::fake_anthropic::{FakeAnthropic, Reply};
use super::{host_env, last_message_text, last_user_text, Home};

/// Actor names are process-wide: one host per test at a time.
pub static ONE_HOST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub const REPLY_WAIT: Duration = Duration::from_secs(60);

pub struct TestHost {
    pub host: Option<Host>,
    pub replies: mpsc::UnboundedReceiver<TerminalOutput>,
    pub store: Store,
    pub home: Home,
}

pub fn group(chat: &str, folder: &str, main: bool, requires_trigger: bool) -> RegisteredGroup {
    RegisteredGroup {
        chat_id: chat.into(),
        name: folder.into(),
        folder: folder.into(),
        trigger_pattern: None,
        requires_trigger,
        is_main: main,
        container_config: None,
        added_at: 1,
    }
}

pub async fn start_host(
    docker: bollard::Docker,
    model: &FakeAnthropic,
    groups: &[RegisteredGroup],
) -> TestHost {
    start_host_with(docker, model, groups, &[]).await
}

/// Like [`start_host`], with configuration overrides (`TALON_…` variables).
pub async fn start_host_with(
    docker: bollard::Docker,
    model: &FakeAnthropic,
    groups: &[RegisteredGroup],
    overrides: &[(&str, &str)],
) -> TestHost {
    let home = Home::new();
    let paths = home.paths();
    paths.ensure().unwrap();
    let mut env = host_env(home.path(), &model.base_url);
    env.extend(
        overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let config = Config::from_sources(None, "test", &[], &env).unwrap();
    let provider = host::build_provider(&config, &paths).unwrap();
    let store = Store::open(&paths.db()).unwrap();
    for g in groups {
        store.register_group(g).unwrap();
    }
    let ctx = HostContext::new(store.clone(), config, paths, docker, provider).unwrap();
    let (tx, replies) = mpsc::unbounded_channel();
    let terminal = TerminalArgs {
        store: store.clone(),
        chat_id: TERMINAL_CHAT.into(),
        output: tx,
        gate: Arc::new(Semaphore::new(1)),
        recovered_through: None,
    };
    // Slack and Discord start as `talon run` starts them: when their
    // tokens are in the configuration.
    let mut channels = host::Channels::terminal(terminal);
    (channels.slack, channels.discord) = host::platform_channels(&ctx);
    let host = host::start(Arc::new(ctx), channels).await.unwrap();
    TestHost {
        host: Some(host),
        replies,
        store,
        home,
    }
}

impl TestHost {
    pub async fn stop(mut self) {
        if let Some(host) = self.host.take() {
            host.shutdown().await;
        }
    }

    /// Stops the host and hands back its home, which then still holds what
    /// the host left behind (run logs are written as containers stop).
    pub async fn stop_keeping_home(mut self) -> Home {
        if let Some(host) = self.host.take() {
            host.shutdown().await;
        }
        self.home
    }

    pub async fn next_reply(&mut self) -> TerminalOutput {
        tokio::time::timeout(REPLY_WAIT, self.replies.recv())
            .await
            .expect("a reply in time")
            .expect("the terminal channel is open")
    }
}

pub fn router() -> ActorRef<RouterMsg> {
    ractor::registry::where_is(ROUTER)
        .expect("router running")
        .into()
}

/// Hands the router a message from Ann in `chat`, as a channel would.
pub fn say(chat: &str, id: &str, text: &str) {
    router()
        .cast(talon::actors::router::RouterMsg::Inbound(message(
            chat, id, text,
        )))
        .expect("the router takes the message");
}

pub fn message(chat: &str, id: &str, text: &str) -> InboundMessage {
    InboundMessage {
        chat_id: chat.into(),
        platform_msg_id: id.into(),
        sender_id: "u1".into(),
        sender_name: "Ann".into(),
        content: text.into(),
        timestamp: talon::store::now_millis(),
        is_from_me: false,
        is_bot_message: false,
        reply_to: None,
        thread_id: None,
    }
}

pub async fn replying_model() -> FakeAnthropic {
    FakeAnthropic::start_with(|body| {
        Reply::text(format!(
            "reply to: {}",
            last_message_text(&last_user_text(body))
        ))
    })
    .await
}
