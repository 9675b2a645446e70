//! The token manager (SPEC §9) against a fake OAuth endpoint and the fake
//! Anthropic API, both on 127.0.0.1 and speaking the real wire formats:
//! refresh 5 minutes early with the file rewritten 0600 and its other
//! fields kept, one refresh for 50 calls at expiry, a spent refresh token
//! refused, another process's refresh adopted, the fallback key when OAuth
//! cannot be had (and OAuth again after), one forced refresh on a 401, and
//! a file that survives a kill -9 in the middle of a write.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use serde_json::{json, Value};
use support::fake_anthropic::{FakeAnthropic, Reply};
use support::fake_oauth::FakeOAuth;
use talon::actors::token_manager::{
    FromTokenManager, TokenManager, TokenManagerArgs, TokenMsg, TOKEN_MANAGER,
};
use talon::auth::claude::{self, RefreshSettings};
use talon::provider::{
    AnthropicConfig, AnthropicProvider, Credential, CredentialSource, ModelRequest, Provider,
    RetryPolicy,
};
use talon::secret::Secret;
use talon::store::Store;

/// The actor's name is process-wide: one at a time.
static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HOUR_MS: i64 = 3_600_000;

fn now() -> i64 {
    talon::store::now_millis()
}

/// A credentials file as the CLI writes it, world-readable to start with.
fn write_credentials(dir: &Path, access: &str, refresh: &str, expires_at: i64) -> PathBuf {
    let path = dir.join(".credentials.json");
    let text = json!({
        "claudeAiOauth": {
            "accessToken": access,
            "refreshToken": refresh,
            "expiresAt": expires_at,
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": "max",
        },
        "mcpOAuth": {"keep": "me"},
    });
    std::fs::write(&path, text.to_string()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn args(file: &Path, oauth: &FakeOAuth, store: Store) -> TokenManagerArgs {
    TokenManagerArgs {
        credentials_file: Some(file.to_path_buf()),
        refresh: RefreshSettings {
            token_url: oauth.token_url.clone(),
            ..RefreshSettings::default()
        },
        retry_base: Duration::from_millis(100),
        env_oauth: None,
        api_key: None,
        fallback_key: None,
        paths: talon::paths::Paths::at(file.parent().unwrap()),
        threads: Default::default(),
        store,
        client: reqwest::Client::new(),
    }
}

async fn start(args: TokenManagerArgs) -> ActorRef<TokenMsg> {
    let (actor, _) = Actor::spawn(Some(TOKEN_MANAGER.into()), TokenManager, args)
        .await
        .expect("start the token manager");
    actor
}

async fn stop(actor: ActorRef<TokenMsg>) {
    actor.stop(None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ractor::registry::where_is(TOKEN_MANAGER).is_some() {
        assert!(Instant::now() < deadline, "the token manager did not stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn bearer(token: &str) -> Credential {
    Credential::OAuthToken(Secret::new(token))
}

#[tokio::test]
async fn a_token_is_refreshed_five_minutes_early_and_the_file_keeps_its_other_fields() {
    let _one = ONE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let oauth = FakeOAuth::start(&["sk-ant-ort01-first"], 8 * 3600).await;
    // Six minutes left: nothing to do yet.
    let file = write_credentials(
        dir.path(),
        "sk-ant-oat01-first",
        "sk-ant-ort01-first",
        now() + 6 * 60_000,
    );
    let actor = start(args(&file, &oauth, Store::open_in_memory().unwrap())).await;
    assert_eq!(
        FromTokenManager.current().await,
        Some(bearer("sk-ant-oat01-first"))
    );
    assert_eq!(oauth.requests(), 0);
    stop(actor).await;

    // Four minutes left: refreshed before use.
    let file = write_credentials(
        dir.path(),
        "sk-ant-oat01-first",
        "sk-ant-ort01-first",
        now() + 4 * 60_000,
    );
    let actor = start(args(&file, &oauth, Store::open_in_memory().unwrap())).await;
    assert_eq!(
        FromTokenManager.current().await,
        Some(bearer("sk-ant-oat01-issued-1"))
    );
    assert_eq!(oauth.refreshes(), 1);
    let written = read_json(&file);
    let o = &written["claudeAiOauth"];
    assert_eq!(o["accessToken"], "sk-ant-oat01-issued-1");
    assert_eq!(o["refreshToken"], "sk-ant-ort01-issued-1");
    let expires = o["expiresAt"].as_i64().unwrap();
    assert!((expires - now() - 8 * HOUR_MS).abs() < 60_000, "{expires}");
    assert_eq!(o["subscriptionType"], "max");
    assert_eq!(written["mcpOAuth"]["keep"], "me");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The dump says what is in use, never a token.
    let state = ractor::call!(actor, TokenMsg::Inspect).unwrap();
    assert_eq!(state["credential"], "oauth (credentials file)");
    assert!(state["expires_in_s"].as_i64().unwrap() > 7 * 3600);
    assert!(!state.to_string().contains("sk-ant"), "{state}");
    stop(actor).await;
}

#[tokio::test]
async fn fifty_calls_at_expiry_make_one_refresh() {
    let _one = ONE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let oauth = FakeOAuth::start(&["sk-ant-ort01-first"], 8 * 3600).await;
    oauth.set_delay(Duration::from_millis(300));
    let file = write_credentials(
        dir.path(),
        "sk-ant-oat01-first",
        "sk-ant-ort01-first",
        now() + 60_000,
    );
    let actor = start(args(&file, &oauth, Store::open_in_memory().unwrap())).await;
    let calls: Vec<_> = (0..50)
        .map(|_| tokio::spawn(async { FromTokenManager.current().await }))
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), Some(bearer("sk-ant-oat01-issued-1")));
    }
    assert_eq!(oauth.requests(), 1, "one refresh for every caller");
    stop(actor).await;
}

#[tokio::test]
async fn a_spent_refresh_token_is_refused_as_the_real_server_would() {
    let oauth = FakeOAuth::start(&["sk-ant-ort01-once"], 3600).await;
    let settings = RefreshSettings {
        token_url: oauth.token_url.clone(),
        ..RefreshSettings::default()
    };
    let client = reqwest::Client::new();
    let once = Secret::new("sk-ant-ort01-once");
    let first = claude::request_refresh(&client, &settings, &once, now())
        .await
        .unwrap();
    assert_eq!(first.access.expose(), "sk-ant-oat01-issued-1");
    let again = claude::request_refresh(&client, &settings, &once, now())
        .await
        .unwrap_err();
    let text = again.to_string();
    assert!(text.contains("400") && text.contains("invalid"), "{text}");
    assert!(!text.contains("sk-ant-ort01-once"), "{text}");
}

#[tokio::test]
async fn a_refresh_done_by_another_process_is_adopted_not_repeated() {
    let _one = ONE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let oauth = FakeOAuth::start(&["sk-ant-ort01-first"], 8 * 3600).await;
    let file = write_credentials(
        dir.path(),
        "sk-ant-oat01-first",
        "sk-ant-ort01-first",
        now() + 60_000,
    );
    let ours = claude::read_credentials(&file).unwrap().unwrap();
    // The Claude CLI refreshes first (spending the refresh token).
    write_credentials(
        dir.path(),
        "sk-ant-oat01-cli",
        "sk-ant-ort01-cli",
        now() + 8 * HOUR_MS,
    );
    let settings = RefreshSettings {
        token_url: oauth.token_url.clone(),
        ..RefreshSettings::default()
    };
    let done = claude::refresh_file(&file, &reqwest::Client::new(), &settings, Some(&ours), now)
        .await
        .unwrap();
    assert!(matches!(done, claude::FileRefresh::Adopted(_)), "{done:?}");
    assert_eq!(done.tokens().access.expose(), "sk-ant-oat01-cli");
    assert_eq!(oauth.requests(), 0);

    // The actor too: its token is due, the file already has a fresh one.
    let file = write_credentials(
        dir.path(),
        "sk-ant-oat01-first",
        "sk-ant-ort01-first",
        now() + 60_000,
    );
    oauth.set_failing(true); // its first, own attempt fails
    let actor = start(args(&file, &oauth, Store::open_in_memory().unwrap())).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while oauth.requests() == 0 {
        assert!(Instant::now() < deadline, "the due refresh was never tried");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tried = oauth.requests();
    write_credentials(
        dir.path(),
        "sk-ant-oat01-cli",
        "sk-ant-ort01-cli",
        now() + 8 * HOUR_MS,
    );
    assert_eq!(
        FromTokenManager.current().await,
        Some(bearer("sk-ant-oat01-cli"))
    );
    assert_eq!(oauth.refreshes(), 0);
    assert_eq!(oauth.requests(), tried, "a second refresh was attempted");
    stop(actor).await;
}

fn request() -> ModelRequest {
    serde_json::from_value(json!({
        "system": "s",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 10,
    }))
    .unwrap()
}

fn provider(model: &FakeAnthropic) -> AnthropicProvider {
    AnthropicProvider::new(AnthropicConfig {
        base_url: model.base_url.clone(),
        credential: Arc::new(FromTokenManager),
        model: "claude-test".into(),
        request_timeout: Duration::from_secs(10),
        retry: RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        },
    })
    .unwrap()
}

#[tokio::test]
async fn without_a_usable_token_the_fallback_key_is_sent_and_oauth_returns_after_a_refresh() {
    let _one = ONE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let oauth = FakeOAuth::start(&["sk-ant-ort01-first"], 8 * 3600).await;
    oauth.set_failing(true);
    let file = write_credentials(
        dir.path(),
        "sk-ant-oat01-old",
        "sk-ant-ort01-first",
        now() - 60_000,
    );
    let store = Store::open_in_memory().unwrap();
    store
        .register_group(&talon::messages::RegisteredGroup {
            chat_id: "sock:boss".into(),
            name: "Boss".into(),
            folder: "boss".into(),
            trigger_pattern: None,
            requires_trigger: false,
            is_main: true,
            container_config: None,
            added_at: 1,
        })
        .unwrap();
    let mut a = args(&file, &oauth, store.clone());
    a.fallback_key = Some(Secret::new("sk-ant-api03-fallback"));
    let actor = start(a).await;
    let model = FakeAnthropic::start_with(|_| Reply::text("ok")).await;
    let provider = provider(&model);
    provider.complete(request()).await.unwrap();
    let sent = model.message_requests();
    assert_eq!(sent[0].header("x-api-key"), Some("sk-ant-api03-fallback"));
    assert_eq!(
        sent[0].header("authorization"),
        None,
        "both credentials sent"
    );
    // The main chat was told, once.
    provider.complete(request()).await.unwrap();
    let notices: Vec<_> = store
        .unsent_outbox()
        .unwrap()
        .into_iter()
        .filter(|r| r.text.contains("fallback prepaid API key"))
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].chat_id, "sock:boss");

    // The token endpoint recovers: the retried refresh succeeds and the
    // subscription is used again.
    oauth.set_failing(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while oauth.refreshes() == 0 {
        assert!(Instant::now() < deadline, "the refresh was never retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    provider.complete(request()).await.unwrap();
    let last = model.message_requests().pop().unwrap();
    assert_eq!(
        last.header("authorization"),
        Some("Bearer sk-ant-oat01-issued-1")
    );
    assert_eq!(last.header("x-api-key"), None);
    stop(actor).await;
}

#[tokio::test]
async fn a_401_on_the_oauth_token_forces_one_refresh_and_one_retry() {
    let _one = ONE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let oauth = FakeOAuth::start(&["sk-ant-ort01-first"], 8 * 3600).await;
    let file = write_credentials(
        dir.path(),
        "sk-ant-oat01-revoked",
        "sk-ant-ort01-first",
        now() + 8 * HOUR_MS,
    );
    let actor = start(args(&file, &oauth, Store::open_in_memory().unwrap())).await;
    let model = FakeAnthropic::start_with(|_| Reply::text("ok")).await;
    model.push(Reply::status(
        401,
        "authentication_error",
        "OAuth token revoked",
    ));
    let reply = provider(&model).complete(request()).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(oauth.refreshes(), 1);
    let sent = model.message_requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[0].header("authorization"),
        Some("Bearer sk-ant-oat01-revoked")
    );
    assert_eq!(
        sent[1].header("authorization"),
        Some("Bearer sk-ant-oat01-issued-1")
    );
    stop(actor).await;
}

/// Not a test on its own: the child process of the kill test below, which
/// starts this binary with `TALON_TEST_WRITER=<file>`; it rewrites the file
/// atomically, as a refresh does, until it is killed.
#[test]
fn credentials_writer_child() {
    let Some(path) = std::env::var_os("TALON_TEST_WRITER") else {
        return;
    };
    let path = PathBuf::from(path);
    let padding = "x".repeat(256 * 1024);
    for n in 0.. {
        let text = json!({
            "claudeAiOauth": {
                "accessToken": format!("sk-ant-oat01-{n}"),
                "refreshToken": format!("sk-ant-ort01-{n}"),
                "expiresAt": n,
                "subscriptionType": "max",
            },
            "padding": padding,
        });
        talon::safe_fs::write_atomically(&path, text.to_string().as_bytes(), 0o600).unwrap();
    }
}

#[test]
fn a_kill_during_the_write_leaves_the_old_file_or_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_credentials(dir.path(), "sk-ant-oat01-first", "sk-ant-ort01-first", 1);
    for round in 0..12u64 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "credentials_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TALON_TEST_WRITER", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30 + round * 17));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = claude::parse_credentials(&text, &path)
            .unwrap_or_else(|e| panic!("round {round}: a torn file: {e}"))
            .expect("tokens");
        assert!(parsed.refresh.is_some(), "round {round}");
        assert_eq!(read_json(&path)["claudeAiOauth"]["subscriptionType"], "max");
    }
}

/// The Threads token is checked before a container start of a group that is
/// given it: an expired one whose refresh is refused is one clear line in the
/// chat, not an agent that fails silently inside.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_threads_token_is_a_clear_error_before_the_container_starts() {
    use support::inproc::{self, ONE_HOST};
    use talon::actors::terminal::{TerminalOutput, TERMINAL_CHAT};
    let Some(docker) = support::docker_with_image().await else {
        return;
    };
    let _one = ONE_HOST.lock().await;
    let _token = ONE.lock().await;
    // The API no longer knows the token (revoked or long expired).
    let threads = support::fake_threads::FakeThreads::start(&[]).await;
    let model = inproc::replying_model().await;
    let mut group = inproc::group(TERMINAL_CHAT, "main", true, false);
    group.container_config = Some(r#"{"secrets":["THREADS_ACCESS_TOKEN"]}"#.into());
    let mut host = inproc::start_host_with(
        docker,
        &model,
        &[group],
        &[("TALON_AUTH_THREADS_URL", threads.base_url.as_str())],
    )
    .await;
    let paths = host.home.paths();
    std::fs::write(paths.env_file(), "THREADS_ACCESS_TOKEN=THAAexpiredToken\n").unwrap();
    let expired = serde_json::json!({"expires_at": now() - 86_400_000, "refreshed_at": null});
    std::fs::write(
        paths.data().join("threads-token-state.json"),
        expired.to_string(),
    )
    .unwrap();
    inproc::router()
        .cast(talon::actors::router::RouterMsg::Inbound(inproc::message(
            TERMINAL_CHAT,
            "m1",
            "post to threads",
        )))
        .unwrap();
    let line = match host.next_reply().await {
        TerminalOutput::Reply(text) | TerminalOutput::Notice(text) => text,
    };
    assert!(line.contains("could not be processed"), "{line}");
    assert!(line.contains("Threads access token expired"), "{line}");
    assert!(!line.contains("THAAexpiredToken"), "{line}");
    assert_eq!(model.message_requests().len(), 0, "the agent ran anyway");
    assert!(talon_containers_of(host.home.path()).is_empty());
    host.stop().await;
}

fn talon_containers_of(home: &Path) -> Vec<String> {
    support::talon_containers(home)
}
