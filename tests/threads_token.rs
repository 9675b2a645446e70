//! The Threads long-lived token against the fake Graph API: a refresh
//! when 7 days are left rewrites `.env` in place and writes the state file,
//! 8 days left asks nothing, refused and expired tokens are clear errors,
//! outages are warnings while the token is valid, and no token ever shows
//! in an error or a status.

#[path = "support/fake_threads.rs"]
mod fake_threads;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fake_threads::{FakeThreads, Reply, SIXTY_DAYS_SECS};
use talon::auth::threads::{
    self, ensure_fresh_with_env, ThreadsError, ThreadsSettings, ThreadsState, ThreadsStatus,
    DAY_MS, TOKEN_LIFETIME_MS,
};
use talon::paths::Paths;
use talon::secret::Secret;

const NOW: i64 = 1_750_000_000_000;
const OLD_TOKEN: &str = "THAAoldLongLivedToken0001";

/// A `.env` with everything a hand-kept one has around the token.
const ENV_TEXT: &str = "\
# talon secrets
export ANTHROPIC_API_KEY_FALLBACK='sk-ant-api03-x'

THREADS_ACCESS_TOKEN=\"THAAoldLongLivedToken0001\"  # long-lived, 60 days
THREADS_ACCESS_TOKEN_OLD=THAAretired
THREADS_USER_ID=1234567890
THREADS_APP_ID=987654
THREADS_APP_SECRET=appsecretvalue
# THREADS_ACCESS_TOKEN=commented-out
TZ=Asia/Seoul";

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::Builder::new()
            .prefix("talon-threads-")
            .tempdir()
            .expect("temp home");
        Home { dir }
    }

    fn paths(&self) -> Paths {
        Paths::at(self.dir.path())
    }

    fn env_file(&self) -> std::path::PathBuf {
        self.paths().env_file()
    }

    fn write_env(&self, text: &str, mode: u32) {
        std::fs::write(self.env_file(), text).expect("write .env");
        std::fs::set_permissions(self.env_file(), std::fs::Permissions::from_mode(mode))
            .expect("chmod .env");
    }

    fn env_text(&self) -> String {
        std::fs::read_to_string(self.env_file()).expect("read .env")
    }

    /// A state as if the token was issued `days` ago.
    fn write_state_issued_days_ago(&self, days: i64) -> ThreadsState {
        let issued = NOW - days * DAY_MS;
        let state = ThreadsState {
            expires_at: issued + TOKEN_LIFETIME_MS,
            refreshed_at: Some(issued),
        };
        threads::write_state(&self.paths(), &state).expect("write the state");
        state
    }

    fn state_text(&self) -> Option<String> {
        std::fs::read_to_string(threads::state_file(&self.paths())).ok()
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn client() -> reqwest::Client {
    // A proxy from the environment must not see (or swallow) loopback calls.
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

fn settings(fake: &FakeThreads) -> ThreadsSettings {
    ThreadsSettings {
        base_url: fake.base_url.clone(),
    }
}

/// No token in any formatting of `status`.
fn assert_hides(status: &ThreadsStatus, tokens: &[&str]) {
    let shown = format!("{status:?}\n{status}");
    for token in tokens {
        assert!(!shown.contains(token), "a token shows in: {shown}");
    }
}

fn assert_text_hides(text: &str, tokens: &[&str]) {
    for token in tokens {
        assert!(!text.contains(token), "a token shows in: {text}");
    }
    assert!(!text.contains("access_token="), "a URL shows in: {text}");
}

async fn fresh(
    home: &Home,
    fake: &FakeThreads,
    env: &[(String, String)],
) -> Result<ThreadsStatus, ThreadsError> {
    ensure_fresh_with_env(&home.paths(), &settings(fake), &client(), env, NOW).await
}

#[tokio::test]
async fn a_refresh_at_53_days_rewrites_the_env_file_in_place_and_the_state_0600() {
    let home = Home::new();
    home.write_env(ENV_TEXT, 0o640);
    home.write_state_issued_days_ago(53);
    let fake = FakeThreads::start(&[OLD_TOKEN]).await;

    let status = fresh(&home, &fake, &[]).await.expect("refreshed");

    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, "/refresh_access_token");
    assert_eq!(requests[0].param("grant_type"), Some("th_refresh_token"));
    assert_eq!(requests[0].param("access_token"), Some(OLD_TOKEN));
    let new_token = fake.issued().pop().expect("a token was issued");

    // Only the token changed, in its own quoting, comment kept.
    let expected = ENV_TEXT.replace(
        "THREADS_ACCESS_TOKEN=\"THAAoldLongLivedToken0001\"",
        &format!("THREADS_ACCESS_TOKEN=\"{new_token}\""),
    );
    assert_ne!(expected, ENV_TEXT);
    assert_eq!(home.env_text(), expected);
    assert_eq!(mode_of(&home.env_file()), 0o640, "the .env mode changed");

    let state_path = threads::state_file(&home.paths());
    let state: ThreadsState =
        serde_json::from_str(&home.state_text().expect("state written")).expect("state JSON");
    assert_eq!(
        state,
        ThreadsState {
            expires_at: NOW + SIXTY_DAYS_SECS * 1000,
            refreshed_at: Some(NOW),
        }
    );
    assert_eq!(mode_of(&state_path), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(home.paths().data())
        .expect("data dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    assert!(status.refreshed_now);
    assert_eq!(status.days_left, Some(60));
    assert!(!status.expired);
    assert_eq!(status.warning, None);
    assert_eq!(status.refreshed_at_ms, Some(NOW));
    assert_eq!(
        status.token.as_ref().map(Secret::expose),
        Some(new_token.as_str())
    );
    assert!(status.to_string().contains("60 days left"), "{status}");
    assert_hides(&status, &[OLD_TOKEN, &new_token]);

    // The next check finds nothing to do.
    let again = fresh(&home, &fake, &[]).await.expect("checked");
    assert_eq!(fake.request_count(), 1);
    assert!(!again.refreshed_now);
    assert_eq!(
        again.token.as_ref().map(Secret::expose),
        Some(new_token.as_str())
    );
}

#[tokio::test]
async fn at_52_days_nothing_is_asked_or_written() {
    let home = Home::new();
    home.write_env(ENV_TEXT, 0o600);
    let state = home.write_state_issued_days_ago(52);
    let state_before = home.state_text();
    let fake = FakeThreads::start(&[OLD_TOKEN]).await;

    let status = fresh(&home, &fake, &[]).await.expect("checked");

    assert_eq!(fake.request_count(), 0, "{:?}", fake.requests());
    assert_eq!(home.env_text(), ENV_TEXT);
    assert_eq!(home.state_text(), state_before);
    assert!(!status.refreshed_now);
    assert_eq!(status.days_left, Some(8));
    assert_eq!(status.expires_at_ms, Some(state.expires_at));
    assert_eq!(status.refreshed_at_ms, state.refreshed_at);
    assert_eq!(status.warning, None);
    assert_eq!(status.token.as_ref().map(Secret::expose), Some(OLD_TOKEN));
    assert_hides(&status, &[OLD_TOKEN]);
}

#[tokio::test]
async fn without_a_state_file_one_refresh_learns_the_expiry() {
    let home = Home::new();
    home.write_env(&format!("THREADS_ACCESS_TOKEN={OLD_TOKEN}\n"), 0o600);
    let fake = FakeThreads::start(&[OLD_TOKEN]).await;
    fake.set_expires_in(59 * 24 * 3600);

    let status = fresh(&home, &fake, &[]).await.expect("refreshed");

    assert_eq!(fake.request_count(), 1);
    assert!(status.refreshed_now);
    assert_eq!(status.days_left, Some(59));
    let new_token = fake.issued().pop().expect("issued");
    assert_eq!(
        home.env_text(),
        format!("THREADS_ACCESS_TOKEN={new_token}\n")
    );
    let state = threads::read_state(&home.paths())
        .expect("read")
        .expect("state");
    assert_eq!(state.expires_at, NOW + 59 * DAY_MS);

    let offline = threads::inspect(&home.paths(), NOW + DAY_MS).expect("inspect");
    assert_eq!(offline.days_left, Some(58));
    assert_eq!(offline.token, None);
}

#[tokio::test]
async fn an_invalid_token_is_refused_clearly_and_the_env_file_is_untouched() {
    for state_days in [None, Some(53)] {
        let home = Home::new();
        home.write_env(ENV_TEXT, 0o600);
        if let Some(days) = state_days {
            home.write_state_issued_days_ago(days);
        }
        let state_before = home.state_text();
        // The fake knows no token at all: OLD_TOKEN is invalid or revoked.
        let fake = FakeThreads::start(&[]).await;

        let error = fresh(&home, &fake, &[])
            .await
            .expect_err("an invalid token must be an error");

        assert!(error.is_token_rejected(), "{error:?}");
        assert!(
            matches!(
                error,
                ThreadsError::Refused {
                    status: 400,
                    code: Some(190),
                    ..
                }
            ),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(text.contains("OAuthException code 190"), "{text}");
        assert!(text.contains("Invalid OAuth access token"), "{text}");
        assert!(text.contains("renew it with the OAuth flow"), "{text}");
        assert_text_hides(&text, &[OLD_TOKEN]);
        assert_text_hides(&format!("{error:?}"), &[OLD_TOKEN]);
        assert_eq!(fake.request_count(), 1);
        assert_eq!(home.env_text(), ENV_TEXT);
        assert_eq!(home.state_text(), state_before);
    }
}

#[tokio::test]
async fn an_expired_token_whose_refresh_fails_is_a_clear_error() {
    let home = Home::new();
    home.write_env(ENV_TEXT, 0o600);
    home.write_state_issued_days_ago(61);
    let fake = FakeThreads::start(&[]).await;
    fake.push(Reply::error(
        400,
        "OAuthException",
        190,
        "Error validating access token: Session has expired on Saturday, 14-Jun-25.",
    ));

    let error = fresh(&home, &fake, &[]).await.expect_err("expired");

    assert!(matches!(error, ThreadsError::Expired { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.starts_with(
            "the Threads access token expired on 2025-06-14 15:06 UTC; renew it with the \
             OAuth flow (see the README)"
        ),
        "{text}"
    );
    assert!(text.contains("Session has expired"), "{text}");
    assert_text_hides(&text, &[OLD_TOKEN]);
    assert_eq!(home.env_text(), ENV_TEXT);

    // Offline, the status says so too.
    let status = threads::inspect(&home.paths(), NOW).expect("inspect");
    assert!(status.expired);
    assert_eq!(status.days_left, Some(0));
    assert!(
        status.to_string().contains("expired on 2025-06-14"),
        "{status}"
    );
}

#[tokio::test]
async fn an_expired_state_with_a_renewed_token_refreshes() {
    // The user ran the OAuth flow and put a new token in .env; the state
    // still describes the old one.
    let home = Home::new();
    home.write_env("THREADS_ACCESS_TOKEN=THAAbrandNewFromOAuth\n", 0o600);
    home.write_state_issued_days_ago(75);
    let fake = FakeThreads::start(&["THAAbrandNewFromOAuth"]).await;

    let status = fresh(&home, &fake, &[]).await.expect("refreshed");

    assert!(status.refreshed_now && !status.expired);
    assert_eq!(status.days_left, Some(60));
    let new_token = fake.issued().pop().expect("issued");
    assert_eq!(
        home.env_text(),
        format!("THREADS_ACCESS_TOKEN={new_token}\n")
    );
}

#[tokio::test]
async fn a_failed_refresh_while_still_valid_is_a_warning_then_retried() {
    for failure in [
        Reply::outage(),
        Reply::rate_limited(),
        Reply::Raw {
            status: 200,
            body: "{\"access_tok".into(),
        },
    ] {
        let home = Home::new();
        home.write_env(ENV_TEXT, 0o600);
        let state = home.write_state_issued_days_ago(55);
        let state_before = home.state_text();
        let fake = FakeThreads::start(&[OLD_TOKEN]).await;
        fake.push(failure.clone());

        let status = fresh(&home, &fake, &[])
            .await
            .expect("a warning, not an error");

        let warning = status.warning.clone().expect("a warning");
        assert!(warning.contains("the token refresh failed"), "{warning}");
        assert!(!status.refreshed_now && !status.expired);
        assert_eq!(status.days_left, Some(5));
        assert_eq!(status.expires_at_ms, Some(state.expires_at));
        assert_eq!(
            status.token.as_ref().map(Secret::expose),
            Some(OLD_TOKEN),
            "the old token is still the one to use"
        );
        assert!(status.to_string().contains("; warning: "), "{status}");
        assert_hides(&status, &[OLD_TOKEN]);
        assert_eq!(home.env_text(), ENV_TEXT);
        assert_eq!(home.state_text(), state_before);

        // The next check tries again, and this time it works.
        let retried = fresh(&home, &fake, &[]).await.expect("refreshed");
        assert!(retried.refreshed_now, "{failure:?}: {retried}");
        assert_eq!(fake.request_count(), 2);
    }
}

#[tokio::test]
async fn an_unreachable_api_never_shows_the_token() {
    // A port that was just free: connecting is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base_url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);

    let error = threads::refresh(&client(), &base_url, &Secret::new(OLD_TOKEN))
        .await
        .expect_err("nothing listens");
    assert!(matches!(error, ThreadsError::Transport(_)), "{error:?}");
    let text = error.to_string();
    assert!(text.starts_with("cannot reach the Threads API: "), "{text}");
    assert_text_hides(&text, &[OLD_TOKEN]);
    assert_text_hides(&format!("{error:?}"), &[OLD_TOKEN]);

    // Through ensure_fresh, without a state: a warning, expiry unknown.
    let home = Home::new();
    home.write_env(ENV_TEXT, 0o600);
    let settings = ThreadsSettings { base_url };
    let status = ensure_fresh_with_env(&home.paths(), &settings, &client(), &[], NOW)
        .await
        .expect("a warning");
    assert_eq!(status.expires_at_ms, None);
    assert_eq!(status.days_left, None);
    let warning = status.warning.clone().expect("warning");
    assert!(
        warning.contains("cannot reach the Threads API"),
        "{warning}"
    );
    assert_text_hides(&warning, &[OLD_TOKEN]);
    assert_hides(&status, &[OLD_TOKEN]);
    assert!(home.state_text().is_none());
}

#[tokio::test]
async fn a_token_from_the_process_environment_leaves_the_env_file_alone() {
    let home = Home::new();
    let env_text = "# no Threads token here\nTZ=UTC\n";
    home.write_env(env_text, 0o600);
    home.write_state_issued_days_ago(54);
    let state_before = home.state_text();
    let fake = FakeThreads::start(&["THAAfromTheEnvironment"]).await;
    let env = vec![(
        "THREADS_ACCESS_TOKEN".to_string(),
        "THAAfromTheEnvironment".to_string(),
    )];

    let status = fresh(&home, &fake, &env).await.expect("refreshed");

    let new_token = fake.issued().pop().expect("issued");
    assert!(status.refreshed_now);
    assert_eq!(
        status.token.as_ref().map(Secret::expose),
        Some(new_token.as_str())
    );
    let warning = status.warning.clone().expect("a warning");
    assert!(warning.contains("process environment"), "{warning}");
    assert_hides(&status, &["THAAfromTheEnvironment", &new_token]);
    assert_eq!(home.env_text(), env_text, ".env must not gain the token");
    // The state keeps describing the token talon reads at start.
    assert_eq!(home.state_text(), state_before);
}

#[tokio::test]
async fn a_symlinked_env_file_is_updated_through_its_link() {
    let home = Home::new();
    let secrets = tempfile::tempdir().expect("secrets dir");
    let real = secrets.path().join("talon.env");
    std::fs::write(&real, format!("THREADS_ACCESS_TOKEN='{OLD_TOKEN}'\n")).expect("write");
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::symlink(&real, home.env_file()).expect("symlink");
    home.write_state_issued_days_ago(58);
    let fake = FakeThreads::start(&[OLD_TOKEN]).await;

    fresh(&home, &fake, &[]).await.expect("refreshed");

    let new_token = fake.issued().pop().expect("issued");
    assert!(std::fs::symlink_metadata(home.env_file())
        .expect("stat")
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_to_string(&real).expect("read"),
        format!("THREADS_ACCESS_TOKEN='{new_token}'\n")
    );
    assert_eq!(mode_of(&real), 0o600);
}

#[tokio::test]
async fn no_token_is_a_clear_error() {
    let home = Home::new();
    home.write_env("THREADS_ACCESS_TOKEN=\nTHREADS_USER_ID=1\n", 0o600);
    let fake = FakeThreads::start(&[]).await;

    let error = fresh(&home, &fake, &[]).await.expect_err("no token");

    assert!(matches!(error, ThreadsError::NoToken { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with("THREADS_ACCESS_TOKEN is not set"),
        "{error}"
    );
    assert_eq!(fake.request_count(), 0);
}

#[tokio::test]
async fn ensure_fresh_reads_the_process_environment_then_the_env_file() {
    if std::env::var_os("THREADS_ACCESS_TOKEN").is_some() {
        eprintln!("NOTICE: THREADS_ACCESS_TOKEN is set in the test environment; skipping");
        return;
    }
    let home = Home::new();
    home.write_env(ENV_TEXT, 0o600);
    home.write_state_issued_days_ago(10);
    let fake = FakeThreads::start(&[]).await;

    let status = threads::ensure_fresh(&home.paths(), &settings(&fake), &client(), NOW)
        .await
        .expect("checked");

    assert_eq!(status.token.as_ref().map(Secret::expose), Some(OLD_TOKEN));
    assert_eq!(status.days_left, Some(50));
    assert_eq!(fake.request_count(), 0);
}
