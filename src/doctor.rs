//! `talon doctor`: the operations notes' troubleshooting checklist as one
//! command (SPEC §12). Every check says what it found and, when something
//! is wrong, what to do; the exit code is 1 when any check failed.
//!
//! Checks: Docker reachable, the agent image present, model credentials,
//! Slack and Discord tokens (asked of the platforms themselves), the host
//! lock (running, or a stale pid file), per-group cursor lag, failed
//! batches and hard-killed containers in the last 24 h, undelivered
//! replies, channel crash loops, and the mount allowlist.

use std::path::Path;
use std::time::Duration;

use crate::channels::crash_backoff::CrashLedger;
use crate::channels::discord::{Discord, DiscordSettings};
use crate::channels::slack::{Slack, SlackSettings};
use crate::config::Config;
use crate::messages::wire::ErrorKind;
use crate::paths::Paths;
use crate::store::{now_millis, Store};
use crate::trigger::{group_trigger, message_wakes_agent};

/// How long one platform check may take.
const PLATFORM_TIMEOUT: Duration = Duration::from_secs(15);
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub detail: String,
}

fn finding(check: &'static str, level: Level, detail: impl Into<String>) -> Finding {
    Finding {
        check,
        level,
        detail: detail.into(),
    }
}

/// The report, one line per finding.
pub fn render(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| {
            let level = match f.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            format!("{level}  {:<12} {}\n", f.check, f.detail)
        })
        .collect()
}

/// 1 when any check failed, else 0.
pub fn exit_code(findings: &[Finding]) -> i32 {
    i32::from(findings.iter().any(|f| f.level == Level::Fail))
}

/// Runs every check.
pub async fn run(paths: &Paths, config: &Config) -> Vec<Finding> {
    let mut findings = docker_and_image(config).await;
    findings.extend(credentials(config));
    findings.extend(credential_works(config).await);
    findings.extend(threads_token(paths));
    findings.extend(platforms(config).await);
    findings.push(host_lock(paths));
    match Store::open(&paths.db()) {
        Ok(store) => findings.extend(store_checks(&store, config, now_millis())),
        Err(e) => findings.push(finding(
            "store",
            Level::Fail,
            format!("cannot open {}: {e}", paths.db().display()),
        )),
    }
    findings.push(recent_hard_kills(paths, now_millis()));
    findings.push(crash_loops(paths));
    findings.push(allowlist(config));
    findings
}

/// The engine and the agent image, over one connection.
async fn docker_and_image(config: &Config) -> Vec<Finding> {
    let docker = match crate::docker::connect().await {
        Ok(docker) => docker,
        Err(e) => return vec![finding("docker", Level::Fail, e.to_string())],
    };
    let engine = match docker.version().await {
        Ok(v) => finding(
            "docker",
            Level::Ok,
            format!(
                "engine {} reachable (API {})",
                v.version.unwrap_or_default(),
                v.api_version.unwrap_or_default()
            ),
        ),
        Err(e) => {
            return vec![finding(
                "docker",
                Level::Fail,
                format!("engine not answering: {e}"),
            )]
        }
    };
    let name = &config.container.image;
    let image = match docker.inspect_image(name).await {
        Ok(image) => finding(
            "image",
            Level::Ok,
            format!("{name} present ({:.1} MB)", image.size.unwrap_or(0) as f64 / 1e6),
        ),
        Err(_) => finding(
            "image",
            Level::Warn,
            format!("{name} not built yet; `talon image build` (or the first `talon chat`) builds it offline"),
        ),
    };
    vec![engine, image]
}

fn credentials(config: &Config) -> Vec<Finding> {
    use crate::actors::token_manager::Kind;
    let (kind, expires_at) = crate::auth::credential_in_use(config);
    let mut findings = vec![match kind {
        Kind::OAuthFile => finding(
            "credentials",
            Level::Ok,
            crate::actors::token_manager::describe_expiry(expires_at, crate::store::now_millis()),
        ),
        Kind::OAuthEnv => finding(
            "credentials",
            Level::Ok,
            "OAuth: CLAUDE_CODE_OAUTH_TOKEN (long-lived, not refreshed)",
        ),
        Kind::ApiKey => finding("credentials", Level::Ok, "Anthropic API key"),
        Kind::FallbackKey => finding(
            "credentials",
            Level::Warn,
            "using fallback prepaid key: no valid Claude OAuth token (sign in again with `claude`)",
        ),
        Kind::None => finding(
            "credentials",
            Level::Fail,
            "no model credentials: sign in with `claude` (a Claude subscription), or set ANTHROPIC_API_KEY_FALLBACK / ANTHROPIC_API_KEY (environment or <home>/.env)",
        ),
    }];
    let oauth = matches!(kind, Kind::OAuthFile | Kind::OAuthEnv);
    if oauth && config.secrets.anthropic_api_key.is_some() {
        findings.push(finding(
            "credentials",
            Level::Warn,
            "ANTHROPIC_API_KEY is set beside the Claude subscription: it is used only as the fallback; name it ANTHROPIC_API_KEY_FALLBACK to say so",
        ));
    }
    if oauth {
        findings.push(finding(
            "credentials",
            Level::Warn,
            "a Claude subscription (OAuth) credential is used by talon's own agent runner; Anthropic reserves subscription credentials for Claude Code: run the group with the claude-code runtime",
        ));
    }
    findings
}

/// The Threads token's days left, when one is configured (no network: the
/// host refreshes it before the containers that use it).
fn threads_token(paths: &Paths) -> Option<Finding> {
    use crate::auth::threads;
    threads::ThreadsCredentials::load(paths, &threads::process_env())
        .ok()
        .flatten()?;
    Some(match threads::inspect(paths, now_millis()) {
        Ok(status) if status.expired => finding("threads", Level::Fail, status.to_string()),
        Ok(status) if status.days_left.is_some_and(|d| d >= 7) => {
            finding("threads", Level::Ok, status.to_string())
        }
        Ok(status) => finding("threads", Level::Warn, status.to_string()),
        Err(e) => finding("threads", Level::Warn, e.to_string()),
    })
}

/// Proves the credential in use with one free call (`count_tokens`), where
/// the endpoint has it. No token is printed.
async fn credential_works(config: &Config) -> Option<Finding> {
    let credential = crate::auth::credential_now(config)?;
    let base = config
        .provider
        .base_url
        .clone()
        .unwrap_or_else(|| crate::provider::ANTHROPIC_DEFAULT_BASE_URL.into());
    let url = format!("{}/v1/messages/count_tokens", base.trim_end_matches('/'));
    let mut request = reqwest::Client::new()
        .post(url)
        .timeout(Duration::from_secs(15))
        .header("anthropic-version", "2023-06-01")
        .json(&serde_json::json!({
            "model": config.provider.model,
            "messages": [{"role": "user", "content": "ping"}],
        }));
    request = match &credential {
        crate::provider::Credential::ApiKey(key) => request.header("x-api-key", key.expose()),
        crate::provider::Credential::OAuthToken(token) => request
            .bearer_auth(token.expose())
            .header("anthropic-beta", "oauth-2025-04-20"),
    };
    Some(match request.send().await {
        Ok(r) if r.status().is_success() => finding(
            "credential",
            Level::Ok,
            "accepted by the model API (count_tokens)",
        ),
        Ok(r) if matches!(r.status().as_u16(), 401 | 403) => finding(
            "credential",
            Level::Fail,
            format!("refused by the model API ({})", r.status().as_u16()),
        ),
        Ok(r) => finding(
            "credential",
            Level::Warn,
            format!("not proven: count_tokens answered {}", r.status().as_u16()),
        ),
        Err(_) => finding(
            "credential",
            Level::Warn,
            format!("not proven: the model API at {base} did not answer"),
        ),
    })
}

/// A platform answer in the doctor's words.
fn platform_finding(
    check: &'static str,
    result: Result<
        Result<String, crate::channels::delivery::SendFailure>,
        tokio::time::error::Elapsed,
    >,
) -> Finding {
    match result {
        Ok(Ok(who)) => finding(check, Level::Ok, format!("token accepted ({who})")),
        Ok(Err(f)) if f.kind == ErrorKind::Auth => {
            finding(check, Level::Fail, format!("token refused: {}", f.detail))
        }
        Ok(Err(f)) => finding(
            check,
            Level::Warn,
            format!("could not check the token: {}", f.detail),
        ),
        Err(_) => finding(check, Level::Warn, "no answer within 15 s"),
    }
}

async fn platforms(config: &Config) -> Vec<Finding> {
    let s = &config.secrets;
    let c = &config.channels;
    let name = config.assistant.name.clone();
    let mut findings = Vec::new();
    match (&s.slack_bot_token, &s.slack_app_token) {
        (Some(bot), Some(app)) => {
            let settings = SlackSettings {
                bot_token: bot.clone(),
                app_token: app.clone(),
                api_url: c.slack_api_url.clone(),
                assistant_name: name.clone(),
            };
            findings.push(match Slack::new(settings) {
                Ok(slack) => {
                    let checked =
                        tokio::time::timeout(PLATFORM_TIMEOUT, slack.check_tokens()).await;
                    platform_finding(
                        "slack",
                        checked.map(|r| r.map(|me| format!("bot user {}", me.user_id))),
                    )
                }
                Err(e) => finding("slack", Level::Fail, e),
            });
        }
        (None, None) => findings.push(finding("slack", Level::Ok, "not configured")),
        _ => findings.push(finding(
            "slack",
            Level::Warn,
            "needs both SLACK_BOT_TOKEN and SLACK_APP_TOKEN (Socket Mode); not started",
        )),
    }
    match &s.discord_bot_token {
        Some(token) => {
            let settings = DiscordSettings {
                token: token.clone(),
                origin: c.discord_api_url.clone(),
                assistant_name: name,
            };
            findings.push(match Discord::new(settings) {
                Ok(discord) => {
                    let checked =
                        tokio::time::timeout(PLATFORM_TIMEOUT, discord.check_token()).await;
                    platform_finding("discord", checked)
                }
                Err(e) => finding("discord", Level::Fail, e),
            });
        }
        None => findings.push(finding("discord", Level::Ok, "not configured")),
    }
    findings
}

fn host_lock(paths: &Paths) -> Finding {
    let pid_file = paths.pid_file();
    match crate::singleton::holder(&pid_file) {
        Some(pid) => finding("host", Level::Ok, format!("running (pid {pid})")),
        None if pid_file.exists() => finding(
            "host",
            Level::Ok,
            "not running; the pid file left by the last host is stale and will be reclaimed",
        ),
        None => finding("host", Level::Ok, "not running"),
    }
}

/// Cursor lag, failures and undelivered replies, from the store.
pub fn store_checks(store: &Store, config: &Config, now: i64) -> Vec<Finding> {
    let mut findings = Vec::new();
    let stale_after = config.container.idle_timeout.max(Duration::from_secs(600));
    let stale_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
    match store.groups() {
        Ok(groups) => {
            let mut lagging = Vec::new();
            let configured = config.trigger_pattern();
            for g in &groups {
                let cursor = store.cursor(&g.chat_id).unwrap_or(0);
                let pending = store
                    .messages_after(&g.chat_id, cursor, 10_000)
                    .unwrap_or_default();
                // Only what the queue would answer is waiting: untriggered
                // chatter stays behind the cursor until a trigger comes.
                let Ok(trigger) = group_trigger(g, &configured) else {
                    continue;
                };
                let waiting: Vec<_> = pending
                    .iter()
                    .filter(|m| message_wakes_agent(g, &trigger, m))
                    .collect();
                if let Some(oldest) = waiting.first() {
                    if now - oldest.timestamp > stale_ms {
                        lagging.push(format!("{} ({} waiting)", g.folder, waiting.len()));
                    }
                }
            }
            findings.push(if lagging.is_empty() {
                finding(
                    "groups",
                    Level::Ok,
                    format!("{} registered, none lagging", groups.len()),
                )
            } else {
                finding(
                    "groups",
                    Level::Warn,
                    format!(
                        "messages waiting for more than {} min: {}",
                        stale_ms / 60_000,
                        lagging.join(", ")
                    ),
                )
            });
        }
        Err(e) => findings.push(finding(
            "groups",
            Level::Fail,
            format!("cannot read the groups: {e}"),
        )),
    }
    let recent_failures = store
        .failed_batches(1000)
        .map(|f| f.into_iter().filter(|b| now - b.failed_at < DAY_MS).count())
        .unwrap_or(0);
    findings.push(if recent_failures == 0 {
        finding("failures", Level::Ok, "no failed batches in the last 24 h")
    } else {
        finding(
            "failures",
            Level::Warn,
            format!("{recent_failures} failed batches in the last 24 h; `talon status` shows why"),
        )
    });
    let unsent = store.unsent_outbox().map(|rows| rows.len()).unwrap_or(0);
    findings.push(if unsent == 0 {
        finding("outbox", Level::Ok, "every reply delivered")
    } else {
        finding(
            "outbox",
            Level::Warn,
            format!("{unsent} replies not delivered yet (sent when their channel is up)"),
        )
    });
    findings
}

/// Containers hard-killed in the last 24 h (a timeout: the agent never
/// went idle), from the run logs.
fn recent_hard_kills(paths: &Paths, now: i64) -> Finding {
    let mut killed = Vec::new();
    // Run logs live outside the group folders (the agent cannot forge them).
    let groups = std::fs::read_dir(paths.logs().join("containers"))
        .into_iter()
        .flatten()
        .flatten();
    for group in groups {
        let logs = std::fs::read_dir(group.path())
            .into_iter()
            .flatten()
            .flatten();
        for log in logs {
            if is_recent_hard_kill(&log.path(), now) {
                killed.push(group.file_name().to_string_lossy().to_string());
            }
        }
    }
    if killed.is_empty() {
        finding(
            "timeouts",
            Level::Ok,
            "no container hard-killed in the last 24 h",
        )
    } else {
        killed.sort();
        killed.dedup();
        finding(
            "timeouts",
            Level::Warn,
            format!(
                "containers hard-killed in the last 24 h in: {} (see logs/containers/<folder>/)",
                killed.join(", ")
            ),
        )
    }
}

fn is_recent_hard_kill(path: &Path, now: i64) -> bool {
    let Some(ms) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("container-"))
        .and_then(|n| n.strip_suffix(".log"))
        .and_then(|n| n.parse::<i64>().ok())
    else {
        return false;
    };
    now - ms < DAY_MS
        && std::fs::read_to_string(path).is_ok_and(|text| text.contains("hard_killed: true"))
}

fn crash_loops(paths: &Paths) -> Finding {
    let ledger = CrashLedger::in_data_dir(&paths.data());
    let looping: Vec<String> = ["slack", "discord"]
        .iter()
        .filter_map(|name| {
            let runs = ledger.get(name).unclean_runs;
            (runs > 2).then(|| format!("{name} ({} crashes in a row)", runs - 1))
        })
        .collect();
    if looping.is_empty() {
        finding("crash loops", Level::Ok, "no channel is crash-looping")
    } else {
        finding(
            "crash loops",
            Level::Warn,
            format!("{}; see logs/talon.error.log", looping.join(", ")),
        )
    }
}

fn allowlist(config: &Config) -> Finding {
    let path = config
        .container
        .mount_allowlist
        .as_ref()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(crate::mount_security::default_allowlist_path);
    match crate::mount_security::load_allowlist(&path) {
        Ok(None) => finding(
            "allowlist",
            Level::Ok,
            format!("none at {} (no extra mounts)", path.display()),
        ),
        Ok(Some(_)) => finding(
            "allowlist",
            Level::Ok,
            format!("{} is valid", path.display()),
        ),
        Err(e) => finding(
            "allowlist",
            Level::Fail,
            format!("{e}; extra mounts are refused until it is fixed"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_has_a_line_per_check_and_fails_on_any_failure() {
        let findings = vec![
            finding("docker", Level::Ok, "engine 28 reachable"),
            finding("slack", Level::Fail, "token refused: invalid_auth"),
        ];
        assert_eq!(
            render(&findings),
            "ok    docker       engine 28 reachable\nFAIL  slack        token refused: invalid_auth\n"
        );
        assert_eq!(exit_code(&findings), 1);
        assert_eq!(exit_code(&findings[..1]), 0);
    }

    #[test]
    fn lagging_groups_failures_and_undelivered_replies_are_reported() {
        let store = Store::open_in_memory().unwrap();
        let config = Config::from_sources(None, "t", &[], &[]).unwrap();
        let group = crate::messages::RegisteredGroup {
            chat_id: "term:a".into(),
            name: "a".into(),
            folder: "a".into(),
            trigger_pattern: None,
            requires_trigger: false,
            is_main: false,
            container_config: None,
            added_at: 1,
        };
        store.register_group(&group).unwrap();
        let now = 100 * DAY_MS;
        let quiet = store_checks(&store, &config, now);
        assert!(quiet.iter().all(|f| f.level == Level::Ok), "{quiet:?}");
        let old = crate::messages::InboundMessage {
            chat_id: "term:a".into(),
            platform_msg_id: "1".into(),
            sender_id: "u".into(),
            sender_name: "u".into(),
            content: "hello?".into(),
            timestamp: now - 3_600_000,
            is_from_me: false,
            is_bot_message: false,
            reply_to: None,
            thread_id: None,
        };
        store.insert_message(&old).unwrap();
        store.record_notice("term:a", "a", "hi").unwrap();
        let worried = store_checks(&store, &config, now);
        let warned: Vec<&str> = worried
            .iter()
            .filter(|f| f.level == Level::Warn)
            .map(|f| f.check)
            .collect();
        assert_eq!(warned, vec!["groups", "outbox"]);
    }

    #[test]
    fn only_messages_that_wake_the_agent_count_as_lag() {
        let store = Store::open_in_memory().unwrap();
        let config = Config::from_sources(None, "t", &[], &[]).unwrap();
        let group =
            |chat_id: &str, folder: &str, trigger: Option<&str>| crate::messages::RegisteredGroup {
                chat_id: chat_id.into(),
                name: folder.into(),
                folder: folder.into(),
                trigger_pattern: trigger.map(str::to_string),
                requires_trigger: true,
                is_main: false,
                container_config: None,
                added_at: 1,
            };
        store
            .register_group(&group("slack:C1", "family", None))
            .unwrap();
        store
            .register_group(&group("dc:9", "work", Some("^!ask")))
            .unwrap();
        let now = 100 * DAY_MS;
        let mut count = 0;
        let mut insert = |chat_id: &str, content: &str, is_bot_message: bool| {
            count += 1;
            let message = crate::messages::InboundMessage {
                chat_id: chat_id.into(),
                platform_msg_id: count.to_string(),
                sender_id: "u".into(),
                sender_name: "u".into(),
                content: content.into(),
                timestamp: now - 3_600_000 + count,
                is_from_me: false,
                is_bot_message,
                reply_to: None,
                thread_id: None,
            };
            store.insert_message(&message).unwrap();
        };
        let groups_finding = |store: &Store| {
            store_checks(store, &config, now)
                .into_iter()
                .find(|f| f.check == "groups")
                .unwrap()
        };
        // An hour of chatter, a bot's message, and the default trigger in a
        // group whose own trigger is different: nothing to answer.
        insert("slack:C1", "lunch at noon?", false);
        insert("slack:C1", "sure", false);
        insert("slack:C1", "@Talon says hi", true);
        insert("dc:9", "@Talon hello", false);
        let quiet = groups_finding(&store);
        assert_eq!(quiet.level, Level::Ok, "{quiet:?}");

        insert("slack:C1", "@talon where shall we eat?", false);
        insert("dc:9", "!ask what is due", false);
        let lagging = groups_finding(&store);
        assert_eq!(lagging.level, Level::Warn, "{lagging:?}");
        assert!(
            lagging.detail.contains("family (1 waiting)")
                && lagging.detail.contains("work (1 waiting)"),
            "{lagging:?}"
        );
    }
}
